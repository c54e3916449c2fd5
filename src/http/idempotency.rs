//! Idempotent publishing: a key (the `Idempotency-Key` header, or a client-given message_id) seen
//! again within the TTL answers the first success without publishing again. Concurrent requests
//! with the same key wait for the first one. Failures are not remembered, so a retry can succeed.
//!
//! Keys live in MySQL (`idempotency_keys`), so every api replica behind a load balancer sees
//! them; an in-process cache in front answers repeats and same-process races without a query.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    store::{
        StoreError,
        idempotency_keys::{self, KeyClaim},
    },
    workers::Worker,
};

/// How often a request waits on a key another replica is publishing.
const SHARED_POLL: Duration = Duration::from_millis(25);
/// How often expired keys are deleted, and how many per statement.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);
const CLEANUP_BATCH: u32 = 1_000;

/// The keys of every replica: the local cache, then the shared table.
pub struct Idempotency {
    local: IdempotencyCache,
    /// The table could not be used for the last claim: keys are this process's own meanwhile.
    degraded: AtomicBool,
    pool: MySqlPool,
    ttl: Duration,
    /// How long a replica holds a key it is publishing before others may take it over.
    lease: Duration,
}

pub enum Claim<'a> {
    /// First time: publish, then [`Ticket::complete`] (dropping the ticket forgets the key).
    First(Ticket<'a>),
    /// Seen before: answer this.
    Replay(Remembered),
    /// Another request holds the key and the caller asked not to wait (or waited past its lease).
    Busy,
}

pub struct Ticket<'a> {
    /// Taken by [`Ticket::complete`]; dropped with the ticket otherwise (forgetting the key).
    local: Option<LocalTicket<'a>>,
    pool: &'a MySqlPool,
    ttl: Duration,
    client: String,
    key: String,
    /// Claimed in the shared table too (false while it cannot be used).
    shared: bool,
    completed: bool,
}

impl Idempotency {
    pub fn new(pool: MySqlPool, ttl: Duration, max_keys: usize, lease: Duration) -> Self {
        Self {
            local: IdempotencyCache::new(ttl, max_keys),
            degraded: AtomicBool::new(false),
            pool,
            ttl,
            lease,
        }
    }

    /// Claims `key` for `client` here, then across replicas. With `wait`, waits while another
    /// request holds it; without, answers `Busy` (a batch holds several keys: waiting could
    /// deadlock two batches). Publishing never waits for the database: while the table cannot
    /// be used, keys are remembered by this process only (logged once, and its end).
    pub async fn claim(&self, client: &str, key: &str, wait: bool) -> Claim<'_> {
        let local = match self.local.claim(client, key, wait).await {
            LocalClaim::First(ticket) => ticket,
            LocalClaim::Replay(body) => return Claim::Replay(body),
            LocalClaim::Busy => return Claim::Busy,
        };
        let ticket = |local, shared| Ticket {
            local: Some(local),
            pool: &self.pool,
            ttl: self.ttl,
            client: client.to_owned(),
            key: key.to_owned(),
            shared,
            completed: false,
        };
        let deadline = Instant::now() + self.lease + Duration::from_secs(1);
        loop {
            let claimed = idempotency_keys::claim(&self.pool, client, key, self.lease, self.ttl).await;
            self.note_table_state(claimed.as_ref().err());
            match claimed {
                Err(_) => return Claim::First(ticket(local, false)),
                Ok(KeyClaim::Won) => return Claim::First(ticket(local, true)),
                Ok(KeyClaim::Done(body)) => {
                    local.complete(body.clone());
                    return Claim::Replay(body);
                }
                Ok(KeyClaim::Pending) if !wait || Instant::now() >= deadline => return Claim::Busy,
                Ok(KeyClaim::Pending) => tokio::time::sleep(SHARED_POLL).await,
            }
        }
    }
}

impl Idempotency {
    /// Logs when the shared table stops (or starts again) being usable, not at every request.
    fn note_table_state(&self, error: Option<&StoreError>) {
        let was_degraded = self.degraded.swap(error.is_some(), Ordering::Relaxed);
        match (error, was_degraded) {
            (Some(err), false) => {
                warn!(error = %err, "Idempotency keys cannot be shared through the database; this process remembers them alone until it is back.")
            }
            (None, true) => info!("Idempotency keys shared through the database again."),
            _ => {}
        }
    }
}

/// The cleanup of expired keys runs as a supervised task of the api role.
impl Worker for Arc<Idempotency> {
    fn name(&self) -> &'static str {
        "idempotency-cleanup"
    }

    /// Deletes expired keys every minute until cancelled.
    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(CLEANUP_EVERY) => {}
            }
            loop {
                match idempotency_keys::delete_expired(&self.pool, CLEANUP_BATCH).await {
                    Ok(n) if n == u64::from(CLEANUP_BATCH) && !cancel.is_cancelled() => continue,
                    Ok(n) if n > 0 => info!(deleted = n, "Expired idempotency keys deleted."),
                    Ok(_) => {}
                    Err(err) => warn!(error = %err, "Cannot delete expired idempotency keys; will try again."),
                }
                break;
            }
        }
    }
}

