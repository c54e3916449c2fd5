//! The applier role: declares the topology on every new connection and publishes the outcome on
//! a `watch`, so readiness (and consumers) know the exchanges and queues are there.
//! Processes without the role run the same loop in `Verify` mode: they check, never declare.
//!
//! The applier also puts the file's `[[users]]` on the broker after the entities. Their outcome
//! is logged and counted (`topology_users_unapplied`) but is not part of [`TopologyState`]:
//! readiness says whether the exchanges and queues are there, and a service's missing password
//! must not take this service out of its load balancer.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Worker;
use crate::{
    amqp::{
        connection::{Link, LinkReceiver, wait_for_link},
        management::ManagementClient,
    },
    metrics::Metrics,
    shared::Shared,
    topology::{
        Topology,
        declare::{self, Probe},
        diff::{self, Difference},
        users::{self, UsersReport},
    },
};

/// How often a topology that the broker refused is tried again (an operator may fix it live).
const RETRY_FAILED_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyState {
    /// No connection yet, or declaring on a new one.
    Pending,
    /// Every exchange, queue and binding is in place on this connection generation.
    Applied { generation: u64 },
    /// The broker refused part of it; each problem names the entity and the broker's reason.
    Failed { generation: u64, problems: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Declare,
    Verify,
}

pub fn state_channel() -> (watch::Sender<TopologyState>, watch::Receiver<TopologyState>) {
    watch::channel(TopologyState::Pending)
}

/// The applier (or, in `Verify` mode, the verifier of processes without the role).
#[derive(Clone)]
pub struct Applier {
    mode: Mode,
    topology: Arc<Topology>,
    management: ManagementClient,
    link: LinkReceiver,
    state: watch::Sender<TopologyState>,
    metrics: Arc<Metrics>,
    /// `topology.delete_unknown_users`.
    delete_unknown_users: bool,
}

impl Applier {
    pub fn new(shared: &Shared, mode: Mode) -> Self {
        Self {
            mode,
            topology: shared.topology.clone(),
            management: shared.management.clone(),
            link: shared.link.clone(),
            state: shared.topology_state.clone(),
            metrics: shared.metrics.clone(),
            delete_unknown_users: shared.settings.topology.delete_unknown_users,
        }
    }

    /// The step: declares (or verifies) on this connection and says how it went. In `Declare`
    /// mode, once the connection held, the users follow (their outcome is logged and counted).
    pub async fn step(&self, link: &Link) -> TopologyState {
        let state = apply(self.mode, link, &self.topology, &self.management).await;
        if self.mode == Mode::Declare && state != TopologyState::Pending {
            let report = self.apply_users().await;
            self.metrics
                .topology_users_unapplied
                .set(i64::try_from(report.unapplied()).unwrap_or(i64::MAX));
        }
        state
    }

    /// The file's users, their permissions and topic permissions, through the management API.
    pub async fn apply_users(&self) -> UsersReport {
        let report = users::apply_users(&self.management, &self.topology.users, self.delete_unknown_users).await;
        if !report.items.is_empty() {
            info!(
                users = report.items.len(),
                unapplied = report.unapplied(),
                "Broker users applied; each one not in place was logged with its reason."
            );
        }
        report
    }
}

impl Worker for Applier {
    fn name(&self) -> &'static str {
        match self.mode {
            Mode::Declare => "applier",
            Mode::Verify => "topology-verifier",
        }
    }

    /// One step per connection generation, again every 30 s while it failed.
    async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            self.state.send_replace(TopologyState::Pending);
            self.metrics.topology_applied.set(0);
            let Some(current) = wait_for_link(&mut self.link, &cancel).await else {
                return Ok(());
            };
            self.link.mark_unchanged();
            let outcome = self.step(&current).await;
            let failed = matches!(outcome, TopologyState::Failed { .. });
            self.metrics
                .topology_applied
                .set(i64::from(matches!(outcome, TopologyState::Applied { .. })));
            self.state.send_replace(outcome);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                // A new connection (or its loss) means declaring again.
                _ = self.link.changed() => {}
                _ = tokio::time::sleep(RETRY_FAILED_EVERY), if failed => {}
            }
        }
    }
}

/// One step: declare (or verify) on this connection and say how it went.
pub async fn apply(mode: Mode, link: &Link, topology: &Topology, management: &ManagementClient) -> TopologyState {
    let result = match mode {
        Mode::Declare => declare::declare(&link.connection, topology, Probe::Skip).await,
        Mode::Verify => declare::verify(&link.connection, topology).await,
    };
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            warn!(error = %err, "Connection lost while applying the topology; will apply again on the next one.");
            return TopologyState::Pending;
        }
    };
    let mut problems: Vec<String> = report.failures().map(ToString::to_string).collect();
    if !problems.is_empty() {
        // The broker's refusal names one argument; the management API shows them all.
        if let Ok(differences) = diff::diff_live(management, topology).await {
            problems = report
                .failures()
                .map(|failed| {
                    let details: Vec<String> = differences
                        .iter()
                        .filter(|d| matches!(d, Difference::Changed { name, .. } if *name == failed.name))
                        .map(ToString::to_string)
                        .collect();
                    if details.is_empty() {
                        failed.to_string()
                    } else {
                        details.join("; ")
                    }
                })
                .collect();
        }
    }
    if problems.is_empty() {
        info!(
            generation = link.generation,
            mode = ?mode,
            created = report.created(),
            entities = report.items.len(),
            "Topology applied."
        );
        TopologyState::Applied {
            generation: link.generation,
        }
    } else {
        error!(
            generation = link.generation,
            problems = %problems.join("; "),
            "The broker refused part of the topology; the rest is in place. Fix the broker or topology.toml (see `messages-broker topology diff`)."
        );
        TopologyState::Failed {
            generation: link.generation,
            problems,
        }
    }
}
