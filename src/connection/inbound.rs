//! What the client sends: the inbound WebSocket stream's messages, decoded (`protocol::codec`),
//! checked against the connection's inbound protections (the frame rate, malformed-frame
//! strikes), and dispatched to the frame's handler: `join`/`leave` (in `membership`), `publish`,
//! `ping`, `refresh`, or a custom action (in `backend`). A stream that ends or fails says how
//! the socket ended (a close frame, a dropped connection, a framing violation).
//!
//! What it is not: it does not write to the socket (the connection's queue does) and awaits
//! nothing in place (a publish or refresh is a spawned future mapped back into the actor).

use std::time::Instant;

use actix::prelude::*;
use serde_json::{Value, json};

use super::Connection;
use super::outbound::CloseRequest;
use crate::auth::AuthError;
use crate::broker::Publication;
use crate::hub::Outbound;
use crate::metrics as names;
use crate::protocol::client_messages::{ClientMessage, InboundError};
use crate::protocol::codec::{decode_binary, decode_text};
use crate::protocol::frame::FrameError;
use crate::protocol::{ClientFrame, ClientRequest, CloseCode, CloseReason, ErrorCode, ServerFrame};

/// `action` labels of `switchboard_frames_received_total` beyond the frames' own.
pub(super) const REFUSED_FRAME_LABELS: [&str; 2] = ["rate_limited", "malformed"];

impl Connection {
    pub(super) fn on_data_frame(
        &mut self,
        ctx: &mut Context<Self>,
        decoded: Result<ClientFrame, FrameError>,
    ) {
        let now = Instant::now();
        if !self.rate.try_take(now) {
            metrics::counter!(names::FRAMES_RECEIVED, "action" => REFUSED_FRAME_LABELS[0])
                .increment(1);
            if self.rate_strikes.strike(now) {
                self.close(ctx, CloseReason::RATE_LIMITED);
            } else {
                let id = decoded.as_ref().map_or_else(|err| err.id, |frame| frame.id);
                self.error(
                    ctx,
                    id,
                    ErrorCode::RateLimited,
                    "too many frames; slow down",
                );
            }
            return;
        }
        match decoded {
            Ok(frame) => {
                metrics::counter!(names::FRAMES_RECEIVED, "action" => frame.request.metric_label())
                    .increment(1);
                self.dispatch(ctx, frame);
            }
            Err(err) => {
                metrics::counter!(names::FRAMES_RECEIVED, "action" => REFUSED_FRAME_LABELS[1])
                    .increment(1);
                if self.malformed_strikes.strike(now) {
                    self.close(ctx, CloseReason::MALFORMED);
                } else {
                    self.error(ctx, err.id, ErrorCode::BadRequest, &err.reason);
                }
            }
        }
    }

    pub(super) fn dispatch(&mut self, ctx: &mut Context<Self>, frame: ClientFrame) {
        let id = frame.id;
        match frame.request {
            ClientRequest::Join { channel, since } => self.on_join(ctx, id, &channel, since),
            ClientRequest::Leave { channel } => self.on_leave(ctx, id, &channel),
            ClientRequest::Publish { channel, data } => self.on_publish(ctx, id, &channel, data),
            ClientRequest::Ping => self.send(ctx, &ServerFrame::Pong { id }),
            ClientRequest::Refresh { token } => self.on_refresh(ctx, id, token),
            ClientRequest::Custom { action, body } => self.on_route(ctx, id, action, body),
        }
    }

    pub(super) fn on_publish(
        &mut self,
        ctx: &mut Context<Self>,
        id: Option<u64>,
        name: &str,
        data: Value,
    ) {
        let allowed = super::parse_channel(name).and_then(|channel| {
            if self.settings.policy.may_publish(&self.identity, name) {
                Ok(channel)
            } else {
                Err((ErrorCode::Forbidden, format!("may not publish to {name}")))
            }
        });
        let channel = match allowed {
            Ok(channel) => channel,
            Err((code, reason)) => return self.error(ctx, id, code, &reason),
        };
        let publication = Publication::new(channel, data, self.identity.user.clone());
        self.hub
            .publish(publication)
            .into_actor(self)
            .map(move |result, connection, ctx| match result {
                Ok(()) => connection.reply(ctx, id, &Value::Null),
                Err(err) => {
                    tracing::debug!(connection = %connection.id, error = %err, "publish failed");
                    connection.error(ctx, id, ErrorCode::BrokerUnavailable, &err.client_reason())
                }
            })
            .spawn(ctx);
    }

