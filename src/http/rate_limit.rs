//! Publish rate limits from `topology.toml`: one token bucket per `[[rate_limits]]` entry, keyed
//! by exchange, by client, or by the pair. A message must fit in every bucket that applies to it.

use std::{num::NonZeroU32, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};

use crate::topology::RateLimit;

struct Bucket {
    exchange: Option<String>,
    client: Option<String>,
    limiter: DefaultDirectRateLimiter,
}

#[derive(Default)]
pub struct RateLimits {
    buckets: Vec<Bucket>,
}

impl RateLimits {
    pub fn from_topology(limits: &[RateLimit]) -> Self {
        let buckets = limits
            .iter()
            .map(|limit| {
                // Validation guarantees both are at least 1.
                let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
                Bucket {
                    exchange: limit.exchange.clone(),
                    client: limit.client.clone(),
                    limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
                }
            })
            .collect();
        Self { buckets }
    }

    /// `Err(wait)` when a bucket that applies is empty; `wait` is when it has a token again.
    pub fn check(&self, client: &str, exchange: &str) -> Result<(), Duration> {
        let applies = |b: &&Bucket| {
            b.exchange.as_deref().is_none_or(|e| e == exchange) && b.client.as_deref().is_none_or(|c| c == client)
        };
        for bucket in self.buckets.iter().filter(applies) {
            if let Err(not_until) = bucket.limiter.check() {
                let clock = governor::clock::DefaultClock::default();
                return Err(not_until.wait_time_from(clock.now()));
            }
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
}
