//! The outbound half of a connection: [`OutboundDrain`], what the socket's writer
//! (`connection::socket`) writes whenever the socket can take more. Each poll drains everything
//! waiting in the connection's bounded outbound queue and hands it over as one buffer, so frames
//! that piled up while the socket was busy leave in one write. Frames arrive already framed for
//! the wire (one encoding per publication, shared by every member), so a single waiting frame
//! is handed over as it is, without a copy.
//!
//! There is no second channel between the queue and the socket: a delivery is one `try_send`
//! into the queue and one wake of the connection's writer.
//!
//! The `welcome` is the first frame (docs/protocol.md §1), though the channels joined at the
//! handshake deliver as soon as each join completes, before the welcome (which lists them) is
//! ready: until the connection hands the drain its welcome, the drain hands over nothing, and
//! what members queue meanwhile waits behind it (bounded as always).
//!
//! On a close request, what is already queued (a last `error` frame, say) is written first,
//! then the close frame; for a slow consumer (4010) the queue is the problem, so the close
//! overtakes it. The drain then stays open, the socket still reading, until the close handshake
//! is over: the connection actor holds a [`Lifeline`] and drops it when the client has answered
//! with its own close frame, hung up, or let the close timeout pass (or at once, when the close
//! was the echo of the client's). Only then does the drain end, and the writer ends the TCP
//! connection at once (no linger), so a client that waits for the server to close, as RFC 6455
//! asks, is not kept waiting.
//!
//! The drain holds the connection's admission [`Ticket`] until it ends (or is dropped, when the
//! socket fails), so the node's connection count and the drain on shutdown see exactly the open
//! sockets. A peer that stops reading cannot hold its socket forever: the kernel's write deadline
//! (`server.write_timeout`, set on every accepted socket) fails the connection, which drops the
//! drain.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::admission::Ticket;
use crate::hub::{Outbound, OutboundReceiver};
use crate::protocol::websocket::{self, Opcode};
use crate::protocol::{CloseCode, OutboundFrame};

/// Bytes handed to the writer per poll at most; it asks again once they are written.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The close frame the connection actor asks for.
#[derive(Debug, Clone)]
pub(crate) struct CloseRequest {
    pub code: CloseCode,
    pub reason: String,
}

/// Held by the connection actor while it runs; the drain ends once it is dropped (after its close
/// frame, if one was asked for).
#[derive(Debug)]
pub(crate) struct Lifeline {
    _held: oneshot::Sender<()>,
}

/// A lifeline, and the end the drain watches.
pub(crate) fn lifeline() -> (Lifeline, oneshot::Receiver<()>) {
    let (sender, receiver) = oneshot::channel();
    (Lifeline { _held: sender }, receiver)
}

/// Where the drain is in the connection's life.
enum Stage {
    /// Draining the queue; a close request may come.
    Open,
    /// The close frame is handed over; waiting for the actor to finish the close handshake.
    Closing,
    /// Done: nothing more to hand over.
    Finished,
}

/// A connection's outbound queue, drained into its socket.
pub(crate) struct OutboundDrain {
    queue: OutboundReceiver,
    close: oneshot::Receiver<CloseRequest>,
    actor: oneshot::Receiver<()>,
    /// Until the welcome is handed over: where it comes from.
    welcome: Option<oneshot::Receiver<OutboundFrame>>,
    stage: Stage,
    ticket: Option<Ticket>,
}

impl OutboundDrain {
    /// `actor` is the watched end of the connection actor's [`Lifeline`]; `welcome`, where the
    /// first frame comes from (nothing is handed over before it; `None`: no welcome to wait for).
    pub(crate) fn new(
        queue: OutboundReceiver,
        close: oneshot::Receiver<CloseRequest>,
        actor: oneshot::Receiver<()>,
        welcome: Option<oneshot::Receiver<OutboundFrame>>,
        ticket: Ticket,
    ) -> Self {
        Self {
            queue,
            close,
            actor,
            welcome,
            stage: Stage::Open,
            ticket: Some(ticket),
        }
    }

    /// Ends the drain: nothing more is handed over, and the admission slot is free.
    fn end(&mut self) {
        self.stage = Stage::Finished;
        self.ticket = None;
    }

