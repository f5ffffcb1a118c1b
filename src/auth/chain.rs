//! The authenticator chain: the [`Authenticator`] trait every credential source implements, and
//! [`AuthChain`], which tries them in order and falls back to anonymous when allowed.

use std::future::Future;
use std::pin::Pin;

use super::{Handshake, Identity};
use crate::metrics as names;

/// A boxed future, as returned by authenticators (traits with `async fn` are not object-safe).
pub type AuthFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AuthError>> + Send + 'a>>;

/// Why a credential was refused: the `reason` label of `switchboard_handshakes_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No authenticator accepted the handshake and anonymous connections are off.
    NoCredential,
    /// A token that is not a well-formed, correctly signed JWT for an allowed algorithm.
    InvalidToken,
    /// A token past its `exp`.
    Expired,
    /// A token before its `nbf`.
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// No configured key for the token's issuer and `kid`.
    UnknownKey,
    /// A valid token without the configured user claim.
    NoUser,
    /// Trusted gateway headers that cannot be read.
    InvalidGatewayHeader,
    /// The introspection back end answered 401 or 403.
    Rejected,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 10] = [
        Self::NoCredential,
        Self::InvalidToken,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::UnknownKey,
        Self::NoUser,
        Self::InvalidGatewayHeader,
        Self::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::NoCredential => "no_credential",
            Self::InvalidToken => "invalid_token",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::UnknownKey => "unknown_key",
            Self::NoUser => "no_user",
            Self::InvalidGatewayHeader => "invalid_gateway_header",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a handshake or a refresh was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The credential is missing, invalid or expired (HTTP 401).
    #[error("{detail}")]
    Refused {
        reason: RefusalReason,
        detail: String,
    },
    /// The authority that should answer could not (a back end timed out, Redis is down): HTTP 503.
    #[error("authentication back end unavailable: {0}")]
    Unavailable(String),
    /// `refresh` was sent but no configured authenticator accepts tokens.
    #[error("refresh is not supported: no token authenticator is configured")]
    RefreshUnsupported,
}

impl AuthError {
    /// What a client is told: why its credential was refused (about the credential, meant for
    /// it), but never what went wrong with the back end, which goes to the log.
    pub fn client_reason(&self) -> String {
        match self {
            AuthError::Unavailable(_) => {
                "the authentication back end is unavailable; retry shortly".to_owned()
            }
            AuthError::Refused { .. } | AuthError::RefreshUnsupported => self.to_string(),
        }
    }

    pub fn refused(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self::Refused {
            reason,
            detail: detail.into(),
        }
    }

    /// The `reason` label of a handshake refused because the back end did not answer.
    pub const UNAVAILABLE_LABEL: &'static str = "backend_unavailable";

    /// The `reason` label of a refused handshake.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused { reason, .. } => reason.label(),
            Self::Unavailable(_) => Self::UNAVAILABLE_LABEL,
            Self::RefreshUnsupported => "refresh_unsupported",
        }
    }
}

/// What a re-validation found out about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revalidation {
    /// Still alive, possibly with a new expiry.
    Alive { expires_at: Option<u64> },
    /// Ended at the back end: close its sockets with 4001.
    Dead,
    /// The back end could not answer; the caller applies its fail-open grace.
    Unknown(String),
}

/// One source of identity.
pub trait Authenticator: Send + Sync + 'static {
    /// A short name: a metric label and a log field.
    fn name(&self) -> &'static str;

    /// `Ok(Some)`: this is the identity; `Err`: refuse the handshake; `Ok(None)`: not mine.
    fn authenticate<'a>(&'a self, handshake: &'a Handshake) -> AuthFuture<'a, Option<Identity>>;

    /// Whether the identity it finds can rest on credentials a browser attaches by itself to a
    /// request from any site: cookies, read directly or by a gateway in front of the node.
    /// Cross-site WebSocket hijacking is then possible, so `Origin` must be checked.
    fn uses_ambient_credentials(&self) -> bool {
        false
    }

    /// Replaces an expiring credential with `token`. `None`: this authenticator does not take
    /// tokens, ask the next one.
    fn refresh<'a>(&'a self, _token: &'a str) -> Option<AuthFuture<'a, Identity>> {
        None
    }

    /// Is this identity's session still alive? Self-contained credentials (a signed token) have
    /// nothing to ask and are alive until they expire, which is the default.
    fn revalidate<'a>(&'a self, identity: &'a Identity) -> AuthFuture<'a, Revalidation> {
        let expires_at = identity.expires_at;
        Box::pin(async move { Ok(Revalidation::Alive { expires_at }) })
    }
}

fn count_handshake(authenticator: &'static str, result: &'static str) {
    metrics::counter!(names::HANDSHAKES, "authenticator" => authenticator, "result" => result)
        .increment(1);
}

/// The configured authenticators, tried in order.
pub struct AuthChain {
    authenticators: Vec<Box<dyn Authenticator>>,
    anonymous: bool,
}

impl AuthChain {
    pub fn new(authenticators: Vec<Box<dyn Authenticator>>, anonymous: bool) -> Self {
        Self {
            authenticators,
            anonymous,
        }
    }

