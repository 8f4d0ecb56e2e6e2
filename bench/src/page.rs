//! The page `index.html` of a run: the table, the notes on reading its ratios (which rows
//! beat their floor or bare loop, and by how much of the floor's own spread), and the
//! charts with captions that say which series coincide.

use std::fmt::Write as _;

use crate::bare::Bare;
use common::timing::{fmt_ns, fmt_rate};

use crate::charts::{self, Drawn};
use crate::floors::Floor;
use crate::output::{size_label, Row};

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page's style: readable width, the table scrolls sideways rather than wrapping.
pub(crate) const STYLE: &str =
    "body{font-family:sans-serif;margin:2em;max-width:1250px;line-height:1.4}\
     pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}\
     figure{margin:0}figcaption{max-width:1150px;color:#333;margin:.4em 0 1.5em}\
     .notes{max-width:1150px;background:#fbfbf3;border-left:4px solid #e69f00;padding:.5em 1em}\
     .notes li{margin:.2em 0}";

/// What the page says under a chart: how to read it, and which series coincide.
pub(crate) fn caption(d: &Drawn, what: &str) -> String {
    let mut s = if d.dots {
        format!(
            "One size per series in this run, so each series is a row and its {what} is written \
             beside its marker (a run with --full draws lines over message sizes). "
        )
    } else {
        "Each series has its own marker and its mechanism's colour; the legend is on the right. "
            .to_string()
    };
    if d.coinciding.is_empty() {
        s.push_str("No two series coincide.");
        return html_escape(&s);
    }
    let groups: Vec<String> = d.coinciding.iter().map(|g| and_list(g)).collect();
    let pct = (charts::COINCIDE - 1.0) * 100.0;
    let how = if d.dots {
        format!("lie within {pct:.0} % of each other")
    } else {
        format!(
            "coincide (within {pct:.0} % of each other at three in four of the sizes both \
             measured), so on the chart the last one drawn hides the others"
        )
    };
    let _ = write!(
        s,
        "{} {how}: {}.",
        if d.coinciding.len() == 1 {
            "These series"
        } else {
            "These groups of series"
        },
        groups.join("; ")
    );
    let mixes = |g: &Vec<String>| {
        g.iter().any(|n| n.starts_with("shm ")) && g.iter().any(|n| n.starts_with("mmap "))
    };
    if d.coinciding.iter().any(mixes) {
        s.push_str(
            " shm and mmap meet by design: both run the same ring (common::ring) over \
             page-cache pages; only the object behind the pages differs (a POSIX or System V \
             segment, a file on tmpfs or on disk).",
        );
    }
    if d.coinciding
        .iter()
        .any(|g| g.iter().filter(|n| n.ends_with(" block")).count() > 2)
    {
        s.push_str(
            " Everything that sleeps costs about one futex round trip at small sizes, so the \
             blocking mechanisms meet there.",
        );
    }
    html_escape(&s)
}

