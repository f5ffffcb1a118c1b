//! The two encodings, negotiated by `Sec-WebSocket-Protocol`: `switchboard.v1.json` (text
//! frames, the default) and `switchboard.v1.msgpack` (binary frames). The same logical frames
//! travel in both; MessagePack frames are maps (`to_vec_named`), never positional arrays.

use bytes::Bytes;
use serde_json::Value;

use super::depth;
use super::frame::{ClientFrame, FrameError, ServerFrame};
use super::websocket::{self, Opcode};

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    MessagePack,
}

impl Encoding {
    pub const JSON_PROTOCOL: &'static str = "switchboard.v1.json";
    pub const MESSAGEPACK_PROTOCOL: &'static str = "switchboard.v1.msgpack";
    /// The subprotocols the server offers, in order of preference.
    pub const PROTOCOLS: [&'static str; 2] = [Self::JSON_PROTOCOL, Self::MESSAGEPACK_PROTOCOL];

    pub fn from_protocol(protocol: &str) -> Option<Self> {
        match protocol {
            Self::JSON_PROTOCOL => Some(Encoding::Json),
            Self::MESSAGEPACK_PROTOCOL => Some(Encoding::MessagePack),
            _ => None,
        }
    }

    /// The subprotocol's name (`Sec-WebSocket-Protocol`).
    pub fn protocol(self) -> &'static str {
        match self {
            Encoding::Json => Self::JSON_PROTOCOL,
            Encoding::MessagePack => Self::MESSAGEPACK_PROTOCOL,
        }
    }

    /// Encodes a server frame as a complete WebSocket frame (text for JSON, binary for
    /// MessagePack). Called once per frame per encoding; the result is shared by reference among
    /// every member that receives it.
    pub fn encode(self, frame: &ServerFrame<'_>) -> Result<OutboundFrame, EncodeError> {
        let mut buffer = websocket::buffer_with_header_room(128);
        let opcode = match self {
            Encoding::Json => {
                serde_json::to_writer(&mut buffer, frame).map_err(EncodeError::Json)?;
                Opcode::Text
            }
            Encoding::MessagePack => {
                rmp_serde::encode::write_named(&mut buffer, frame)
                    .map_err(EncodeError::MessagePack)?;
                Opcode::Binary
            }
        };
        Ok(OutboundFrame(websocket::finish(buffer, opcode)))
    }
}

/// An encoded frame ready for the socket: the whole WebSocket frame, header included, so the
/// socket side only copies bytes. Cloning it is a reference-count increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundFrame(Bytes);

impl OutboundFrame {
    /// The frame as it goes on the wire.
    pub fn wire(&self) -> &Bytes {
        &self.0
    }

    pub fn into_wire(self) -> Bytes {
        self.0
    }

