//! `GET /ws`: checks a handshake, authenticates it once, and starts a [`Connection`] actor whose
//! outbound queue becomes the response body. Every refusal happens here, before the upgrade, as an HTTP error.

use actix::Actor;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use super::{AppState, HandshakeLimits, error_response};
use std::sync::Arc;

use serde_json::json;

use crate::auth::{AuthError, Handshake, Identity};
use crate::backend::{Backend, BackendError, CONNECT_HOOK, Caller, Instructions};
use crate::connection::outbound::OutboundBody;
use crate::connection::{Connection, ConnectionParts};
use crate::hub::outbound_queue;
use crate::metrics as names;
use crate::protocol::Encoding;

/// Why a handshake was refused: the status and `error` code the client gets, and the metric's
/// `reason` label (the code itself, or finer for authentication: `expired`, `wrong_issuer`…).
struct Refusal {
    status: StatusCode,
    code: &'static str,
    label: &'static str,
    reason: String,
    /// Seconds for `Retry-After`, when the node will take the handshake later.
    retry_after: Option<u32>,
}

/// `Retry-After` of a node that cannot serve now: a load balancer tries another node, and a
/// client reconnects a little later.
const RETRY_AFTER_SECONDS: u32 = 1;

impl Refusal {
    fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            code,
            label: code,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// 503: this node cannot serve right now; retry here later or elsewhere. Counted as
    /// `unavailable`, like every refusal of a node not serving (its own alerts say why).
    fn not_serving(reason: &str) -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECONDS),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
        }
    }

    fn from_auth(err: AuthError) -> Self {
        let (status, code) = match err {
            AuthError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AuthError::Refused { .. } | AuthError::RefreshUnsupported => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
        };
        if let AuthError::Unavailable(detail) = &err {
            // The authenticator logged the outage itself, once per call; this is per handshake.
            tracing::debug!(%detail, "handshake refused: the authentication back end is unavailable");
        }
        Self {
            status,
            code,
            label: err.label(),
            reason: err.client_reason(),
            retry_after: None,
        }
    }
}

pub(super) async fn upgrade(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    match accept(&request, body, &state).await {
        Ok(response) => {
            metrics::counter!(names::CONNECTIONS_ACCEPTED).increment(1);
            response
        }
        Err(refusal) => {
            metrics::counter!(names::HANDSHAKES_REFUSED, "reason" => refusal.label).increment(1);
            tracing::debug!(code = refusal.code, reason = %refusal.reason, "handshake refused");
            let mut response = error_response(refusal.status, refusal.code, &refusal.reason);
            if let Some(seconds) = refusal.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            }
            response
        }
    }
}

