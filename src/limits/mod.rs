//! Connection limits per user and per client address, across the cluster, and the handshake
//! rate per address (`[limits]`).
//!
//! A handshake is counted before it is accepted: [`Limits::admit_address`] (before
//! authentication, so a flood costs no authenticator work) and [`Limits::admit_user`] (once the
//! user is known) return a [`Held`] that the connection's admission ticket keeps until the socket
//! is over; dropping it gives the slot back. Every count is kept locally, and, with a
//! [`LimitStore`] (the Redis broker's `RedisLimits`), cluster-wide as per-node entries that only
//! count while their node is alive in the connection registry, so a node that dies stops
//! counting within `roster.node_ttl` and nothing leaks.
//!
//! While the store is unreachable (or slow), limits fail open but bounded: each node enforces
//! every limit on its own connections alone (so the cluster holds at most nodes × limit), counts
//! the decision in `switchboard_limit_degraded_total`, and marks the key; once the store answers
//! again the node writes its true count for every marked key, and for every key it holds after
//! the store reconnects (a Redis restarted empty gets the counts back within a second). The handshake rate is per node by
//! design: it protects the node's own CPU from a flood before any other work, Redis included.

mod client_address;
pub mod config;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::auth::Handshake;
use crate::auth::gateway::AddressBlock;
use crate::config::KeyError;
use crate::connection::rate_limit::TokenBucket;
use crate::metrics::{self as names, register};
pub use client_address::{address_key, client_address};
pub use config::LimitsConfig;

/// How long a store check may take before the node decides alone.
const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often marked keys are written again.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// Releases waiting for the store before the key is marked instead.
const RELEASE_QUEUE: usize = 65_536;
/// Addresses whose handshake rate is tracked before idle ones are forgotten.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// The store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("limit store unavailable: {0}")]
pub struct StoreUnavailable(pub String);

/// The future of a store operation.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreUnavailable>> + Send>>;

/// Where the cluster-wide counts live. Keys are `user:ID` or `ip:ADDRESS`.
pub trait LimitStore: Send + Sync + 'static {
    /// Counts one more connection of this node under `key` if all live nodes together hold
    /// fewer than `limit`; whether it did.
    fn acquire(&self, key: &str, limit: usize) -> StoreFuture<bool>;
    /// Counts one connection of this node fewer under `key`.
    fn release(&self, key: &str) -> StoreFuture<()>;
    /// Sets this node's count under `key` (0: removes it).
    fn set(&self, key: &str, count: usize) -> StoreFuture<()>;
    /// Bumped each time the store (re)connects: it may have lost what it held (a Redis
    /// restarted without persistence), so every count is written again.
    fn connections(&self) -> u64;
}

/// Which limit refused a handshake (the `limit` label of `switchboard_limit_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PerUser,
    PerIp,
    HandshakeRate,
}

impl Limit {
    pub const ALL: [Limit; 3] = [Limit::PerUser, Limit::PerIp, Limit::HandshakeRate];

    pub fn label(self) -> &'static str {
        match self {
            Limit::PerUser => "per_user",
            Limit::PerIp => "per_ip",
            Limit::HandshakeRate => "handshake_rate",
        }
    }
}

/// A handshake over a limit: which, and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct OverLimit {
    pub limit: Limit,
    pub reason: String,
}

/// One counted connection under one key; dropping it gives the slot back.
pub struct Held {
    limits: Arc<Shared>,
    key: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.limits.release(&self.key);
    }
}

struct Shared {
    /// This node's connections by key.
    local: Mutex<HashMap<String, usize>>,
    /// Keys whose count in the store may be wrong (the store was unreachable).
    marked: Mutex<HashSet<String>>,
    store: Option<Arc<dyn LimitStore>>,
    releases: Option<mpsc::Sender<String>>,
}

impl Shared {
    fn local_count(&self, key: &str) -> usize {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        local.get(key).copied().unwrap_or(0)
    }

