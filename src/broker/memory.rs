//! The embedded single-node broker: no Redis, no network.
//!
//! `publish` hands the publication straight to the local sink when the channel is subscribed
//! (and drops it otherwise, as Redis would with no subscriber). Subscriptions are reference
//! counts in a concurrent map. Limits: one node only; never unavailable.

use std::sync::Arc;

use dashmap::DashMap;

use super::{Broker, BrokerFuture, BrokerSink, Publication};
use crate::metrics as names;
use crate::protocol::ChannelName;

pub struct MemoryBroker {
    sink: Arc<dyn BrokerSink>,
    subscriptions: DashMap<ChannelName, usize>,
}

impl MemoryBroker {
    pub fn new(sink: Arc<dyn BrokerSink>) -> Self {
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
        if self.subscriptions.contains_key(&publication.channel) {
            self.sink.on_publication(Arc::new(publication));
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe(&self, channel: &ChannelName) -> BrokerFuture {
        *self.subscriptions.entry(channel.clone()).or_insert(0) += 1;
        self.record_gauge();
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe(&self, channel: &ChannelName) -> BrokerFuture {
        self.subscriptions.remove_if_mut(channel, |_, references| {
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
