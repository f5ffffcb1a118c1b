//! `recovery`: clients that drop and rejoin under a steady publish rate, on a channel that keeps
//! history (docs/protocol.md §7). Each client remembers the last position it saw, drops its TCP
//! connection without a goodbye every so often (as a tunnel or a dead Wi-Fi does), stays away a
//! while, reconnects and joins again with `since`. Every client has joined (and knows the
//! channel's position) before the first publication; publishers then send numbered messages at
//! the given rate. After the last publication every client is connected again and waits for the
//! rest; then the run counts, per client, every message received: delivered (distinct), lost
//! (published but never received) and duplicated (received more than once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::RunError;
use crate::crowd::Target;
use crate::process::Servers;
use crate::report::{Delivery, Report, ServerCpu};
use crate::stamp::{self, Clock};
use crate::wire::{Client, Frame, WireError};

/// A publisher stays under the server's default per-connection frame rate (100/s).
const RATE_PER_PUBLISHER: f64 = 50.0;

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) channel: String,
    pub(crate) clients: usize,
    /// Publications per second, over all publishers.
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    /// Mean time between one client's drops.
    pub(crate) drop_every: Duration,
    /// How long a dropped client stays away.
    pub(crate) offline: Duration,
    pub(crate) payload_bytes: usize,
    pub(crate) drain: Duration,
}

/// What recovering clients saw, beyond delivery counts.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Recovery {
    /// Drops and rejoins.
    pub(crate) reconnects: u64,
    /// Rejoins answered `recovered: true`.
    pub(crate) recovered: u64,
    /// Rejoins answered `recovered: false` (their client would reload from its back end).
    pub(crate) not_recovered: u64,
    pub(crate) gaps: u64,
    /// Messages a client received more than once.
    pub(crate) duplicated: u64,
}

/// Shared by publishers and clients.
#[derive(Default)]
struct Totals {
    /// The next sequence number (so, once publishing is over, how many were published).
    next_seq: AtomicU64,
    /// Distinct messages received, over all clients.
    delivered: AtomicU64,
    /// Clients whose last join (after publishing ended) has been answered.
    settled: AtomicU64,
}

/// One client's record.
#[derive(Default)]
struct Seen {
    /// How often each sequence number arrived.
    counts: Vec<u8>,
    position: Option<Value>,
    /// The current session's join has been answered.
    answered: bool,
    /// The current session is the last one.
    last_session: bool,
    recovery: Recovery,
    errors: u64,
    first_error: Option<String>,
}

