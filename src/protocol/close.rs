//! Close codes: the one table of why the server closes a socket. Each code's `name` is also the
//! `reason` label of the `switchboard_closes_total` metric, so dashboards and clients speak of the
//! same thing.

use std::fmt;

/// Why the server closed (or a client closed) a WebSocket. PROTOCOL.md §4, plus the standard
/// codes the protocol leaves implicit (1001, 1002), documented in `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: a normal close.
    Normal,
    /// 1001: the peer went silent past the idle timeout (no frame, not even a pong).
    GoingAway,
    /// 1002: the peer broke the WebSocket framing rules.
    ProtocolError,
    /// 1006: the connection ended without a close frame (a client's network dropped, a tab was
    /// killed). Never sent in a close frame (RFC 6455 reserves it); counted and reported to the
    /// `disconnect` hook.
    Abnormal,
    /// 1008: generic policy violation (e.g. repeated malformed frames).
    Policy,
    /// 1009: a frame over `server.max_frame_bytes`.
    TooBig,
    /// 1012: the server is draining for a restart; reconnect (to another node).
    Restart,
    /// 4001: the credential expired or re-validation failed.
    SessionExpired,
    /// 4002: the session was revoked (logout); do not reconnect automatically.
    LoggedOut,
    /// 4003: forbidden.
    Forbidden,
    /// 4008: sustained inbound rate-limit abuse.
    RateLimited,
    /// 4010: the client could not keep up and its outbound queue overflowed.
    SlowConsumer,
    /// Any other code, as received from a client or given in a control op.
    Other(u16),
}

impl CloseCode {
    /// Every named code, for documentation tests and metric pre-registration.
    pub const NAMED: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::Abnormal,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Restart,
        CloseCode::SessionExpired,
        CloseCode::LoggedOut,
        CloseCode::Forbidden,
        CloseCode::RateLimited,
        CloseCode::SlowConsumer,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::Abnormal => 1006,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Restart => 1012,
            CloseCode::SessionExpired => 4001,
            CloseCode::LoggedOut => 4002,
            CloseCode::Forbidden => 4003,
            CloseCode::RateLimited => 4008,
            CloseCode::SlowConsumer => 4010,
            CloseCode::Other(code) => code,
        }
    }

    /// The short name: the protocol's word for the code and the metric label.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::Abnormal => "abnormal_closure",
            CloseCode::Policy => "policy",
            CloseCode::TooBig => "too_big",
            CloseCode::Restart => "restart",
            CloseCode::SessionExpired => "session_expired",
            CloseCode::LoggedOut => "logged_out",
            CloseCode::Forbidden => "forbidden",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::Other(_) => "other",
        }
    }

    /// The `code` label of the closes metric: the number for named codes, `other` for the rest,
    /// so clients cannot create unbounded series by sending arbitrary codes.
    pub fn metric_label(self) -> String {
        match self {
            CloseCode::Other(_) => "other".to_owned(),
            named => named.code().to_string(),
        }
    }

    /// Whether the code may be sent in a close frame (RFC 6455 §7.4: 1005, 1006 and 1015 are
    /// for reporting only, and 1004 and 1016–2999 are reserved or unassigned).
    pub fn is_sendable(self) -> bool {
        matches!(self.code(), 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    pub fn from_code(code: u16) -> Self {
        CloseCode::NAMED
            .into_iter()
            .find(|named| named.code() == code)
            .unwrap_or(CloseCode::Other(code))
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.code(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_numbers() {
        for named in CloseCode::NAMED {
            assert_eq!(CloseCode::from_code(named.code()), named);
        }
        assert_eq!(CloseCode::from_code(4999), CloseCode::Other(4999));
        assert_eq!(CloseCode::SlowConsumer.code(), 4010);
        assert_eq!(CloseCode::Restart.name(), "restart");
        assert_eq!(CloseCode::SlowConsumer.metric_label(), "4010");
        assert_eq!(CloseCode::Other(4321).metric_label(), "other");
        assert!(CloseCode::SlowConsumer.is_sendable() && CloseCode::Normal.is_sendable());
        assert!(!CloseCode::Abnormal.is_sendable());
        assert!(!CloseCode::Other(1005).is_sendable() && !CloseCode::Other(2000).is_sendable());
    }
}
