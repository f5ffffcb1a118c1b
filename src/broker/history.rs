//! History is a broker capability (docs/protocol.md §7): a publication to a channel whose rule
//! keeps history gets its offset and is recorded in one atomic step inside the broker, so
//! offsets are the same on every node. This file holds what the broker contract says about it:
//! the rule a channel keeps history under ([`HistoryRule`]) and the ordered rules of a
//! deployment ([`HistoryRules`], which the Redis broker installs into Redis for back ends that
//! publish with `FCALL`), what a read asks ([`HistoryQuery`]) and answers ([`History`]).
//!
//! The contract every implementation keeps (tested in `tests/it/broker_contract.rs`): offsets
//! of one channel increase by exactly 1 across every publisher on every node; at most `size`
//! publications are kept; a channel untouched for `ttl` loses its history, and a channel whose
//! history was lost (expired, the store restarted empty, its metadata evicted) gets a new
//! epoch, so a position from before can never be mistaken for one after. Reading a channel
//! that has no history yet creates its epoch (a client can start tracking from offset 0).

use std::sync::Arc;
use std::time::Duration;

use super::Publication;
use crate::protocol::Position;
use crate::protocol::channel::glob_matches;

/// The most publications one channel may keep (`history_size`).
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// How a channel keeps history: its `[[channels]]` rule's `history_size` and `history_ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRule {
    /// Publications kept (1..=[`MAX_HISTORY_SIZE`]).
    pub size: usize,
    /// How long history outlives the channel's last publication.
    pub ttl: Duration,
}

/// The channel rules' history settings, in rule order: the first pattern that matches a
/// channel decides (as for access), `None` meaning the channel keeps no history. Patterns are
/// globs (`*`), with `{user}` already widened to `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRules(Vec<(String, Option<HistoryRule>)>);

impl HistoryRules {
    pub fn new(rules: Vec<(String, Option<HistoryRule>)>) -> Self {
        Self(rules)
    }

    /// How `channel` keeps history, if it does.
    pub fn rule_for(&self, channel: &str) -> Option<HistoryRule> {
        self.0
            .iter()
            .find(|(pattern, _)| glob_matches(pattern, channel))
            .and_then(|(_, rule)| *rule)
    }

    /// The rules, in order.
    pub fn iter(&self) -> impl Iterator<Item = &(String, Option<HistoryRule>)> {
        self.0.iter()
    }

    /// Whether any channel keeps history.
    pub fn any(&self) -> bool {
        self.0.iter().any(|(_, rule)| rule.is_some())
    }
}

/// What to read from a channel's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only publications after this offset.
    pub since: Option<u64>,
    /// Only publications before this offset (paging back, newest first).
    pub before: Option<u64>,
    /// At most this many publications (0: only the position).
    pub limit: usize,
    /// Newest first: the `limit` newest of the range, from the newest down.
    pub newest_first: bool,
}

impl HistoryQuery {
    /// Only the channel's position.
    pub fn position() -> Self {
        Self {
            since: None,
            before: None,
            limit: 0,
            newest_first: false,
        }
    }

    /// What came after `offset`, oldest first, at most `limit`.
    pub fn after(offset: u64, limit: usize) -> Self {
        Self {
            since: Some(offset),
            limit,
            ..Self::position()
        }
    }

    /// Whether `offset` is in the range asked for.
    pub fn covers(&self, offset: u64) -> bool {
        self.since.is_none_or(|since| offset > since)
            && self.before.is_none_or(|before| offset < before)
    }
}

/// A read's answer: the channel's position, and the publications asked for (in the order
/// asked), each carrying its own position.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub position: Position,
    pub publications: Vec<Arc<Publication>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides_even_without_history() {
        let kept = HistoryRule {
            size: 10,
            ttl: Duration::from_secs(60),
        };
        let rules = HistoryRules::new(vec![
            ("room:quiet".into(), None),
            ("room:*".into(), Some(kept)),
        ]);
        assert_eq!(rules.rule_for("room:1"), Some(kept));
        assert_eq!(rules.rule_for("room:quiet"), None);
        assert_eq!(rules.rule_for("other"), None);
        assert!(rules.any());
    }

    #[test]
    fn a_query_covers_the_open_range_it_names() {
        let query = HistoryQuery {
            before: Some(10),
            ..HistoryQuery::after(3, 5)
        };
        assert!(!query.covers(3) && query.covers(4) && query.covers(9) && !query.covers(10));
        assert!(HistoryQuery::position().covers(0));
    }
}
