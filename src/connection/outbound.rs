//! The outbound half of a connection: its HTTP response body, which the actix-http dispatcher
//! polls whenever the socket can take more. Each poll drains everything waiting in the
//! connection's bounded outbound queue and hands it over as one buffer, so frames that piled up
//! while the socket was busy leave in one write. Frames arrive already framed for the wire (one
//! encoding per publication, shared by every member), so a single waiting frame is handed over
//! as it is, without a copy.
//!
//! There is no task and no second channel between the queue and the socket: a delivery is one
//! `try_send` into the queue and one wake of the connection's own dispatcher.
//!
//! actix-ws still performs the handshake and reads the client's frames (its `MessageStream`).
//! Its own response body is kept here unpolled and dropped with this one, which is how that
//! stream learns the connection is gone.
//!
//! On a close request, what is already queued (a last `error` frame, say) is written first,
//! then the close frame; for a slow consumer (4010) the queue is the problem, so the close
//! overtakes it. The body holds the connection's admission [`Ticket`] until its close frame is
//! handed to the dispatcher (or the connection is dropped), so the drain on shutdown waits for
//! exactly that.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::admission::Ticket;
use crate::hub::Outbound;
use crate::protocol::CloseCode;
use crate::protocol::websocket::{self, Opcode};

/// Bytes handed to the dispatcher per poll at most; it asks again while its own buffer has room.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The close frame the connection actor asks for.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub code: CloseCode,
    pub reason: String,
}

/// A connection's response body: its outbound queue, drained into the socket.
pub struct OutboundBody {
    queue: mpsc::Receiver<Outbound>,
    close: oneshot::Receiver<CloseRequest>,
    /// actix-ws's response body, never polled; dropping it ends the inbound `MessageStream`.
    _handshake_body: BoxBody,
    ticket: Option<Ticket>,
}

impl OutboundBody {
    pub fn new(
        queue: mpsc::Receiver<Outbound>,
        close: oneshot::Receiver<CloseRequest>,
        handshake_body: BoxBody,
        ticket: Ticket,
    ) -> Self {
        Self {
            queue,
            close,
            _handshake_body: handshake_body,
            ticket: Some(ticket),
        }
    }

    fn finished(&self) -> bool {
        self.ticket.is_none()
    }

    /// The last bytes of the connection: what is queued (unless the queue is the problem), then
    /// the close frame. Releases the admission ticket.
    fn finish(&mut self, request: Option<CloseRequest>, batch: &mut Batch) {
        let flush = request
            .as_ref()
            .is_none_or(|request| request.code != CloseCode::SlowConsumer);
        if flush {
            while let Ok(outbound) = self.queue.try_recv() {
                batch.push(wire(outbound));
            }
        }
        self.queue.close();
        batch.push(match request {
            Some(request) => websocket::close(request.code.code(), &request.reason),
            None => websocket::frame(Opcode::Close, &[]),
        });
        self.ticket = None;
    }
}

/// The bytes of one queued item.
fn wire(outbound: Outbound) -> Bytes {
    match outbound {
        Outbound::Frame(frame) => frame.into_wire(),
        Outbound::Ping(payload) => websocket::control(Opcode::Ping, &payload),
        Outbound::Pong(payload) => websocket::control(Opcode::Pong, &payload),
    }
}

/// What one poll hands over: a single frame as it is, several joined into one buffer.
#[derive(Default)]
struct Batch {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Batch {
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

impl MessageBody for OutboundBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.finished() {
            return Poll::Ready(None);
        }
        let mut batch = Batch::default();
        if let Poll::Ready(request) = Pin::new(&mut this.close).poll(cx) {
            // An error is the actor gone without asking: close without a code.
            this.finish(request.ok(), &mut batch);
            return Poll::Ready(batch.into_bytes().map(Ok));
        }
        while batch.len() < MAX_BATCH_BYTES {
            match this.queue.poll_recv(cx) {
                Poll::Ready(Some(outbound)) => batch.push(wire(outbound)),
                Poll::Ready(None) => {
                    this.finish(None, &mut batch);
                    break;
                }
                Poll::Pending => break,
            }
        }
        match batch.into_bytes() {
            Some(bytes) => Poll::Ready(Some(Ok(bytes))),
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

    fn body(
        capacity: usize,
    ) -> (
        OutboundBody,
        crate::hub::OutboundSender,
        oneshot::Sender<CloseRequest>,
        Admission,
    ) {
        let admission = Admission::new(0);
        let ticket = admission.try_admit().expect("no limit");
        let (queue, receiver) = outbound_queue(capacity);
        let (closer, close) = oneshot::channel();
        let body = OutboundBody::new(receiver, close, BoxBody::new(()), ticket);
        (body, queue, closer, admission)
    }

    fn poll(body: &mut OutboundBody) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        Pin::new(body)
            .poll_next(&mut cx)
            .map(|item| item.map(|bytes| bytes.unwrap_or_else(|never| match never {})))
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
        let (mut body, queue, _closer, _admission) = body(8);
        assert_eq!(poll(&mut body), Poll::Pending);
        let single = pong(1);
        let Outbound::Frame(frame) = &single else {
            unreachable!()
        };
        let address = frame.wire().as_ptr();
        queue.try_send(single.clone()).expect("room");
        match poll(&mut body) {
            Poll::Ready(Some(bytes)) => assert_eq!(bytes.as_ptr(), address, "no copy"),
            other => panic!("expected the frame, got {other:?}"),
        }
        for id in 2..5 {
            queue.try_send(pong(id)).expect("room");
        }
        let Poll::Ready(Some(bytes)) = poll(&mut body) else {
            panic!("expected one buffer")
        };
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches(r#""type":"pong""#).count(), 3, "{text}");
    }

    #[test]
    fn a_close_flushes_the_queue_first_and_releases_the_ticket() {
        let (mut body, queue, closer, admission) = body(8);
        queue.try_send(pong(7)).expect("room");
        closer
            .send(CloseRequest {
                code: CloseCode::Restart,
                reason: "bye".into(),
            })
            .expect("open");
        let Poll::Ready(Some(bytes)) = poll(&mut body) else {
            panic!("expected the last bytes")
        };
        let close = websocket::close(1012, "bye");
        assert!(bytes.ends_with(&close), "close frame last");
        assert!(bytes.len() > close.len(), "the queued pong first");
        assert_eq!(admission.admitted(), 0);
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }

    #[test]
    fn a_slow_consumer_close_overtakes_the_queue() {
        let (mut body, queue, closer, _admission) = body(8);
        queue.try_send(pong(7)).expect("room");
        closer
            .send(CloseRequest {
                code: CloseCode::SlowConsumer,
                reason: "outbound queue overflowed".into(),
            })
            .expect("open");
        let Poll::Ready(Some(bytes)) = poll(&mut body) else {
            panic!("expected the close frame")
        };
        assert_eq!(bytes, websocket::close(4010, "outbound queue overflowed"));
    }

    #[test]
    fn the_actor_gone_without_a_request_closes_without_a_code() {
        let (mut body, queue, closer, admission) = body(8);
        drop(closer);
        drop(queue);
        assert_eq!(
            poll(&mut body),
            Poll::Ready(Some(Bytes::from_static(&[0x88, 0])))
        );
        assert_eq!(admission.admitted(), 0);
    }
}
