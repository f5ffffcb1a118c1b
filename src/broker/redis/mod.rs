//! The Redis broker: any number of nodes act as one server, and back-ends reach clients with a
//! plain `PUBLISH` (docs/protocol.md §6). Nothing outside this module knows Redis exists, and it is
//! the only module that imports `fred`.
//!
//! Two connections per node (a subscriber connection cannot publish under RESP2):
//! - the publisher [`Client`], fed by one ordered queue and pipelined ([`publisher`]);
//! - the [`SubscriberClient`], whose subscriptions are reference-counted, batched and restored
//!   after reconnects by one task ([`subscriptions`]), and whose messages are decoded and handed
//!   to the sink ([`receiver`]).
//!
//! Every publication, this node's own included, comes back through Redis: one path, one order.
//! A publication to a channel that keeps history is recorded and published by the Redis
//! function library ([`functions`]) in one step, and comes back with its offset and epoch.
//! With `cluster = true`, channel traffic uses sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`); user
//! and control channels stay classic, which Redis Cluster broadcasts to every shard.
//!
//! Faults: the node starts without Redis and connects when it comes up; after a disconnect the
//! clients reconnect with backoff (100 ms doubling to 1 s) and every channel still needed is
//! subscribed again. While Redis is unreachable, publishes and new subscriptions fail at once
//! with [`BrokerError::Unavailable`]. `is_ready` (and `/readyz`) reflect the [`probe`]: a
//! message published on the node's own channel and received back. A channel subscribed again
//! after a reconnect, and every channel when the receiver fell behind, is reported to the sink
//! ([`BrokerSink::on_gap`]) so that groups keeping history read what they missed.
//!
//! Limits: at most one in-flight pipeline per node (publishing is ordered); messages the
//! receiver falls more than [`RECEIVE_BUFFER`] behind on are lost and counted.

mod functions;
mod keys;
mod limits;
pub(crate) mod link;
mod names;
mod probe;
mod publisher;
mod receiver;
mod roster;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::ClientLike;
use fred::types::Builder;
use fred::types::config::{
    ClusterDiscoveryPolicy, Config as FredConfig, ReconnectPolicy, ServerConfig, TlsConnector,
    UnresponsiveConfig,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    Broker, BrokerConfig, BrokerError, BrokerFuture, BrokerSink, HistoryFuture, HistoryQuery,
    HistoryRule, HistoryRules, Publication, Topic,
};
use crate::config::KeyError;
use crate::protocol::{ChannelName, ControlOp, Envelope};
use functions::Functions;
pub use keys::{RedisKeys, session_store_config};
pub use limits::RedisLimits;
use link::Link;
use names::Names;
use probe::{PROBE_INTERVAL, Probe};
use publisher::{Command, Outgoing};
pub use roster::RedisRoster;
use subscriptions::Subscriptions;

/// Messages the subscriber buffers for the receiver before the oldest are lost. fred allocates
/// this many slots for each of its event channels up front (about 3 MB at 4,096); the receiver
/// decodes a message in a few microseconds, so this is tens of milliseconds of slack at 100,000
/// messages per second.
const RECEIVE_BUFFER: usize = 4_096;
/// Reconnect backoff: from 100 ms, doubling, to at most 1 s, forever.
const RECONNECT_MIN_DELAY_MS: u32 = 100;
const RECONNECT_MAX_DELAY_MS: u32 = 1_000;
/// A connection with a command unanswered this long is dropped and reconnected.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(5);

/// What the broker's tasks share.
struct Shared {
    names: Names,
    publisher: Client,
    publisher_link: Link,
    subscriber: SubscriberClient,
    subscriber_link: Link,
    subscriptions: Subscriptions,
    probe: Probe,
    outgoing: mpsc::Sender<Outgoing>,
    functions: Functions,
    /// Redis Cluster (functions are installed on every primary; keys must share a slot).
    cluster: bool,
    /// Where publications, control operations and gaps go.
    sink: Arc<dyn BrokerSink>,
}

impl Shared {
    fn can_publish(&self) -> bool {
        self.publisher_link.is_up(&self.publisher)
    }

