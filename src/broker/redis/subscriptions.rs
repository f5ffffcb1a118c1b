//! The node's Redis subscriptions: what it needs (reference counts per Redis channel, plus the
//! permanent control and node channels) and what Redis has confirmed, reconciled by one task.
//!
//! Callers only change reference counts, which is synchronous and cheap; the [`reconcile`] task
//! turns the difference between "needed" and "confirmed" into as few commands as it can: one
//! `SUBSCRIBE` (or `UNSUBSCRIBE`) per [`BATCH`] classic channels, one `SSUBSCRIBE` per hash slot
//! for sharded ones (Redis refuses cross-slot batches), all of a round's commands in flight at
//! once. While a round is in flight (and for [`COALESCE`] after a wake-up) new changes
//! accumulate, so a burst of 10,000 joins costs a few dozen rounds, not 10,000 round trips.
//!
//! After a reconnect Redis has forgotten every subscription of the old connection: the task
//! forgets what was confirmed and subscribes everything still needed again, including channels
//! whose subscribe failed while Redis was down (fred's own `manage_subscriptions` replays only
//! subscriptions that once succeeded, and cannot tell a waiting join when its channel is live).
//! A channel that was live before the reconnect and is live again is reported to the sink as a
//! gap ([`crate::broker::BrokerSink::on_gap`]): what was published meanwhile never reached this
//! node, and a group that keeps history reads it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Options;
use futures_util::future::join_all;
use tokio::sync::{Notify, broadcast, oneshot};

use super::names::RedisChannel;
use super::{Shared, not_connected};
use crate::broker::{BrokerError, BrokerFuture};
use crate::metrics as names;

/// Classic channels per `SUBSCRIBE`/`UNSUBSCRIBE` command.
const BATCH: usize = 1_000;
/// How long a subscription command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the task lets changes accumulate after being woken, so that a burst of joins becomes
/// one round. Small next to a join's own cost to the client (a frame and a reply).
const COALESCE: Duration = Duration::from_millis(1);
/// How soon a failed round, or a disconnected client, is looked at again.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

#[derive(Default)]
struct State {
    /// Reference counts of the channels callers need.
    references: HashMap<RedisChannel, usize>,
    /// Channels needed for the node's whole life (control, node probe).
    permanent: Vec<RedisChannel>,
    /// Channels Redis has confirmed on the current connection.
    confirmed: HashSet<RedisChannel>,
    /// Callers waiting for a channel to be confirmed.
    waiters: HashMap<RedisChannel, Vec<Waiter>>,
    /// Channels that were live on the previous connection and are not confirmed again yet.
    interrupted: HashSet<RedisChannel>,
}

impl State {
    fn needed(&self, channel: &RedisChannel) -> bool {
        self.references.contains_key(channel) || self.permanent.contains(channel)
    }

    fn resolve(&mut self, channel: &RedisChannel, result: &Result<(), BrokerError>) {
        for waiter in self.waiters.remove(channel).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }
}

#[derive(Default)]
pub(super) struct Subscriptions {
    state: Mutex<State>,
    wake: Notify,
}

