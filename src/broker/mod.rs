//! Cross-node fan-out: the [`Broker`] trait and its implementations.
//!
//! A publication takes one path whatever the deployment: connection → `Broker::publish` →
//! (the broker's transport) → [`BrokerSink::on_publication`] on every node that subscribed.
//! The broker pushes into the narrow sink it is given at construction; it never holds the hub or
//! any actor, so it can be tested alone.
//!
//! Subscriptions are per topic per node, reference-counted: a channel's group subscribes when it
//! starts and unsubscribes when it retires, each connection of a user holds a reference to the
//! user's topic, so a node holds one subscription per topic however many local members it has.
//! The contract every implementation passes is `tests/it/broker_contract.rs`.
//!
//! Implementations, one module each:
//! - [`memory::MemoryBroker`]: single node, no Redis; publications are handed straight back to
//!   the local sink when the topic is subscribed, history is a ring per channel. Never
//!   unavailable.
//! - [`redis::RedisBroker`]: any number of nodes through Redis or Redis Cluster; back ends
//!   publish with plain `PUBLISH`. Unavailable while Redis is unreachable.
//!
//! A [`Topic`] is a channel or a user (every connection of the user). Control operations
//! (disconnects) travel through the broker too, to every node. Channels whose rule keeps
//! history get offsets and a replayable history from the broker ([`history`]).
//!
//! Nothing outside this module knows how a broker transports publications.

pub mod history;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::human_duration::HumanDuration;
use crate::protocol::{ChannelName, ControlOp, Position, PublicationKind};

pub use history::{History, HistoryQuery, HistoryRule, HistoryRules};
pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisKeys, RedisLimits, RedisRoster};

/// What a publication is addressed to, and what a node subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The members of a channel (`PREFIX:ch:NAME` in Redis).
    Channel(ChannelName),
    /// Every connection of a user (`PREFIX:user:USER`); frames carry no channel.
    User(Arc<str>),
    /// One connection, by its public id (`c_…`); frames carry no channel. Never subscribed to:
    /// a publication to it travels as a `send` control operation, which every node sees and
    /// the connection's own node delivers.
    Connection(Arc<str>),
}

impl Topic {
    /// The channel, for a channel topic.
    pub fn channel(&self) -> Option<&ChannelName> {
        match self {
            Topic::Channel(channel) => Some(channel),
            Topic::User(_) | Topic::Connection(_) => None,
        }
    }
}

impl From<ChannelName> for Topic {
    fn from(channel: ChannelName) -> Self {
        Topic::Channel(channel)
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Channel(channel) => write!(formatter, "channel {channel}"),
            Topic::User(user) => write!(formatter, "user {user}"),
            Topic::Connection(id) => write!(formatter, "connection {id}"),
        }
    }
}

/// One message published to one topic. Shared by reference (`Arc`) from the broker to the
/// group (or the user's connections), which encodes it once per encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub topic: Topic,
    /// A `message`, or a `presence` event (whose `data` is `{"joined"|"left": {...}}`).
    pub kind: PublicationKind,
    pub data: Value,
    /// The publishing user's id; `None` for back-end and anonymous publications.
    pub from: Option<String>,
    /// When this node published it or received it from the transport (for the latency metric).
    pub published_at: Instant,
    /// On the way to the broker: the channel keeps history under this rule (the hub sets it
    /// from the channel's rule), so the broker records it and gives it an offset.
    pub history: Option<HistoryRule>,
    /// On the way from the broker: where it stands in its channel's history.
    pub position: Option<Position>,
}

impl Publication {
    /// A presence event on `channel`: `{"joined": who}` or `{"left": who}`.
    pub fn presence(channel: ChannelName, joined: bool, who: Value) -> Self {
        let key = if joined { "joined" } else { "left" };
        Self {
            kind: PublicationKind::Presence,
            ..Self::new(channel, serde_json::json!({ key: who }), None)
        }
    }

    pub fn new(topic: impl Into<Topic>, data: Value, from: Option<String>) -> Self {
        Self {
            topic: topic.into(),
            kind: PublicationKind::Message,
            data,
            from,
            published_at: Instant::now(),
            history: None,
            position: None,
        }
    }
}

/// Where a broker delivers what it receives. Implemented by the hub.
pub trait BrokerSink: Send + Sync + 'static {
    /// Hands a publication to this node's members. Never blocks: when the channel's group is too
    /// far behind to take it, the answer is [`SinkError::Overloaded`] and the broker decides what
    /// the publisher hears (the memory broker answers its publish with an error).
    fn on_publication(&self, publication: Arc<Publication>) -> Result<(), SinkError>;

    /// Applies a control operation to this node's connections (those it matches, if any).
    fn on_control(&self, op: ControlOp);

    /// Publications on `channel` (on every channel, for `None`) may have been lost on their way
    /// to this node: its subscription was made again after a reconnect, or the receiver fell
    /// behind. Groups that keep history read what they missed.
    fn on_gap(&self, channel: Option<&ChannelName>);
}

