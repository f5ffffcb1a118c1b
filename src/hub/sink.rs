//! The hub's side of the broker: [`HubSink`] takes what the broker receives and hands it to this
//! node. Channel publications go to the channel's group; user publications go straight to that
//! user's connections (no group: a user's sockets on one node are few); control operations close
//! the connections they name; gaps (publications the node may have missed) go to the groups
//! concerned, which catch up from history if their channel keeps one.
//!
//! It never blocks: everything it does is a `try_send` into a bounded queue or mailbox, or a
//! close notice to a connection.

use std::sync::Arc;

use super::directory::ConnectionDirectory;
use super::group::fan_out;
use super::group_table::GroupTable;
use super::member::Disconnect;
use crate::broker::{BrokerSink, Publication, SinkError, Topic};
use crate::metrics as names;
use crate::protocol::{ChannelName, ControlOp, ControlTarget};

pub struct HubSink {
    groups: GroupTable,
    directory: Arc<ConnectionDirectory>,
}

impl HubSink {
    pub fn new(groups: GroupTable, directory: Arc<ConnectionDirectory>) -> Self {
        Self { groups, directory }
    }
}

impl BrokerSink for HubSink {
    fn on_publication(&self, publication: Arc<Publication>) -> Result<(), SinkError> {
        match &publication.topic {
            Topic::Channel(channel) => self.groups.deliver(channel, publication.clone()),
            Topic::User(user) => {
                self.deliver_direct(&self.directory.members_of_user(user), &publication);
                Ok(())
            }
            Topic::Connection(id) => {
                let target = ControlTarget::Connection(id.to_string());
                self.deliver_direct(&self.directory.matching(&target), &publication);
                Ok(())
            }
        }
    }

    fn on_control(&self, op: ControlOp) {
        let (target, code, reason) = match op {
            ControlOp::Disconnect {
                target,
                code,
                reason,
            } => (target, code, reason),
            ControlOp::Send { connection, data } => {
                let topic = Topic::Connection(Arc::from(connection));
                // Cannot be refused: a connection topic has no group to overload.
                let _ = self.on_publication(Arc::new(Publication::new(topic, data, None)));
                return;
            }
        };
        let target = &target;
        let members = self.directory.matching(target);
        if members.is_empty() {
            // Every node sees every op; most hold none of its connections.
            tracing::debug!(%target, %code, "control disconnect matches nothing here");
            return;
        }
        metrics::counter!(names::CONTROL_DISCONNECTS).increment(members.len() as u64);
        tracing::info!(%target, %code, matched = members.len(), "control disconnect");
        for member in members {
            member.close(Disconnect {
                code,
                reason: reason.clone(),
            });
        }
    }

    fn on_gap(&self, channel: Option<&ChannelName>) {
        self.groups.resync(channel);
    }
}

impl HubSink {
    /// A publication to a user or a connection: straight to those members (no group; a user's
    /// sockets on one node are few). Overflowed members were told to close; gone ones leave
    /// the directory as their actors stop.
    fn deliver_direct(&self, members: &[super::member::Member], publication: &Publication) {
        if !members.is_empty() {
            fan_out(members, publication);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, MemoryBroker};
    use crate::hub::member::testing::member_watched;
    use crate::hub::member::{ConnectionKey, Disconnect};
    use crate::hub::queue::{Outbound, OutboundReceiver};
    use crate::hub::{Hub, LocalConnection};
    use crate::protocol::{CloseCode, Encoding};
    use actix::prelude::*;
    use serde_json::{Value, json};
    use tokio::sync::oneshot;

    struct Node {
        hub: Hub,
        broker: Arc<dyn Broker>,
    }

    fn node() -> Node {
        let groups = GroupTable::new();
        let directory = Arc::new(ConnectionDirectory::new());
        let sink = Arc::new(HubSink::new(groups.clone(), directory.clone()));
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(sink));
        let hub = Hub::new(
            groups,
            directory,
            broker.clone(),
            vec![Arbiter::current()],
            crate::hub::HistoryPolicy::default(),
        );
        Node { hub, broker }
    }

    fn connect(
        hub: &Hub,
        user: &str,
        session: &str,
    ) -> (
        ConnectionKey,
        OutboundReceiver,
        oneshot::Receiver<Disconnect>,
    ) {
        let (key, id) = hub.directory().allocate();
        let (member, receiver, notices) = member_watched(key, Encoding::Json, 8);
        let registered = hub.register(LocalConnection {
            member,
            id,
            user: Some(Arc::from(user)),
            session: Some(Arc::from(session)),
            connected_at: 0,
        });
        assert!(registered.is_ok());
        (key, receiver, notices)
    }

    fn json_frame(receiver: &mut OutboundReceiver) -> Option<Value> {
        match receiver.try_recv() {
            Ok(Outbound::Frame(frame)) => serde_json::from_slice(frame.payload()).ok(),
            _ => None,
        }
    }

    #[test]
    fn a_user_publication_reaches_every_connection_of_that_user_without_a_channel() {
        System::new().block_on(async {
            let node = node();
            let (_, mut alice_1, _) = connect(&node.hub, "alice", "s1");
            let (alice_2_key, mut alice_2, _) = connect(&node.hub, "alice", "s2");
            let (_, mut bob, _) = connect(&node.hub, "bob", "s3");
            assert_eq!(node.broker.subscriptions(), 2, "one per user");

            let publication =
                Publication::new(Topic::User(Arc::from("alice")), json!({"n": 1}), None);
            node.broker.publish(publication).await.expect("publish");
            let expected = json!({"type": "message", "data": {"n": 1}});
            assert_eq!(json_frame(&mut alice_1), Some(expected.clone()));
            assert_eq!(json_frame(&mut alice_2), Some(expected));
            assert_eq!(json_frame(&mut bob), None);

            node.hub.unregister(alice_2_key);
            assert_eq!(
                node.broker.subscriptions(),
                2,
                "alice still has a connection"
            );
        });
    }

    #[test]
    fn control_operations_close_what_they_name() {
        System::new().block_on(async {
            let node = node();
            let (_, _alice_queue, mut alice) = connect(&node.hub, "alice", "s1");
            let (_, _bob_queue, mut bob) = connect(&node.hub, "bob", "s2");
            let op = ControlOp::disconnect(ControlTarget::Session("s2".into()));
            node.broker.publish_control(op).await.expect("control");
            assert_eq!(
                bob.try_recv().map(|notice| notice.code),
                Ok(CloseCode::LoggedOut)
            );
            assert!(alice.try_recv().is_err(), "alice is not in session s2");
        });
    }
}
