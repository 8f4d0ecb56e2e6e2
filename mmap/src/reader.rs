//! mmap-reader: receives messages through a file both programs map (ring), or verifies a
//! large file a writer filled through its map (bulk).
//!
//! Run it in two terminals (either one first):
//! ```text
//! mmap-writer                                   | mmap-reader            # text
//! mmap-writer --mode stream --size 64K          | mmap-reader --mode stream
//! mmap-writer --mode pingpong                   | mmap-reader --mode pingpong
//! mmap-writer --mode bulk --file-size 1G        | mmap-reader --mode bulk --compare-read   # now or later
//! ```
//! It prints each message (text), or verifies every message and reports throughput and
//! one-way latency (stream), or answers each Ping through the second ring (pingpong). In
//! text mode it shows its own `/proc/self/maps` lines: the shared file (F1) and its own
//! program file, which the kernel mapped when it ran the program (F4).
//!
//! System calls, in order (ring): as mmap-writer: `open(O_CREAT|O_EXCL)` or `open` of the
//! peer's file, `fstat` + `pread` of the header before `mmap(MAP_SHARED)` (F7), then loads
//! from the mapped page per message; `futex(FUTEX_WAIT)` only when the ring is empty (with
//! `--wait block|adaptive`), every 100 ms checking that the writer still exists; `unlink`
//! of the file at the end.
//!
//! Bulk: wait (polling) for the file to exist and for its completion marker (`pread` of the
//! header, then an Acquire load through the map); `fstat` to check the length before
//! `mmap` (F7); loads from every page (page faults, no copies); with `--compare-read`,
//! `read()` calls of 1 MiB into a buffer over the same file (copies, no page faults on our
//! side); both timed (F3). Then `unlink`, unless `--keep`.
//!
//! Cleanup: this program removes the file when the pair is done (ring) or the data is
//! verified (bulk). A file of a writer that died before finishing is removed as stale.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::narrate;
use common::protocol::{conclude, run_reader, NoWayBack, ReaderEnd};
use common::ring::{self, Direction, Role};
use common::timing::{fmt_ns, fmt_rate, now_ns, CpuTime, Report};

use crate::bulk::{self, Header, HeaderError};
use crate::{
    check_file, file_path, fs_kind, open_existing, own_file_checked, page_faults, pread_exact,
    remove_if_same, show_maps, Map, MapArgs, OpenRing, SyncSink, DEFAULT_BULK_NAME, MECHANISM,
};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "mmap-reader";

/// Command line of mmap-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Receive messages through a memory-mapped file, or verify a large one (claims F1-F7).",
    after_help = "--mode bulk is accepted as a spelling of --bulk.\n\nExamples:\n  mmap-reader                     (with mmap-writer in another terminal)\n  mmap-reader --mode stream --wait block\n  mmap-reader --mode bulk --compare-read"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub map: MapArgs,

    /// Bulk mode (F2, F3): verify the file mmap-writer --bulk filled, through the map.
    #[arg(long)]
    pub bulk: bool,

    /// Bulk: verify the file a second time with plain read() calls and compare (F3).
    #[arg(long)]
    pub compare_read: bool,

    /// Bulk: leave the file in place after verifying it (to read it again).
    #[arg(long)]
    pub keep: bool,
}

/// Entry point of the `mmap-reader` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs mmap-reader with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(crate::rewrite_bulk_mode(argv));
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: bulk or a ring mode.
pub fn run(args: Args) -> Result<ExitCode> {
    // A SIGBUS from a map is fatal; this handler only says why before the process dies.
    crate::explain_sigbus()?;
    if args.bulk {
        run_bulk(&args)
    } else {
        run_ring(&args)
    }
}

/// Ring modes: the same protocol as `shm`, over a mapped file.
fn run_ring(args: &Args) -> Result<ExitCode> {
    let c = &args.common;
    let OpenRing { rf, setup, opts } = args.map.open_ring(c, Role::Reader, PROGRAM)?;
    narrate!(
        "reading frames from ring 0 of the mapped file: loads from shared pages, no read() calls; waiting ({}) when it is empty",
        args.map.wait
    );
    let mut src = rf.region.consumer(Direction::WriterToReader, opts)?;
    let mut sync_note = None;
    let end = if c.mode == Mode::Pingpong {
        let back = rf.region.producer(Direction::ReaderToWriter, opts)?;
        let mut sink = SyncSink::new(back, args.map.sync.then(|| rf.map.clone()));
        let end = run_reader(&setup, &mut src, Some(&mut sink))?;
        sync_note = sink.note();
        end
    } else {
        run_reader::<_, NoWayBack>(&setup, &mut src, None)?
    };
    let peer = rf.peer_pid;
    let mut report = match end {
        ReaderEnd::Finished(r) => *r,
        // On these error paths rf.owned is dropped, which removes the file.
        ReaderEnd::NoEnd { received } | ReaderEnd::Truncated { received, .. } => bail!(
            "the writer (pid {peer}) is gone after {received} messages without sending End: it did not finish"
        ),
    };
    drop(src);
    let (created, flavour, path) = (rf.created, rf.flavour.clone(), rf.path.clone());
    // The pair is done: this side removes the file (the writer already let go of it).
    drop(rf.region);
    rf.owned.remove()?;
    report.notes.push(format!(
        "ring file {} on {flavour}, {} bytes per direction, {}",
        path.display(),
        args.map.capacity,
        if created {
            "created here"
        } else {
            "created by the writer"
        }
    ));
    report.notes.extend(sync_note);
    conclude(&report, c.json)
}

