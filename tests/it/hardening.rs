//! Regression tests for the holes a hostile client, a misconfiguration or a crashed peer could
//! open (one test per defect, named after what it protects), over real sockets.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use crate::multinode::nodes;
use crate::support::backend::{DjangoRoutes, DjangoView, Mode};
use crate::support::redis::RedisServer;
use crate::support::{Client, SilentSocket, TestServer, WAIT};

/// Sends every frame at once (numbered from `first_id`) and returns the answer to each id.
async fn pipeline(client: &mut Client, frames: &[Value], first_id: u64) -> HashMap<u64, Value> {
    for (offset, frame) in frames.iter().enumerate() {
        let mut frame = frame.clone();
        frame["id"] = json!(first_id + offset as u64);
        client.send(frame).await;
    }
    let mut answers = HashMap::new();
    while answers.len() < frames.len() {
        let frame = client.recv().await;
        if let Some(id) = frame["id"].as_u64() {
            if frame["type"] != "message" {
                answers.insert(id, frame);
            }
        }
    }
    answers
}

/// What the server must hold after `frames` (joins and leaves) ran in order on one connection
/// allowed `limit` channels: a join enters a channel at once (answered later), a leave leaves
/// it at once.
fn expected_channels(frames: &[Value], limit: usize) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for frame in frames {
        let channel = frame["channel"].as_str().expect("channel").to_owned();
        match frame["action"].as_str() {
            Some("join") if !held.contains(&channel) && held.len() < limit => {
                held.insert(channel);
            }
            Some("leave") => {
                held.remove(&channel);
            }
            _ => {}
        }
    }
    held
}

/// Publishes a marker to every channel of `all` from the back end and returns the channels
/// `client` heard it on.
async fn channels_heard(
    client: &mut Client,
    backend: &crate::support::redis::RedisClient,
    all: &[&str],
    marker: u64,
) -> BTreeSet<String> {
    for channel in all {
        backend
            .publish(
                &format!("sb:ch:{channel}"),
                json!({"data": {"marker": marker}}).to_string(),
            )
            .await;
    }
    // A ping round trip after the publications: every node-side delivery queued before the
    // pong was written has reached the socket before it.
    let fence = client
        .request(json!({"action": "ping"}), 9_000_000 + marker)
        .await;
    assert_eq!(fence["type"], "pong");
    let mut heard = BTreeSet::new();
    while let Some(frame) = client.recv_within(Duration::from_millis(300)).await {
        if frame["type"] == "message" && frame["data"]["marker"] == marker {
            heard.insert(frame["channel"].as_str().expect("channel").to_owned());
        }
    }
    heard
}

#[tokio::test]
async fn a_leave_that_overtakes_its_join_leaves_no_ghost_membership() {
    let redis = RedisServer::start().await;
    let extra =
        "[server]\nmax_channels_per_connection = 2\nrate_limit = 10000\nrate_limit_burst = 10000\n";
    let node = nodes(&redis, 1, extra).await.remove(0);
    let backend = redis.client().await;
    let mut client = node.client().await;

    // Twenty join+leave pairs, each leave sent before its join was answered, while every group
    // is still making its first subscription.
    let frames: Vec<Value> = (0..20)
        .flat_map(|n| {
            let channel = format!("ghost:{n}");
            [
                json!({"action": "join", "channel": channel}),
                json!({"action": "leave", "channel": channel}),
            ]
        })
        .collect();
    let answers = pipeline(&mut client, &frames, 1).await;
    for (offset, frame) in frames.iter().enumerate() {
        let answer = &answers[&(1 + offset as u64)];
        if frame["action"] == "leave" {
            assert_eq!(answer["type"], "reply", "every leave succeeds: {answer}");
        }
    }
    let names: Vec<String> = (0..20).map(|n| format!("ghost:{n}")).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(
        channels_heard(&mut client, &backend, &all, 1)
            .await
            .is_empty(),
        "a left channel delivers nothing"
    );

    // The limit still holds: two joins fit, a third does not.
    let joins: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|channel| json!({"action": "join", "channel": channel}))
        .collect();
    let answers = pipeline(&mut client, &joins, 100).await;
    assert_eq!(answers[&100]["type"], "reply");
    assert_eq!(answers[&101]["type"], "reply");
    assert_eq!(answers[&102]["code"], "channel_limit", "{}", answers[&102]);

    drop(client);
    node.wait_for_metric("switchboard_connections", 0.0).await;
    node.wait_for_metric("switchboard_channels", 0.0).await;
    node.wait_for_metric("switchboard_broker_subscriptions", 0.0)
        .await;
    for channel in all.iter().chain(["a", "b"].iter()) {
        assert_eq!(
            backend.numsub(&format!("sb:ch:{channel}")).await,
            0,
            "{channel}"
        );
    }
}

