//! `mmap-writer --bulk` (F2, F3): fills a large file through a map, marks it complete and
//! exits. The file stays (F2): a reader verifies it now or any time later.
//!
//! ```text
//! mmap-writer --mode bulk --file-size 1G        # then, now or later:    mmap-reader --mode bulk --compare-read
//! ```
//!
//! System calls, in order:
//! 1. `getrlimit(RLIMIT_AS)` (F6: the whole file is mapped at once), then `statvfs` of the
//!    directory: a store into a map of a full file system is SIGBUS, not ENOSPC (a bad
//!    `--file-size` for this file system, exit status 2).
//! 2. A file already there: `open(O_NOFOLLOW)`, `fstat`, `pread` of its header; ours and
//!    stale or complete is `unlink`ed (a new inode, never a rewrite), anything else refused.
//! 3. `open(O_CREAT|O_EXCL, 0600)`, `ftruncate` to a header page plus the data *before*
//!    mapping (F7), `fstat`, `mmap(MAP_SHARED)`, and the header stored through the map,
//!    with this writer's pid and start time (a reused pid is not this writer).
//! 4. Stores into every page, no system call: each first store to a page is a page fault
//!    in which the kernel allocates it; `getrusage` counts the faults.
//! 5. The completion marker: `state = 1`, stored last with Release.
//! 6. `cachestat`: how many of the file's pages are dirty (stored, seen by every process,
//!    not yet on the disk); with `--sync`, `msync(MS_SYNC)`, which waits until they are
//!    written (F5), and `cachestat` again.
//! 7. `munmap` and `close`; the file is not removed.
//!
//! If the file is cut (or the file system fills) while this writer fills it, the store
//! that faults is SIGBUS: the handler ([`crate::sigbus`]) names the file, removes it (it is
//! ours until complete) and the process dies of the signal.
//!
//! The writer waits for no one (the report says wait `block`: its one wait is `msync`,
//! which sleeps in the kernel). The reader removes the file after verifying it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use common::cli::{bad_flag, CommonArgs};
use common::narrate;
use common::peer::Identity;
use common::ring::Role;
use common::session::{conclude, new_nonce};
use common::timing::{fmt_ns, fmt_rate, now_ns, CpuTime};

use super::{Header, HeaderError, Measured};
use crate::rendezvous::{check_file, create_file, open_existing, pread_exact};
use crate::space::{ensure_room, Need};
use crate::writer::PROGRAM;
use crate::{address_space_facts, bulk, cachestat, dirty_kib, file_path, fs_kind, page_faults};
use crate::{dir_of, show_maps, sigbus};
use crate::{Map, MapArgs, DEFAULT_BULK_NAME};

/// mmap-writer's bulk flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Flags {
    /// Bulk mode (F2, F3): fill --file-size bytes through the map, then exit; the data stays.
    #[arg(long = "bulk", conflicts_with_all = ["mode", "count", "size", "warmup", "wait", "capacity", "zero_copy", "verify"])]
    pub on: bool,

    /// Bulk: bytes of data, 4K to 1T, a multiple of 4096; K, M, G suffixes.
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = bulk::parse_file_size)]
    pub file_size: u64,
}

