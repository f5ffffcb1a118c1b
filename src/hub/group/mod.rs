//! The channel-group actor: one per channel name with local members, on one of the hub's group
//! arbiters.
//!
//! A group is started with its first join, so it never exists empty. It subscribes to its
//! channel on the broker when it starts and unsubscribes when it stops (also after a failed
//! subscribe, which holds a reference too); joins that arrive before
//! the subscription is confirmed wait for it. Once subscribed, it retires (removes itself from
//! its table and stops) when its last member leaves; a join that raced with that, still in
//! its mailbox, finds its reply channel dropped and is retried by the hub against a fresh group.
//!
//! Every join and leave carries the connection's [`Membership`] token: a join whose membership
//! ended (the connection left before the join was handled) is answered `Cancelled` and not
//! added, and a leave removes a member only for the membership that added it.
//!
//! Fan-out: a publication is encoded at most once per encoding, and the same reference-counted
//! bytes are `try_send`-ed into each member's bounded queue. A full queue removes the member and
//! tells its connection to close with 4010 `slow_consumer`; it never blocks the group.
//!
//! The group's own mailbox is bounded too ([`GROUP_MAILBOX_CAPACITY`]): publications arrive with
//! `try_send`, and one that finds the mailbox full is refused back to the broker (the publisher
//! hears `backend_unavailable`), so a group that falls behind never grows the node.
//!
//! A channel whose rule keeps history has a group with its history side ([`history`]): an
//! ordered stream that catches up on what the node missed, and joins answered with the
//! channel's position or a replay ([`recovery`], decided by [`continuity`]). Other channels'
//! groups never touch it and fan out as they always did.

mod continuity;
pub mod history;
mod recovery;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::member::{ConnectionKey, Member};
use super::membership::Membership;
use super::queue::Outbound;
use crate::broker::{Broker, Publication, Topic};
use crate::metrics as names;
use crate::protocol::{
    ChannelName, CloseReason, Encoding, OutboundFrame, Position, PublicationKind, ServerFrame,
};
pub(crate) use history::Resync;
use history::{GroupHistory, HistorySettings};
pub(crate) use recovery::register_metrics;

/// Messages a group's mailbox holds before publications to it are refused. A group fans out to
/// 5,000 members in about half a millisecond, so this is roughly half a second of backlog for a
/// big room, and far more for a small one.
pub const GROUP_MAILBOX_CAPACITY: usize = 1024;

/// What a group tells the table it lives in when it retires: take me out, if I am still the
/// group under my name. The one thing a group knows of its table.
pub(crate) trait Retire: Send + Sync + 'static {
    fn retire(&self, name: &ChannelName, group: &Addr<Group>);
}

/// Why a join did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("cannot subscribe to the channel: {0}")]
    BackendUnavailable(String),
    /// The connection left the channel (or closed) before the join completed.
    #[error("left the channel before the join completed")]
    Cancelled,
}

/// What a client's join asks for, beyond membership, on a channel that keeps history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinRequest {
    /// The join frame's id: the group answers it with the channel's position.
    pub id: Option<u64>,
    /// The client's last position: what came after it is replayed first.
    pub since: Option<Position>,
}

/// A completed join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The connection answers the client.
    Plain,
    /// The group has answered the client already (its position, after any replay): the
    /// connection must not answer again.
    Answered,
}

pub(crate) type JoinReply = oneshot::Sender<Result<Joined, JoinError>>;

/// Adds a member; answered on `reply` once the member will receive publications.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Join {
    pub(crate) member: Member,
    pub(crate) membership: Membership,
    pub(crate) request: JoinRequest,
    pub(crate) reply: JoinReply,
}

/// Removes the member, if `membership` is the one that added it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Leave {
    pub(crate) connection: ConnectionKey,
    pub(crate) membership: Membership,
}

/// A publication to fan out to every member.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deliver(pub(crate) Arc<Publication>);

enum Subscription {
    Pending(Vec<Join>),
    Active,
    Failed,
}

