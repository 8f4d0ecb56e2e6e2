//! Clock, latency histogram, CPU time and the one report type every program prints.
//!
//! Timestamps are CLOCK_MONOTONIC nanoseconds: the same clock in every process on one
//! machine, so a reader can subtract a writer's `sent_ns` from its own clock. (Rust's
//! `Instant` is monotonic too, but it is opaque and cannot cross a process boundary.)
//! `clock_gettime` is served from the vDSO, so reading the clock is not a system call.

use std::fmt;

use hdrhistogram::Histogram;
use nix::sys::resource::{getrusage, UsageWho};
use nix::time::{clock_gettime, ClockId};
use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC in nanoseconds.
pub fn now_ns() -> u64 {
    // clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux for a valid clock id; if it
    // ever did, 0 makes the latency figures absurd rather than crashing a measurement.
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A latency distribution: an HDR histogram with 3 significant digits, 1 ns to 60 s.
///
/// Recording is a few nanoseconds and allocates nothing, so it can sit in a timed loop.
pub struct Latency {
    /// The histogram; values above 60 s are clamped to 60 s by `saturating_record`.
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty distribution.
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
        // 3 significant figures); `expect` documents that this cannot fail at run time.
        let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .expect("constant histogram bounds are valid");
        Latency { hist }
    }

    /// Adds one sample in nanoseconds.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The summary, or `None` with no samples.
    pub fn summary(&self) -> Option<LatencyNs> {
        if self.hist.is_empty() {
            return None;
        }
        let q = |p: f64| self.hist.value_at_quantile(p);
        Some(LatencyNs {
            min: self.hist.min(),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max(),
            mean: self.hist.mean() as u64,
        })
    }
}

/// Latency quantiles in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyNs {
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: u64,
}

/// CPU time this process has used (user and system), from getrusage(RUSAGE_SELF).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Time spent running the program's own code.
    pub user_ns: u64,
    /// Time the kernel spent on the program's behalf (system calls, page faults).
    pub sys_ns: u64,
    /// Peak resident set size in KiB (ru_maxrss): shows memory stays flat in `--count`.
    pub max_rss_kib: u64,
}

impl CpuTime {
    /// The CPU time used so far.
    pub fn now() -> CpuTime {
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(u) => {
                let ns = |tv: nix::sys::time::TimeVal| {
                    tv.tv_sec() as u64 * 1_000_000_000 + tv.tv_usec() as u64 * 1000
                };
                CpuTime {
                    user_ns: ns(u.user_time()),
                    sys_ns: ns(u.system_time()),
                    max_rss_kib: u.max_rss() as u64,
                }
            }
            // getrusage(RUSAGE_SELF) has no failure mode on Linux; zeros are harmless.
            Err(_) => CpuTime::default(),
        }
    }

    /// CPU time used between `earlier` and `self` (peak RSS is taken from `self`).
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_ns: self.user_ns.saturating_sub(earlier.user_ns),
            sys_ns: self.sys_ns.saturating_sub(earlier.sys_ns),
            max_rss_kib: self.max_rss_kib,
        }
    }
}

