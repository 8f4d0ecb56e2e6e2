//! Bare loops: each mechanism's own system calls with nothing of the study kit around them.
//!
//! The table's "x floor" says how far a mechanism is from what the hardware allows; "x
//! bare" says how far it is from the same kernel path driven by the simplest loop that
//! can drive it: no frame, no checksum, no sequence check, no histogram, no narration.
//! What is left between the two is what the study kit's framing costs. The loops do what
//! the C programs of the project's shared baselines do (`stream_pingpong.c`, `pipe_bw.c`,
//! `mq_bench.c`, `shm_copy.c`, `sock_bw.c`), written here in Rust on libc and nix so that
//! the comparison needs nothing outside the repository:
//!
//! | kind       | pingpong (same size both ways)               | stream                                   | file          |
//! |------------|----------------------------------------------|------------------------------------------|---------------|
//! | `pipe`     | write/read over two pipes                    | write/read over one pipe                 | [`pipes`]     |
//! | `fifo`     | the same over two `mkfifo`'d paths           | the same over one FIFO                   | [`pipes`]     |
//! | `pipe-vmsplice` | (stream only)                           | `vmsplice` of two alternating buffers, `read` (`pipe_bw.c vms_read`) | [`pipes`] |
//! | `sysv-mq`  | `msgsnd`/`msgrcv` over two System V queues   | `msgsnd`/`msgrcv` over one queue         | [`queues`]    |
//! | `posix-mq` | `mq_send`/`mq_receive` over two POSIX queues | `mq_send`/`mq_receive` over one queue    | [`queues`]    |
//! | `shm-copy` | memcpy into a slot, release store, wait, memcpy out: 4 copies per round trip | a ring of 8 slots, or of `--ring` bytes | [`shm_copy`] |
//! | `unix`     | write/read over a Unix stream socketpair     | the same, one way                        | [`sockets`]   |
//! | `tcp`      | write/read over TCP loopback, `TCP_NODELAY`  | the same, one way (`TCP_NODELAY` on the writer) | [`sockets`] |
//!
//! `shm-copy` waits as the ring row it is compared with does: `--wait spin` busy-polls (the
//! rows with spin and adaptive waits), `--wait block` sleeps in `FUTEX_WAIT` and is woken
//! only when it sleeps (the rows with block waits). Pipe and FIFO streams take the pipe
//! capacity their mechanism's case asks for (`--pipe-size`, 1 MiB in the bench), and the
//! `shm-copy` stream as many bytes of ring as the ring row's `--capacity` (`--ring`): on
//! a CPU whose L2 holds a small ring, where the reader's copies come from the other
//! core's L2, the ring's size matters more than the framing (shm's README).
//!
//! How a figure is made. Each loop runs in a fresh process, `bench __bare KIND MODE SIZE
//! COUNT [--pin A,B] [--pipe-size BYTES] [--wait spin|block] [--ring BYTES]`, which has started no thread
//! and so may `fork`: it creates the objects, forks, the parent (the writer, pinned to the
//! writers' CPU) and the child (the reader, pinned to the readers' CPU) each keep their
//! ends, and the object goes when both are done (System V queues: removed by the parent;
//! POSIX queues and FIFO paths: unlinked as soon as both sides hold them). The first
//! tenth of the messages (at most 10 000, as the mechanisms' `--warmup`) is not timed.
//! - **pingpong**: the parent reads `CLOCK_MONOTONIC` before and after every round trip
//!   (two clock reads per round trip, about 20 ns each from the vDSO, the same instrument
//!   the mechanisms' reports use) and stores each one in a preallocated vector; the figure
//!   is the p50 of those round trips (sorted once, after the loop).
//! - **stream**: bytes per second over the timed part: from the parent's clock just
//!   before its first timed send to the child's clock just after its last receive (the same
//!   clock in both processes); the child leaves that instant in a shared page.
//!
//! The process prints one JSON line, a [`Bare`]; the runner ([`crate::run::run_bare`])
//! reads it and divides each mechanism's figure by it ([`crate::run::apply_bare`]).

pub mod pipes;
pub mod queues;
pub mod shm_copy;
pub mod sockets;

