//! # shm: shared memory, POSIX and System V (claims S1-S5)
//!
//! Two processes map the same physical pages into their address spaces (S1): a store by
//! one is a load away for the other, with no system call and no copy by the kernel. That
//! is why shared memory is the fastest IPC mechanism, and also why it is the hardest to
//! use well: the kernel only provides the memory.
//!
//! - **S2, a fixed size.** The creator chooses the size once: `ftruncate` of a POSIX object,
//!   the `size` argument of `shmget` for System V. Only System V fixes it for good: any
//!   process with a POSIX object open read-write may `ftruncate` it again (these programs
//!   never do, and an opener that finds another size refuses it). Here the region is one header page plus
//!   two rings of `--capacity` bytes each ([`common::ring`] has the byte-by-byte layout).
//! - **S3, managed by the kernel.** The object outlives the processes that use it: a POSIX
//!   object is a file in the `tmpfs` mounted at `/dev/shm` (`ls -l /dev/shm` shows it, with
//!   owner and mode 0600), a System V segment is listed by `ipcs -m` with its key, owner,
//!   size and `nattch` (how many processes have it attached). Someone must remove it:
//!   `shm_unlink` or `shmctl(IPC_RMID)`; here the reader does, at the end.
//! - **S4, both read and write.** Both processes map it read-write. Frames go writer to
//!   reader in ring 0, and in pingpong the reader's answers come back in ring 1.
//! - **S5, the same size.** Each side is started with `--capacity` and both must agree.
//!   System V checks it in the kernel: `shmget` of an existing key with a *larger* size
//!   fails with EINVAL (a smaller one is accepted and attaches the whole segment). POSIX
//!   does not check anything (an `mmap` longer than the object succeeds, and touching past
//!   its end is SIGBUS). So the opener compares the size the kernel reports (`fstat`,
//!   `shm_segsz`) with the one its own `--capacity` needs and explains a mismatch; the
//!   header's capacity is checked after that, for an object of the right size.
//! - **What the note leaves out: synchronisation.** Shared memory gives neither ordering
//!   nor wake-ups. The ring publishes each frame with a Release store of its record's
//!   stamp and the other side reads the stamp with Acquire; a side with nothing to do
//!   spins, sleeps in a futex on the index word, or both (`--wait spin|block|adaptive`).
//!   The report's `wait` and `cpu_ns_per_msg` fields show the trade: spinning is fast and
//!   burns a CPU.
//! - **Zero-copy (`shm-writer --zero-copy`): loans.** Shared memory needs no copy at all:
//!   the ring lends the writer the reserved bytes themselves
//!   ([`Producer::frame_mut`](common::ring::Producer::frame_mut)), where the frame is
//!   built in place, and lends the reader each published record
//!   ([`Consumer::recv_in_place`](common::ring::Consumer::recv_in_place)), which it checks
//!   and reads where it lies; the reader follows the writer's Hello. Who owns which bytes
//!   when, and what a hostile peer can still do, is in the ring's docs
//!   ([`common::ring::spsc`], "Loans") and the README; the flags are [`common::loans`].
//!
//! ## Where to read
//!
//! | file | what it holds |
//! |---|---|
//! | [`writer`] | shm-writer top to bottom: meet the reader, then per frame `reserve`, `copy_in` (or, zero-copy, `frame_mut`), `publish` |
//! | [`reader`] | shm-reader top to bottom: `recv` (or `recv_in_place`) each frame, answer Pings in ring 1, remove the object |
//! | `common/src/ring/spsc/` | the data path both loops call: [`Producer::reserve`](common::ring::Producer::reserve), [`copy_in`](common::ring::Producer::copy_in), [`frame_mut`](common::ring::Producer::frame_mut), [`publish`](common::ring::Producer::publish), [`Consumer::recv`](common::ring::Consumer::recv), [`recv_in_place`](common::ring::Consumer::recv_in_place) |
//! | this file | the pair's contract: names, flags, what a paired region is ([`Shared`]) |
//! | [`rendezvous`](mod@rendezvous) | create-or-open, start-order races, stale objects, ownership (a first reading skips it) |
//! | `src/peers.rs` | who pairs: a second reader or writer refused by name, a peer of the other flavour pointed out |
//! | `src/posix.rs`, `src/sysv.rs` | each flavour's calls: `shm_open`/`ftruncate`/`mmap`/`fallocate`/`shm_unlink`; `shmget`/`shmat`/`shmdt`/`shmctl` |
//! | `src/sigbus.rs` | the SIGBUS handler: what a side says, and removes, when a page of the object is gone (a POSIX object shrunk under the pair) |
//!
//! ## The pair's contract
//! - Rendezvous: `--name NAME` (default `shm`). POSIX: the object `/ipc-study-<uid>-NAME`
//!   ([`common::runtime::kernel_name`]), i.e. `/dev/shm/ipc-study-<uid>-NAME`. System V: the
//!   key [`sysv_key`]`(NAME)`, derived from the uid and name (TLPI uses `ftok(3)` on a file;
//!   a hash needs no file that could be deleted under a running pair).
//! - Either start order: each side first tries to create the object exclusively
//!   (`O_CREAT|O_EXCL`, `IPC_CREAT|IPC_EXCL`). The winner sizes and maps it, writes the
//!   header with its pid, role and capacity, publishes `ready` last, and waits (futex on
//!   the header's `opener_pid`) for the other side. The loser opens the existing object,
//!   waits until `ready` is published, checks the header and writes its pid.
//! - One reader, one writer: the header records the creator (pid, start time, role) and
//!   the opener; a third process of a role already there is refused, naming that process
//!   (`src/peers.rs`), and the pair goes on. A side waiting for its peer that finds the
//!   other flavour's object under the same name (a System V segment of the key, or the
//!   POSIX object) says so while it waits and in its final error: the two never meet.
//! - The writer's first frame is its Hello (mode, size, count, warm-up, wait, the ring's
//!   capacity, zero-copy, verify level); the reader follows it, and its own `--mode`/`--size`/`--count`/`--warmup`
//!   are only checks; it waits as the writer does unless given its own `--wait`. A wait
//!   for room longer than half a second (a stopped reader) is narrated as it starts and
//!   ends (the ring's [`Producer::narrate_full`](common::ring::Producer::narrate_full),
//!   P6's analogue for a ring).
//! - Stale objects: the same judgement as the `mmap` crate's ([`common::ring::judge`]): an
//!   object whose creator and opener are both dead, or that stayed without a header or a
//!   creator pid for [`common::ring::SETUP_GRACE`], was left by a killed run; it is removed
//!   with a narrated line and created afresh. System V adds the kernel's own facts (`nattch`
//!   is 0 and the kernel-recorded creator pid is gone). One owned by another uid, or one
//!   whose header is not an ipc-study ring's, is refused, never removed.
//! - Cleanup: the creator registers the object with [`common::cleanup`] the moment the
//!   kernel has made it (so a failure of `ftruncate`, `mmap`, `fallocate` or `shmat`
//!   removes it again), the opener once paired; an error or Ctrl-C on either side removes
//!   it; at a normal end the writer lets go and the reader removes it. A SIGBUS (a POSIX
//!   object shrunk under the pair) is explained by a handler that removes the object and
//!   lets the process die of SIGBUS (`src/sigbus.rs`); the survivor, if any, reports its
//!   peer gone. What no one could remove (`kill -9` of both) is left to the stale rule.
//! - Flags: a value only the program can check (a `--size` that does not fit half a
//!   ring, a region larger than /dev/shm or `kernel.shmmax`) exits 2 before any object
//!   exists ([`ShmArgs::check`]), like clap's own checks.

