//! Liveness, readiness and metrics endpoints.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process is alive and serving HTTP.
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the node accepts traffic (not draining, broker ready).
pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let broker = state.hub.broker();
    if state.hub.is_draining() {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "draining" }))
    } else if !broker.is_ready() {
        HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "broker_unavailable", "broker": broker.name() }))
    } else {
        HttpResponse::Ok().json(json!({ "status": "ready", "broker": broker.name() }))
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
