//! The `jwt` authenticator: a signed token from `Authorization: Bearer`, the `token` query
//! parameter, or a named cookie.
//!
//! Keys come from `[auth.jwt]`: a shared `secret` (HS256/384/512), one PEM public key (RSA, EC
//! P-256/P-384 or Ed25519), and/or a JWKS file, in any mix. JWKS keys are looked up by the
//! token's issuer *and* `kid`, never by `kid` alone, so one issuer cannot pick another issuer's
//! key. A token's header `alg` must be on the allow-list; the token is then verified with that
//! one algorithm, and only with a key of its family (an HS256 token is never checked against an
//! RSA public key, which would be the classic algorithm-confusion attack), and `alg: none` does
//! not exist for the decoder. `iss`, `aud`, `exp` and `nbf` are checked with
//! `leeway`; `exp` is required unless `require_exp = false`.
//!
//! Identity providers' keys (`jwks_url`, `oidc_issuer`) are fetched and kept fresh by
//! `jwks_remote`, found by `(issuer, kid)` the same way.
//!
//! The token is self-contained, so the identity is never re-validated: it lives until `exp`
//! (then the socket closes with 4001) or until a `refresh` replaces it. The key files are read
//! again on SIGHUP and when they change (`jwt_reload`), so rotating a mounted key needs no
//! restart.

use crate::config::KeyError;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chain::{AuthError, AuthFuture, Authenticator, RefusalReason};
use super::identity::id_of;
use super::jwks_remote::{Lookup, RemoteKey, RemoteKeys};
use super::{Handshake, Identity};
use crate::human_duration::HumanDuration;

/// The `[auth.jwt]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Accepted `alg` values; empty: every algorithm of the configured keys' families.
    pub algorithms: Vec<Algorithm>,
    /// The shared secret of HS256/384/512 tokens.
    pub secret: String,
    /// One PEM public key (RSA, EC or Ed25519).
    pub public_key_file: Option<PathBuf>,
    /// A JWKS file: `{"keys": [...]}` (the keys of `issuer`), or `{"<issuer>": {"keys": [...]}}`
    /// for several issuers.
    pub jwks_file: Option<PathBuf>,
    /// The required `iss`; empty: not checked (not allowed with a plain JWKS).
    pub issuer: String,
    /// Accepted `aud` values (one string or a list); empty: `aud` is not checked.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// The claim holding the user id (a string or a number).
    pub user_claim: String,
    /// The claim listing the channels the token grants (the `claim` channel rule), globs allowed.
    pub channels_claim: String,
    /// The claim holding the back-end session id (for `disconnect` by session).
    pub session_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: HumanDuration,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// The query parameter a token may travel in; empty: not read.
    pub query_param: String,
    /// The cookie a token may travel in; empty: not read.
    pub cookie: String,
    /// How often `public_key_file` and `jwks_file` are checked for a change (then read again,
    /// as on SIGHUP); 0: only on SIGHUP.
    pub key_check_interval: HumanDuration,
    /// JWKS URLs of identity providers: one URL (the keys of `issuer`), or a table of issuer →
    /// URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<JwksUrl>,
    /// Issuers whose JWKS URL is discovered (`ISSUER/.well-known/openid-configuration`).
    #[serde(deserialize_with = "one_or_many")]
    pub oidc_issuer: Vec<String>,
    /// Bounds on how long a fetched key set is kept (the provider's `max-age` within them).
    pub jwks_cache_min: HumanDuration,
    pub jwks_cache_max: HumanDuration,
    /// A token naming a `kid` its issuer's set lacks refetches the set at most this often.
    pub min_refresh_interval: HumanDuration,
    /// How long one fetch from a provider may take.
    pub jwks_timeout: HumanDuration,
    /// Trust only the CA certificates in this PEM file for providers, not the system's.
    pub jwks_ca_file: Option<PathBuf>,
    /// Allow `http://` provider URLs (keys fetched without TLS can be forged on the way).
    pub jwks_allow_http: bool,
}

