//! History and recovery (docs/protocol.md §7) over real sockets, real nodes and a real Redis:
//! a client that rejoins with `since` receives exactly what it missed and then live traffic;
//! the cases where it cannot (another epoch, trimmed, too many, lost metadata) answer
//! `recovered: false`; a node that lost its Redis subscription catches up (persistence on) or
//! tells its members with `gap` (persistence off); Redis Cluster; the history API and CLI.

use std::time::Duration;

use serde_json::{Value, json};

use crate::multinode::nodes;
use crate::support::redis::{RedisClient, RedisCluster, RedisServer, node_config};
use crate::support::{Client, TestServer, WAIT, binary, shell};

/// `chat:*` keeps 100 publications, `small:*` 10, `durable:*` 1000, `presence:*` 100 with
/// presence events; a replay is at most 20 (see [`rules`]); the API key is `k`.
const RULES: &str = r#"
[server]
recovery_limit = 20
[api]
key = "k"
[[channels]]
pattern = "chat:*"
join = "anyone"
publish = "anyone"
history_size = 100
history_ttl = "10m"
[[channels]]
pattern = "small:*"
join = "anyone"
publish = "anyone"
history_size = 10
history_ttl = "10m"
[[channels]]
pattern = "durable:*"
join = "anyone"
publish = "anyone"
history_size = 1000
history_ttl = "10m"
[[channels]]
pattern = "presence:*"
join = "anyone"
publish = "anyone"
presence = true
history_size = 100
history_ttl = "10m"
[[channels]]
pattern = "*"
join = "anyone"
publish = "anyone"
"#;

/// [`RULES`] with another `recovery_limit`.
fn rules(recovery_limit: usize) -> String {
    RULES.replace(
        "recovery_limit = 20",
        &format!("recovery_limit = {recovery_limit}"),
    )
}

/// Joins `channel` (from `since`, if given) with frame id `id`: the frames replayed before the
/// reply, and the reply's `data`.
async fn join(
    client: &mut Client,
    channel: &str,
    since: Option<&Value>,
    id: u64,
) -> (Vec<Value>, Value) {
    let mut frame = json!({"action": "join", "channel": channel});
    if let Some(since) = since {
        frame["since"] = since.clone();
    }
    let reply = client.request(frame, id).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    (client.take_unread(), reply["data"].clone())
}

async fn publish(client: &mut Client, channel: &str, data: Value, id: u64) {
    let reply = client
        .request(
            json!({"action": "publish", "channel": channel, "data": data}),
            id,
        )
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
}

/// The `{offset, epoch}` a message frame or a reply's data carries.
fn position(value: &Value) -> Value {
    json!({"offset": value["offset"], "epoch": value["epoch"]})
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|frame| {
            assert_eq!(frame["type"], "message", "{frame}");
            frame["offset"]
                .as_u64()
                .expect("a recorded message has an offset")
        })
        .collect()
}

/// Receives message frames until one carries offset `top`; they must follow `after` one by one.
async fn receive_through(client: &mut Client, after: u64, top: u64) -> Vec<Value> {
    let mut received = Vec::new();
    let mut expected = after;
    while expected < top {
        let frame = client.recv().await;
        expected += 1;
        assert_eq!(frame["offset"], expected, "a gap or a duplicate: {frame}");
        received.push(frame);
    }
    received
}

