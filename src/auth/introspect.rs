//! The `introspect` authenticator: asks a back-end view who the handshake belongs to.
//!
//! The handshake's `forward_headers` (by default `Cookie` and `Authorization`) are sent with a
//! `GET` to `url`, typically a small Django view behind the same session middleware as the rest
//! of the site. It answers:
//! - 200 `{"user": "42", "session": "…", "channels": [...], "expires_in": 3600}`: accepted
//!   (only `user` is required);
//! - 401 or 403: refused (HTTP 401 to the client);
//! - anything else, an unreadable body, or no answer within `timeout`: the back end is
//!   unavailable (HTTP 503 to the client), counted in `switchboard_auth_backend_errors_total`,
//!   and logged once per outage (a warning when it starts, a note when answers come back).
//!
//! Answers are cached for `cache_ttl` by the forwarded credentials, and concurrent handshakes
//! with the same credentials share one call, so a page opening ten sockets costs one request.
//! A call runs as a task of its own, bounded by `timeout`, whether or not any handshake still
//! waits for it (a client that hangs up mid-handshake cannot leave a call, and its HTTP
//! connection, behind), and at most [`MAX_IN_FLIGHT`] calls run at once per node: past that,
//! handshakes get 503 instead of queueing more work for an unauthenticated crowd.
//! Re-validation repeats the call (bypassing the cache, refreshing it): 200 keeps the session
//! alive, 401/403 ends it, anything else is `Unknown` and the caller's grace applies.

use crate::config::KeyError;
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
/// Introspection calls in flight at once on a node (distinct credentials; equal ones share).
pub const MAX_IN_FLIGHT: usize = 256;

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
    /// A call running as its own task; askers share its answer.
    InFlight(Shared<BoxFuture<'static, Answer>>),
    Answered {
        at: Instant,
        answer: Answer,
    },
}

/// Answers by credentials, and how many of them are calls still in flight.
#[derive(Default)]
struct Cache {
    entries: HashMap<Forwarded, CacheEntry>,
    in_flight: usize,
}

pub struct IntrospectAuthenticator {
    /// Whether the back end is failing now (one warning per outage, not one per call).
    outage: Arc<Outage>,
    client: reqwest::Client,
    url: Arc<str>,
    forward_headers: Vec<String>,
    cache_ttl: Duration,
    timeout: Duration,
    cache: Arc<Mutex<Cache>>,
}

impl IntrospectAuthenticator {
    pub fn from_config(config: &IntrospectConfig) -> Result<Self, KeyError> {
        let key = |name: &str| format!("auth.introspect.{name}");
        let url = reqwest::Url::parse(&config.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| {
                KeyError::new(
                    key("url"),
                    format!("{:?} is not an http:// or https:// URL", config.url),
                )
            })?;
        if config.forward_headers.is_empty() {
            return Err(KeyError::new(
                key("forward_headers"),
                "must name at least one header (cookie, authorization)".to_owned(),
            ));
        }
        if config.timeout.0.is_zero() {
            return Err(KeyError::new(
                key("timeout"),
                "must be longer than 0s".to_owned(),
            ));
        }
        let client = crate::outbound_http::client(Some(config.timeout.0)).map_err(|err| {
            KeyError::new(key("url"), format!("cannot build an HTTP client: {err}"))
        })?;
        Ok(Self {
            outage: Arc::new(Outage::default()),
            client,
            url: Arc::from(url.as_str()),
            forward_headers: config
                .forward_headers
                .iter()
                .map(|name| name.to_ascii_lowercase())
                .collect(),
            cache_ttl: config.cache_ttl.0,
            timeout: config.timeout.0,
            cache: Arc::new(Mutex::new(Cache::default())),
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
            match cache.entries.get(&forwarded) {
                Some(CacheEntry::Answered { at, answer }) if at.elapsed() < self.cache_ttl => {
                    return answer.clone();
                }
                Some(CacheEntry::InFlight(call)) => call.clone(),
                _ if cache.in_flight >= MAX_IN_FLIGHT => {
                    metrics::counter!(names::AUTH_BACKEND_ERRORS, "authenticator" => "introspect")
                        .increment(1);
                    return Err(AuthError::Unavailable(format!(
                        "{MAX_IN_FLIGHT} introspection calls are already in flight"
                    )));
                }
                _ => {
                    let call = self.start_call(&mut cache, forwarded.clone());
                    cache
                        .entries
                        .insert(forwarded, CacheEntry::InFlight(call.clone()));
                    call
                }
            }
        };
        call.await
    }

    /// Starts one call as a task of its own (counted in flight until it ends); its answer,
    /// unless the back end was unavailable, replaces the cache entry. The returned future only
    /// waits for that task, so it may be dropped without stopping it.
    fn start_call(
        &self,
        cache: &mut Cache,
        forwarded: Forwarded,
    ) -> Shared<BoxFuture<'static, Answer>> {
        cache.in_flight += 1;
        let client = self.client.clone();
        let url = self.url.clone();
        let outage = self.outage.clone();
        let shared_cache = self.cache.clone();
        let (ttl, timeout) = (self.cache_ttl, self.timeout);
        let task = tokio::spawn(async move {
            let answer = tokio::time::timeout(timeout, call(&client, &url, &forwarded))
                .await
                .unwrap_or_else(|_| {
                    Err(AuthError::Unavailable(format!(
                        "introspection call took longer than {timeout:?}"
                    )))
                });
            outage.record(&url, &answer);
            let mut cache = lock(&shared_cache);
            cache.in_flight = cache.in_flight.saturating_sub(1);
            let in_flight_here =
                matches!(cache.entries.get(&forwarded), Some(CacheEntry::InFlight(_)));
            if matches!(answer, Err(AuthError::Unavailable(_))) || ttl.is_zero() {
                if in_flight_here {
                    cache.entries.remove(&forwarded);
                }
            } else {
                if cache.entries.len() >= CACHE_CAPACITY {
                    cache.entries.retain(|_, entry| match entry {
                        CacheEntry::Answered { at, .. } => at.elapsed() < ttl,
                        CacheEntry::InFlight(_) => true,
                    });
                    if cache.entries.len() >= CACHE_CAPACITY {
                        cache
                            .entries
                            .retain(|_, entry| matches!(entry, CacheEntry::InFlight(_)));
                    }
                }
                cache.entries.insert(
                    forwarded,
                    CacheEntry::Answered {
                        at: Instant::now(),
                        answer: answer.clone(),
                    },
                );
            }
            answer
        });
        async move {
            task.await.unwrap_or_else(|_| {
                Err(AuthError::Unavailable(
                    "the introspection call was stopped".to_owned(),
                ))
            })
        }
        .boxed()
        .shared()
    }

