//! The machine's floors, measured by the bench itself in the same run as the mechanisms.
//!
//! - **cache-line round trip**: two processes on two CPUs share one anonymous `MAP_SHARED`
//!   page; one stores `ping = i`, the other spins until it sees it and stores `pong = i`.
//!   No system call: what remains is the cost of moving a cache line between two cores and
//!   back. No shared-memory mechanism with spinning can beat it.
//! - **futex round trip**: the same, but each side sleeps in `FUTEX_WAIT` and is woken by
//!   `FUTEX_WAKE`: two wake-ups per round trip, the least any blocking mechanism pays.
//! - **memcpy bandwidth** at a message size, in one process: the most a mechanism that
//!   copies each message once could carry. A pingpong round trip moves its message twice
//!   (there and back), so its floor is the round-trip floor plus two such copies.
//!
//! They follow the classic C floor programs (a cache-line ping-pong, a futex ping-pong, a
//! memcpy bandwidth sweep; `bench/compare-baselines.sh` runs C versions beside them when
//! given `BASELINES=DIR`) with one difference: time is read with
//! `clock_gettime(CLOCK_MONOTONIC)` (about 20 ns from the vDSO), the same clock the
//! mechanisms' own reports use, so floor and mechanism are measured with one instrument.
//!
//! Each floor runs in a fresh process (`bench __floor ...`) that has started no thread,
//! so it may `fork`: the child is a copy of a single-threaded process.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use common::timing::{now_ns, Latency, LatencyNs};
use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

/// One floor's result, printed by the floor process as one JSON line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Floor {
    /// `cacheline`, `futex` or `memcpy`.
    pub name: String,
    /// Message size for memcpy; 0 for the round trips.
    pub size_bytes: u64,
    /// Round trips timed (cacheline, futex) or runs of which the median is taken (memcpy).
    #[serde(default)]
    pub count: u64,
    /// Round-trip quantiles (cacheline, futex).
    pub latency_ns: Option<LatencyNs>,
    /// Median bandwidth over the runs (memcpy), bytes per second.
    pub bytes_per_s: f64,
    /// Slowest and fastest run (memcpy), bytes per second.
    pub bytes_per_s_min: f64,
    pub bytes_per_s_max: f64,
}

/// Layout of the shared page: each word on its own 128-byte block, so neither the words
/// nor the adjacent-line prefetcher put the two sides on one line by accident.
const PING_AT: usize = 0;
const PONG_AT: usize = 128;
const READY_AT: usize = 256;
const PAGE: usize = 4096;

/// An anonymous shared page, inherited by the forked child at the same address.
struct SharedPage {
    /// Start of the page; valid for PAGE bytes until `drop`.
    ptr: NonNull<u8>,
}

impl SharedPage {
    fn new() -> Result<SharedPage> {
        let len = NonZeroUsize::new(PAGE).context("page size")?;
        // SAFETY: an anonymous mapping at an address the kernel chooses aliases nothing
        // in this process; the arguments are constants valid for mmap(2).
        let p = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .context("mmap MAP_SHARED|MAP_ANONYMOUS")?;
        Ok(SharedPage { ptr: p.cast() })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= PAGE && off.is_multiple_of(8));
        // SAFETY: `off` is one of the constants above: inside the page and 8-aligned (the
        // page is page-aligned). The kernel zero-filled it, a valid AtomicU64, and both
        // processes only ever access these words atomically.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= PAGE && off.is_multiple_of(4));
        // SAFETY: as for `u64_at`, with 4-byte alignment.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from mmap with length PAGE and no reference into it outlives
        // `self` (the atomics borrow `self`).
        let _ = unsafe { munmap(self.ptr.cast(), PAGE) };
    }
}

fn pin(cpu: Option<usize>) -> Result<()> {
    if let Some(cpu) = cpu {
        crate::roles::pin_to(cpu)?;
    }
    Ok(())
}

/// Forks; the child runs `child` on `cpu_b` and exits; the parent runs `parent` on `cpu_a`,
/// then waits for the child, whose failure is an error. Each process first drops the other
/// side's closure, so what it captured (a bare loop's file descriptors) is closed there: a
/// side that dies then shows up as EOF or EPIPE at its peer, not as a hang.
///
/// Only for a process that has started no thread (`bench __floor`, `bench __bare`).
pub(crate) fn fork_pair<T>(
    cpus: (Option<usize>, Option<usize>),
    child: impl FnOnce() -> Result<()>,
    parent: impl FnOnce() -> Result<T>,
) -> Result<T> {
    // SAFETY: the floor and bare-loop processes (`bench __floor`, `bench __bare`) start no
    // thread before this point, so the child is a copy of a single-threaded process and
    // may run any code.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(parent);
            let code = match pin(cpus.1).and_then(|()| child()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("forked child: {e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child: pid } => {
            drop(child);
            pin(cpus.0)?;
            let lat = parent();
            let status = waitpid(pid, None).context("waitpid")?;
            if !matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)) {
                bail!("the forked child ended with {status:?}");
            }
            lat
        }
    }
}

