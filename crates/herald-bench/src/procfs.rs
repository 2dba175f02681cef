//! The server's (and our own) memory, CPU time and open descriptors, read
//! from /proc.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

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
            .with_context(|| format!("reading /proc/{pid} (no such process?)"))?;
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

/// CPU seconds the whole machine (every core) spent since boot, from
/// /proc/stat's `cpu` line.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MachineCpu {
    /// User time, nice 0 and below.
    pub user_s: f64,
    /// User time of niced processes.
    pub nice_s: f64,
    /// Kernel time charged to processes.
    pub system_s: f64,
    /// irq + softirq + steal.
    pub irq_steal_s: f64,
}

impl MachineCpu {
    /// Reads /proc/stat now.
    pub fn now() -> Result<Self> {
        parse_machine_cpu(&std::fs::read_to_string("/proc/stat")?)
    }

    /// Busy seconds: everything but idle and iowait.
    pub fn busy_s(&self) -> f64 {
        self.user_s + self.nice_s + self.system_s + self.irq_steal_s
    }

    /// Seconds spent between `before` and `self`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            user_s: self.user_s - before.user_s,
            nice_s: self.nice_s - before.nice_s,
            system_s: self.system_s - before.system_s,
            irq_steal_s: self.irq_steal_s - before.irq_steal_s,
        }
    }
}

/// /proc/stat's first line: user, nice, system, idle, iowait, irq, softirq,
/// steal (guest time is already in user).
pub fn parse_machine_cpu(stat: &str) -> Result<MachineCpu> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().context("bad number in /proc/stat"))
        .collect::<Result<_>>()?;
    if f.len() < 8 {
        bail!("short cpu line in /proc/stat");
    }
    let s = |t: u64| t as f64 / USER_HZ;
    Ok(MachineCpu {
        user_s: s(f[0]),
        nice_s: s(f[1]),
        system_s: s(f[2]),
        irq_steal_s: s(f[5] + f[6] + f[7]),
    })
}

/// CPU seconds and command name of every process now, by pid (processes
/// that vanish while being read are left out).
pub fn all_processes() -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    // Bounded: a machine has at most a few hundred thousand pids.
    for entry in dir.flatten().take(1 << 20) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let name = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => stat[a + 1..b].to_string(),
            _ => String::new(),
        };
        if let Ok(t) = parse_cpu_ticks(&stat) {
            out.insert(pid, (name, t as f64 / USER_HZ));
        }
    }
    out
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
    fn reads_machine_busy() {
        let s = "cpu  100 5 50 1000 7 1 2 3 0 0\ncpu0 50 0 0 0 0 0 0 0 0 0\n";
        let m = parse_machine_cpu(s).expect("test input");
        assert!((m.busy_s() - 1.61).abs() < 1e-9, "{m:?}");
        assert!((m.nice_s - 0.05).abs() < 1e-9, "{m:?}");
        assert!(parse_machine_cpu("cpu  1 2\n").is_err());
        let me = all_processes();
        assert!(me.contains_key(&std::process::id()));
    }

    #[test]
    fn samples_this_process() {
        let s = Proc::myself().sample().expect("test input");
        assert!(s.rss_kib > 0);
        assert!(s.fds > 0);
    }
}
