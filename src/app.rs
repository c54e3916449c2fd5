//! The process as a function of its settings: [`App::build`] loads the topology, binds the HTTP
//! port (0 in tests), spawns the connection, the roles and the server, and exposes its address.
//! [`App::shutdown`] is the stop protocol: HTTP and roles first, the broker connection last, so
//! in-flight confirms and acks can finish on it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    amqp::connection::LinkReceiver,
    http::{self, AppContext, AppState},
    roles::Role,
    settings::Settings,
    shared::Shared,
    topology::{self, Topology, TopologyError},
    workers::{
        applier::{Applier, Mode, TopologyState},
        ingester::Ingester,
        replayer::Replayer,
        retention::Retention,
        retrier::Retrier,
        scheduler::Scheduler,
        stats::Stats,
    },
};

pub struct App {
    addr: SocketAddr,
    pub state: AppState,
    /// Owns the supervisors of every task (the stop protocol's stages).
    shared: Shared,
}

/// Reads the topology file, applies `MESSAGE_TTL` / `DLQ_TTL`, and validates.
pub fn load_topology(settings: &Settings) -> Result<Topology, Vec<TopologyError>> {
    let mut file = topology::read(&settings.app.topology_file)?;
    if let Some(ttl) = settings.message.ttl {
        file.queue_defaults.message_ttl = Some(ttl.into());
    }
    if let (Some(ttl), Some(dlq)) = (settings.message.dlq_ttl, file.dead_letter_queues.as_mut()) {
        dlq.message_ttl = Some(ttl.into());
    }
    topology::validate(&file)
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let topology = load_topology(&settings).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!(
                "invalid topology {}:\n  {}",
                settings.app.topology_file.display(),
                lines.join("\n  ")
            )
        })?;
        Self::build_with(settings, topology).await
    }

    /// The composition root: the shared parts, then each role this process runs, then HTTP.
    pub async fn build_with(settings: Settings, topology: Topology) -> anyhow::Result<Self> {
        let shared = Shared::start(settings, topology);
        // Every process knows whether the topology is there: the applier declares it, others verify.
        let mode = if shared.runs(Role::Applier) {
            Mode::Declare
        } else {
            Mode::Verify
        };
        shared.spawn_role(Applier::new(&shared, mode));
        if shared.runs(Role::Stats) {
            shared.spawn_role(Stats::new(&shared));
        }
        if shared.runs(Role::Ingester) {
            shared.spawn_role(Ingester::new(&shared));
        }
        if shared.runs(Role::Retrier) {
            shared.spawn_role(Retrier::new(&shared));
            shared.spawn_role(Retention::new(&shared));
        }
        if shared.runs(Role::Scheduler) {
            shared.spawn_role(Scheduler::new(&shared));
            shared.spawn_role(Replayer::new(&shared));
        }
        // The api role's routes and publishing parts are built with the handlers' state.
        let state = Arc::new(AppContext::new(&shared));
        let addr = http::serve(state.clone(), &shared.stages).await?;
        info!(%addr, roles = %shared.settings.app.roles, "messages-broker started.");
        Ok(Self { addr, state, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until SIGTERM/SIGINT (or a fatal server error), then stops under the deadline.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tokio::select! {
            signal = shutdown_signal() => info!(signal, "Stopping."),
            _ = self.shared.stages.fatal.cancelled() => warn!("Stopping after a fatal error."),
        }
        let deadline = self.state.settings.app.shutdown_timeout;
        self.shutdown(deadline).await.map_err(|laggards| {
            anyhow::anyhow!(
                "shutdown deadline of {deadline:?} passed; still running: {}",
                laggards.join(", ")
            )
        })
    }

    /// HTTP and roles stop first (in-flight requests finish), then the publisher settles its
    /// confirms and the audit writer flushes, then the connection closes. One deadline for all.
    pub async fn shutdown(self, deadline: Duration) -> Result<(), Vec<String>> {
        self.shared.stages.shutdown(deadline).await
    }

    pub fn link(&self) -> LinkReceiver {
        self.state.link.clone()
    }

    pub fn topology_state(&self) -> watch::Receiver<TopologyState> {
        self.state.topology_state.clone()
    }
}

async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
        "SIGTERM"
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<&'static str>();
    tokio::select! {
        s = ctrl_c => s,
        s = term => s,
    }
}
