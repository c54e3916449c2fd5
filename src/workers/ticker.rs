//! The schedule of periodic roles (stats polls, retry scans): tokio-cron-scheduler for whole
//! seconds, a tokio interval below. The scheduler's own task is shut down when the [`Ticker`]
//! drops, whatever ended the role (a return, an error, a panic).

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

/// A role's schedule. Whole seconds go through tokio-cron-scheduler; shorter or fractional
/// intervals (tests) through a tokio interval, because the scheduler counts in whole seconds and
/// looks for due jobs every 500 ms.
pub enum Ticker {
    Scheduled {
        scheduler: JobScheduler,
        /// One slot: ticks that come while a poll runs collapse into one, polls never overlap.
        ticks: mpsc::Receiver<()>,
    },
    Interval(tokio::time::Interval),
}

impl Ticker {
    pub async fn start(interval: Duration) -> anyhow::Result<Self> {
        let (tx, ticks) = mpsc::channel(1);
        Self::start_with(interval, ticks, move || {
            let _ = tx.try_send(());
        })
        .await
    }

    /// [`Self::start`] with the scheduler's job given: it sends to `ticks`' sender (a test counts).
    async fn start_with(
        interval: Duration,
        ticks: mpsc::Receiver<()>,
        on_tick: impl Fn() + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        if interval.subsec_nanos() != 0 || interval.is_zero() {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; callers run their first step before asking for a tick.
            ticker.tick().await;
            return Ok(Self::Interval(ticker));
        }
        let on_tick = std::sync::Arc::new(on_tick);
        let job = Job::new_repeated_async(interval, move |_, _| {
            let on_tick = on_tick.clone();
            Box::pin(async move { on_tick() })
        })
        .context("Failed to schedule the job")?;
        let scheduler = JobScheduler::new().await.context("Failed to create the scheduler")?;
        scheduler.add(job).await.context("Failed to schedule the job")?;
        scheduler.start().await.context("Failed to start the scheduler")?;
        Ok(Self::Scheduled { scheduler, ticks })
    }

    /// Waits for the next tick; ticks that came while the caller worked collapse into one.
    pub async fn tick(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Scheduled { ticks, .. } => ticks.recv().await.context("The scheduler stopped ticking"),
            Self::Interval(interval) => {
                interval.tick().await;
                Ok(())
            }
        }
    }
}

impl Drop for Ticker {
    /// The scheduler's own task ticks until told to stop: tell it, whatever ended the role.
    fn drop(&mut self) {
        if let Self::Scheduled { scheduler, .. } = self
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let mut scheduler = scheduler.clone();
            runtime.spawn(async move {
                let _ = scheduler.shutdown().await;
            });
        }
    }
}

/// The loop of a periodic role: once the database is migrated, `scan` at once and then on every
/// tick of `every`, until `cancel` fires.
pub async fn scan_periodically<F, Fut>(
    every: Duration,
    mut db_migrated: tokio::sync::watch::Receiver<bool>,
    cancel: &tokio_util::sync::CancellationToken,
    mut scan: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        migrated = db_migrated.wait_for(|m| *m) => { migrated?; }
    }
    let mut ticker = Ticker::start(every).await?;
    loop {
        scan().await;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            tick = ticker.tick() => tick?,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// The retrier once kept its own scheduler, whose job went on firing after the role panicked;
    /// every periodic role now has a `Ticker`, whose job stops however the role ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_job_of_a_role_that_panicked_stops_firing() {
        let fired = Arc::new(AtomicUsize::new(0));
        let counter = fired.clone();
        let role = tokio::spawn(async move {
            let (_tx, ticks) = mpsc::channel(1);
            let on_tick = move || {
                counter.fetch_add(1, Ordering::SeqCst);
            };
            let _ticker = Ticker::start_with(Duration::from_secs(1), ticks, on_tick)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            panic!("the role fails");
        });
        assert!(role.await.unwrap_err().is_panic());
        assert!(fired.load(Ordering::SeqCst) >= 1, "the job fired while its role ran");
        // The drop asks the scheduler to stop from a spawned task: give it a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after_the_role = fired.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            fired.load(Ordering::SeqCst),
            after_the_role,
            "the job outlived its role"
        );
    }
}