/// `GET /api/history` with key `k`: status and body.
async fn api_history(node: &TestServer, query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(node.url(&format!("/api/history?{query}")))
        .bearer_auth("k")
        .send()
        .await
        .expect("api");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn top_of(node: &TestServer, channel: &str) -> u64 {
    let (status, body) = api_history(node, &format!("channel={channel}&limit=0")).await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().expect("offset")
}

#[tokio::test]
async fn a_client_that_missed_fifty_publications_gets_exactly_those_then_live_traffic() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, &rules(1000)).await;
    let mut member = nodes[0].client().await;
    let (replayed, reply) = join(&mut member, "chat:1", None, 1).await;
    assert!(replayed.is_empty());
    assert_eq!(reply["offset"], 0, "a new channel starts at 0: {reply}");
    assert!(
        reply["epoch"]
            .as_str()
            .is_some_and(|epoch| !epoch.is_empty())
    );
    assert!(
        reply.get("recovered").is_none(),
        "no since, no verdict: {reply}"
    );

    // Three publishers on two nodes.
    let mut publishers = [
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[1].client().await,
    ];
    for (n, publisher) in (0u64..).zip(publishers.iter_mut()) {
        publish(publisher, "chat:1", json!({"live": n}), 100 + n).await;
    }
    let live = receive_through(&mut member, 0, 3).await;
    assert_eq!(live[2]["epoch"], reply["epoch"]);
    let last = position(&live[2]);
    drop(member);

    for n in 0..50u64 {
        let publisher = &mut publishers[n as usize % 3];
        publish(publisher, "chat:1", json!({"missed": n}), 200 + n).await;
    }
    // Live traffic keeps coming while the client rejoins on the other node.
    let mut live_publisher = nodes[0].client().await;
    let publishing = tokio::spawn(async move {
        for n in 0..30u64 {
            publish(&mut live_publisher, "chat:1", json!({"during": n}), 300 + n).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut back = nodes[1].client().await;
    let (replayed, reply) = join(&mut back, "chat:1", Some(&last), 7).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], last["epoch"]);
    let top = reply["offset"].as_u64().expect("offset");
    let replayed_offsets = offsets(&replayed);
    assert_eq!(
        replayed_offsets,
        (4..=top).collect::<Vec<_>>(),
        "the replay, in order"
    );
    let missed: Vec<Value> = replayed
        .iter()
        .take(50)
        .map(|frame| frame["data"].clone())
        .collect();
    let expected: Vec<Value> = (0..50).map(|n| json!({"missed": n})).collect();
    assert_eq!(missed, expected, "exactly the 50 missed, in order");
    publishing.await.expect("live publisher");
    let after = receive_through(&mut back, top, 83).await;
    assert_eq!(
        after.last().map(|frame| frame["data"].clone()),
        Some(json!({"during": 29}))
    );
    assert_eq!(top_of(&nodes[0], "chat:1").await, 83);
    assert!(
        back.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing after the last publication"
    );
}

#[tokio::test]
async fn a_client_that_cannot_recover_is_told_so_with_the_current_position() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 1, RULES).await;
    let node = &nodes[0];
    let mut publisher = node.client().await;
    for n in 1..=30 {
        publish(&mut publisher, "small:1", json!(n), n).await;
        publish(&mut publisher, "chat:limit", json!(n), 100 + n).await;
    }
    let (_, current) = join(&mut node.client().await, "small:1", None, 1).await;
    assert_eq!(current["offset"], 30);
    let epoch = current["epoch"].clone();
    let cases = [
        // Another epoch, an empty one.
        json!({"offset": 29, "epoch": "another"}),
        json!({"offset": 29, "epoch": ""}),
        // Offset 5 is long trimmed (10 kept).
        json!({"offset": 5, "epoch": epoch}),
        // A client claiming to be ahead of the channel.
        json!({"offset": 1000, "epoch": epoch}),
    ];
    for (index, since) in cases.iter().enumerate() {
        let top = top_of(node, "small:1").await;
        let mut client = node.client().await;
        let (replayed, reply) = join(&mut client, "small:1", Some(since), index as u64 + 1).await;
        assert!(
            replayed.is_empty(),
            "nothing replayed for {since}: {replayed:?}"
        );
        assert_eq!(reply["recovered"], false, "{since}: {reply}");
        assert_eq!(reply["offset"], top, "the current position");
        assert_eq!(reply["epoch"], epoch);
        // The member is live all the same.
        publish(
            &mut publisher,
            "small:1",
            json!("live"),
            1000 + index as u64,
        )
        .await;
        let live = client.recv().await;
        assert_eq!(live["data"], "live");
        assert_eq!(live["offset"], top + 1);
    }
    // With 10 kept, a client whose last offset is just before the oldest kept resumes; one
    // whose next offset is the oldest just trimmed does not.
    let top = top_of(node, "small:1").await;
    let oldest_kept = top - 9;
    let mut client = node.client().await;
    let since = json!({"offset": oldest_kept - 1, "epoch": epoch});
    let (replayed, reply) = join(&mut client, "small:1", Some(&since), 50).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(offsets(&replayed), (oldest_kept..=top).collect::<Vec<_>>());
    let mut client = node.client().await;
    let since = json!({"offset": oldest_kept - 2, "epoch": epoch});
    let (replayed, reply) = join(&mut client, "small:1", Some(&since), 51).await;
    assert_eq!(
        reply["recovered"], false,
        "the oldest just trimmed: {reply}"
    );
    assert!(replayed.is_empty());

    // More than recovery_limit (20) missed: not recovered; 20 exactly: recovered.
    let (_, limit) = join(&mut node.client().await, "chat:limit", None, 1).await;
    let since = json!({"offset": 9, "epoch": limit["epoch"]});
    let (replayed, reply) = join(&mut node.client().await, "chat:limit", Some(&since), 2).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(replayed.is_empty());
    let since = json!({"offset": 10, "epoch": limit["epoch"]});
    let (replayed, reply) = join(&mut node.client().await, "chat:limit", Some(&since), 3).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(offsets(&replayed), (11..=30).collect::<Vec<_>>());

    for reason in ["epoch", "trimmed", "limit", "ahead"] {
        let series =
            format!(r#"switchboard_recoveries_total{{result="not_recovered",reason="{reason}"}}"#);
        assert!(node.metric(&series).await.unwrap_or(0.0) >= 1.0, "{series}");
    }
    let recovered = r#"switchboard_recoveries_total{result="recovered",reason="none"}"#;
    assert_eq!(node.metric(recovered).await, Some(2.0));
    assert!(node.metric("switchboard_publications_replayed_total").await >= Some(30.0));
}

