//! Metric names in one place, and the Prometheus recorder.
//!
//! Every metric the server exports is named here (and described in `docs/metrics.md`), and so
//! are the label values that are known in advance ([`dropped`], [`results`], [`broker_kinds`]);
//! code elsewhere refers to these constants, never to string literals. The exporter has no
//! listener of its own: `api` renders [`Metrics::render`] on `GET /metrics`, and the server calls
//! [`Metrics::run_upkeep`] on a timer. A process has one recorder; every server started in the
//! same process shares it.
//!
//! Every series with known labels exists from the start, at zero (Prometheus's "avoid missing
//! metrics"), so a dashboard shows 0 rather than "No data" and a `rate()` alert fires on the
//! first event: each module registers the series it emits when it is built ([`register`]),
//! since only it knows which of them apply (a memory node has no Redis series, a node without
//! `[routes]` no route series).

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "switchboard_connections";
pub const CONNECTIONS_ACCEPTED: &str = "switchboard_connections_accepted_total";
pub const HANDSHAKES_REFUSED: &str = "switchboard_handshakes_refused_total";
pub const CHANNELS: &str = "switchboard_channels";
pub const FRAMES_RECEIVED: &str = "switchboard_frames_received_total";
pub const MESSAGES_DELIVERED: &str = "switchboard_messages_delivered_total";
pub const MESSAGES_DROPPED: &str = "switchboard_messages_dropped_total";
pub const CLOSES: &str = "switchboard_closes_total";
pub const PUBLISH_TO_DELIVER: &str = "switchboard_publish_to_deliver_seconds";
pub const BROKER_PUBLISHED: &str = "switchboard_broker_published_total";
pub const BROKER_SUBSCRIPTIONS: &str = "switchboard_broker_subscriptions";
pub const BROKER_PUBLISH_FAILURES: &str = "switchboard_broker_publish_failures_total";
pub const BROKER_RECEIVED: &str = "switchboard_broker_received_total";
pub const BROKER_DECODE_ERRORS: &str = "switchboard_broker_decode_errors_total";
pub const BROKER_RECONNECTS: &str = "switchboard_broker_reconnects_total";
pub const BROKER_ROUND_TRIP: &str = "switchboard_broker_round_trip_seconds";
pub const BROKER_UP: &str = "switchboard_broker_up";
pub const CONTROL_DISCONNECTS: &str = "switchboard_control_disconnects_total";
pub const HANDSHAKES: &str = "switchboard_handshakes_total";
pub const GATEWAY_UNTRUSTED: &str = "switchboard_gateway_untrusted_total";
pub const AUTH_BACKEND_DURATION: &str = "switchboard_auth_backend_seconds";
pub const AUTH_BACKEND_ERRORS: &str = "switchboard_auth_backend_errors_total";
pub const JWT_KEY_RELOADS: &str = "switchboard_jwt_key_reloads_total";
pub const JWKS_FETCHES: &str = "switchboard_jwks_fetches_total";
pub const JWKS_KEYS: &str = "switchboard_jwks_keys";
pub const JWKS_UNKNOWN_KID_REFRESHES: &str = "switchboard_jwks_unknown_kid_refreshes_total";
pub const SESSIONS: &str = "switchboard_sessions";
pub const REVALIDATIONS: &str = "switchboard_revalidations_total";
pub const REFRESHES: &str = "switchboard_refreshes_total";
pub const API_REQUESTS: &str = "switchboard_api_requests_total";
pub const ROUTE_CALLS: &str = "switchboard_route_calls_total";
pub const ROUTE_CALL_DURATION: &str = "switchboard_route_call_seconds";
pub const REGISTRY_CONNECTIONS: &str = "switchboard_registry_connections";
pub const REGISTRY_WRITE_FAILURES: &str = "switchboard_registry_write_failures_total";
pub const HISTORY_APPENDS: &str = "switchboard_history_appends_total";
pub const HISTORY_READ_SECONDS: &str = "switchboard_history_read_seconds";
pub const RECOVERIES: &str = "switchboard_recoveries_total";
pub const PUBLICATIONS_REPLAYED: &str = "switchboard_publications_replayed_total";
pub const GAPS: &str = "switchboard_gaps_total";
pub const LIMIT_REFUSALS: &str = "switchboard_limit_refusals_total";
pub const LIMIT_DEGRADED: &str = "switchboard_limit_degraded_total";
pub const BRIDGE_RECEIVED: &str = "switchboard_bridge_received_total";
pub const BRIDGE_DROPPED: &str = "switchboard_bridge_dropped_total";
pub const BRIDGE_FULL: &str = "switchboard_bridge_channel_full_total";
pub const BRIDGE_MEMBERSHIP_WRITES: &str = "switchboard_bridge_membership_writes_total";
pub const BRIDGE_GROUPS: &str = "switchboard_bridge_groups";

