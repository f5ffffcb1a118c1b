//! The operator's configuration: one TOML file plus environment overrides, loaded once.
//!
//! Each module owns its section's type (`auth::AuthConfig`, `broker::BrokerConfig`,
//! `hub::ChannelRule`); this module owns `[server]`, puts the sections together, and reports
//! problems by key. Every key is optional and has a named default. Any key can be overridden as
//! `SWITCHBOARD_<SECTION>__<KEY>` (e.g. `SWITCHBOARD_BROKER__URL`; nested tables add more
//! `__<KEY>` parts); the value is read as a TOML value when it parses as one (`true`, `100`,
//! `["a"]`), else as a string. Unknown keys and bad values are errors that name the key, and
//! loading reports every section's errors at once, not just the first.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::api::ApiConfig;
use crate::auth::AuthConfig;
use crate::backend::{BackendConfig, RoutesConfig};
use crate::broker::{BrokerConfig, BrokerType};
use crate::hub::ChannelRule;
use crate::human_duration::HumanDuration;

/// What `check-config` prints in place of a secret.
pub const REDACTED: &str = "REDACTED";

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";
/// Separates the parts of an environment override's key.
pub const ENV_SEPARATOR: &str = "__";

/// The `[server]` section: the listener, limits and timings of connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// Origins allowed to open sockets from a browser; empty: any.
    pub allowed_origins: Vec<String>,
    pub max_frame_bytes: usize,
    pub max_channels_per_connection: usize,
    /// Frames per connection waiting to be written; overflow closes with 4010.
    pub outbound_queue: usize,
    /// Bytes per connection waiting to be written (one larger frame still fits alone); overflow
    /// closes with 4010.
    pub outbound_queue_bytes: usize,
    pub heartbeat_interval: HumanDuration,
    /// How long what the server writes may stay unacknowledged (a peer that stopped reading)
    /// before the kernel drops the connection.
    pub write_timeout: HumanDuration,
    /// A socket silent for this long (no frame, no pong) is closed with 1001.
    pub idle_timeout: HumanDuration,
    pub shutdown_grace: HumanDuration,
    /// Open connections on this node above which handshakes get 429; 0: no limit.
    pub max_connections: usize,
    /// Client frames per second per connection (token bucket refill).
    pub rate_limit: u32,
    /// Client frames a connection may send in a burst.
    pub rate_limit_burst: u32,
    /// A client's joins and leaves of `presence = true` channels per second (each one makes
    /// every member of the channel hear an event); joins beyond it get `rate_limited`.
    pub presence_rate: u32,
    /// Such joins and leaves a connection may make in a burst.
    pub presence_burst: u32,
    /// HTTP worker threads; 0: one per core.
    pub workers: usize,
    /// Threads running channel-group actors; 0: one per core.
    pub group_arbiters: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            max_frame_bytes: 65_536,
            max_channels_per_connection: 128,
            outbound_queue: 1024,
            outbound_queue_bytes: 1024 * 1024,
            heartbeat_interval: HumanDuration::from_secs(15),
            write_timeout: HumanDuration::from_secs(30),
            idle_timeout: HumanDuration::from_secs(45),
            shutdown_grace: HumanDuration::from_secs(10),
            max_connections: 0,
            rate_limit: 100,
            rate_limit_burst: 200,
            presence_rate: 1,
            presence_burst: 20,
            workers: 0,
            group_arbiters: 0,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub broker: BrokerConfig,
    pub auth: AuthConfig,
    /// `[[channels]]` rules; when the file has none, one permissive `*` rule (local development).
    pub channels: Vec<ChannelRule>,
    pub api: ApiConfig,
    /// Action → back-end URL (`default`, `connect`, `disconnect` are special).
    pub routes: RoutesConfig,
    pub backend: BackendConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            broker: BrokerConfig::default(),
            auth: AuthConfig::default(),
            channels: vec![ChannelRule::permissive()],
            api: ApiConfig::default(),
            routes: RoutesConfig::new(),
            backend: BackendConfig::default(),
        }
    }
}

/// One problem, located by its key (`server.bind`, `channels[2].join`) or environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file is not valid TOML: {0}")]
    Syntax(String),
    #[error("invalid configuration:\n{}", .0.iter().map(|err| format!("  {err}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

