//! `idle`: N connections opened and joined (one channel each, spread over `channels` names),
//! then held silent. Reports the server's resident memory per connection: the growth from
//! before the first handshake to after the last join, once the server has settled, divided by N.

use std::time::Duration;

use crate::RunError;
use crate::crowd::Target;
use crate::process::Servers;
use crate::report::{Memory, Report};

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) connections: usize,
    pub(crate) channels: usize,
    /// How long to wait after the last join before reading the server's memory.
    pub(crate) settle: Duration,
    /// How long to keep the connections open after the reading.
    pub(crate) hold: Duration,
    pub(crate) concurrency: usize,
}

pub(crate) async fn run(
    target: &Target,
    servers: &Servers,
    options: &Options,
) -> Result<Report, RunError> {
    if servers.is_empty() {
        return Err(RunError::Usage(
            "idle measures the server's memory: give --server-pid".into(),
        ));
    }
    let before = servers.resident_bytes()?.unwrap_or(0);
    let channels = options.channels.max(1);
    let mut clients = target
        .open_many(options.connections, options.concurrency, |index| {
            Some(format!("idle:{}", index % channels))
        })
        .await
        .map_err(|err| RunError::Setup(format!("opening connections: {err}")))?;
    for client in &mut clients {
        client.shrink();
    }
    tokio::time::sleep(options.settle).await;
    let after = servers.resident_bytes()?.unwrap_or(0);
    tokio::time::sleep(options.hold).await;
    drop(clients);

    let per_connection = after.saturating_sub(before) / options.connections.max(1) as u64;
    Ok(Report {
        mode: "idle",
        nodes: target.endpoints.len(),
        connections: options.connections,
        memory: Some(Memory {
            resident_before_bytes: before,
            resident_after_bytes: after,
            per_connection_bytes: per_connection,
        }),
        ..Report::default()
    })
}