    /// The last bytes of the connection: what is queued (unless the queue is the problem, or no
    /// welcome went before it), then the close frame.
    fn last_bytes(&mut self, request: Option<CloseRequest>, batch: &mut Batch) {
        let flush = self.welcome.is_none()
            && request
                .as_ref()
                .is_none_or(|request| request.code != CloseCode::SlowConsumer);
        if flush {
            while let Ok(outbound) = self.queue.try_recv() {
                batch.push_item(outbound);
            }
        }
        self.queue.close();
        batch.push(match request {
            Some(request) => websocket::close(request.code.code(), &request.reason),
            None => websocket::frame(Opcode::Close, &[]),
        });
    }
}

/// What one poll hands over: a single frame as it is, several joined into one buffer.
#[derive(Default)]
struct Batch {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Batch {
    /// Adds the bytes of one queued item.
    fn push_item(&mut self, outbound: Outbound) {
        match outbound {
            Outbound::Frame(frame) => self.push(frame.into_wire()),
            Outbound::Frames(frames) => {
                for frame in frames {
                    self.push(frame.into_wire());
                }
            }
            Outbound::Ping(payload) => self.push(websocket::control(Opcode::Ping, &payload)),
            Outbound::Pong(payload) => self.push(websocket::control(Opcode::Pong, &payload)),
        }
    }

