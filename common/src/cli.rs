//! The flags every pair shares, and how a program starts and ends.
//!
//! Each program flattens the groups that act on it into its own clap `Parser`: a writer
//! [`RunArgs`] (`--mode --count --size --warmup`), a reader [`ExpectArgs`] (the same flags,
//! each optional: a check on the writer's Hello), every pair but the anonymous pipe
//! [`MeetArgs`] (`--name --timeout`), and all [`OutputArgs`] (`--json --quiet`). The role
//! files read them resolved, as one [`CommonArgs`] (`args.common()`). Values
//! are checked while parsing, before any IPC object exists, and a bad one is an error that
//! names the flag and the limit (clap prints it and exits with status 2):
//!
//! ```text
//! error: invalid value '0' for '--count <N>': must be between 1 and 1000000000
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::frame::MAX_PAYLOAD;
use crate::hello::{Expect, Hello};

/// What the pair does; the same on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The writer sends each line typed on stdin; the reader prints it. Ctrl-D ends.
    Text,
    /// `--count` messages of `--size` bytes as fast as the mechanism allows, verified.
    Stream,
    /// `--count` round trips: the reader echoes each message back.
    Pingpong,
}

impl Mode {
    /// Lower-case name, as in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Text => "text",
            Mode::Stream => "stream",
            Mode::Pingpong => "pingpong",
        }
    }
}

/// Largest `--count`.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// Longest `--name`.
pub const MAX_NAME_LEN: usize = 64;
/// Longest `--timeout` in seconds (one day).
pub const MAX_TIMEOUT_S: f64 = 86_400.0;

/// What a writer runs: its mode, count, size and warm-up. The writer's Hello frame
/// ([`crate::hello`]) tells the reader.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// text: type lines; stream: one-way at full speed; pingpong: round trips.
    #[arg(long, value_enum, default_value_t = Mode::Text)]
    pub mode: Mode,

    /// Timed messages (stream) or round trips (pingpong), 1 to 1e9.
    #[arg(long, value_name = "N", default_value = "100000", value_parser = parse_count)]
    pub count: u64,

    /// Payload bytes per message, 1 B to 16 MiB; accepts K, KiB, M, MiB (64K = 65536).
    #[arg(long, value_name = "BYTES", default_value = "64", value_parser = parse_size)]
    pub size: usize,

    /// Untimed messages sent first [default: count/10, at most 10000].
    #[arg(long, value_name = "N", value_parser = parse_warmup)]
    pub warmup: Option<u64>,
}

/// A reader's view of the same flags: it runs whatever the writer's Hello says, and each
/// flag given here is a check (a writer that runs something else is an error that names
/// both values).
#[derive(Args, Clone, Debug, Default)]
pub struct ExpectArgs {
    /// Check that the writer runs this mode [default: follow the writer].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,

    /// Check the writer's --count [default: follow the writer].
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub count: Option<u64>,

    /// Check the writer's --size [default: follow the writer].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub size: Option<usize>,

    /// Check the writer's --warmup [default: follow the writer].
    #[arg(long, value_name = "N", value_parser = parse_warmup)]
    pub warmup: Option<u64>,
}

/// Where the two sides meet and how long one waits for the other (every pair but the
/// anonymous pipe, which is inherited rather than met).
#[derive(Args, Clone, Debug)]
pub struct MeetArgs {
    /// Rendezvous name (letters, digits, '.', '_', '-'; at most 64).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// Seconds to wait for the peer before giving up, 0.1 to 86400.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// What is printed.
#[derive(Args, Clone, Debug)]
pub struct OutputArgs {
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// Narrate only errors; print the report.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Default `--timeout` where a program has none of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags of one program, resolved: what the role files read as `c.mode`, `c.size`,
/// `c.timeout`, .... A writer's come from [`RunArgs`]; a reader's start as the writer's
/// defaults and take the writer's values from its Hello ([`CommonArgs::follow`]).
#[derive(Clone, Debug)]
pub struct CommonArgs {
    /// Text, stream or pingpong.
    pub mode: Mode,
    /// Timed messages or round trips.
    pub count: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// `--warmup`, if given.
    pub warmup: Option<u64>,
    /// `--name`, if given.
    pub name: Option<String>,
    /// `--timeout`.
    pub timeout: Duration,
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
    /// A reader's checks on the writer's Hello (empty for a writer).
    pub expect: Expect,
}

impl CommonArgs {
    /// A writer's flags.
    pub fn writer(run: &RunArgs, meet: Option<&MeetArgs>, out: &OutputArgs) -> CommonArgs {
        CommonArgs {
            mode: run.mode,
            count: run.count,
            size: run.size,
            warmup: run.warmup,
            name: meet.and_then(|m| m.name.clone()),
            timeout: meet.map_or(DEFAULT_TIMEOUT, |m| m.timeout),
            json: out.json,
            quiet: out.quiet,
            expect: Expect::default(),
        }
    }

