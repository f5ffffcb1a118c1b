//! [`RedisRoster`]: the connection registry's store in Redis ([`RosterStore`]).
//!
//! Each node owns four hashes, all in one hash slot (the node id is their hash tag), written
//! only by that node and expiring `roster.node_ttl` after its last heartbeat:
//!
//! | key | field | value |
//! |---|---|---|
//! | `PREFIX:reg:{NODE}:conns` | connection id | the record, JSON |
//! | `PREFIX:reg:{NODE}:users` | user id | the user's connection ids on the node, JSON |
//! | `PREFIX:reg:{NODE}:channels` | channel | the channel's member ids on the node, JSON |
//! | `PREFIX:reg:{NODE}:counts` | channel | how many members on the node |
//!
//! and `PREFIX:reg:nodes`, a sorted set of node ids scored by when their part expires (unix
//! ms). A reader asks the sorted set for the nodes still alive and reads their hashes; a node
//! that stopped heartbeating is skipped at once and its keys vanish by themselves. A write is one
//! `MULTI` on the node's keys, so a reader never sees half of a full rewrite.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface, SortedSetsInterface, TransactionInterface};
use futures_util::future::try_join_all;

use super::link::Link;
use super::start_client;
use crate::broker::{BrokerConfig, BrokerError};
use crate::roster::store::{
    ChannelCount, ConnectionFilter, ConnectionRecord, RosterBatch, RosterError, RosterFuture,
    RosterStore,
};

/// How long one registry command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The node's keys, in one slot.
struct NodeKeys {
    connections: String,
    users: String,
    channels: String,
    counts: String,
}

impl NodeKeys {
    fn new(prefix: &str, node: &str) -> Self {
        let key = |what: &str| format!("{prefix}:reg:{{{node}}}:{what}");
        Self {
            connections: key("conns"),
            users: key("users"),
            channels: key("channels"),
            counts: key("counts"),
        }
    }

    fn all(&self) -> [&str; 4] {
        [&self.connections, &self.users, &self.channels, &self.counts]
    }
}

pub struct RedisRoster {
    client: Client,
    link: Arc<Link>,
    prefix: String,
    node: String,
    keys: NodeKeys,
    nodes_key: String,
    ttl: Duration,
}

impl RedisRoster {
    /// Starts connecting in the background (Redis need not be up); must run inside a tokio
    /// runtime. `node` is this node's id (the prefix of its connection ids); its entries live
    /// `ttl` past its last heartbeat (`roster.node_ttl`).
    pub fn start(config: &BrokerConfig, ttl: Duration, node: &str) -> Result<Self, BrokerError> {
        let (client, link) = start_client(config, "registry")?;
        Ok(Self {
            client,
            link,
            prefix: config.prefix.clone(),
            node: node.to_owned(),
            keys: NodeKeys::new(&config.prefix, node),
            nodes_key: format!("{}:reg:nodes", config.prefix),
            ttl,
        })
    }

    fn check_link(&self) -> Result<(), RosterError> {
        if self.link.is_up(&self.client) {
            Ok(())
        } else {
            Err(RosterError::NotConnected)
        }
    }

    /// Announces this node alive until `now + ttl`, and forgets nodes whose time is up.
    async fn renew_node(&self) -> Result<(), RosterError> {
        let now = unix_millis();
        let expires = (now + self.ttl.as_millis() as u64) as f64;
        let _: () = bounded(self.client.zadd(
            &self.nodes_key,
            None,
            None,
            false,
            false,
            (expires, self.node.as_str()),
        ))
        .await?;
        let _: () = bounded(
            self.client
                .zremrangebyscore(&self.nodes_key, "-inf", now as f64),
        )
        .await?;
        Ok(())
    }

    /// The ids of the nodes alive now.
    async fn live_nodes(&self) -> Result<Vec<String>, RosterError> {
        self.check_link()?;
        bounded(self.client.zrangebyscore(
            &self.nodes_key,
            unix_millis() as f64,
            "+inf",
            false,
            None,
        ))
        .await
    }