/// Bulk mode: wait for a complete file, verify it through the map (and with read()).
fn run_bulk(args: &Args) -> Result<ExitCode> {
    let c = &args.common;
    let path = file_path(c.name_or(DEFAULT_BULK_NAME), args.map.path.as_deref())?;
    let deadline = Instant::now() + c.timeout;

    // 1. The file, and its completion marker: the writer may still be at work (F2: or it
    //    finished long ago; the data outlived it).
    let (file, header) = wait_for_complete(&path, deadline, c.timeout)?;
    let ino = check_file(&file, &path)?.ino;
    let flavour = fs_kind(&file);
    // Ours from here: removed when verified (or on an error), unless --keep.
    let owned = (!args.keep).then(|| own_file_checked(&path, ino));

    // 2. Map it. Map::open checks the length with fstat first (F7).
    let len = usize::try_from(header.file_len())
        .context("the file does not fit the address space (F6)")?;
    let map = Map::open(&file, &path, len, args.map.populate)?;
    // The Acquire load that pairs with the writer's Release store of the marker: after it,
    // every block the writer stored is visible through our map.
    if map.load_u32_acquire(bulk::STATE_OFFSET)? != bulk::STATE_COMPLETE {
        bail!(
            "{}: the completion marker went back to 0 after we saw 1",
            path.display()
        );
    }
    let mut fields = [0u8; bulk::FIELDS_LEN];
    map.read_bytes(0, &mut fields)?;
    if Header::decode(&fields).ok() != Some(header) {
        bail!(
            "{}: the header changed between pread and mmap; another program is writing this file",
            path.display()
        );
    }
    if !c.quiet {
        show_maps(&path);
    }
    let age = now_ns().saturating_sub(header.done_ns);
    let gone = if ring::peer_gone(header.writer_pid) {
        "has exited"
    } else {
        "is still running"
    };
    narrate!(
        "the writer (pid {}, which {gone}) finished this file {} ago; the data is in the file, not in the writer (F2)",
        header.writer_pid,
        fmt_ns(age)
    );

    // 3. Verify through the map: loads straight from the page cache, no copy, a page fault
    //    the first time each page (or group of pages) is touched.
    narrate!("verifying {} blocks through the map ...", header.blocks());
    let (minor0, major0) = page_faults();
    let cpu0 = CpuTime::now();
    let t0 = now_ns();
    for b in 0..header.blocks() {
        let (off, blen) = header.block_range(b);
        if let Some(m) = map.verify_pattern(off, blen, bulk::block_seed(header.nonce, b))? {
            bail!(
                "block {b} (file offset {}) differs from the writer's pattern: expected {:#018x}, found {:#018x}",
                off + m.offset,
                m.expected,
                m.found
            );
        }
    }
    let map_ns = now_ns() - t0;
    let cpu = CpuTime::now().since(cpu0);
    let (minor1, major1) = page_faults();
    let map_rate = header.data_len as f64 / (map_ns.max(1) as f64 / 1e9);
    let mut notes = vec![
        format!(
            "file {} on {flavour}, {} bytes of data, every block verified",
            path.display(),
            header.data_len
        ),
        format!(
            "through the map (mmap + loads): {} in {} ({} minor, {} major page faults, one per {} KiB read)",
            fmt_rate(map_rate),
            fmt_ns(map_ns),
            minor1 - minor0,
            major1 - major0,
            header.data_len / 1024 / (minor1 - minor0 + major1 - major0).max(1)
        ),
    ];
    narrate!("{}", notes[1]);
    drop(map);

    // 4. The same check with read(): the kernel copies each page into our buffer (F3).
    if args.compare_read {
        let (read_ns, calls) = verify_with_read(&file, &path, &header)?;
        let read_rate = header.data_len as f64 / (read_ns.max(1) as f64 / 1e9);
        let line = format!(
            "with read() (1 MiB per call, {calls} calls): {} in {}; map/read = {:.2}",
            fmt_rate(read_rate),
            fmt_ns(read_ns),
            map_rate / read_rate
        );
        narrate!("{line}");
        notes.push(line);
        notes.push(format!(
            "read_bytes_per_s={read_rate:.0} map_bytes_per_s={map_rate:.0}"
        ));
    }
    drop(file);
    if let Some(o) = owned {
        o.remove()?;
    } else {
        narrate!("--keep: {} stays for another run", path.display());
    }

    let mut report = Report {
        program: PROGRAM.into(),
        role: "reader".into(),
        mechanism: MECHANISM.into(),
        flavour,
        mode: "bulk".into(),
        wait: "poll".into(),
        size_bytes: bulk::BLOCK_SIZE as u64,
        count: header.blocks(),
        bytes: header.data_len,
        verified: true,
        elapsed_ns: map_ns,
        notes,
        ..Report::default()
    };
    report.set_rates(cpu);
    conclude(&report, c.json)
}

