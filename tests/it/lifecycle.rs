//! Group lifecycle, metrics, health endpoints and graceful shutdown.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Client, TestServer};

/// A node config that lets one connection join 10,000 channels as fast as it can send.
pub const TEN_THOUSAND_CHANNELS: &str = "[server]\nmax_channels_per_connection = 10000\nrate_limit = 100000\nrate_limit_burst = 100000\n";

/// One client joins 10,000 distinct channels (500 requests in flight at a time), then leaves
/// them all; the node ends with zero groups and zero broker subscriptions.
pub async fn join_and_leave_ten_thousand_channels(server: &TestServer) {
    let mut client = server.client().await;
    const CHANNELS: u64 = 10_000;
    const WINDOW: u64 = 500;
    for action in ["join", "leave"] {
        for start in (0..CHANNELS).step_by(WINDOW as usize) {
            for n in start..start + WINDOW {
                client
                    .send(json!({"action": action, "channel": format!("ch:{n}"), "id": n}))
                    .await;
            }
            for _ in start..start + WINDOW {
                let reply = client.recv().await;
                assert_eq!(reply["type"], "reply", "{action}: {reply}");
            }
        }
        if action == "join" {
            assert_eq!(
                server.metric("switchboard_channels").await,
                Some(CHANNELS as f64)
            );
            assert_eq!(
                server.metric("switchboard_broker_subscriptions").await,
                Some(CHANNELS as f64)
            );
        }
    }
    server.wait_for_metric("switchboard_channels", 0.0).await;
    server
        .wait_for_metric("switchboard_broker_subscriptions", 0.0)
        .await;
}

#[tokio::test]
async fn ten_thousand_channels_joined_and_left_leave_zero_groups_and_zero_subscriptions() {
    let server = TestServer::start(TEN_THOUSAND_CHANNELS).await;
    join_and_leave_ten_thousand_channels(&server).await;
}

#[tokio::test]
async fn with_groups_on_the_workers_groups_start_deliver_and_retire_the_same() {
    let config = format!("{TEN_THOUSAND_CHANNELS}workers = 2\ngroups_on_workers = true\n");
    let server = TestServer::start(&config).await;
    // Members on both workers (connections are spread over them), the group on one.
    let mut members = Vec::new();
    for _ in 0..4 {
        members.push(server.client_in(&["room:1"]).await);
    }
    let mut publisher = server.client().await;
    for n in 0..3 {
        let reply = publisher
            .request(
                json!({"action": "publish", "channel": "room:1", "data": n}),
                n,
            )
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
    }
    for member in &mut members {
        for n in 0..3 {
            assert_eq!(member.recv().await["data"], n);
        }
    }
    drop(members);
    server.wait_for_metric("switchboard_channels", 0.0).await;
    join_and_leave_ten_thousand_channels(&server).await;
}

#[tokio::test]
async fn a_closed_connection_leaves_its_channels() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .request(json!({"action": "join", "channel": "a"}), 1)
        .await;
    client
        .request(json!({"action": "join", "channel": "b"}), 2)
        .await;
    assert_eq!(server.metric("switchboard_channels").await, Some(2.0));
    drop(client);
    server.wait_for_metric("switchboard_channels", 0.0).await;
    server.wait_for_metric("switchboard_connections", 0.0).await;
}

#[tokio::test]
async fn a_client_close_is_echoed_and_counted() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .send_raw(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1000);
    server
        .wait_for_metric(
            "switchboard_closes_total{code=\"1000\",reason=\"normal\",initiator=\"client\"}",
            1.0,
        )
        .await;
}

#[tokio::test]
async fn arbitrary_client_close_codes_share_one_metric_label() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .send_raw(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4321),
            reason: "".into(),
        })))
        .await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 4321, "the server echoes the client's code");
    server
        .wait_for_metric(
            "switchboard_closes_total{code=\"other\",reason=\"other\",initiator=\"client\"}",
            1.0,
        )
        .await;
}

