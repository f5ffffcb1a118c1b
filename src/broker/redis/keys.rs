//! [`RedisKeys`]: plain key reads (`GET`) on their own connection, for the `redis_session`
//! authenticator, which looks session ids up in Redis. It lives here because this module is the
//! only one that imports `fred`; `auth` sees it as a [`SessionStore`].

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::KeysInterface;

use super::link::Link;
use super::{not_connected, start_client};
use crate::auth::{AuthError, AuthFuture, SessionStore};
use crate::broker::{BrokerConfig, BrokerError};

/// How long a `GET` may take before the handshake is answered 503.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis connection for reading keys; reconnects by itself like the broker's clients.
pub struct RedisKeys {
    client: Client,
    link: Arc<Link>,
}

impl RedisKeys {
    /// Starts connecting in the background (Redis need not be up); must run inside a tokio
    /// runtime. Fails only on a bad configuration.
    pub fn start(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let (client, link) = start_client(config, "sessions")?;
        Ok(Self { client, link })
    }

    /// The string under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<String>, BrokerError> {
        if !self.link.is_up(&self.client) {
            return Err(not_connected());
        }
        match tokio::time::timeout(READ_TIMEOUT, self.client.get::<Option<String>, _>(key)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(BrokerError::Unavailable(format!("GET failed: {err}"))),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "GET took longer than {READ_TIMEOUT:?}"
            ))),
        }
    }
}

impl SessionStore for RedisKeys {
    fn get<'a>(&'a self, key: &'a str) -> AuthFuture<'a, Option<String>> {
        Box::pin(async move {
            RedisKeys::get(self, key).await.map_err(|err| match err {
                BrokerError::Unavailable(reason) => {
                    AuthError::Unavailable(format!("session store: {reason}"))
                }
                other => AuthError::Unavailable(format!("session store: {other}")),
            })
        })
    }
}
