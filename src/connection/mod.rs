//! The per-socket actor: one [`Connection`] per WebSocket.
//!
//! It reads the inbound `actix_ws` message stream (`ctx.add_stream`), decodes client frames,
//! applies the protections (rate limit, strikes, channel limit, policy), talks to the hub, and
//! answers through its bounded outbound queue, which is the response body ([`outbound`]). It owns
//! the connection's timers (heartbeat ping, idle timeout) and closes itself with the right code.
//!
//! No handler awaits IO in place: joins, publishes, refreshes and back-end route calls are
//! spawned futures whose results are mapped back into the actor.
//!
//! It also speaks for the connection to the back end (`backend`): a custom action with a route
//! is POSTed there and the answer carried out ([`Instructions`]: a reply, joins, leaves,
//! publishes), and the `disconnect` hook hears of the close. In channels whose rule says
//! `presence = true` it announces its own joins and leaves to the members (a `presence` frame,
//! through the broker, so members on every node hear it).
//!
//! What it is not: it does not encode publications (groups do, once) and it never writes to the
//! socket directly (the HTTP dispatcher polls [`outbound::OutboundBody`]).

pub mod admission;
mod membership;
pub mod outbound;
pub mod rate_limit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, ProtocolError};
use serde_json::{Value, json};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use crate::auth::{AuthChain, AuthError, Identity, unix_now};
use crate::backend::{Backend, Caller, DISCONNECT_HOOK, Instructions};
use crate::broker::{BrokerFuture, Publication};
use crate::hub::{
    ChannelPolicy, ConnectionKey, Disconnect, Disconnector, Draining, Hub, LocalConnection, Member,
    Membership, Outbound, OutboundSender,
};
use crate::metrics as names;
use crate::protocol::codec::{decode_binary, decode_text};
use crate::protocol::frame::FrameError;
use crate::protocol::{
    ChannelName, ClientFrame, ClientRequest, CloseCode, Encoding, ErrorCode, ServerFrame,
};
use crate::sessions::{EXPIRED_REASON, SessionKeeper, SessionTicket};
use outbound::{CloseRequest, Lifeline};
use rate_limit::{StrikeWindow, TokenBucket};

/// The window in which rate-limit and malformed-frame strikes are counted.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// Malformed frames tolerated within `STRIKE_WINDOW` before closing with 1008.
const MALFORMED_FRAME_LIMIT: u32 = 10;
/// The longest one expiry timer waits; a later expiry re-arms it then (so no deadline is too far
/// for the timer wheel).
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a server-initiated close waits for the client's close frame before the socket is
/// closed anyway.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The close initiators, the `initiator` label of `switchboard_closes_total`.
const INITIATORS: [&str; 2] = ["server", "client"];
/// `action` labels of `switchboard_frames_received_total` beyond the frames' own.
const REFUSED_FRAME_LABELS: [&str; 2] = ["rate_limited", "malformed"];

/// Registers the connections' series at zero (see `metrics`): closes by every named code and
/// initiator, frames by action, refreshes by result.
pub fn register_metrics() {
    use names::register;
    let codes = CloseCode::NAMED.into_iter().chain([CloseCode::Other(0)]);
    for code in codes {
        for initiator in INITIATORS {
            register::counter(
                names::CLOSES,
                &[
                    ("code", &code.metric_label()),
                    ("reason", code.name()),
                    ("initiator", initiator),
                ],
            );
        }
    }
    for action in ClientRequest::METRIC_LABELS
        .into_iter()
        .chain(REFUSED_FRAME_LABELS)
    {
        register::counter(names::FRAMES_RECEIVED, &[("action", action)]);
    }
    for result in names::results::REFRESH {
        register::counter(names::REFRESHES, &[("result", result)]);
    }
}

