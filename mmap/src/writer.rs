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
//!    (room for the whole ring), `open(O_CREAT|O_EXCL|O_NOFOLLOW, 0600)` of `<runtime
//!    dir>/<name>.map`; the creator sizes it with `ftruncate` *before* mapping it (F7:
//!    touching a map past the end of its file is SIGBUS); the other gets EEXIST, `open`s it
//!    and checks it with `fstat` and `pread` (a killed run's file is replaced). Both
//!    `mmap(MAP_SHARED)`; the creator sleeps in `futex(FUTEX_WAIT)` until the opener wakes it.
//! 3. Per message, in text mode first `kill(pid, 0)`: is the reader still there? (The
//!    ring has room for many lines, so nothing else would notice a dead reader.) The first
//!    message is the Hello: what this writer runs (mode, size, count, warm-up, wait, the
//!    ring's capacity, zero-copy, verify level), which the reader follows.
//! 4. [`Producer::reserve`]: loads of the reader's index, `futex(FUTEX_WAIT)` only while
//!    the ring is full (a wait over half a second is narrated as it starts and ends, P6's
//!    analogue); [`Producer::copy_in`]: plain stores into the mapped page, no system call;
//!    [`Producer::publish`]: a Release store of the record's stamp and our index,
//!    `futex(FUTEX_WAKE)` only if the reader said it sleeps.
//! 5. `--zero-copy`: no copy. [`Producer::reserve_in_place`] reserves (a large frame then
//!    follows the last one rather than going back to the start: nothing copied, nothing
//!    to keep in the caches), and [`Producer::frame_mut`] lends us the reserved bytes of the
//!    map; the session writes the header and the payload's sequence number there (the
//!    rest is what the slot holds), then `publish`.
//! 6. With `--sync`, `msync(MS_SYNC)` after each publish (F5).
//! 7. Pingpong: [`Consumer::recv`] takes the Pong from ring 1 (zero-copy:
//!    [`Consumer::recv_in_place`], checked where it lies, lent until the next receive).
//! 8. Text: `read(0)` for the next line typed.
//! 9. `munmap` as the map is dropped. The file stays for the reader, which removes it.
//!
//! One writer per file: a second one is refused with the pid of the one already there
//! (the ring header records both processes). Start order and cleanup: either program may
//! start first (the rendezvous). When the pair is done the reader removes the file; on an
//! error, Ctrl-C or a dead peer, whichever side notices removes it.
//!
//! [`Producer::reserve`]: common::ring::Producer::reserve
//! [`Producer::reserve_in_place`]: common::ring::Producer::reserve_in_place
//! [`Producer::copy_in`]: common::ring::Producer::copy_in
//! [`Producer::publish`]: common::ring::Producer::publish
//! [`Producer::frame_mut`]: common::ring::Producer::frame_mut
//! [`Consumer::recv`]: common::ring::Consumer::recv
//! [`Consumer::recv_in_place`]: common::ring::Consumer::recv_in_place

use std::io;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use common::cli::{MeetArgs, Mode, OutputArgs, Program, RunArgs};
use common::narrate;
use common::ring::{Direction, EndOpts, RingError, Role, Wait};
use common::session::{conclude, FrameBuf, Next, WriterSession};
use common::setup::Setup;
use common::stream;
use common::timing::Report;

use crate::pair::reader_gone as gone;
use crate::rendezvous::{self, OpenRing, RingFile};
use crate::{bulk, sigbus, truncate, MapArgs, Msync};
use common::loans::LoanArgs;

/// Program name, in narration and reports.
pub const PROGRAM: &str = "mmap-writer";

/// Command line of mmap-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through a memory-mapped file, or fill a large one (claims F1-F7).",
    after_help = "--mode bulk is accepted as a spelling of --bulk.\n\nExamples:\n  mmap-writer                     (then mmap-reader in another terminal)\n  mmap-writer --mode pingpong --wait spin --count 100000\n  mmap-writer --zero-copy --mode pingpong --size 64K\n  mmap-writer --mode bulk --file-size 1G\n  mmap-writer --demo-truncate"
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
    /// block (futex), adaptive (spin ~20 us, then futex); the reader waits the same way
    /// unless given its own --wait.
    #[arg(long, value_enum, default_value_t = Wait::Adaptive)]
    pub wait: Wait,

    #[command(flatten)]
    pub loans: LoanArgs,

    #[command(flatten)]
    pub bulk: bulk::writer::Flags,

    /// F7: truncate a mapped file in a child process and touch past the new end (SIGBUS).
    #[arg(long, conflicts_with_all = ["on", "mode", "count", "size", "warmup", "wait", "capacity", "zero_copy", "verify"])]
    pub demo_truncate: bool,
}

common::program!(Args);

