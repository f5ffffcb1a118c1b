//! Who is on the other end of a socket, and whether their session is still alive.
//!
//! A handshake (headers, cookies, query, peer address; see [`Handshake`]) is turned into an
//! [`Identity`] by an [`AuthChain`]: the configured [`Authenticator`]s are tried in order and each
//! answers "yes, this is X" (`Ok(Some(identity))`), "no, reject" (`Err`), or "not mine, ask the
//! next" (`Ok(None)`). When nobody claims the handshake, the connection is anonymous if
//! `[auth] anonymous = true`, else refused with 401.
//!
//! The authenticators, one file each: [`jwt`] (signed tokens), [`gateway`] (a trusted proxy's
//! headers), [`introspect`] (a back-end view asked over HTTP), [`redis_session`] (a session
//! cookie looked up in Redis through a [`SessionStore`]).
//!
//! The same seam answers the second question, "is this session still alive?", with a
//! [`Revalidation`]. The timers that ask it live elsewhere (`connection` for expiry, `sessions`
//! for re-validation); this module only answers.
//!
//! This module knows no actix and no sockets: the HTTP edge (`api::ws`) builds the `Handshake`.

mod chain;
pub mod gateway;
mod handshake;
mod identity;
pub mod introspect;
pub mod jwks_remote;
pub mod jwt;
mod jwt_reload;
pub mod redis_session;
mod rsa_verify;

use crate::config::KeyError;
use std::sync::Arc;

pub use chain::{AuthChain, AuthError, AuthFuture, Authenticator, RefusalReason, Revalidation};
pub use handshake::{Duplicate, Handshake};
pub use identity::{Credential, Identity, MAX_EXPIRES_AT, clamp_expiry, unix_now};
pub use redis_session::SessionStore;

use serde::{Deserialize, Serialize};

use crate::human_duration::HumanDuration;
use gateway::{GatewayAuthenticator, GatewayConfig};
use introspect::{IntrospectAuthenticator, IntrospectConfig};
use jwt::{JwtAuthenticator, JwtConfig};
use redis_session::{RedisSessionAuthenticator, RedisSessionConfig};

/// The authenticator names `[auth] order` may list, in their default order.
pub const AUTHENTICATORS: [&str; 4] = ["jwt", "gateway", "introspect", "redis_session"];

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept connections that no authenticator claims, as anonymous (user `null`).
    pub anonymous: bool,
    /// The order in which the configured authenticators are tried; empty: jwt, gateway,
    /// introspect, redis_session.
    pub order: Vec<String>,
    /// How often sessions from introspection or Redis are checked again (with jitter).
    pub revalidate_interval: HumanDuration,
    /// How long sockets stay open while their session cannot be checked (back end down) before
    /// they are closed with 4001 (fail-open, then fail-closed).
    pub revalidate_grace: HumanDuration,
    pub jwt: Option<JwtConfig>,
    pub gateway: Option<GatewayConfig>,
    pub introspect: Option<IntrospectConfig>,
    pub redis_session: Option<RedisSessionConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: true,
            order: Vec::new(),
            revalidate_interval: HumanDuration::from_secs(60),
            revalidate_grace: HumanDuration::from_secs(300),
            jwt: None,
            gateway: None,
            introspect: None,
            redis_session: None,
        }
    }
}

impl AuthConfig {
    /// The configured authenticators' names, in the order they are tried.
    fn ordered(&self) -> Vec<&str> {
        if self.order.is_empty() {
            AUTHENTICATORS
                .into_iter()
                .filter(|name| self.is_configured(name))
                .collect()
        } else {
            self.order.iter().map(String::as_str).collect()
        }
    }

    fn is_configured(&self, name: &str) -> bool {
        match name {
            "jwt" => self.jwt.is_some(),
            "gateway" => self.gateway.is_some(),
            "introspect" => self.introspect.is_some(),
            "redis_session" => self.redis_session.is_some(),
            _ => false,
        }
    }

