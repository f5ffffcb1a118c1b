//! The connections living on this node: who each one is (public id, user, session) and how to
//! reach it (its [`Member`] handle: bounded queue and one-shot `Disconnector`), indexed by user and
//! by session for user-directed publications and control operations.
//!
//! It also allocates connection keys and public ids. An id (`c_<node><key>`) carries this node's
//! random prefix and the key in hex, so finding a connection by id is a parse, not a search, and
//! ids from other nodes are recognised as not ours without a lookup.
//!
//! What it is not: it holds no channel membership (groups do) and sends nothing itself beyond the
//! fan-out helper it shares with groups.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::member::{ConnectionKey, Member};
use crate::protocol::ControlTarget;

/// What the directory records of one connection.
#[derive(Clone)]
pub struct LocalConnection {
    pub member: Member,
    /// The public id (`c_…`), as sent in `welcome`.
    pub id: Arc<str>,
    pub user: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
}

pub struct ConnectionDirectory {
    node: u32,
    next_key: AtomicU64,
    connections: DashMap<ConnectionKey, LocalConnection>,
    by_user: DashMap<Arc<str>, Vec<ConnectionKey>>,
    by_session: DashMap<Arc<str>, Vec<ConnectionKey>>,
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
            by_user: DashMap::new(),
            by_session: DashMap::new(),
        }
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
        let previous = self.connections.insert(key, connection);
        if let Some(previous) = &previous {
            self.unindex(previous);
        }
        previous.is_none()
    }

    pub fn remove(&self, key: ConnectionKey) -> Option<LocalConnection> {
        let (_, removed) = self.connections.remove(&key)?;
        self.unindex(&removed);
        Some(removed)
    }

    fn unindex(&self, connection: &LocalConnection) {
        let key = connection.member.connection;
        for (index, name) in [
            (&self.by_user, &connection.user),
            (&self.by_session, &connection.session),
        ] {
            if let Some(name) = name {
                index.remove_if_mut(name, |_, keys| {
                    if let Some(position) = keys.iter().position(|&entry| entry == key) {
                        keys.swap_remove(position);
                    }
                    keys.is_empty()
                });
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
}
