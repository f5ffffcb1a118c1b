//! The channels_redis bridge: Django code that calls `group_send` on its channel layer reaches
//! Switchboard clients, with neither that code nor its `CHANNEL_LAYERS` changed
//! (docs/django.md, "Migrating from Django Channels").
//!
//! The nodes take part in channels_redis as receivers of group messages. [`BridgedBroker`] wraps
//! the node's broker and watches its channel subscriptions: when a Switchboard channel gains
//! its first local member (its group subscribes) and a rule of [`mapping`] maps it to a Django
//! group, the node joins that group, and it leaves when the channel's last local member does.
//! How a node joins depends on the layer:
//! - [`core_layer`] (`RedisChannelLayer`): the node is a member of the group's sorted set under a
//!   channel name of its own (`switchboard.<node>!<group>`), renews it well inside
//!   `group_expiry`, withdraws it at shutdown, and pops the channel key `group_send` writes to;
//! - [`pubsub_layer`] (`RedisPubSubChannelLayer`): the node subscribes to the group's channel.
//!
//! What arrives is decoded by [`message`] (random prefix, Fernet, MessagePack) and handed to the
//! node's [`BrokerSink`] as a publication on the mapped channel, so its members get
//! `{"type":"message","channel":…,"data":<the message dict>}` (the dict's `type` kept). Every
//! node holding members receives the message once and delivers it to its own members: the
//! bridge never goes through Switchboard's broker, and records no history (a bridged message
//! has no offset, like a back end's plain `PUBLISH`).
//!
//! One way only: a Switchboard publish is not forwarded to Django groups (docs say why).
//! This module and `broker::redis` are the only ones that import `fred`; the bridge's clients
//! are started by `broker::redis` and talk to channels_redis's Redis, never Switchboard's keys.

pub mod config;
mod core_layer;
pub mod mapping;
pub mod message;
mod pubsub_layer;
pub mod shards;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{
    Broker, BrokerConfig, BrokerError, BrokerFuture, BrokerSink, BrokerType, HistoryFuture,
    HistoryQuery, HistoryRule, Publication, Topic,
};
use crate::metrics as names;
use crate::protocol::ChannelName;
pub use config::{BridgeConfig, ChannelsRedisConfig, Layer};
pub use mapping::{GroupMap, GroupRule};
use message::Decoder;

/// How long a stopping node spends withdrawing its memberships.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis connection settings for one of the layer's hosts (a problem in words, for the
/// caller to put under its key).
fn redis_config(host: &str) -> Result<BrokerConfig, String> {
    if !(host.starts_with("redis://") || host.starts_with("rediss://")) {
        return Err(format!(
            "{:?} is not a redis:// or rediss:// URL",
            crate::broker::redis::redacted(host)
        ));
    }
    let config = BrokerConfig {
        broker_type: BrokerType::Redis,
        url: host.to_owned(),
        cluster: false,
        tls_ca_file: None,
        ..BrokerConfig::default()
    };
    crate::broker::redis::validate_url(&config).map_err(|problem| problem.message)?;
    Ok(config)
}

/// What the bridge's tasks share: the rules, the groups the node should be in, and where
/// messages go.
pub(crate) struct Bridge {
    map: GroupMap,
    sink: Arc<dyn BrokerSink>,
    /// Local subscriptions per bridged channel (a group's subscribe and its successor's may
    /// overlap, so they are counted).
    channels: Mutex<HashMap<ChannelName, usize>>,
    /// The Django groups the node should be a member of now.
    wanted: watch::Sender<BTreeSet<String>>,
    /// How many groups the layer holds a membership of in Redis (for the withdrawal).
    joined: watch::Sender<usize>,
    stopping: AtomicBool,
}

impl Bridge {
    fn new(map: GroupMap, sink: Arc<dyn BrokerSink>) -> Self {
        Self {
            map,
            sink,
            channels: Mutex::new(HashMap::new()),
            wanted: watch::Sender::new(BTreeSet::new()),
            joined: watch::Sender::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// A local subscription to `channel` began.
    fn add(&self, channel: &ChannelName) {
        let Some(group) = self.map.group_for(channel) else {
            return;
        };
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let count = channels.entry(channel.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.wanted.send_modify(|wanted| {
                wanted.insert(group);
            });
        }
    }

    /// A local subscription to `channel` ended.
    fn remove(&self, channel: &ChannelName) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(count) = channels.get_mut(channel) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            channels.remove(channel);
            if let Some(group) = self.map.group_for(channel) {
                self.wanted.send_modify(|wanted| {
                    wanted.remove(&group);
                });
            }
        }
    }

    /// Hands a decoded message for `group` to the node's members of its channel.
    fn deliver(&self, group: &str, data: Value) {
        let Some(channel) = self.map.channel_for(group) else {
            metrics::counter!(names::BRIDGE_DROPPED, "reason" => names::bridge_dropped::UNMAPPED)
                .increment(1);
            return;
        };
        metrics::counter!(names::BRIDGE_RECEIVED).increment(1);
        // A refusal (an overloaded group) is counted by the sink.
        let _ = self
            .sink
            .on_publication(Arc::new(Publication::new(channel, data, None)));
    }

    /// Counts and logs (at debug: Redis is shared, its content not ours) a message dropped.
    fn dropped(reason: &'static str, detail: &dyn std::fmt::Display) {
        metrics::counter!(names::BRIDGE_DROPPED, "reason" => reason).increment(1);
        tracing::debug!(reason, %detail, "channels_redis message dropped");
    }

    /// Records how many memberships the layer holds in Redis.
    fn set_joined(&self, count: usize) {
        metrics::gauge!(names::BRIDGE_GROUPS).set(count as f64);
        self.joined.send_replace(count);
    }

