//! Keeps sessions honest while their sockets are open: the node's table of live back-end
//! sessions (from `introspect` and `redis_session`), each checked again every
//! `auth.revalidate_interval` by one call, however many sockets share it.
//!
//! A connection whose identity can be re-validated is tracked under its session key
//! ([`Identity::session_key`]) for as long as it is open. One task walks the table: a session
//! whose check is due is asked about once ([`AuthChain::revalidate`], at most
//! [`MAX_CONCURRENT_CHECKS`] at a time), and the answer applies to every socket of it:
//! - alive: nothing happens, except that a new expiry is recorded (sockets read it through their
//!   [`SessionTicket`] when their expiry timer fires);
//! - dead (logged out, expired at the back end), or past its expiry: every socket closes with
//!   4001;
//! - unknown (the back end is down or slow): sockets stay open (fail-open) while the failures
//!   last less than `auth.revalidate_grace`; after that they close with 4001 (fail-closed).
//!
//! Checks are spread out: the first comes after a random 50–100% of the interval, the next ones
//! 100–110% of the interval after the previous, so sessions opened together drift apart and no
//! session is checked twice within one interval.
//!
//! What it is not: expiry of self-contained tokens is the connection actor's own timer, and
//! revocations pushed by the back end arrive on the broker's control channel (`hub::sink`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::auth::{AuthChain, Identity, Revalidation, unix_now};
use crate::hub::{ConnectionKey, Disconnector};
use crate::metrics as names;
use crate::protocol::CloseReason;

/// Re-validation calls in flight at once on a node.
pub(crate) const MAX_CONCURRENT_CHECKS: usize = 32;
/// The longest pause between two walks of the table.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest pause between two walks of the table.
const MIN_TICK: Duration = Duration::from_millis(10);

/// What a tracked connection holds: its session's key and current expiry.
#[derive(Debug)]
pub(crate) struct SessionTicket {
    key: String,
    expires_at: Arc<AtomicU64>,
}

impl SessionTicket {
    /// The session's expiry as last reported by its back end (seconds since the epoch).
    pub(crate) fn expires_at(&self) -> Option<u64> {
        match self.expires_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }
}

struct TrackedSession {
    /// The identity of the first socket: what the authenticator is asked about.
    identity: Identity,
    members: HashMap<ConnectionKey, Disconnector>,
    expires_at: Arc<AtomicU64>,
    next_check: Instant,
    /// When the back end first failed to answer, in the current run of failures.
    failing_since: Option<Instant>,
    checking: bool,
}

struct Shared {
    chain: Arc<AuthChain>,
    interval: Duration,
    grace: Duration,
    table: Mutex<HashMap<String, TrackedSession>>,
}

/// The node's session table; cheap to clone.
#[derive(Clone)]
pub(crate) struct SessionKeeper {
    shared: Arc<Shared>,
}