/// Waits for the file to exist and carry a complete header; polls every 10 ms.
///
/// The header is read with `pread`, not through a map: a file that is still 0 bytes long,
/// or shorter than it should be, cannot SIGBUS a `pread` (F7).
fn wait_for_complete(path: &Path, deadline: Instant, timeout: Duration) -> Result<(File, Header)> {
    let mut said = "";
    let give_up = |what: &str| -> Result<(File, Header)> {
        bail!(
            "timed out after {:.1} s waiting for {what} (--timeout)",
            timeout.as_secs_f64()
        )
    };
    loop {
        let Some(file) = open_existing(path, false)? else {
            if said != "file" {
                narrate!(
                    "waiting for {} to appear: mmap-writer --mode bulk creates it",
                    path.display()
                );
                said = "file";
            }
            if Instant::now() > deadline {
                return give_up("the writer to create the file");
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let facts = check_file(&file, path)?;
        let mut buf = [0u8; bulk::FIELDS_LEN];
        let full = pread_exact(&file, path, 0, &mut buf)?;
        let h = if full {
            Header::decode(&buf)
        } else {
            Err(HeaderError::Short(facts.len as usize))
        };
        match h {
            Ok(h) if h.state == bulk::STATE_COMPLETE => return Ok((file, h)),
            Ok(h) if ring::peer_gone(h.writer_pid) => {
                // The writer died before its completion marker: the file is stale.
                remove_if_same(path, facts.ino)
                    .with_context(|| format!("unlink {}", path.display()))?;
                bail!(
                    "the writer (pid {}) died before finishing {}: the file is incomplete; removed it as stale",
                    h.writer_pid,
                    path.display()
                );
            }
            Ok(h) => {
                if said != "marker" {
                    narrate!(
                        "writer pid {} is still filling the file; waiting for its completion marker (polling the header)",
                        h.writer_pid
                    );
                    said = "marker";
                }
            }
            Err(HeaderError::NoHeaderYet | HeaderError::Short(_)) => {}
            Err(e) => bail!("{}: {e}", path.display()),
        }
        if Instant::now() > deadline {
            return give_up("the writer to finish the file");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Verifies the data again with plain `read()` calls into a 1 MiB buffer; returns the time
/// and the number of calls.
fn verify_with_read(file: &File, path: &Path, h: &Header) -> Result<(u64, u64)> {
    const CHUNK_BLOCKS: usize = 16;
    let mut f = file;
    let mut buf = vec![0u8; bulk::BLOCK_SIZE * CHUNK_BLOCKS];
    f.seek(SeekFrom::Start(bulk::HEADER_LEN as u64))
        .with_context(|| format!("lseek {}", path.display()))?;
    let mut calls = 0u64;
    let t0 = now_ns();
    let mut b = 0u64;
    while b < h.blocks() {
        // One read() of up to 16 blocks; the last chunk may be shorter.
        let (first_off, _) = h.block_range(b);
        let n = ((h.data_len as usize + bulk::HEADER_LEN - first_off).min(buf.len())) as usize;
        let chunk = &mut buf[..n];
        let mut got = 0;
        while got < n {
            let r = f
                .read(&mut chunk[got..])
                .with_context(|| format!("read {}", path.display()))?;
            if r == 0 {
                bail!(
                    "{}: end of file after {} bytes; it was truncated (F7)",
                    path.display(),
                    first_off + got
                );
            }
            got += r;
            calls += 1;
        }
        for (i, blk) in chunk.chunks(bulk::BLOCK_SIZE).enumerate() {
            let bi = b + i as u64;
            if let Some(m) = bulk::verify_slice(blk, bulk::block_seed(h.nonce, bi)) {
                bail!(
                    "read(): block {bi} differs at byte {}: expected {:#018x}, found {:#018x}",
                    m.offset,
                    m.expected,
                    m.found
                );
            }
        }
        b += n.div_ceil(bulk::BLOCK_SIZE) as u64;
    }
    Ok((now_ns() - t0, calls))
}
