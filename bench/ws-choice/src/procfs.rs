//! The server's memory and CPU time, read from /proc/<pid>/status and /proc/<pid>/stat.

#[derive(Clone, Copy)]
pub struct Snap {
    pub rss_kb: u64,
    pub cpu_ticks: u64,
    pub utime: u64,
}

pub fn snap(pid: u32) -> Snap {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
    // Fields after the ")" closing comm: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse().expect("utime");
    let stime: u64 = f[12].parse().expect("stime");
    Snap {
        rss_kb,
        cpu_ticks: utime + stime,
        utime,
    }
}

pub fn tick_us() -> f64 {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / (if hz > 0 { hz as f64 } else { 100.0 })
}
