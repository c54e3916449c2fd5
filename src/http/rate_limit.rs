//! Publish rate limits from `topology.toml`: one token bucket per `[[rate_limits]]` entry, keyed
//! by exchange, by client, or by the pair. A message must fit in every bucket that applies to it,
//! and a refused message costs nothing: no bucket is charged unless all of them allow it.
//!
//! The buckets are GCRA (the algorithm of `governor`), written here because governor can only
//! test-and-charge one bucket at a time: checking several would charge the first ones before a
//! later one refuses.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::topology::RateLimit;

struct Bucket {
    exchange: Option<String>,
    client: Option<String>,
    /// Time between two tokens.
    interval: Duration,
    /// How far ahead of now the bucket may run: `interval * (burst - 1)`.
    tolerance: Duration,
    /// The theoretical arrival time of the next request (GCRA's state).
    next: Mutex<Instant>,
}

impl Bucket {
    fn applies(&self, client: &str, exchange: &str) -> bool {
        self.exchange.as_deref().is_none_or(|e| e == exchange) && self.client.as_deref().is_none_or(|c| c == client)
    }

    /// `Err(wait)` when a request now would not fit; charges nothing.
    fn test(next: Instant, now: Instant, tolerance: Duration) -> Result<(), Duration> {
        let earliest = next.checked_sub(tolerance).unwrap_or(now);
        if earliest <= now { Ok(()) } else { Err(earliest - now) }
    }
}

#[derive(Default)]
pub struct RateLimits {
    buckets: Vec<Bucket>,
}

impl RateLimits {
    pub fn from_topology(limits: &[RateLimit]) -> Self {
        let now = Instant::now();
        let buckets = limits
            .iter()
            .map(|limit| {
                // Validation guarantees both are at least 1.
                let per_second = limit.per_second.max(1);
                let interval = Duration::from_secs(1) / per_second;
                Bucket {
                    exchange: limit.exchange.clone(),
                    client: limit.client.clone(),
                    interval,
                    tolerance: interval * limit.burst.max(1).saturating_sub(1),
                    next: Mutex::new(now),
                }
            })
            .collect();
        Self { buckets }
    }

    /// `Err(wait)` when a bucket that applies is empty; `wait` is when they all have a token again.
    pub fn check(&self, client: &str, exchange: &str) -> Result<(), Duration> {
        // Locked in the buckets' order, the same for every caller: no deadlock.
        let mut held: Vec<_> = self
            .buckets
            .iter()
            .filter(|b| b.applies(client, exchange))
            .map(|b| (b, b.next.lock().expect("rate limit bucket poisoned")))
            .collect();
        let now = Instant::now();
        let wait = held
            .iter()
            .filter_map(|(bucket, next)| Bucket::test(**next, now, bucket.tolerance).err())
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (bucket, next) in &mut held {
            **next = (**next).max(now) + bucket.interval;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(exchange: Option<&str>, client: Option<&str>, per_second: u32, burst: u32) -> RateLimit {
        RateLimit {
            exchange: exchange.map(Into::into),
            client: client.map(Into::into),
            per_second,
            burst,
        }
    }

    #[test]
    fn each_applicable_bucket_is_enforced() {
        let limits = RateLimits::from_topology(&[
            limit(Some("orders_exchange"), None, 1, 2),
            limit(None, Some("newsletters"), 1, 1),
        ]);
        assert!(limits.check("a", "orders_exchange").is_ok());
        assert!(limits.check("b", "orders_exchange").is_ok());
        let wait = limits.check("c", "orders_exchange").unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        // Other exchanges are not limited by the exchange bucket.
        assert!(limits.check("a", "auth_exchange").is_ok());
        assert!(limits.check("newsletters", "auth_exchange").is_ok());
        assert!(limits.check("newsletters", "auth_exchange").is_err());
    }

    #[test]
    fn a_refused_request_charges_no_bucket() {
        // The client's bucket allows 5; the exchange's bucket 1.
        let limits = RateLimits::from_topology(&[
            limit(None, Some("svc"), 1, 5),
            limit(Some("small_exchange"), None, 1, 1),
        ]);
        assert!(limits.check("svc", "small_exchange").is_ok());
        for _ in 0..3 {
            assert!(
                limits.check("svc", "small_exchange").is_err(),
                "the exchange's bucket is empty"
            );
        }
        // The three refusals cost the client's bucket nothing: 4 of its 5 tokens are left.
        for i in 0..4 {
            assert!(limits.check("svc", "other_exchange").is_ok(), "token {i}");
        }
        assert!(limits.check("svc", "other_exchange").is_err());
    }
}
