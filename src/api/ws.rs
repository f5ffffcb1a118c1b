//! `GET /ws`: checks a handshake, authenticates it once, and starts a [`Connection`] actor whose
//! outbound queue becomes the response body. Every refusal happens here, before the upgrade, as an HTTP error.

use actix::Actor;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use super::refusal::Refusal;
use super::{AppState, HandshakeLimits};
use std::sync::Arc;

use serde_json::json;

use crate::auth::{Handshake, Identity};
use crate::backend::{Backend, BackendError, CONNECT_HOOK, Caller, Instructions};
use crate::connection::outbound::OutboundBody;
use crate::connection::{Connection, ConnectionParts};
use crate::hub::outbound_queue;
use crate::metrics as names;
use crate::protocol::{Encoding, RefusalCode};

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
            tracing::debug!(code = refusal.code.as_str(), reason = %refusal.reason, "handshake refused");
            refusal.response()
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
            RefusalCode::BadRequest,
            format!("not a WebSocket upgrade: {err}"),
        )
    })?;
    check_origin(request, &state.limits)?;
    let encoding = negotiate_encoding(request)?;
    let mut ticket = state.admission.try_admit().ok_or_else(|| {
        Refusal::new(
            RefusalCode::TooManyConnections,
            format!(
                "this node holds its maximum of {} connections",
                state.admission.limit()
            ),
        )
    })?;

    let handshake = handshake_of(request);
    // The address's limits before authentication: a flood costs no authenticator work.
    if let Some(limits) = &state.connection_limits {
        let address = limits.client_address(&handshake);
        let held = limits
            .admit_address(address)
            .await
            .map_err(Refusal::over_limit)?;
        ticket.hold(held);
    }
    let identity = state
        .auth
        .authenticate(&handshake)
        .await
        .map_err(Refusal::from_auth)?;
    if let Some(limits) = &state.connection_limits {
        let held = limits
            .admit_user(identity.user.as_deref())
            .await
            .map_err(Refusal::over_limit)?;
        ticket.hold(held);
    }
    let initial_channels: Vec<String> = handshake.query_all("channel").map(str::to_owned).collect();
    let (key, id) = state.hub.directory().allocate();
    let connect_instructions = match &state.backend {
        Some(backend) => {
            call_connect_hook(backend, &handshake, &identity, &id, &initial_channels).await?
        }
        None => None,
    };

    let body = ending_at_hang_up(request, body)?;
    let (response, _session, inbound) =
        actix_ws::handle_with_protocols(request, body, &Encoding::PROTOCOLS)
            .map_err(|err| Refusal::new(RefusalCode::BadRequest, err.to_string()))?;
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
    let (welcome, welcome_receiver) = tokio::sync::oneshot::channel();
    let (lifeline, actor_gone) = crate::connection::outbound::lifeline();
    // The connection's outbound queue becomes the response body; actix-ws's own body (and its
    // `Session`) are not used for sending. See `connection::outbound`.
    let response = response
        .map_body(|_, handshake_body| {
            OutboundBody::new(
                queue_receiver,
                close_receiver,
                actor_gone,
                Some(welcome_receiver),
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
        welcome,
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

/// The refusal label of a socket the `connect` hook refused or could not be asked about.
pub(super) const CONNECT_HOOK_LABEL: &str = "connect_hook";

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
                RefusalCode::Unauthorized
            } else {
                RefusalCode::Forbidden
            };
            let reason = reason.unwrap_or_else(|| "refused by the connect hook".to_owned());
            Err(Refusal::new(code, reason)
                .with_status(status)
                .labelled(CONNECT_HOOK_LABEL))
        }
        Err(err) => Err(Refusal::new(
            RefusalCode::BackendError,
            format!("connect hook: {}", err.client_reason()),
        )
        .labelled(CONNECT_HOOK_LABEL)),
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
            RefusalCode::ForbiddenOrigin,
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
                RefusalCode::BadRequest,
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

/// The socket's inbound bytes, ending cleanly where the peer hung up. actix-http reports a
/// connection that ended (EOF, or a reset) as an error, and actix-ws drops what it had read but
/// not yet decoded when it sees one: the frames a client sent just before hanging up, its last
/// `publish` among them, would be lost. Ended here instead, every complete frame is handled,
/// then the stream ends (a close without a close frame, 1006, as before).
fn ending_at_hang_up(request: &HttpRequest, body: web::Payload) -> Result<web::Payload, Refusal> {
    use actix_web::FromRequest;
    use actix_web::error::PayloadError;
    use futures_util::{FutureExt, StreamExt};
    let ending = body.scan((), |(), chunk| {
        std::future::ready(match chunk {
            Err(PayloadError::Incomplete(_)) => None,
            other => Some(other),
        })
    });
    let boxed: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, PayloadError>>>,
    > = Box::pin(ending);
    let mut payload = actix_web::dev::Payload::from(boxed);
    match web::Payload::from_request(request, &mut payload).now_or_never() {
        Some(Ok(payload)) => Ok(payload),
        _ => Err(Refusal::new(
            RefusalCode::BadRequest,
            "cannot read the request body",
        )),
    }
}
