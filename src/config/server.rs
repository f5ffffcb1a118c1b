//! The `[server]` section: the listener, and the limits and timings of connections, with its
//! own validation.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::KeyError;
use crate::human_duration::HumanDuration;

/// The `[server]` section: the listener, limits and timings of connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// Origins allowed to open sockets from a browser; empty: any.
    pub allowed_origins: Vec<String>,
    pub max_frame_bytes: usize,
    pub max_channels_per_connection: usize,
    /// Frames per connection waiting to be written; overflow closes with 4010.
    pub outbound_queue: usize,
    /// Bytes per connection waiting to be written (one larger frame still fits alone); overflow
    /// closes with 4010.
    pub outbound_queue_bytes: usize,
    pub heartbeat_interval: HumanDuration,
    /// How long what the server writes may stay unacknowledged (a peer that stopped reading)
    /// before the kernel drops the connection.
    pub write_timeout: HumanDuration,
    /// A socket silent for this long (no frame, no pong) is closed with 1001.
    pub idle_timeout: HumanDuration,
    pub shutdown_grace: HumanDuration,
    /// Open connections on this node above which handshakes get 429; 0: no limit.
    pub max_connections: usize,
    /// Client frames per second per connection (token bucket refill).
    pub rate_limit: u32,
    /// Client frames a connection may send in a burst.
    pub rate_limit_burst: u32,
    /// A client's joins and leaves of `presence = true` channels per second (each one makes
    /// every member of the channel hear an event); joins beyond it get `rate_limited`.
    pub presence_rate: u32,
    /// Such joins and leaves a connection may make in a burst.
    pub presence_burst: u32,
    /// HTTP worker threads; 0: one per core.
    pub workers: usize,
    /// Threads running channel-group actors; 0: one per core.
    pub group_arbiters: usize,
    /// Run each channel's group on the HTTP worker thread of the connection that started it,
    /// instead of on the group arbiters: no hand-off between threads for members on that
    /// worker (a node on one core: none at all).
    pub groups_on_workers: bool,
    /// The most publications one `join` with `since` may replay; a client that missed more is
    /// answered `recovered: false` (docs/protocol.md §7), as is one whose replay would not fit
    /// its outbound queue.
    pub recovery_limit: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            max_frame_bytes: 65_536,
            max_channels_per_connection: 128,
            outbound_queue: 1024,
            outbound_queue_bytes: 1024 * 1024,
            heartbeat_interval: HumanDuration::from_secs(15),
            write_timeout: HumanDuration::from_secs(30),
            idle_timeout: HumanDuration::from_secs(45),
            shutdown_grace: HumanDuration::from_secs(10),
            max_connections: 0,
            rate_limit: 100,
            rate_limit_burst: 200,
            presence_rate: 1,
            presence_burst: 20,
            workers: 0,
            group_arbiters: 0,
            groups_on_workers: false,
            recovery_limit: 1000,
        }
    }
}

impl ServerConfig {
    /// Problems with the section, by key.
    pub fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: &str| {
            problems.push(KeyError::new(format!("server.{key}"), message));
        };
        if !(128..=16 * 1024 * 1024).contains(&self.max_frame_bytes) {
            problem("max_frame_bytes", "must be between 128 and 16777216");
        }
        for (key, value) in [
            (
                "max_channels_per_connection",
                self.max_channels_per_connection,
            ),
            ("outbound_queue", self.outbound_queue),
            ("rate_limit", self.rate_limit as usize),
            ("rate_limit_burst", self.rate_limit_burst as usize),
            ("presence_rate", self.presence_rate as usize),
            ("presence_burst", self.presence_burst as usize),
        ] {
            if value == 0 {
                problem(key, "must be at least 1");
            }
        }
        if !(1..=crate::broker::history::MAX_HISTORY_SIZE).contains(&self.recovery_limit) {
            problem("recovery_limit", "must be between 1 and 100000");
        }
        if self.outbound_queue_bytes < 1024 {
            problem("outbound_queue_bytes", "must be at least 1024");
        }
        if self.write_timeout < HumanDuration::from_millis(100) {
            problem("write_timeout", "must be at least 100ms");
        }
        if self.heartbeat_interval.0.is_zero() {
            problem("heartbeat_interval", "must be longer than 0s");
        }
        if self.idle_timeout <= self.heartbeat_interval {
            problem(
                "idle_timeout",
                "must be longer than server.heartbeat_interval",
            );
        }
        if self
            .allowed_origins
            .iter()
            .any(|origin| origin.trim().is_empty())
        {
            problem("allowed_origins", "must not contain empty origins");
        }
        problems
    }
}
