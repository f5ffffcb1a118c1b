//! RFC 6455 framing of what clients send: bytes from the socket in, whole [`ClientMessage`]s
//! out. [`MessageDecoder`] decodes frames with actix-http's WebSocket codec (a pure decoder:
//! masking, opcodes, control frames, the frame size limit, fragments in order), joins a message
//! sent in continuation frames (bounded by the same limit) and checks that text is UTF-8. The
//! socket side (reading into [`MessageDecoder::buffer`]) lives in `connection::socket`.
//!
//! Everything here is bounded by the limit it is given: the buffer never holds more than one
//! frame's worth plus what one read added, and it is released whenever it is empty, so an idle
//! socket holds no buffer at all.

use actix_codec::Decoder;
use actix_http::ws::{self, CloseReason, Frame, Item};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// One message from the client, its continuation frames joined.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
}

/// Why the client's stream of messages ended early.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// A frame, or a message fragmented into continuation frames, over the size limit.
    #[error("a frame or message over the size limit")]
    TooBig,
    /// The TCP connection failed under the stream (a reset, the write deadline).
    #[error("the connection failed: {0}")]
    ConnectionLost(#[source] std::io::Error),
    /// The client broke the WebSocket rules (an unmasked frame, a bad opcode, an interleaved
    /// fragment, text that is not UTF-8).
    #[error("websocket protocol violation: {0}")]
    Protocol(String),
}

impl From<ws::ProtocolError> for InboundError {
    /// The codec decodes bytes already read, so its `Io` errors are framing errors too (reserved
    /// bits set, say), not the connection's.
    fn from(err: ws::ProtocolError) -> Self {
        match err {
            ws::ProtocolError::Overflow => InboundError::TooBig,
            other => InboundError::Protocol(other.to_string()),
        }
    }
}