/// Why a sink did not take a publication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The channel's group has a full mailbox on this node.
    #[error("channel {0} is overloaded on this node; retry")]
    Overloaded(ChannelName),
}

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The transport is down or not connected yet; the caller answers `backend_unavailable`.
    /// The text is for the log.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The transport took the publication but did not confirm it in time: it may still be
    /// delivered (a connection that hangs rather than breaks cannot tell).
    #[error("the broker did not confirm the publish within {0:?}; it may still be delivered")]
    Unconfirmed(std::time::Duration),
    /// The publication reached the broker but not the channel's members; nothing was delivered.
    #[error(transparent)]
    Overloaded(#[from] SinkError),
    /// The broker could not be built from its configuration (names the key).
    #[error("invalid broker configuration: {0}")]
    Config(crate::config::KeyError),
}

impl BrokerError {
    /// What a client or API caller is told: this node's own words (an overloaded channel, an
    /// unconfirmed publish), never the transport's, which go to the log.
    pub fn client_reason(&self) -> String {
        match self {
            BrokerError::Unavailable(_) | BrokerError::Config(_) => {
                crate::protocol::BROKER_UNAVAILABLE_REASON.to_owned()
            }
            BrokerError::Unconfirmed(_) | BrokerError::Overloaded(_) => self.to_string(),
        }
    }
}

/// The future every broker operation returns (object-safe, `Send`, owns its inputs).
pub type BrokerFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// The future of a history read.
pub type HistoryFuture = Pin<Box<dyn Future<Output = Result<History, BrokerError>> + Send>>;

/// A publish/subscribe transport between nodes.
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and `/readyz` (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Publishes to every subscribed node, this one included (a [`Topic::Connection`]: to the
    /// node holding that connection). Resolves once the transport has
    /// accepted the publication (not once members received it). Publications from one caller
    /// to one topic are delivered in the order of the calls.
    fn publish(&self, publication: Publication) -> BrokerFuture;

    /// Publishes a control operation to every node, this one included.
    fn publish_control(&self, op: ControlOp) -> BrokerFuture;

    /// Adds one reference to this node's subscription to `topic`; resolves once publications
    /// on it reach the sink. An error means it is not live *now*; the reference is held either
    /// way (the broker subscribes when it can), and is released by `unsubscribe`. The reference
    /// is taken by the call itself, not when the future is first polled.
    fn subscribe(&self, topic: &Topic) -> BrokerFuture;

    /// Drops one reference (by the call itself); the transport subscription ends with the last.
    fn unsubscribe(&self, topic: &Topic) -> BrokerFuture;

    /// Reads `channel`'s history (kept under `rule`): its position, and the publications
    /// `query` asks for. Creates the channel's epoch if it has none yet.
    fn history(
        &self,
        channel: &ChannelName,
        rule: HistoryRule,
        query: HistoryQuery,
    ) -> HistoryFuture;

    /// How many topics this node is subscribed to now.
    fn subscriptions(&self) -> usize;

    /// Whether the broker can publish and receive right now (`/readyz`).
    fn is_ready(&self) -> bool;

    /// Lets go of the transport at the end of the node's life (after the drain): nothing is
    /// published or received afterwards. Nothing to do by default.
    fn shutdown(&self) -> BrokerFuture {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Which broker a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerType {
    Memory,
    Redis,
}

/// The `[broker]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    #[serde(rename = "type")]
    pub broker_type: BrokerType,
    pub url: String,
    pub prefix: String,
    pub cluster: bool,
    /// With a `rediss://` URL: trust only the CA certificates in this PEM file (a private CA)
    /// instead of the system's.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Deprecated: `roster.node_ttl` (read from here, with a warning, when given here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ttl: Option<HumanDuration>,
}

impl BrokerConfig {
    /// Problems with the section, by key (the Redis URL is parsed, not connected to).
    pub fn problems(&self) -> Vec<crate::config::KeyError> {
        let mut problems = Vec::new();
        if self.broker_type == BrokerType::Redis {
            if let Err(problem) = redis::validate_url(self) {
                problems.push(problem);
            }
        }
        let bad_character = |character: char| character.is_whitespace() || character.is_control();
        if self.prefix.is_empty() || self.prefix.chars().any(bad_character) {
            problems.push(crate::config::KeyError::new(
                "broker.prefix",
                "must be non-empty, without whitespace or control characters",
            ));
        }
        problems
    }

    /// The section with the password in its URL replaced by `***`.
    pub fn redacted(&self) -> Self {
        Self {
            url: redis::redacted(&self.url),
            ..self.clone()
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            broker_type: BrokerType::Memory,
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "sb".to_owned(),
            cluster: false,
            tls_ca_file: None,
            node_ttl: None,
        }
    }
}
