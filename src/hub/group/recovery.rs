//! A member joining a channel that keeps history, from its join until the group has answered
//! it (docs/protocol.md §7).
//!
//! A join that asks to recover (`since`) or for the channel's position (it has an `id`) does not
//! make the connection a member at once. The group keeps it here, buffering the items of its
//! stream from the moment of the join, while the channel's history is read. The read's answer
//! (the channel's position, and whether the hole after `since` can be filled) is applied once
//! the group's own stream has reached that position, so nothing the member is sent afterwards
//! can be at or before it. [`Recovering::finish`] then queues, in this order: the replayed
//! publications, the reply (`{"recovered": …, "offset": …, "epoch": …}`), and what was
//! buffered after the position; the member is live from there. No gap, no duplicate: the read
//! covers up to the position, the buffer from the join on, and the join came before the read.
//!
//! All of it goes into the connection's outbound queue as one item ([`Outbound::Frames`]), so a
//! replay longer than the queue (a client closed as a slow consumer missed at least a queue's
//! worth) is delivered, bounded by `server.recovery_limit`. It is queued whole or not at all:
//! one whose bytes do not fit a queue that already holds others is not recovered (`limit`), so
//! a client is never closed as a slow consumer for asking.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc::error::TrySendError;

use super::continuity::{Item, Verdict};
use super::{Join, Joined, frame_of};
use crate::broker::Publication;
use crate::hub::member::Member;
use crate::hub::membership::Membership;
use crate::hub::queue::Outbound;
use crate::metrics::{self as names, recovery as reasons};
use crate::protocol::{ChannelName, CloseReason, OutboundFrame, Position, ServerFrame};

/// Stream items one recovering member may buffer before it is closed as a slow consumer.
pub(crate) const MAX_BUFFERED: usize = 10_000;

/// What a history read answered for one member.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Where the reply places the member.
    pub(crate) position: Position,
    /// For a join with `since`: whether (and with what) the hole is filled. `None` for a join
    /// that asked only for the position.
    pub(crate) verdict: Option<Verdict>,
}

/// A member between its join and the group's answer.
pub(crate) struct Recovering {
    join: Join,
    buffer: Vec<Item>,
    answer: Option<Answer>,
}

impl Recovering {
    pub(crate) fn new(join: Join) -> Self {
        Self {
            join,
            buffer: Vec::new(),
            answer: None,
        }
    }

    pub(crate) fn member(&self) -> &Member {
        &self.join.member
    }

    pub(crate) fn membership(&self) -> &Membership {
        &self.join.membership
    }

    /// Where the client says it stands.
    pub(crate) fn since(&self) -> Option<&Position> {
        self.join.request.since.as_ref()
    }

    /// Buffers a stream item; `false` once the buffer is full (the member is then closed).
    pub(crate) fn buffer(&mut self, item: &Item) -> bool {
        if self.buffer.len() >= MAX_BUFFERED {
            return false;
        }
        self.buffer.push(item.clone());
        true
    }

    pub(crate) fn answer(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }

    /// Forgets the answer (it was of an epoch the stream has left), for a new read.
    pub(crate) fn forget_answer(&mut self) {
        self.answer = None;
    }

    /// The position its answer places it at, once answered.
    pub(crate) fn target(&self) -> Option<&Position> {
        self.answer.as_ref().map(|answer| &answer.position)
    }

    /// The read failed: the join fails (the client may try again).
    pub(crate) fn fail(self, reason: String) {
        if self.join.request.since.is_some() {
            count_recovery(Some(reasons::UNAVAILABLE));
        }
        let _ = self
            .join
            .reply
            .send(Err(super::JoinError::BackendUnavailable(reason)));
    }