    /// Leaves every group, for the shutdown: waits (bounded) until the layer has withdrawn.
    async fn withdraw(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wanted.send_replace(BTreeSet::new());
        let mut joined = self.joined.subscribe();
        let withdrawn = joined.wait_for(|count| *count == 0);
        if tokio::time::timeout(WITHDRAW_TIMEOUT, withdrawn)
            .await
            .is_err()
        {
            tracing::warn!(
                "channels_redis memberships not withdrawn in time; they expire after group_expiry"
            );
        }
    }
}

/// The node's broker, with the bridge watching its channel subscriptions.
pub struct BridgedBroker {
    inner: Arc<dyn Broker>,
    bridge: Arc<Bridge>,
    tasks: Vec<JoinHandle<()>>,
}

impl BridgedBroker {
    /// Starts the layer's clients and tasks (Redis need not be up); must run inside a tokio
    /// runtime. Fails only on a bad configuration.
    pub fn start(
        config: &ChannelsRedisConfig,
        inner: Arc<dyn Broker>,
        sink: Arc<dyn BrokerSink>,
    ) -> Result<Self, BrokerError> {
        let map = GroupMap::new(&config.groups).map_err(BrokerError::Config)?;
        let hosts = config
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| {
                redis_config(host).map_err(|message| {
                    BrokerError::Config(crate::config::KeyError::new(
                        format!("{}[{index}]", config::key("hosts")),
                        message,
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bridge = Arc::new(Bridge::new(map, sink));
        register_metrics();
        let tasks = match config.layer {
            Layer::Core => {
                // channels_redis checks a token's age against expiry + 10 s.
                let ttl = config.expiry.0.saturating_add(Duration::from_secs(10));
                let decoder = Decoder::new(
                    config.random_prefix_length(),
                    &config.symmetric_encryption_keys,
                    Some(ttl),
                );
                core_layer::start(config, &hosts, decoder, bridge.clone())?
            }
            Layer::Pubsub => {
                let decoder = Decoder::new(
                    config.random_prefix_length(),
                    &config.symmetric_encryption_keys,
                    None,
                );
                pubsub_layer::start(config, &hosts, decoder, bridge.clone())?
            }
        };
        tracing::info!(layer = ?config.layer, hosts = hosts.len(), prefix = %config.prefix, "channels_redis bridge starting");
        Ok(Self {
            inner,
            bridge,
            tasks,
        })
    }
}

impl Broker for BridgedBroker {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn publish(&self, publication: Publication) -> BrokerFuture {
        self.inner.publish(publication)
    }

    fn publish_control(&self, op: crate::protocol::ControlOp) -> BrokerFuture {
        self.inner.publish_control(op)
    }

    fn subscribe(&self, topic: &Topic) -> BrokerFuture {
        if let Topic::Channel(channel) = topic {
            self.bridge.add(channel);
        }
        self.inner.subscribe(topic)
    }

    fn unsubscribe(&self, topic: &Topic) -> BrokerFuture {
        if let Topic::Channel(channel) = topic {
            self.bridge.remove(channel);
        }
        self.inner.unsubscribe(topic)
    }

    fn history(
        &self,
        channel: &ChannelName,
        rule: HistoryRule,
        query: HistoryQuery,
    ) -> HistoryFuture {
        self.inner.history(channel, rule, query)
    }

    fn subscriptions(&self) -> usize {
        self.inner.subscriptions()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn shutdown(&self) -> BrokerFuture {
        let bridge = self.bridge.clone();
        let inner = self.inner.shutdown();
        Box::pin(async move {
            bridge.withdraw().await;
            inner.await
        })
    }
}

impl Drop for BridgedBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Registers the bridge's series at zero.
fn register_metrics() {
    use crate::metrics::register;
    register::counter(names::BRIDGE_RECEIVED, &[]);
    for reason in names::bridge_dropped::ALL {
        register::counter(names::BRIDGE_DROPPED, &[("reason", reason)]);
    }
    register::counter(names::BRIDGE_FULL, &[]);
    for result in names::results::BRIDGE_MEMBERSHIP {
        register::counter(names::BRIDGE_MEMBERSHIP_WRITES, &[("result", result)]);
    }
    register::gauge(names::BRIDGE_GROUPS);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSink;
    impl BrokerSink for NoSink {
        fn on_publication(&self, _: Arc<Publication>) -> Result<(), crate::broker::SinkError> {
            Ok(())
        }
        fn on_control(&self, _: crate::protocol::ControlOp) {}
        fn on_gap(&self, _: Option<&ChannelName>) {}
    }

    #[test]
    fn a_group_is_wanted_while_its_channel_has_local_subscriptions() {
        let map = GroupMap::new(&[GroupRule::new("chat_*", "room:{1}")]).expect("rules");
        let bridge = Bridge::new(map, Arc::new(NoSink));
        let room = ChannelName::parse("room:1").expect("name");
        let unmapped = ChannelName::parse("lobby").expect("name");
        bridge.add(&room);
        bridge.add(&room);
        bridge.add(&unmapped);
        bridge.remove(&unmapped);
        assert_eq!(
            *bridge.wanted.borrow(),
            BTreeSet::from(["chat_1".to_owned()])
        );
        bridge.remove(&room);
        assert_eq!(
            bridge.wanted.borrow().len(),
            1,
            "the successor group still holds it"
        );
        bridge.remove(&room);
        bridge.remove(&room);
        assert!(bridge.wanted.borrow().is_empty());
        bridge.stopping.store(true, Ordering::SeqCst);
        bridge.add(&room);
        assert!(
            bridge.wanted.borrow().is_empty(),
            "a stopping node joins nothing"
        );
    }
}
