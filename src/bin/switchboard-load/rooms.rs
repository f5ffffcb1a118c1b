//! `rooms`: a chat workload. R rooms of K members each (members spread over the nodes); every
//! member publishes to its room at a low fixed rate for the run's duration and receives what its
//! room says, its own messages included. Expected deliveries are K per publication.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::RunError;
use crate::crowd::Target;
use crate::process::Servers;
use crate::received::{self, Received};
use crate::report::Report;
use crate::stamp::{self, Clock};
use crate::wire::Client;

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) rooms: usize,
    pub(crate) members: usize,
    /// Messages per second per member.
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) payload_bytes: usize,
    pub(crate) drain: Duration,
    pub(crate) concurrency: usize,
}

fn room_of(index: usize, members: usize) -> String {
    format!("room:{}", index / members.max(1))
}

/// Counters every member shares.
#[derive(Default)]
struct Totals {
    published: AtomicU64,
    delivered: AtomicU64,
    /// Members that will publish nothing more (their last send is counted in `published`).
    done_sending: AtomicU64,
}

struct Member {
    client: Client,
    room: String,
    rate: f64,
    payload_bytes: usize,
    until: Instant,
    clock: Clock,
    totals: Arc<Totals>,
}

impl Member {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Received {
        let mut received = Received::default();
        let period = Duration::from_secs_f64(1.0 / self.rate.max(0.001));
        // Members start out of phase, so a room's messages are spread over the period.
        let mut next_send = Instant::now() + period.mul_f64(fastrand::f64());
        let mut seq = 0;
        let mut counted_done = false;
        loop {
            let totals = &self.totals;
            let taken = received.take_buffered(&mut self.client, &self.clock, |_| {
                totals.delivered.fetch_add(1, Ordering::Relaxed);
            });
            if let Err(err) = taken {
                received.error(err.to_string());
                return received;
            }
            if *stop.borrow() {
                return received;
            }
            let sending = next_send < self.until;
            if !sending && !counted_done {
                counted_done = true;
                self.totals.done_sending.fetch_add(1, Ordering::Release);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next_send.into()), if sending => {
                    let frame = stamp::publish_frame(&self.room, seq, self.clock.micros(), self.payload_bytes);
                    if let Err(err) = self.client.send_text(&frame).await {
                        received.error(err.to_string());
                        return received;
                    }
                    self.totals.published.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                    next_send += period;
                }
                filled = self.client.fill() => if let Err(err) = filled {
                    received.error(err.to_string());
                    return received;
                },
                _ = stop.changed() => return received,
            }
        }
    }
}

pub(crate) async fn run(
    target: &Target,
    servers: &Servers,
    options: &Options,
) -> Result<Report, RunError> {
    let connections = options.rooms * options.members;
    let members = options.members;
    let clients = target
        .open_many(connections, options.concurrency, |index| {
            Some(room_of(index, members))
        })
        .await
        .map_err(|err| RunError::Setup(format!("opening members: {err}")))?;

    let clock = Clock::start();
    let totals = Arc::new(Totals::default());
    let (stop, stopped) = watch::channel(false);
    let until = Instant::now() + options.duration;
    let cpu_before = servers.cpu_time()?;
    let started_at = clock.micros();
    let running: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            let member = Member {
                client,
                room: room_of(index, members),
                rate: options.rate,
                payload_bytes: options.payload_bytes,
                until,
                clock,
                totals: totals.clone(),
            };
            tokio::spawn(member.run(stopped.clone()))
        })
        .collect();

    tokio::time::sleep_until(until.into()).await;
    let expected = || totals.published.load(Ordering::Acquire) * members as u64;
    let drained_by = Instant::now() + options.drain;
    // A member whose last send is still in flight at `until` has not counted it yet; wait for
    // every member to finish sending so the drain below compares against the final count.
    // (A member that failed stops counting; the drain's deadline bounds the wait.)
    while totals.done_sending.load(Ordering::Acquire) < connections as u64
        && Instant::now() < drained_by
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while totals.delivered.load(Ordering::Relaxed) < expected() && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = servers.cpu_time()?;
    let _ = stop.send(true);

    let received = received::gather(running, "member").await;
    let mut report = Report {
        mode: "rooms",
        nodes: target.endpoints.len(),
        connections,
        ..Report::default()
    };
    report.record_deliveries(
        totals.published.load(Ordering::Relaxed),
        expected(),
        received,
        started_at,
        (cpu_before, cpu_after),
    );
    Ok(report)
}
