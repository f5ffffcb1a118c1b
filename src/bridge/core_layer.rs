//! The bridge for `channels_redis.core.RedisChannelLayer`, the layer most Django projects run.
//!
//! channels_redis keeps a group as a sorted set `PREFIX:group:NAME` of channel names scored by
//! when they joined; `group_send` drops members older than `group_expiry`, and writes the
//! message into each remaining member's channel key (`PREFIX` + the name up to its `!`, a
//! sorted set scored by send time) unless that key holds `capacity` messages already. A node is
//! one member per bridged group, named `switchboard.<node>!<group>` (so the group is in the name
//! `__asgi_channel__` carries back), and all its names share one channel key, which one task
//! pops (`BZPOPMIN`, then the rest of a burst at once). Another task keeps the memberships: a
//! `ZADD` (and the group key's `EXPIRE`, as `group_add` does) when the node wants a group, a
//! renewal of all of them every quarter of `group_expiry` (at most a minute apart) and after a
//! reconnect, a `ZREM` when it no longer wants one, and all of them at shutdown. A node killed
//! outright stops popping; its memberships lapse after `group_expiry` and its channel key
//! after `expiry`.
//!
//! Falling behind: channels_redis refuses (and only logs, in the sender) a message for a full
//! channel key. The node takes up to `capacity` messages per pop, so it counts every pop that
//! found its key full (`switchboard_bridge_channel_full_total`): messages may have been refused
//! for it then. A message older than `expiry` when popped is dropped, as the sender would have.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::{Client, Pipeline};
use fred::interfaces::{KeysInterface, SortedSetsInterface};
use fred::types::Value;
use tokio::task::JoinHandle;

use super::message::{Decoder, now_score};
use super::shards::shard_of;
use super::{Bridge, ChannelsRedisConfig};
use crate::broker::redis::link::Link;
use crate::broker::redis::start_client;
use crate::broker::{BrokerConfig, BrokerError};
use crate::metrics as names;

/// How long one `BZPOPMIN` blocks (below fred's unresponsive-connection timeout).
const BLOCK_SECONDS: f64 = 2.0;
/// How often the membership task looks at the links (and retries what failed).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Renewals never wait longer than this, whatever `group_expiry`.
const MAX_RENEWAL_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest renewal interval.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_millis(250);
/// Groups written per pipeline.
const BATCH: usize = 500;
/// How long a membership pipeline may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed pop before the next.
const POP_RETRY: Duration = Duration::from_millis(200);

struct Core {
    bridge: Arc<Bridge>,
    decoder: Decoder,
    prefix: String,
    /// `switchboard.<node>!`: the non-local part of every channel name of this node.
    channel_base: String,
    /// Where `group_send` writes for this node: the prefix and the channel base.
    channel_key: String,
    group_expiry: Duration,
    renewal: Duration,
    expiry: Duration,
    capacity: usize,
    /// One client per host, for the memberships.
    clients: Vec<(Client, Arc<Link>)>,
    /// A client of its own for the blocking pop, on the channel key's host.
    popper: (Client, Arc<Link>),
}

pub(super) fn start(
    config: &ChannelsRedisConfig,
    hosts: &[BrokerConfig],
    decoder: Decoder,
    bridge: Arc<Bridge>,
) -> Result<Vec<JoinHandle<()>>, BrokerError> {
    let channel_base = format!("switchboard.{:016x}!", fastrand::u64(..));
    let clients = hosts
        .iter()
        .map(|host| start_client(host, "bridge"))
        .collect::<Result<Vec<_>, _>>()?;
    let home = hosts
        .get(shard_of(&channel_base, hosts.len()))
        .ok_or_else(|| BrokerError::Unavailable("no channels_redis host".into()))?;
    let popper = start_client(home, "bridge_pop")?;
    let group_expiry = config.group_expiry.0;
    let core = Arc::new(Core {
        bridge,
        decoder,
        prefix: config.prefix.clone(),
        channel_key: format!("{}{channel_base}", config.prefix),
        channel_base,
        group_expiry,
        renewal: (group_expiry / 4).clamp(MIN_RENEWAL_INTERVAL, MAX_RENEWAL_INTERVAL),
        expiry: config.expiry.0,
        capacity: config.capacity,
        clients,
        popper,
    });
    tracing::info!(channel = %core.channel_base, "channels_redis core layer: this node's channel");
    Ok(vec![
        tokio::spawn(keep_memberships(core.clone())),
        tokio::spawn(pop(core)),
    ])
}

