//! `connect`: handshakes per second. `count` connections are opened (at most `concurrency` at a
//! time), each one waits for its `welcome` (so authentication has run) and closes again. Tokens
//! are signed before the clock starts: the server's verification is what is measured, not the
//! generator's signing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::RunError;
use crate::crowd::Target;
use crate::histogram::Histogram;
use crate::process::Servers;
use crate::report::{Handshakes, Latency, Report, ServerCpu, ratio};

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) count: usize,
    pub(crate) concurrency: usize,
}

#[derive(Default)]
struct Tally {
    latency: Histogram,
    completed: u64,
    refused: u64,
    first_error: Option<String>,
}

async fn worker(target: Target, next: Arc<AtomicUsize>, count: usize) -> Tally {
    let mut tally = Tally::default();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= count {
            return tally;
        }
        let started = Instant::now();
        match target.open(index, None).await {
            Ok(client) => {
                tally.latency.record(started.elapsed().as_micros() as u64);
                tally.completed += 1;
                client.close().await;
            }
            Err(err) => {
                tally.refused += 1;
                tally.first_error.get_or_insert(err.to_string());
            }
        }
    }
}

pub(crate) async fn run(
    target: &Target,
    servers: &Servers,
    options: &Options,
) -> Result<Report, RunError> {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = servers.cpu_time()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| tokio::spawn(worker(target.clone(), next.clone(), options.count)))
        .collect();
    let mut total = Tally::default();
    for handle in workers {
        let tally = handle
            .await
            .map_err(|err| RunError::Run(format!("a worker failed: {err}")))?;
        total.latency.merge(&tally.latency);
        total.completed += tally.completed;
        total.refused += tally.refused;
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
    }
    let wall = started.elapsed();
    let cpu_after = servers.cpu_time()?;

    let mut report = Report {
        mode: "connect",
        nodes: target.endpoints.len(),
        connections: options.count,
        handshakes: Some(Handshakes {
            completed: total.completed,
            refused: total.refused,
            seconds: wall.as_secs_f64(),
            per_second: ratio(total.completed as f64, wall.as_secs_f64()),
        }),
        latency_us: Some(Latency::from(&total.latency)),
        ..Report::default()
    };
    report.server_cpu = ServerCpu::between(cpu_before, cpu_after, wall, total.completed);
    report.note_error(total.refused, total.first_error);
    // Closed sockets linger for a moment on the server; a following run starts clean.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(report)
}
