//! What the runner shows and writes: the table on stdout, and in the output directory
//! `results.json`, `results.csv`, `environment.json`, `latency.svg`, `throughput.svg`
//! (drawn by [`crate::charts`]) and an `index.html` that puts the table, the notes on
//! reading its ratios, and the charts with their captions on one page ([`crate::page`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use common::timing::{fmt_ns, fmt_rate};
use serde::Serialize;

use crate::bare::Bare;
use crate::charts::{self, Drawn};
use crate::floors::Floor;
use crate::page::{caption, html_escape, ratio_notes, STYLE};
use crate::run::Outcome;

/// One line of the table: the repetitions of one case folded into medians.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Row {
    pub mechanism: String,
    pub flavour: String,
    pub wait: String,
    pub mode: String,
    pub size_bytes: u64,
    pub repetitions: u32,
    /// `ok` or `FAILED`: a row with any failed repetition is FAILED and not charted.
    pub status: String,
    pub failure: Option<String>,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    /// Spread of p50 (pingpong) over the repetitions.
    pub p50_min_ns: u64,
    pub p50_max_ns: u64,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    /// Spread of bytes/s (stream) over the repetitions.
    pub bytes_per_s_min: f64,
    pub bytes_per_s_max: f64,
    pub cpu_ns_per_msg: f64,
    pub floor: String,
    pub x_floor: f64,
    /// The bare loop of this row (`pipe block`, `shm-copy spin`, ...) and the median over
    /// the repetitions of the row's multiple of it (0: the bare loop failed every time).
    #[serde(default)]
    pub bare: String,
    #[serde(default)]
    pub x_bare: f64,
    pub max_rss_kib: u64,
}

fn median_u(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Folds repetitions of the same case into rows, in the order cases first appeared.
pub fn rows(outcomes: &[Outcome]) -> Vec<Row> {
    let mut order = Vec::new();
    let mut groups: BTreeMap<(String, String, String, String, u64), Vec<&Outcome>> =
        BTreeMap::new();
    for o in outcomes {
        let key = (
            o.mechanism.clone(),
            o.flavour.clone(),
            o.wait.clone(),
            o.mode.clone(),
            o.size_bytes,
        );
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(o);
    }
    order
        .into_iter()
        .map(|key| {
            let g = &groups[&key];
            fold(key, g)
        })
        .collect()
}

/// One row from the repetitions of a case: medians, and the spread of p50 and bytes/s.
fn fold(key: (String, String, String, String, u64), g: &[&Outcome]) -> Row {
    let ok: Vec<&&Outcome> = g.iter().filter(|o| o.status == "ok").collect();
    let failed = g.iter().find(|o| o.status != "ok");
    let u = |f: fn(&Outcome) -> u64| median_u(ok.iter().map(|o| f(o)).collect());
    let fl = |f: fn(&Outcome) -> f64| median_f(ok.iter().map(|o| f(o)).collect());
    let p50s: Vec<u64> = ok.iter().map(|o| o.p50_ns).collect();
    let bps: Vec<f64> = ok.iter().map(|o| o.bytes_per_s).collect();
    Row {
        mechanism: key.0,
        flavour: key.1,
        wait: key.2,
        mode: key.3,
        size_bytes: key.4,
        repetitions: g.len() as u32,
        status: if failed.is_some() { "FAILED" } else { "ok" }.into(),
        failure: failed.and_then(|o| o.failure.clone()),
        p50_ns: u(|o| o.p50_ns),
        p99_ns: u(|o| o.p99_ns),
        p999_ns: u(|o| o.p999_ns),
        p50_min_ns: p50s.iter().copied().min().unwrap_or(0),
        p50_max_ns: p50s.iter().copied().max().unwrap_or(0),
        msgs_per_s: fl(|o| o.msgs_per_s),
        bytes_per_s: fl(|o| o.bytes_per_s),
        bytes_per_s_min: bps
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(f64::MAX),
        bytes_per_s_max: bps.iter().copied().fold(0.0, f64::max),
        cpu_ns_per_msg: fl(|o| o.cpu_ns_per_msg),
        floor: g[0].floor.clone(),
        x_floor: fl(|o| o.x_floor),
        bare: g[0].bare.clone(),
        x_bare: median_f(ok.iter().map(|o| o.x_bare).filter(|&x| x > 0.0).collect()),
        max_rss_kib: ok
            .iter()
            .map(|o| o.writer_rss_kib.max(o.reader_rss_kib))
            .max()
            .unwrap_or(0),
    }
}

/// `64 B`, `8152 B`, `64 KiB`, `1 MiB`: a size as the table writes it.
pub fn size_label(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// The table, as printed on stdout.
pub fn table(rows: &[Row], floors: &[Floor], bares: &[Bare]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:<12} {:<9} {:<8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>11} {:>9} {:>16} {:>7}",
        "mechanism",
        "flavour",
        "wait",
        "mode",
        "size",
        "p50",
        "p99",
        "p99.9",
        "msg/s",
        "bytes/s",
        "cpu/msg",
        "x floor",
        "x bare"
    );
    for r in rows {
        if r.status != "ok" {
            let _ = writeln!(
                s,
                "{:<10} {:<12} {:<9} {:<8} {:>8}  FAILED: {}",
                r.mechanism,
                r.flavour,
                r.wait,
                r.mode,
                size_label(r.size_bytes),
                r.failure.as_deref().unwrap_or("?")
            );
            continue;
        }
        let _ = writeln!(
            s,
            "{:<10} {:<12} {:<9} {:<8} {:>8} {:>9} {:>9} {:>9} {:>10.0} {:>11} {:>9} {:>16} {:>7}",
            r.mechanism,
            r.flavour,
            r.wait,
            r.mode,
            size_label(r.size_bytes),
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.p999_ns),
            r.msgs_per_s,
            fmt_rate(r.bytes_per_s).replace(' ', ""),
            fmt_ns(r.cpu_ns_per_msg as u64),
            format!("{:.2}x {}", r.x_floor, r.floor),
            if r.x_bare > 0.0 {
                format!("{:.2}x", r.x_bare)
            } else {
                "-".into()
            },
        );
    }
    floor_lines(&mut s, floors);
    bare_lines(&mut s, bares);
    s.push_str(
        "\nlatency: pingpong = round trip on the writer's clock; stream = one-way (includes queueing).\n\
         flavour +splice: the writer's --splice (vmsplice); +zc: --zero-copy (frames built and read in place);\n\
         \x20       +zc-seq: --zero-copy --verify seq (sequence, session and length checked; payloads not read).\n\
         cpu/msg: writer + reader CPU time per message.\n\
         x floor: pingpong p50 / (round-trip floor + two memcpy of the message); stream: memcpy bytes/s / bytes/s.\n\
         x bare: the same direction against the row's bare loop above, in the same repetition: pingpong p50 / bare p50;\n\
         \x20       stream: bare bytes/s / bytes/s. Above 1.00x is what the frame, checksum and statistics cost; - : no bare figure.\n\
         below 1.00x: a floor or bare loop is a median of a noisy run, not a constant (see its spread; index.html explains).\n",
    );
    s
}

