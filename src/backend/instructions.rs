//! What a back end's answer to a route call means: the reply for the client, and optional
//! instructions (join, leave, publish) the connection carries out.
//!
//! An answer that is a JSON object whose every key is one of `reply`, `join`, `leave`, `publish`
//! is read as instructions; any other JSON value (an object with other keys, an array, a string,
//! `null`) is the reply itself; an empty body is a `null` reply. Instructions are checked whole
//! before anything is done, and a bad one is an error naming the field.

use serde_json::{Map, Value};

/// The keys an instructions object may have.
pub const INSTRUCTION_KEYS: [&str; 4] = ["reply", "join", "leave", "publish"];

/// What the back end asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instructions {
    /// The `data` of the `reply` frame (for a frame with an `id`).
    pub reply: Value,
    /// Channels the connection joins (the back end decides: channel rules are not consulted;
    /// the connection's channel limit still applies).
    pub join: Vec<String>,
    pub leave: Vec<String>,
    /// Publications to make, as the server (no `from`).
    pub publish: Vec<(String, Value)>,
}

impl Instructions {
    /// Reads a 2xx answer's body.
    pub fn from_body(body: &[u8]) -> Result<Self, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
        match value {
            Value::Object(object) if is_instructions(&object) => Self::from_object(object),
            reply => Ok(Self {
                reply,
                ..Self::default()
            }),
        }
    }

    fn from_object(mut object: Map<String, Value>) -> Result<Self, String> {
        let reply = object.remove("reply").unwrap_or(Value::Null);
        let join = channel_list(object.remove("join"), "join")?;
        let leave = channel_list(object.remove("leave"), "leave")?;
        let publish = match object.remove("publish") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| publication(item, index))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("publish: must be a list of {channel, data}".to_owned()),
        };
        Ok(Self {
            reply,
            join,
            leave,
            publish,
        })
    }
}

fn is_instructions(object: &Map<String, Value>) -> bool {
    !object.is_empty()
        && object
            .keys()
            .all(|key| INSTRUCTION_KEYS.contains(&key.as_str()))
}

fn channel_list(value: Option<Value>, field: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(channel) => Ok(channel),
                _ => Err(format!("{field}[{index}]: must be a channel name")),
            })
            .collect(),
        Some(_) => Err(format!("{field}: must be a list of channel names")),
    }
}

fn publication(item: Value, index: usize) -> Result<(String, Value), String> {
    let Value::Object(mut object) = item else {
        return Err(format!("publish[{index}]: must be {{channel, data}}"));
    };
    let channel = match object.remove("channel") {
        Some(Value::String(channel)) => channel,
        _ => return Err(format!("publish[{index}].channel: must be a channel name")),
    };
    let data = object
        .remove("data")
        .ok_or_else(|| format!("publish[{index}].data: missing"))?;
    crate::protocol::depth::check_field(&data, 2)
        .map_err(|err| format!("publish[{index}].data: {err}"))?;
    Ok((channel, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: Value) -> Result<Instructions, String> {
        Instructions::from_body(value.to_string().as_bytes())
    }

    #[test]
    fn plain_answers_are_the_reply() {
        assert_eq!(
            read(json!({"ok": true})).expect("reply").reply,
            json!({"ok": true})
        );
        assert_eq!(read(json!([1, 2])).expect("reply").reply, json!([1, 2]));
        assert_eq!(
            Instructions::from_body(b"").expect("empty"),
            Instructions::default()
        );
        assert_eq!(
            read(json!({"reply": 1, "other": 2})).expect("reply").reply,
            json!({"reply": 1, "other": 2}),
            "another key makes it data"
        );
    }

    #[test]
    fn instruction_objects_are_read_whole() {
        let read = read(json!({
            "reply": {"n": 1},
            "join": ["room:1"],
            "leave": ["room:0"],
            "publish": [{"channel": "room:1", "data": "hi"}]
        }))
        .expect("instructions");
        assert_eq!(read.reply, json!({"n": 1}));
        assert_eq!(read.join, vec!["room:1".to_owned()]);
        assert_eq!(read.leave, vec!["room:0".to_owned()]);
        assert_eq!(read.publish, vec![("room:1".to_owned(), json!("hi"))]);
    }

    #[test]
    fn bad_instructions_name_the_field() {
        let cases = [
            (json!({"join": "room:1"}), "join:"),
            (json!({"leave": [1]}), "leave[0]"),
            (json!({"publish": [{"data": 1}]}), "publish[0].channel"),
            (json!({"publish": [{"channel": "a"}]}), "publish[0].data"),
        ];
        for (body, field) in cases {
            let err = read(body.clone()).expect_err("invalid");
            assert!(err.starts_with(field), "{body}: {err}");
        }
        assert!(Instructions::from_body(b"<html>").is_err());
    }
}
