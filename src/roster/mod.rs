//! The connection registry (the roster), whole: which connections exist on every node, who they
//! are, which channels they joined, and who is present in a channel, answered for the whole
//! cluster.
//!
//! - [`store`]: the contract of where every node's part lives ([`RosterStore`], the records);
//!   `broker::redis::RedisRoster` implements it;
//! - [`changes`]: what changed on this node since its part was last written ([`ChangeLog`], told
//!   by the hub's directory);
//! - [`config`]: the `[roster]` section (`node_ttl`);
//! - here, [`Roster`]: the writer and the queries.
//!
//! Each node is the only writer of its own part. The node's `ConnectionDirectory` is the truth;
//! [`Roster::run`] writes what changed out to the store at most every [`FLUSH_INTERVAL`], in one
//! batch, and renews the node's heartbeat. Every entry the store holds belongs to a node and
//! expires with that node's heartbeat, so a node that dies takes its entries with it within
//! `roster.node_ttl`, with no cleanup job anywhere. After a failed write, or when the store lost
//! the node's entries (Redis restarted), the next write is a full one: the node's whole part,
//! replaced at once.
//!
//! Queries ([`Roster::connections`], [`Roster::channels`], [`Roster::presence`]) read the store
//! when there is one (every live node's part), else this node's directory (the memory broker:
//! one node is the cluster).
//!
//! What it is not: it carries no messages (the broker does) and decides nothing about access.

pub(crate) mod changes;
pub(crate) mod config;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub(crate) use changes::ChangeLog;
pub use config::RosterConfig;
pub(crate) use store::{
    ChannelCount, ConnectionFilter, ConnectionRecord, RosterBatch, RosterError, RosterStore,
};

use crate::hub::{ConnectionDirectory, ConnectionKey, ConnectionView};
use crate::metrics as names;

/// The shortest time between two writes: changes arriving meanwhile go out together.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// After a failed write, the next attempt waits this long (the write is then a full one).
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// The longest the shutdown waits to withdraw the node from the registry.
pub(crate) const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(1);

/// Who is in a channel, cluster-wide (`GET /api/presence`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Presence {
    pub channel: String,
    /// Every connection, anonymous ones included.
    pub connections: u64,
    /// The users with at least one connection in the channel, sorted.
    pub users: Vec<UserPresence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct UserPresence {
    pub user: String,
    pub connections: u64,
}

/// A store shared with the other nodes, and this node's changes not yet written to it.
struct Shared {
    store: Arc<dyn RosterStore>,
    changes: Arc<ChangeLog>,
}

/// The registry as the API and the CLI see it.
#[derive(Clone)]
pub(crate) struct Roster {
    directory: Arc<ConnectionDirectory>,
    shared: Option<Arc<Shared>>,
}

impl Roster {
    /// A registry of this node alone (the memory broker): queries answer from `directory`.
    pub(crate) fn local(directory: Arc<ConnectionDirectory>) -> Self {
        Self {
            directory,
            shared: None,
        }
    }

    /// A registry shared through `store`: `directory` must be observed by `changes`
    /// ([`ConnectionDirectory::observed`]), and [`run`](Self::run) must be spawned.
    pub(crate) fn shared(
        directory: Arc<ConnectionDirectory>,
        store: Arc<dyn RosterStore>,
        changes: Arc<ChangeLog>,
    ) -> Self {
        names::register::gauge(names::REGISTRY_CONNECTIONS);
        names::register::counter(names::REGISTRY_WRITE_FAILURES, &[]);
        Self {
            directory,
            shared: Some(Arc::new(Shared { store, changes })),
        }
    }

    /// Whether answers cover the cluster (a store) or this node only.
    pub(crate) fn is_cluster_wide(&self) -> bool {
        self.shared.is_some()
    }

    /// The record of one of this node's connections.
    fn record(&self, view: ConnectionView) -> ConnectionRecord {
        ConnectionRecord {
            id: view.id.to_string(),
            user: view.user.as_deref().map(str::to_owned),
            session: view.session.as_deref().map(str::to_owned),
            channels: view.channels.iter().map(ToString::to_string).collect(),
            connected_at: view.connected_at,
            node: self.directory.node(),
        }
    }

