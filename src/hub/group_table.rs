//! The table of live channel groups on this node: channel name → group actor address. Groups are
//! started into it by the hub and retire from it by themselves (through [`Retire`], the one
//! thing a group knows of it).
//!
//! It also delivers channel publications from the broker (through the hub's sink) to the
//! channel's group, if this node has one, with a bounded `try_send`.
//!
//! actix bounds a mailbox per *sender*: a sender whose message fills the mailbox is parked and
//! its further `try_send`s are refused until the group catches up, but every `Addr` clone is a
//! fresh, unparked sender. So publications go through the one `Addr` stored here, never a clone;
//! that is what makes the bound hold.

use std::sync::Arc;

use actix::prelude::{Addr, SendError};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::group::{Deliver, Group, Join, Resync, Retire};
use crate::broker::{Publication, SinkError};
use crate::metrics as names;
use crate::protocol::ChannelName;

#[derive(Clone, Default)]
pub struct GroupTable {
    groups: Arc<DashMap<ChannelName, Addr<Group>>>,
}

impl GroupTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `join` to the live group for `name`, or starts one with `start(join)` if there is
    /// none. Both happen under the map's entry lock, so two joins never start two groups.
    /// Joins bypass the mailbox bound: each connection's joins are limited by its channel limit
    /// and rate limit, and a join must not be lost (its reply is awaited).
    pub(crate) fn join_or_start(
        &self,
        name: &ChannelName,
        join: Join,
        start: impl FnOnce(Join) -> Addr<Group>,
    ) {
        match self.groups.entry(name.clone()) {
            Entry::Occupied(entry) => entry.get().do_send(join),
            Entry::Vacant(entry) => {
                entry.insert(start(join));
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<Addr<Group>> {
        self.groups.get(name).map(|entry| entry.value().clone())
    }

    /// How many groups are live.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }
}

impl Retire for GroupTable {
    /// Removes `name` only if it still maps to `group` (a newer group may have replaced it).
    fn retire(&self, name: &ChannelName, group: &Addr<Group>) {
        self.groups.remove_if(name, |_, current| current == group);
    }
}

impl GroupTable {
    /// Tells `channel`'s group (every group, for `None`) that publications may have been missed.
    /// A group whose mailbox is full is not told: it is busy with publications, whose offsets
    /// show it the gap anyway.
    pub(crate) fn resync(&self, channel: Option<&ChannelName>) {
        let tell = |group: &Addr<Group>| {
            let _ = group.try_send(Resync);
        };
        match channel {
            Some(channel) => {
                if let Some(group) = self.groups.get(channel.as_str()) {
                    tell(group.value());
                }
            }
            None => self.groups.iter().for_each(|group| tell(group.value())),
        }
    }

    /// Hands a publication on `channel` to its group, if this node has one.
    pub(crate) fn deliver(
        &self,
        channel: &ChannelName,
        publication: Arc<Publication>,
    ) -> Result<(), SinkError> {
        // Borrowed from the map, not cloned: see the module docs.
        let Some(group) = self.groups.get(channel.as_str()) else {
            return Ok(());
        };
        match group.value().try_send(Deliver(publication)) {
            // A closed mailbox is a group that just retired: it has no members left to miss it.
            Ok(()) | Err(SendError::Closed(_)) => Ok(()),
            Err(SendError::Full(_)) => {
                metrics::counter!(names::MESSAGES_DROPPED, "reason" => names::dropped::GROUP_OVERLOADED)
                    .increment(1);
                Err(SinkError::Overloaded(channel.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, MemoryBroker};
    use crate::hub::group::{GROUP_MAILBOX_CAPACITY, Group};
    use crate::hub::member::testing::member;
    use crate::hub::{ConnectionDirectory, HubSink};
    use crate::protocol::{ChannelName, Encoding};
    use actix::prelude::*;
    use serde_json::json;

    #[test]
    fn a_group_that_falls_behind_refuses_publications_and_recovers_once_it_catches_up() {
        System::new().block_on(async {
            let groups = GroupTable::new();
            let sink = HubSink::new(groups.clone(), Arc::new(ConnectionDirectory::new()));
            let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(Arc::new(sink)));
            let channel = ChannelName::parse("busy").expect("channel");
            let (member, _receiver) = member(1, Encoding::Json, 1);
            let (reply, _joined) = tokio::sync::oneshot::channel();
            // The group runs on this very thread, so it cannot drain its mailbox while this
            // synchronous loop fills it: it is as far behind as a group can be.
            let join = Join {
                member,
                membership: crate::hub::Membership::new(),
                request: crate::hub::JoinRequest::default(),
                reply,
            };
            groups.join_or_start(&channel, join, |first| {
                Group::start(
                    &Arbiter::current(),
                    channel.clone(),
                    first,
                    Arc::new(groups.clone()),
                    broker,
                    None,
                )
            });
            let outcomes: Vec<Result<(), SinkError>> = (0..GROUP_MAILBOX_CAPACITY + 8)
                .map(|n| {
                    groups.deliver(
                        &channel,
                        Arc::new(Publication::new(channel.clone(), json!(n), None)),
                    )
                })
                .collect();
            let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
            // The join is in the mailbox too; actix lets the filling message itself through.
            assert!(
                (GROUP_MAILBOX_CAPACITY - 1..=GROUP_MAILBOX_CAPACITY + 1).contains(&accepted),
                "accepted {accepted} with a mailbox of {GROUP_MAILBOX_CAPACITY}"
            );
            assert_eq!(
                outcomes.last(),
                Some(&Err(SinkError::Overloaded(channel.clone())))
            );

            // Let the group run: it drains its mailbox and takes publications again.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let after = groups.deliver(
                &channel,
                Arc::new(Publication::new(channel.clone(), json!("after"), None)),
            );
            assert_eq!(after, Ok(()));
        });
    }
}
