//! The `introspect` authenticator: asks a back-end view who the handshake belongs to.
//!
//! The handshake's `forward_headers` (by default `Cookie` and `Authorization`) are sent with a
//! `GET` to `url`, typically a small Django view behind the same session middleware as the rest
//! of the site. It answers:
//! - 200 `{"user": "42", "session": "…", "channels": [...], "expires_in": 3600}`: accepted
//!   (only `user` is required);
//! - 401 or 403: refused (HTTP 401 to the client);
//! - anything else, an unreadable body, or no answer within `timeout`: the back end is
//!   unavailable (HTTP 503 to the client), counted in `switchboard_auth_backend_errors_total`.
//!
//! Answers are cached for `cache_ttl` by the forwarded credentials, and concurrent handshakes
//! with the same credentials share one call, so a page opening ten sockets costs one request.
//! Re-validation repeats the call (bypassing the cache, refreshing it): 200 keeps the session
//! alive, 401/403 ends it, anything else is `Unknown` and the caller's grace applies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{AuthError, AuthFuture, Authenticator, RefusalReason, Revalidation};
use super::identity::{Credential, id_of, unix_now};
use super::{Handshake, Identity};
use crate::human_duration::HumanDuration;
use crate::metrics as names;

/// Cached answers above which expired ones are swept (and, if still full, all are dropped).
const CACHE_CAPACITY: usize = 10_000;

/// The `[auth.introspect]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectConfig {
    /// The back-end view (`http://` or `https://`).
    pub url: String,
    /// How long a call may take before the handshake gets 503.
    pub timeout: HumanDuration,
    /// Handshake headers sent to the back end; a handshake with none of them is not this
    /// authenticator's.
    pub forward_headers: Vec<String>,
    /// How long an answer is reused for the same credentials; `"0s"`: never.
    pub cache_ttl: HumanDuration,
}

impl Default for IntrospectConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout: HumanDuration::from_secs(2),
            forward_headers: vec!["cookie".to_owned(), "authorization".to_owned()],
            cache_ttl: HumanDuration::from_secs(5),
        }
    }
}

/// The forwarded headers: what identifies a credential to the back end (and the cache key).
type Forwarded = Arc<[(String, String)]>;

/// What the back end says about a credential (a clonable result, so callers can share it).
type Answer = Result<Identity, AuthError>;

enum CacheEntry {
    InFlight(Shared<BoxFuture<'static, Answer>>),
    Answered { at: Instant, answer: Answer },
}

pub struct IntrospectAuthenticator {
    client: reqwest::Client,
    url: Arc<str>,
    forward_headers: Vec<String>,
    cache_ttl: Duration,
    cache: Arc<Mutex<HashMap<Forwarded, CacheEntry>>>,
}

impl IntrospectAuthenticator {
    pub fn from_config(config: &IntrospectConfig) -> Result<Self, (String, String)> {
        let key = |name: &str| format!("auth.introspect.{name}");
        let url = reqwest::Url::parse(&config.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| {
                (
                    key("url"),
                    format!("{:?} is not an http:// or https:// URL", config.url),
                )
            })?;
        if config.forward_headers.is_empty() {
            return Err((
                key("forward_headers"),
                "must name at least one header (cookie, authorization)".to_owned(),
            ));
        }
        if config.timeout.0.is_zero() {
            return Err((key("timeout"), "must be longer than 0s".to_owned()));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| (key("url"), format!("cannot build an HTTP client: {err}")))?;
        Ok(Self {
            client,
            url: Arc::from(url.as_str()),
            forward_headers: config
                .forward_headers
                .iter()
                .map(|name| name.to_ascii_lowercase())
                .collect(),
            cache_ttl: config.cache_ttl.0,
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The configured headers present in the handshake, in configured order.
    fn forwarded(&self, handshake: &Handshake) -> Forwarded {
        self.forward_headers
            .iter()
            .filter_map(|name| {
                handshake
                    .header(name)
                    .map(|value| (name.clone(), value.to_owned()))
            })
            .collect()
    }

    /// The cached or in-flight answer for these credentials, or a new call shared with every
    /// concurrent asker.
    async fn answer(&self, forwarded: Forwarded) -> Answer {
        let call = {
            let mut cache = lock(&self.cache);
            match cache.get(&forwarded) {
                Some(CacheEntry::Answered { at, answer }) if at.elapsed() < self.cache_ttl => {
                    return answer.clone();
                }
                Some(CacheEntry::InFlight(call)) => call.clone(),
                _ => {
                    let call = self.call_and_cache(forwarded.clone()).boxed().shared();
                    cache.insert(forwarded, CacheEntry::InFlight(call.clone()));
                    call
                }
            }
        };
        call.await
    }

    /// One call whose answer (unless the back end was unavailable) replaces the cache entry.
    fn call_and_cache(
        &self,
        forwarded: Forwarded,
    ) -> impl Future<Output = Answer> + Send + 'static {
        let client = self.client.clone();
        let url = self.url.clone();
        let cache = self.cache.clone();
        let ttl = self.cache_ttl;
        async move {
            let answer = call(&client, &url, &forwarded).await;
            let mut cache = lock(&cache);
            if matches!(answer, Err(AuthError::Unavailable(_))) || ttl.is_zero() {
                cache.remove(&forwarded);
            } else {
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, entry| {
                        matches!(entry, CacheEntry::Answered { at, .. } if at.elapsed() < ttl)
                    });
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(
                    forwarded,
                    CacheEntry::Answered {
                        at: Instant::now(),
                        answer: answer.clone(),
                    },
                );
            }
            answer
        }
    }
}

impl Authenticator for IntrospectAuthenticator {
    fn name(&self) -> &'static str {
        "introspect"
    }

