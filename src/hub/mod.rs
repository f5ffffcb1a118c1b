//! The hub: channel groups, and which connections live on this node.
//!
//! - [`group`]: the channel-group actor (one per channel with local members) and its fan-out.
//! - [`registry`]: channel name → group, and the broker's sink.
//! - [`member`]: what a group knows of a member (its bounded outbound queue), `Disconnect`.
//! - [`policy`]: the `[[channels]]` rules.
//!
//! [`Hub`] is the facade connections use: join and leave channels, publish through the broker,
//! and register themselves so that node-wide operations (drain on shutdown, and later control
//! ops by user or session) can reach them. The hub never touches sockets or WebSocket types.

pub mod group;
pub mod member;
pub mod policy;
pub mod registry;

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::broker::{Broker, BrokerFuture, Publication};
use crate::metrics as names;
use crate::protocol::{ChannelName, CloseCode};

pub use group::{FanOut, JoinError, fan_out};
use group::{Group, Join, Leave};
pub use member::{ConnectionKey, Disconnect, Member, Outbound, OutboundSender, outbound_queue};
pub use policy::{Access, ChannelPolicy, ChannelRule};
pub use registry::GroupRegistry;

/// How often a join is retried when it raced with its group stopping.
const JOIN_ATTEMPTS: usize = 3;

/// What the hub knows about a connection on this node.
#[derive(Clone)]
pub struct ConnectionEntry {
    pub id: Arc<str>,
    pub user: Option<String>,
    pub session: Option<String>,
    pub disconnect: Recipient<Disconnect>,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    registry: GroupRegistry,
    broker: Arc<dyn Broker>,
    arbiters: Vec<ArbiterHandle>,
    connections: DashMap<ConnectionKey, ConnectionEntry>,
}

impl Hub {
    /// `arbiters` run the group actors (a channel's arbiter is chosen by hash of its name); at
    /// least one is required.
    pub fn new(
        registry: GroupRegistry,
        broker: Arc<dyn Broker>,
        arbiters: Vec<ArbiterHandle>,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                registry,
                broker,
                arbiters,
                connections: DashMap::new(),
            }),
        }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Adds `member` to `channel`'s group, starting (and subscribing) the group if needed.
    /// The join is sent before this returns, so a later `leave` is ordered after it; the future
    /// resolves once publications on the channel reach the member.
    pub fn join(
        &self,
        channel: ChannelName,
        member: Member,
    ) -> impl Future<Output = Result<(), JoinError>> + 'static {
        let hub = self.clone();
        let mut reply = hub.send_join(&channel, member.clone());
        async move {
            for _ in 1..JOIN_ATTEMPTS {
                match reply.await {
                    Ok(result) => return result,
                    Err(_group_stopped) => reply = hub.send_join(&channel, member.clone()),
                }
            }
            reply.await.unwrap_or_else(|_| {
                Err(JoinError::BackendUnavailable(
                    "the channel group kept stopping".to_owned(),
                ))
            })
        }
    }

    fn send_join(
        &self,
        channel: &ChannelName,
        member: Member,
    ) -> oneshot::Receiver<Result<(), JoinError>> {
        let (reply, receiver) = oneshot::channel();
        self.inner
            .registry
            .join_or_start(channel, Join { member, reply }, |first| {
                self.start_group(channel, first)
            });
        receiver
    }

    /// Starts a group on its arbiter (chosen by hash of the name) with its first join.
    fn start_group(&self, channel: &ChannelName, first: Join) -> Addr<Group> {
        let mut hasher = DefaultHasher::new();
        channel.hash(&mut hasher);
        let arbiters = &self.inner.arbiters;
        let arbiter = &arbiters[(hasher.finish() as usize) % arbiters.len().max(1)];
        let (name, registry, broker) = (
            channel.clone(),
            self.inner.registry.clone(),
            self.inner.broker.clone(),
        );
        Group::start_in_arbiter(arbiter, move |_| Group::new(name, first, registry, broker))
    }

    /// Removes a connection from `channel`'s group.
    pub fn leave(&self, channel: &ChannelName, connection: ConnectionKey) {
        if let Some(group) = self.inner.registry.get(channel.as_str()) {
            group.do_send(Leave { connection });
        }
    }

    /// Publishes through the broker (the one path every publication takes).
    pub fn publish(&self, publication: Publication) -> BrokerFuture {
        self.inner.broker.publish(publication)
    }

    pub fn register(&self, key: ConnectionKey, entry: ConnectionEntry) {
        if self.inner.connections.insert(key, entry).is_none() {
            metrics::gauge!(names::CONNECTIONS).increment(1.0);
        }
    }

    pub fn unregister(&self, key: ConnectionKey) {
        if self.inner.connections.remove(&key).is_some() {
            metrics::gauge!(names::CONNECTIONS).decrement(1.0);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.inner.connections.len()
    }

    pub fn group_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// Asks every connection on this node to close with `code` (drain on shutdown).
    pub fn disconnect_all(&self, code: CloseCode, reason: &str) {
        for entry in self.inner.connections.iter() {
            entry.disconnect.do_send(Disconnect {
                code,
                reason: reason.to_owned(),
            });
        }
    }
}