pub mod reader;
pub mod rendezvous;
pub mod writer;

mod peers;
mod posix;
mod sigbus;
mod sysv;

use std::time::Duration;

use anyhow::{Context, Result};
use common::cleanup::Owned;
use common::cli::Mode;
use common::hello::Hello;
use common::ring::{self, EndOpts, Producer, Region, RingError, Wait};
use common::session::{ReaderSession, WriterSession};
use common::{narrate, warn};
use nix::unistd::geteuid;

pub use rendezvous::rendezvous;

/// Default `--name`.
pub const DEFAULT_NAME: &str = "shm";

/// Flags both programs take besides the common groups (`--wait` is each role's own: the
/// reader's follows the writer's Hello unless given).
#[derive(clap::Args, Debug, Clone)]
pub struct ShmArgs {
    /// Use System V shared memory (shmget/shmat/shmctl) instead of POSIX (shm_open/mmap);
    /// the same on both sides.
    #[arg(long)]
    pub sysv: bool,

    /// Bytes per ring (one per direction), a power of two from 4K to 256M; both sides must
    /// pass the same value (S5). A frame may take at most half a ring.
    #[arg(long, value_name = "BYTES", default_value = ring::DEFAULT_CAPACITY_ARG, value_parser = ring::parse_capacity)]
    pub capacity: usize,
}

