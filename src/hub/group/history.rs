//! A group whose channel keeps history (docs/protocol.md §7): its ordered stream, catching up
//! when the node missed publications, and members that join with `since` or for the position.
//!
//! The stream: a publication one offset after the last is delivered; one at or before it is a
//! duplicate and dropped; one past it (or of another epoch) means this node missed some, and the
//! group catches up: what arrives meanwhile is held, the history after the last position is
//! read, and either the missed publications are delivered in order, or, when they cannot be
//! (trimmed, another epoch, more than `server.recovery_limit`), every member gets one `gap`
//! frame; then the held ones follow. When the channel's epoch changed (its history was lost),
//! the gap names the new epoch's start and the new epoch's history follows it. The broker reports a subscription made again after a
//! reconnect ([`Resync`]), which starts the same catch-up, so a Redis restart is a pause.
//!
//! Joins that want an answer ([`JoinRequest`] with an `id` or `since`) are kept as
//! [`Recovering`] members: each gets one history read (at most [`MAX_READS`] per group at once),
//! and is finished once the stream has reached the position that read returned. A stream that
//! has not reached it within [`CATCH_UP_GRACE`] (the publications are not in flight but lost)
//! catches up. A join whose answer is already known (the stream's position, or `since` equal to
//! it) is finished at once, without a read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::continuity::{Continuity, Item, Order, Verdict, verdict};
use super::recovery::{Answer, Recovering};
use super::{Group, Join, JoinRequest, queue_to_all};
use crate::broker::{BrokerError, History, HistoryQuery, HistoryRule, Publication};
use crate::hub::member::ConnectionKey;
use crate::hub::membership::Membership;
use crate::metrics as names;
use crate::metrics::recovery as reasons;
use crate::protocol::{CloseReason, Position, ServerFrame};

/// History reads one group runs at once for joining members; more wait their turn.
pub(crate) const MAX_READS: usize = 16;
/// How long the stream may stay behind a joining member's position (publications in flight
/// from Redis) before the group reads what it missed.
pub(crate) const CATCH_UP_GRACE: Duration = Duration::from_millis(25);
/// How often a catch-up whose read failed is tried again before members get a gap (about 5 s
/// in all), and how long between tries.
const CATCH_UP_ATTEMPTS: u32 = 20;
const CATCH_UP_RETRY: Duration = Duration::from_millis(250);
/// Publications held during a catch-up before it gives up waiting for its read.
const MAX_HELD: usize = 10_000;

/// How a channel keeps history, as its group needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    pub rule: HistoryRule,
    /// At most this many publications are replayed to one member, or read in one catch-up.
    pub recovery_limit: usize,
}

/// Publications on the channel may have been lost on their way to this node: catch up.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Resync;

/// The history side of a group.
pub(crate) struct GroupHistory {
    settings: HistorySettings,
    continuity: Continuity,
    /// Set while the group reads what its stream missed: what arrives meanwhile, in order.
    held: Option<Vec<Arc<Publication>>>,
    /// Set while the group reads its channel's position (its stream has none yet).
    locating: bool,
    recovering: HashMap<ConnectionKey, Recovering>,
    /// Recovering members whose read waits for a free slot.
    queued_reads: VecDeque<ConnectionKey>,
    reads: usize,
    /// A check of the recovering members' positions is scheduled.
    check_scheduled: bool,
    /// Reads of the current catch-up that failed.
    failed_reads: u32,
    /// A held publication of another epoch has had its one more catch-up.
    epoch_rechecked: bool,
}

impl GroupHistory {
    pub(crate) fn new(settings: HistorySettings) -> Self {
        Self {
            settings,
            continuity: Continuity::default(),
            held: None,
            locating: false,
            recovering: HashMap::new(),
            queued_reads: VecDeque::new(),
            reads: 0,
            check_scheduled: false,
            failed_reads: 0,
            epoch_rechecked: false,
        }
    }

    pub(crate) fn has_recovering(&self) -> bool {
        !self.recovering.is_empty()
    }

    /// Removes a recovering member, if `membership` is the one that added it.
    pub(crate) fn leave(&mut self, connection: ConnectionKey, membership: &Membership) -> bool {
        let added_by_it = self
            .recovering
            .get(&connection)
            .is_some_and(|recovering| recovering.membership().is(membership));
        if added_by_it {
            self.recovering.remove(&connection);
        }
        added_by_it
    }

    /// Whether the stream is in order and known (no read of its own in flight).
    fn settled(&self) -> bool {
        self.held.is_none() && !self.locating
    }
}

