//! Where a group's channel stands in its history, and what a history read means for whoever
//! asked to catch up (docs/protocol.md §7). Pure logic, no actors: the group uses it for its own
//! stream (a publication that skips offsets means the node missed some) and for members that
//! join with `since` ([`super::recovery`]).
//!
//! A group keeping history delivers one ordered stream of [`Item`]s: publications, each one
//! offset after the last, and gap markers where publications were missed and could not be
//! read back. [`Continuity`] is the stream's last position; [`verdict`] decides whether a
//! history read fills the hole after a position exactly (no gap, no duplicate).

use std::sync::Arc;

use crate::broker::{History, Publication};
use crate::metrics::recovery as reasons;
use crate::protocol::Position;

/// One element of a group's stream.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Publication(Arc<Publication>),
    /// Publications were missed before this position; members get a `gap` frame.
    Gap(Position),
}

impl Item {
    /// The stream position it carries (none for a publication made with a plain `PUBLISH`).
    pub(crate) fn position(&self) -> Option<&Position> {
        match self {
            Item::Publication(publication) => publication.position.as_ref(),
            Item::Gap(position) => Some(position),
        }
    }

    /// Whether it comes after `position` for a member placed there: a positioned item of the
    /// same epoch with a greater offset, or an item without a position (which came live).
    /// Items of another epoch came before the member's position was read.
    pub(crate) fn follows(&self, position: &Position) -> bool {
        self.position()
            .is_none_or(|own| own.epoch == position.epoch && own.offset > position.offset)
    }
}

/// How an arriving publication relates to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// The one after the last (or the first the group sees).
    Next,
    /// At or before the last: delivered already.
    Duplicate,
    /// Past the next offset, or of another epoch: some were missed.
    Gap,
    /// Without an offset (a plain `PUBLISH`, a presence event): delivered as it comes.
    Unpositioned,
}

/// The last position of a group's stream (`None` until it knows one).
#[derive(Debug, Default)]
pub(crate) struct Continuity {
    last: Option<Position>,
}

