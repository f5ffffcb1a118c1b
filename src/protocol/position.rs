//! Where a channel's history stands (docs/protocol.md §7): the offset of a publication (per
//! channel, increasing by exactly 1) and the channel's epoch (a short string that changes
//! whenever its history was lost). Message frames of history channels carry both; a `join` may
//! carry a client's last position as `since`.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// The longest epoch accepted from a client (ours are much shorter).
pub const MAX_EPOCH_BYTES: usize = 64;

/// A position in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl Position {
    pub fn new(offset: u64, epoch: impl Into<Arc<str>>) -> Self {
        Self {
            offset,
            epoch: epoch.into(),
        }
    }

    /// Reads `{"offset": N, "epoch": "…"}` (a join's `since`); the error names what is wrong.
    pub fn from_value(value: &Value) -> Result<Self, &'static str> {
        let offset = value
            .get("offset")
            .and_then(Value::as_u64)
            .ok_or("`since.offset` must be a non-negative integer")?;
        let epoch = value
            .get("epoch")
            .and_then(Value::as_str)
            .ok_or("`since.epoch` must be a string")?;
        if epoch.len() > MAX_EPOCH_BYTES {
            return Err("`since.epoch` is too long");
        }
        Ok(Self::new(offset, epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn since_is_read_whole_or_refused_by_field() {
        assert_eq!(
            Position::from_value(&json!({"offset": 17, "epoch": "kXpQ"})),
            Ok(Position::new(17, "kXpQ"))
        );
        assert!(Position::from_value(&json!({"offset": -1, "epoch": "e"})).is_err());
        assert!(Position::from_value(&json!({"offset": 1})).is_err());
        assert!(Position::from_value(&json!({"offset": 1, "epoch": "x".repeat(65)})).is_err());
        assert!(Position::from_value(&json!(5)).is_err());
    }
}
