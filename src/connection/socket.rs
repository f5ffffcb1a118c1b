//! The upgraded socket, owned by the connection itself. Once a handshake is accepted, the HTTP
//! server hands the TCP stream over (actix-http's upgrade service, `api::ws`) and nothing of
//! HTTP stays with the socket: no dispatcher, no request payload, no response body. Two halves
//! share the stream on the connection's worker thread:
//! - [`SocketReader`]: the client's messages (`protocol::client_messages` decodes them), a
//!   stream the connection actor reads (`ctx.add_stream`). It reads only when the actor asks
//!   for the next message, so a client cannot push more than one frame ahead of the actor.
//! - [`SocketWriter`]: a task that writes what the connection's [`OutboundDrain`] hands over,
//!   the `101` response's head in the same write as the first frame (the `welcome`): one send
//!   and one wake of the client per handshake instead of two.
//!
//! Why own the socket rather than use actix-ws over the HTTP dispatcher: an idle socket then
//! holds no buffer at all. The dispatcher kept an 8 KiB read and an 8 KiB write buffer for the
//! connection's life, and actix-ws a channel the server never used; here the read buffer exists
//! only while bytes are being decoded, and the writer writes the queue's shared frames as they
//! are (docs/performance.md has the figures).
//!
//! The end of a socket: the writer ends once the drain does (after the close frame and the close
//! handshake), and the descriptor closes when both halves are gone (the actor, and with it the
//! reader, has stopped by then), so the client sees its close frame, then the end of the stream.
//! A failed write (a reset, the kernel's write deadline) shuts both sides, which ends the
//! reader, which tells the actor.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_rt::net::TcpStream;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;

use super::outbound::OutboundDrain;
use crate::protocol::client_messages::{ClientMessage, InboundError, MessageDecoder};

/// Bytes read per system call while a frame is coming in.
const READ_CHUNK: usize = 4 * 1024;
/// How many batches the writer writes in one poll before it lets other tasks run.
const WRITES_PER_POLL: usize = 16;

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The client sent its last byte: what is buffered is decoded, then the stream ends.
    HungUp,
    /// Ended (after the last message or an error): nothing more is read.
    Done,
}

/// The client's side of the socket, as a stream of [`ClientMessage`]s.
pub(crate) struct SocketReader {
    socket: Rc<TcpStream>,
    decoder: MessageDecoder,
    state: ReadState,
}

impl SocketReader {
    /// `leftover`: bytes the HTTP server read past the handshake's head (frames the client sent
    /// at once); `max_bytes` bounds a frame's payload and a fragmented message's.
    pub(crate) fn new(socket: Rc<TcpStream>, leftover: &[u8], max_bytes: usize) -> Self {
        Self {
            socket,
            decoder: MessageDecoder::new(leftover, max_bytes),
            state: ReadState::Open,
        }
    }

    /// Reads what the socket has into the decoder's buffer: `Ready(Ok(()))` once something was
    /// read or the client hung up. The buffer is allocated only once the socket is readable.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), InboundError>> {
        loop {
            if let Err(err) = std::task::ready!(self.socket.poll_read_ready(cx)) {
                return Poll::Ready(Err(InboundError::ConnectionLost(err)));
            }
            let buffer = self.decoder.buffer();
            if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
                buffer.reserve(READ_CHUNK);
            }
            match self.socket.try_read_buf(buffer) {
                Ok(0) => {
                    self.state = ReadState::HungUp;
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => return Poll::Ready(Ok(())),
                // Readiness was stale; it is cleared, and the next poll waits again.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if buffer.is_empty() {
                        *buffer = BytesMut::new();
                    }
                }
                Err(err) => return Poll::Ready(Err(InboundError::ConnectionLost(err))),
            }
        }
    }

    /// Ends the stream: nothing more is decoded or read.
    fn finish(&mut self) {
        self.state = ReadState::Done;
        self.decoder.clear();
    }
}

impl Stream for SocketReader {
    type Item = Result<ClientMessage, InboundError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.state == ReadState::Done {
                return Poll::Ready(None);
            }
            match this.decoder.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(err) => {
                    this.finish();
                    return Poll::Ready(Some(Err(err)));
                }
            }
            // Every whole frame the client sent before hanging up is handled; what is left is a
            // frame it never finished.
            if this.state == ReadState::HungUp {
                this.finish();
                return Poll::Ready(None);
            }
            if let Err(err) = std::task::ready!(this.poll_read(cx)) {
                this.finish();
                return Poll::Ready(Some(Err(err)));
            }
        }
    }
}

/// Writes `bytes` out, advancing past what is written: `Ready(Ok)` once all of it is.
pub(crate) fn poll_write_all(
    socket: &TcpStream,
    bytes: &mut Bytes,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !bytes.is_empty() {
        std::task::ready!(socket.poll_write_ready(cx))?;
        match socket.try_write(bytes) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(written) => bytes.advance(written),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Poll::Ready(Err(err)),
        }
    }
    Poll::Ready(Ok(()))
}

/// The server's side of the socket: writes what the drain hands over until it ends.
pub(crate) struct SocketWriter {
    socket: Rc<TcpStream>,
    drain: OutboundDrain,
    /// The `101` response's head, written with the first bytes the drain hands over.
    head: Option<BytesMut>,
    /// Bytes handed over and not yet written.
    pending: Bytes,
}

