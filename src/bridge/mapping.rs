//! Django group names ↔ Switchboard channels.
//!
//! Django group names hold only `[A-Za-z0-9_.-]` (no `:`), so rules rename them: a rule pairs a
//! group glob (`chat_*`, each `*` one or more group-name characters) with a channel template
//! (`room:{1}`, `{n}` the n-th `*`). A node needs both directions: when a Switchboard channel
//! gains its first local member it joins the group the channel maps back to, and what arrives
//! for a group goes to the channel the group maps to. Every `*` is used exactly once in the
//! template, so a rule inverts; a name is bridged only when both directions agree (first
//! matching rule wins each way), so a message can never reach a channel whose members did not
//! cause the join.

use serde::{Deserialize, Serialize};

use crate::config::KeyError;
use crate::protocol::ChannelName;

/// channels' own limit: names are shorter than 100 characters.
pub const MAX_GROUP_NAME: usize = 99;
/// At most this many `*` in one rule (matching stays linear enough for any name).
const MAX_CAPTURES: usize = 4;

/// One `[[bridge.channels_redis.groups]]` rule as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// A Django group name, or a glob of them (`chat_*`).
    pub group: String,
    /// The Switchboard channel, with `{1}`… for the glob's `*`s (`room:{1}`).
    pub channel: String,
}

impl GroupRule {
    pub fn new(group: &str, channel: &str) -> Self {
        Self {
            group: group.to_owned(),
            channel: channel.to_owned(),
        }
    }
}

/// Whether `c` may appear in a Django group name.
pub fn is_group_character(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Whether `name` is a valid Django group name.
pub fn is_group_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_GROUP_NAME && name.chars().all(is_group_character)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// The index (from 0) of the capture it stands for.
    Capture(usize),
}

/// A compiled pattern: literals and captures, never two captures side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<Part>);

impl Pattern {
    /// Matches `text` left to right, each capture taking the shortest non-empty run of group
    /// characters after which the next literal follows (the last one, all that is left before
    /// the final literal). Deterministic; the round trip in [`GroupMap`] catches any name this
    /// reading would get wrong.
    fn captures<'a>(&self, text: &'a str) -> Option<Vec<&'a str>> {
        let mut captures = Vec::new();
        let mut rest = text;
        let parts = &self.0;
        for (index, part) in parts.iter().enumerate() {
            match part {
                Part::Literal(literal) => rest = rest.strip_prefix(literal.as_str())?,
                Part::Capture(_) => {
                    let taken = match parts.get(index + 1) {
                        None => rest.len(),
                        Some(Part::Literal(next)) if index + 2 == parts.len() => {
                            rest.strip_suffix(next.as_str())?.len()
                        }
                        Some(Part::Literal(next)) => rest.get(1..)?.find(next.as_str())? + 1,
                        Some(Part::Capture(_)) => return None,
                    };
                    let (captured, after) = rest.split_at(taken);
                    if captured.is_empty() || !captured.chars().all(is_group_character) {
                        return None;
                    }
                    captures.push(captured);
                    rest = after;
                }
            }
        }
        rest.is_empty().then_some(captures)
    }

    /// The pattern with its captures filled in (by capture index).
    fn fill(&self, captures: &[&str]) -> Option<String> {
        let mut text = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(literal) => text.push_str(literal),
                Part::Capture(index) => text.push_str(captures.get(*index)?),
            }
        }
        Some(text)
    }

    /// The captures as numbered in this pattern, reordered to `other`'s numbering.
    fn capture_order(&self) -> Vec<usize> {
        self.0
            .iter()
            .filter_map(|part| match part {
                Part::Capture(index) => Some(*index),
                Part::Literal(_) => None,
            })
            .collect()
    }
}

/// The compiled rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMap {
    rules: Vec<(Pattern, Pattern)>,
}

impl GroupMap {
    /// Compiles the rules; a problem names the rule's key.
    pub fn new(rules: &[GroupRule]) -> Result<Self, KeyError> {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                compile(rule).map_err(|message| {
                    KeyError::new(format!("bridge.channels_redis.groups[{index}]"), message)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules: compiled })
    }