    fn reads_cookies(&self) -> bool {
        self.forward_headers.iter().any(|name| name == "cookie")
    }

    fn authenticate<'a>(&'a self, handshake: &'a Handshake) -> AuthFuture<'a, Option<Identity>> {
        Box::pin(async move {
            let forwarded = self.forwarded(handshake);
            if forwarded.is_empty() {
                return Ok(None);
            }
            self.answer(forwarded).await.map(Some)
        })
    }

    fn revalidate<'a>(&'a self, identity: &'a Identity) -> AuthFuture<'a, Revalidation> {
        Box::pin(async move {
            let Some(Credential::Headers(forwarded)) = &identity.credential else {
                return Ok(Revalidation::Alive {
                    expires_at: identity.expires_at,
                });
            };
            let answer = self.call_and_cache(forwarded.clone()).await;
            Ok(match answer {
                Ok(alive) if alive.user == identity.user => Revalidation::Alive {
                    expires_at: alive.expires_at,
                },
                Ok(_) | Err(AuthError::Refused { .. }) => Revalidation::Dead,
                Err(err) => Revalidation::Unknown(err.to_string()),
            })
        })
    }
}

/// The body of a 200 answer.
#[derive(Deserialize)]
struct Introspection {
    user: Value,
    #[serde(default)]
    session: Option<Value>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

async fn call(client: &reqwest::Client, url: &str, forwarded: &Forwarded) -> Answer {
    let started = Instant::now();
    let mut request = client.get(url);
    for (name, value) in forwarded.iter() {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await;
    metrics::histogram!(names::AUTH_BACKEND_DURATION, "authenticator" => "introspect")
        .record(started.elapsed().as_secs_f64());
    let unavailable = |detail: String| {
        metrics::counter!(names::AUTH_BACKEND_ERRORS, "authenticator" => "introspect").increment(1);
        tracing::warn!(url, error = %detail, "introspection back end unavailable");
        AuthError::Unavailable(detail)
    };
    let response = response.map_err(|err| {
        let what = if err.is_timeout() {
            "timed out"
        } else {
            "failed"
        };
        unavailable(format!("introspection call {what}: {err}"))
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(AuthError::refused(
            RefusalReason::Rejected,
            format!("the session was refused by the back end ({status})"),
        ));
    }
    if status != reqwest::StatusCode::OK {
        return Err(unavailable(format!("introspection answered {status}")));
    }
    let body: Introspection = response.json().await.map_err(|err| {
        unavailable(format!(
            "introspection answer is not the expected JSON: {err}"
        ))
    })?;
    let user = id_of(&body.user)
        .ok_or_else(|| unavailable("introspection answer has no \"user\"".to_owned()))?;
    Ok(Identity {
        user: Some(user),
        session: body.session.as_ref().and_then(id_of),
        expires_at: body.expires_in.map(|seconds| unix_now() + seconds),
        channels: body.channels,
        authenticator: "introspect",
        credential: Some(Credential::Headers(forwarded.clone())),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
