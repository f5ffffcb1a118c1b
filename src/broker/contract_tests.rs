//! The broker contract, written once and run against every implementation (memory here; the
//! Redis broker adds its constructor to the same list).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::{Broker, BrokerSink, MemoryBroker, Publication, SinkError};
use crate::protocol::ChannelName;

/// A sink that records what it receives.
#[derive(Default)]
pub(crate) struct RecordingSink {
    received: Mutex<Vec<Arc<Publication>>>,
}

impl RecordingSink {
    fn channels(&self) -> Vec<String> {
        self.received
            .lock()
            .map(|received| {
                received
                    .iter()
                    .map(|publication| publication.channel.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl BrokerSink for RecordingSink {
    fn on_publication(&self, publication: Arc<Publication>) -> Result<(), SinkError> {
        if let Ok(mut received) = self.received.lock() {
            received.push(publication);
        }
        Ok(())
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("valid channel")
}

fn publication(name: &str, n: u64) -> Publication {
    Publication::new(channel(name), json!({ "n": n }), None)
}

async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

async fn delivers_only_subscribed_channels(broker: &dyn Broker, sink: &RecordingSink) {
    broker.subscribe(&channel("a")).await.expect("subscribe");
    broker
        .publish(publication("a", 1))
        .await
        .expect("publish a");
    broker
        .publish(publication("b", 2))
        .await
        .expect("publish b");
    assert!(
        eventually(|| sink.channels() == ["a"]).await,
        "{:?}",
        sink.channels()
    );
}

async fn subscriptions_are_reference_counted(broker: &dyn Broker) {
    let name = channel("counted");
    let before = broker.subscriptions();
    broker.subscribe(&name).await.expect("first");
    broker.subscribe(&name).await.expect("second");
    assert_eq!(broker.subscriptions(), before + 1);
    broker.unsubscribe(&name).await.expect("one of two");
    assert_eq!(broker.subscriptions(), before + 1);
    broker.unsubscribe(&name).await.expect("last");
    assert_eq!(broker.subscriptions(), before);
}

async fn preserves_order_per_channel(broker: &dyn Broker, sink: &RecordingSink) {
    broker
        .subscribe(&channel("ordered"))
        .await
        .expect("subscribe");
    for n in 0..100 {
        broker
            .publish(publication("ordered", n))
            .await
            .expect("publish");
    }
    let ordered = |sink: &RecordingSink| -> Vec<u64> {
        sink.received
            .lock()
            .map(|received| {
                received
                    .iter()
                    .filter(|publication| publication.channel.as_str() == "ordered")
                    .filter_map(|publication| publication.data["n"].as_u64())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(eventually(|| ordered(sink).len() == 100).await);
    assert_eq!(ordered(sink), (0..100).collect::<Vec<_>>());
}

/// Builds a fresh broker delivering into `sink`.
type BrokerFactory = fn(Arc<RecordingSink>) -> Box<dyn Broker>;

fn implementations() -> Vec<(&'static str, BrokerFactory)> {
    vec![("memory", |sink| Box::new(MemoryBroker::new(sink)))]
}

#[tokio::test]
async fn every_broker_honours_the_contract() {
    for (name, build) in implementations() {
        let sink = Arc::new(RecordingSink::default());
        let broker = build(sink.clone());
        assert!(broker.is_ready(), "{name} ready");
        delivers_only_subscribed_channels(broker.as_ref(), &sink).await;
        subscriptions_are_reference_counted(broker.as_ref()).await;
        preserves_order_per_channel(broker.as_ref(), &sink).await;
    }
}
