//! Everything the node receives from Redis, decoded and handed on: channel and user envelopes to
//! the sink as publications, control operations to the sink, probe echoes to the probe.
//!
//! A payload that is not a valid envelope (or control op) is counted in
//! `switchboard_broker_decode_errors_total`, logged once per Redis channel, and dropped; it never
//! reaches a client and never stops the node. Messages lost because the receiver fell behind
//! are reported to the sink as a gap on every channel, so groups keeping history catch up.

use std::collections::HashSet;
use std::sync::Arc;

use fred::interfaces::EventInterface;
use fred::types::Message;
use tokio::sync::broadcast;

use super::Shared;
use super::names::Incoming;
use crate::broker::{BrokerSink, Publication, Topic};
use crate::metrics as names;
use crate::protocol::{ChannelName, ControlOp, Envelope};

/// Distinct Redis channels whose decode errors are logged; past this, errors are only counted.
const LOGGED_CHANNELS: usize = 1_024;

/// Receives until the subscriber client is closed.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut messages = shared.subscriber.message_rx();
    let mut decode_errors = DecodeErrorLog::default();
    let sink = shared.sink.clone();
    loop {
        match messages.recv().await {
            Ok(message) => dispatch(&shared, sink.as_ref(), &mut decode_errors, &message),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!(names::MESSAGES_DROPPED, "reason" => names::dropped::BROKER_LAGGED)
                    .increment(missed);
                tracing::warn!(
                    missed,
                    "fell behind the redis subscriber; messages were lost"
                );
                sink.on_gap(None);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn dispatch(
    shared: &Shared,
    sink: &dyn BrokerSink,
    decode_errors: &mut DecodeErrorLog,
    message: &Message,
) {
    let payload = message.value.as_bytes().unwrap_or_default();
    let redis_channel: &str = &message.channel;
    let (kind, outcome) = match shared.names.parse(redis_channel) {
        Incoming::Channel(name) => (
            names::broker_kinds::CHANNEL,
            ChannelName::parse(name)
                .map_err(|err| err.to_string())
                .and_then(|channel| publication(Topic::Channel(channel), payload))
                .map(|publication| {
                    // A refusal (overloaded group) is counted where it happens; the publisher is
                    // on another node or a back-end and cannot be told.
                    let _ = sink.on_publication(publication);
                }),
        ),
        Incoming::User(user) => (
            names::broker_kinds::USER,
            publication(Topic::User(Arc::from(user)), payload).map(|publication| {
                let _ = sink.on_publication(publication);
            }),
        ),
        Incoming::Control => (
            names::broker_kinds::CONTROL,
            ControlOp::decode(payload)
                .map(|op| sink.on_control(op))
                .map_err(|err| err.to_string()),
        ),
        Incoming::Node => {
            shared.probe.on_echo(payload);
            (names::broker_kinds::NODE, Ok(()))
        }
        Incoming::Other => {
            tracing::debug!(
                channel = redis_channel,
                "message on a channel this node ignores"
            );
            (names::broker_kinds::OTHER, Ok(()))
        }
    };
    metrics::counter!(names::BROKER_RECEIVED, "kind" => kind).increment(1);
    if let Err(reason) = outcome {
        metrics::counter!(names::BROKER_DECODE_ERRORS, "kind" => kind).increment(1);
        decode_errors.log(redis_channel, &reason);
    }
}

fn publication(topic: Topic, payload: &[u8]) -> Result<Arc<Publication>, String> {
    let envelope = Envelope::decode(payload).map_err(|err| err.to_string())?;
    let position = envelope.position().map_err(|err| err.to_string())?;
    Ok(Arc::new(Publication {
        kind: envelope.kind,
        position,
        ..Publication::new(topic, envelope.data, envelope.from)
    }))
}

/// Logs the first decode error of each Redis channel, so a misbehaving publisher is visible
/// without flooding the log.
#[derive(Default)]
struct DecodeErrorLog {
    logged: HashSet<String>,
}

impl DecodeErrorLog {
    fn log(&mut self, channel: &str, reason: &str) {
        if self.logged.contains(channel) || self.logged.len() > LOGGED_CHANNELS {
            return;
        }
        if self.logged.len() == LOGGED_CHANNELS {
            tracing::warn!(
                "invalid payloads on more than {LOGGED_CHANNELS} redis channels; \
                 further ones are counted, not logged"
            );
            self.logged.insert(String::new());
            return;
        }
        self.logged.insert(channel.to_owned());
        tracing::warn!(
            channel,
            reason,
            "dropped a payload that is not a valid envelope (logged once per channel; \
             counted in switchboard_broker_decode_errors_total)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_is_logged_once_and_the_log_is_bounded() {
        let mut log = DecodeErrorLog::default();
        log.log("sb:ch:a", "bad");
        log.log("sb:ch:a", "bad again");
        assert_eq!(log.logged.len(), 1);
        for n in 0..LOGGED_CHANNELS * 2 {
            log.log(&format!("sb:ch:{n}"), "bad");
        }
        assert_eq!(log.logged.len(), LOGGED_CHANNELS + 1);
    }
}