/// `jwks_url`: one URL, or URLs by issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JwksUrl {
    One(String),
    ByIssuer(std::collections::BTreeMap<String, String>),
}

impl JwtConfig {
    /// `(issuer, url)` pairs of `jwks_url`; the issuer is empty for a lone URL (it is `issuer`'s).
    pub(super) fn jwks_urls(&self) -> Vec<(&str, &str)> {
        match &self.jwks_url {
            None => Vec::new(),
            Some(JwksUrl::One(url)) => vec![("", url.as_str())],
            Some(JwksUrl::ByIssuer(urls)) => urls
                .iter()
                .map(|(issuer, url)| (issuer.as_str(), url.as_str()))
                .collect(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithms: Vec::new(),
            secret: String::new(),
            public_key_file: None,
            jwks_file: None,
            issuer: String::new(),
            audience: Vec::new(),
            user_claim: "sub".to_owned(),
            channels_claim: "channels".to_owned(),
            session_claim: "sid".to_owned(),
            leeway: HumanDuration::from_secs(5),
            require_exp: true,
            query_param: "token".to_owned(),
            cookie: String::new(),
            key_check_interval: HumanDuration::from_secs(5),
            jwks_url: None,
            oidc_issuer: Vec::new(),
            jwks_cache_min: HumanDuration::from_secs(300),
            jwks_cache_max: HumanDuration::from_secs(86_400),
            min_refresh_interval: HumanDuration::from_secs(60),
            jwks_timeout: HumanDuration::from_secs(5),
            jwks_ca_file: None,
            jwks_allow_http: false,
        }
    }
}

/// JWKS keys by `(issuer, kid)`, each with the `alg` its JWK pins, if any.
type KeysByIssuerAndKid = HashMap<(String, String), Arc<RemoteKey>>;

/// The verifying keys.
struct Keys {
    secret: Option<DecodingKey>,
    public: Option<DecodingKey>,
    /// `(issuer, kid)` → key and the `alg` the JWK pins, if any (from `jwks_file`).
    by_issuer_and_kid: KeysByIssuerAndKid,
    /// Identity providers' keys, shared by every verifier of the authenticator.
    remote: Option<Arc<RemoteKeys>>,
}

/// What checks a token: the keys, and the validations they allow. Built from the config and the
/// key files it names; replaced whole when they are read again (`jwt_reload`).
pub(super) struct Verifier {
    keys: Keys,
    /// One validation per accepted algorithm, each allowing that algorithm alone: jsonwebtoken
    /// refuses a validation whose algorithms span key families, so one shared validation would
    /// refuse every token of a config mixing a secret with public keys.
    validations: Vec<(Algorithm, Validation)>,
}

/// The verifier in use, shared with the task that reloads it.
pub(super) type CurrentVerifier = Arc<RwLock<Arc<Verifier>>>;

/// Verifies tokens with the keys of [`JwtConfig`], read again on SIGHUP and when the key files
/// change (`jwt_reload`).
pub struct JwtAuthenticator {
    verifier: CurrentVerifier,
    config: JwtConfig,
}

impl JwtAuthenticator {
    /// Reads the key files and checks the section. Errors are `(key, message)` for the config
    /// report, e.g. `("auth.jwt.public_key_file", "cannot read …")`. Inside a runtime, a node
    /// with key files starts watching them.
    pub fn from_config(config: &JwtConfig) -> Result<Self, KeyError> {
        let remote = RemoteKeys::from_config(config)?.map(Arc::new);
        if let Some(remote) = &remote {
            remote.start();
        }
        let verifier = Verifier::from_config(config, remote)?;
        let verifier = Arc::new(RwLock::new(Arc::new(verifier)));
        super::jwt_reload::watch(config, &verifier);
        Ok(Self {
            verifier,
            config: config.clone(),
        })
    }