impl Config {
    /// Reads `path` (if given) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_owned(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::from_sources(text.as_deref(), std::env::vars())
    }

    /// Builds the configuration from TOML text and `(name, value)` environment pairs.
    pub fn from_sources(
        toml_text: Option<&str>,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: Table = match toml_text {
            Some(text) => text
                .parse()
                .map_err(|err: toml::de::Error| ConfigError::Syntax(err.to_string()))?,
            None => Table::new(),
        };
        let mut errors = Vec::new();
        apply_environment(&mut table, environment, &mut errors);

        let mut config = Config::default();
        for (key, value) in table {
            match key.as_str() {
                "server" => section(&key, value, &mut errors, |parsed| config.server = parsed),
                "broker" => section(&key, value, &mut errors, |parsed| config.broker = parsed),
                "auth" => section(&key, value, &mut errors, |parsed| config.auth = parsed),
                "channels" => section(&key, value, &mut errors, |parsed| config.channels = parsed),
                "api" => section(&key, value, &mut errors, |parsed| config.api = parsed),
                "routes" => section(&key, value, &mut errors, |parsed| config.routes = parsed),
                "backend" => section(&key, value, &mut errors, |parsed| config.backend = parsed),
                _ => errors.push(KeyError {
                    key,
                    message: "unknown key (expected one of `server`, `broker`, `auth`, `channels`, `api`, `routes`, `backend`)"
                        .to_owned(),
                }),
            }
        }
        if errors.is_empty() {
            errors.extend(config.problems());
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Problems with values that are well-typed but unusable.
    fn problems(&self) -> Vec<KeyError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: &str| {
            problems.push(KeyError {
                key: key.to_owned(),
                message: message.to_owned(),
            });
        };
        let server = &self.server;
        if !(128..=16 * 1024 * 1024).contains(&server.max_frame_bytes) {
            problem("server.max_frame_bytes", "must be between 128 and 16777216");
        }
        if server.max_channels_per_connection == 0 {
            problem("server.max_channels_per_connection", "must be at least 1");
        }
        if server.outbound_queue == 0 {
            problem("server.outbound_queue", "must be at least 1");
        }
        if server.outbound_queue_bytes < 1024 {
            problem("server.outbound_queue_bytes", "must be at least 1024");
        }
        if server.write_timeout < HumanDuration::from_millis(100) {
            problem("server.write_timeout", "must be at least 100ms");
        }
        if server.heartbeat_interval.0.is_zero() {
            problem("server.heartbeat_interval", "must be longer than 0s");
        }
        if server.idle_timeout <= server.heartbeat_interval {
            problem(
                "server.idle_timeout",
                "must be longer than server.heartbeat_interval",
            );
        }
        if server.rate_limit == 0 {
            problem("server.rate_limit", "must be at least 1");
        }
        if server.rate_limit_burst == 0 {
            problem("server.rate_limit_burst", "must be at least 1");
        }
        if server.presence_rate == 0 {
            problem("server.presence_rate", "must be at least 1");
        }
        if server.presence_burst == 0 {
            problem("server.presence_burst", "must be at least 1");
        }
        if server
            .allowed_origins
            .iter()
            .any(|origin| origin.trim().is_empty())
        {
            problem("server.allowed_origins", "must not contain empty origins");
        }
        if self.broker.broker_type == BrokerType::Redis {
            if let Err(message) = crate::broker::redis::validate_url(&self.broker) {
                let (key, message) = message.split_once(": ").unwrap_or(("broker.url", &message));
                problem(key, message);
            }
        }
        if self.broker.node_ttl < HumanDuration::from_millis(300) {
            problem("broker.node_ttl", "must be at least 300ms");
        }
        if self.broker.prefix.is_empty()
            || self
                .broker
                .prefix
                .chars()
                .any(|character| character.is_whitespace() || character.is_control())
        {
            problem(
                "broker.prefix",
                "must be non-empty, without whitespace or control characters",
            );
        }
        for (key, message) in self.auth.problems() {
            problem(&key, &message);
        }
        if let Some(store) = self.session_store() {
            if store.url.is_empty() {
                problem(
                    "auth.redis_session.url",
                    "required unless broker.type is \"redis\" (then broker.url is used)",
                );
            } else if let Err(message) = crate::broker::redis::validate_url(&store) {
                let message = message
                    .split_once(": ")
                    .map_or(message.as_str(), |(_, message)| message);
                problem("auth.redis_session.url", message);
            }
        }
        for (key, message) in crate::backend::problems(&self.routes, &self.backend) {
            problem(&key, &message);
        }
        for (index, rule) in self.channels.iter().enumerate() {
            for message in rule.problems() {
                let (field, message) = message.split_once(": ").unwrap_or(("pattern", &message));
                problem(&format!("channels[{index}].{field}"), message);
            }
        }
        problems
    }

    /// Where `redis_session` reads sessions: its own `url`, else the broker's Redis (with the
    /// broker's TLS and cluster settings). `None` when that authenticator is off; an empty
    /// `url` when there is no Redis to fall back on.
    pub fn session_store(&self) -> Option<BrokerConfig> {
        let redis_session = self.auth.redis_session.as_ref()?;
        Some(if !redis_session.url.is_empty() {
            BrokerConfig {
                broker_type: BrokerType::Redis,
                url: redis_session.url.clone(),
                cluster: false,
                tls_ca_file: None,
                ..self.broker.clone()
            }
        } else if self.broker.broker_type == BrokerType::Redis {
            self.broker.clone()
        } else {
            BrokerConfig {
                url: String::new(),
                ..self.broker.clone()
            }
        })
    }

    /// The effective configuration as TOML (what `check-config` prints), with secrets (the JWT
    /// secret, the API key, the password in Redis URLs) replaced by `REDACTED`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if let Some(jwt) = shown.auth.jwt.as_mut().filter(|jwt| !jwt.secret.is_empty()) {
            jwt.secret = REDACTED.to_owned();
        }
        shown.broker.url = crate::broker::redis::redacted(&shown.broker.url);
        if !shown.api.key.is_empty() {
            shown.api.key = REDACTED.to_owned();
        }
        if let Some(sessions) = shown.auth.redis_session.as_mut() {
            sessions.url = crate::broker::redis::redacted(&sessions.url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// Deserialises one top-level section, recording an error that names the full key.
fn section<T: DeserializeOwned>(
    key: &str,
    value: Value,
    errors: &mut Vec<KeyError>,
    store: impl FnOnce(T),
) {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => store(parsed),
        Err(err) => {
            let path = err.path().to_string();
            let full_key = if path == "." || path.is_empty() {
                key.to_owned()
            } else if path.starts_with('[') {
                format!("{key}{path}")
            } else {
                format!("{key}.{path}")
            };
            // The message alone: the key is already named, and toml's own text would repeat it.
            errors.push(KeyError {
                key: full_key,
                message: err.into_inner().message().to_owned(),
            });
        }
    }
}

/// Applies `SWITCHBOARD_SECTION__KEY=value` overrides onto the parsed file.
fn apply_environment(
    table: &mut Table,
    environment: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<KeyError>,
) {
    let mut overrides: Vec<(String, String)> = environment
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains(ENV_SEPARATOR))
        .collect();
    overrides.sort();
    for (name, raw) in overrides {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            errors.push(KeyError {
                key: name,
                message: "empty key part in environment override".to_owned(),
            });
            continue;
        }
        let value = parse_env_value(&raw);
        if let Err(message) = set_path(table, &path, value) {
            errors.push(KeyError { key: name, message });
        }
    }
}

