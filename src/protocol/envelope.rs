//! The broker envelope (docs/protocol.md §6): what travels on `PREFIX:ch:CHANNEL` and
//! `PREFIX:user:USER`, as JSON or MessagePack: `{"data": <any>, "from": "<user id>"?}`, plus
//! `"kind": "presence"` on the presence events nodes publish (absent: a message), and
//! `"offset"` and `"epoch"` on publications recorded in a channel's history (docs/protocol.md
//! §7; the Redis function adds them, a publisher does not).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codec::DecodeError;
use super::control::starts_like_json_object;
use super::position::{MAX_EPOCH_BYTES, Position};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "PublicationKind::is_message")]
    pub kind: PublicationKind,
    /// Where the publication stands in its channel's history (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// What a publication is: a message (the default), or a presence event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublicationKind {
    #[default]
    Message,
    /// `data` is `{"joined": {...}}` or `{"left": {...}}`; sent as a `presence` frame.
    Presence,
}

impl PublicationKind {
    pub fn is_message(&self) -> bool {
        *self == PublicationKind::Message
    }
}

impl Envelope {
    /// Decodes a payload that is either a JSON envelope or a MessagePack envelope. JSON is tried
    /// first when the payload starts like a JSON object (`{` after optional whitespace).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let envelope: Self = if starts_like_json_object(payload) {
            serde_json::from_slice(payload).map_err(|err| DecodeError::Json(err.to_string()))?
        } else {
            super::depth::from_msgpack(payload).map_err(DecodeError::MessagePack)?
        };
        // The envelope object is level 1, as a client frame is.
        super::depth::check_field(&envelope.data, 2)
            .map_err(|too_deep| DecodeError::Invalid(format!("data: {too_deep}")))?;
        envelope.position()?;
        Ok(envelope)
    }

    /// A plain envelope (no history position).
    pub fn new(data: Value, from: Option<String>, kind: PublicationKind) -> Self {
        Self {
            data,
            from,
            kind,
            offset: None,
            epoch: None,
        }
    }

    /// The history position it carries: both fields or neither, and an epoch of at most
    /// [`MAX_EPOCH_BYTES`] bytes.
    pub fn position(&self) -> Result<Option<Position>, DecodeError> {
        match (self.offset, &self.epoch) {
            (None, None) => Ok(None),
            (Some(offset), Some(epoch)) if epoch.len() <= MAX_EPOCH_BYTES => {
                Ok(Some(Position::new(offset, epoch.as_str())))
            }
            (Some(_), Some(_)) => Err(DecodeError::Invalid("epoch: too long".into())),
            _ => Err(DecodeError::Invalid(
                "offset and epoch come together or not at all".into(),
            )),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a Value-bearing struct to JSON cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_msgpack_envelopes_decode_to_the_same_value() {
        let envelope = Envelope::new(
            json!({"text": "hi", "n": 3}),
            Some("42".into()),
            PublicationKind::Message,
        );
        let from_json = Envelope::decode(&envelope.to_json()).expect("json");
        let packed = rmp_serde::to_vec_named(&envelope).expect("pack");
        let from_msgpack = Envelope::decode(&packed).expect("msgpack");
        assert_eq!(from_json, envelope);
        assert_eq!(from_msgpack, envelope);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Envelope::decode(b"not json").is_err());
        assert!(Envelope::decode(b"{\"data\": 1, \"extra\": 2}").is_err());
        assert!(Envelope::decode(b"{\"from\": \"x\"}").is_err());
        assert!(Envelope::decode(b"").is_err());
        assert!(Envelope::decode(b"{\"data\": 1, \"kind\": \"other\"}").is_err());
        let deep = (1..70).fold(json!(1), |inner, _| json!([inner]));
        let packed = rmp_serde::to_vec_named(&json!({"data": deep})).expect("pack");
        assert!(
            Envelope::decode(&packed).is_err(),
            "too deep in MessagePack too"
        );
    }

    /// Found by the `broker_envelope` fuzzer: serde_json's default float parser is off by one
    /// ulp for some values, so a float changed on its way from a publisher to members.
    #[test]
    fn floats_survive_every_encoding_exactly() {
        let float = -3.7783173142277203e-132_f64;
        let packed =
            rmp_serde::to_vec_named(&Envelope::new(json!(float), None, PublicationKind::Message))
                .expect("pack");
        let from_msgpack = Envelope::decode(&packed).expect("msgpack");
        let through_json = Envelope::decode(&from_msgpack.to_json()).expect("json");
        assert_eq!(through_json.data.as_f64(), Some(float));
        let frame = format!(r#"{{"action":"publish","channel":"c","data":{float:e}}}"#);
        let decoded = crate::protocol::codec::decode_text(&frame).expect("frame");
        let crate::protocol::ClientRequest::Publish { data, .. } = decoded.request else {
            panic!("a publish");
        };
        assert_eq!(data.as_f64(), Some(float), "a client's float, exactly");
    }

    #[test]
    fn presence_envelopes_say_so_and_messages_do_not() {
        let presence = Envelope::decode(b"{\"data\": {\"left\": {}}, \"kind\": \"presence\"}")
            .expect("presence");
        assert_eq!(presence.kind, PublicationKind::Presence);
        let message = Envelope::new(json!(1), None, PublicationKind::Message);
        assert_eq!(message.to_json(), b"{\"data\":1}");
    }

    #[test]
    fn a_recorded_publication_carries_its_position_whole() {
        let recorded =
            Envelope::decode(br#"{"offset":18,"epoch":"kXpQ","data":{"t":1}}"#).expect("recorded");
        assert_eq!(recorded.position(), Ok(Some(Position::new(18, "kXpQ"))));
        let mut packed = Envelope::new(json!(1), None, PublicationKind::Message);
        packed.offset = Some(3);
        packed.epoch = Some("e".into());
        let packed = rmp_serde::to_vec_named(&packed).expect("pack");
        assert_eq!(
            Envelope::decode(&packed).expect("msgpack").position(),
            Ok(Some(Position::new(3, "e")))
        );
        for half in [
            r#"{"offset":18,"data":1}"#,
            r#"{"epoch":"e","data":1}"#,
            r#"{"offset":-1,"epoch":"e","data":1}"#,
        ] {
            assert!(Envelope::decode(half.as_bytes()).is_err(), "{half}");
        }
        let long = format!(r#"{{"offset":1,"epoch":"{}","data":1}}"#, "e".repeat(65));
        assert!(Envelope::decode(long.as_bytes()).is_err());
    }
}
