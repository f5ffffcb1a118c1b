//! What the receiving side of a run saw: latency from each message's stamp, how many arrived,
//! `error` frames. Each receiving task keeps its own and they are merged at the end.

use tokio::task::JoinHandle;

use crate::histogram::Histogram;
use crate::stamp::{self, Clock, Stamp};
use crate::wire::{Client, Frame, WireError};

/// What one receiving connection saw.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) latency: Histogram,
    pub(crate) delivered: u64,
    pub(crate) disordered: u64,
    /// When the last message arrived, on the run's clock.
    pub(crate) last_at: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

/// Waits for every receiving task and merges what each saw; a task that failed (`role` names
/// what it was) counts as an error.
pub(crate) async fn gather(tasks: Vec<JoinHandle<Received>>, role: &str) -> Received {
    let mut received = Received::default();
    for task in tasks {
        match task.await {
            Ok(one) => received.merge(one),
            Err(err) => received.error(format!("{role} task failed: {err}")),
        }
    }
    received
}

impl Received {
    pub(crate) fn merge(&mut self, other: Received) {
        self.latency.merge(&other.latency);
        self.delivered += other.delivered;
        self.disordered += other.disordered;
        self.last_at = self.last_at.max(other.last_at);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub(crate) fn error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    /// Counts every frame already buffered on `client`, calling `on_stamp` for each stamped
    /// message; stops at the first connection error.
    pub(crate) fn take_buffered(
        &mut self,
        client: &mut Client,
        clock: &Clock,
        mut on_stamp: impl FnMut(Stamp),
    ) -> Result<(), WireError> {
        loop {
            match client.buffered()? {
                Some(Frame::Text(text)) => {
                    if let Some(stamp) = self.frame(text, clock) {
                        on_stamp(stamp);
                    }
                }
                Some(Frame::Binary) => {}
                None => return Ok(()),
            }
        }
    }

    /// Counts one frame: a stamped message (returned) or an `error` frame.
    pub(crate) fn frame(&mut self, frame: &[u8], clock: &Clock) -> Option<stamp::Stamp> {
        match stamp::read(frame) {
            Some(stamp) => {
                let now = clock.micros();
                self.latency.record(now.saturating_sub(stamp.sent_at));
                self.delivered += 1;
                self.last_at = now;
                Some(stamp)
            }
            None => {
                if crate::wire::find(frame, br#""type":"error""#).is_some() {
                    self.error(String::from_utf8_lossy(frame).into_owned());
                }
                None
            }
        }
    }
}