impl Subscriptions {
    pub(super) fn new(permanent: Vec<RedisChannel>) -> Self {
        Self {
            state: Mutex::new(State {
                permanent,
                ..State::default()
            }),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves counts that are still consistent enough to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a reference; the future resolves once Redis confirms the subscription. When the
    /// client is not connected it fails at once, and the reference stays: the channel is
    /// subscribed when Redis is back.
    pub(super) fn add(&self, channel: RedisChannel, connected: bool) -> BrokerFuture {
        let receiver = {
            let mut state = self.state();
            *state.references.entry(channel.clone()).or_insert(0) += 1;
            self.record_gauge(&state);
            if state.confirmed.contains(&channel) {
                return Box::pin(std::future::ready(Ok(())));
            }
            if !connected {
                self.wake.notify_one();
                return Box::pin(std::future::ready(Err(not_connected())));
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.entry(channel).or_default().push(sender);
            receiver
        };
        self.wake.notify_one();
        Box::pin(async move {
            receiver.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "the broker stopped before subscribing".into(),
                ))
            })
        })
    }

    /// Drops a reference; the channel is unsubscribed after its last one.
    pub(super) fn release(&self, channel: &RedisChannel) {
        let mut state = self.state();
        let last = match state.references.get_mut(channel) {
            Some(references) => {
                *references = references.saturating_sub(1);
                *references == 0
            }
            None => false,
        };
        if last {
            state.references.remove(channel);
            state.interrupted.remove(channel);
            self.record_gauge(&state);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// How many channels callers hold references to (not counting the permanent ones).
    pub(super) fn len(&self) -> usize {
        self.state().references.len()
    }

    /// Whether Redis has confirmed `channel` on the current connection.
    #[cfg(test)]
    fn is_confirmed(&self, channel: &RedisChannel) -> bool {
        self.state().confirmed.contains(channel)
    }

    fn record_gauge(&self, state: &State) {
        metrics::gauge!(names::BROKER_SUBSCRIPTIONS).set(state.references.len() as f64);
    }

    /// What to subscribe and unsubscribe now. Channels to unsubscribe leave `confirmed` before
    /// the command is sent, so a join racing with it waits for a fresh subscribe instead of
    /// trusting one that is being torn down.
    fn plan(&self) -> (Vec<RedisChannel>, Vec<RedisChannel>) {
        let mut state = self.state();
        let mut subscribe: Vec<RedisChannel> = state
            .references
            .keys()
            .chain(state.permanent.iter())
            .filter(|channel| !state.confirmed.contains(*channel))
            .cloned()
            .collect();
        subscribe.sort_unstable();
        subscribe.dedup();
        let unsubscribe: Vec<RedisChannel> = state
            .confirmed
            .iter()
            .filter(|channel| !state.needed(channel))
            .cloned()
            .collect();
        for channel in &unsubscribe {
            state.confirmed.remove(channel);
        }
        (subscribe, unsubscribe)
    }

    /// Records Redis's answer for `channels`; returns those that are live again after a
    /// reconnect interrupted them.
    fn confirm(
        &self,
        channels: &[RedisChannel],
        result: &Result<(), BrokerError>,
    ) -> Vec<RedisChannel> {
        let mut state = self.state();
        let mut resumed = Vec::new();
        for channel in channels {
            if result.is_ok() {
                state.confirmed.insert(channel.clone());
                if state.interrupted.remove(channel) {
                    resumed.push(channel.clone());
                }
            }
            state.resolve(channel, result);
        }
        resumed
    }

    /// After a reconnect: Redis holds none of the old connection's subscriptions.
    fn forget_confirmed(&self) -> usize {
        let mut state = self.state();
        let confirmed = std::mem::take(&mut state.confirmed);
        state.interrupted.extend(confirmed);
        let State {
            interrupted,
            references,
            permanent,
            ..
        } = &mut *state;
        interrupted
            .retain(|channel| references.contains_key(channel) || permanent.contains(channel));
        state.references.len() + state.permanent.len()
    }

    fn fail_waiters(&self) {
        let mut state = self.state();
        let channels: Vec<RedisChannel> = state.waiters.keys().cloned().collect();
        for channel in channels {
            state.resolve(&channel, &Err(not_connected()));
        }
    }
}

/// Keeps the subscriber's Redis subscriptions equal to what the node needs, for as long as the
/// client lives; returns when it is closed.
pub(super) async fn reconcile(shared: Arc<Shared>) {
    let subscriptions = &shared.subscriptions;
    let client = &shared.subscriber;
    let mut reconnects = client.reconnect_rx();
    let options = Options {
        timeout: Some(COMMAND_TIMEOUT),
        fail_fast: true,
        max_attempts: Some(1),
        ..Options::default()
    };
    let commands = client.with_options(&options);
    let mut retry = false;
    loop {
        if shared.can_subscribe() {
            let (subscribe, unsubscribe) = subscriptions.plan();
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                let resumed = |channels: Vec<RedisChannel>| report_gaps(&shared, channels);
                retry = !apply(subscriptions, &commands, subscribe, unsubscribe, &resumed).await;
                if !retry {
                    // Changes that arrived during the round are handled at once.
                    tokio::time::sleep(COALESCE).await;
                    continue;
                }
            }
        } else {
            subscriptions.fail_waiters();
            retry = true;
        }
        tokio::select! {
            () = subscriptions.wake.notified() => tokio::time::sleep(COALESCE).await,
            event = reconnects.recv() => match event {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let needed = subscriptions.forget_confirmed();
                    tracing::debug!(channels = needed, "redis subscriber connected; subscribing");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tokio::time::sleep(RETRY_INTERVAL), if retry => {}
        }
    }
}

/// Tells the sink that the channels among `resumed` missed what was published while their
/// subscription was down.
fn report_gaps(shared: &Shared, resumed: Vec<RedisChannel>) {
    for channel in resumed {
        if let super::names::Incoming::Channel(name) = shared.names.parse(&channel.name) {
            if let Ok(name) = crate::protocol::ChannelName::parse(name) {
                shared.sink.on_gap(Some(&name));
            }
        }
    }
}

/// Which way a command changes the subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Subscribe,
    Unsubscribe,
}