#[tokio::test]
async fn metrics_export_every_named_series_after_traffic() {
    let server = TestServer::start("[server]\nallowed_origins = [\"https://ok.example\"]\n").await;
    let mut member = server.client().await;
    member
        .request(json!({"action": "join", "channel": "m"}), 1)
        .await;
    member
        .request(json!({"action": "publish", "channel": "m", "data": 1}), 2)
        .await;
    assert_eq!(member.recv().await["type"], "message");
    let _ = Client::connect(&server.ws_url("/ws"), &[("Origin", "https://bad.example")]).await;
    let text = server.metrics().await;
    for name in switchboard::metrics::ALL {
        if name == switchboard::metrics::MESSAGES_DROPPED || name == switchboard::metrics::CLOSES {
            continue; // nothing dropped or closed yet; covered by the protection tests
        }
        if switchboard::metrics::REDIS_ONLY.contains(&name) {
            continue; // covered by the multi-node tests
        }
        if switchboard::metrics::AUTH_ONLY.contains(&name) {
            continue; // covered by the authentication tests
        }
        if switchboard::metrics::INTEGRATION_ONLY.contains(&name) {
            continue; // covered by the back-end integration tests
        }
        if switchboard::metrics::LIMITS_ONLY.contains(&name) {
            continue; // covered by the limits tests
        }
        if switchboard::metrics::BRIDGE_ONLY.contains(&name) {
            continue; // covered by the bridge's tests (integrations/django/tests/test_bridge.py)
        }
        assert!(
            text.lines().any(|line| line.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(text.contains("switchboard_publish_to_deliver_seconds_bucket{le=\"0.001\"}"));
    assert!(text.contains("switchboard_frames_received_total{action=\"publish\"} 1"));
    assert!(text.contains("switchboard_messages_delivered_total 1"));
    assert!(text.contains("switchboard_connections 1"));
}

#[tokio::test]
async fn health_and_readiness_answer_json() {
    let server = TestServer::start("").await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"ready\""), "{body}");
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1012_and_exits_within_the_grace() {
    let mut server = TestServer::start("[server]\nshutdown_grace = \"3s\"\n").await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = server.client().await;
        client
            .request(json!({"action": "join", "channel": "room"}), 1)
            .await;
        clients.push(client);
    }
    let started = std::time::Instant::now();
    server.terminate();
    for client in &mut clients {
        let (code, _) = client.expect_close().await;
        assert_eq!(code, 1012);
    }
    let exit = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
        .await
        .expect("exited")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(server.address)
            .await
            .is_err()
    );
}

/// While a node drains, its listener still answers: a new handshake gets 503 at once (what a
/// load balancer retries on another node), `/readyz` says `draining`, and `/healthz` and
/// `/metrics` answer. A member whose socket cannot take its close frame (it never reads, and
/// megabytes are waiting) keeps the drain going until the grace is up.
#[tokio::test]
async fn a_draining_node_refuses_handshakes_at_once_and_still_answers_health_checks() {
    let mut server = TestServer::start(
        "[server]\nshutdown_grace = \"4s\"\noutbound_queue = 100000\nrate_limit = 100000\nrate_limit_burst = 100000\n",
    )
    .await;
    let mut stuck = crate::support::SilentSocket::connect(server.address, "/ws").await;
    stuck
        .send_frame(0x1, true, br#"{"action":"join","channel":"flood","id":1}"#)
        .await;
    let mut publisher = server.client().await;
    // The member is in the channel once a publication reaches its queue (it reads nothing).
    server.wait_for_metric("switchboard_connections", 2.0).await;
    server.wait_for_metric("switchboard_channels", 1.0).await;
    let data = "x".repeat(50_000);
    for id in 0..400u64 {
        publisher
            .send(json!({"action": "publish", "channel": "flood", "data": data, "id": id}))
            .await;
    }
    for _ in 0..400 {
        assert_eq!(publisher.recv().await["type"], "reply");
    }
    drop(publisher);

    let started = std::time::Instant::now();
    server.terminate();
    server.wait_for_readiness(503).await;
    let (_, body) = server.get("/readyz").await;
    assert!(body.contains("draining"), "{body}");
    let asked = std::time::Instant::now();
    let refused = Client::connect(&server.ws_url("/ws"), &[])
        .await
        .err()
        .expect("a handshake during the drain is refused");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error"], "unavailable");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the refusal waited {:?}",
        asked.elapsed()
    );
    assert_eq!(server.get("/healthz").await.0, 200);
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("switchboard_connections"), "{metrics}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the drain should still be going"
    );
    let exit = tokio::time::timeout(Duration::from_secs(8), server.child.wait())
        .await
        .expect("exited within the grace")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Started with a soft open-file limit of 512 under a hard one of 8,192 (as container runtimes
/// and shells often start processes), the node raises its soft limit to the hard one: each
/// socket is a descriptor.
#[tokio::test]
async fn a_node_raises_its_open_file_limit_to_the_hard_limit() {
    let config = crate::support::temp_file("limits.toml", "");
    let mut child = tokio::process::Command::new("prlimit")
        .arg("--nofile=512:8192")
        .arg("--")
        .arg(crate::support::binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env("SWITCHBOARD_SERVER__BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit runs the node (util-linux)");
    let address = crate::support::listening_address(&mut child).await;
    let pid = child.id().expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["8192", "8192"], "{open_files}");
    assert!(tokio::net::TcpStream::connect(address).await.is_ok());
}