    /// A reader's flags, before the writer's Hello: mode, count and size are what the
    /// reader asked for, else the writer's defaults, until [`CommonArgs::follow`].
    pub fn reader(exp: &ExpectArgs, meet: Option<&MeetArgs>, out: &OutputArgs) -> CommonArgs {
        CommonArgs {
            mode: exp.mode.unwrap_or(Mode::Text),
            count: exp.count.unwrap_or(100_000),
            size: exp.size.unwrap_or(64),
            warmup: exp.warmup,
            name: meet.and_then(|m| m.name.clone()),
            timeout: meet.map_or(DEFAULT_TIMEOUT, |m| m.timeout),
            json: out.json,
            quiet: out.quiet,
            expect: Expect {
                mode: exp.mode,
                size: exp.size,
                count: exp.count,
                warmup: exp.warmup,
            },
        }
    }

    /// Takes the writer's mode, count, size and warm-up from its Hello, after
    /// [`Expect::check`] has passed.
    pub fn follow(&mut self, hello: &Hello) {
        self.mode = hello.mode;
        if hello.mode != Mode::Text {
            self.count = hello.count;
            // A Hello's size was checked against the frame limit by its writer.
            self.size = hello.size as usize;
            self.warmup = Some(hello.warmup);
        }
    }

    /// Warm-up count: `--warmup`, else count/10 capped at 10 000 (0 in text mode).
    pub fn warmup(&self) -> u64 {
        match (self.mode, self.warmup) {
            (Mode::Text, _) => 0,
            (_, Some(w)) => w,
            (_, None) => (self.count / 10).min(10_000),
        }
    }

    /// The rendezvous name, or the mechanism's default.
    pub fn name_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(default)
    }

    /// Checks `--size` against a mechanism's own limit, naming the flag and why.
    pub fn check_size(&self, limit: usize, why: &str) -> anyhow::Result<()> {
        if self.size > limit {
            anyhow::bail!(
                "--size {} is too large: the limit is {limit} bytes ({why})",
                self.size
            );
        }
        Ok(())
    }
}

/// The run flags of a writer ([`RunArgs`]) or a reader ([`ExpectArgs`]), resolved.
pub trait RunFlags {
    /// The resolved [`CommonArgs`].
    fn resolve(&self, meet: Option<&MeetArgs>, out: &OutputArgs) -> CommonArgs;
}

impl RunFlags for RunArgs {
    fn resolve(&self, meet: Option<&MeetArgs>, out: &OutputArgs) -> CommonArgs {
        CommonArgs::writer(self, meet, out)
    }
}

impl RunFlags for ExpectArgs {
    fn resolve(&self, meet: Option<&MeetArgs>, out: &OutputArgs) -> CommonArgs {
        CommonArgs::reader(self, meet, out)
    }
}

/// `--count`: 1 to [`MAX_COUNT`].
pub fn parse_count(s: &str) -> Result<u64, String> {
    let n = parse_u64(s)?;
    if !(1..=MAX_COUNT).contains(&n) {
        return Err(format!("must be between 1 and {MAX_COUNT}"));
    }
    Ok(n)
}

/// `--warmup`: 0 to [`MAX_COUNT`].
pub fn parse_warmup(s: &str) -> Result<u64, String> {
    let n = parse_u64(s)?;
    if n > MAX_COUNT {
        return Err(format!("must be between 0 and {MAX_COUNT}"));
    }
    Ok(n)
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    if let Some((m, e)) = t.split_once(['e', 'E']) {
        // 1e6 is easier to type than 1000000.
        let m: u64 = m
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number"))?;
        let e: u32 = e
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number"))?;
        return 10u64
            .checked_pow(e)
            .and_then(|p| p.checked_mul(m))
            .ok_or_else(|| format!("'{s}' is too large"));
    }
    t.parse()
        .map_err(|_| format!("'{s}' is not a whole number"))
}

/// `--size`: 1 byte to [`MAX_PAYLOAD`], with an optional K/KiB/M/MiB suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let (n, mult) = split_unit(s)?;
    let bytes = n.saturating_mul(mult);
    if bytes == 0 || bytes > MAX_PAYLOAD as u64 {
        return Err(format!(
            "must be between 1 byte and {} bytes (16 MiB)",
            MAX_PAYLOAD
        ));
    }
    Ok(bytes as usize)
}