/// Sends one round of commands, all at once; `true` if every one succeeded.
async fn apply<C: PubsubInterface + Sync>(
    subscriptions: &Subscriptions,
    client: &C,
    subscribe: Vec<RedisChannel>,
    unsubscribe: Vec<RedisChannel>,
    resumed: &(dyn Fn(Vec<RedisChannel>) + Sync),
) -> bool {
    let commands = batches(unsubscribe)
        .into_iter()
        .map(|batch| (Change::Unsubscribe, batch))
        .chain(
            batches(subscribe)
                .into_iter()
                .map(|batch| (Change::Subscribe, batch)),
        )
        .map(|(change, (sharded, batch))| async move {
            let result = send(client, change, sharded, &batch)
                .await
                .map_err(|err| BrokerError::Unavailable(err.to_string()));
            if let Err(err) = &result {
                // A failed unsubscribe may leave the channel subscribed in Redis until the next
                // reconnect; its publications find no group here and are dropped.
                tracing::warn!(?change, channels = batch.len(), error = %err, "redis subscription change failed");
            }
            if change == Change::Subscribe {
                resumed(subscriptions.confirm(&batch, &result));
            }
            result.is_ok()
        });
    join_all(commands).await.into_iter().all(|ok| ok)
}

/// One `SUBSCRIBE`, `UNSUBSCRIBE`, `SSUBSCRIBE` or `SUNSUBSCRIBE` of `batch`.
async fn send<C: PubsubInterface + Sync>(
    client: &C,
    change: Change,
    sharded: bool,
    batch: &[RedisChannel],
) -> Result<(), fred::error::Error> {
    let names: Vec<String> = batch.iter().map(|channel| channel.name.clone()).collect();
    match (change, sharded) {
        (Change::Subscribe, false) => client.subscribe(names).await,
        (Change::Subscribe, true) => client.ssubscribe(names).await,
        (Change::Unsubscribe, false) => client.unsubscribe(names).await,
        (Change::Unsubscribe, true) => client.sunsubscribe(names).await,
    }
}