    /// Checks the section and its key files as `from_config` would, watching nothing.
    pub fn check(config: &JwtConfig) -> Result<(), KeyError> {
        let remote = RemoteKeys::from_config(config)?.map(Arc::new);
        Verifier::from_config(config, remote).map(|_| ())
    }

    /// The verifier in use now.
    fn current(&self) -> Arc<Verifier> {
        match self.verifier.read() {
            Ok(current) => current.clone(),
            // A writer never panics while holding it; the value is whole either way.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Verifier {
    /// The providers' keys this verifier uses, for its successor.
    pub(super) fn remote(&self) -> Option<Arc<RemoteKeys>> {
        self.keys.remote.clone()
    }

    /// Reads the key files and checks the section (see [`JwtAuthenticator::from_config`]);
    /// `remote` are the providers' keys, kept across reloads.
    pub(super) fn from_config(
        config: &JwtConfig,
        remote: Option<Arc<RemoteKeys>>,
    ) -> Result<Self, KeyError> {
        let problem =
            |key: &str, message: String| KeyError::new(format!("auth.jwt.{key}"), message);
        if !super::rsa_verify::install() {
            tracing::warn!(
                "another JWT crypto provider is installed; RSA signatures are checked by it"
            );
        }
        let secret =
            (!config.secret.is_empty()).then(|| DecodingKey::from_secret(config.secret.as_bytes()));
        let public = match &config.public_key_file {
            Some(path) => {
                let pem = crate::key_file::read(path)
                    .map_err(|message| problem("public_key_file", message))?;
                Some(public_key_from_pem(&pem).ok_or_else(|| {
                    problem(
                        "public_key_file",
                        format!(
                            "{} is not a PEM RSA, EC (P-256/P-384) or Ed25519 public key",
                            path.display()
                        ),
                    )
                })?)
            }
            None => None,
        };
        let by_issuer_and_kid = match &config.jwks_file {
            Some(path) => {
                read_jwks(path, &config.issuer).map_err(|message| problem("jwks_file", message))?
            }
            None => HashMap::new(),
        };
        if secret.is_none() && public.is_none() && by_issuer_and_kid.is_empty() && remote.is_none()
        {
            return Err(problem(
                "secret",
                "no key configured: set secret, public_key_file, jwks_file, jwks_url or oidc_issuer"
                    .to_owned(),
            ));
        }
        if let Some(remote) = &remote {
            if let Some((issuer, _)) = by_issuer_and_kid
                .keys()
                .find(|(issuer, _)| remote.issuers().any(|remote| remote == issuer))
            {
                return Err(problem(
                    "jwks_file",
                    format!(
                        "issuer {issuer:?} also has a jwks_url or oidc_issuer: its keys come from one place"
                    ),
                ));
            }
        }
        if config.user_claim.is_empty() {
            return Err(problem("user_claim", "must not be empty".to_owned()));
        }

        let mut families = Vec::new();
        // A provider's keys are not known yet: any signature family may come.
        let remote_families = remote.iter().flat_map(|_| {
            use jsonwebtoken::AlgorithmFamily::{Ec, Ed, Rsa};
            [Rsa, Ec, Ed]
        });
        for family in secret
            .iter()
            .chain(public.iter())
            .chain(by_issuer_and_kid.values().map(|remote| &remote.key))
            .map(DecodingKey::family)
            .chain(remote_families)
        {
            if !families.contains(&family) {
                families.push(family);
            }
        }
        let algorithms = if config.algorithms.is_empty() {
            families
                .iter()
                .flat_map(|family| family.algorithms().iter().copied())
                .collect()
        } else {
            if let Some(unkeyed) = config
                .algorithms
                .iter()
                .find(|algorithm| !families.contains(&algorithm.family()))
            {
                return Err(problem(
                    "algorithms",
                    format!("{unkeyed:?} is allowed but no key of its family is configured"),
                ));
            }
            config.algorithms.clone()
        };

        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = algorithms;
        validation.leeway = config.leeway.0.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let mut required = Vec::new();
        if config.require_exp {
            required.push("exp");
        }
        if !config.issuer.is_empty() {
            validation.set_issuer(&[&config.issuer]);
            required.push("iss");
        } else if !by_issuer_and_kid.is_empty() || remote.is_some() {
            let issuers: HashSet<&str> = by_issuer_and_kid
                .keys()
                .map(|(issuer, _)| issuer.as_str())
                .chain(remote.iter().flat_map(|remote| remote.issuers()))
                .collect();
            validation.set_issuer(&issuers.into_iter().collect::<Vec<_>>());
            required.push("iss");
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let validations = validation
            .algorithms
            .iter()
            .map(|&algorithm| {
                let mut only = validation.clone();
                only.algorithms = vec![algorithm];
                (algorithm, only)
            })
            .collect();
        Ok(Self {
            keys: Keys {
                secret,
                public,
                by_issuer_and_kid,
                remote,
            },
            validations,
        })
    }
}

impl JwtAuthenticator {
    /// The token of a handshake: bearer header, then query parameter, then cookie. A header or
    /// query parameter carrying a token twice refuses the handshake: which one counts would be
    /// a guess.
    fn token_of<'a>(&self, handshake: &'a Handshake) -> Result<Option<&'a str>, AuthError> {
        let twice = |what: &str| {
            AuthError::refused(
                RefusalReason::InvalidToken,
                format!("the {what} appears more than once"),
            )
        };
        let bearer = handshake
            .bearer_token()
            .map_err(|_| twice("Authorization header"))?;
        let query = match self.config.query_param.as_str() {
            "" => None,
            name => handshake
                .single_query(name)
                .map_err(|_| twice("token query parameter"))?,
        };
        let cookie = match self.config.cookie.as_str() {
            "" => None,
            name => handshake.cookie(name),
        };
        Ok(bearer
            .or(query)
            .or(cookie)
            .filter(|token| !token.is_empty()))
    }

    /// Verifies `token` and reads the identity out of its claims, with the keys at hand.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_with_current(token).map_err(|miss| miss.error)
    }

