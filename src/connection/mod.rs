//! The per-socket actor: one [`Connection`] per WebSocket, from its handshake to its close.
//!
//! This file holds the actor's lifecycle: what it is started with, registering on the node, its
//! timers (the credential's expiry, the heartbeat and idle timeout), sending frames through its
//! bounded outbound queue ([`outbound`], written by the socket's writer, [`socket`]), and the
//! close (a handshake: the close frame, then the client's answer or a timeout). Its other jobs,
//! one file each:
//! - [`inbound`]: the client's frames, decoded, rate-limited and dispatched; `publish`,
//!   `refresh`; how the stream ended;
//! - [`membership`]: the one join/leave path (the handshake's channels and `welcome`, client
//!   frames, back-end instructions, the close) and presence announcements;
//! - [`backend`]: action routes and their instructions, the connect hook's publications, the
//!   `disconnect` hook;
//! - [`rate_limit`], [`admission`]: the inbound token bucket and strikes, the connection limit;
//! - [`socket`]: the upgraded TCP stream, read into client messages and written from the drain.
//!
//! No handler awaits IO in place: joins, publishes, refreshes and back-end route calls are
//! spawned futures whose results are mapped back into the actor.
//!
//! What it is not: it does not encode publications (groups do, once) and it never writes to the
//! socket directly (its writer task drains [`outbound::OutboundDrain`]).

pub(crate) mod admission;
mod backend;
mod inbound;
mod membership;
pub(crate) mod outbound;
pub(crate) mod rate_limit;
pub(crate) mod socket;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use crate::auth::{AuthChain, Identity, unix_now};
use crate::backend::{Backend, Instructions};
use crate::hub::{
    ChannelPolicy, ConnectionKey, Disconnect, Disconnector, Draining, Hub, LocalConnection, Member,
    Membership, Outbound, OutboundSender,
};
use crate::metrics as names;
use crate::protocol::{
    ChannelName, ClientRequest, CloseCode, CloseReason, Encoding, ErrorCode, OutboundFrame,
    ServerFrame,
};
use crate::sessions::{SessionKeeper, SessionTicket};
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
pub(crate) const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The close initiators, the `initiator` label of `switchboard_closes_total`.
const INITIATORS: [&str; 2] = ["server", "client"];

/// Registers the connections' series at zero (see `metrics`): closes by every named code and
/// initiator, frames by action, refreshes by result.
pub(crate) fn register_metrics() {
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
        .chain(inbound::REFUSED_FRAME_LABELS)
    {
        register::counter(names::FRAMES_RECEIVED, &[("action", action)]);
    }
    for result in names::results::REFRESH {
        register::counter(names::REFRESHES, &[("result", result)]);
    }
}

/// Per-connection limits and timings, from `[server]` and `[[channels]]`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSettings {
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
pub(crate) struct ConnectionParts {
    pub key: ConnectionKey,
    pub id: Arc<str>,
    pub identity: Identity,
    pub encoding: Encoding,
    pub initial_channels: Vec<String>,
    /// What the `connect` hook answered: channels joined without consulting the channel rules,
    /// publications made once the welcome is out.
    pub connect_instructions: Option<Instructions>,
    /// The client's frames (set by the handshake once the socket is handed over).
    pub inbound: Option<socket::SocketReader>,
    pub queue: OutboundSender,
    /// Where the `welcome` goes: ahead of everything queued (see `outbound`).
    pub welcome: oneshot::Sender<OutboundFrame>,
    pub closer: oneshot::Sender<CloseRequest>,
    /// Held while the actor runs: the outbound drain ends once it is dropped.
    pub lifeline: Lifeline,
}

pub(crate) struct Connection {
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
    welcome: Option<oneshot::Sender<OutboundFrame>>,
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
    inbound: Option<socket::SocketReader>,
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
    pub(crate) fn new(
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
            welcome: Some(parts.welcome),
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
            inbound: parts.inbound,
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
                self.close(ctx, CloseReason::SLOW_CONSUMER);
            }
            // The drain closed the queue behind its close frame, or the socket is gone.
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
    fn close(&mut self, ctx: &mut Context<Self>, notice: impl Into<Disconnect>) {
        let Some(closer) = self.closer.take() else {
            return;
        };
        let Disconnect { code, reason } = notice.into();
        self.closed_with = Some((code, reason.clone()));
        metrics::counter!(names::CLOSES, "code" => code.metric_label(), "reason" => code.name(), "initiator" => "server")
            .increment(1);
        tracing::debug!(connection = %self.id, %code, reason, "closing");
        let _ = closer.send(CloseRequest { code, reason });
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
                connection.close(ctx, CloseReason::EXPIRED);
            }
        }));
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
            self.close(ctx, CloseReason::IDLE);
        } else {
            self.enqueue(ctx, Outbound::Ping(bytes::Bytes::new()));
        }
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
                        connection.close(ctx, Disconnect { code, reason });
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
            Err(Draining) => self.close(ctx, CloseReason::RESTART),
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.tear_down();
    }
}