impl Core {
    fn group_key(&self, group: &str) -> String {
        format!("{}:group:{group}", self.prefix)
    }

    fn member(&self, group: &str) -> String {
        format!("{}{group}", self.channel_base)
    }

    /// Writes `add` (joins or renewals) and `remove` to their hosts; the groups whose write
    /// Redis confirmed.
    async fn write(&self, add: &BTreeSet<String>, remove: &BTreeSet<String>) -> Written {
        let mut by_host: BTreeMap<usize, Vec<(&String, bool)>> = BTreeMap::new();
        for group in add {
            by_host
                .entry(shard_of(group, self.clients.len()))
                .or_default()
                .push((group, true));
        }
        for group in remove {
            by_host
                .entry(shard_of(group, self.clients.len()))
                .or_default()
                .push((group, false));
        }
        let mut written = Written::default();
        for (host, groups) in by_host {
            let Some((client, link)) = self.clients.get(host) else {
                continue;
            };
            if !link.is_up(client) {
                continue;
            }
            for batch in groups.chunks(BATCH) {
                if self.write_batch(client, batch).await {
                    for (group, adding) in batch {
                        let done = if *adding {
                            &mut written.added
                        } else {
                            &mut written.removed
                        };
                        done.insert((*group).clone());
                    }
                }
            }
        }
        written
    }

    /// One pipeline: per group `ZADD` + `EXPIRE`, or `ZREM`. Whether all of it succeeded.
    async fn write_batch(&self, client: &Client, batch: &[(&String, bool)]) -> bool {
        let pipeline: Pipeline<Client> = client.pipeline();
        let score = now_score();
        let expire = i64::try_from(self.group_expiry.as_secs()).unwrap_or(i64::MAX);
        for (group, adding) in batch {
            let key = self.group_key(group);
            let member = self.member(group);
            // Queuing only buffers the command.
            let queued: Result<(), _> = if *adding {
                match pipeline
                    .zadd::<Value, _, _>(key.as_str(), None, None, false, false, (score, member))
                    .await
                {
                    Ok(_) => pipeline
                        .expire::<Value, _>(key, expire, None)
                        .await
                        .map(drop),
                    Err(err) => Err(err),
                }
            } else {
                pipeline.zrem::<Value, _, _>(key, member).await.map(drop)
            };
            if let Err(err) = queued {
                tracing::debug!(error = %err, "cannot queue a channels_redis membership");
            }
        }
        let sent = tokio::time::timeout(WRITE_TIMEOUT, pipeline.try_all::<Value>()).await;
        let ok = matches!(&sent, Ok(results) if results.iter().all(Result::is_ok));
        let result = if ok { "ok" } else { "failed" };
        metrics::counter!(names::BRIDGE_MEMBERSHIP_WRITES, "result" => result).increment(1);
        if !ok {
            tracing::debug!("a channels_redis membership write failed; retrying");
        }
        ok
    }