impl JoinRequest {
    /// Whether the join wants an answer only the group can give on a history channel.
    pub(crate) fn wants_answer(&self) -> bool {
        self.id.is_some() || self.since.is_some()
    }
}

impl Group {
    /// Starts following the channel's history once subscribed: its position first.
    pub(super) fn start_history(&mut self, ctx: &mut Context<Self>) {
        self.catch_up(Vec::new(), ctx);
    }

    /// Takes a join that wants an answer (its membership is active).
    pub(super) fn admit_recovering(&mut self, join: Join, ctx: &mut Context<Self>) {
        let connection = join.member.connection;
        let mut recovering = Recovering::new(join);
        let Some(history) = self.history.as_ref() else {
            return;
        };
        let known = match (history.settled(), history.continuity.last()) {
            (true, Some(last)) => match recovering.since() {
                None => Some((last.clone(), None)),
                Some(since) if since == last => {
                    Some((last.clone(), Some(Verdict::Recovered(Vec::new()))))
                }
                Some(_) => None,
            },
            _ => None,
        };
        // A connection joins a channel once at a time; a member left over from before goes.
        self.remove(connection);
        if let Some((position, verdict)) = known {
            recovering.answer(Answer { position, verdict });
            if let Some((member, membership)) = recovering.finish(&self.name) {
                self.add_live(member, membership);
            }
            return;
        }
        if let Some(history) = self.history.as_mut() {
            history.recovering.insert(connection, recovering);
            self.schedule_read(connection, ctx);
        }
    }

