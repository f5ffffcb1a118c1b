//! Reading `[auth.jwt]`'s key files again without a restart: on SIGHUP, and when one of them
//! changes (checked every `key_check_interval`), for teams that mount rotated keys.
//!
//! A read builds a whole new verifier (keys, and the algorithms and issuers they allow) and
//! swaps it in; one that fails (a file half-written, a key that does not parse) keeps the
//! verifier in use, is logged with the key it concerns, and is counted
//! (`switchboard_jwt_key_reloads_total{result}`). The watch ends with the authenticator.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::jwt::{CurrentVerifier, JwtConfig, Verifier};
use crate::metrics::{self as names, register};

/// What a key file looks like now: when it last changed and its length (`None`: unreadable).
type Stamp = Option<(SystemTime, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|file| {
            let metadata = std::fs::metadata(file).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}

/// Starts watching the key files `config` names, when it names any and a runtime is running
/// (`check-config` has none: nothing to watch).
pub(super) fn watch(config: &JwtConfig, verifier: &CurrentVerifier) {
    let files: Vec<PathBuf> = [&config.public_key_file, &config.jwks_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if files.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    register::counter(names::JWT_KEY_RELOADS, &[("result", "ok")]);
    register::counter(names::JWT_KEY_RELOADS, &[("result", "failed")]);
    let config = config.clone();
    let verifier = Arc::downgrade(verifier);
    runtime.spawn(async move { run(config, files, verifier).await });
}

/// What woke the watch.
enum Wake {
    Hangup,
    Check,
    /// The SIGHUP stream ended: no more signals.
    Deaf,
}

async fn next_hangup(hangups: &mut Option<Signal>) -> Wake {
    match hangups {
        Some(hangups) => match hangups.recv().await {
            Some(()) => Wake::Hangup,
            None => Wake::Deaf,
        },
        None => std::future::pending().await,
    }
}

async fn next_check(checks: &mut Option<tokio::time::Interval>) -> Wake {
    match checks {
        Some(checks) => {
            checks.tick().await;
            Wake::Check
        }
        None => std::future::pending().await,
    }
}

async fn run(config: JwtConfig, files: Vec<PathBuf>, verifier: Weak<RwLock<Arc<Verifier>>>) {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; JWT key files are only checked for changes");
            None
        }
    };
    let interval = config.key_check_interval.0;
    let mut checks = (!interval.is_zero()).then(|| {
        let mut checks = tokio::time::interval(interval.max(Duration::from_millis(100)));
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checks
    });
    let mut seen = stamps(&files);
    loop {
        let wake = tokio::select! {
            wake = next_hangup(&mut hangups) => wake,
            wake = next_check(&mut checks) => wake,
        };
        let Some(current) = verifier.upgrade() else {
            return;
        };
        let now = stamps(&files);
        let why = match wake {
            Wake::Hangup => "SIGHUP",
            Wake::Check if now != seen => "a key file changed",
            Wake::Check => continue,
            Wake::Deaf => {
                hangups = None;
                continue;
            }
        };
        seen = now;
        reload(&config, &current, why);
    }
}

fn reload(config: &JwtConfig, current: &CurrentVerifier, why: &str) {
    // The providers' keys are not the files': the same ones serve the new verifier.
    let remote = match current.read() {
        Ok(verifier) => verifier.remote(),
        Err(poisoned) => poisoned.into_inner().remote(),
    };
    match Verifier::from_config(config, remote) {
        Ok(fresh) => {
            match current.write() {
                Ok(mut slot) => *slot = Arc::new(fresh),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
            }
            metrics::counter!(names::JWT_KEY_RELOADS, "result" => "ok").increment(1);
            tracing::info!(why, "JWT keys read again");
        }
        Err(problem) => {
            metrics::counter!(names::JWT_KEY_RELOADS, "result" => "failed").increment(1);
            tracing::error!(why, key = %problem.key, problem = %problem.message, "JWT keys not reloaded; the previous keys stay in use");
        }
    }
}
