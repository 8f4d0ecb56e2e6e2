//! Running one case: start its processes, wait under a deadline, read their reports; and
//! running the floors and bare loops, each a fresh `bench __floor` or `bench __bare`.
//!
//! Each process is `bench __role --pin CPU PROGRAM ...` in its own process group, so a case
//! that hangs is killed whole (a pipe writer's child reader included). Its stdout carries
//! the JSON reports; its stderr is kept to explain a failure. Nothing here runs while a
//! case is being timed except this thread's `try_wait` polling every few milliseconds.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::timing::Report;
use serde::Serialize;

use crate::bare::Bare;
use crate::cases::{Case, Ctx};
use crate::floors::Floor;

/// What one run of a case measured. Exactly one per case and repetition.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub mechanism: String,
    pub flavour: String,
    pub wait: String,
    pub mode: String,
    pub size_bytes: u64,
    pub count: u64,
    pub repetition: u32,
    /// `ok`, or `FAILED` (then `failure` says why, and no figure of it is used).
    pub status: String,
    pub failure: Option<String>,
    /// Round trip (pingpong, writer's clock) or one-way (stream, reader's clock).
    pub latency_kind: String,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    /// Writer's plus reader's CPU time per message.
    pub cpu_ns_per_msg: f64,
    pub writer_rss_kib: u64,
    pub reader_rss_kib: u64,
    /// Which floor bounds this case, its value, and how many times the floor this costs
    /// (latency / floor latency, or floor bandwidth / bandwidth).
    pub floor: String,
    pub floor_value: f64,
    pub x_floor: f64,
    /// The bare loop of the same kernel path in the same repetition (`pipe block`,
    /// `shm-copy spin`, ...), its figure (p50 ns or bytes/s), and this case's multiple of
    /// it in the same direction as `x_floor`; 0 when the bare loop failed.
    pub bare: String,
    pub bare_value: f64,
    pub x_bare: f64,
    /// Frames from an earlier session the reader skipped (should be 0 in a bench).
    pub stale_skipped: u64,
    /// What the reader found: messages received, missing, repeated, with wrong content.
    pub received: u64,
    pub missing: u64,
    pub repeated: u64,
    pub corrupt: u64,
    /// Peak RSS of each side when its timed part began (the `_rss_kib` fields: at the end).
    pub writer_rss_start_kib: u64,
    pub reader_rss_start_kib: u64,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A rendezvous name no other case or concurrent bench uses.
