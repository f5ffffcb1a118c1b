//! The one shape of a configuration problem: the key it is about (`server.bind`,
//! `channels[2].join`, `auth.jwt.public_key_file`, or an environment variable) and what is wrong
//! with it. Every section reports its problems as these; a leaf, so every section can use it.

/// One problem, located by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}