pub(crate) struct Group {
    name: ChannelName,
    members: Vec<Member>,
    /// Each member's position in `members`, and the membership that added it.
    index: HashMap<ConnectionKey, (usize, Membership)>,
    subscription: Subscription,
    /// Set once the group has left its table to stop: joins still in its mailbox are not
    /// taken (their replies are dropped, so the hub retries them on a fresh group).
    retired: bool,
    table: Arc<dyn Retire>,
    broker: Arc<dyn Broker>,
    /// For a channel that keeps history.
    history: Option<GroupHistory>,
}

impl Group {
    /// Starts a group on `arbiter` with its first join. The mailbox is created with its bound
    /// ([`GROUP_MAILBOX_CAPACITY`]) here, rather than with actix's default and resized once the
    /// actor runs, so the bound holds from the first message.
    pub(crate) fn start(
        arbiter: &ArbiterHandle,
        name: ChannelName,
        first: Join,
        table: Arc<dyn Retire>,
        broker: Arc<dyn Broker>,
        history: Option<HistorySettings>,
    ) -> Addr<Group> {
        let (sender, receiver) = actix::dev::channel::channel(GROUP_MAILBOX_CAPACITY);
        arbiter.spawn_fn(move || {
            let group = Group {
                name,
                members: Vec::new(),
                index: HashMap::new(),
                subscription: Subscription::Pending(vec![first]),
                table,
                broker,
                retired: false,
                history: history.map(GroupHistory::new),
            };
            Context::with_receiver(receiver).run(group);
        });
        Addr::new(sender)
    }

    /// Takes the join of a membership that is still active: a member at once, or, on a channel
    /// that keeps history when the join wants an answer, once the group has answered it.
    fn admit(&mut self, join: Join, ctx: &mut Context<Self>) {
        if !join.membership.is_active() {
            let _ = join.reply.send(Err(JoinError::Cancelled));
            return;
        }
        if self.history.is_some() && join.request.wants_answer() {
            return self.admit_recovering(join, ctx);
        }
        let Join {
            member,
            membership,
            reply,
            ..
        } = join;
        self.add_live(member, membership);
        let _ = reply.send(Ok(Joined::Plain));
    }

    /// Makes `member` live: it receives everything fanned out from now on.
    fn add_live(&mut self, member: Member, membership: Membership) {
        match self.index.get_mut(&member.connection) {
            Some((position, current)) => {
                self.members[*position] = member;
                *current = membership;
            }
            None => {
                self.index
                    .insert(member.connection, (self.members.len(), membership));
                self.members.push(member);
            }
        }
    }

    fn remove(&mut self, connection: ConnectionKey) {
        if let Some((position, _)) = self.index.remove(&connection) {
            self.members.swap_remove(position);
            if let Some(moved) = self.members.get(position) {
                if let Some((moved_position, _)) = self.index.get_mut(&moved.connection) {
                    *moved_position = position;
                }
            }
        }
    }

    /// Retires a subscribed group once nobody is in it. A group still subscribing waits for the
    /// subscription to settle first, so it never leaves a subscription behind.
    fn retire_if_empty(&mut self, ctx: &mut Context<Self>) {
        let recovering = self
            .history
            .as_ref()
            .is_some_and(GroupHistory::has_recovering);
        if self.members.is_empty()
            && !recovering
            && matches!(self.subscription, Subscription::Active)
        {
            self.retired = true;
            self.table.retire(&self.name, &ctx.address());
            ctx.stop();
        }
    }
}

/// What one fan-out did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Members whose queue took the frame.
    pub delivered: u64,
    /// Members whose queue was full (slow consumers).
    pub overflowed: Vec<ConnectionKey>,
    /// Members whose queue is closed (connection gone).
    pub gone: Vec<ConnectionKey>,
}

/// The frame a publication is to members: a `presence` event, or a `message` (carrying its
/// position on a channel that keeps history; without a channel for a direct message).
pub(crate) fn frame_of(publication: &Publication) -> ServerFrame<'_> {
    let channel = publication.topic.channel().map(ChannelName::as_str);
    match (publication.kind, channel) {
        (PublicationKind::Presence, Some(channel)) => ServerFrame::Presence {
            channel,
            event: &publication.data,
        },
        _ => ServerFrame::Message {
            channel,
            data: &publication.data,
            from: publication.from.as_deref(),
            offset: publication
                .position
                .as_ref()
                .map(|position| position.offset),
            epoch: publication
                .position
                .as_ref()
                .map(|position| &*position.epoch),
        },
    }
}