    fn can_subscribe(&self) -> bool {
        self.subscriber_link.is_up(&self.subscriber)
    }

    fn is_ready(&self) -> bool {
        self.can_publish() && self.can_subscribe() && self.probe.is_fresh()
    }
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// Checks `broker.url` (and `broker.cluster`, `broker.tls_ca_file`) without connecting.
pub fn validate_url(config: &BrokerConfig) -> Result<(), KeyError> {
    fred_config(config).map(drop)
}

fn fred_config(config: &BrokerConfig) -> Result<FredConfig, KeyError> {
    // With a CA file the TLS setup is ours: parse the URL as plain (so fred does not load the
    // system's certificates, which may be absent), then add TLS trusting that CA.
    let url = match (&config.tls_ca_file, config.url.strip_prefix("rediss")) {
        (Some(_), Some(rest)) => format!("redis{rest}"),
        (Some(_), None) => {
            return Err(KeyError::new(
                "broker.tls_ca_file",
                "only applies to a rediss:// broker.url",
            ));
        }
        (None, _) => config.url.clone(),
    };
    let mut fred = FredConfig::from_url(&url).map_err(|err| {
        KeyError::new(
            "broker.url",
            format!("{:?} is not a Redis URL: {err}", redacted(&config.url)),
        )
    })?;
    if config.cluster {
        fred.server = match fred.server {
            ServerConfig::Centralized { server } => ServerConfig::Clustered {
                hosts: vec![server],
                policy: ClusterDiscoveryPolicy::default(),
            },
            clustered @ ServerConfig::Clustered { .. } => clustered,
            _ => {
                return Err(KeyError::new(
                    "broker.cluster",
                    "true needs a redis:// or redis-cluster:// URL in broker.url",
                ));
            }
        };
    }
    if let Some(path) = &config.tls_ca_file {
        fred.tls = Some(tls_trusting(path)?.into());
    }
    // Without this, a node started before Redis would give up instead of waiting for it.
    fred.fail_fast = false;
    Ok(fred)
}

/// A TLS connector that trusts exactly the CA certificates in the PEM file at `path`.
fn tls_trusting(path: &std::path::Path) -> Result<TlsConnector, KeyError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    const KEY: &str = "broker.tls_ca_file";
    let problem = |what: String| KeyError::new(KEY, format!("{}: {what}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    let pem = crate::key_file::read(path).map_err(|message| KeyError::new(KEY, message))?;
    let certificates = CertificateDer::pem_slice_iter(&pem);
    for certificate in certificates {
        let certificate = certificate.map_err(|err| problem(err.to_string()))?;
        roots
            .add(certificate)
            .map_err(|err| problem(err.to_string()))?;
    }
    if roots.is_empty() {
        return Err(problem("no certificate in the file".into()));
    }
    // The provider is named, not taken from the process default, which is ambiguous (and
    // `builder()` panics) once two crypto back ends are compiled in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| problem(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config))
}

/// A fred client builder for `config`: the URL's server(s), TLS, reconnect policy and timeouts
/// every client of this module uses.
fn client_builder(config: &BrokerConfig) -> Result<Builder, BrokerError> {
    let mut builder = Builder::from_config(fred_config(config).map_err(BrokerError::Config)?);
    builder
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_DELAY_MS,
            RECONNECT_MAX_DELAY_MS,
            2,
        ))
        .with_connection_config(|connection| {
            connection.tcp.nodelay = Some(true);
            connection.unresponsive = UnresponsiveConfig {
                max_timeout: Some(UNRESPONSIVE_AFTER),
                interval: Duration::from_secs(1),
            };
        });
    Ok(builder)
}

/// A plain client (no subscriptions) named `name` in logs, connecting in the background and
/// reconnecting by itself, with the [`Link`] that says when it may be used. The bridge uses it
/// for channels_redis's Redis too.
pub(crate) fn start_client(
    config: &BrokerConfig,
    name: &'static str,
) -> Result<(Client, Arc<Link>), BrokerError> {
    let client = client_builder(config)?
        .build()
        .map_err(|err| BrokerError::Config(KeyError::new("broker.url", err.to_string())))?;
    Ok(launch(client, config, name))
}