    /// [`verify`](Self::verify), and when the token names a `kid` its provider's set lacks,
    /// once more after the set is refetched (as often as `min_refresh_interval` allows).
    pub async fn verify_refreshing(&self, token: &str) -> Result<Identity, AuthError> {
        match self.verify_with_current(token) {
            Err(Miss {
                refetch: Some(issuer),
                ..
            }) => {
                let remote = self.current().keys.remote.clone();
                if let Some(remote) = remote {
                    remote.refresh_for_unknown_kid(&issuer).await;
                }
                self.verify(token)
            }
            other => other.map_err(|miss| miss.error),
        }
    }

    fn verify_with_current(&self, token: &str) -> Result<Identity, Miss> {
        let verifier = self.current();
        let header = jsonwebtoken::decode_header(token).map_err(|err| Miss::from(refusal(err)))?;
        let validation = verifier
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .map(|(_, validation)| validation)
            .ok_or_else(|| {
                Miss::from(AuthError::refused(
                    RefusalReason::InvalidToken,
                    format!("algorithm {:?} is not accepted", header.alg),
                ))
            })?;
        let key = verifier.key_for(token, &header)?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key.key(), validation)
            .map_err(|err| Miss::from(refusal(err)))?
            .claims;
        self.identity_of(&claims).map_err(Miss::from)
    }

