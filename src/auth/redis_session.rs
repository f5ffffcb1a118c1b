//! The `redis_session` authenticator: a session id from a cookie, looked up in Redis.
//!
//! The value stored under `key` (with `{id}` replaced by the cookie's value) must be JSON; its
//! `user_field` is the user id. The lookup itself goes through a [`SessionStore`], which the
//! composition root provides (`broker::redis::RedisKeys`), so this module knows no Redis client.
//!
//! A cookie naming no session, or a session without a user, is "not mine": that is how Django
//! treats a stale `sessionid` (an anonymous visitor), so the chain goes on. Redis being
//! unreachable refuses the handshake with 503. Re-validation reads the key again: gone, or now
//! another user, ends the session.

use crate::config::KeyError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{AuthError, AuthFuture, Authenticator, Revalidation};
use super::identity::{Credential, id_of};
use super::{Handshake, Identity};
use crate::metrics as names;

/// Where session values live: one `GET`.
pub trait SessionStore: Send + Sync + 'static {
    /// The value under `key`; `Ok(None)` when there is none, `Err` when the store cannot answer.
    fn get<'a>(&'a self, key: &'a str) -> AuthFuture<'a, Option<String>>;
}

/// The placeholder in `key` replaced by the session id.
pub const ID_PLACEHOLDER: &str = "{id}";

/// The `[auth.redis_session]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSessionConfig {
    /// The Redis holding sessions; empty: `broker.url`.
    pub url: String,
    /// The cookie holding the session id.
    pub cookie: String,
    /// The key pattern; `{id}` is replaced by the cookie's value.
    pub key: String,
    /// The JSON field of the value holding the user id (Django's is `_auth_user_id`).
    pub user_field: String,
}

impl Default for RedisSessionConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            cookie: "sessionid".to_owned(),
            key: "session:{id}".to_owned(),
            user_field: "_auth_user_id".to_owned(),
        }
    }
}

impl RedisSessionConfig {
    /// Problems with the section, as `(key, message)`.
    pub fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        if self.cookie.is_empty() {
            problems.push(KeyError::new(
                "auth.redis_session.cookie",
                "must not be empty",
            ));
        }
        if !self.key.contains(ID_PLACEHOLDER) {
            problems.push(KeyError::new(
                "auth.redis_session.key",
                format!("must contain {ID_PLACEHOLDER}"),
            ));
        }
        if self.user_field.is_empty() {
            problems.push(KeyError::new(
                "auth.redis_session.user_field",
                "must not be empty",
            ));
        }
        problems
    }
}

/// The user id under `field` of a session value (JSON); `None` when it is not JSON, not an
/// object, or has no usable id there. Bytes from Redis: checked whole.
pub fn user_in_session(value: &str, field: &str) -> Option<String> {
    serde_json::from_str::<Value>(value)
        .ok()
        .and_then(|session| session.get(field).and_then(id_of))
}

/// Whether an unreadable (not JSON) session value was logged already.
static NOT_JSON_LOGGED: AtomicBool = AtomicBool::new(false);

pub struct RedisSessionAuthenticator {
    store: Arc<dyn SessionStore>,
    config: RedisSessionConfig,
}

impl RedisSessionAuthenticator {
    pub fn new(config: &RedisSessionConfig, store: Arc<dyn SessionStore>) -> Self {
        Self {
            store,
            config: config.clone(),
        }
    }

    /// The user of session `id`: `Ok(None)` when there is no such session or it has no user.
    async fn user_of(&self, id: &str) -> Result<Option<String>, AuthError> {
        let key = self.config.key.replace(ID_PLACEHOLDER, id);
        let started = Instant::now();
        let value = self.store.get(&key).await;
        metrics::histogram!(names::AUTH_BACKEND_DURATION, "authenticator" => "redis_session")
            .record(started.elapsed().as_secs_f64());
        let value = value.inspect_err(|_| {
            metrics::counter!(names::AUTH_BACKEND_ERRORS, "authenticator" => "redis_session")
                .increment(1);
        })?;
        Ok(value.and_then(|text| {
            let user = user_in_session(&text, &self.config.user_field);
            if user.is_none() {
                // Not the key: it holds the session id, which the log must not.
                tracing::debug!(field = %self.config.user_field, "session value has no user");
                if serde_json::from_str::<Value>(&text).is_err()
                    && !NOT_JSON_LOGGED.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        "a session value is not JSON, so its visitor counts as logged out (logged \
                         once); Django's own sessions are pickled: use the mirrored engines of \
                         switchboard_django.sessions (docs/django.md)"
                    );
                }
            }
            user
        }))
    }
}

impl Authenticator for RedisSessionAuthenticator {
    fn name(&self) -> &'static str {
        "redis_session"
    }

    fn uses_ambient_credentials(&self) -> bool {
        true
    }

    fn authenticate<'a>(&'a self, handshake: &'a Handshake) -> AuthFuture<'a, Option<Identity>> {
        Box::pin(async move {
            let Some(id) = handshake
                .cookie(&self.config.cookie)
                .filter(|id| !id.is_empty() && !id.contains(['{', '}']))
            else {
                return Ok(None);
            };
            Ok(self.user_of(id).await?.map(|user| Identity {
                user: Some(user),
                session: Some(id.to_owned()),
                authenticator: "redis_session",
                credential: Some(Credential::SessionId(Arc::from(id))),
                ..Identity::default()
            }))
        })
    }

    fn revalidate<'a>(&'a self, identity: &'a Identity) -> AuthFuture<'a, Revalidation> {
        Box::pin(async move {
            let Some(Credential::SessionId(id)) = &identity.credential else {
                return Ok(Revalidation::Alive {
                    expires_at: identity.expires_at,
                });
            };
            Ok(match self.user_of(id).await {
                Ok(user) if user.is_some() && user == identity.user => Revalidation::Alive {
                    expires_at: identity.expires_at,
                },
                Ok(_) => Revalidation::Dead,
                Err(err) => Revalidation::Unknown(err.to_string()),
            })
        })
    }
}