impl Seen {
    fn error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    /// Takes one frame; `Err` for an `error` frame.
    fn frame(&mut self, text: &[u8], totals: &Totals) -> Result<(), String> {
        let Ok(frame) = serde_json::from_slice::<Value>(text) else {
            return Err("a frame that is not JSON".into());
        };
        match frame["type"].as_str() {
            Some("message") => {
                if let Some(stamp) = stamp::read(text) {
                    let index = usize::try_from(stamp.seq).unwrap_or(usize::MAX);
                    if index >= self.counts.len() && index < 1 << 28 {
                        self.counts.resize(index + 1, 0);
                    }
                    if let Some(count) = self.counts.get_mut(index) {
                        match *count {
                            0 => {
                                totals.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => self.recovery.duplicated += 1,
                        }
                        *count = count.saturating_add(1);
                    }
                }
                self.position = position_of(&frame);
            }
            Some("reply") if frame["id"] == 1 => {
                self.answered = true;
                if self.last_session {
                    totals.settled.fetch_add(1, Ordering::Release);
                }
                match frame["data"]["recovered"].as_bool() {
                    Some(true) => self.recovery.recovered += 1,
                    Some(false) => self.recovery.not_recovered += 1,
                    None => {}
                }
                self.position = position_of(&frame["data"]).or(self.position.take());
            }
            Some("gap") => {
                self.recovery.gaps += 1;
                self.position = position_of(&frame);
            }
            Some("error") => return Err(frame.to_string()),
            _ => {}
        }
        Ok(())
    }
}

fn position_of(value: &Value) -> Option<Value> {
    let offset = value["offset"].as_u64()?;
    let epoch = value["epoch"].as_str()?;
    Some(serde_json::json!({ "offset": offset, "epoch": epoch }))
}

/// Connects, joins from the last position, and [`follow`]s.
async fn session(
    target: &Target,
    index: usize,
    channel: &str,
    seen: &mut Seen,
    totals: &Totals,
    until: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), WireError> {
    let mut client: Client = target.open(index, None).await?;
    let mut join = serde_json::json!({"action": "join", "channel": channel, "id": 1});
    if let Some(position) = &seen.position {
        join["since"] = position.clone();
    }
    client.send_text(&join.to_string()).await?;
    seen.answered = false;
    follow(client, seen, totals, until, stop).await
}

/// Reads frames until `until`, once the join is answered (or until the run stops); the
/// connection is then dropped without a close frame.
async fn follow(
    mut client: Client,
    seen: &mut Seen,
    totals: &Totals,
    until: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), WireError> {
    loop {
        while let Some(frame) = client.buffered()? {
            if let Frame::Text(text) = frame {
                if let Err(err) = seen.frame(text, totals) {
                    seen.error(err);
                }
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            filled = client.fill() => filled?,
            _ = tokio::time::sleep_until(until.into()), if seen.answered => return Ok(()),
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// One client, joined already (`first`, with the join's answer): sessions separated by drops
/// until `publishing_until`, then one last session until the run stops (everything arrived) or
/// `drained_by`.
async fn client_run(
    target: Target,
    index: usize,
    options: Options,
    totals: Arc<Totals>,
    first: (Client, String),
    (publishing_until, drained_by): (Instant, Instant),
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let (client, answer) = first;
    seen.answered = true;
    if let Err(err) = seen.frame(answer.as_bytes(), &totals) {
        seen.error(err);
    }
    let stay = options.drop_every.mul_f64(0.5 + fastrand::f64());
    let until = (Instant::now() + stay).min(publishing_until);
    if let Err(err) = follow(client, &mut seen, &totals, until, &mut stop).await {
        seen.error(err.to_string());
    }
    let channel = &options.channel;
    while Instant::now() < publishing_until {
        tokio::time::sleep(options.offline).await;
        seen.recovery.reconnects += 1;
        let stay = options.drop_every.mul_f64(0.5 + fastrand::f64());
        let until = (Instant::now() + stay).min(publishing_until);
        let ended = session(
            &target, index, channel, &mut seen, &totals, until, &mut stop,
        )
        .await;
        if let Err(err) = ended {
            seen.error(err.to_string());
        }
    }
    tokio::time::sleep(options.offline).await;
    seen.recovery.reconnects += 1;
    seen.last_session = true;
    let ended = session(
        &target, index, channel, &mut seen, &totals, drained_by, &mut stop,
    )
    .await;
    if let Err(err) = ended {
        seen.error(err.to_string());
    }
    seen
}

/// One publisher: numbered messages at `rate` until `until`.
async fn publish_run(
    mut client: Client,
    options: Options,
    rate: f64,
    totals: Arc<Totals>,
    clock: Clock,
    until: Instant,
) -> Result<(), WireError> {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut next = Instant::now() + period.mul_f64(fastrand::f64());
    while next < until {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                let seq = totals.next_seq.fetch_add(1, Ordering::AcqRel);
                let frame = stamp::publish_frame(&options.channel, seq, clock.micros(), options.payload_bytes);
                client.send_text(&frame).await?;
                next += period;
            }
            filled = client.fill() => {
                filled?;
                while let Some(frame) = client.buffered()? {
                    if let Frame::Text(text) = frame {
                        if text.starts_with(br#"{"type":"error""#) {
                            return Err(WireError::Refused(String::from_utf8_lossy(text).into_owned()));
                        }
                    }
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

pub(crate) async fn run(
    target: &Target,
    servers: &Servers,
    options: &Options,
    concurrency: usize,
) -> Result<Report, RunError> {
    if !(options.rate > 0.0 && options.rate.is_finite()) {
        return Err(RunError::Usage("--rate must be above 0".into()));
    }
    let publishers = (options.rate / RATE_PER_PUBLISHER).ceil().max(1.0) as usize;
    let totals = Arc::new(Totals::default());
    let joined = futures_util::stream::iter(0..options.clients)
        .map(|index| {
            let endpoint = &target.endpoints[index % target.endpoints.len()];
            target.open_answered(endpoint, index, Some(&options.channel))
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut first = Vec::with_capacity(options.clients);
    for opened in joined {
        match opened {
            Ok((client, Some(answer))) => first.push((client, answer)),
            Ok((_, None)) => return Err(RunError::Setup("a join without an answer".into())),
            Err(err) => return Err(RunError::Setup(format!("opening clients: {err}"))),
        }
    }
    let clock = Clock::start();
    let started = Instant::now();
    let publishing_until = started + options.duration;
    // Clients reconnect at the end and then have the drain to receive the rest.
    let drained_by = publishing_until + options.offline + options.drain;
    let cpu_before = servers.cpu_time()?;
    let (stop, stopped) = watch::channel(false);
    let clients: Vec<_> = first
        .into_iter()
        .enumerate()
        .map(|(index, first)| {
            tokio::spawn(client_run(
                target.clone(),
                index,
                options.clone(),
                totals.clone(),
                first,
                (publishing_until, drained_by),
                stopped.clone(),
            ))
        })
        .collect();
    let mut publishing = Vec::with_capacity(publishers);
    for publisher in 0..publishers {
        let client = target
            .open(options.clients + publisher, None)
            .await
            .map_err(|err| RunError::Setup(format!("opening a publisher: {err}")))?;
        publishing.push(tokio::spawn(publish_run(
            client,
            options.clone(),
            options.rate / publishers as f64,
            totals.clone(),
            clock,
            publishing_until,
        )));
    }
    let mut report = Report {
        mode: "recovery",
        nodes: target.endpoints.len(),
        connections: options.clients,
        ..Report::default()
    };
    for publisher in publishing {
        match publisher.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => report.note_error(1, Some(format!("publisher: {err}"))),
            Err(err) => report.note_error(1, Some(format!("publisher task: {err}"))),
        }
    }
    let published = totals.next_seq.load(Ordering::Acquire);
    let expected = published * options.clients as u64;
    // Clients stop at `drained_by`; end earlier once everything arrived and every client's
    // last join was answered.
    let clients_count = options.clients as u64;
    while (totals.delivered.load(Ordering::Relaxed) < expected
        || totals.settled.load(Ordering::Acquire) < clients_count)
        && Instant::now() < drained_by
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = Instant::now();
    let cpu_after = servers.cpu_time()?;
    let _ = stop.send(true);
    let mut recovery = Recovery::default();
    let mut delivered = 0;
    for client in clients {
        let seen = match client.await {
            Ok(seen) => seen,
            Err(err) => {
                report.note_error(1, Some(format!("client task: {err}")));
                continue;
            }
        };
        delivered += seen
            .counts
            .iter()
            .take(usize::try_from(published).unwrap_or(usize::MAX))
            .filter(|count| **count > 0)
            .count() as u64;
        recovery.reconnects += seen.recovery.reconnects;
        recovery.recovered += seen.recovery.recovered;
        recovery.not_recovered += seen.recovery.not_recovered;
        recovery.gaps += seen.recovery.gaps;
        recovery.duplicated += seen.recovery.duplicated;
        report.note_error(seen.errors, seen.first_error);
    }
    let wall = finished.saturating_duration_since(started);
    report.delivery = Some(Delivery::new(
        published,
        expected,
        delivered,
        recovery.duplicated,
        wall,
    ));
    report.server_cpu = ServerCpu::between(cpu_before, cpu_after, wall, delivered);
    report.recovery = Some(recovery);
    Ok(report)
}
