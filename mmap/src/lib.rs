//! # mmap: a regular file mapped into two processes (claims F1-F7)
//!
//! `mmap(2)` with `MAP_SHARED` on a file descriptor makes a range of the file part of the
//! process's address space (F1): a load or store at an address inside the range reads or
//! writes the file's page in the kernel's page cache, with no `read` or `write` call. Two
//! processes that map the same file share those pages, so one sees the other's stores at
//! once (the reviewer's note on F5) and, with the synchronisation the note never mentions,
//! the pair can exchange messages through it exactly as through shared memory. What the
//! file adds over `shm_open`: a name anywhere in the file system, a size that survives the
//! processes, and a copy on disk that the kernel writes back in its own time (F5).
//!
//! ## Three jobs, one file each
//! - **ring** (`--mode text|stream|pingpong`): [`writer`] and [`reader`]. The file holds
//!   the same single-producer single-consumer ring of frames as the `shm` pair; only the
//!   backing differs, so `mmap` and `shm` compare fairly. The loops in the two role files
//!   call the ring's data path by name: [`Producer::reserve`], [`Producer::copy_in`],
//!   [`Producer::publish`] and [`Consumer::recv`] (`common/src/ring/spsc/`). With
//!   `--sync` every publish is followed by `msync(MS_SYNC)` ([`Msync`]), whose cost the
//!   report shows (F5). With `mmap-writer --zero-copy` ([`common::loans`]) no payload is copied:
//!   the writer builds each timed frame in the reserved bytes of the map themselves
//!   ([`Producer::frame_mut`]) and the reader, following the Hello, checks and reads it
//!   where it lies ([`Consumer::recv_in_place`]); what a loan is and why it is safe is in
//!   the ring's docs ([`common::ring::spsc`], "Loans") and the README.
//! - **bulk** (`--mode bulk` or `--bulk`): [`bulk::writer`] fills a large file through its
//!   map and exits; the file outlives it (F2). [`bulk::reader`], started at the same time
//!   or later, verifies every block through its own map and, with `--compare-read`, again
//!   with plain `read()` calls, and prints both throughputs (F3, measured, not asserted).
//! - **`mmap-writer --demo-truncate`**: [`truncate`], F7 in one command.
//!
//! | module         | what it holds                                                            |
//! |----------------|--------------------------------------------------------------------------|
//! | [`writer`], [`reader`] | the ring programs: system calls top to bottom, the send/receive loop |
//! | [`rendezvous`] | create or open the file, stale files, checks before mapping (skip at first) |
//! | [`pair`]       | one reader and one writer, how each side waits, a reader that left       |
//! | [`map`]        | the mapping: raw pointers only, every range checked                      |
//! | [`bulk`]       | the bulk file's layout and pattern; its writer and reader                |
//! | [`truncate`]   | the F7 demonstration                                                     |
//! | [`pagecache`]  | what the page cache holds of a file: `cachestat(2)`, dirty pages (F5)    |
//! | [`sigbus`]     | SIGBUS from a map: what the dying side says and does with the file (F7)  |
//! | [`space`]      | room on the file system, checked before a file is created and mapped     |
//! | this file      | names, `--path`, the shared flags, `msync` timing, `/proc` facts         |
//!
//! ## The claims, in one place each
//! - F1 (part of a file mapped into memory): [`Map::create`] / [`Map::open`] map a whole
//!   file, [`Map::open_window`] only a part of it from a page-aligned offset
//!   (`mmap-reader --bulk --offset BYTES --length BYTES`); the programs print their own
//!   `/proc/self/maps` lines for the file ([`maps_lines_for`]), with the file bytes each
//!   line maps ([`maps_file_range`]: its offset column and its length).
//! - F2 (large data through a file): [`bulk`], the writer exits and the data stays.
//! - F3 (good when file I/O is slow): measured by `mmap-reader --bulk --compare-read`. The
//!   page cache serves both; the map avoids the copy into a buffer but pays page faults.
//! - F4 (executables are mapped files): [`maps_lines_for`] on the program's own path.
//! - F5 (memory and file out of sync): every process mapping the file sees a store at
//!   once (the ring modes depend on it); what lags is the copy on the disk. [`cachestat`]
//!   counts the file's dirty pages, which `msync` (`--sync`, [`Msync`]) writes back; the
//!   bulk writer prints the count after filling and after `msync`, and the `Dirty:` line of
//!   /proc/meminfo ([`dirty_kib`]) for the whole machine.
//! - F6 (4 GB on IA-32): [`address_space_facts`]; on x86_64 a process maps terabytes.
//! - F7 (size fixed while mapped): wrong as stated. [`truncate::truncate_while_mapped`]
//!   shows that `ftruncate` succeeds on a mapped file and that touching the map past the
//!   new end kills the toucher with SIGBUS; [`rendezvous::check_length`] is why our
//!   programs never map past the end, and [`sigbus`] prints what happened if another
//!   process truncates the file (or the file system has no room for a page, [`space`]):
//!   the dying process names the file and removes it if it owns it, the survivor of a
//!   pair says what it finds of the file.
//!
//! ## Rules for the memory
//! - The mapping is `memmap2::MmapRaw`: it hands out a pointer, never a `&[u8]`. Memory
//!   another process may write is only copied with raw pointers, after an Acquire load of
//!   the index or marker the other side published with Release. A reference over it would
//!   promise the compiler that nobody changes it, which another process can break.
//! - Every offset and length into the map is checked against the map's length, kept
//!   locally, in `Map::span`; a value read from the file is never trusted as an offset.
//! - Files are created mode 0600 with `O_EXCL`, never through a symlink (`O_NOFOLLOW`), and
//!   an existing one is used only after [`rendezvous::check_file`] (regular file, ours,
//!   not writable by others). A file is replaced only when its header proves it ours and
//!   stale.
//!
//! Man pages: mmap(2), msync(2), ftruncate(2), cachestat(2), proc(5) (`/proc/<pid>/maps`),
//! and the kernel's Documentation/filesystems/proc.rst for `Dirty:`.
//!
//! [`Producer::reserve`]: common::ring::Producer::reserve
//! [`Producer::copy_in`]: common::ring::Producer::copy_in
//! [`Producer::publish`]: common::ring::Producer::publish
//! [`Consumer::recv`]: common::ring::Consumer::recv
//! [`Producer::frame_mut`]: common::ring::Producer::frame_mut
//! [`Consumer::recv_in_place`]: common::ring::Consumer::recv_in_place

