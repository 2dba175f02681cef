//! `storm`: clients receiving a steady stream are all cut at once, reconnect
//! with exponential backoff and full jitter, and resume each room with
//! `join_room` + `since`. Time until all are back, events missed, and
//! refused resumes.
//!
//! The cut is made by the bench (`--cut client`: every connection dropped
//! at a third of `--duration`, no close frame) or by the server
//! (`--cut server`: the bench writes `--ready-file` when every client is in
//! its room and waits for the server side to cut them, e.g. a script
//! killing the node). Either way the clock starts at the first cut the
//! bench observes. With `--reconnect-url`, clients come back to other
//! nodes; publishers keep going through `--publish-url` meanwhile.

use crate::client::{parse_target_for, Target};
use crate::conn::ConnSpec;
use crate::procfs::{self, MachineCpu, Proc, ProcSample};
use crate::publish::{self, PayloadKind, PublishPlan};
use crate::report::Report;
use crate::run::{account, Run};
use crate::Common;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Most `--reconnect-url` and `--watch-pid` entries.
const MAX_LIST: usize = 16;
/// Longest `--duration` and `--cut-timeout`, seconds.
const MAX_SECONDS: u64 = 86_400;
/// Shares of the clients back whose times are reported.
const MILESTONES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("all", 1.0)];

/// Who cuts the clients' connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cut {
    /// The bench drops every connection at a third of `--duration`.
    Client,
    /// The server side does (a node killed or restarted by a script); the
    /// bench waits for it, at most `--cut-timeout`.
    Server,
}

/// `storm` arguments.
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Rooms they are spread over (namespace with history).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Seconds of publishing; the cut is due at a third of it.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Events per second published over all rooms.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Bytes of each event's `data`.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Who cuts the connections: `client` (the bench, at a third of
    /// `--duration`) or `server` (the bench waits for the server side to
    /// cut them; the clock starts at the first disconnect it observes).
    #[arg(long, value_enum, default_value_t = Cut::Client)]
    pub cut: Cut,
    /// After the cut, clients reconnect to these URLs instead of `--url`
    /// (repeatable or comma-separated; loopback only). Client i tries URL
    /// i mod n first, then the next one after each failure.
    #[arg(long, value_delimiter = ',')]
    pub reconnect_url: Vec<String>,
    /// `--cut server`: seconds to wait for the first disconnect once the
    /// cut is due.
    #[arg(long, default_value_t = 120)]
    pub cut_timeout: u64,
    /// Written (atomically, with the Unix time in ms) when every client is
    /// in its room and the cut is due: a script's signal to kill the node.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Another process to sample over the recovery (CPU s, RSS, fds), as
    /// LABEL=PID (repeatable), e.g. the nodes the clients reconnect to.
    #[arg(long, value_parser = parse_watch)]
    pub watch_pid: Vec<(String, u32)>,
}

/// Parses `LABEL=PID`.
fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (label, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected LABEL=PID"))?;
    let pid = pid
        .parse::<u32>()
        .map_err(|_| format!("`{s}`: PID must be a number"))?;
    if label.is_empty() || label.len() > 32 {
        return Err(format!("`{s}`: LABEL must be 1 to 32 characters"));
    }
    Ok((label.to_string(), pid))
}

/// Checks the arguments; the reconnect targets.
fn check(c: &Common, a: &StormArgs) -> Result<Vec<Target>> {
    if a.rate <= 0.0 || a.rooms == 0 || a.duration < 3 {
        bail!("--rate and --rooms must be positive, --duration at least 3");
    }
    if a.duration > MAX_SECONDS || a.cut_timeout == 0 || a.cut_timeout > MAX_SECONDS {
        bail!(
            "--duration and --cut-timeout must be at most {MAX_SECONDS} s, --cut-timeout positive"
        );
    }
    if a.reconnect_url.len() > MAX_LIST || a.watch_pid.len() > MAX_LIST {
        bail!("at most {MAX_LIST} --reconnect-url and {MAX_LIST} --watch-pid");
    }
    if let Some(path) = &a.ready_file {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) || path.is_dir() {
            bail!(
                "--ready-file {}: not a file in an existing directory",
                path.display()
            );
        }
    }
    let targets = a
        .reconnect_url
        .iter()
        .map(|u| parse_target_for("--reconnect-url", u))
        .collect::<Result<Vec<_>>>()?;
    if a.cut == Cut::Server {
        let own = c.url_base();
        if c.publish_url.is_none() || c.publish_base() == own {
            bail!(
                "--cut server: give --publish-url, a node that is not cut \
                 (publishing through --url would stop with it)"
            );
        }
        if c.server_pid.is_some() {
            bail!(
                "--cut server: --server-pid would sample the node that is cut; \
                 give the surviving nodes with --watch-pid LABEL=PID"
            );
        }
    }
    Ok(targets)
}