impl ShmArgs {
    /// The flag values only this program can check, before any object exists; a bad one
    /// exits with status 2 ([`common::cli::bad_flag`]), like the values clap checks.
    /// `size`: the writer's `--size` in stream and pingpong mode (the reader takes what
    /// arrives), which must fit half a ring. Then the region against the kernel's limit
    /// for its flavour: the size of the tmpfs at /dev/shm (POSIX), `kernel.shmmax` and
    /// `kernel.shmall` (System V).
    pub fn check(&self, size: Option<usize>) -> Result<()> {
        if let Some(size) = size {
            ring::check_size(size, self.capacity).map_err(common::cli::bad_flag)?;
        }
        let len = ring::region_len(self.capacity) as u64;
        let limit = if self.sysv {
            sysv::size_limit().map(|(bytes, what)| (bytes, what.to_string()))
        } else {
            posix::tmpfs_size().map(|bytes| {
                (
                    bytes,
                    "the tmpfs at /dev/shm (its size in all, statvfs)".into(),
                )
            })
        };
        match limit {
            Some((bytes, what)) if len > bytes => Err(common::cli::bad_flag(format!(
                "--capacity {} needs a region of {len} bytes (4 KiB header + 2 rings), more than {what} allows: {bytes} bytes; \
                 pass a smaller --capacity to both sides",
                self.capacity
            ))),
            _ => Ok(()),
        }
    }

    /// POSIX or System V, as in reports.
    pub fn flavour(&self) -> common::setup::Flavour {
        if self.sysv {
            common::setup::Flavour::Sysv
        } else {
            common::setup::Flavour::Posix
        }
    }
}

/// The System V key for a name: 32-bit FNV-1a of `ipc-study-<uid>-<name>`, never
/// `IPC_PRIVATE` (0), which would make a new private segment instead of finding ours.
pub fn sysv_key(name: &str) -> libc::key_t {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("ipc-study-{}-{name}", geteuid()).bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    match h as libc::key_t {
        0 => 1,
        k => k,
    }
}

/// `/dev/shm` path of a POSIX object, for messages and tests (Linux mounts tmpfs there).
pub fn posix_path(name: &str) -> String {
    format!("/dev/shm{}", common::runtime::kernel_name(name))
}

/// A paired region: what the writer and reader use after the [`rendezvous()`].
pub struct Shared {
    /// The ring over the mapping (keeps the mapping alive).
    pub region: Region,
    /// The other process.
    pub peer_pid: i32,
    /// The other process as the header records it (pid and start time): what every wait
    /// checks is still alive, so a reused pid does not keep a dead pair open.
    pub peer: common::peer::Identity,
    /// Whether this side created the object.
    pub created: bool,
    /// `POSIX shared memory /ipc-study-0-shm` or `System V segment key 0x.. (shmid N)`.
    pub object: String,
    /// The System V id, to show `nattch`.
    sysv_id: Option<i32>,
    /// Removes the object on error paths and Ctrl-C; `remove`/`leave` at a normal end.
    owned: Owned,
    /// Keeps the SIGBUS handler pointed at this mapping (`src/sigbus.rs`); declared after
    /// `region`, so it is disarmed only once the mapping is gone.
    _sigbus: sigbus::Guard,
}

impl Shared {
    /// Endpoint options for this pair: the strategy, the peer to watch, the idle limit.
    pub fn end_opts(&self, wait: Wait, idle_timeout: Option<Duration>) -> EndOpts {
        EndOpts {
            wait,
            peer: self.peer,
            idle_timeout,
        }
    }

    /// `PeerGone` unless the peer still exists and is the process that attached (`kill(pid,
    /// 0)` and `/proc/PID/stat`): for text mode, which waits rarely and so seldom notices.
    pub fn peer_alive(&self) -> Result<(), RingError> {
        match self.peer.alive() {
            true => Ok(()),
            false => Err(RingError::PeerGone { pid: self.peer.pid }),
        }
    }

