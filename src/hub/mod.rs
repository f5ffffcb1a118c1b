//! The hub: channel groups, and which connections live on this node.
//!
//! - [`group`]: the channel-group actor (one per channel with local members) and its fan-out.
//! - [`group_table`]: channel name → the live group, and delivery to it (what the broker's sink
//!   hands publications to).
//! - [`member`]: what a group knows of a member (its bounded outbound queue, its one-shot
//!   `Disconnector`).
//! - [`queue`]: a connection's outbound queue, bounded in frames and in bytes.
//! - [`membership`]: the token one join shares with its leave, so a leave that overtakes its
//!   join cancels it wherever it is.
//! - [`directory`]: the connections on this node, by key, user, session and channel; connection
//!   ids; what it reports to whoever follows it (the registry).
//! - [`sink`]: what the broker delivers to this node (publications, control operations).
//! - [`policy`]: the `[[channels]]` rules (access, presence, history).
//!
//! [`Hub`] is the facade connections use: join and leave channels (with a replay from history,
//! on channels that keep one), publish through the broker (recording history), and register
//! themselves so that node-wide operations (user publications, control operations,
//! the drain on shutdown) can reach them. The hub never touches sockets or WebSocket types.

pub mod directory;
pub mod group;
pub mod group_table;
#[cfg(test)]
mod interleavings;
pub mod member;
pub mod membership;
pub mod policy;
pub mod queue;
pub mod sink;

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::broker::{
    Broker, BrokerError, BrokerFuture, History, HistoryQuery, HistoryRules, Publication, Topic,
};
use crate::metrics as names;
use crate::protocol::{ChannelName, CloseReason, PublicationKind};

pub use directory::{
    ConnectionDirectory, ConnectionView, DirectoryChange, DirectoryObserver, LocalConnection,
};
pub use group::history::HistorySettings;
pub use group::{FanOut, JoinError, JoinRequest, Joined, fan_out};
use group::{Group, Join, Leave};
pub use group_table::GroupTable;
pub use member::{ConnectionKey, Disconnect, Disconnector, Member};
pub use membership::Membership;
pub use policy::{Access, ChannelPolicy, ChannelRule};
pub use queue::{Outbound, OutboundReceiver, OutboundSender, outbound_queue};
pub use sink::HubSink;

/// Registers the hub's series at zero (see `metrics`).
pub fn register_metrics() {
    use names::register;
    register::gauge(names::CONNECTIONS);
    register::gauge(names::CHANNELS);
    register::counter(names::MESSAGES_DELIVERED, &[]);
    for reason in names::dropped::ON_EVERY_NODE {
        register::counter(names::MESSAGES_DROPPED, &[("reason", reason)]);
    }
    register::histogram(names::PUBLISH_TO_DELIVER, &[]);
    register::counter(names::CONTROL_DISCONNECTS, &[]);
    group::register_metrics();
}

/// How often a join is retried when it raced with its group stopping.
const JOIN_ATTEMPTS: usize = 3;

/// The node is draining: a connection that registers now must close with 1012.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draining;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    groups: GroupTable,
    broker: Arc<dyn Broker>,
    arbiters: Vec<ArbiterHandle>,
    /// Every connection on this node.
    directory: Arc<ConnectionDirectory>,
    /// Set once by `drain`; connections registering after it are told to close at once.
    draining: AtomicBool,
    history: HistoryPolicy,
}

/// Which channels keep history (the `[[channels]]` rules), and the most publications one join
/// may replay (`server.recovery_limit`).
#[derive(Debug, Clone, Default)]
pub struct HistoryPolicy {
    pub rules: HistoryRules,
    pub recovery_limit: usize,
}