/// A subscriber client named `name`, started like [`start_client`]; fred subscribes its tracked
/// channels again after each reconnect.
pub(crate) fn start_subscriber(
    config: &BrokerConfig,
    name: &'static str,
) -> Result<(SubscriberClient, Arc<Link>), BrokerError> {
    let client = client_builder(config)?
        .build_subscriber_client()
        .map_err(|err| BrokerError::Config(KeyError::new("broker.url", err.to_string())))?;
    drop(client.manage_subscriptions());
    Ok(launch(client, config, name))
}

/// Watches `client`'s link and connects it in the background.
fn launch<C>(client: C, config: &BrokerConfig, name: &'static str) -> (C, Arc<Link>)
where
    C: ClientLike + fred::interfaces::EventInterface + Clone + Send + Sync + 'static,
{
    let link = Arc::new(Link::new(name));
    let watched = (link.clone(), client.clone());
    tokio::spawn(async move { watched.0.watch(watched.1).await });
    let connection = client.connect();
    tokio::spawn(async move {
        if let Ok(Err(err)) = connection.await {
            tracing::error!(client = name, error = %err, "redis connection task ended");
        }
    });
    crate::metrics::register::counter(crate::metrics::BROKER_RECONNECTS, &[("client", name)]);
    tracing::info!(client = name, url = %redacted(&config.url), "redis client starting");
    (client, link)
}

impl RedisBroker {
    /// Builds the clients and starts connecting in the background (Redis need not be up);
    /// must run inside a tokio runtime. Fails only on a bad configuration. `history` is
    /// installed into Redis with the function library, for back ends that call it.
    pub fn start(
        config: &BrokerConfig,
        history: &HistoryRules,
        sink: Arc<dyn BrokerSink>,
    ) -> Result<Self, BrokerError> {
        let node_id = format!("{:016x}", fastrand::u64(..));
        let names = Names::new(&config.prefix, &node_id, config.cluster);
        let functions = Functions::new(
            &config.prefix,
            names.channel_prefix(),
            config.cluster,
            history,
        );
        let mut builder = client_builder(config)?;
        let publisher = builder
            .build()
            .map_err(|err| BrokerError::Config(KeyError::new("broker.url", err.to_string())))?;
        builder.with_performance_config(|performance| {
            performance.broadcast_channel_capacity = RECEIVE_BUFFER;
        });
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|err| BrokerError::Config(KeyError::new("broker.url", err.to_string())))?;

        let (outgoing, queue) = mpsc::channel(publisher::QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            subscriptions: Subscriptions::new(vec![names.control(), names.node()]),
            names,
            publisher: publisher.clone(),
            publisher_link: Link::new("publisher"),
            subscriber: subscriber.clone(),
            subscriber_link: Link::new("subscriber"),
            probe: Probe::default(),
            outgoing,
            functions,
            cluster: config.cluster,
            sink,
        });
        // The receiver subscribes to fred's message broadcast before any subscription exists.
        let receiving = tokio::spawn(receiver::run(shared.clone()));
        let mut tasks = vec![
            receiving,
            tokio::spawn(subscriptions::reconcile(shared.clone())),
            tokio::spawn(publisher::run(shared.clone(), queue)),
            tokio::spawn(probe_loop(shared.clone())),
            tokio::spawn(functions::keep_installed(shared.clone())),
        ];
        let watched = shared.clone();
        tasks.push(tokio::spawn(async move {
            watched
                .publisher_link
                .watch(watched.publisher.clone())
                .await;
        }));
        let watched = shared.clone();
        tasks.push(tokio::spawn(async move {
            watched
                .subscriber_link
                .watch(watched.subscriber.clone())
                .await;
        }));
        // The clients' own connection tasks are not ours to abort: they end when the clients
        // quit (see `Drop`).
        for connection in [publisher.connect(), subscriber.connect()] {
            tokio::spawn(async move {
                if let Ok(Err(err)) = connection.await {
                    tracing::error!(error = %err, "redis connection task ended");
                }
            });
        }
        register_metrics();
        tracing::info!(url = %redacted(&config.url), cluster = config.cluster, node = %node_id, "redis broker starting");
        Ok(Self { shared, tasks })
    }

    /// Queues a publication; resolves with Redis's answer.
    fn send(&self, command: Command) -> BrokerFuture {
        if !self.shared.can_publish() {
            metrics::counter!(crate::metrics::BROKER_PUBLISH_FAILURES).increment(1);
            return Box::pin(std::future::ready(Err(not_connected())));
        }
        let (reply, answer) = oneshot::channel();
        let outgoing = Outgoing {
            command,
            reply: Some(reply),
        };
        if let Err(err) = self.shared.outgoing.try_send(outgoing) {
            metrics::counter!(crate::metrics::BROKER_PUBLISH_FAILURES).increment(1);
            let reason = match err {
                mpsc::error::TrySendError::Full(_) => "too many publications waiting for redis",
                mpsc::error::TrySendError::Closed(_) => "the redis publisher has stopped",
            };
            return Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                reason.into(),
            ))));
        }
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "the redis publisher has stopped".into(),
                ))
            })
        })
    }
}

