//! The composition root: builds the broker, the hub, the authenticators and the HTTP server from
//! the configuration, runs them on an already-bound listener, and drains on shutdown. The HTTP
//! server is actix-http's, built here rather than through actix-web's `HttpServer` because only
//! it can hand WebSocket upgrades to a service of their own (`api::ws::serve`), which takes the
//! TCP stream away from the HTTP dispatcher; everything else goes to the actix-web application.
//!
//! Shutdown (SIGTERM/SIGINT in `main`, or any future the caller passes): `/readyz` turns 503 and
//! new handshakes are refused with 503, every socket is closed with 1012 `restart`, and the
//! process is done within `server.shutdown_grace`. The listener keeps answering until the end, so
//! a load balancer's handshake gets its 503 at once (and is retried on another node) instead of
//! waiting in the accept queue, and health checks and `/metrics` still answer during the drain.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Arbiter;
use actix_http::HttpService;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::{App, web};

use crate::api::{self, AppState, HandshakeLimits};
use crate::auth::{AuthChain, SessionStore};
use crate::backend::Backend;
use crate::bridge::BridgedBroker;
use crate::broker::redis::session_store_config;
use crate::broker::{
    Broker, BrokerError, BrokerSink, BrokerType, MemoryBroker, RedisBroker, RedisKeys, RedisLimits,
    RedisRoster,
};
use crate::config::{Config, KeyError};
use crate::connection::ConnectionSettings;
use crate::connection::admission::Admission;
use crate::hub::{ChannelPolicy, ConnectionDirectory, GroupTable, HistoryPolicy, Hub, HubSink};
use crate::limits::{LimitStore, Limits};
use crate::metrics::{Metrics, MetricsError};
use crate::roster::{ChangeLog, Roster};
use crate::sessions::SessionKeeper;

