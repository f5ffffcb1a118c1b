//! A trusted proxy's headers: `X-Userinfo` (base64 JSON) and a plain user header, as any
//! bytes, and `X-Forwarded-For` as `[limits]` reads it. Nothing may panic; the client address is
//! always found (the proxy's, when the header says nothing usable).
#![no_main]

use std::sync::LazyLock;

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use switchboard::auth::Authenticator;
use switchboard::auth::Handshake;
use switchboard::auth::gateway::{AddressBlock, GatewayAuthenticator, GatewayConfig};

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
    let forwarded = Handshake {
        headers: vec![("x-forwarded-for".to_owned(), text.into_owned())],
        ..handshake
    };
    let client = switchboard::limits::client_address(&forwarded, &PROXIES);
    assert!(client.is_some());
    let _ = client.map(|address| switchboard::limits::address_key(address, 64));
});

static PROXIES: LazyLock<Vec<AddressBlock>> =
    LazyLock::new(|| vec![AddressBlock::parse("127.0.0.0/8").expect("block")]);
