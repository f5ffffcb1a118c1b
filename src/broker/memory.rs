//! The embedded single-node broker: no Redis, no network.
//!
//! `publish` hands the publication straight to the local sink when its topic is subscribed
//! (and drops it otherwise, as Redis would with no subscriber), and answers with the sink's
//! verdict, so a publisher whose channel is overloaded is told so instead of losing the message
//! silently. Control operations go straight to the sink. Subscriptions are reference counts in a
//! concurrent map. Limits: one node only; never unavailable.
//!
//! History (the same contract as the Redis function library, see [`super::history`]): a ring
//! of the channel's last `size` publications behind one lock per channel, under which the
//! offset is given, the publication recorded and handed to the sink, so offsets reach members
//! in order whoever publishes. A recorded publication is never refused: if the channel's group
//! is too far behind to take it, the group is told of the gap and reads it from the ring. A
//! channel untouched for its `ttl` starts over with a new epoch when next used; expired
//! channels are swept every [`SWEEP_EVERY`] recorded publications.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;

use super::history::{History, HistoryQuery, HistoryRule};
use super::{Broker, BrokerError, BrokerFuture, BrokerSink, HistoryFuture, Publication, Topic};
use crate::metrics as names;
use crate::protocol::{ChannelName, ControlOp, Position};

/// Recorded publications between two sweeps of expired channels.
const SWEEP_EVERY: u64 = 4_096;
/// Characters of a new epoch.
const EPOCH_LENGTH: usize = 8;

pub struct MemoryBroker {
    sink: Arc<dyn BrokerSink>,
    subscriptions: DashMap<Topic, usize>,
    histories: DashMap<ChannelName, Arc<Mutex<Ring>>>,
    recorded: AtomicU64,
}

/// One channel's history.
struct Ring {
    epoch: Arc<str>,
    top: u64,
    publications: VecDeque<Arc<Publication>>,
    expires_at: Instant,
}

impl Ring {
    fn new(rule: HistoryRule, now: Instant) -> Self {
        Self {
            epoch: Arc::from(new_epoch()),
            top: 0,
            publications: VecDeque::new(),
            expires_at: now + rule.ttl,
        }
    }

    /// Starts over (a new epoch) if the history expired.
    fn refresh(&mut self, rule: HistoryRule, now: Instant) {
        if now >= self.expires_at {
            *self = Ring::new(rule, now);
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    fn read(&self, query: HistoryQuery) -> Vec<Arc<Publication>> {
        let covered = |publication: &&Arc<Publication>| {
            publication
                .position
                .as_ref()
                .is_some_and(|position| query.covers(position.offset))
        };
        if query.newest_first {
            let iter = self.publications.iter().rev().filter(covered);
            iter.take(query.limit).cloned().collect()
        } else {
            let iter = self.publications.iter().filter(covered);
            iter.take(query.limit).cloned().collect()
        }
    }
}

fn new_epoch() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(EPOCH_LENGTH)
        .collect()
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
            histories: DashMap::new(),
            recorded: AtomicU64::new(0),
        }
    }

    fn record_gauge(&self) {
        metrics::gauge!(names::BROKER_SUBSCRIPTIONS).set(self.subscriptions.len() as f64);
    }

    fn ring(&self, channel: &ChannelName, rule: HistoryRule) -> Arc<Mutex<Ring>> {
        self.histories
            .entry(channel.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Ring::new(rule, Instant::now()))))
            .clone()
    }

    /// Hands a publication to the sink if its topic is subscribed here.
    fn deliver(&self, publication: Arc<Publication>) -> Result<(), BrokerError> {
        let addressed = matches!(publication.topic, Topic::Connection(_))
            || self.subscriptions.contains_key(&publication.topic);
        if addressed {
            self.sink
                .on_publication(publication)
                .map_err(BrokerError::from)
        } else {
            Ok(())
        }
    }

    /// Gives the publication its offset, records it and delivers it, under the channel's lock.
    fn record(
        &self,
        channel: &ChannelName,
        rule: HistoryRule,
        mut publication: Publication,
    ) -> Result<(), BrokerError> {
        let ring = self.ring(channel, rule);
        let now = Instant::now();
        {
            let mut ring = ring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ring.refresh(rule, now);
            ring.top = ring.top.saturating_add(1);
            ring.expires_at = now + rule.ttl;
            publication.position = Some(ring.position());
            let publication = Arc::new(publication);
            ring.publications.push_back(publication.clone());
            while ring.publications.len() > rule.size {
                ring.publications.pop_front();
            }
            metrics::counter!(names::HISTORY_APPENDS).increment(1);
            // Delivered under the lock, so members receive offsets in order. A group too far
            // behind to take it reads it from history instead: the publication is not lost.
            if self.deliver(publication).is_err() {
                self.sink.on_gap(Some(channel));
            }
        }
        if self.recorded.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now);
        }
        Ok(())
    }

    /// Forgets channels whose history expired.
    fn sweep(&self, now: Instant) {
        self.histories
            .retain(|_, ring| ring.lock().map_or(true, |ring| ring.expires_at > now));
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, publication: Publication) -> BrokerFuture {
        metrics::counter!(names::BROKER_PUBLISHED).increment(1);
        let result = match (publication.history, publication.topic.channel().cloned()) {
            (Some(rule), Some(channel)) => self.record(&channel, rule, publication),
            _ => self.deliver(Arc::new(publication)),
        };
        Box::pin(std::future::ready(result))
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

    fn history(
        &self,
        channel: &ChannelName,
        rule: HistoryRule,
        query: HistoryQuery,
    ) -> HistoryFuture {
        let started = Instant::now();
        let ring = self.ring(channel, rule);
        let history = {
            let mut ring = ring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ring.refresh(rule, started);
            History {
                position: ring.position(),
                publications: ring.read(query),
            }
        };
        metrics::histogram!(names::HISTORY_READ_SECONDS).record(started.elapsed().as_secs_f64());
        Box::pin(std::future::ready(Ok(history)))
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
    use serde_json::json;
    use std::time::Duration;

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

        fn on_gap(&self, _channel: Option<&ChannelName>) {}
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

    #[tokio::test]
    async fn an_expired_history_starts_over_with_a_new_epoch() {
        let broker = MemoryBroker::new(Arc::new(OverloadedSink));
        let channel = ChannelName::parse("room").expect("channel");
        let rule = HistoryRule {
            size: 2,
            ttl: Duration::from_millis(30),
        };
        for n in 0..3 {
            let publication = Publication {
                history: Some(rule),
                ..Publication::new(channel.clone(), json!(n), None)
            };
            broker
                .publish(publication)
                .await
                .expect("not subscribed, recorded");
        }
        let all = HistoryQuery {
            limit: 10,
            ..HistoryQuery::position()
        };
        let before = broker.history(&channel, rule, all).await.expect("read");
        assert_eq!(before.position.offset, 3);
        let offsets: Vec<u64> = before
            .publications
            .iter()
            .filter_map(|publication| publication.position.as_ref().map(|p| p.offset))
            .collect();
        assert_eq!(offsets, vec![2, 3], "trimmed to the size");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let after = broker.history(&channel, rule, all).await.expect("read");
        assert_eq!(after.position.offset, 0);
        assert_ne!(after.position.epoch, before.position.epoch);
        assert!(after.publications.is_empty());
    }
}
