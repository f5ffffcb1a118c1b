//! What changed on this node since the roster last wrote its part of the registry out: the
//! connections, users and channels whose entries must be rewritten. The hub's directory reports
//! each change ([`DirectoryObserver`]) after it has made it, so a flush that takes the changes
//! reads the state that caused them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::hub::{DirectoryChange, DirectoryObserver};
use crate::protocol::ChannelName;

/// The entries to rewrite.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Connection ids whose record changed (or that are gone).
    pub connections: HashSet<Arc<str>>,
    /// Users whose set of connections on this node changed.
    pub users: HashSet<Arc<str>>,
    /// Channels whose members on this node changed.
    pub channels: HashSet<ChannelName>,
}

/// The changes not yet written, and a wake-up at each.
#[derive(Default)]
pub(crate) struct ChangeLog {
    pending: Mutex<Changes>,
    changed: Notify,
}

impl ChangeLog {
    /// The changes since the last call.
    pub(crate) fn take(&self) -> Changes {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves at the next change.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl DirectoryObserver for ChangeLog {
    fn changed(&self, change: DirectoryChange<'_>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match change {
                DirectoryChange::Connection { id, user } => {
                    pending.connections.insert(id.clone());
                    pending.users.extend(user.cloned());
                }
                DirectoryChange::Membership { id, channel } => {
                    pending.connections.insert(id.clone());
                    pending.channels.insert(channel.clone());
                }
                DirectoryChange::Gone { id, user, channels } => {
                    pending.connections.insert(id.clone());
                    pending.users.extend(user.cloned());
                    pending.channels.extend(channels.iter().cloned());
                }
            }
        }
        self.changed.notify_one();
    }
}