use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use common::cli::Mode;
use common::timing::{now_ns, LatencyNs};
use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use serde::{Deserialize, Serialize};

use crate::floors::fork_pair;

/// Which bare loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Pipe,
    Fifo,
    PipeVmsplice,
    SysvMq,
    PosixMq,
    ShmCopy,
    Unix,
    Tcp,
}

impl Kind {
    /// The name on the command line and in the results.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pipe => "pipe",
            Kind::Fifo => "fifo",
            Kind::PipeVmsplice => "pipe-vmsplice",
            Kind::SysvMq => "sysv-mq",
            Kind::PosixMq => "posix-mq",
            Kind::ShmCopy => "shm-copy",
            Kind::Unix => "unix",
            Kind::Tcp => "tcp",
        }
    }
}

/// How `shm-copy` waits for its peer (the other kinds always block in the kernel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// Busy-poll the peer's word.
    #[default]
    Spin,
    /// Sleep in `FUTEX_WAIT`; the peer calls `FUTEX_WAKE` only when one sleeps.
    Block,
}

/// `bench __bare ...`: one bare loop. Also what the runner builds (see [`Spec::to_args`]).
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(
    name = "bench __bare",
    about = "One bare loop, as a JSON line on stdout"
)]
pub struct Spec {
    /// The mechanism's kernel path.
    #[arg(value_enum)]
    pub kind: Kind,
    /// `pingpong` or `stream` (`text` is refused).
    #[arg(value_parser = parse_mode)]
    pub mode: Mode,
    /// Bytes per message (K and M suffixes, as the programs' `--size`).
    #[arg(value_parser = common::cli::parse_size)]
    pub size: usize,
    /// Messages (round trips in pingpong), not counting the warm-up.
    #[arg(value_parser = common::cli::parse_count)]
    pub count: u64,
    /// Pin the parent (writer) to CPU A and the child (reader) to CPU B.
    #[arg(long, value_name = "A,B", value_delimiter = ',', num_args = 1)]
    pub pin: Vec<usize>,
    /// Pipe and FIFO: capacity of the data pipe (F_SETPIPE_SZ) [default: the kernel's].
    #[arg(long, value_name = "BYTES", value_parser = common::cli::parse_size)]
    pub pipe_size: Option<usize>,
    /// shm-copy: how to wait for the peer.
    #[arg(long, value_enum, default_value_t = Wait::Spin)]
    pub wait: Wait,
    /// shm-copy stream: bytes of ring, in slots of SIZE bytes (at least 2) [default: 8
    /// slots, as `shm_copy.c`].
    #[arg(long, value_name = "BYTES", value_parser = common::cli::parse_size)]
    pub ring: Option<usize>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "pingpong" => Ok(Mode::Pingpong),
        "stream" => Ok(Mode::Stream),
        _ => Err(format!("{s}: a bare loop runs pingpong or stream")),
    }
}

impl Spec {
    /// `bench __bare`'s arguments for this loop (without `__bare`).
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            self.kind.as_str().to_string(),
            self.mode.as_str().to_string(),
            self.size.to_string(),
            self.count.to_string(),
        ];
        if let [x, y] = self.pin[..] {
            a.push(format!("--pin={x},{y}"));
        }
        if let Some(p) = self.pipe_size {
            a.push(format!("--pipe-size={p}"));
        }
        if self.kind == Kind::ShmCopy {
            a.push(format!("--wait={}", self.wait_str()));
        }
        if let Some(r) = self.ring {
            a.push(format!("--ring={r}"));
        }
        a
    }

    /// "spin" or "block" for shm-copy; "block" for every other kind (the kernel sleeps).
    pub fn wait_str(&self) -> &'static str {
        match (self.kind, self.wait) {
            (Kind::ShmCopy, Wait::Spin) => "spin",
            _ => "block",
        }
    }

    /// "shm-copy spin stream 64 KiB", for progress lines and the table's notes.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} {} B",
            self.kind.as_str(),
            self.wait_str(),
            self.mode.as_str(),
            self.size
        )
    }

    /// Untimed messages first: a tenth of the count, at most 10 000 (as `--warmup`).
    pub fn warmup(&self) -> u64 {
        (self.count / 10).min(10_000)
    }

    fn cpus(&self) -> (Option<usize>, Option<usize>) {
        match self.pin[..] {
            [a, b] => (Some(a), Some(b)),
            _ => (None, None),
        }
    }
}

