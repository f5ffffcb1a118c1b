//! What arrives on `PREFIX:ch:…` and `PREFIX:user:…` from Redis (any back end can publish
//! there): JSON or MessagePack envelopes. An accepted one re-encodes to JSON and decodes again
//! to the same envelope (what another node would read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let again = Envelope::decode(&envelope.to_json()).expect("a node reads what it wrote");
        assert_eq!(again, envelope);
    }
});