/// The `reason` of [`BRIDGE_DROPPED`].
pub mod bridge_dropped {
    /// Not decodable: bad prefix, encryption, MessagePack, or no JSON-compatible dict.
    pub const DECODE: &str = "decode";
    /// Older than the layer's `expiry` when popped (core layer).
    pub const EXPIRED: &str = "expired";
    /// For a group no rule maps, or for a channel name not of this node.
    pub const UNMAPPED: &str = "unmapped";
    /// The node fell behind a pub/sub host's message stream (pub/sub layer).
    pub const LAGGED: &str = "lagged";
    pub const ALL: [&str; 4] = [DECODE, EXPIRED, UNMAPPED, LAGGED];
}

/// The `reason` of [`MESSAGES_DROPPED`].
pub mod dropped {
    /// A member's outbound queue was full (it is closed with 4010).
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    /// A publication could not be encoded for members.
    pub const ENCODE_ERROR: &str = "encode_error";
    /// A channel group's mailbox was full on this node.
    pub const GROUP_OVERLOADED: &str = "group_overloaded";
    /// The node fell behind Redis's message stream (Redis broker only).
    pub const BROKER_LAGGED: &str = "broker_lagged";
    /// Every reason a node of either broker can have.
    pub const ON_EVERY_NODE: [&str; 3] = [SLOW_CONSUMER, ENCODE_ERROR, GROUP_OVERLOADED];
}

/// The `result` label of counters that count outcomes.
pub mod results {
    /// [`HANDSHAKES`](super::HANDSHAKES).
    pub const HANDSHAKE: [&str; 3] = ["accepted", "refused", "unavailable"];
    /// [`REVALIDATIONS`](super::REVALIDATIONS).
    pub const REVALIDATION: [&str; 4] = ["alive", "dead", "unavailable", "failed_closed"];
    /// [`REFRESHES`](super::REFRESHES).
    pub const REFRESH: [&str; 4] = ["accepted", "refused", "unavailable", "unsupported"];
    /// [`ROUTE_CALLS`](super::ROUTE_CALLS).
    pub const ROUTE_CALL: [&str; 5] = ["ok", "status", "timeout", "unreachable", "invalid"];
    /// [`BRIDGE_MEMBERSHIP_WRITES`](super::BRIDGE_MEMBERSHIP_WRITES).
    pub const BRIDGE_MEMBERSHIP: [&str; 2] = ["ok", "failed"];
}

/// The `result` and `reason` labels of [`RECOVERIES`]: a join with `since` either recovered, or
/// did not, for one of these reasons.
pub mod recovery {
    pub const RECOVERED: &str = "recovered";
    pub const NOT_RECOVERED: &str = "not_recovered";
    /// The `reason` of a recovery.
    pub const NONE: &str = "none";
    /// The channel's history was lost since (a new epoch).
    pub const EPOCH: &str = "epoch";
    /// What came after `since` is no longer retained.
    pub const TRIMMED: &str = "trimmed";
    /// More than `server.recovery_limit` publications were missed (or they would not fit the
    /// connection's outbound queue).
    pub const LIMIT: &str = "limit";
    /// `since` is past the channel's top (not a position the server gave).
    pub const AHEAD: &str = "ahead";
    /// The channel's history could not be read; the join failed.
    pub const UNAVAILABLE: &str = "unavailable";
    pub const NOT_RECOVERED_REASONS: [&str; 5] = [EPOCH, TRIMMED, LIMIT, AHEAD, UNAVAILABLE];
}

