//! Calls to the application's back end, the API Gateway model: a client frame whose `action`
//! has a route in `[routes]` (or falls to the `default` route) is POSTed to that URL, and the
//! answer becomes the client's `reply` (see [`instructions`]); the `connect` and `disconnect`
//! hooks are called when a socket opens and closes.
//!
//! Every call is a JSON POST of `{"connection", "user", "session", "action", "body"}` with the
//! identity repeated in `X-Switchboard-*` headers (and `X-Switchboard-Key: <[api] key>` when the
//! API key is set, so the back end can tell the calls are ours). Calls are bounded per node:
//! at most `[backend] concurrency` route calls in flight, and as many hook calls again (the
//! `connect` and `disconnect` hooks have their own permits, so sockets busy calling routes can
//! never delay another user's handshake), each (waiting for a slot included) within
//! `[backend] timeout`; a call that fails, times out or is answered with a non-2xx status is a
//! [`BackendError`], never a hang. Per connection, at most `max_calls_per_connection` route
//! calls are in flight (the connection refuses more with `rate_limited`), so one client cannot
//! take the node's pool.
//!
//! What it is not: it does not act on the answer (the connection does) and knows no actix.

pub mod instructions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::config::KeyError;
use crate::human_duration::HumanDuration;
use crate::metrics as names;
pub use instructions::Instructions;

/// The route that catches actions without a route of their own.
pub const DEFAULT_ROUTE: &str = "default";
/// The hook called before a socket is accepted.
pub const CONNECT_HOOK: &str = "connect";
/// The hook called after a socket closed.
pub const DISCONNECT_HOOK: &str = "disconnect";
/// Actions the server handles itself, which no route may take.
pub const BUILT_IN_ACTIONS: [&str; 5] = ["join", "leave", "publish", "ping", "refresh"];
/// The longest error text from a back end passed on to a client.
const MAX_REASON_BYTES: usize = 200;
/// The largest route or hook answer read (its reply goes to a client's bounded queue).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `[routes]`: action name → back-end URL; `default`, `connect` and `disconnect` are special.
pub type RoutesConfig = BTreeMap<String, String>;

/// `[backend]`: how route and hook calls are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// The longest a call may take, waiting for a free slot included.
    pub timeout: HumanDuration,
    /// Route calls in flight per node (and hook calls, separately, as many again).
    pub concurrency: usize,
    /// Route calls one connection may have in flight; more get `rate_limited`.
    pub max_calls_per_connection: usize,
    /// Handshake headers passed on to the `connect` hook (lower case).
    pub forward_headers: Vec<String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            timeout: HumanDuration::from_secs(5),
            concurrency: 64,
            max_calls_per_connection: 8,
            forward_headers: vec!["cookie".to_owned()],
        }
    }
}

/// Problems with `[routes]` and `[backend]`, by key.
pub fn problems(routes: &RoutesConfig, backend: &BackendConfig) -> Vec<KeyError> {
    let mut problems = Vec::new();
    for (action, url) in routes {
        let key = format!("routes.{action}");
        if BUILT_IN_ACTIONS.contains(&action.as_str()) {
            problems.push(KeyError::new(
                key,
                format!("{action:?} is handled by the server itself and cannot be routed"),
            ));
        } else if let Err(message) = parse_url(url) {
            problems.push(KeyError::new(key, message));
        }
    }
    if backend.timeout.0.is_zero() {
        problems.push(KeyError::new(
            "backend.timeout".to_owned(),
            "must be longer than 0s".to_owned(),
        ));
    }
    if backend.concurrency == 0 {
        problems.push(KeyError::new(
            "backend.concurrency".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    if backend.max_calls_per_connection == 0 {
        problems.push(KeyError::new(
            "backend.max_calls_per_connection".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    problems
}

fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("{url:?} is not a URL: {err}"))?;
    if matches!(parsed.scheme(), "http" | "https") {
        Ok(parsed)
    } else {
        Err(format!("{url:?} is not an http:// or https:// URL"))
    }
}

/// Why a call did not give an answer to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("the back end did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the back end is unreachable: {0}")]
    Unreachable(String),
    /// A non-2xx answer, with the back end's own `reason` (or `error`) when it gave one.
    #[error("the back end answered {status}{}", reason.as_ref().map(|reason| format!(": {reason}")).unwrap_or_default())]
    Status { status: u16, reason: Option<String> },
    #[error("the back end's answer is invalid: {0}")]
    InvalidAnswer(String),
}

impl BackendError {
    /// What the client is told: the back end's own status and `reason` when it answered (its
    /// words are meant for its users), else a neutral text (transport details are the
    /// operator's, in the log).
    pub fn client_reason(&self) -> String {
        match self {
            BackendError::Timeout(_) => "the back end did not answer in time".to_owned(),
            BackendError::Unreachable(_) => "the back end is unreachable".to_owned(),
            BackendError::Status { .. } => self.to_string(),
            BackendError::InvalidAnswer(_) => "the back end's answer is invalid".to_owned(),
        }
    }

    /// The `result` label of the route-call metric.
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::Timeout(_) => "timeout",
            BackendError::Unreachable(_) => "unreachable",
            BackendError::Status { .. } => "status",
            BackendError::InvalidAnswer(_) => "invalid",
        }
    }
}

/// Who a call is about.
#[derive(Debug, Clone)]
pub struct Caller {
    pub connection: Arc<str>,
    pub user: Option<String>,
    pub session: Option<String>,
}

/// A configured route: its name (the metric label) and URL.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    url: reqwest::Url,
}