    pub(super) fn on_refresh(&mut self, ctx: &mut Context<Self>, id: Option<u64>, token: String) {
        let auth = self.auth.clone();
        async move { auth.refresh(&token).await }
            .into_actor(self)
            .map(move |result, connection, ctx| {
                let refused = match result {
                    Ok(identity) if identity.user != connection.identity.user => Some((
                        "refused",
                        ErrorCode::Forbidden,
                        "the new credential is for a different user".to_owned(),
                    )),
                    Ok(identity) => {
                        metrics::counter!(names::REFRESHES, "result" => "accepted").increment(1);
                        // The connection now rests on the new credential, not its old session.
                        if let Some(ticket) = connection.session.take() {
                            connection.sessions.untrack(connection.key, &ticket);
                        }
                        let expires_at = identity.expires_at;
                        connection.identity = identity;
                        connection.schedule_expiry(ctx);
                        connection.reply(ctx, id, &json!({ "expires_at": expires_at }));
                        None
                    }
                    Err(err) => {
                        let (result, code) = match err {
                            AuthError::Refused { .. } => ("refused", ErrorCode::Forbidden),
                            AuthError::Unavailable(_) => {
                                ("unavailable", ErrorCode::BrokerUnavailable)
                            }
                            AuthError::RefreshUnsupported => ("unsupported", ErrorCode::BadRequest),
                        };
                        if let AuthError::Unavailable(detail) = &err {
                            tracing::debug!(%detail, "refresh failed: the authentication back end is unavailable");
                        }
                        Some((result, code, err.client_reason()))
                    }
                };
                if let Some((result, code, reason)) = refused {
                    metrics::counter!(names::REFRESHES, "result" => result).increment(1);
                    connection.error(ctx, id, code, &reason);
                }
            })
            .spawn(ctx);
    }
}

impl StreamHandler<Result<ClientMessage, InboundError>> for Connection {
    fn handle(&mut self, message: Result<ClientMessage, InboundError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        if self.closing {
            // Only the end of the close handshake matters now: the client's close frame, or
            // the socket ending.
            if matches!(message, Ok(ClientMessage::Close(_)) | Err(_)) {
                ctx.stop();
            }
            return;
        }
        match message {
            Ok(ClientMessage::Text(text)) => self.on_data_frame(ctx, decode_text(&text)),
            Ok(ClientMessage::Binary(bytes)) => self.on_data_frame(ctx, decode_binary(&bytes)),
            Ok(ClientMessage::Ping(bytes)) => self.enqueue(ctx, Outbound::Pong(bytes)),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Close(reason)) => {
                let code = reason.as_ref().map_or(CloseCode::Normal, |reason| {
                    CloseCode::from_code(u16::from(reason.code))
                });
                metrics::counter!(names::CLOSES, "code" => code.metric_label(), "reason" => code.name(), "initiator" => "client")
                    .increment(1);
                // Echo the client's code, as RFC 6455 asks; not counted twice. The handshake is
                // then complete: the actor stops, and the socket closes once the echo is out.
                if let Some(closer) = self.closer.take() {
                    let reason = reason
                        .as_ref()
                        .and_then(|reason| reason.description.clone());
                    self.closed_with = Some((code, reason.unwrap_or_default()));
                    self.closing = true;
                    // A code that may not be sent (1005, 1006, a reserved one) is answered 1000.
                    let echoed = if code.is_sendable() {
                        code
                    } else {
                        CloseCode::Normal
                    };
                    let _ = closer.send(CloseRequest {
                        code: echoed,
                        reason: String::new(),
                    });
                }
                ctx.stop();
            }
            Err(InboundError::TooBig) => self.close(ctx, CloseReason::TOO_BIG),
            Err(err @ InboundError::ConnectionLost(_)) => {
                tracing::debug!(connection = %self.id, error = %err, "connection lost");
                self.ended(ctx, CloseCode::Abnormal, "client");
            }
            Err(err @ InboundError::Protocol(_)) => {
                tracing::debug!(connection = %self.id, error = %err, "websocket protocol error");
                self.close(ctx, CloseReason::PROTOCOL_ERROR);
            }
        }
    }

    /// The stream ended without a close frame: the client hung up.
    fn finished(&mut self, ctx: &mut Self::Context) {
        self.ended(ctx, CloseCode::Abnormal, "client");
    }
}