    fn identity_of(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let user = claims
            .get(&self.config.user_claim)
            .and_then(id_of)
            .ok_or_else(|| {
                AuthError::refused(
                    RefusalReason::NoUser,
                    format!("the token has no {:?} claim", self.config.user_claim),
                )
            })?;
        let channels = claims
            .get(&self.config.channels_claim)
            .and_then(Value::as_array)
            .map(|granted| {
                granted
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Identity {
            user: Some(user),
            session: claims.get(&self.config.session_claim).and_then(id_of),
            expires_at: claims
                .get("exp")
                .and_then(Value::as_u64)
                .map(super::identity::clamp_expiry),
            channels,
            authenticator: "jwt",
            credential: None,
        })
    }
}

/// Why a token was not verified, and whether refetching its issuer's keys could change that.
struct Miss {
    error: AuthError,
    /// The issuer whose provider's set lacks the token's `kid`.
    refetch: Option<String>,
}

impl From<AuthError> for Miss {
    fn from(error: AuthError) -> Self {
        Self {
            error,
            refetch: None,
        }
    }
}

/// The key a token is checked with: one of the configuration's, or a provider's.
enum KeyChoice<'a> {
    Local(&'a DecodingKey),
    Remote(Arc<RemoteKey>),
}

impl KeyChoice<'_> {
    fn key(&self) -> &DecodingKey {
        match self {
            KeyChoice::Local(key) => key,
            KeyChoice::Remote(remote) => &remote.key,
        }
    }
}

impl Verifier {
    /// The key that must have signed a token with this header: the JWKS key (a file's or a
    /// provider's) of (issuer, kid) when the token names a `kid`, else the secret (HS*) or the
    /// PEM key.
    fn key_for(&self, token: &str, header: &jsonwebtoken::Header) -> Result<KeyChoice<'_>, Miss> {
        let unknown =
            |detail: String| Miss::from(AuthError::refused(RefusalReason::UnknownKey, detail));
        if header.alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return self
                .keys
                .secret
                .as_ref()
                .map(KeyChoice::Local)
                .ok_or_else(|| unknown("no secret is configured for HS tokens".to_owned()));
        }
        let has_jwks = !self.keys.by_issuer_and_kid.is_empty() || self.keys.remote.is_some();
        if let Some(kid) = header.kid.as_deref().filter(|_| has_jwks) {
            // The issuer is read before verification only to pick the key; `decode` then checks
            // it against the configured issuers and the signature against that issuer's key.
            let issuer =
                jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
                    .map_err(|err| Miss::from(refusal(err)))?
                    .get("iss")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_default();
            let lookup = match &self.keys.remote {
                Some(remote) => remote.lookup(&issuer, kid),
                None => Lookup::NotRemote,
            };
            let key = match lookup {
                Lookup::Found(key) => key,
                Lookup::UnknownKid => {
                    return Err(Miss {
                        refetch: Some(issuer.clone()),
                        ..unknown(format!("no key {kid:?} for issuer {issuer:?}"))
                    });
                }
                Lookup::NotFetched => {
                    return Err(Miss::from(AuthError::Unavailable(format!(
                        "the keys of issuer {issuer:?} have not been fetched yet"
                    ))));
                }
                Lookup::NotRemote => self
                    .keys
                    .by_issuer_and_kid
                    .get(&(issuer.clone(), kid.to_owned()))
                    .cloned()
                    .ok_or_else(|| unknown(format!("no key {kid:?} for issuer {issuer:?}")))?,
            };
            if key
                .pinned
                .as_deref()
                .is_some_and(|pinned| pinned != format!("{:?}", header.alg))
            {
                return Err(Miss::from(AuthError::refused(
                    RefusalReason::InvalidToken,
                    format!("key {kid:?} is not for {:?}", header.alg),
                )));
            }
            return Ok(KeyChoice::Remote(key));
        }
        self.keys
            .public
            .as_ref()
            .map(KeyChoice::Local)
            .ok_or_else(|| unknown("the token names no kid and no public key is configured".into()))
    }
}

impl Authenticator for JwtAuthenticator {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn uses_ambient_credentials(&self) -> bool {
        !self.config.cookie.is_empty()
    }