    /// This node's records for `filter`, sorted by id.
    fn local_records(&self, filter: &ConnectionFilter) -> Vec<ConnectionRecord> {
        let keys: Vec<ConnectionKey> = match filter {
            ConnectionFilter::All => self.directory.keys(),
            ConnectionFilter::User(user) => self.directory.keys_of_user(user),
            ConnectionFilter::Channel(channel) => self.directory.keys_in_channel(channel),
        };
        let mut records: Vec<ConnectionRecord> = keys
            .into_iter()
            .filter_map(|key| self.directory.view(key))
            .map(|view| self.record(view))
            .collect();
        records.sort_unstable_by(|left, right| left.id.cmp(&right.id));
        records
    }

    /// The records `filter` selects, sorted by id, at most `limit` of them; and whether there
    /// were more.
    pub(crate) async fn connections(
        &self,
        filter: &ConnectionFilter,
        limit: usize,
    ) -> Result<(Vec<ConnectionRecord>, bool), RosterError> {
        let mut records = match &self.shared {
            Some(shared) => shared.store.connections(filter).await?,
            None => self.local_records(filter),
        };
        records.sort_unstable_by(|left, right| left.id.cmp(&right.id));
        let truncated = records.len() > limit;
        records.truncate(limit);
        Ok((records, truncated))
    }

    /// Channels whose name starts with `prefix`, with their connection counts, sorted by name.
    pub(crate) async fn channels(&self, prefix: &str) -> Result<Vec<ChannelCount>, RosterError> {
        let counts = match &self.shared {
            Some(shared) => shared.store.channel_counts().await?,
            None => self
                .directory
                .channel_counts()
                .into_iter()
                .map(|(channel, members)| ChannelCount {
                    channel: channel.to_string(),
                    connections: members as u64,
                })
                .collect(),
        };
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for count in counts {
            if count.channel.starts_with(prefix) {
                *merged.entry(count.channel).or_default() += count.connections;
            }
        }
        Ok(merged
            .into_iter()
            .map(|(channel, connections)| ChannelCount {
                channel,
                connections,
            })
            .collect())
    }

    /// Who is in `channel`.
    pub(crate) async fn presence(&self, channel: &str) -> Result<Presence, RosterError> {
        let (records, _) = self
            .connections(&ConnectionFilter::Channel(channel.to_owned()), usize::MAX)
            .await?;
        Ok(presence_of(channel, &records))
    }

    /// Writes this node's changes out and keeps its heartbeat, forever. Nothing to do without
    /// a store.
    pub(crate) async fn run(self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let store = &shared.store;
        let mut heartbeat = tokio::time::interval(store.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A fresh node has nothing to write until its first connection.
        let mut full = !self.directory.is_empty();
        // Whether the store may hold this node's part: until the first write, a heartbeat has
        // nothing to keep alive and an empty directory nothing to write.
        let mut wrote = false;
        // One warning per outage, not one per retry.
        let mut failing = false;
        loop {
            tokio::select! {
                () = shared.changes.changed() => {}
                _ = heartbeat.tick(), if wrote || !self.directory.is_empty() => {
                    match store.heartbeat(!self.directory.is_empty()).await {
                        Ok(true) => {}
                        Ok(false) => full = true,
                        Err(err) => {
                            tracing::debug!(error = %err, "registry heartbeat failed");
                            full = true;
                        }
                    }
                }
            }
            let batch = self.batch(&shared.changes, full);
            if !batch.is_empty() {
                match store.write(batch).await {
                    Ok(()) => {
                        full = false;
                        wrote = true;
                        if std::mem::take(&mut failing) {
                            tracing::info!("registry written again");
                        }
                    }
                    Err(err) => {
                        metrics::counter!(names::REGISTRY_WRITE_FAILURES).increment(1);
                        // Redis not connected (at start, or during an outage) is the broker's
                        // news, warned once by its connection watcher; a failing command is ours.
                        let news = !matches!(err, RosterError::NotConnected);
                        if !std::mem::replace(&mut failing, true) && news {
                            tracing::warn!(error = %err, "registry write failed; retrying, then rewriting this node's part");
                        } else {
                            tracing::debug!(error = %err, "registry write failed; retrying");
                        }
                        full = true;
                        tokio::time::sleep(RETRY_DELAY).await;
                        continue;
                    }
                }
            }
            metrics::gauge!(names::REGISTRY_CONNECTIONS).set(self.directory.len() as f64);
            tokio::time::sleep(FLUSH_INTERVAL).await;
        }
    }

    /// On shutdown, after the drain: writes this node's part as it is now (normally empty), so
    /// its closed connections leave the registry at once rather than at the heartbeat's expiry.
    /// Bounded by [`WITHDRAW_TIMEOUT`].
    pub(crate) async fn withdraw(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let written =
            tokio::time::timeout(WITHDRAW_TIMEOUT, shared.store.write(self.full_batch())).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(
                "could not withdraw this node from the registry; its entries expire with its heartbeat"
            );
        }
    }

