//! A client's binary frame: MessagePack decoded into a client frame, with the same nesting
//! limit as JSON, refused while parsing far past it (no deep recursion).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::codec::decode_binary;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_binary(data) {
        if let switchboard::protocol::ClientRequest::Publish { data, .. } = &frame.request {
            assert!(switchboard::protocol::depth::check_field(data, 2).is_ok());
        }
    }
});
