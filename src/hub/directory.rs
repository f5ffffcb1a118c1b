//! The connections living on this node: who each one is (public id, user, session, when it
//! connected, which channels it joined) and how to reach it (its [`Member`] handle: bounded queue
//! and one-shot `Disconnector`), indexed by user, by session and by channel. Connection keys and
//! public ids are allocated here: an id (`c_<node><key>`) carries this node's random prefix and
//! the key in hex, so finding a connection by id is a parse, not a search, and ids from other
//! nodes are recognised as not ours without a lookup.
//!
//! Whoever needs to follow it (the connection registry, `roster`) is told of every change through
//! a [`DirectoryObserver`], after the change is made, and reads [`ConnectionView`]s.
//!
//! What it is not: it does not deliver channel publications (groups do, from their own member
//! lists), and it knows nothing of how the registry stores what it reports.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::member::{ConnectionKey, Member};
use crate::protocol::{ChannelName, ControlTarget};

/// What the directory records of one connection.
#[derive(Clone)]
pub struct LocalConnection {
    pub member: Member,
    /// The public id (`c_…`), as sent in `welcome`.
    pub id: Arc<str>,
    pub user: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
    /// Unix seconds.
    pub connected_at: u64,
}

/// One change to the directory, as its observer hears of it.
#[derive(Debug, Clone, Copy)]
pub enum DirectoryChange<'a> {
    /// A connection was recorded (or its entry replaced).
    Connection {
        id: &'a Arc<str>,
        user: Option<&'a Arc<str>>,
    },
    /// A connection joined or left `channel`.
    Membership {
        id: &'a Arc<str>,
        channel: &'a ChannelName,
    },
    /// A connection is gone, with the channels it was in.
    Gone {
        id: &'a Arc<str>,
        user: Option<&'a Arc<str>>,
        channels: &'a BTreeSet<ChannelName>,
    },
}

/// Follows the directory's changes (the connection registry's change log).
pub trait DirectoryObserver: Send + Sync + 'static {
    fn changed(&self, change: DirectoryChange<'_>);
}

/// What the directory knows of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionView {
    pub id: Arc<str>,
    pub user: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
    /// Sorted.
    pub channels: Vec<ChannelName>,
    /// Unix seconds.
    pub connected_at: u64,
}

/// The connections on this node and their indexes.
pub struct ConnectionDirectory {
    node: u32,
    next_key: AtomicU64,
    connections: DashMap<ConnectionKey, LocalConnection>,
    /// Each connection's channels (sorted, for records).
    channels_of: DashMap<ConnectionKey, BTreeSet<ChannelName>>,
    by_user: DashMap<Arc<str>, Vec<ConnectionKey>>,
    by_session: DashMap<Arc<str>, Vec<ConnectionKey>>,
    /// A set, not a list: a channel may have many thousands of members, and each leave must
    /// not scan them.
    by_channel: DashMap<ChannelName, HashSet<ConnectionKey>>,
    observer: Option<Arc<dyn DirectoryObserver>>,
}

impl Default for ConnectionDirectory {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionDirectory {
    pub fn new() -> Self {
        Self {
            node: fastrand::u32(..),
            next_key: AtomicU64::new(1),
            connections: DashMap::new(),
            channels_of: DashMap::new(),
            by_user: DashMap::new(),
            by_session: DashMap::new(),
            by_channel: DashMap::new(),
            observer: None,
        }
    }

    /// A directory that tells `observer` of every change.
    pub fn observed(observer: Arc<dyn DirectoryObserver>) -> Self {
        Self {
            observer: Some(observer),
            ..Self::new()
        }
    }

    fn tell(&self, change: DirectoryChange<'_>) {
        if let Some(observer) = &self.observer {
            observer.changed(change);
        }
    }

    /// This node's name in the registry: the prefix of its connection ids.
    pub fn node(&self) -> String {
        format!("{:08x}", self.node)
    }