fn parse_env_value(raw: &str) -> Value {
    format!("value = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut parsed| parsed.remove("value"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| "empty environment override".to_owned())?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(inner) => inner,
            _ => return Err(format!("`{part}` is not a table and cannot take sub-keys")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn errors_of(result: Result<Config, ConfigError>) -> Vec<KeyError> {
        match result {
            Err(ConfigError::Invalid(errors)) => errors,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn printed_config_hides_secrets() {
        let text = "[broker]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n[auth.jwt]\nsecret = \"s3cret\"\n";
        let printed = Config::from_sources(Some(text), env(&[]))
            .expect("valid")
            .to_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains(REDACTED), "{printed}");
    }

    #[test]
    fn empty_config_is_the_documented_default() {
        let config = Config::from_sources(None, env(&[])).expect("defaults");
        assert_eq!(config, Config::default());
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.channels, vec![ChannelRule::permissive()]);
    }

    #[test]
    fn file_values_and_env_overrides_apply() {
        let text = r#"
            [server]
            heartbeat_interval = "5s"
            idle_timeout = "20s"
            [[channels]]
            pattern = "public:*"
            join = "anyone"
        "#;
        let config = Config::from_sources(
            Some(text),
            env(&[
                ("SWITCHBOARD_SERVER__BIND", "127.0.0.1:9000"),
                ("SWITCHBOARD_SERVER__OUTBOUND_QUEUE", "16"),
                ("SWITCHBOARD_AUTH__ANONYMOUS", "false"),
                ("SWITCHBOARD_UNRELATED", "ignored: no separator"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.server.bind.port(), 9000);
        assert_eq!(config.server.outbound_queue, 16);
        assert_eq!(config.server.heartbeat_interval.0, Duration::from_secs(5));
        assert!(!config.auth.anonymous);
        assert_eq!(config.channels.len(), 1);
        assert_eq!(config.channels[0].publish, crate::hub::Access::Nobody);
    }

    #[test]
    fn every_bad_key_is_named() {
        let text = r#"
            bogus = 1
            [server]
            bindd = "x"
            [broker]
            type = "kafka"
            [[channels]]
            pattern = "a"
            join = "everyone"
        "#;
        let keys: Vec<String> = errors_of(Config::from_sources(Some(text), env(&[])))
            .into_iter()
            .map(|err| err.key)
            .collect();
        assert!(keys.contains(&"bogus".to_owned()), "{keys:?}");
        assert!(keys.contains(&"server.bindd".to_owned()), "{keys:?}");
        assert!(keys.contains(&"broker.type".to_owned()), "{keys:?}");
        assert!(keys.contains(&"channels[0].join".to_owned()), "{keys:?}");
    }

    #[test]
    fn bad_values_name_their_key_and_say_what_is_wrong() {
        let errors = errors_of(Config::from_sources(
            Some("[server]\nheartbeat_interval = \"soon\""),
            env(&[]),
        ));
        assert_eq!(errors[0].key, "server.heartbeat_interval");
        assert!(
            errors[0].message.contains("invalid duration"),
            "{}",
            errors[0].message
        );

        let errors = errors_of(Config::from_sources(
            None,
            env(&[("SWITCHBOARD_SERVER__BIND", "not-an-address")]),
        ));
        assert_eq!(errors[0].key, "server.bind");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let text = r#"
            [server]
            outbound_queue = 0
            heartbeat_interval = "30s"
            idle_timeout = "10s"
            [[channels]]
            pattern = "user:*"
            join = "owner"
        "#;
        let keys: Vec<String> = errors_of(Config::from_sources(Some(text), env(&[])))
            .into_iter()
            .map(|err| err.key)
            .collect();
        assert_eq!(
            keys,
            [
                "server.outbound_queue",
                "server.idle_timeout",
                "channels[0].join"
            ]
        );
    }

    #[test]
    fn a_redis_broker_is_accepted_with_a_redis_url_and_refused_with_anything_else() {
        let redis = "[broker]\ntype = \"redis\"\nurl = \"redis://:secret@10.0.0.1:6380/1\"\n";
        assert!(Config::from_sources(Some(redis), env(&[])).is_ok());
        let errors = errors_of(Config::from_sources(
            Some("[broker]\ntype = \"redis\"\nurl = \"10.0.0.1\"\nprefix = \"my app\"\n"),
            env(&[]),
        ));
        let keys: Vec<&str> = errors.iter().map(|err| err.key.as_str()).collect();
        assert_eq!(keys, ["broker.url", "broker.prefix"]);
        // The memory broker does not look at the URL.
        let memory = "[broker]\nurl = \"10.0.0.1\"\n";
        assert!(Config::from_sources(Some(memory), env(&[])).is_ok());
    }

    #[test]
    fn the_effective_config_round_trips_through_toml() {
        let config = Config::default();
        let again = Config::from_sources(Some(&config.to_toml()), env(&[])).expect("round trip");
        assert_eq!(again, config);
    }
}
