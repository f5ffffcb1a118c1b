//! Cross-node fan-out: the [`Broker`] trait and its implementations.
//!
//! A publication takes one path whatever the deployment: connection → `Broker::publish` →
//! (the broker's transport) → [`BrokerSink::on_publication`] on every node that subscribed.
//! The broker pushes into the narrow sink it is given at construction; it never holds the hub or
//! any actor, so it can be tested alone.
//!
//! Subscriptions are per channel per node, reference-counted: the hub subscribes when a channel
//! gets its first local member and unsubscribes after the last, so a node holds one subscription
//! per channel however many local members it has.
//!
//! Implementations, one file each:
//! - [`memory::MemoryBroker`]: single node, no Redis; publications are handed straight back to
//!   the local sink when the channel is subscribed. Never unavailable.
//!
//! Nothing outside this module knows how a broker transports publications.

pub mod memory;

#[cfg(test)]
mod contract_tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::ChannelName;

pub use memory::MemoryBroker;

/// One message published to one channel. Shared by reference (`Arc`) from the broker to the
/// group, which encodes it once per encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub channel: ChannelName,
    pub data: Value,
    /// The publishing user's id; `None` for back-end and anonymous publications.
    pub from: Option<String>,
    /// When this node published it or received it from the transport (for the latency metric).
    pub published_at: Instant,
}

impl Publication {
    pub fn new(channel: ChannelName, data: Value, from: Option<String>) -> Self {
        Self {
            channel,
            data,
            from,
            published_at: Instant::now(),
        }
    }
}

/// Where a broker delivers what it receives. Implemented by the hub's group registry.
pub trait BrokerSink: Send + Sync + 'static {
    /// Hands a publication to this node's members. Never blocks: when the channel's group is too
    /// far behind to take it, the answer is [`SinkError::Overloaded`] and the broker decides what
    /// the publisher hears (the memory broker answers its publish with an error).
    fn on_publication(&self, publication: Arc<Publication>) -> Result<(), SinkError>;
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
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The publication reached the broker but not the channel's members; nothing was delivered.
    #[error(transparent)]
    Overloaded(#[from] SinkError),
}

/// The future every broker operation returns (object-safe, `Send`, owns its inputs).
pub type BrokerFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// A publish/subscribe transport between nodes.
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and `/readyz` (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Publishes to every subscribed node, this one included. Resolves once the transport has
    /// accepted the publication (not once members received it).
    fn publish(&self, publication: Publication) -> BrokerFuture;

    /// Adds one reference to this node's subscription to `channel`; resolves once publications
    /// on it will reach the sink.
    fn subscribe(&self, channel: &ChannelName) -> BrokerFuture;

    /// Drops one reference; the transport subscription ends with the last one.
    fn unsubscribe(&self, channel: &ChannelName) -> BrokerFuture;

    /// How many channels this node is subscribed to now.
    fn subscriptions(&self) -> usize;

    /// Whether the broker can publish and receive right now (`/readyz`).
    fn is_ready(&self) -> bool;
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
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            broker_type: BrokerType::Memory,
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "sb".to_owned(),
            cluster: false,
        }
    }
}
