//! The embedded single-node broker: no Redis, no network.
//!
//! `publish` hands the publication straight to the local sink when its topic is subscribed
//! (and drops it otherwise, as Redis would with no subscriber), and answers with the sink's
//! verdict, so a publisher whose channel is overloaded is told so instead of losing the message
//! silently. Control operations go straight to the sink. Subscriptions are reference counts in a
//! concurrent map. Limits: one node only; never unavailable.

use std::sync::Arc;

use dashmap::DashMap;

use super::{Broker, BrokerError, BrokerFuture, BrokerSink, Publication, Topic};
use crate::metrics as names;
use crate::protocol::ControlOp;

pub struct MemoryBroker {
    sink: Arc<dyn BrokerSink>,
    subscriptions: DashMap<Topic, usize>,
}

impl MemoryBroker {
    pub fn new(sink: Arc<dyn BrokerSink>) -> Self {
        // Never unavailable.
        metrics::gauge!(names::BROKER_UP).set(1.0);
        names::register::gauge(names::BROKER_SUBSCRIPTIONS);
        names::register::counter(names::BROKER_PUBLISHED, &[]);
        Self {
            sink,
            subscriptions: DashMap::new(),
        }
    }

    fn record_gauge(&self) {
        metrics::gauge!(names::BROKER_SUBSCRIPTIONS).set(self.subscriptions.len() as f64);
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, publication: Publication) -> BrokerFuture {
        metrics::counter!(names::BROKER_PUBLISHED).increment(1);
        let addressed = matches!(publication.topic, Topic::Connection(_))
            || self.subscriptions.contains_key(&publication.topic);
        let delivered = if addressed {
            self.sink
                .on_publication(Arc::new(publication))
                .map_err(BrokerError::from)
        } else {
            Ok(())
        };
        Box::pin(std::future::ready(delivered))
    }

    fn publish_control(&self, op: ControlOp) -> BrokerFuture {
        self.sink.on_control(op);
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(&self, topic: &Topic) -> BrokerFuture {
        *self.subscriptions.entry(topic.clone()).or_insert(0) += 1;
        self.record_gauge();
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe(&self, topic: &Topic) -> BrokerFuture {
        self.subscriptions.remove_if_mut(topic, |_, references| {
            *references = references.saturating_sub(1);
            *references == 0
        });
        self.record_gauge();
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscriptions(&self) -> usize {
        self.subscriptions.len()
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::SinkError;
    use crate::protocol::ChannelName;
    use serde_json::json;

    /// A sink whose channel is always overloaded.
    struct OverloadedSink;

    impl BrokerSink for OverloadedSink {
        fn on_publication(&self, publication: Arc<Publication>) -> Result<(), SinkError> {
            let channel = publication.topic.channel().cloned();
            Err(SinkError::Overloaded(
                channel.expect("a channel publication"),
            ))
        }

        fn on_control(&self, _op: ControlOp) {}
    }

    #[tokio::test]
    async fn an_overloaded_channel_fails_the_publish_instead_of_dropping_it() {
        let broker = MemoryBroker::new(Arc::new(OverloadedSink));
        let channel = ChannelName::parse("busy").expect("channel");
        broker
            .subscribe(&Topic::Channel(channel.clone()))
            .await
            .expect("subscribe");
        let result = broker
            .publish(Publication::new(channel.clone(), json!(1), None))
            .await;
        assert_eq!(
            result,
            Err(BrokerError::Overloaded(SinkError::Overloaded(channel)))
        );
    }
}