/// Registers the Redis broker's series at zero (see `metrics`).
fn register_metrics() {
    use crate::metrics::{self as names, register};
    register::gauge(names::BROKER_UP);
    register::gauge(names::BROKER_SUBSCRIPTIONS);
    register::counter(names::BROKER_PUBLISHED, &[]);
    register::counter(names::BROKER_PUBLISH_FAILURES, &[]);
    for kind in names::broker_kinds::ALL {
        register::counter(names::BROKER_RECEIVED, &[("kind", kind)]);
        register::counter(names::BROKER_DECODE_ERRORS, &[("kind", kind)]);
    }
    for client in ["publisher", "subscriber"] {
        register::counter(names::BROKER_RECONNECTS, &[("client", client)]);
    }
    register::histogram(names::BROKER_ROUND_TRIP, &[]);
    register::counter(
        names::MESSAGES_DROPPED,
        &[("reason", names::dropped::BROKER_LAGGED)],
    );
}

/// What a publish or subscribe hears while the connection is down.
fn not_connected() -> BrokerError {
    BrokerError::Unavailable("redis is not connected".into())
}

/// `url` with any credentials replaced by `***`, for logs and the printed config.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Publishes a probe every [`PROBE_INTERVAL`] and reports readiness.
async fn probe_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if shared.can_publish() {
            let probe = Outgoing {
                command: Command::Publish(shared.names.node(), shared.probe.next()),
                reply: None,
            };
            // A full queue is a busy publisher; the next tick tries again.
            let _ = shared.outgoing.try_send(probe);
        }
        shared.probe.report(shared.is_ready());
    }
}

impl RedisBroker {
    /// Under Redis Cluster a channel's history keys must share its key's hash slot, which a
    /// name holding a `}` outside a `{hash tag}` cannot (see `history.lua`).
    fn check_history_key(&self, key: &str) -> Result<(), BrokerError> {
        if self.shared.cluster && !keys_can_share_slot(key) {
            return Err(BrokerError::Unavailable(format!(
                "{key} cannot keep history on Redis Cluster: a `}}` outside a {{hash tag}}"
            )));
        }
        Ok(())
    }
}

/// Whether `key`'s history keys can share its slot: it has a hash tag, or no `}` to break the
/// `{key}` wrapping.
fn keys_can_share_slot(key: &str) -> bool {
    let has_tag = key
        .find('{')
        .is_some_and(|open| key[open + 1..].find('}').is_some_and(|close| close > 0));
    has_tag || !key.contains('}')
}

impl Drop for RedisBroker {
    /// Stops the broker's own tasks (the clients go with the runtime; `shutdown` quits them).
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// Stops the broker's tasks and quits both clients, whose connection tasks then end.
    fn shutdown(&self) -> BrokerFuture {
        for task in &self.tasks {
            task.abort();
        }
        let (publisher, subscriber) = (
            self.shared.publisher.clone(),
            self.shared.subscriber.clone(),
        );
        Box::pin(async move {
            let quit = Duration::from_secs(1);
            if publisher.is_connected() {
                let _ = tokio::time::timeout(quit, publisher.quit()).await;
            }
            if subscriber.is_connected() {
                let _ = tokio::time::timeout(quit, subscriber.quit()).await;
            }
            Ok(())
        })
    }

