//! `switchboard-load`: the load generator behind Switchboard's published figures. It speaks the
//! wire protocol over real sockets (its own minimal client, `wire`), bounded in connections and
//! time, and reads the server's CPU time and memory from `/proc` when given its PID.
//!
//! Modes: `fanout` (one channel, S subscribers, over one node or several through Redis),
//! `rooms` (a chat workload), `idle` (memory per held connection), `connect` (handshakes per
//! second, with RS256 tokens), `recovery` (clients that drop and rejoin with `since` on a channel
//! that keeps history, counting what they lost or received twice). Output is a short human report, or one JSON object (`--json`).
//! docs/performance.md has the commands behind every published number.

mod crowd;
mod fanout;
mod handshake;
mod histogram;
mod idle;
mod process;
mod received;
mod recovery;
mod report;
mod rooms;
mod stamp;
mod wire;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crowd::{Credentials, Target};
use process::Servers;
use wire::{Endpoint, Sources};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("run failed: {0}")]
    Run(String),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error(transparent)]
    Credentials(#[from] crowd::CredentialsError),
    #[error("the run did not finish within --deadline ({0:?})")]
    Deadline(Duration),
}

#[derive(Parser)]
#[command(
    name = "switchboard-load",
    version,
    about = "Load generator for Switchboard: fan-out, rooms, idle memory, handshakes, recovery"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args)]
struct Common {
    /// A node's WebSocket URL; repeat for several nodes (connections are spread round-robin,
    /// the fan-out publisher uses the first).
    #[arg(long = "url", global = true, default_value = "ws://127.0.0.1:8080/ws")]
    urls: Vec<String>,
    /// PID of a server process whose CPU time and memory to read; repeat for several nodes.
    #[arg(long = "server-pid", global = true)]
    server_pids: Vec<u32>,
    /// Print one JSON object instead of the human report.
    #[arg(long, global = true)]
    json: bool,
    /// Spread connections over source addresses 127.0.0.1 … 127.0.0.N (1–254), so many
    /// connections do not exhaust one address's ephemeral ports.
    #[arg(long, global = true, default_value_t = 32, value_parser = clap::value_parser!(u8).range(1..=254))]
    sources: u8,
    /// Handshakes in flight at once while opening connections.
    #[arg(long, global = true, default_value_t = 128)]
    concurrency: usize,
    /// Generator threads (0: one per available core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Give up on the whole run after this many seconds.
    #[arg(long, global = true, default_value_t = 300)]
    deadline: u64,
    /// A bearer token every connection presents.
    #[arg(long, global = true, conflicts_with = "rsa_key")]
    token: Option<String>,
    /// An RSA private key (PEM) to sign RS256 tokens with, one per user `load-N`.
    #[arg(long, global = true)]
    rsa_key: Option<String>,
    /// Distinct tokens to sign with --rsa-key (handed out round-robin).
    #[arg(long, global = true, default_value_t = 256)]
    tokens: usize,
    /// `iss` of signed tokens.
    #[arg(long, global = true)]
    issuer: Option<String>,
    /// `aud` of signed tokens.
    #[arg(long, global = true)]
    audience: Option<String>,
}