/// The payload length a frame's header declares, once its length bytes have arrived.
fn declared_length(header: &[u8]) -> Option<u64> {
    let short = header.get(1)? & 0x7F;
    match short {
        126 => header
            .get(2..4)
            .map(|bytes| u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
        127 => header.get(2..10).map(|bytes| {
            let mut length = [0u8; 8];
            length.copy_from_slice(bytes);
            u64::from_be_bytes(length)
        }),
        short => Some(u64::from(short)),
    }
}

/// A message arriving in continuation frames: its kind and its bytes so far.
struct Fragmented {
    text: bool,
    bytes: BytesMut,
}

/// Turns a client's bytes into its messages.
pub struct MessageDecoder {
    codec: ws::Codec,
    /// What was read and not yet decoded; released (capacity 0) whenever it is empty.
    buffer: BytesMut,
    message: Option<Fragmented>,
    max_message_bytes: usize,
}

impl MessageDecoder {
    /// `buffered`: bytes already read (what the HTTP server read past the handshake's head);
    /// `max_bytes` bounds a frame's payload and a fragmented message's.
    pub fn new(buffered: &[u8], max_bytes: usize) -> Self {
        Self {
            codec: ws::Codec::new().max_size(max_bytes),
            buffer: BytesMut::from(buffered),
            message: None,
            max_message_bytes: max_bytes,
        }
    }

    /// Where the next bytes read go.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// What the buffer holds now, allocated (0 while idle).
    pub fn buffer_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// The next whole message, if the buffer holds one (or the last fragment of one). After an
    /// error the bytes that follow cannot be trusted: the caller stops decoding.
    pub fn next_message(&mut self) -> Result<Option<ClientMessage>, InboundError> {
        let message = self.decode();
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            self.buffer = BytesMut::new();
        }
        message
    }

    /// Forgets everything buffered.
    pub fn clear(&mut self) {
        self.buffer = BytesMut::new();
        self.message = None;
    }

    fn decode(&mut self) -> Result<Option<ClientMessage>, InboundError> {
        loop {
            // The codec checks the size limit only once the whole frame is buffered: a header
            // declaring a huge frame is refused here, before its bytes are.
            let too_big = declared_length(&self.buffer).is_some_and(|length| {
                length > u64::try_from(self.max_message_bytes).unwrap_or(u64::MAX)
            });
            if too_big {
                return Err(InboundError::TooBig);
            }
            let Some(frame) = self.codec.decode(&mut self.buffer)? else {
                return Ok(None);
            };
            let message = match frame {
                Frame::Text(bytes) => Some(ClientMessage::Text(utf8(bytes)?)),
                Frame::Binary(bytes) => Some(ClientMessage::Binary(bytes)),
                Frame::Ping(bytes) => Some(ClientMessage::Ping(bytes)),
                Frame::Pong(_) => Some(ClientMessage::Pong),
                Frame::Close(reason) => Some(ClientMessage::Close(reason)),
                Frame::Continuation(item) => self.fragment(item)?,
            };
            if message.is_some() {
                return Ok(message);
            }
        }
    }

    /// Adds one continuation frame to the message it belongs to; the whole message once the
    /// last has come. (The codec already refuses fragments out of order.)
    fn fragment(&mut self, item: Item) -> Result<Option<ClientMessage>, InboundError> {
        let (bytes, last) = match item {
            Item::FirstText(bytes) => {
                self.message = Some(Fragmented::new(true));
                (bytes, false)
            }
            Item::FirstBinary(bytes) => {
                self.message = Some(Fragmented::new(false));
                (bytes, false)
            }
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        let Some(message) = &mut self.message else {
            return Err(InboundError::Protocol(
                "a continuation frame without a first frame".to_owned(),
            ));
        };
        if message.bytes.len().saturating_add(bytes.len()) > self.max_message_bytes {
            return Err(InboundError::TooBig);
        }
        message.bytes.extend_from_slice(&bytes);
        if !last {
            return Ok(None);
        }
        let Some(Fragmented { text, bytes }) = self.message.take() else {
            return Ok(None);
        };
        let bytes = bytes.freeze();
        Ok(Some(if text {
            ClientMessage::Text(utf8(bytes)?)
        } else {
            ClientMessage::Binary(bytes)
        }))
    }
}

impl Fragmented {
    fn new(text: bool) -> Self {
        Self {
            text,
            bytes: BytesMut::new(),
        }
    }
}

/// A text message's payload, which must be UTF-8.
fn utf8(bytes: Bytes) -> Result<ByteString, InboundError> {
    ByteString::try_from(bytes)
        .map_err(|_| InboundError::Protocol("a text message that is not UTF-8".to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client frame: masked, as a client must send it.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        crate::protocol::websocket::client_frame(fin, opcode, payload, [0x12, 0x34, 0x56, 0x78])
    }

    #[test]
    fn fragments_become_one_message_with_control_frames_between_them() {
        let mut bytes = client_frame(false, 0x2, b"ab");
        bytes.extend(client_frame(true, 0x9, b"p"));
        bytes.extend(client_frame(false, 0x0, b"cd"));
        bytes.extend(client_frame(true, 0x0, b"e"));
        bytes.extend(client_frame(true, 0x1, "é".as_bytes()));
        let mut decoder = MessageDecoder::new(&bytes, 64);
        let mut messages = Vec::new();
        while let Some(message) = decoder.next_message().expect("valid") {
            messages.push(message);
        }
        assert_eq!(
            messages,
            [
                ClientMessage::Ping(Bytes::from_static(b"p")),
                ClientMessage::Binary(Bytes::from_static(b"abcde")),
                ClientMessage::Text(ByteString::from_static("é")),
            ]
        );
        assert_eq!(decoder.buffer_capacity(), 0, "nothing held once decoded");
    }

    #[test]
    fn a_partial_frame_waits_for_its_bytes() {
        let frame = client_frame(true, 0x1, b"hello");
        let mut decoder = MessageDecoder::new(&frame[..4], 64);
        assert!(decoder.next_message().expect("so far valid").is_none());
        decoder.buffer().extend_from_slice(&frame[4..]);
        assert_eq!(
            decoder.next_message().expect("valid"),
            Some(ClientMessage::Text(ByteString::from_static("hello")))
        );
    }

    #[test]
    fn oversized_frames_and_messages_bad_text_and_unmasked_frames_are_refused() {
        type Expected = fn(&InboundError) -> bool;
        let cases: [(Vec<u8>, Expected); 5] = [
            (client_frame(true, 0x1, &[b'x'; 65]), |err| {
                matches!(err, InboundError::TooBig)
            }),
            (
                [
                    client_frame(false, 0x1, &[b'x'; 40]),
                    client_frame(true, 0x0, &[b'x'; 40]),
                ]
                .concat(),
                |err| matches!(err, InboundError::TooBig),
            ),
            (client_frame(true, 0x1, &[0xFF, 0xFE]), |err| {
                matches!(err, InboundError::Protocol(_))
            }),
            // A continuation that nothing started.
            (client_frame(true, 0x0, b"x"), |err| {
                matches!(err, InboundError::Protocol(_))
            }),
            // Unmasked: a client must mask.
            (vec![0x81, 0x01, b'x'], |err| {
                matches!(err, InboundError::Protocol(_))
            }),
        ];
        for (bytes, expected) in cases {
            let mut decoder = MessageDecoder::new(&bytes, 64);
            let err = decoder.next_message().expect_err("refused");
            assert!(expected(&err), "{err:?}");
        }
    }

    #[test]
    fn a_header_declaring_a_huge_frame_is_refused_before_its_payload_arrives() {
        for header in [
            vec![0x82, 0x80 | 127, 0x40, 0, 0, 0, 0, 0, 0, 0],
            vec![0x82, 0x80 | 126, 0x01, 0x00],
            vec![0x82, 0x80 | 65],
        ] {
            let mut decoder = MessageDecoder::new(&header, 64);
            assert!(
                matches!(decoder.next_message(), Err(InboundError::TooBig)),
                "{header:?}"
            );
        }
        // At the limit, the frame is awaited.
        let mut decoder = MessageDecoder::new(&[0x82, 0x80 | 64, 1, 2, 3, 4], 64);
        assert!(decoder.next_message().expect("valid so far").is_none());
    }

    #[test]
    fn reserved_bits_are_a_protocol_error() {
        let mut frame = client_frame(true, 0x1, b"x");
        frame[0] |= 0x40;
        let mut decoder = MessageDecoder::new(&frame, 64);
        assert!(matches!(
            decoder.next_message(),
            Err(InboundError::Protocol(_))
        ));
    }
}
