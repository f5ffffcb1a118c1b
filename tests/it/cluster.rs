//! Redis Cluster: three masters started by the test, two nodes with `cluster = true`. Channel
//! traffic uses sharded pub/sub; control operations still reach every node; the connection
//! registry (per-node keys in one slot each) answers across the cluster.

use serde_json::json;

use crate::multinode::members_in;
use crate::support::TestServer;
use crate::support::redis::{RedisClient, RedisCluster, node_config};

#[tokio::test]
async fn with_redis_cluster_channel_traffic_uses_sharded_pub_sub_across_nodes() {
    let cluster = RedisCluster::start().await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let extra = "cluster = true\n[api]\nkey = \"k\"\n";
        let node = TestServer::start(&node_config(&cluster.url(), extra)).await;
        node.wait_for_readiness(200).await;
        nodes.push(node);
    }
    // Channels in different hash slots, hence (most likely) on different masters.
    let channels = ["room:a", "room:b", "room:c", "room:d"];
    let mut members = members_in(&nodes, &channels).await;

    let mut publisher = nodes[0].client().await;
    for (id, channel) in channels.iter().enumerate() {
        let reply = publisher
            .request(
                json!({"action": "publish", "channel": channel, "data": id}),
                id as u64 + 1,
            )
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
    }
    for member in &mut members {
        let mut received: Vec<(String, u64)> = Vec::new();
        for _ in channels {
            let frame = member.recv().await;
            received.push((
                frame["channel"].as_str().expect("channel").to_owned(),
                frame["data"].as_u64().expect("data"),
            ));
        }
        received.sort();
        let expected: Vec<(String, u64)> = channels
            .iter()
            .enumerate()
            .map(|(id, channel)| ((*channel).to_owned(), id as u64))
            .collect();
        assert_eq!(received, expected);
    }

    // A back-end publishes with SPUBLISH.
    let backend = RedisClient::connect(&cluster.url(), true).await;
    assert_eq!(
        backend
            .spublish("sb:ch:room:a", json!({"data": "sharded"}).to_string())
            .await,
        2
    );
    for member in &mut members {
        assert_eq!(member.recv().await["data"], "sharded");
    }

    // Every node's subscription is a shard subscription on the channel's master, none classic.
    for channel in channels {
        let redis_channel = format!("sb:ch:{channel}");
        let mut shard_subscribers = 0;
        for master in &cluster.nodes {
            let answer = master.cli(&["PUBSUB", "SHARDNUMSUB", &redis_channel]).await;
            shard_subscribers += answer
                .lines()
                .nth(1)
                .and_then(|count| count.trim().parse::<u32>().ok())
                .expect("SHARDNUMSUB count");
        }
        assert_eq!(shard_subscribers, 2, "{redis_channel}");
    }

    // The connection registry works across the cluster's slots: each node's part is one slot.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let answer: serde_json::Value = reqwest::Client::new()
            .get(nodes[1].url("/api/channels?prefix=room:"))
            .bearer_auth("k")
            .send()
            .await
            .expect("api")
            .json()
            .await
            .expect("json");
        let counts: Vec<u64> = answer["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry["connections"].as_u64())
            .collect();
        if counts == [2, 2, 2, 2] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "registry never showed both members: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Control operations travel by classic pub/sub, which the cluster broadcasts.
    let (mut target, id) = nodes[1].identified_client().await;
    backend
        .publish(
            "sb:control",
            json!({"op": "disconnect", "connection": id}).to_string(),
        )
        .await;
    assert_eq!(target.expect_close().await.0, 4002);
}

#[tokio::test]
async fn connection_limits_hold_across_nodes_on_redis_cluster() {
    // The limit keys share the registry key's slot (its name is their hash tag), so the check
    // script may read both under Cluster.
    let cluster = RedisCluster::start().await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let extra = "cluster = true\n[limits]\nmax_connections_per_ip = 2\n";
        let node = TestServer::start(&node_config(&cluster.url(), extra)).await;
        node.wait_for_readiness(200).await;
        nodes.push(node);
    }
    let _first = nodes[0].client().await;
    let _second = nodes[1].client().await;
    for node in &nodes {
        let refused = crate::support::Client::connect(&node.ws_url("/ws"), &[])
            .await
            .err()
            .expect("over the per-address limit");
        assert_eq!(refused.status, 429, "{:?}", refused.body);
    }
    assert_eq!(
        nodes[0].metric("switchboard_limit_degraded_total").await,
        Some(0.0),
        "decided by the cluster, not alone"
    );
}