#[derive(Subcommand)]
enum Mode {
    /// S subscribers of one channel, one publisher; deliveries/s, loss, latency.
    Fanout {
        #[arg(long, default_value_t = 5000)]
        subscribers: usize,
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        /// Messages in flight (not yet delivered to every subscriber) when no --rate is given.
        #[arg(long, default_value_t = 10)]
        window: u64,
        /// Publish at this many messages per second instead of as fast as the window allows.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value = "bench")]
        channel: String,
        /// Size of each message's JSON data.
        #[arg(long, default_value_t = 110)]
        payload_bytes: usize,
        /// Seconds to wait for stragglers after the last publish.
        #[arg(long, default_value_t = 3.0)]
        drain: f64,
    },
    /// R rooms × K members, each member publishing at a low rate; a chat workload.
    Rooms {
        #[arg(long, default_value_t = 500)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Messages per second per member.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 110)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 3.0)]
        drain: f64,
    },
    /// N joined connections held open; the server's resident memory per connection.
    Idle {
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        /// Channels the connections are spread over.
        #[arg(long, default_value_t = 100)]
        channels: usize,
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
        /// Seconds to keep the connections open after measuring.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
    /// Clients that drop and rejoin with `since` under a steady publish rate, on a channel
    /// that keeps history: delivered, lost, duplicated.
    Recovery {
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Publications per second (spread over publishers of at most 50/s each).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Mean seconds between one client's drops.
        #[arg(long, default_value_t = 2.0)]
        drop_every: f64,
        /// Seconds a dropped client stays away.
        #[arg(long, default_value_t = 0.5)]
        offline: f64,
        /// A channel whose rule keeps history.
        #[arg(long, default_value = "chat:load")]
        channel: String,
        #[arg(long, default_value_t = 110)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
    },
    /// Handshakes per second (authenticated when --rsa-key or --token is given).
    Connect {
        #[arg(long, default_value_t = 20000)]
        count: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match cli.common.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        threads => threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(err) => Err(RunError::Setup(format!("cannot start the runtime: {err}"))),
    };
    match result {
        Ok((report, json)) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(err) => {
                        eprintln!("switchboard-load: cannot encode the report: {err}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.human());
            }
            ExitCode::SUCCESS
        }
        Err(RunError::Usage(message)) => {
            eprintln!("switchboard-load: {message}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("switchboard-load: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(report::Report, bool), RunError> {
    let common = cli.common;
    let endpoints = common
        .urls
        .iter()
        .map(|url| Endpoint::parse(url).map_err(|err| RunError::Usage(format!("--url: {err}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = match (&common.token, &common.rsa_key) {
        (Some(token), _) => Credentials::Static(token.clone()),
        (None, Some(path)) => Credentials::mint_rs256(
            path,
            common.tokens,
            common.issuer.as_deref(),
            common.audience.as_deref(),
        )?,
        (None, None) => Credentials::None,
    };
    let target = Target {
        endpoints,
        sources: Sources(common.sources),
        credentials,
    };
    let servers = Servers::new(common.server_pids);
    let concurrency = common.concurrency;
    let deadline = Duration::from_secs(common.deadline);
    let seconds = |value: f64, flag: &str| {
        Duration::try_from_secs_f64(value)
            .map_err(|_| RunError::Usage(format!("--{flag} must be a number of seconds ≥ 0")))
    };
    let running = async {
        match cli.mode {
            Mode::Fanout {
                subscribers,
                messages,
                window,
                rate,
                channel,
                payload_bytes,
                drain,
            } => {
                if rate.is_some_and(|rate| rate <= 0.0 || !rate.is_finite()) {
                    return Err(RunError::Usage("--rate must be above 0".into()));
                }
                let options = fanout::Options {
                    channel,
                    subscribers: subscribers.max(1),
                    messages,
                    window: window.max(1),
                    rate,
                    payload_bytes,
                    drain: seconds(drain, "drain")?,
                    concurrency,
                };
                fanout::run(&target, &servers, &options).await
            }
            Mode::Rooms {
                rooms,
                members,
                rate,
                duration,
                payload_bytes,
                drain,
            } => {
                let options = rooms::Options {
                    rooms: rooms.max(1),
                    members: members.max(1),
                    rate,
                    duration: seconds(duration, "duration")?,
                    payload_bytes,
                    drain: seconds(drain, "drain")?,
                    concurrency,
                };
                rooms::run(&target, &servers, &options).await
            }
            Mode::Idle {
                connections,
                channels,
                settle,
                hold,
            } => {
                let options = idle::Options {
                    connections,
                    channels,
                    settle: seconds(settle, "settle")?,
                    hold: seconds(hold, "hold")?,
                    concurrency,
                };
                idle::run(&target, &servers, &options).await
            }
            Mode::Recovery {
                clients,
                rate,
                duration,
                drop_every,
                offline,
                channel,
                payload_bytes,
                drain,
            } => {
                let options = recovery::Options {
                    channel,
                    clients: clients.max(1),
                    rate,
                    duration: seconds(duration, "duration")?,
                    drop_every: seconds(drop_every, "drop-every")?,
                    offline: seconds(offline, "offline")?,
                    payload_bytes,
                    drain: seconds(drain, "drain")?,
                };
                recovery::run(&target, &servers, &options, concurrency).await
            }
            Mode::Connect { count } => {
                let options = handshake::Options { count, concurrency };
                handshake::run(&target, &servers, &options).await
            }
        }
    };
    let report = tokio::time::timeout(deadline, running)
        .await
        .map_err(|_| RunError::Deadline(deadline))??;
    Ok((report, common.json))
}