/// Runs `storm`.
pub async fn run(c: &Common, a: &StormArgs) -> Result<Report> {
    let targets = check(c, a)?;
    let watched = a
        .watch_pid
        .iter()
        .map(|(l, p)| {
            Ok((
                l.clone(),
                Proc::new(*p).with_context(|| format!("--watch-pid {l}={p}"))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let ns = c.ns("benchstore");
    let n = a.conns as u64;
    let rooms: Vec<String> = (0..a.rooms).map(|r| format!("{ns}:{r}")).collect();
    let limit = Duration::from_secs(300 + a.duration + a.cut_timeout + 60);
    let ctx = c.ctx(a.conns)?.with_reconnect(targets);
    let mut run = Run::new("storm", ctx, c.server()?, limit, c.concurrency);
    for i in 0..n {
        run.spawn(ConnSpec {
            reconnect: true,
            ..ConnSpec::listener(i, rooms[(i % a.rooms as u64) as usize].clone())
        });
    }
    run.wait_until(Duration::from_secs(300), |s| {
        s.joined.load(Ordering::Relaxed) >= n
    })
    .await;
    let up = run.sh.joined.load(Ordering::Relaxed);
    let failures_before = run.sh.failures();
    run.sh.recorder.reset();
    let http = publish::http_client()?;
    let plan = PublishPlan {
        rooms,
        rate: a.rate,
        count: (a.rate * a.duration as f64).ceil() as u64,
        payload: a.payload,
        publishers: 2,
        kind: PayloadKind::Padded,
    };
    let base = c.publish_base();
    let key = c.api_key.clone();
    let stop = run.sh.stop.clone();
    let publisher =
        tokio::spawn(async move { publish::run(&http, &base, &key, &plan, stop).await });
    tokio::time::sleep(Duration::from_secs(a.duration / 3)).await;

    // The cut.
    let before = run.server_sample();
    let watch_before = sample_all(&watched);
    let bench_before = super::bench_cpu_s();
    let machine_before = (MachineCpu::now().ok(), procfs::all_processes());
    let connects_before = run.sh.connects.load(Ordering::Relaxed);
    run.sh.cut_armed.store(true, Ordering::Relaxed);
    let due = Instant::now();
    if let Some(path) = &a.ready_file {
        write_ready(path)?;
        eprintln!("\nherald-bench: {up} clients in; wrote {}", path.display());
    }
    let cut_wait = match a.cut {
        Cut::Client => {
            run.drop_all();
            Duration::from_secs(10)
        }
        Cut::Server => Duration::from_secs(a.cut_timeout),
    };
    let cut_seen = run
        .wait_until(cut_wait, |s| s.cut.load(Ordering::Relaxed) > 0)
        .await;
    let first_cut = run.sh.first_cut().unwrap_or(due);
    let back_limit = Duration::from_secs(a.duration * 2 / 3 + 60);
    let (back, back_per_s) = if cut_seen {
        wait_back(&run, up, first_cut, back_limit).await
    } else {
        eprintln!("\nherald-bench: no client was cut within {cut_wait:?}");
        (Vec::new(), Vec::new())
    };
    let all_back = run.sh.rejoined.load(Ordering::Relaxed) >= up && cut_seen;
    let back_s = back.last().and_then(|(_, t)| *t);
    let rejoined = run.sh.rejoined.load(Ordering::Relaxed);
    let cut_n = run.sh.cut.load(Ordering::Relaxed);
    let after_back = run.server_sample();
    let watch_after = sample_all(&watched);
    let bench_after = super::bench_cpu_s();
    let machine_after = (MachineCpu::now().ok(), procfs::all_processes());
    let window_s = due.elapsed().as_secs_f64();
    let reconnects = run.sh.connects.load(Ordering::Relaxed) - connects_before;
    let reconnect_failures = run.sh.reconnect_failures();
    let reconnects_to = run.sh.reconnects_to();

    let pubs = publisher.await.unwrap_or_default();
    run.drain(Duration::from_secs(10)).await;
    let latency = run.sh.recorder.total();
    let recovered_false = run.sh.recovered_false.load(Ordering::Relaxed);
    let unrecoverable = run.sh.unrecoverable.load(Ordering::Relaxed);
    let replayed = run.sh.replayed.load(Ordering::Relaxed);
    let cut_spread_s = if cut_n > 0 {
        let (f, l) = (
            run.sh.first_cut_us.load(Ordering::Relaxed),
            run.sh.last_cut_us.load(Ordering::Relaxed),
        );
        l.saturating_sub(f) as f64 / 1e6
    } else {
        0.0
    };
    let first_cut_unix_ms = match run.sh.first_cut_unix_us.load(Ordering::Relaxed) {
        u64::MAX => Value::Null,
        us => json!(us / 1000),
    };
    let failures = super::failure_figures(&run);
    let mut server = super::server_delta(&run, &before, &after_back);
    if run.server.is_some() {
        server["cpu_us_per_reconnect"] =
            json!((after_back.cpu_s - before.cpu_s) * 1e6 / rejoined.max(1) as f64);
    }
    let (reports, timeline) = run.finish().await;
    let acc = account(&reports, &pubs.finals);
    let mut back_at = serde_json::Map::new();
    for (name, t) in &back {
        back_at.insert(name.to_string(), json!(t));
    }
    Ok(Report {
        scenario: "storm",
        params: json!({
            "conns": a.conns, "rooms": a.rooms, "duration_s": a.duration,
            "rate": a.rate, "payload": a.payload, "namespace": ns,
            "cut": format!("{:?}", a.cut).to_lowercase(),
            "reconnect_urls": a.reconnect_url.len(),
        }),
        figures: json!({
            "connected_before_cut": up,
            "failures_before_cut": failures_before,
            "cut_observed": cut_seen,
            "first_cut_unix_ms": first_cut_unix_ms,
            "clients_cut": cut_n,
            "cut_spread_s": cut_spread_s,
            "all_back": all_back,
            "rejoined": rejoined,
            "time_until_all_back_s": back_s,
            "time_until_back_s": back_at,
            "reconnects": reconnects,
            "reconnects_to": reconnects_to,
            "reconnect_failures": reconnect_failures.values().sum::<u64>(),
            "reconnect_failures_by_reason": reconnect_failures,
            "recovered_false": recovered_false,
            "events_missed": acc.lost + unrecoverable,
            "replayed": replayed,
            "published": pubs,
            "delivery": super::delivery_figures(latency, &acc),
            "server": server,
            "back_by_second": back_per_s,
            "sampled_window_s": window_s,
            "watched": watch_figures(&watched, &watch_before, &watch_after),
            "bench_cpu_s": bench_after - bench_before,
            "machine": machine_figures(window_s, &machine_before, &machine_after, &a.watch_pid),
            "failures": failures,
        }),
        timeline,
    })
}

/// Waits until `up` clients are back in their rooms (at most `limit` after
/// `from`), noting when each share of [`MILESTONES`] was reached, in
/// seconds after `from` (20 ms resolution; `None` for a share never
/// reached), and how many were back at each whole second after `from`.
async fn wait_back(
    run: &Run,
    up: u64,
    from: Instant,
    limit: Duration,
) -> (Vec<(&'static str, Option<f64>)>, Vec<u64>) {
    let mut at: Vec<(&'static str, Option<f64>)> =
        MILESTONES.iter().map(|(name, _)| (*name, None)).collect();
    let mut per_s = Vec::new();
    let end = from + limit;
    loop {
        let back = run.sh.rejoined.load(Ordering::Relaxed);
        let t = from.elapsed().as_secs_f64();
        for ((_, share), (_, seen)) in MILESTONES.iter().zip(at.iter_mut()) {
            let need = ((up as f64) * share).ceil() as u64;
            if seen.is_none() && back >= need {
                *seen = Some(t);
            }
        }
        while (per_s.len() as f64) + 1.0 <= t {
            per_s.push(back);
        }
        if back >= up || Instant::now() >= end {
            per_s.push(back);
            return (at, per_s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the ready file: to a temporary name, then renamed, so a reader
/// never sees it half written.
fn write_ready(path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let ms = crate::metrics::now_us() / 1000;
    std::fs::write(&tmp, format!("{ms}\n"))
        .with_context(|| format!("writing --ready-file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming to --ready-file {}", path.display()))
}

/// The machine and every process over the sampled window.
type MachineSample = (Option<MachineCpu>, BTreeMap<u32, (String, f64)>);

/// The whole machine over the sampled window: CPU seconds by kind (all
/// cores), the busy share of the cores, and the processes other than the
/// bench and the watched ones that took the most CPU (other load on the
/// machine; a process that exited in the window, like a killed node, is
/// not seen).
fn machine_figures(
    window_s: f64,
    before: &MachineSample,
    after: &MachineSample,
    watched: &[(String, u32)],
) -> Value {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (Some(b), Some(a)) = (&before.0, &after.0) else {
        return Value::Null;
    };
    let cpu = a.since(b);
    let mine: Vec<u32> = watched
        .iter()
        .map(|(_, p)| *p)
        .chain([std::process::id()])
        .collect();
    let mut others: Vec<(u32, &str, f64)> = after
        .1
        .iter()
        .filter(|(pid, _)| !mine.contains(pid))
        .map(|(pid, (name, t))| {
            let t0 = before.1.get(pid).map_or(0.0, |(_, t0)| *t0);
            (*pid, name.as_str(), t - t0)
        })
        .filter(|(_, _, d)| *d >= 0.05)
        .collect();
    others.sort_by(|x, y| y.2.total_cmp(&x.2));
    let top: Vec<Value> = others
        .iter()
        .take(8)
        .map(|(pid, name, d)| json!({"pid": pid, "comm": name, "cpu_s": d}))
        .collect();
    json!({
        "cores": cores,
        "busy_cpu_s": cpu.busy_s(),
        "busy_pct": cpu.busy_s() * 100.0 / (window_s.max(1e-9) * cores as f64),
        "cpu_s": cpu,
        "other_processes": top,
    })
}

fn sample_all(watched: &[(String, Proc)]) -> Vec<Option<ProcSample>> {
    watched.iter().map(|(_, p)| p.sample().ok()).collect()
}

/// Per watched process: CPU seconds over the recovery, RSS and fds before
/// and after (`null` when it could not be read).
fn watch_figures(
    watched: &[(String, Proc)],
    before: &[Option<ProcSample>],
    after: &[Option<ProcSample>],
) -> Value {
    let mut m = serde_json::Map::new();
    for (((label, _), b), a) in watched.iter().zip(before).zip(after) {
        let v = match (b, a) {
            (Some(b), Some(a)) => json!({
                "cpu_s": a.cpu_s - b.cpu_s,
                "rss_before_kib": b.rss_kib,
                "rss_after_kib": a.rss_kib,
                "fds_before": b.fds,
                "fds_after": a.fds,
            }),
            _ => Value::Null,
        };
        m.insert(label.clone(), v);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_pid_parses() {
        assert_eq!(parse_watch("b=12"), Ok(("b".to_string(), 12)));
        assert!(parse_watch("b").is_err());
        assert!(parse_watch("b=x").is_err());
        assert!(parse_watch("=3").is_err());
    }
}