pub mod bulk;
pub mod map;
pub mod pagecache;
pub mod pair;
pub mod reader;
pub mod rendezvous;
pub mod sigbus;
pub mod space;
pub mod truncate;
pub mod writer;

pub use map::Map;
pub use pagecache::{cachestat, dirty_kib, CacheStat};
pub use pair::wait_means;

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use common::cli::bad_flag;
use common::ring;
use common::timing::{fmt_ns, now_ns, Latency};

/// Default `--name` of the ring file: `<runtime dir>/mmap.map`.
pub const DEFAULT_NAME: &str = "mmap";
/// Default `--name` of the bulk file: `<runtime dir>/mmap-bulk.map`.
pub const DEFAULT_BULK_NAME: &str = "mmap-bulk";
/// File name suffix in the runtime directory.
pub const SUFFIX: &str = ".map";

/// The file the pair meets at: `--path` as given (checked by [`check_path`]), else
/// `<runtime dir>/<name>.map`.
pub fn file_path(name: &str, path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(p) => {
            check_path(p)?;
            Ok(p.to_path_buf())
        }
        None => Ok(common::runtime::runtime_path(&format!("{name}{SUFFIX}"))?),
    }
}

/// `--path` must name a file in an existing directory: a bad value is a bad flag (exit
/// status 2), said before anything is created.
pub fn check_path(p: &Path) -> Result<()> {
    if p.file_name().is_none() {
        return Err(bad_flag(format!(
            "--path {}: names no file (it ends in a directory); give a file name, e.g. /dev/shm/x.map",
            p.display()
        )));
    }
    if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        return Err(bad_flag(format!(
            "--path {0} is a directory; give a file in it, e.g. {0}/x.map",
            p.display()
        )));
    }
    let dir = dir_of(p);
    if !fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Err(bad_flag(format!(
            "--path {}: the directory {} does not exist (or is not a directory); the programs create the file, not its directory",
            p.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// The directory a file is (or will be) in: its parent, `.` for a bare file name.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Rewrites `--mode bulk` (and `--mode=bulk`) into `--bulk`; the binaries call it on
/// their argument list before `common::cli::start` parses it.
///
/// `common::cli::Mode` knows text, stream and pingpong, the modes every pair has; bulk is
/// this pair's own, so it is a separate flag, and the spelling the issue uses is accepted.
pub fn rewrite_bulk_mode<I, T>(argv: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut out: Vec<OsString> = Vec::new();
    let mut it = argv.into_iter().map(Into::into).peekable();
    while let Some(a) = it.next() {
        if a == "--mode=bulk" {
            out.push("--bulk".into());
        } else if a == "--mode" && it.peek().is_some_and(|v| v == "bulk") {
            it.next();
            out.push("--bulk".into());
        } else {
            out.push(a);
        }
    }
    out
}

/// The flags both programs share: where the file is, how big its ring is, how it is
/// mapped and flushed (`--wait` is each role's own: the reader's follows its default).
#[derive(clap::Args, Debug, Clone)]
pub struct MapArgs {
    /// The file to map, the same on both sides; e.g. /dev/shm/x.map (tmpfs) or /var/tmp/x.map (disk) [default: NAME.map in the runtime directory].
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,

    /// Ring bytes per direction, a power of two from 4K to 256M; the same on both sides.
    #[arg(long, value_name = "BYTES", default_value = ring::DEFAULT_CAPACITY_ARG, value_parser = ring::parse_capacity)]
    pub capacity: usize,

    /// msync(MS_SYNC) after each frame this side publishes (ring) or after filling (bulk), timed (F5).
    #[arg(long)]
    pub sync: bool,

    /// MAP_POPULATE: fault every page in at mmap time instead of on first touch.
    #[arg(long)]
    pub populate: bool,
}

/// The entry point of both binaries: `--mode bulk` rewritten ([`rewrite_bulk_mode`]),
/// then the flags parsed with the real defaults of `--name` and `--path` in `--help` (they
/// depend on the mode and on the runtime directory, so clap cannot state them itself),
/// then the program run as [`common::cli::start`] runs every program.
pub fn start<A, I, T>(
    argv: I,
    run: fn(A) -> Result<std::process::ExitCode>,
) -> std::process::ExitCode
where
    A: common::cli::Program,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let dir = common::runtime::dir_path().display().to_string();
    let cmd = A::command()
        .mut_arg("name", |a| {
            a.help(format!(
                "Rendezvous name: the file {dir}/NAME.map (letters, digits, '.', '_', '-'; at most 64) \
                 [default: {DEFAULT_NAME}, with --bulk {DEFAULT_BULK_NAME}]"
            ))
        })
        .mut_arg("path", |a| {
            a.help(format!(
                "The file to map, the same on both sides; e.g. /dev/shm/x.map (tmpfs) or /var/tmp/x.map (disk) \
                 [default: {dir}/NAME.map, i.e. {dir}/{DEFAULT_NAME}{SUFFIX}]"
            ))
        });
    let matches = cmd.get_matches_from(rewrite_bulk_mode(argv));
    let args = A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let name = A::command().get_name().to_string();
    let quiet = args.common().quiet;
    common::cli::run_main(&name, quiet, || run(args))
}

/// `--sync` in the ring modes (F5): `msync(MS_SYNC)` after every frame this side
/// publishes, each one timed.
pub struct Msync {
    /// The mapping to flush; `None` without `--sync`.
    map: Option<Arc<Map>>,
    /// Time per msync.
    cost: Latency,
}

impl Msync {
    /// `map` is `Some` with `--sync`, which is narrated.
    pub fn new(map: Option<Arc<Map>>) -> Msync {
        if map.is_some() {
            common::narrate!("--sync: msync(MS_SYNC) after every frame this side publishes; the other side does not need it to see the data (F5)");
        }
        Msync {
            map,
            cost: Latency::new(),
        }
    }

    /// Right after a publish. The peer already sees the frame (the same page-cache pages);
    /// msync only makes the file's copy on the disk catch up, and returns once it has. On
    /// tmpfs there is no disk, and it is cheap.
    pub fn after_publish(&mut self) -> Result<()> {
        if let Some(m) = &self.map {
            let t = now_ns();
            m.sync()?;
            self.cost.record(now_ns() - t);
        }
        Ok(())
    }

    /// A report note on what msync cost, if it ran.
    pub fn note(&self) -> Option<String> {
        let s = self.cost.summary()?;
        Some(format!(
            "msync(MS_SYNC) after each publish (F5): {} calls, p50 {}, p99 {}, max {}",
            self.cost.len(),
            fmt_ns(s.p50),
            fmt_ns(s.p99),
            fmt_ns(s.max)
        ))
    }
}

/// The system's page size (`sysconf(_SC_PAGESIZE)`): the unit of mapping and of faults.
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as usize)
}

