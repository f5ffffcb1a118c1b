//! Channel policy: the `[[channels]]` rules that say who may join and publish where.
//!
//! Rules are tried in order; the first whose pattern matches the channel decides, and a channel
//! no rule matches is denied. Patterns are globs (`*`), and may contain `{user}`, which matches
//! like `*` when choosing the rule and must equal the connection's user id for `owner` access.

use serde::{Deserialize, Serialize};

use crate::auth::Identity;
use crate::config::KeyError;
use crate::protocol::channel::glob_matches;

/// Who may do something on the channels a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Every connection, anonymous ones included.
    Anyone,
    /// Connections with a user id.
    Authenticated,
    /// The user whose id fills `{user}` in the pattern (`user:{user}` is joinable by that user).
    Owner,
    /// Connections whose credential grants the channel (a `channels` claim, globs allowed).
    Claim,
    /// No client; only back ends (plain Redis `PUBLISH`, the server API) reach the channel.
    Nobody,
}

/// One `[[channels]]` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    pub pattern: String,
    #[serde(default = "default_join")]
    pub join: Access,
    #[serde(default = "default_publish")]
    pub publish: Access,
    /// Push join/leave events to members and answer presence queries.
    #[serde(default)]
    pub presence: bool,
}

fn default_join() -> Access {
    Access::Authenticated
}

fn default_publish() -> Access {
    Access::Nobody
}

/// The placeholder for the connection's user id in a pattern.
pub const USER_PLACEHOLDER: &str = "{user}";

impl ChannelRule {
    /// The permissive rule shipped for local development: anyone may join and publish anywhere.
    pub fn permissive() -> Self {
        Self {
            pattern: "*".to_owned(),
            join: Access::Anyone,
            publish: Access::Anyone,
            presence: false,
        }
    }

    fn matches(&self, channel: &str) -> bool {
        if self.pattern.contains(USER_PLACEHOLDER) {
            glob_matches(&self.pattern.replace(USER_PLACEHOLDER, "*"), channel)
        } else {
            glob_matches(&self.pattern, channel)
        }
    }

    /// Problems with this rule, by key; `key` is the rule's own (`channels[2]`).
    pub fn problems(&self, key: &str) -> Vec<KeyError> {
        let mut problems = Vec::new();
        if self.pattern.is_empty() {
            problems.push(KeyError::new(format!("{key}.pattern"), "must not be empty"));
        }
        for (field, access) in [("join", self.join), ("publish", self.publish)] {
            if access == Access::Owner && !self.pattern.contains(USER_PLACEHOLDER) {
                problems.push(KeyError::new(
                    format!("{key}.{field}"),
                    format!("\"owner\" needs {USER_PLACEHOLDER} in the pattern"),
                ));
            }
        }
        problems
    }
}

/// The ordered rules.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelPolicy {
    rules: Vec<ChannelRule>,
}

impl ChannelPolicy {
    pub fn new(rules: Vec<ChannelRule>) -> Self {
        Self { rules }
    }

    /// The rule that decides for `channel`: the first that matches.
    pub fn rule_for(&self, channel: &str) -> Option<&ChannelRule> {
        self.rules.iter().find(|rule| rule.matches(channel))
    }

    pub fn may_join(&self, identity: &Identity, channel: &str) -> bool {
        self.rule_for(channel)
            .is_some_and(|rule| allows(rule, rule.join, identity, channel))
    }

    pub fn may_publish(&self, identity: &Identity, channel: &str) -> bool {
        self.rule_for(channel)
            .is_some_and(|rule| allows(rule, rule.publish, identity, channel))
    }
}

fn allows(rule: &ChannelRule, access: Access, identity: &Identity, channel: &str) -> bool {
    match access {
        Access::Anyone => true,
        Access::Authenticated => identity.is_authenticated(),
        Access::Owner => identity.user.as_deref().is_some_and(|user| {
            // A user id containing a glob character must not widen the pattern.
            !user.contains('*')
                && glob_matches(&rule.pattern.replace(USER_PLACEHOLDER, user), channel)
        }),
        Access::Claim => identity
            .channels
            .iter()
            .any(|granted| glob_matches(granted, channel)),
        Access::Nobody => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, join: Access, publish: Access) -> ChannelRule {
        ChannelRule {
            pattern: pattern.to_owned(),
            join,
            publish,
            presence: false,
        }
    }

    fn user(id: &str, channels: &[&str]) -> Identity {
        Identity {
            user: Some(id.to_owned()),
            channels: channels.iter().map(|channel| channel.to_string()).collect(),
            ..Identity::default()
        }
    }

    fn policy() -> ChannelPolicy {
        ChannelPolicy::new(vec![
            rule("public:*", Access::Anyone, Access::Authenticated),
            rule("user:{user}", Access::Owner, Access::Owner),
            rule("team:*", Access::Claim, Access::Claim),
            rule("announcements", Access::Anyone, Access::Nobody),
            rule("public:*", Access::Nobody, Access::Nobody),
        ])
    }

    #[test]
    fn first_matching_rule_wins_and_no_match_denies() {
        let policy = policy();
        let anonymous = Identity::anonymous();
        assert!(policy.may_join(&anonymous, "public:lobby"));
        assert!(!policy.may_publish(&anonymous, "public:lobby"));
        assert!(policy.may_publish(&user("1", &[]), "public:lobby"));
        assert!(!policy.may_join(&user("1", &[]), "secret"));
        assert!(policy.may_join(&anonymous, "announcements"));
        assert!(!policy.may_publish(&user("1", &[]), "announcements"));
    }

    #[test]
    fn owner_channels_belong_to_their_user_only() {
        let policy = policy();
        assert!(policy.may_join(&user("42", &[]), "user:42"));
        assert!(!policy.may_join(&user("43", &[]), "user:42"));
        assert!(!policy.may_join(&Identity::anonymous(), "user:42"));
        assert!(!policy.may_join(&user("*", &[]), "user:42"));
    }

    #[test]
    fn claims_grant_joins_by_glob() {
        let policy = policy();
        assert!(policy.may_join(&user("1", &["team:red*"]), "team:red-1"));
        assert!(!policy.may_join(&user("1", &["team:red*"]), "team:blue"));
    }

    #[test]
    fn owner_without_placeholder_is_a_problem() {
        assert_eq!(
            rule("user:*", Access::Owner, Access::Nobody).problems("channels[0]"),
            [KeyError::new(
                "channels[0].join",
                "\"owner\" needs {user} in the pattern"
            )]
        );
        assert!(ChannelRule::permissive().problems("channels[0]").is_empty());
    }
}
