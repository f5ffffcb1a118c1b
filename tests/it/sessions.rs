//! Sessions kept honest while sockets are open: introspection against a real HTTP back end
//! (the Django view of `backend.rs`), sessions looked up in a real Redis, re-validation once
//! per session per node, fail-open then fail-closed, and revocations through `PREFIX:control`
//! closing sockets on two nodes; plus user-directed delivery (`PREFIX:user:USER`) end to end.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::multinode::nodes;
use crate::support::backend::{DjangoView, Mode};
use crate::support::credentials::{KeyPair, claims, jwt_section};
use crate::support::redis::{RedisServer, node_config};
use crate::support::{Client, TestServer};

fn introspect_config(view: &DjangoView, extra: &str) -> String {
    format!(
        "[auth]\nanonymous = false\n{extra}\n[auth.introspect]\nurl = {:?}\ntimeout = \"500ms\"\n",
        view.url
    )
}

async fn with_cookie(
    server: &TestServer,
    sessionid: &str,
) -> Result<Client, crate::support::Refused> {
    let cookie = format!("csrftoken=x; sessionid={sessionid}");
    Client::connect(&server.ws_url("/ws"), &[("Cookie", &cookie)]).await
}

#[tokio::test]
async fn introspection_accepts_refuses_and_reports_an_unavailable_back_end() {
    let view = DjangoView::start();
    view.log_in(
        "abc",
        "42",
        json!({"channels": ["team:7"], "expires_in": 3600}),
    );
    let server = TestServer::start(&format!(
        "{}\n[[channels]]\npattern = \"team:*\"\njoin = \"claim\"\npublish = \"claim\"\n",
        introspect_config(&view, "")
    ))
    .await;

    let mut accepted = with_cookie(&server, "abc").await.expect("logged in");
    let welcome = accepted.recv().await;
    assert_eq!(welcome["user"], "42");
    assert!(
        welcome["expires_at"]
            .as_u64()
            .is_some_and(|at| at > crate::support::credentials::now())
    );
    let joined = accepted
        .request(json!({"action": "join", "channel": "team:7"}), 1)
        .await;
    assert_eq!(
        joined["type"], "reply",
        "channels from introspection are claims: {joined}"
    );

    let refused = with_cookie(&server, "nobody")
        .await
        .err()
        .expect("401 from the view");
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (401, &json!("unauthorized"))
    );

    view.set_mode(Mode::Failing);
    let failing = with_cookie(&server, "fresh-1")
        .await
        .err()
        .expect("500 from the view");
    assert_eq!(
        (failing.status, &failing.body["error"]),
        (503, &json!("unavailable"))
    );
    view.set_mode(Mode::Slow(Duration::from_secs(2)));
    let started = Instant::now();
    let slow = with_cookie(&server, "fresh-2")
        .await
        .err()
        .expect("timed out");
    assert_eq!(slow.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout cut the call short"
    );
    assert_eq!(
        server
            .metric("switchboard_auth_backend_errors_total{authenticator=\"introspect\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        server
            .metric(
                "switchboard_handshakes_total{authenticator=\"introspect\",result=\"unavailable\"}"
            )
            .await,
        Some(2.0)
    );
    let exported = server.metrics().await;
    for name in [
        switchboard::metrics::AUTH_BACKEND_DURATION,
        switchboard::metrics::AUTH_BACKEND_ERRORS,
        switchboard::metrics::HANDSHAKES,
    ] {
        assert!(exported.contains(name), "{name} missing:\n{exported}");
    }
    // The answer for "abc" is cached: more sockets of that session cost no more calls.
    view.set_mode(Mode::Normal);
    let calls = view.calls();
    for _ in 0..5 {
        let mut again = with_cookie(&server, "abc").await.expect("cached");
        assert_eq!(again.recv().await["user"], "42");
    }
    assert_eq!(view.calls(), calls);
}

