//! The readiness probe: proof that pub/sub works end to end, not just that Redis answers PING.
//!
//! Every [`PROBE_INTERVAL`] the node publishes `{"op":"probe","seq":N}` on its own channel
//! (`PREFIX:node:ID`) through the same publishing queue and subscriber connection as channel
//! traffic, and times the echo. The broker is ready while an echo arrived within
//! [`READY_WINDOW`]; the round trip is the `switchboard_broker_round_trip_seconds` histogram, and
//! readiness is the `switchboard_broker_up` gauge.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::metrics as names;

/// How often the probe publishes.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How recent the last echo must be for the broker to count as ready.
pub(super) const READY_WINDOW: Duration = Duration::from_secs(3);
/// Probes remembered while waiting for their echo.
const OUTSTANDING: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
struct ProbePayload {
    op: String,
    seq: u64,
}

struct State {
    next_seq: u64,
    /// Probes sent and not yet echoed, oldest first.
    outstanding: VecDeque<(u64, Instant)>,
    last_echo: Option<Instant>,
    /// What was last logged (`None`: nothing yet), so each change is logged once.
    reported_ready: Option<bool>,
    started: Instant,
}

pub(super) struct Probe {
    state: Mutex<State>,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                next_seq: 0,
                outstanding: VecDeque::new(),
                last_echo: None,
                reported_ready: None,
                started: Instant::now(),
            }),
        }
    }
}

impl Probe {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next probe's payload, remembered with the time it is sent.
    pub(super) fn next(&self) -> Bytes {
        let mut state = self.state();
        state.next_seq += 1;
        let seq = state.next_seq;
        if state.outstanding.len() == OUTSTANDING {
            state.outstanding.pop_front();
        }
        state.outstanding.push_back((seq, Instant::now()));
        let payload = ProbePayload {
            op: "probe".into(),
            seq,
        };
        Bytes::from(serde_json::to_vec(&payload).unwrap_or_default())
    }

    /// A message on the node's channel: records the round trip if it is one of our probes.
    pub(super) fn on_echo(&self, payload: &[u8]) {
        let Ok(echo) = serde_json::from_slice::<ProbePayload>(payload) else {
            tracing::debug!("ignoring a message on the node channel that is not a probe");
            return;
        };
        let mut state = self.state();
        let Some(position) = state
            .outstanding
            .iter()
            .position(|&(seq, _)| seq == echo.seq)
        else {
            return;
        };
        if let Some((_, sent)) = state.outstanding.remove(position) {
            let now = Instant::now();
            metrics::histogram!(names::BROKER_ROUND_TRIP).record((now - sent).as_secs_f64());
            state.last_echo = Some(now);
        }
    }

    /// Whether an echo arrived within the readiness window.
    pub(super) fn is_fresh(&self) -> bool {
        self.state()
            .last_echo
            .is_some_and(|echo| echo.elapsed() < READY_WINDOW)
    }

    /// Publishes the readiness gauge, and logs when readiness changes (not being ready yet
    /// right after start is not news until the readiness window has passed).
    pub(super) fn report(&self, ready: bool) {
        metrics::gauge!(names::BROKER_UP).set(if ready { 1.0 } else { 0.0 });
        let mut state = self.state();
        let news = match state.reported_ready {
            Some(reported) => reported != ready,
            None => ready || state.started.elapsed() > READY_WINDOW,
        };
        if news {
            state.reported_ready = Some(ready);
            drop(state);
            if ready {
                tracing::info!("redis pub/sub is ready");
            } else {
                tracing::warn!(
                    "redis pub/sub is not ready: no probe echo within {READY_WINDOW:?}; \
                     /readyz answers 503"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_echo_of_our_own_probe_makes_the_broker_fresh() {
        let probe = Probe::default();
        assert!(!probe.is_fresh());
        probe.on_echo(br#"{"op":"probe","seq":99}"#);
        probe.on_echo(b"garbage");
        assert!(!probe.is_fresh(), "not one of ours");
        let sent = probe.next();
        probe.on_echo(&sent);
        assert!(probe.is_fresh());
    }
}