/// Queues `publication` to every member: encoded at most once per encoding, the same bytes
/// shared by every member of that encoding, `try_send` only. A member whose queue is full is told
/// to close with 4010 `slow_consumer`; the caller removes overflowed and gone members. Records the
/// delivery metrics. Public for the fan-out benchmark.
pub fn fan_out(members: &[Member], publication: &Publication) -> FanOut {
    let result = queue_to_all(members, &frame_of(publication));
    metrics::counter!(names::MESSAGES_DELIVERED).increment(result.delivered);
    metrics::histogram!(names::PUBLISH_TO_DELIVER)
        .record(publication.published_at.elapsed().as_secs_f64());
    result
}

/// Queues `frame` to every member, encoded at most once per encoding (see [`fan_out`]).
pub(crate) fn queue_to_all(members: &[Member], frame: &ServerFrame<'_>) -> FanOut {
    let mut json: Option<OutboundFrame> = None;
    let mut msgpack: Option<OutboundFrame> = None;
    let mut result = FanOut::default();
    for member in members {
        let slot = match member.encoding {
            Encoding::Json => &mut json,
            Encoding::MessagePack => &mut msgpack,
        };
        let encoded = match slot {
            Some(encoded) => encoded,
            None => match member.encoding.encode(frame) {
                Ok(encoded) => slot.insert(encoded),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot encode a frame for members");
                    metrics::counter!(names::MESSAGES_DROPPED, "reason" => names::dropped::ENCODE_ERROR)
                        .increment(1);
                    continue;
                }
            },
        };
        match member.queue.try_send(Outbound::Frame(encoded.clone())) {
            Ok(()) => result.delivered += 1,
            Err(TrySendError::Full(_)) => {
                member.close(CloseReason::SLOW_CONSUMER);
                result.overflowed.push(member.connection);
            }
            Err(TrySendError::Closed(_)) => result.gone.push(member.connection),
        }
    }
    if !result.overflowed.is_empty() {
        metrics::counter!(names::MESSAGES_DROPPED, "reason" => names::dropped::SLOW_CONSUMER)
            .increment(result.overflowed.len() as u64);
    }
    result
}

impl Actor for Group {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!(names::CHANNELS).increment(1.0);
        self.broker
            .subscribe(&Topic::Channel(self.name.clone()))
            .into_actor(self)
            .map(|result, group, ctx| {
                let pending = match std::mem::replace(&mut group.subscription, Subscription::Active)
                {
                    Subscription::Pending(pending) => pending,
                    _ => Vec::new(),
                };
                match result {
                    Ok(()) => {
                        if group.history.is_some() {
                            group.start_history(ctx);
                        }
                        for join in pending {
                            group.admit(join, ctx);
                        }
                        group.retire_if_empty(ctx);
                    }
                    Err(err) => {
                        tracing::debug!(channel = %group.name, error = %err, "subscribe failed");
                        group.subscription = Subscription::Failed;
                        for join in pending {
                            let _ = join
                                .reply
                                .send(Err(JoinError::BackendUnavailable(err.to_string())));
                        }
                        group.table.retire(&group.name, &ctx.address());
                        ctx.stop();
                    }
                }
            })
            .spawn(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!(names::CHANNELS).decrement(1.0);
        // `started` took a reference whatever became of it (a failed subscribe holds one too);
        // the broker drops it when called, so the future need not be awaited.
        let unsubscribing = self.broker.unsubscribe(&Topic::Channel(self.name.clone()));
        let name = self.name.clone();
        actix::spawn(async move {
            if let Err(err) = unsubscribing.await {
                tracing::warn!(channel = %name, error = %err, "unsubscribe failed");
            }
        });
    }
}

impl Handler<Join> for Group {
    type Result = ();

