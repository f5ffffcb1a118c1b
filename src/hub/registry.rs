//! The registry of live channel groups on this node: channel name → group actor address.
//!
//! It is also the [`BrokerSink`]: the broker hands it each publication, and it forwards the
//! publication to the channel's group, if this node has one.

use std::sync::Arc;

use actix::Addr;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::group::{Deliver, Group, Join};
use crate::broker::{BrokerSink, Publication};
use crate::protocol::ChannelName;

#[derive(Clone, Default)]
pub struct GroupRegistry {
    groups: Arc<DashMap<ChannelName, Addr<Group>>>,
}

impl GroupRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `join` to the live group for `name`, or starts one with `start(join)` if there is
    /// none. Both happen under the map's entry lock, so two joins never start two groups.
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

    /// Removes `name` only if it still maps to `address` (a newer group may have replaced it).
    pub(crate) fn remove_if_same(&self, name: &ChannelName, address: &Addr<Group>) {
        self.groups.remove_if(name, |_, current| current == address);
    }

    /// How many groups are live.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

impl BrokerSink for GroupRegistry {
    fn on_publication(&self, publication: Arc<Publication>) {
        if let Some(group) = self.get(publication.channel.as_str()) {
            group.do_send(Deliver(publication));
        }
    }
}