/// Cache-line round trip between two processes, busy-polling.
pub fn cacheline(iters: u64, cpus: (Option<usize>, Option<usize>)) -> Result<Floor> {
    let page = SharedPage::new()?;
    let warm = (iters / 10).max(1000);
    let lat = fork_pair(
        cpus,
        || {
            let (ping, pong) = (page.u64_at(PING_AT), page.u64_at(PONG_AT));
            page.u64_at(READY_AT).store(1, Ordering::Release);
            for i in 1..=warm + iters {
                while ping.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                pong.store(i, Ordering::Release);
            }
            Ok(())
        },
        || {
            let (ping, pong) = (page.u64_at(PING_AT), page.u64_at(PONG_AT));
            while page.u64_at(READY_AT).load(Ordering::Acquire) == 0 {
                std::hint::spin_loop();
            }
            let mut lat = Latency::new();
            for i in 1..=warm + iters {
                let t0 = now_ns();
                ping.store(i, Ordering::Release);
                while pong.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                if i > warm {
                    lat.record(now_ns() - t0);
                }
            }
            Ok(lat)
        },
    )?;
    Ok(Floor {
        name: "cacheline".into(),
        count: iters,
        latency_ns: lat.summary(),
        ..Floor::default()
    })
}

/// `futex(2)` on a word of shared memory: `FUTEX_WAIT` sleeps while `*word == val`,
/// `FUTEX_WAKE` wakes up to `val` sleepers.
pub(crate) fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a live, 4-aligned u32 in a MAP_SHARED mapping; FUTEX_WAIT and
    // FUTEX_WAKE (shared, not PRIVATE, since two processes use the word) only read it, and
    // the null timeout means "no timeout". A spurious return is handled by the callers' loops.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Futex wait/wake round trip between two processes.
pub fn futex_rtt(iters: u32, cpus: (Option<usize>, Option<usize>)) -> Result<Floor> {
    let page = SharedPage::new()?;
    let warm = (iters / 20).max(500);
    let lat = fork_pair(
        cpus,
        || {
            let (ping, pong) = (page.u32_at(PING_AT), page.u32_at(PONG_AT));
            page.u32_at(READY_AT).store(1, Ordering::Release);
            for i in 1..=warm + iters {
                loop {
                    let v = ping.load(Ordering::Acquire);
                    if v == i {
                        break;
                    }
                    futex(ping, libc::FUTEX_WAIT, v);
                }
                pong.store(i, Ordering::Release);
                futex(pong, libc::FUTEX_WAKE, 1);
            }
            Ok(())
        },
        || {
            let (ping, pong) = (page.u32_at(PING_AT), page.u32_at(PONG_AT));
            while page.u32_at(READY_AT).load(Ordering::Acquire) == 0 {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            let mut lat = Latency::new();
            for i in 1..=warm + iters {
                let t0 = now_ns();
                ping.store(i, Ordering::Release);
                futex(ping, libc::FUTEX_WAKE, 1);
                loop {
                    let v = pong.load(Ordering::Acquire);
                    if v == i {
                        break;
                    }
                    futex(pong, libc::FUTEX_WAIT, v);
                }
                if i > warm {
                    lat.record(now_ns() - t0);
                }
            }
            Ok(lat)
        },
    )?;
    Ok(Floor {
        name: "futex".into(),
        count: u64::from(iters),
        latency_ns: lat.summary(),
        ..Floor::default()
    })
}

/// memcpy bandwidth at `size` bytes: `runs` runs of about `bytes_per_run` each.
pub fn memcpy(size: usize, runs: usize, bytes_per_run: usize, cpu: Option<usize>) -> Result<Floor> {
    pin(cpu)?;
    // Page-aligned buffers, as `memcpy_bw.c` gets from mmap: a copy between buffers that
    // are only 16-byte aligned runs measurably slower and would understate the floor.
    let mut src_buf = vec![0u8; size + PAGE];
    let mut dst_buf = vec![0xa5u8; size + PAGE];
    let src_at = src_buf.as_ptr().align_offset(PAGE);
    let dst_at = dst_buf.as_ptr().align_offset(PAGE);
    let src = &mut src_buf[src_at..src_at + size];
    for (i, b) in src.iter_mut().enumerate() {
        *b = i as u8;
    }
    let src = &*src;
    let dst = &mut dst_buf[dst_at..dst_at + size];
    let reps = (bytes_per_run / size).max(10);
    let mut rates = Vec::with_capacity(runs);
    dst.copy_from_slice(src);
    for _ in 0..runs.max(1) {
        let t0 = now_ns();
        for _ in 0..reps {
            dst.copy_from_slice(std::hint::black_box(src));
            std::hint::black_box(&mut *dst);
        }
        let secs = (now_ns() - t0) as f64 / 1e9;
        rates.push((size * reps) as f64 / secs);
    }
    rates.sort_by(f64::total_cmp);
    Ok(Floor {
        name: "memcpy".into(),
        size_bytes: size as u64,
        count: rates.len() as u64,
        latency_ns: None,
        bytes_per_s: rates[rates.len() / 2],
        bytes_per_s_min: rates[0],
        bytes_per_s_max: rates[rates.len() - 1],
    })
}

/// `bench __floor NAME ARG [CPU_A CPU_B]`: runs one floor and prints it as JSON.
pub fn floor_main(args: &[String]) -> Result<()> {
    let cpu = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
    let n = |i: usize| -> Result<u64> {
        args.get(i)
            .context("missing argument")?
            .parse()
            .context("not a number")
    };
    let floor = match args.first().map(String::as_str) {
        Some("cacheline") => cacheline(n(1)?, (cpu(2), cpu(3)))?,
        Some("futex") => futex_rtt(u32::try_from(n(1)?)?, (cpu(2), cpu(3)))?,
        Some("memcpy") => memcpy(n(1)? as usize, 5, n(2)? as usize, cpu(3))?,
        other => bail!("unknown floor {other:?}"),
    };
    println!("{}", serde_json::to_string(&floor)?);
    Ok(())
}
