//! The `[bridge.channels_redis]` section: which channels_redis layer the nodes take part in, on
//! which Redis hosts, with which of Django's `CHANNEL_LAYERS` settings, and which Django groups
//! map to which Switchboard channels. Absent, there is no bridge.
//!
//! The settings mirror the `CONFIG` of Django's layer and must agree with it: `hosts` in the same
//! order (the shard a key lives on is chosen by its position), the same `prefix`, and the same
//! `symmetric_encryption_keys`.

use serde::{Deserialize, Serialize};

use super::mapping::{GroupMap, GroupRule};
use crate::config::{KeyError, REDACTED};
use crate::human_duration::HumanDuration;

/// Which channels_redis layer Django's `CHANNEL_LAYERS` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// `channels_redis.core.RedisChannelLayer`: groups are sorted sets of channel names,
    /// `group_send` writes into each member's channel key.
    Core,
    /// `channels_redis.pubsub.RedisPubSubChannelLayer`: a group is a Redis pub/sub channel.
    Pubsub,
}

/// The `[bridge]` table: one bridge so far.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels_redis: Option<ChannelsRedisConfig>,
}

/// The `[bridge.channels_redis]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsRedisConfig {
    pub layer: Layer,
    /// The layer's `hosts`, as Redis URLs, in the same order as Django's.
    pub hosts: Vec<String>,
    /// The layer's `prefix`.
    pub prefix: String,
    /// The layer's `expiry`: a message older than this when the node pops it is dropped (the
    /// sender would have discarded it too). Core layer only.
    pub expiry: HumanDuration,
    /// The layer's `group_expiry`: the node renews its membership of each group well inside it.
    /// Core layer only.
    pub group_expiry: HumanDuration,
    /// The capacity Django's layer gives the node's channel (its `capacity`, or the
    /// `channel_capacity` entry matching `switchboard.*`): how many messages the node takes per
    /// pop, and the level at which it counts its channel as full. Core layer only.
    pub capacity: usize,
    /// The layer's `symmetric_encryption_keys`: the messages are Fernet tokens under one of
    /// these (Django encrypts with the first).
    pub symmetric_encryption_keys: Vec<String>,
    /// The layer's serializer `random_prefix_length`: 12 for the core layer, 0 for pub/sub,
    /// unless Django's `CONFIG` changes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_prefix_length: Option<usize>,
    /// Group → channel rules, first match wins; unmapped groups are not joined.
    pub groups: Vec<GroupRule>,
}

impl Default for ChannelsRedisConfig {
    fn default() -> Self {
        Self {
            layer: Layer::Core,
            hosts: vec!["redis://127.0.0.1:6379".to_owned()],
            prefix: "asgi".to_owned(),
            expiry: HumanDuration::from_secs(60),
            group_expiry: HumanDuration::from_secs(86_400),
            capacity: 100,
            symmetric_encryption_keys: Vec::new(),
            random_prefix_length: None,
            groups: Vec::new(),
        }
    }
}

/// Where a key of this section is named in errors.
pub(crate) fn key(name: &str) -> String {
    format!("bridge.channels_redis.{name}")
}

/// The longest `random_prefix_length` accepted (channels_redis's default is 12).
const MAX_RANDOM_PREFIX: usize = 64;

impl ChannelsRedisConfig {
    /// The serializer's random prefix, by layer unless given.
    pub fn random_prefix_length(&self) -> usize {
        self.random_prefix_length.unwrap_or(match self.layer {
            Layer::Core => 12,
            Layer::Pubsub => 0,
        })
    }

