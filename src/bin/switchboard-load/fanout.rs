//! `fanout`: S subscribers in one channel (spread over the nodes given), one publisher on the
//! first node sending P stamped messages, either as fast as a window of un-delivered messages
//! allows or at a fixed rate. Measures deliveries per second and per server CPU-second, loss,
//! and latency from each message's send stamp.
//!
//! A message counts as delivered for the window once every subscriber has received it or a
//! later one (the server keeps order per connection, so a later one means this one was lost).
//! If the window makes no progress for [`STALL`], what is outstanding is given up on so a lossy
//! server cannot hang the run; every loss is still counted from the per-subscriber totals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::RunError;
use crate::crowd::Target;
use crate::process::Servers;
use crate::received::{self, Received};
use crate::report::Report;
use crate::stamp::{self, Clock};
use crate::wire::Client;

/// Messages tracked at once for the window; far more than any window, so a slot is reused only
/// long after its message completed.
const RING: usize = 1 << 16;
/// No progress for this long gives up on the outstanding messages.
const STALL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) channel: String,
    pub(crate) subscribers: usize,
    pub(crate) messages: u64,
    /// Un-delivered messages allowed in flight (when `rate` is not set).
    pub(crate) window: u64,
    /// Messages per second; `None`: as fast as the window allows.
    pub(crate) rate: Option<f64>,
    pub(crate) payload_bytes: usize,
    /// After the last publish, how long to wait for stragglers.
    pub(crate) drain: Duration,
    pub(crate) concurrency: usize,
}

/// Which messages every subscriber has got past.
struct Progress {
    ring: Box<[AtomicU32]>,
    subscribers: u32,
    completed: AtomicU64,
    advanced: Notify,
}

impl Progress {
    fn new(subscribers: usize) -> Self {
        Self {
            ring: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            subscribers: subscribers as u32,
            completed: AtomicU64::new(0),
            advanced: Notify::new(),
        }
    }

    fn reset(&self, seq: u64) {
        self.ring[seq as usize % RING].store(0, Ordering::Relaxed);
    }

    /// One subscriber got past `seq`.
    fn passed(&self, seq: u64) {
        let slot = &self.ring[seq as usize % RING];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 == self.subscribers {
            self.completed.fetch_add(1, Ordering::AcqRel);
            self.advanced.notify_one();
        }
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }
}

async fn subscriber(
    mut client: Client,
    progress: Arc<Progress>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
    last_seq: u64,
) -> Received {
    let mut received = Received::default();
    let mut next_seq = 0;
    let mut disordered = 0;
    loop {
        let taken = received.take_buffered(&mut client, &clock, |stamp| {
            if stamp.seq >= next_seq {
                for seq in next_seq..=stamp.seq {
                    progress.passed(seq);
                }
                next_seq = stamp.seq + 1;
            } else {
                disordered += 1;
            }
        });
        received.disordered += std::mem::take(&mut disordered);
        if let Err(err) = taken {
            received.error(err.to_string());
            return received;
        }
        if next_seq > last_seq || *stop.borrow() {
            return received;
        }
        tokio::select! {
            filled = client.fill() => if let Err(err) = filled {
                received.error(err.to_string());
                return received;
            },
            _ = stop.changed() => return received,
        }
    }
}

pub(crate) async fn run(
    target: &Target,
    servers: &Servers,
    options: &Options,
) -> Result<Report, RunError> {
    let mut report = Report {
        mode: "fanout",
        nodes: target.endpoints.len(),
        connections: options.subscribers,
        ..Report::default()
    };
    let channel = options.channel.clone();
    let clients = target
        .open_many(options.subscribers, options.concurrency, |_| {
            Some(channel.clone())
        })
        .await
        .map_err(|err| RunError::Setup(format!("opening subscribers: {err}")))?;
    let mut publisher = target
        .open_at(&target.endpoints[0], options.subscribers, None)
        .await
        .map_err(|err| RunError::Setup(format!("opening the publisher: {err}")))?;

    let clock = Clock::start();
    let progress = Arc::new(Progress::new(options.subscribers));
    let (stop, stopped) = watch::channel(false);
    let last_seq = options.messages.saturating_sub(1);
    let receiving: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(subscriber(
                client,
                progress.clone(),
                clock,
                stopped.clone(),
                last_seq,
            ))
        })
        .collect();

    let cpu_before = servers.cpu_time()?;
    let started_at = clock.micros();
    let mut publisher_seen = Received::default();
    let mut given_up = 0u64;
    for seq in 0..options.messages {
        match options.rate {
            Some(rate) => {
                let due = clock.instant_of(started_at) + Duration::from_secs_f64(seq as f64 / rate);
                wait_reading(
                    &mut publisher,
                    &mut publisher_seen,
                    &clock,
                    tokio::time::sleep_until(due.into()),
                )
                .await?;
            }
            None => {
                let mut waited_since = Instant::now();
                let mut last_completed = progress.completed();
                while seq - (progress.completed() + given_up).min(seq) >= options.window {
                    let notified = progress.advanced.notified();
                    let woke = tokio::time::timeout(STALL, notified);
                    wait_reading(&mut publisher, &mut publisher_seen, &clock, woke).await?;
                    let completed = progress.completed();
                    if completed != last_completed {
                        last_completed = completed;
                        waited_since = Instant::now();
                    } else if waited_since.elapsed() >= STALL {
                        given_up = seq - completed;
                        waited_since = Instant::now();
                    }
                }
            }
        }
        progress.reset(seq);
        let frame =
            stamp::publish_frame(&options.channel, seq, clock.micros(), options.payload_bytes);
        publisher
            .send_text(&frame)
            .await
            .map_err(|err| RunError::Run(format!("publishing: {err}")))?;
    }

    // Wait for the last deliveries, or until they stop coming.
    let mut last_completed = progress.completed();
    let mut quiet_since = Instant::now();
    while progress.completed() < options.messages && quiet_since.elapsed() < options.drain {
        let _ = tokio::time::timeout(Duration::from_millis(50), progress.advanced.notified()).await;
        if progress.completed() != last_completed {
            last_completed = progress.completed();
            quiet_since = Instant::now();
        }
    }
    let cpu_after = servers.cpu_time()?;
    let _ = stop.send(true);

    let received = received::gather(receiving, "subscriber").await;
    publisher.close().await;

    report.record_deliveries(
        options.messages,
        options.messages * options.subscribers as u64,
        received,
        started_at,
        (cpu_before, cpu_after),
    );
    report.note_error(publisher_seen.errors, publisher_seen.first_error);
    Ok(report)
}

/// Waits for `until` while reading (and counting) what the server sends the publisher: an
/// `error` frame for a refused publish must not sit unread.
async fn wait_reading<F: std::future::Future>(
    publisher: &mut Client,
    seen: &mut Received,
    clock: &Clock,
    until: F,
) -> Result<(), RunError> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return Ok(()),
            filled = publisher.fill() => {
                filled.map_err(|err| RunError::Run(format!("the publisher's connection: {err}")))?;
                seen.take_buffered(publisher, clock, |_| {})
                    .map_err(|err| RunError::Run(format!("the publisher's connection: {err}")))?;
            }
        }
    }
}
