//! A property test: any interleaving of joins, leaves, publications and closes, against a
//! broker whose subscriptions settle late, leaves the hub, the directory and the broker's
//! subscriptions agreeing with what each connection believes it holds. The connections here
//! behave as `connection::membership` does (one membership per join, ended by the leave).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use proptest::prelude::*;
use serde_json::json;

use super::queue::OutboundReceiver;
use super::*;
use crate::broker::{BrokerFuture, BrokerSink, MemoryBroker};
use crate::protocol::{ControlOp, Encoding};

const CONNECTIONS: usize = 4;
const CHANNELS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Join(usize, usize),
    Leave(usize, usize),
    Publish(usize),
    Close(usize),
    /// Lets the actors and pending subscriptions make progress.
    Run(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CONNECTIONS, 0..CHANNELS).prop_map(|(c, ch)| Op::Join(c, ch)),
        3 => (0..CONNECTIONS, 0..CHANNELS).prop_map(|(c, ch)| Op::Leave(c, ch)),
        1 => (0..CHANNELS).prop_map(Op::Publish),
        1 => (0..CONNECTIONS).prop_map(Op::Close),
        2 => (0u8..4).prop_map(Op::Run),
    ]
}

/// A memory broker whose subscriptions are confirmed only after some yields, so joins find
/// their group still subscribing (where the races were).
struct LateBroker {
    inner: MemoryBroker,
    delays: Mutex<fastrand::Rng>,
}

impl Broker for LateBroker {
    fn name(&self) -> &'static str {
        "late"
    }
    fn publish(&self, publication: Publication) -> BrokerFuture {
        self.inner.publish(publication)
    }
    fn publish_control(&self, op: ControlOp) -> BrokerFuture {
        self.inner.publish_control(op)
    }
    fn subscribe(&self, topic: &Topic) -> BrokerFuture {
        let subscribed = self.inner.subscribe(topic);
        let yields = self.delays.lock().map_or(0, |mut rng| rng.u8(0..6));
        Box::pin(async move {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            subscribed.await
        })
    }
    fn unsubscribe(&self, topic: &Topic) -> BrokerFuture {
        self.inner.unsubscribe(topic)
    }
    fn subscriptions(&self) -> usize {
        self.inner.subscriptions()
    }
    fn is_ready(&self) -> bool {
        true
    }
}

/// One connection as the connection actor keeps it.
struct Connection {
    key: ConnectionKey,
    member: Member,
    queue: OutboundReceiver,
    channels: HashMap<usize, Membership>,
    closed: bool,
}

fn channel(index: usize) -> ChannelName {
    ChannelName::parse(&format!("ch:{index}")).expect("channel")
}

async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    actix_rt::time::sleep(std::time::Duration::from_millis(2)).await;
}