/// The file system the file lives on, as a report flavour: `tmpfs`, `ext4`, ...
pub fn fs_kind(file: &File) -> String {
    use nix::sys::statfs::{fstatfs, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
    match fstatfs(file) {
        Ok(s) if s.filesystem_type() == TMPFS_MAGIC => "tmpfs".into(),
        Ok(s) if s.filesystem_type() == EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(s) if s.filesystem_type() == XFS_SUPER_MAGIC => "xfs".into(),
        Ok(s) => format!("fs-{:x}", s.filesystem_type().0),
        Err(_) => "unknown-fs".into(),
    }
}

/// This process's mappings of `path` and of its own executable, as narration (F1, F4).
pub fn show_maps(path: &Path) {
    if let Ok(lines) = maps_lines_for(path) {
        for l in lines {
            let part =
                maps_file_range(&l).map_or(String::new(), |(a, b)| format!(" bytes {a}..{b} of"));
            common::narrate!(
                "/proc/self/maps: {l}  <-{part} the shared file, part of our memory (F1)"
            );
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(l) = maps_lines_for(&exe)
            .ok()
            .and_then(|v| v.into_iter().find(|l| l.contains(" r-xp ")))
        {
            common::narrate!(
                "/proc/self/maps: {l}  <- this program's code, mapped from its file at exec (F4)"
            );
        }
    }
}

/// Lines of `/proc/self/maps` whose path is `path` (F1, F4).
///
/// Each line is `start-end perms offset dev inode path`: `r-xp` is code (read, execute,
/// private copy-on-write), `rw-s` a shared writable map like ours.
pub fn maps_lines_for(path: &Path) -> Result<Vec<String>> {
    let maps = fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let want = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = want.to_string_lossy();
    Ok(maps
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p == want.as_ref())
        })
        .map(str::to_string)
        .collect())
}