    fn handle(&mut self, join: Join, ctx: &mut Self::Context) {
        if self.retired {
            // Dropping the reply makes the hub retry against a fresh group.
            return;
        }
        match &mut self.subscription {
            Subscription::Pending(pending) => pending.push(join),
            Subscription::Active => self.admit(join, ctx),
            // Dropping the reply makes the hub retry against a fresh group.
            Subscription::Failed => {}
        }
    }
}

impl Handler<Leave> for Group {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Self::Context) {
        let added_by_it = self
            .index
            .get(&leave.connection)
            .is_some_and(|(_, membership)| membership.is(&leave.membership));
        if added_by_it {
            self.remove(leave.connection);
        }
        if let Some(history) = &mut self.history {
            history.leave(leave.connection, &leave.membership);
        }
        if let Subscription::Pending(pending) = &mut self.subscription {
            pending.retain(|join| !join.membership.is(&leave.membership));
        }
        self.retire_if_empty(ctx);
    }
}

impl Handler<Deliver> for Group {
    type Result = ();

    fn handle(&mut self, Deliver(publication): Deliver, ctx: &mut Self::Context) {
        if self.history.is_some() {
            return self.accept(publication, ctx);
        }
        let FanOut {
            overflowed, gone, ..
        } = fan_out(&self.members, &publication);
        for connection in overflowed.into_iter().chain(gone) {
            self.remove(connection);
        }
        if self.members.is_empty() {
            self.retire_if_empty(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::member::testing::member;
    use crate::hub::queue::OutboundReceiver;
    use crate::protocol::CloseCode;
    use serde_json::json;

    fn members(encodings: &[Encoding], capacity: usize) -> (Vec<Member>, Vec<OutboundReceiver>) {
        encodings
            .iter()
            .enumerate()
            .map(|(connection, &encoding)| member(connection as ConnectionKey, encoding, capacity))
            .unzip()
    }

    fn publication() -> Publication {
        Publication::new(
            ChannelName::parse("room:1").expect("channel"),
            json!({"text": "hi"}),
            Some("42".to_owned()),
        )
    }

    /// The address of the encoded bytes a member received.
    fn frame_address(receiver: &mut OutboundReceiver) -> usize {
        match receiver.try_recv() {
            Ok(Outbound::Frame(frame)) => frame.wire().as_ptr() as usize,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn a_publication_is_encoded_once_per_encoding_and_the_bytes_are_shared() {
        System::new().block_on(async {
            let encodings = [
                Encoding::Json,
                Encoding::MessagePack,
                Encoding::Json,
                Encoding::MessagePack,
                Encoding::Json,
            ];
            let (members, mut receivers) = members(&encodings, 4);
            let result = fan_out(&members, &publication());
            assert_eq!(result.delivered, 5);
            let addresses: Vec<usize> = receivers.iter_mut().map(frame_address).collect();
            assert_eq!(addresses[0], addresses[2], "JSON members share one buffer");
            assert_eq!(addresses[0], addresses[4]);
            assert_eq!(
                addresses[1], addresses[3],
                "MessagePack members share one buffer"
            );
            assert_ne!(addresses[0], addresses[1]);
        });
    }

    #[test]
    fn an_overflowed_member_is_told_to_close_with_4010() {
        let (member, _queue, mut notices) =
            crate::hub::member::testing::member_watched(7, Encoding::Json, 1);
        let members = [member];
        assert_eq!(fan_out(&members, &publication()).delivered, 1);
        assert_eq!(fan_out(&members, &publication()).overflowed, vec![7]);
        assert_eq!(
            notices.try_recv().map(|notice| notice.code),
            Ok(CloseCode::SlowConsumer)
        );
    }

    #[test]
    fn full_queues_are_overflowed_and_closed_queues_are_gone() {
        System::new().block_on(async {
            let (members, mut receivers) = members(&[Encoding::Json; 3], 1);
            let first = fan_out(&members, &publication());
            assert_eq!(first.delivered, 3);
            receivers[0]
                .try_recv()
                .expect("drained, so member 0 has room again");
            drop(receivers.remove(2));
            let second = fan_out(&members, &publication());
            assert_eq!(second.delivered, 1);
            assert_eq!(second.overflowed, vec![1]);
            assert_eq!(second.gone, vec![2]);
        });
    }
}