/// The bulk writer: steps 1 to 7 of the module docs.
pub fn run(c: &CommonArgs, m: &MapArgs, f: &Flags) -> Result<ExitCode> {
    let path = file_path(c.name_or(DEFAULT_BULK_NAME), m.path.as_deref())?;
    let data_len = f.file_size;
    let file_len = bulk::HEADER_LEN as u64 + data_len;
    // 1. F6: the whole file is mapped at once, so it must fit the address space.
    let map_len = usize::try_from(file_len).map_err(|_| {
        bad_flag(format!(
            "--file-size {data_len} does not fit this process's address space (F6)"
        ))
    })?;
    for fact in address_space_facts() {
        narrate!("F6: {fact}");
    }
    bulk_room(&path, data_len)?;
    // 2. A file of an earlier run.
    clear_old_bulk_file(&path, m.path.is_some())?;
    // 3. open(O_EXCL, 0600) + ftruncate: sized before mapping (F7).
    let (file, owned) = create_file(&path, file_len)?;
    let ino = check_file(&file, &path)?.ino;
    // Ours until complete: a SIGBUS while filling names it and removes it.
    sigbus::watch("bulk file", &path, ino, file_len, true, "");
    let flavour = fs_kind(&file);
    let map = Map::create(&file, &path, map_len, m.populate)?;
    let me = Identity::me();
    let mut header = Header {
        state: bulk::STATE_WRITING,
        writer_pid: me.pid,
        writer_start: me.start,
        block_size: bulk::BLOCK_SIZE as u32,
        data_len,
        nonce: new_nonce(),
        done_ns: 0,
    };
    map.write_bytes(0, &header.encode())?;
    if !c.quiet {
        show_maps(&path);
    }
    narrate!(
        "filling {} blocks of {} KiB through the map ({data_len} bytes on {flavour}): plain stores, no write() calls (F1, F2)",
        header.blocks(),
        bulk::BLOCK_SIZE / 1024
    );
    let first = format!(
        "file {} on {flavour}, {file_len} bytes (header page + data)",
        path.display()
    );
    let filled = fill_and_mark(&file, &map, &mut header, m.sync, first)?;
    // 7. munmap, close. The data outlives this process (F2): stop owning the file.
    drop(map);
    drop(file);
    sigbus::set_mine(false);
    owned.release();
    narrate!(
        "done; {} stays after this program exits (F2). Read it now or later: mmap-reader --mode bulk{} [--compare-read]",
        path.display(),
        reader_hint(m.path.as_deref(), c.name.as_deref())
    );
    let report = bulk::report(c, PROGRAM, Role::Writer, flavour, filled);
    conclude(&report, c.json)
}

/// Step 1: the file system must have room for every page before the first store: a store
/// it cannot supply is SIGBUS, not ENOSPC. Too little is a bad `--file-size` (status 2).
fn bulk_room(path: &Path, data_len: u64) -> Result<()> {
    let what = format!(
        "the bulk file {} (--file-size {data_len} and a header page)",
        path.display()
    );
    let need = Need {
        need: bulk::HEADER_LEN as u64 + data_len,
        what: &what,
        fix: "a smaller --file-size, or a --path on another file system",
    };
    ensure_room(dir_of(path), &need)
}

/// Steps 4 to 6: fill every block, store the completion marker, msync with `--sync`.
/// The notes say what the fill cost and what reached the disk; `first` leads them.
fn fill_and_mark(
    file: &File,
    map: &Map,
    header: &mut Header,
    sync: bool,
    first: String,
) -> Result<Measured> {
    let data_len = header.data_len;
    let dirty0 = dirty_kib();
    let (minor0, major0) = page_faults();
    let cpu0 = CpuTime::now();
    let t0 = now_ns();
    // 4. Plain stores; the first one into each page faults it in.
    for b in 0..header.blocks() {
        let (off, len) = header.block_range(b);
        map.fill_pattern(off, len, bulk::block_seed(header.nonce, b))?;
    }
    let fill_ns = now_ns() - t0;
    let cpu = CpuTime::now().since(cpu0);
    let (minor, major) = page_faults();
    let faults = (minor - minor0) + (major - major0);
    // 5. done_ns first, then `state` with Release: a reader that loads state == 1 with
    //    Acquire sees every block and the header complete.
    header.done_ns = now_ns();
    map.write_bytes(40, &header.done_ns.to_le_bytes())?;
    map.store_u32_release(bulk::STATE_OFFSET, bulk::STATE_COMPLETE)?;
    let mut notes = vec![
        first,
        format!(
            "fill through the map: {} in {} ({} minor, {} major page faults, one per {} KiB stored: the first store to each mapped piece faults)",
            fmt_rate(data_len as f64 / (fill_ns.max(1) as f64 / 1e9)),
            fmt_ns(fill_ns),
            minor - minor0,
            major - major0,
            data_len / 1024 / faults.max(1)
        ),
    ];
    if let (Some(a), Some(b)) = (dirty0, dirty_kib()) {
        notes.push(format!(
            "/proc/meminfo Dirty: {a} kB before, {b} kB after filling (the whole machine's dirty page cache) (F5)"
        ));
    }
    notes.extend(cache_line(file, "after filling"));
    for n in &notes[2..] {
        narrate!("{n}");
    }
    // 6. --sync.
    if sync {
        notes.extend(sync_now(file, map, data_len)?);
    }
    Ok(Measured {
        blocks: header.blocks(),
        bytes: data_len,
        ns: fill_ns,
        cpu,
        notes,
    })
}

