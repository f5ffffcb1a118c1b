//! Control operations (docs/protocol.md §6): what back-ends and nodes publish on `PREFIX:control` to
//! act on connections wherever they are.
//!
//! `{"op": "disconnect", "user": "42"}`, or with `"session"` or `"connection"` instead of
//! `"user"`; optional `"code"` (default 4002 `logged_out`) and `"reason"`. Exactly one target is
//! named. And `{"op": "send", "connection": "c_…", "data": <any>}`: a message to one connection,
//! wherever it is (the server API's `POST /api/send` with a `connection`). JSON or MessagePack, like the envelope. Decoding validates everything a node acts on, so
//! a bad op is refused here with a message naming the field and never half-applied.

use serde::{Deserialize, Serialize};

use super::close::{CloseCode, CloseReason, MAX_CLOSE_REASON_BYTES};
use super::codec::DecodeError;

/// Which connections a control op acts on. Its `Debug` and `Display` never show a session id
/// (a bearer credential at many back ends), so a target can be logged.
#[derive(Clone, PartialEq, Eq)]
pub enum ControlTarget {
    /// Every connection of this user id.
    User(String),
    /// Every connection of this session id.
    Session(String),
    /// One connection, by its public id (`c_…`, as in `welcome`).
    Connection(String),
}

impl std::fmt::Display for ControlTarget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlTarget::User(user) => write!(formatter, "user {user:?}"),
            ControlTarget::Session(_) => formatter.write_str("a session"),
            ControlTarget::Connection(id) => write!(formatter, "connection {id}"),
        }
    }
}

impl std::fmt::Debug for ControlTarget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, formatter)
    }
}

/// A decoded, validated control operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// Close the target's sockets with `code` and `reason`.
    Disconnect {
        target: ControlTarget,
        code: CloseCode,
        reason: String,
    },
    /// Deliver `data` to one connection as a `message` frame without a channel.
    Send {
        connection: String,
        data: serde_json::Value,
    },
}

/// The wire shape, before validation.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOp {
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

impl ControlOp {
    /// A disconnect with the default code (4002) and reason.
    pub fn disconnect(target: ControlTarget) -> Self {
        ControlOp::Disconnect {
            target,
            code: CloseCode::LoggedOut,
            reason: CloseReason::LOGGED_OUT.text.to_owned(),
        }
    }