/// The bare loops measured in this run, under the floors: one line per loop, with the
/// median over the repetitions and, when there are several, their range.
fn bare_lines(s: &mut String, bares: &[Bare]) {
    if bares.is_empty() {
        return;
    }
    let _ = writeln!(
        *s,
        "\nbare loops measured in this run (no frame, checksum or statistics; pinned as the pairs):"
    );
    let mut seen: Vec<(String, String, String, u64)> = Vec::new();
    for b in bares {
        let key = (b.kind.clone(), b.wait.clone(), b.mode.clone(), b.size_bytes);
        if seen.contains(&key) {
            continue;
        }
        let runs: Vec<&Bare> = bares
            .iter()
            .filter(|o| {
                (&o.kind, &o.wait, &o.mode, o.size_bytes) == (&key.0, &key.1, &key.2, key.3)
            })
            .collect();
        let name = format!(
            "{} {} {} {}",
            b.kind,
            b.wait,
            b.mode,
            size_label(b.size_bytes)
        );
        let ok: Vec<f64> = runs
            .iter()
            .filter(|o| o.status == "ok")
            .map(|o| o.figure())
            .collect();
        seen.push(key);
        if ok.is_empty() {
            let why = runs
                .iter()
                .find_map(|o| o.failure.clone())
                .unwrap_or_default();
            let _ = writeln!(*s, "  {name:<34} FAILED: {why}");
            continue;
        }
        let show = |v: f64| {
            if b.mode == "pingpong" {
                format!("round trip p50 {}", fmt_ns(v as u64))
            } else {
                fmt_rate(v)
            }
        };
        let mid = median_f(ok.clone());
        let spread = if ok.len() > 1 {
            let lo = ok.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ok.iter().copied().fold(0.0, f64::max);
            let f = |v: f64| {
                if b.mode == "pingpong" {
                    fmt_ns(v as u64)
                } else {
                    fmt_rate(v)
                }
            };
            format!(" (runs {} to {})", f(lo), f(hi))
        } else {
            String::new()
        };
        let _ = writeln!(*s, "  {name:<34} {}{spread}  [{}]", show(mid), b.setup);
    }
}