    /// Starts the member's read now, or once a slot is free.
    fn schedule_read(&mut self, connection: ConnectionKey, ctx: &mut Context<Self>) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        if history.reads < MAX_READS {
            self.read_for(connection, ctx);
        } else {
            history.queued_reads.push_back(connection);
        }
    }

    /// Reads the history a recovering member needs; `false` if it is gone.
    fn read_for(&mut self, connection: ConnectionKey, ctx: &mut Context<Self>) -> bool {
        let Some(history) = self.history.as_mut() else {
            return false;
        };
        let Some(recovering) = history.recovering.get(&connection) else {
            return false;
        };
        let limit = history.settings.recovery_limit;
        let known_epoch = history.continuity.last().map(|last| last.epoch.clone());
        let query = match recovering.since() {
            // Of another epoch than the stream's: only the position is needed to say so.
            Some(since)
                if known_epoch
                    .as_ref()
                    .is_none_or(|epoch| *epoch == since.epoch) =>
            {
                HistoryQuery::after(since.offset, limit)
            }
            _ => HistoryQuery::position(),
        };
        let membership = recovering.membership().clone();
        history.reads += 1;
        let rule = history.settings.rule;
        self.broker
            .history(&self.name, rule, query)
            .into_actor(self)
            .map(move |result, group, ctx| {
                group.on_member_read(connection, membership, result, ctx)
            })
            .spawn(ctx);
        true
    }

    fn on_member_read(
        &mut self,
        connection: ConnectionKey,
        membership: Membership,
        result: Result<History, BrokerError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        history.reads = history.reads.saturating_sub(1);
        while let Some(next) = self
            .history
            .as_mut()
            .and_then(|history| history.queued_reads.pop_front())
        {
            if self.read_for(next, ctx) {
                break;
            }
        }
        let Some(history) = self.history.as_mut() else {
            return;
        };
        let current = history
            .recovering
            .get(&connection)
            .is_some_and(|recovering| recovering.membership().is(&membership));
        if !current {
            return;
        }
        match result {
            Ok(read) => {
                let limit = history.settings.recovery_limit;
                if let Some(recovering) = history.recovering.get_mut(&connection) {
                    let verdict = recovering.since().map(|since| verdict(since, &read, limit));
                    recovering.answer(Answer {
                        position: read.position,
                        verdict,
                    });
                }
            }
            Err(err) => {
                if let Some(recovering) = history.recovering.remove(&connection) {
                    tracing::debug!(channel = %self.name, error = %err, "history read for a join failed");
                    recovering.fail(crate::protocol::BROKER_UNAVAILABLE_REASON.to_owned());
                }
            }
        }
        self.settle(ctx);
    }

    /// A publication on the channel, in the stream's order.
    pub(super) fn accept(&mut self, publication: Arc<Publication>, ctx: &mut Context<Self>) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        if let Some(held) = &mut history.held {
            held.push(publication);
            return;
        }
        match history.continuity.order(&publication) {
            Order::Unpositioned => self.deliver_item(Item::Publication(publication)),
            Order::Duplicate => {}
            Order::Next => {
                if let Some(position) = &publication.position {
                    history.continuity.set(position.clone());
                }
                history.epoch_rechecked = false;
                self.deliver_item(Item::Publication(publication));
            }
            Order::Gap => {
                tracing::debug!(channel = %self.name, "publications missed on this node; catching up");
                self.catch_up(vec![publication], ctx);
                return;
            }
        }
        self.settle(ctx);
        if self.members.is_empty() {
            self.retire_if_empty(ctx);
        }
    }

    /// Reads what the stream missed after its last position (or, knowing none, the channel's
    /// position), holding `held` and whatever arrives until the read answers.
    pub(super) fn catch_up(&mut self, held: Vec<Arc<Publication>>, ctx: &mut Context<Self>) {
        let name = self.name.clone();
        let Some(history) = self.history.as_mut() else {
            return;
        };
        if let Some(already) = &mut history.held {
            already.extend(held);
            return;
        }
        let rule = history.settings.rule;
        if history.continuity.last().is_some() {
            history.held = Some(held);
            return self.read_missed(ctx);
        }
        if !held.is_empty() {
            // Publications without a stream position to order against: the first places it.
            for publication in held {
                self.accept(publication, ctx);
            }
            return;
        }
        if history.locating {
            return;
        }
        history.locating = true;
        self.broker
            .history(&name, rule, HistoryQuery::position())
            .into_actor(self)
            .map(|result, group, ctx| group.on_caught_up(true, result, ctx))
            .spawn(ctx);
    }

    /// Reads what came after the stream's last position (the catch-up's read, or its retry).
    fn read_missed(&mut self, ctx: &mut Context<Self>) {
        let Some(history) = self.history.as_ref() else {
            return;
        };
        let Some(last) = history.continuity.last() else {
            return;
        };
        let query = HistoryQuery::after(last.offset, history.settings.recovery_limit);
        self.broker
            .history(&self.name, history.settings.rule, query)
            .into_actor(self)
            .map(|result, group, ctx| group.on_caught_up(false, result, ctx))
            .spawn(ctx);
    }

    /// The answer of [`catch_up`](Self::catch_up)'s read: `locating` when it asked only for
    /// the channel's position.
    fn on_caught_up(
        &mut self,
        locating: bool,
        result: Result<History, BrokerError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        if locating {
            history.locating = false;
            match (&result, history.continuity.last()) {
                (Ok(read), None) => history.continuity.set(read.position.clone()),
                (Err(err), None) => {
                    tracing::warn!(channel = %self.name, error = %err, "cannot read the channel's position");
                    self.fail_unreached();
                }
                // Publications placed the stream while the read was out: they win, and a
                // catch-up they started answers on its own.
                (_, Some(_)) => {}
            }
            return self.settle(ctx);
        }
        let held = history.held.take();
        let limit = history.settings.recovery_limit;
        if result.is_ok() {
            history.failed_reads = 0;
        }
        match (result, history.continuity.last().cloned()) {
            (Ok(read), None) => history.continuity.set(read.position),
            (Ok(read), Some(last)) => match verdict(&last, &read, limit) {
                Verdict::Recovered(missed) => {
                    metrics::counter!(names::PUBLICATIONS_REPLAYED).increment(missed.len() as u64);
                    for publication in missed {
                        self.advance_to(&publication);
                        self.deliver_item(Item::Publication(publication));
                    }
                }
                // History was lost (Redis restarted empty): what the new epoch holds is not.
                Verdict::NotRecovered(reasons::EPOCH) => {
                    tracing::info!(channel = %self.name, top = read.position.offset,
                        "the channel's history was lost; members get a gap, then its new history");
                    let start = Position::new(0, read.position.epoch.clone());
                    history.continuity.set(start.clone());
                    self.deliver_item(Item::Gap(start));
                    self.catch_up(held.unwrap_or_default(), ctx);
                    return self.settle(ctx);
                }
                Verdict::NotRecovered(reason) => {
                    tracing::info!(channel = %self.name, reason, top = read.position.offset,
                        "publications this node missed are no longer in history; members get a gap");
                    let resume = resume_point(&read.position, held.as_deref().unwrap_or_default());
                    history.continuity.set(resume.clone());
                    self.deliver_item(Item::Gap(resume));
                }
            },
            // Redis answers publications again but not yet reads (its other connection is
            // still coming back): try again soon, holding what arrives.
            (Err(err), _)
                if history.failed_reads < CATCH_UP_ATTEMPTS
                    && held.as_ref().is_some_and(|held| held.len() < MAX_HELD) =>
            {
                tracing::debug!(channel = %self.name, error = %err, "cannot read what this node missed yet");
                history.failed_reads += 1;
                history.held = held;
                ctx.run_later(CATCH_UP_RETRY, |group, ctx| group.read_missed(ctx));
                return;
            }
            (Err(err), _) => {
                history.failed_reads = 0;
                tracing::warn!(channel = %self.name, error = %err, "cannot read what this node missed");
                let first = held
                    .iter()
                    .flatten()
                    .find_map(|publication| publication.position.clone());
                if let Some(first) = first {
                    let before = Position::new(first.offset.saturating_sub(1), first.epoch);
                    history.continuity.set(before.clone());
                    self.deliver_item(Item::Gap(before));
                }
                self.fail_unreached();
            }
        }
        self.accept_held(held.unwrap_or_default(), ctx);
        self.settle(ctx);
    }

    /// Takes what was held during a catch-up whose read answered. A publication that still
    /// does not follow the stream is not in the channel's history: an envelope published with
    /// a position the history function never gave it (a back end re-publishing what it
    /// received), or of an epoch the read did not see. One of another epoch gets one more
    /// catch-up (the history may have been lost while the read was out); any other is
    /// delivered without its position, as a plain `PUBLISH` is, so it can neither stall the
    /// stream nor keep it reading.
    fn accept_held(&mut self, held: Vec<Arc<Publication>>, ctx: &mut Context<Self>) {
        for publication in held {
            let Some(history) = self.history.as_mut() else {
                return;
            };
            let order = match history.held {
                // A new catch-up started: `accept` holds the rest for it.
                Some(_) => Order::Next,
                None => history.continuity.order(&publication),
            };
            if !matches!(order, Order::Gap) {
                self.accept(publication, ctx);
                continue;
            }
            let other_epoch = match (&publication.position, history.continuity.last()) {
                (Some(position), Some(last)) => position.epoch != last.epoch,
                _ => false,
            };
            if other_epoch && !history.epoch_rechecked {
                history.epoch_rechecked = true;
                self.catch_up(vec![publication], ctx);
                continue;
            }
            tracing::warn!(channel = %self.name, offset = ?publication.position.as_ref().map(|position| position.offset),
                "a publication whose position is not in the channel's history; delivered without it");
            let mut plain = Publication::clone(&publication);
            plain.position = None;
            self.deliver_item(Item::Publication(Arc::new(plain)));
        }
    }

    /// Moves the stream to `publication`'s position.
    fn advance_to(&mut self, publication: &Publication) {
        if let (Some(history), Some(position)) = (self.history.as_mut(), &publication.position) {
            history.continuity.set(position.clone());
        }
    }

    /// Delivers one stream item to the live members and buffers it for the recovering ones.
    fn deliver_item(&mut self, item: Item) {
        let result = match &item {
            Item::Publication(publication) => super::fan_out(&self.members, publication),
            Item::Gap(position) => {
                let frame = ServerFrame::Gap {
                    channel: self.name.as_str(),
                    offset: position.offset,
                    epoch: &position.epoch,
                };
                let result = queue_to_all(&self.members, &frame);
                metrics::counter!(names::GAPS).increment(result.delivered);
                result
            }
        };
        for connection in result.overflowed.into_iter().chain(result.gone) {
            self.remove(connection);
        }
        let Some(history) = self.history.as_mut() else {
            return;
        };
        history.recovering.retain(|_, recovering| {
            let kept = recovering.buffer(&item);
            if !kept {
                recovering.member().close(CloseReason::SLOW_CONSUMER);
            }
            kept
        });
    }

    /// Finishes the recovering members whose position the stream has reached, and makes sure
    /// the stream reaches the others' soon.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        if history.recovering.is_empty() {
            return;
        }
        let continuity = &history.continuity;
        let ready: Vec<ConnectionKey> = history
            .recovering
            .iter()
            .filter(|(_, recovering)| {
                recovering
                    .target()
                    .is_some_and(|target| continuity.reached(target))
            })
            .map(|(connection, _)| *connection)
            .collect();
        let finished: Vec<Recovering> = ready
            .iter()
            .filter_map(|connection| history.recovering.remove(connection))
            .collect();
        let waiting = history
            .recovering
            .values()
            .any(|recovering| recovering.target().is_some());
        if waiting && !history.check_scheduled {
            history.check_scheduled = true;
            ctx.run_later(CATCH_UP_GRACE, |group, ctx| group.check_positions(ctx));
        }
        for recovering in finished {
            if let Some((member, membership)) = recovering.finish(&self.name) {
                self.add_live(member, membership);
            }
        }
        self.retire_if_empty(ctx);
    }

    /// The stream has stayed behind some recovering members' positions: read again those whose
    /// position is of another epoch than the stream's (their answer is stale), and catch the
    /// stream up for the others.
    fn check_positions(&mut self, ctx: &mut Context<Self>) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        history.check_scheduled = false;
        let continuity = &history.continuity;
        let behind: Vec<(ConnectionKey, bool)> = history
            .recovering
            .iter()
            .filter_map(|(connection, recovering)| {
                let target = recovering.target()?;
                if continuity.reached(target) {
                    return None;
                }
                let stale = continuity
                    .last()
                    .is_some_and(|last| last.epoch != target.epoch);
                Some((*connection, stale))
            })
            .collect();
        if behind.is_empty() {
            return self.settle(ctx);
        }
        let mut stream_behind = false;
        for (connection, stale) in behind {
            if stale {
                self.reread(connection, ctx);
            } else {
                stream_behind = true;
            }
        }
        if stream_behind {
            self.catch_up(Vec::new(), ctx);
        }
        self.settle(ctx);
    }

    /// Forgets a recovering member's answer and reads again.
    fn reread(&mut self, connection: ConnectionKey, ctx: &mut Context<Self>) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        if let Some(recovering) = history.recovering.get_mut(&connection) {
            recovering.forget_answer();
            self.schedule_read(connection, ctx);
        }
    }

    /// The stream cannot catch up (the broker is unavailable): the joins waiting for it fail,
    /// and their clients may join again.
    fn fail_unreached(&mut self) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        let continuity = &history.continuity;
        let unreached: Vec<ConnectionKey> = history
            .recovering
            .iter()
            .filter(|(_, recovering)| {
                recovering
                    .target()
                    .is_some_and(|target| !continuity.reached(target))
            })
            .map(|(connection, _)| *connection)
            .collect();
        for connection in unreached {
            if let Some(recovering) = history.recovering.remove(&connection) {
                recovering.fail(crate::protocol::BROKER_UNAVAILABLE_REASON.to_owned());
            }
        }
    }
}

