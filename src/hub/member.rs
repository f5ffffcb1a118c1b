//! What a channel group knows about each member: where to put its frames (a bounded queue) and
//! how to ask it to close. Also the messages the hub sends to connections.

use actix::prelude::{Message, Recipient};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::{CloseCode, Encoding, OutboundFrame};

/// One item in a connection's outbound queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    Frame(OutboundFrame),
    Ping(Bytes),
    Pong(Bytes),
}

/// The producing end of a connection's bounded outbound queue. `try_send` only: a full queue is
/// a slow consumer, never a reason to wait or grow.
pub type OutboundSender = mpsc::Sender<Outbound>;

/// Creates a connection's outbound queue holding at most `capacity` items.
pub fn outbound_queue(capacity: usize) -> (OutboundSender, mpsc::Receiver<Outbound>) {
    mpsc::channel(capacity.max(1))
}

/// Node-local key of a connection (the public id is a string derived from it).
pub type ConnectionKey = u64;

/// Asks a connection to close itself with `code`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub code: CloseCode,
    pub reason: String,
}

/// A member of a channel group.
#[derive(Clone)]
pub struct Member {
    pub connection: ConnectionKey,
    pub encoding: Encoding,
    pub queue: OutboundSender,
    /// Where to ask the connection to close: `SlowConsumer` when `queue` is full, a control
    /// operation's code, `Restart` on drain.
    pub disconnect: Recipient<Disconnect>,
}

impl Member {
    /// Asks the connection to close. Not subject to a mailbox bound, and still bounded in count:
    /// every caller tells a connection at most once per reason, and the notice must not be lost,
    /// or the connection would stay open without receiving.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.disconnect.do_send(Disconnect {
            code,
            reason: reason.to_owned(),
        });
    }
}

/// Members for unit tests, whose overflow notices go to an actor that ignores them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use actix::prelude::{Actor, Context, Handler};

    struct IgnoreDisconnects;

    impl Actor for IgnoreDisconnects {
        type Context = Context<Self>;
    }

    impl Handler<Disconnect> for IgnoreDisconnects {
        type Result = ();
        fn handle(&mut self, _: Disconnect, _: &mut Self::Context) {}
    }

    /// A member with an outbound queue of `capacity`, and the queue's receiving end. Must be
    /// called inside a running actix `System`.
    pub(crate) fn member(
        connection: ConnectionKey,
        encoding: Encoding,
        capacity: usize,
    ) -> (Member, mpsc::Receiver<Outbound>) {
        let (queue, receiver) = outbound_queue(capacity);
        let member = Member {
            connection,
            encoding,
            queue,
            disconnect: IgnoreDisconnects.start().recipient(),
        };
        (member, receiver)
    }
}