#[tokio::test]
async fn a_thousand_sockets_on_ten_sessions_cost_ten_checks_per_interval_and_a_logout_closes_its_own()
 {
    let view = DjangoView::start();
    for session in 0..10 {
        view.log_in(
            &format!("s{session}"),
            &format!("user-{session}"),
            json!({}),
        );
    }
    let server = TestServer::start(&format!(
        "{}cache_ttl = \"1m\"\n",
        introspect_config(
            &view,
            "revalidate_interval = \"1s\"\nrevalidate_grace = \"1m\""
        )
    ))
    .await;
    let mut sockets = Vec::new();
    for batch in 0..10 {
        let connecting = (0..100).map(|index| {
            let sessionid = format!("s{}", (batch * 100 + index) % 10);
            let server = &server;
            async move { (sessionid.clone(), with_cookie(server, &sessionid).await) }
        });
        for (sessionid, client) in join_all(connecting).await {
            sockets.push((sessionid, client.expect("accepted")));
        }
    }
    server
        .wait_for_metric("switchboard_connections", 1000.0)
        .await;
    assert_eq!(server.metric("switchboard_sessions").await, Some(10.0));
    let handshake_calls = view.calls();

    let window = Duration::from_millis(3_500);
    tokio::time::sleep(window).await;
    let checks = view.calls() - handshake_calls;
    println!("{checks} re-validation calls in {window:?} for 1,000 sockets on 10 sessions");
    assert!((10..=40).contains(&checks), "{checks} checks");
    for session in 0..10 {
        let times = view.calls_about(&format!("s{session}"));
        for pair in times.windows(2).skip(1) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(950),
                "session s{session} checked twice within an interval: {times:?}"
            );
        }
    }

    view.log_out("s3");
    let started = Instant::now();
    let (logged_out, others): (Vec<_>, Vec<_>) = sockets
        .into_iter()
        .partition(|(sessionid, _)| sessionid == "s3");
    for (_, mut socket) in logged_out {
        let (code, reason) = socket.expect_close().await;
        assert_eq!(code, 4001, "{reason}");
    }
    println!(
        "a dead session's 100 sockets closed {:?} after the logout",
        started.elapsed()
    );
    let mut others: Vec<Client> = others.into_iter().map(|(_, socket)| socket).collect();
    for socket in others.iter_mut().step_by(50) {
        let pong = socket.request(json!({"action": "ping"}), 1).await;
        assert_eq!(pong["type"], "pong");
    }
    assert_eq!(server.metric("switchboard_sessions").await, Some(9.0));
    assert!(
        server
            .metric("switchboard_revalidations_total{authenticator=\"introspect\",result=\"dead\"}")
            .await
            == Some(1.0)
    );
}