    /// Queues the replay, the reply and the buffered tail to the member, and answers its join.
    /// Returns the member and its membership, to be made live, unless its queue overflowed or
    /// closed. Call once [`target`](Self::target) is reached by the group's stream.
    pub(crate) fn finish(self, channel: &ChannelName) -> Option<(Member, Membership)> {
        let Recovering {
            join,
            buffer,
            answer,
        } = self;
        let Answer { position, verdict } = answer?;
        let tail: Vec<&Item> = buffer
            .iter()
            .filter(|item| item.follows(&position))
            .collect();
        let member = &join.member;
        let encode_as = |verdict: &Option<Verdict>| {
            encode(member, channel, &join.request.id, &position, verdict, &tail)
        };
        let mut verdict = verdict;
        let mut frames = encode_as(&verdict);
        let fits = |frames: &[OutboundFrame]| {
            let bytes = frames.iter().map(|frame| frame.wire().len()).sum();
            member.queue.fits(bytes)
        };
        if matches!(verdict, Some(Verdict::Recovered(_))) && !fits(&frames) {
            verdict = Some(Verdict::NotRecovered(reasons::LIMIT));
            frames = encode_as(&verdict);
        }
        let replayed = match &verdict {
            Some(Verdict::Recovered(replay)) => replay.len(),
            _ => 0,
        };
        match &verdict {
            Some(Verdict::Recovered(_)) => count_recovery(None),
            Some(Verdict::NotRecovered(reason)) => count_recovery(Some(reason)),
            None => {}
        }
        metrics::counter!(names::PUBLICATIONS_REPLAYED).increment(replayed as u64);
        let gaps = tail
            .iter()
            .filter(|item| matches!(item, Item::Gap(_)))
            .count();
        metrics::counter!(names::GAPS).increment(gaps as u64);
        let _ = join.reply.send(Ok(Joined::Answered));
        if frames.is_empty() {
            return Some((join.member, join.membership));
        }
        let count = frames.len() as u64;
        match member.queue.try_send(Outbound::Frames(frames)) {
            Ok(()) => Some((join.member, join.membership)),
            Err(TrySendError::Full(_)) => {
                metrics::counter!(names::MESSAGES_DROPPED, "reason" => names::dropped::SLOW_CONSUMER)
                    .increment(count);
                member.close(CloseReason::SLOW_CONSUMER);
                None
            }
            Err(TrySendError::Closed(_)) => None,
        }
    }
}

/// The frames a finished member is sent: the replay (if recovered), the reply (if the join has
/// an id), the tail.
fn encode(
    member: &Member,
    channel: &ChannelName,
    id: &Option<u64>,
    position: &Position,
    verdict: &Option<Verdict>,
    tail: &[&Item],
) -> Vec<OutboundFrame> {
    let replay: &[Arc<Publication>] = match verdict {
        Some(Verdict::Recovered(replay)) => replay,
        _ => &[],
    };
    let mut data = json!({"offset": position.offset, "epoch": &*position.epoch});
    if let (Some(verdict), Value::Object(fields)) = (verdict, &mut data) {
        let recovered = matches!(verdict, Verdict::Recovered(_));
        fields.insert("recovered".to_owned(), Value::Bool(recovered));
    }
    let reply = id.map(|id| ServerFrame::Reply { id, data: &data });
    let mut frames = Vec::with_capacity(replay.len() + tail.len() + 1);
    let replayed = replay.iter().map(|publication| frame_of(publication));
    let followed = tail.iter().map(|item| match item {
        Item::Publication(publication) => frame_of(publication),
        Item::Gap(gap) => ServerFrame::Gap {
            channel: channel.as_str(),
            offset: gap.offset,
            epoch: &gap.epoch,
        },
    });
    for frame in replayed.chain(reply).chain(followed) {
        match member.encoding.encode(&frame) {
            Ok(encoded) => frames.push(encoded),
            Err(err) => {
                tracing::warn!(%channel, error = %err, "cannot encode a frame for a joining member");
                metrics::counter!(names::MESSAGES_DROPPED, "reason" => names::dropped::ENCODE_ERROR)
                    .increment(1);
            }
        }
    }
    frames
}

/// Counts a join with `since`: recovered (`None`) or not, for `reason`.
fn count_recovery(not_recovered: Option<&'static str>) {
    let (result, reason) = match not_recovered {
        None => (reasons::RECOVERED, reasons::NONE),
        Some(reason) => (reasons::NOT_RECOVERED, reason),
    };
    metrics::counter!(names::RECOVERIES, "result" => result, "reason" => reason).increment(1);
}

/// Registers the recovery series at zero.
pub(crate) fn register_metrics() {
    use names::register;
    register::counter(
        names::RECOVERIES,
        &[("result", reasons::RECOVERED), ("reason", reasons::NONE)],
    );
    for reason in reasons::NOT_RECOVERED_REASONS {
        register::counter(
            names::RECOVERIES,
            &[("result", reasons::NOT_RECOVERED), ("reason", reason)],
        );
    }
    register::counter(names::PUBLICATIONS_REPLAYED, &[]);
    register::counter(names::GAPS, &[]);
    register::counter(names::HISTORY_APPENDS, &[]);
    register::histogram(names::HISTORY_READ_SECONDS, &[]);
}
