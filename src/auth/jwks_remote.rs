//! Signing keys fetched from identity providers: `[auth.jwt] jwks_url` (a JWKS URL per issuer)
//! and `oidc_issuer` (the JWKS URL discovered from `ISSUER/.well-known/openid-configuration`).
//!
//! Keys are kept per issuer and found by `(issuer, kid)`, never by `kid` alone: a provider
//! serving another issuer's `kid` gets nothing for it. Each issuer's set is fetched at start,
//! then again when the provider's `Cache-Control: max-age` says (bounded by `jwks_cache_min` and
//! `jwks_cache_max`; an hour when it says nothing), and when a token names a `kid` the set
//! lacks, at most once per `min_refresh_interval` per issuer, so a flood of forged `kid`s costs
//! the provider one request per interval. A fetch is bounded in time (`jwks_timeout`) and size
//! (1 MiB), follows no redirect, and goes over HTTPS (the system's CAs, or only `jwks_ca_file`'s),
//! plain HTTP only with `jwks_allow_http`. While a provider is down, its last good set keeps
//! serving (the failures counted, logged once per outage), and refetching backs off from 1 s to a
//! minute; until an issuer's first fetch succeeds its tokens are answered 503, not 401.
//!
//! A set's symmetric (`oct`) and encryption (`use: enc`) keys are ignored: a provider's set
//! verifies signatures only, and never with a key the provider published in the clear.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use reqwest::Url;
use serde_json::Value;

use super::jwt::JwtConfig;
use crate::config::KeyError;
use crate::metrics::{self as names, register};

/// The largest JWKS or discovery document read.
pub(super) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long a set is kept when the provider sends no `max-age` (within the configured bounds).
const DEFAULT_CACHE: Duration = Duration::from_secs(3600);
/// Refetching after a failure backs off from this…
const RETRY_MIN: Duration = Duration::from_secs(1);
/// …to this.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// One key of a provider's set, with the `alg` its JWK pins, if any.
pub(super) struct RemoteKey {
    pub(super) key: DecodingKey,
    pub(super) pinned: Option<String>,
}

/// One issuer's signing keys by `kid`.
type KeySet = HashMap<String, Arc<RemoteKey>>;

/// What the keys say about `(issuer, kid)`.
pub(super) enum Lookup {
    Found(Arc<RemoteKey>),
    /// The issuer's set (fetched) has no such key.
    UnknownKid,
    /// The issuer's set has not been fetched yet.
    NotFetched,
    /// The issuer's keys do not come from a provider.
    NotRemote,
}

/// Where an issuer's keys are fetched.
#[derive(Debug, Clone)]
enum Source {
    Jwks(Url),
    /// The issuer's own URL: the JWKS URL is discovered.
    Discovery(Url),
}

/// One issuer's provider and its set.
struct Provider {
    issuer: String,
    source: Source,
    /// `None` until the first fetch succeeds.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Bumped by each successful fetch.
    generation: AtomicU64,
    /// When the last unknown-kid refresh was made; held while one is in flight.
    unknown_kid: tokio::sync::Mutex<Option<Instant>>,
    /// Whether the current outage has been logged.
    outage_logged: AtomicBool,
}

/// Every provider's keys, shared by the verifiers of one authenticator.
pub(super) struct RemoteKeys {
    providers: HashMap<String, Arc<Provider>>,
    client: reqwest::Client,
    cache_min: Duration,
    cache_max: Duration,
    min_refresh_interval: Duration,
    allow_http: bool,
}

fn problem(key: &str, message: impl Into<String>) -> KeyError {
    KeyError::new(format!("auth.jwt.{key}"), message.into())
}

