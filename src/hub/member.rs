//! What a channel group knows about each member: where to put its frames (a bounded queue) and
//! how to ask it to close (a one-shot [`Disconnector`]).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::queue::OutboundSender;
use crate::protocol::{CloseCode, CloseReason, Encoding};

/// Node-local key of a connection (the public id is a string derived from it).
pub type ConnectionKey = u64;

/// Why a connection is asked to close: the code and reason of its close frame (one of the
/// server's own [`CloseReason`]s, or what a control op asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: CloseCode,
    pub reason: String,
}

impl From<CloseReason> for Disconnect {
    fn from(reason: CloseReason) -> Self {
        Self {
            code: reason.code,
            reason: reason.text.to_owned(),
        }
    }
}

/// How to ask one connection to close: a one-shot slot shared by every copy of its [`Member`]
/// (in each of its groups, in the directory). The first `close` takes the slot and sends; later
/// ones find it empty and do nothing, since that connection is already closing. So a connection
/// receives at most one notice in its life, however many groups overflow it or operations name
/// it: bounded by construction, with no mailbox to fill and nothing that can be lost.
#[derive(Clone)]
pub struct Disconnector(Arc<Mutex<Option<oneshot::Sender<Disconnect>>>>);

impl Disconnector {
    /// A slot, and the receiving end the connection watches.
    pub fn new() -> (Self, oneshot::Receiver<Disconnect>) {
        let (sender, receiver) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(sender)))), receiver)
    }

    /// Asks the connection to close, unless it has been asked already.
    pub fn close(&self, notice: impl Into<Disconnect>) {
        let sender = match self.0.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(sender) = sender {
            // A dropped receiver is a connection already gone.
            let _ = sender.send(notice.into());
        }
    }
}

/// A member of a channel group.
#[derive(Clone)]
pub struct Member {
    pub connection: ConnectionKey,
    pub encoding: Encoding,
    pub queue: OutboundSender,
    /// Where to ask the connection to close: `SlowConsumer` when `queue` is full, a control
    /// operation's code, `Restart` on drain.
    pub disconnect: Disconnector,
}

impl Member {
    /// Asks the connection to close (once; see [`Disconnector`]).
    pub fn close(&self, notice: impl Into<Disconnect>) {
        self.disconnect.close(notice);
    }
}

/// Members for unit tests, with the receiving end of their close notices.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::hub::queue::{OutboundReceiver, outbound_queue};

    /// A member with an outbound queue of `capacity` frames, the queue's receiving end, and
    /// where its close notice arrives.
    pub(crate) fn member_watched(
        connection: ConnectionKey,
        encoding: Encoding,
        capacity: usize,
    ) -> (Member, OutboundReceiver, oneshot::Receiver<Disconnect>) {
        let (queue, receiver) = outbound_queue(capacity, usize::MAX);
        let (disconnect, notices) = Disconnector::new();
        let member = Member {
            connection,
            encoding,
            queue,
            disconnect,
        };
        (member, receiver, notices)
    }

    /// A member whose close notices nobody reads.
    pub(crate) fn member(
        connection: ConnectionKey,
        encoding: Encoding,
        capacity: usize,
    ) -> (Member, OutboundReceiver) {
        let (member, receiver, _notices) = member_watched(connection, encoding, capacity);
        (member, receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_told_to_close_once_and_the_first_reason_wins() {
        let (disconnector, mut notices) = Disconnector::new();
        let copy = disconnector.clone();
        disconnector.close(CloseReason::SLOW_CONSUMER);
        copy.close(CloseReason::LOGGED_OUT);
        copy.close(CloseReason::RESTART);
        assert_eq!(
            notices.try_recv(),
            Ok(Disconnect {
                code: CloseCode::SlowConsumer,
                reason: "outbound queue overflowed".into()
            })
        );
        // Closing a connection that is gone is harmless.
        let (gone, receiver) = Disconnector::new();
        drop(receiver);
        gone.close(CloseReason::IDLE);
    }
}