/// The `kind` label of [`BROKER_RECEIVED`] and [`BROKER_DECODE_ERRORS`]: which Redis channel a
/// message came on.
pub mod broker_kinds {
    pub const CHANNEL: &str = "channel";
    pub const USER: &str = "user";
    pub const CONTROL: &str = "control";
    pub const NODE: &str = "node";
    pub const OTHER: &str = "other";
    pub const ALL: [&str; 5] = [CHANNEL, USER, CONTROL, NODE, OTHER];
}

/// Registers series at zero: `counter!` or `histogram!` with each set of labels, so they are
/// exported before their first event.
pub mod register {
    use metrics::Label;

    /// A counter series with these labels, at zero.
    pub fn counter(name: &'static str, labels: &[(&'static str, &str)]) {
        metrics::counter!(name, to_labels(labels)).increment(0);
    }

    /// A histogram series with these labels, empty.
    pub fn histogram(name: &'static str, labels: &[(&'static str, &str)]) {
        drop(metrics::histogram!(name, to_labels(labels)));
    }

    /// A gauge series, at zero.
    pub fn gauge(name: &'static str) {
        metrics::gauge!(name).set(0.0);
    }

    fn to_labels(labels: &[(&'static str, &str)]) -> Vec<Label> {
        labels
            .iter()
            .map(|(key, value)| Label::new(*key, value.to_string()))
            .collect()
    }
}

/// The metrics only a Redis broker exports (a memory node never has them).
pub const REDIS_ONLY: [&str; 5] = [
    BROKER_RECEIVED,
    BROKER_DECODE_ERRORS,
    BROKER_RECONNECTS,
    BROKER_ROUND_TRIP,
    BROKER_PUBLISH_FAILURES,
];

/// The metrics of authenticators: exported when an authenticator of that kind is configured (a
/// node without `[auth.*]` sections never has them).
pub const AUTH_ONLY: [&str; 9] = [
    GATEWAY_UNTRUSTED,
    AUTH_BACKEND_DURATION,
    AUTH_BACKEND_ERRORS,
    JWT_KEY_RELOADS,
    JWKS_FETCHES,
    JWKS_KEYS,
    JWKS_UNKNOWN_KID_REFRESHES,
    REVALIDATIONS,
    REFRESHES,
];

/// The metrics of the back-end integration: the server API (when `[api] key` is set), route
/// calls (with `[routes]`), the shared registry (with Redis).
pub const INTEGRATION_ONLY: [&str; 5] = [
    API_REQUESTS,
    ROUTE_CALLS,
    ROUTE_CALL_DURATION,
    REGISTRY_CONNECTIONS,
    REGISTRY_WRITE_FAILURES,
];

/// The metrics of `[limits]`: exported by nodes with a limit on.
pub const LIMITS_ONLY: [&str; 2] = [LIMIT_REFUSALS, LIMIT_DEGRADED];

/// The metrics of the channels_redis bridge: exported by nodes with `[bridge.channels_redis]`.
pub const BRIDGE_ONLY: [&str; 5] = [
    BRIDGE_RECEIVED,
    BRIDGE_DROPPED,
    BRIDGE_FULL,
    BRIDGE_MEMBERSHIP_WRITES,
    BRIDGE_GROUPS,
];

/// Every metric name, for the test that checks each one is really exported.
pub const ALL: [&str; 46] = [
    CONNECTIONS,
    CONNECTIONS_ACCEPTED,
    HANDSHAKES_REFUSED,
    CHANNELS,
    FRAMES_RECEIVED,
    MESSAGES_DELIVERED,
    MESSAGES_DROPPED,
    CLOSES,
    PUBLISH_TO_DELIVER,
    BROKER_PUBLISHED,
    BROKER_SUBSCRIPTIONS,
    BROKER_PUBLISH_FAILURES,
    BROKER_RECEIVED,
    BROKER_DECODE_ERRORS,
    BROKER_RECONNECTS,
    BROKER_ROUND_TRIP,
    BROKER_UP,
    CONTROL_DISCONNECTS,
    HANDSHAKES,
    GATEWAY_UNTRUSTED,
    AUTH_BACKEND_DURATION,
    AUTH_BACKEND_ERRORS,
    JWT_KEY_RELOADS,
    JWKS_FETCHES,
    JWKS_KEYS,
    JWKS_UNKNOWN_KID_REFRESHES,
    SESSIONS,
    REVALIDATIONS,
    REFRESHES,
    API_REQUESTS,
    ROUTE_CALLS,
    ROUTE_CALL_DURATION,
    REGISTRY_CONNECTIONS,
    REGISTRY_WRITE_FAILURES,
    HISTORY_APPENDS,
    HISTORY_READ_SECONDS,
    RECOVERIES,
    PUBLICATIONS_REPLAYED,
    GAPS,
    BRIDGE_RECEIVED,
    BRIDGE_DROPPED,
    BRIDGE_FULL,
    BRIDGE_MEMBERSHIP_WRITES,
    BRIDGE_GROUPS,
    LIMIT_REFUSALS,
    LIMIT_DEGRADED,
];

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// A handle on the process's Prometheus recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

impl Metrics {
    /// Installs the recorder on first call; later calls return the same handle.
    pub fn install() -> Result<Self, MetricsError> {
        // Nodes started at once in one process (the in-process tests) install one recorder.
        static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _installing = INSTALLING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(handle) = HANDLE.get() {
            return Ok(Self {
                handle: handle.clone(),
            });
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .map_err(|err| MetricsError(err.to_string()))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|err| MetricsError(err.to_string()))?;
        let handle = HANDLE.get_or_init(|| handle).clone();
        describe();
        Ok(Self { handle })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram buffers; call on a timer (the exporter has no listener doing it).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, "Open WebSocket connections on this node.");
    describe_counter!(CONNECTIONS_ACCEPTED, "WebSocket handshakes accepted.");
    describe_counter!(HANDSHAKES_REFUSED, "Handshakes refused, by reason.");
    describe_gauge!(CHANNELS, "Channel groups with local members on this node.");
    describe_counter!(FRAMES_RECEIVED, "Client frames received, by action.");
    describe_counter!(
        MESSAGES_DELIVERED,
        "Frames queued to members by channel fan-out."
    );
    describe_counter!(MESSAGES_DROPPED, "Frames not delivered, by reason.");
    describe_counter!(CLOSES, "WebSocket closes, by code and initiator.");
    describe_histogram!(
        PUBLISH_TO_DELIVER,
        Unit::Seconds,
        "From publish (or broker receipt) to the last member's queue."
    );
    describe_counter!(BROKER_PUBLISHED, "Publications handed to the broker.");
    describe_gauge!(
        BROKER_SUBSCRIPTIONS,
        "Broker channel subscriptions held by this node."
    );
    describe_counter!(
        BROKER_PUBLISH_FAILURES,
        "Publications the broker could not take (the publisher heard backend_unavailable)."
    );
    describe_counter!(
        BROKER_RECEIVED,
        "Messages received from Redis, by kind (channel, user, control, node)."
    );
    describe_counter!(
        BROKER_DECODE_ERRORS,
        "Redis payloads dropped because they were not a valid envelope or control op, by kind."
    );
    describe_counter!(
        BROKER_RECONNECTS,
        "Reconnections to Redis, by client (publisher, subscriber)."
    );
    describe_histogram!(
        BROKER_ROUND_TRIP,
        Unit::Seconds,
        "Pub/sub round trip of the readiness probe: publish on the node's channel to receipt."
    );
    describe_gauge!(
        BROKER_UP,
        "1 while the broker can publish and receive (the readiness probe answers), else 0."
    );
    describe_counter!(
        CONTROL_DISCONNECTS,
        "Connections closed on this node by control operations."
    );
    describe_counter!(
        HANDSHAKES,
        "Handshakes by the authenticator that decided (anonymous: none did) and result (accepted, refused, unavailable)."
    );
    describe_counter!(
        GATEWAY_UNTRUSTED,
        "Gateway identity headers ignored because the peer is not a trusted proxy."
    );
    describe_histogram!(
        AUTH_BACKEND_DURATION,
        Unit::Seconds,
        "Calls to authentication back ends (introspection view, Redis sessions), by authenticator."
    );
    describe_counter!(
        AUTH_BACKEND_ERRORS,
        "Authentication back-end calls that failed (timeout, 5xx, unreachable), by authenticator."
    );
    describe_counter!(
        JWT_KEY_RELOADS,
        "Readings of [auth.jwt] key files after the start (SIGHUP, a changed file), by result (ok, failed)."
    );
    describe_counter!(
        LIMIT_REFUSALS,
        "Handshakes refused with 429 by a [limits] limit (per_user, per_ip, handshake_rate)."
    );
    describe_counter!(
        LIMIT_DEGRADED,
        "Limit checks this node decided alone because the cluster-wide store (Redis) did not answer."
    );
    describe_counter!(
        BRIDGE_RECEIVED,
        "Messages from channels_redis's group_send handed to this node's members of the mapped channel."
    );
    describe_counter!(
        BRIDGE_DROPPED,
        "channels_redis messages dropped by the bridge, by reason (decode, expired, unmapped, lagged)."
    );
    describe_counter!(
        BRIDGE_FULL,
        "Pops that found this node's channels_redis channel at capacity: senders may have refused messages for it then."
    );
    describe_counter!(
        BRIDGE_MEMBERSHIP_WRITES,
        "Writes of this node's channels_redis group memberships (joins, renewals, withdrawals; subscriptions with pub/sub), by result."
    );
    describe_gauge!(
        BRIDGE_GROUPS,
        "channels_redis groups this node is a member of (subscribed to, with pub/sub)."
    );
    describe_counter!(
        JWKS_FETCHES,
        "Fetches of identity providers' key sets (jwks_url, oidc_issuer), by issuer and result (ok, failed)."
    );
    describe_gauge!(JWKS_KEYS, "Signing keys in each issuer's fetched key set.");
    describe_counter!(
        JWKS_UNKNOWN_KID_REFRESHES,
        "Tokens naming a kid their issuer's set lacks, by issuer and result (fetched: the set was fetched again; limited: within min_refresh_interval)."
    );
    describe_gauge!(
        SESSIONS,
        "Sessions this node re-validates (one per session, however many sockets)."
    );
    describe_counter!(
        REVALIDATIONS,
        "Session re-validations, by authenticator and result (alive, dead, unavailable, failed_closed)."
    );
    describe_counter!(REFRESHES, "Client refresh requests, by result.");
    describe_counter!(
        API_REQUESTS,
        "Server API calls, by endpoint and HTTP status."
    );
    describe_counter!(
        ROUTE_CALLS,
        "Back-end route and hook calls, by route (action) and result (ok, status, timeout, unreachable, invalid)."
    );
    describe_histogram!(
        ROUTE_CALL_DURATION,
        Unit::Seconds,
        "Back-end route and hook call latency, by route (action)."
    );
    describe_gauge!(
        REGISTRY_CONNECTIONS,
        "Connections this node has written to the shared connection registry (Redis)."
    );
    describe_counter!(
        REGISTRY_WRITE_FAILURES,
        "Writes of this node's part of the connection registry that failed (retried as a full rewrite)."
    );
    describe_counter!(
        HISTORY_APPENDS,
        "Publications this node recorded in channel history (back ends' FCALLs are not counted)."
    );
    describe_histogram!(
        HISTORY_READ_SECONDS,
        Unit::Seconds,
        "History reads (recoveries, catch-ups, the history API)."
    );
    describe_counter!(
        RECOVERIES,
        "Joins with since, by result (recovered, not_recovered) and reason (none, epoch, trimmed, limit, ahead, unavailable)."
    );
    describe_counter!(
        PUBLICATIONS_REPLAYED,
        "Publications delivered from history: replayed to joining members, or caught up after a gap in the node's subscription."
    );
    describe_counter!(
        GAPS,
        "gap frames sent to members: publications they missed could not be delivered."
    );
}