/// Per-connection limits and timings, from `[server]` and `[[channels]]`.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub max_channels: usize,
    pub heartbeat_interval: Duration,
    pub idle_timeout: Duration,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// A client's joins and leaves of presence channels: per second, and in a burst.
    pub presence_rate: u32,
    pub presence_burst: u32,
    pub policy: ChannelPolicy,
    /// Routes and hooks, when `[routes]` has any.
    pub backend: Option<Arc<Backend>>,
}

/// Everything a new connection is started with.
pub struct ConnectionParts {
    pub key: ConnectionKey,
    pub id: Arc<str>,
    pub identity: Identity,
    pub encoding: Encoding,
    pub initial_channels: Vec<String>,
    /// What the `connect` hook answered: channels joined without consulting the channel rules,
    /// publications made once the welcome is out.
    pub connect_instructions: Option<Instructions>,
    pub inbound: AggregatedMessageStream,
    pub queue: OutboundSender,
    pub closer: oneshot::Sender<CloseRequest>,
    /// Held while the actor runs: the outbound body ends once it is dropped.
    pub lifeline: Lifeline,
}

pub struct Connection {
    key: ConnectionKey,
    id: Arc<str>,
    identity: Identity,
    encoding: Encoding,
    hub: Hub,
    auth: Arc<AuthChain>,
    sessions: SessionKeeper,
    /// This connection's place in the node's session table, when its session is re-validated.
    session: Option<SessionTicket>,
    /// The timer that closes the socket with 4001 when the credential expires.
    expiry: Option<SpawnHandle>,
    settings: Arc<ConnectionSettings>,
    queue: OutboundSender,
    closer: Option<oneshot::Sender<CloseRequest>>,
    _lifeline: Lifeline,
    /// Set once the close frame is asked for: the actor only waits for the close handshake to
    /// end, and its memberships, registration and session are already given up.
    closing: bool,
    torn_down: bool,
    /// What groups, the directory and the drain use to ask this connection to close.
    disconnector: Disconnector,
    /// Where their one notice arrives; watched from `started`.
    disconnect_notice: Option<oneshot::Receiver<Disconnect>>,
    /// The channels this connection is in (or joining), each under its own membership.
    channels: HashMap<ChannelName, Membership>,
    initial_channels: Vec<String>,
    connect_instructions: Option<Instructions>,
    /// The close code, once known (for the `disconnect` hook).
    closed_with: Option<(CloseCode, String)>,
    inbound: Option<AggregatedMessageStream>,
    rate: TokenBucket,
    rate_strikes: StrikeWindow,
    /// The client's joins and leaves of presence channels (each one is an event to every member).
    presence_budget: TokenBucket,
    /// Route calls in flight (bounded by `[backend] max_calls_per_connection`).
    route_calls: usize,
    malformed_strikes: StrikeWindow,
    last_heard: Instant,
}

impl Connection {
    pub fn new(
        parts: ConnectionParts,
        hub: Hub,
        auth: Arc<AuthChain>,
        sessions: SessionKeeper,
        settings: Arc<ConnectionSettings>,
    ) -> Self {
        let now = Instant::now();
        let (disconnector, disconnect_notice) = Disconnector::new();
        Self {
            key: parts.key,
            id: parts.id,
            identity: parts.identity,
            encoding: parts.encoding,
            hub,
            auth,
            sessions,
            session: None,
            expiry: None,
            rate: TokenBucket::new(
                settings.rate_limit_per_second,
                settings.rate_limit_burst,
                now,
            ),
            rate_strikes: StrikeWindow::new(
                STRIKE_WINDOW,
                settings.rate_limit_per_second.max(10),
                now,
            ),
            malformed_strikes: StrikeWindow::new(STRIKE_WINDOW, MALFORMED_FRAME_LIMIT, now),
            presence_budget: TokenBucket::new(settings.presence_rate, settings.presence_burst, now),
            route_calls: 0,
            settings,
            queue: parts.queue,
            closer: Some(parts.closer),
            _lifeline: parts.lifeline,
            closing: false,
            torn_down: false,
            disconnector,
            disconnect_notice: Some(disconnect_notice),
            channels: HashMap::new(),
            initial_channels: parts.initial_channels,
            connect_instructions: parts.connect_instructions,
            closed_with: None,
            inbound: Some(parts.inbound),
            last_heard: now,
        }
    }