#[tokio::test]
async fn random_interleavings_of_join_leave_and_close_keep_channels_groups_and_subscriptions_in_agreement()
 {
    let redis = RedisServer::start().await;
    let extra = "[server]\nmax_channels_per_connection = 3\nrate_limit = 10000\nrate_limit_burst = 10000\n[api]\nkey = \"k\"\n";
    let cluster = nodes(&redis, 2, extra).await;
    let backend = redis.client().await;
    let channels = ["r:0", "r:1", "r:2", "r:3", "r:4"];
    let seed = fastrand::u64(..);
    eprintln!("interleavings seed {seed}");
    let mut random = fastrand::Rng::with_seed(seed);

    for round in 0..4u64 {
        let mut clients = Vec::new();
        for index in 0..4 {
            clients.push(cluster[index % 2].client().await);
        }
        let mut expected = Vec::new();
        for client in &mut clients {
            let frames: Vec<Value> = (0..40)
                .map(|_| {
                    let action = if random.bool() { "join" } else { "leave" };
                    let channel = channels[random.usize(..channels.len())];
                    json!({"action": action, "channel": channel})
                })
                .collect();
            pipeline(client, &frames, 1).await;
            expected.push(expected_channels(&frames, 3));
        }
        for (index, client) in clients.iter_mut().enumerate() {
            let heard = channels_heard(client, &backend, &channels, round).await;
            assert_eq!(
                heard, expected[index],
                "round {round}, client {index} (seed {seed})"
            );
        }
        // The registry agrees with the sockets.
        for channel in channels {
            let members = expected
                .iter()
                .filter(|held| held.contains(channel))
                .count();
            let url = cluster[0].url(&format!("/api/connections?channel={channel}"));
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let answer: Value = reqwest::Client::new()
                    .get(&url)
                    .bearer_auth("k")
                    .send()
                    .await
                    .expect("api")
                    .json()
                    .await
                    .expect("json");
                let listed = answer["connections"].as_array().map_or(0, Vec::len);
                if listed == members {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{channel}: registry lists {listed}, sockets hold {members} (seed {seed})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Close some mid-flight: a join sent, the socket dropped before its answer.
        for client in &mut clients {
            client
                .send(
                    json!({"action": "join", "channel": channels[random.usize(..channels.len())]}),
                )
                .await;
        }
        drop(clients);
    }
    for node in &cluster {
        node.wait_for_metric("switchboard_connections", 0.0).await;
        node.wait_for_metric("switchboard_channels", 0.0).await;
        node.wait_for_metric("switchboard_broker_subscriptions", 0.0)
            .await;
    }
    for channel in channels {
        assert_eq!(backend.numsub(&format!("sb:ch:{channel}")).await, 0);
    }
}

/// Opens a TCP connection, sends a WebSocket upgrade request with `headers`, and resets the
/// connection (RST) without reading the answer: a client that hangs up mid-handshake.
async fn abort_handshake(address: std::net::SocketAddr, headers: &str) {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_zero_linger().expect("linger");
    let mut stream = socket.connect(address).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // Give the server the time to read the request and start authenticating it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(stream);
}

#[tokio::test]
async fn introspection_calls_finish_on_their_own_when_the_client_hangs_up_and_never_serve_stale_answers()
 {
    let view = DjangoView::start();
    view.log_in("stale", "alice", json!({}));
    view.set_mode(Mode::Slow(Duration::from_millis(1500)));
    let config = format!(
        "[auth]\nanonymous = false\n[auth.introspect]\nurl = \"{}\"\ntimeout = \"1s\"\ncache_ttl = \"30s\"\n",
        view.url
    );
    let server = TestServer::start(&config).await;
    // Warm up the node's own descriptors (worker threads' epoll, the HTTP client's resolver).
    let _ = Client::connect(&server.ws_url("/ws"), &[("cookie", "sessionid=warm")]).await;
    let baseline = server.open_files();

    abort_handshake(server.address, "Cookie: sessionid=stale\r\n").await;
    for n in 0..100 {
        abort_handshake(server.address, &format!("Cookie: sessionid=s{n}\r\n")).await;
    }
    // Every call ends by its timeout, and its connection with it.
    server.wait_for_open_files_at_most(baseline + 4).await;

    // Alice logged out meanwhile: the next handshake with her cookie asks again.
    view.log_out("stale");
    view.set_mode(Mode::Normal);
    let refused = Client::connect(&server.ws_url("/ws"), &[("cookie", "sessionid=stale")])
        .await
        .err()
        .expect("a logged-out session is refused");
    assert_eq!(refused.status, 401, "{:?}", refused.body);
}

#[tokio::test]
async fn gateway_and_connect_hook_identities_are_protected_from_cross_site_hijacking() {
    let info = crate::support::credentials::userinfo(&json!({"sub": "victim"}));
    let gateway = TestServer::start(
        "[auth]\nanonymous = false\n[auth.gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    )
    .await;
    let evil = Client::connect(
        &gateway.ws_url("/ws"),
        &[("X-Userinfo", &info), ("Origin", "https://evil.example")],
    )
    .await
    .err()
    .expect("a page on another site cannot ride the gateway's session");
    assert_eq!(
        (evil.status, evil.body["error"].as_str()),
        (403, Some("forbidden_origin"))
    );
    let own_origin = format!("http://{}", gateway.address);
    let mut own = Client::connect(
        &gateway.ws_url("/ws"),
        &[("X-Userinfo", &info), ("Origin", &own_origin)],
    )
    .await
    .expect("the site's own pages connect");
    assert_eq!(own.recv().await["user"], "victim");

    // A connect hook that is given the browser's cookie decides identity too.
    let routes = DjangoRoutes::start(Duration::ZERO);
    let hooked = TestServer::start(&routes.routes_config()).await;
    let evil = Client::connect(
        &hooked.ws_url("/ws"),
        &[
            ("Cookie", "sessionid=victim"),
            ("Origin", "https://evil.example"),
        ],
    )
    .await
    .err()
    .expect("refused before the hook is asked");
    assert_eq!(evil.status, 403);
    assert!(
        routes.calls_to("connect").is_empty(),
        "the hook never saw it"
    );
    let hooked_own = format!("http://{}", hooked.address);
    let mut own = Client::connect(
        &hooked.ws_url("/ws"),
        &[("Cookie", "sessionid=victim"), ("Origin", &hooked_own)],
    )
    .await
    .expect("same origin");
    assert_eq!(own.recv().await["type"], "welcome");
}

#[tokio::test]
async fn jwt_configs_mixing_key_families_verify_each_token_with_its_own_algorithm() {
    use crate::support::credentials::{AUDIENCE, ISSUER, KeyPair, claims, hs256};
    use jsonwebtoken::Algorithm;
    let (rsa, ec, ed) = (
        KeyPair::generate(Algorithm::RS256),
        KeyPair::generate(Algorithm::ES256),
        KeyPair::generate(Algorithm::EdDSA),
    );
    let jwks = json!({ISSUER: {"keys": [rsa.jwk("r1"), ec.jwk("e1"), ed.jwk("d1")]}});
    let jwks_file = crate::support::temp_file("jwks.json", &jwks.to_string());
    // A secret, a PEM key and a JWKS of three families at once; `audience` as a plain string.
    let config = format!(
        "[auth]\nanonymous = false\n[auth.jwt]\nsecret = \"s3cret\"\npublic_key_file = {:?}\njwks_file = {:?}\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n",
        rsa.public_pem_file.to_str().expect("path"),
        jwks_file.to_str().expect("path"),
    );
    let server = TestServer::start(&config).await;
    let tokens = [
        ("hs", hs256(&claims("hs", 60), b"s3cret")),
        ("pem", rsa.sign(&claims("pem", 60), None)),
        ("rsa", rsa.sign(&claims("rsa", 60), Some("r1"))),
        ("ec", ec.sign(&claims("ec", 60), Some("e1"))),
        ("ed", ed.sign(&claims("ed", 60), Some("d1"))),
    ];
    for (user, token) in tokens {
        let bearer = format!("Bearer {token}");
        let mut client = Client::connect(&server.ws_url("/ws"), &[("Authorization", &bearer)])
            .await
            .unwrap_or_else(|refused| panic!("{user}: {:?}", refused.body));
        assert_eq!(client.recv().await["user"], user);
    }
    // A key of the wrong family for its kid is still refused.
    let confused = ec.sign(&claims("x", 60), Some("r1"));
    let refused = Client::connect(
        &server.ws_url("/ws"),
        &[("Authorization", &format!("Bearer {confused}"))],
    )
    .await
    .err()
    .expect("an EC token naming an RSA key");
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn a_config_error_names_its_key_once() {
    let path = crate::support::temp_file("bad.toml", "[auth.jwt]\nsecret = \"x\"\naudience = 5\n");
    let output = std::process::Command::new(crate::support::binary())
        .args(["check-config", "--config", path.to_str().expect("path")])
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.jwt.audience: expected a string or a list of strings"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("audience").count(), 1, "{stderr}");
}

#[tokio::test]
async fn only_the_configured_gateway_header_is_believed_and_a_credential_header_sent_twice_is_refused()
 {
    use crate::support::credentials::userinfo;
    let server = TestServer::start(
        "[auth]\nanonymous = false\n[auth.gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\nuser_header = \"x-forwarded-user\"\n[auth.jwt]\nsecret = \"s3cret\"\nrequire_exp = false\n",
    )
    .await;
    let forged = userinfo(&json!({"sub": "admin"}));
    let mut client = Client::connect(
        &server.ws_url("/ws"),
        &[("X-Forwarded-User", "mallory"), ("X-Userinfo", &forged)],
    )
    .await
    .expect("the configured header identifies");
    assert_eq!(
        client.recv().await["user"],
        "mallory",
        "the forged userinfo is not read"
    );
    let alone = Client::connect(&server.ws_url("/ws"), &[("X-Userinfo", &forged)])
        .await
        .err()
        .expect("userinfo alone is no credential here");
    assert_eq!(alone.status, 401);

    let appended = Client::connect(
        &server.ws_url("/ws"),
        &[
            ("X-Forwarded-User", "admin"),
            ("X-Forwarded-User", "mallory"),
        ],
    )
    .await
    .err()
    .expect("a header appended to a forged one");
    assert_eq!(appended.status, 401);
    assert!(
        appended.body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("more than once"),
        "{}",
        appended.body
    );
    let token = crate::support::credentials::hs256(&json!({"sub": "x"}), b"s3cret");
    let bearer = format!("Bearer {token}");
    let twice = Client::connect(
        &server.ws_url("/ws"),
        &[("Authorization", &bearer), ("Authorization", &bearer)],
    )
    .await
    .err()
    .expect("two Authorization headers");
    assert_eq!(twice.status, 401);
    let in_query = Client::connect(
        &server.ws_url(&format!("/ws?token={token}&token={token}")),
        &[],
    )
    .await
    .err()
    .expect("two token parameters");
    assert_eq!(in_query.status, 401);

    // Both headers configured: they must agree.
    let both = TestServer::start(
        "[auth]\nanonymous = false\n[auth.gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\nuserinfo_header = \"x-userinfo\"\nuser_header = \"x-forwarded-user\"\n",
    )
    .await;
    let disagreeing = Client::connect(
        &both.ws_url("/ws"),
        &[("X-Forwarded-User", "mallory"), ("X-Userinfo", &forged)],
    )
    .await
    .err()
    .expect("two headers naming two users");
    assert_eq!(disagreeing.status, 401);
}

#[tokio::test]
async fn a_client_that_never_reads_holds_a_bounded_queue_and_is_dropped_by_the_write_deadline() {
    let config = "[server]\nmax_connections = 2\nwrite_timeout = \"1s\"\nrate_limit = 100000\nrate_limit_burst = 100000\n";
    let server = TestServer::start(config).await;
    let mut publisher = server.client().await;
    // A reader with a small receive buffer that never reads after its handshake.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.address).await.expect("connect");
    let (silent, _) = tokio_tungstenite::client_async(server.ws_url("/ws?channel=flood"), stream)
        .await
        .expect("handshake");
    server.wait_for_metric("switchboard_channels", 1.0).await;
    let full = Client::connect(&server.ws_url("/ws"), &[])
        .await
        .err()
        .expect("full");
    assert_eq!(full.status, 429);

    let rss_before = server.rss_kib();
    let payload = "p".repeat(60_000);
    for n in 0..600u64 {
        publisher
            .send(json!({"action": "publish", "channel": "flood", "data": {"n": n, "p": payload}}))
            .await;
    }
    let answered = publisher.request(json!({"action": "ping"}), 1).await;
    assert_eq!(answered["type"], "pong");
    server
        .wait_for_metric(
            "switchboard_closes_total{code=\"4010\",reason=\"slow_consumer\",initiator=\"server\"}",
            1.0,
        )
        .await;
    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + 8 * 1024,
        "36 MB went to a socket that reads nothing; RSS grew from {rss_before} to {rss_after} KiB"
    );
    // Its close frame cannot be written either: the write deadline drops the socket, and its
    // admission slot is free again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::connect(&server.ws_url("/ws"), &[]).await {
            Ok(_) => break,
            Err(refused) => assert_eq!(refused.status, 429),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent socket still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
}

#[tokio::test]
async fn a_client_that_hangs_up_without_a_close_frame_is_an_abnormal_closure_not_a_protocol_error()
{
    let server = TestServer::start("").await;
    let (code_1006, code_1002) = (
        "switchboard_closes_total{code=\"1006\",reason=\"abnormal_closure\",initiator=\"client\"}",
        "switchboard_closes_total{code=\"1002\",reason=\"protocol_error\",initiator=\"server\"}",
    );
    // A reset (a killed tab, a phone out of signal)...
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_zero_linger().expect("linger");
    let stream = socket.connect(server.address).await.expect("connect");
    let (client, _) = tokio_tungstenite::client_async(server.ws_url("/ws"), stream)
        .await
        .expect("handshake");
    server.wait_for_metric("switchboard_connections", 1.0).await;
    drop(client);
    server.wait_for_metric(code_1006, 1.0).await;
    // ...and a plain hang-up (FIN) without a close frame.
    let silent = crate::support::SilentSocket::connect(server.address, "/ws").await;
    server.wait_for_metric("switchboard_connections", 1.0).await;
    drop(silent);
    server.wait_for_metric(code_1006, 2.0).await;
    server.wait_for_metric("switchboard_connections", 0.0).await;
    assert_eq!(server.metric(code_1002).await.unwrap_or(0.0), 0.0);

    // A real framing violation is still 1002: a text frame that is not UTF-8.
    let mut broken = crate::support::SilentSocket::connect(server.address, "/ws").await;
    broken.send_frame(0x1, true, &[0xff, 0xfe]).await;
    assert_eq!(broken.close_frame().await.0, 1002);
}

#[tokio::test]
async fn the_tcp_connection_closes_as_soon_as_the_close_handshake_completes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start("").await;
    // The fastest of five: scheduling noise on a busy machine only ever adds time, while
    // lingering would hold every one of them for its full timeout (500 ms before).
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let mut client = server.client().await;
        let started = tokio::time::Instant::now();
        client
            .socket
            .send(Message::Close(None))
            .await
            .expect("close");
        // The echo, then the end of the TCP stream, without the client closing first.
        loop {
            match tokio::time::timeout(WAIT, client.socket.next())
                .await
                .expect("echo")
            {
                Some(Ok(Message::Close(_))) => continue,
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => break,
            }
        }
        fastest = fastest.min(started.elapsed());
    }
    assert!(
        fastest < Duration::from_millis(250),
        "the server kept the TCP connection {fastest:?} after the close handshake"
    );

    // A server-initiated close ends as soon as the client answers it.
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let mut client = server.client().await;
        client.send(json!({"action": "join", "channel": "x"})).await;
        for _ in 0..11 {
            client.send_raw(Message::Text("{oops".into())).await;
        }
        let started = tokio::time::Instant::now();
        // tungstenite answers the server's close frame by itself, then waits for the server.
        loop {
            match tokio::time::timeout(WAIT, client.socket.next())
                .await
                .expect("close")
            {
                None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            }
        }
        fastest = fastest.min(started.elapsed());
    }
    assert!(
        fastest < Duration::from_millis(250),
        "{fastest:?} from a 1008 close to the end of the connection"
    );
}