impl Ticket<'_> {
    /// Remembers the success (for every replica, then here) and wakes the requests waiting.
    pub async fn complete(mut self, body: Remembered) {
        self.completed = true;
        let stored = match self.shared {
            true => idempotency_keys::complete(self.pool, &self.client, &self.key, &body, self.ttl).await,
            false => Ok(()),
        };
        if let Err(err) = stored {
            // Published all the same: the answer stands; other replicas see the key pending
            // until its lease ends, then may publish a second copy.
            warn!(error = %err, client = %self.client, key = %self.key, "Cannot store the idempotency key's answer.");
        }
        if let Some(local) = self.local.take() {
            local.complete(body);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // Not completed: the publish failed. Forget the key everywhere, so a retry can succeed.
        if self.shared && !self.completed {
            let (pool, client, key) = (self.pool.clone(), self.client.clone(), self.key.clone());
            tokio::spawn(async move {
                if let Err(err) = idempotency_keys::release(&pool, &client, &key).await {
                    warn!(error = %err, %client, %key, "Cannot release an idempotency key; it frees itself when its lease ends.");
                }
            });
        }
    }
}

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

/// The in-process front of [`Idempotency`].
struct IdempotencyCache {
    ttl: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

enum LocalClaim<'a> {
    First(LocalTicket<'a>),
    Replay(Remembered),
    Busy,
}

/// This process's hold on a key.
struct LocalTicket<'a> {
    cache: &'a IdempotencyCache,
    key: Key,
    done: Option<watch::Sender<Option<Remembered>>>,
}

impl IdempotencyCache {
    fn new(ttl: Duration, max_keys: usize) -> Self {
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
    async fn claim(&self, client: &str, key: &str, wait: bool) -> LocalClaim<'_> {
        let key: Key = (client.to_owned(), key.to_owned());
        loop {
            let mut waiting = {
                let mut state = self.state.lock().expect("idempotency state poisoned");
                self.expire(&mut state);
                match state.entries.get(&key) {
                    Some(Entry::Done(body)) => return LocalClaim::Replay(body.clone()),
                    Some(Entry::Pending(_)) if !wait => return LocalClaim::Busy,
                    Some(Entry::Pending(rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        state.entries.insert(key.clone(), Entry::Pending(rx));
                        return LocalClaim::First(LocalTicket {
                            cache: self,
                            key,
                            done: Some(tx),
                        });
                    }
                }
            };
            // The first request finished (success: replay it) or gave up (claim again).
            if let Ok(value) = waiting.wait_for(Option::is_some).await {
                return LocalClaim::Replay(value.clone().expect("waited for Some"));
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

impl LocalTicket<'_> {
    /// Remembers the success and wakes the requests waiting on the same key.
    fn complete(mut self, body: Remembered) {
        let mut state = self.cache.state.lock().expect("idempotency state poisoned");
        state.entries.insert(self.key.clone(), Entry::Done(body.clone()));
        state.completed.push_back((self.key.clone(), Instant::now()));
        if let Some(tx) = self.done.take() {
            tx.send_replace(Some(body));
        }
    }
}

impl Drop for LocalTicket<'_> {
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
        let LocalClaim::First(ticket) = cache.claim("c", "k1", true).await else {
            panic!("first claim")
        };
        drop(ticket); // the publish failed
        let LocalClaim::First(ticket) = cache.claim("c", "k1", true).await else {
            panic!("a failure is not remembered")
        };
        ticket.complete(serde_json::json!({"message_id": "m1"}));
        let LocalClaim::Replay(body) = cache.claim("c", "k1", true).await else {
            panic!("success remembered")
        };
        assert_eq!(body["message_id"], "m1");
        // Keys are per client.
        assert!(matches!(cache.claim("other", "k1", true).await, LocalClaim::First(_)));
    }

    #[tokio::test]
    async fn a_concurrent_duplicate_waits_for_the_first() {
        let cache = std::sync::Arc::new(IdempotencyCache::new(Duration::from_secs(60), 10));
        let LocalClaim::First(ticket) = cache.claim("c", "k", true).await else {
            panic!()
        };
        assert!(matches!(cache.claim("c", "k", false).await, LocalClaim::Busy));
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                match cache.claim("c", "k", true).await {
                    LocalClaim::Replay(body) => body,
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
            let LocalClaim::First(t) = cache.claim("c", key, true).await else {
                panic!()
            };
            t.complete(serde_json::json!(key));
        }
        assert!(matches!(cache.claim("c", "a", true).await, LocalClaim::First(_)));
        assert!(matches!(cache.claim("c", "c", true).await, LocalClaim::Replay(_)));
    }
}
