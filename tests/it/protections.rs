//! Protections: frame size (1009), inbound rate (rate_limited, then 4008), repeated malformed
//! frames (1008), slow consumers (4010, with bounded memory), heartbeat and idle timeout (1001).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, SilentSocket, TestServer, WAIT};

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let server = TestServer::start("[server]\nmax_frame_bytes = 1024\n").await;
    let mut client = server.client().await;
    let big = json!({"action": "publish", "channel": "c", "data": "x".repeat(2000)});
    client.send(big).await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1009);
    server
        .wait_for_metric(
            "switchboard_closes_total{code=\"1009\",reason=\"too_big\",initiator=\"server\"}",
            1.0,
        )
        .await;
}

#[tokio::test]
async fn a_fragmented_message_over_the_size_limit_closes_with_1009() {
    let server = TestServer::start("[server]\nmax_frame_bytes = 1024\n").await;
    let mut client = SilentSocket::connect(server.address, "/ws").await;
    // Three frames of 600 bytes: each under the limit, the message over it.
    let part = vec![b'x'; 600];
    client.send_frame(0x1, false, &part).await; // text, not final
    client.send_frame(0x0, false, &part).await; // continuation
    client.send_frame(0x0, true, &part).await; // final continuation
    let (code, reason) = client.close_frame().await;
    assert_eq!(code, 1009);
    assert!(reason.contains("max_frame_bytes"), "{reason}");
}

/// A header that declares a huge frame is refused at once: the server does not wait for (and
/// buffer) bytes it would refuse anyway.
#[tokio::test]
async fn a_header_declaring_a_huge_frame_closes_with_1009_before_its_payload() {
    let server = TestServer::start("[server]\nmax_frame_bytes = 1024\n").await;
    let mut client = SilentSocket::connect(server.address, "/ws").await;
    // A binary frame of 2^40 bytes, masked; only the header and a few payload bytes are sent.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0]);
    client.send_raw(&header).await;
    let (code, reason) = client.close_frame().await;
    assert_eq!(code, 1009);
    assert!(reason.contains("max_frame_bytes"), "{reason}");
}

#[tokio::test]
async fn flooding_gets_rate_limited_errors_then_a_4008_close() {
    let server = TestServer::start("[server]\nrate_limit = 5\nrate_limit_burst = 5\n").await;
    let mut client = server.client().await;
    for id in 0..200u64 {
        let frame = json!({"action": "ping", "id": id}).to_string();
        if client
            .socket
            .send(Message::Text(frame.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let mut rate_limited = 0;
    let close_code = loop {
        match tokio::time::timeout(WAIT, client.socket.next())
            .await
            .expect("frames")
        {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).expect("json");
                match frame["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(frame["code"], "rate_limited");
                        rate_limited += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close_code, 4008);
    assert!(pongs >= 5, "the burst is served: {pongs}");
    assert!(rate_limited >= 1, "errors come before the close");
}

#[tokio::test]
async fn repeated_malformed_frames_close_with_1008() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    for _ in 0..11 {
        client.send_raw(Message::Text("{oops".into())).await;
    }
    let (code, reason) = client.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("malformed"), "{reason}");
}

#[tokio::test]
async fn a_stalled_reader_is_closed_with_4010_while_others_keep_receiving_and_memory_stays_bounded()
{
    let config = "[server]\noutbound_queue = 64\nrate_limit = 100000\nrate_limit_burst = 100000\n";
    let server = TestServer::start(config).await;

    // A reader with a tiny receive buffer that never reads after joining.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.address).await.expect("tcp connect");
    let (mut stalled, _) =
        tokio_tungstenite::client_async(server.ws_url("/ws?channel=big"), stream)
            .await
            .expect("stalled handshake");
    let welcome = tokio::time::timeout(WAIT, stalled.next())
        .await
        .expect("welcome");
    assert!(matches!(welcome, Some(Ok(Message::Text(_)))));

    // The stalled reader resumes reading once the server has closed it as a slow consumer, and
    // must then find the 4010 close frame after whatever was buffered.
    let closes_4010 =
        "switchboard_closes_total{code=\"4010\",reason=\"slow_consumer\",initiator=\"server\"}";
    let metrics_url = server.url("/metrics");
    let stalled_reader = tokio::spawn(async move {
        loop {
            let text = reqwest::get(&metrics_url)
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if crate::support::metric_value(&text, closes_4010) == Some(1.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            match tokio::time::timeout(WAIT, stalled.next())
                .await
                .expect("drain")
            {
                Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    });

    let mut healthy = Client::connect(&server.ws_url("/ws?channel=big"), &[])
        .await
        .expect("healthy");
    assert_eq!(healthy.recv().await["type"], "welcome");
    let mut publisher = server.client().await;

    let rss_before = server.rss_kib();
    let payload = "p".repeat(16 * 1024);
    const MESSAGES: u64 = 2_000; // 32 MiB through the node
    // The publisher stays at most `AHEAD` messages ahead of the healthy reader, so only the
    // stalled member can overflow its queue.
    const AHEAD: u64 = 32;
    let (progress, mut received) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        for n in 0..MESSAGES {
            let message = healthy.recv().await;
            assert_eq!(
                message["data"]["n"], n,
                "the healthy member gets every message in order"
            );
            progress.send_replace(n + 1);
        }
        healthy
    });
    for n in 0..MESSAGES {
        tokio::time::timeout(WAIT, received.wait_for(|count| n < count + AHEAD))
            .await
            .expect("healthy reader keeps up")
            .expect("reader alive");
        publisher
            .send(json!({"action": "publish", "channel": "big", "data": {"n": n, "p": payload}}))
            .await;
    }
    let _healthy = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("healthy member finished")
        .expect("reader task");
    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB while 32 MiB went through"
    );

    let close = tokio::time::timeout(Duration::from_secs(60), stalled_reader)
        .await
        .expect("stalled reader finished")
        .expect("stalled reader task");
    assert_eq!(close, 4010);
    assert_eq!(
        server
            .metric("switchboard_closes_total{code=\"4010\",reason=\"slow_consumer\",initiator=\"server\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_idle_timeout_but_a_live_one_is_not() {
    let config = "[server]\nheartbeat_interval = \"200ms\"\nidle_timeout = \"700ms\"\n";
    let server = TestServer::start(config).await;
    let mut live = server.client().await;
    let silent = SilentSocket::connect(server.address, "/ws").await;

    // The live client keeps reading, so tungstenite answers the server's pings.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout(Duration::from_millis(100), live.socket.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 3, "heartbeat pings arrive: {pings}");
    assert_eq!(
        live.request(json!({"action": "ping"}), 1).await["type"],
        "pong"
    );

    // The silent one never answered a ping.
    let (code, reason) = silent.close_frame().await;
    assert_eq!(code, 1001);
    assert!(reason.contains("idle"), "{reason}");
}
