//! The broker contract, written once and run against every implementation: `MemoryBroker`, and
//! `RedisBroker` over a real `redis-server`. Also the Redis broker's own promises that need no
//! WebSocket: one Redis subscription per channel per node, and batched subscribes.
//!
//! History (docs/protocol.md §7) is part of the contract: offsets go up by exactly one across
//! concurrent publishers (on several nodes, for Redis), history is trimmed to its size and
//! forgotten after its ttl, and lost history (expired, `FLUSHALL`, a restart without
//! persistence) gets a new epoch. Back ends' `FCALL` and plain `PUBLISH` are checked here too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard::broker::{
    Broker, BrokerConfig, BrokerSink, BrokerType, HistoryQuery, HistoryRule, HistoryRules,
    MemoryBroker, Publication, RedisBroker, SinkError, Topic,
};
use switchboard::protocol::{ChannelName, CloseCode, ControlOp, ControlTarget, Position};

use crate::support::WAIT;
use crate::support::redis::RedisServer;

/// A sink that records what it receives.
#[derive(Default)]
struct RecordingSink {
    publications: Mutex<Vec<Arc<Publication>>>,
    controls: Mutex<Vec<ControlOp>>,
}

impl RecordingSink {
    fn received(&self, topic: &Topic) -> Vec<serde_json::Value> {
        self.publications
            .lock()
            .expect("lock")
            .iter()
            .filter(|publication| &publication.topic == topic)
            .map(|publication| publication.data.clone())
            .collect()
    }

    fn topics(&self) -> Vec<Topic> {
        let mut topics: Vec<Topic> = self
            .publications
            .lock()
            .expect("lock")
            .iter()
            .map(|publication| publication.topic.clone())
            .collect();
        topics.dedup();
        topics
    }
}

impl BrokerSink for RecordingSink {
    fn on_publication(&self, publication: Arc<Publication>) -> Result<(), SinkError> {
        self.publications.lock().expect("lock").push(publication);
        Ok(())
    }

    fn on_control(&self, op: ControlOp) {
        self.controls.lock().expect("lock").push(op);
    }

    fn on_gap(&self, _channel: Option<&ChannelName>) {}
}

impl RecordingSink {
    /// The positions of what arrived on `topic`, in order.
    fn positions(&self, topic: &Topic) -> Vec<Option<Position>> {
        self.publications
            .lock()
            .expect("lock")
            .iter()
            .filter(|publication| &publication.topic == topic)
            .map(|publication| publication.position.clone())
            .collect()
    }
}

fn channel(name: &str) -> Topic {
    Topic::Channel(ChannelName::parse(name).expect("valid channel"))
}

async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

async fn delivers_only_subscribed_topics(broker: &dyn Broker, sink: &RecordingSink) {
    let user = Topic::User(Arc::from("42"));
    broker.subscribe(&channel("a")).await.expect("subscribe a");
    broker.subscribe(&user).await.expect("subscribe user");
    for (topic, n) in [(channel("b"), 1), (channel("a"), 2), (user.clone(), 3)] {
        broker
            .publish(Publication::new(topic, json!(n), None))
            .await
            .expect("publish");
    }
    assert!(
        eventually(|| sink.topics() == [channel("a"), user.clone()]).await,
        "{:?}",
        sink.topics()
    );
    broker.unsubscribe(&user).await.expect("unsubscribe user");
}

async fn carries_the_publisher_and_the_data(broker: &dyn Broker, sink: &RecordingSink) {
    let topic = channel("carried");
    broker.subscribe(&topic).await.expect("subscribe");
    let data = json!({"text": "hi", "nested": [1, 2.5, null, true]});
    broker
        .publish(Publication::new(
            topic.clone(),
            data.clone(),
            Some("7".into()),
        ))
        .await
        .expect("publish");
    assert!(eventually(|| !sink.received(&topic).is_empty()).await);
    let publications = sink.publications.lock().expect("lock");
    let received = publications
        .iter()
        .find(|publication| publication.topic == topic)
        .expect("received");
    assert_eq!(received.data, data);
    assert_eq!(received.from.as_deref(), Some("7"));
}