#[tokio::test]
async fn a_back_end_outage_keeps_sockets_open_for_the_grace_then_closes_them() {
    let view = DjangoView::start();
    view.log_in("abc", "42", json!({}));
    let server = TestServer::start(&introspect_config(
        &view,
        "revalidate_interval = \"300ms\"\nrevalidate_grace = \"2s\"",
    ))
    .await;
    let mut socket = with_cookie(&server, "abc").await.expect("accepted");
    assert_eq!(socket.recv().await["type"], "welcome");
    view.set_mode(Mode::Failing);
    let outage = Instant::now();
    // Fail-open: still served well into the grace.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let pong = socket.request(json!({"action": "ping"}), 1).await;
    assert_eq!(pong["type"], "pong");
    assert!(
        server
            .metric("switchboard_revalidations_total{authenticator=\"introspect\",result=\"unavailable\"}")
            .await
            .is_some_and(|count| count >= 1.0)
    );
    // Fail-closed once the grace is over.
    let (code, reason) = socket.expect_close().await;
    assert_eq!(code, 4001);
    assert!(reason.contains("re-validated"), "{reason}");
    assert!(outage.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        server
            .metric("switchboard_revalidations_total{authenticator=\"introspect\",result=\"failed_closed\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn redis_sessions_identify_the_user_and_a_deleted_session_closes_its_sockets() {
    let redis = RedisServer::start().await;
    redis
        .cli(&[
            "SET",
            "session:abc",
            r#"{"_auth_user_id": "42", "_auth_user_backend": "x"}"#,
        ])
        .await;
    redis
        .cli(&["SET", "session:nouser", r#"{"cart": [1]}"#])
        .await;
    let config = node_config(
        &redis.url(),
        "[auth]\nanonymous = false\nrevalidate_interval = \"300ms\"\n[auth.redis_session]\n",
    );
    let server = TestServer::start(&config).await;
    server.wait_for_readiness(200).await;

    // What Django's stock cache sessions hold: a pickled dict, not UTF-8, not JSON. Unreadable
    // is a visitor (401), not a Redis failure (503).
    let pickled = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '\\200\\004\\225\\021\\000}}' | redis-cli -u {} -x SET session:pickled",
            redis.url()
        ))
        .output()
        .expect("redis-cli");
    assert!(pickled.status.success());

    let mut socket = with_cookie(&server, "abc").await.expect("session found");
    let welcome = socket.recv().await;
    assert_eq!(welcome["user"], "42");
    for stale in ["missing", "nouser", "pickled"] {
        let refused = with_cookie(&server, stale).await.err().expect("no user");
        assert_eq!(refused.status, 401, "{stale}");
    }

    redis.cli(&["DEL", "session:abc"]).await;
    let (code, _) = socket.expect_close().await;
    assert_eq!(code, 4001);
    assert_eq!(
        server
            .metric(
                "switchboard_revalidations_total{authenticator=\"redis_session\",result=\"dead\"}"
            )
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn redis_sessions_refuse_with_503_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    redis
        .cli(&["SET", "session:abc", r#"{"_auth_user_id": 42}"#])
        .await;
    let server = TestServer::start(&format!(
        "[auth]\nanonymous = false\n[auth.redis_session]\nurl = \"{}\"\n",
        redis.url()
    ))
    .await;
    // The node connects to the session store in the background.
    let mut socket = accepted_within(&server, "abc").await;
    assert_eq!(socket.recv().await["user"], "42");
    redis.kill().await;
    let mut refused = None;
    for _ in 0..50 {
        match with_cookie(&server, "abc").await {
            Err(refusal) => {
                refused = Some(refusal);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let refused = refused.expect("refused while redis is down");
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (503, &json!("unavailable"))
    );
    redis.restart().await;
    // The restarted Redis kept nothing (no persistence in tests): the back end logs in again.
    redis
        .cli(&["SET", "session:abc", r#"{"_auth_user_id": 42}"#])
        .await;
    let mut again = accepted_within(&server, "abc").await;
    assert_eq!(again.recv().await["user"], "42");
}

/// Two nodes on `redis` that accept only tokens signed by the returned key.
async fn jwt_nodes(redis: &RedisServer, algorithm: Algorithm) -> (KeyPair, Vec<TestServer>) {
    let key = KeyPair::generate(algorithm);
    let config = format!("[auth]\nanonymous = false\n{}", jwt_section(&key, ""));
    let nodes = nodes(redis, 2, &config).await;
    (key, nodes)
}

/// Retries a handshake with session cookie `sessionid` until it is accepted (10 s at most).
async fn accepted_within(server: &TestServer, sessionid: &str) -> Client {
    for _ in 0..100 {
        if let Ok(client) = with_cookie(server, sessionid).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session {sessionid} never accepted");
}

#[tokio::test]
async fn control_disconnects_close_a_users_or_sessions_sockets_on_every_node_at_once() {
    let redis = RedisServer::start().await;
    let (key, nodes) = jwt_nodes(&redis, Algorithm::RS256).await;
    let token = |user: &str, sid: &str| {
        let mut token_claims = claims(user, 600);
        token_claims["sid"] = json!(sid);
        key.sign(&token_claims, None)
    };
    let connect = |node: &TestServer, token: String| {
        let url = node.ws_url(&format!("/ws?token={token}"));
        async move {
            let mut client = Client::connect(&url, &[]).await.expect("accepted");
            assert_eq!(client.recv().await["type"], "welcome");
            client
        }
    };
    let mut logged_out = Vec::new();
    let mut bystanders = Vec::new();
    for node in &nodes {
        logged_out.push(connect(node, token("42", "phone")).await);
        logged_out.push(connect(node, token("42", "laptop")).await);
        bystanders.push(connect(node, token("43", "other")).await);
    }
    let backend = redis.client().await;

    // The logout recipe: one PUBLISH from the back end.
    let started = Instant::now();
    let receivers = backend
        .publish(
            "sb:control",
            json!({"op": "disconnect", "user": "42"}).to_string(),
        )
        .await;
    assert_eq!(receivers, 2, "both nodes listen on the control channel");
    for socket in &mut logged_out {
        let (code, _) = socket.expect_close().await;
        assert_eq!(code, 4002);
    }
    let elapsed = started.elapsed();
    println!("a logout closed 4 sockets on 2 nodes in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    for socket in &mut bystanders {
        let pong = socket.request(json!({"action": "ping"}), 1).await;
        assert_eq!(pong["type"], "pong");
    }

    // By session: only the sockets of that session, with the given code and reason.
    let mut phone = Vec::new();
    let mut laptop = Vec::new();
    for node in &nodes {
        phone.push(connect(node, token("44", "phone-44")).await);
        laptop.push(connect(node, token("44", "laptop-44")).await);
    }
    backend
        .publish(
            "sb:control",
            json!({"op": "disconnect", "session": "phone-44", "code": 4003, "reason": "device removed"})
                .to_string(),
        )
        .await;
    for socket in &mut phone {
        assert_eq!(
            socket.expect_close().await,
            (4003, "device removed".to_owned())
        );
    }
    for socket in &mut laptop {
        let pong = socket.request(json!({"action": "ping"}), 2).await;
        assert_eq!(pong["type"], "pong");
    }
}

#[tokio::test]
async fn a_back_end_reaches_every_socket_of_a_user_on_every_node() {
    let redis = RedisServer::start().await;
    let (key, nodes) = jwt_nodes(&redis, Algorithm::EdDSA).await;
    let mut user_sockets = Vec::new();
    let mut others = Vec::new();
    for node in &nodes {
        for (user, sockets) in [("42", &mut user_sockets), ("43", &mut others)] {
            let bearer = format!("Bearer {}", key.sign(&claims(user, 600), None));
            let mut client = Client::connect(&node.ws_url("/ws"), &[("Authorization", &bearer)])
                .await
                .expect("accepted");
            assert_eq!(client.recv().await["type"], "welcome");
            sockets.push(client);
        }
    }
    let backend = redis.client().await;
    backend
        .publish(
            "sb:user:42",
            json!({"data": {"notice": "your export is ready"}}).to_string(),
        )
        .await;
    for socket in &mut user_sockets {
        assert_eq!(
            socket.recv().await,
            json!({"type": "message", "data": {"notice": "your export is ready"}})
        );
    }
    for socket in &mut others {
        assert_eq!(socket.recv_within(Duration::from_millis(300)).await, None);
    }
}