    /// Decodes and validates a JSON or MessagePack control op.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireOp = if starts_like_json_object(payload) {
            serde_json::from_slice(payload).map_err(|err| DecodeError::Json(err.to_string()))?
        } else {
            super::depth::from_msgpack(payload).map_err(DecodeError::MessagePack)?
        };
        Self::from_wire(wire).map_err(DecodeError::Invalid)
    }

    fn from_wire(wire: WireOp) -> Result<Self, String> {
        match wire.op.as_str() {
            "disconnect" => Self::disconnect_from_wire(wire),
            "send" => match (wire.connection, wire.data) {
                (Some(connection), Some(data)) if wire.user.is_none() && wire.session.is_none() => {
                    super::depth::check_field(&data, 2).map_err(|err| format!("data: {err}"))?;
                    Ok(ControlOp::Send { connection, data })
                }
                (None, _) => Err("connection: required for op \"send\"".to_owned()),
                (_, None) => Err("data: required for op \"send\"".to_owned()),
                _ => Err("op \"send\" takes only connection and data".to_owned()),
            },
            other => Err(format!("op: unknown operation {other:?}")),
        }
    }

    fn disconnect_from_wire(wire: WireOp) -> Result<Self, String> {
        if wire.data.is_some() {
            return Err("data: not taken by op \"disconnect\"".to_owned());
        }
        let target = match (wire.user, wire.session, wire.connection) {
            (Some(user), None, None) => ControlTarget::User(user),
            (None, Some(session), None) => ControlTarget::Session(session),
            (None, None, Some(connection)) => ControlTarget::Connection(connection),
            _ => return Err("exactly one of user, session, connection is required".to_owned()),
        };
        let code = match wire.code {
            None => CloseCode::LoggedOut,
            Some(code) if code == 1000 || (3000..=4999).contains(&code) => {
                CloseCode::from_code(code)
            }
            Some(code) => return Err(format!("code: {code} is not 1000 or 3000..=4999")),
        };
        let reason = wire
            .reason
            .unwrap_or_else(|| CloseReason::LOGGED_OUT.text.to_owned());
        if reason.len() > MAX_CLOSE_REASON_BYTES {
            return Err(format!(
                "reason: longer than {MAX_CLOSE_REASON_BYTES} bytes"
            ));
        }
        Ok(ControlOp::Disconnect {
            target,
            code,
            reason,
        })
    }

    /// The JSON form a node publishes.
    pub fn to_json(&self) -> Vec<u8> {
        let (target, code, reason) = match self {
            ControlOp::Disconnect {
                target,
                code,
                reason,
            } => (target, code, reason),
            ControlOp::Send { connection, data } => {
                let wire = WireOp {
                    op: "send".to_owned(),
                    connection: Some(connection.clone()),
                    data: Some(data.clone()),
                    ..WireOp::default()
                };
                return serde_json::to_vec(&wire).unwrap_or_default();
            }
        };
        let mut wire = WireOp {
            op: "disconnect".to_owned(),
            code: Some(code.code()),
            reason: Some(reason.clone()),
            ..WireOp::default()
        };
        match target {
            ControlTarget::User(user) => wire.user = Some(user.clone()),
            ControlTarget::Session(session) => wire.session = Some(session.clone()),
            ControlTarget::Connection(connection) => wire.connection = Some(connection.clone()),
        }
        // Serialising strings and integers to JSON cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// Whether a payload is JSON (an object, after optional whitespace) rather than MessagePack.
pub(crate) fn starts_like_json_object(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|&byte| byte == b'{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(value: serde_json::Value) -> Result<ControlOp, DecodeError> {
        ControlOp::decode(value.to_string().as_bytes())
    }

    #[test]
    fn a_disconnect_names_one_target_and_defaults_to_4002() {
        assert_eq!(
            decode(json!({"op": "disconnect", "user": "42"})).expect("valid"),
            ControlOp::disconnect(ControlTarget::User("42".into()))
        );
        assert_eq!(
            decode(json!({"op": "disconnect", "connection": "c_1", "code": 4003, "reason": "bye"}))
                .expect("valid"),
            ControlOp::Disconnect {
                target: ControlTarget::Connection("c_1".into()),
                code: CloseCode::Forbidden,
                reason: "bye".into()
            }
        );
    }

    #[test]
    fn msgpack_ops_decode_like_json_and_round_trip() {
        let op = ControlOp::Disconnect {
            target: ControlTarget::Session("s".into()),
            code: CloseCode::SessionExpired,
            reason: "expired".into(),
        };
        assert_eq!(ControlOp::decode(&op.to_json()).expect("json"), op);
        let wire: serde_json::Value = serde_json::from_slice(&op.to_json()).expect("json");
        let packed = rmp_serde::to_vec_named(&wire).expect("pack");
        assert_eq!(ControlOp::decode(&packed).expect("msgpack"), op);
    }

    #[test]
    fn invalid_ops_are_refused_with_the_field_named() {
        let cases = [
            (json!({"op": "reboot", "user": "1"}), "op"),
            (json!({"op": "disconnect"}), "exactly one"),
            (
                json!({"op": "disconnect", "user": "1", "session": "s"}),
                "exactly one",
            ),
            (
                json!({"op": "disconnect", "user": "1", "code": 1006}),
                "code",
            ),
            (
                json!({"op": "disconnect", "user": "1", "reason": "x".repeat(200)}),
                "reason",
            ),
        ];
        for (op, field) in cases {
            let err = decode(op.clone()).expect_err("invalid");
            assert!(err.to_string().contains(field), "{op}: {err}");
        }
        assert!(ControlOp::decode(b"{\"op\": \"disconnect\", \"user\": 42}").is_err());
        assert!(decode(json!({"op": "send", "connection": "c_1"})).is_err());
        assert!(decode(json!({"op": "send", "user": "1", "data": 1})).is_err());
        assert!(decode(json!({"op": "disconnect", "user": "1", "data": 1})).is_err());
    }

    #[test]
    fn a_target_never_shows_its_session_id() {
        let target = ControlTarget::Session("s3cr3t-session".into());
        assert!(!format!("{target} {target:?}").contains("s3cr3t"));
        let op = ControlOp::disconnect(target);
        assert!(!format!("{op:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_send_carries_its_data_to_one_connection_and_round_trips() {
        let op = decode(json!({"op": "send", "connection": "c_1", "data": {"n": 1}})).expect("ok");
        assert_eq!(
            op,
            ControlOp::Send {
                connection: "c_1".into(),
                data: json!({"n": 1})
            }
        );
        assert_eq!(ControlOp::decode(&op.to_json()).expect("round trip"), op);
        assert!(ControlOp::decode(b"garbage").is_err());
    }
}
