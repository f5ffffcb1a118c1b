//! The bytes of a client's socket: WebSocket frames decoded into messages, fragments joined.
//! The first byte sets how the rest arrives (in reads of 1 to 256 bytes), the second the size
//! limit. Nothing may panic; no message exceeds the limit; the buffer never holds more than a
//! frame's worth plus one read, and nothing once it is drained.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::client_messages::{ClientMessage, MessageDecoder};

/// The largest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

fuzz_target!(|data: &[u8]| {
    let [read, limit, rest @ ..] = data else {
        return;
    };
    let read = usize::from(*read) + 1;
    let limit = usize::from(*limit) * 4;
    let mut decoder = MessageDecoder::new(&[], limit);
    for chunk in rest.chunks(read) {
        decoder.buffer().extend_from_slice(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let length = match &message {
                        ClientMessage::Text(text) => text.len(),
                        ClientMessage::Binary(bytes) | ClientMessage::Ping(bytes) => bytes.len(),
                        ClientMessage::Pong | ClientMessage::Close(_) => 0,
                    };
                    assert!(
                        length <= limit,
                        "a message over the limit: {length} > {limit}"
                    );
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffer().len() <= limit + MAX_HEADER + read);
    }
});