/// What `cachestat(2)` says of the file's pages: dirty ones are stored (every process
/// that maps or reads the file sees them) but not yet on the disk (F5).
fn cache_line(file: &File, when: &str) -> Option<String> {
    let c = cachestat(file, 0, 0)?;
    let why = if c.dirty > 0 {
        "the stores are in the page cache, which every process sees; the disk copy is older until writeback or msync"
    } else if fs_kind(file) == "tmpfs" {
        "tmpfs has no disk behind it: there is nothing to write back"
    } else {
        "the copy on the disk is up to date"
    };
    Some(format!("cachestat {when}: {c}: {why} (F5)"))
}

/// Step 6: `msync(MS_SYNC)` of the whole map, timed, and the dirty pages after it.
fn sync_now(file: &File, map: &Map, data_len: u64) -> Result<Vec<String>> {
    narrate!("msync(MS_SYNC): waits until every dirty page of the map is written to the file's storage (F5)");
    let t = now_ns();
    map.sync()?;
    let sync_ns = now_ns() - t;
    let after = dirty_kib().map_or(String::new(), |d| format!("; Dirty: {d} kB after"));
    let mut v = vec![format!(
        "msync(MS_SYNC) of {data_len} bytes took {}{after}",
        fmt_ns(sync_ns)
    )];
    v.extend(cache_line(file, "after msync"));
    for n in &v {
        narrate!("{n}");
    }
    Ok(v)
}

/// The flags a reader needs to find the same file.
fn reader_hint(path: Option<&Path>, name: Option<&str>) -> String {
    match (path, name) {
        (Some(p), _) => format!(" --path {}", p.display()),
        (None, Some(n)) => format!(" --name {n}"),
        (None, None) => String::new(),
    }
}

/// Step 2: a file already at the bulk path. Ours and stale or complete is replaced; a
/// live writer's is refused; anything not recognisably ours is never touched.
fn clear_old_bulk_file(path: &PathBuf, explicit: bool) -> Result<()> {
    let Some(file) = open_existing(path, false)? else {
        return Ok(());
    };
    let facts = check_file(&file, path)?;
    let mut buf = [0u8; bulk::FIELDS_LEN];
    let verdict = if pread_exact(&file, path, 0, &mut buf)? {
        Header::decode(&buf)
    } else if std::fs::read(path).is_ok_and(|b| b.iter().all(|&x| x == 0)) {
        // Shorter than a header and all zero (usually empty): a writer killed after open().
        Err(HeaderError::NoHeaderYet)
    } else {
        Err(HeaderError::Short(facts.len as usize))
    };
    match verdict {
        Ok(h) if h.state == bulk::STATE_WRITING && h.writer().alive() => bail!(
            "{} is being filled right now by mmap-writer pid {}; wait for it or use another --name",
            path.display(),
            h.writer_pid
        ),
        Ok(h) if h.state == bulk::STATE_WRITING => narrate!(
            "{} is stale: writer pid {} died before finishing it (no process with that pid and \
             start time is alive); replacing it",
            path.display(),
            h.writer_pid
        ),
        Ok(h) => narrate!(
            "{} holds complete data of an earlier run (writer pid {}) that nobody removed; replacing it with a new file \
             (a reader that still maps the old one keeps the old inode and its data)",
            path.display(),
            h.writer_pid
        ),
        Err(HeaderError::NoHeaderYet) if !explicit => narrate!(
            "{} has no header: left by a writer killed right after creating it; replacing it",
            path.display()
        ),
        Err(e @ HeaderError::Version(_)) => narrate!(
            "{} holds a {e}; replacing it with a new file",
            path.display()
        ),
        Err(e) => bail!(
            "{} exists and is not ours to replace ({e}); remove it yourself or choose another --path",
            path.display()
        ),
    }
    // unlink, then a new file: a new inode, never a rewrite of one a reader may be mapping.
    crate::rendezvous::remove_if_same(path, facts.ino)
        .with_context(|| format!("unlink {}", path.display()))
}
