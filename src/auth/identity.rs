//! The result of authentication: who the connection is, for how long, and what it may join.

use std::sync::Arc;

/// What an authenticator needs to ask again whether a session is alive: the forwarded handshake
/// headers (introspection) or the session id (Redis sessions). Kept so re-validation needs no
/// socket and no handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `(lower-case header name, value)` pairs, as forwarded at the handshake.
    Headers(Arc<[(String, String)]>),
    /// A back-end session id.
    SessionId(Arc<str>),
}

/// An authenticated (or anonymous) identity, fixed at the handshake and replaced only by a
/// successful `refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The user id; `None` for an anonymous connection.
    pub user: Option<String>,
    /// The back-end session id, when the credential names one (`sid`, a session cookie).
    pub session: Option<String>,
    /// When the credential expires, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// Channel patterns the credential grants (`claim` policy), globs allowed.
    pub channels: Vec<String>,
    /// Which authenticator produced this identity (a metric label).
    pub authenticator: &'static str,
    /// What that authenticator needs to re-validate the session; `None` for self-contained
    /// credentials (a signed token) and anonymous connections.
    pub credential: Option<Credential>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            authenticator: "anonymous",
            ..Self::default()
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.user.is_some()
    }

    /// The key under which a node checks this session once for all its sockets: the session id
    /// when the back end named one, else the credential itself.
    pub fn session_key(&self) -> Option<String> {
        let credential = self.credential.as_ref()?;
        let distinct = match (&self.session, credential) {
            (Some(session), _) => format!("session:{session}"),
            (None, Credential::SessionId(id)) => format!("session:{id}"),
            (None, Credential::Headers(headers)) => headers
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        Some(format!("{}\n{distinct}", self.authenticator))
    }
}

/// A claim or field holding an id: a non-empty string, or a number written as one.
pub(super) fn id_of(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The latest expiry an identity may have (9999-12-31T23:59:59Z): a credential claiming a later
/// one (`exp = 2^63`, an `expires_in` of `u64::MAX`) expires then, so no expiry is too large for
/// the arithmetic on it or for a client's clock.
pub const MAX_EXPIRES_AT: u64 = 253_402_300_799;

/// An expiry as an identity holds it: clamped to [`MAX_EXPIRES_AT`].
pub fn clamp_expiry(expires_at: u64) -> u64 {
    expires_at.min(MAX_EXPIRES_AT)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_expiries_are_clamped() {
        assert_eq!(clamp_expiry(u64::MAX), MAX_EXPIRES_AT);
        assert_eq!(clamp_expiry(1 << 63), MAX_EXPIRES_AT);
        assert_eq!(clamp_expiry(1_790_000_000), 1_790_000_000);
    }

    #[test]
    fn anonymous_has_no_user_and_no_expiry() {
        let anonymous = Identity::anonymous();
        assert!(!anonymous.is_authenticated());
        assert_eq!(anonymous.expires_at, None);
        assert_eq!(anonymous.authenticator, "anonymous");
        assert_eq!(anonymous.session_key(), None);
    }

    #[test]
    fn sockets_of_one_session_share_a_key_per_authenticator() {
        let headers: Arc<[(String, String)]> =
            Arc::from(vec![("cookie".to_owned(), "sessionid=abc".to_owned())]);
        let by_cookie = Identity {
            user: Some("42".into()),
            authenticator: "introspect",
            credential: Some(Credential::Headers(headers.clone())),
            ..Identity::default()
        };
        let named = Identity {
            session: Some("s1".into()),
            ..by_cookie.clone()
        };
        assert_eq!(
            by_cookie.session_key().as_deref(),
            Some("introspect\ncookie=sessionid=abc")
        );
        assert_eq!(
            named.session_key().as_deref(),
            Some("introspect\nsession:s1")
        );
        let other_authenticator = Identity {
            authenticator: "redis_session",
            ..named.clone()
        };
        assert_ne!(other_authenticator.session_key(), named.session_key());
    }
}