async fn subscriptions_are_reference_counted(broker: &dyn Broker) {
    let topic = channel("counted");
    let before = broker.subscriptions();
    broker.subscribe(&topic).await.expect("first");
    broker.subscribe(&topic).await.expect("second");
    assert_eq!(broker.subscriptions(), before + 1);
    broker.unsubscribe(&topic).await.expect("one of two");
    assert_eq!(broker.subscriptions(), before + 1);
    broker.unsubscribe(&topic).await.expect("last");
    assert_eq!(broker.subscriptions(), before);
}

async fn preserves_order_per_channel(broker: &dyn Broker, sink: &RecordingSink) {
    let topic = channel("ordered");
    broker.subscribe(&topic).await.expect("subscribe");
    // Issued back to back without waiting, as a connection does.
    let publishes: Vec<_> = (0..500)
        .map(|n| broker.publish(Publication::new(topic.clone(), json!(n), None)))
        .collect();
    for publish in publishes {
        publish.await.expect("publish");
    }
    assert!(eventually(|| sink.received(&topic).len() == 500).await);
    let expected: Vec<serde_json::Value> = (0..500).map(|n| json!(n)).collect();
    assert_eq!(sink.received(&topic), expected);
}

async fn delivers_control_operations(broker: &dyn Broker, sink: &RecordingSink) {
    let op = ControlOp::Disconnect {
        target: ControlTarget::Session("s1".into()),
        code: CloseCode::LoggedOut,
        reason: "logged out".into(),
    };
    broker.publish_control(op.clone()).await.expect("control");
    assert!(eventually(|| sink.controls.lock().expect("lock").contains(&op)).await);
}

async fn honours_the_contract(broker: &dyn Broker, sink: &RecordingSink) {
    assert!(
        eventually(|| broker.is_ready()).await,
        "{} ready",
        broker.name()
    );
    delivers_only_subscribed_topics(broker, sink).await;
    carries_the_publisher_and_the_data(broker, sink).await;
    subscriptions_are_reference_counted(broker).await;
    preserves_order_per_channel(broker, sink).await;
    delivers_control_operations(broker, sink).await;
}

const KEPT: HistoryRule = HistoryRule {
    size: 1000,
    ttl: Duration::from_secs(600),
};

fn name(channel: &str) -> ChannelName {
    ChannelName::parse(channel).expect("valid channel")
}

/// A publication recorded under `rule`.
fn recorded(channel: &str, data: serde_json::Value, rule: HistoryRule) -> Publication {
    Publication {
        history: Some(rule),
        ..Publication::new(name(channel), data, None)
    }
}

async fn position(broker: &dyn Broker, channel: &str, rule: HistoryRule) -> Position {
    broker
        .history(&name(channel), rule, HistoryQuery::position())
        .await
        .expect("history position")
        .position
}

/// Offsets of `channel` after `since`, as `broker` reads them.
async fn offsets_after(
    broker: &dyn Broker,
    channel: &str,
    since: u64,
    rule: HistoryRule,
) -> Vec<u64> {
    let read = broker
        .history(&name(channel), rule, HistoryQuery::after(since, 100_000))
        .await
        .expect("history read");
    read.publications
        .iter()
        .map(|publication| publication.position.as_ref().expect("positioned").offset)
        .collect()
}