/// `1` wrapped in `levels` arrays.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

#[tokio::test]
async fn deep_publications_are_refused_in_both_encodings_never_acknowledged_then_lost() {
    let redis = RedisServer::start().await;
    let cluster = nodes(&redis, 2, "").await;
    let mut member = cluster[1].client_in(&["deep"]).await;
    let mut msgpack = Client::connect(
        &cluster[0].ws_url("/ws"),
        &[("Sec-WebSocket-Protocol", "switchboard.v1.msgpack")],
    )
    .await
    .expect("msgpack client");
    assert_eq!(msgpack.recv().await["type"], "welcome");
    for levels in [64, 200, 600] {
        msgpack
            .send(json!({"action": "publish", "channel": "deep", "data": nested(levels), "id": levels}))
            .await;
        let answer = msgpack.recv().await;
        assert_eq!(answer["code"], "bad_request", "{levels} levels: {answer}");
        if levels == 64 {
            assert_eq!(
                answer["id"], 64,
                "a frame that parsed keeps its id: {answer}"
            );
        }
        assert!(
            answer["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("nested deeper than 64"),
            "{answer}"
        );
    }
    let mut json_client = cluster[0].client().await;
    let answer = json_client
        .request(
            json!({"action": "publish", "channel": "deep", "data": nested(100)}),
            1,
        )
        .await;
    assert_eq!(
        answer["code"], "bad_request",
        "JSON has the same limit: {answer}"
    );

    // Up to the limit, a publication is acknowledged and delivered on every node.
    let answer = msgpack
        .request(
            json!({"action": "publish", "channel": "deep", "data": nested(63)}),
            2,
        )
        .await;
    assert_eq!(answer["type"], "reply", "{answer}");
    let delivered = member.recv().await;
    assert_eq!(delivered["data"], nested(63));
    // A back end's envelope past the limit is dropped and counted, like any invalid one.
    let backend = redis.client().await;
    backend
        .publish("sb:ch:deep", json!({"data": nested(80)}).to_string())
        .await;
    cluster[1]
        .wait_for_metric(
            "switchboard_broker_decode_errors_total{kind=\"channel\"}",
            1.0,
        )
        .await;
}

#[tokio::test]
async fn an_absurd_expiry_is_clamped_and_the_connection_lives_and_leaves_normally() {
    let view = DjangoView::start();
    view.log_in("forever", "ada", json!({"expires_in": u64::MAX}));
    let config = format!(
        "[auth]\nanonymous = false\n[auth.jwt]\nsecret = \"s3cret\"\n[auth.introspect]\nurl = \"{}\"\n",
        view.url
    );
    let server = TestServer::start(&config).await;
    let token =
        crate::support::credentials::hs256(&json!({"sub": "bob", "exp": 1u64 << 63}), b"s3cret");
    let bearer = format!("Bearer {token}");
    let mut by_token = Client::connect(
        &server.ws_url("/ws?channel=x"),
        &[("Authorization", &bearer)],
    )
    .await
    .expect("a token valid until 2^63");
    let mut by_session = Client::connect(
        &server.ws_url("/ws?channel=x"),
        &[("Cookie", "sessionid=forever")],
    )
    .await
    .expect("a session with an endless expires_in");
    for client in [&mut by_token, &mut by_session] {
        let welcome = client.recv().await;
        assert_eq!(
            welcome["expires_at"],
            switchboard::auth::MAX_EXPIRES_AT,
            "{welcome}"
        );
        assert_eq!(
            client.request(json!({"action": "ping"}), 1).await["type"],
            "pong"
        );
    }
    drop((by_token, by_session));
    // Their actors stopped normally: nothing of them is left on the node.
    server.wait_for_metric("switchboard_connections", 0.0).await;
    server.wait_for_metric("switchboard_channels", 0.0).await;
    server
        .wait_for_metric("switchboard_broker_subscriptions", 0.0)
        .await;
    server.wait_for_metric("switchboard_sessions", 0.0).await;
}

#[tokio::test]
async fn one_client_cannot_take_the_back_end_pool_or_delay_another_users_handshake() {
    // Slow route views (3 s) against a 1.5 s timeout, two route permits per node, two calls per
    // connection; the connect hook answers at once.
    let routes = DjangoRoutes::start(Duration::from_secs(3));
    let config = format!(
        "{}[backend]\ntimeout = \"1500ms\"\nconcurrency = 2\nmax_calls_per_connection = 2\n",
        routes.routes_config()
    );
    let server = TestServer::start(&config).await;
    let mut greedy = Client::connect(&server.ws_url("/ws"), &[])
        .await
        .expect("greedy");
    assert_eq!(greedy.recv().await["type"], "welcome");
    for id in 1..=10u64 {
        greedy.send(json!({"action": "slow", "id": id})).await;
    }
    // Beyond two in flight, the connection refuses at once, without asking the back end.
    let mut refused = 0;
    while refused < 8 {
        let frame = greedy.recv().await;
        assert_eq!(frame["code"], "rate_limited", "{frame}");
        refused += 1;
    }
    // Its two calls hold both route permits; another user's handshake still gets the hook.
    let mut other = Client::connect(&server.ws_url("/ws"), &[])
        .await
        .expect("the connect hook has permits of its own");
    let welcome = other.recv().await;
    assert_eq!(welcome["type"], "welcome");
    // The greedy calls time out and free their places.
    for _ in 0..2 {
        assert_eq!(greedy.recv().await["code"], "backend_error");
    }
    routes.wait_for_calls("slow", 2).await;
    assert_eq!(
        routes.calls_to("slow").len(),
        2,
        "only two calls ever reached the back end"
    );
}

#[tokio::test]
async fn join_and_leave_loops_cannot_flood_a_presence_channel() {
    let config = "[server]\nrate_limit = 100000\nrate_limit_burst = 100000\npresence_burst = 10\n[[channels]]\npattern = \"lobby\"\njoin = \"anyone\"\npublish = \"nobody\"\npresence = true\n";
    let server = TestServer::start(config).await;
    let mut observer = server.client_in(&["lobby"]).await;
    let mut attacker = server.client().await;
    let started = tokio::time::Instant::now();
    let frames: Vec<Value> = (0..200)
        .flat_map(|_| {
            [
                json!({"action": "join", "channel": "lobby"}),
                json!({"action": "leave", "channel": "lobby"}),
            ]
        })
        .collect();
    let answers = pipeline(&mut attacker, &frames, 1).await;
    let elapsed = started.elapsed().as_secs_f64();
    let refused = answers
        .values()
        .filter(|answer| answer["code"] == "rate_limited")
        .count();
    assert!(
        refused > 150,
        "joins past the budget are refused: {refused}"
    );
    // Everything the observer heard of it, up to a fence.
    let fence = observer.request(json!({"action": "ping"}), 1).await;
    assert_eq!(fence["type"], "pong");
    let mut events = 0;
    while let Some(frame) = observer.recv_within(Duration::from_millis(300)).await {
        if frame["type"] == "presence" {
            events += 1;
        }
    }
    // At most the burst, plus one a second, joined and left.
    let budget = 2 * (10 + elapsed.ceil() as usize + 1);
    assert!(
        events <= budget,
        "{events} presence events in {elapsed:.1} s (budget {budget})"
    );
    assert!(events >= 2, "legitimate joins are still announced");
}

#[tokio::test]
async fn a_partial_api_publish_says_what_was_published_and_what_failed() {
    let redis = RedisServer::start().await;
    let backend = redis.client().await;
    // The nodes' Redis user may publish to `ok:*` channels only (Redis ACL channel rules), so
    // one call fails for some channels and succeeds for others.
    backend
        .command(
            "ACL",
            vec![
                "SETUSER",
                "node",
                "on",
                ">pw",
                "~*",
                "+@all",
                "resetchannels",
                "&sb:control",
                "&sb:node:*",
                "&sb:user:*",
                "&sb:ch:ok:*",
            ],
        )
        .await;
    let url = format!("redis://node:pw@127.0.0.1:{}", redis.port);
    let node = TestServer::start(&crate::support::redis::node_config(
        &url,
        "[api]\nkey = \"k\"\n",
    ))
    .await;
    node.wait_for_readiness(200).await;
    let mut member = node.client_in(&["ok:1"]).await;
    let publish = |body: Value| {
        let url = node.url("/api/publish");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth("k")
                .json(&body)
                .send()
                .await
                .expect("publish");
            (
                response.status().as_u16(),
                response.json::<Value>().await.expect("json"),
            )
        }
    };
    let (status, answer) =
        publish(json!({"channels": ["ok:1", "denied:1", "ok:2"], "data": 1})).await;
    assert_eq!(status, 207, "{answer}");
    assert_eq!(answer["published"], 2);
    assert_eq!(answer["channels"], json!(["ok:1", "ok:2"]));
    assert_eq!(answer["failed"][0]["channel"], "denied:1", "{answer}");
    assert_eq!(answer["failed"][0]["error"], "backend_unavailable");
    let reason = answer["failed"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.contains("NOPERM"),
        "Redis's words stay in the log: {reason}"
    );
    assert_eq!(member.recv().await["data"], 1);

    // All failed: 503, nothing published, a retry is safe.
    let (status, answer) = publish(json!({"channels": ["denied:1", "denied:2"], "data": 2})).await;
    assert_eq!(status, 503, "{answer}");
    // All went out: 200 as before.
    let (status, answer) = publish(json!({"channels": ["ok:1"], "data": 3})).await;
    assert_eq!((status, answer), (200, json!({"published": 1})));
    assert_eq!(
        member.recv().await["data"],
        3,
        "nothing in between was delivered twice"
    );
}

