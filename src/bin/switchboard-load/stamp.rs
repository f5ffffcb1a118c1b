//! The payload every load message carries: a sequence number and the send time, padded to a
//! fixed size, and how a receiver reads them back out of a `message` frame without parsing the
//! JSON (the generator must not be the bottleneck).
//!
//! Times are microseconds since the run's [`Clock`] started. The same process sends and
//! receives, so one monotonic clock serves even when the message crossed two nodes.

use std::time::{Duration, Instant};

use crate::wire::find;

/// The run's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn start() -> Self {
        Self(Instant::now())
    }

    pub(crate) fn micros(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }

    pub(crate) fn instant_of(&self, micros: u64) -> Instant {
        self.0 + Duration::from_micros(micros)
    }
}

/// The `data` of message `seq` sent at `sent_at`, padded with `x` to at least `size` bytes of
/// JSON (the peers' figures were taken with 110-byte payloads).
pub(crate) fn data(seq: u64, sent_at: u64, size: usize) -> String {
    let bare = format!(r#"{{"seq":{seq},"t":{sent_at},"pad":""}}"#);
    let pad = size.saturating_sub(bare.len());
    format!(
        r#"{{"seq":{seq},"t":{sent_at},"pad":"{}"}}"#,
        "x".repeat(pad)
    )
}

/// The `publish` frame carrying [`data`].
pub(crate) fn publish_frame(channel: &str, seq: u64, sent_at: u64, size: usize) -> String {
    format!(
        r#"{{"action":"publish","channel":"{channel}","data":{}}}"#,
        data(seq, sent_at, size)
    )
}

/// A stamped message read out of a server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) seq: u64,
    pub(crate) sent_at: u64,
}

/// Reads the stamp out of a `message` frame's text; `None` for any other frame.
pub(crate) fn read(frame: &[u8]) -> Option<Stamp> {
    // Switchboard writes `"type"` first; other servers (the tests' lossy one) may not.
    if !frame.starts_with(br#"{"type":"message""#) && find(frame, br#""type":"message""#).is_none()
    {
        return None;
    }
    Some(Stamp {
        seq: number_after(frame, br#""seq":"#)?,
        sent_at: number_after(frame, br#""t":"#)?,
    })
}

fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(frame, key)? + key.len();
    frame[start..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .fold(None, |value: Option<u64>, &digit| {
            Some(value.unwrap_or(0) * 10 + u64::from(digit - b'0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_survives_the_round_trip_through_a_message_frame() {
        let data = data(42, 123_456, 110);
        assert_eq!(data.len(), 110);
        let value: serde_json::Value = serde_json::from_str(&data).expect("json");
        // The server re-encodes `data`; keys may come back in another order.
        let text = format!(
            r#"{{"type":"message","channel":"bench","data":{}}}"#,
            serde_json::to_string(&value).expect("encode")
        );
        assert_eq!(
            read(text.as_bytes()),
            Some(Stamp {
                seq: 42,
                sent_at: 123_456
            })
        );
        assert_eq!(read(br#"{"type":"reply","id":1,"data":null}"#), None);
        assert!(publish_frame("bench", 1, 2, 110).contains(r#""channel":"bench""#));
    }
}
