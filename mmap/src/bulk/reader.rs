//! `mmap-reader --bulk` (F2, F3): waits for a complete bulk file, verifies every block
//! through its own map and, with `--compare-read`, again with plain `read()` calls.
//!
//! ```text
//! mmap-writer --mode bulk --file-size 1G        | mmap-reader --mode bulk --compare-read   # now or later
//!                                               | mmap-reader --mode bulk --offset 1M --length 2M   # a window (F1)
//! ```
//!
//! System calls, in order:
//! 1. Wait for the file and its completion marker: `open(O_NOFOLLOW)` and `pread` of the
//!    header every 10 ms (a `pread` past the end of a short file returns short, never
//!    SIGBUS), `nanosleep` in between; `fstat` (owner, type). A file whose writer died
//!    before the marker (no process with its pid and start time) is `unlink`ed as stale;
//!    a writer seen at work that dies and whose file then vanishes or is cut ends the wait.
//! 2. `fstat` (the length, F7) and `mmap(MAP_SHARED)` read-only: the whole file, or with
//!    `--offset`/`--length` only that window of it (F1: `mmap`'s offset, a multiple of the
//!    page size; a window that does not fit the file is a bad flag value, status 2), plus a one-page map of the header; an Acquire load of the marker through
//!    the map, then the header again.
//! 3. Loads from every page, no system call: the first touch of each mapped piece is a
//!    page fault, no copy (`getrusage` counts them).
//! 4. With `--compare-read`: `lseek` and `read()` calls of 1 MiB into a buffer over the
//!    same file: a copy per byte, no page faults on our side. Both are timed (F3).
//! 5. `munmap`, `close`, then `unlink`, unless `--keep`.
//!
//! If the file is cut under the map while this reader verifies it, the load that faults is
//! SIGBUS: the handler ([`crate::sigbus`]) names the file and removes it (unless `--keep`),
//! and the process dies of the signal.
//!
//! It polls by sleeping, so the report says wait `block`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::cli::{bad_flag, CommonArgs};
use common::narrate;
use common::peer::Identity;
use common::ring::Role;
use common::session::conclude;
use common::timing::{fmt_ns, fmt_rate, now_ns, CpuTime};

use super::{Header, HeaderError, Measured};
use crate::reader::PROGRAM;
use crate::rendezvous::{check_file, open_existing, own_file_checked, pread_exact, remove_if_same};
use crate::DEFAULT_BULK_NAME;
use crate::{bulk, file_path, fs_kind, page_faults, show_maps, sigbus, Map, MapArgs};

/// mmap-reader's bulk flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Flags {
    /// Bulk mode (F2, F3): verify the file mmap-writer --bulk filled, through the map.
    #[arg(long = "bulk", conflicts_with_all = ["mode", "count", "size", "warmup", "wait", "capacity"])]
    pub on: bool,

    /// Bulk: verify the file a second time with plain read() calls and compare (F3).
    #[arg(long)]
    pub compare_read: bool,

    /// Bulk: leave the file in place after verifying it (to read it again).
    #[arg(long)]
    pub keep: bool,

    /// Bulk: map only a window of the file from this byte offset, a multiple of the page size (F1).
    #[arg(long, value_name = "BYTES", requires = "on", conflicts_with = "compare_read",
          value_parser = bulk::parse_window_bytes)]
    pub offset: Option<u64>,

    /// Bulk: bytes in the window, a multiple of the page size [default: to the end of the file] (F1).
    #[arg(long, value_name = "BYTES", requires = "on", conflicts_with = "compare_read",
          value_parser = bulk::parse_window_bytes)]
    pub length: Option<u64>,
}

/// The file bytes `[start, end)` this reader maps and verifies: all of it, or the window
/// `--offset`/`--length` asked for (F1).
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    end: u64,
}

impl Span {
    /// Whether it is the whole file.
    fn whole(&self, h: &Header) -> bool {
        self.start == 0 && self.end == h.file_len()
    }
}