impl RemoteKeys {
    /// The providers `config` names (`None` when it names none); a problem names its key.
    pub(super) fn from_config(config: &JwtConfig) -> Result<Option<Self>, KeyError> {
        let mut sources: Vec<(String, Source, &str)> = Vec::new();
        for (issuer, url) in config.jwks_urls() {
            let issuer = if issuer.is_empty() {
                if config.issuer.is_empty() {
                    return Err(problem(
                        "jwks_url",
                        "one URL needs auth.jwt.issuer (its keys belong to that issuer), or map issuers to URLs",
                    ));
                }
                config.issuer.clone()
            } else {
                issuer.to_owned()
            };
            let url =
                checked_url(url, config.jwks_allow_http).map_err(|m| problem("jwks_url", m))?;
            sources.push((issuer, Source::Jwks(url), "jwks_url"));
        }
        for issuer in &config.oidc_issuer {
            let url = checked_url(issuer, config.jwks_allow_http)
                .map_err(|m| problem("oidc_issuer", m))?;
            sources.push((issuer.clone(), Source::Discovery(url), "oidc_issuer"));
        }
        if sources.is_empty() {
            return Ok(None);
        }
        if config.jwks_cache_min > config.jwks_cache_max {
            return Err(problem("jwks_cache_min", "must not exceed jwks_cache_max"));
        }
        if config.jwks_timeout.0.is_zero() {
            return Err(problem("jwks_timeout", "must be longer than 0s"));
        }
        if config.min_refresh_interval.0 < Duration::from_secs(1) {
            return Err(problem("min_refresh_interval", "must be at least 1s"));
        }
        let mut providers = HashMap::new();
        for (issuer, source, key) in sources {
            if !config.issuer.is_empty() && issuer != config.issuer {
                return Err(problem(
                    key,
                    format!(
                        "issuer {issuer:?} is not auth.jwt.issuer ({:?}), which is the only one accepted",
                        config.issuer
                    ),
                ));
            }
            let provider = Arc::new(Provider {
                issuer: issuer.clone(),
                source,
                keys: RwLock::new(None),
                generation: AtomicU64::new(0),
                unknown_kid: tokio::sync::Mutex::new(None),
                outage_logged: AtomicBool::new(false),
            });
            if providers.insert(issuer.clone(), provider).is_some() {
                return Err(problem(key, format!("issuer {issuer:?} is given twice")));
            }
        }
        let client = client(config)?;
        Ok(Some(Self {
            providers,
            client,
            cache_min: config.jwks_cache_min.0,
            cache_max: config.jwks_cache_max.0,
            min_refresh_interval: config.min_refresh_interval.0,
            allow_http: config.jwks_allow_http,
        }))
    }

    /// The issuers whose keys come from providers.
    pub(super) fn issuers(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    pub(super) fn lookup(&self, issuer: &str, kid: &str) -> Lookup {
        let Some(provider) = self.providers.get(issuer) else {
            return Lookup::NotRemote;
        };
        match provider.current() {
            None => Lookup::NotFetched,
            Some(keys) => match keys.get(kid) {
                Some(key) => Lookup::Found(key.clone()),
                None => Lookup::UnknownKid,
            },
        }
    }

    /// Registers the series and starts one task per provider, when a runtime runs (`check-config`
    /// has none). The tasks end with the last `Arc` of `self`.
    pub(super) fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for issuer in self.providers.keys() {
            for result in ["ok", "failed"] {
                register::counter(
                    names::JWKS_FETCHES,
                    &[("issuer", issuer.as_str()), ("result", result)],
                );
            }
            for result in ["fetched", "limited"] {
                register::counter(
                    names::JWKS_UNKNOWN_KID_REFRESHES,
                    &[("issuer", issuer.as_str()), ("result", result)],
                );
            }
            metrics::gauge!(names::JWKS_KEYS, "issuer" => issuer.clone()).set(0.0);
            let remote = Arc::downgrade(self);
            let issuer = issuer.clone();
            runtime.spawn(keep_fresh(remote, issuer));
        }
    }