fn unique_name() -> String {
    format!(
        "bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

struct Running {
    program: &'static str,
    child: Child,
    out: JoinHandle<String>,
    err: JoinHandle<String>,
}

/// Runs a case once. Failures of the mechanism are an outcome with `status = FAILED`;
/// only a failure of the runner itself (cannot spawn) is an error.
pub fn run_case(ctx: &Ctx, case: &Case, repetition: u32, deadline: Duration) -> Result<Outcome> {
    let mut outcome = Outcome {
        mechanism: case.mechanism.into(),
        flavour: case.flavour.clone(),
        wait: case.wait.clone(),
        mode: case.mode.as_str().into(),
        size_bytes: case.size as u64,
        count: case.count,
        repetition,
        status: "FAILED".into(),
        ..Outcome::default()
    };
    let name = unique_name();
    let mut running = Vec::new();
    for p in &case.procs {
        running.push(spawn(ctx, case, p, &name, deadline)?);
    }
    let (statuses, timed_out) = wait_all(&mut running, deadline)?;
    let (reports, errors) = collect_all(running, &statuses);
    if timed_out {
        outcome.failure = Some(format!(
            "timed out after {}s; {}",
            deadline.as_secs(),
            errors.join("; ")
        ));
        return Ok(outcome);
    }
    if !errors.is_empty() {
        outcome.failure = Some(errors.join("; "));
        return Ok(outcome);
    }
    let writer = reports.iter().find(|r| r.role == "writer");
    let reader = reports.iter().find(|r| r.role == "reader");
    let (Some(w), Some(r)) = (writer, reader) else {
        outcome.failure = Some("a report is missing".into());
        return Ok(outcome);
    };
    account(&mut outcome, w, r);
    // A stream writer verifies nothing (its reader does); a pingpong writer checks Pongs.
    let writer_ok = w.verified || !w.checks_here();
    if !(writer_ok && r.verified) || r.count != case.count || w.count != case.count {
        outcome.failure = Some(format!(
            "not verified: writer sent {} ({}), reader got {} ({})",
            w.count,
            if writer_ok { "ok" } else { "failed" },
            r.count,
            if r.verified {
                "verified"
            } else {
                "NOT verified"
            }
        ));
        return Ok(outcome);
    }
    fill(&mut outcome, case.mode, w, r);
    Ok(outcome)
}

/// The reader's account and both sides' memory, kept even when the case does not verify
/// (the soak prints them).
fn account(outcome: &mut Outcome, w: &Report, r: &Report) {
    outcome.received = r.count;
    (outcome.missing, outcome.repeated, outcome.corrupt) = (r.missing, r.repeated, r.corrupt);
    outcome.writer_rss_start_kib = w.rss_start_kib;
    outcome.reader_rss_start_kib = r.rss_start_kib;
    outcome.writer_rss_kib = w.max_rss_kib;
    outcome.reader_rss_kib = r.max_rss_kib;
}

/// Starts one program of a case as `bench __role [--pin CPU] PROGRAM ...`, in its own
/// process group, with its output collected by two threads.
fn spawn(
    ctx: &Ctx,
    case: &Case,
    p: &crate::cases::Launch,
    name: &str,
    deadline: Duration,
) -> Result<Running> {
    let mut cmd = Command::new(&ctx.exe);
    cmd.arg("__role");
    if let Some((a, b)) = ctx.pins {
        cmd.args(["--pin", &(if p.cpu_slot == 0 { a } else { b }).to_string()]);
    }
    // The writer is told what to run; the reader follows its Hello, and is given the same
    // values only as checks (a mismatch would be a bench bug, and is refused). The anonymous
    // pipe meets by inheritance: it has no --name and no --timeout.
    cmd.arg(p.program)
        .args(&p.args)
        .args(["--mode", case.mode.as_str()])
        .args(["--count", &case.count.to_string()])
        .args(["--size", &case.size.to_string()]);
    if !p.program.starts_with("pipe-") {
        cmd.args(["--name", name])
            .args(["--timeout", &deadline.as_secs().to_string()]);
    }
    cmd.args(["--json", "--quiet"])
        .env(common::runtime::DIR_ENV, &ctx.runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", p.program))?;
    let out = collect(child.stdout.take().context("stdout")?);
    let err = collect(child.stderr.take().context("stderr")?);
    Ok(Running {
        program: p.program,
        child,
        out,
        err,
    })
}

/// Waits for every program under one deadline for the case; past it, kills them all
/// (each whole process group: a writer's child reader goes too). `None`: not finished.
fn wait_all(
    running: &mut [Running],
    deadline: Duration,
) -> Result<(Vec<Option<std::process::ExitStatus>>, bool)> {
    let start = Instant::now();
    let mut timed_out = false;
    let mut statuses = Vec::new();
    for r in running.iter_mut() {
        let st = loop {
            if let Some(st) = r.child.try_wait()? {
                break Some(st);
            }
            if start.elapsed() > deadline {
                timed_out = true;
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        statuses.push(st);
        if timed_out {
            break;
        }
    }
    if timed_out {
        for r in running.iter_mut() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(r.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = r.child.wait();
        }
    }
    Ok((statuses, timed_out))
}

/// The programs' JSON reports, and for each one that failed its last line of stderr.
fn collect_all(
    running: Vec<Running>,
    statuses: &[Option<std::process::ExitStatus>],
) -> (Vec<Report>, Vec<String>) {
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for (i, r) in running.into_iter().enumerate() {
        let out = r.out.join().unwrap_or_default();
        let err = r.err.join().unwrap_or_default();
        reports.extend(out.lines().filter_map(|l| Report::from_json(l).ok()));
        let failed = statuses
            .get(i)
            .copied()
            .flatten()
            .is_none_or(|s| !s.success());
        if failed {
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            errors.push(format!("{}: {}", r.program, last.trim()));
        }
    }
    (reports, errors)
}

/// The figures of a verified case: pingpong from the writer's round trips, a stream from
/// the reader's view of what arrived; CPU of both sides.
fn fill(outcome: &mut Outcome, mode: common::cli::Mode, w: &Report, r: &Report) {
    let (lat_src, rate_src) = match mode {
        common::cli::Mode::Pingpong => (w, w),
        _ => (r, r),
    };
    let lat = lat_src.latency_ns.unwrap_or_default();
    outcome.latency_kind = lat_src.latency_kind.clone();
    outcome.p50_ns = lat.p50;
    outcome.p99_ns = lat.p99;
    outcome.p999_ns = lat.p999;
    outcome.msgs_per_s = rate_src.msgs_per_s;
    outcome.bytes_per_s = rate_src.bytes_per_s;
    outcome.cpu_ns_per_msg = w.cpu_ns_per_msg + r.cpu_ns_per_msg;
    outcome.writer_rss_kib = w.max_rss_kib;
    outcome.reader_rss_kib = r.max_rss_kib;
    outcome.stale_skipped = r.stale_skipped;
    // The wait strategy the programs say they used (shm/mmap report it).
    if !w.wait.is_empty() {
        outcome.wait = w.wait.clone();
    }
    outcome.status = "ok".into();
}

/// Fills the floor columns of an outcome from the floors measured in this run.
pub fn apply_floor(o: &mut Outcome, kind: crate::cases::FloorKind, floors: &[Floor]) {
    use crate::cases::FloorKind::*;
    let name = match kind {
        Cacheline => "cacheline",
        Futex => "futex",
        Memcpy => "memcpy",
    };
    o.floor = name.into();
    if o.status != "ok" {
        return;
    }
    let f = floors
        .iter()
        .rfind(|f| f.name == name && (kind != Memcpy || f.size_bytes == o.size_bytes));
    if let Some(f) = f {
        match kind {
            Memcpy if o.bytes_per_s > 0.0 => {
                o.floor_value = f.bytes_per_s;
                o.x_floor = f.bytes_per_s / o.bytes_per_s;
            }
            Cacheline | Futex => {
                // The message crosses twice per round trip: add two copies of it at the
                // memcpy bandwidth measured for its size, when the run measured one.
                let copy_ns = floors
                    .iter()
                    .rfind(|m| {
                        m.name == "memcpy" && m.size_bytes == o.size_bytes && m.bytes_per_s > 0.0
                    })
                    .map_or(0.0, |m| 2.0 * o.size_bytes as f64 / m.bytes_per_s * 1e9);
                let floor = f.latency_ns.map_or(0, |l| l.p50) as f64 + copy_ns;
                o.floor_value = floor;
                if floor > 0.0 {
                    o.x_floor = o.p50_ns as f64 / floor;
                }
            }
            _ => {}
        }
    }
}

/// Fills the bare-loop columns of an outcome from its bare loop's run (same repetition).
pub fn apply_bare(o: &mut Outcome, b: &Bare) {
    o.bare = format!("{} {}", b.kind, b.wait);
    if o.status != "ok" || b.status != "ok" {
        return;
    }
    o.bare_value = b.figure();
    match o.mode.as_str() {
        "pingpong" if o.bare_value > 0.0 => o.x_bare = o.p50_ns as f64 / o.bare_value,
        "stream" if o.bytes_per_s > 0.0 => o.x_bare = o.bare_value / o.bytes_per_s,
        _ => {}
    }
}

/// Runs one floor in a fresh process (`bench __floor ...`) and parses its line.
pub fn run_floor(exe: &str, args: &[String], deadline: Duration) -> Result<Floor> {
    let out = run_helper(exe, "__floor", args, deadline)?;
    serde_json::from_str(out.trim()).with_context(|| format!("floor output {out:?}"))
}

/// Runs one bare loop in a fresh process (`bench __bare ...`). Its failure is a FAILED
/// entry (the rows it serves show no "x bare"), not an error of the run.
pub fn run_bare(exe: &str, spec: &crate::bare::Spec, repetition: u32, deadline: Duration) -> Bare {
    let result = run_helper(exe, "__bare", &spec.to_args(), deadline).and_then(|out| {
        serde_json::from_str::<Bare>(out.trim())
            .with_context(|| format!("bare loop output {out:?}"))
    });
    let mut b = match result {
        Ok(b) => b,
        Err(e) => Bare {
            kind: spec.kind.as_str().into(),
            wait: spec.wait_str().into(),
            mode: spec.mode.as_str().into(),
            size_bytes: spec.size as u64,
            count: spec.count,
            status: "FAILED".into(),
            failure: Some(format!("{e:#}")),
            ..Bare::default()
        },
    };
    b.repetition = repetition;
    b
}

/// Runs `bench ROLE ARGS` (a floor or a bare loop) under the deadline, in its own process
/// group (killed whole past the deadline); its stdout.
fn run_helper(exe: &str, role: &str, args: &[String], deadline: Duration) -> Result<String> {
    let mut child = Command::new(exe)
        .arg(role)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawning bench {role}"))?;
    let out = collect(child.stdout.take().context("stdout")?);
    let err = collect(child.stderr.take().context("stderr")?);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > deadline {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            anyhow::bail!("{role} {} timed out", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        anyhow::bail!("{role} {} failed: {}", args.join(" "), err.trim());
    }
    Ok(out)
}
