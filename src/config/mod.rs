//! The operator's configuration: one TOML file plus environment overrides, loaded once.
//!
//! Each module owns its section: its type, its defaults, its validation (problems named by
//! key, as [`KeyError`]s) and the redaction of its secrets (`auth::AuthConfig`,
//! `broker::BrokerConfig`, `hub::ChannelRule`, `backend::BackendConfig`, `api::ApiConfig`,
//! `roster::RosterConfig`, `bridge::BridgeConfig`, `limits::LimitsConfig`, and [`server::ServerConfig`] here). This module only assembles them:
//! it parses the text, applies the environment, hands each section its table, and gathers every
//! section's problems at once, not just the first. Every key is optional and has a named
//! default. Any key can be overridden as `SWITCHBOARD_<SECTION>__<KEY>` (e.g.
//! `SWITCHBOARD_BROKER__URL`; nested tables add more `__<KEY>` parts); the value is read as a
//! TOML value when it parses as one (`true`, `100`, `["a"]`), else as a string. Unknown keys and
//! bad values are errors that name the key.

mod key_error;
pub mod server;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

pub use crate::api::ApiConfig;
use crate::auth::AuthConfig;
use crate::backend::{BackendConfig, RoutesConfig};
use crate::bridge::BridgeConfig;
use crate::broker::BrokerConfig;
use crate::hub::ChannelRule;
use crate::limits::LimitsConfig;
pub use crate::roster::RosterConfig;
pub use key_error::KeyError;
pub use server::ServerConfig;

/// What `check-config` prints in place of a secret.
pub const REDACTED: &str = "REDACTED";

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";
/// Separates the parts of an environment override's key.
pub const ENV_SEPARATOR: &str = "__";

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
    pub roster: RosterConfig,
    /// `[bridge.channels_redis]`: Django's `group_send` reaching clients (off when absent).
    pub bridge: BridgeConfig,
    /// `[limits]`: connections per user and per address, handshakes per address.
    pub limits: LimitsConfig,
    /// Deprecated keys the configuration used (each with what replaces it), for the node to
    /// warn about at start.
    #[serde(skip)]
    pub deprecations: Vec<KeyError>,
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
            roster: RosterConfig::default(),
            bridge: BridgeConfig::default(),
            limits: LimitsConfig::default(),
            deprecations: Vec::new(),
        }
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

        let roster_ttl_given = table
            .get("roster")
            .and_then(Value::as_table)
            .is_some_and(|roster| roster.contains_key("node_ttl"));
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
                "roster" => section(&key, value, &mut errors, |parsed| config.roster = parsed),
                "bridge" => section(&key, value, &mut errors, |parsed| config.bridge = parsed),
                "limits" => section(&key, value, &mut errors, |parsed| config.limits = parsed),
                _ => errors.push(KeyError {
                    key,
                    message: "unknown key (expected one of `server`, `broker`, `auth`, `channels`, `api`, `routes`, `backend`, `roster`, `bridge`, `limits`)"
                        .to_owned(),
                }),
            }
        }
        // The deprecated `broker.node_ttl`, where `roster.node_ttl` is not given.
        if let Some(ttl) = config.broker.node_ttl.take() {
            if !roster_ttl_given {
                config.roster.node_ttl = ttl;
            }
            config.deprecations.push(KeyError::new(
                "broker.node_ttl",
                "deprecated: use roster.node_ttl",
            ));
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

    /// Problems with values that are well-typed but unusable: each section's own, and the
    /// session store's (which may borrow the broker's Redis).
    fn problems(&self) -> Vec<KeyError> {
        let mut problems = self.server.problems();
        problems.extend(self.broker.problems());
        problems.extend(self.auth.problems());
        if let Some(redis_session) = &self.auth.redis_session {
            if let Err(problem) =
                crate::broker::redis::session_store_config(redis_session, &self.broker)
            {
                problems.push(problem);
            }
        }
        problems.extend(crate::backend::problems(&self.routes, &self.backend));
        for (index, rule) in self.channels.iter().enumerate() {
            problems.extend(rule.problems(&format!("channels[{index}]")));
        }
        problems.extend(self.roster.problems());
        problems.extend(self.bridge.problems());
        problems.extend(self.limits.problems());
        problems
    }

    /// The effective configuration as TOML (what `check-config` prints), each section's secrets
    /// redacted by the section itself (the JWT secret, the API key, the passwords in Redis URLs).
    pub fn to_toml(&self) -> String {
        let shown = Config {
            broker: self.broker.redacted(),
            auth: self.auth.redacted(),
            api: self.api.redacted(),
            bridge: self.bridge.redacted(),
            ..self.clone()
        };
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
    use crate::human_duration::HumanDuration;
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
            recovery_limit = 0
            [[channels]]
            pattern = "user:*"
            join = "owner"
            history_size = 10
        "#;
        let keys: Vec<String> = errors_of(Config::from_sources(Some(text), env(&[])))
            .into_iter()
            .map(|err| err.key)
            .collect();
        assert_eq!(
            keys,
            [
                "server.outbound_queue",
                "server.recovery_limit",
                "server.idle_timeout",
                "channels[0].join",
                "channels[0].history_ttl"
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
    fn broker_node_ttl_is_a_deprecated_alias_of_roster_node_ttl() {
        let old = Config::from_sources(Some("[broker]\nnode_ttl = \"2s\"\n"), env(&[]))
            .expect("still accepted");
        assert_eq!(old.roster.node_ttl, HumanDuration::from_secs(2));
        assert_eq!(old.deprecations[0].key, "broker.node_ttl");
        let both = Config::from_sources(
            Some("[broker]\nnode_ttl = \"2s\"\n[roster]\nnode_ttl = \"3s\"\n"),
            env(&[]),
        )
        .expect("valid");
        assert_eq!(
            both.roster.node_ttl,
            HumanDuration::from_secs(3),
            "the new key wins"
        );
        let errors = errors_of(Config::from_sources(
            Some("[broker]\nnode_ttl = \"1ms\"\n"),
            env(&[]),
        ));
        assert_eq!(errors[0].key, "roster.node_ttl");
        let new =
            Config::from_sources(Some("[roster]\nnode_ttl = \"4s\"\n"), env(&[])).expect("valid");
        assert!(new.deprecations.is_empty());
        assert!(!new.to_toml().contains("[broker]\nnode_ttl"));
    }

    #[test]
    fn the_effective_config_round_trips_through_toml() {
        let config = Config::default();
        let again = Config::from_sources(Some(&config.to_toml()), env(&[])).expect("round trip");
        assert_eq!(again, config);
    }
}
