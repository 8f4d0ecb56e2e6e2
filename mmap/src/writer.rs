//! mmap-writer: sends messages through a file both programs map (ring), or fills a large
//! file through a map for a later reader (bulk).
//!
//! Run it in two terminals (either one first):
//! ```text
//! mmap-writer                                   # text: type lines       | mmap-reader
//! mmap-writer --mode stream --size 64K          #                        | mmap-reader --mode stream
//! mmap-writer --mode pingpong --wait spin       #                        | mmap-reader --mode pingpong --wait spin
//! mmap-writer --path /dev/shm/x.map --mode stream   # tmpfs: no disk behind the pages
//! mmap-writer --mode stream --sync --count 1000 --path /var/tmp/x.map   # msync per publish (F5)
//! mmap-writer --mode bulk --file-size 1G        # then, now or later:    mmap-reader --mode bulk --compare-read
//! mmap-writer --demo-truncate                   # F7: ftruncate while mapped, SIGBUS in a child
//! ```
//!
//! System calls, in order (ring):
//! - `open(O_CREAT|O_EXCL|O_NOFOLLOW, 0600)` of `<runtime dir>/<name>.map`: whoever comes
//!   first creates the file; the other gets EEXIST and opens it instead (`open(O_RDWR)`).
//! - creator: `ftruncate` to the ring's size *before* `mmap` (F7: a new file is 0 bytes,
//!   and touching a map past the end of the file is SIGBUS); `mmap(MAP_SHARED)`; the
//!   header is written and published; `futex(FUTEX_WAIT)` on the opener-pid word until the
//!   peer attaches.
//! - opener: `fstat` (owner, type, length) and `pread` of the header *before* `mmap`: a
//!   file of a killed run (its creator pid gone) is unlinked and replaced; a file with
//!   another capacity is refused; then `mmap(MAP_SHARED)` and attach.
//! - per message: plain stores into the mapped page (no system call); `futex(FUTEX_WAKE)`
//!   only when the reader said it sleeps; with `--sync`, `msync(MS_SYNC)` after each (F5).
//!
//! Bulk: `statvfs` (room: a store into a map of a full file system is SIGBUS, not ENOSPC),
//! `open(O_EXCL)`, `ftruncate`, `mmap`, stores into every page (each first store is a page
//! fault that allocates the page), a Release store of the completion marker, optionally
//! `msync`, `munmap`, exit. The file stays (F2).
//!
//! Cleanup: in ring modes the reader removes the file when the pair is done; on an error,
//! Ctrl-C or a dead peer, whichever side notices removes it. In bulk mode the file outlives
//! this program on purpose; the reader removes it after verifying (unless `--keep`).

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::narrate;
use common::protocol::{conclude, run_writer, WriterEnd};
use common::ring::{self, Consumer, Direction, Role};
use common::timing::{fmt_ns, fmt_rate, now_ns, CpuTime, Report};

use crate::bulk::{self, Header, HeaderError};
use crate::{
    address_space_facts, check_file, create_file, dirty_kib, ensure_room, explain_sigbus,
    file_path, fs_kind, open_existing, page_faults, pread_exact, show_maps, truncate_while_mapped,
    Map, MapArgs, OpenRing, SyncSink, WatchPeer, DEFAULT_BULK_NAME, MECHANISM,
};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "mmap-writer";

/// Command line of mmap-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through a memory-mapped file, or fill a large one (claims F1-F7).",
    after_help = "--mode bulk is accepted as a spelling of --bulk.\n\nExamples:\n  mmap-writer                     (then mmap-reader in another terminal)\n  mmap-writer --mode pingpong --wait spin --count 100000\n  mmap-writer --mode bulk --file-size 1G\n  mmap-writer --demo-truncate"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub map: MapArgs,

    /// Bulk mode (F2, F3): fill --file-size bytes through the map, then exit; the data stays.
    #[arg(long)]
    pub bulk: bool,

    /// Bulk: bytes of data, 4K to 1T, a multiple of 4096; K, M, G suffixes.
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = bulk::parse_file_size)]
    pub file_size: u64,

    /// F7: truncate a mapped file in a child process and touch past the new end (SIGBUS).
    #[arg(long)]
    pub demo_truncate: bool,
}

/// Entry point of the `mmap-writer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs mmap-writer with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(crate::rewrite_bulk_mode(argv));
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: check flags, then the F7 demo, bulk, or a ring mode.
pub fn run(args: Args) -> Result<ExitCode> {
    // A SIGBUS from a map is fatal; this handler only says why before the process dies.
    explain_sigbus()?;
    if args.demo_truncate {
        return demo_truncate(&args);
    }
    if args.bulk {
        return run_bulk(&args);
    }
    run_ring(&args)
}

