//! [`RedisLimits`]: the cluster-wide counts of `limits` (the `LimitStore`), one hash per key
//! (`PREFIX:limit:user:ID`, `PREFIX:limit:ip:ADDRESS`) with a field per node holding that node's
//! connections. Liveness is the connection registry's: `PREFIX:reg:nodes`, node ids scored by
//! when their entry expires. A check is one Lua call on the key and that set: it renews this
//! node's entry (so a node is in the set before its first count, whatever the registry's
//! heartbeat has done yet), sums the fields of the nodes whose entry has not expired, deletes
//! the others' (those nodes are dead: they would have renewed), and adds one for this node if
//! the sum is under the limit. A node that dies stops counting when its entry expires
//! (`roster.node_ttl`). Every limit key carries the registry key's name as its hash tag, so
//! under Redis Cluster both live in one slot and the script may touch both; the keys expire a
//! day after their last write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{HashesInterface, LuaInterface};
use fred::types::Value;

use super::link::Link;
use super::start_client;
use crate::broker::{BrokerConfig, BrokerError};
use crate::limits::{LimitStore, StoreFuture, StoreUnavailable};

/// KEYS[1] the limit key, KEYS[2] the registry's live nodes; ARGV[1] this node, ARGV[2] the
/// limit, ARGV[3] the key's ttl (s), ARGV[4] now (unix ms), ARGV[5] this node's entry expiry.
const ACQUIRE: &str = r#"
local now = tonumber(ARGV[4])
local mine = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or 0)
if mine < tonumber(ARGV[5]) then redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1]) end
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local expires = tonumber(redis.call('ZSCORE', KEYS[2], fields[i]) or 0)
  if expires > now then
    total = total + (tonumber(fields[i + 1]) or 0)
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// Counts one fewer for this node (ARGV[1]), removing the field at zero.
const RELEASE: &str = r#"
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return left
"#;

/// How long a key outlives its last write.
const KEY_TTL_SECONDS: i64 = 86_400;
/// How often the link is looked at.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(250);

struct Inner {
    client: Client,
    link: Arc<Link>,
    /// `PREFIX:reg:nodes`, also the hash tag of every limit key.
    nodes_key: String,
    node: String,
    /// The registry's `node_ttl`: how long this node's entry lasts from a check.
    node_ttl: Duration,
    /// Times the link came up.
    connections: AtomicU64,
}

/// The Redis side of `limits`.
pub struct RedisLimits {
    inner: Arc<Inner>,
    watcher: tokio::task::JoinHandle<()>,
}

impl RedisLimits {
    /// Starts connecting in the background; `node` is this node's registry id, `node_ttl` the
    /// registry's. Must run inside a tokio runtime.
    pub fn start(
        config: &BrokerConfig,
        node: &str,
        node_ttl: Duration,
    ) -> Result<Self, BrokerError> {
        let (client, link) = start_client(config, "limits")?;
        let inner = Arc::new(Inner {
            client,
            link,
            nodes_key: format!("{}:reg:nodes", config.prefix),
            node: node.to_owned(),
            node_ttl,
            connections: AtomicU64::new(0),
        });
        let watcher = tokio::spawn(count_connections(Arc::downgrade(&inner)));
        Ok(Self { inner, watcher })
    }
}

impl Drop for RedisLimits {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Counts the times the link comes up (the store may have lost its keys then).
async fn count_connections(inner: std::sync::Weak<Inner>) {
    let mut interval = tokio::time::interval(LINK_CHECK_INTERVAL);
    let mut was_up = false;
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let up = inner.link.is_up(&inner.client);
        if up && !was_up {
            inner.connections.fetch_add(1, Ordering::SeqCst);
        }
        was_up = up;
    }
}

impl Inner {
    /// The limit key, in the registry key's slot (its name as the hash tag).
    fn key(&self, key: &str) -> String {
        format!("{{{}}}:limit:{key}", self.nodes_key)
    }

    fn check(&self) -> Result<(), StoreUnavailable> {
        if self.link.is_up(&self.client) {
            Ok(())
        } else {
            Err(StoreUnavailable("redis is not connected".into()))
        }
    }
}

fn unavailable(err: fred::error::Error) -> StoreUnavailable {
    StoreUnavailable(err.to_string())
}

impl LimitStore for RedisLimits {
    fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::SeqCst)
    }

    fn acquire(&self, key: &str, limit: usize) -> StoreFuture<bool> {
        let inner = self.inner.clone();
        let key = inner.key(key);
        Box::pin(async move {
            inner.check()?;
            let now = super::roster::unix_millis();
            let expires = now.saturating_add(inner.node_ttl.as_millis() as u64);
            let args = vec![
                inner.node.clone(),
                limit.to_string(),
                KEY_TTL_SECONDS.to_string(),
                now.to_string(),
                expires.to_string(),
            ];
            let counted: i64 = inner
                .client
                .eval(ACQUIRE, vec![key, inner.nodes_key.clone()], args)
                .await
                .map_err(unavailable)?;
            Ok(counted == 1)
        })
    }

    fn release(&self, key: &str) -> StoreFuture<()> {
        let inner = self.inner.clone();
        let key = inner.key(key);
        Box::pin(async move {
            inner.check()?;
            let _: Value = inner
                .client
                .eval(RELEASE, vec![key], vec![inner.node.clone()])
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn set(&self, key: &str, count: usize) -> StoreFuture<()> {
        let inner = self.inner.clone();
        let key = inner.key(key);
        Box::pin(async move {
            inner.check()?;
            if count == 0 {
                let _: Value = inner
                    .client
                    .hdel(&key, inner.node.as_str())
                    .await
                    .map_err(unavailable)?;
            } else {
                let count = i64::try_from(count).unwrap_or(i64::MAX);
                let _: Value = inner
                    .client
                    .hset(&key, (inner.node.as_str(), count))
                    .await
                    .map_err(unavailable)?;
                let _: Value = fred::interfaces::KeysInterface::expire(
                    &inner.client,
                    &key,
                    KEY_TTL_SECONDS,
                    None,
                )
                .await
                .map_err(unavailable)?;
            }
            Ok(())
        })
    }
}
