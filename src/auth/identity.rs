//! The result of authentication: who the connection is, for how long, and what it may join.

use std::time::{SystemTime, UNIX_EPOCH};

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

    /// Seconds left until expiry, or `None` when the credential has no expiry. Zero when past.
    pub fn seconds_until_expiry(&self, now: SystemTime) -> Option<u64> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.expires_at
            .map(|expires_at| expires_at.saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn anonymous_has_no_user_and_no_expiry() {
        let anonymous = Identity::anonymous();
        assert!(!anonymous.is_authenticated());
        assert_eq!(anonymous.seconds_until_expiry(SystemTime::now()), None);
    }

    #[test]
    fn expiry_counts_down_and_stops_at_zero() {
        let identity = Identity {
            user: Some("42".into()),
            expires_at: Some(1_000),
            ..Identity::default()
        };
        assert_eq!(
            identity.seconds_until_expiry(UNIX_EPOCH + Duration::from_secs(400)),
            Some(600)
        );
        assert_eq!(
            identity.seconds_until_expiry(UNIX_EPOCH + Duration::from_secs(4_000)),
            Some(0)
        );
    }
}