/// The file bytes a `/proc/<pid>/maps` line maps: from its offset column (the third,
/// hex) for as many bytes as its address range (the first, `start-end`, hex) covers (F1).
pub fn maps_file_range(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split_whitespace();
    let (start, end) = f.next()?.split_once('-')?;
    let len = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
    let off = u64::from_str_radix(f.nth(1)?, 16).ok()?;
    Some((off, off + len))
}

/// F6: the address-space facts of this process, as lines to print.
pub fn address_space_facts() -> Vec<String> {
    use nix::sys::resource::{getrlimit, Resource};
    let bits = usize::BITS;
    let mut v = vec![format!(
        "pointers are {bits} bits: a process can address 2^{bits} bytes in theory; x86_64 gives user space 47 bits (128 TiB)"
    )];
    match getrlimit(Resource::RLIMIT_AS) {
        Ok((soft, _)) if soft == libc::RLIM_INFINITY => {
            v.push("RLIMIT_AS (ulimit -v) is unlimited".into())
        }
        Ok((soft, _)) => v.push(format!(
            "RLIMIT_AS (ulimit -v) limits this process to {soft} bytes of address space"
        )),
        Err(e) => v.push(format!("getrlimit RLIMIT_AS: {e}")),
    }
    v.push("on IA-32 a process has 4 GiB of virtual addresses, 3 GiB for user space with Linux's default split; PAE widens physical memory (64 GiB), not a process's address space".into());
    v
}

/// Minor and major page faults of this process so far (getrusage): what a map costs.
pub fn page_faults() -> (u64, u64) {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| (u.minor_page_faults() as u64, u.major_page_faults() as u64))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_mode_spelling_is_rewritten() {
        let v = rewrite_bulk_mode(["w", "--mode", "bulk", "--x"]);
        assert_eq!(v, ["w", "--bulk", "--x"]);
        let v = rewrite_bulk_mode(["w", "--mode=bulk"]);
        assert_eq!(v, ["w", "--bulk"]);
        let v = rewrite_bulk_mode(["w", "--mode", "stream"]);
        assert_eq!(v, ["w", "--mode", "stream"]);
    }

    #[test]
    fn a_maps_line_says_which_file_bytes_it_maps() {
        let l = "7f5dbec00000-7f5dbee00000 r--s 00100000 fe:00 10010988  /tmp/x.map";
        assert_eq!(maps_file_range(l), Some((1 << 20, 3 << 20)));
        assert_eq!(maps_file_range("garbage"), None);
    }
}