/// A byte count with no limit of its own but 4 GiB (`--pipe-size`, `--queue-bytes`: the
/// program checks it against the kernel's limit and names that), with the units of
/// [`parse_size`].
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let (n, mult) = split_unit(s)?;
    let bytes = n.saturating_mul(mult);
    if bytes == 0 || bytes > u32::MAX as u64 {
        return Err("must be between 1 byte and 4 GiB".into());
    }
    Ok(bytes as usize)
}

/// `"64K"` as `(64, 1024)`.
fn split_unit(s: &str) -> Result<(u64, u64), String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 64, 4K, 64KiB, 1M)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit '{other}' (use K, KiB, M or MiB)")),
    };
    Ok((n, mult))
}

/// `--name`: what may appear in a file name and a kernel object name, nothing else.
pub fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if s.starts_with('.') {
        return Err("must not start with '.'".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "'{c}' is not allowed: use letters, digits, '.', '_' and '-' (a name, not a path)"
        ));
    }
    Ok(s.to_string())
}

/// `--timeout`: seconds, 0.1 to [`MAX_TIMEOUT_S`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.1..=MAX_TIMEOUT_S).contains(&secs) {
        return Err(format!("must be between 0.1 and {MAX_TIMEOUT_S} seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A program of a pair: a clap command line with fields `run` ([`RunArgs`] or
/// [`ExpectArgs`]), `out` ([`OutputArgs`]) and, where the pair meets by name, `meet`
/// ([`MeetArgs`]).
pub trait Program: clap::Parser {
    /// The default `--name`, shown by `--help` (`None`: the program has no `--name`, or
    /// sets its own default).
    const DEFAULT_NAME: Option<&'static str> = None;
    /// The resolved flags.
    fn common(&self) -> CommonArgs;
}

/// `common::program!(Args);` declares a role's `Args` (a clap `Parser` with fields `run`,
/// `meet` and `out`) a [`Program`], for [`start`]; `program!(Args, name = "fifo")` also
/// shows the default `--name` in `--help`; `program!(Args, no_meet)` is for a program
/// without `meet` (the anonymous pipe's).
#[macro_export]
macro_rules! program {
    ($args:ty) => {
        impl $crate::cli::Program for $args {
            fn common(&self) -> $crate::cli::CommonArgs {
                $crate::cli::RunFlags::resolve(&self.run, Some(&self.meet), &self.out)
            }
        }
    };
    ($args:ty, name = $name:expr) => {
        impl $crate::cli::Program for $args {
            const DEFAULT_NAME: Option<&'static str> = Some($name);
            fn common(&self) -> $crate::cli::CommonArgs {
                $crate::cli::RunFlags::resolve(&self.run, Some(&self.meet), &self.out)
            }
        }
    };
    ($args:ty, no_meet) => {
        impl $crate::cli::Program for $args {
            fn common(&self) -> $crate::cli::CommonArgs {
                $crate::cli::RunFlags::resolve(&self.run, None, &self.out)
            }
        }
    };
}

/// The entry point of every writer and reader: parses `argv` (a bad flag value is printed
/// by clap with the flag and its limit, exit status 2), then runs the program as
/// [`run_main`] does. The binaries call it with `std::env::args_os()`, the `bench` runner
/// with its own argument list:
///
/// ```no_run
/// # use std::process::ExitCode;
/// # use common::cli::{OutputArgs, RunArgs, MeetArgs};
/// # #[derive(clap::Parser)] struct Args {
/// #     #[command(flatten)] run: RunArgs,
/// #     #[command(flatten)] meet: MeetArgs,
/// #     #[command(flatten)] out: OutputArgs,
/// # }
/// # common::program!(Args);
/// # fn run(_: Args) -> anyhow::Result<ExitCode> { Ok(ExitCode::SUCCESS) }
/// fn main() -> ExitCode {
///     common::cli::start(std::env::args_os(), run)
/// }
/// ```
pub fn start<A, I, T>(argv: I, run: fn(A) -> anyhow::Result<ExitCode>) -> ExitCode
where
    A: Program,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = parse::<A, _, _>(argv);
    let name = A::command().get_name().to_string();
    let quiet = args.common().quiet;
    run_main(&name, quiet, || run(args))
}

/// Parses `argv` as [`start`] does, with the program's default `--name` shown in `--help`
/// and filled in; a bad flag exits with clap's message and status 2.
pub fn parse<A, I, T>(argv: I) -> A
where
    A: Program,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = A::command();
    if let Some(name) = A::DEFAULT_NAME {
        cmd = cmd.mut_arg("name", |a| a.default_value(name));
    }
    let matches = cmd.get_matches_from(argv);
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs a program's body: narration set up, the signal thread started, and an error
/// printed as `[program pid] error: what failed: why` with exit status 1.
pub fn run_main(
    program: &str,
    quiet: bool,
    body: impl FnOnce() -> anyhow::Result<ExitCode>,
) -> ExitCode {
    crate::narrate::init(program, quiet);
    if let Err(e) = crate::cleanup::install_signal_handler() {
        crate::warn!("warning: {e:#}; Ctrl-C will not clean up");
    }
    let result = body();
    if crate::cleanup::interrupted() {
        // Ctrl-C arrived and the signal thread is removing what we own; whatever ended the
        // body (an object vanishing under it) is its doing. It exits with status 130.
        loop {
            std::thread::park();
        }
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::warn!("error: {e:#}");
            if e.downcast_ref::<BadFlag>().is_some() {
                ExitCode::from(BAD_FLAG_STATUS)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Exit status of a bad flag value, as clap uses for the values it checks itself.
pub const BAD_FLAG_STATUS: u8 = 2;

/// A flag value that only the program can check (a range read from /proc, an address
/// that must resolve, two flags that contradict each other): the error names the flag and
/// the limit, and the program exits with status 2 like clap's own checks, before any IPC
/// object exists.
#[derive(Debug)]
pub struct BadFlag(pub String);

impl std::fmt::Display for BadFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadFlag {}

/// `return Err(bad_flag(format!("--pipe-size {n} is out of range: ...")))`.
pub fn bad_flag(why: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadFlag(why.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        meet: MeetArgs,
        #[command(flatten)]
        out: OutputArgs,
    }
    crate::program!(T);

    fn err(args: &[&str]) -> String {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).unwrap_err().to_string()
    }

    #[test]
    fn sizes_and_counts_parse_with_units() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_count("1e6").unwrap(), 1_000_000);
        assert_eq!(parse_count("10_000").unwrap(), 10_000);
    }

    #[test]
    fn bad_values_name_the_flag_and_the_limit() {
        let e = err(&["--count", "0"]);
        assert!(
            e.contains("--count") && e.contains("between 1 and 1000000000"),
            "{e}"
        );
        let e = err(&["--size", "17M"]);
        assert!(e.contains("--size") && e.contains("16777216"), "{e}");
        let e = err(&["--size", "12Q"]);
        assert!(e.contains("--size") && e.contains("unknown unit"), "{e}");
        let e = err(&["--name", "a/b"]);
        assert!(e.contains("--name") && e.contains("not a path"), "{e}");
        let e = err(&["--timeout", "0"]);
        assert!(e.contains("--timeout") && e.contains("0.1"), "{e}");
        let e = err(&["--mode", "fast"]);
        assert!(e.contains("--mode"), "{e}");
    }

    #[test]
    fn warmup_defaults_to_a_tenth_capped() {
        let t = T::try_parse_from(["t", "--mode", "stream", "--count", "1000"]).unwrap();
        assert_eq!(t.common().warmup(), 100);
        let t = T::try_parse_from(["t", "--mode", "stream", "--count", "1e9"]).unwrap();
        assert_eq!(t.common().warmup(), 10_000);
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.common().warmup(), 0, "text mode has no warm-up");
    }
}