/// Checks `--offset`/`--length` against the file's real length, before anything is mapped
/// (and before this reader owns the file, so a mistyped flag never removes the data). A
/// window that does not fit is a bad flag value: exit status 2, like clap's own checks.
fn window(f: &Flags, path: &Path, h: &Header) -> Result<Span> {
    let file_len = h.file_len();
    let page = crate::page_size() as u64;
    let start = f.offset.unwrap_or(0);
    if start >= file_len {
        return Err(bad_flag(format!(
            "--offset {start} is not inside {} ({file_len} bytes): the window must start at a multiple of {page} below {file_len}",
            path.display()
        )));
    }
    let end = match f.length {
        None => file_len,
        Some(0) => {
            return Err(bad_flag(format!(
                "--length 0: a window holds at least one page ({page} bytes)"
            )))
        }
        Some(len) if len > file_len - start => {
            return Err(bad_flag(format!(
                "--length {len} at --offset {start} ends past the end of {} ({file_len} bytes); at most {} fits: \
                 touching a map past the end of its file is SIGBUS (F7)",
                path.display(),
                file_len - start
            )))
        }
        Some(len) => start + len,
    };
    if end <= bulk::HEADER_LEN as u64 {
        return Err(bad_flag(format!(
            "--offset {start} --length {}: the window holds only the header page, no data to verify",
            end - start
        )));
    }
    Ok(Span { start, end })
}

/// The bulk reader: steps 1 to 5 of the module docs.
pub fn run(c: &CommonArgs, m: &MapArgs, f: &Flags) -> Result<ExitCode> {
    let path = file_path(c.name_or(DEFAULT_BULK_NAME), m.path.as_deref())?;
    // 1. The file, and its completion marker: the writer may still be at work (F2: or it
    //    finished long ago; the data outlived it).
    let (file, header) = wait_for_complete(&path, c.timeout)?;
    let ino = check_file(&file, &path)?.ino;
    let span = window(f, &path, &header)?;
    let flavour = fs_kind(&file);
    // Ours from here: removed when verified (or on an error or a SIGBUS), unless --keep.
    let owned = (!f.keep).then(|| own_file_checked(&path, ino));
    sigbus::watch(
        "bulk file",
        &path,
        ino,
        header.file_len(),
        !f.keep,
        " (--keep)",
    );
    // 2. Map it (Map::open checks the length with fstat first, F7).
    let map = map_complete(&file, &path, &header, span, m.populate)?;
    if !c.quiet {
        show_maps(&path);
    }
    say_who_wrote_it(&header);
    // 3. Through the map.
    let first = format!(
        "file {} on {flavour}, {} bytes of data, every {} verified",
        path.display(),
        span.end - span.start.max(bulk::HEADER_LEN as u64),
        if span.whole(&header) {
            "block"
        } else {
            "byte of the window"
        }
    );
    let mut verified = verify_map(&map, &header, span, first)?;
    drop(map);
    // 4. The same check with read(): the kernel copies each page into our buffer (F3).
    if f.compare_read {
        let read = compare_read(&file, &path, &header, verified.ns)?;
        verified.notes.extend(read);
    }
    // 5. close, unlink.
    drop(file);
    if let Some(o) = owned {
        o.remove()?;
    } else {
        narrate!("--keep: {} stays for another run", path.display());
    }
    let report = bulk::report(c, PROGRAM, Role::Reader, flavour, verified);
    conclude(&report, c.json)
}

/// F2: the data outlived the writer, which may have exited long ago.
fn say_who_wrote_it(header: &Header) {
    let age = now_ns().saturating_sub(header.done_ns);
    let gone = if header.writer().alive() {
        "is still running"
    } else {
        "has exited"
    };
    narrate!(
        "the writer (pid {}, which {gone}) finished this file {} ago; the data is in the file, not in the writer (F2)",
        header.writer_pid,
        fmt_ns(age)
    );
}