async fn accept(
    request: &HttpRequest,
    body: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, Refusal> {
    if state.hub.is_draining() {
        return Err(Refusal::not_serving(
            "the server is draining for a restart; connect to another node",
        ));
    }
    // A node whose broker is not ready could not join the socket's channels or deliver to it:
    // better another node, or this one in a moment, than a socket that cannot work.
    if !state.hub.broker().is_ready() {
        return Err(Refusal::not_serving(
            "the server cannot reach its message broker; connect to another node or retry",
        ));
    }
    actix_http::ws::verify_handshake(request.head()).map_err(|err| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("not a WebSocket upgrade: {err}"),
        )
    })?;
    check_origin(request, &state.limits)?;
    let encoding = negotiate_encoding(request)?;
    let ticket = state.admission.try_admit().ok_or_else(|| {
        Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!(
                "this node holds its maximum of {} connections",
                state.admission.limit()
            ),
        )
    })?;

    let handshake = handshake_of(request);
    let identity = state
        .auth
        .authenticate(&handshake)
        .await
        .map_err(Refusal::from_auth)?;
    let initial_channels: Vec<String> = handshake.query_all("channel").map(str::to_owned).collect();
    let (key, id) = state.hub.directory().allocate();
    let connect_instructions = match &state.backend {
        Some(backend) => {
            call_connect_hook(backend, &handshake, &identity, &id, &initial_channels).await?
        }
        None => None,
    };

    let (response, _session, inbound) =
        actix_ws::handle_with_protocols(request, body, &Encoding::PROTOCOLS)
            .map_err(|err| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", err.to_string()))?;
    let max_frame_bytes = state.limits.max_frame_bytes;
    let inbound = inbound
        .max_frame_size(max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(max_frame_bytes);
    let (queue, queue_receiver) = outbound_queue(
        state.limits.outbound_queue,
        state.limits.outbound_queue_bytes,
    );
    let (closer, close_receiver) = tokio::sync::oneshot::channel();
    let (lifeline, actor_gone) = crate::connection::outbound::lifeline();
    // The connection's outbound queue becomes the response body; actix-ws's own body (and its
    // `Session`) are not used for sending. See `connection::outbound`.
    let response = response
        .map_body(|_, handshake_body| {
            OutboundBody::new(
                queue_receiver,
                close_receiver,
                actor_gone,
                handshake_body,
                ticket,
            )
        })
        .map_into_boxed_body();

    let parts = ConnectionParts {
        key,
        id,
        identity,
        encoding,
        initial_channels,
        connect_instructions,
        inbound,
        queue,
        closer,
        lifeline,
    };
    Connection::new(
        parts,
        state.hub.clone(),
        state.auth.clone(),
        state.sessions.clone(),
        state.settings.clone(),
    )
    .start();
    Ok(response)
}

/// Asks the `connect` hook, if configured, whether this socket may open. A 4xx answer refuses
/// the handshake with that status; a failed call refuses it with 502 `backend_error` (a hook
/// that cannot be asked does not say yes).
async fn call_connect_hook(
    backend: &Backend,
    handshake: &Handshake,
    identity: &Identity,
    id: &Arc<str>,
    channels: &[String],
) -> Result<Option<Instructions>, Refusal> {
    let Some(route) = backend.connect_hook() else {
        return Ok(None);
    };
    let caller = Caller {
        connection: id.clone(),
        user: identity.user.clone(),
        session: identity.session.clone(),
    };
    let forwarded: Vec<(String, String)> = handshake
        .headers
        .iter()
        .filter(|(name, _)| backend.forwards_header(name))
        .cloned()
        .collect();
    let body = json!({ "channels": channels });
    match backend
        .call(&route, &caller, CONNECT_HOOK, body, &forwarded)
        .await
    {
        Ok(instructions) => Ok(Some(instructions)),
        Err(BackendError::Status { status, reason }) if (400..500).contains(&status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            let code = if status == StatusCode::UNAUTHORIZED {
                "unauthorized"
            } else {
                "forbidden"
            };
            Err(Refusal {
                status,
                code,
                label: "connect_hook",
                reason: reason.unwrap_or_else(|| "refused by the connect hook".to_owned()),
                retry_after: None,
            })
        }
        Err(err) => Err(Refusal {
            status: StatusCode::BAD_GATEWAY,
            code: "backend_error",
            label: "connect_hook",
            reason: format!("connect hook: {}", err.client_reason()),
            retry_after: None,
        }),
    }
}

/// A browser's `Origin` must be allow-listed when a list is configured (`"*"`: any). With an
/// empty list, any origin is accepted, unless identity can rest on ambient browser credentials
/// (cookies, read by an authenticator, a gateway, or the connect hook): then only the server's
/// own origin (the `Origin` host equals the `Host` header), since a cookie would let any site
/// open an authenticated socket in its visitor's name (cross-site WebSocket hijacking). No
/// `Origin` header means not a browser, which is not checked.
fn check_origin(request: &HttpRequest, limits: &HandshakeLimits) -> Result<(), Refusal> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let allowed = &limits.allowed_origins;
    let accepted = if allowed.iter().any(|entry| entry == "*") {
        true
    } else if !allowed.is_empty() {
        allowed
            .iter()
            .any(|entry| entry.eq_ignore_ascii_case(origin))
    } else if limits.ambient_credentials {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok());
        host.is_some_and(|host| origin_host(origin).eq_ignore_ascii_case(host))
    } else {
        true
    };
    if accepted {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            format!("origin {origin:?} is not allowed"),
        ))
    }
}

/// The `host[:port]` part of an origin (`https://app.example:8443` → `app.example:8443`).
fn origin_host(origin: &str) -> &str {
    origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/')
}

/// JSON when the client offers no subprotocol; else the first one offered that we speak.
fn negotiate_encoding(request: &HttpRequest) -> Result<Encoding, Refusal> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(Encoding::Json);
    }
    offered
        .iter()
        .find_map(|protocol| Encoding::from_protocol(protocol))
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "unsupported subprotocol {offered:?}; offer {} or {}",
                    Encoding::JSON_PROTOCOL,
                    Encoding::MESSAGEPACK_PROTOCOL
                ),
            )
        })
}

fn handshake_of(request: &HttpRequest) -> Handshake {
    Handshake {
        peer: request.peer_addr().map(|address| address.ip()),
        headers: request
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                value
                    .to_str()
                    .ok()
                    .map(|value| (name.as_str().to_owned(), value.to_owned()))
            })
            .collect(),
        query: form_urlencoded::parse(request.query_string().as_bytes())
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect(),
    }
}
