//! [`RedisKeys`]: plain key reads (`GET`) on their own connection, for the `redis_session`
//! authenticator, which looks session ids up in Redis. It lives here because this module is the
//! only one that imports `fred`; `auth` sees it as a [`SessionStore`].

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::KeysInterface;

use super::link::Link;
use super::{fred_config, not_connected, start_client};
use crate::auth::redis_session::RedisSessionConfig;
use crate::auth::{AuthError, AuthFuture, SessionStore};
use crate::broker::{BrokerConfig, BrokerError, BrokerType};
use crate::config::KeyError;

/// Where `redis_session` reads sessions: its own `url` (with the broker's prefix), else the
/// broker's Redis with its TLS and Cluster settings; the problem, if any, names
/// `auth.redis_session.url`.
pub fn session_store_config(
    redis_session: &RedisSessionConfig,
    broker: &BrokerConfig,
) -> Result<BrokerConfig, KeyError> {
    const KEY: &str = "auth.redis_session.url";
    let store = if !redis_session.url.is_empty() {
        BrokerConfig {
            broker_type: BrokerType::Redis,
            url: redis_session.url.clone(),
            cluster: false,
            tls_ca_file: None,
            ..broker.clone()
        }
    } else if broker.broker_type == BrokerType::Redis {
        broker.clone()
    } else {
        return Err(KeyError::new(
            KEY,
            "required unless broker.type is \"redis\" (then broker.url is used)",
        ));
    };
    fred_config(&store).map_err(|problem| KeyError::new(KEY, problem.message))?;
    Ok(store)
}

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

    /// The string under `key`, if any. A value that is not UTF-8 (Django's pickled sessions)
    /// comes back with its invalid bytes replaced, for the caller to find unreadable: it is
    /// the session's problem, not Redis's.
    pub async fn get(&self, key: &str) -> Result<Option<String>, BrokerError> {
        if !self.link.is_up(&self.client) {
            return Err(not_connected());
        }
        let read = self.client.get::<Option<Vec<u8>>, _>(key);
        match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(value)) => Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())),
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