/// How often histogram buffers are drained.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often the drain checks whether every socket has closed.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The HTTP server's own graceful stop (closing the drained TCP connections), kept at the end of
/// the grace.
const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idle HTTP/1.1 connection (health checks, `/metrics`, the server API) stays open.
const HTTP_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's head (a handshake's included).
const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot serve on the listener: {0}")]
    Listen(#[source] std::io::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A component the validated config could not build (a key file that changed since, say).
    #[error("invalid configuration: {0}")]
    Config(#[from] KeyError),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Threads for `0` ("one per core") or an explicit count.
fn thread_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

/// Sets, once on the listener, what every accepted socket needs; Linux copies a listener's TCP
/// options to the sockets it accepts, which saves two system calls per handshake:
/// - `TCP_NODELAY`: a frame goes out when it is written (Nagle would hold a small frame until
///   the client's delayed ACK of the previous one, up to 40 ms);
/// - `TCP_USER_TIMEOUT`, the write deadline: the kernel fails a connection whose sent bytes stay
///   unacknowledged, or unsent behind a zero window, for `write_timeout`, so a peer that stops
///   reading cannot keep its socket, its buffers and its admission slot.
fn prepare_listener(listener: &TcpListener, write_timeout: Duration) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(listener);
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_user_timeout(Some(write_timeout))
}

/// Serves on `listener` until `shutdown` resolves, then drains. Must run inside an actix
/// `System` (see `main`).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let metrics = Metrics::install()?;
    crate::hub::register_metrics();
    crate::connection::register_metrics();
    crate::api::register_metrics(!config.api.key.is_empty());
    // With groups on the workers, no arbiter: the hub starts each group where it is asked to.
    let arbiter_count = if config.server.groups_on_workers {
        0
    } else {
        thread_count(config.server.group_arbiters)
    };
    let arbiters: Vec<Arbiter> = (0..arbiter_count).map(|_| Arbiter::new()).collect();
    let groups = GroupTable::new();
    // With Redis, the registry is shared: the directory's changes go to a change log the
    // roster writes out; with the memory broker, the node is the whole registry.
    let (directory, roster) = if config.broker.broker_type == BrokerType::Redis {
        let changes = Arc::new(ChangeLog::default());
        let directory = Arc::new(ConnectionDirectory::observed(changes.clone()));
        let store =
            RedisRoster::start(&config.broker, config.roster.node_ttl.0, &directory.node())?;
        let roster = Roster::shared(directory.clone(), Arc::new(store), changes);
        (directory, roster)
    } else {
        let directory = Arc::new(ConnectionDirectory::new());
        (directory.clone(), Roster::local(directory))
    };
    let writing_roster = actix_web::rt::spawn(roster.clone().run());
    let backend = Backend::from_config(&config.routes, &config.backend, &config.api.key)?;
    let sink: Arc<dyn BrokerSink> = Arc::new(HubSink::new(groups.clone(), directory.clone()));
    let policy = ChannelPolicy::new(config.channels.clone());
    let history_rules = policy.history_rules();
    let broker: Arc<dyn Broker> = match config.broker.broker_type {
        BrokerType::Memory => Arc::new(MemoryBroker::new(sink.clone())),
        BrokerType::Redis => Arc::new(RedisBroker::start(
            &config.broker,
            &history_rules,
            sink.clone(),
        )?),
    };
    // Django's group_send reaches the channels the bridge maps, alongside the broker.
    let broker: Arc<dyn Broker> = match &config.bridge.channels_redis {
        Some(bridge) => Arc::new(BridgedBroker::start(bridge, broker, sink)?),
        None => broker,
    };
    let hub = Hub::new(
        groups,
        directory,
        broker,
        arbiters.iter().map(Arbiter::handle).collect(),
        HistoryPolicy {
            rules: history_rules,
            recovery_limit: config.server.recovery_limit,
        },
    );
    let session_store: Option<Arc<dyn SessionStore>> = match &config.auth.redis_session {
        Some(redis_session) => {
            let store_config = session_store_config(redis_session, &config.broker)?;
            Some(Arc::new(RedisKeys::start(&store_config)?))
        }
        None => None,
    };
    let auth = Arc::new(AuthChain::from_config(&config.auth, session_store)?);
    auth.register_metrics();
    if let Some(backend) = &backend {
        backend.register_metrics();
    }
    // The connect hook decides identity too when it is given the browser's cookies.
    let hook_reads_cookies = backend.as_ref().is_some_and(|backend| {
        backend.connect_hook().is_some() && backend.forwards_header("cookie")
    });
    let ambient_credentials = auth.uses_ambient_credentials() || hook_reads_cookies;
    let sessions = SessionKeeper::new(
        auth.clone(),
        config.auth.revalidate_interval.0,
        config.auth.revalidate_grace.0,
    );
    let revalidating = actix_web::rt::spawn(sessions.clone().run());
    let server_config = &config.server;
    let settings = Arc::new(ConnectionSettings {
        max_channels: server_config.max_channels_per_connection,
        heartbeat_interval: server_config.heartbeat_interval.0,
        idle_timeout: server_config.idle_timeout.0,
        rate_limit_per_second: server_config.rate_limit,
        rate_limit_burst: server_config.rate_limit_burst,
        presence_rate: server_config.presence_rate,
        presence_burst: server_config.presence_burst,
        policy,
        backend: backend.clone(),
    });
    // Per-user and per-address counts are cluster-wide through Redis with the Redis broker.
    let connection_limits = if config.limits.any() {
        let store: Option<Arc<dyn LimitStore>> = match config.broker.broker_type {
            BrokerType::Redis => Some(Arc::new(RedisLimits::start(
                &config.broker,
                &hub.directory().node(),
                config.roster.node_ttl.0,
            )?)),
            BrokerType::Memory => None,
        };
        Some(Arc::new(Limits::new(&config.limits, store)?))
    } else {
        None
    };
    let state = web::Data::new(AppState {
        hub,
        auth,
        sessions,
        settings,
        limits: HandshakeLimits {
            allowed_origins: server_config.allowed_origins.clone(),
            ambient_credentials,
            max_frame_bytes: server_config.max_frame_bytes,
            outbound_queue: server_config.outbound_queue,
            outbound_queue_bytes: server_config.outbound_queue_bytes,
        },
        admission: Admission::new(server_config.max_connections),
        connection_limits,
        metrics: metrics.clone(),
        roster,
        api_key: (!config.api.key.is_empty()).then(|| config.api.key.clone()),
        backend,
    });

    let grace = server_config.shutdown_grace.0;
    prepare_listener(&listener, server_config.write_timeout.0).map_err(ServerError::Listen)?;
    let app_state = state.clone();
    let local_address = listener.local_addr().map_err(ServerError::Listen)?;
    let http = actix_server::Server::build()
        .workers(thread_count(server_config.workers))
        .disable_signals()
        .shutdown_timeout(HTTP_STOP_TIMEOUT.as_secs())
        .listen("switchboard", listener, move || {
            let upgrade_state = state.clone();
            let app = App::new()
                .app_data(state.clone())
                .configure(api::routes)
                .into_factory()
                .map_err(|err: actix_web::Error| err.error_response());
            HttpService::build()
                .keep_alive(HTTP_KEEP_ALIVE)
                .client_request_timeout(HTTP_REQUEST_TIMEOUT)
                // A refused handshake or an API answer closes at once, with no linger.
                .client_disconnect_timeout(Duration::ZERO)
                .local_addr(local_address)
                // WebSocket handshakes leave the HTTP server with their socket (`api::ws`).
                .upgrade(fn_service(move |(request, framed)| {
                    api::ws::serve(request, framed, upgrade_state.clone())
                }))
                // The application's config only serves URL generation and `ConnectionInfo`'s
                // fallback when a request has no `Host`; no handler here uses either.
                .finish(map_config(app, move |()| AppConfig::default()))
                .tcp()
        })
        .map_err(ServerError::Listen)?
        .run();
    let handle = http.handle();
    let mut serving = actix_web::rt::spawn(http);

    let upkeep = actix_web::rt::spawn(async move {
        let mut interval = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            metrics.run_upkeep();
        }
    });

    tokio::select! {
        () = shutdown => {}
        finished = &mut serving => {
            upkeep.abort();
            revalidating.abort();
            writing_roster.abort();
            return match finished {
                Ok(result) => result.map_err(ServerError::Http),
                Err(err) => Err(ServerError::Http(std::io::Error::other(err))),
            };
        }
    }

    let started = Instant::now();
    tracing::info!(connections = app_state.admission.admitted(), "draining");
    app_state.hub.drain();
    // A connection is over once its close frame is handed to the socket (or the socket is
    // gone), which is when its outbound drain releases the admission ticket.
    // With a shared registry, the node's withdrawal from it gets its time at the end too.
    let withdrawal = if app_state.roster.is_cluster_wide() {
        crate::roster::WITHDRAW_TIMEOUT
    } else {
        Duration::ZERO
    };
    let drain_deadline = started + grace.saturating_sub(HTTP_STOP_TIMEOUT + withdrawal);
    while app_state.admission.admitted() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(DRAIN_POLL_INTERVAL).await;
    }
    let graceful = app_state.admission.admitted() == 0;
    writing_roster.abort();
    app_state.roster.withdraw().await;
    if let Err(err) = app_state.hub.broker().shutdown().await {
        tracing::debug!(error = %err, "broker shutdown");
    }
    handle.stop(graceful).await;
    upkeep.abort();
    revalidating.abort();
    for arbiter in arbiters {
        arbiter.stop();
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options are set on the listener only: the sockets it accepts must carry them (the
    /// kernel copies them at accept; a kernel that did not would bring Nagle's delay back).
    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        prepare_listener(&listener, Duration::from_millis(12_345)).expect("options");
        let address = listener.local_addr().expect("address");
        let _client = std::net::TcpStream::connect(address).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let accepted = socket2::SockRef::from(&accepted);
        assert!(accepted.tcp_nodelay().expect("nodelay"));
        assert_eq!(
            accepted.tcp_user_timeout().expect("user timeout"),
            Some(Duration::from_millis(12_345))
        );
    }
}
