//! The HTTP edges: `GET /ws` (the WebSocket handshake), `/metrics`, `/healthz`, `/readyz`, and
//! the server API under `/api/` ([`server_api`]).
//!
//! Handlers here translate HTTP to the domain and back; they hold no state of their own beyond
//! [`AppState`], which `server` builds. A refused request gets a JSON body
//! `{"error": "<code>", "reason": "<text>"}` with the status of docs/protocol.md §1.

mod health;
mod refusal;
pub(crate) mod server_api;
pub(crate) mod ws;

use std::sync::Arc;

use actix_web::web;
use serde::{Deserialize, Serialize};

use crate::auth::AuthChain;
use crate::backend::Backend;
use crate::connection::ConnectionSettings;
use crate::connection::admission::Admission;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::RefusalCode;
use crate::roster::Roster;
use crate::sessions::SessionKeeper;

/// The `[api]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The server API's bearer key; empty: the API is off.
    pub key: String,
}

impl ApiConfig {
    /// The section with the API key replaced for printing.
    pub fn redacted(&self) -> Self {
        Self {
            key: if self.key.is_empty() {
                String::new()
            } else {
                crate::config::REDACTED.to_owned()
            },
        }
    }
}

/// Limits applied at the handshake, before a connection exists.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeLimits {
    pub allowed_origins: Vec<String>,
    /// Identity can rest on ambient browser credentials (a cookie-reading authenticator, a
    /// gateway, a connect hook given the cookie): with no `allowed_origins`, only same-origin
    /// browsers.
    pub ambient_credentials: bool,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    pub outbound_queue_bytes: usize,
}

/// What every handler can reach.
pub(crate) struct AppState {
    pub hub: Hub,
    pub auth: Arc<AuthChain>,
    pub sessions: SessionKeeper,
    pub settings: Arc<ConnectionSettings>,
    pub limits: HandshakeLimits,
    /// The node's connection limit (`server.max_connections`).
    pub admission: Admission,
    /// `[limits]`, when any is on: connections per user and address, handshakes per address.
    pub connection_limits: Option<Arc<crate::limits::Limits>>,
    pub metrics: Metrics,
    /// The connection registry the API answers from.
    pub roster: Roster,
    /// `[api] key`; `None`: the server API is off.
    pub api_key: Option<String>,
    /// Routes and hooks, when `[routes]` has any.
    pub backend: Option<Arc<Backend>>,
}

/// Registers the HTTP edge's series at zero (see `metrics`): handshakes accepted and refused by
/// every reason, and, with the server API on, its calls by endpoint.
pub(crate) fn register_metrics(api_on: bool) {
    use crate::metrics::{self as names, register};
    register::counter(names::CONNECTIONS_ACCEPTED, &[]);
    // The edge's own labels (the codes a handshake can be refused with, and the connect hook),
    // then the authenticators' reasons.
    let codes = [
        RefusalCode::BadRequest,
        RefusalCode::ForbiddenOrigin,
        RefusalCode::TooManyConnections,
        RefusalCode::Unavailable,
    ];
    let reasons = codes
        .map(RefusalCode::as_str)
        .into_iter()
        .chain([
            ws::CONNECT_HOOK_LABEL,
            crate::auth::AuthError::UNAVAILABLE_LABEL,
        ])
        .chain(crate::auth::RefusalReason::ALL.map(crate::auth::RefusalReason::label));
    for reason in reasons {
        register::counter(names::HANDSHAKES_REFUSED, &[("reason", reason)]);
    }
    if api_on {
        for endpoint in server_api::ENDPOINTS {
            register::counter(
                names::API_REQUESTS,
                &[("endpoint", endpoint), ("status", "200")],
            );
        }
    }
}

/// Registers every route.
pub(crate) fn routes(config: &mut web::ServiceConfig) {
    config
        .route(ws::PATH, web::get().to(ws::not_an_upgrade))
        .route("/metrics", web::get().to(health::metrics))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .configure(server_api::routes);
}
