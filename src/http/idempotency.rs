//! Idempotent publishing: a key (the `Idempotency-Key` header, or a client-given message_id) seen
//! again within the TTL answers the first success without publishing again. Concurrent requests
//! with the same key wait for the first one. Failures are not remembered, so a retry can succeed.
//!
//! Kept in this process's memory: replicas behind a load balancer each remember their own keys.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::watch;

/// What a remembered success answers again: the response body of the first publish.
pub type Remembered = serde_json::Value;

type Key = (String, String);

enum Entry {
    /// The first request is publishing; later ones wait on this.
    Pending(watch::Receiver<Option<Remembered>>),
    Done(Remembered),
}

struct State {
    entries: HashMap<Key, Entry>,
    /// Keys in the order they completed, to expire by age and cap the size.
    completed: VecDeque<(Key, Instant)>,
}

pub struct IdempotencyCache {
    ttl: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

pub enum Claim<'a> {
    /// First time: publish, then [`Ticket::complete`] (dropping the ticket forgets the key).
    First(Ticket<'a>),
    /// Seen before: answer this.
    Replay(Remembered),
    /// Another request holds the key and the caller asked not to wait.
    Busy,
}

pub struct Ticket<'a> {
    cache: &'a IdempotencyCache,
    key: Key,
    done: Option<watch::Sender<Option<Remembered>>>,
}

impl IdempotencyCache {
    pub fn new(ttl: Duration, max_keys: usize) -> Self {
        Self {
            ttl,
            max_keys: max_keys.max(1),
            state: Mutex::new(State {
                entries: HashMap::new(),
                completed: VecDeque::new(),
            }),
        }
    }

    /// Claims `key` for `client`. With `wait`, waits while another request holds it; without,
    /// answers `Busy` (a batch holds several tickets: waiting there could deadlock two batches).
    pub async fn claim(&self, client: &str, key: &str, wait: bool) -> Claim<'_> {
        let key: Key = (client.to_owned(), key.to_owned());
        loop {
            let mut waiting = {
                let mut state = self.state.lock().expect("idempotency state poisoned");
                self.expire(&mut state);
                match state.entries.get(&key) {
                    Some(Entry::Done(body)) => return Claim::Replay(body.clone()),
                    Some(Entry::Pending(_)) if !wait => return Claim::Busy,
                    Some(Entry::Pending(rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        state.entries.insert(key.clone(), Entry::Pending(rx));
                        return Claim::First(Ticket {
                            cache: self,
                            key,
                            done: Some(tx),
                        });
                    }
                }
            };
            // The first request finished (success: replay it) or gave up (claim again).
            if let Ok(value) = waiting.wait_for(Option::is_some).await {
                return Claim::Replay(value.clone().expect("waited for Some"));
            }
        }
    }

    fn expire(&self, state: &mut State) {
        let now = Instant::now();
        while let Some((key, at)) = state.completed.front() {
            let too_old = now.duration_since(*at) > self.ttl;
            if !too_old && state.completed.len() <= self.max_keys {
                break;
            }
            let key = key.clone();
            state.completed.pop_front();
            state.entries.remove(&key);
        }
    }
}

impl Ticket<'_> {
    /// Remembers the success and wakes the requests waiting on the same key.
    pub fn complete(mut self, body: Remembered) {
        let mut state = self.cache.state.lock().expect("idempotency state poisoned");
        state.entries.insert(self.key.clone(), Entry::Done(body.clone()));
        state.completed.push_back((self.key.clone(), Instant::now()));
        if let Some(tx) = self.done.take() {
            tx.send_replace(Some(body));
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // Not completed: a failure. Forget the key; waiters see the sender go and claim again.
        if self.done.is_some() {
            let mut state = self.cache.state.lock().expect("idempotency state poisoned");
            if matches!(state.entries.get(&self.key), Some(Entry::Pending(_))) {
                state.entries.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replays_successes_and_forgets_failures() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        let Claim::First(ticket) = cache.claim("c", "k1", true).await else {
            panic!("first claim")
        };
        drop(ticket); // the publish failed
        let Claim::First(ticket) = cache.claim("c", "k1", true).await else {
            panic!("a failure is not remembered")
        };
        ticket.complete(serde_json::json!({"message_id": "m1"}));
        let Claim::Replay(body) = cache.claim("c", "k1", true).await else {
            panic!("success remembered")
        };
        assert_eq!(body["message_id"], "m1");
        // Keys are per client.
        assert!(matches!(cache.claim("other", "k1", true).await, Claim::First(_)));
    }

    #[tokio::test]
    async fn a_concurrent_duplicate_waits_for_the_first() {
        let cache = std::sync::Arc::new(IdempotencyCache::new(Duration::from_secs(60), 10));
        let Claim::First(ticket) = cache.claim("c", "k", true).await else {
            panic!()
        };
        assert!(matches!(cache.claim("c", "k", false).await, Claim::Busy));
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                match cache.claim("c", "k", true).await {
                    Claim::Replay(body) => body,
                    _ => panic!("should wait"),
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticket.complete(serde_json::json!(1));
        assert_eq!(waiter.await.unwrap(), serde_json::json!(1));
    }

    #[tokio::test]
    async fn the_oldest_keys_go_first_past_the_cap() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 2);
        for key in ["a", "b", "c"] {
            let Claim::First(t) = cache.claim("c", key, true).await else {
                panic!()
            };
            t.complete(serde_json::json!(key));
        }
        assert!(matches!(cache.claim("c", "a", true).await, Claim::First(_)));
        assert!(matches!(cache.claim("c", "c", true).await, Claim::Replay(_)));
    }
}