/// The final report of one program, the same type for every mechanism.
///
/// `--json` prints it as one line with these field names (units in the names); the
/// `bench` runner and the tests read it back with [`Report::from_json`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The program that wrote the report (`pipe-writer`, ...).
    pub program: String,
    /// `writer` or `reader`.
    pub role: String,
    /// Crate name: `pipe`, `named-pipe`, `msgqueue`, `shm`, `mmap`, `socket`.
    pub mechanism: String,
    /// Variant within the mechanism (`anonymous`, `sysv`, `posix`, `tcp`, `unix`, ...).
    pub flavour: String,
    /// `text`, `stream` or `pingpong`.
    pub mode: String,
    /// How a waiting side waits: `blocking` (in the kernel), `spin`, `block` (futex), `adaptive`.
    pub wait: String,
    /// Payload size of a timed message (the largest one in text mode).
    pub size_bytes: u64,
    /// Timed messages (warm-up excluded); round trips in pingpong.
    pub count: u64,
    /// Payload bytes of the timed messages.
    pub bytes: u64,
    /// Warm-up messages sent or received before timing started.
    pub warmup: u64,
    /// This side checked the messages and every one was right: a reader (each arrived
    /// once, in order, intact, and the End frame's totals matched) or a pingpong writer
    /// (each Pong answered its Ping with the same payload). A stream or text writer checks
    /// nothing itself, so its report says `false` here and `"reader"` in `verified_by`.
    pub verified: bool,
    /// Who verifies this run's messages: `reader`, or `writer` (a pingpong writer checks
    /// the Pongs; its reader checks the Pings).
    #[serde(default)]
    pub verified_by: String,
    /// How much of each message was checked: `full` (or empty: every payload byte, by
    /// checksum) or `seq` (sequence, session and length: `--verify seq`, payloads unread).
    #[serde(default)]
    pub verify: String,
    /// The frames were built and read in place in a shared ring (`--zero-copy`).
    #[serde(default)]
    pub zero_copy: bool,
    /// `round_trip` (pingpong writer) or `one_way` (reader: its clock minus `sent_ns`).
    pub latency_kind: String,
    /// Latency quantiles; `null` when nothing was timed.
    pub latency_ns: Option<LatencyNs>,
    /// Wall time of the timed part.
    pub elapsed_ns: u64,
    /// Timed messages per second.
    pub msgs_per_s: f64,
    /// Timed payload bytes per second.
    pub bytes_per_s: f64,
    /// This process's CPU time (user + system) per timed message.
    pub cpu_ns_per_msg: f64,
    /// This process's user CPU time over the timed part.
    pub cpu_user_ns: u64,
    /// This process's system CPU time over the timed part.
    pub cpu_sys_ns: u64,
    /// Peak resident set size of this process in KiB.
    pub max_rss_kib: u64,
    /// Frames from another session (a crashed earlier run) that were skipped.
    pub stale_skipped: u64,
    /// Reader: messages that never arrived (gaps in the sequence).
    #[serde(default)]
    pub missing: u64,
    /// Reader: messages that arrived twice or out of order.
    #[serde(default)]
    pub repeated: u64,
    /// Reader: messages whose payload was not the one sent (the checksum passed, the
    /// content check did not).
    #[serde(default)]
    pub corrupt: u64,
    /// Peak resident set size when the timed part began, in KiB: with `max_rss_kib` at
    /// the end it shows whether memory grows with the message count.
    #[serde(default)]
    pub rss_start_kib: u64,
    /// Mechanism-specific facts worth a line (pipe capacity, times a write blocked, ...).
    pub notes: Vec<String>,
}

impl Report {
    /// Fills the rate fields from `count`, `bytes`, `elapsed_ns` and the CPU used.
    pub fn set_rates(&mut self, cpu: CpuTime) {
        let secs = self.elapsed_ns as f64 / 1e9;
        if secs > 0.0 {
            self.msgs_per_s = self.count as f64 / secs;
            self.bytes_per_s = self.bytes as f64 / secs;
        }
        self.cpu_user_ns = cpu.user_ns;
        self.cpu_sys_ns = cpu.sys_ns;
        self.max_rss_kib = cpu.max_rss_kib;
        if self.count > 0 {
            self.cpu_ns_per_msg = (cpu.user_ns + cpu.sys_ns) as f64 / self.count as f64;
        }
    }