/// The program: the F7 demo, bulk, or a ring mode (steps 1 to 9 of the module docs).
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
    // --verify seq needs --zero-copy (a bad flag, exit 2, before any file exists).
    args.loans.check()?;
    // 2. Meet the reader at the file, in either start order.
    let OpenRing { rf, setup, opts } =
        rendezvous::open_ring(&args.map, c, args.wait, Role::Writer, PROGRAM)?;
    let mut msync = Msync::new(args.map.sync.then(|| rf.map.clone()));
    narrate!(
        "writing frames into ring 0 of the mapped file: plain stores, no write() calls; when the ring is full, waiting ({}) for the reader to consume{}",
        args.wait,
        if c.mode == Mode::Pingpong { "; each Pong comes back through ring 1" } else { "" }
    );
    if c.mode == Mode::Text {
        narrate!(
            "type a line and press Enter to send it as one message; Ctrl-D (end of input) ends"
        );
    }
    args.loans.say(c.mode == Mode::Text);
    let mut report = send_all(&setup, &args.loans, &rf, opts, &mut msync)?;
    report.notes.push(rf.note(Role::Reader));
    report.notes.extend(msync.note());
    report.notes.extend(args.loans.notes());
    // 9. A clean end: the reader removes the file once it has read End.
    rf.release();
    conclude(&report, c.json)
}

/// The loop: the session says what goes next, the ring's calls move it (steps 3 to 8).
fn send_all(
    setup: &Setup,
    loans: &LoanArgs,
    rf: &RingFile,
    opts: EndOpts,
    msync: &mut Msync,
) -> Result<Report> {
    // Ring 0 carries our frames, ring 1 the Pongs back (S4). A wait for room gives up after
    // --timeout (not in text mode: a person types); one over 0.5 s is narrated.
    let text = setup.mode() == Mode::Text;
    let room = EndOpts {
        idle_timeout: (!text).then_some(setup.args.timeout),
        ..opts
    };
    let mut tx = rf.region.producer(Direction::WriterToReader, room)?;
    tx.narrate_full();
    // Pingpong: one Ping at a time, so its records may keep to the start of the ring,
    // where the caches still hold the bytes (RESTART_WINDOW).
    tx.answered_one_at_a_time(setup.mode() == Mode::Pingpong);
    let mut rx = rf.region.consumer(Direction::ReaderToWriter, opts)?;
    // Ring 1 carries Pongs, answers we wait for: a spinning wait prefetches their second line.
    rx.awaits_answers(true);
    // Lines come slowly and the ring holds many, so text mode watches the reader itself.
    let watch = text.then_some(rf.peer);
    // The Hello states the ring's capacity, whether frames are lent, the verify level.
    let mut session = WriterSession::new(setup)
        .capacity(rf.region.capacity() as u64)
        .zero_copy(loans.zero_copy)
        .verify(loans.verify);
    let mut frame = FrameBuf::new();
    let (mut stdin, mut line) = (io::stdin().lock(), Vec::new());
    loop {
        // 5. Zero-copy: a timed frame is built in the reserved bytes of the map (a loan:
        // the reader reads nothing there before the publish), then published.
        if loans.zero_copy && session.next_is_timed() {
            let slot = tx
                .reserve_in_place(setup.args.size)
                .map_err(|e| gone(&session, rf, &tx, e))?;
            // The slot's memo spares the checksum a pass over the payload (as shm-writer).
            let memo = tx.memo(&slot);
            let (_, memo) = session.next_in_slot(tx.frame_mut(&slot), memo)?;
            tx.remember(&slot, memo);
            tx.publish(slot);
            msync.after_publish()?;
            continue;
        }
        match session.next(&mut frame)? {
            Next::Send(out) => {
                // 3. kill(pid, 0) and /proc/PID/stat: the reader exists and is the process
                // that attached (same start time), not a later one that got its pid.
                if let Some(pid) = watch.filter(|who| !who.alive()).map(|who| who.pid) {
                    return Err(gone(&session, rf, &tx, RingError::PeerGone { pid }));
                }
                // 4. Wait for room, store header and payload into the map, publish.
                let slot = tx
                    .reserve(out.payload.len())
                    .map_err(|e| gone(&session, rf, &tx, e))?;
                tx.copy_in(&slot, out.header, out.payload)?;
                tx.publish(slot);
                // 6. The reader sees the frame already; msync is for the copy on the disk.
                msync.after_publish()?;
            }
            Next::AwaitAnswer => {
                // 7. The Pong: wait for it in ring 1, copy it out and check it, or (zero-
                // copy) check it where it lies.
                let pong = if loans.zero_copy {
                    rx.recv_in_place()
                } else {
                    rx.recv()
                };
                let (pong, payload) = pong.map_err(|e| gone(&session, rf, &tx, e))?;
                session.answer(&pong, payload)?;
            }
            // 8. read(2) until a newline; 0 bytes is end of input (Ctrl-D).
            Next::NeedLine => match stream::read_line(&mut stdin, &mut line)? {
                Some(l) => session.push_line(l),
                None => session.end_of_input(),
            },
            Next::Done => break,
        }
    }
    let mut report = session.finish();
    report.notes.extend(tx.full_note());
    Ok(report)
}