/// The floors measured in this run, under the table.
fn floor_lines(s: &mut String, floors: &[Floor]) {
    let _ = writeln!(*s, "\nfloors measured in this run:");
    for f in floors {
        match &f.latency_ns {
            Some(l) => {
                let _ = writeln!(
                    *s,
                    "  {:<10} round trip p50 {}  p99 {}",
                    f.name,
                    fmt_ns(l.p50),
                    fmt_ns(l.p99)
                );
            }
            None => {
                let _ = writeln!(
                    *s,
                    "  {:<10} bandwidth at {}: {} (min {}, max {})",
                    f.name,
                    size_label(f.size_bytes),
                    fmt_rate(f.bytes_per_s),
                    fmt_rate(f.bytes_per_s_min),
                    fmt_rate(f.bytes_per_s_max)
                );
            }
        }
    }
}

/// CSV of the raw outcomes (one line per repetition).
pub fn csv(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "mechanism,flavour,wait,mode,size_bytes,count,repetition,status,p50_ns,p99_ns,p999_ns,msgs_per_s,bytes_per_s,cpu_ns_per_msg,floor,floor_value,x_floor,bare,bare_value,x_bare,writer_rss_kib,reader_rss_kib,failure\n",
    );
    for o in outcomes {
        let failure = o.failure.as_deref().unwrap_or("").replace('"', "'");
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.1},{:.1},{},{:.1},{:.3},{},{:.1},{:.3},{},{},\"{}\"",
            o.mechanism,
            o.flavour,
            o.wait,
            o.mode,
            o.size_bytes,
            o.count,
            o.repetition,
            o.status,
            o.p50_ns,
            o.p99_ns,
            o.p999_ns,
            o.msgs_per_s,
            o.bytes_per_s,
            o.cpu_ns_per_msg,
            o.floor,
            o.floor_value,
            o.x_floor,
            o.bare,
            o.bare_value,
            o.x_bare,
            o.writer_rss_kib,
            o.reader_rss_kib,
            failure
        );
    }
    s
}

/// Everything a run measured, as `results.json` and `--json` hold it.
pub struct Results<'a> {
    pub env: &'a serde_json::Value,
    pub floors: &'a [Floor],
    pub bares: &'a [Bare],
    pub rows: &'a [Row],
    pub outcomes: &'a [Outcome],
}

impl Results<'_> {
    /// The one JSON object of `results.json` and `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "environment": self.env,
            "floors": self.floors,
            "bare": self.bares,
            "rows": self.rows,
            "outcomes": self.outcomes,
        })
    }
}

/// Writes every file into `dir`.
pub fn write_all(dir: &Path, r: &Results, table_text: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&r.to_json())?,
    )?;
    fs::write(
        dir.join("environment.json"),
        serde_json::to_string_pretty(r.env)?,
    )?;
    fs::write(dir.join("results.csv"), csv(r.outcomes))?;
    let (latency, throughput) = charts(dir, r.rows)?;
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ipc-study bench</title>\n\
         <style>{STYLE}</style></head>\n\
         <body><h1>ipc-study: every mechanism against the machine's floors and its bare loop</h1>\n\
         <h2>Table</h2><pre>{}</pre>\n{}\n\
         <h2>Latency</h2><figure><img src=\"latency.svg\" alt=\"pingpong round trip p50 per mechanism\">\
         <figcaption>{}</figcaption></figure>\n\
         <h2>Throughput</h2><figure><img src=\"throughput.svg\" alt=\"stream throughput per mechanism\">\
         <figcaption>{}</figcaption></figure>\n\
         <h2>Environment</h2><pre>{}</pre>\n<p>Raw data: <a href=\"results.json\">results.json</a>, <a href=\"results.csv\">results.csv</a>.</p>\n</body></html>\n",
        html_escape(table_text),
        ratio_notes(r.rows, r.floors, r.bares),
        caption(&latency, "round trip"),
        caption(&throughput, "throughput"),
        html_escape(&serde_json::to_string_pretty(r.env)?)
    );
    fs::write(dir.join("index.html"), html)?;
    Ok(())
}

/// Draws `latency.svg` and `throughput.svg` into `dir`; what each shows.
pub fn charts(dir: &Path, rows: &[Row]) -> Result<(Drawn, Drawn)> {
    charts::draw(dir, rows)
}

/// `bench --replot DIR`: redraws the charts of an earlier run from its `results.json`.
pub fn replot(dir: &Path) -> Result<()> {
    let path = dir.join("results.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let all: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let rows: Vec<Row> =
        serde_json::from_value(all["rows"].clone()).context("results.json: rows")?;
    charts(dir, &rows).map(|_| ())
}