/// The metric names (without suffixes) a `/metrics` text exports.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn every_metric_exists_from_the_start_at_zero() {
    use switchboard::metrics::{
        ALL, AUTH_ONLY, BRIDGE_ONLY, INTEGRATION_ONLY, LIMITS_ONLY, REDIS_ONLY,
    };
    // A bare memory node, before any traffic.
    let bare = TestServer::start("").await;
    let text = bare.metrics().await;
    let names = exported(&text);
    for name in ALL {
        let optional = REDIS_ONLY.contains(&name)
            || AUTH_ONLY.contains(&name)
            || INTEGRATION_ONLY.contains(&name)
            || BRIDGE_ONLY.contains(&name)
            || LIMITS_ONLY.contains(&name);
        assert!(
            optional || names.contains(name),
            "{name} missing at start:\n{text}"
        );
    }
    for series in [
        "switchboard_closes_total{code=\"4010\",reason=\"slow_consumer\",initiator=\"server\"} 0",
        "switchboard_closes_total{code=\"1006\",reason=\"abnormal_closure\",initiator=\"client\"} 0",
        "switchboard_handshakes_refused_total{reason=\"forbidden_origin\"} 0",
        "switchboard_handshakes_refused_total{reason=\"expired\"} 0",
        "switchboard_messages_dropped_total{reason=\"slow_consumer\"} 0",
        "switchboard_frames_received_total{action=\"malformed\"} 0",
        "switchboard_handshakes_total{authenticator=\"anonymous\",result=\"refused\"} 0",
    ] {
        assert!(
            text.lines().any(|line| line == series),
            "{series} missing:\n{text}"
        );
    }

    // A node with every part configured exports every metric before anything happens.
    let redis = RedisServer::start().await;
    // A key file too: its watch exports the key reload counter.
    let key = crate::support::credentials::KeyPair::generate(jsonwebtoken::Algorithm::RS256);
    let config = crate::support::redis::node_config(
        &redis.url(),
        &format!(
            "[api]\nkey = \"k\"\n[routes]\ndefault = \"http://127.0.0.1:1/route\"\n\
             [auth.jwt]\nsecret = \"s\"\npublic_key_file = {:?}\noidc_issuer = \"https://127.0.0.1:1/idp\"\n\
             [auth.gateway]\ntrusted_proxies = [\"127.0.0.1\"]\n\
             [auth.introspect]\nurl = \"http://127.0.0.1:1/introspect\"\n[auth.redis_session]\n\
             [limits]\nmax_connections_per_user = 100\n\
             [bridge.channels_redis]\nhosts = [{:?}]\n\
             [[bridge.channels_redis.groups]]\ngroup = \"chat_*\"\nchannel = \"room:{{1}}\"\n",
            key.public_pem_file.to_str().expect("path"),
            redis.url()
        ),
    );
    let full = TestServer::start(&config).await;
    let text = full.metrics().await;
    let names = exported(&text);
    for name in ALL {
        assert!(names.contains(name), "{name} missing at start:\n{text}");
    }
    for series in [
        "switchboard_route_calls_total{action=\"default\",result=\"timeout\"} 0",
        "switchboard_revalidations_total{authenticator=\"introspect\",result=\"failed_closed\"} 0",
        "switchboard_broker_decode_errors_total{kind=\"channel\"} 0",
        "switchboard_api_requests_total{endpoint=\"publish\",status=\"200\"} 0",
        "switchboard_bridge_dropped_total{reason=\"decode\"} 0",
        "switchboard_limit_refusals_total{limit=\"handshake_rate\"} 0",
        "switchboard_jwks_unknown_kid_refreshes_total{issuer=\"https://127.0.0.1:1/idp\",result=\"limited\"} 0",
        "switchboard_bridge_membership_writes_total{result=\"failed\"} 0",
    ] {
        assert!(
            text.lines().any(|line| line == series),
            "{series} missing:\n{text}"
        );
    }
}

