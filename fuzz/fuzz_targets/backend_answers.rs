//! What back ends answer: the introspection view's body, a route's answer (a reply or
//! instructions), a Redis session value, and an identity provider's JWKS and discovery
//! documents. Nothing may panic; accepted instructions publish only data within the nesting
//! limit; a discovered JWKS URL is HTTPS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::auth::introspect::read_answer;
use switchboard::auth::jwks_remote;
use switchboard::auth::redis_session::user_in_session;
use switchboard::backend::Instructions;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = read_answer(data) {
        assert!(identity.user.is_some_and(|user| !user.is_empty()));
    }
    if let Ok(instructions) = Instructions::from_body(data) {
        for (_, published) in &instructions.publish {
            assert!(switchboard::protocol::depth::check_field(published, 2).is_ok());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = user_in_session(text, "_auth_user_id");
    }
    let _ = jwks_remote::signing_keys_in(data);
    if let Ok(url) = jwks_remote::jwks_uri_in(data, "https://idp.test", false) {
        assert_eq!(url.scheme(), "https");
    }
});
