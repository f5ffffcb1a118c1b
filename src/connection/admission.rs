//! Admission: the node's connection limit, counted exactly.
//!
//! A handshake takes a [`Ticket`] before anything else (authentication included); the
//! connection's outbound drain holds it until the socket's close frame is handed over, and
//! dropping it (the drain finished or dropped, or the handshake was refused after admission)
//! gives the slot back. So a
//! burst of simultaneous handshakes can never overshoot `server.max_connections`, and
//! [`Admission::admitted`] is the number of sockets still open, which the drain waits on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts admitted connections against a limit (0: no limit).
#[derive(Debug)]
pub(crate) struct Admission {
    limit: usize,
    admitted: Arc<AtomicUsize>,
}

/// One admitted connection's slot; released on drop, with whatever else the connection's
/// admission holds ([`Ticket::hold`]: its places under `[limits]`).
pub(crate) struct Ticket {
    admitted: Arc<AtomicUsize>,
    held: Vec<Box<dyn Send>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Ticket")
            .field("held", &self.held.len())
            .finish()
    }
}

impl Ticket {
    /// Keeps `slot` until the connection is over (it is dropped with the ticket).
    pub(crate) fn hold(&mut self, slot: impl Send + 'static) {
        self.held.push(Box::new(slot));
    }
}

impl Admission {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            admitted: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A ticket, or `None` when the node is full.
    pub(crate) fn try_admit(&self) -> Option<Ticket> {
        let limit = if self.limit == 0 {
            usize::MAX
        } else {
            self.limit
        };
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| {
                (admitted < limit).then_some(admitted + 1)
            })
            .ok()
            .map(|_| Ticket {
                admitted: self.admitted.clone(),
                held: Vec::new(),
            })
    }

    pub(crate) fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_exact_and_tickets_give_their_slot_back() {
        let admission = Admission::new(2);
        let first = admission.try_admit();
        let second = admission.try_admit();
        assert!(first.is_some() && second.is_some());
        assert!(admission.try_admit().is_none());
        drop(first);
        assert_eq!(admission.admitted(), 1);
        assert!(admission.try_admit().is_some());
    }

    #[test]
    fn zero_means_no_limit() {
        let admission = Admission::new(0);
        let tickets: Vec<_> = (0..1000).filter_map(|_| admission.try_admit()).collect();
        assert_eq!(tickets.len(), 1000);
    }
}