/// What one bare loop measured: one JSON line from `bench __bare`, then one entry per loop
/// and repetition in `results.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bare {
    /// `pipe`, `fifo`, `sysv-mq`, `posix-mq`, `shm-copy`, `unix` or `tcp`.
    pub kind: String,
    /// `spin` or `block` (how the two sides wait for each other).
    pub wait: String,
    pub mode: String,
    pub size_bytes: u64,
    /// Messages timed (round trips in pingpong).
    pub count: u64,
    /// Set by the runner: which repetition of the run this loop belongs to.
    #[serde(default)]
    pub repetition: u32,
    /// `ok`, or `FAILED` (set by the runner; then `failure` says why).
    pub status: String,
    pub failure: Option<String>,
    /// Pingpong: the round trips' quantiles.
    pub latency_ns: Option<LatencyNs>,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    /// What the loop set up, in words ("two pipes of 65536 bytes").
    pub setup: String,
}

impl Bare {
    /// The figure a mechanism is divided by: p50 in ns (pingpong) or bytes/s (stream).
    pub fn figure(&self) -> f64 {
        match self.mode.as_str() {
            "pingpong" => self.latency_ns.map_or(0, |l| l.p50) as f64,
            _ => self.bytes_per_s,
        }
    }
}

/// `bench __bare KIND MODE SIZE COUNT [--pin A,B] [--pipe-size BYTES] [--wait spin|block]
/// [--ring BYTES]`.
pub fn bare_main(args: &[String]) -> Result<()> {
    let spec = Spec::try_parse_from(
        std::iter::once("bench __bare".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    if spec.size == 0 {
        bail!("SIZE must be at least 1 byte");
    }
    if !spec.pin.is_empty() && spec.pin.len() != 2 {
        bail!("--pin takes two CPUs, as A,B");
    }
    let bare = run(&spec)?;
    // Not println!, which panics when the reader of stdout has gone.
    writeln!(std::io::stdout(), "{}", serde_json::to_string(&bare)?)
        .context("writing the result to stdout")
}

/// Runs one bare loop in this process (which forks its peer).
pub fn run(spec: &Spec) -> Result<Bare> {
    match spec.kind {
        Kind::Pipe | Kind::Fifo => pipes::run(spec),
        Kind::PipeVmsplice => pipes::vmsplice(spec),
        Kind::SysvMq | Kind::PosixMq => queues::run(spec),
        Kind::ShmCopy => shm_copy::run(spec),
        Kind::Unix | Kind::Tcp => sockets::run(spec),
    }
}

/// The pingpong driver: the child runs `echo(i)` for i = 1, 2, ... (receive, send back);
/// the parent runs `round_trip(i)` (send, receive the echo) as many times and reads the
/// clock around each one after the warm-up.
pub(crate) fn pingpong(
    spec: &Spec,
    setup: String,
    mut echo: impl FnMut(u64) -> Result<()>,
    mut round_trip: impl FnMut(u64) -> Result<()>,
) -> Result<Bare> {
    let (warm, count) = (spec.warmup(), spec.count);
    let rtt = fork_pair(
        spec.cpus(),
        || {
            for i in 1..=warm + count {
                echo(i)?;
            }
            Ok(())
        },
        || {
            // Preallocated: no allocation, and nothing but two clock reads, in the loop.
            let mut rtt: Vec<u64> = Vec::with_capacity(count as usize);
            for i in 1..=warm + count {
                let t0 = now_ns();
                round_trip(i)?;
                let t1 = now_ns();
                if i > warm {
                    rtt.push(t1 - t0);
                }
            }
            Ok(rtt)
        },
    )?;
    let lat = quantiles(rtt).context("no round trip was timed")?;
    let secs = (lat.mean as f64 * count as f64) / 1e9;
    let msgs_per_s = if secs > 0.0 { count as f64 / secs } else { 0.0 };
    Ok(Bare {
        latency_ns: Some(lat),
        msgs_per_s,
        // Payload carried one way, as the mechanisms' pingpong reports count it.
        bytes_per_s: msgs_per_s * spec.size as f64,
        ..bare(spec, setup)
    })
}

/// The stream driver: the child runs `consume()`, which takes every message (warm-up
/// included) and returns; the parent runs `send(i)` for each message. Timed from the
/// parent's clock before its first timed send to the child's clock after `consume`.
pub(crate) fn stream(
    spec: &Spec,
    setup: String,
    consume: impl FnOnce() -> Result<()>,
    mut send: impl FnMut(u64) -> Result<()>,
) -> Result<Bare> {
    let (warm, count) = (spec.warmup(), spec.count);
    let done = SharedRegion::new(4096)?;
    let t0 = fork_pair(
        spec.cpus(),
        || {
            consume()?;
            done.u64_at(0).store(now_ns(), Ordering::Release);
            Ok(())
        },
        || {
            let mut t0 = now_ns();
            for i in 1..=warm + count {
                if i == warm + 1 {
                    t0 = now_ns();
                }
                send(i)?;
            }
            Ok(t0)
        },
    )?;
    // fork_pair waited for the child, so its store is visible.
    let t1 = done.u64_at(0).load(Ordering::Acquire);
    if t1 <= t0 {
        bail!("the reader's end time {t1} is not after the writer's start {t0}");
    }
    let secs = (t1 - t0) as f64 / 1e9;
    Ok(Bare {
        msgs_per_s: count as f64 / secs,
        bytes_per_s: (count * spec.size as u64) as f64 / secs,
        ..bare(spec, setup)
    })
}

/// A byte stream's pingpong: the parent writes `size` bytes on `tx` and reads as many
/// back on `rx`; the child reads them on `crx` and writes them back on `ctx`. Reads loop
/// until the whole message is there (`read_exact`), as the C loops do.
pub(crate) fn byte_pingpong(
    spec: &Spec,
    setup: String,
    (mut tx, mut rx): (impl Write, impl Read),
    (mut crx, mut ctx): (impl Read, impl Write),
) -> Result<Bare> {
    let mut pbuf = vec![b'x'; spec.size];
    let mut cbuf = vec![0u8; spec.size];
    pingpong(
        spec,
        setup,
        move |_| {
            crx.read_exact(&mut cbuf).context("read (echo side)")?;
            ctx.write_all(&cbuf).context("write (echo side)")
        },
        move |_| {
            tx.write_all(&pbuf).context("write")?;
            rx.read_exact(&mut pbuf).context("read")
        },
    )
}

/// A byte stream one way: the parent writes `size` bytes per message; the child reads
/// with buffers of `size` bytes (a read returns what has arrived) until every byte is in.
pub(crate) fn byte_stream(
    spec: &Spec,
    setup: String,
    mut tx: impl Write,
    mut rx: impl Read,
) -> Result<Bare> {
    let total = (spec.warmup() + spec.count) * spec.size as u64;
    let pbuf = vec![b'x'; spec.size];
    let mut cbuf = vec![0u8; spec.size];
    stream(
        spec,
        setup,
        move || {
            let mut got = 0u64;
            while got < total {
                let n = match rx.read(&mut cbuf) {
                    Ok(0) => bail!("read: end of file after {got} of {total} bytes"),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("read"),
                };
                got += n as u64;
            }
            Ok(())
        },
        move |_| tx.write_all(&pbuf).context("write"),
    )
}

/// A result with the spec's identity filled in.
fn bare(spec: &Spec, setup: String) -> Bare {
    Bare {
        kind: spec.kind.as_str().into(),
        wait: spec.wait_str().into(),
        mode: spec.mode.as_str().into(),
        size_bytes: spec.size as u64,
        count: spec.count,
        status: "ok".into(),
        setup,
        ..Bare::default()
    }
}

/// min, p50, p90, p99, p99.9, max and mean of the samples, by sorting them once.
fn quantiles(mut v: Vec<u64>) -> Option<LatencyNs> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let q = |p: f64| v[(p * (v.len() - 1) as f64) as usize];
    Some(LatencyNs {
        min: v[0],
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: v[v.len() - 1],
        mean: v.iter().sum::<u64>() / v.len() as u64,
    })
}

/// An anonymous `MAP_SHARED` mapping, inherited by the forked child at the same address:
/// the stream's end-time page, and `shm-copy`'s control words and slots.
pub(crate) struct SharedRegion {
    /// Start of the mapping; valid for `len` bytes until `drop`.
    ptr: NonNull<u8>,
    /// Length in bytes, a multiple of the page size.
    len: usize,
}

impl SharedRegion {
    /// Maps `len` bytes (rounded up to whole pages), zero-filled by the kernel.
    pub(crate) fn new(len: usize) -> Result<SharedRegion> {
        let len = len.max(1).div_ceil(4096) * 4096;
        let nz = NonZeroUsize::new(len).context("mapping length")?;
        // SAFETY: an anonymous mapping at an address the kernel chooses aliases nothing in
        // this process; the protection and flags are valid constants for mmap(2).
        let p = unsafe {
            mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .with_context(|| format!("mmap {len} bytes MAP_SHARED|MAP_ANONYMOUS"))?;
        Ok(SharedRegion { ptr: p.cast(), len })
    }

    /// The mapping's first byte, for raw copies (never a `&[u8]`: the peer writes it).
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 8-byte word at `off`, used only atomically by both processes.
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: the assert keeps the word inside the mapping and 8-aligned (the mapping
        // is page-aligned); the kernel zero-filled it, a valid AtomicU64, and both
        // processes access these words only through atomics.
        unsafe { &*self.base().add(off).cast::<AtomicU64>() }
    }

    /// The 4-byte word at `off` (a futex word), used only atomically by both processes.
    pub(crate) fn u32_at(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: as for `u64_at`, with 4-byte alignment.
        unsafe { &*self.base().add(off).cast::<std::sync::atomic::AtomicU32>() }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from mmap with length `len`, and every reference into the
        // mapping borrows `self`, so none outlives it.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_its_own_command_line() {
        let spec = Spec {
            kind: Kind::ShmCopy,
            mode: Mode::Stream,
            size: 65536,
            count: 2000,
            pin: vec![0, 1],
            pipe_size: None,
            wait: Wait::Block,
            ring: Some(4 << 20),
        };
        let args = spec.to_args();
        assert_eq!(
            args,
            [
                "shm-copy",
                "stream",
                "65536",
                "2000",
                "--pin=0,1",
                "--wait=block",
                "--ring=4194304"
            ]
        );
        let parsed =
            Spec::try_parse_from(std::iter::once("bench __bare".to_string()).chain(args)).unwrap();
        assert_eq!(parsed, spec);
        let pipe = Spec {
            kind: Kind::Pipe,
            pipe_size: Some(1 << 20),
            pin: vec![],
            wait: Wait::Spin,
            ring: None,
            ..spec
        };
        assert_eq!(pipe.to_args()[4..], ["--pipe-size=1048576"]);
        assert_eq!(pipe.wait_str(), "block");
        assert_eq!(pipe.label(), "pipe block stream 65536 B");
    }

    #[test]
    fn quantiles_come_from_the_sorted_samples() {
        let l = quantiles((1..=1000).rev().collect()).unwrap();
        assert_eq!((l.min, l.p50, l.p90, l.max), (1, 500, 900, 1000));
        assert_eq!(l.mean, 500);
        assert!(quantiles(vec![]).is_none());
    }

    #[test]
    fn the_warmup_is_a_tenth_capped_as_the_programs_do() {
        let s = |count| Spec {
            kind: Kind::Pipe,
            mode: Mode::Pingpong,
            size: 64,
            count,
            pin: vec![],
            pipe_size: None,
            wait: Wait::Spin,
            ring: None,
        };
        assert_eq!(s(20_000).warmup(), 2_000);
        assert_eq!(s(1_000_000).warmup(), 10_000);
        assert_eq!(s(5).warmup(), 0);
    }
}
