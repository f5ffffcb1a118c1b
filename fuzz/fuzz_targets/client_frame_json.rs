//! A client's text frame: JSON decoded into a client frame. Nothing may panic, and whatever is
//! accepted is within the nesting limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::codec::decode_text;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = decode_text(text) {
        if let switchboard::protocol::ClientRequest::Publish { data, .. } = &frame.request {
            assert!(switchboard::protocol::depth::check_field(data, 2).is_ok());
        }
    }
});
