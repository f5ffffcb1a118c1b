//! The broker contract, written once and run against every implementation: `MemoryBroker`, and
//! `RedisBroker` over a real `redis-server`. Also the Redis broker's own promises that need no
//! WebSocket: one Redis subscription per channel per node, and batched subscribes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard::broker::{
    Broker, BrokerConfig, BrokerSink, BrokerType, MemoryBroker, Publication, RedisBroker,
    SinkError, Topic,
};
use switchboard::protocol::{ChannelName, CloseCode, ControlOp, ControlTarget};

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
}

#[tokio::test]
async fn the_redis_broker_honours_the_contract() {
    let redis = RedisServer::start().await;
    let sink = Arc::new(RecordingSink::default());
    let broker = RedisBroker::start(&redis_config(redis.url()), sink.clone()).expect("start");
    honours_the_contract(&broker, &sink).await;
}

#[tokio::test]
async fn a_node_holds_one_redis_subscription_per_channel_and_batches_subscribes() {
    let redis = RedisServer::start().await;
    let backend = redis.client().await;
    let sink = Arc::new(RecordingSink::default());
    let broker = RedisBroker::start(&redis_config(redis.url()), sink.clone()).expect("start");
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
