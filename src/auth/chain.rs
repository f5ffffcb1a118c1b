//! The authenticator chain: the [`Authenticator`] trait every credential source implements, and
//! [`AuthChain`], which tries them in order and falls back to anonymous when allowed.

use std::future::Future;
use std::pin::Pin;

use super::{Handshake, Identity};

/// A boxed future, as returned by authenticators (traits with `async fn` are not object-safe).
pub type AuthFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AuthError>> + Send + 'a>>;

/// Why a handshake or a refresh was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The credential is missing, invalid or expired (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The authority that should answer could not (a back end timed out, Redis is down): HTTP 503.
    #[error("authentication back end unavailable: {0}")]
    Unavailable(String),
    /// `refresh` was sent but no configured authenticator accepts tokens.
    #[error("refresh is not supported: no token authenticator is configured")]
    RefreshUnsupported,
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

    /// Runs the chain over a handshake.
    pub async fn authenticate(&self, handshake: &Handshake) -> Result<Identity, AuthError> {
        for authenticator in &self.authenticators {
            if let Some(identity) = authenticator.authenticate(handshake).await? {
                return Ok(identity);
            }
        }
        if self.anonymous {
            Ok(Identity::anonymous())
        } else {
            Err(AuthError::Unauthorized(
                "no credential was accepted and anonymous connections are off".to_owned(),
            ))
        }
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
                    Some("banned") => Err(AuthError::Unauthorized("banned".into())),
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
            Err(AuthError::Unauthorized(_))
        ));
        assert!(matches!(
            block_on(chain.authenticate(&with_header(None))),
            Err(AuthError::Unauthorized(_))
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