    fn publish(&self, publication: Publication) -> BrokerFuture {
        if let Topic::Connection(connection) = &publication.topic {
            return self.publish_control(ControlOp::Send {
                connection: connection.to_string(),
                data: publication.data,
            });
        }
        let channel = self.shared.names.topic(&publication.topic);
        if let Some(rule) = publication.history {
            if let Err(err) = self.check_history_key(&channel.name) {
                return Box::pin(std::future::ready(Err(err)));
            }
            return self.send(Command::Record {
                envelope: functions::envelope_of(&publication),
                key: channel.name,
                rule,
            });
        }
        let envelope = Envelope::new(publication.data, publication.from, publication.kind);
        self.send(Command::Publish(channel, Bytes::from(envelope.to_json())))
    }

    fn publish_control(&self, op: ControlOp) -> BrokerFuture {
        self.send(Command::Publish(
            self.shared.names.control(),
            Bytes::from(op.to_json()),
        ))
    }

    fn history(
        &self,
        channel: &ChannelName,
        rule: HistoryRule,
        query: HistoryQuery,
    ) -> HistoryFuture {
        let key = self
            .shared
            .names
            .topic(&Topic::Channel(channel.clone()))
            .name;
        if let Err(err) = self.check_history_key(&key) {
            return Box::pin(std::future::ready(Err(err)));
        }
        if !self.shared.can_publish() {
            return Box::pin(std::future::ready(Err(not_connected())));
        }
        let (shared, channel) = (self.shared.clone(), channel.clone());
        Box::pin(async move { functions::read(&shared, &channel, key, rule, query).await })
    }

    fn subscribe(&self, topic: &Topic) -> BrokerFuture {
        let connected = self.shared.can_subscribe();
        self.shared
            .subscriptions
            .add(self.shared.names.topic(topic), connected)
    }

    fn unsubscribe(&self, topic: &Topic) -> BrokerFuture {
        self.shared
            .subscriptions
            .release(&self.shared.names.topic(topic));
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscriptions(&self) -> usize {
        self.shared.subscriptions.len()
    }

    fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, cluster: bool) -> BrokerConfig {
        BrokerConfig {
            url: url.to_owned(),
            cluster,
            ..BrokerConfig::default()
        }
    }

    #[test]
    fn urls_are_checked_with_the_key_named() {
        assert!(validate_url(&config("redis://127.0.0.1:6379", false)).is_ok());
        assert!(validate_url(&config("redis://127.0.0.1:7000", true)).is_ok());
        let err = validate_url(&config("http//nope", false)).expect_err("invalid");
        assert_eq!(err.key, "broker.url", "{err}");
    }

    #[test]
    fn a_tls_ca_file_needs_a_rediss_url_and_a_readable_certificate() {
        let mut with_ca = config("redis://127.0.0.1:6379", false);
        with_ca.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let err = validate_url(&with_ca).expect_err("plain url");
        assert!(err.message.contains("rediss://"), "{err}");
        with_ca.url = "rediss://127.0.0.1:6380".into();
        let err = validate_url(&with_ca).expect_err("missing file");
        assert!(
            err.to_string()
                .starts_with("broker.tls_ca_file: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn history_keys_share_the_channel_keys_slot_or_are_refused() {
        assert!(keys_can_share_slot("sb:ch:room:1"));
        assert!(keys_can_share_slot("sb:ch:{room}:1"));
        assert!(keys_can_share_slot("sb:ch:{room"));
        assert!(!keys_can_share_slot("sb:ch:room}1"));
        assert!(!keys_can_share_slot("sb:ch:{}x}"));
        // The wrapped form's tag is the whole key: the same slot.
        assert_eq!(
            fred::util::redis_keyslot(b"{sb:ch:room:1}:meta"),
            fred::util::redis_keyslot(b"sb:ch:room:1")
        );
    }

    #[test]
    fn passwords_are_redacted_from_logged_urls() {
        assert_eq!(
            redacted("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }
}
