//! `[limits]` across the cluster: connections per user and per client address held across two
//! nodes on one Redis, a SIGKILLed node's sockets no longer counting once its registry entry
//! expires, a Redis restarted empty getting the counts back, IPv6 addresses counted per prefix
//! behind a trusted proxy, and the handshake rate per address.

use std::time::Duration;

use crate::support::credentials::{claims, hs256};
use crate::support::redis::{RedisServer, node_config};
use crate::support::{Client, Refused, TestServer, WAIT};

const SECRET: &[u8] = b"limits-test-secret-of-at-least-32-bytes";

fn config(redis: &RedisServer, limits: &str) -> String {
    node_config(
        &redis.url(),
        &format!(
            "[roster]\nnode_ttl = \"1s\"\n[auth]\nanonymous = false\n[auth.jwt]\nsecret = {:?}\n[limits]\n{limits}\n",
            String::from_utf8_lossy(SECRET)
        ),
    )
}

async fn open(
    server: &TestServer,
    user: &str,
    forwarded_for: Option<&str>,
) -> Result<Client, Refused> {
    let bearer = format!("Bearer {}", hs256(&claims(user, 600), SECRET));
    let mut headers = vec![("Authorization", bearer.as_str())];
    if let Some(address) = forwarded_for {
        headers.push(("X-Forwarded-For", address));
    }
    let mut client = Client::connect(&server.ws_url("/ws"), &headers).await?;
    assert_eq!(client.recv().await["type"], "welcome");
    Ok(client)
}

fn assert_over(result: Result<Client, Refused>, key: &str) {
    let refused = result.err().expect("refused");
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "too_many_connections");
    let reason = refused.body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(key), "{reason}");
}

/// Waits until `user` can open a socket on `server` again.
async fn opens_eventually(server: &TestServer, user: &str, forwarded_for: Option<&str>) -> Client {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(client) = open(server, user, forwarded_for).await {
            return client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} never admitted again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_per_user_limit_holds_across_nodes_and_a_killed_nodes_sockets_stop_counting() {
    let redis = RedisServer::start().await;
    let config = config(&redis, "max_connections_per_user = 2");
    let (mut a, b) = (
        TestServer::start(&config).await,
        TestServer::start(&config).await,
    );
    a.wait_for_readiness(200).await;
    b.wait_for_readiness(200).await;
    let on_a = open(&a, "ann", None).await.expect("first, node a");
    let on_b = open(&b, "ann", None).await.expect("second, node b");
    assert_over(open(&a, "ann", None).await, "max_connections_per_user");
    assert_over(open(&b, "ann", None).await, "max_connections_per_user");
    assert!(
        open(&b, "bob", None).await.is_ok(),
        "another user is not counted with ann"
    );
    assert_eq!(
        b.metric("switchboard_limit_refusals_total{limit=\"per_user\"}")
            .await,
        Some(1.0)
    );
    // A closed socket gives its place back, on the other node too.
    drop(on_b);
    let again = opens_eventually(&a, "ann", None).await;
    assert_over(open(&b, "ann", None).await, "max_connections_per_user");
    // Node a dies with both of ann's sockets: within node_ttl they no longer count.
    a.child.kill().await.expect("kill node a");
    drop((on_a, again));
    let first = opens_eventually(&b, "ann", None).await;
    let _second = open(&b, "ann", None).await.expect("both places are free");
    assert_over(open(&b, "ann", None).await, "max_connections_per_user");
    drop(first);
}

#[tokio::test]
async fn a_redis_restarted_empty_gets_the_counts_back() {
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(&config(&redis, "max_connections_per_user = 2")).await;
    server.wait_for_readiness(200).await;
    let _held = [
        open(&server, "ann", None).await.expect("first"),
        open(&server, "ann", None).await.expect("second"),
    ];
    redis.restart().await;
    server.wait_for_readiness(200).await;
    // The node wrote its counts again: ann's third socket is still one too many, and so it
    // stays once the node's own count is the only one that could say so.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let keys = redis
            .cli(&["HGETALL", "{sb:reg:nodes}:limit:user:ann"])
            .await;
        if keys.lines().any(|line| line.trim() == "2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counts not restored: {keys}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_over(open(&server, "ann", None).await, "max_connections_per_user");
}

#[tokio::test]
async fn addresses_count_behind_trusted_proxies_and_ipv6_per_prefix() {
    let redis = RedisServer::start().await;
    let config = config(
        &redis,
        "max_connections_per_ip = 2\nipv6_prefix = 64\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    let (a, b) = (
        TestServer::start(&config).await,
        TestServer::start(&config).await,
    );
    a.wait_for_readiness(200).await;
    b.wait_for_readiness(200).await;
    // One /64 is one household: two addresses in it share its limit, across nodes.
    let _one = open(&a, "u1", Some("2001:db8:1:2::10"))
        .await
        .expect("first of the /64");
    let _two = open(&b, "u2", Some("2001:db8:1:2:ffff::20"))
        .await
        .expect("second");
    assert_over(
        open(&a, "u3", Some("2001:db8:1:2::30")).await,
        "max_connections_per_ip",
    );
    let _other = open(&a, "u4", Some("2001:db8:1:3::10"))
        .await
        .expect("another /64");
    // The client's own claim left of the proxy's hop does not count; the proxy's hop does.
    let _v4 = open(&b, "u5", Some("203.0.113.7")).await.expect("v4");
    let _v4b = open(&a, "u6", Some("198.51.100.1, 203.0.113.7"))
        .await
        .expect("same v4");
    assert_over(
        open(&b, "u7", Some("203.0.113.7")).await,
        "max_connections_per_ip",
    );
    assert_eq!(
        a.metric("switchboard_limit_refusals_total{limit=\"per_ip\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_untrusted_peers_header_is_ignored_and_the_handshake_rate_is_per_address() {
    // No trusted proxy: every test socket comes from 127.0.0.1, whatever it claims.
    let server = TestServer::start(
        "[limits]\nmax_connections_per_ip = 3\nhandshake_rate_per_ip = 1\nhandshake_burst_per_ip = 5\n",
    )
    .await;
    let url = server.ws_url("/ws");
    let mut held = Vec::new();
    for address in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        held.push(
            Client::connect(&url, &[("X-Forwarded-For", address)])
                .await
                .expect("within the limit"),
        );
    }
    let refused = Client::connect(&url, &[("X-Forwarded-For", "192.0.2.4")])
        .await
        .err()
        .expect("the peer is the client");
    assert_eq!(refused.status, 429);
    drop(held);
    // The burst of five is spent within a few more handshakes (one a second refill): then the
    // rate refuses, whatever the count.
    let mut by_rate = None;
    for _ in 0..10 {
        if let Err(refused) = Client::connect(&url, &[]).await {
            assert_eq!(refused.status, 429);
            let reason = refused.body["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if reason.contains("handshake_rate_per_ip") {
                by_rate = Some(reason);
                break;
            }
        }
    }
    assert!(by_rate.is_some(), "the handshake rate never refused");
    assert_eq!(
        server
            .metric("switchboard_limit_refusals_total{limit=\"handshake_rate\"}")
            .await,
        Some(1.0)
    );
}
