//! The server's (and our own) memory, CPU time and open descriptors, read
//! from /proc.

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Clock ticks per second for /proc/PID/stat times. Linux reports these in
/// USER_HZ, which is 100 on every mainstream architecture.
const USER_HZ: f64 = 100.0;

/// A process watched through /proc.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pid: u32,
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
    /// Open file descriptors (0 when not readable).
    pub fds: u64,
}

impl Proc {
    /// A process by pid; fails when /proc does not show it.
    pub fn new(pid: u32) -> Result<Self> {
        let p = Self { pid };
        p.sample()
            .with_context(|| format!("reading /proc/{pid} (is --server-pid right?)"))?;
        Ok(p)
    }

    /// This process.
    pub fn myself() -> Self {
        Self {
            pid: std::process::id(),
        }
    }

    /// Reads RSS, CPU time and fd count now.
    pub fn sample(&self) -> Result<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Ok(ProcSample {
            rss_kib: parse_vmrss_kib(&status)?,
            cpu_s: parse_cpu_ticks(&stat)? as f64 / USER_HZ,
            fds,
        })
    }
}

/// `VmRSS:` of /proc/PID/status, in KiB.
pub fn parse_vmrss_kib(status: &str) -> Result<u64> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let n = rest.split_whitespace().next().unwrap_or("");
            return n
                .parse()
                .with_context(|| format!("bad VmRSS line `{line}`"));
        }
    }
    bail!("no VmRSS in /proc status")
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat, in clock ticks. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    let (user, system) = parse_cpu_split(stat)?;
    Ok(user + system)
}

/// utime and stime (fields 14 and 15) of a /proc stat line, in clock ticks.
pub fn parse_cpu_split(stat: &str) -> Result<(u64, u64)> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no `)` in /proc stat")?;
    // After the name: field 3 (state) is index 0, so utime (14) is index 11.
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| -> Result<u64> {
        f.get(i)
            .context("short /proc stat")?
            .parse()
            .context("bad number in /proc stat")
    };
    Ok((get(11)?, get(12)?))
}

/// User and system CPU seconds of the calling thread (its own
/// /proc/thread-self/stat): what one thread spent, whatever the others did.
pub fn thread_cpu_s() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let (user, system) = parse_cpu_split(&stat)?;
    Ok((user as f64 / USER_HZ, system as f64 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vmrss() {
        let s = "Name:\therald\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss_kib(s).expect("test input"), 12345);
        assert!(parse_vmrss_kib("Name: x\n").is_err());
    }

    #[test]
    fn reads_cpu_ticks_past_odd_names() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat).expect("test input"), 325);
    }

    #[test]
    fn samples_this_process() {
        let s = Proc::myself().sample().expect("test input");
        assert!(s.rss_kib > 0);
        assert!(s.fds > 0);
    }
}
