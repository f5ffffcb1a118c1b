//! The result of authentication: who the connection is, for how long, and what it may join.

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_has_no_user_and_no_expiry() {
        let anonymous = Identity::anonymous();
        assert!(!anonymous.is_authenticated());
        assert_eq!(anonymous.expires_at, None);
        assert_eq!(anonymous.authenticator, "anonymous");
    }
}
