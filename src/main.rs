//! The `switchboard` command: parse the CLI, load the config, set up logging, and run the server
//! or a command. Thin on purpose; the library does the work.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchboard::api_client::{
    ApiClient, DisconnectTarget, check_health, connections_table, history_lines, local_url,
};
use switchboard::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A realtime WebSocket channel server"
)]
struct Cli {
    /// Log format on standard error; the level comes from RUST_LOG (default "info").
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SWITCHBOARD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        /// TOML config file; without it, the defaults plus SWITCHBOARD_* overrides.
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Ask a node's /healthz (or --path) and exit 0 when it answers 2xx, 1 otherwise: the
    /// container HEALTHCHECK (the runtime image has no curl).
    Health {
        /// The URL to ask; default: http://<[server] bind>/<path> from the config, on loopback
        /// when the node binds every address.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// The node's config file (for its bind address).
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration, or every error in it (naming the key).
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Publish JSON to a channel on every node (through the server API).
    Publish {
        #[command(flatten)]
        api: ApiArgs,
        channel: String,
        /// Any JSON value: the `data` members receive.
        json: String,
    },
    /// Close the sockets of a user, a session or one connection, on every node.
    Disconnect {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, group = "target", required = true)]
        user: Option<String>,
        #[arg(long, group = "target")]
        session: Option<String>,
        #[arg(long, group = "target")]
        connection: Option<String>,
        /// Close code (default 4002 logged_out).
        #[arg(long)]
        code: Option<u16>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// List connections, cluster-wide: all, a user's, or a channel's.
    Connections {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, conflicts_with = "channel")]
        user: Option<String>,
        #[arg(long)]
        channel: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print the API's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a channel's history (a channel whose rule keeps it): its position, then its
    /// publications, oldest first.
    History {
        #[command(flatten)]
        api: ApiArgs,
        channel: String,
        /// Only publications after this offset.
        #[arg(long)]
        since: Option<u64>,
        /// Only publications before this offset.
        #[arg(long)]
        before: Option<u64>,
        /// At most this many publications (the API allows up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The newest first.
        #[arg(long)]
        newest_first: bool,
        /// Print the API's JSON answer instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// Where the server API is: `--url`/`--key`, else the node described by `--config`.
#[derive(clap::Args)]
struct ApiArgs {
    /// The node's base URL; default: http://<[server] bind> from --config, else http://127.0.0.1:8080.
    #[arg(long, env = "SWITCHBOARD_API_URL")]
    url: Option<String>,
    /// The API key; default: [api] key from --config.
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A node's config file, read for the URL and key.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("switchboard: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Publish { api, channel, json } => run_api_command(&api, |client| async move {
            let data: serde_json::Value = serde_json::from_str(&json)
                .with_context(|| format!("JSON: {json:?} is not a JSON value"))?;
            Ok(client.publish(&channel, data).await?.to_string())
        }),
        Command::Disconnect {
            api,
            user,
            session,
            connection,
            code,
            reason,
        } => run_api_command(&api, |client| async move {
            let target = match (user, session, connection) {
                (Some(user), _, _) => DisconnectTarget::User(user),
                (_, Some(session), _) => DisconnectTarget::Session(session),
                (_, _, Some(connection)) => DisconnectTarget::Connection(connection),
                _ => anyhow::bail!("give --user, --session or --connection"),
            };
            Ok(client
                .disconnect(&target, code, reason.as_deref())
                .await?
                .to_string())
        }),
        Command::Connections {
            api,
            user,
            channel,
            limit,
            json,
        } => run_api_command(&api, |client| async move {
            let limit = limit.to_string();
            let mut query = vec![("limit", limit.as_str())];
            if let Some(user) = &user {
                query.push(("user", user));
            }
            if let Some(channel) = &channel {
                query.push(("channel", channel));
            }
            let answer = client.connections(&query).await?;
            Ok(if json {
                answer.to_string()
            } else {
                connections_table(&answer).trim_end().to_owned()
            })
        }),
        Command::History {
            api,
            channel,
            since,
            before,
            limit,
            newest_first,
            json,
        } => run_api_command(&api, |client| async move {
            let (since, before, limit) = (
                since.map(|since| since.to_string()),
                before.map(|before| before.to_string()),
                limit.to_string(),
            );
            let mut query = vec![("channel", channel.as_str()), ("limit", limit.as_str())];
            if let Some(since) = &since {
                query.push(("since", since));
            }
            if let Some(before) = &before {
                query.push(("before", before));
            }
            if newest_first {
                query.push(("newest_first", "true"));
            }
            let answer = client.history(&query).await?;
            Ok(if json {
                answer.to_string()
            } else {
                history_lines(&answer)
            })
        }),
        Command::Health { url, path, config } => {
            print_outcome(health_url(url, &path, config).and_then(|url| {
                block_on(async move { check_health(&url).await.context("unhealthy") })
            }))
        }
        Command::CheckConfig { config } => match Config::load(Some(&config)) {
            Ok(config) => {
                for deprecation in &config.deprecations {
                    eprintln!("warning: {deprecation}");
                }
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{}: {err}", config.display());
                ExitCode::from(2)
            }
        },
    }
}

