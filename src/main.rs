//! The `switchboard` command: parse the CLI, load the config, set up logging, and run the server
//! or a command. Thin on purpose; the library does the work.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
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
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration, or every error in it (naming the key).
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
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
        Command::CheckConfig { config } => match Config::load(Some(&config)) {
            Ok(config) => {
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
    if config
        .channels
        .iter()
        .any(|rule| rule.pattern == "*" && rule.join == switchboard::hub::Access::Anyone)
    {
        tracing::warn!(
            "a channel rule lets anyone join every channel: fine for development, see README \"Locking down channels\""
        );
    }
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