    /// Whether this side is the one that verifies (its `verified` means something).
    pub fn checks_here(&self) -> bool {
        self.verified_by.is_empty() || self.verified_by == self.role
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain numbers and strings cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses a line printed by `--json`.
    pub fn from_json(line: &str) -> anyhow::Result<Report> {
        Ok(serde_json::from_str(line.trim())?)
    }

    /// Prints the report on stdout: JSON with `json`, else the human form, in one write.
    pub fn print(&self, json: bool) {
        use std::io::Write;
        let _ = std::io::stdout()
            .lock()
            .write_all(self.render(json).as_bytes());
    }

    /// Prints the report on stderr in one write (a program whose stdout is the pipe, as
    /// `pipe-writer | pipe-reader`), so it never mixes with the other program's lines.
    pub fn eprint(&self, json: bool) {
        use std::io::Write;
        let _ = std::io::stderr()
            .lock()
            .write_all(self.render(json).as_bytes());
    }

    /// The report as printed: one JSON line, or the human form.
    pub fn render(&self, json: bool) -> String {
        if json {
            format!("{}\n", self.to_json())
        } else {
            self.to_string()
        }
    }
}

/// A duration in ns shown with a unit a person reads at a glance.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} us", ns as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// Bytes per second in binary units.
pub fn fmt_rate(bytes_per_s: f64) -> String {
    const UNITS: [&str; 5] = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    let mut v = bytes_per_s;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

impl fmt::Display for LatencyNs {
    /// `min 1.2 us  p50 ...  max ...`, as the report's latency line shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_ns(self.min),
            fmt_ns(self.p50),
            fmt_ns(self.p90),
            fmt_ns(self.p99),
            fmt_ns(self.p999),
            fmt_ns(self.max)
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.verified && self.verify == "seq" {
            "sequence, session and length checked (payloads not read past their sequence number: --verify seq)"
        } else if self.verified {
            "verified"
        } else if !self.checks_here() {
            "sent (the reader verifies them)"
        } else {
            "NOT verified"
        };
        let n = self.count;
        let messages = format!("{n} {}", if n == 1 { "message" } else { "messages" });
        // Text lines differ in length: the total and the longest, not "N x size".
        let what = if self.mode == "text" {
            format!(
                "{messages}, {} B (the longest {} B)",
                self.bytes, self.size_bytes
            )
        } else {
            format!("{messages} x {} B", self.size_bytes)
        };
        writeln!(
            f,
            "{} {} ({} {}, wait: {}{}): {what}, {verdict}",
            self.program,
            self.mode,
            self.mechanism,
            self.flavour,
            self.wait,
            if self.zero_copy { ", zero-copy" } else { "" }
        )?;
        if self.elapsed_ns > 0 {
            writeln!(
                f,
                "  throughput   {:.0} msg/s, {} over {}",
                self.msgs_per_s,
                fmt_rate(self.bytes_per_s),
                fmt_ns(self.elapsed_ns)
            )?;
        }
        if let Some(l) = &self.latency_ns {
            writeln!(
                f,
                "  latency      {}: {}",
                self.latency_kind.replace('_', "-"),
                l
            )?;
        }
        if self.count > 0 {
            writeln!(
                f,
                "  cpu          {:.0} ns/msg (user {}, system {}), peak RSS {} KiB",
                self.cpu_ns_per_msg,
                fmt_ns(self.cpu_user_ns),
                fmt_ns(self.cpu_sys_ns),
                self.max_rss_kib
            )?;
        }
        if self.stale_skipped > 0 {
            writeln!(
                f,
                "  stale        {} frames from an earlier session skipped",
                self.stale_skipped
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note         {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_in_nanoseconds() {
        let a = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now_ns();
        assert!(b > a + 1_000_000, "{a} -> {b}");
    }

    #[test]
    fn quantiles_come_from_the_samples() {
        let mut l = Latency::new();
        for v in 1..=1000u64 {
            l.record(v * 100);
        }
        let s = l.summary().unwrap();
        assert_eq!(s.min, 100);
        assert!((49_900..=50_200).contains(&s.p50), "{s:?}");
        assert!(s.max >= 99_900);
        assert!(Latency::new().summary().is_none());
    }

    #[test]
    fn report_json_round_trips_with_the_documented_field_names() {
        let mut r = Report {
            mechanism: "pipe".into(),
            count: 10,
            bytes: 640,
            elapsed_ns: 1_000_000,
            latency_ns: Some(LatencyNs::default()),
            ..Default::default()
        };
        r.set_rates(CpuTime {
            user_ns: 500,
            sys_ns: 500,
            max_rss_kib: 1,
        });
        let j = r.to_json();
        for key in [
            "\"mechanism\"",
            "\"flavour\"",
            "\"mode\"",
            "\"wait\"",
            "\"size_bytes\"",
            "\"count\"",
            "\"bytes\"",
            "\"verified\"",
            "\"latency_ns\"",
            "\"p999\"",
            "\"msgs_per_s\"",
            "\"bytes_per_s\"",
            "\"cpu_ns_per_msg\"",
        ] {
            assert!(j.contains(key), "{key} missing from {j}");
        }
        assert!(!j.contains('\n'));
        assert_eq!(Report::from_json(&j).unwrap(), r);
        assert_eq!(r.msgs_per_s, 10_000.0);
        assert_eq!(r.cpu_ns_per_msg, 100.0);
    }
}