impl SocketWriter {
    pub(crate) fn new(socket: Rc<TcpStream>, drain: OutboundDrain, head: BytesMut) -> Self {
        Self {
            socket,
            drain,
            head: Some(head),
            pending: Bytes::new(),
        }
    }

    /// The bytes to write next: the head first, in the same buffer as the first frames.
    fn next_bytes(&mut self, bytes: Bytes) -> Bytes {
        match self.head.take() {
            Some(mut head) => {
                head.extend_from_slice(&bytes);
                head.freeze()
            }
            None => bytes,
        }
    }
}

impl std::future::Future for SocketWriter {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..WRITES_PER_POLL {
            match poll_write_all(&this.socket, &mut this.pending, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => {
                    tracing::debug!(error = %err, "socket write failed");
                    // The reader sees the end too, and tells the actor.
                    let _ = socket2::SockRef::from(&*this.socket).shutdown(Shutdown::Both);
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
            match this.drain.poll_next(cx) {
                Poll::Ready(Some(bytes)) => this.pending = this.next_bytes(bytes),
                Poll::Ready(None) => {
                    // The close frame is out: the client sees the end of the stream after it.
                    // The reader is usually gone by now (the actor has stopped), and the
                    // descriptor's close says so; a reader still there keeps it open, so the
                    // sending side is shut explicitly.
                    if Rc::strong_count(&this.socket) > 1 {
                        let _ = socket2::SockRef::from(&*this.socket).shutdown(Shutdown::Write);
                    }
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::client_messages::tests::client_frame;
    use bytestring::ByteString;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair on loopback: the server's end, and the client's.
    async fn pair() -> (Rc<TcpStream>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Rc::new(server), client)
    }

    async fn next(reader: &mut SocketReader) -> Option<Result<ClientMessage, InboundError>> {
        tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .expect("a message in time")
    }

    #[actix_rt::test]
    async fn leftover_bytes_and_fragments_become_whole_messages_and_an_idle_reader_holds_no_buffer()
    {
        let (server, mut client) = pair().await;
        let leftover = client_frame(true, 0x1, br#"{"type":"ping"}"#);
        let mut reader = SocketReader::new(server, &leftover, 1024);
        assert_eq!(
            next(&mut reader).await.expect("a message").expect("valid"),
            ClientMessage::Text(ByteString::from_static(r#"{"type":"ping"}"#))
        );
        let mut bytes = client_frame(false, 0x2, b"ab");
        bytes.extend(client_frame(true, 0x9, b"p"));
        bytes.extend(client_frame(false, 0x0, b"cd"));
        bytes.extend(client_frame(true, 0x0, b"e"));
        client.write_all(&bytes).await.expect("write");
        assert_eq!(
            next(&mut reader).await.expect("ping").expect("valid"),
            ClientMessage::Ping(Bytes::from_static(b"p")),
            "a control frame may come between fragments"
        );
        assert_eq!(
            next(&mut reader).await.expect("joined").expect("valid"),
            ClientMessage::Binary(Bytes::from_static(b"abcde"))
        );
        assert_eq!(reader.decoder.buffer_capacity(), 0, "no buffer while idle");
        client.shutdown().await.expect("hang up");
        assert!(
            next(&mut reader).await.is_none(),
            "a hang-up ends the stream"
        );
    }

    #[actix_rt::test]
    async fn frames_sent_just_before_a_hang_up_are_all_read() {
        let (server, mut client) = pair().await;
        let mut reader = SocketReader::new(server, &[], 1024);
        let mut bytes = client_frame(true, 0x1, b"one");
        bytes.extend(client_frame(true, 0x1, b"two"));
        bytes.extend(&client_frame(true, 0x1, b"never finished")[..5]);
        client.write_all(&bytes).await.expect("write");
        drop(client);
        for expected in ["one", "two"] {
            assert_eq!(
                next(&mut reader).await.expect("a message").expect("valid"),
                ClientMessage::Text(ByteString::from_static(expected))
            );
        }
        assert!(next(&mut reader).await.is_none());
    }

    #[actix_rt::test]
    async fn the_writer_sends_the_head_before_the_first_frame_and_the_end_after_the_close() {
        use crate::connection::admission::Admission;
        use crate::connection::outbound::lifeline;
        use crate::hub::{Outbound, outbound_queue};
        use crate::protocol::websocket::{self, Opcode};

        let (server, mut client) = pair().await;
        let admission = Admission::new(0);
        let (queue, receiver) = outbound_queue(8, usize::MAX);
        let (closer, close) = tokio::sync::oneshot::channel();
        let (lifeline, actor) = lifeline();
        let drain = OutboundDrain::new(
            receiver,
            close,
            actor,
            None,
            admission.try_admit().expect("no limit"),
        );
        let head = Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        let writer = actix_rt::spawn(SocketWriter::new(server, drain, BytesMut::from(&head[..])));
        queue
            .try_send(Outbound::Ping(Bytes::from_static(b"hi")))
            .expect("room");
        let _ = closer.send(crate::connection::outbound::CloseRequest {
            code: crate::protocol::CloseCode::Normal,
            reason: String::new(),
        });
        drop(lifeline);
        let mut received = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut received),
        )
        .await
        .expect("the end in time")
        .expect("read");
        let expected = [
            &head[..],
            &websocket::frame(Opcode::Ping, b"hi"),
            &websocket::close(1000, ""),
        ]
        .concat();
        assert_eq!(received, expected);
        writer.await.expect("the writer ends");
        assert_eq!(admission.admitted(), 0, "the slot is free");
    }
}
