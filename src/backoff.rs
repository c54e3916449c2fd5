//! Exponential backoff with jitter, shared by reconnects, role restarts and every "retry until
//! it works" loop ([`retry_until_ok`]: migrations, audit rows, dead-letter rows).

use std::{fmt::Display, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::debug;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, attempt: 0 }
    }

    /// The next wait: `min * 2^attempt`, capped at `max`, then "equal jitter" (between half and
    /// all of it) so that replicas that lost the broker together do not come back in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(2u32.saturating_pow(self.attempt.min(20)));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Calls `attempt` until it succeeds, waiting with `backoff` between failures. The first failure
/// goes to `warn_first` (one loud line per outage), later ones to debug. `None` when `cancel`
/// fires while waiting; an attempt under way is never cut short (it may be committing).
/// Otherwise the value and how many attempts failed before it (to log the recovery).
pub async fn retry_until_ok<T, E, F, Fut>(
    mut backoff: Backoff,
    cancel: &CancellationToken,
    mut attempt: F,
    warn_first: impl FnOnce(&E, Duration),
) -> Option<(T, u32)>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut warn_first = Some(warn_first);
    loop {
        let err = match attempt().await {
            Ok(value) => return Some((value, backoff.attempts())),
            Err(err) => err,
        };
        let delay = backoff.next_delay();
        match warn_first.take() {
            Some(warn) => warn(&err, delay),
            None => debug!(error = %err, attempt = backoff.attempts(), retry_in = ?delay, "Still failing."),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bounds = [100, 200, 400, 800, 1000, 1000];
        for upper in bounds {
            let d = b.next_delay();
            let upper = Duration::from_millis(upper);
            assert!(
                d <= upper && d >= upper / 2,
                "{d:?} not within [{:?}, {upper:?}]",
                upper / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
