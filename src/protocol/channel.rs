//! Channel names: what a valid name is, and glob patterns over names.
//!
//! A channel name is 1 to 255 bytes of printable characters with no whitespace. Patterns (used by
//! the `[[channels]]` policy rules and by the `channels` claim of a credential) are names in which
//! `*` matches any run of characters, possibly empty.

use std::fmt;
use std::sync::Arc;

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_NAME_BYTES: usize = 255;

/// Why a string is not a valid channel name. The `Display` text is sent to clients as the
/// `reason` of an `invalid_channel` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannel {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} bytes long; the limit is 255")]
    TooLong(usize),
    #[error("channel name contains whitespace or a non-printable character")]
    NotPrintable,
}

/// A validated channel name. Cheap to clone (reference-counted), so one name can be shared by the
/// connection that joined it, the group actor and the registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name`: 1..=255 bytes, every character printable, no whitespace.
    pub fn parse(name: &str) -> Result<Self, InvalidChannel> {
        validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Checks a channel name without allocating.
pub fn validate(name: &str) -> Result<(), InvalidChannel> {
    if name.is_empty() {
        return Err(InvalidChannel::Empty);
    }
    if name.len() > MAX_CHANNEL_NAME_BYTES {
        return Err(InvalidChannel::TooLong(name.len()));
    }
    if name
        .chars()
        .any(|character| character.is_control() || character.is_whitespace())
    {
        return Err(InvalidChannel::NotPrintable);
    }
    Ok(())
}

/// Matches `text` against a glob `pattern` in which `*` matches any run of characters.
/// Linear-time in practice: the classic two-pointer algorithm with one backtrack point.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.as_bytes();
    let text = text.as_bytes();
    let (mut pattern_index, mut text_index) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while text_index < text.len() {
        if pattern_index < pattern.len() && pattern[pattern_index] == b'*' {
            backtrack = Some((pattern_index, text_index));
            pattern_index += 1;
        } else if pattern_index < pattern.len() && pattern[pattern_index] == text[text_index] {
            pattern_index += 1;
            text_index += 1;
        } else if let Some((star_index, star_text_index)) = backtrack {
            pattern_index = star_index + 1;
            text_index = star_text_index + 1;
            backtrack = Some((star_index, star_text_index + 1));
        } else {
            return false;
        }
    }
    while pattern_index < pattern.len() && pattern[pattern_index] == b'*' {
        pattern_index += 1;
    }
    pattern_index == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_accepted() {
        for name in ["room:1", "a", "private:x", "ünïcödé", &"x".repeat(255)] {
            assert!(ChannelName::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names_are_refused_with_the_reason() {
        assert_eq!(validate(""), Err(InvalidChannel::Empty));
        assert_eq!(
            validate(&"x".repeat(256)),
            Err(InvalidChannel::TooLong(256))
        );
        assert_eq!(validate("has space"), Err(InvalidChannel::NotPrintable));
        assert_eq!(validate("tab\there"), Err(InvalidChannel::NotPrintable));
        assert_eq!(validate("bell\u{7}"), Err(InvalidChannel::NotPrintable));
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("public:*", "public:room"));
        assert!(!glob_matches("public:*", "private:room"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches("room:1", "room:1"));
        assert!(!glob_matches("room:1", "room:10"));
        assert!(glob_matches("*:1", "room:1"));
    }
}