    fn authenticate<'a>(&'a self, handshake: &'a Handshake) -> AuthFuture<'a, Option<Identity>> {
        Box::pin(async move {
            match self.token_of(handshake)? {
                Some(token) => self.verify_refreshing(token).await.map(Some),
                None => Ok(None),
            }
        })
    }

    fn refresh<'a>(&'a self, token: &'a str) -> Option<AuthFuture<'a, Identity>> {
        Some(Box::pin(async move { self.verify_refreshing(token).await }))
    }
}

/// `"aud"` or `["aud", ...]`: JWT's own `aud` claim takes either, so the config does too.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(one)) => Ok(vec![one]),
        Ok(OneOrMany::Many(many)) => Ok(many),
        Err(_) => Err(serde::de::Error::custom(
            "expected a string or a list of strings",
        )),
    }
}

fn public_key_from_pem(pem: &[u8]) -> Option<DecodingKey> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .ok()
}

/// Reads a JWKS file into keys by `(issuer, kid)`. A plain `{"keys": [...]}` belongs to
/// `issuer`, which must then be set; `{"<issuer>": {"keys": [...]}, ...}` names its issuers.
fn read_jwks(path: &std::path::Path, issuer: &str) -> Result<KeysByIssuerAndKid, String> {
    let bytes = crate::key_file::read(path)?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let document: Value = serde_json::from_str(&text)
        .map_err(|err| format!("{} is not JSON: {err}", path.display()))?;
    let sets: Vec<(String, Value)> = match document {
        Value::Object(object) if object.contains_key("keys") => {
            if issuer.is_empty() {
                return Err("a plain JWKS needs auth.jwt.issuer: its keys belong to that issuer (or map issuers to key sets)".to_owned());
            }
            vec![(issuer.to_owned(), Value::Object(object))]
        }
        Value::Object(object) => object.into_iter().collect(),
        _ => return Err(format!("{} is not a JWKS object", path.display())),
    };
    let mut keys = HashMap::new();
    for (set_issuer, set) in sets {
        let set: JwkSet = serde_json::from_value(set)
            .map_err(|err| format!("the key set of issuer {set_issuer:?} is invalid: {err}"))?;
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or_else(|| {
                format!(
                    "a key of issuer {set_issuer:?} has no kid (keys are found by issuer and kid)"
                )
            })?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|err| format!("key {kid:?} of issuer {set_issuer:?}: {err}"))?;
            let pinned = jwk
                .common
                .key_algorithm
                .map(|algorithm| algorithm.to_string());
            keys.insert(
                (set_issuer.clone(), kid),
                Arc::new(RemoteKey { key, pinned }),
            );
        }
    }
    if keys.is_empty() {
        return Err(format!("{} holds no keys", path.display()));
    }
    Ok(keys)
}

