//! The Redis function library that makes publication, offset and history one atomic step
//! (docs/protocol.md §7): its source (`history.lua`, behind a header generated from the node's
//! configuration), installing it, and the two calls the node makes, `PREFIX_publish` (through
//! the ordered publisher, see [`super::publisher`]) and `PREFIX_history` (a read).
//!
//! Every node installs the library with `FUNCTION LOAD REPLACE` (on every primary under Redis
//! Cluster) whenever its publisher connects, so a Redis that restarted without its data has it
//! again before the node publishes; a call that still finds it missing installs it and is
//! retried once. Nodes pass their own history rule with every call; the rules baked into the
//! library serve back ends, which call `FCALL PREFIX_publish 1 PREFIX:ch:CHANNEL <envelope>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, FunctionInterface};
use fred::types::Value as RedisValue;
use tokio::sync::broadcast;

use super::Shared;
use crate::broker::{BrokerError, History, HistoryQuery, HistoryRule, HistoryRules, Publication};
use crate::metrics as names;
use crate::protocol::{ChannelName, Envelope, Position};

/// The library's body; the generated header defines what it refers to.
const LIBRARY_BODY: &str = include_str!("history.lua");
/// How long a history read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long installing the library may take before it is tried again.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The library for one deployment: its source and its functions' names.
#[derive(Debug)]
pub(super) struct Functions {
    source: String,
    /// `PREFIX_publish` (the prefix with every character outside `[A-Za-z0-9_]` made `_`).
    pub(super) publish: String,
    pub(super) history: String,
    /// Whether the current publisher connection has the library installed.
    installed: AtomicBool,
}

impl Functions {
    /// The library for channels named `channel_prefix` + name (`sb:ch:`), published with
    /// `SPUBLISH` when `sharded`, keeping history under `rules`.
    pub(super) fn new(
        prefix: &str,
        channel_prefix: &str,
        sharded: bool,
        rules: &HistoryRules,
    ) -> Self {
        let name = function_prefix(prefix);
        let publish = format!("{name}_publish");
        let history = format!("{name}_history");
        let rules: Vec<String> = rules
            .iter()
            .map(|(pattern, rule)| {
                let (size, ttl) = rule.map_or((0, 0), |rule| (rule.size, ttl_millis(rule)));
                format!("  {{ {}, {size}, {ttl} }},", lua_string(pattern))
            })
            .collect();
        let source = format!(
            "#!lua name={name}_switchboard\n\
             local CHANNEL_PREFIX = {}\n\
             local PUBLISH = {}\n\
             local PUBLISH_FUNCTION = {}\n\
             local HISTORY_FUNCTION = {}\n\
             local RULES = {{\n{}\n}}\n\n{LIBRARY_BODY}",
            lua_string(channel_prefix),
            lua_string(if sharded { "SPUBLISH" } else { "PUBLISH" }),
            lua_string(&publish),
            lua_string(&history),
            rules.join("\n"),
        );
        Self {
            source,
            publish,
            history,
            installed: AtomicBool::new(false),
        }
    }

    /// Installs (or replaces) the library; on every primary when `cluster`.
    pub(super) async fn install(&self, client: &Client, cluster: bool) -> Result<(), BrokerError> {
        let source = self.source.as_str();
        let loading = async {
            if cluster {
                client
                    .function_load_cluster::<RedisValue, _>(true, source)
                    .await
                    .map(drop)
            } else {
                client
                    .function_load::<RedisValue, _>(true, source)
                    .await
                    .map(drop)
            }
        };
        match tokio::time::timeout(INSTALL_TIMEOUT, loading).await {
            Ok(Ok(())) => {
                self.installed.store(true, Ordering::SeqCst);
                tracing::debug!(function = %self.publish, "redis history functions installed");
                Ok(())
            }
            Ok(Err(err)) => Err(BrokerError::Unavailable(format!(
                "cannot install the history functions: {err}"
            ))),
            Err(_) => Err(BrokerError::Unavailable(
                "installing the history functions timed out".into(),
            )),
        }
    }

    /// Forgets the installation (the connection it was made on is gone).
    fn forget(&self) {
        self.installed.store(false, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(super) fn source(&self) -> &str {
        &self.source
    }
}

/// Whether Redis refused a call because the library is not installed (a Redis that restarted
/// empty, a Cluster primary added since).
pub(super) fn is_missing(err: &fred::error::Error) -> bool {
    err.details().contains("Function not found")
}

/// The prefix as it may appear in a function name.
fn function_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || character == '_' {
                character
            } else {
                '_'
            }
        })
        .collect()
}

/// A Lua string literal of `text`, every byte outside `[A-Za-z0-9:_*]` as a decimal escape, so
/// nothing in a pattern or prefix can end the literal.
fn lua_string(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b':' | b'_' | b'*') {
            literal.push(char::from(byte));
        } else {
            literal.push_str(&format!("\\{byte}"));
        }
    }
    literal.push('"');
    literal
}

fn ttl_millis(rule: HistoryRule) -> u128 {
    rule.ttl.as_millis().max(1)
}

/// The arguments the node passes after the envelope: its own rule.
pub(super) fn rule_args(rule: HistoryRule) -> [String; 2] {
    [rule.size.to_string(), ttl_millis(rule).to_string()]
}