    /// What to write now: the changes since the last batch, or (`full`) the node's whole part.
    fn batch(&self, changes: &ChangeLog, full: bool) -> RosterBatch {
        let changes = changes.take();
        if full {
            return self.full_batch();
        }
        let directory = &self.directory;
        let ids_or_none = |ids: Vec<String>| (!ids.is_empty()).then_some(ids);
        RosterBatch {
            full: false,
            connections: changes
                .connections
                .iter()
                .map(|id| {
                    let record = directory.view_of(id).map(|view| self.record(view));
                    (id.to_string(), record)
                })
                .collect(),
            users: changes
                .users
                .iter()
                .map(|user| (user.to_string(), ids_or_none(directory.ids_of_user(user))))
                .collect(),
            channels: changes
                .channels
                .iter()
                .map(|channel| {
                    let ids = directory.ids_in_channel(channel.as_str());
                    (channel.to_string(), ids_or_none(ids))
                })
                .collect(),
        }
    }

    fn full_batch(&self) -> RosterBatch {
        let directory = &self.directory;
        RosterBatch {
            full: true,
            connections: self
                .local_records(&ConnectionFilter::All)
                .into_iter()
                .map(|record| (record.id.clone(), Some(record)))
                .collect(),
            users: directory
                .users()
                .iter()
                .map(|user| (user.to_string(), Some(directory.ids_of_user(user))))
                .collect(),
            channels: directory
                .channel_counts()
                .into_iter()
                .map(|(channel, _)| {
                    let ids = directory.ids_in_channel(channel.as_str());
                    (channel.to_string(), Some(ids))
                })
                .collect(),
        }
    }
}

/// The users (with their connection counts) among `records`.
pub(crate) fn presence_of(channel: &str, records: &[ConnectionRecord]) -> Presence {
    let mut users: BTreeMap<&str, u64> = BTreeMap::new();
    for user in records.iter().filter_map(|record| record.user.as_deref()) {
        *users.entry(user).or_default() += 1;
    }
    Presence {
        channel: channel.to_owned(),
        connections: records.len() as u64,
        users: users
            .into_iter()
            .map(|(user, connections)| UserPresence {
                user: user.to_owned(),
                connections,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, user: Option<&str>) -> ConnectionRecord {
        ConnectionRecord {
            id: id.to_owned(),
            user: user.map(str::to_owned),
            session: None,
            channels: vec!["room".to_owned()],
            connected_at: 0,
            node: "n".to_owned(),
        }
    }

    #[test]
    fn presence_counts_users_and_anonymous_connections() {
        let records = [
            record("c_1", Some("bob")),
            record("c_2", Some("alice")),
            record("c_3", Some("bob")),
            record("c_4", None),
        ];
        let presence = presence_of("room", &records);
        assert_eq!(presence.connections, 4);
        assert_eq!(
            presence.users,
            vec![
                UserPresence {
                    user: "alice".into(),
                    connections: 1
                },
                UserPresence {
                    user: "bob".into(),
                    connections: 2
                },
            ]
        );
    }
}
