//! `/ws`, the WebSocket handshake. The HTTP server hands every WebSocket upgrade request to
//! [`serve`] (actix-http's upgrade service, see `server`), with the TCP stream: the handshake is
//! checked and authenticated once, then the `101` is written by the socket's writer (with the
//! `welcome`) and a [`Connection`] actor reads the socket (`connection::socket`). Every refusal
//! happens here, before the upgrade, as an HTTP error, after which the TCP connection closes. A
//! plain `GET /ws` (no upgrade headers) reaches the application's route, [`not_an_upgrade`],
//! and is refused the same way; an upgrade request for any other path gets a bare 404.

use std::rc::Rc;
use std::sync::Arc;

use actix::Actor;
use actix_codec::{Encoder, Framed, FramedParts};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::{self, Message};
use actix_http::{ConnectionType, Request, RequestHead, Response};
use actix_rt::net::TcpStream;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::BytesMut;
use serde_json::json;

use super::refusal::Refusal;
use super::{AppState, HandshakeLimits};
use crate::auth::{Handshake, Identity};
use crate::backend::{Backend, BackendError, CONNECT_HOOK, Caller, Instructions};
use crate::connection::outbound::OutboundDrain;
use crate::connection::socket::{SocketReader, SocketWriter, poll_write_all};
use crate::connection::{Connection, ConnectionParts};
use crate::hub::outbound_queue;
use crate::metrics as names;
use crate::protocol::{Encoding, RefusalCode};

/// The path WebSocket clients connect to.
pub(super) const PATH: &str = "/ws";

/// Serves one WebSocket upgrade request: the handshake, then the connection, or a refusal.
/// Never fails: a socket that breaks during the handshake is the client's affair (logged at
/// debug); the error type is the HTTP server's.
pub(crate) async fn serve(
    request: Request,
    framed: Framed<TcpStream, h1::Codec>,
    state: web::Data<AppState>,
) -> Result<(), actix_web::Error> {
    let FramedParts {
        io,
        mut codec,
        read_buf,
        mut write_buf,
        ..
    } = framed.into_parts();
    let socket = Rc::new(io);
    if request.path() != PATH {
        let not_found = Response::new(StatusCode::NOT_FOUND);
        respond(&socket, &mut codec, &mut write_buf, not_found).await;
        return Ok(());
    }
    let accepted = accept(request.head(), &state).await;
    match accepted {
        Ok(accepted) => {
            let encoded = codec.encode(
                Message::Item((accepted.response, BodySize::None)),
                &mut write_buf,
            );
            if let Err(err) = encoded {
                tracing::error!(error = %err, "cannot encode the handshake's response");
                return Ok(());
            }
            metrics::counter!(names::CONNECTIONS_ACCEPTED).increment(1);
            // The head and any leftover bytes are copied out, so the HTTP server's buffers
            // are freed now rather than held until the welcome is written.
            let head = BytesMut::from(&write_buf[..]);
            drop(write_buf);
            // Bytes the client sent right behind its handshake are its first frames.
            let max_frame_bytes = state.limits.max_frame_bytes;
            let reader = SocketReader::new(socket.clone(), &read_buf, max_frame_bytes);
            drop(read_buf);
            actix_rt::spawn(SocketWriter::new(socket, accepted.drain, head));
            let mut parts = accepted.parts;
            parts.inbound = Some(reader);
            Connection::new(
                parts,
                state.hub.clone(),
                state.auth.clone(),
                state.sessions.clone(),
                state.settings.clone(),
            )
            .start();
        }
        Err(refusal) => {
            count_refusal(&refusal);
            respond(
                &socket,
                &mut codec,
                &mut write_buf,
                refusal.response().into(),
            )
            .await;
        }
    }
    Ok(())
}

/// `GET /ws` without the upgrade headers: refused as a handshake would be.
pub(super) async fn not_an_upgrade(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    let refusal = match ready_to_serve(&state) {
        Err(refusal) => refusal,
        Ok(()) => match actix_http::ws::verify_handshake(request.head()) {
            Err(err) => not_a_websocket_upgrade(&err),
            Ok(()) => Refusal::new(
                RefusalCode::BadRequest,
                "not a WebSocket upgrade: the Connection header must include upgrade",
            ),
        },
    };
    count_refusal(&refusal);
    refusal.response()
}

