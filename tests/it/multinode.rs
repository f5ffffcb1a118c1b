//! Several nodes, in separate processes, sharing one real `redis-server` started by the test:
//! cross-node fan-out, back-ends publishing with plain Redis, one subscription per channel per
//! node, control operations, ordering, and invalid payloads.

use serde_json::json;

use crate::lifecycle::{TEN_THOUSAND_CHANNELS, join_and_leave_ten_thousand_channels};
use crate::support::redis::{RedisServer, node_config};
use crate::support::{Client, TestServer};

/// `count` nodes using `redis`, each with `extra` config, all ready.
pub async fn nodes(redis: &RedisServer, count: usize, extra: &str) -> Vec<TestServer> {
    nodes_with(&redis.url(), count, extra).await
}

/// `count` nodes using the Redis at `url`, all ready.
pub async fn nodes_at(url: &str, count: usize) -> Vec<TestServer> {
    nodes_with(url, count, "").await
}

/// One client per node, each joined to `channels`.
pub async fn members_in(nodes: &[TestServer], channels: &[&str]) -> Vec<Client> {
    let mut members = Vec::new();
    for node in nodes {
        members.push(node.client_in(channels).await);
    }
    members
}

async fn nodes_with(url: &str, count: usize, extra: &str) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(TestServer::start(&node_config(url, extra)).await);
    }
    for node in &nodes {
        node.wait_for_readiness(200).await;
    }
    nodes
}

#[tokio::test]
async fn a_publication_on_any_node_reaches_members_on_every_node() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 3, "").await;
    let mut members = members_in(&nodes, &["room:1"]).await;
    for (index, node) in nodes.iter().enumerate() {
        let mut publisher = node.client().await;
        let reply = publisher
            .request(
                json!({"action": "publish", "channel": "room:1", "data": {"from_node": index}}),
                1,
            )
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
        for member in &mut members {
            let message = member.recv().await;
            assert_eq!(
                message,
                json!({"type": "message", "channel": "room:1", "data": {"from_node": index}})
            );
        }
    }
}

#[tokio::test]
async fn back_ends_reach_clients_on_every_node_with_a_plain_publish() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, "").await;
    let mut members = members_in(&nodes, &["room:1"]).await;
    let backend = redis.client().await;
    // JSON, exactly as PROTOCOL.md's Django one-liner sends it.
    let reached = backend
        .publish("sb:ch:room:1", json!({"data": {"text": "hi"}}).to_string())
        .await;
    assert_eq!(reached, 2, "one subscriber per node");
    // MessagePack, with a sender.
    let packed = rmp_serde::to_vec_named(&json!({"data": [1, 2], "from": "worker"})).expect("pack");
    backend.publish("sb:ch:room:1", packed).await;
    for member in &mut members {
        assert_eq!(
            member.recv().await,
            json!({"type": "message", "channel": "room:1", "data": {"text": "hi"}})
        );
        assert_eq!(
            member.recv().await,
            json!({"type": "message", "channel": "room:1", "data": [1, 2], "from": "worker"})
        );
    }
}