/// "a, b and c".
pub(crate) fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The notes beside the table: how to read "x floor" and "x bare", why a ratio can be
/// below 1.0x (with this run's numbers), and which rows are.
pub(crate) fn ratio_notes(rows: &[Row], floors: &[Floor], bares: &[Bare]) -> String {
    let mut s = String::from("<div class=\"notes\"><h3>Reading x floor and x bare</h3>\n");
    s.push_str(
        "<p><b>x floor</b> divides a row by what the machine allows: a pingpong p50 by the round-trip \
         floor (the cache line for spinning waits, the futex for sleeping ones) plus two copies of \
         the message at memcpy speed; a stream's bytes/s into memcpy's at that size. \
         <b>x bare</b> divides it, in the same direction, by the bare loop of the same kernel path \
         (the same system calls, or the same copies into shared memory, with no frame, checksum, \
         sequence check or histogram), measured just before the row in the same repetition: what is \
         left above 1.00x is what the study kit's framing costs. Both read alike: 1.00x is as fast \
         as the bound, 2.00x takes twice as long or carries half the bytes per second.</p>\n",
    );
    let spread: Vec<String> = floors
        .iter()
        .map(|f| match &f.latency_ns {
            Some(l) => format!(
                "{}: p50 {} of {} round trips, min {}, p90 {}",
                f.name,
                fmt_ns(l.p50),
                f.count,
                fmt_ns(l.min),
                fmt_ns(l.p90)
            ),
            None => format!(
                "memcpy at {}: median {} of {} runs, from {} to {}",
                size_label(f.size_bytes),
                fmt_rate(f.bytes_per_s),
                f.count,
                fmt_rate(f.bytes_per_s_min),
                fmt_rate(f.bytes_per_s_max)
            ),
        })
        .collect();
    let _ = writeln!(
        s,
        "<p><b>Why a ratio can be below 1.00x.</b> A floor is a median of a noisy measurement, not a \
         constant. The cache-line and futex floors are the p50 of the round trips of one pair of \
         processes, measured once at the start of the run; memcpy is the median of a few runs. Half \
         of the floor's own round trips were faster than its p50, and the machine changes between \
         the floor and a row measured later, so a row whose figure lies within the floor's spread \
         can come out a little below 1.00x without beating the hardware. The floors of this run: \
         {}. The futex floor also bounds waiting on a futex, not every kernel wake-up: pipes and \
         sockets wake their reader with the scheduler's \"sync\" hint, a path that can be cheaper. \
         A bare loop is one run per repetition, with the same kind of spread (its line under the \
         table shows the range when there are several).</p>",
        html_escape(&spread.join("; "))
    );
    let below = |x: fn(&Row) -> f64| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r.status == "ok" && x(r) > 0.0 && x(r) < 1.0)
            .collect()
    };
    let label = |r: &Row| {
        format!(
            "{} {} {} {} {}",
            r.mechanism,
            r.flavour,
            r.wait,
            r.mode,
            size_label(r.size_bytes)
        )
    };
    let figure = |r: &Row| {
        if r.mode == "pingpong" {
            format!("p50 {}", fmt_ns(r.p50_ns))
        } else {
            fmt_rate(r.bytes_per_s)
        }
    };
    let under_floor = below(|r| r.x_floor);
    let under_bare = below(|r| r.x_bare);
    if under_floor.is_empty() && under_bare.is_empty() {
        s.push_str("<p>No row is below 1.00x its floor or its bare loop in this run.</p>\n");
    } else {
        s.push_str("<p>Below 1.00x in this run:</p><ul>\n");
        for r in &under_floor {
            let f = floors.iter().find(|f| {
                f.name == r.floor && (f.latency_ns.is_some() || f.size_bytes == r.size_bytes)
            });
            let why = match f {
                Some(Floor {
                    latency_ns: Some(l),
                    ..
                }) => within(r.p50_ns, l, &format!("the {} floor's", r.floor)),
                Some(f) => format!(
                    "{} against memcpy's median {}, whose runs went from {} to {}",
                    fmt_rate(r.bytes_per_s),
                    fmt_rate(f.bytes_per_s),
                    fmt_rate(f.bytes_per_s_min),
                    fmt_rate(f.bytes_per_s_max)
                ),
                None => figure(r),
            };
            let _ = writeln!(
                s,
                "<li>{}: {:.2}x {}: {}</li>",
                html_escape(&label(r)),
                r.x_floor,
                html_escape(&r.floor),
                html_escape(&why)
            );
        }
        for r in &under_bare {
            let runs: Vec<&Bare> = bares
                .iter()
                .filter(|b| {
                    format!("{} {}", b.kind, b.wait) == r.bare
                        && b.mode == r.mode
                        && b.size_bytes == r.size_bytes
                        && b.status == "ok"
                })
                .collect();
            let why = match runs.iter().find_map(|b| b.latency_ns) {
                Some(l) => within(r.p50_ns, &l, "the bare loop's"),
                None => {
                    let rates: Vec<String> = runs.iter().map(|b| fmt_rate(b.bytes_per_s)).collect();
                    format!(
                        "{} against the bare loop's {}",
                        fmt_rate(r.bytes_per_s),
                        rates.join(", ")
                    )
                }
            };
            let _ = writeln!(
                s,
                "<li>{}: {:.2}x its bare loop ({}): {}</li>",
                html_escape(&label(r)),
                r.x_bare,
                html_escape(&r.bare),
                html_escape(&why)
            );
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</div>");
    s
}

/// Where a row's p50 falls in a bound's own round trips: inside their spread (then the
/// ratio below 1.0x is the bound's noise), or below even the fastest (then the row took a
/// cheaper path than the bound measures).
pub(crate) fn within(p50: u64, l: &common::timing::LatencyNs, whose: &str) -> String {
    let spread = format!(
        "min {}, p50 {}, p90 {}",
        fmt_ns(l.min),
        fmt_ns(l.p50),
        fmt_ns(l.p90)
    );
    if p50 >= l.min {
        format!("p50 {}, inside {whose} own spread ({spread})", fmt_ns(p50))
    } else {
        format!(
            "p50 {}, below even {whose} fastest round trip ({spread}): a cheaper path \
             than the one the bound measures, not its noise",
            fmt_ns(p50)
        )
    }
}