#[tokio::test]
async fn lost_metadata_is_a_new_epoch_even_when_the_stream_survived() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 1, RULES).await;
    let node = &nodes[0];
    let mut publisher = node.client().await;
    for n in 1..=5 {
        publish(&mut publisher, "chat:evicted", json!(n), n).await;
    }
    let (_, before) = join(&mut node.client().await, "chat:evicted", None, 1).await;
    assert_eq!(before["offset"], 5);
    // As an eviction policy would: the meta hash goes, the stream stays.
    let deleted = redis.cli(&["DEL", "{sb:ch:chat:evicted}:meta"]).await;
    assert_eq!(deleted.trim(), "1");
    assert_eq!(
        redis
            .cli(&["EXISTS", "{sb:ch:chat:evicted}:stream"])
            .await
            .trim(),
        "1"
    );
    let since = json!({"offset": 3, "epoch": before["epoch"]});
    let (replayed, reply) = join(&mut node.client().await, "chat:evicted", Some(&since), 2).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(replayed.is_empty());
    assert_ne!(reply["epoch"], before["epoch"], "history lost: a new epoch");
    assert_eq!(reply["offset"], 0);
    // The surviving stream was not mistaken for the new epoch's history.
    let (status, history) = api_history(node, "channel=chat:evicted&since=0").await;
    assert_eq!(status, 200);
    assert_eq!(history["publications"], json!([]));
    publish(&mut publisher, "chat:evicted", json!("fresh"), 10).await;
    let (_, history) = api_history(node, "channel=chat:evicted&since=0").await;
    assert_eq!(
        history["publications"],
        json!([{"offset": 1, "data": "fresh"}])
    );
}

/// A member per node on `durable:1`, joined with an id (so it starts tracking at offset 0).
async fn tracking_members(nodes: &[TestServer]) -> Vec<Client> {
    let mut members = Vec::new();
    for node in nodes {
        let mut member = node.client().await;
        let (_, reply) = join(&mut member, "durable:1", None, 1).await;
        assert_eq!(reply["offset"], 0);
        members.push(member);
    }
    members
}