    /// A fresh connection key and its public id, unique for this node's lifetime.
    pub fn allocate(&self) -> (ConnectionKey, Arc<str>) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        (key, Arc::from(format!("c_{:08x}{key:x}", self.node)))
    }

    /// The key of a public id allocated by this node, if it is one.
    pub fn key_of(&self, id: &str) -> Option<ConnectionKey> {
        let rest = id.strip_prefix("c_")?;
        let (node, key) = (rest.get(..8)?, rest.get(8..)?);
        if u32::from_str_radix(node, 16).ok()? != self.node {
            return None;
        }
        ConnectionKey::from_str_radix(key, 16).ok()
    }

    /// Records a connection; `false` if its key was already recorded (the entry is replaced).
    pub fn insert(&self, connection: LocalConnection) -> bool {
        let key = connection.member.connection;
        if let Some(user) = &connection.user {
            self.by_user.entry(user.clone()).or_default().push(key);
        }
        if let Some(session) = &connection.session {
            self.by_session
                .entry(session.clone())
                .or_default()
                .push(key);
        }
        let (id, user) = (connection.id.clone(), connection.user.clone());
        let previous = self.connections.insert(key, connection);
        if let Some(previous) = &previous {
            self.unindex(previous);
        }
        self.tell(DirectoryChange::Connection {
            id: &id,
            user: user.as_ref(),
        });
        previous.is_none()
    }

    /// Removes a connection and its channel memberships.
    pub fn remove(&self, key: ConnectionKey) -> Option<LocalConnection> {
        let (_, removed) = self.connections.remove(&key)?;
        self.unindex(&removed);
        let channels = self
            .channels_of
            .remove(&key)
            .map(|(_, channels)| channels)
            .unwrap_or_default();
        for channel in &channels {
            self.by_channel.remove_if_mut(channel, |_, keys| {
                keys.remove(&key);
                keys.is_empty()
            });
        }
        self.tell(DirectoryChange::Gone {
            id: &removed.id,
            user: removed.user.as_ref(),
            channels: &channels,
        });
        Some(removed)
    }

    fn unindex(&self, connection: &LocalConnection) {
        let key = connection.member.connection;
        for (index, name) in [
            (&self.by_user, &connection.user),
            (&self.by_session, &connection.session),
        ] {
            if let Some(name) = name {
                remove_key(index, name, key);
            }
        }
    }

    /// Records that a connection is a member of `channel` (a join sent to its group). Ignored
    /// for a connection that is gone.
    pub fn joined(&self, key: ConnectionKey, channel: &ChannelName) {
        let Some(id) = self.connections.get(&key).map(|entry| entry.id.clone()) else {
            return;
        };
        if self
            .channels_of
            .entry(key)
            .or_default()
            .insert(channel.clone())
        {
            self.by_channel
                .entry(channel.clone())
                .or_default()
                .insert(key);
            self.tell(DirectoryChange::Membership { id: &id, channel });
        }
    }

