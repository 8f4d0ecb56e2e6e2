//! `bench --soak N`: N verified messages through every mechanism and flavour, one after
//! the other, to show that nothing is lost or corrupted over a long run and that memory
//! stays flat.
//!
//! Each case is a 64-byte stream (the most messages per second, so the most chances for a
//! sequence or accounting bug), verified by the reader as every run is: sequence, session,
//! checksum, content and the End frame's totals. The table gives what the reader counted
//! (received, missing, repeated, wrong content) and each side's peak RSS when its timed
//! part began and at the end: a leak per message would make the second grow with N.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Result};
use common::cli::Mode;

use crate::cases::{cases_for, Case, Ctx, MECHANISMS};
use crate::run::{run_case, Outcome};

/// Payload of every soak message.
pub const SIZE: usize = 64;

/// One stream case per mechanism and flavour (shm and mmap with their default wait).
pub fn plan(ctx: &Ctx, count: u64, only: &[String]) -> Vec<Case> {
    let selected = |m: &str| only.is_empty() || only.iter().any(|o| o == m);
    let mut out: Vec<Case> = Vec::new();
    for &mech in MECHANISMS.iter().filter(|m| selected(m)) {
        for case in cases_for(ctx, mech, Mode::Stream, SIZE, count) {
            let ring = matches!(mech, "shm" | "mmap");
            if ring && case.wait != "adaptive" {
                continue;
            }
            out.push(case);
        }
    }
    out
}

/// Runs the soak and prints its table; fails if any case lost, repeated or corrupted a
/// message, or did not finish.
pub fn run(ctx: &Ctx, count: u64, only: &[String], deadline: Duration) -> Result<String> {
    let mut outcomes = Vec::new();
    for case in plan(ctx, count, only) {
        eprintln!("bench --soak: {} ({count} messages)", case.label());
        outcomes.push(run_case(ctx, &case, 0, deadline)?);
    }
    let table = table(&outcomes, count);
    let bad = outcomes
        .iter()
        .filter(|o| o.status != "ok" || o.missing + o.repeated + o.corrupt > 0)
        .count();
    if bad > 0 {
        print!("{table}");
        bail!(
            "{bad} of {} soak cases lost, repeated or corrupted messages, or failed",
            outcomes.len()
        );
    }
    Ok(table)
}

fn table(outcomes: &[Outcome], count: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:<12} {:<9} {:>11} {:>11} {:>5} {:>5} {:>7} {:>10} {:>17} {:>17}  status",
        "mechanism",
        "flavour",
        "wait",
        "sent",
        "received",
        "lost",
        "rep.",
        "corrupt",
        "msg/s",
        "writer RSS KiB",
        "reader RSS KiB"
    );
    for o in outcomes {
        let rss = |a: u64, b: u64| format!("{a} -> {b}");
        let _ = writeln!(
            s,
            "{:<10} {:<12} {:<9} {:>11} {:>11} {:>5} {:>5} {:>7} {:>10.0} {:>17} {:>17}  {}",
            o.mechanism,
            o.flavour,
            o.wait,
            count,
            o.received,
            o.missing,
            o.repeated,
            o.corrupt,
            o.msgs_per_s,
            rss(o.writer_rss_start_kib, o.writer_rss_kib),
            rss(o.reader_rss_start_kib, o.reader_rss_kib),
            o.failure
                .as_deref()
                .map_or("ok".to_string(), |f| format!("FAILED: {f}"))
        );
    }
    s.push_str(
        "\nsent, received: timed messages (a tenth more, at most 10000, went first as warm-up, verified too).\n\
         lost/rep./corrupt: what the reader's verification counted (sequence gaps, repeats, wrong content).\n\
         RSS: peak resident set when the timed part began -> at the end.\n",
    );
    s
}
