//! `--payload-kind agent`: events shaped like what an AI agent platform
//! pushes, a `tool.completed` with run id, step, tool name, arguments, a
//! text output of a few hundred characters and timestamps, about 1 KiB.
//!
//! Deterministic from the room's sequence number (only the `t` stamp, the
//! send time, comes from the clock) and varied per event: ids and counters
//! change, the tool and its arguments rotate, and the output is a slice of
//! a fixed corpus of prose and code starting at a different place each
//! time, so the events compress as real ones do (neither trivially nor not
//! at all). Each carries the bench's `t` and `s` like the padded payload.

use serde::Deserialize;
use std::fmt::Write as _;

/// Text the outputs are cut from: prose, code and logs, as tools return.
const CORPUS: &str = "\
The retrieval step found three documents that mention the quarterly revenue \
figures; two of them disagree on the March number by about four percent, \
which is likely a restatement. I will use the later filing as the source of \
truth and note the discrepancy in the summary. \
fn parse_header(buf: &[u8]) -> Result<Header, Error> {\n    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;\n    if buf.len() < len + 2 { return Err(Error::Short); }\n    Ok(Header { len, flags: buf[2] })\n}\n\
$ cargo test -p parser --lib\n   Compiling parser v0.3.1\n    Finished test profile in 4.21s\n     Running unittests src/lib.rs\nrunning 14 tests\ntest header::short_input ... ok\ntest result: ok. 14 passed; 0 failed\n\
The customer asked whether the refund was issued. The order was cancelled \
on the 12th, the payment provider confirmed the reversal on the 14th, and \
the funds usually arrive within five business days, so the answer is yes, \
with the reference number from the provider's confirmation. \
SELECT region, SUM(amount) AS total FROM orders WHERE created_at >= '2026-10-01' \
GROUP BY region ORDER BY total DESC LIMIT 10;\n\
region | total\n-------+--------\nemea   | 1840221\namer   | 1622904\napac   |  978310\n\
Next I will open the pull request, link the issue, and ask for a review from \
the team that owns the parser; the change is small but touches the wire \
format, so it needs a second pair of eyes before it ships. ";

/// Words the prose part of outputs is drawn from, so that no two outputs
/// repeat each other whole (a 32 KiB deflate window would otherwise hold
/// every output ever sent, which real outputs are not).
#[rustfmt::skip]
const WORDS: [&str; 128] = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be",
    "by", "this", "are", "from", "or", "have", "an", "they", "which", "one", "you", "were",
    "all", "we", "when", "there", "can", "more", "if", "no", "out", "so", "said", "what", "up",
    "its", "about", "into", "than", "them", "only", "other", "new", "some", "could", "time",
    "these", "two", "may", "then", "first", "any", "like", "now", "such", "our", "over", "also",
    "after", "where", "most", "through", "before", "because", "each", "same", "between",
    "request", "response", "customer", "order", "refund", "invoice", "report", "summary",
    "table", "query", "result", "results", "error", "warning", "build", "test", "tests",
    "failed", "passed", "function", "module", "parser", "header", "buffer", "length", "value",
    "values", "field", "record", "document", "documents", "source", "figure", "figures",
    "revenue", "quarter", "region", "total", "number", "version", "release", "branch",
    "review", "change", "changes", "issue", "ticket", "account", "payment", "provider",
    "confirmed", "pending", "likely", "however", "next", "step", "plan",
];

const TOOLS: [(&str, &str); 6] = [
    (
        "web_search",
        r#"{"query":"quarterly revenue restatement","max_results":5}"#,
    ),
    (
        "read_file",
        r#"{"path":"src/parser/header.rs","start_line":1,"end_line":80}"#,
    ),
    (
        "run_tests",
        r#"{"package":"parser","filter":"header","timeout_s":120}"#,
    ),
    (
        "sql_query",
        r#"{"database":"analytics","statement":"SELECT region, SUM(amount)"}"#,
    ),
    (
        "send_email",
        r#"{"to":"customer@example.com","template":"refund_status"}"#,
    ),
    (
        "create_pull_request",
        r#"{"repo":"acme/parser","base":"main","draft":false}"#,
    ),
];