/// Step 2: maps the complete file read-only (or only the window `span` of it, F1) and
/// checks, through a map of the header page, that it is still the file `pread` showed.
fn map_complete(
    file: &File,
    path: &Path,
    header: &Header,
    span: Span,
    populate: bool,
) -> Result<Map> {
    let file_len = header.file_len();
    let len = usize::try_from(span.end - span.start)
        .context("the file does not fit the address space (F6)")?;
    let map = Map::open_window(file, path, span.start, len, file_len, populate)?;
    if !span.whole(header) {
        narrate!(
            "mapped bytes {}..{} of {} only ({len} of its {file_len} bytes): mmap(fd, offset {}) makes a part of a file part of our memory (F1)",
            span.start,
            span.end,
            path.display(),
            span.start
        );
    }
    // A window that starts past the header page cannot see the marker: a second, one-page
    // map of the header, unmapped again at the end of this function.
    let head = if span.start > 0 {
        Some(Map::open_window(
            file,
            path,
            0,
            bulk::HEADER_LEN,
            file_len,
            false,
        )?)
    } else {
        None
    };
    let marker = head.as_ref().unwrap_or(&map);
    // The Acquire load that pairs with the writer's Release store of the marker: after it,
    // every block the writer stored is visible through our map.
    if marker.load_u32_acquire(bulk::STATE_OFFSET)? != bulk::STATE_COMPLETE {
        bail!(
            "{}: the completion marker went back to 0 after we saw 1",
            path.display()
        );
    }
    let mut fields = [0u8; bulk::FIELDS_LEN];
    marker.read_bytes(0, &mut fields)?;
    if Header::decode(&fields).ok().as_ref() != Some(header) {
        bail!(
            "{}: the header changed between pread and mmap; another program is writing this file",
            path.display()
        );
    }
    Ok(map)
}

/// Step 3: loads straight from the page cache, no copy, a page fault the first time each
/// page (or group of pages) is touched. `map` holds file bytes `span`; each block's part
/// in it is checked against that part of the block's pattern.
fn verify_map(map: &Map, h: &Header, span: Span, first: String) -> Result<Measured> {
    narrate!(
        "verifying {} blocks through the map ...",
        h.pieces(span.start, span.end).count()
    );
    let (minor0, major0) = page_faults();
    let cpu0 = CpuTime::now();
    let t0 = now_ns();
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for p in h.pieces(span.start, span.end) {
        let off = (p.file_off - span.start) as usize;
        let seed = bulk::block_seed(h.nonce, p.block);
        if let Some(m) = map.verify_pattern_from(off, p.len, seed, p.first_word)? {
            bail!(
                "block {} (file offset {}) differs from the writer's pattern: expected {:#018x}, found {:#018x}",
                p.block,
                p.file_off + m.offset as u64,
                m.expected,
                m.found
            );
        }
        blocks += 1;
        bytes += p.len as u64;
    }
    let map_ns = now_ns() - t0;
    let cpu = CpuTime::now().since(cpu0);
    let (minor1, major1) = page_faults();
    let line = format!(
        "through the map (mmap + loads): {} in {} ({} minor, {} major page faults, one per {} KiB read)",
        fmt_rate(rate(bytes, map_ns)),
        fmt_ns(map_ns),
        minor1 - minor0,
        major1 - major0,
        bytes / 1024 / (minor1 - minor0 + major1 - major0).max(1)
    );
    narrate!("{line}");
    Ok(Measured {
        blocks,
        bytes,
        ns: map_ns,
        cpu,
        notes: vec![first, line],
    })
}

/// Bytes per second.
fn rate(bytes: u64, ns: u64) -> f64 {
    bytes as f64 / (ns.max(1) as f64 / 1e9)
}

/// Step 4 (`--compare-read`): the read() figures, as report notes.
fn compare_read(file: &File, path: &Path, h: &Header, map_ns: u64) -> Result<Vec<String>> {
    let (read_ns, calls) = verify_with_read(file, path, h)?;
    let (read_rate, map_rate) = (rate(h.data_len, read_ns), rate(h.data_len, map_ns));
    let line = format!(
        "with read() (1 MiB per call, {calls} calls): {} in {}; map/read = {:.2}",
        fmt_rate(read_rate),
        fmt_ns(read_ns),
        map_rate / read_rate
    );
    narrate!("{line}");
    Ok(vec![
        line,
        format!("read_bytes_per_s={read_rate:.0} map_bytes_per_s={map_rate:.0}"),
    ])
}