    /// One node's records for `filter`.
    async fn node_records(
        &self,
        node: &str,
        filter: &ConnectionFilter,
    ) -> Result<Vec<ConnectionRecord>, RosterError> {
        let keys = NodeKeys::new(&self.prefix, node);
        let (index, field) = match filter {
            ConnectionFilter::All => {
                let values: Vec<String> = bounded(self.client.hvals(&keys.connections)).await?;
                return Ok(parse_records(node, values.iter().map(String::as_str)));
            }
            ConnectionFilter::User(user) => (&keys.users, user),
            ConnectionFilter::Channel(channel) => (&keys.channels, channel),
        };
        let ids: Option<String> = bounded(self.client.hget(index, field.as_str())).await?;
        let ids: Vec<String> = match ids.map(|ids| serde_json::from_str(&ids)) {
            None => return Ok(Vec::new()),
            Some(Ok(ids)) => ids,
            Some(Err(err)) => {
                tracing::warn!(%node, error = %err, "unreadable registry index entry; skipped");
                return Ok(Vec::new());
            }
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            bounded(self.client.hmget(&keys.connections, ids)).await?;
        Ok(parse_records(
            node,
            values.iter().flatten().map(String::as_str),
        ))
    }
}

impl RosterStore for RedisRoster {
    fn write(&self, batch: RosterBatch) -> RosterFuture<'_, ()> {
        Box::pin(async move {
            self.check_link()?;
            let keys = &self.keys;
            let transaction = self.client.multi();
            if batch.full {
                let _: () = queue(transaction.del(keys.all().to_vec())).await?;
            }
            let (mut records, mut gone) = (Vec::new(), Vec::new());
            for (id, record) in batch.connections {
                match record.map(|record| serde_json::to_string(&record)) {
                    Some(Ok(json)) => records.push((id, json)),
                    Some(Err(_)) | None => gone.push(id),
                }
            }
            set_and_delete(&transaction, &keys.connections, records, gone).await?;
            let (mut users, mut gone) = (Vec::new(), Vec::new());
            for (user, ids) in batch.users {
                match ids {
                    Some(ids) => users.push((user, json_list(&ids))),
                    None => gone.push(user),
                }
            }
            set_and_delete(&transaction, &keys.users, users, gone).await?;
            let (mut channels, mut counts, mut gone) = (Vec::new(), Vec::new(), Vec::new());
            for (channel, ids) in batch.channels {
                match ids {
                    Some(ids) => {
                        counts.push((channel.clone(), ids.len().to_string()));
                        channels.push((channel, json_list(&ids)));
                    }
                    None => gone.push(channel),
                }
            }
            set_and_delete(&transaction, &keys.channels, channels, gone.clone()).await?;
            set_and_delete(&transaction, &keys.counts, counts, gone).await?;
            let ttl = self.ttl.as_millis() as i64;
            for key in keys.all() {
                let _: () = queue(transaction.pexpire(key, ttl, None)).await?;
            }
            let _: () = bounded(transaction.exec(true)).await?;
            self.renew_node().await
        })
    }

    fn heartbeat(&self, has_entries: bool) -> RosterFuture<'_, bool> {
        Box::pin(async move {
            self.check_link()?;
            let ttl = self.ttl.as_millis() as i64;
            let transaction = self.client.multi();
            for key in self.keys.all() {
                let _: () = queue(transaction.pexpire(key, ttl, None)).await?;
            }
            let renewed: Vec<i64> = bounded(transaction.exec(true)).await?;
            self.renew_node().await?;
            // With connections, the record hash exists; gone means Redis lost it.
            Ok(!has_entries || renewed.first().is_some_and(|&renewed| renewed == 1))
        })
    }

    fn connections<'a>(
        &'a self,
        filter: &'a ConnectionFilter,
    ) -> RosterFuture<'a, Vec<ConnectionRecord>> {
        Box::pin(async move {
            let nodes = self.live_nodes().await?;
            let per_node = try_join_all(nodes.iter().map(|node| self.node_records(node, filter)));
            Ok(per_node.await?.into_iter().flatten().collect())
        })
    }

    fn channel_counts(&self) -> RosterFuture<'_, Vec<ChannelCount>> {
        Box::pin(async move {
            let nodes = self.live_nodes().await?;
            let per_node = try_join_all(nodes.iter().map(|node| async move {
                let keys = NodeKeys::new(&self.prefix, node);
                let counts: Vec<(String, u64)> = bounded(self.client.hgetall(&keys.counts))
                    .await
                    .map(
                    |counts: std::collections::HashMap<String, u64>| counts.into_iter().collect(),
                )?;
                Ok::<_, RosterError>(counts)
            }));
            Ok(per_node
                .await?
                .into_iter()
                .flatten()
                .map(|(channel, connections)| ChannelCount {
                    channel,
                    connections,
                })
                .collect())
        })
    }

    fn heartbeat_interval(&self) -> Duration {
        self.ttl / 3
    }
}

/// `HSET key pairs` and `HDEL key gone` in the transaction, each only when non-empty.
async fn set_and_delete(
    transaction: &fred::clients::Transaction,
    key: &str,
    pairs: Vec<(String, String)>,
    gone: Vec<String>,
) -> Result<(), RosterError> {
    if !pairs.is_empty() {
        let _: () = queue(transaction.hset(key, pairs)).await?;
    }
    if !gone.is_empty() {
        let _: () = queue(transaction.hdel(key, gone)).await?;
    }
    Ok(())
}

fn json_list(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned())
}

fn parse_records<'a>(node: &str, values: impl Iterator<Item = &'a str>) -> Vec<ConnectionRecord> {
    values
        .filter_map(|value| match serde_json::from_str(value) {
            Ok(record) => Some(record),
            Err(err) => {
                tracing::warn!(%node, error = %err, "unreadable registry record; skipped");
                None
            }
        })
        .collect()
}

pub(super) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A command queued in a transaction (answered `QUEUED` at once).
async fn queue<T>(
    command: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, RosterError> {
    command
        .await
        .map_err(|err| RosterError::Unavailable(err.to_string()))
}

/// A command bounded by [`COMMAND_TIMEOUT`].
async fn bounded<T>(
    command: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, RosterError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(RosterError::Unavailable(err.to_string())),
        Err(_) => Err(RosterError::Unavailable(format!(
            "redis took longer than {COMMAND_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_keys_share_one_hash_slot_tag() {
        let keys = NodeKeys::new("sb", "0a1b2c3d");
        assert_eq!(keys.connections, "sb:reg:{0a1b2c3d}:conns");
        assert!(keys.all().iter().all(|key| key.contains("{0a1b2c3d}")));
    }
}