    /// A token of `issuer` named a `kid` its set lacks: fetches the set again, unless it was
    /// fetched while this call waited, or an unknown-kid refresh was made within
    /// `min_refresh_interval`. Concurrent callers share one fetch.
    pub(super) async fn refresh_for_unknown_kid(&self, issuer: &str) {
        let Some(provider) = self.providers.get(issuer) else {
            return;
        };
        let seen = provider.generation.load(Ordering::SeqCst);
        let mut last = provider.unknown_kid.lock().await;
        if provider.generation.load(Ordering::SeqCst) != seen {
            return;
        }
        let limited = last.is_some_and(|at| at.elapsed() < self.min_refresh_interval);
        let result = if limited { "limited" } else { "fetched" };
        metrics::counter!(names::JWKS_UNKNOWN_KID_REFRESHES, "issuer" => issuer.to_owned(), "result" => result)
            .increment(1);
        if limited {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_into(provider).await;
    }

    /// Fetches `provider`'s set and stores it; how long it may be kept.
    async fn fetch_into(&self, provider: &Provider) -> Result<Duration, String> {
        let fetched = self.fetch(provider).await;
        let result = if fetched.is_ok() { "ok" } else { "failed" };
        metrics::counter!(names::JWKS_FETCHES, "issuer" => provider.issuer.clone(), "result" => result)
            .increment(1);
        match fetched {
            Ok((keys, max_age)) => {
                let count = keys.len();
                let slot = &provider.keys;
                match slot.write() {
                    Ok(mut slot) => *slot = Some(Arc::new(keys)),
                    Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(keys)),
                }
                provider.generation.fetch_add(1, Ordering::SeqCst);
                metrics::gauge!(names::JWKS_KEYS, "issuer" => provider.issuer.clone())
                    .set(count as f64);
                if provider.outage_logged.swap(false, Ordering::SeqCst) {
                    tracing::info!(issuer = %provider.issuer, keys = count, "JWKS fetched again");
                } else {
                    tracing::debug!(issuer = %provider.issuer, keys = count, "JWKS fetched");
                }
                Ok(max_age
                    .unwrap_or(DEFAULT_CACHE)
                    .clamp(self.cache_min, self.cache_max))
            }
            Err(err) => {
                if !provider.outage_logged.swap(true, Ordering::SeqCst) {
                    let serving = if provider.current().is_some() {
                        "the last good key set stays in use"
                    } else {
                        "its tokens are refused with 503 until a fetch succeeds"
                    };
                    tracing::warn!(issuer = %provider.issuer, error = %err, "cannot fetch the JWKS; {serving}");
                }
                Err(err)
            }
        }
    }

    async fn fetch(&self, provider: &Provider) -> Result<(KeySet, Option<Duration>), String> {
        let url = match &provider.source {
            Source::Jwks(url) => url.clone(),
            Source::Discovery(issuer) => self.discover(&provider.issuer, issuer).await?,
        };
        let (body, max_age) = self.get(&url).await?;
        Ok((signing_keys(&body)?, max_age))
    }

    /// The JWKS URL in the issuer's discovery document, which must name that same issuer.
    async fn discover(&self, issuer: &str, issuer_url: &Url) -> Result<Url, String> {
        let base = issuer_url.as_str().trim_end_matches('/');
        let url = Url::parse(&format!("{base}/.well-known/openid-configuration"))
            .map_err(|err| format!("no discovery URL: {err}"))?;
        let (body, _) = self.get(&url).await?;
        jwks_uri_in(&body, issuer, self.allow_http)
    }

    /// A `GET` answered 200, its body (bounded) and its `max-age`.
    async fn get(&self, url: &Url) -> Result<(Vec<u8>, Option<Duration>), String> {
        let response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| err.without_url().to_string())?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let max_age = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(max_age);
        let body = crate::outbound_http::body_within(response, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|err| err.to_string())?;
        Ok((body, max_age))
    }
}

impl Provider {
    fn current(&self) -> Option<Arc<KeySet>> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A provider's JWKS document (bytes from outside): its signing keys by `kid`, or why none.
fn signing_keys(document: &[u8]) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_slice(document).map_err(|err| format!("the JWKS is invalid: {err}"))?;
    let keys = usable_keys(&set.keys);
    if keys.is_empty() {
        return Err("the JWKS holds no usable signing key (with a kid)".into());
    }
    Ok(keys)
}

