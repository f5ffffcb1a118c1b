//! Tokens: arbitrary bytes as a whole token, and arbitrary header and claims JSON correctly
//! signed with the configured secret (so the fuzzer reaches the claims: huge or odd `exp`,
//! `nbf`, `aud` shapes, user claims of every type). Nothing may panic; an accepted identity's
//! expiry is within the clamp.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use switchboard::auth::MAX_EXPIRES_AT;
use switchboard::auth::jwt::{JwtAuthenticator, JwtConfig};

const SECRET: &[u8] = b"fuzzing-secret";

static JWT: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    JwtAuthenticator::from_config(&JwtConfig {
        secret: String::from_utf8_lossy(SECRET).into_owned(),
        audience: vec!["switchboard".to_owned()],
        require_exp: false,
        ..JwtConfig::default()
    })
    .expect("config")
});

fn sign(header: &[u8], claims: &[u8]) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!("{}.{}", engine.encode(header), engine.encode(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let signature = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", engine.encode(signature.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = JWT.verify(token);
    }
    // The first byte splits the rest into a header and claims.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(rest.len());
    let (claims, header_extra) = rest.split_at(rest.len() - split);
    let header = if header_extra.is_empty() {
        br#"{"alg":"HS256","typ":"JWT"}"#.to_vec()
    } else {
        header_extra.to_vec()
    };
    if let Ok(identity) = JWT.verify(&sign(&header, claims)) {
        assert!(identity.expires_at.is_none_or(|at| at <= MAX_EXPIRES_AT));
    }
});
