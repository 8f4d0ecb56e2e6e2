//! # bench: which mechanism is fastest, by how much, at what cost
//!
//! `cargo run --release -p bench` runs every writer/reader pair of the workspace in
//! pingpong (64 B) and stream (64 KiB; message queues at the largest size their limits
//! allow), measures the machine's floors and each mechanism's bare loop in the same run,
//! and prints one table in which each result is also given as a multiple of the floor that
//! bounds it ("x floor") and of the bare loop that drives the same kernel path with no
//! frame, checksum or statistics ("x bare": what the study kit's framing costs).
//!
//! How a figure is made: the runner starts itself twice, as `bench __role --pin 0
//! pipe-writer ...` and `bench __role --pin 1 pipe-reader ...` (see [`roles`]); each child
//! pins itself to one CPU and runs that program's own `run` (through `common::cli::start`,
//! as the binaries do), which prints its
//! `--json` report. So every figure is between two real processes running exactly the code
//! a learner runs, and the runner itself is never inside a timed loop.
//!
//! | module      | what it holds                                                       |
//! |-------------|---------------------------------------------------------------------|
//! | [`cases`]   | what to run for each mechanism, flavour, wait strategy, mode, size  |
//! | [`run`]     | starting a case's processes under a deadline, reading their reports |
//! | [`floors`]  | cache-line and futex round trips, memcpy bandwidth                  |
//! | [`bare`]    | each mechanism's kernel path in a bare loop (the "x bare" column)   |
//! | [`roles`]   | `bench __role`: the programs the runner can become                  |
//! | [`output`]  | table, JSON, CSV, environment, index.html                           |
//! | [`charts`]  | the SVG charts: latency and throughput                              |
//!
//! Honesty rules: a case whose reader saw a missing, repeated, stale or corrupt message,
//! or whose process failed or timed out, is FAILED in the table and left out of the
//! charts; warm-up messages are not timed; pingpong sends the same size both ways.

pub mod bare;
pub mod cases;
pub mod charts;
pub mod floors;
pub mod output;
pub mod page;
pub mod roles;
pub mod run;
pub mod soak;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::Mode;
use indicatif::{ProgressBar, ProgressStyle};

use cases::{Case, Ctx, MECHANISMS};

/// Command line of the runner.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Measure every ipc-study pair against the machine's floors (quick run by default).",
    after_help = "Examples:\n  cargo run --release -p bench\n  cargo run --release -p bench -- --only pipe,shm\n  cargo run --release -p bench -- --full --reps 3"
)]
pub struct Args {
    /// Sweep message sizes 64 B to 1 MiB (4 MiB for shm and mmap) instead of the quick run.
    #[arg(long)]
    pub full: bool,

    /// With --full: only these message sizes (comma-separated, 64, 4K, 64K, 1M, ...) and only
    /// these modes' cases (--modes).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = common::cli::parse_size, requires = "full")]
    pub sizes: Vec<usize>,

    /// With --full: only these modes (pingpong, stream).
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "full")]
    pub modes: Vec<String>,

    /// Repetitions of each case (median and min-max reported) [default: 1 quick, 3 full].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub reps: Option<u32>,

    /// Only these mechanisms (comma-separated): pipe, named-pipe, msgqueue, shm, mmap, socket.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub only: Vec<String>,

    /// Pin writer and reader to these two CPUs [default: 0,1 when the machine has two].
    #[arg(long, value_name = "A,B", value_delimiter = ',', num_args = 1)]
    pub pin: Vec<usize>,

    /// Do not pin the processes.
    #[arg(long, conflicts_with = "pin")]
    pub no_pin: bool,

    /// Messages per case (overrides the defaults; tiny values are for smoke tests).
    #[arg(long, value_name = "N", value_parser = common::cli::parse_count)]
    pub count: Option<u64>,

    /// Seconds a case may take before it is killed and marked FAILED.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub deadline: u64,

    // Output directory; `help` rather than a doc comment, which rustdoc would read as HTML.
    #[arg(
        long,
        value_name = "DIR",
        help = "Output directory [default: target/ipc-bench/<UTC time>]."
    )]
    pub out: Option<PathBuf>,

    /// Print all results as one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Soak: N verified 64-byte messages through every mechanism and flavour; prints what
    /// the readers counted (lost, repeated, corrupt) and RSS at the start and the end.
    #[arg(long, value_name = "N", value_parser = common::cli::parse_count, conflicts_with_all = ["full", "replot"])]
    pub soak: Option<u64>,

    /// Redraw the charts of an earlier run's output directory from its results.json; run nothing.
    #[arg(long, value_name = "DIR")]
    pub replot: Option<PathBuf>,
}

