//! Roles and their supervisor. Every role has one shape: `new(&Shared)` takes what it needs from
//! the parts every role shares, a public step that tests drive, and [`Worker::run`], the loop. Each
//! runs as a named, supervised task: a failure or a panic is logged with its reason and the role
//! restarts with backoff; cancellation stops it for good.

pub mod applier;
pub mod audit;
pub mod ingester;
pub mod replayer;
pub mod retention;
pub mod retrier;
pub mod scheduler;
pub mod stats;
pub mod ticker;

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, error, info, info_span, warn};

use crate::{backoff::Backoff, metrics::Metrics};

/// A role that ran this long before failing starts its restart backoff from the shortest wait.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// A role's loop, restartable: the supervisor runs a fresh clone after each failure.
pub trait Worker: Clone + Send + Sync + 'static {
    /// The task's name in logs, spans and `messages_broker_role_restarts_total`.
    fn name(&self) -> &'static str;

    /// Runs until `cancel` fires; an `Err` (or a panic) makes the supervisor restart it.
    fn run(self, cancel: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Spawns named tasks, restarts failed ones and knows who is still running at shutdown.
#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// Names of the tasks still running, to name the laggards when a shutdown deadline passes.
    running: Arc<Mutex<BTreeSet<String>>>,
}

impl Supervisor {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            tracker: TaskTracker::new(),
            metrics,
            running: Arc::default(),
        }
    }

    /// Runs `make()` until `cancel` fires, restarting it with backoff when it fails, panics or
    /// returns early. `make` builds a fresh future for each run.
    pub fn spawn_supervised<F, Fut>(&self, name: &str, cancel: CancellationToken, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let span = info_span!("task", role = %name);
        let metrics = self.metrics.clone();
        let owned = name.to_owned();
        self.spawn_named(
            name,
            async move {
                // 500 ms: a role that fails at once (broker or database just gone) does not spin;
                // 30 s: a role comes back within half a minute of its dependency returning.
                let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
                loop {
                    let started = tokio::time::Instant::now();
                    // A nested spawn turns a panic into a JoinError instead of killing the loop.
                    let result = tokio::spawn(make().instrument(tracing::Span::current())).await;
                    // A run that stayed healthy for a while ends the streak: one crash a day must
                    // not inherit the waits of the crashes before it.
                    if started.elapsed() >= HEALTHY_RUN {
                        backoff.reset();
                    }
                    if cancel.is_cancelled() {
                        if let Ok(Err(err)) = &result {
                            warn!(error = format!("{err:#}"), "Task ended with an error while stopping.");
                        }
                        info!("Task stopped.");
                        return;
                    }
                    let delay = backoff.next_delay();
                    match result {
                        Ok(Ok(())) => {
                            warn!(restart_in = ?delay, "Task returned without being asked to stop; restarting.")
                        }
                        Ok(Err(err)) => {
                            error!(error = format!("{err:#}"), restart_in = ?delay, "Task failed; restarting.")
                        }
                        Err(join) => error!(panic = %join, restart_in = ?delay, "Task panicked; restarting."),
                    }
                    metrics.role_restarts_total.with_label_values(&[owned.as_str()]).inc();
                    tokio::select! {
                        _ = cancel.cancelled() => { info!("Task stopped."); return; }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Runs `worker` supervised until `cancel` fires.
    pub fn spawn_worker<W: Worker>(&self, worker: W, cancel: CancellationToken) {
        let name = worker.name();
        let stop = cancel.clone();
        self.spawn_supervised(name, cancel, move || worker.clone().run(stop.clone()));
    }

    /// Spawns a tracked task whose name is listed while it runs.
    pub fn spawn_named<Fut>(&self, name: &str, future: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let running = self.running.clone();
        let name = name.to_owned();
        running.lock().expect("running set poisoned").insert(name.clone());
        self.tracker.spawn(async move {
            future.await;
            running.lock().expect("running set poisoned").remove(&name);
        });
    }

    /// Waits for every task to end, up to `deadline`. Returns the names of those still running.
    pub async fn wait(&self, deadline: Duration) -> Result<(), Vec<String>> {
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self
                .running
                .lock()
                .expect("running set poisoned")
                .iter()
                .cloned()
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Time is paused: the supervisor's sleeps and the role's long run pass at once.
    #[tokio::test(start_paused = true)]
    async fn the_restart_backoff_starts_over_after_a_healthy_run() {
        let supervisor = Supervisor::new(Arc::new(Metrics::new()));
        let cancel = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (counter, log) = (runs.clone(), starts.clone());
        supervisor.spawn_supervised("flaky", cancel.clone(), move || {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            log.lock().unwrap().push(tokio::time::Instant::now());
            async move {
                // Eight quick failures grow the backoff to its maximum, then a healthy run.
                if run == 8 {
                    tokio::time::sleep(HEALTHY_RUN * 2).await;
                }
                anyhow::bail!("failure {run}")
            }
        });
        while runs.load(Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cancel.cancel();
        let starts = starts.lock().unwrap().clone();
        let before_health = starts[8] - starts[7];
        let after_health = starts[9] - (starts[8] + HEALTHY_RUN * 2);
        assert!(before_health >= Duration::from_secs(15), "{before_health:?}");
        assert!(after_health <= Duration::from_millis(500), "{after_health:?}");
    }
}