    /// Handles one popped message.
    fn receive(&self, member: &[u8], score: f64) {
        let oldest = now_score() - self.expiry.as_secs_f64();
        if score < oldest {
            Bridge::dropped(names::bridge_dropped::EXPIRED, &"older than expiry");
            return;
        }
        let decoded = match self.decoder.decode(member) {
            Ok(decoded) => decoded,
            Err(err) => return Bridge::dropped(names::bridge_dropped::DECODE, &err),
        };
        let groups: BTreeSet<&str> = decoded
            .targets
            .iter()
            .filter_map(|target| target.strip_prefix(self.channel_base.as_str()))
            .collect();
        if groups.is_empty() {
            return Bridge::dropped(
                names::bridge_dropped::UNMAPPED,
                &"for no group of this node",
            );
        }
        for group in groups {
            self.bridge.deliver(group, decoded.data.clone());
        }
    }
}

#[derive(Default)]
struct Written {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
}

/// Keeps Redis's memberships in line with the groups the node wants.
async fn keep_memberships(core: Arc<Core>) {
    let mut wanted = core.bridge.wanted.subscribe();
    let mut joined: BTreeSet<String> = BTreeSet::new();
    let mut check = tokio::time::interval(CHECK_INTERVAL.min(core.renewal));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    let mut links_up: Vec<bool> = vec![false; core.clients.len()];
    loop {
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            _ = check.tick() => {}
        }
        let want = wanted.borrow_and_update().clone();
        // A host that came (back) up may have lost its keys: renew everything on it.
        let now_up: Vec<bool> = core
            .clients
            .iter()
            .map(|(client, link)| link.is_up(client))
            .collect();
        let reconnected = now_up
            .iter()
            .zip(&links_up)
            .any(|(now, before)| *now && !before);
        links_up = now_up;
        let renew = reconnected || renewed.elapsed() >= core.renewal;
        let add: BTreeSet<String> = if renew {
            want.clone()
        } else {
            want.difference(&joined).cloned().collect()
        };
        let remove: BTreeSet<String> = joined.difference(&want).cloned().collect();
        if add.is_empty() && remove.is_empty() {
            if renew {
                renewed = Instant::now();
            }
            continue;
        }
        let written = core.write(&add, &remove).await;
        if renew && written.added.len() == add.len() {
            renewed = Instant::now();
        }
        joined.extend(written.added);
        for group in &written.removed {
            joined.remove(group);
        }
        core.bridge.set_joined(joined.len());
    }
}

/// Pops the node's channel key until the node stops.
async fn pop(core: Arc<Core>) {
    let (client, link) = &core.popper;
    loop {
        if !link.is_up(client) {
            tokio::time::sleep(POP_RETRY).await;
            continue;
        }
        let first = client
            .bzpopmin::<Value, _>(core.channel_key.as_str(), BLOCK_SECONDS)
            .await;
        let first = match first {
            Ok(Value::Null) => continue,
            Ok(value) => value.into_array(),
            Err(err) => {
                tracing::debug!(error = %err, "channels_redis pop failed; retrying");
                tokio::time::sleep(POP_RETRY).await;
                continue;
            }
        };
        // [key, member, score]
        let mut popped = 0;
        if let [_, member, score] = first.as_slice() {
            popped += 1;
            core.receive(
                member.as_bytes().unwrap_or_default(),
                score.as_f64().unwrap_or(f64::MAX),
            );
        }
        // The rest of a burst at once: [member, score, member, score, …].
        let rest = core.capacity.saturating_sub(1);
        if rest > 0 {
            match client
                .zpopmin::<Value, _>(core.channel_key.as_str(), Some(rest))
                .await
            {
                Ok(value) => {
                    for pair in value.into_array().chunks(2) {
                        if let [member, score] = pair {
                            popped += 1;
                            core.receive(
                                member.as_bytes().unwrap_or_default(),
                                score.as_f64().unwrap_or(f64::MAX),
                            );
                        }
                    }
                }
                Err(err) => tracing::debug!(error = %err, "channels_redis pop failed"),
            }
        }
        if popped >= core.capacity {
            metrics::counter!(names::BRIDGE_FULL).increment(1);
            tracing::debug!(
                capacity = core.capacity,
                "this node's channels_redis channel was full"
            );
        }
    }
}