/// Publishes `from..to` to `durable:1` through `client`, retrying a publication until it is
/// acknowledged (as a careful back end does while Redis is down).
async fn publish_all(mut client: Client, from: u64, to: u64) -> Client {
    for n in from..to {
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        loop {
            let reply = client
                .request(
                    json!({"action": "publish", "channel": "durable:1", "data": n}),
                    n,
                )
                .await;
            if reply["type"] == "reply" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "publication {n} never taken: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client
}

#[tokio::test]
async fn with_persistence_a_redis_restart_is_a_pause_every_member_gets_everything_once() {
    let mut redis = RedisServer::start_persistent().await;
    let nodes = nodes(&redis, 3, &rules(1000)).await;
    let mut members = tracking_members(&nodes).await;
    let publishers = [
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
    ];
    let mut running = Vec::new();
    for (index, publisher) in publishers.into_iter().enumerate() {
        let from = index as u64 * 1000;
        running.push(tokio::spawn(publish_all(publisher, from, from + 60)));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().await;
    for publishing in running {
        publishing.await.expect("publisher");
    }
    // Everything Redis recorded, once, in order, on all three nodes.
    let top = top_of(&nodes[0], "durable:1").await;
    assert!(
        top >= 180,
        "every acknowledged publication is recorded (top {top})"
    );
    let (_, recorded) =
        api_history(&nodes[0], &format!("channel=durable:1&since=0&limit={top}")).await;
    let recorded: Vec<Value> = recorded["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|publication| publication["data"].clone())
        .collect();
    for member in &mut members {
        let received = receive_through(member, 0, top).await;
        let data: Vec<Value> = received.iter().map(|frame| frame["data"].clone()).collect();
        assert_eq!(data, recorded);
        assert!(
            member
                .recv_within(Duration::from_millis(200))
                .await
                .is_none(),
            "no gap, no duplicate after the last"
        );
    }
    for n in (0..60).chain(1000..1060).chain(2000..2060) {
        assert!(
            recorded.contains(&json!(n)),
            "publication {n} acknowledged but not recorded"
        );
    }
}

#[tokio::test]
async fn without_persistence_members_get_a_gap_and_later_publications_flow() {
    let mut redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, RULES).await;
    let mut members = tracking_members(&nodes).await;
    let mut publisher = nodes[0].client().await;
    for n in 1..=5 {
        publish(&mut publisher, "durable:1", json!(n), n).await;
    }
    for member in &mut members {
        receive_through(member, 0, 5).await;
    }
    redis.restart().await;
    // Publish until a publication goes through the restarted Redis: offset 1 of a new epoch.
    let publisher = publish_all(publisher, 100, 101).await;
    drop(publisher);
    for member in &mut members {
        let gap = member.recv().await;
        assert_eq!(gap["type"], "gap", "{gap}");
        assert_eq!(gap["channel"], "durable:1");
        let epoch = gap["epoch"].clone();
        let gap_offset = gap["offset"].as_u64().expect("offset");
        let next = member.recv().await;
        assert_eq!(next["type"], "message", "{next}");
        assert_eq!(next["data"], 100);
        assert_eq!(next["epoch"], epoch, "the gap names the new epoch");
        assert_eq!(next["offset"], gap_offset + 1);
    }
    let gaps = nodes[0].metric("switchboard_gaps_total").await;
    assert_eq!(gaps, Some(1.0));
}

#[tokio::test]
async fn on_redis_cluster_history_and_recovery_work_across_slots() {
    let cluster = RedisCluster::start().await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let config = node_config(&cluster.url(), &format!("cluster = true\n{RULES}"));
        nodes.push(TestServer::start(&config).await);
    }
    for node in &nodes {
        node.wait_for_readiness(200).await;
    }
    let backend = RedisClient::connect(&cluster.url(), true).await;
    // Several channels, so several slots and masters.
    for room in 0..6 {
        let channel = format!("chat:{room}");
        let mut member = nodes[0].client().await;
        let (_, reply) = join(&mut member, &channel, None, 1).await;
        let since = position(&reply);
        drop(member);
        let mut publisher = nodes[1].client().await;
        for n in 0..10 {
            publish(&mut publisher, &channel, json!(n), n + 10).await;
        }
        // A back end with FCALL, routed by the channel key's slot.
        let key = format!("sb:ch:{channel}");
        let offset = backend
            .fcall("sb_publish", &key, r#"{"data":"fcall"}"#)
            .await;
        assert_eq!(offset, Some(11));
        let mut back = nodes[1].client().await;
        let (replayed, reply) = join(&mut back, &channel, Some(&since), 2).await;
        assert_eq!(reply["recovered"], true, "{channel}: {reply}");
        assert_eq!(offsets(&replayed), (1..=11).collect::<Vec<_>>());
        assert_eq!(replayed[10]["data"], "fcall");
    }
}

#[tokio::test]
async fn the_history_api_and_cli_page_through_a_channel_and_presence_is_not_recorded() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 1, RULES).await;
    let node = &nodes[0];
    let mut watcher = node.client().await;
    join(&mut watcher, "presence:1", None, 1).await;
    let (mut publisher, _) = node.identified_client().await;
    join(&mut publisher, "presence:1", None, 2).await;
    let event = watcher.recv().await;
    assert_eq!(event["type"], "presence", "{event}");
    for n in 1..=7 {
        publish(&mut publisher, "presence:1", json!({"n": n}), 10 + n).await;
    }
    let response = reqwest::Client::new()
        .post(node.url("/api/publish"))
        .bearer_auth("k")
        .json(&json!({"channel": "presence:1", "data": {"n": 8}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status().as_u16(), 200);

    let (status, page) = api_history(node, "channel=presence:1&since=2&limit=3").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["offset"], 8,
        "presence events are not recorded: {page}"
    );
    assert_eq!(
        page["publications"],
        json!([
            {"offset": 3, "data": {"n": 3}},
            {"offset": 4, "data": {"n": 4}},
            {"offset": 5, "data": {"n": 5}},
        ])
    );
    let (_, newest) = api_history(node, "channel=presence:1&limit=2&newest_first=true").await;
    let newest_offsets: Vec<u64> = newest["publications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|publication| publication["offset"].as_u64())
        .collect();
    assert_eq!(newest_offsets, [8, 7]);
    assert!(
        newest["publications"][0].get("from").is_none(),
        "the server API publishes as the server"
    );
    let (_, older) = api_history(
        node,
        "channel=presence:1&limit=2&newest_first=true&before=7",
    )
    .await;
    assert_eq!(older["publications"][0]["offset"], 6);
    for (query, status) in [
        ("channel=room:1", 400),
        ("channel=presence:1&since=-1", 400),
        ("channel=presence:1&limit=5000", 400),
        ("channel=presence:1&newest_first=maybe", 400),
        ("", 400),
    ] {
        let (got, body) = api_history(node, query).await;
        assert_eq!(got, status, "{query}: {body}");
        assert!(body["reason"].as_str().is_some(), "{body}");
    }

    let output = tokio::process::Command::new(binary())
        .args(["history", "presence:1", "--since", "6", "--url"])
        .arg(node.url(""))
        .args(["--key", "k"])
        .output()
        .await
        .expect("run switchboard history");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("# presence:1 at offset 8"), "{stdout}");
    assert_eq!(lines[1..], ["7\t-\t{\"n\":7}", "8\t-\t{\"n\":8}"]);
}

/// The README's "History and recovery" line that starts with `prefix`.
fn readme_line(prefix: &str) -> String {
    include_str!("../../README.md")
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("the README shows `{prefix}…`"))
        .to_owned()
}

#[tokio::test]
async fn the_readme_history_examples_resume_after_back_end_fcalls() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 1, RULES).await;
    let node = &nodes[0];
    let position_file = crate::support::temp_file("position.json", "");
    std::fs::remove_file(&position_file).expect("start without a position");
    let resume = readme_line("python3 examples/resume.py")
        .replace("ws://127.0.0.1:8080/ws", &node.ws_url("/ws"))
        .replace("position.json", &position_file.display().to_string());
    let first = shell(&resume).await;
    assert!(first.contains("joined at 0"), "{first}");
    let epoch = first
        .lines()
        .find_map(|line| line.strip_prefix("position 0 "))
        .expect("the position saved")
        .to_owned();

    let fcall = readme_line("redis-cli FCALL").replacen(
        "redis-cli ",
        &format!("redis-cli -p {} ", redis.port),
        1,
    );
    assert_eq!(shell(&fcall).await.trim(), "1");
    let record = format!(
        "python3 examples/publish.py --record {} chat:1 '{{\"text\": \"from Django\"}}'",
        redis.url()
    );
    assert!(shell(&record).await.contains("at offset 2"));

    let second = shell(&resume).await;
    let lines: Vec<&str> = second.lines().collect();
    assert_eq!(
        lines,
        [
            r#"message 1 {"text": "from redis-cli"}"#,
            r#"message 2 {"text": "from Django"}"#,
            "joined at 2",
            &format!("position 2 {epoch}"),
        ],
        "{second}"
    );
}