#[tokio::test]
async fn each_node_holds_one_redis_subscription_per_channel_however_many_members_join() {
    let redis = RedisServer::start().await;
    let backend = redis.client().await;
    let nodes = nodes(&redis, 2, "").await;
    let mut crowd = Vec::new();
    for _ in 0..20 {
        crowd.push(nodes[0].client_in(&["big"]).await);
    }
    let lone = nodes[1].client_in(&["big"]).await;
    assert_eq!(backend.numsub("sb:ch:big").await, 2);
    drop(crowd);
    drop(lone);
    for node in &nodes {
        node.wait_for_metric("switchboard_broker_subscriptions", 0.0)
            .await;
    }
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while backend.numsub("sb:ch:big").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ten_thousand_joins_and_leaves_take_a_few_subscribe_and_unsubscribe_commands() {
    let redis = RedisServer::start().await;
    let backend = redis.client().await;
    let node = &nodes(&redis, 1, TEN_THOUSAND_CHANNELS).await[0];
    let subscribes_before = backend.calls("subscribe").await;
    let unsubscribes_before = backend.calls("unsubscribe").await;
    join_and_leave_ten_thousand_channels(node).await;
    let subscribes = backend.calls("subscribe").await - subscribes_before;
    // 20 windows of 500 joins; each window costs at most a few rounds.
    assert!(
        subscribes <= 200,
        "10,000 joins took {subscribes} SUBSCRIBE commands"
    );
    let unsubscribes = backend.calls("unsubscribe").await - unsubscribes_before;
    assert!(
        unsubscribes <= 200,
        "10,000 leaves took {unsubscribes} UNSUBSCRIBE commands"
    );
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while !backend.channels("sb:ch:*").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "channels left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn messages_from_one_publisher_arrive_in_order_on_every_node() {
    let redis = RedisServer::start().await;
    let nodes = nodes(
        &redis,
        3,
        "[server]\nrate_limit = 10000\nrate_limit_burst = 10000\n",
    )
    .await;
    let mut members = members_in(&nodes, &["ordered"]).await;
    let mut publisher = nodes[0].client().await;
    const MESSAGES: u64 = 1_000;
    for n in 0..MESSAGES {
        publisher
            .send(json!({"action": "publish", "channel": "ordered", "data": n}))
            .await;
    }
    for member in &mut members {
        for n in 0..MESSAGES {
            assert_eq!(member.recv().await["data"], n);
        }
    }
}

#[tokio::test]
async fn a_control_disconnect_closes_the_named_connection_on_whichever_node_holds_it() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, "").await;
    let backend = redis.client().await;
    let (mut first, first_id) = nodes[1].identified_client().await;
    let (mut second, second_id) = nodes[0].identified_client().await;
    let mut bystanders = vec![nodes[0].client().await, nodes[1].client().await];

    backend
        .publish(
            "sb:control",
            json!({"op": "disconnect", "connection": first_id}).to_string(),
        )
        .await;
    assert_eq!(first.expect_close().await, (4002, "logged out".to_owned()));

    // A custom code and reason.
    backend
        .publish(
            "sb:control",
            json!({"op": "disconnect", "connection": second_id, "code": 4003, "reason": "banned"})
                .to_string(),
        )
        .await;
    assert_eq!(second.expect_close().await, (4003, "banned".to_owned()));

    // An invalid op is counted and closes nothing.
    backend
        .publish("sb:control", r#"{"op": "disconnect"}"#)
        .await;
    nodes[0]
        .wait_for_metric(
            "switchboard_broker_decode_errors_total{kind=\"control\"}",
            1.0,
        )
        .await;
    for client in &mut bystanders {
        let pong = client.request(json!({"action": "ping"}), 9).await;
        assert_eq!(pong["type"], "pong");
    }
    for node in &nodes {
        node.wait_for_metric("switchboard_control_disconnects_total", 1.0)
            .await;
    }
}

#[tokio::test]
async fn an_invalid_envelope_is_counted_logged_once_and_dropped() {
    let redis = RedisServer::start().await;
    let node = TestServer::start_logged(&node_config(&redis.url(), "")).await;
    node.wait_for_readiness(200).await;
    let mut member = node.client_in(&["room"]).await;
    let backend = redis.client().await;
    for payload in [
        &b"not an envelope"[..],
        b"{\"text\": \"no data field\"}",
        b"\xc1",
    ] {
        backend.publish("sb:ch:room", payload).await;
    }
    backend
        .publish("sb:ch:room", json!({"data": "valid"}).to_string())
        .await;
    assert_eq!(
        member.recv().await["data"],
        "valid",
        "nothing invalid arrived first"
    );
    node.wait_for_metric(
        "switchboard_broker_decode_errors_total{kind=\"channel\"}",
        3.0,
    )
    .await;
    let log = node.log();
    let warnings = log
        .lines()
        .filter(|line| line.contains("not a valid envelope") && line.contains("sb:ch:room"))
        .count();
    assert_eq!(warnings, 1, "logged once per channel:\n{log}");
}

/// The commands of docs/scaling-out.md's "Publishing from a back end", with the test's Redis
/// port.
fn readme_publish_commands(redis: &RedisServer) -> Vec<String> {
    let readme = include_str!("../../docs/scaling-out.md");
    let port = redis.port.to_string();
    let commands: Vec<String> = readme
        .lines()
        .filter(|line| {
            line.starts_with("redis-cli PUBLISH") || line.starts_with("python3 examples/publish.py")
        })
        .map(|line| {
            line.replacen("redis-cli ", &format!("redis-cli -p {port} "), 1)
                .replace("redis://127.0.0.1:6379", &redis.url())
        })
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "the guide shows a redis-cli and a Python publisher"
    );
    commands
}

#[tokio::test]
async fn the_readme_publishers_reach_clients_on_every_node() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, "").await;
    let mut members = members_in(&nodes, &["room:1"]).await;
    for command in readme_publish_commands(&redis) {
        crate::support::shell(&command).await;
    }
    for member in &mut members {
        assert_eq!(
            member.recv().await,
            json!({"type": "message", "channel": "room:1", "data": {"text": "hello from redis-cli"}})
        );
        assert_eq!(
            member.recv().await,
            json!({"type": "message", "channel": "room:1", "data": {"text": "hello from python"}})
        );
    }
}

/// The two-node tour of docs/scaling-out.md: Bob on one node, Alice on the other.
#[tokio::test]
async fn the_readme_tour_crosses_nodes() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, "").await;
    crate::cli::run_the_tour(&[nodes[0].ws_url("/ws"), nodes[1].ws_url("/ws")]).await;
}
