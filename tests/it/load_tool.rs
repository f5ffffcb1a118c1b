//! The load tool measured against known answers: a deliberately lossy, slow server whose loss
//! and delay are known (so the tool's counting and latency are checked), and every mode against
//! a real node (so the tool speaks the real protocol end to end). No timing assertions on the
//! server: only the tool's arithmetic is checked.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestServer;
use crate::support::credentials::{KeyPair, jwt_section, temp_private_key};

/// Runs `switchboard-load ARGS --json` (bounded by its own `--deadline`) and returns the report.
async fn load(args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard-load"));
    command
        .args(args)
        .args(["--json", "--deadline", "60", "--sources", "4"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("switchboard-load runs");
    assert!(
        output.status.success(),
        "switchboard-load {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

/// A server speaking just enough of the protocol for `fanout`: it drops every tenth message a
/// connection would receive and delays every delivered one by `delay`.
async fn lossy_server(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (published, _) = broadcast::channel::<(tokio::time::Instant, String)>(4096);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let published = published.clone();
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let welcome = json!({"type": "welcome", "connection_id": "c_1", "user": null, "channels": [], "expires_at": null});
                if socket
                    .send(Message::text(welcome.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                let mut subscription: Option<broadcast::Receiver<_>> = None;
                let mut received = 0u64;
                loop {
                    tokio::select! {
                        incoming = socket.next() => {
                            let Some(Ok(Message::Text(text))) = incoming else { return };
                            let frame: Value = serde_json::from_str(&text).expect("json");
                            match frame["action"].as_str() {
                                Some("join") => {
                                    subscription = Some(published.subscribe());
                                    let reply = json!({"type": "reply", "id": frame["id"], "data": null});
                                    let _ = socket.send(Message::text(reply.to_string())).await;
                                }
                                Some("publish") => {
                                    let message = json!({"type": "message", "channel": frame["channel"], "data": frame["data"]});
                                    let _ = published.send((tokio::time::Instant::now(), message.to_string()));
                                }
                                _ => {}
                            }
                        }
                        next = async { subscription.as_mut().expect("joined").recv().await }, if subscription.is_some() => {
                            let Ok((at, message)) = next else { return };
                            received += 1;
                            if received % 10 == 0 {
                                continue;
                            }
                            tokio::time::sleep_until(at + delay).await;
                            if socket.send(Message::text(message)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn fanout_counts_every_tenth_message_lost_and_the_servers_delay_as_latency() {
    let delay = Duration::from_millis(30);
    let address = lossy_server(delay).await;
    let url = format!("ws://{address}/ws");
    let report = load(&[
        "--url",
        &url,
        "fanout",
        "--subscribers",
        "20",
        "--messages",
        "50",
        "--window",
        "5",
        "--drain",
        "1",
    ])
    .await;
    let delivery = &report["delivery"];
    assert_eq!(delivery["published"], 50);
    assert_eq!(delivery["expected"], 1000);
    assert_eq!(delivery["delivered"], 900, "{report}");
    assert_eq!(delivery["lost"], 100);
    assert_eq!(delivery["loss_ratio"], 0.1);
    assert_eq!(delivery["disordered"], 0);
    let latency = &report["latency_us"];
    assert_eq!(latency["samples"], 900);
    let p50 = latency["p50"].as_u64().expect("p50");
    assert!(
        p50 >= 30_000,
        "latency includes the server's 30 ms delay: {latency}"
    );
    assert!(latency["max"].as_u64().expect("max") >= latency["p99"].as_u64().expect("p99"));
    assert!(
        report.get("server_cpu").is_none(),
        "no --server-pid, no CPU figures"
    );
}

const BENCH_CONFIG: &str = "[server]\nrate_limit = 100000\nrate_limit_burst = 100000\n";

#[tokio::test]
async fn fanout_and_rooms_against_a_real_node_lose_nothing() {
    let server = TestServer::start(BENCH_CONFIG).await;
    let url = server.ws_url("/ws");
    let pid = server.pid().to_string();
    // A second watched process (this test's own): its CPU is reported apart, in order.
    let me = std::process::id().to_string();
    let fanout = load(&[
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--server-pid",
        &me,
        "fanout",
        "--subscribers",
        "50",
        "--messages",
        "200",
    ])
    .await;
    assert_eq!(fanout["delivery"]["expected"], 10_000);
    assert_eq!(fanout["delivery"]["delivered"], 10_000, "{fanout}");
    assert_eq!(fanout["delivery"]["disordered"], 0);
    assert_eq!(fanout["errors"], 0);
    let cpu = &fanout["server_cpu"];
    assert!(cpu["seconds"].as_f64().expect("cpu") > 0.0, "{fanout}");
    assert!(cpu["work_per_cpu_second"].as_f64().expect("ratio") > 0.0);
    let each = cpu["per_process"].as_array().expect("per process");
    assert_eq!(each.len(), 2, "{fanout}");
    assert_eq!(each[0]["pid"].to_string(), pid);
    assert_eq!(each[1]["pid"].to_string(), me);
    let sum: f64 = each
        .iter()
        .filter_map(|process| process["seconds"].as_f64())
        .sum();
    let total = cpu["seconds"].as_f64().expect("cpu");
    assert!((sum - total).abs() < 1e-6, "{sum} vs {total}");

    let rated = load(&[
        "--url",
        &url,
        "fanout",
        "--subscribers",
        "10",
        "--messages",
        "20",
        "--rate",
        "40",
    ])
    .await;
    assert_eq!(rated["delivery"]["delivered"], 200, "{rated}");
    assert!(
        rated["delivery"]["seconds"].as_f64().expect("seconds") >= 0.45,
        "20 messages at 40/s take about half a second: {rated}"
    );

    let rooms = load(&[
        "--url",
        &url,
        "rooms",
        "--rooms",
        "3",
        "--members",
        "4",
        "--rate",
        "5",
        "--duration",
        "1",
    ])
    .await;
    let delivery = &rooms["delivery"];
    let published = delivery["published"].as_u64().expect("published");
    assert!(published >= 12, "every member published: {rooms}");
    assert_eq!(delivery["expected"].as_u64(), Some(published * 4));
    assert_eq!(delivery["delivered"], delivery["expected"], "{rooms}");
    assert_eq!(rooms["errors"], 0);
}

#[tokio::test]
async fn idle_reports_memory_per_connection_and_connect_counts_rs256_handshakes() {
    let key = KeyPair::generate(Algorithm::RS256);
    let config = format!("[auth]\nanonymous = false\n{}", jwt_section(&key, ""));
    let server = TestServer::start(&config).await;
    let url = server.ws_url("/ws");
    let pid = server.pid().to_string();
    let private_key = temp_private_key(&key);
    let auth = [
        "--rsa-key",
        private_key.to_str().expect("path"),
        "--issuer",
        crate::support::credentials::ISSUER,
        "--audience",
        crate::support::credentials::AUDIENCE,
    ];

    let idle = load(
        &[
            &["--url", &url, "--server-pid", &pid],
            &auth[..],
            &["idle", "--connections", "300", "--settle", "0.5"],
        ]
        .concat(),
    )
    .await;
    let memory = &idle["memory"];
    assert!(
        memory["resident_after_bytes"].as_u64() > memory["resident_before_bytes"].as_u64(),
        "{idle}"
    );
    assert!(
        memory["per_connection_bytes"]
            .as_u64()
            .expect("per connection")
            > 0
    );

    let connect = load(
        &[
            &["--url", &url, "--server-pid", &pid],
            &auth[..],
            &["connect", "--count", "300"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(connect["handshakes"]["completed"], 300, "{connect}");
    assert_eq!(connect["handshakes"]["refused"], 0);

    // Without credentials the same node refuses, and the tool counts the refusals.
    let refused = load(&["--url", &url, "connect", "--count", "5"]).await;
    assert_eq!(refused["handshakes"]["refused"], 5, "{refused}");
    assert!(
        refused["first_error"]
            .as_str()
            .is_some_and(|error| error.contains("401")),
        "{refused}"
    );
}

#[tokio::test]
async fn recovery_counts_what_rejoining_clients_lost_and_received_twice() {
    // On a channel with history nothing is lost or repeated; on one without, clients that drop
    // lose what was published while they were away, and the tool says so.
    let config = r#"
        [[channels]]
        pattern = "chat:*"
        join = "anyone"
        publish = "anyone"
        history_size = 1000
        history_ttl = "10m"
        [[channels]]
        pattern = "*"
        join = "anyone"
        publish = "anyone"
    "#;
    let server = TestServer::start(config).await;
    let url = server.ws_url("/ws");
    let run = |channel: &'static str| {
        let url = url.clone();
        async move {
            load(&[
                "--url",
                &url,
                "recovery",
                "--clients",
                "10",
                "--rate",
                "80",
                "--duration",
                "1.5",
                "--drop-every",
                "0.4",
                "--offline",
                "0.1",
                "--drain",
                "2",
                "--channel",
                channel,
            ])
            .await
        }
    };
    let kept = run("chat:load").await;
    let delivery = &kept["delivery"];
    let published = delivery["published"].as_u64().expect("published");
    assert!(published >= 100, "{kept}");
    assert_eq!(delivery["expected"].as_u64(), Some(published * 10));
    assert_eq!(delivery["lost"], 0, "{kept}");
    assert_eq!(kept["recovery"]["duplicated"], 0, "{kept}");
    let recovered = kept["recovery"]["recovered"].as_u64().expect("recovered");
    assert!(
        recovered >= 10,
        "every client rejoined at least once: {kept}"
    );
    assert_eq!(kept["recovery"]["not_recovered"], 0);
    assert_eq!(kept["errors"], 0, "{kept}");

    let plain = run("plain:load").await;
    assert!(
        plain["delivery"]["lost"].as_u64().expect("lost") > 0,
        "{plain}"
    );
    assert_eq!(plain["recovery"]["recovered"], 0);
}
