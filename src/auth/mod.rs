//! Who is on the other end of a socket, and whether their session is still alive.
//!
//! A handshake (headers, cookies, query, peer address; see [`Handshake`]) is turned into an
//! [`Identity`] by an [`AuthChain`]: the configured [`Authenticator`]s are tried in order and each
//! answers "yes, this is X" (`Ok(Some(identity))`), "no, reject" (`Err`), or "not mine, ask the
//! next" (`Ok(None)`). When nobody claims the handshake, the connection is anonymous if
//! `[auth] anonymous = true`, else refused with 401.
//!
//! The same seam answers the second question, "is this session still alive?", with a
//! [`Revalidation`]. The connection actor owns the timers; this module only answers.
//!
//! This module knows no actix and no sockets: the HTTP edge (`api::ws`) builds the `Handshake`.

mod chain;
mod handshake;
mod identity;

pub use chain::{AuthChain, AuthError, AuthFuture, Authenticator, Revalidation};
pub use handshake::Handshake;
pub use identity::Identity;

use serde::{Deserialize, Serialize};

use crate::human_duration::HumanDuration;

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept connections that no authenticator claims, as anonymous (user `null`).
    pub anonymous: bool,
    /// How often sessions from introspection or Redis are checked again (with jitter).
    pub revalidate_interval: HumanDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: true,
            revalidate_interval: HumanDuration::from_secs(60),
        }
    }
}