/// Why the history API cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("channel {0} keeps no history")]
    NotKept(ChannelName),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Hub {
    /// `groups` and `directory` are the ones the broker's [`HubSink`] delivers to. `arbiters`
    /// run the group actors (a channel's arbiter is chosen by hash of its name); at least one is
    /// required.
    pub fn new(
        groups: GroupTable,
        directory: Arc<ConnectionDirectory>,
        broker: Arc<dyn Broker>,
        arbiters: Vec<ArbiterHandle>,
        history: HistoryPolicy,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                groups,
                broker,
                arbiters,
                directory,
                draining: AtomicBool::new(false),
                history,
            }),
        }
    }

    /// How `channel`'s group follows its history, if the channel keeps one.
    fn history_settings(&self, channel: &ChannelName) -> Option<HistorySettings> {
        let history = &self.inner.history;
        history
            .rules
            .rule_for(channel.as_str())
            .map(|rule| HistorySettings {
                rule,
                recovery_limit: history.recovery_limit,
            })
    }

    /// Reads `channel`'s history (the server API); refused for a channel that keeps none.
    pub fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> impl Future<Output = Result<History, HistoryError>> + 'static {
        let read = self
            .inner
            .history
            .rules
            .rule_for(channel.as_str())
            .map(|rule| self.inner.broker.history(channel, rule, query));
        let channel = channel.clone();
        async move {
            match read {
                Some(read) => Ok(read.await?),
                None => Err(HistoryError::NotKept(channel)),
            }
        }
    }

    pub fn directory(&self) -> &ConnectionDirectory {
        &self.inner.directory
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Adds `member` to `channel`'s group, starting (and subscribing) the group if needed, under
    /// a new [`Membership`] that [`leave`](Self::leave) ends. The join is sent before this
    /// returns, so a later `leave` is ordered after it; the future resolves once publications on
    /// the channel reach the member, or with [`JoinError::Cancelled`] when the membership ended
    /// first (it is then never retried, and no group keeps the member). On a channel that keeps
    /// history, `request` may ask for a replay or the position, which the group answers itself
    /// ([`Joined::Answered`]).
    pub fn join(
        &self,
        channel: ChannelName,
        member: Member,
        request: JoinRequest,
    ) -> (
        Membership,
        impl Future<Output = Result<Joined, JoinError>> + 'static,
    ) {
        let hub = self.clone();
        let membership = Membership::new();
        let mut reply = hub.send_join(&channel, member.clone(), membership.clone(), &request);
        // Recorded when sent, so a leave that follows (ordered after it) undoes it.
        hub.inner.directory.joined(member.connection, &channel);
        let joining = membership.clone();
        let joined = async move {
            let mut attempts = 1;
            let result = loop {
                match reply.await {
                    Ok(result) => break result,
                    // The leave that ended it undid the bookkeeping.
                    Err(_) if !joining.is_active() => return Err(JoinError::Cancelled),
                    Err(_group_stopped) if attempts < JOIN_ATTEMPTS => {
                        attempts += 1;
                        reply = hub.send_join(&channel, member.clone(), joining.clone(), &request);
                    }
                    Err(_group_stopped) => {
                        break Err(JoinError::BackendUnavailable(
                            "the channel group kept stopping".to_owned(),
                        ));
                    }
                }
            };
            if result.is_err() && joining.end() {
                hub.inner.directory.left(member.connection, &channel);
            }
            result
        };
        (membership, joined)
    }

    fn send_join(
        &self,
        channel: &ChannelName,
        member: Member,
        membership: Membership,
        request: &JoinRequest,
    ) -> oneshot::Receiver<Result<Joined, JoinError>> {
        let (reply, receiver) = oneshot::channel();
        let join = Join {
            member,
            membership,
            request: request.clone(),
            reply,
        };
        self.inner
            .groups
            .join_or_start(channel, join, |first| self.start_group(channel, first));
        receiver
    }

    /// Starts a group on its arbiter (chosen by hash of the name) with its first join; without
    /// arbiters (`server.groups_on_workers`), on the thread asking (the first joiner's worker).
    fn start_group(&self, channel: &ChannelName, first: Join) -> Addr<Group> {
        let mut hasher = DefaultHasher::new();
        channel.hash(&mut hasher);
        let arbiters = &self.inner.arbiters;
        let here;
        let arbiter = match arbiters.get((hasher.finish() as usize) % arbiters.len().max(1)) {
            Some(arbiter) => arbiter,
            None => {
                here = Arbiter::current();
                &here
            }
        };
        Group::start(
            arbiter,
            channel.clone(),
            first,
            Arc::new(self.inner.groups.clone()),
            self.inner.broker.clone(),
            self.history_settings(channel),
        )
    }

    /// Ends `membership` of `channel`: the connection leaves the channel's group, or its join
    /// (wherever it is) is cancelled. Not subject to the mailbox bound: a leave is one per join,
    /// and a lost one would leave a member behind. Ending a membership that already ended (a
    /// failed join) does nothing.
    pub fn leave(&self, channel: &ChannelName, connection: ConnectionKey, membership: &Membership) {
        if !membership.end() {
            return;
        }
        self.inner.directory.left(connection, channel);
        if let Some(group) = self.inner.groups.get(channel.as_str()) {
            group.do_send(Leave {
                connection,
                membership: membership.clone(),
            });
        }
    }

    /// Publishes through the broker (the one path every publication takes); a message to a
    /// channel that keeps history is recorded in it (presence events never are).
    pub fn publish(&self, mut publication: Publication) -> BrokerFuture {
        if let (Topic::Channel(channel), PublicationKind::Message) =
            (&publication.topic, publication.kind)
        {
            publication.history = self.inner.history.rules.rule_for(channel.as_str());
        }
        self.inner.broker.publish(publication)
    }

    /// Records a connection, and subscribes this node to its user's topic (one broker reference
    /// per connection; the broker holds one transport subscription per user). The returned
    /// future resolves once publications to the user reach the connection (an error: not now,
    /// but the broker will subscribe when it can).
    ///
    /// `Err(Draining)` when the node is draining, in which case the connection must close itself
    /// with 1012 (the drain's sweep may already have passed it); it is recorded all the same, and
    /// `unregister` must follow.
    pub fn register(&self, connection: LocalConnection) -> Result<BrokerFuture, Draining> {
        let subscribed = match &connection.user {
            Some(user) => self.inner.broker.subscribe(&Topic::User(user.clone())),
            None => Box::pin(std::future::ready(Ok(()))),
        };
        if self.inner.directory.insert(connection) {
            metrics::gauge!(names::CONNECTIONS).increment(1.0);
        }
        // Insert, then check; `drain` sets, then sweeps. With both SeqCst, every connection is
        // either reached by the sweep or sees the flag here (possibly both; closing is idempotent).
        if self.inner.draining.load(Ordering::SeqCst) {
            Err(Draining)
        } else {
            Ok(subscribed)
        }
    }

    pub fn unregister(&self, key: ConnectionKey) {
        if let Some(connection) = self.inner.directory.remove(key) {
            metrics::gauge!(names::CONNECTIONS).decrement(1.0);
            if let Some(user) = connection.user {
                // The reference is dropped by the call itself.
                drop(self.inner.broker.unsubscribe(&Topic::User(user)));
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Starts draining: every connection on this node, and any that registers from now on, is
    /// asked to close with 1012 `restart`. One message per connection, which must not be lost,
    /// so it bypasses mailbox bounds.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        for member in self.inner.directory.all_members() {
            member.close(CloseReason::RESTART);
        }
    }
}
