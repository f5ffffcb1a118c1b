//! Client → server frames (docs/protocol.md §2) and server → client frames (§3).
//!
//! Client frames are decoded in two steps: the bytes become a generic value (JSON or
//! MessagePack, see `codec`), then [`ClientFrame::from_value`] reads the `action`, the optional
//! `id` and the action's fields, producing an error that names the offending field. The `id` is
//! recovered even from an otherwise malformed frame, so the `error` reply can carry it.

use serde::Serialize;
use serde_json::{Map, Value};

use super::error_code::ErrorCode;
use super::position::Position;

/// A decoded client frame: the optional correlation `id` and what the client asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    pub id: Option<u64>,
    pub request: ClientRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    Join {
        channel: String,
        /// The client's last position in the channel's history: replay what came after it.
        since: Option<Position>,
    },
    Leave {
        channel: String,
    },
    Publish {
        channel: String,
        data: Value,
    },
    Ping,
    Refresh {
        token: String,
    },
    /// Any other action: a custom route, answered by the back end or with `unknown_action`.
    Custom {
        action: String,
        body: Value,
    },
}

impl ClientRequest {
    /// Every [`metric_label`](Self::metric_label).
    pub const METRIC_LABELS: [&'static str; 6] =
        ["join", "leave", "publish", "ping", "refresh", "custom"];

    /// The metric label for this action. Custom actions share one label so a client cannot
    /// create unbounded metric series.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ClientRequest::Join { .. } => "join",
            ClientRequest::Leave { .. } => "leave",
            ClientRequest::Publish { .. } => "publish",
            ClientRequest::Ping => "ping",
            ClientRequest::Refresh { .. } => "refresh",
            ClientRequest::Custom { .. } => "custom",
        }
    }
}

/// A frame the server could not accept; answered with an `error` frame of code `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct FrameError {
    pub id: Option<u64>,
    pub reason: String,
}

impl FrameError {
    fn new(id: Option<u64>, reason: impl Into<String>) -> Self {
        Self {
            id,
            reason: reason.into(),
        }
    }
}

impl ClientFrame {
    /// Interprets a decoded value as a client frame.
    pub fn from_value(value: Value) -> Result<Self, FrameError> {
        let Value::Object(mut object) = value else {
            return Err(FrameError::new(
                None,
                "a frame must be an object with an `action`",
            ));
        };
        let id = match object.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) => match number.as_u64() {
                Some(id) => Some(id),
                None => {
                    return Err(FrameError::new(None, "`id` must be a non-negative integer"));
                }
            },
            Some(_) => return Err(FrameError::new(None, "`id` must be a non-negative integer")),
        };
        let action = match object.remove("action") {
            Some(Value::String(action)) => action,
            Some(_) => return Err(FrameError::new(id, "`action` must be a string")),
            None => return Err(FrameError::new(id, "missing field `action`")),
        };
        let request = match action.as_str() {
            "join" => ClientRequest::Join {
                channel: take_string(&mut object, "channel", id)?,
                since: match object.remove("since") {
                    None | Some(Value::Null) => None,
                    Some(since) => Some(
                        Position::from_value(&since)
                            .map_err(|reason| FrameError::new(id, reason))?,
                    ),
                },
            },
            "leave" => ClientRequest::Leave {
                channel: take_string(&mut object, "channel", id)?,
            },
            "publish" => {
                let channel = take_string(&mut object, "channel", id)?;
                let data = object
                    .remove("data")
                    .ok_or_else(|| FrameError::new(id, "missing field `data`"))?;
                ClientRequest::Publish { channel, data }
            }
            "ping" => ClientRequest::Ping,
            "refresh" => ClientRequest::Refresh {
                token: take_string(&mut object, "token", id)?,
            },
            _ => {
                object.insert("action".to_owned(), Value::String(action.clone()));
                ClientRequest::Custom {
                    action,
                    body: Value::Object(object),
                }
            }
        };
        Ok(ClientFrame { id, request })
    }
}

fn take_string(
    object: &mut Map<String, Value>,
    field: &'static str,
    id: Option<u64>,
) -> Result<String, FrameError> {
    match object.remove(field) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(FrameError::new(id, format!("`{field}` must be a string"))),
        None => Err(FrameError::new(id, format!("missing field `{field}`"))),
    }
}

/// A frame the server sends. Borrowed fields: building one allocates nothing; encoding it does,
/// once per encoding.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        connection_id: &'a str,
        user: Option<&'a str>,
        channels: &'a [&'a str],
        expires_at: Option<u64>,
    },
    /// A publication. `channel` is absent for a direct message (sent to the user or to this
    /// connection rather than to a channel).
    Message {
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        data: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a str>,
        /// The publication's place in a history channel (docs/protocol.md §7).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// The member missed publications that cannot be delivered (they are no longer in
    /// history): it should reload the channel's state; `offset` and `epoch` are where it stands.
    Gap {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
    },
    /// A member joined or left a channel whose rule has `presence = true`; `event` is
    /// `{"joined": {...}}` or `{"left": {...}}`, flattened into the frame.
    Presence {
        channel: &'a str,
        #[serde(flatten)]
        event: &'a Value,
    },
    Reply {
        id: u64,
        data: &'a Value,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        reason: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<ClientFrame, FrameError> {
        ClientFrame::from_value(value)
    }

    #[test]
    fn every_builtin_action_is_decoded() {
        assert_eq!(
            parse(json!({"action": "join", "channel": "a", "id": 1})),
            Ok(ClientFrame {
                id: Some(1),
                request: ClientRequest::Join {
                    channel: "a".into(),
                    since: None,
                }
            })
        );
        assert_eq!(
            parse(json!({"action": "publish", "channel": "a", "data": [1]}))
                .map(|frame| frame.request),
            Ok(ClientRequest::Publish {
                channel: "a".into(),
                data: json!([1])
            })
        );
        assert_eq!(
            parse(json!({"action": "ping"})).map(|frame| frame.request),
            Ok(ClientRequest::Ping)
        );
    }

    #[test]
    fn the_id_survives_a_malformed_frame() {
        let err = parse(json!({"action": "join", "id": 9})).expect_err("missing channel");
        assert_eq!(err.id, Some(9));
        assert_eq!(err.reason, "missing field `channel`");
        let err = parse(json!({"action": "publish", "channel": "a", "id": 3})).expect_err("data");
        assert_eq!(err.reason, "missing field `data`");
    }

    #[test]
    fn bad_shapes_are_named() {
        assert!(parse(json!([1, 2])).is_err());
        assert_eq!(
            parse(json!({"action": 5})).expect_err("action").reason,
            "`action` must be a string"
        );
        assert_eq!(
            parse(json!({"action": "ping", "id": -1}))
                .expect_err("id")
                .reason,
            "`id` must be a non-negative integer"
        );
        assert_eq!(
            parse(json!({"action": "join", "channel": 7}))
                .expect_err("channel")
                .reason,
            "`channel` must be a string"
        );
    }

    #[test]
    fn unknown_actions_become_custom_requests_with_the_whole_body() {
        let frame = parse(json!({"action": "sendMessage", "text": "hi", "id": 2})).expect("ok");
        assert_eq!(
            frame.request,
            ClientRequest::Custom {
                action: "sendMessage".into(),
                body: json!({"action": "sendMessage", "text": "hi", "id": 2})
            }
        );
    }
}