    /// The channel `group`'s messages go to, if a rule maps it (both ways).
    pub fn channel_for(&self, group: &str) -> Option<ChannelName> {
        if !is_group_name(group) {
            return None;
        }
        let channel = self.forward(group)?;
        (self.backward(channel.as_str()).as_deref() == Some(group)).then_some(channel)
    }

    /// The group a node joins for its members of `channel`, if a rule maps it (both ways).
    pub fn group_for(&self, channel: &ChannelName) -> Option<String> {
        let group = self.backward(channel.as_str())?;
        (self.forward(&group).as_ref() == Some(channel)).then_some(group)
    }

    fn forward(&self, group: &str) -> Option<ChannelName> {
        self.rules.iter().find_map(|(group_pattern, channel)| {
            let captures = group_pattern.captures(group)?;
            ChannelName::parse(&channel.fill(&captures)?).ok()
        })
    }

    fn backward(&self, channel: &str) -> Option<String> {
        self.rules
            .iter()
            .find_map(|(group_pattern, channel_pattern)| {
                let found = channel_pattern.captures(channel)?;
                // Put the captures back in the glob's order.
                let mut by_index = vec![""; found.len()];
                for (position, index) in channel_pattern.capture_order().into_iter().enumerate() {
                    *by_index.get_mut(index)? = found.get(position)?;
                }
                let group = group_pattern.fill(&by_index)?;
                is_group_name(&group).then_some(group)
            })
    }
}

fn compile(rule: &GroupRule) -> Result<(Pattern, Pattern), String> {
    let group = compile_glob(&rule.group)?;
    let captures = group.capture_order().len();
    let channel = compile_template(&rule.channel, captures)?;
    let mut used = channel.capture_order();
    used.sort_unstable();
    if used != (0..captures).collect::<Vec<_>>() {
        return Err(format!(
            "channel {:?} must use each of the group's {captures} `*` exactly once, as {{1}}…{{{captures}}}",
            rule.channel
        ));
    }
    // A sample name proves the template makes valid channel names.
    let sample: Vec<&str> = vec!["x"; captures];
    let filled = channel.fill(&sample).unwrap_or_default();
    ChannelName::parse(&filled).map_err(|err| {
        format!(
            "channel {:?} does not make channel names: {err}",
            rule.channel
        )
    })?;
    Ok((group, channel))
}

fn compile_glob(glob: &str) -> Result<Pattern, String> {
    if glob.is_empty() || glob.len() > MAX_GROUP_NAME {
        return Err(format!("group must be 1 to {MAX_GROUP_NAME} characters"));
    }
    if let Some(bad) = glob.chars().find(|c| !is_group_character(*c) && *c != '*') {
        return Err(format!(
            "group {glob:?} holds {bad:?}: Django group names have only ASCII letters, digits, '-', '_', '.' (and `*` here)"
        ));
    }
    let mut parts = Vec::new();
    let mut captures = 0;
    for (index, piece) in glob.split('*').enumerate() {
        if index > 0 {
            if matches!(parts.last(), Some(Part::Capture(_))) {
                return Err(format!("group {glob:?} has two `*` side by side"));
            }
            parts.push(Part::Capture(captures));
            captures += 1;
        }
        if !piece.is_empty() {
            parts.push(Part::Literal(piece.to_owned()));
        }
    }
    if captures > MAX_CAPTURES {
        return Err(format!("group {glob:?} has more than {MAX_CAPTURES} `*`"));
    }
    Ok(Pattern(parts))
}

