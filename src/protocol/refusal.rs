//! What a refused HTTP request is told (a handshake on `GET /ws`, a server API call): the
//! `error` code of its JSON body `{"error": CODE, "reason": TEXT}`, and the status it comes
//! with. One table for both edges; `docs/protocol.md` §1 is its prose.

/// The `error` of a refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// Not a WebSocket upgrade, an unsupported subprotocol, a bad API body or query.
    BadRequest,
    /// A credential was refused (or none accepted), or a wrong API key.
    Unauthorized,
    /// The `connect` hook refused the socket.
    Forbidden,
    /// A browser's `Origin` is not allowed.
    ForbiddenOrigin,
    /// The server API is off.
    NotFound,
    /// The node holds `server.max_connections` sockets.
    TooManyConnections,
    /// The `connect` hook could not be asked.
    BackendError,
    /// The node cannot serve now (draining, broker not ready), or the authentication back end
    /// did not answer.
    Unavailable,
    /// The server API could not reach the broker or the registry.
    BackendUnavailable,
}

impl RefusalCode {
    /// The word on the wire (and the default `reason` label of the refusal metric).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::NotFound => "not_found",
            Self::TooManyConnections => "too_many_connections",
            Self::BackendError => "backend_error",
            Self::Unavailable => "unavailable",
            Self::BackendUnavailable => "backend_unavailable",
        }
    }

    /// The HTTP status it comes with (the `connect` hook may choose another 4xx for `Forbidden`
    /// and `Unauthorized`).
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden | Self::ForbiddenOrigin => 403,
            Self::NotFound => 404,
            Self::TooManyConnections => 429,
            Self::BackendError => 502,
            Self::Unavailable | Self::BackendUnavailable => 503,
        }
    }
}