/// Publishers on every broker of `brokers` at once: every publication gets the next offset,
/// every subscriber receives them in that order, and history holds them all.
async fn offsets_go_up_by_one(brokers: &[&dyn Broker], sink: &RecordingSink) {
    const EACH: u64 = 200;
    let topic = channel("kept:counted");
    brokers[0].subscribe(&topic).await.expect("subscribe");
    let start = position(brokers[0], "kept:counted", KEPT).await;
    let publishers = brokers.iter().enumerate().map(|(publisher, broker)| {
        let publishes: Vec<_> = (0..EACH)
            .map(|n| broker.publish(recorded("kept:counted", json!([publisher, n]), KEPT)))
            .collect();
        async move {
            for publish in publishes {
                publish.await.expect("recorded publish");
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    let total = EACH as usize * brokers.len();
    assert!(eventually(|| sink.received(&topic).len() == total).await);
    let positions = sink.positions(&topic);
    let offsets: Vec<u64> = positions
        .iter()
        .map(|position| {
            let position = position
                .as_ref()
                .expect("a recorded publication has a position");
            assert_eq!(position.epoch, start.epoch);
            position.offset
        })
        .collect();
    let expected: Vec<u64> = (start.offset + 1..=start.offset + total as u64).collect();
    assert_eq!(
        offsets, expected,
        "offsets one after another, in delivery order"
    );
    // Each publisher's own publications keep its order.
    let received = sink.received(&topic);
    for publisher in 0..brokers.len() {
        let own: Vec<u64> = received
            .iter()
            .filter(|data| data[0] == publisher)
            .filter_map(|data| data[1].as_u64())
            .collect();
        assert_eq!(own, (0..EACH).collect::<Vec<_>>());
    }
    for broker in brokers {
        assert_eq!(
            offsets_after(*broker, "kept:counted", start.offset, KEPT).await,
            expected
        );
        let top = position(*broker, "kept:counted", KEPT).await;
        assert_eq!(top.offset, start.offset + total as u64);
    }
    brokers[0].unsubscribe(&topic).await.expect("unsubscribe");
}

/// At most `size` publications stay; pages newest first.
async fn history_is_trimmed_and_paged(broker: &dyn Broker) {
    let rule = HistoryRule {
        size: 10,
        ttl: Duration::from_secs(600),
    };
    for n in 1..=25 {
        broker
            .publish(recorded("kept:trimmed", json!(n), rule))
            .await
            .expect("publish");
    }
    assert_eq!(
        offsets_after(broker, "kept:trimmed", 0, rule).await,
        (16..=25).collect::<Vec<_>>()
    );
    let newest = |before: Option<u64>| HistoryQuery {
        since: None,
        before,
        limit: 3,
        newest_first: true,
    };
    let page = broker
        .history(&name("kept:trimmed"), rule, newest(None))
        .await
        .expect("newest page");
    let offsets = |publications: &[Arc<Publication>]| -> Vec<u64> {
        publications
            .iter()
            .filter_map(|publication| publication.position.as_ref().map(|p| p.offset))
            .collect()
    };
    assert_eq!(offsets(&page.publications), [25, 24, 23]);
    assert_eq!(page.position.offset, 25);
    assert_eq!(page.publications[0].data, json!(25));
    let older = broker
        .history(&name("kept:trimmed"), rule, newest(Some(23)))
        .await
        .expect("older page");
    assert_eq!(offsets(&older.publications), [22, 21, 20]);
}

/// History untouched for its ttl is gone, and the channel starts over under a new epoch.
async fn history_expires_into_a_new_epoch(broker: &dyn Broker) {
    let rule = HistoryRule {
        size: 10,
        ttl: Duration::from_millis(300),
    };
    for n in 0..3 {
        broker
            .publish(recorded("kept:expiring", json!(n), rule))
            .await
            .expect("publish");
    }
    let before = position(broker, "kept:expiring", rule).await;
    assert_eq!(before.offset, 3);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = position(broker, "kept:expiring", rule).await;
    assert_ne!(
        after.epoch, before.epoch,
        "a new epoch once history expired"
    );
    assert_eq!(after.offset, 0);
    assert!(
        offsets_after(broker, "kept:expiring", 0, rule)
            .await
            .is_empty()
    );
}

async fn honours_the_history_contract(brokers: &[&dyn Broker], sink: &RecordingSink) {
    offsets_go_up_by_one(brokers, sink).await;
    history_is_trimmed_and_paged(brokers[0]).await;
    history_expires_into_a_new_epoch(brokers[0]).await;
    // A channel without history gets no position.
    let plain = channel("plain:unrecorded");
    brokers[0].subscribe(&plain).await.expect("subscribe");
    brokers[0]
        .publish(Publication::new(name("plain:unrecorded"), json!(1), None))
        .await
        .expect("publish");
    assert!(eventually(|| sink.positions(&plain) == [None]).await);
}

fn redis_config(url: String) -> BrokerConfig {
    BrokerConfig {
        broker_type: BrokerType::Redis,
        url,
        ..BrokerConfig::default()
    }
}

#[tokio::test]
async fn the_memory_broker_honours_the_contract() {
    let sink = Arc::new(RecordingSink::default());
    let broker = MemoryBroker::new(sink.clone());
    honours_the_contract(&broker, &sink).await;
    honours_the_history_contract(&[&broker], &sink).await;
}

#[tokio::test]
async fn the_redis_broker_honours_the_contract() {
    let redis = RedisServer::start().await;
    let sink = Arc::new(RecordingSink::default());
    let broker = start_redis_broker(&redis, sink.clone());
    honours_the_contract(&broker, &sink).await;
    // Three nodes publish into one history.
    let others: Vec<RedisBroker> = (0..2)
        .map(|_| start_redis_broker(&redis, Arc::new(RecordingSink::default())))
        .collect();
    for other in &others {
        assert!(eventually(|| other.is_ready()).await);
    }
    let brokers: Vec<&dyn Broker> = std::iter::once(&broker as &dyn Broker)
        .chain(others.iter().map(|other| other as &dyn Broker))
        .collect();
    honours_the_history_contract(&brokers, &sink).await;
}

/// The rules every Redis broker in these tests installs: `kept:*` keeps history.
fn history_rules() -> HistoryRules {
    HistoryRules::new(vec![
        ("kept:*".to_owned(), Some(KEPT)),
        ("*".to_owned(), None),
    ])
}

fn start_redis_broker(redis: &RedisServer, sink: Arc<RecordingSink>) -> RedisBroker {
    RedisBroker::start(&redis_config(redis.url()), &history_rules(), sink).expect("start")
}

#[tokio::test]
async fn lost_redis_history_gets_a_new_epoch() {
    let mut redis = RedisServer::start().await;
    let sink = Arc::new(RecordingSink::default());
    let broker = start_redis_broker(&redis, sink.clone());
    assert!(eventually(|| broker.is_ready()).await);
    for n in 0..3 {
        broker
            .publish(recorded("kept:lost", json!(n), KEPT))
            .await
            .expect("publish");
    }
    let first = position(&broker, "kept:lost", KEPT).await;
    assert_eq!(first.offset, 3);
    redis.cli(&["FLUSHALL"]).await;
    // FLUSHALL took the functions too: the next publication installs them again.
    broker
        .publish(recorded("kept:lost", json!("after flush"), KEPT))
        .await
        .expect("publish after FLUSHALL");
    let flushed = position(&broker, "kept:lost", KEPT).await;
    assert_ne!(flushed.epoch, first.epoch);
    assert_eq!(flushed.offset, 1);

    redis.restart().await;
    assert!(eventually(|| broker.is_ready()).await);
    let mut restarted = None;
    for _ in 0..100 {
        if let Ok(read) = broker
            .history(&name("kept:lost"), KEPT, HistoryQuery::position())
            .await
        {
            restarted = Some(read.position);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = restarted.expect("history readable after the restart");
    assert_ne!(restarted.epoch, flushed.epoch);
    assert_eq!(restarted.offset, 0);
}

/// What a back end does with redis-cli or redis-py: `FCALL` with a JSON or a MessagePack
/// envelope records and publishes; on a channel without history it publishes plainly and
/// returns nil; a plain `PUBLISH` to a history channel is delivered without a position.
#[tokio::test]
async fn back_ends_record_with_fcall_and_publish_plainly_with_publish() {
    let redis = RedisServer::start().await;
    let sink = Arc::new(RecordingSink::default());
    let broker = start_redis_broker(&redis, sink.clone());
    assert!(eventually(|| broker.is_ready()).await);
    let room = channel("kept:room");
    broker.subscribe(&room).await.expect("subscribe");
    // Installed when the node connected.
    let mut installed = String::new();
    for _ in 0..100 {
        installed = redis.cli(&["FUNCTION", "LIST"]).await;
        if installed.contains("sb_publish") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(installed.contains("sb_publish"), "{installed}");

    let json_envelope = r#"{"data":{"text":"from redis-cli"},"from":"backend"}"#;
    let answer = redis
        .cli(&["FCALL", "sb_publish", "1", "sb:ch:kept:room", json_envelope])
        .await;
    assert_eq!(answer.trim(), "1");
    let msgpack_envelope =
        rmp_serde::to_vec_named(&json!({"data": {"text": "packed"}})).expect("msgpack");
    let client = redis.client().await;
    let offset = client
        .fcall("sb_publish", "sb:ch:kept:room", msgpack_envelope)
        .await;
    assert_eq!(offset, Some(2));
    client
        .publish("sb:ch:kept:room", r#"{"data":"plain"}"#)
        .await;
    assert!(eventually(|| sink.received(&room).len() == 3).await);
    assert_eq!(
        sink.received(&room),
        [
            json!({"text": "from redis-cli"}),
            json!({"text": "packed"}),
            json!("plain")
        ]
    );
    let positions = sink.positions(&room);
    let offsets: Vec<Option<u64>> = positions
        .iter()
        .map(|position| position.as_ref().map(|position| position.offset))
        .collect();
    assert_eq!(offsets, [Some(1), Some(2), None]);
    assert_eq!(offsets_after(&broker, "kept:room", 0, KEPT).await, [1, 2]);

    // A channel no rule keeps: published, not recorded, nil.
    let plain = channel("plain:room");
    broker.subscribe(&plain).await.expect("subscribe");
    let answer = redis
        .cli(&[
            "FCALL",
            "sb_publish",
            "1",
            "sb:ch:plain:room",
            r#"{"data":1}"#,
        ])
        .await;
    assert_eq!(answer.trim(), "");
    assert!(eventually(|| sink.positions(&plain) == [None]).await);
    // A malformed envelope is refused, and nothing is recorded or published.
    let refused = client
        .try_fcall("sb_publish", "sb:ch:kept:room", "not an envelope")
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(position(&broker, "kept:room", KEPT).await.offset, 2);
}

#[tokio::test]
async fn a_node_holds_one_redis_subscription_per_channel_and_batches_subscribes() {
    let redis = RedisServer::start().await;
    let backend = redis.client().await;
    let sink = Arc::new(RecordingSink::default());
    let broker = start_redis_broker(&redis, sink.clone());
    assert!(eventually(|| broker.is_ready()).await);

    let room = channel("room");
    for _ in 0..10_000 {
        broker.subscribe(&room).await.expect("subscribe");
    }
    assert_eq!(backend.numsub("sb:ch:room").await, 1);
    for _ in 0..10_000 {
        broker.unsubscribe(&room).await.expect("unsubscribe");
    }
    let mut remaining = -1;
    for _ in 0..100 {
        remaining = backend.numsub("sb:ch:room").await;
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, 0, "unsubscribed after the last reference");

    let before = backend.calls("subscribe").await;
    let subscribes: Vec<_> = (0..10_000)
        .map(|n| broker.subscribe(&channel(&format!("many:{n}"))))
        .collect();
    for subscribe in subscribes {
        subscribe.await.expect("subscribe");
    }
    let commands = backend.calls("subscribe").await - before;
    assert!(
        commands <= 20,
        "10,000 subscriptions took {commands} SUBSCRIBE commands"
    );
    assert_eq!(backend.channels("sb:ch:many:*").await.len(), 10_000);
}