fn compile_template(template: &str, captures: usize) -> Result<Pattern, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|close| open + close)
            .ok_or_else(|| format!("channel {template:?} has a `{{` without its `}}`"))?;
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let number: usize = rest[open + 1..close]
            .parse()
            .ok()
            .filter(|number| (1..=captures).contains(number))
            .ok_or_else(|| {
                format!(
                    "channel {template:?}: {} is not one of the group's `*` ({{1}}…{{{captures}}})",
                    &rest[open..=close]
                )
            })?;
        if matches!(parts.last(), Some(Part::Capture(_))) {
            return Err(format!(
                "channel {template:?} has two captures side by side"
            ));
        }
        parts.push(Part::Capture(number - 1));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(Pattern(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[(&str, &str)]) -> GroupMap {
        let rules: Vec<GroupRule> = rules.iter().map(|(g, c)| GroupRule::new(g, c)).collect();
        GroupMap::new(&rules).expect("valid rules")
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).expect("channel name")
    }

    #[test]
    fn a_glob_maps_both_ways() {
        let map = map(&[("chat_*", "room:{1}"), ("announcements", "news")]);
        assert_eq!(map.channel_for("chat_42"), Some(channel("room:42")));
        assert_eq!(
            map.group_for(&channel("room:42")).as_deref(),
            Some("chat_42")
        );
        assert_eq!(map.channel_for("announcements"), Some(channel("news")));
        assert_eq!(
            map.group_for(&channel("news")).as_deref(),
            Some("announcements")
        );
        assert_eq!(map.channel_for("other"), None, "unmapped");
        assert_eq!(map.group_for(&channel("lobby")), None, "unmapped");
        assert_eq!(
            map.channel_for("chat_"),
            None,
            "a * takes at least one character"
        );
    }

    #[test]
    fn a_channel_whose_part_is_no_group_name_is_not_bridged() {
        let map = map(&[("chat_*", "room:{1}")]);
        assert_eq!(map.group_for(&channel("room:a:b")), None);
        assert_eq!(map.group_for(&channel("room:é")), None);
        let long = format!("room:{}", "x".repeat(MAX_GROUP_NAME));
        assert_eq!(map.group_for(&channel(&long)), None, "too long a group");
    }

    #[test]
    fn captures_may_be_reordered() {
        let map = map(&[("org.*.team.*", "team:{2}@{1}")]);
        assert_eq!(
            map.channel_for("org.acme.team.red"),
            Some(channel("team:red@acme"))
        );
        assert_eq!(
            map.group_for(&channel("team:red@acme")).as_deref(),
            Some("org.acme.team.red")
        );
    }

    #[test]
    fn first_match_wins_and_both_directions_must_agree() {
        // `chat_vip_1` maps forward by the first rule to room:vip_1, which maps back to
        // chat_vip_1: consistent. `vip:1` maps back to chat_vip_1, which maps forward to
        // room:vip_1, not vip:1: not bridged, so no message for it can reach vip:1.
        let map = map(&[("chat_*", "room:{1}"), ("chat_vip_*", "vip:{1}")]);
        assert_eq!(map.channel_for("chat_vip_1"), Some(channel("room:vip_1")));
        assert_eq!(map.group_for(&channel("vip:1")), None);
        assert_eq!(
            map.group_for(&channel("room:vip_1")).as_deref(),
            Some("chat_vip_1")
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_key() {
        for (group, template) in [
            ("chat:*", "room:{1}"),
            ("chat_**", "room:{1}"),
            ("chat_*", "room"),
            ("chat_*", "room:{2}"),
            ("chat_*_*", "room:{1}{2}"),
            ("chat_*", "room:{1}:{1}"),
            ("chat_*", "room:{1"),
            ("", "room"),
            ("chat_*", " bad {1}"),
        ] {
            let err = GroupMap::new(&[GroupRule::new("ok", "ok"), GroupRule::new(group, template)])
                .expect_err(group);
            assert_eq!(
                err.key, "bridge.channels_redis.groups[1]",
                "{group} {template}"
            );
        }
    }

    #[test]
    fn hostile_names_do_not_panic() {
        let map = map(&[("a*b*", "x:{1}:{2}"), ("*", "y:{1}")]);
        for name in [
            "", "a", "ab", "abb", "aéb", "a\u{0}b", "ab*", "abab", "a.b.c",
        ] {
            let _ = map.channel_for(name);
            if let Ok(parsed) = ChannelName::parse(name) {
                let _ = map.group_for(&parsed);
            }
        }
        assert_eq!(map.channel_for("axbyb"), Some(channel("x:x:yb")));
        assert_eq!(map.group_for(&channel("x:x:yb")).as_deref(), Some("axbyb"));
    }
}
