//! What the channels_redis bridge pops or receives from Django's Redis (anyone who can write
//! there controls it): the serializer's random prefix, optionally a Fernet token, MessagePack of
//! the message dict. An accepted message is a JSON object within the nesting limit, without
//! `__asgi_channel__`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::bridge::message::{ASGI_CHANNEL, Decoder};

fuzz_target!(|data: &[u8]| {
    let plain = Decoder::new(12, &[], None);
    let encrypted = Decoder::new(0, &["fuzz-key".to_owned()], None);
    // The core layer's decoder checks the token's age too (a forged timestamp must not overflow).
    let aged = Decoder::new(12, &["fuzz-key".to_owned()], Some(std::time::Duration::MAX));
    for decoder in [&plain, &encrypted, &aged] {
        if let Ok(decoded) = decoder.decode(data) {
            let object = decoded.data.as_object().expect("a dict");
            assert!(!object.contains_key(ASGI_CHANNEL));
            assert!(switchboard::protocol::depth::check(&decoded.data).is_ok());
        }
    }
});
