//! The process as a function of its settings: [`App::build`] loads the topology, binds the HTTP
//! port (0 in tests), spawns the connection, the roles and the server, and exposes its address.
//! [`App::shutdown`] is the stop protocol: HTTP and roles first, the broker connection last, so
//! in-flight confirms and acks can finish on it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    amqp::publisher::Publisher,
    amqp::{
        connection::{self, LinkReceiver},
        management::ManagementClient,
    },
    backoff::Backoff,
    http::{
        self, AppContext, AppState, auth::Clients, idempotency::IdempotencyCache, publish::Publishing,
        rate_limit::RateLimits,
    },
    metrics::Metrics,
    roles::Role,
    settings::Settings,
    store,
    topology::{self, Topology, TopologyError},
    workers::{
        Supervisor,
        applier::{self, Mode, TopologyState},
        audit,
        ingester::Ingester,
        retrier::Retrier,
        stats,
    },
};

pub struct App {
    addr: SocketAddr,
    pub state: AppState,
    /// Supervises the HTTP server and the roles: stopped first.
    front: Supervisor,
    /// The publisher and the audit writer: stopped once nothing can hand them new work, after
    /// their in-flight confirms and rows are settled.
    pipeline: Supervisor,
    /// Supervises the broker connection and the migrator: stopped last.
    infra: Supervisor,
    front_cancel: CancellationToken,
    pipeline_cancel: CancellationToken,
    infra_cancel: CancellationToken,
    /// Fired when the HTTP server dies: the process cannot serve its probes and must stop.
    fatal: CancellationToken,
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

    pub async fn build_with(settings: Settings, topology: Topology) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let topology = Arc::new(topology);
        let metrics = Arc::new(Metrics::new());
        for queue in &topology.queues {
            if let Some(max) = queue.max_length {
                metrics
                    .queue_max_length
                    .with_label_values(&[queue.name.as_str()])
                    .set(max.into());
            }
        }
        let roles = &settings.app.roles;
        let front = Supervisor::new(metrics.clone());
        let pipeline = Supervisor::new(metrics.clone());
        let infra = Supervisor::new(metrics.clone());
        let front_cancel = CancellationToken::new();
        let pipeline_cancel = CancellationToken::new();
        let infra_cancel = CancellationToken::new();
        let fatal = CancellationToken::new();

        // The broker connection, shared by every role.
        let (link_tx, link_rx) = connection::link_channel();
        let name = format!(
            "{} [{}] pid {}",
            settings.app.name,
            roles.0.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
            std::process::id()
        );
        infra.spawn_named(
            "amqp-connection",
            connection::run_connection(
                settings.rabbitmq.clone(),
                name,
                metrics.clone(),
                link_tx,
                infra_cancel.clone(),
            ),
        );

        // The database: lazy pool, migrations in the background until they succeed.
        let needs_db = roles.0.iter().any(|r| r.needs_database());
        let pool = needs_db.then(|| store::pool(&settings.database));
        let (migrated_tx, migrated_rx) = watch::channel(!settings.database.migrate_on_start);
        if let (Some(pool), true) = (&pool, settings.database.migrate_on_start) {
            infra.spawn_named(
                "migrator",
                run_migrations(pool.clone(), migrated_tx, infra_cancel.clone()),
            );
        }

        // The topology: declared by the applier, verified by processes without it.
        let (topology_tx, topology_rx) = applier::state_channel();
        let (task, mode) = if roles.contains(Role::Applier) {
            ("applier", Mode::Declare)
        } else {
            ("topology-verifier", Mode::Verify)
        };
        {
            let (topology, link, metrics, cancel, tx) = (
                topology.clone(),
                link_rx.clone(),
                metrics.clone(),
                front_cancel.clone(),
                topology_tx.clone(),
            );
            let management = ManagementClient::new(&settings.rabbitmq);
            front.spawn_supervised(task, front_cancel.clone(), move || {
                applier::run(
                    mode,
                    topology.clone(),
                    management.clone(),
                    link.clone(),
                    tx.clone(),
                    metrics.clone(),
                    cancel.clone(),
                )
            });
        }
        // Queue stats: polled on a schedule, read by the API from the `watch`, never per request.
        let management = ManagementClient::new(&settings.rabbitmq);
        let (stats_tx, stats_rx) = stats::snapshot_channel();
        if roles.contains(Role::Stats) {
            let poller = stats::Stats {
                management: management.clone(),
                link: link_rx.clone(),
                topology: topology.clone(),
                pool: pool.clone(),
                db_migrated: migrated_rx.clone(),
                metrics: metrics.clone(),
                snapshot: stats_tx,
                interval: settings.stats.interval,
            };
            let cancel = front_cancel.clone();
            front.spawn_supervised("stats", front_cancel.clone(), move || {
                poller.clone().run(cancel.clone())
            });
        }

        // The confirm pipeline, shared by the publish routes and the retrier.
        let publisher = (roles.contains(Role::Api) || roles.contains(Role::Retrier)).then(|| {
            let (publisher, worker) = Publisher::new(
                link_rx.clone(),
                settings.publish.confirm_timeout,
                pipeline_cancel.clone(),
            );
            pipeline.spawn_named("publisher", worker);
            publisher
        });

