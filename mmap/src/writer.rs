//! mmap-writer: sends messages to mmap-reader through a file both programs map.
//!
//! Run it in two terminals (either one first):
//! ```text
//! mmap-writer                                   # text: type lines       | mmap-reader
//! mmap-writer --mode stream --size 64K          #                        | mmap-reader
//! mmap-writer --mode pingpong --wait spin       #                        | mmap-reader --wait spin
//! mmap-writer --path /dev/shm/x.map --mode stream   # tmpfs: no disk behind the pages
//! mmap-writer --mode stream --sync --count 1000 --path /var/tmp/x.map   # msync per publish (F5)
//! mmap-writer --mode bulk --file-size 1G        # F2, F3: crate::bulk::writer
//! mmap-writer --demo-truncate                   # F7: crate::truncate
//! ```
//!
//! System calls, in order:
//! 1. `sigaction(SIGBUS)`: a handler that says why and which file, if the file is cut
//!    under the map or its file system is full (F7), and removes the file if it is ours
//!    ([`crate::sigbus`]); SIGXFSZ ignored, so `ulimit -f` is an error, not a death.
//! 2. The rendezvous ([`rendezvous::open_ring`], a first reading may skip it): `statvfs`
//!    (room for the whole ring: a full file system would be SIGBUS, not ENOSPC), then
//!    `open(O_CREAT|O_EXCL|O_NOFOLLOW, 0600)` of `<runtime dir>/<name>.map`. Whoever comes
//!    first creates the file and sizes it with `ftruncate` *before* mapping it (F7: a new
//!    file is 0 bytes, and touching a map past the end of its file is SIGBUS); the other
//!    gets EEXIST, `open`s it and looks at it with `fstat` and `pread` before mapping (a
//!    file of a killed run is `unlink`ed and replaced). Both `mmap(MAP_SHARED)`; the
//!    creator sleeps in `futex(FUTEX_WAIT)` until the opener attaches and wakes it.
//! 3. Per message, in text mode first `kill(pid, 0)`: is the reader still there? (The
//!    ring has room for many lines, so nothing else would notice a dead reader.) The first
//!    message is the Hello: what this writer runs (mode, size, count, warm-up, wait, the
//!    ring's capacity), which the reader follows.
//! 4. [`Producer::reserve`]: loads of the reader's index, `futex(FUTEX_WAIT)` only while
//!    the ring is full (a wait over half a second is narrated as it starts and ends: P6's
//!    analogue for a ring, [`crate::reserve_room`]); [`Producer::copy_in`]: plain stores
//!    into the mapped page, no system call; [`Producer::publish`]: a Release store of our
//!    index, `futex(FUTEX_WAKE)` only if the reader said it sleeps.
//! 5. With `--sync`, `msync(MS_SYNC)` after each publish (F5).
//! 6. Pingpong: [`Consumer::recv`] takes the Pong from ring 1.
//! 7. Text: `read(0)` for the next line typed.
//! 8. `munmap` as the map is dropped. The file stays for the reader, which removes it.
//!
//! One writer per file: a second one is refused with the pid of the one already there
//! (the ring header records both processes). Start order and cleanup: either program may
//! start first (the rendezvous). When the pair is done the reader removes the file; on an
//! error, Ctrl-C or a dead peer, whichever side notices removes it.
//!
//! [`Producer::reserve`]: common::ring::Producer::reserve
//! [`Producer::copy_in`]: common::ring::Producer::copy_in
//! [`Producer::publish`]: common::ring::Producer::publish
//! [`Consumer::recv`]: common::ring::Consumer::recv

use std::io::{self, BufRead};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use common::cli::{MeetArgs, Mode, OutputArgs, Program, RunArgs};
use common::frame::Kind;
use common::narrate;
use common::ring::{Direction, EndOpts, RingError, Role, Wait};
use common::session::{conclude, FrameBuf, Next, WriterSession};
use common::setup::Setup;
use common::stall::TELL_AFTER;
use common::timing::Report;

use crate::pair::reader_gone as gone;
use crate::rendezvous::{self, OpenRing, RingFile};
use crate::{bulk, full_ring, reserve_room, sigbus, truncate, MapArgs, Msync};

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
    pub run: RunArgs,

    #[command(flatten)]
    pub meet: MeetArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    #[command(flatten)]
    pub map: MapArgs,

    /// How this side waits for room in the ring (and, in pingpong, for each Pong): spin,
    /// block (futex), adaptive (spin ~20 us, then futex); each side of a ring waits its own way.
    #[arg(long, value_enum, default_value_t = Wait::Adaptive)]
    pub wait: Wait,

    #[command(flatten)]
    pub bulk: bulk::writer::Flags,

    /// F7: truncate a mapped file in a child process and touch past the new end (SIGBUS).
    #[arg(long, conflicts_with_all = ["on", "mode", "count", "size", "warmup", "wait", "capacity"])]
    pub demo_truncate: bool,
}

