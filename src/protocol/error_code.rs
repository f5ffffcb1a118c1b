//! The `code` of an `error` frame: short snake_case words from docs/protocol.md §3.

use serde::{Serialize, Serializer};

/// What an `error` frame's `code` says; [`ErrorCode::as_str`] is its word on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame could not be decoded, or a field is missing or of the wrong type.
    BadRequest,
    /// No built-in action and no route matches the frame's `action`.
    UnknownAction,
    /// Channel policy refuses this join or publish.
    Forbidden,
    /// `leave` of a channel the connection has not joined.
    NotJoined,
    /// `server.max_channels_per_connection` reached.
    ChannelLimit,
    /// The inbound rate limit dropped this frame.
    RateLimited,
    /// The channel name is not valid.
    InvalidChannel,
    /// A back-end route failed.
    BackendError,
    /// The broker cannot publish or subscribe right now. On the wire `backend_unavailable` (a
    /// word of the protocol), not to be confused with the application's back end (`backend`).
    BrokerUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::ChannelLimit => "channel_limit",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::BackendError => "backend_error",
            ErrorCode::BrokerUnavailable => "backend_unavailable",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The reason a client hears when the broker cannot publish or subscribe right now. Neutral on
/// purpose: what went wrong (a Redis error, an address) is the operator's, and goes to the log.
pub const BROKER_UNAVAILABLE_REASON: &str = "the message broker is unavailable; retry shortly";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_travel_as_their_protocol_words() {
        assert_eq!(
            serde_json::to_value(ErrorCode::BrokerUnavailable).expect("json"),
            "backend_unavailable"
        );
        assert_eq!(
            serde_json::to_value(ErrorCode::ChannelLimit).expect("json"),
            "channel_limit"
        );
    }
}