/// Maps a decoding error to the refusal a client sees.
fn refusal(err: jsonwebtoken::errors::Error) -> AuthError {
    let reason = match err.kind() {
        ErrorKind::ExpiredSignature => RefusalReason::Expired,
        ErrorKind::ImmatureSignature => RefusalReason::NotYetValid,
        ErrorKind::InvalidIssuer => RefusalReason::WrongIssuer,
        ErrorKind::InvalidAudience => RefusalReason::WrongAudience,
        _ => RefusalReason::InvalidToken,
    };
    let detail = match err.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_owned(),
        ErrorKind::InvalidAudience => "the token's audience is not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim:?} claim"),
        ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".to_owned(),
        other => format!("invalid token: {other:?}"),
    };
    AuthError::refused(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn hs_config() -> JwtConfig {
        JwtConfig {
            secret: "s3cret".into(),
            issuer: "https://issuer".into(),
            audience: vec!["switchboard".into()],
            ..JwtConfig::default()
        }
    }

    fn sign(claims: &Value, secret: &str, algorithm: Algorithm) -> String {
        encode(
            &Header::new(algorithm),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn valid_claims() -> Value {
        json!({
            "sub": 42, "iss": "https://issuer", "aud": "switchboard",
            "exp": super::super::identity::unix_now() + 60,
            "sid": "s-1", "channels": ["team:red*"],
        })
    }

    fn reason_of(result: Result<Identity, AuthError>) -> RefusalReason {
        match result {
            Err(AuthError::Refused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_token_gives_user_session_expiry_and_channels() {
        let jwt = JwtAuthenticator::from_config(&hs_config()).expect("config");
        let identity = jwt
            .verify(&sign(&valid_claims(), "s3cret", Algorithm::HS384))
            .expect("valid");
        assert_eq!(identity.user.as_deref(), Some("42"));
        assert_eq!(identity.session.as_deref(), Some("s-1"));
        assert_eq!(identity.channels, ["team:red*"]);
        assert!(identity.expires_at.is_some());
        assert_eq!(identity.authenticator, "jwt");
    }

    #[test]
    fn wrong_claims_are_refused_with_their_reason() {
        let jwt = JwtAuthenticator::from_config(&hs_config()).expect("config");
        let with = |field: &str, value: Value| {
            let mut claims = valid_claims();
            claims[field] = value;
            sign(&claims, "s3cret", Algorithm::HS256)
        };
        let now = super::super::identity::unix_now();
        assert_eq!(
            reason_of(jwt.verify(&with("exp", json!(now - 60)))),
            RefusalReason::Expired
        );
        assert_eq!(
            reason_of(jwt.verify(&with("nbf", json!(now + 600)))),
            RefusalReason::NotYetValid
        );
        assert_eq!(
            reason_of(jwt.verify(&with("iss", json!("https://evil")))),
            RefusalReason::WrongIssuer
        );
        assert_eq!(
            reason_of(jwt.verify(&with("aud", json!("other")))),
            RefusalReason::WrongAudience
        );
        assert_eq!(
            reason_of(jwt.verify(&sign(&valid_claims(), "wrong", Algorithm::HS256))),
            RefusalReason::InvalidToken
        );
        let mut no_user = valid_claims();
        no_user.as_object_mut().expect("object").remove("sub");
        assert_eq!(
            reason_of(jwt.verify(&sign(&no_user, "s3cret", Algorithm::HS256))),
            RefusalReason::NoUser
        );
    }

    #[test]
    fn leeway_tolerates_small_clock_skew() {
        let jwt = JwtAuthenticator::from_config(&hs_config()).expect("config");
        let mut claims = valid_claims();
        claims["exp"] = json!(super::super::identity::unix_now() - 2);
        assert!(
            jwt.verify(&sign(&claims, "s3cret", Algorithm::HS256))
                .is_ok()
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let jwt = JwtAuthenticator::from_config(&hs_config()).expect("config");
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "{}.{}.",
            engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(valid_claims().to_string())
        );
        assert_eq!(
            reason_of(jwt.verify(&unsigned)),
            RefusalReason::InvalidToken
        );
    }

    #[test]
    fn config_problems_name_their_key() {
        let missing = JwtAuthenticator::from_config(&JwtConfig::default())
            .err()
            .expect("no key");
        assert_eq!(missing.key, "auth.jwt.secret");
        let unreadable = JwtAuthenticator::from_config(&JwtConfig {
            public_key_file: Some("/nonexistent/key.pem".into()),
            ..JwtConfig::default()
        })
        .err()
        .expect("unreadable");
        assert_eq!(unreadable.key, "auth.jwt.public_key_file");
        let unkeyed = JwtAuthenticator::from_config(&JwtConfig {
            algorithms: vec![Algorithm::RS256],
            ..hs_config()
        })
        .err()
        .expect("no RSA key");
        assert_eq!(unkeyed.key, "auth.jwt.algorithms");
    }
}
