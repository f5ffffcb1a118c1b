//! Durations as operators write them in the config: `"250ms"`, `"15s"`, `"2m"`, `"1h"`.
//!
//! A tiny parser rather than a dependency, so the error message can say exactly what is accepted.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `Duration` that (de)serialises as a human string such as `"15s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a whole number followed by ms, s, m or h (e.g. \"15s\")")]
pub struct InvalidDuration(pub String);

impl HumanDuration {
    pub const fn from_secs(seconds: u64) -> Self {
        Self(Duration::from_secs(seconds))
    }

    pub const fn from_millis(milliseconds: u64) -> Self {
        Self(Duration::from_millis(milliseconds))
    }

    pub fn parse(text: &str) -> Result<Self, InvalidDuration> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|character: char| !character.is_ascii_digit())
            .ok_or_else(|| InvalidDuration(text.to_owned()))?;
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| InvalidDuration(text.to_owned()))?;
        let duration = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            _ => return Err(InvalidDuration(text.to_owned())),
        };
        Ok(Self(duration))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis % 1000 != 0 {
            write!(formatter, "{millis}ms")
        } else {
            let seconds = millis / 1000;
            if seconds != 0 && seconds % 3600 == 0 {
                write!(formatter, "{}h", seconds / 3600)
            } else if seconds != 0 && seconds % 60 == 0 {
                write!(formatter, "{}m", seconds / 60)
            } else {
                write!(formatter, "{seconds}s")
            }
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_prints_it_back() {
        for (text, duration) in [
            ("250ms", Duration::from_millis(250)),
            ("15s", Duration::from_secs(15)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
        ] {
            let parsed = HumanDuration::parse(text).expect(text);
            assert_eq!(parsed.0, duration);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for text in ["", "15", "s", "1.5s", "10 days", "-1s"] {
            assert!(HumanDuration::parse(text).is_err(), "{text}");
        }
    }
}
