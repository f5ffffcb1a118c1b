//! Back-end integration, end to end: the server API and the CLI against two nodes sharing a
//! real Redis (cluster-wide answers), the connection registry losing a killed node's
//! connections by itself, presence events, and action routes and hooks calling a real HTTP
//! back end (an echoing view, one answering with instructions, a slow one, a failing one).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::multinode::nodes;
use crate::support::backend::DjangoRoutes;
use crate::support::redis::RedisServer;
use crate::support::{Client, TestServer, WAIT, binary};

const KEY: &str = "test-api-key";

/// Users come from an `X-User` header (a trusted gateway); `room:*` channels have presence.
fn identity_and_channels() -> String {
    format!(
        "[api]\nkey = \"{KEY}\"\n\
         [auth.gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\nuser_header = \"x-user\"\n\
         [[channels]]\npattern = \"room:*\"\njoin = \"anyone\"\npublish = \"authenticated\"\npresence = true\n\
         [[channels]]\npattern = \"*\"\njoin = \"anyone\"\npublish = \"anyone\"\n"
    )
}

/// A node config for the Redis nodes: a 1 s registry heartbeat lifetime, then `rest`.
fn redis_extra(rest: &str) -> String {
    format!("[roster]\nnode_ttl = \"1s\"\n{rest}")
}

/// `user`'s client on `node`, joined to `channels`, past its welcome; and its connection id.
async fn user_client(node: &TestServer, user: &str, channels: &[&str]) -> (Client, String) {
    let query: Vec<String> = channels
        .iter()
        .map(|channel| format!("channel={channel}"))
        .collect();
    let url = node.ws_url(&format!("/ws?{}", query.join("&")));
    let mut client = Client::connect(&url, &[("X-User", user)])
        .await
        .expect("connect");
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let id = welcome["connection_id"].as_str().expect("id").to_owned();
    (client, id)
}

async fn api_post(node: &TestServer, path: &str, body: Value) -> (u16, Value) {
    api_call(reqwest::Client::new().post(node.url(path)).json(&body)).await
}

async fn api_get(node: &TestServer, path_and_query: &str) -> (u16, Value) {
    api_call(reqwest::Client::new().get(node.url(path_and_query))).await
}

