//! Channel policy: the `[[channels]]` rules that say who may join and publish where.
//!
//! Rules are tried in order; the first whose pattern matches the channel decides, and a channel
//! no rule matches is denied. Patterns are globs (`*`), and may contain `{user}`, which matches
//! like `*` when choosing the rule and must equal the connection's user id for `owner` access.
//! A rule may also keep history for its channels (`history_size`, `history_ttl`; see
//! docs/protocol.md §7), which [`ChannelPolicy::history_rules`] hands to the broker.

use serde::{Deserialize, Serialize};

use crate::auth::Identity;
use crate::broker::history::MAX_HISTORY_SIZE;
use crate::broker::{HistoryRule, HistoryRules};
use crate::config::KeyError;
use crate::human_duration::HumanDuration;
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
    /// Publications kept per channel for recovery; 0: no history (no offsets, as before).
    #[serde(default)]
    pub history_size: usize,
    /// How long a channel's history outlives its last publication; required with
    /// `history_size`.
    #[serde(default)]
    pub history_ttl: Option<HumanDuration>,
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
            history_size: 0,
            history_ttl: None,
        }
    }

    /// How the rule's channels keep history, if they do.
    pub fn history(&self) -> Option<HistoryRule> {
        match (self.history_size, self.history_ttl) {
            (0, _) | (_, None) => None,
            (size, Some(ttl)) => Some(HistoryRule { size, ttl: ttl.0 }),
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
        if self.history_size > MAX_HISTORY_SIZE {
            problems.push(KeyError::new(
                format!("{key}.history_size"),
                format!("must be at most {MAX_HISTORY_SIZE}"),
            ));
        }
        match self.history_ttl {
            None if self.history_size > 0 => problems.push(KeyError::new(
                format!("{key}.history_ttl"),
                "is required when history_size is set",
            )),
            Some(_) if self.history_size == 0 => problems.push(KeyError::new(
                format!("{key}.history_size"),
                "must be at least 1 when history_ttl is set",
            )),
            Some(ttl) if ttl.0 < std::time::Duration::from_secs(1) => problems.push(KeyError::new(
                format!("{key}.history_ttl"),
                "must be at least 1s",
            )),
            _ => {}
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

    /// The rules' history settings, in order, for the broker (`{user}` widened to `*`).
    pub fn history_rules(&self) -> HistoryRules {
        HistoryRules::new(
            self.rules
                .iter()
                .map(|rule| (rule.pattern.replace(USER_PLACEHOLDER, "*"), rule.history()))
                .collect(),
        )
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
            ..ChannelRule::permissive()
        }
    }

    #[test]
    fn history_needs_both_a_size_and_a_ttl() {
        let mut kept = rule("room:*", Access::Anyone, Access::Anyone);
        kept.history_size = 100;
        kept.history_ttl = Some(HumanDuration::from_secs(60));
        assert!(kept.problems("channels[0]").is_empty());
        assert_eq!(
            kept.history(),
            Some(HistoryRule {
                size: 100,
                ttl: std::time::Duration::from_secs(60)
            })
        );
        let keys = |rule: &ChannelRule| -> Vec<String> {
            rule.problems("channels[0]")
                .into_iter()
                .map(|problem| problem.key)
                .collect()
        };
        let mut no_ttl = kept.clone();
        no_ttl.history_ttl = None;
        assert_eq!(keys(&no_ttl), ["channels[0].history_ttl"]);
        let mut no_size = kept.clone();
        no_size.history_size = 0;
        assert_eq!(keys(&no_size), ["channels[0].history_size"]);
        let mut too_big = kept.clone();
        too_big.history_size = MAX_HISTORY_SIZE + 1;
        assert_eq!(keys(&too_big), ["channels[0].history_size"]);
        let owned = ChannelRule {
            pattern: "inbox:{user}".into(),
            ..kept
        };
        let policy = ChannelPolicy::new(vec![owned, ChannelRule::permissive()]);
        let rules = policy.history_rules();
        assert!(rules.rule_for("inbox:42").is_some());
        assert!(rules.rule_for("room:1").is_none());
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
