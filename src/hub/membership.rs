//! One connection's membership of one channel, as a token shared by the connection, the hub's
//! join future and the channel's group.
//!
//! A join travels asynchronously (to a group that may still be subscribing, or that may retire
//! under it and be replaced), while a leave is immediate. Without a shared token a leave that
//! overtakes its join cannot reach it: the join would complete (or be retried) after the
//! connection had already forgotten the channel, leaving a ghost member that keeps receiving,
//! bypasses the channel limit and keeps the group and its broker subscription alive.
//!
//! So every join creates a [`Membership`]; a leave cancels it. Whoever sees it cancelled stops
//! there: the hub does not retry a cancelled join, a group does not add a cancelled member (and
//! removes a member only for the membership that added it), and the connection ignores the
//! result of a join it no longer holds. Exactly one party undoes the bookkeeping of a membership
//! that ends: [`Membership::end`] returns `true` once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
struct State {
    /// Set until the membership ends (a leave, a failed join, the connection closing).
    active: AtomicBool,
    /// Set once the join completed while still active: the member receives publications and its
    /// arrival was announced to a presence channel.
    live: AtomicBool,
}

/// A shared, cheap-to-clone handle on one membership.
#[derive(Debug, Clone)]
pub struct Membership(Arc<State>);

impl Default for Membership {
    fn default() -> Self {
        Self::new()
    }
}

impl Membership {
    /// A new, active membership (not live yet).
    pub fn new() -> Self {
        Self(Arc::new(State {
            active: AtomicBool::new(true),
            live: AtomicBool::new(false),
        }))
    }

    /// Whether the membership has not ended.
    pub fn is_active(&self) -> bool {
        self.0.active.load(Ordering::SeqCst)
    }

    /// Ends the membership; `true` for the one caller that ended it (who undoes its
    /// bookkeeping), `false` if it had ended already.
    pub fn end(&self) -> bool {
        self.0
            .active
            .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Marks the join complete; `false` (and nothing marked) if the membership ended first.
    pub fn go_live(&self) -> bool {
        if !self.is_active() {
            return false;
        }
        self.0.live.store(true, Ordering::SeqCst);
        true
    }

    /// Whether the join completed (and was announced).
    pub fn is_live(&self) -> bool {
        self.0.live.load(Ordering::SeqCst)
    }

    /// Whether `other` is this very membership (not merely one of the same channel).
    pub fn is(&self, other: &Membership) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_ends_once_and_an_ended_one_cannot_go_live() {
        let membership = Membership::new();
        let copy = membership.clone();
        assert!(membership.is_active() && !membership.is_live());
        assert!(copy.is(&membership));
        assert!(!Membership::new().is(&membership));
        assert!(copy.end(), "the first end is the one that undoes");
        assert!(!membership.end(), "ended already");
        assert!(!membership.go_live());
        assert!(!copy.is_live());
    }
}
