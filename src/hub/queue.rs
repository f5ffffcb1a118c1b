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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;
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

/// The bytes queued and their bound, shared by both ends.
#[derive(Debug)]
struct ByteBudget {
    queued: AtomicUsize,
    limit: usize,
}

/// The producing end; cheap to clone (every group the connection is in holds one).
#[derive(Debug, Clone)]
pub struct OutboundSender {
    frames: mpsc::Sender<Outbound>,
    bytes: Arc<ByteBudget>,
}

/// The consuming end, drained by the socket side (`connection::outbound`).
#[derive(Debug)]
pub struct OutboundReceiver {
    frames: mpsc::Receiver<Outbound>,
    bytes: Arc<ByteBudget>,
}

/// Creates a connection's outbound queue holding at most `frames` items and (beyond its first
/// item) `bytes` bytes.
pub fn outbound_queue(frames: usize, bytes: usize) -> (OutboundSender, OutboundReceiver) {
    let (sender, receiver) = mpsc::channel(frames.max(1));
    let budget = Arc::new(ByteBudget {
        queued: AtomicUsize::new(0),
        limit: bytes.max(1),
    });
    (
        OutboundSender {
            frames: sender,
            bytes: budget.clone(),
        },
        OutboundReceiver {
            frames: receiver,
            bytes: budget,
        },
    )
}

impl OutboundSender {
    /// Queues `item`, or gives it back: `Full` when either bound is reached, `Closed` when the
    /// socket side is gone.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError<Outbound>> {
        let length = item.wire_len();
        let before = self.bytes.queued.fetch_add(length, Ordering::AcqRel);
        if before > 0 && before.saturating_add(length) > self.bytes.limit {
            self.bytes.queued.fetch_sub(length, Ordering::AcqRel);
            return Err(TrySendError::Full(item));
        }
        self.frames.try_send(item).inspect_err(|_| {
            self.bytes.queued.fetch_sub(length, Ordering::AcqRel);
        })
    }

    /// Bytes waiting in the queue now.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.queued.load(Ordering::Acquire)
    }

    /// Whether one more item of `bytes` bytes fits now: a free place, and room for its bytes
    /// or an empty queue (a replay is queued whole or not at all).
    pub fn fits(&self, bytes: usize) -> bool {
        let queued = self.queued_bytes();
        self.frames.capacity() > 0
            && (queued == 0 || queued.saturating_add(bytes) <= self.bytes.limit)
    }
}

impl OutboundReceiver {
    fn taken(&self, item: &Outbound) {
        self.bytes
            .queued
            .fetch_sub(item.wire_len(), Ordering::AcqRel);
    }

    /// The next item, when one is waiting; `Ready(None)` once every sender is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let polled = self.frames.poll_recv(cx);
        if let Poll::Ready(Some(item)) = &polled {
            self.taken(item);
        }
        polled
    }

    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let item = self.frames.try_recv()?;
        self.taken(&item);
        Ok(item)
    }

    /// Refuses further items (senders then see `Closed`); queued ones can still be taken.
    pub fn close(&mut self) {
        self.frames.close();
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
}
