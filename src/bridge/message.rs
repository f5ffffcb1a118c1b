//! What channels_redis writes, read back: the serializer's random prefix, then (with
//! `symmetric_encryption_keys`) a Fernet token, then MessagePack of the message dict. Every byte
//! here was written by whoever can write to that Redis, so it is checked like a client frame:
//! bounded in size, nesting limited (`protocol::depth`), and a value JSON cannot hold (bytes,
//! non-string keys) refuses the message rather than reaching clients half-converted.
//!
//! The core layer adds `__asgi_channel__` (the member channel names the message is for, a list
//! from `group_send`, a string from `send`); it is taken out of the data clients see.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// The key channels_redis adds for the receiving channel names.
pub const ASGI_CHANNEL: &str = "__asgi_channel__";
/// The largest message the bridge decodes (channels_redis has no limit; Redis values are at most
/// 512 MB). Bigger ones are dropped as undecodable.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("shorter than the serializer's random prefix")]
    Truncated,
    #[error(
        "not a Fernet token under any of the symmetric_encryption_keys (or older than its ttl)"
    )]
    Undecryptable,
    #[error("not MessagePack of a JSON-compatible dict: {0}")]
    NotADict(String),
}

/// How the layer's serializer is set up.
pub struct Decoder {
    random_prefix_length: usize,
    /// Tried in order, as Python's `MultiFernet` does.
    fernets: Vec<fernet::Fernet>,
    /// The Fernet ttl (core layer: `expiry` + 10 s, as channels_redis passes it); `None`: none.
    ttl: Option<Duration>,
}

/// A decoded message: its data (without `__asgi_channel__`) and the channel names it was for.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub data: Value,
    pub targets: Vec<String>,
}

impl Decoder {
    /// A problem names nothing: the caller knows the key (`symmetric_encryption_keys`).
    pub fn new(random_prefix_length: usize, keys: &[String], ttl: Option<Duration>) -> Self {
        Self {
            random_prefix_length,
            fernets: keys.iter().map(|key| fernet_for(key)).collect(),
            ttl,
        }
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge);
        }
        let body = bytes
            .get(self.random_prefix_length..)
            .ok_or(DecodeError::Truncated)?;
        let plain;
        let packed = if self.fernets.is_empty() {
            body
        } else {
            plain = self.decrypt(body)?;
            plain.as_slice()
        };
        let value: Value =
            crate::protocol::depth::from_msgpack(packed).map_err(DecodeError::NotADict)?;
        crate::protocol::depth::check(&value)
            .map_err(|err| DecodeError::NotADict(err.to_string()))?;
        let Value::Object(mut data) = value else {
            return Err(DecodeError::NotADict("not a dict".into()));
        };
        let targets = take_targets(&mut data)?;
        Ok(Decoded {
            data: Value::Object(data),
            targets,
        })
    }

    fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let token = std::str::from_utf8(token).map_err(|_| DecodeError::Undecryptable)?;
        // The age is checked here, after the signature: the fernet crate's own ttl check adds
        // the token's (not yet authenticated) timestamp to the ttl, which overflows for a
        // forged timestamp near u64::MAX.
        let plain = self
            .fernets
            .iter()
            .find_map(|fernet| fernet.decrypt(token).ok())
            .ok_or(DecodeError::Undecryptable)?;
        if let Some(ttl) = self.ttl {
            let issued = issued_at(token).ok_or(DecodeError::Undecryptable)?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            if now.saturating_sub(issued) > ttl.as_secs() {
                return Err(DecodeError::Undecryptable);
            }
        }
        Ok(plain)
    }
}

/// When a Fernet token says it was made: the big-endian seconds after its version byte (the
/// first 9 bytes are the first 12 characters of its URL-safe base64).
fn issued_at(token: &str) -> Option<u64> {
    use base64::Engine;
    let head = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.get(..12)?)
        .ok()?;
    let seconds: [u8; 8] = head.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(seconds))
}

/// Python's `channels_redis` key derivation: the Fernet key is the URL-safe base64 of the
/// SHA-256 of the configured key.
fn fernet_for(key: &str) -> fernet::Fernet {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(digest.as_ref());
    // 32 bytes, URL-safe base64 with padding: exactly what `Fernet::new` accepts.
    fernet::Fernet::new(&encoded).unwrap_or_else(|| unreachable!("a SHA-256 digest is 32 bytes"))
}

fn take_targets(data: &mut Map<String, Value>) -> Result<Vec<String>, DecodeError> {
    let not_names = || DecodeError::NotADict(format!("{ASGI_CHANNEL} is not channel names"));
    match data.remove(ASGI_CHANNEL) {
        None => Ok(Vec::new()),
        Some(Value::String(name)) => Ok(vec![name]),
        Some(Value::Array(names)) => names
            .into_iter()
            .map(|name| match name {
                Value::String(name) => Ok(name),
                _ => Err(not_names()),
            })
            .collect(),
        Some(_) => Err(not_names()),
    }
}

