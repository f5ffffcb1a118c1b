//! Redis faults: a node started before Redis, and Redis killed and restarted under running nodes.
//! The nodes degrade (not ready, `backend_unavailable`) and recover by themselves.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::multinode::{nodes, nodes_at};
use crate::support::redis::{RedisSentinel, RedisServer, free_port, node_config};
use crate::support::{Client, TestServer};

/// Asks `client` to publish to `channel` and returns the answer frame.
async fn publish(client: &mut Client, channel: &str, id: u64) -> serde_json::Value {
    client
        .request(
            json!({"action": "publish", "channel": channel, "data": id}),
            id,
        )
        .await
}

#[tokio::test]
async fn a_node_started_without_redis_refuses_handshakes_with_503_until_its_broker_is_ready() {
    let port = free_port();
    let node = TestServer::start(&node_config(&format!("redis://127.0.0.1:{port}"), "")).await;
    assert_eq!(node.get("/healthz").await.0, 200, "alive without redis");
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker_unavailable"), "{body}");

    // A node that cannot serve takes no sockets: 503 with Retry-After, so a balancer or the
    // client tries again (another node, or this one shortly).
    let response = reqwest::Client::new()
        .get(node.url("/ws"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("handshake");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "unavailable", "{body}");

    let redis = RedisServer::start_on(port, false).await;
    node.wait_for_readiness(200).await;
    let mut client = node.client().await;
    let joined = client
        .request(json!({"action": "join", "channel": "room"}), 3)
        .await;
    assert_eq!(joined["type"], "reply", "{joined}");
    redis
        .client()
        .await
        .publish("sb:ch:room", json!({"data": "hello"}).to_string())
        .await;
    assert_eq!(client.recv().await["data"], "hello");
}

#[tokio::test]
async fn after_redis_restarts_every_subscription_is_restored_and_delivery_resumes_within_5s() {
    let mut redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, "").await;
    let mut members = vec![
        nodes[0].client_in(&["room", "other"]).await,
        nodes[1].client_in(&["room"]).await,
    ];
    let mut publisher = nodes[0].client().await;

    redis.kill().await;
    for node in &nodes {
        node.wait_for_readiness(503).await;
        node.wait_for_metric("switchboard_broker_up", 0.0).await;
    }
    let refused = publish(&mut publisher, "room", 1).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "backend_unavailable", "{refused}");
    // Sockets open before the outage stay open; a join that needs a new subscription is refused
    // (retry later), one to a channel the node already holds succeeds.
    let refused = publisher
        .request(json!({"action": "join", "channel": "brand-new"}), 2)
        .await;
    assert_eq!(refused["code"], "backend_unavailable", "{refused}");
    let joined = publisher
        .request(json!({"action": "join", "channel": "room"}), 3)
        .await;
    assert_eq!(joined["type"], "reply", "{joined}");

    redis.restart().await;
    let restarted = Instant::now();
    let backend = redis.client().await;
    // Publish until both nodes deliver again; nothing published before the restart may appear.
    let mut resumed = [false, false];
    // Numbered from 1000, apart from the refused publish's data (1).
    let mut attempt = 1_000;
    while resumed != [true, true] {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "delivery did not resume within 5 s of the restart (resumed: {resumed:?})"
        );
        attempt += 1;
        backend
            .publish("sb:ch:room", json!({"data": attempt}).to_string())
            .await;
        for (member, done) in members.iter_mut().zip(resumed.iter_mut()) {
            while let Some(frame) = member.recv_within(Duration::from_millis(100)).await {
                assert_eq!(frame["channel"], "room", "{frame}");
                assert_ne!(frame["data"], 1, "the refused publish was not sent later");
                *done = true;
            }
        }
    }
    eprintln!(
        "delivery resumed {:?} after the restart",
        restarted.elapsed()
    );

    // No subscription was lost: each node holds its channels again, and clients publish.
    assert_eq!(backend.numsub("sb:ch:room").await, 2);
    assert_eq!(backend.numsub("sb:ch:other").await, 1);
    for node in &nodes {
        node.wait_for_readiness(200).await;
        assert!(
            node.metric("switchboard_broker_reconnects_total{client=\"subscriber\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        );
    }
    // The Redis series exist once they have a value (decode errors: see multinode.rs).
    let metrics = nodes[0].metrics().await;
    for name in switchboard::metrics::REDIS_ONLY {
        if name != switchboard::metrics::BROKER_DECODE_ERRORS {
            assert!(metrics.contains(name), "{name} missing:\n{metrics}");
        }
    }
    let answer = publish(&mut publisher, "room", 99).await;
    assert_eq!(answer["type"], "reply", "{answer}");
    for member in &mut members {
        loop {
            let frame = member.recv().await;
            if frame["data"] == 99 {
                break;
            }
        }
    }
}

/// Readiness is a pub/sub round trip, not a PING: with publishes paused (`CLIENT PAUSE … WRITE`
/// blocks `PUBLISH` while `PING` still answers) the node turns not ready, and ready again after.
#[tokio::test]
async fn readiness_follows_the_pub_sub_round_trip_not_just_the_connection() {
    let redis = RedisServer::start().await;
    let node = &nodes(&redis, 1, "").await[0];
    let paused_at = Instant::now();
    redis.cli(&["CLIENT", "PAUSE", "5000", "WRITE"]).await;
    assert_eq!(redis.cli(&["PING"]).await.trim(), "PONG");
    node.wait_for_readiness(503).await;
    assert!(
        paused_at.elapsed() < Duration::from_secs(5),
        "noticed during the pause"
    );
    assert_eq!(node.get("/healthz").await.0, 200, "alive all along");
    node.wait_for_readiness(200).await;
}

#[tokio::test]
async fn a_password_in_the_url_authenticates_and_a_wrong_one_leaves_the_node_not_ready() {
    let redis = RedisServer::start_with_password("s3cret").await;
    let good = &nodes(&redis, 1, "").await[0];
    let mut member = good.client_in(&["room"]).await;
    redis
        .client()
        .await
        .publish("sb:ch:room", json!({"data": "authenticated"}).to_string())
        .await;
    assert_eq!(member.recv().await["data"], "authenticated");

    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let refused = TestServer::start_logged(&node_config(&wrong, "")).await;
    // The operator is told why, once per client, not once per retry.
    refused.wait_for_log("WRONGPASS").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = refused.log();
    // Publisher, subscriber and registry clients: one warning each.
    assert_eq!(log.matches("cannot connect to redis").count(), 3, "{log}");
    assert!(!log.contains(":wrong@"), "no password in the log");
    assert_eq!(refused.readiness().await, 503);
    assert_eq!(
        refused.get("/healthz").await.0,
        200,
        "keeps serving, keeps retrying"
    );
}

#[tokio::test]
async fn a_rediss_url_with_a_private_ca_connects_over_tls() {
    let redis = RedisServer::start_tls().await;
    let ca = redis.tls_ca.as_ref().expect("ca").display().to_string();
    let node = TestServer::start(&node_config(
        &redis.url(),
        &format!("tls_ca_file = {ca:?}\n"),
    ))
    .await;
    node.wait_for_readiness(200).await;
    let mut member = node.client_in(&["room"]).await;
    redis
        .cli(&["PUBLISH", "sb:ch:room", r#"{"data": "over tls"}"#])
        .await;
    assert_eq!(member.recv().await["data"], "over tls");

    // Trusting the system's CAs instead, the test CA's certificate is refused.
    let untrusting = TestServer::start_logged(&node_config(&redis.url(), "")).await;
    untrusting.wait_for_log("cannot connect to redis").await;
    assert_eq!(untrusting.readiness().await, 503);
}

/// Redis Sentinel: the node finds the primary through the sentinel, and when the primary dies
/// and the sentinel promotes the replica, the node follows and delivery resumes.
#[tokio::test]
async fn with_sentinel_the_node_follows_a_failover_to_the_promoted_replica() {
    let mut redis = RedisSentinel::start().await;
    let node = &nodes_at(&redis.url(), 1).await[0];
    let mut member = node.client_in(&["room"]).await;
    redis
        .primary
        .client()
        .await
        .publish("sb:ch:room", json!({"data": "before"}).to_string())
        .await;
    assert_eq!(member.recv().await["data"], "before");

    redis.primary.kill().await;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    while !redis.failed_over().await {
        assert!(Instant::now() < deadline, "the sentinel did not fail over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = redis.replica.client().await;
    let mut attempt = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "delivery did not resume after the failover"
        );
        attempt += 1;
        promoted
            .publish("sb:ch:room", json!({"data": attempt}).to_string())
            .await;
        if member
            .recv_within(Duration::from_millis(200))
            .await
            .is_some()
        {
            break;
        }
    }
    eprintln!(
        "delivery resumed {:?} after the primary died",
        killed.elapsed()
    );
    node.wait_for_readiness(200).await;
}