impl Continuity {
    pub(crate) fn last(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    pub(crate) fn order(&self, publication: &Publication) -> Order {
        let (Some(position), Some(last)) = (&publication.position, &self.last) else {
            return match publication.position {
                None => Order::Unpositioned,
                Some(_) => Order::Next,
            };
        };
        if position.epoch != last.epoch {
            Order::Gap
        } else if position.offset <= last.offset {
            Order::Duplicate
        } else if Some(position.offset) == last.offset.checked_add(1) {
            Order::Next
        } else {
            Order::Gap
        }
    }

    /// The stream is now at `position`.
    pub(crate) fn set(&mut self, position: Position) {
        self.last = Some(position);
    }

    /// Whether the stream has passed `target` (in its epoch).
    pub(crate) fn reached(&self, target: &Position) -> bool {
        self.last
            .as_ref()
            .is_some_and(|last| last.epoch == target.epoch && last.offset >= target.offset)
    }
}

/// What a history read after `since` means for whoever stands at `since`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// These publications, in order, fill the hole up to the channel's top exactly.
    Recovered(Vec<Arc<Publication>>),
    /// The hole cannot be filled; the reason is the metric's label.
    NotRecovered(&'static str),
}

/// Decides from `history` (read after `since.offset`, at most `limit` publications) whether
/// `since` can be brought to the top: same epoch, no more than `limit` missed, and every
/// offset from `since + 1` to the top retained.
pub(crate) fn verdict(since: &Position, history: &History, limit: usize) -> Verdict {
    let top = &history.position;
    if since.epoch != top.epoch {
        return Verdict::NotRecovered(reasons::EPOCH);
    }
    let Some(missed) = top.offset.checked_sub(since.offset) else {
        return Verdict::NotRecovered(reasons::AHEAD);
    };
    if missed > limit as u64 {
        return Verdict::NotRecovered(reasons::LIMIT);
    }
    let replay: Vec<Arc<Publication>> = history
        .publications
        .iter()
        .filter(|publication| {
            publication
                .position
                .as_ref()
                .is_some_and(|position| position.offset > since.offset)
        })
        .cloned()
        .collect();
    let exact = replay.len() as u64 == missed
        && replay
            .iter()
            .zip(since.offset.saturating_add(1)..)
            .all(|(publication, expected)| {
                publication.position.as_ref().is_some_and(|position| {
                    position.offset == expected && position.epoch == top.epoch
                })
            });
    if exact {
        Verdict::Recovered(replay)
    } else {
        Verdict::NotRecovered(reasons::TRIMMED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChannelName;
    use serde_json::json;

    fn at(offset: u64, epoch: &str) -> Arc<Publication> {
        Arc::new(Publication {
            position: Some(Position::new(offset, epoch)),
            ..Publication::new(
                ChannelName::parse("c").expect("channel"),
                json!(offset),
                None,
            )
        })
    }

    fn history(top: u64, epoch: &str, offsets: &[u64]) -> History {
        History {
            position: Position::new(top, epoch),
            publications: offsets.iter().map(|&offset| at(offset, epoch)).collect(),
        }
    }

    fn offsets(verdict: &Verdict) -> Vec<u64> {
        match verdict {
            Verdict::Recovered(replay) => replay
                .iter()
                .filter_map(|publication| publication.position.as_ref().map(|p| p.offset))
                .collect(),
            Verdict::NotRecovered(reason) => panic!("not recovered: {reason}"),
        }
    }

    #[test]
    fn an_exact_hole_is_filled_in_order() {
        let since = Position::new(17, "e");
        let verdict = verdict(&since, &history(20, "e", &[18, 19, 20]), 10);
        assert_eq!(offsets(&verdict), vec![18, 19, 20]);
        assert_eq!(
            super::verdict(&since, &history(17, "e", &[]), 10),
            Verdict::Recovered(Vec::new()),
            "nothing missed"
        );
    }

    #[test]
    fn every_way_to_miss_is_named() {
        let since = Position::new(17, "e");
        let not = |reason| Verdict::NotRecovered(reason);
        assert_eq!(
            verdict(&since, &history(20, "other", &[18, 19, 20]), 10),
            not(reasons::EPOCH)
        );
        assert_eq!(
            verdict(&since, &history(12, "e", &[]), 10),
            not(reasons::AHEAD)
        );
        assert_eq!(
            verdict(&since, &history(30, "e", &[18]), 10),
            not(reasons::LIMIT)
        );
        // The oldest retained is 19: 18, the one after the client's, was just trimmed.
        assert_eq!(
            verdict(&since, &history(20, "e", &[19, 20]), 10),
            not(reasons::TRIMMED)
        );
        // The stream was evicted while the meta hash survived: nothing retained.
        assert_eq!(
            verdict(&since, &history(20, "e", &[]), 10),
            not(reasons::TRIMMED)
        );
        // A hole inside what was read.
        assert_eq!(
            verdict(&since, &history(20, "e", &[18, 20]), 10),
            not(reasons::TRIMMED)
        );
    }

    #[test]
    fn the_stream_orders_what_arrives_against_its_last_position() {
        let mut continuity = Continuity::default();
        assert_eq!(
            continuity.order(&at(5, "e")),
            Order::Next,
            "the first one seen"
        );
        continuity.set(Position::new(5, "e"));
        assert_eq!(continuity.order(&at(6, "e")), Order::Next);
        assert_eq!(continuity.order(&at(5, "e")), Order::Duplicate);
        assert_eq!(continuity.order(&at(8, "e")), Order::Gap);
        assert_eq!(continuity.order(&at(6, "new")), Order::Gap);
        let plain = Publication::new(ChannelName::parse("c").expect("c"), json!(1), None);
        assert_eq!(continuity.order(&plain), Order::Unpositioned);
        assert!(continuity.reached(&Position::new(5, "e")));
        assert!(!continuity.reached(&Position::new(6, "e")));
        assert!(!continuity.reached(&Position::new(1, "new")));
        continuity.set(Position::new(u64::MAX, "e"));
        assert_eq!(
            continuity.order(&at(u64::MAX, "e")),
            Order::Duplicate,
            "no overflow"
        );
    }

    #[test]
    fn a_member_placed_at_a_position_gets_only_what_follows_it() {
        let position = Position::new(10, "e");
        assert!(Item::Publication(at(11, "e")).follows(&position));
        assert!(!Item::Publication(at(10, "e")).follows(&position));
        assert!(!Item::Publication(at(12, "old")).follows(&position));
        assert!(Item::Gap(Position::new(14, "e")).follows(&position));
        let plain = Publication::new(ChannelName::parse("c").expect("c"), json!(1), None);
        assert!(Item::Publication(Arc::new(plain)).follows(&position));
    }
}
