//! A property test: any interleaving of joins, leaves, publications and closes, against a
//! broker whose subscriptions settle late, leaves the hub, the directory and the broker's
//! subscriptions agreeing with what each connection believes it holds. The connections here
//! behave as `connection::membership` does (one membership per join, ended by the leave).
//!
//! One channel keeps history, and its joins carry an id and, once the connection knows one, its
//! last position (`since`): every such join is answered `recovered` with a replay that covers
//! what came after `since`, and after a connection's last answer its offsets run on by exactly
//! one (no gap, no duplicate).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use proptest::prelude::*;
use serde_json::json;

use super::queue::OutboundReceiver;
use super::*;
use crate::broker::{
    BrokerFuture, BrokerSink, HistoryFuture, HistoryQuery, HistoryRule, HistoryRules, MemoryBroker,
};
use crate::protocol::{ControlOp, Encoding, Position};

const CONNECTIONS: usize = 4;
const CHANNELS: usize = 3;
/// The channel that keeps history.
const HISTORY_CHANNEL: usize = 2;

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
    fn history(
        &self,
        channel: &ChannelName,
        rule: HistoryRule,
        query: HistoryQuery,
    ) -> HistoryFuture {
        let read = self.inner.history(channel, rule, query);
        let yields = self.delays.lock().map_or(0, |mut rng| rng.u8(0..6));
        Box::pin(async move {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            read.await
        })
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
    /// Every frame received so far, in order.
    frames: Vec<serde_json::Value>,
    /// The last position seen on the history channel.
    position: Option<Position>,
    /// Joins of the history channel that gave `since`: their id, `since`, and how many frames
    /// had been received when they were sent.
    recoveries: Vec<(u64, Position, usize)>,
}

impl Connection {
    /// Takes what has arrived into `frames`.
    fn receive(&mut self) {
        while let Ok(item) = self.queue.try_recv() {
            let frames = match item {
                Outbound::Frame(frame) => vec![frame],
                Outbound::Frames(frames) => frames,
                Outbound::Ping(_) | Outbound::Pong(_) => continue,
            };
            for frame in frames {
                self.take(&frame);
            }
        }
    }

    /// One frame received, following the history channel's position.
    fn take(&mut self, frame: &crate::protocol::OutboundFrame) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(frame.payload()) else {
            return;
        };
        let located = match value["type"].as_str() {
            Some("reply") => position_in(&value["data"]),
            Some("message") if value["channel"] == channel(HISTORY_CHANNEL).as_str() => {
                position_in(&value)
            }
            _ => None,
        };
        if located.is_some() {
            self.position = located;
        }
        self.frames.push(value);
    }
}

fn position_in(value: &serde_json::Value) -> Option<Position> {
    Some(Position::new(
        value["offset"].as_u64()?,
        value["epoch"].as_str()?,
    ))
}

fn offset_of(frame: &serde_json::Value) -> Option<u64> {
    let on_history = frame["type"] == "message" && frame["channel"] == "ch:2";
    on_history.then(|| frame["offset"].as_u64()).flatten()
}

/// Checks what `connection` received on the history channel: each recovering join answered
/// `recovered`, right after a replay covering everything after its `since`; after the last
/// answer, offsets one after another.
fn check_history(connection: &Connection) -> Result<(), TestCaseError> {
    let reply_at = |id: u64| {
        connection
            .frames
            .iter()
            .position(|frame| frame["type"] == "reply" && frame["id"] == id)
    };
    for (id, since, sent_at) in &connection.recoveries {
        let Some(at) = reply_at(*id) else { continue };
        let reply = &connection.frames[at]["data"];
        prop_assert_eq!(
            &reply["recovered"],
            &json!(true),
            "join {} not recovered",
            id
        );
        let top = reply["offset"].as_u64().unwrap_or_default();
        // The replay: the run of offsets, one after another, that ends right before the reply.
        let mut expected = top;
        for frame in connection.frames[*sent_at..at].iter().rev() {
            match offset_of(frame) {
                Some(offset) if offset == expected && offset > since.offset => expected -= 1,
                _ => break,
            }
        }
        prop_assert_eq!(expected, since.offset, "join {} missed publications", id);
    }
    let last_reply = connection
        .frames
        .iter()
        .rposition(|frame| frame["type"] == "reply");
    if let Some(at) = last_reply {
        if connection.channels.contains_key(&HISTORY_CHANNEL) {
            let answered = connection.frames[at]["data"]["offset"]
                .as_u64()
                .unwrap_or_default();
            for (offset, expected) in connection.frames[at + 1..]
                .iter()
                .filter_map(offset_of)
                .zip(answered + 1..)
            {
                prop_assert_eq!(
                    offset,
                    expected,
                    "a gap or a duplicate after the last answer"
                );
            }
        }
    }
    Ok(())
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
    connection.receive();
    let mut heard = BTreeSet::new();
    for value in &connection.frames {
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
            HistoryPolicy {
                rules: HistoryRules::new(vec![(
                    channel(HISTORY_CHANNEL).to_string(),
                    Some(HistoryRule {
                        size: 1000,
                        ttl: std::time::Duration::from_secs(600),
                    }),
                )]),
                recovery_limit: 1000,
            },
        );
        let mut next_id = 0;
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
                    frames: Vec::new(),
                    position: None,
                    recoveries: Vec::new(),
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
                    let mut request = JoinRequest::default();
                    if ch == HISTORY_CHANNEL {
                        next_id += 1;
                        connection.receive();
                        request.id = Some(next_id);
                        request.since = connection.position.clone();
                        if let Some(since) = &request.since {
                            let sent_at = connection.frames.len();
                            connection
                                .recoveries
                                .push((next_id, since.clone(), sent_at));
                        }
                    }
                    let (membership, joined) =
                        hub.join(channel(ch), connection.member.clone(), request);
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
            check_history(connection)?;
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