/// A SplitMix64 step: a deterministic spread of the sequence number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` since the Unix epoch.
fn iso8601(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The `data` JSON of agent event `seq` sent at `t_us` (µs since the
/// epoch), padded with output text to about `bytes` (at least ~600).
pub fn agent_data_at(seq: u64, t_us: u64, bytes: usize) -> String {
    let r = mix(seq);
    let (tool, args) = TOOLS[(seq % TOOLS.len() as u64) as usize];
    // Runs last 40 steps; ids are stable within a run.
    let run = seq / 40;
    let step = seq % 40 + 1;
    let started_ms = t_us / 1000 - (r % 4000);
    let mut s = String::with_capacity(bytes + 128);
    let _ = write!(
        s,
        r#"{{"t":{t_us},"s":{seq},"type":"tool.completed","run_id":"run_{:016x}","#,
        mix(run)
    );
    let _ = write!(
        s,
        r#""agent":"research-assistant","step":{step},"tool":{{"name":"{tool}","call_id":"call_{:012x}","arguments":{args}}},"#,
        r >> 16
    );
    let _ = write!(
        s,
        r#""usage":{{"input_tokens":{},"output_tokens":{}}},"started_at":"{}","duration_ms":{},"output":{{"truncated":false,"content":"#,
        1200 + r % 6000,
        40 + (r >> 20) % 900,
        iso8601(started_ms),
        r % 4000,
    );
    // Fill to the size: a slice of the corpus (code, logs: what tools
    // return, and what repeats between events) from a start that moves per
    // event, then prose drawn word by word.
    let want = bytes.saturating_sub(s.len() + 4).max(200);
    let mut text = corpus_slice((r >> 8) as usize, want / 3);
    prose(&mut text, mix(r), want);
    let escaped = serde_json::to_string(&text).unwrap_or_else(|_| "\"\"".into());
    s.push_str(&escaped);
    s.push_str("}}");
    s
}

/// Appends words drawn from [`WORDS`] (common ones more often) by a
/// generator seeded with `seed` until `text` is `want` bytes long, as sentences.
fn prose(text: &mut String, mut seed: u64, want: usize) {
    let mut capital = true;
    let mut n = 0u32;
    text.push(' ');
    while text.len() < want {
        seed = mix(seed);
        // The product of two uniform draws leans toward the list's start
        // (the common words), as word frequencies in real text do.
        let n_words = WORDS.len() as u64;
        let w = WORDS[((seed % n_words) * ((seed >> 8) % n_words + 1) / n_words) as usize];
        if capital {
            let mut cs = w.chars();
            if let Some(c) = cs.next() {
                text.push(c.to_ascii_uppercase());
                text.push_str(cs.as_str());
            }
            capital = false;
        } else {
            text.push_str(w);
        }
        n += 1;
        if n.is_multiple_of(11) || (seed >> 40).is_multiple_of(17) {
            text.push_str(". ");
            capital = true;
        } else if (seed >> 32).is_multiple_of(9) {
            text.push_str(", ");
        } else {
            text.push(' ');
        }
    }
    text.truncate(want);
}

/// `want` characters of the corpus from `start`, wrapping around; shorter
/// by what JSON escaping adds, so the event lands near its size.
fn corpus_slice(start: usize, want: usize) -> String {
    let bytes = CORPUS.as_bytes();
    let mut out = String::with_capacity(want);
    let mut i = start % bytes.len();
    let mut cost = 0;
    while cost < want {
        let c = bytes[i] as char; // the corpus is ASCII
        cost += if c == '\n' || c == '"' || c == '\\' {
            2
        } else {
            1
        };
        out.push(c);
        i = (i + 1) % bytes.len();
    }
    out
}

/// The fields every agent event has; `check` parses into it.
#[derive(Deserialize)]
#[allow(dead_code)] // read by serde's checks only
struct AgentEvent<'a> {
    t: u64,
    s: u64,
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    run_id: &'a str,
    step: u64,
    tool: Tool<'a>,
    output: Output,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Tool<'a> {
    #[serde(borrow)]
    name: &'a str,
    arguments: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Output {
    content: String,
}

/// Whether `data` is a whole agent event (what a delivered, possibly
/// inflated, event must still be).
pub fn check(data: &str) -> bool {
    serde_json::from_str::<AgentEvent>(data)
        .is_ok_and(|e| e.kind == "tool.completed" && e.output.content.len() >= 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_a_kibibyte_valid_and_deterministic() {
        for seq in 1..200 {
            let d = agent_data_at(seq, 1_796_000_000_000_000, 1024);
            assert!((1000..=1100).contains(&d.len()), "{seq}: {}", d.len());
            assert!(check(&d), "{d}");
            let v: serde_json::Value = serde_json::from_str(&d).expect("valid JSON");
            assert_eq!(v["s"], seq);
            assert_eq!(d, agent_data_at(seq, 1_796_000_000_000_000, 1024));
        }
        assert_ne!(
            agent_data_at(1, 5_000_000, 1024),
            agent_data_at(2, 5_000_000, 1024)
        );
        assert!(!check(r#"{"t":1,"s":1,"p":"xxxx"}"#));
    }

    #[test]
    fn compresses_like_text_not_like_padding() {
        use flate2::{write::DeflateEncoder, Compression};
        use std::io::Write;
        let d = agent_data_at(77, 1_796_000_000_000_000, 1024);
        let mut e = DeflateEncoder::new(Vec::new(), Compression::new(6));
        e.write_all(d.as_bytes()).expect("in memory");
        let z = e.finish().expect("in memory");
        let ratio = d.len() as f64 / z.len() as f64;
        // Event JSON with fresh text compresses about 1.5-3x alone; padding
        // compresses to almost nothing.
        assert!((1.3..4.0).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn successive_events_do_not_repeat_whole() {
        use flate2::{Compress, Compression, FlushCompress};
        // One deflate stream over 50 events (context takeover, as a
        // per-connection compressor keeps it): the window helps, but the
        // prose part still costs bytes.
        let mut z = Compress::new(Compression::new(6), false);
        let (mut raw, mut out) = (0, Vec::with_capacity(64 * 1024));
        for seq in 1000..1050 {
            let d = agent_data_at(seq, 1_796_000_000_000_000, 1024);
            raw += d.len();
            z.compress_vec(d.as_bytes(), &mut out, FlushCompress::Sync)
                .expect("in memory");
        }
        let ratio = raw as f64 / out.len() as f64;
        assert!(ratio < 6.0, "ratio {ratio}");
    }

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_611_200_123), "2026-12-07T02:40:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
