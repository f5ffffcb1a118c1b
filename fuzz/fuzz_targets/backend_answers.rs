//! What back ends answer: the introspection view's body, a route's answer (a reply or
//! instructions), and a Redis session value. Nothing may panic; accepted instructions publish
//! only data within the nesting limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::auth::introspect::read_answer;
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
});