    fn member(&self) -> Member {
        Member {
            connection: self.key,
            encoding: self.encoding,
            queue: self.queue.clone(),
            disconnect: self.disconnector.clone(),
        }
    }

    /// Encodes and queues a frame for this client; a full queue closes it as a slow consumer.
    fn send(&mut self, ctx: &mut Context<Self>, frame: &ServerFrame<'_>) {
        match self.encoding.encode(frame) {
            Ok(encoded) => self.enqueue(ctx, Outbound::Frame(encoded)),
            Err(err) => tracing::error!(connection = %self.id, error = %err, "cannot encode frame"),
        }
    }

    fn enqueue(&mut self, ctx: &mut Context<Self>, outbound: Outbound) {
        match self.queue.try_send(outbound) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!(names::MESSAGES_DROPPED, "reason" => names::dropped::SLOW_CONSUMER)
                    .increment(1);
                self.close(ctx, CloseCode::SlowConsumer, "outbound queue overflowed");
            }
            // The body closed the queue behind its close frame, or the socket is gone.
            Err(TrySendError::Closed(_)) if self.closing => {}
            Err(TrySendError::Closed(_)) => ctx.stop(),
        }
    }

    fn reply(&mut self, ctx: &mut Context<Self>, id: Option<u64>, data: &Value) {
        if let Some(id) = id {
            self.send(ctx, &ServerFrame::Reply { id, data });
        }
    }

    fn error(&mut self, ctx: &mut Context<Self>, id: Option<u64>, code: ErrorCode, reason: &str) {
        self.send(ctx, &ServerFrame::Error { id, code, reason });
    }

    /// Closes the socket with `code` (once): the close frame is sent, the connection leaves
    /// everything at once, and the actor stops when the client answers with its own close frame
    /// (or hangs up), or after [`CLOSE_HANDSHAKE_TIMEOUT`].
    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        let Some(closer) = self.closer.take() else {
            return;
        };
        self.closed_with = Some((code, reason.to_owned()));
        metrics::counter!(names::CLOSES, "code" => code.metric_label(), "reason" => code.name(), "initiator" => "server")
            .increment(1);
        tracing::debug!(connection = %self.id, %code, reason, "closing");
        let _ = closer.send(CloseRequest {
            code,
            reason: reason.to_owned(),
        });
        self.closing = true;
        self.tear_down();
        ctx.run_later(CLOSE_HANDSHAKE_TIMEOUT, |_, ctx| ctx.stop());
    }

    /// Gives up everything the connection holds on the node: its channels (announced), its
    /// registration and its session; tells the `disconnect` hook. Once, at the close (or when
    /// the actor stops without one).
    fn tear_down(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        let channels = self.leave_all();
        self.call_disconnect_hook(&channels);
        self.hub.unregister(self.key);
        if let Some(ticket) = self.session.take() {
            self.sessions.untrack(self.key, &ticket);
        }
    }

    /// The socket ended without a close handshake (the TCP connection dropped, or the client
    /// broke the framing): counted with `code` as initiated by `initiator`, and the actor stops.
    fn ended(&mut self, ctx: &mut Context<Self>, code: CloseCode, initiator: &'static str) {
        if !self.closing {
            metrics::counter!(names::CLOSES, "code" => code.metric_label(), "reason" => code.name(), "initiator" => initiator)
                .increment(1);
            self.closed_with = Some((code, String::new()));
            self.closing = true;
        }
        ctx.stop();
    }

    /// When the credential expires: the session's latest expiry when it is re-validated, else
    /// the identity's own.
    fn expires_at(&self) -> Option<u64> {
        match &self.session {
            Some(ticket) => ticket.expires_at(),
            None => self.identity.expires_at,
        }
    }

    /// (Re)arms the expiry timer for the current credential.
    fn schedule_expiry(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.expiry.take() {
            ctx.cancel_future(timer);
        }
        let Some(expires_at) = self.expires_at() else {
            return;
        };
        let delay = Duration::from_secs(expires_at.saturating_sub(unix_now())).min(MAX_EXPIRY_WAIT);
        self.expiry = Some(ctx.run_later(delay, |connection, ctx| {
            connection.expiry = None;
            // A re-validated session may have been extended since the timer was armed.
            if connection
                .expires_at()
                .is_some_and(|expires_at| expires_at > unix_now())
            {
                connection.schedule_expiry(ctx);
            } else {
                connection.close(ctx, CloseCode::SessionExpired, EXPIRED_REASON);
            }
        }));
    }

    /// Joins the channels named at the handshake (and waits for the user's topic subscription),
    /// then sends `welcome` (the first frame), then an `error` for each refused channel, then
    /// starts reading client frames.
    fn join_initial_channels(&mut self, ctx: &mut Context<Self>, user_subscribed: BrokerFuture) {
        let (granted, hook_publications) = match self.connect_instructions.take() {
            Some(instructions) => (instructions.join, instructions.publish),
            None => (Vec::new(), Vec::new()),
        };
        let requested = std::mem::take(&mut self.initial_channels)
            .into_iter()
            .map(|name| (name, true))
            .chain(granted.into_iter().map(|name| (name, false)))
            .collect();
        let (mut refused, joins) = self.join_all(requested);
        let id = self.id.clone();
        let user_subscribed = async move {
            if let Err(err) = user_subscribed.await {
                // The broker keeps the reference and subscribes once it can.
                tracing::debug!(connection = %id, error = %err, "user topic not subscribed yet");
            }
        };
        futures_util::future::join(joins, user_subscribed)
            .into_actor(self)
            .map(move |(answers, ()), connection, ctx| {
                let mut joined = Vec::new();
                for answer in answers {
                    match connection.finish_join(answer) {
                        Ok(channel) => joined.push(channel),
                        Err(refusal) => refused.push(refusal),
                    }
                }
                let names: Vec<&str> = joined.iter().map(|joined| joined.0.as_str()).collect();
                let welcome = ServerFrame::Welcome {
                    connection_id: &connection.id,
                    user: connection.identity.user.as_deref(),
                    channels: &names,
                    expires_at: connection.identity.expires_at,
                };
                let welcome = connection.encoding.encode(&welcome);
                match welcome {
                    Ok(frame) => connection.enqueue(ctx, Outbound::Frame(frame)),
                    Err(err) => tracing::error!(error = %err, "cannot encode welcome"),
                }
                for (code, reason) in refused {
                    connection.error(ctx, None, code, &reason);
                }
                for channel in joined {
                    connection.announce_join(channel);
                }
                connection.publish_for_backend(ctx, hook_publications);
                if let Some(inbound) = connection.inbound.take() {
                    ctx.add_stream(inbound);
                }
                connection.start_heartbeat(ctx);
            })
            .spawn(ctx);
    }

    fn start_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let interval = self.settings.heartbeat_interval;
        // A jittered first tick, so sockets opened together do not ping together forever.
        let first = interval.mul_f64(0.5 + fastrand::f64() * 0.5);
        ctx.run_later(first, move |connection, ctx| {
            connection.heartbeat(ctx);
            ctx.run_interval(interval, |connection, ctx| connection.heartbeat(ctx));
        });
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        if self.last_heard.elapsed() > self.settings.idle_timeout {
            self.close(ctx, CloseCode::GoingAway, "idle timeout");
        } else {
            self.enqueue(ctx, Outbound::Ping(bytes::Bytes::new()));
        }
    }

    fn on_data_frame(&mut self, ctx: &mut Context<Self>, decoded: Result<ClientFrame, FrameError>) {
        let now = Instant::now();
        if !self.rate.try_take(now) {
            metrics::counter!(names::FRAMES_RECEIVED, "action" => REFUSED_FRAME_LABELS[0])
                .increment(1);
            if self.rate_strikes.strike(now) {
                self.close(
                    ctx,
                    CloseCode::RateLimited,
                    "sustained inbound rate above the limit",
                );
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
                    self.close(ctx, CloseCode::Policy, "too many malformed frames");
                } else {
                    self.error(ctx, err.id, ErrorCode::BadRequest, &err.reason);
                }
            }
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>, frame: ClientFrame) {
        let id = frame.id;
        match frame.request {
            ClientRequest::Join { channel } => self.on_join(ctx, id, &channel),
            ClientRequest::Leave { channel } => self.on_leave(ctx, id, &channel),
            ClientRequest::Publish { channel, data } => self.on_publish(ctx, id, &channel, data),
            ClientRequest::Ping => self.send(ctx, &ServerFrame::Pong { id }),
            ClientRequest::Refresh { token } => self.on_refresh(ctx, id, token),
            ClientRequest::Custom { action, body } => self.on_route(ctx, id, action, body),
        }
    }

    fn caller(&self) -> Caller {
        Caller {
            connection: self.id.clone(),
            user: self.identity.user.clone(),
            session: self.identity.session.clone(),
        }
    }

    /// A custom action: POSTed to its route, the answer carried out when it comes.
    fn on_route(&mut self, ctx: &mut Context<Self>, id: Option<u64>, action: String, body: Value) {
        let routed = self
            .settings
            .backend
            .clone()
            .and_then(|backend| backend.route_for(&action).map(|route| (backend, route)));
        let Some((backend, route)) = routed else {
            return self.error(
                ctx,
                id,
                ErrorCode::UnknownAction,
                &format!("no route handles action {action:?}"),
            );
        };
        let limit = backend.max_calls_per_connection();
        if self.route_calls >= limit {
            return self.error(
                ctx,
                id,
                ErrorCode::RateLimited,
                &format!("{limit} back-end calls are already in flight; wait for their answers"),
            );
        }
        self.route_calls += 1;
        let caller = self.caller();
        async move { backend.call(&route, &caller, &action, body, &[]).await }
            .into_actor(self)
            .map(move |result, connection, ctx| {
                connection.route_calls = connection.route_calls.saturating_sub(1);
                match result {
                    Ok(instructions) => connection.carry_out(ctx, id, instructions),
                    Err(err) => {
                        connection.error(ctx, id, ErrorCode::BackendError, &err.client_reason())
                    }
                }
            })
            .spawn(ctx);
    }

    /// Does what the back end answered: leaves, then joins, then publishes; then the reply
    /// (or, if a join or publish failed, an error with the frame's id).
    fn carry_out(&mut self, ctx: &mut Context<Self>, id: Option<u64>, instructions: Instructions) {
        for name in &instructions.leave {
            if let Ok(channel) = ChannelName::parse(name) {
                self.leave_channel(&channel);
            }
        }
        let joins = instructions
            .join
            .into_iter()
            .map(|name| (name, false))
            .collect();
        let (refused, joins) = self.join_all(joins);
        let mut refused: Vec<String> = refused.into_iter().map(|(_, reason)| reason).collect();
        let (publications, reply) = (instructions.publish, instructions.reply);
        // Publish once the joins are live, so the connection hears what it publishes to a
        // channel it was just told to join.
        joins
            .into_actor(self)
            .then(move |answers, connection, _ctx| {
                for answer in answers {
                    match connection.finish_join(answer) {
                        Ok(joined) => connection.announce_join(joined),
                        Err((_, reason)) => refused.push(reason),
                    }
                }
                connection
                    .publish_as_server(publications)
                    .into_actor(connection)
                    .map(move |failures, connection, ctx| {
                        refused.extend(failures);
                        if refused.is_empty() {
                            connection.reply(ctx, id, &reply);
                        } else {
                            let reason = format!(
                                "the back end's instructions failed: {}",
                                refused.join("; ")
                            );
                            connection.error(ctx, id, ErrorCode::BackendUnavailable, &reason);
                        }
                    })
            })
            .spawn(ctx);
    }

    /// Makes the back end's publications, as the server (no `from`); resolves to why each
    /// one that failed did (a bad channel name, the broker refusing).
    fn publish_as_server(
        &self,
        publications: Vec<(String, Value)>,
    ) -> impl std::future::Future<Output = Vec<String>> + use<> {
        let mut failures = Vec::new();
        let publishes: Vec<BrokerFuture> = publications
            .into_iter()
            .filter_map(|(name, data)| match parse_channel(&name) {
                Ok(channel) => Some(self.hub.publish(Publication::new(channel, data, None))),
                Err((_, reason)) => {
                    failures.push(reason);
                    None
                }
            })
            .collect();
        async move {
            let published = futures_util::future::join_all(publishes).await;
            failures.extend(published.into_iter().filter_map(Result::err).map(|err| {
                tracing::debug!(error = %err, "a back end's publication failed");
                err.client_reason()
            }));
            failures
        }
    }

    /// Makes the connect hook's publications; failures are reported as `error` frames.
    fn publish_for_backend(&mut self, ctx: &mut Context<Self>, publications: Vec<(String, Value)>) {
        if publications.is_empty() {
            return;
        }
        self.publish_as_server(publications)
            .into_actor(self)
            .map(|failures, connection, ctx| {
                for reason in failures {
                    connection.error(ctx, None, ErrorCode::BackendUnavailable, &reason);
                }
            })
            .spawn(ctx);
    }

    /// Tells a presence channel's members that this connection joined or left it.
    fn announce(&self, channel: &ChannelName, joined: bool) {
        let has_presence = self
            .settings
            .policy
            .rule_for(channel.as_str())
            .is_some_and(|rule| rule.presence);
        if !has_presence {
            return;
        }
        let who = json!({ "user": self.identity.user, "connection": &*self.id });
        let publishing = self
            .hub
            .publish(Publication::presence(channel.clone(), joined, who));
        let channel = channel.clone();
        actix::spawn(async move {
            if let Err(err) = publishing.await {
                tracing::debug!(%channel, error = %err, "presence event not published");
            }
        });
    }

    fn on_publish(&mut self, ctx: &mut Context<Self>, id: Option<u64>, name: &str, data: Value) {
        let allowed = parse_channel(name).and_then(|channel| {
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
                    connection.error(ctx, id, ErrorCode::BackendUnavailable, &err.client_reason())
                }
            })
            .spawn(ctx);
    }

    fn on_refresh(&mut self, ctx: &mut Context<Self>, id: Option<u64>, token: String) {
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
                                ("unavailable", ErrorCode::BackendUnavailable)
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

impl Connection {
    /// Tells the `disconnect` hook, if any, that this socket closed (with which code, and which
    /// channels it was in). Fire and forget, bounded like every back-end call.
    fn call_disconnect_hook(&self, channels: &[ChannelName]) {
        let Some(backend) = self.settings.backend.clone() else {
            return;
        };
        let Some(route) = backend.disconnect_hook() else {
            return;
        };
        // No close frame either way: the socket dropped (1006).
        let (code, reason) = self
            .closed_with
            .clone()
            .unwrap_or((CloseCode::Abnormal, "connection lost".to_owned()));
        let body = json!({
            "code": code.code(),
            "reason": reason,
            "channels": channels.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
        });
        let caller = self.caller();
        actix::spawn(async move {
            let _ = backend
                .call(&route, &caller, DISCONNECT_HOOK, body, &[])
                .await;
        });
    }
}

/// How an inbound stream error ends the socket.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// A frame, or a message fragmented into continuation frames, over `max_frame_bytes`: 1009.
    TooBig,
    /// The TCP connection failed or ended under the stream (a reset, a hang-up mid-frame): an
    /// abnormal closure (1006) that the client caused, not a protocol violation.
    ConnectionLost,
    /// The client broke the WebSocket rules (bad framing, invalid UTF-8 in a text frame): 1002.
    ProtocolError,
}