    /// Wraps bytes that are already a whole WebSocket frame (for tests of the queue).
    #[cfg(test)]
    pub(crate) fn from_wire(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The payload: the JSON text or the MessagePack bytes.
    pub fn payload(&self) -> &[u8] {
        &self.0[websocket::header_length(&self.0)..]
    }

    pub fn is_text(&self) -> bool {
        self.0.first() == Some(&(0x80 | Opcode::Text as u8))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode frame as JSON: {0}")]
    Json(serde_json::Error),
    #[error("cannot encode frame as MessagePack: {0}")]
    MessagePack(rmp_serde::encode::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid MessagePack: {0}")]
    MessagePack(String),
    /// Well-formed, but not a valid value of the expected shape.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Decodes a text frame (JSON) into a client frame.
pub fn decode_text(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|err| {
        let reason = if depth::is_json_recursion_limit(&err) {
            DecodeError::Invalid(depth::TooDeep.to_string())
        } else {
            DecodeError::Json(err.to_string())
        };
        FrameError {
            id: None,
            reason: reason.to_string(),
        }
    })?;
    checked_frame(value)
}

/// Decodes a binary frame (MessagePack) into a client frame.
pub fn decode_binary(bytes: &[u8]) -> Result<ClientFrame, FrameError> {
    let value: Value = depth::from_msgpack(bytes).map_err(|err| FrameError {
        // Well-formed MessagePack that is no JSON value (a `bin` payload, a map with integer
        // keys) still names its `id`, so the client's request is answered, not left to time out.
        id: depth::from_msgpack::<IdOnly>(bytes)
            .ok()
            .and_then(|frame| frame.id),
        reason: DecodeError::MessagePack(err).to_string(),
    })?;
    checked_frame(value)
}

/// What is left of a MessagePack frame that is not a valid value: its `id`, if it has one.
#[derive(serde::Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

/// The nesting limit (the same for both encodings), then the frame's shape.
fn checked_frame(value: Value) -> Result<ClientFrame, FrameError> {
    depth::check(&value).map_err(|too_deep| FrameError {
        // Decoded, only too deep: its `id` is still there for the error.
        id: value.get("id").and_then(Value::as_u64),
        reason: DecodeError::Invalid(too_deep.to_string()).to_string(),
    })?;
    ClientFrame::from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientRequest, ErrorCode};
    use serde_json::json;

    #[test]
    fn json_frames_match_the_contract() {
        let data = json!({"text": "hi"});
        let frame = ServerFrame::Message {
            channel: Some("room:1"),
            data: &data,
            from: Some("42"),
            offset: None,
            epoch: None,
        };
        let encoded = Encoding::Json.encode(&frame).expect("encode");
        assert!(encoded.is_text(), "json must be a text frame");
        let decoded: Value = serde_json::from_slice(encoded.payload()).expect("json");
        assert_eq!(
            decoded,
            json!({"type": "message", "channel": "room:1", "data": {"text": "hi"}, "from": "42"})
        );
        let error = ServerFrame::Error {
            id: None,
            code: ErrorCode::NotJoined,
            reason: "x",
        };
        let encoded = Encoding::Json.encode(&error).expect("encode");
        assert_eq!(
            encoded.payload(),
            br#"{"type":"error","code":"not_joined","reason":"x"}"#
        );
        assert_eq!(encoded.wire()[..2], [0x81, encoded.payload().len() as u8]);
    }

    #[test]
    fn history_frames_match_the_contract() {
        let data = json!(1);
        let message = ServerFrame::Message {
            channel: Some("room:1"),
            data: &data,
            from: None,
            offset: Some(18),
            epoch: Some("kXpQ"),
        };
        let encoded = Encoding::Json.encode(&message).expect("encode");
        assert_eq!(
            serde_json::from_slice::<Value>(encoded.payload()).expect("json"),
            json!({"type": "message", "channel": "room:1", "data": 1, "offset": 18, "epoch": "kXpQ"})
        );
        let gap = ServerFrame::Gap {
            channel: "room:1",
            offset: 40,
            epoch: "kXpQ",
        };
        let encoded = Encoding::Json.encode(&gap).expect("encode");
        assert_eq!(
            serde_json::from_slice::<Value>(encoded.payload()).expect("json"),
            json!({"type": "gap", "channel": "room:1", "offset": 40, "epoch": "kXpQ"})
        );
        let join =
            r#"{"action":"join","channel":"room:1","id":3,"since":{"offset":17,"epoch":"kXpQ"}}"#;
        assert_eq!(
            decode_text(join).expect("join").request,
            ClientRequest::Join {
                channel: "room:1".into(),
                since: Some(crate::protocol::Position::new(17, "kXpQ")),
            }
        );
        let bad = r#"{"action":"join","channel":"room:1","id":3,"since":{"offset":"17"}}"#;
        let refused = decode_text(bad).expect_err("bad since");
        assert_eq!(refused.id, Some(3), "the error answers the join");
    }

    #[test]
    fn msgpack_frames_are_maps_with_the_same_content() {
        let frame = ServerFrame::Pong { id: Some(8) };
        let encoded = Encoding::MessagePack.encode(&frame).expect("encode");
        assert!(!encoded.is_text(), "msgpack must be a binary frame");
        let decoded: Value = rmp_serde::from_slice(encoded.payload()).expect("msgpack");
        assert_eq!(decoded, json!({"type": "pong", "id": 8}));
    }

    #[test]
    fn both_encodings_decode_client_frames() {
        let value = json!({"action": "leave", "channel": "c", "id": 4});
        let packed = rmp_serde::to_vec_named(&value).expect("pack");
        let from_binary = decode_binary(&packed).expect("binary");
        let from_text = decode_text(&value.to_string()).expect("text");
        assert_eq!(from_binary, from_text);
        assert_eq!(
            from_text.request,
            ClientRequest::Leave {
                channel: "c".into()
            }
        );
    }

    #[test]
    fn one_depth_limit_refuses_deep_frames_in_both_encodings() {
        // `data` nested 64 levels: the frame is 65 deep.
        let deep = (0..depth::MAX_DEPTH).fold(json!(1), |inner, _| json!([inner]));
        let frame = json!({"action": "publish", "channel": "c", "data": deep});
        let packed = rmp_serde::to_vec_named(&frame).expect("pack");
        for err in [
            decode_text(&frame.to_string()).expect_err("json"),
            decode_binary(&packed).expect_err("msgpack"),
        ] {
            assert!(
                err.reason.contains("nested deeper than 64"),
                "{}",
                err.reason
            );
        }
        let very_deep = "[".repeat(300) + &"]".repeat(300);
        let err = decode_text(&very_deep).expect_err("past serde_json's own limit");
        assert!(
            err.reason.contains("nested deeper than 64"),
            "{}",
            err.reason
        );
        let shallow = json!({"action": "publish", "channel": "c", "data": [[[1]]]});
        assert!(decode_text(&shallow.to_string()).is_ok());
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(decode_text("{nope").is_err());
        assert!(decode_binary(&[0xc1]).is_err());
    }

    #[test]
    fn a_msgpack_frame_that_is_no_json_value_still_names_its_id() {
        // {"action": "publish", "channel": "r", "id": 7, "data": <bin 0 1 2>}, by hand.
        let fixstr = |text: &str| [&[0xa0 | text.len() as u8][..], text.as_bytes()].concat();
        let frame = [
            vec![0x84],
            fixstr("action"),
            fixstr("publish"),
            fixstr("channel"),
            fixstr("r"),
            fixstr("id"),
            vec![0x07],
            fixstr("data"),
            vec![0xc4, 3, 0, 1, 2],
        ]
        .concat();
        let error = decode_binary(&frame).expect_err("bin is no JSON value");
        assert_eq!(error.id, Some(7));
        assert!(
            error.reason.starts_with("invalid MessagePack"),
            "{}",
            error.reason
        );
        // No id, or garbage: no id.
        assert_eq!(decode_binary(&[0xc1]).expect_err("never used").id, None);
    }
}
