//! The bridge for `channels_redis.pubsub.RedisPubSubChannelLayer`: a group is the Redis pub/sub
//! channel `PREFIX__group__NAME` on the host its name hashes to, and `group_send` is a `PUBLISH`
//! of the serialized message there. A node subscribes to the channels of the groups it wants
//! (one subscriber client per host; fred subscribes them again after a reconnect) and checks
//! every second that each host's subscriptions match, so one that failed while Redis was down
//! is made again. Nothing is stored: a message published while no node is subscribed is gone,
//! as it is for Django's own consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{EventInterface, PubsubInterface};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::message::Decoder;
use super::shards::shard_of;
use super::{Bridge, ChannelsRedisConfig};
use crate::broker::redis::link::Link;
use crate::broker::redis::start_subscriber;
use crate::broker::{BrokerConfig, BrokerError};
use crate::metrics as names;

/// How often subscriptions are compared with what the node wants.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one (un)subscribe may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

struct PubSub {
    bridge: Arc<Bridge>,
    decoder: Decoder,
    /// `PREFIX__group__`: a group's channel is this and its name.
    channel_prefix: String,
    clients: Vec<(SubscriberClient, Arc<Link>)>,
}

pub(super) fn start(
    config: &ChannelsRedisConfig,
    hosts: &[BrokerConfig],
    decoder: Decoder,
    bridge: Arc<Bridge>,
) -> Result<Vec<JoinHandle<()>>, BrokerError> {
    let clients = hosts
        .iter()
        .map(|host| start_subscriber(host, "bridge"))
        .collect::<Result<Vec<_>, _>>()?;
    let pubsub = Arc::new(PubSub {
        bridge,
        decoder,
        channel_prefix: format!("{}__group__", config.prefix),
        clients,
    });
    let mut tasks = vec![tokio::spawn(keep_subscriptions(pubsub.clone()))];
    for index in 0..pubsub.clients.len() {
        tasks.push(tokio::spawn(receive(pubsub.clone(), index)));
    }
    Ok(tasks)
}

impl PubSub {
    /// The wanted groups' channels, by host.
    fn channels_by_host(&self, groups: &BTreeSet<String>) -> BTreeMap<usize, BTreeSet<String>> {
        let mut by_host: BTreeMap<usize, BTreeSet<String>> = (0..self.clients.len())
            .map(|host| (host, BTreeSet::new()))
            .collect();
        for group in groups {
            let channel = format!("{}{group}", self.channel_prefix);
            by_host
                .entry(shard_of(&channel, self.clients.len()))
                .or_default()
                .insert(channel);
        }
        by_host
    }
}

/// Subscribes and unsubscribes each host's client until it matches what the node wants.
async fn keep_subscriptions(pubsub: Arc<PubSub>) {
    let mut wanted = pubsub.bridge.wanted.subscribe();
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            _ = check.tick() => {}
        }
        let want = wanted.borrow_and_update().clone();
        let mut joined = 0;
        for (host, channels) in pubsub.channels_by_host(&want) {
            let Some((client, link)) = pubsub.clients.get(host) else {
                continue;
            };
            let tracked: BTreeSet<String> = client
                .tracked_channels()
                .into_iter()
                .map(|channel| channel.to_string())
                .collect();
            let add: Vec<String> = channels.difference(&tracked).cloned().collect();
            let remove: Vec<String> = tracked.difference(&channels).cloned().collect();
            if link.is_up(client) {
                if !add.is_empty() {
                    let done = tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.subscribe(add)).await;
                    record(matches!(done, Ok(Ok(()))));
                }
                if !remove.is_empty() {
                    let done =
                        tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.unsubscribe(remove)).await;
                    record(matches!(done, Ok(Ok(()))));
                }
            }
            joined += client.tracked_channels().len();
        }
        pubsub.bridge.set_joined(joined);
    }
}

fn record(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!(names::BRIDGE_MEMBERSHIP_WRITES, "result" => result).increment(1);
}

/// Hands what one host's client receives to the bridge.
async fn receive(pubsub: Arc<PubSub>, host: usize) {
    let Some((client, _)) = pubsub.clients.get(host) else {
        return;
    };
    let mut messages = client.message_rx();
    loop {
        let message = match messages.recv().await {
            Ok(message) => message,
            Err(RecvError::Lagged(missed)) => {
                metrics::counter!(names::BRIDGE_DROPPED, "reason" => names::bridge_dropped::LAGGED)
                    .increment(missed);
                tracing::warn!(
                    missed,
                    "fell behind channels_redis's pub/sub; messages were lost"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(group) = message.channel.strip_prefix(pubsub.channel_prefix.as_str()) else {
            Bridge::dropped(names::bridge_dropped::UNMAPPED, &"not a group channel");
            continue;
        };
        match pubsub
            .decoder
            .decode(message.value.as_bytes().unwrap_or_default())
        {
            Ok(decoded) => pubsub.bridge.deliver(group, decoded.data),
            Err(err) => Bridge::dropped(names::bridge_dropped::DECODE, &err),
        }
    }
}