impl SessionKeeper {
    pub(crate) fn new(chain: Arc<AuthChain>, interval: Duration, grace: Duration) -> Self {
        names::register::gauge(names::SESSIONS);
        Self {
            shared: Arc::new(Shared {
                chain,
                interval,
                grace,
                table: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Tracks a connection when its identity is one that is re-validated; `None` otherwise.
    pub(crate) fn track(
        &self,
        connection: ConnectionKey,
        identity: &Identity,
        disconnector: Disconnector,
    ) -> Option<SessionTicket> {
        if !self.shared.chain.revalidates(identity) {
            return None;
        }
        let key = identity.session_key()?;
        let mut table = self.shared.lock();
        let interval = self.shared.interval;
        let session = table.entry(key.clone()).or_insert_with(|| TrackedSession {
            identity: identity.clone(),
            members: HashMap::new(),
            expires_at: Arc::new(AtomicU64::new(identity.expires_at.unwrap_or(0))),
            next_check: Instant::now() + interval.mul_f64(0.5 + fastrand::f64() * 0.5),
            failing_since: None,
            checking: false,
        });
        session.members.insert(connection, disconnector);
        let ticket = SessionTicket {
            key,
            expires_at: session.expires_at.clone(),
        };
        metrics::gauge!(names::SESSIONS).set(table.len() as f64);
        Some(ticket)
    }

    /// Forgets a closed connection; the session goes when its last socket does.
    pub(crate) fn untrack(&self, connection: ConnectionKey, ticket: &SessionTicket) {
        let mut table = self.shared.lock();
        if let Some(session) = table.get_mut(&ticket.key) {
            session.members.remove(&connection);
            if session.members.is_empty() {
                table.remove(&ticket.key);
            }
        }
        metrics::gauge!(names::SESSIONS).set(table.len() as f64);
    }

    /// How many sessions are tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shared.lock().len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Walks the table forever: closes expired sessions and starts due checks. Spawn it once.
    pub(crate) async fn run(self) {
        let tick = (self.shared.interval / 10).clamp(MIN_TICK, MAX_TICK);
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS));
        loop {
            tokio::time::sleep(tick).await;
            for (key, identity) in self.shared.due() {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let answer = shared
                        .chain
                        .revalidate(&identity)
                        .await
                        .unwrap_or_else(|err| Revalidation::Unknown(err.to_string()));
                    shared.settle(&key, answer);
                    drop(permit);
                });
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, TrackedSession>> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes sessions past their expiry; marks and returns the ones whose check is due.
    fn due(&self) -> Vec<(String, Identity)> {
        let now = Instant::now();
        let unix = unix_now();
        let mut table = self.lock();
        let expired: Vec<String> = table
            .iter()
            .filter(|(_, session)| {
                session.expires_at.load(Ordering::Relaxed) != 0
                    && session.expires_at.load(Ordering::Relaxed) <= unix
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            if let Some(session) = table.remove(&key) {
                close_all(&session, CloseReason::EXPIRED);
            }
        }
        metrics::gauge!(names::SESSIONS).set(table.len() as f64);
        table
            .iter_mut()
            .filter(|(_, session)| !session.checking && session.next_check <= now)
            .map(|(key, session)| {
                session.checking = true;
                (key.clone(), session.identity.clone())
            })
            .collect()
    }

    /// Applies a check's answer to every socket of the session.
    fn settle(&self, key: &str, answer: Revalidation) {
        let now = Instant::now();
        let mut table = self.lock();
        // Every socket may have closed while the check was in flight.
        let Some(session) = table.get_mut(key) else {
            return;
        };
        session.checking = false;
        let authenticator = session.identity.authenticator;
        let count = |result: &'static str| {
            metrics::counter!(names::REVALIDATIONS, "authenticator" => authenticator, "result" => result)
                .increment(1);
        };
        let next_check = now + self.interval.mul_f64(1.0 + fastrand::f64() * 0.1);
        let close_reason = match answer {
            Revalidation::Alive { expires_at } => {
                count("alive");
                session.failing_since = None;
                session
                    .expires_at
                    .store(expires_at.unwrap_or(0), Ordering::Relaxed);
                session.next_check = next_check;
                None
            }
            Revalidation::Dead => {
                count("dead");
                Some(CloseReason::SESSION_ENDED)
            }
            Revalidation::Unknown(reason) => {
                let since = *session.failing_since.get_or_insert(now);
                if now.duration_since(since) >= self.grace {
                    count("failed_closed");
                    tracing::warn!(authenticator, %reason, grace = ?self.grace, sockets = session.members.len(), "session unverifiable for longer than the grace; closing its sockets");
                    Some(CloseReason::UNVERIFIABLE)
                } else {
                    count("unavailable");
                    tracing::debug!(authenticator, %reason, "session re-validation failed; keeping its sockets open");
                    session.next_check = next_check.min(since + self.grace);
                    None
                }
            }
        };
        if let Some(reason) = close_reason {
            if let Some(session) = table.remove(key) {
                close_all(&session, reason);
            }
            metrics::gauge!(names::SESSIONS).set(table.len() as f64);
        }
    }
}

fn close_all(session: &TrackedSession, reason: CloseReason) {
    for disconnector in session.members.values() {
        disconnector.close(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthError, AuthFuture, Authenticator, Credential, Handshake};
    use crate::protocol::CloseCode;
    use std::sync::atomic::AtomicUsize;

    /// Answers re-validations from a script and counts them.
    struct Scripted {
        answer: Mutex<Revalidation>,
        calls: AtomicUsize,
    }

    impl Authenticator for Arc<Scripted> {
        fn name(&self) -> &'static str {
            "scripted"
        }

        fn authenticate<'a>(&'a self, _: &'a Handshake) -> AuthFuture<'a, Option<Identity>> {
            Box::pin(async { Ok(None) })
        }

        fn revalidate<'a>(&'a self, _: &'a Identity) -> AuthFuture<'a, Revalidation> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .answer
                .lock()
                .map(|answer| answer.clone())
                .map_err(|_| AuthError::Unavailable("poisoned".into()));
            Box::pin(async move { answer })
        }
    }

    fn identity(session: &str) -> Identity {
        Identity {
            user: Some("42".into()),
            session: Some(session.into()),
            authenticator: "scripted",
            credential: Some(Credential::SessionId(Arc::from(session))),
            ..Identity::default()
        }
    }

    fn keeper(answer: Revalidation, grace: Duration) -> (SessionKeeper, Arc<Scripted>) {
        let scripted = Arc::new(Scripted {
            answer: Mutex::new(answer),
            calls: AtomicUsize::new(0),
        });
        let chain = AuthChain::new(vec![Box::new(scripted.clone())], false);
        let keeper = SessionKeeper::new(Arc::new(chain), Duration::from_millis(100), grace);
        (keeper, scripted)
    }

    async fn closed(receiver: tokio::sync::oneshot::Receiver<crate::hub::Disconnect>) -> CloseCode {
        tokio::time::timeout(Duration::from_secs(5), receiver)
            .await
            .expect("closed in time")
            .expect("notice")
            .code
    }

    #[tokio::test]
    async fn one_check_per_session_and_a_dead_one_closes_all_its_sockets() {
        let (keeper, scripted) = keeper(Revalidation::Alive { expires_at: None }, Duration::ZERO);
        let mut notices = Vec::new();
        for key in 0..50u64 {
            let (disconnector, notice) = Disconnector::new();
            let session = format!("s{}", key % 5);
            assert!(
                keeper
                    .track(key, &identity(&session), disconnector)
                    .is_some()
            );
            notices.push(notice);
        }
        assert_eq!(keeper.len(), 5);
        let running = tokio::spawn(keeper.clone().run());
        tokio::time::sleep(Duration::from_millis(250)).await;
        let calls = scripted.calls.load(Ordering::SeqCst);
        assert!(
            (5..=10).contains(&calls),
            "{calls} checks for 5 sessions in 2.5 intervals"
        );
        *scripted.answer.lock().expect("lock") = Revalidation::Dead;
        for notice in notices {
            assert_eq!(closed(notice).await, CloseCode::SessionExpired);
        }
        assert!(keeper.is_empty());
        running.abort();
    }

    #[tokio::test]
    async fn an_unreachable_back_end_fails_open_for_the_grace_then_closed() {
        let grace = Duration::from_millis(400);
        let (keeper, _) = keeper(Revalidation::Unknown("down".into()), grace);
        let (disconnector, mut notice) = Disconnector::new();
        let _ticket = keeper
            .track(1, &identity("s"), disconnector)
            .expect("tracked");
        let started = Instant::now();
        let running = tokio::spawn(keeper.clone().run());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(notice.try_recv().is_err(), "closed before the grace ended");
        let notice = tokio::time::timeout(Duration::from_secs(5), notice)
            .await
            .expect("closed in time")
            .expect("notice");
        assert_eq!(notice.code, CloseCode::SessionExpired);
        assert_eq!(notice.reason, CloseReason::UNVERIFIABLE.text);
        assert!(started.elapsed() >= grace);
        running.abort();
    }

    #[tokio::test]
    async fn untracking_the_last_socket_forgets_the_session_and_tokens_are_not_tracked() {
        let (keeper, _) = keeper(Revalidation::Alive { expires_at: None }, Duration::ZERO);
        let (disconnector, _notice) = Disconnector::new();
        let ticket = keeper
            .track(7, &identity("s"), disconnector.clone())
            .expect("tracked");
        keeper.untrack(7, &ticket);
        assert!(keeper.is_empty());
        let token = Identity {
            credential: None,
            ..identity("s")
        };
        assert!(keeper.track(8, &token, disconnector).is_none());
    }

    #[tokio::test]
    async fn a_session_past_its_expiry_closes_with_4001() {
        let (keeper, _) = keeper(Revalidation::Alive { expires_at: None }, Duration::ZERO);
        let (disconnector, notice) = Disconnector::new();
        let expiring = Identity {
            expires_at: Some(unix_now() + 1),
            ..identity("s")
        };
        let ticket = keeper.track(1, &expiring, disconnector).expect("tracked");
        assert_eq!(ticket.expires_at(), expiring.expires_at);
        // The scripted back end says "alive, no expiry", so stop it from answering first.
        keeper.shared.lock().values_mut().for_each(|session| {
            session.next_check = Instant::now() + Duration::from_secs(60);
        });
        let running = tokio::spawn(keeper.clone().run());
        assert_eq!(closed(notice).await, CloseCode::SessionExpired);
        running.abort();
    }
}
