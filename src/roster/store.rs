//! The connection registry's store contract: what every node's part of the registry looks like
//! ([`ConnectionRecord`]), what a node writes ([`RosterBatch`]), and the [`RosterStore`] trait
//! the roster writes to and queries. `broker::redis::RedisRoster` implements it, the way
//! `broker::redis::RedisKeys` implements `auth::SessionStore`; a node on the memory broker has no
//! store: it is the whole cluster. A leaf: it depends on nothing else in the crate.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One connection as the registry reports it (`GET /api/connections`), on any node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConnectionRecord {
    pub id: String,
    pub user: Option<String>,
    pub session: Option<String>,
    /// Sorted.
    pub channels: Vec<String>,
    /// Unix seconds.
    pub connected_at: u64,
    /// The node holding the socket.
    pub node: String,
}

/// Which connections a registry query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectionFilter {
    All,
    User(String),
    Channel(String),
}

/// Why the registry could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RosterError {
    /// The store's connection is down (or not up yet): whoever watches the connection says so;
    /// the caller answers 503.
    #[error("connection registry unavailable: its Redis is not connected")]
    NotConnected,
    /// The store is connected but failed the command; the caller answers 503.
    #[error("connection registry unavailable: {0}")]
    Unavailable(String),
}

/// The future a store returns.
pub(crate) type RosterFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, RosterError>> + Send + 'a>>;

/// One channel and how many connections joined it, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ChannelCount {
    pub channel: String,
    pub connections: u64,
}

/// What one write changes in the node's part of the store. `None` removes the entry.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RosterBatch {
    /// Replace the node's whole part (everything not listed is removed).
    pub full: bool,
    pub connections: Vec<(String, Option<ConnectionRecord>)>,
    /// A user's connection ids on this node.
    pub users: Vec<(String, Option<Vec<String>>)>,
    /// A channel's member connection ids on this node.
    pub channels: Vec<(String, Option<Vec<String>>)>,
}

impl RosterBatch {
    pub(crate) fn is_empty(&self) -> bool {
        !self.full
            && self.connections.is_empty()
            && self.users.is_empty()
            && self.channels.is_empty()
    }
}

/// Where every node's part of the registry lives (Redis). Implementations answer queries for
/// the live nodes only: a node whose heartbeat lapsed is not there.
pub(crate) trait RosterStore: Send + Sync + 'static {
    /// Applies a batch to this node's part, and renews its heartbeat.
    fn write(&self, batch: RosterBatch) -> RosterFuture<'_, ()>;
    /// Renews this node's heartbeat; `Ok(false)` when the store no longer holds the node's part
    /// although it wrote one (the next write must be full).
    fn heartbeat(&self, has_entries: bool) -> RosterFuture<'_, bool>;
    fn connections<'a>(
        &'a self,
        filter: &'a ConnectionFilter,
    ) -> RosterFuture<'a, Vec<ConnectionRecord>>;
    fn channel_counts(&self) -> RosterFuture<'_, Vec<ChannelCount>>;
    /// How often `heartbeat` must be called.
    fn heartbeat_interval(&self) -> Duration;
}