/// Sends an API request with the key; its status and JSON body.
async fn api_call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .bearer_auth(KEY)
        .timeout(WAIT)
        .send()
        .await
        .expect("api call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `GET path` until `accept` holds for the answer (the registry is written every 100 ms
/// and read from Redis), bounded by `WAIT`.
async fn api_get_until(node: &TestServer, path: &str, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = api_get(node, path).await;
        if status == 200 && accept(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never gave the expected answer: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(answer: &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|record| record["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The next frame of `type`, skipping others (presence events arrive interleaved).
async fn next_of_type(client: &mut Client, kind: &str) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

#[tokio::test]
async fn the_server_api_publishes_sends_lists_and_disconnects_across_two_nodes() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, &redis_extra(&identity_and_channels())).await;
    let (mut alice, alice_id) = user_client(&nodes[0], "alice", &["room:1"]).await;
    let joined = next_of_type(&mut alice, "presence").await;
    assert_eq!(
        joined,
        json!({"type": "presence", "channel": "room:1", "joined": {"user": "alice", "connection": alice_id}})
    );
    let (mut bob, bob_id) = user_client(&nodes[1], "bob", &["room:1"]).await;
    let bob_joined = next_of_type(&mut alice, "presence").await;
    assert_eq!(
        bob_joined["joined"]["user"], "bob",
        "alice, on the other node, hears bob join"
    );

    // Publish, to one channel and to several in one call, as the server (no `from`).
    let (status, answer) = api_post(
        &nodes[1],
        "/api/publish",
        json!({"channel": "room:1", "data": {"n": 1}}),
    )
    .await;
    assert_eq!((status, answer), (200, json!({"published": 1})));
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            next_of_type(client, "message").await,
            json!({"type": "message", "channel": "room:1", "data": {"n": 1}})
        );
    }
    let (status, answer) = api_post(
        &nodes[0],
        "/api/publish",
        json!({"channels": ["room:1", "elsewhere"], "data": 2}),
    )
    .await;
    assert_eq!((status, answer), (200, json!({"published": 2})));
    for client in [&mut alice, &mut bob] {
        assert_eq!(next_of_type(client, "message").await["data"], 2);
    }

    // Send to a user and to one connection, wherever they are.
    let (status, _) = api_post(
        &nodes[1],
        "/api/send",
        json!({"user": "alice", "data": "for alice"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_of_type(&mut alice, "message").await,
        json!({"type": "message", "data": "for alice"})
    );
    let (status, _) = api_post(
        &nodes[0],
        "/api/send",
        json!({"connection": bob_id, "data": "for bob"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_of_type(&mut bob, "message").await,
        json!({"type": "message", "data": "for bob"})
    );
    assert!(
        alice
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing else for alice"
    );

    // The registry answers for the cluster from either node.
    let in_room = api_get_until(&nodes[0], "/api/connections?channel=room:1", |answer| {
        ids(answer).len() == 2
    })
    .await;
    let mut expected = vec![alice_id.clone(), bob_id.clone()];
    expected.sort();
    assert_eq!(ids(&in_room), expected);
    assert_eq!(in_room["scope"], "cluster");
    let (_, bobs) = api_get(&nodes[0], "/api/connections?user=bob").await;
    let record = &bobs["connections"][0];
    assert_eq!(record["id"], bob_id.as_str());
    assert_eq!(record["channels"], json!(["room:1"]));
    assert_eq!(
        record["node"].as_str(),
        bob_id.get(2..10),
        "the node is the id's prefix"
    );
    assert!(record["connected_at"].as_u64().expect("connected_at") > 1_700_000_000);
    let (_, channels) = api_get(&nodes[1], "/api/channels?prefix=room:").await;
    assert_eq!(
        channels["channels"],
        json!([{"channel": "room:1", "connections": 2}])
    );
    let (_, presence) = api_get(&nodes[1], "/api/presence?channel=room:1").await;
    assert_eq!(
        presence,
        json!({"channel": "room:1", "connections": 2, "users": [
        {"user": "alice", "connections": 1}, {"user": "bob", "connections": 1}]})
    );
    let (_, limited) = api_get(&nodes[1], "/api/connections?limit=1").await;
    assert_eq!(
        (ids(&limited).len(), &limited["truncated"]),
        (1, &json!(true))
    );

    // Bad calls are refused with the field named.
    let cases = [
        ("/api/publish", json!({"channel": 5, "data": 1}), "channel"),
        ("/api/publish", json!({"channel": "room:1"}), "data"),
        (
            "/api/publish",
            json!({"channels": ["ok", ""], "data": 1}),
            "channels[1]",
        ),
        (
            "/api/send",
            json!({"user": "a", "connection": "c", "data": 1}),
            "user",
        ),
        (
            "/api/disconnect",
            json!({"user": "a", "code": 1006}),
            "code",
        ),
        ("/api/disconnect", json!({"nobody": "a"}), "nobody"),
    ];
    for (path, body, field) in cases {
        let (status, answer) = api_post(&nodes[0], path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["error"], "bad_request");
        assert!(
            answer["reason"].as_str().expect("reason").contains(field),
            "{path} {body}: {answer}"
        );
    }
    let (status, answer) = api_get(&nodes[0], "/api/presence?channel=elsewhere").await;
    assert_eq!(status, 400, "presence is off for that channel: {answer}");
    let unauthorized = reqwest::Client::new()
        .post(nodes[0].url("/api/publish"))
        .bearer_auth("wrong")
        .json(&json!({"channel": "room:1", "data": 1}))
        .send()
        .await
        .expect("call");
    assert_eq!(unauthorized.status().as_u16(), 401);

    // Disconnect a user on whichever node holds them; the others hear them leave.
    let (status, _) = api_post(
        &nodes[0],
        "/api/disconnect",
        json!({"user": "bob", "code": 4003, "reason": "bye"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(bob.expect_close().await, (4003, "bye".to_owned()));
    let left = next_of_type(&mut alice, "presence").await;
    assert_eq!(
        left,
        json!({"type": "presence", "channel": "room:1", "left": {"user": "bob", "connection": bob_id}})
    );
    api_get_until(&nodes[1], "/api/connections?channel=room:1", |answer| {
        ids(answer) == [alice_id.clone()]
    })
    .await;

    let metrics = nodes[0].metrics().await;
    for series in [
        "switchboard_api_requests_total{endpoint=\"publish\",status=\"200\"}",
        "switchboard_api_requests_total{endpoint=\"publish\",status=\"400\"}",
        "switchboard_api_requests_total{endpoint=\"publish\",status=\"401\"}",
        "switchboard_registry_connections",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_killed_nodes_connections_vanish_from_the_registry_by_themselves() {
    let redis = RedisServer::start().await;
    let mut nodes = nodes(&redis, 2, &redis_extra(&identity_and_channels())).await;
    let (_carol, carol_id) = user_client(&nodes[1], "carol", &["room:2"]).await;
    let (_dave, _) = user_client(&nodes[0], "dave", &["room:2"]).await;
    api_get_until(&nodes[0], "/api/connections?user=carol", |answer| {
        ids(answer) == [carol_id.clone()]
    })
    .await;
    let node_keys = format!("sb:reg:{{{}}}:*", &carol_id[2..10]);
    assert!(
        !redis.cli(&["KEYS", &node_keys]).await.trim().is_empty(),
        "carol's node wrote its part"
    );

    let killed_at = Instant::now();
    nodes[1].child.kill().await.expect("kill node");
    api_get_until(&nodes[0], "/api/connections?user=carol", |answer| {
        ids(answer).is_empty()
    })
    .await;
    let vanished_after = killed_at.elapsed();
    assert!(
        vanished_after < Duration::from_secs(5),
        "gone within the node ttl: {vanished_after:?}"
    );
    let (_, channels) = api_get(&nodes[0], "/api/channels?prefix=room:").await;
    assert_eq!(
        channels["channels"],
        json!([{"channel": "room:2", "connections": 1}]),
        "dave stays"
    );
    let deadline = Instant::now() + WAIT;
    while !redis.cli(&["KEYS", &node_keys]).await.trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dead node's keys never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A node that stops gracefully withdraws at once; Redis losing everything is repaired.
    redis.cli(&["FLUSHALL"]).await;
    api_get_until(&nodes[0], "/api/connections?user=dave", |answer| {
        ids(answer).len() == 1
    })
    .await;
}

#[tokio::test]
async fn a_memory_node_answers_the_api_from_itself_and_the_api_is_off_without_a_key() {
    let node = TestServer::start(&identity_and_channels()).await;
    let (mut erin, erin_id) = user_client(&node, "erin", &["room:3"]).await;
    let (_, answer) = api_get(&node, "/api/connections?channel=room:3").await;
    assert_eq!(
        (ids(&answer), &answer["scope"]),
        (vec![erin_id], &json!("node"))
    );
    let (_, presence) = api_get(&node, "/api/presence?channel=room:3").await;
    assert_eq!(
        presence["users"],
        json!([{"user": "erin", "connections": 1}])
    );
    let (status, _) = api_post(&node, "/api/send", json!({"user": "erin", "data": 7})).await;
    assert_eq!(status, 200);
    assert_eq!(next_of_type(&mut erin, "message").await["data"], 7);

    let off = TestServer::start("").await;
    let (status, answer) = api_get(&off, "/api/channels").await;
    assert_eq!(
        (status, &answer["error"]),
        (404, &json!("not_found")),
        "{answer}"
    );
}

#[tokio::test]
async fn routes_call_the_back_end_and_carry_out_its_answer_without_blocking_the_socket() {
    let views = DjangoRoutes::start(Duration::from_secs(3));
    let redis = RedisServer::start().await;
    let config = format!(
        "{}{}[backend]\ntimeout = \"500ms\"\n",
        identity_and_channels(),
        views.routes_config()
    );
    let nodes = nodes(&redis, 2, &redis_extra(&config)).await;

    // The connect hook sees the cookie, and adds a channel.
    let url = nodes[0].ws_url("/ws");
    let mut alice = Client::connect(&url, &[("X-User", "alice"), ("Cookie", "sessionid=abc")])
        .await
        .expect("connect");
    let welcome = alice.recv().await;
    assert_eq!(welcome["channels"], json!(["inbox:alice"]), "{welcome}");
    let alice_id = welcome["connection_id"].as_str().expect("id").to_owned();
    let connect = &views.wait_for_calls("connect", 1).await[0];
    assert_eq!(connect.body["action"], "connect");
    assert_eq!(connect.body["connection"], alice_id.as_str());
    assert_eq!(
        connect.headers.get("cookie").map(String::as_str),
        Some("sessionid=abc")
    );
    assert_eq!(
        connect.headers.get("x-switchboard-key").map(String::as_str),
        Some(KEY)
    );
    let refused = Client::connect(&url, &[("X-User", "banned")])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (refused.status, &refused.body["reason"]),
        (403, &json!("banned user"))
    );

    // An action without a route of its own goes to `default`, with the identity.
    let echoed = alice.request(json!({"action": "hello", "x": 1}), 1).await;
    assert_eq!(
        echoed,
        json!({"type": "reply", "id": 1, "data": {"echo": {"action": "hello", "x": 1, "id": 1}, "user": "alice"}})
    );
    let call = &views.calls_to("echo")[0];
    assert_eq!(call.body["user"], "alice");
    assert_eq!(
        call.headers.get("x-switchboard-action").map(String::as_str),
        Some("hello")
    );

    // Instructions: join a room and publish to it; a member on the other node hears it.
    let (mut bob, _) = user_client(&nodes[1], "bob", &["room:9"]).await;
    let answer = alice
        .request(json!({"action": "rooms", "room": "room:9"}), 2)
        .await;
    assert_eq!(
        answer,
        json!({"type": "reply", "id": 2, "data": {"room": "room:9"}})
    );
    assert_eq!(
        next_of_type(&mut bob, "message").await,
        json!({"type": "message", "channel": "room:9", "data": {"joined": "alice"}})
    );
    assert_eq!(
        next_of_type(&mut alice, "message").await["channel"],
        "room:9",
        "alice joined room:9"
    );

    // A slow back end times out with backend_error; the socket keeps answering meanwhile.
    alice.send(json!({"action": "slow", "id": 3})).await;
    let pong = alice.request(json!({"action": "ping"}), 4).await;
    assert_eq!(pong["type"], "pong");
    let started = Instant::now();
    let timed_out = alice.request(json!({"action": "ping"}), 5).await;
    assert_eq!(timed_out["type"], "pong");
    let error = loop {
        let frame = alice.recv().await;
        if frame["id"] == 3 {
            break frame;
        }
    };
    assert_eq!(error["code"], "backend_error", "{error}");
    assert!(
        error["reason"]
            .as_str()
            .expect("reason")
            .contains("did not answer"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout, not the back end, answered"
    );

    // A failing back end: backend_error with its reason.
    let failed = alice.request(json!({"action": "fail"}), 6).await;
    assert_eq!(failed["code"], "backend_error");
    assert!(
        failed["reason"]
            .as_str()
            .expect("reason")
            .contains("500: database is down"),
        "{failed}"
    );

    // The disconnect hook hears the close, with the code and the channels.
    alice.socket.close(None).await.expect("close");
    let disconnect = &views.wait_for_calls("disconnect", 1).await[0];
    assert_eq!(disconnect.body["connection"], alice_id.as_str());
    assert_eq!(disconnect.body["body"]["code"], 1000, "a normal close");
    let mut channels: Vec<String> =
        serde_json::from_value(disconnect.body["body"]["channels"].clone()).expect("channels");
    channels.sort();
    assert_eq!(channels, ["inbox:alice", "room:9"]);

    let metrics = nodes[0].metrics().await;
    for series in [
        "switchboard_route_calls_total{action=\"default\",result=\"ok\"}",
        "switchboard_route_calls_total{action=\"slow\",result=\"timeout\"}",
        "switchboard_route_calls_total{action=\"fail\",result=\"status\"}",
        "switchboard_route_call_seconds_bucket{action=\"rooms\"",
        "switchboard_handshakes_refused_total{reason=\"connect_hook\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_connect_hook_that_cannot_be_reached_refuses_the_handshake_with_502() {
    let closed_port = crate::support::redis::free_port();
    let node = TestServer::start(&format!(
        "[routes]\nconnect = \"http://127.0.0.1:{closed_port}/connect\"\n[backend]\ntimeout = \"1s\"\n"
    ))
    .await;
    let refused = Client::connect(&node.ws_url("/ws"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (502, &json!("backend_error"))
    );
}

fn cli(args: &[&str], node: &TestServer) -> (i32, String, String) {
    let output = std::process::Command::new(binary())
        .args(args)
        .env("SWITCHBOARD_API_URL", node.url(""))
        .env("SWITCHBOARD_API_KEY", KEY)
        .output()
        .expect("run switchboard");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_publishes_lists_and_disconnects_through_any_node() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, &redis_extra(&identity_and_channels())).await;
    let (mut frank, frank_id) = user_client(&nodes[0], "frank", &["news"]).await;

    let (code, stdout, stderr) = cli(&["publish", "news", "{\"headline\": 1}"], &nodes[1]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "{\"published\":1}");
    assert_eq!(
        next_of_type(&mut frank, "message").await["data"],
        json!({"headline": 1})
    );

    // The registry is written in batches: wait until frank's join of news is in it, not only
    // his connection.
    api_get_until(&nodes[1], "/api/connections?channel=news", |answer| {
        ids(answer) == [frank_id.clone()]
    })
    .await;
    let (code, table, stderr) = cli(&["connections", "--user", "frank"], &nodes[1]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        table.lines().next().expect("header").starts_with("ID"),
        "{table}"
    );
    assert!(
        table.contains(&frank_id) && table.contains("news"),
        "{table}"
    );
    let (code, json_out, _) = cli(&["connections", "--channel", "news", "--json"], &nodes[1]);
    assert_eq!(code, 0);
    let answer: Value = serde_json::from_str(&json_out).expect("json");
    assert_eq!(ids(&answer), [frank_id]);

    let (code, _, stderr) = cli(&["publish", "news", "not json"], &nodes[1]);
    assert_ne!(code, 0);
    assert!(stderr.contains("not a JSON value"), "{stderr}");
    let bad_key = std::process::Command::new(binary())
        .args(["connections", "--url", &nodes[1].url(""), "--key", "wrong"])
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&bad_key.stderr).contains("401"),
        "{bad_key:?}"
    );

    let (code, _, stderr) = cli(&["disconnect", "--user", "frank"], &nodes[1]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(frank.expect_close().await.0, 4002);
}