/// Runs one server API call and prints its answer; exit code 1 when it fails.
fn run_api_command<F, Fut>(api: &ApiArgs, command: F) -> ExitCode
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    print_outcome(api_client(api).and_then(|client| block_on(command(client))))
}

/// Runs a command's future on a runtime of its own (the commands are one request each).
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?
        .block_on(future)
}

/// Prints a command's output (exit code 0) or its error (exit code 1).
fn print_outcome(outcome: anyhow::Result<String>) -> ExitCode {
    match outcome {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("switchboard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn health_url(url: Option<String>, path: &str, config: Option<PathBuf>) -> anyhow::Result<String> {
    match url {
        Some(url) => Ok(url),
        None => {
            let config = Config::load(config.as_deref()).context("loading the configuration")?;
            Ok(local_url(config.server.bind, path))
        }
    }
}

fn api_client(api: &ApiArgs) -> anyhow::Result<ApiClient> {
    let config = match &api.config {
        Some(path) => Some(Config::load(Some(path)).context("loading the configuration")?),
        None => None,
    };
    let url = match (&api.url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(config)) => format!("http://{}", config.server.bind),
        (None, None) => "http://127.0.0.1:8080".to_owned(),
    };
    let key = match (&api.key, &config) {
        (Some(key), _) => key.clone(),
        (None, Some(config)) => config.api.key.clone(),
        (None, None) => String::new(),
    };
    Ok(ApiClient::new(&url, &key)?)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref()).context("loading the configuration")?;
    for deprecation in &config.deprecations {
        tracing::warn!(key = %deprecation.key, "{}", deprecation.message);
    }
    let wide_open = config
        .channels
        .iter()
        .any(|rule| rule.pattern == "*" && rule.join == switchboard::hub::Access::Anyone);
    if wide_open && !config.server.bind.ip().is_loopback() {
        tracing::warn!(
            bind = %config.server.bind,
            "a channel rule lets anyone join every channel, on a public address: see docs/configuration.md \"Locking down channels\""
        );
    } else if wide_open {
        tracing::info!(
            "a channel rule lets anyone join every channel: fine for development on loopback, see docs/configuration.md \"Locking down channels\""
        );
    }
    raise_open_file_limit(config.server.max_connections);
    let listener = TcpListener::bind(config.server.bind)
        .with_context(|| format!("binding {}", config.server.bind))?;
    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%address, broker = ?config.broker.broker_type, "listening");
    // One line on standard output that scripts and tests can wait for.
    println!("switchboard listening on http://{address}");
    std::io::stdout()
        .flush()
        .context("writing to standard output")?;
    actix_web::rt::System::new()
        .block_on(switchboard::server::run(
            listener,
            config,
            shutdown_signal(),
        ))
        .context("running the server")
}

/// Each socket is a file descriptor: raise the soft limit to the hard one (container runtimes
/// and shells often start processes at a soft 1,024 under a much higher hard limit), and say
/// when even that is below `max_connections`.
fn raise_open_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(open_files = limit, "open-file limit");
            if max_connections > 0 && limit < max_connections as u64 + 64 {
                tracing::warn!(
                    open_files = limit,
                    max_connections,
                    "the open-file limit is below server.max_connections: raise it (docs/operating.md \"Many connections\")"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-file limit"),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM; use SIGINT");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