/// Installs the library whenever the publisher connects, for as long as the client lives.
pub(super) async fn keep_installed(shared: Arc<Shared>) {
    let mut connections = shared.publisher.reconnect_rx();
    loop {
        if shared.publisher.is_connected() {
            if let Err(err) = shared
                .functions
                .install(&shared.publisher, shared.cluster)
                .await
            {
                tracing::warn!(error = %err, "redis history functions not installed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        match connections.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => shared.functions.forget(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Reads `channel`'s history through `PREFIX_history`, installing the library and trying once
/// more if Redis does not have it.
pub(super) async fn read(
    shared: &Shared,
    channel: &ChannelName,
    key: String,
    rule: HistoryRule,
    query: HistoryQuery,
) -> Result<History, BrokerError> {
    let optional =
        |offset: Option<u64>| offset.map(|offset| offset.to_string()).unwrap_or_default();
    let [size, ttl] = rule_args(rule);
    let args = vec![
        optional(query.since),
        optional(query.before),
        query.limit.to_string(),
        if query.newest_first { "1" } else { "0" }.to_owned(),
        size,
        ttl,
    ];
    let started = Instant::now();
    let mut answer = call_history(shared, &key, &args).await;
    if matches!(&answer, Err(err) if is_missing(err)) {
        shared
            .functions
            .install(&shared.publisher, shared.cluster)
            .await?;
        answer = call_history(shared, &key, &args).await;
    }
    metrics::histogram!(names::HISTORY_READ_SECONDS).record(started.elapsed().as_secs_f64());
    let value = answer.map_err(|err| {
        BrokerError::Unavailable(format!("redis refused the history read: {err}"))
    })?;
    parse_history(channel, value)
}

async fn call_history(
    shared: &Shared,
    key: &str,
    args: &[String],
) -> Result<RedisValue, fred::error::Error> {
    let call = shared.publisher.fcall::<RedisValue, _, _, _>(
        shared.functions.history.as_str(),
        key,
        args.to_vec(),
    );
    match tokio::time::timeout(READ_TIMEOUT, call).await {
        Ok(answer) => answer,
        Err(_) => Err(fred::error::Error::new(
            fred::error::ErrorKind::Timeout,
            format!("no answer within {READ_TIMEOUT:?}"),
        )),
    }
}

/// `{top, epoch, envelope...}` as a [`History`]; anything else is refused, never trusted.
fn parse_history(channel: &ChannelName, value: RedisValue) -> Result<History, BrokerError> {
    let malformed =
        |what: &str| BrokerError::Unavailable(format!("malformed history answer: {what}"));
    let mut values = value.into_array().into_iter();
    let top = values
        .next()
        .and_then(|top| top.as_u64())
        .ok_or_else(|| malformed("no top offset"))?;
    let epoch = values
        .next()
        .and_then(|epoch| epoch.as_bytes().map(<[u8]>::to_vec))
        .and_then(|epoch| String::from_utf8(epoch).ok())
        .filter(|epoch| {
            !epoch.is_empty() && epoch.len() <= crate::protocol::position::MAX_EPOCH_BYTES
        })
        .ok_or_else(|| malformed("no epoch"))?;
    let position = Position::new(top, epoch.as_str());
    let mut publications = Vec::with_capacity(values.len());
    for entry in values {
        let payload = entry
            .as_bytes()
            .ok_or_else(|| malformed("an entry is not a string"))?;
        let publication = recorded(channel, payload, &position)
            .map_err(|reason| malformed(&format!("an entry: {reason}")))?;
        publications.push(Arc::new(publication));
    }
    Ok(History {
        position,
        publications,
    })
}

/// A recorded envelope as a publication at its position (which must be in `current`'s epoch).
pub(super) fn recorded(
    channel: &ChannelName,
    payload: &[u8],
    current: &Position,
) -> Result<Publication, String> {
    let envelope = Envelope::decode(payload).map_err(|err| err.to_string())?;
    let position = envelope
        .position()
        .map_err(|err| err.to_string())?
        .ok_or("no offset")?;
    if position.epoch != current.epoch || position.offset > current.offset {
        return Err("not of the channel's current history".into());
    }
    Ok(Publication {
        kind: envelope.kind,
        position: Some(position),
        ..Publication::new(channel.clone(), envelope.data, envelope.from)
    })
}

/// The payload of a publication recorded by the node: its envelope, as JSON.
pub(super) fn envelope_of(publication: &Publication) -> Bytes {
    let envelope = Envelope::new(
        publication.data.clone(),
        publication.from.clone(),
        publication.kind,
    );
    Bytes::from(envelope.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_header_cannot_be_escaped_by_a_pattern() {
        let rules = HistoryRules::new(vec![
            (
                "room:\"]] redis.call('FLUSHALL') --*".into(),
                Some(HistoryRule {
                    size: 50,
                    ttl: Duration::from_secs(60),
                }),
            ),
            ("*".into(), None),
        ]);
        let functions = Functions::new("my-app", "my-app:ch:", true, &rules);
        assert_eq!(functions.publish, "my_app_publish");
        assert_eq!(functions.history, "my_app_history");
        let source = functions.source();
        assert!(source.starts_with("#!lua name=my_app_switchboard\n"));
        assert!(source.contains("local PUBLISH = \"SPUBLISH\""));
        assert!(source.contains(", 50, 60000 },"));
        assert!(source.contains("{ \"*\", 0, 0 },"));
        assert!(
            !source.contains("FLUSHALL') --"),
            "the quote and the call are escaped"
        );
        assert!(source.contains("room:\\34\\93\\93\\32redis"));
    }
}