fn count_refusal(refusal: &Refusal) {
    metrics::counter!(names::HANDSHAKES_REFUSED, "reason" => refusal.label).increment(1);
    tracing::debug!(code = refusal.code.as_str(), reason = %refusal.reason, "handshake refused");
}

fn not_a_websocket_upgrade(err: &actix_http::ws::HandshakeError) -> Refusal {
    Refusal::new(
        RefusalCode::BadRequest,
        format!("not a WebSocket upgrade: {err}"),
    )
}

/// Writes a whole HTTP response (a refusal) and ends the TCP connection.
async fn respond(
    socket: &TcpStream,
    codec: &mut h1::Codec,
    buffer: &mut BytesMut,
    response: Response<BoxBody>,
) {
    let (mut head, body) = response.into_parts();
    head.head_mut().set_connection_type(ConnectionType::Close);
    let body = body.try_into_bytes().unwrap_or_default();
    let encode = || -> std::io::Result<()> {
        codec.encode(
            Message::Item((head, BodySize::Sized(body.len() as u64))),
            buffer,
        )?;
        if !body.is_empty() {
            codec.encode(Message::Chunk(Some(body)), buffer)?;
        }
        codec.encode(Message::Chunk(None), buffer)
    };
    let written = match encode() {
        Ok(()) => {
            let mut bytes = buffer.split().freeze();
            std::future::poll_fn(|cx| poll_write_all(socket, &mut bytes, cx)).await
        }
        Err(err) => Err(err),
    };
    if let Err(err) = written {
        tracing::debug!(error = %err, "cannot write a refusal");
    }
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
}

/// An accepted handshake: the `101` to write, the connection to start, what its writer drains.
struct Accepted {
    response: Response<()>,
    parts: ConnectionParts,
    drain: OutboundDrain,
}

/// Whether this node takes handshakes now.
fn ready_to_serve(state: &AppState) -> Result<(), Refusal> {
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
    Ok(())
}

async fn accept(request: &RequestHead, state: &AppState) -> Result<Accepted, Refusal> {
    ready_to_serve(state)?;
    actix_http::ws::verify_handshake(request).map_err(|err| not_a_websocket_upgrade(&err))?;
    check_origin(request, &state.limits)?;
    let (encoding, protocol) = negotiate_encoding(request)?;
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

    let mut response = actix_http::ws::handshake_response(request);
    if let Some(protocol) = protocol {
        response.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    let response = response.finish().drop_body();
    let (queue, queue_receiver) = outbound_queue(
        state.limits.outbound_queue,
        state.limits.outbound_queue_bytes,
    );
    let (closer, close_receiver) = tokio::sync::oneshot::channel();
    let (welcome, welcome_receiver) = tokio::sync::oneshot::channel();
    let (lifeline, actor_gone) = crate::connection::outbound::lifeline();
    let drain = OutboundDrain::new(
        queue_receiver,
        close_receiver,
        actor_gone,
        Some(welcome_receiver),
        ticket,
    );
    let parts = ConnectionParts {
        key,
        id,
        identity,
        encoding,
        initial_channels,
        connect_instructions,
        inbound: None,
        queue,
        welcome,
        closer,
        lifeline,
    };
    Ok(Accepted {
        response,
        parts,
        drain,
    })
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
fn check_origin(request: &RequestHead, limits: &HandshakeLimits) -> Result<(), Refusal> {
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

/// JSON when the client offers no subprotocol; else the first one offered that we speak, and
/// its name for the response's `Sec-WebSocket-Protocol`.
fn negotiate_encoding(request: &RequestHead) -> Result<(Encoding, Option<&'static str>), Refusal> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok((Encoding::Json, None));
    }
    offered
        .iter()
        .find_map(|protocol| Encoding::from_protocol(protocol))
        .map(|encoding| (encoding, Some(encoding.protocol())))
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

fn handshake_of(request: &RequestHead) -> Handshake {
    Handshake {
        peer: request.peer_addr.map(|address| address.ip()),
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
        query: form_urlencoded::parse(request.uri.query().unwrap_or_default().as_bytes())
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect(),
    }
}