/// The channels whose final marker reached `connection`.
fn heard(connection: &mut Connection, marker: u64) -> BTreeSet<usize> {
    let mut heard = BTreeSet::new();
    while let Ok(item) = connection.queue.try_recv() {
        let Outbound::Frame(frame) = item else {
            continue;
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(frame.payload()) else {
            continue;
        };
        if value["data"]["marker"] == marker {
            let name = value["channel"].as_str().unwrap_or_default();
            if let Some(index) = name.strip_prefix("ch:").and_then(|n| n.parse().ok()) {
                heard.insert(index);
            }
        }
    }
    heard
}

fn run(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    System::new().block_on(async move {
        let groups = GroupTable::new();
        let directory = Arc::new(ConnectionDirectory::new());
        let sink: Arc<dyn BrokerSink> = Arc::new(HubSink::new(groups.clone(), directory.clone()));
        let broker = Arc::new(LateBroker {
            inner: MemoryBroker::new(sink),
            delays: Mutex::new(fastrand::Rng::with_seed(seed)),
        });
        let hub = Hub::new(
            groups.clone(),
            directory.clone(),
            broker.clone(),
            vec![Arbiter::current()],
        );
        let mut connections: Vec<Connection> = (0..CONNECTIONS)
            .map(|_| {
                let (key, id) = directory.allocate();
                let (member, queue, _notices) =
                    member::testing::member_watched(key, Encoding::Json, 10_000);
                let registered = hub.register(LocalConnection {
                    member: member.clone(),
                    id,
                    user: None,
                    session: None,
                    connected_at: 0,
                });
                assert!(registered.is_ok());
                Connection {
                    key,
                    member,
                    queue,
                    channels: HashMap::new(),
                    closed: false,
                }
            })
            .collect();
        for op in ops {
            match op {
                Op::Join(c, ch) => {
                    let connection = &mut connections[c];
                    if connection.closed || connection.channels.contains_key(&ch) {
                        continue;
                    }
                    let (membership, joined) = hub.join(channel(ch), connection.member.clone());
                    connection.channels.insert(ch, membership);
                    // The connection ignores the answer of a join it no longer holds, and a
                    // broker that never fails leaves nothing to roll back.
                    actix::spawn(async move {
                        let _ = joined.await;
                    });
                }
                Op::Leave(c, ch) => {
                    let connection = &mut connections[c];
                    if let Some(membership) = connection.channels.remove(&ch) {
                        hub.leave(&channel(ch), connection.key, &membership);
                    }
                }
                Op::Publish(ch) => {
                    let publication = Publication::new(channel(ch), json!({"n": 1}), None);
                    let _ = hub.publish(publication).await;
                }
                Op::Close(c) => {
                    let connection = &mut connections[c];
                    if connection.closed {
                        continue;
                    }
                    for (ch, membership) in connection.channels.drain() {
                        hub.leave(&channel(ch), connection.key, &membership);
                    }
                    hub.unregister(connection.key);
                    connection.closed = true;
                }
                Op::Run(times) => {
                    for _ in 0..times {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        settle().await;

        // Every member hears exactly its channels; the directory and the broker agree.
        for index in 0..CHANNELS {
            let publication = Publication::new(channel(index), json!({"marker": 7}), None);
            let _ = hub.publish(publication).await;
        }
        settle().await;
        let mut held_channels = BTreeSet::new();
        for connection in &mut connections {
            let expected: BTreeSet<usize> = connection.channels.keys().copied().collect();
            held_channels.extend(expected.iter().copied());
            prop_assert_eq!(heard(connection, 7), expected);
        }
        let mut counted: Vec<(String, usize)> = directory
            .channel_counts()
            .into_iter()
            .map(|(name, members)| (name.to_string(), members))
            .collect();
        counted.sort();
        let mut expected_counts: Vec<(String, usize)> = held_channels
            .iter()
            .map(|&index| {
                let members = connections
                    .iter()
                    .filter(|connection| connection.channels.contains_key(&index))
                    .count();
                (channel(index).to_string(), members)
            })
            .collect();
        expected_counts.sort();
        prop_assert_eq!(counted, expected_counts);
        prop_assert_eq!(broker.subscriptions(), held_channels.len());

        // After every close, nothing is left.
        for connection in &mut connections {
            for (ch, membership) in connection.channels.drain() {
                hub.leave(&channel(ch), connection.key, &membership);
            }
            if !connection.closed {
                hub.unregister(connection.key);
            }
        }
        settle().await;
        prop_assert_eq!(groups.len(), 0, "every group retired");
        prop_assert_eq!(broker.subscriptions(), 0);
        prop_assert!(directory.is_empty());
        Ok::<(), TestCaseError>(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_interleaving_keeps_groups_directory_and_subscriptions_in_agreement(
        ops in prop::collection::vec(op(), 1..80),
        seed in any::<u64>(),
    ) {
        run(ops, seed)?;
    }
}

#[test]
fn a_leave_right_after_a_join_to_a_subscribing_group_leaves_nothing_behind() {
    // The defect's own sequence, twenty times, as a fixed case.
    let ops = (0..20)
        .flat_map(|n| [Op::Join(0, n % CHANNELS), Op::Leave(0, n % CHANNELS)])
        .collect();
    if let Err(err) = run(ops, 1) {
        panic!("{err}");
    }
}