#[tokio::test]
async fn clients_get_neutral_error_texts_and_session_ids_never_reach_the_log() {
    let mut redis = RedisServer::start().await;
    let view = DjangoView::start();
    view.log_in(
        "SECRET-COOKIE",
        "ada",
        json!({"session": "SECRET-DJANGO-SESSION"}),
    );
    let config = crate::support::redis::node_config(
        &redis.url(),
        &format!(
            "[auth]\norder = [\"redis_session\", \"introspect\"]\n[auth.introspect]\nurl = \"{}\"\n[auth.redis_session]\n[api]\nkey = \"k\"\n",
            view.url
        ),
    );
    let node = TestServer::start_logged_at(&config, "debug").await;
    node.wait_for_readiness(200).await;
    let backend = redis.client().await;
    backend
        .command(
            "SET",
            vec!["session:SECRET-REDIS-SESSION", r#"{"_auth_user_id": "7"}"#],
        )
        .await;
    backend
        .command("SET", vec!["session:SECRET-NO-USER", r#"{"other": 1}"#])
        .await;
    let mut ada = Client::connect(
        &node.ws_url("/ws"),
        &[("Cookie", "sessionid=SECRET-COOKIE")],
    )
    .await
    .expect("introspected");
    assert_eq!(ada.recv().await["user"], "ada");
    let mut seven = Client::connect(
        &node.ws_url("/ws"),
        &[("Cookie", "other=1; sessionid=SECRET-REDIS-SESSION")],
    )
    .await
    .expect("redis session");
    assert_eq!(seven.recv().await["user"], "7");
    let _ = Client::connect(
        &node.ws_url("/ws"),
        &[("Cookie", "sessionid=SECRET-NO-USER")],
    )
    .await;
    // A control disconnect by session names the session id on the wire, never in the log.
    for session in ["SECRET-DJANGO-SESSION", "SECRET-NOBODY-HOLDS"] {
        let response = reqwest::Client::new()
            .post(node.url("/api/disconnect"))
            .bearer_auth("k")
            .json(&json!({"session": session}))
            .send()
            .await
            .expect("disconnect");
        assert_eq!(response.status().as_u16(), 200);
    }
    assert_eq!(ada.expect_close().await.0, 4002);
    node.wait_for_log("control disconnect").await;

    // With Redis gone, clients hear the node's own words, not Redis's.
    redis.kill().await;
    node.wait_for_readiness(503).await;
    let answer = seven
        .request(json!({"action": "publish", "channel": "c", "data": 1}), 1)
        .await;
    assert_eq!(answer["code"], "backend_unavailable", "{answer}");
    assert_eq!(
        answer["reason"],
        switchboard::protocol::BROKER_UNAVAILABLE_REASON,
        "{answer}"
    );
    let log = node.log();
    for secret in [
        "SECRET-COOKIE",
        "SECRET-DJANGO-SESSION",
        "SECRET-REDIS-SESSION",
        "SECRET-NO-USER",
        "SECRET-NOBODY-HOLDS",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
}

#[tokio::test]
async fn a_healthy_start_and_a_healthy_run_log_no_warning() {
    let redis = RedisServer::start().await;
    // Nodes start before Redis has answered anyone, as they do in every deployment.
    let config = crate::support::redis::node_config(&redis.url(), "[api]\nkey = \"k\"\n");
    let node = TestServer::start_logged(&config).await;
    node.wait_for_readiness(200).await;
    let mut member = node.client_in(&["room"]).await;
    let mut publisher = node.client().await;
    let answer = publisher
        .request(
            json!({"action": "publish", "channel": "room", "data": 1}),
            1,
        )
        .await;
    assert_eq!(answer["type"], "reply");
    assert_eq!(member.recv().await["data"], 1);
    drop(publisher);
    node.terminate();
    assert_eq!(member.expect_close().await.0, 1012);
    node.wait_for_log("stopped").await;
    let log = node.log();
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains("WARN")).collect();
    assert!(
        warnings.is_empty(),
        "a healthy run warned:\n{}",
        warnings.join("\n")
    );
}

#[tokio::test]
async fn the_frames_a_client_sent_just_before_hanging_up_are_all_handled() {
    // actix-ws dropped what it had read but not decoded once the socket ended: a client's last
    // publish, sent right before it exited, was lost.
    let server = TestServer::start("").await;
    let mut member = server.client_in(&["room:1"]).await;
    for n in 0..10 {
        let mut publisher = SilentSocket::connect(server.address, "/ws").await;
        let frame = json!({"action": "publish", "channel": "room:1", "data": n}).to_string();
        publisher.send_frame(0x1, true, frame.as_bytes()).await;
        publisher.hang_up().await;
    }
    // Each publisher is its own connection (on either worker thread), so only their arrival,
    // not their order, is promised.
    let mut received: Vec<u64> = Vec::new();
    for _ in 0..10 {
        let message = member.recv().await;
        received.push(message["data"].as_u64().expect("a number"));
    }
    received.sort_unstable();
    assert_eq!(received, (0..10).collect::<Vec<u64>>());
}