    /// Problems with the section, by key; reads the key files to check them.
    pub fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        for (index, name) in self.order.iter().enumerate() {
            if !AUTHENTICATORS.contains(&name.as_str()) {
                problems.push(KeyError::new(
                    format!("auth.order[{index}]"),
                    format!("unknown authenticator {name:?} (expected one of {AUTHENTICATORS:?})"),
                ));
            } else if !self.is_configured(name) {
                problems.push(KeyError::new(
                    format!("auth.order[{index}]"),
                    format!("{name:?} is listed but [auth.{name}] is not configured"),
                ));
            } else if self.order[..index].contains(name) {
                problems.push(KeyError::new(
                    format!("auth.order[{index}]"),
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        if !self.order.is_empty() {
            for name in AUTHENTICATORS {
                if self.is_configured(name) && !self.order.iter().any(|listed| listed == name) {
                    problems.push(KeyError::new(
                        "auth.order".to_owned(),
                        format!("[auth.{name}] is configured but not listed"),
                    ));
                }
            }
        }
        if self.revalidate_interval.0.is_zero() {
            problems.push(KeyError::new(
                "auth.revalidate_interval".to_owned(),
                "must be longer than 0s".to_owned(),
            ));
        }
        if let Some(Err(problem)) = self.jwt.as_ref().map(JwtAuthenticator::check) {
            problems.push(problem);
        }
        if let Some(Err(problem)) = self.gateway.as_ref().map(GatewayAuthenticator::from_config) {
            problems.push(problem);
        }
        if let Some(Err(problem)) = self
            .introspect
            .as_ref()
            .map(IntrospectAuthenticator::from_config)
        {
            problems.push(problem);
        }
        if let Some(redis_session) = &self.redis_session {
            problems.extend(redis_session.problems());
        }
        problems
    }

    /// The section with its secrets (the JWT secret, a password in the session Redis's URL)
    /// replaced for printing.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        if let Some(jwt) = shown.jwt.as_mut().filter(|jwt| !jwt.secret.is_empty()) {
            jwt.secret = crate::config::REDACTED.to_owned();
        }
        if let Some(sessions) = shown.redis_session.as_mut() {
            sessions.url = crate::broker::redis::redacted(&sessions.url);
        }
        shown
    }
}

impl AuthChain {
    /// Builds the configured chain. `sessions` is the store `redis_session` reads; it must be
    /// given when that authenticator is configured. An error (the config was validated first)
    /// is a key file that changed in between, or a missing session store.
    pub fn from_config(
        config: &AuthConfig,
        sessions: Option<Arc<dyn SessionStore>>,
    ) -> Result<Self, KeyError> {
        let mut authenticators: Vec<Box<dyn Authenticator>> = Vec::new();
        for name in config.ordered() {
            match name {
                "jwt" => {
                    if let Some(jwt) = &config.jwt {
                        authenticators.push(Box::new(JwtAuthenticator::from_config(jwt)?));
                    }
                }
                "gateway" => {
                    if let Some(gateway) = &config.gateway {
                        authenticators.push(Box::new(GatewayAuthenticator::from_config(gateway)?));
                    }
                }
                "introspect" => {
                    if let Some(introspect) = &config.introspect {
                        authenticators
                            .push(Box::new(IntrospectAuthenticator::from_config(introspect)?));
                    }
                }
                "redis_session" => {
                    if let Some(redis_session) = &config.redis_session {
                        let store = sessions.clone().ok_or_else(|| {
                            KeyError::new(
                                "auth.redis_session.url",
                                "no Redis to read sessions from",
                            )
                        })?;
                        authenticators.push(Box::new(RedisSessionAuthenticator::new(
                            redis_session,
                            store,
                        )));
                    }
                }
                other => {
                    return Err(KeyError::new(
                        "auth.order",
                        format!("unknown authenticator {other:?}"),
                    ));
                }
            }
        }
        Ok(Self::new(authenticators, config.anonymous))
    }
}