/// The back-end client: routes, hooks, the concurrency bound.
#[derive(Debug)]
pub struct Backend {
    client: reqwest::Client,
    routes: BTreeMap<String, Route>,
    /// Route calls in flight per node.
    permits: Semaphore,
    /// Hook calls in flight per node, apart from the routes'.
    hook_permits: Semaphore,
    max_calls_per_connection: usize,
    timeout: Duration,
    forward_headers: Vec<String>,
    key: Option<String>,
}

impl Backend {
    /// `None` when `[routes]` is empty. `api_key` is sent as `X-Switchboard-Key`.
    pub fn from_config(
        routes: &RoutesConfig,
        config: &BackendConfig,
        api_key: &str,
    ) -> Result<Option<Arc<Self>>, KeyError> {
        if routes.is_empty() {
            return Ok(None);
        }
        let mut parsed = BTreeMap::new();
        for (name, url) in routes {
            let url = parse_url(url)
                .map_err(|message| KeyError::new(format!("routes.{name}"), message))?;
            parsed.insert(
                name.clone(),
                Route {
                    name: Arc::from(name.as_str()),
                    url,
                },
            );
        }
        let client = crate::outbound_http::client(None).map_err(|err| {
            KeyError::new("backend", format!("cannot build the HTTP client: {err}"))
        })?;
        Ok(Some(Arc::new(Self {
            client,
            routes: parsed,
            permits: Semaphore::new(config.concurrency),
            hook_permits: Semaphore::new(config.concurrency),
            max_calls_per_connection: config.max_calls_per_connection,
            timeout: config.timeout.0,
            forward_headers: config.forward_headers.clone(),
            key: (!api_key.is_empty()).then(|| api_key.to_owned()),
        })))
    }

    /// Registers every route's series at zero (see `metrics`).
    pub fn register_metrics(&self) {
        use crate::metrics::register;
        for route in self.routes.values() {
            for result in names::results::ROUTE_CALL {
                register::counter(
                    names::ROUTE_CALLS,
                    &[("action", &route.name), ("result", result)],
                );
            }
            register::histogram(names::ROUTE_CALL_DURATION, &[("action", &route.name)]);
        }
    }

    /// The route for a client action: its own, else `default`. Built-in actions and the hook
    /// names never reach here as routes of their own.
    pub fn route_for(&self, action: &str) -> Option<Route> {
        let own = (action != CONNECT_HOOK && action != DISCONNECT_HOOK)
            .then(|| self.routes.get(action))
            .flatten();
        own.or_else(|| self.routes.get(DEFAULT_ROUTE)).cloned()
    }

    /// The connect hook, if configured.
    pub fn connect_hook(&self) -> Option<Route> {
        self.routes.get(CONNECT_HOOK).cloned()
    }

    /// The disconnect hook, if configured.
    pub fn disconnect_hook(&self) -> Option<Route> {
        self.routes.get(DISCONNECT_HOOK).cloned()
    }

    /// How many route calls one connection may have in flight.
    pub fn max_calls_per_connection(&self) -> usize {
        self.max_calls_per_connection
    }

    /// Which handshake headers the connect hook receives.
    pub fn forwards_header(&self, name: &str) -> bool {
        self.forward_headers
            .iter()
            .any(|forwarded| forwarded.eq_ignore_ascii_case(name))
    }