/// How many signing keys a JWKS document holds (for the fuzz target).
pub fn signing_keys_in(document: &[u8]) -> Result<usize, String> {
    signing_keys(document).map(|keys| keys.len())
}

/// The JWKS URL an OpenID discovery document names, if it is `issuer`'s and the URL may be
/// fetched.
pub fn jwks_uri_in(document: &[u8], issuer: &str, allow_http: bool) -> Result<Url, String> {
    let document: Value = serde_json::from_slice(document)
        .map_err(|err| format!("the discovery document is not JSON: {err}"))?;
    if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("the discovery document names another issuer".into());
    }
    let jwks_uri = document
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("the discovery document has no jwks_uri")?;
    checked_url(jwks_uri, allow_http)
}

/// Fetches one provider's set whenever it is due, until the keys are dropped.
async fn keep_fresh(remote: Weak<RemoteKeys>, issuer: String) {
    let mut retry = RETRY_MIN;
    loop {
        let Some(keys) = remote.upgrade() else {
            return;
        };
        let Some(provider) = keys.providers.get(&issuer).cloned() else {
            return;
        };
        let wait = match keys.fetch_into(&provider).await {
            Ok(keep) => {
                retry = RETRY_MIN;
                keep
            }
            Err(_) => {
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        drop(keys);
        tokio::time::sleep(wait).await;
    }
}

/// The `max-age` of one `Cache-Control` value; `no-store`/`no-cache` count as 0.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        let seconds = lower.strip_prefix("max-age=")?.trim_matches('"');
        seconds.parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// The signing keys of a set, by `kid`: keys without one, encryption keys, symmetric keys and
/// keys that do not parse are left out.
fn usable_keys(keys: &[Jwk]) -> KeySet {
    keys.iter()
        .filter(|jwk| jwk.common.public_key_use != Some(PublicKeyUse::Encryption))
        .filter(|jwk| {
            !matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            )
        })
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let pinned = jwk
                .common
                .key_algorithm
                .map(|algorithm| algorithm.to_string());
            Some((kid, Arc::new(RemoteKey { key, pinned })))
        })
        .collect()
}

/// `text` as a URL a provider may be fetched at: HTTPS, or HTTP when allowed.
fn checked_url(text: &str, allow_http: bool) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http => Ok(url),
        "http" => Err(format!(
            "{text:?} is plain HTTP: keys fetched without TLS can be forged on the way; set auth.jwt.jwks_allow_http = true only for a provider on a trusted network"
        )),
        other => Err(format!("{text:?}: the scheme {other:?} is not https")),
    }
}

/// The HTTP client for providers: no redirects, the timeout, and either the system's CAs or only
/// those of `jwks_ca_file`.
fn client(config: &JwtConfig) -> Result<reqwest::Client, KeyError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.jwks_timeout.0)
        .pool_max_idle_per_host(2);
    if let Some(path) = &config.jwks_ca_file {
        let pem = crate::key_file::read(path).map_err(|m| problem("jwks_ca_file", m))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|err| problem("jwks_ca_file", format!("{}: {err}", path.display())))?;
        if certificates.is_empty() {
            return Err(problem(
                "jwks_ca_file",
                format!("{}: no certificate in the file", path.display()),
            ));
        }
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|err| problem("jwks_url", format!("cannot build the HTTP client: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("max-age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=-5"), None);
        assert_eq!(
            max_age("max-age=99999999999999999999999"),
            None,
            "no overflow"
        );
    }

    #[test]
    fn only_https_unless_http_is_allowed() {
        assert!(checked_url("https://idp.example/jwks", false).is_ok());
        assert!(checked_url("http://idp.example/jwks", false).is_err());
        assert!(checked_url("http://idp.example/jwks", true).is_ok());
        assert!(checked_url("file:///etc/passwd", true).is_err());
        assert!(checked_url("not a url", true).is_err());
    }

    #[test]
    fn symmetric_encryption_and_kidless_keys_are_not_used() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "sig", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}))
        .expect("a JWKS");
        let keys = usable_keys(&set.keys);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["sig"]);
    }
}
