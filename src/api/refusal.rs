//! A refused HTTP request, the same for a handshake (`GET /ws`) and a server API call: its
//! [`RefusalCode`] (the `error` of the JSON body, and the status by default), the human
//! `reason`, the `reason` label of `switchboard_handshakes_refused_total` (the code, or finer for
//! authentication), and `Retry-After` when the node will take the request later.

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use serde_json::json;

use crate::auth::AuthError;
use crate::broker::BrokerError;
use crate::protocol::RefusalCode;
use crate::roster::RosterError;

/// `Retry-After` of a node that cannot serve now: a load balancer tries another node, and a
/// client reconnects a little later.
const RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: RefusalCode,
    pub(crate) status: StatusCode,
    pub(crate) label: &'static str,
    pub(crate) reason: String,
    pub(crate) retry_after: Option<u32>,
}

impl Refusal {
    pub(crate) fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            label: code.as_str(),
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The same refusal with another status (a `connect` hook's own 4xx).
    pub(crate) fn with_status(self, status: StatusCode) -> Self {
        Self { status, ..self }
    }

    /// The same refusal counted under another label.
    pub(crate) fn labelled(self, label: &'static str) -> Self {
        Self { label, ..self }
    }

    /// 503: this node cannot serve right now; retry here later or elsewhere.
    pub(crate) fn not_serving(reason: &str) -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECONDS),
            ..Self::new(RefusalCode::Unavailable, reason)
        }
    }

    /// A handshake whose credential was refused (401), or whose authentication back end did not
    /// answer (503); the client hears the credential's problem, never the back end's.
    pub(crate) fn from_auth(err: AuthError) -> Self {
        let code = match err {
            AuthError::Unavailable(ref detail) => {
                // The authenticator logged the outage itself, once per call; this is per handshake.
                tracing::debug!(%detail, "handshake refused: the authentication back end is unavailable");
                RefusalCode::Unavailable
            }
            AuthError::Refused { .. } | AuthError::RefreshUnsupported => RefusalCode::Unauthorized,
        };
        Self::new(code, err.client_reason()).labelled(err.label())
    }

    /// A handshake over a `[limits]` limit: 429 `too_many_connections`, the reason naming it.
    pub(crate) fn over_limit(over: crate::limits::OverLimit) -> Self {
        Self::new(RefusalCode::TooManyConnections, over.reason)
    }

    /// An API call the broker could not carry out: a neutral reason, the detail in the log.
    pub(crate) fn broker_unavailable(err: &BrokerError) -> Self {
        tracing::warn!(error = %err, "server API call failed: the broker is unavailable");
        Self::new(RefusalCode::BackendUnavailable, err.client_reason())
    }

    /// The HTTP response: the status, `{"error", "reason"}`, and `Retry-After` if any.
    pub(crate) fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status)
            .json(json!({ "error": self.code.as_str(), "reason": self.reason }));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<RosterError> for Refusal {
    fn from(err: RosterError) -> Self {
        tracing::warn!(error = %err, "server API query failed: the registry is unavailable");
        Self::new(
            RefusalCode::BackendUnavailable,
            "the connection registry is unavailable; retry shortly",
        )
    }
}
