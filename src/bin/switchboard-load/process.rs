//! What the server processes use, read from `/proc/PID/stat` (CPU time: `utime + stime`, in
//! clock ticks) and `/proc/PID/status` (`VmRSS`). Given several PIDs (one per node, and Redis),
//! the figures are summed, and each process's CPU time is kept too (the capacity model in
//! `benches/cluster.sh` separates the nodes' CPU from Redis's).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse {0}")]
    Parse(String),
}

/// The server processes a run watches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Servers {
    pids: Vec<u32>,
    ticks_per_second: u64,
}

impl Servers {
    pub(crate) fn new(pids: Vec<u32>) -> Self {
        Self {
            pids,
            ticks_per_second: clock_ticks_per_second(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// CPU time used so far by each of them, in the order given; `None` without PIDs.
    pub(crate) fn cpu_time(&self) -> Result<Option<CpuTimes>, ProcessError> {
        if self.pids.is_empty() {
            return Ok(None);
        }
        let mut each = Vec::with_capacity(self.pids.len());
        for &pid in &self.pids {
            let ticks = cpu_ticks(pid)?;
            each.push((
                pid,
                Duration::from_secs_f64(ticks as f64 / self.ticks_per_second as f64),
            ));
        }
        Ok(Some(CpuTimes { each }))
    }

    /// Resident memory of all of them, in bytes; `None` without PIDs.
    pub(crate) fn resident_bytes(&self) -> Result<Option<u64>, ProcessError> {
        if self.pids.is_empty() {
            return Ok(None);
        }
        let mut bytes = 0;
        for &pid in &self.pids {
            bytes += resident(pid)?;
        }
        Ok(Some(bytes))
    }
}

/// One reading of the watched processes' CPU time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CpuTimes {
    /// (PID, CPU time used so far), in the order the PIDs were given.
    pub(crate) each: Vec<(u32, Duration)>,
}

impl CpuTimes {
    pub(crate) fn total(&self) -> Duration {
        self.each.iter().map(|(_, time)| *time).sum()
    }

    /// Per process, the CPU time used since `earlier` (a reading of the same processes).
    pub(crate) fn since(&self, earlier: &CpuTimes) -> Vec<(u32, Duration)> {
        self.each
            .iter()
            .zip(&earlier.each)
            .map(|((pid, now), (_, then))| (*pid, now.saturating_sub(*then)))
            .collect()
    }
}

fn read(path: String) -> Result<String, ProcessError> {
    std::fs::read_to_string(&path).map_err(|source| ProcessError::Read { path, source })
}

fn cpu_ticks(pid: u32) -> Result<u64, ProcessError> {
    let path = format!("/proc/{pid}/stat");
    let stat = read(path.clone())?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let after_name = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or_else(|| ProcessError::Parse(path.clone()))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let field = |index: usize| -> Result<u64, ProcessError> {
        fields
            .get(index)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| ProcessError::Parse(path.clone()))
    };
    Ok(field(11)? + field(12)?)
}

fn resident(pid: u32) -> Result<u64, ProcessError> {
    let path = format!("/proc/{pid}/status");
    let status = read(path.clone())?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or(ProcessError::Parse(path))
}

/// `getconf CLK_TCK` (100 on every Linux this runs on; asked rather than assumed).
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = Servers::new(vec![std::process::id()]);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        let reading = me.cpu_time().expect("stat").expect("pid");
        assert!(reading.total() > Duration::ZERO);
        assert_eq!(reading.each.len(), 1);
        assert_eq!(reading.each[0].0, std::process::id());
        let zero = CpuTimes {
            each: vec![(std::process::id(), Duration::ZERO)],
        };
        assert_eq!(reading.since(&zero), reading.each);
        assert_eq!(
            zero.since(&reading),
            vec![(std::process::id(), Duration::ZERO)]
        );
        assert!(me.resident_bytes().expect("status").expect("pid") > 1024 * 1024);
        assert!(Servers::new(Vec::new()).cpu_time().expect("none").is_none());
        assert!(Servers::new(vec![u32::MAX]).cpu_time().is_err());
    }
}