    /// Calls `route` for `caller` with `body` and reads the answer.
    pub async fn call(
        &self,
        route: &Route,
        caller: &Caller,
        action: &str,
        body: Value,
        extra_headers: &[(String, String)],
    ) -> Result<Instructions, BackendError> {
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.timeout,
            self.exchange(route, caller, action, body, extra_headers),
        )
        .await
        .unwrap_or(Err(BackendError::Timeout(self.timeout)));
        let label = match &result {
            Ok(_) => "ok",
            Err(err) => err.label(),
        };
        metrics::counter!(names::ROUTE_CALLS, "action" => route.name.to_string(), "result" => label)
            .increment(1);
        metrics::histogram!(names::ROUTE_CALL_DURATION, "action" => route.name.to_string())
            .record(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            tracing::debug!(route = %route.name, connection = %caller.connection, error = %err, "back-end call failed");
        }
        result
    }

    async fn exchange(
        &self,
        route: &Route,
        caller: &Caller,
        action: &str,
        body: Value,
        extra_headers: &[(String, String)],
    ) -> Result<Instructions, BackendError> {
        let is_hook = matches!(&*route.name, CONNECT_HOOK | DISCONNECT_HOOK);
        let permits = if is_hook {
            &self.hook_permits
        } else {
            &self.permits
        };
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| BackendError::Unreachable("the back-end client is closed".to_owned()))?;
        let payload = json!({
            "connection": &*caller.connection,
            "user": caller.user,
            "session": caller.session,
            "action": action,
            "body": body,
        });
        let mut request = self
            .client
            .post(route.url.clone())
            .header("x-switchboard-connection", &*caller.connection)
            .header("x-switchboard-action", action)
            .json(&payload);
        if let Some(user) = &caller.user {
            request = request.header("x-switchboard-user", user);
        }
        if let Some(session) = &caller.session {
            request = request.header("x-switchboard-session", session);
        }
        if let Some(key) = &self.key {
            request = request.header("x-switchboard-key", key);
        }
        for (name, value) in extra_headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|err| BackendError::Unreachable(without_url(&err)))?;
        let status = response.status();
        let bytes = crate::outbound_http::body_within(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|err| match err {
                crate::outbound_http::BodyError::TooLarge(_) => {
                    BackendError::InvalidAnswer(err.to_string())
                }
                crate::outbound_http::BodyError::Read(detail) => BackendError::Unreachable(detail),
            })?;
        if !status.is_success() {
            return Err(BackendError::Status {
                status: status.as_u16(),
                reason: reason_of(&bytes),
            });
        }
        Instructions::from_body(&bytes).map_err(BackendError::InvalidAnswer)
    }
}

/// A reqwest error without the URL (which may carry credentials and is the operator's business).
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    text
}

/// `reason` or `error` from a JSON error body, shortened for a client frame.
fn reason_of(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let reason = ["reason", "error", "detail"]
        .iter()
        .find_map(|field| value.get(field).and_then(Value::as_str))?;
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Some(reason[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(pairs: &[(&str, &str)]) -> RoutesConfig {
        pairs
            .iter()
            .map(|(name, url)| (name.to_string(), url.to_string()))
            .collect()
    }

    #[test]
    fn actions_find_their_route_or_the_default_and_hooks_are_not_actions() {
        let config = routes(&[
            ("chat", "http://127.0.0.1:1/chat"),
            ("default", "http://127.0.0.1:1/default"),
            ("connect", "http://127.0.0.1:1/connect"),
        ]);
        let backend = Backend::from_config(&config, &BackendConfig::default(), "")
            .expect("valid")
            .expect("routes");
        let name = |action: &str| {
            backend
                .route_for(action)
                .map(|route| route.name.to_string())
        };
        assert_eq!(name("chat").as_deref(), Some("chat"));
        assert_eq!(name("other").as_deref(), Some("default"));
        assert_eq!(name("connect").as_deref(), Some("default"));
        assert!(backend.connect_hook().is_some());
        assert!(backend.disconnect_hook().is_none());
        assert!(
            Backend::from_config(&RoutesConfig::new(), &BackendConfig::default(), "")
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn bad_routes_are_named_by_key() {
        let config = routes(&[("join", "http://x/"), ("chat", "ftp://x/"), ("ok", "nope")]);
        let problems = problems(&config, &BackendConfig::default());
        let keys: Vec<&str> = problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        assert_eq!(keys, ["routes.chat", "routes.join", "routes.ok"]);
    }

    #[test]
    fn error_bodies_give_a_short_reason() {
        assert_eq!(
            reason_of(br#"{"reason": "no such room"}"#).as_deref(),
            Some("no such room")
        );
        assert_eq!(reason_of(b"<html>"), None);
        let long = format!(r#"{{"error": "{}"}}"#, "é".repeat(300));
        assert!(reason_of(long.as_bytes()).expect("reason").len() <= MAX_REASON_BYTES);
    }
}