/// Sorts an inbound stream error. actix-ws reports a continuation over the size limit only as
/// an `Io` error with this text (`AggregatedMessageStream`'s size error), hence the match on it
/// (the integration test `a_fragmented_message_over_the_size_limit_closes_with_1009` pins it);
/// invalid UTF-8 arrives as `Io` of kind `InvalidData`; every other `Io` error is the
/// connection's own.
fn classify(err: &ProtocolError) -> StreamEnd {
    match err {
        ProtocolError::Overflow => StreamEnd::TooBig,
        ProtocolError::Io(io) if io.to_string() == "Exceeded maximum continuation size" => {
            StreamEnd::TooBig
        }
        ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StreamEnd::ProtocolError
        }
        ProtocolError::Io(_) => StreamEnd::ConnectionLost,
        _ => StreamEnd::ProtocolError,
    }
}

/// Validates a channel name, failing with the `invalid_channel` error a client gets.
fn parse_channel(name: &str) -> Result<ChannelName, (ErrorCode, String)> {
    ChannelName::parse(name).map_err(|err| (ErrorCode::InvalidChannel, format!("{err}: {name:?}")))
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(notice) = self.disconnect_notice.take() {
            notice
                .into_actor(self)
                .map(|notice, connection, ctx| {
                    // An error is every `Disconnector` copy dropped: nobody can ask any more.
                    if let Ok(Disconnect { code, reason }) = notice {
                        connection.close(ctx, code, &reason);
                    }
                })
                .spawn(ctx);
        }
        let registered = self.hub.register(LocalConnection {
            member: self.member(),
            id: self.id.clone(),
            user: self.identity.user.as_deref().map(Arc::from),
            session: self.identity.session.as_deref().map(Arc::from),
            connected_at: unix_now(),
        });
        self.session = self
            .sessions
            .track(self.key, &self.identity, self.disconnector.clone());
        self.schedule_expiry(ctx);
        match registered {
            Ok(user_subscribed) => self.join_initial_channels(ctx, user_subscribed),
            Err(Draining) => self.close(ctx, CloseCode::Restart, crate::hub::DRAIN_REASON),
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.tear_down();
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for Connection {
    fn handle(
        &mut self,
        message: Result<AggregatedMessage, ProtocolError>,
        ctx: &mut Self::Context,
    ) {
        self.last_heard = Instant::now();
        if self.closing {
            // Only the end of the close handshake matters now: the client's close frame, or
            // the socket ending.
            if matches!(message, Ok(AggregatedMessage::Close(_)) | Err(_)) {
                ctx.stop();
            }
            return;
        }
        match message {
            Ok(AggregatedMessage::Text(text)) => self.on_data_frame(ctx, decode_text(&text)),
            Ok(AggregatedMessage::Binary(bytes)) => self.on_data_frame(ctx, decode_binary(&bytes)),
            Ok(AggregatedMessage::Ping(bytes)) => self.enqueue(ctx, Outbound::Pong(bytes)),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
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
            Err(err) => match classify(&err) {
                StreamEnd::TooBig => {
                    self.close(ctx, CloseCode::TooBig, "message exceeds max_frame_bytes");
                }
                StreamEnd::ConnectionLost => {
                    tracing::debug!(connection = %self.id, error = %err, "connection lost");
                    self.ended(ctx, CloseCode::Abnormal, "client");
                }
                StreamEnd::ProtocolError => {
                    tracing::debug!(connection = %self.id, error = %err, "websocket protocol error");
                    self.close(ctx, CloseCode::ProtocolError, "websocket protocol error");
                }
            },
        }
    }

    /// The stream ended without a close frame: the client hung up.
    fn finished(&mut self, ctx: &mut Self::Context) {
        self.ended(ctx, CloseCode::Abnormal, "client");
    }
}