/// Where the stream goes on after a gap: just before the first held publication of the
/// channel's current epoch, when that is not past `top` (so it, and what follows it, is
/// delivered rather than taken for a duplicate), else `top`.
fn resume_point(top: &Position, held: &[Arc<Publication>]) -> Position {
    held.iter()
        .filter_map(|publication| publication.position.as_ref())
        .find(|position| position.epoch == top.epoch)
        .and_then(|first| first.offset.checked_sub(1))
        .filter(|before| *before <= top.offset)
        .map_or_else(
            || top.clone(),
            |before| Position::new(before, top.epoch.clone()),
        )
}

impl Handler<Resync> for Group {
    type Result = ();

    fn handle(&mut self, _resync: Resync, ctx: &mut Self::Context) {
        if self.history.is_some() && matches!(self.subscription, super::Subscription::Active) {
            self.catch_up(Vec::new(), ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChannelName;

    fn at(offset: u64, epoch: &str) -> Arc<Publication> {
        let channel = ChannelName::parse("room:1").expect("channel");
        Arc::new(Publication {
            position: Some(Position::new(offset, epoch)),
            ..Publication::new(channel, serde_json::json!(offset), None)
        })
    }

    #[test]
    fn a_gap_resumes_before_the_first_held_publication_of_the_current_epoch() {
        let top = Position::new(3, "new");
        // The new epoch's first publications arrived while the node read: they follow the gap.
        assert_eq!(
            resume_point(&top, &[at(9, "old"), at(2, "new"), at(3, "new")]),
            Position::new(1, "new")
        );
        // Nothing held of the current epoch, or held past the top: the top.
        assert_eq!(resume_point(&top, &[at(9, "old")]), top);
        assert_eq!(resume_point(&top, &[at(7, "new")]), top);
        assert_eq!(resume_point(&top, &[]), top);
        assert_eq!(
            resume_point(&Position::new(0, "new"), &[at(1, "new")]),
            Position::new(0, "new")
        );
    }
}