    /// Runs the chain over a handshake, counting the result by authenticator.
    pub async fn authenticate(&self, handshake: &Handshake) -> Result<Identity, AuthError> {
        for authenticator in &self.authenticators {
            let name = authenticator.name();
            match authenticator.authenticate(handshake).await {
                Ok(Some(identity)) => {
                    count_handshake(name, "accepted");
                    return Ok(identity);
                }
                Ok(None) => {}
                Err(err) => {
                    let result = match err {
                        AuthError::Unavailable(_) => "unavailable",
                        _ => "refused",
                    };
                    count_handshake(name, result);
                    return Err(err);
                }
            }
        }
        if self.anonymous {
            count_handshake("anonymous", "accepted");
            Ok(Identity::anonymous())
        } else {
            count_handshake("anonymous", "refused");
            Err(AuthError::refused(
                RefusalReason::NoCredential,
                "no credential was accepted and anonymous connections are off",
            ))
        }
    }

    /// Registers the series of the configured authenticators at zero (see `metrics`).
    pub fn register_metrics(&self) {
        use names::register;
        let deciders = self
            .authenticators
            .iter()
            .map(|authenticator| authenticator.name())
            .chain(["anonymous"]);
        for authenticator in deciders {
            for result in names::results::HANDSHAKE {
                register::counter(
                    names::HANDSHAKES,
                    &[("authenticator", authenticator), ("result", result)],
                );
            }
        }
        for authenticator in &self.authenticators {
            match authenticator.name() {
                "gateway" => register::counter(names::GATEWAY_UNTRUSTED, &[]),
                name @ ("introspect" | "redis_session") => {
                    let labels = [("authenticator", name)];
                    register::histogram(names::AUTH_BACKEND_DURATION, &labels);
                    register::counter(names::AUTH_BACKEND_ERRORS, &labels);
                    for result in names::results::REVALIDATION {
                        register::counter(
                            names::REVALIDATIONS,
                            &[("authenticator", name), ("result", result)],
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether sessions of this identity are checked again while its sockets are open.
    pub fn revalidates(&self, identity: &Identity) -> bool {
        identity.credential.is_some()
            && self
                .authenticators
                .iter()
                .any(|authenticator| authenticator.name() == identity.authenticator)
    }

    /// Whether any authenticator rests on ambient browser credentials (the handshake's `Origin`
    /// is then checked even when `server.allowed_origins` is empty).
    pub fn uses_ambient_credentials(&self) -> bool {
        self.authenticators
            .iter()
            .any(|authenticator| authenticator.uses_ambient_credentials())
    }

    /// Offers a new token to the first authenticator that takes tokens.
    pub async fn refresh(&self, token: &str) -> Result<Identity, AuthError> {
        for authenticator in &self.authenticators {
            if let Some(refreshing) = authenticator.refresh(token) {
                return refreshing.await;
            }
        }
        Err(AuthError::RefreshUnsupported)
    }

    /// Asks the authenticator that produced `identity` whether it is still alive.
    pub async fn revalidate(&self, identity: &Identity) -> Result<Revalidation, AuthError> {
        match self
            .authenticators
            .iter()
            .find(|authenticator| authenticator.name() == identity.authenticator)
        {
            Some(authenticator) => authenticator.revalidate(identity).await,
            None => Ok(Revalidation::Alive {
                expires_at: identity.expires_at,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims handshakes carrying `x-user`, refuses `x-user: banned`, ignores the rest.
    struct HeaderAuthenticator;

    impl Authenticator for HeaderAuthenticator {
        fn name(&self) -> &'static str {
            "header"
        }

        fn authenticate<'a>(
            &'a self,
            handshake: &'a Handshake,
        ) -> AuthFuture<'a, Option<Identity>> {
            Box::pin(async move {
                match handshake.header("x-user") {
                    Some("banned") => Err(AuthError::refused(RefusalReason::Rejected, "banned")),
                    Some(user) => Ok(Some(Identity {
                        user: Some(user.to_owned()),
                        authenticator: "header",
                        ..Identity::default()
                    })),
                    None => Ok(None),
                }
            })
        }
    }

    fn with_header(value: Option<&str>) -> Handshake {
        Handshake {
            headers: value
                .map(|value| vec![("x-user".to_owned(), value.to_owned())])
                .unwrap_or_default(),
            ..Handshake::default()
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn yes_no_and_not_mine_are_honoured_in_order() {
        let chain = AuthChain::new(vec![Box::new(HeaderAuthenticator)], false);
        let identity = block_on(chain.authenticate(&with_header(Some("42")))).expect("accepted");
        assert_eq!(identity.user.as_deref(), Some("42"));
        assert!(matches!(
            block_on(chain.authenticate(&with_header(Some("banned")))),
            Err(AuthError::Refused { .. })
        ));
        assert!(matches!(
            block_on(chain.authenticate(&with_header(None))),
            Err(AuthError::Refused { .. })
        ));
    }

    #[test]
    fn anonymous_is_the_fallback_only_when_allowed() {
        let chain = AuthChain::new(vec![Box::new(HeaderAuthenticator)], true);
        let identity = block_on(chain.authenticate(&with_header(None))).expect("anonymous");
        assert_eq!(identity, Identity::anonymous());
    }

    #[test]
    fn refresh_without_a_token_authenticator_is_unsupported() {
        let chain = AuthChain::new(vec![Box::new(HeaderAuthenticator)], true);
        assert_eq!(
            block_on(chain.refresh("token")),
            Err(AuthError::RefreshUnsupported)
        );
    }
}