/// Entry point: a role, a floor, or the runner.
pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("__role") => match roles::role_main(&argv[2..]) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bench __role: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("__floor") => match floors::floor_main(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench __floor: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("__bare") => match bare::bare_main(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench __bare: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            let args = Args::parse();
            match run_bench(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Sizes of the full sweep.
const FULL_SIZES: &[usize] = &[
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
];

/// Messages for a case: enough for stable medians, bounded so the quick run stays short.
fn count_for(args: &Args, mode: Mode, size: usize) -> u64 {
    if let Some(n) = args.count {
        return n;
    }
    let by_bytes = |budget: usize, lo: u64, hi: u64| ((budget / size.max(1)) as u64).clamp(lo, hi);
    match (mode, args.full) {
        (Mode::Pingpong, false) => 20_000,
        (Mode::Pingpong, true) => by_bytes(256 << 20, 500, 20_000),
        (_, false) => by_bytes(1 << 30, 2_000, 200_000),
        (_, true) => by_bytes(1 << 30, 500, 200_000),
    }
}

/// Every case of this run, in the note's order of mechanisms.
fn plan(args: &Args, ctx: &Ctx) -> Result<Vec<Case>> {
    check_only(args)?;
    let selected = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    let mut out = Vec::new();
    for &mech in MECHANISMS.iter().filter(|m| selected(m)) {
        let sizes: Vec<(Mode, usize)> = if args.full {
            let max = if matches!(mech, "shm" | "mmap") {
                4 << 20
            } else {
                1 << 20
            };
            let sizes: &[usize] = if args.sizes.is_empty() {
                FULL_SIZES
            } else {
                &args.sizes
            };
            [Mode::Pingpong, Mode::Stream]
                .into_iter()
                .filter(|m| args.modes.is_empty() || args.modes.iter().any(|o| o == m.as_str()))
                .flat_map(|mode| {
                    sizes
                        .iter()
                        .filter(move |&&s| s <= max)
                        .map(move |&s| (mode, s))
                })
                .collect()
        } else {
            vec![(Mode::Pingpong, 64), (Mode::Stream, 64 << 10)]
        };
        for (mode, size) in sizes {
            for mut case in cases::cases_for(ctx, mech, mode, size, count_for(args, mode, size)) {
                // A mechanism may carry less than asked (message queue limits): the
                // builder said so by changing `size`; skip sizes it cannot reach at all.
                if case.size == 0 {
                    continue;
                }
                if args.count.is_none() {
                    case.count = count_for(args, mode, case.size);
                }
                if !out.iter().any(|c: &Case| c.label() == case.label()) {
                    out.push(case);
                }
            }
        }
    }
    Ok(out)
}

/// `--only`: every name must be a mechanism.
fn check_only(args: &Args) -> Result<()> {
    for m in &args.only {
        if !MECHANISMS.contains(&m.as_str()) {
            bail!(
                "--only {m}: unknown mechanism (known: {})",
                MECHANISMS.join(", ")
            );
        }
    }
    Ok(())
}

/// Facts a reader of the results needs to judge them.
fn environment(args: &Args, ctx: &Ctx) -> serde_json::Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_default();
    serde_json::json!({
        "cpu_model": cpu,
        "cpus_online": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "pinning": match ctx.pins { Some((a, b)) => format!("writer CPU {a}, reader CPU {b}"), None => "none".into() },
        "build_profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "run": if args.full { "full" } else { "quick" },
        "repetitions": args.reps.unwrap_or(if args.full { 3 } else { 1 }),
        "limits": {
            "kernel.msgmax": read("/proc/sys/kernel/msgmax"),
            "kernel.msgmnb": read("/proc/sys/kernel/msgmnb"),
            "fs.mqueue.msg_max": read("/proc/sys/fs/mqueue/msg_max"),
            "fs.mqueue.msgsize_max": read("/proc/sys/fs/mqueue/msgsize_max"),
            "fs.pipe-max-size": read("/proc/sys/fs/pipe-max-size"),
        },
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    })
}

/// Default output directory: `target/ipc-bench/<UTC time>` next to this executable's target.
fn default_out() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/bench -> target
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .filter(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    target.join("ipc-bench").join(utc_stamp(secs))
}

/// `YYYYmmdd-HHMMSS` in UTC (civil-from-days, Howard Hinnant's algorithm).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The runner.
pub fn run_bench(args: &Args) -> Result<()> {
    common::narrate::init("bench", false);
    if let Some(dir) = &args.replot {
        output::replot(dir)?;
        eprintln!("bench: charts redrawn in {}", dir.display());
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    let pins = choose_pins(args)?;
    if cfg!(debug_assertions) {
        eprintln!("bench: this is a debug build: figures are not representative (use --release)");
    }
    // A private runtime directory for this run's rendezvous files, removed at the end.
    let runtime = std::env::temp_dir().join(format!("ipc-study-bench-{}", std::process::id()));
    common::runtime::ensure_private_dir(&runtime)?;
    let ctx = Ctx {
        exe: exe.to_string_lossy().into_owned(),
        pins,
        runtime: runtime.clone(),
    };
    if let Some(n) = args.soak {
        check_only(args)?;
        let result = soak::run(&ctx, n, &args.only, Duration::from_secs(args.deadline));
        let _ = std::fs::remove_dir_all(&runtime);
        print!("{}", result?);
        return Ok(());
    }
    let cases = plan(args, &ctx)?;
    let floor_jobs = floor_jobs(args, pins, &cases);
    let Measured {
        floors,
        bares,
        outcomes,
    } = measure(args, &ctx, &floor_jobs, &cases)?;

    let rows = output::rows(&outcomes);
    let table = output::table(&rows, &floors, &bares);
    let env = environment(args, &ctx);
    let dir = args.out.clone().unwrap_or_else(default_out);
    let measured = output::Results {
        env: &env,
        floors: &floors,
        bares: &bares,
        rows: &rows,
        outcomes: &outcomes,
    };
    output::write_all(&dir, &measured, &table)?;
    if args.json {
        println!("{}", measured.to_json());
    } else {
        print!("{table}");
    }
    eprintln!("bench: results, charts and index.html in {}", dir.display());

    let leftovers: Vec<_> = std::fs::read_dir(&runtime)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !leftovers.is_empty() {
        eprintln!("bench: warning: the pairs left {leftovers:?} in the runtime directory");
    }
    let _ = std::fs::remove_dir_all(&runtime);
    let failed = rows.iter().filter(|r| r.status != "ok").count();
    if failed > 0 {
        bail!("{failed} of {} cases FAILED (see the table)", rows.len());
    }
    Ok(())
}

/// The two CPUs writers and readers are pinned to: `--pin A,B`, else 0 and 1 where the
/// machine has two, else none; said on stderr.
fn choose_pins(args: &Args) -> Result<Option<(usize, usize)>> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pins = if args.no_pin {
        None
    } else if args.pin.len() == 2 {
        if args.pin.iter().any(|&c| c >= cpus) {
            bail!(
                "--pin {},{}: this machine has CPUs 0 to {}",
                args.pin[0],
                args.pin[1],
                cpus - 1
            );
        }
        Some((args.pin[0], args.pin[1]))
    } else if !args.pin.is_empty() {
        bail!("--pin takes two CPUs, as A,B");
    } else if cpus >= 2 {
        Some((0, 1))
    } else {
        None
    };
    match pins {
        Some((a, b)) => eprintln!(
            "bench: pinning writers to CPU {a} and readers to CPU {b} (--no-pin to disable)"
        ),
        None => eprintln!(
            "bench: not pinning (one CPU, or --no-pin): figures will move more between runs"
        ),
    }
    Ok(pins)
}

/// The floors to measure first: the cache-line and futex round trips, and memcpy at every
/// message size (streams are compared with it, and a pingpong round trip's floor includes
/// two copies of its message). Each job is `bench __floor`'s argument list.
fn floor_jobs(args: &Args, pins: Option<(usize, usize)>, cases: &[Case]) -> Vec<Vec<String>> {
    let quick = args.count.is_some();
    let (fa, fb) = match pins {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (String::new(), String::new()),
    };
    let rounds = |quick_n: &str, n: &str| if quick { quick_n } else { n }.to_string();
    let mut jobs: Vec<Vec<String>> = vec![
        vec![
            "cacheline".into(),
            rounds("20000", "200000"),
            fa.clone(),
            fb.clone(),
        ],
        vec!["futex".into(), rounds("5000", "50000"), fa.clone(), fb],
    ];
    let mut sizes: Vec<usize> = cases.iter().map(|c| c.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let per_run: usize = if quick { 64 << 20 } else { 1 << 30 };
    for s in sizes {
        jobs.push(vec![
            "memcpy".into(),
            s.to_string(),
            per_run.to_string(),
            fa.clone(),
        ]);
    }
    for j in &mut jobs {
        j.retain(|a| !a.is_empty());
    }
    jobs
}

/// What a run measured: the floors (once), the bare loops and the cases (each repetition).
struct Measured {
    floors: Vec<floors::Floor>,
    bares: Vec<bare::Bare>,
    outcomes: Vec<run::Outcome>,
}

/// Runs the floors, then every case `--reps` times, with a progress bar. In each
/// repetition a case's bare loop runs just before the first case that needs it, so a
/// mechanism and its bare loop are measured close together, and each ratio is taken
/// within one repetition.
fn measure(args: &Args, ctx: &Ctx, floor_jobs: &[Vec<String>], cases: &[Case]) -> Result<Measured> {
    let reps = args.reps.unwrap_or(if args.full { 3 } else { 1 });
    let deadline = Duration::from_secs(args.deadline);
    let mut specs: Vec<bare::Spec> = Vec::new();
    for c in cases {
        let s = c.bare_spec(ctx.pins);
        if !specs.contains(&s) {
            specs.push(s);
        }
    }
    let total = (floor_jobs.len() + (cases.len() + specs.len()) * reps as usize) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut floors = Vec::new();
    for job in floor_jobs {
        bar.set_message(format!("floor {}", job[0]));
        floors.push(run::run_floor(&ctx.exe, job, deadline)?);
        bar.inc(1);
    }
    let mut outcomes = Vec::new();
    let mut bares: Vec<bare::Bare> = Vec::new();
    for rep in 0..reps {
        let mut this_rep: Vec<(bare::Spec, bare::Bare)> = Vec::new();
        for case in cases {
            let spec = case.bare_spec(ctx.pins);
            if !this_rep.iter().any(|(s, _)| *s == spec) {
                bar.set_message(format!("bare {}", spec.label()));
                let b = run::run_bare(&ctx.exe, &spec, rep, deadline);
                this_rep.push((spec.clone(), b));
                bar.inc(1);
            }
            bar.set_message(case.label());
            let mut o = run::run_case(ctx, case, rep, deadline)?;
            run::apply_floor(&mut o, case.floor, &floors);
            if let Some((_, b)) = this_rep.iter().find(|(s, _)| *s == spec) {
                run::apply_bare(&mut o, b);
            }
            outcomes.push(o);
            bar.inc(1);
        }
        bares.extend(this_rep.into_iter().map(|(_, b)| b));
    }
    bar.finish_and_clear();
    Ok(Measured {
        floors,
        bares,
        outcomes,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamp_formats_known_instants() {
        assert_eq!(super::utc_stamp(0), "19700101-000000");
        assert_eq!(super::utc_stamp(1_795_000_000), "20261118-110640");
    }
}
