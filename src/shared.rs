//! What every role shares, built once per process: settings, topology, metrics, the broker
//! connection and the topology's state (both `watch`es), the database pool and its migration
//! state, the management API client, the stats snapshot, the confirm pipeline, and the three
//! shutdown stages that supervise them all. Roles take what they need in their `new(&Shared)`.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    amqp::{
        connection::{self, LinkReceiver},
        management::ManagementClient,
        publisher::Publisher,
    },
    backoff::{Backoff, retry_until_ok},
    metrics::Metrics,
    roles::Role,
    settings::Settings,
    store,
    topology::Topology,
    workers::{
        Supervisor, Worker,
        applier::{self, TopologyState},
        stats::{self, SnapshotSender},
    },
};

/// The stop protocol's three stages, each a supervisor with its own token: roles and HTTP stop
/// first, then the pipeline settles in-flight confirms and audit rows, then the connection closes.
pub struct Stages {
    pub front: Supervisor,
    pub front_cancel: CancellationToken,
    /// The publisher and the audit writer.
    pub pipeline: Supervisor,
    pub pipeline_cancel: CancellationToken,
    /// The broker connection and the migrator.
    pub infra: Supervisor,
    pub infra_cancel: CancellationToken,
    /// Fired when the HTTP server dies: the process cannot serve its probes and must stop.
    pub fatal: CancellationToken,
}

impl Stages {
    fn new(metrics: &Arc<Metrics>) -> Self {
        Self {
            front: Supervisor::new(metrics.clone()),
            front_cancel: CancellationToken::new(),
            pipeline: Supervisor::new(metrics.clone()),
            pipeline_cancel: CancellationToken::new(),
            infra: Supervisor::new(metrics.clone()),
            infra_cancel: CancellationToken::new(),
            fatal: CancellationToken::new(),
        }
    }

    /// Stops the stages in order under one deadline; returns the tasks still running at its end.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), Vec<String>> {
        let started = tokio::time::Instant::now();
        let end = started + deadline;
        // The later stages keep a share of the deadline even when a role hangs: settling the
        // publisher's confirms and closing the connection are worth that much. The three waits
        // together never pass the deadline.
        let reserve = (deadline / 4).min(Duration::from_secs(2));
        let until = |end: tokio::time::Instant| end.saturating_duration_since(tokio::time::Instant::now());
        let mut laggards = Vec::new();
        self.front_cancel.cancel();
        laggards.extend(self.front.wait(until(end - reserve)).await.err().unwrap_or_default());
        self.pipeline_cancel.cancel();
        laggards.extend(
            self.pipeline
                .wait(until(end - reserve / 2))
                .await
                .err()
                .unwrap_or_default(),
        );
        self.infra_cancel.cancel();
        laggards.extend(self.infra.wait(until(end)).await.err().unwrap_or_default());
        if laggards.is_empty() {
            info!(elapsed = ?started.elapsed(), "Stopped cleanly.");
            Ok(())
        } else {
            error!(still_running = %laggards.join(", "), "Shutdown deadline passed.");
            Err(laggards)
        }
    }
}

pub struct Shared {
    pub settings: Arc<Settings>,
    pub topology: Arc<Topology>,
    pub metrics: Arc<Metrics>,
    pub link: LinkReceiver,
    /// Written by the applier (or the verifier), read by readiness and the consumers.
    pub topology_state: watch::Sender<TopologyState>,
    /// Lazy: roles that never query it never connect.
    pub pool: MySqlPool,
    /// True once migrations ran (or were not asked for).
    pub db_migrated: watch::Receiver<bool>,
    pub management: ManagementClient,
    /// Written by the stats role; stays `None` in processes without it.
    pub stats: SnapshotSender,
    pub stages: Stages,
    /// Started by the first role that asks (api, retrier): one confirm pipeline per process.
    publisher: OnceLock<Publisher>,
}

impl Shared {
    /// Builds the shared parts and starts the connection (and the migrator, when a role of this
    /// process uses the database).
    pub fn start(settings: Settings, topology: Topology) -> Self {
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::new());
        for queue in &topology.queues {
            if let Some(max) = queue.max_length {
                metrics
                    .queue_max_length
                    .with_label_values(&[queue.name.as_str()])
                    .set(max.into());
            }
        }
        let stages = Stages::new(&metrics);
        let roles = &settings.app.roles;
        let (link_tx, link) = connection::link_channel();
        let name = format!("{} [{roles}] pid {}", settings.app.name, std::process::id());
        stages.infra.spawn_named(
            "amqp-connection",
            connection::run_connection(
                settings.rabbitmq.clone(),
                name,
                metrics.clone(),
                link_tx,
                stages.infra_cancel.clone(),
            ),
        );
        let pool = store::pool(&settings.database);
        let migrate = settings.database.migrate_on_start && roles.0.iter().any(|r| r.needs_database());
        let (migrated_tx, db_migrated) = watch::channel(!migrate);
        if migrate {
            let cancel = stages.infra_cancel.clone();
            stages
                .infra
                .spawn_named("migrator", run_migrations(pool.clone(), migrated_tx, cancel));
        }
        Self {
            management: ManagementClient::new(&settings.rabbitmq),
            topology: Arc::new(topology),
            topology_state: applier::state_channel().0,
            stats: stats::snapshot_channel().0,
            publisher: OnceLock::new(),
            settings,
            metrics,
            link,
            pool,
            db_migrated,
            stages,
        }
    }

    pub fn runs(&self, role: Role) -> bool {
        self.settings.app.roles.contains(role)
    }

    /// Runs a role supervised in the first stage.
    pub fn spawn_role<W: Worker>(&self, worker: W) {
        self.stages.front.spawn_worker(worker, self.stages.front_cancel.clone());
    }

    /// The confirm pipeline, started on first use.
    pub fn publisher(&self) -> Publisher {
        self.publisher
            .get_or_init(|| {
                let (publisher, worker) = Publisher::new(
                    self.link.clone(),
                    self.settings.publish.confirm_timeout,
                    self.stages.pipeline_cancel.clone(),
                );
                self.stages.pipeline.spawn_named("publisher", worker);
                publisher
            })
            .clone()
    }
}

/// Migrates once the database answers; replicas may race, the migration lock serializes them.
async fn run_migrations(pool: MySqlPool, done: watch::Sender<bool>, cancel: CancellationToken) {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let migrated = retry_until_ok(backoff, &cancel, || store::migrate(&pool), |err, delay| {
        warn!(error = %err, retry_in = ?delay, "Cannot migrate the database yet; retrying. Check DB_HOST/DB_PORT/DB_USERNAME/DB_PASSWORD/DB_DATABASE.");
    })
    .await;
    if migrated.is_some() {
        info!("Database migrated.");
        done.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time is paused: the waits pass at once, and `elapsed` is exactly what they add up to.
    #[tokio::test(start_paused = true)]
    async fn a_stop_never_overruns_its_deadline_even_when_every_stage_hangs() {
        let stages = Stages::new(&Arc::new(Metrics::new()));
        for (supervisor, name) in [
            (&stages.front, "role"),
            (&stages.pipeline, "publisher"),
            (&stages.infra, "connection"),
        ] {
            supervisor.spawn_named(name, std::future::pending());
        }
        let started = tokio::time::Instant::now();
        let laggards = stages.shutdown(Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(laggards, ["role", "publisher", "connection"]);
        assert!(started.elapsed() <= Duration::from_secs(2), "{:?}", started.elapsed());
    }
}