/// Step 1: waits for the file to exist and carry a complete header; looks every 10 ms.
///
/// The header is read with `pread`, not through a map: a file that is still 0 bytes long,
/// or shorter than it should be, cannot SIGBUS a `pread` (F7). The writer last seen at
/// work is remembered: once it is dead without its marker there is nothing to wait for,
/// whether its file stays (stale), was cut short, or is gone (a writer killed by SIGBUS
/// removes its file as it dies).
fn wait_for_complete(path: &Path, timeout: Duration) -> Result<(File, Header)> {
    let deadline = Instant::now() + timeout;
    let mut said = "";
    let mut seen: Option<Identity> = None;
    loop {
        let file = open_existing(path, false)?;
        let look = file.as_ref().map(|f| read_header(f, path)).transpose()?;
        let dead = seen.filter(|w| !w.alive()).map(|w| w.pid);
        let waiting_for = match (file, look) {
            (Some(file), Some((_, Ok(h)))) if h.state == bulk::STATE_COMPLETE => {
                return Ok((file, h))
            }
            (_, Some((ino, Ok(h)))) if !h.writer().alive() => {
                return Err(stale(path, ino, h.writer_pid, "is incomplete"))
            }
            (_, Some((_, Ok(h)))) => {
                seen = Some(h.writer());
                if said != "marker" {
                    narrate!(
                        "writer pid {} is still filling the file; waiting for its completion marker (polling the header)",
                        h.writer_pid
                    );
                    said = "marker";
                }
                "the writer to finish the file"
            }
            (_, Some((ino, Err(HeaderError::NoHeaderYet | HeaderError::Short(_))))) => {
                if let Some(pid) = dead {
                    return Err(stale(path, ino, pid, "was cut short (its header is gone)"));
                }
                "the writer to finish the file"
            }
            (_, Some((_, Err(e)))) => bail!("{}: {e}", path.display()),
            (_, None) => {
                if let Some(pid) = dead {
                    bail!(
                        "{} is gone, and its writer (pid {pid}), seen filling it, died before finishing it \
                         (a writer killed by SIGBUS removes its file as it dies): nothing to verify",
                        path.display()
                    );
                }
                if said != "file" {
                    narrate!(
                        "waiting for {} to appear: mmap-writer --mode bulk creates it",
                        path.display()
                    );
                    said = "file";
                }
                "the writer to create the file"
            }
        };
        if Instant::now() > deadline {
            bail!(
                "timed out after {:.1} s waiting for {waiting_for} (--timeout)",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The writer (pid `pid`) died before its completion marker: the file `path` (inode `ino`)
/// is stale. Removed, if the path still names that inode; the error says so.
fn stale(path: &Path, ino: u64, pid: i32, state: &str) -> anyhow::Error {
    if let Err(e) = remove_if_same(path, ino) {
        return anyhow::Error::new(e).context(format!("unlink {}", path.display()));
    }
    anyhow::anyhow!(
        "the writer (pid {pid}) died before finishing {}: the file {state}; removed it as stale",
        path.display()
    )
}

/// `fstat` (owner, type) and `pread` of the header fields: the inode and what they say.
fn read_header(file: &File, path: &Path) -> Result<(u64, Result<Header, HeaderError>)> {
    let facts = check_file(file, path)?;
    let mut buf = [0u8; bulk::FIELDS_LEN];
    let h = if pread_exact(file, path, 0, &mut buf)? {
        Header::decode(&buf)
    } else {
        Err(HeaderError::Short(facts.len as usize))
    };
    Ok((facts.ino, h))
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
        let n = (h.data_len as usize + bulk::HEADER_LEN - first_off).min(buf.len());
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