common::program!(Args);

/// The program: the F7 demo, bulk, or a ring mode (steps 1 to 8 of the module docs).
pub fn run(args: Args) -> Result<ExitCode> {
    // 1. A SIGBUS from a map is fatal; the handler says why and cleans up before death.
    sigbus::install(PROGRAM)?;
    if args.demo_truncate {
        return truncate::demo(args.map.path.as_deref());
    }
    let c = &args.common();
    if args.bulk.on {
        return bulk::writer::run(c, &args.map, &args.bulk);
    }
    // 2. Meet the reader at the file, in either start order.
    let OpenRing { rf, setup, opts } =
        rendezvous::open_ring(&args.map, c, args.wait, Role::Writer, PROGRAM)?;
    let mut msync = Msync::new(args.map.sync.then(|| rf.map.clone()));
    if args.map.sync {
        narrate!("--sync: msync(MS_SYNC) after every frame; the reader does not need it to see the data (F5)");
    }
    narrate!(
        "writing frames into ring 0 of the mapped file: plain stores, no write() calls; when the ring is full, waiting ({}) for the reader to consume{}",
        args.wait,
        if c.mode == Mode::Pingpong { "; each Pong comes back through ring 1" } else { "" }
    );
    let mut report = send_all(&setup, &rf, opts, &mut msync)?;
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
    report.notes.extend(msync.note());
    // 8. A clean end: the reader removes the file once it has read End.
    rf.release();
    conclude(&report, c.json)
}

/// The loop: the session says what goes next, the ring's calls move it (steps 3 to 7).
fn send_all(setup: &Setup, rf: &RingFile, opts: EndOpts, msync: &mut Msync) -> Result<Report> {
    // Ring 0 carries our frames; ring 1 brings the Pongs back (both sides write, S4). A
    // wait for room returns every half second at most, so a full ring is narrated as it
    // happens; --timeout is counted across those returns (none in text mode).
    let room = EndOpts {
        idle_timeout: Some(TELL_AFTER.min(setup.args.timeout)),
        ..opts
    };
    let mut tx = rf.region.producer(Direction::WriterToReader, room)?;
    let mut rx = rf.region.consumer(Direction::ReaderToWriter, opts)?;
    let text = setup.mode() == Mode::Text;
    let (mut full, limit) = (full_ring(), (!text).then_some(setup.args.timeout));
    // Lines come slowly and the ring holds many, so text mode watches the reader itself.
    let watch = text.then_some(rf.peer);
    if text {
        narrate!(
            "type a line and press Enter to send it as one message; Ctrl-D (end of input) ends"
        );
    }
    // The Hello states the ring's capacity too; `hello` is the bytes it takes in ring 0.
    let mut session = WriterSession::new(setup).capacity(rf.region.capacity() as u64);
    let mut hello = 0;
    let mut frame = FrameBuf::new();
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        match session.next(&mut frame)? {
            Next::Send(out) => {
                if out.kind == Kind::Hello {
                    hello = common::ring::record_len(out.payload.len()) as u64;
                }
                // 3. kill(pid, 0) and /proc/PID/stat: the reader exists and is the process
                // that attached (same start time), not a later one that got its pid.
                if let Some(pid) = watch.filter(|who| !who.alive()).map(|who| who.pid) {
                    return Err(gone(&session, rf, hello, RingError::PeerGone { pid }));
                }
                // 4. Wait for room, store header and payload into the map, publish.
                let slot = reserve_room(&mut tx, out.payload.len(), &mut full, limit)
                    .map_err(|e| gone(&session, rf, hello, e))?;
                tx.copy_in(&slot, out.header, out.payload)?;
                tx.publish(slot);
                // 5. The reader sees the frame already; msync is for the copy on the disk.
                msync.after_publish()?;
            }
            Next::AwaitAnswer => {
                // 6. The Pong: wait for it in ring 1, copy it out, check it.
                let (pong, payload) = rx.recv().map_err(|e| gone(&session, rf, hello, e))?;
                session.answer(&pong, payload)?;
            }
            Next::NeedLine => {
                // 7. read(2) until a newline; 0 bytes is end of input (Ctrl-D).
                line.clear();
                match stdin
                    .read_until(b'\n', &mut line)
                    .context("reading stdin")?
                {
                    0 => session.end_of_input(),
                    _ => session.push_line(&line),
                }
            }
            Next::Done => break,
        }
    }
    let mut report = session.finish();
    report.notes.extend(full.note());
    Ok(report)
}