    /// A line for the report's notes: what was shared and how big.
    pub fn note(&self) -> String {
        let cap = self.region.capacity();
        format!(
            "{}: {} bytes = 4 KiB header + 2 rings of {} KiB; {} it",
            self.object,
            self.region.len(),
            cap >> 10,
            if self.created { "created" } else { "opened" }
        )
    }

    /// System V: narrates `nattch`, the kernel's count of attached processes (S3).
    pub fn show_nattch(&self, when: &str) {
        if let Some(id) = self.sysv_id {
            match sysv::stat(id) {
                Ok(ds) => narrate!(
                    "shmctl(IPC_STAT) {when}: nattch = {} (processes attached), size {} bytes, creator pid {}",
                    ds.shm_nattch,
                    ds.shm_segsz,
                    ds.shm_cpid
                ),
                Err(e) => narrate!("shmctl(IPC_STAT) {when}: {e}"),
            }
        }
    }

    /// The reader's end of a run: removes the object (`shm_unlink` / `IPC_RMID`); the
    /// mapping goes (`munmap` / `shmdt`) with the last handle on the region.
    pub fn remove(self) -> Result<()> {
        if self.sysv_id.is_some() {
            narrate!("IPC_RMID marks the segment for removal; the kernel frees it when the last process detaches");
        } else {
            narrate!("shm_unlink removes the name; the pages go when the last mapping goes");
        }
        self.owned.remove()
    }

    /// The writer's end of a run: keeps the object for the reader to remove.
    pub fn leave(self) {
        narrate!("leaving {} for the reader, which removes it", self.object);
        self.owned.release();
    }
}

/// What each `--wait` does, for the narration.
pub fn wait_means(w: Wait) -> &'static str {
    match w {
        Wait::Spin => "re-reading the other side's index in a loop",
        Wait::Block => "futex sleep on the other side's index until it wakes us",
        Wait::Adaptive => "spin 20 us, then futex sleep",
    }
}

/// shm-writer's end when a wait fails: a reader that died is an expected end, not a bug:
/// say so, then stop with the count. `taken` is ring 0's consumer index as the reader left
/// it ([`Producer::peer_index`](common::ring::Producer::peer_index)): a reader that took
/// no more than this writer's Hello refused its settings (its own output says why) or
/// died at once.
pub fn reader_gone(session: &WriterSession, taken: u64, e: RingError) -> anyhow::Error {
    match e {
        RingError::PeerGone { pid } => {
            warn!("peer (pid {pid}) is gone");
            let hello = ring::record_len(session.hello().encode().len()) as u64;
            if taken <= hello {
                return anyhow::anyhow!(
                    "reader (pid {pid}) is gone right after this writer's Hello ({}), before taking any message: \
                     if it refused these settings, its own output says why; stopping",
                    session.hello().flags()
                );
            }
            session.reader_left(&format!("(pid {pid}) is gone"))
        }
        e => e.into(),
    }
}

/// How the two sides wait: this reader follows the writer's wait, or runs its own
/// `--wait` (each side of a ring waits its own way: the futex wake-ups work whatever the
/// other side does), and says which.
pub fn say_waits(hello: &Hello, mine: Wait, asked: Option<Wait>) {
    let theirs = hello.wait;
    match asked {
        None => narrate!("both sides wait {mine}: this reader follows the writer's Hello"),
        Some(_) if mine == theirs => narrate!("both sides wait {mine}"),
        Some(_) => narrate!(
            "this reader waits {mine} (--wait), the writer {theirs}: each side of the ring waits its own way"
        ),
    }
}

/// Whether the writer's Hello said text mode: a person types, so a wait may last.
pub fn follows_text(session: &ReaderSession) -> bool {
    session.writer_hello().is_some_and(|h| h.mode == Mode::Text)
}

/// shm-reader's end when a wait fails: a writer that died without End: say so, then fail
/// with what arrived (`what` names the object and the writer).
pub fn writer_gone(session: &ReaderSession, e: RingError, what: &str) -> anyhow::Error {
    match e {
        RingError::PeerGone { pid } => {
            warn!("peer (pid {pid}) is gone");
            session.writer_left(what, None)
        }
        e => e.into(),
    }
}

/// shm-reader's way back, ring 1, taken when the Hello said pingpong; a Ping before that
/// is an error.
pub fn way_back(back: &mut Option<Producer>) -> Result<&mut Producer> {
    back.as_mut()
        .context("a Ping came, but the writer's Hello did not say pingpong")
}
