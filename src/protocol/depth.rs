//! The one nesting limit for every value that enters from outside (client frames in JSON or
//! MessagePack, broker envelopes and control ops, the server API's bodies, back-end answers).
//!
//! JSON and MessagePack disagree on how deep a value may be (serde_json stops at 128 levels,
//! rmp-serde at 1,024), and a value one of them accepts may be refused by the other later: a
//! MessagePack publication 200 levels deep would be acknowledged, re-encoded to JSON for Redis,
//! and then refused by every node decoding it. So the limit is checked once, at decode time,
//! the same for both, and well inside either decoder's own. MessagePack is parsed with its own
//! limit set just above ours ([`from_msgpack`]), so a payload nested a thousand levels deep is
//! refused while parsing rather than recursed into (and dropped) level by level.

use serde_json::Value;

/// The deepest a decoded value may be nested: a frame or envelope object is level 1, so a
/// frame's `data` may be nested `MAX_DEPTH - 1` levels.
pub const MAX_DEPTH: usize = 64;

/// A value nested deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nested deeper than {MAX_DEPTH} levels")]
pub struct TooDeep;

/// Checks `value` against [`MAX_DEPTH`], without recursion (so a deep value cannot exhaust the
/// stack here either).
pub fn check(value: &Value) -> Result<(), TooDeep> {
    check_field(value, 1)
}

/// Checks a value that sits at `level` inside its frame or envelope (a field of the frame
/// object is at level 2).
pub fn check_field(value: &Value, level: usize) -> Result<(), TooDeep> {
    let mut pending = vec![(value, level)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > MAX_DEPTH {
            return Err(TooDeep);
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// Decodes MessagePack with the parser's nesting limit just above [`MAX_DEPTH`] (so [`check`]
/// still names the limit for values one level too deep); deeper input is refused while parsing,
/// reported as [`TooDeep`].
pub fn from_msgpack<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    // rmp-serde allows one level fewer than its setting.
    deserializer.set_max_depth(MAX_DEPTH + 2);
    T::deserialize(&mut deserializer).map_err(|err| match err {
        rmp_serde::decode::Error::DepthLimitExceeded => TooDeep.to_string(),
        other => other.to_string(),
    })
}

/// Whether a serde_json error is its own recursion limit (deeper than 128 levels), which is the
/// same refusal as [`TooDeep`] to whoever sent it.
pub fn is_json_recursion_limit(err: &serde_json::Error) -> bool {
    err.to_string().starts_with("recursion limit exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> Value {
        (1..depth).fold(json!([]), |inner, _| json!([inner]))
    }

    #[test]
    fn values_up_to_the_limit_pass_and_deeper_ones_do_not() {
        assert_eq!(check(&json!(1)), Ok(()));
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(check(&nested(MAX_DEPTH + 1)), Err(TooDeep));
        assert_eq!(
            check(&json!({"data": {"a": [nested(MAX_DEPTH - 3)]}})),
            Ok(()),
            "exactly the limit"
        );
        assert_eq!(
            check(&json!({"data": {"a": [nested(MAX_DEPTH - 2)]}})),
            Err(TooDeep)
        );
        assert_eq!(check_field(&nested(MAX_DEPTH - 1), 2), Ok(()));
        assert_eq!(check_field(&nested(MAX_DEPTH), 2), Err(TooDeep));
    }

    #[test]
    fn messagepack_is_refused_while_parsing_far_past_the_limit() {
        let just_past = rmp_serde::to_vec(&nested(MAX_DEPTH + 1)).expect("pack");
        let parsed: Value = from_msgpack(&just_past).expect("parsed, for check to refuse");
        assert_eq!(check(&parsed), Err(TooDeep));
        // 10,000 levels (as bytes: 0x91 is a one-element array) never become a value.
        let mut far = vec![0x91u8; 10_000];
        far.push(0x01);
        assert_eq!(from_msgpack::<Value>(&far), Err(TooDeep.to_string()));
    }

    #[test]
    fn serde_jsons_own_limit_is_recognised() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        let err = serde_json::from_str::<Value>(&deep).expect_err("too deep for serde_json");
        assert!(is_json_recursion_limit(&err), "{err}");
    }
}