/// Ring modes: the same protocol as `shm`, over a mapped file.
fn run_ring(args: &Args) -> Result<ExitCode> {
    let c = &args.common;
    let OpenRing { rf, setup, opts } = args.map.open_ring(c, Role::Writer, PROGRAM)?;
    let producer = rf.region.producer(Direction::WriterToReader, opts)?;
    let mut sink = SyncSink::new(producer, args.map.sync.then(|| rf.map.clone()));
    if args.map.sync {
        narrate!("--sync: msync(MS_SYNC) after every frame; the reader does not need it to see the data (F5)");
    }
    narrate!(
        "writing frames into ring 0 of the mapped file: plain stores, no write() calls; when the ring is full, waiting ({}) for the reader to consume{}",
        args.map.wait,
        if c.mode == Mode::Pingpong { "; each Pong comes back through ring 1" } else { "" }
    );
    let mut stdin = io::stdin().lock();
    let end = if c.mode == Mode::Pingpong {
        // The way back is the second ring in the same file (S4: both sides write).
        let mut back = rf.region.consumer(Direction::ReaderToWriter, opts)?;
        run_writer(&setup, &mut sink, Some(&mut back), &mut stdin)?
    } else if c.mode == Mode::Text {
        // Lines come slowly: check before each one that the reader is still there.
        let mut watched = WatchPeer {
            inner: &mut sink,
            pid: rf.peer_pid,
        };
        run_writer::<_, Consumer>(&setup, &mut watched, None, &mut stdin)?
    } else {
        run_writer::<_, Consumer>(&setup, &mut sink, None, &mut stdin)?
    };
    let peer = rf.peer_pid;
    let mut report = match end {
        WriterEnd::Finished(r) => *r,
        WriterEnd::PeerGone { sent } => {
            // rf.owned is dropped on this error path: the file of a broken pair is removed.
            bail!("the reader (pid {peer}) is gone after {sent} messages; stopping")
        }
    };
    // A clean end: the reader removes the file once it has read End.
    rf.owned.release();
    report.notes.push(format!(
        "ring file {} on {}, {} bytes per direction, {}",
        rf.path.display(),
        rf.flavour,
        args.map.capacity,
        if rf.created {
            "created here"
        } else {
            "created by the reader"
        }
    ));
    report.notes.extend(sink.note());
    conclude(&report, c.json)
}

