//! The retry policy of failed messages, in one place: the header that counts retries, the
//! schedule (1 min / 5 min / 30 min by default, or `MESSAGE_RETRY_DELAY` with the same 1:5:30
//! ratio), the delay before the next retry, and what becomes of a new dead letter. The ingester
//! and the retrier both follow it; neither knows the other.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{settings::Settings, store::failed_messages::Status};

/// Header our retrier sets on republished messages: how many retries produced this copy.
/// RabbitMQ >= 3.13 owns `x-` headers (and x-death counts), so the count is ours.
pub const RETRY_COUNT_HEADER: &str = "mb-retry-count";

/// The seed's 1 min : 5 min : 30 min, as multiples of the first step.
const RATIO: [u64; 3] = [1, 5, 30];

/// Delay before retry 1, 2, 3...: `MESSAGE_RETRY_DELAY` (ms) with the 1:5:30 ratio when set,
/// else `retry.backoff`.
pub fn schedule(settings: &Settings) -> Vec<Duration> {
    match settings.message.retry_delay {
        Some(first_ms) => RATIO
            .iter()
            .map(|factor| Duration::from_millis(first_ms.saturating_mul(*factor)))
            .collect(),
        None => settings.retry.backoff.clone(),
    }
}

/// The delay before retry `retry_count + 1`: the schedule's step (the last one repeats), with
/// +-10% jitter so a burst of failures does not come back as a burst.
pub fn delay(schedule: &[Duration], retry_count: u32) -> Duration {
    let step = schedule
        .get(retry_count as usize)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(60));
    step.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// What a new dead letter becomes: `pending` with its next retry time, or `failed` for a person
/// once `max_retries` retries produced it or when it is poison (retrying would feed a loop).
pub fn decide(
    schedule: &[Duration],
    retry_count: u32,
    max_retries: u32,
    poison: bool,
    now: DateTime<Utc>,
) -> (Status, Option<DateTime<Utc>>) {
    if retry_count >= max_retries || poison {
        return (Status::Failed, None);
    }
    let wait = delay(schedule, retry_count);
    (
        Status::Pending,
        Some(now + chrono::Duration::from_std(wait).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Vec<Duration> {
        [60, 300, 1800].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn the_schedule_is_followed_with_jitter_and_the_last_step_repeats() {
        for (count, step) in [(0, 60), (1, 300), (2, 1800), (7, 1800)] {
            let delay = delay(&seed(), count).as_secs_f64();
            let step = f64::from(step);
            assert!(delay >= step * 0.9 && delay <= step * 1.1, "retry {count}: {delay}");
        }
    }

    #[test]
    fn retry_delay_sets_the_first_step_and_keeps_the_ratio() {
        let mut settings = Settings::default();
        assert_eq!(schedule(&settings), seed());
        settings.message.retry_delay = Some(1000);
        assert_eq!(schedule(&settings), [1, 5, 30].map(Duration::from_secs).to_vec());
    }

    #[test]
    fn a_dead_letter_is_retried_until_max_retries_or_poison() {
        let now = Utc::now();
        let (status, at) = decide(&seed(), 0, 3, false, now);
        assert_eq!(status, Status::Pending);
        assert!(at.unwrap() > now + chrono::Duration::seconds(50));
        assert_eq!(decide(&seed(), 3, 3, false, now), (Status::Failed, None));
        assert_eq!(decide(&seed(), 0, 3, true, now), (Status::Failed, None));
    }
}
