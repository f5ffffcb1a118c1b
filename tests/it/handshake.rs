//! Handshake refusals (docs/protocol.md §1): each status with its JSON body, before any upgrade.

use serde_json::json;

use crate::support::in_process::InProcessServer;
use crate::support::{Client, TestServer};

#[tokio::test]
async fn a_plain_get_is_a_bad_request_with_a_json_body() {
    let server = InProcessServer::start("");
    let response = reqwest::get(server.url("/ws")).await.expect("GET");
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("WebSocket"))
    );
}

#[tokio::test]
async fn an_unsupported_subprotocol_is_a_bad_request() {
    let server = InProcessServer::start("");
    let refused = Client::connect(
        &server.ws_url("/ws"),
        &[("Sec-WebSocket-Protocol", "graphql-ws")],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error"], "bad_request");
}

#[tokio::test]
async fn the_chosen_subprotocol_is_echoed_and_json_is_the_default() {
    let server = InProcessServer::start("");
    let request = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = server.ws_url("/ws").into_client_request().expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "other, switchboard.v1.json".parse().expect("header"),
        );
        request
    };
    let (_socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|value| value.to_str().ok()),
        Some(Some("switchboard.v1.json"))
    );
    let mut plain = server.client().await;
    assert_eq!(
        plain.request(json!({"action": "ping"}), 1).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn browsers_from_origins_not_allowed_are_refused_with_403() {
    let server = TestServer::start("[server]\nallowed_origins = [\"https://app.example\"]\n").await;
    let refused = Client::connect(&server.ws_url("/ws"), &[("Origin", "https://evil.example")])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["error"], "forbidden_origin");
    assert!(
        refused.body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("evil"))
    );

    let mut allowed = Client::connect(&server.ws_url("/ws"), &[("Origin", "https://app.example")])
        .await
        .expect("allowed origin");
    assert_eq!(allowed.recv().await["type"], "welcome");
    // No Origin header: not a browser, not checked.
    let mut no_origin = Client::connect(&server.ws_url("/ws"), &[])
        .await
        .expect("no origin");
    assert_eq!(no_origin.recv().await["type"], "welcome");
    assert_eq!(
        server
            .metric("switchboard_handshakes_refused_total{reason=\"forbidden_origin\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn connections_over_the_limit_get_429() {
    let server = InProcessServer::start("[server]\nmax_connections = 2\n");
    let _first = server.client().await;
    let _second = server.client().await;
    let refused = Client::connect(&server.ws_url("/ws"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"], "too_many_connections");
}

#[tokio::test]
async fn a_burst_of_handshakes_never_overshoots_the_limit_and_closed_sockets_free_their_slot() {
    let server = TestServer::start(
        "[server]
max_connections = 5
",
    )
    .await;
    let url = server.ws_url("/ws");
    let attempts = (0..20).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Client::connect(&url, &[]).await })
    });
    let mut accepted = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(client) => accepted.push(client),
            Err(refusal) => {
                assert_eq!(refusal.status, 429);
                refused += 1;
            }
        }
    }
    assert_eq!((accepted.len(), refused), (5, 15));
    drop(accepted.pop());
    server.wait_for_metric("switchboard_connections", 4.0).await;
    let mut again = Client::connect(&url, &[])
        .await
        .expect("a freed slot admits again");
    assert_eq!(again.recv().await["type"], "welcome");
}

#[tokio::test]
async fn without_anonymous_access_an_unauthenticated_handshake_gets_401() {
    let server = TestServer::start("[auth]\nanonymous = false\n").await;
    let refused = Client::connect(&server.ws_url("/ws"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["error"], "unauthorized");
    assert!(refused.body["reason"].is_string());
    assert_eq!(
        server
            .metric("switchboard_handshakes_refused_total{reason=\"no_credential\"}")
            .await,
        Some(1.0)
    );
}

/// Writes a raw handshake for `path` (and any bytes behind it in the same write) and reads
/// until `until` has arrived or the server ends the connection.
async fn raw_exchange(server: &InProcessServer, path: &str, behind: &[u8], until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(server.address)
        .await
        .expect("connect");
    let mut bytes = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.address
    )
    .into_bytes();
    bytes.extend_from_slice(behind);
    socket.write_all(&bytes).await.expect("write");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let answered = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&received).contains(until) {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(read) => received.extend_from_slice(&chunk[..read]),
            }
        }
        true
    })
    .await;
    let received = String::from_utf8_lossy(&received).into_owned();
    assert!(answered.is_ok(), "no answer in time: {received:?}");
    received
}

#[tokio::test]
async fn frames_sent_in_the_same_write_as_the_handshake_are_answered_after_the_welcome() {
    let server = InProcessServer::start("");
    let payload = br#"{"action":"ping","id":7}"#;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4]),
    );
    let received = raw_exchange(&server, "/ws", &frame, r#""type":"pong""#).await;
    assert!(received.starts_with("HTTP/1.1 101"), "{received}");
    assert!(received.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let welcome = received.find(r#""type":"welcome""#).expect("a welcome");
    let pong = received.find(r#""type":"pong","id":7"#).expect("the pong");
    assert!(welcome < pong, "{received}");
}

#[tokio::test]
async fn an_upgrade_request_for_another_path_is_not_found() {
    let server = InProcessServer::start("");
    let received = raw_exchange(&server, "/elsewhere", &[], "never").await;
    assert!(received.starts_with("HTTP/1.1 404"), "{received}");
    assert!(received.to_ascii_lowercase().contains("connection: close"));
}