    fn push(&mut self, bytes: Bytes) {
        if self.first.is_none() && self.joined.is_empty() {
            self.first = Some(bytes);
            return;
        }
        if let Some(first) = self.first.take() {
            self.joined.reserve(first.len() + bytes.len());
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(&bytes);
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn into_bytes(self) -> Option<Bytes> {
        match self.first {
            Some(first) => Some(first),
            None => (!self.joined.is_empty()).then(|| self.joined.freeze()),
        }
    }
}

impl OutboundDrain {
    /// The next bytes to write; `None` once the connection is over.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self;
        match this.stage {
            Stage::Finished => return Poll::Ready(None),
            Stage::Closing => {
                return match Pin::new(&mut this.actor).poll(cx) {
                    Poll::Ready(_) => {
                        this.end();
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            Stage::Open => {}
        }
        let mut batch = Batch::default();
        if let Poll::Ready(request) = Pin::new(&mut this.close).poll(cx) {
            match request {
                Ok(request) => {
                    this.last_bytes(Some(request), &mut batch);
                    this.stage = Stage::Closing;
                }
                // The actor gone without asking: close without a code, and end.
                Err(_) => {
                    this.last_bytes(None, &mut batch);
                    this.end();
                }
            }
            return Poll::Ready(batch.into_bytes());
        }
        if let Some(welcome) = &mut this.welcome {
            match Pin::new(welcome).poll(cx) {
                Poll::Ready(Ok(welcome)) => batch.push(welcome.into_wire()),
                // No welcome is coming (the connection could not encode one): on as usual.
                Poll::Ready(Err(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
            this.welcome = None;
        }
        while batch.len() < MAX_BATCH_BYTES {
            match this.queue.poll_recv(cx) {
                Poll::Ready(Some(outbound)) => batch.push_item(outbound),
                // Every sender gone, the actor's included.
                Poll::Ready(None) => {
                    this.last_bytes(None, &mut batch);
                    this.end();
                    break;
                }
                Poll::Pending => break,
            }
        }
        match batch.into_bytes() {
            Some(bytes) => Poll::Ready(Some(bytes)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::admission::Admission;
    use crate::hub::outbound_queue;
    use crate::protocol::{Encoding, ServerFrame};
    use futures_util::task::noop_waker_ref;

    struct Parts {
        drain: OutboundDrain,
        queue: crate::hub::OutboundSender,
        closer: oneshot::Sender<CloseRequest>,
        lifeline: Lifeline,
        admission: Admission,
    }

    fn drain(capacity: usize) -> Parts {
        let admission = Admission::new(0);
        let ticket = admission.try_admit().expect("no limit");
        let (queue, receiver) = outbound_queue(capacity, usize::MAX);
        let (closer, close) = oneshot::channel();
        let (lifeline, actor) = lifeline();
        let drain = OutboundDrain::new(receiver, close, actor, None, ticket);
        Parts {
            drain,
            queue,
            closer,
            lifeline,
            admission,
        }
    }

    fn poll(drain: &mut OutboundDrain) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        drain.poll_next(&mut cx)
    }

    fn pong(id: u64) -> Outbound {
        Outbound::Frame(
            Encoding::Json
                .encode(&ServerFrame::Pong { id: Some(id) })
                .expect("encode"),
        )
    }

    #[test]
    fn one_waiting_frame_is_handed_over_as_it_is_and_several_leave_together() {
        let Parts {
            mut drain,
            queue,
            closer: _closer,
            lifeline: _lifeline,
            ..
        } = drain(8);
        assert_eq!(poll(&mut drain), Poll::Pending);
        let single = pong(1);
        let Outbound::Frame(frame) = &single else {
            unreachable!()
        };
        let address = frame.wire().as_ptr();
        queue.try_send(single.clone()).expect("room");
        match poll(&mut drain) {
            Poll::Ready(Some(bytes)) => assert_eq!(bytes.as_ptr(), address, "no copy"),
            other => panic!("expected the frame, got {other:?}"),
        }
        for id in 2..5 {
            queue.try_send(pong(id)).expect("room");
        }
        let Poll::Ready(Some(bytes)) = poll(&mut drain) else {
            panic!("expected one buffer")
        };
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches(r#""type":"pong""#).count(), 3, "{text}");
    }

    #[test]
    fn nothing_is_handed_over_before_the_welcome_which_goes_first() {
        let admission = Admission::new(0);
        let ticket = admission.try_admit().expect("no limit");
        let (queue, receiver) = outbound_queue(8, usize::MAX);
        let (_closer, close) = oneshot::channel();
        let (_lifeline, actor) = lifeline();
        let (welcome, welcome_receiver) = oneshot::channel();
        let mut drain = OutboundDrain::new(receiver, close, actor, Some(welcome_receiver), ticket);
        queue.try_send(pong(1)).expect("room");
        assert_eq!(poll(&mut drain), Poll::Pending, "held behind the welcome");
        let hello = Encoding::Json
            .encode(&ServerFrame::Pong { id: Some(0) })
            .expect("encode");
        welcome.send(hello).expect("drain waiting");
        let Poll::Ready(Some(bytes)) = poll(&mut drain) else {
            panic!("expected the welcome and what waited")
        };
        let text = String::from_utf8_lossy(&bytes);
        let first = text.find(r#""id":0"#).expect("the welcome");
        let second = text.find(r#""id":1"#).expect("what waited");
        assert!(first < second, "{text}");
    }

    #[test]
    fn a_close_flushes_the_queue_first_and_ends_the_body_once_the_actor_is_gone() {
        let Parts {
            mut drain,
            queue,
            closer,
            lifeline,
            admission,
        } = drain(8);
        queue.try_send(pong(7)).expect("room");
        closer
            .send(CloseRequest {
                code: CloseCode::Restart,
                reason: "bye".into(),
            })
            .expect("open");
        let Poll::Ready(Some(bytes)) = poll(&mut drain) else {
            panic!("expected the last bytes")
        };
        let close = websocket::close(1012, "bye");
        assert!(bytes.ends_with(&close), "close frame last");
        assert!(bytes.len() > close.len(), "the queued pong first");
        assert_eq!(
            poll(&mut drain),
            Poll::Pending,
            "the close handshake is not over"
        );
        assert_eq!(admission.admitted(), 1, "still an open socket");
        drop(lifeline);
        assert_eq!(poll(&mut drain), Poll::Ready(None));
        assert_eq!(admission.admitted(), 0);
    }

    #[test]
    fn a_slow_consumer_close_overtakes_the_queue() {
        let Parts {
            mut drain,
            queue,
            closer,
            lifeline: _lifeline,
            ..
        } = drain(8);
        queue.try_send(pong(7)).expect("room");
        closer
            .send(CloseRequest {
                code: CloseCode::SlowConsumer,
                reason: "outbound queue overflowed".into(),
            })
            .expect("open");
        let Poll::Ready(Some(bytes)) = poll(&mut drain) else {
            panic!("expected the close frame")
        };
        assert_eq!(bytes, websocket::close(4010, "outbound queue overflowed"));
    }

    #[test]
    fn the_actor_gone_without_a_request_closes_without_a_code() {
        let Parts {
            mut drain,
            queue,
            closer,
            lifeline,
            admission,
        } = drain(8);
        drop(closer);
        drop(lifeline);
        drop(queue);
        assert_eq!(
            poll(&mut drain),
            Poll::Ready(Some(Bytes::from_static(&[0x88, 0])))
        );
        assert_eq!(admission.admitted(), 0);
    }
}