    /// Problems with the section, by key (the hosts are parsed, not connected to).
    pub fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        if self.hosts.is_empty() {
            problems.push(KeyError::new(key("hosts"), "needs at least one Redis URL"));
        }
        for (index, host) in self.hosts.iter().enumerate() {
            if let Err(problem) = super::redis_config(host) {
                problems.push(KeyError::new(format!("{}[{index}]", key("hosts")), problem));
            }
        }
        let name_character = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if !self.prefix.chars().all(name_character) {
            problems.push(KeyError::new(
                key("prefix"),
                "may hold only ASCII letters, digits, '-', '_' and '.'",
            ));
        }
        // Redis refuses an EXPIRE beyond its range; a year is far past any channel layer's.
        let year = HumanDuration::from_secs(365 * 86_400);
        if self.expiry < HumanDuration::from_secs(1) || self.expiry > year {
            problems.push(KeyError::new(key("expiry"), "must be 1s to 8760h"));
        }
        if self.group_expiry < HumanDuration::from_secs(2) || self.group_expiry > year {
            problems.push(KeyError::new(key("group_expiry"), "must be 2s to 8760h"));
        }
        if !(1..=10_000).contains(&self.capacity) {
            problems.push(KeyError::new(key("capacity"), "must be 1 to 10000"));
        }
        if self.random_prefix_length() > MAX_RANDOM_PREFIX {
            problems.push(KeyError::new(
                key("random_prefix_length"),
                format!("must be at most {MAX_RANDOM_PREFIX}"),
            ));
        }
        if self.symmetric_encryption_keys.iter().any(String::is_empty) {
            problems.push(KeyError::new(
                key("symmetric_encryption_keys"),
                "an empty key is not a key",
            ));
        }
        if self.groups.is_empty() {
            problems.push(KeyError::new(
                key("groups"),
                "needs at least one rule: unmapped groups are not joined",
            ));
        }
        if let Err(problem) = GroupMap::new(&self.groups) {
            problems.push(problem);
        }
        problems
    }

    /// The section with the encryption keys and the passwords in the host URLs replaced.
    pub fn redacted(&self) -> Self {
        Self {
            hosts: self
                .hosts
                .iter()
                .map(|host| crate::broker::redis::redacted(host))
                .collect(),
            symmetric_encryption_keys: self
                .symmetric_encryption_keys
                .iter()
                .map(|_| REDACTED.to_owned())
                .collect(),
            ..self.clone()
        }
    }
}

impl BridgeConfig {
    pub fn problems(&self) -> Vec<KeyError> {
        self.channels_redis
            .as_ref()
            .map(ChannelsRedisConfig::problems)
            .unwrap_or_default()
    }

    pub fn redacted(&self) -> Self {
        Self {
            channels_redis: self
                .channels_redis
                .as_ref()
                .map(ChannelsRedisConfig::redacted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<GroupRule> {
        vec![GroupRule::new("chat_*", "room:{1}")]
    }

    #[test]
    fn defaults_are_those_of_channels_redis() {
        let config = ChannelsRedisConfig {
            groups: rules(),
            ..Default::default()
        };
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        assert_eq!(config.prefix, "asgi");
        assert_eq!(config.capacity, 100);
        assert_eq!(config.random_prefix_length(), 12);
        let pubsub = ChannelsRedisConfig {
            layer: Layer::Pubsub,
            ..config
        };
        assert_eq!(pubsub.random_prefix_length(), 0);
    }

    #[test]
    fn problems_name_their_key() {
        let config = ChannelsRedisConfig {
            hosts: vec!["http://x".into()],
            prefix: "a:b".into(),
            group_expiry: HumanDuration::from_secs(u64::MAX),
            capacity: 0,
            symmetric_encryption_keys: vec![String::new()],
            ..Default::default()
        };
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        for expected in [
            "bridge.channels_redis.hosts[0]",
            "bridge.channels_redis.prefix",
            "bridge.channels_redis.group_expiry",
            "bridge.channels_redis.capacity",
            "bridge.channels_redis.symmetric_encryption_keys",
            "bridge.channels_redis.groups",
        ] {
            assert!(
                keys.iter().any(|key| key == expected),
                "{expected} in {keys:?}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let config = ChannelsRedisConfig {
            hosts: vec!["redis://:hunter2@127.0.0.1:6379/0".into()],
            symmetric_encryption_keys: vec!["topsecret".into()],
            groups: rules(),
            ..Default::default()
        };
        let shown = format!("{:?}", config.redacted());
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
    }
}