#[tokio::test]
async fn a_replay_longer_than_the_outbound_queue_is_delivered_whole_and_live_traffic_follows() {
    // A client closed as a slow consumer has missed at least a queue's worth; its replay goes
    // into the queue as one item, so a queue of 16 frames and 1 KiB still takes 18 publications
    // of 200 bytes each (the memory broker keeps history too).
    let config = RULES.replace(
        "[server]\n",
        "[server]\noutbound_queue = 16\noutbound_queue_bytes = 1024\n",
    );
    let node = TestServer::start(&config).await;
    let mut publisher = node.client().await;
    let (_, start) = join(&mut node.client().await, "chat:big", None, 1).await;
    for n in 1..=18 {
        publish(&mut publisher, "chat:big", json!("x".repeat(200)), n).await;
    }
    let mut client = node.client().await;
    let since = json!({"offset": 0, "epoch": start["epoch"]});
    let (replayed, reply) = join(&mut client, "chat:big", Some(&since), 2).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 18);
    assert_eq!(offsets(&replayed), (1..=18).collect::<Vec<_>>());
    publish(&mut publisher, "chat:big", json!("live"), 100).await;
    assert_eq!(client.recv().await["data"], "live");
    let series = r#"switchboard_recoveries_total{result="recovered",reason="none"}"#;
    assert_eq!(node.metric(series).await, Some(1.0));
    let slow = r#"switchboard_closes_total{code="4010",reason="slow_consumer",initiator="server"}"#;
    assert_eq!(node.metric(slow).await.unwrap_or(0.0), 0.0);
}

