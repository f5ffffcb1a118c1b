//! # Switchboard
//!
//! A realtime WebSocket channel server. Every connection is an actix actor that owns its
//! upgraded socket (taken from actix-http at the upgrade), authenticates once at the handshake,
//! joins channel-group actors keyed by name, and receives what is published to those channels.
//! `ARCHITECTURE.md` is the guided tour; this is the map.
//!
//! ## Codemap (dependencies flow downward only)
//!
//! - [`protocol`]: the wire contract: frames, channel names, encodings and their nesting limit,
//!   and everything a client or back end can be told (close reasons, error codes, refusal
//!   codes). No IO, no actix.
//! - [`human_duration`]: `"15s"`-style durations for the config.
//! - `key_file`: reading the key and certificate files the config names, bounded in size.
//! - `outbound_http`: the HTTP client for calls to back ends (no redirects, bounded pool).
//! - [`auth`]: `Identity`, the `Authenticator` chain (`jwt`, `gateway`, `introspect`,
//!   `redis_session`), `Revalidation`. No actix, no Redis client.
//! - [`backend`]: calls to the application back end: action routes (`[routes]`) and the
//!   connect/disconnect hooks, bounded in time and concurrency; what an answer instructs.
//! - [`broker`]: the `Broker` trait, the sink it pushes into, `MemoryBroker`, `RedisBroker` (and
//!   the Redis stores it implements for others: the registry's, the Redis sessions').
//! - [`bridge`]: the channels_redis bridge (`[bridge.channels_redis]`): a decorator of the
//!   broker that joins Django's channel-layer groups for the channels with local members and
//!   hands what `group_send` writes there to the broker's sink.
//! - [`metrics`]: every metric name, the Prometheus recorder.
//! - [`hub`]: channel-group actors and their table, memberships, outbound queues, channel
//!   policy, the node's connections (by user, session and channel), the sink the broker delivers
//!   into.
//! - `roster`: the connection registry, whole (its store contract, change log, `[roster]`):
//!   this node's connections written out to the store (Redis) with a heartbeat, and
//!   cluster-wide queries (connections, channels, presence).
//! - `sessions`: the node's table of back-end sessions, re-validated once per session per
//!   interval; a dead one closes all its sockets with 4001.
//! - [`limits`]: connections per user and per client address across the cluster (through a
//!   store the Redis broker implements), the handshake rate per address, the client address
//!   behind trusted proxies.
//! - `connection`: the per-socket actor (lifecycle, inbound frames, memberships, back-end calls),
//!   its socket (a reader of client messages, a writer task draining the outbound queue),
//!   inbound rate limits.
//! - [`config`]: assembles the sections of the TOML + environment configuration; each section
//!   validates itself with errors that name the key.
//! - `api`: HTTP edges: `/ws` (the upgrade service the HTTP server hands handshakes to), `/metrics`, `/healthz`, `/readyz`, the server API.
//! - [`api_client`]: the server API's client, behind the CLI's management commands.
//! - [`server`]: the composition root and graceful shutdown.
//!
//! ## Invariants, stated as absences
//!
//! - Only the broker module knows how publications travel between nodes, and only
//!   `broker::redis` imports `fred` (its `RedisKeys` also serves `auth`'s session lookups),
//!   with one exception: `bridge` speaks channels_redis's own Redis layout, on clients
//!   `broker::redis` starts for it.
//! - `protocol` and `auth` use no actix; only `api` and `connection` touch WebSocket types.
//! - No actor handler blocks or awaits network IO in place: it spawns the future and maps the
//!   result back into the actor.
//! - No send toward a client is unbounded: every frame goes through a bounded queue with
//!   `try_send`, and a full queue closes the socket with 4010. Publications reach a channel
//!   group's bounded mailbox with `try_send` too; a full one refuses the publication.
//! - Nothing on the fan-out path serialises per member: a group encodes a publication once per
//!   encoding and shares the bytes.

pub(crate) mod api;
pub mod api_client;
pub mod auth;
pub mod backend;
pub mod bridge;
pub mod broker;
pub mod config;
pub(crate) mod connection;
pub mod hub;
pub mod human_duration;
pub(crate) mod key_file;
pub mod limits;
pub mod metrics;
pub(crate) mod outbound_http;
pub mod protocol;
pub(crate) mod roster;
pub mod server;
pub(crate) mod sessions;