        // Dead letters: the ingester stores them, the retrier (and the API's retry routes) act.
        if let (true, Some(pool)) = (roles.contains(Role::Ingester), &pool) {
            let ingester = Ingester {
                settings: settings.clone(),
                topology: topology.clone(),
                pool: pool.clone(),
                metrics: metrics.clone(),
                link: link_rx.clone(),
                topology_state: topology_rx.clone(),
                db_migrated: migrated_rx.clone(),
            };
            let cancel = front_cancel.clone();
            front.spawn_supervised("ingester", front_cancel.clone(), move || {
                ingester.clone().run(cancel.clone())
            });
        }
        let retrier = match (&publisher, &pool) {
            (Some(publisher), Some(pool)) => Some(Arc::new(Retrier {
                settings: settings.clone(),
                pool: pool.clone(),
                publisher: publisher.clone(),
                metrics: metrics.clone(),
            })),
            _ => None,
        };
        if let (true, Some(retrier)) = (roles.contains(Role::Retrier), &retrier) {
            let (retrier, migrated, cancel) = (retrier.clone(), migrated_rx.clone(), front_cancel.clone());
            front.spawn_supervised("retrier", front_cancel.clone(), move || {
                retrier.as_ref().clone().run(migrated.clone(), cancel.clone())
            });
        }

        // Publishing (api role): the publish routes' guards and the audit writer.
        let publishing = publisher.filter(|_| roles.contains(Role::Api)).map(|publisher| {
            let audit = match (&pool, settings.publish.audit) {
                (Some(pool), true) => {
                    let (sink, rx) = audit::channel(settings.publish.audit_queue, metrics.clone());
                    pipeline.spawn_named(
                        "audit-writer",
                        audit::run(pool.clone(), rx, metrics.clone(), pipeline_cancel.clone()),
                    );
                    Some(sink)
                }
                _ => None,
            };
            Arc::new(Publishing {
                publisher,
                limits: RateLimits::from_topology(&topology.rate_limits),
                idempotency: IdempotencyCache::new(
                    settings.publish.idempotency_ttl,
                    settings.publish.idempotency_max_keys,
                ),
                audit,
            })
        });

        let state = Arc::new(AppContext {
            clients: Arc::new(Clients::from_settings(&settings.auth.clients)),
            settings: settings.clone(),
            topology,
            metrics,
            link: link_rx,
            topology_state: topology_rx,
            pool,
            db_migrated: migrated_rx,
            publishing,
            retrier,
            stats: stats_rx,
            management,
        });
        let bind = format!("{}:{}", settings.app.host, settings.app.port);
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("Failed to bind the HTTP port {bind} (APP_HOST/APP_PORT)"))?;
        let addr = listener.local_addr()?;
        let router = http::router(state.clone());
        let (stop, fatal_signal) = (front_cancel.clone(), fatal.clone());
        front.spawn_named("http", async move {
            // Small JSON answers must not wait for Nagle's algorithm: it adds milliseconds per request.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let server = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(err) = server.await {
                error!(error = %err, "HTTP server failed; stopping.");
                fatal_signal.cancel();
            }
        });
        info!(%addr, roles = %settings.app.roles, "messages-broker started.");
        Ok(Self {
            addr,
            state,
            front,
            pipeline,
            infra,
            front_cancel,
            pipeline_cancel,
            infra_cancel,
            fatal,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until SIGTERM/SIGINT (or a fatal server error), then stops under the deadline.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tokio::select! {
            signal = shutdown_signal() => info!(signal, "Stopping."),
            _ = self.fatal.cancelled() => warn!("Stopping after a fatal error."),
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
        let started = tokio::time::Instant::now();
        // At least 1 s per later stage even when the front used up the deadline: the publisher's
        // confirms and the connection's close still get a chance instead of being cut at once.
        let left = || deadline.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let mut laggards = Vec::new();
        self.front_cancel.cancel();
        laggards.extend(self.front.wait(deadline).await.err().unwrap_or_default());
        self.pipeline_cancel.cancel();
        laggards.extend(self.pipeline.wait(left()).await.err().unwrap_or_default());
        self.infra_cancel.cancel();
        laggards.extend(self.infra.wait(left()).await.err().unwrap_or_default());
        if laggards.is_empty() {
            info!(elapsed = ?started.elapsed(), "Stopped cleanly.");
            Ok(())
        } else {
            error!(still_running = %laggards.join(", "), "Shutdown deadline passed.");
            Err(laggards)
        }
    }

    pub fn link(&self) -> LinkReceiver {
        self.state.link.clone()
    }

    pub fn topology_state(&self) -> watch::Receiver<TopologyState> {
        self.state.topology_state.clone()
    }
}

/// Migrates once the database answers; replicas may race, the migration lock serializes them.
async fn run_migrations(pool: sqlx::MySqlPool, done: watch::Sender<bool>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    loop {
        match store::migrate(&pool).await {
            Ok(()) => {
                info!("Database migrated.");
                done.send_replace(true);
                return;
            }
            Err(err) => {
                let delay = backoff.next_delay();
                if backoff.attempts() == 1 {
                    warn!(error = %err, retry_in = ?delay, "Cannot migrate the database yet; retrying. Check DB_HOST/DB_PORT/DB_USERNAME/DB_PASSWORD/DB_DATABASE.");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
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