/// Bulk mode (F2, F3): fill a file through the map, mark it complete, exit.
fn run_bulk(args: &Args) -> Result<ExitCode> {
    let c = &args.common;
    let path = file_path(c.name_or(DEFAULT_BULK_NAME), args.map.path.as_deref())?;
    let data_len = args.file_size;
    let file_len = bulk::HEADER_LEN as u64 + data_len;
    // F6: the whole file is mapped at once, so it must fit the address space.
    let map_len = usize::try_from(file_len).with_context(|| {
        format!("--file-size {data_len} does not fit this process's address space (F6)")
    })?;
    for fact in address_space_facts() {
        narrate!("F6: {fact}");
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_room(dir, file_len)?;
    clear_old_bulk_file(&path, args.map.path.is_some())?;

    // open(O_EXCL, 0600) + ftruncate: sized before mapping (F7).
    let (file, owned) = create_file(&path, file_len)?;
    check_file(&file, &path)?;
    let flavour = fs_kind(&file);
    let map = Map::create(&file, &path, map_len, args.map.populate)?;
    let mut header = Header {
        state: bulk::STATE_WRITING,
        writer_pid: std::process::id() as i32,
        block_size: bulk::BLOCK_SIZE as u32,
        data_len,
        nonce: common::protocol::new_nonce(),
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

    let dirty0 = dirty_kib();
    let (minor0, major0) = page_faults();
    let cpu0 = CpuTime::now();
    let t0 = now_ns();
    for b in 0..header.blocks() {
        let (off, len) = header.block_range(b);
        map.fill_pattern(off, len, bulk::block_seed(header.nonce, b))?;
    }
    let fill_ns = now_ns() - t0;
    let cpu = CpuTime::now().since(cpu0);
    let (minor1, major1) = page_faults();

    // The completion marker, last: done_ns first, then `state` with Release, so a reader
    // that loads state == 1 with Acquire sees every block and the header complete.
    header.done_ns = now_ns();
    map.write_bytes(40, &header.done_ns.to_le_bytes())?;
    map.store_u32_release(bulk::STATE_OFFSET, bulk::STATE_COMPLETE)?;
    let dirty1 = dirty_kib();

    let mut notes = vec![
        format!("file {} on {flavour}, {file_len} bytes (header page + data)", path.display()),
        format!(
            "fill through the map: {} in {} ({} minor, {} major page faults, one per {} KiB stored: the first store to each mapped piece faults)",
            fmt_rate(data_len as f64 / (fill_ns.max(1) as f64 / 1e9)),
            fmt_ns(fill_ns),
            minor1 - minor0,
            major1 - major0,
            data_len / 1024 / (minor1 - minor0 + major1 - major0).max(1)
        ),
    ];
    if let (Some(a), Some(b)) = (dirty0, dirty1) {
        let line = format!(
            "/proc/meminfo Dirty: {a} kB before, {b} kB after filling: stored, not yet on the disk (F5)"
        );
        narrate!("{line}");
        notes.push(line);
    }
    if args.map.sync {
        narrate!("msync(MS_SYNC): waits until every dirty page of the map is written to the file's storage (F5)");
        let t = now_ns();
        map.sync()?;
        let sync_ns = now_ns() - t;
        let after = dirty_kib().map_or(String::new(), |d| format!("; Dirty: {d} kB after"));
        let line = format!(
            "msync(MS_SYNC) of {data_len} bytes took {}{after}",
            fmt_ns(sync_ns)
        );
        narrate!("{line}");
        notes.push(line);
    }
    drop(map);
    drop(file);
    // The data outlives this process (F2): stop owning the file, so exiting keeps it.
    owned.release();
    narrate!(
        "done; {} stays after this program exits (F2). Read it now or later: mmap-reader --mode bulk{} [--compare-read]",
        path.display(),
        reader_hint(args)
    );

    let mut report = Report {
        program: PROGRAM.into(),
        role: "writer".into(),
        mechanism: MECHANISM.into(),
        flavour,
        mode: "bulk".into(),
        wait: "none".into(),
        size_bytes: bulk::BLOCK_SIZE as u64,
        count: header.blocks(),
        bytes: data_len,
        verified: true,
        elapsed_ns: fill_ns,
        notes,
        ..Report::default()
    };
    report.set_rates(cpu);
    conclude(&report, c.json)
}

/// The flags a reader needs to find the same file.
fn reader_hint(args: &Args) -> String {
    match (&args.map.path, &args.common.name) {
        (Some(p), _) => format!(" --path {}", p.display()),
        (None, Some(n)) => format!(" --name {n}"),
        (None, None) => String::new(),
    }
}

/// A file already at the bulk path: ours and stale or complete is replaced; a live
/// writer's is refused; anything not recognisably ours is never touched.
fn clear_old_bulk_file(path: &Path, explicit: bool) -> Result<()> {
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
        Ok(h) if h.state == bulk::STATE_WRITING && !ring::peer_gone(h.writer_pid) => bail!(
            "{} is being filled right now by mmap-writer pid {}; wait for it or use another --name",
            path.display(),
            h.writer_pid
        ),
        Ok(h) if h.state == bulk::STATE_WRITING => narrate!(
            "{} is stale: writer pid {} died before finishing it; replacing it",
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
        Err(e) => bail!(
            "{} exists and is not ours to replace ({e}); remove it yourself or choose another --path",
            path.display()
        ),
    }
    // unlink, then a new file: a new inode, never a rewrite of one a reader may be mapping.
    crate::remove_if_same(path, facts.ino).with_context(|| format!("unlink {}", path.display()))
}

/// F7, shown: ftruncate of a mapped file succeeds; touching past the new end is SIGBUS.
fn demo_truncate(args: &Args) -> Result<ExitCode> {
    let dir = match &args.map.path {
        Some(p) => p.parent().unwrap_or(Path::new(".")).to_path_buf(),
        None => common::runtime::runtime_dir()?,
    };
    narrate!(
        "F7: mapping a two-page file, then a child process truncates it to one page and touches the second page"
    );
    let out = truncate_while_mapped(&dir)?;
    println!(
        "ftruncate on the mapped file: {}",
        if out.ftruncate_succeeded {
            "succeeded (returned 0)"
        } else {
            "failed"
        }
    );
    println!("file length afterwards: {} bytes", out.len_after);
    println!(
        "child that touched the page past the new end: {}",
        out.child
    );
    println!(
        "so F7 is imprecise: a mapped file can change size; what breaks is access to pages past the end (SIGBUS)"
    );
    if out.ftruncate_succeeded && out.sigbus {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("the demonstration did not go as the kernel documents: {out:?}")
    }
}