#[tokio::test]
async fn an_envelope_published_with_a_position_history_never_gave_it_is_delivered_without_it() {
    // A back end that re-publishes what it received (offset and epoch included) with a plain
    // PUBLISH must neither stall the channel nor make its nodes read history forever.
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 1, RULES).await;
    let node = &nodes[0];
    let mut member = node.client().await;
    let (_, start) = join(&mut member, "chat:forged", None, 1).await;
    let epoch = start["epoch"].as_str().expect("epoch").to_owned();
    let backend = redis.client().await;
    let record = |data: &str| format!(r#"{{"data":"{data}"}}"#);
    assert_eq!(
        backend
            .fcall("sb_publish", "sb:ch:chat:forged", record("first"))
            .await,
        Some(1)
    );
    let ahead = format!(r#"{{"data":"ahead","offset":1000,"epoch":"{epoch}"}}"#);
    backend.publish("sb:ch:chat:forged", ahead).await;
    let elsewhere = r#"{"data":"elsewhere","offset":2,"epoch":"zzz"}"#;
    backend.publish("sb:ch:chat:forged", elsewhere).await;
    assert_eq!(
        backend
            .fcall("sb_publish", "sb:ch:chat:forged", record("second"))
            .await,
        Some(2)
    );
    let mut received = Vec::new();
    for _ in 0..4 {
        let frame = member.recv().await;
        received.push((frame["data"].clone(), frame.get("offset").cloned()));
    }
    // Recorded ones in offset order; the others once each, without a position (where they
    // fall among the recorded ones depends on when the node's catch-up answered).
    let positioned: Vec<_> = received
        .iter()
        .filter(|(_, offset)| offset.is_some())
        .collect();
    assert_eq!(
        positioned,
        [
            &(json!("first"), Some(json!(1))),
            &(json!("second"), Some(json!(2)))
        ]
    );
    for forged in ["ahead", "elsewhere"] {
        assert!(received.contains(&(json!(forged), None)), "{received:?}");
    }
    let reads = node.metric("switchboard_history_read_seconds_count").await;
    assert!(reads.unwrap_or(0.0) < 10.0, "bounded reads: {reads:?}");
    assert!(
        member
            .recv_within(Duration::from_millis(200))
            .await
            .is_none()
    );
}
