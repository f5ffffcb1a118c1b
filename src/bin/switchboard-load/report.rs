//! What a run measured, printed for people or as one JSON object (`--json`). Every mode fills
//! the parts that apply to it; the rest are left out.

use std::time::Duration;

use serde::Serialize;

use crate::histogram::Histogram;
use crate::process::CpuTimes;
use crate::received::Received;

#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    pub(crate) nodes: usize,
    pub(crate) connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivery: Option<Delivery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) latency_us: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) handshakes: Option<Handshakes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu: Option<ServerCpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) recovery: Option<crate::recovery::Recovery>,
    /// Errors the run saw (refused handshakes, `error` frames, lost connections), with the
    /// first of each kind.
    pub(crate) errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Delivery {
    pub(crate) published: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) loss_ratio: f64,
    /// Messages that arrived out of order or twice.
    pub(crate) disordered: u64,
    /// From the first send to the last delivery.
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

impl From<&Histogram> for Latency {
    fn from(histogram: &Histogram) -> Self {
        Self {
            samples: histogram.count(),
            p50: histogram.quantile(0.50),
            p90: histogram.quantile(0.90),
            p99: histogram.quantile(0.99),
            max: histogram.max(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Handshakes {
    pub(crate) completed: u64,
    pub(crate) refused: u64,
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Memory {
    pub(crate) resident_before_bytes: u64,
    pub(crate) resident_after_bytes: u64,
    /// (after − before) / connections.
    pub(crate) per_connection_bytes: u64,
}

/// The server's CPU time over the measured interval, and the work done per CPU second.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ServerCpu {
    pub(crate) seconds: f64,
    /// CPU seconds per wall second (1.0 is one core saturated).
    pub(crate) utilisation: f64,
    /// Deliveries (or handshakes) per second of server CPU time.
    pub(crate) work_per_cpu_second: f64,
    /// Each watched process's share of `seconds`, in the order of `--server-pid`.
    pub(crate) per_process: Vec<ProcessCpu>,
}

/// One watched process's CPU time over the measured interval.
#[derive(Debug, Default, Serialize, PartialEq)]
pub(crate) struct ProcessCpu {
    pub(crate) pid: u32,
    pub(crate) seconds: f64,
}

impl ServerCpu {
    /// From two readings of the servers' CPU time, taken around the measured interval; `None`
    /// when no server process was given to read.
    pub(crate) fn between(
        before: Option<CpuTimes>,
        after: Option<CpuTimes>,
        wall: Duration,
        work: u64,
    ) -> Option<Self> {
        let (before, after) = (before?, after?);
        let seconds = after.total().saturating_sub(before.total()).as_secs_f64();
        Some(Self {
            seconds,
            utilisation: ratio(seconds, wall.as_secs_f64()),
            work_per_cpu_second: ratio(work as f64, seconds),
            per_process: after
                .since(&before)
                .into_iter()
                .map(|(pid, time)| ProcessCpu {
                    pid,
                    seconds: time.as_secs_f64(),
                })
                .collect(),
        })
    }
}

pub(crate) fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

impl Report {
    /// Fills in what a delivery run's receivers saw: counts against `expected`, latency, server
    /// CPU per delivery (`cpu` is the two readings around the run), and their errors.
    pub(crate) fn record_deliveries(
        &mut self,
        published: u64,
        expected: u64,
        received: Received,
        started_at: u64,
        cpu: (Option<CpuTimes>, Option<CpuTimes>),
    ) {
        let wall = Duration::from_micros(received.last_at.saturating_sub(started_at));
        self.delivery = Some(Delivery::new(
            published,
            expected,
            received.delivered,
            received.disordered,
            wall,
        ));
        self.latency_us = Some(Latency::from(&received.latency));
        self.server_cpu = ServerCpu::between(cpu.0, cpu.1, wall, received.delivered);
        self.note_error(received.errors, received.first_error);
    }

    pub(crate) fn note_error(&mut self, count: u64, first: Option<String>) {
        self.errors += count;
        if self.first_error.is_none() {
            self.first_error = first;
        }
    }

    pub(crate) fn human(&self) -> String {
        let mut out = format!(
            "{}: {} connections on {} node(s)\n",
            self.mode, self.connections, self.nodes
        );
        if let Some(delivery) = &self.delivery {
            out += &format!(
                "  published {}, delivered {} of {} (lost {}, {:.3}%; out of order {})\n  {:.0} deliveries/s over {:.2} s\n",
                delivery.published,
                delivery.delivered,
                delivery.expected,
                delivery.lost,
                delivery.loss_ratio * 100.0,
                delivery.disordered,
                delivery.per_second,
                delivery.seconds,
            );
        }
        if let Some(recovery) = &self.recovery {
            out += &format!(
                "  {} reconnects: {} recovered, {} not recovered, {} gaps; {} duplicated\n",
                recovery.reconnects,
                recovery.recovered,
                recovery.not_recovered,
                recovery.gaps,
                recovery.duplicated
            );
        }
        if let Some(handshakes) = &self.handshakes {
            out += &format!(
                "  {} handshakes ({} refused) in {:.2} s: {:.0}/s\n",
                handshakes.completed, handshakes.refused, handshakes.seconds, handshakes.per_second
            );
        }
        if let Some(latency) = &self.latency_us {
            out += &format!(
                "  latency p50 {} p90 {} p99 {} max {} ({} samples)\n",
                micros(latency.p50),
                micros(latency.p90),
                micros(latency.p99),
                micros(latency.max),
                latency.samples
            );
        }
        if let Some(memory) = &self.memory {
            out += &format!(
                "  server resident memory {:.1} MiB -> {:.1} MiB: {:.2} KiB per connection\n",
                memory.resident_before_bytes as f64 / 1048576.0,
                memory.resident_after_bytes as f64 / 1048576.0,
                memory.per_connection_bytes as f64 / 1024.0
            );
        }
        if let Some(cpu) = &self.server_cpu {
            out += &format!(
                "  server CPU {:.2} s ({:.0}% of one core): {:.0} per server CPU-second\n",
                cpu.seconds,
                cpu.utilisation * 100.0,
                cpu.work_per_cpu_second
            );
            if cpu.per_process.len() > 1 {
                let each: Vec<String> = cpu
                    .per_process
                    .iter()
                    .map(|process| format!("{} {:.2} s", process.pid, process.seconds))
                    .collect();
                out += &format!("    by process: {}\n", each.join(", "));
            }
        }
        if self.errors > 0 {
            out += &format!(
                "  errors: {} (first: {})\n",
                self.errors,
                self.first_error.as_deref().unwrap_or("")
            );
        }
        out
    }
}

fn micros(value: u64) -> String {
    if value >= 1000 {
        format!("{:.1} ms", value as f64 / 1000.0)
    } else {
        format!("{value} µs")
    }
}

impl Delivery {
    pub(crate) fn new(
        published: u64,
        expected: u64,
        delivered: u64,
        disordered: u64,
        wall: Duration,
    ) -> Self {
        let lost = expected.saturating_sub(delivered);
        Self {
            published,
            expected,
            delivered,
            lost,
            loss_ratio: ratio(lost as f64, expected as f64),
            disordered,
            seconds: wall.as_secs_f64(),
            per_second: ratio(delivered as f64, wall.as_secs_f64()),
        }
    }
}
