//! Redis channel names (docs/protocol.md §6): what each [`Topic`] and each internal channel is called
//! in Redis, and what an incoming Redis channel name means. The one place that knows the layout:
//!
//! - `PREFIX:ch:CHANNEL`: a channel's publications (sharded pub/sub under Redis Cluster);
//! - `PREFIX:user:USER`: publications to every connection of a user;
//! - `PREFIX:control`: control operations for every node;
//! - `PREFIX:node:NODE`: one node's own channel, used by its readiness probe (sharded under
//!   Cluster, like channel traffic, so the probe exercises the same path).

use crate::broker::Topic;

/// A Redis pub/sub channel, and whether it is a sharded one (SSUBSCRIBE/SPUBLISH).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct RedisChannel {
    pub(super) name: String,
    pub(super) sharded: bool,
}

/// What an incoming message's Redis channel is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming<'a> {
    Channel(&'a str),
    User(&'a str),
    Control,
    /// This node's own channel.
    Node,
    /// Something this node did not subscribe to (another node's channel, a stray pattern).
    Other,
}

#[derive(Debug)]
pub(super) struct Names {
    channel_prefix: String,
    user_prefix: String,
    control: String,
    node: String,
    sharded: bool,
}

impl Names {
    /// `sharded`: channel traffic (and the node channel) uses sharded pub/sub.
    pub(super) fn new(prefix: &str, node_id: &str, sharded: bool) -> Self {
        Self {
            channel_prefix: format!("{prefix}:ch:"),
            user_prefix: format!("{prefix}:user:"),
            control: format!("{prefix}:control"),
            node: format!("{prefix}:node:{node_id}"),
            sharded,
        }
    }

    /// `PREFIX:ch:`, what every channel's Redis name (and history key) starts with.
    pub(super) fn channel_prefix(&self) -> &str {
        &self.channel_prefix
    }

    pub(super) fn topic(&self, topic: &Topic) -> RedisChannel {
        match topic {
            Topic::Channel(channel) => RedisChannel {
                name: format!("{}{channel}", self.channel_prefix),
                sharded: self.sharded,
            },
            Topic::User(user) => RedisChannel {
                name: format!("{}{user}", self.user_prefix),
                sharded: false,
            },
            // A connection is reached through the control channel (a `send` op).
            Topic::Connection(_) => self.control(),
        }
    }

    pub(super) fn control(&self) -> RedisChannel {
        RedisChannel {
            name: self.control.clone(),
            sharded: false,
        }
    }

    pub(super) fn node(&self) -> RedisChannel {
        RedisChannel {
            name: self.node.clone(),
            sharded: self.sharded,
        }
    }

    pub(super) fn parse<'a>(&self, redis_channel: &'a str) -> Incoming<'a> {
        if let Some(channel) = redis_channel.strip_prefix(self.channel_prefix.as_str()) {
            Incoming::Channel(channel)
        } else if let Some(user) = redis_channel.strip_prefix(self.user_prefix.as_str()) {
            Incoming::User(user)
        } else if redis_channel == self.control {
            Incoming::Control
        } else if redis_channel == self.node {
            Incoming::Node
        } else {
            Incoming::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChannelName;
    use std::sync::Arc;

    #[test]
    fn topics_map_to_the_contract_names_and_back() {
        let names = Names::new("sb", "n1", true);
        let room = Topic::Channel(ChannelName::parse("room:1").expect("channel"));
        assert_eq!(
            names.topic(&room),
            RedisChannel {
                name: "sb:ch:room:1".into(),
                sharded: true
            }
        );
        let user = names.topic(&Topic::User(Arc::from("42")));
        assert_eq!((user.name.as_str(), user.sharded), ("sb:user:42", false));
        assert_eq!(names.parse("sb:ch:room:1"), Incoming::Channel("room:1"));
        assert_eq!(names.parse("sb:user:42"), Incoming::User("42"));
        assert_eq!(names.parse("sb:control"), Incoming::Control);
        assert_eq!(names.parse(&names.node().name), Incoming::Node);
        assert_eq!(names.parse("sb:node:other"), Incoming::Other);
        assert_eq!(names.parse("other:ch:x"), Incoming::Other);
    }
}
