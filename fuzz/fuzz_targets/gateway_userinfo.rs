//! A trusted proxy's identity headers: `X-Userinfo` (base64 JSON) and a plain user header, as
//! any bytes. Nothing may panic.
#![no_main]

use std::sync::LazyLock;

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use switchboard::auth::Authenticator;
use switchboard::auth::Handshake;
use switchboard::auth::gateway::{GatewayAuthenticator, GatewayConfig};

static GATEWAY: LazyLock<GatewayAuthenticator> = LazyLock::new(|| {
    GatewayAuthenticator::from_config(&GatewayConfig {
        trusted_proxies: vec!["127.0.0.1".to_owned()],
        userinfo_header: Some("x-userinfo".to_owned()),
        user_header: "x-forwarded-user".to_owned(),
        ..GatewayConfig::default()
    })
    .expect("config")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (userinfo, user) = text.split_once('\n').unwrap_or((&text, ""));
    let mut headers = vec![("x-userinfo".to_owned(), userinfo.to_owned())];
    if !user.is_empty() {
        headers.push(("x-forwarded-user".to_owned(), user.to_owned()));
    }
    let handshake = Handshake {
        peer: Some([127, 0, 0, 1].into()),
        headers,
        query: Vec::new(),
    };
    // The gateway does no IO: its answer is ready at once.
    let answer = GATEWAY.authenticate(&handshake).now_or_never();
    assert!(answer.is_some(), "the gateway authenticator never waits");
});
