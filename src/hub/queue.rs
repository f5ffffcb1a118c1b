//! A connection's outbound queue: what groups, the directory and the connection itself put in
//! front of one socket, bounded twice, in frames and in bytes (`server.outbound_queue`,
//! `server.outbound_queue_bytes`). A frame bound alone would let a client that never reads hold
//! a thousand large frames; a byte bound alone would let it hold a million tiny ones.
//!
//! Senders only `try_send`: a full queue is a slow consumer (the caller closes it with 4010),
//! never a reason to wait or to grow. One frame larger than the byte bound still fits into an
//! empty queue, so a single big publication is delivered rather than refused forever; so does
//! a replay ([`Outbound::Frames`]), one item however many frames it holds. The byte
//! count is taken when a frame is queued and given back when the socket side takes it, so
//! concurrent senders may overshoot the bound by at most one frame each.
//!
//! The queue is a locked `VecDeque` and a waker rather than a channel: it allocates nothing for
//! items until the first is queued and frees a large buffer once drained, so an idle connection
//! holds a few dozen bytes here (tokio's bounded channel allocated a 32-slot block, 1.8 KiB with
//! its state, for every connection up front). Senders are groups, the directory and the
//! connection; the lock is held for one push or pop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use crate::protocol::OutboundFrame;

/// One item in a connection's outbound queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    Frame(OutboundFrame),
    /// Frames that go out together, in order: a recovering member's replay, its join's reply
    /// and what arrived meanwhile (`hub::group::recovery`). One item for the frame bound, so a
    /// client that missed more than a queue's worth (a slow consumer, say) can still recover;
    /// its bytes count like one large frame's.
    Frames(Vec<OutboundFrame>),
    Ping(Bytes),
    Pong(Bytes),
}

impl Outbound {
    /// The bytes it will take on the wire (what the byte bound counts).
    pub fn wire_len(&self) -> usize {
        match self {
            Outbound::Frame(frame) => frame.wire().len(),
            Outbound::Frames(frames) => frames.iter().map(|frame| frame.wire().len()).sum(),
            // A control frame's 2-byte header and its payload (at most 125 bytes are sent).
            Outbound::Ping(payload) | Outbound::Pong(payload) => 2 + payload.len().min(125),
        }
    }
}

/// What both ends share: the items, the byte count, the receiver's waker, the senders' count.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The most items waiting at once.
    capacity: usize,
    queued_bytes: AtomicUsize,
    byte_limit: usize,
    receiver: AtomicWaker,
    senders: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outbound>,
    /// The receiver closed the queue (or is gone): senders are refused.
    closed: bool,
}

/// The item storage a drained queue keeps; beyond it, an empty queue frees its buffer, so a
/// burst does not leave an idle connection holding a thousand slots.
const KEPT_SLOTS: usize = 8;

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent queue (every change is one call).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pop(&self) -> Option<Outbound> {
        let mut state = self.state();
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEPT_SLOTS {
            state.items = VecDeque::new();
        }
        drop(state);
        if let Some(item) = &item {
            self.queued_bytes
                .fetch_sub(item.wire_len(), Ordering::AcqRel);
        }
        item
    }

    fn senders_gone(&self) -> bool {
        self.senders.load(Ordering::Acquire) == 0
    }
}

/// The producing end; cheap to clone (every group the connection is in holds one).
#[derive(Debug)]
pub struct OutboundSender {
    shared: Arc<Shared>,
}

/// The consuming end, drained by the socket side (`connection::outbound`).
#[derive(Debug)]
pub struct OutboundReceiver {
    shared: Arc<Shared>,
}

/// Creates a connection's outbound queue holding at most `frames` items and (beyond its first
/// item) `bytes` bytes. Nothing is allocated for items until the first is queued.
pub fn outbound_queue(frames: usize, bytes: usize) -> (OutboundSender, OutboundReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        capacity: frames.max(1),
        queued_bytes: AtomicUsize::new(0),
        byte_limit: bytes.max(1),
        receiver: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
    });
    (
        OutboundSender {
            shared: shared.clone(),
        },
        OutboundReceiver { shared },
    )
}

impl OutboundSender {
    /// Queues `item`, or gives it back: `Full` when either bound is reached, `Closed` when the
    /// socket side is gone.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError<Outbound>> {
        let shared = &*self.shared;
        let length = item.wire_len();
        let before = shared.queued_bytes.fetch_add(length, Ordering::AcqRel);
        let refused = |item| {
            shared.queued_bytes.fetch_sub(length, Ordering::AcqRel);
            Err(item)
        };
        if before > 0 && before.saturating_add(length) > shared.byte_limit {
            return refused(TrySendError::Full(item));
        }
        let mut state = shared.state();
        if state.closed {
            drop(state);
            return refused(TrySendError::Closed(item));
        }
        if state.items.len() >= shared.capacity {
            drop(state);
            return refused(TrySendError::Full(item));
        }
        state.items.push_back(item);
        drop(state);
        shared.receiver.wake();
        Ok(())
    }

    /// Bytes waiting in the queue now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// Whether one more item of `bytes` bytes fits now: a free place, and room for its bytes
    /// or an empty queue (a replay is queued whole or not at all).
    pub fn fits(&self, bytes: usize) -> bool {
        let queued = self.queued_bytes();
        let waiting = self.shared.state().items.len();
        waiting < self.shared.capacity
            && (queued == 0 || queued.saturating_add(bytes) <= self.shared.byte_limit)
    }
}

impl Clone for OutboundSender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for OutboundSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: the receiver learns that nothing more can come.
            self.shared.receiver.wake();
        }
    }
}