    /// Records that a connection left `channel`.
    pub fn left(&self, key: ConnectionKey, channel: &ChannelName) {
        let removed = self
            .channels_of
            .get_mut(&key)
            .is_some_and(|mut channels| channels.remove(channel));
        if removed {
            self.by_channel.remove_if_mut(channel, |_, keys| {
                keys.remove(&key);
                keys.is_empty()
            });
            if let Some(id) = self.connections.get(&key).map(|entry| entry.id.clone()) {
                self.tell(DirectoryChange::Membership { id: &id, channel });
            }
        }
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// The members of every connection of `user` on this node.
    pub fn members_of_user(&self, user: &str) -> Vec<Member> {
        self.members(self.by_user.get(user).map(|keys| keys.clone()))
    }

    /// The members of the connections a control operation's target names, on this node.
    pub fn matching(&self, target: &ControlTarget) -> Vec<Member> {
        let keys = match target {
            ControlTarget::User(user) => self.by_user.get(user.as_str()).map(|keys| keys.clone()),
            ControlTarget::Session(session) => self
                .by_session
                .get(session.as_str())
                .map(|keys| keys.clone()),
            ControlTarget::Connection(id) => self.key_of(id).map(|key| vec![key]),
        };
        self.members(keys)
    }

    fn members(&self, keys: Option<Vec<ConnectionKey>>) -> Vec<Member> {
        keys.unwrap_or_default()
            .iter()
            .filter_map(|key| self.connections.get(key).map(|entry| entry.member.clone()))
            .collect()
    }

    /// Every member on this node (for the drain).
    pub fn all_members(&self) -> Vec<Member> {
        self.connections
            .iter()
            .map(|entry| entry.member.clone())
            .collect()
    }

    /// What the directory knows of the connection with public id `id`, if it is on this node.
    pub fn view_of(&self, id: &str) -> Option<ConnectionView> {
        self.view(self.key_of(id)?)
    }

    /// What the directory knows of one connection.
    pub fn view(&self, key: ConnectionKey) -> Option<ConnectionView> {
        let connection = self.connections.get(&key)?;
        let channels = self
            .channels_of
            .get(&key)
            .map(|channels| channels.iter().cloned().collect())
            .unwrap_or_default();
        Some(ConnectionView {
            id: connection.id.clone(),
            user: connection.user.clone(),
            session: connection.session.clone(),
            channels,
            connected_at: connection.connected_at,
        })
    }

    /// Every connection's key.
    pub fn keys(&self) -> Vec<ConnectionKey> {
        self.connections.iter().map(|entry| *entry.key()).collect()
    }

    /// The keys of `user`'s connections.
    pub fn keys_of_user(&self, user: &str) -> Vec<ConnectionKey> {
        self.by_user
            .get(user)
            .map(|keys| keys.clone())
            .unwrap_or_default()
    }

    /// The keys of `channel`'s members.
    pub fn keys_in_channel(&self, channel: &str) -> Vec<ConnectionKey> {
        self.by_channel
            .get(channel)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The public ids of `user`'s connections on this node.
    pub fn ids_of_user(&self, user: &str) -> Vec<String> {
        self.ids(self.by_user.get(user).map(|keys| keys.clone()))
    }

    /// The public ids of `channel`'s members on this node.
    pub fn ids_in_channel(&self, channel: &str) -> Vec<String> {
        self.ids(
            self.by_channel
                .get(channel)
                .map(|keys| keys.iter().copied().collect()),
        )
    }

    fn ids(&self, keys: Option<Vec<ConnectionKey>>) -> Vec<String> {
        let mut ids: Vec<String> = keys
            .unwrap_or_default()
            .iter()
            .filter_map(|key| self.connections.get(key).map(|entry| entry.id.to_string()))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every channel with members on this node, with how many.
    pub fn channel_counts(&self) -> Vec<(ChannelName, usize)> {
        self.by_channel
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().len()))
            .filter(|(_, members)| *members > 0)
            .collect()
    }

    /// Every user with connections on this node.
    pub fn users(&self) -> Vec<Arc<str>> {
        self.by_user
            .iter()
            .map(|entry| entry.key().clone())
            .collect()
    }
}

/// Removes `key` from `name`'s list in `index`, dropping the list when it empties.
fn remove_key<K>(index: &DashMap<K, Vec<ConnectionKey>>, name: &K, key: ConnectionKey)
where
    K: std::hash::Hash + Eq,
{
    index.remove_if_mut(name, |_, keys| {
        if let Some(position) = keys.iter().position(|&entry| entry == key) {
            keys.swap_remove(position);
        }
        keys.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::member::testing::member;
    use crate::protocol::Encoding;
    use actix::System;

    fn connection(
        directory: &ConnectionDirectory,
        user: Option<&str>,
        session: Option<&str>,
    ) -> LocalConnection {
        let (key, id) = directory.allocate();
        let (member, _receiver) = member(key, Encoding::Json, 1);
        LocalConnection {
            member,
            id,
            user: user.map(Arc::from),
            session: session.map(Arc::from),
            connected_at: 1_790_000_000,
        }
    }

    fn keys(members: Vec<Member>) -> Vec<ConnectionKey> {
        let mut keys: Vec<ConnectionKey> = members.iter().map(|member| member.connection).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn ids_round_trip_to_keys_and_foreign_ids_are_not_ours() {
        let directory = ConnectionDirectory::new();
        let (key, id) = directory.allocate();
        assert_eq!(directory.key_of(&id), Some(key));
        let other = ConnectionDirectory::new();
        let (_, foreign) = other.allocate();
        if other.node != directory.node {
            assert_eq!(directory.key_of(&foreign), None);
        }
        for garbage in ["", "c_", "c_zz", "x_0000000001", "c_00000000"] {
            assert_eq!(directory.key_of(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn targets_find_their_connections_until_they_leave() {
        System::new().block_on(async {
            let directory = ConnectionDirectory::new();
            let alice_1 = connection(&directory, Some("alice"), Some("s1"));
            let alice_2 = connection(&directory, Some("alice"), Some("s2"));
            let bob = connection(&directory, Some("bob"), Some("s1"));
            let anonymous = connection(&directory, None, None);
            let (a1, a2, b, anon) = (
                alice_1.member.connection,
                alice_2.member.connection,
                bob.member.connection,
                anonymous.member.connection,
            );
            let anonymous_id = anonymous.id.clone();
            for entry in [alice_1, alice_2, bob, anonymous] {
                assert!(directory.insert(entry));
            }
            assert_eq!(keys(directory.members_of_user("alice")), vec![a1, a2]);
            let session = ControlTarget::Session("s1".into());
            assert_eq!(keys(directory.matching(&session)), vec![a1, b]);
            let by_id = ControlTarget::Connection(anonymous_id.to_string());
            assert_eq!(keys(directory.matching(&by_id)), vec![anon]);
            assert!(
                directory
                    .matching(&ControlTarget::User("nobody".into()))
                    .is_empty()
            );

            directory.remove(a1);
            assert_eq!(keys(directory.members_of_user("alice")), vec![a2]);
            directory.remove(a2);
            assert!(directory.members_of_user("alice").is_empty());
            assert!(!directory.by_user.contains_key("alice"), "index emptied");
            assert_eq!(directory.len(), 2);
        });
    }

    /// Remembers what it was told.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl DirectoryObserver for Recorder {
        fn changed(&self, change: DirectoryChange<'_>) {
            let told = match change {
                DirectoryChange::Connection { user, .. } => format!("connection {user:?}"),
                DirectoryChange::Membership { channel, .. } => format!("membership {channel}"),
                DirectoryChange::Gone { channels, .. } => format!("gone from {}", channels.len()),
            };
            self.0.lock().expect("recorder").push(told);
        }
    }

    #[test]
    fn channel_memberships_show_in_views_and_every_change_is_told_until_the_connection_goes() {
        System::new().block_on(async {
            let recorder = Arc::new(Recorder::default());
            let directory = ConnectionDirectory::observed(recorder.clone());
            let alice = connection(&directory, Some("alice"), Some("s1"));
            let (key, id) = (alice.member.connection, alice.id.clone());
            directory.insert(alice);
            let room = ChannelName::parse("room:1").expect("channel");
            directory.joined(key, &room);
            let view = directory.view_of(&id).expect("view");
            assert_eq!(view.channels, vec![room.clone()]);
            assert_eq!(view.user.as_deref(), Some("alice"));
            assert_eq!(directory.keys_in_channel("room:1"), vec![key]);
            assert_eq!(directory.channel_counts(), vec![(room.clone(), 1)]);

            directory.remove(key);
            assert!(directory.keys().is_empty());
            assert!(directory.channel_counts().is_empty(), "memberships go too");
            directory.joined(key, &room);
            assert!(
                directory.channel_counts().is_empty(),
                "a gone connection joins nothing"
            );
            let told = recorder.0.lock().expect("recorder").clone();
            assert_eq!(
                told,
                [
                    "connection Some(\"alice\")",
                    "membership room:1",
                    "gone from 1"
                ]
            );
        });
    }
}