    /// Adds one to the local count; the count now.
    fn add_local(&self, key: &str) -> usize {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let count = local.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn remove_local(&self, key: &str) {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = local.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                local.remove(key);
            }
        }
    }

    fn mark(&self, key: &str) {
        let mut marked = self.marked.lock().unwrap_or_else(PoisonError::into_inner);
        marked.insert(key.to_owned());
    }

    fn release(&self, key: &str) {
        self.remove_local(key);
        if let Some(releases) = &self.releases {
            if releases.try_send(key.to_owned()).is_err() {
                self.mark(key);
            }
        }
    }
}

/// The node's limits.
pub struct Limits {
    config: LimitsConfig,
    proxies: Vec<AddressBlock>,
    shared: Arc<Shared>,
    rates: Mutex<HashMap<String, TokenBucket>>,
}

impl Limits {
    /// The limits of `config`, cluster-wide through `store` when given. Must run inside a tokio
    /// runtime with a store (its release and reconcile task).
    pub fn new(
        config: &LimitsConfig,
        store: Option<Arc<dyn LimitStore>>,
    ) -> Result<Self, KeyError> {
        let proxies = config.proxies()?;
        let (releases, queue) = match &store {
            Some(_) => {
                let (sender, receiver) = mpsc::channel(RELEASE_QUEUE);
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            local: Mutex::new(HashMap::new()),
            marked: Mutex::new(HashSet::new()),
            store,
            releases,
        });
        if let Some(queue) = queue {
            tokio::spawn(keep_store(Arc::downgrade(&shared), queue));
        }
        for limit in Limit::ALL {
            register::counter(names::LIMIT_REFUSALS, &[("limit", limit.label())]);
        }
        register::counter(names::LIMIT_DEGRADED, &[]);
        Ok(Self {
            config: config.clone(),
            proxies,
            shared,
            rates: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any limit is on (if not, handshakes skip this module).
    pub fn any(&self) -> bool {
        self.config.any()
    }

    /// The client address of a handshake, as the limits see it.
    pub fn client_address(&self, handshake: &Handshake) -> Option<IpAddr> {
        client_address(handshake, &self.proxies)
    }

    /// Checks the address's handshake rate and counts the connection under its address; `None`
    /// when no address limit is on (or the handshake has no address).
    pub async fn admit_address(&self, address: Option<IpAddr>) -> Result<Option<Held>, OverLimit> {
        let Some(address) = address else {
            return Ok(None);
        };
        let key = address_key(address, self.config.ipv6_prefix);
        if self.config.handshake_rate_per_ip > 0 && !self.take_handshake(&key) {
            return Err(refused(
                Limit::HandshakeRate,
                format!(
                    "too many handshakes from this address (limits.handshake_rate_per_ip = {} per second)",
                    self.config.handshake_rate_per_ip
                ),
            ));
        }
        let limit = self.config.max_connections_per_ip;
        if limit == 0 {
            return Ok(None);
        }
        self.acquire(format!("ip:{key}"), limit)
            .await
            .map(Some)
            .map_err(|()| {
                refused(
                    Limit::PerIp,
                    format!(
                        "this address holds its maximum of {limit} connections (limits.max_connections_per_ip)"
                    ),
                )
            })
    }

    /// Counts the connection under its user; `None` when no user limit is on (or the socket is
    /// anonymous).
    pub async fn admit_user(&self, user: Option<&str>) -> Result<Option<Held>, OverLimit> {
        let limit = self.config.max_connections_per_user;
        let Some(user) = user.filter(|_| limit > 0) else {
            return Ok(None);
        };
        self.acquire(format!("user:{user}"), limit)
            .await
            .map(Some)
            .map_err(|()| {
                refused(
                    Limit::PerUser,
                    format!(
                        "this user holds their maximum of {limit} connections (limits.max_connections_per_user)"
                    ),
                )
            })
    }

    fn take_handshake(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        if rates.len() >= MAX_TRACKED_ADDRESSES && !rates.contains_key(key) {
            // Forget the addresses that have not handshaken lately (their buckets are full).
            rates.retain(|_, bucket| !bucket.is_full(now));
            if rates.len() >= MAX_TRACKED_ADDRESSES {
                // Still as many active addresses: this one goes untracked rather than the
                // table growing without bound (each address still opens at most its sockets).
                return true;
            }
        }
        rates
            .entry(key.to_owned())
            .or_insert_with(|| {
                TokenBucket::new(
                    self.config.handshake_rate_per_ip,
                    self.config.handshake_burst_per_ip,
                    now,
                )
            })
            .try_take(now)
    }

    /// Counts one connection under `key` if fewer than `limit` are held (cluster-wide with a
    /// store that answers, else on this node).
    async fn acquire(&self, key: String, limit: usize) -> Result<Held, ()> {
        let shared = &self.shared;
        let count = shared.add_local(&key);
        let counted = match &shared.store {
            None => count <= limit,
            Some(store) => {
                match tokio::time::timeout(STORE_TIMEOUT, store.acquire(&key, limit)).await {
                    Ok(Ok(counted)) => counted,
                    Ok(Err(_)) | Err(_) => {
                        // Fail open, bounded: this node's own connections decide, and the store
                        // gets the true count once it answers again.
                        metrics::counter!(names::LIMIT_DEGRADED).increment(1);
                        shared.mark(&key);
                        count <= limit
                    }
                }
            }
        };
        if counted {
            Ok(Held {
                limits: shared.clone(),
                key,
            })
        } else {
            shared.remove_local(&key);
            Err(())
        }
    }

    /// This node's connections under `key` (for tests and the docs' arithmetic).
    pub fn local_count(&self, key: &str) -> usize {
        self.shared.local_count(key)
    }
}

fn refused(limit: Limit, reason: String) -> OverLimit {
    metrics::counter!(names::LIMIT_REFUSALS, "limit" => limit.label()).increment(1);
    OverLimit { limit, reason }
}

/// Sends releases to the store, and writes the true count of every marked key once a second,
/// until the limits are dropped.
async fn keep_store(shared: std::sync::Weak<Shared>, mut releases: mpsc::Receiver<String>) {
    let mut reconcile = tokio::time::interval(RECONCILE_INTERVAL);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connections = 0;
    loop {
        let released = tokio::select! {
            released = releases.recv() => match released {
                Some(key) => Some(key),
                None => return,
            },
            _ = reconcile.tick() => None,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(store) = shared.store.clone() else {
            return;
        };
        match released {
            Some(key) => {
                let marked = shared
                    .marked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&key);
                // A marked key gets its true count at the next reconcile instead.
                if !marked {
                    let done = tokio::time::timeout(STORE_TIMEOUT, store.release(&key)).await;
                    if !matches!(done, Ok(Ok(()))) {
                        shared.mark(&key);
                    }
                }
            }
            None => {
                let now = store.connections();
                if now != connections {
                    connections = now;
                    let local: Vec<String> = shared
                        .local
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .keys()
                        .cloned()
                        .collect();
                    for key in local {
                        shared.mark(&key);
                    }
                }
                let marked: Vec<String> = shared
                    .marked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .cloned()
                    .collect();
                for key in marked {
                    // Taken off first: a handshake that fails open meanwhile marks it again.
                    shared
                        .marked
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&key);
                    let count = shared.local_count(&key);
                    let done = tokio::time::timeout(STORE_TIMEOUT, store.set(&key, count)).await;
                    if !matches!(done, Ok(Ok(()))) {
                        shared.mark(&key);
                        break; // still unreachable: the next tick tries again
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(config: LimitsConfig) -> Limits {
        Limits::new(&config, None).expect("limits")
    }

    #[tokio::test]
    async fn per_node_counts_hold_and_give_slots_back() {
        let limits = limits(LimitsConfig {
            max_connections_per_user: 2,
            max_connections_per_ip: 3,
            ..LimitsConfig::default()
        });
        let address: Option<IpAddr> = "192.0.2.1".parse().ok();
        let first = limits.admit_user(Some("u")).await.expect("first");
        let second = limits.admit_user(Some("u")).await.expect("second");
        let over = limits
            .admit_user(Some("u"))
            .await
            .err()
            .expect("third refused");
        assert_eq!(over.limit, Limit::PerUser);
        assert!(limits.admit_user(Some("other")).await.is_ok());
        assert!(limits.admit_user(None).await.expect("anonymous").is_none());
        drop(first);
        assert!(limits.admit_user(Some("u")).await.is_ok());
        drop(second);
        let mut kept = Vec::new();
        for _ in 0..3 {
            kept.push(
                limits
                    .admit_address(address)
                    .await
                    .expect("within the limit"),
            );
        }
        let over = limits.admit_address(address).await.err().expect("refused");
        assert_eq!(over.limit, Limit::PerIp);
        drop(kept);
        assert_eq!(limits.local_count("ip:192.0.2.1"), 0);
    }

    /// A store that is down until told otherwise, recording the counts written to it.
    #[derive(Default)]
    struct Flaky {
        up: std::sync::atomic::AtomicBool,
        connections: std::sync::atomic::AtomicU64,
        written: Mutex<Vec<(String, usize)>>,
    }

    impl LimitStore for Flaky {
        fn acquire(&self, _: &str, _: usize) -> StoreFuture<bool> {
            let up = self.up.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if up {
                    Ok(true)
                } else {
                    Err(StoreUnavailable("down".into()))
                }
            })
        }
        fn release(&self, _: &str) -> StoreFuture<()> {
            Box::pin(async { Err(StoreUnavailable("down".into())) })
        }
        fn set(&self, key: &str, count: usize) -> StoreFuture<()> {
            let up = self.up.load(std::sync::atomic::Ordering::SeqCst);
            if up {
                self.written
                    .lock()
                    .expect("written")
                    .push((key.to_owned(), count));
            }
            Box::pin(async move {
                if up {
                    Ok(())
                } else {
                    Err(StoreUnavailable("down".into()))
                }
            })
        }
        fn connections(&self) -> u64 {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_open_bounded_by_the_node_and_gets_the_true_counts_after() {
        let store = Arc::new(Flaky::default());
        let limits = Limits::new(
            &LimitsConfig {
                max_connections_per_user: 2,
                ..LimitsConfig::default()
            },
            Some(store.clone()),
        )
        .expect("limits");
        let first = limits.admit_user(Some("u")).await.expect("decided alone");
        let second = limits.admit_user(Some("u")).await.expect("decided alone");
        let over = limits
            .admit_user(Some("u"))
            .await
            .err()
            .expect("the node's own bound");
        assert_eq!(over.limit, Limit::PerUser);
        drop(first);
        store.up.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store
            .written
            .lock()
            .expect("written")
            .contains(&("user:u".to_owned(), 1))
        {
            assert!(
                Instant::now() < deadline,
                "the true count was never written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(second);
    }

    #[tokio::test]
    async fn the_handshake_rate_is_a_bucket_per_address() {
        let limits = limits(LimitsConfig {
            handshake_rate_per_ip: 1,
            handshake_burst_per_ip: 2,
            ..LimitsConfig::default()
        });
        let one: Option<IpAddr> = "192.0.2.1".parse().ok();
        let other: Option<IpAddr> = "192.0.2.2".parse().ok();
        assert!(limits.admit_address(one).await.is_ok());
        assert!(limits.admit_address(one).await.is_ok());
        let over = limits
            .admit_address(one)
            .await
            .err()
            .expect("over the burst");
        assert_eq!(over.limit, Limit::HandshakeRate);
        assert!(limits.admit_address(other).await.is_ok());
    }
}
