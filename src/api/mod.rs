//! The HTTP edges: `GET /ws` (the WebSocket handshake), `/metrics`, `/healthz`, `/readyz`.
//!
//! Handlers here translate HTTP to the domain and back; they hold no state of their own beyond
//! [`AppState`], which `server` builds. A refused request gets a JSON body
//! `{"error": "<code>", "reason": "<text>"}` with the status of PROTOCOL.md §1.

mod health;
mod ws;

use std::sync::Arc;

use actix_web::{HttpResponse, http::StatusCode, web};
use serde_json::json;

use crate::auth::AuthChain;
use crate::connection::ConnectionSettings;
use crate::connection::admission::Admission;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::sessions::SessionKeeper;

/// Limits applied at the handshake, before a connection exists.
#[derive(Debug, Clone)]
pub struct HandshakeLimits {
    pub allowed_origins: Vec<String>,
    /// An authenticator reads cookies: with no `allowed_origins`, only same-origin browsers.
    pub cookie_authentication: bool,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
}

/// What every handler can reach.
pub struct AppState {
    pub hub: Hub,
    pub auth: Arc<AuthChain>,
    pub sessions: SessionKeeper,
    pub settings: Arc<ConnectionSettings>,
    pub limits: HandshakeLimits,
    /// The node's connection limit (`server.max_connections`).
    pub admission: Admission,
    pub metrics: Metrics,
}

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/ws", web::get().to(ws::upgrade))
        .route("/metrics", web::get().to(health::metrics))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz));
}

/// A JSON error response: `{"error": code, "reason": reason}`.
pub(crate) fn error_response(status: StatusCode, code: &str, reason: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": code, "reason": reason }))
}