impl OutboundReceiver {
    /// The next item, when one is waiting; `Ready(None)` once every sender is gone (or the
    /// queue is closed) and nothing is left.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if let Some(item) = self.shared.pop() {
            return Poll::Ready(Some(item));
        }
        self.shared.receiver.register(cx.waker());
        // Checked again after registering: an item or the last sender's drop in between woke
        // a waker that may not have been the current one.
        if let Some(item) = self.shared.pop() {
            return Poll::Ready(Some(item));
        }
        if self.shared.senders_gone() || self.shared.state().closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        match self.shared.pop() {
            Some(item) => Ok(item),
            None if self.shared.senders_gone() => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Refuses further items (senders then see `Closed`); queued ones can still be taken.
    pub fn close(&mut self) {
        self.shared.state().closed = true;
    }
}

impl Drop for OutboundReceiver {
    /// Senders are refused from now on, and what waited is freed now, not when the last
    /// sender (a group's member entry, say) lets go.
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.state();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        let bytes: usize = items.iter().map(Outbound::wire_len).sum();
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: usize) -> Outbound {
        Outbound::Frame(OutboundFrame::from_wire(Bytes::from(vec![0u8; bytes])))
    }

    #[test]
    fn the_queue_is_bounded_in_frames_and_in_bytes() {
        let (sender, mut receiver) = outbound_queue(4, 1000);
        for _ in 0..2 {
            sender.try_send(frame(400)).expect("fits");
        }
        assert!(
            matches!(sender.try_send(frame(400)), Err(TrySendError::Full(_))),
            "1,200 bytes do not fit in 1,000"
        );
        assert_eq!(sender.queued_bytes(), 800);
        sender.try_send(frame(100)).expect("900 fit");
        sender.try_send(frame(100)).expect("1,000 fit");
        assert!(matches!(
            sender.try_send(frame(1)),
            Err(TrySendError::Full(_))
        ));
        receiver.try_recv().expect("one taken");
        assert_eq!(sender.queued_bytes(), 600);
        for _ in 0..4 {
            let _ = receiver.try_recv();
        }
        assert_eq!(sender.queued_bytes(), 0);
    }

    #[test]
    fn a_frame_over_the_byte_bound_fits_into_an_empty_queue_and_the_frame_bound_holds() {
        let (sender, mut receiver) = outbound_queue(2, 10);
        sender.try_send(frame(5_000)).expect("alone, it fits");
        assert!(matches!(
            sender.try_send(frame(1)),
            Err(TrySendError::Full(_))
        ));
        receiver.try_recv().expect("taken");
        let (sender, _receiver) = outbound_queue(2, 1 << 20);
        sender.try_send(frame(1)).expect("one");
        sender.try_send(frame(1)).expect("two");
        assert!(matches!(
            sender.try_send(frame(1)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(sender.queued_bytes(), 2, "a refused frame is not counted");
    }

    #[test]
    fn what_fits_is_known_before_sending() {
        let (sender, _receiver) = outbound_queue(2, 1000);
        assert!(sender.fits(1000));
        assert!(sender.fits(5000), "one item alone fits an empty queue");
        assert!(sender.try_send(frame(600)).is_ok());
        assert!(sender.fits(400));
        assert!(!sender.fits(401), "too many bytes");
        assert!(sender.try_send(frame(400)).is_ok());
        assert!(!sender.fits(0), "no place left");
    }

    #[test]
    fn a_closed_queue_refuses_and_counts_nothing() {
        let (sender, mut receiver) = outbound_queue(2, 100);
        receiver.close();
        assert!(matches!(
            sender.try_send(frame(10)),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(sender.queued_bytes(), 0);
    }

    /// Counts its wakes.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_send_wakes_the_waiting_receiver_and_the_last_senders_drop_ends_the_queue() {
        let (sender, mut receiver) = outbound_queue(4, 1000);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(receiver.poll_recv(&mut cx).is_pending());
        let second = sender.clone();
        second.try_send(frame(3)).expect("room");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "woken by the send");
        assert!(matches!(receiver.poll_recv(&mut cx), Poll::Ready(Some(_))));
        drop(second);
        assert!(
            receiver.poll_recv(&mut cx).is_pending(),
            "one sender is left"
        );
        drop(sender);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            2,
            "woken by the last drop"
        );
        assert!(matches!(receiver.poll_recv(&mut cx), Poll::Ready(None)));
        assert!(matches!(
            receiver.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn an_idle_queue_holds_no_item_buffer_and_a_drained_burst_frees_its_own() {
        let (sender, mut receiver) = outbound_queue(1024, usize::MAX);
        assert_eq!(
            receiver.shared.state().items.capacity(),
            0,
            "nothing up front"
        );
        for _ in 0..100 {
            sender.try_send(frame(1)).expect("room");
        }
        while receiver.try_recv().is_ok() {}
        assert_eq!(
            receiver.shared.state().items.capacity(),
            0,
            "the burst's buffer is freed"
        );
        sender.try_send(frame(1)).expect("room");
        let _ = receiver.try_recv();
        assert!(receiver.shared.state().items.capacity() <= KEPT_SLOTS);
    }

    #[test]
    fn a_dropped_receiver_refuses_senders_and_gives_back_what_waited() {
        let (sender, receiver) = outbound_queue(4, 1000);
        sender.try_send(frame(10)).expect("room");
        drop(receiver);
        assert_eq!(sender.queued_bytes(), 0);
        assert!(matches!(
            sender.try_send(frame(10)),
            Err(TrySendError::Closed(_))
        ));
    }
}