/// Splits channels into commands: classic ones in batches of [`BATCH`], sharded ones by hash
/// slot (a sharded command's channels must share a slot).
fn batches(channels: Vec<RedisChannel>) -> Vec<(bool, Vec<RedisChannel>)> {
    let (sharded, classic): (Vec<RedisChannel>, Vec<RedisChannel>) =
        channels.into_iter().partition(|channel| channel.sharded);
    let mut batches: Vec<(bool, Vec<RedisChannel>)> = classic
        .chunks(BATCH)
        .map(|chunk| (false, chunk.to_vec()))
        .collect();
    let mut by_slot: HashMap<u16, Vec<RedisChannel>> = HashMap::new();
    for channel in sharded {
        by_slot
            .entry(fred::util::redis_keyslot(channel.name.as_bytes()))
            .or_default()
            .push(channel);
    }
    batches.extend(by_slot.into_values().map(|batch| (true, batch)));
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str, sharded: bool) -> RedisChannel {
        RedisChannel {
            name: name.to_owned(),
            sharded,
        }
    }

    #[test]
    fn classic_channels_batch_by_count_and_sharded_ones_by_slot() {
        let mut channels: Vec<RedisChannel> = (0..2_500)
            .map(|n| channel(&format!("sb:user:{n}"), false))
            .collect();
        channels.push(channel("sb:ch:{room}:a", true));
        channels.push(channel("sb:ch:{room}:b", true));
        channels.push(channel("sb:ch:other", true));
        let batches = batches(channels);
        let classic: Vec<usize> = batches
            .iter()
            .filter(|(sharded, _)| !sharded)
            .map(|(_, batch)| batch.len())
            .collect();
        assert_eq!(classic, vec![1_000, 1_000, 500]);
        let mut sharded: Vec<usize> = batches
            .iter()
            .filter(|(sharded, _)| *sharded)
            .map(|(_, batch)| batch.len())
            .collect();
        sharded.sort_unstable();
        assert_eq!(
            sharded,
            vec![1, 2],
            "the two {{room}} channels share a slot"
        );
    }

    #[tokio::test]
    async fn references_are_counted_and_unsubscribing_forgets_the_confirmation_first() {
        let subscriptions = Subscriptions::new(vec![channel("sb:control", false)]);
        let room = channel("sb:ch:room", false);
        let first = subscriptions.add(room.clone(), true);
        let _second = subscriptions.add(room.clone(), true);
        let (subscribe, unsubscribe) = subscriptions.plan();
        assert_eq!(
            subscribe,
            vec![channel("sb:ch:room", false), channel("sb:control", false)]
        );
        assert!(unsubscribe.is_empty());
        assert!(subscriptions.confirm(&subscribe, &Ok(())).is_empty());
        assert_eq!(first.await, Ok(()));
        assert_eq!(
            subscriptions.add(room.clone(), true).await,
            Ok(()),
            "already live"
        );
        for _ in 0..3 {
            subscriptions.release(&room);
        }
        assert_eq!(subscriptions.len(), 0);
        let (subscribe, unsubscribe) = subscriptions.plan();
        assert!(subscribe.is_empty());
        assert_eq!(unsubscribe, vec![room.clone()]);
        assert!(!subscriptions.is_confirmed(&room));
        // Not connected: fails now, keeps the reference for later.
        assert!(subscriptions.add(room.clone(), false).await.is_err());
        assert_eq!(subscriptions.len(), 1);
        assert_eq!(subscriptions.forget_confirmed(), 2);
        assert_eq!(
            subscriptions.plan().0.len(),
            2,
            "everything again after a reconnect"
        );
    }

    #[test]
    fn a_channel_live_before_a_reconnect_is_reported_when_it_is_live_again() {
        let subscriptions = Subscriptions::new(vec![channel("sb:control", false)]);
        let (room, gone) = (channel("sb:ch:room", true), channel("sb:ch:gone", true));
        drop(subscriptions.add(room.clone(), true));
        drop(subscriptions.add(gone.clone(), true));
        let (subscribe, _) = subscriptions.plan();
        assert!(
            subscriptions.confirm(&subscribe, &Ok(())).is_empty(),
            "first time: no gap"
        );
        subscriptions.forget_confirmed();
        subscriptions.release(&gone);
        let (subscribe, _) = subscriptions.plan();
        let failed = Err(BrokerError::Unavailable("down".into()));
        assert!(subscriptions.confirm(&subscribe, &failed).is_empty());
        let mut resumed = subscriptions.confirm(&subscribe, &Ok(()));
        resumed.sort();
        assert_eq!(resumed, vec![room, channel("sb:control", false)]);
        assert!(
            subscriptions.confirm(&subscribe, &Ok(())).is_empty(),
            "reported once"
        );
    }
}