/// Now as channels_redis scores it: seconds since the epoch, as a float.
pub fn now_score() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A `group_send` message as channels_redis 4.3.0's serializer writes it (`registry
    /// .get_serializer("msgpack", random_prefix_length=12)`), hex-encoded; the prefix is random
    /// there, these 12 bytes stand for it.
    const PLAIN: &str = concat!(
        "000102030405060708090a0b",
        "83a474797065ac636861742e6d657373616765a474657874a26869b05f5f617367695f6368616e6e656c5f5f",
        "91b2737769746368626f6172642e61626321676f"
    );

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn a_plain_group_send_message_decodes() {
        let decoded = Decoder::new(12, &[], None)
            .decode(&hex(PLAIN))
            .expect("decodes");
        assert_eq!(decoded.data, json!({"type": "chat.message", "text": "hi"}));
        assert_eq!(decoded.targets, vec!["switchboard.abc!go".to_owned()]);
    }

    #[test]
    fn an_encrypted_message_decodes_under_any_of_the_keys() {
        let packed = hex(PLAIN)[12..].to_vec();
        let token = fernet_for("second").encrypt(&packed);
        let mut bytes = vec![7u8; 12];
        bytes.extend_from_slice(token.as_bytes());
        let keys = ["first".to_owned(), "second".to_owned()];
        let decoded = Decoder::new(12, &keys, Some(Duration::from_secs(70)))
            .decode(&bytes)
            .expect("decodes under the second key");
        assert_eq!(decoded.data["text"], "hi");
        let wrong = Decoder::new(12, &["other".to_owned()], None).decode(&bytes);
        assert_eq!(wrong, Err(DecodeError::Undecryptable));
        let unencrypted = Decoder::new(12, &keys, None).decode(&hex(PLAIN));
        assert_eq!(unencrypted, Err(DecodeError::Undecryptable));
    }

    /// channels_redis 4.3.0's pub/sub serializer with `symmetric_encryption_keys=["django-secret"]`
    /// (no prefix, no ttl): checks the key derivation against Python's.
    const PYTHON_TOKEN: &str = "gAAAAABrD4zwyf-ABGXdaNQb8b7ITeZNHYsvosDXIgZW1EBeIvv8Z9hvqc8ASy051LPSD6y4RTdkdnnZ_Gxt_FWUmxVG_M-dSwGVD95zjYoQSvJaz00eoAA=";

    #[test]
    fn a_token_python_encrypted_decrypts() {
        let decoder = Decoder::new(0, &["django-secret".to_owned()], None);
        let decoded = decoder.decode(PYTHON_TOKEN.as_bytes()).expect("decrypts");
        assert_eq!(decoded.data, json!({"type": "chat.message", "text": "hi"}));
        assert!(decoded.targets.is_empty());
    }

    #[test]
    fn a_forged_timestamp_cannot_overflow_the_age_check() {
        use base64::Engine;
        // Version, timestamp u64::MAX, an IV, a block of ciphertext, a (wrong) HMAC.
        let mut raw = vec![0x80];
        raw.extend([0xff; 8]);
        raw.extend([0; 16 + 16 + 32]);
        let token = base64::engine::general_purpose::URL_SAFE.encode(raw);
        let decoder = Decoder::new(0, &["k".to_owned()], Some(Duration::from_secs(u64::MAX)));
        assert_eq!(
            decoder.decode(token.as_bytes()),
            Err(DecodeError::Undecryptable)
        );
        // A genuine token older than the ttl is refused, a fresh one is not. `old` is Python's
        // `Fernet(key).encrypt_at_time(<PLAIN's body>, 1000)` under channels_redis's key for "k".
        let old = "gAAAAAAAAAPoDpRE3aoQWy4imz_67N2nSZgkZ3ZGKV-KMKvCTr9LBylbrqAQSOZJkxnQw3SpRGGAVDdnqpPtOxjrPVCzvYbXFvp7UtVeomjwDbNWagxvEZ_OOlNvjBtbQZsoHU5yVzzsCwTM7Ft_xKZq5Hlz1epBaCacmk2ZUXz3yzVQpmmmiMA=";
        let fresh = fernet_for("k").encrypt(&hex(PLAIN)[12..]);
        let lenient = Decoder::new(0, &["k".to_owned()], None);
        assert!(
            lenient.decode(old.as_bytes()).is_ok(),
            "the key derivation matches"
        );
        let strict = Decoder::new(0, &["k".to_owned()], Some(Duration::from_secs(70)));
        assert_eq!(
            strict.decode(old.as_bytes()),
            Err(DecodeError::Undecryptable)
        );
        assert!(strict.decode(fresh.as_bytes()).is_ok());
    }

    #[test]
    fn hostile_bytes_are_refused_not_panicked_on() {
        let decoder = Decoder::new(12, &[], None);
        assert_eq!(decoder.decode(b"short"), Err(DecodeError::Truncated));
        assert!(matches!(
            decoder.decode(&[0; 13]),
            Err(DecodeError::NotADict(_))
        ));
        // bin 8 (bytes are no JSON), an int-keyed map, a list.
        for body in [&[0xc4, 1, 0][..], &[0x81, 0x01, 0x02], &[0x91, 0x01]] {
            let mut bytes = vec![0u8; 12];
            bytes.extend_from_slice(body);
            assert!(
                matches!(decoder.decode(&bytes), Err(DecodeError::NotADict(_))),
                "{body:?}"
            );
        }
        let mut deep = vec![0u8; 12];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        assert!(matches!(
            decoder.decode(&deep),
            Err(DecodeError::NotADict(_))
        ));
        let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decoder.decode(&huge), Err(DecodeError::TooLarge));
        let mut bad_targets = vec![0u8; 12];
        bad_targets.extend_from_slice(&hex("81b05f5f617367695f6368616e6e656c5f5f01"));
        assert!(matches!(
            decoder.decode(&bad_targets),
            Err(DecodeError::NotADict(_))
        ));
    }
}