    /// A fresh call for re-validation (bypassing the cache, refreshing it).
    async fn call_again(&self, forwarded: Forwarded) -> Answer {
        let call = {
            let mut cache = lock(&self.cache);
            if cache.in_flight >= MAX_IN_FLIGHT {
                return Err(AuthError::Unavailable(format!(
                    "{MAX_IN_FLIGHT} introspection calls are already in flight"
                )));
            }
            self.start_call(&mut cache, forwarded)
        };
        call.await
    }
}

impl Authenticator for IntrospectAuthenticator {
    fn name(&self) -> &'static str {
        "introspect"
    }

    fn uses_ambient_credentials(&self) -> bool {
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
            let answer = self.call_again(forwarded.clone()).await;
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

/// The largest introspection answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

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
    let unavailable = AuthError::Unavailable;
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
    let body = crate::outbound_http::body_within(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|err| unavailable(format!("introspection answer: {err}")))?;
    let identity = read_answer(&body).map_err(unavailable)?;
    Ok(Identity {
        credential: Some(Credential::Headers(forwarded.clone())),
        ..identity
    })
}

/// The identity a 200 answer's body names (without the credential to ask again with); an
/// unreadable answer is why, for the log. Bytes from the back end: checked whole.
pub fn read_answer(body: &[u8]) -> Result<Identity, String> {
    let body: Introspection = serde_json::from_slice(body)
        .map_err(|err| format!("introspection answer is not the expected JSON: {err}"))?;
    let user =
        id_of(&body.user).ok_or_else(|| "introspection answer has no \"user\"".to_owned())?;
    Ok(Identity {
        user: Some(user),
        session: body.session.as_ref().and_then(id_of),
        expires_at: body
            .expires_in
            .map(|seconds| super::identity::clamp_expiry(unix_now().saturating_add(seconds))),
        channels: body.channels,
        authenticator: "introspect",
        credential: None,
    })
}

/// Whether the back end is failing, so an outage is logged once rather than once per call.
#[derive(Default)]
struct Outage {
    failing: std::sync::atomic::AtomicBool,
}

impl Outage {
    /// Counts a failed call, and logs the first failure of an outage and its end.
    fn record(&self, url: &str, answer: &Answer) {
        use std::sync::atomic::Ordering;
        match answer {
            Err(AuthError::Unavailable(detail)) => {
                metrics::counter!(names::AUTH_BACKEND_ERRORS, "authenticator" => "introspect")
                    .increment(1);
                if !self.failing.swap(true, Ordering::SeqCst) {
                    tracing::warn!(url, error = %detail, "introspection back end unavailable; handshakes of its users get 503 until it answers (logged once)");
                } else {
                    tracing::debug!(url, error = %detail, "introspection back end still unavailable");
                }
            }
            _ => {
                if self.failing.swap(false, Ordering::SeqCst) {
                    tracing::info!(url, "introspection back end answers again");
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
