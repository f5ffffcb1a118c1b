//! Close codes and reasons: the one table of why a socket closes. Each code's `name` is also the
//! `reason` label of the `switchboard_closes_total` metric, so dashboards and clients speak of the
//! same thing, and every close the server decides on by itself is a [`CloseReason`] constant
//! (its code and the text its close frame carries); `docs/protocol.md` §4 is the prose table.

use std::fmt;

/// The longest reason a close frame carries: its payload is at most 125 bytes, two of them the
/// code.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// A close the server decides on by itself: the code, and the reason its close frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: CloseCode,
    pub text: &'static str,
}

impl CloseReason {
    /// No frame and no pong for `server.idle_timeout`.
    pub const IDLE: Self = Self::new(CloseCode::GoingAway, "idle timeout");
    /// The client broke the WebSocket framing rules.
    pub const PROTOCOL_ERROR: Self =
        Self::new(CloseCode::ProtocolError, "websocket protocol error");
    /// The TCP connection ended without a close frame (never sent; for the disconnect hook).
    pub const CONNECTION_LOST: Self = Self::new(CloseCode::Abnormal, "connection lost");
    /// Repeated malformed frames.
    pub const MALFORMED: Self = Self::new(CloseCode::Policy, "too many malformed frames");
    /// A frame or message over `server.max_frame_bytes`.
    pub const TOO_BIG: Self = Self::new(CloseCode::TooBig, "message exceeds max_frame_bytes");
    /// The node is draining for a restart.
    pub const RESTART: Self = Self::new(CloseCode::Restart, "server restarting");
    /// The credential's expiry passed.
    pub const EXPIRED: Self = Self::new(CloseCode::SessionExpired, "the credential has expired");
    /// Re-validation found the session dead.
    pub const SESSION_ENDED: Self = Self::new(CloseCode::SessionExpired, "the session has ended");
    /// Re-validation kept failing past `auth.revalidate_grace`.
    pub const UNVERIFIABLE: Self = Self::new(
        CloseCode::SessionExpired,
        "the session could not be re-validated",
    );
    /// A control op's disconnect that gives no code or reason.
    pub const LOGGED_OUT: Self = Self::new(CloseCode::LoggedOut, "logged out");
    /// Sustained inbound rate-limit abuse.
    pub const RATE_LIMITED: Self = Self::new(
        CloseCode::RateLimited,
        "sustained inbound rate above the limit",
    );
    /// The outbound queue overflowed.
    pub const SLOW_CONSUMER: Self = Self::new(CloseCode::SlowConsumer, "outbound queue overflowed");

    const fn new(code: CloseCode, text: &'static str) -> Self {
        Self { code, text }
    }
}

/// Why the server closed (or a client closed) a WebSocket. docs/protocol.md §4, plus the standard
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
        for reason in [CloseReason::RATE_LIMITED, CloseReason::UNVERIFIABLE] {
            assert!(reason.text.len() <= MAX_CLOSE_REASON_BYTES);
        }
    }
}
