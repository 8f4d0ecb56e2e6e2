//! shm-writer: sends messages to shm-reader through shared memory (claims S1-S5).
//!
//! Run it in two terminals, in either order:
//! ```text
//! terminal 1: shm-writer                         # type lines; Ctrl-D ends
//! terminal 2: shm-reader
//! shm-writer --mode stream --size 64K --wait spin      # and shm-reader: it follows
//! shm-writer --mode pingpong --wait block --json       # and shm-reader --json
//! shm-writer --sysv ...                                 # and shm-reader --sysv
//! ```
//! While they run, `ls -l /dev/shm` (POSIX) or `ipcs -m` (System V) shows the object (S3).
//!
//! System calls, in order (POSIX, with System V in parentheses):
//! 1. `shm_open(O_CREAT|O_EXCL|O_RDWR, 0600)` (`shmget(IPC_CREAT|IPC_EXCL|0600)`): create
//!    the object exclusively. If it exists (the reader came first): `shm_open(O_RDWR)` +
//!    `fstat` for owner and size (`shmget(key, 0)` + `shmctl(IPC_STAT)`).
//! 2. Creator: `ftruncate` to the fixed size (S2), `mmap(MAP_SHARED)` (`shmat`), POSIX
//!    `fallocate` (every page reserved: a full /dev/shm is ENOSPC now, not SIGBUS later),
//!    `sigaction(SIGBUS)` (a handler that says which object lost a page), write the
//!    header, publish it, `futex(FUTEX_WAIT)` on the header's `opener_pid` until the reader
//!    attaches. Opener: `mmap` (`shmat`), `sigaction(SIGBUS)`, wait for `ready`, write our
//!    pid, `futex(FUTEX_WAKE)`. Steps 1 and 2 are [`rendezvous`](crate::rendezvous()),
//!    which a first reading may skip; a failure after step 1 created the object removes it.
//! 3. The loop, per frame, in ring 0 ([`common::ring::spsc`]); the first frame is the
//!    Hello (mode, size, count, warm-up, wait, the ring's capacity, zero-copy, verify
//!    level), which the reader follows. Text mode first checks that the reader still
//!    exists (`kill(pid, 0)`, `/proc/PID/stat`) and reads each line from stdin (`read`).
//!    `reserve` waits for room (no system call while there is room; spin, or
//!    `futex(FUTEX_WAIT)` on the reader's index while the ring is full; a wait over half a
//!    second is narrated, P6's analogue); `copy_in` copies header and payload into the
//!    shared pages (`copy_nonoverlapping`, no system call); `publish` stores the record's
//!    stamp and our index with Release, and `futex(FUTEX_WAKE)` only if the reader sleeps.
//!    Pingpong: each Pong from ring 1 with `recv` (an Acquire load of its stamp).
//! 4. `--zero-copy`: no payload is copied. `reserve_in_place` reserves (a large frame
//!    then follows the last one instead of going back to the start of the area: nothing
//!    is copied, so nothing is kept in the caches), `frame_mut` lends us the reserved bytes
//!    themselves; the session writes the header and the payload's sequence number there
//!    (the rest is what the slot holds; from 16 KiB up its checksum comes from the slot's
//!    memo, `memo`/`remember`, not a pass over it), then `publish`. Each Pong is read where it lies
//!    (`recv_in_place`: checksum over those bytes, lent to us until the next receive).
//! 5. `munmap` (`shmdt`) when the last handle on the region goes; the object stays.
//!
//! One writer per pair: a second one is refused with the pid of the one already there
//! (the ring header records both processes). Start order: either. Cleanup: the reader
//! removes the object when the pair is done; this program removes it itself only on an
//! error or Ctrl-C (then the reader sees the writer gone). A run killed with `kill -9`
//! leaves the object; the next run finds it stale. A SIGBUS (the object shrunk under us,
//! `src/sigbus.rs`) is explained, the object removed, and the process still dies of
//! SIGBUS (status 135).

use std::io;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use common::cli::{MeetArgs, Mode, OutputArgs, Program, RunArgs};
use common::narrate;
use common::ring::{Consumer, Direction, Producer, Role, Wait};
use common::session::{conclude, FrameBuf, Next, WriterSession};
use common::setup::{Mechanism, Setup};
use common::stream;
use common::timing::Report;

use crate::{reader_gone, rendezvous, Shared, ShmArgs, DEFAULT_NAME};
use common::loans::LoanArgs;

/// Program name, in narration and reports.
pub const PROGRAM: &str = "shm-writer";

/// Command line of shm-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Send messages through shared memory, POSIX or System V (claims S1-S5).",
    after_help = "Examples:\n  shm-writer                     (and shm-reader in another terminal)\n  shm-writer --mode pingpong --wait spin --json\n  shm-writer --zero-copy --mode pingpong --size 64K\n  shm-writer --sysv --mode stream --size 64K --capacity 1M"
)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub meet: MeetArgs,

    #[command(flatten)]
    pub out: OutputArgs,

    #[command(flatten)]
    pub shm: ShmArgs,

    /// How this side waits for room in the ring (and, in pingpong, for each Pong): spin
    /// (busy, fastest), block (futex sleep), adaptive (spin 20 us, then sleep); the reader
    /// waits the same way unless given its own --wait.
    #[arg(long, value_enum, default_value_t = Wait::Adaptive)]
    pub wait: Wait,

    #[command(flatten)]
    pub loans: LoanArgs,
}

common::program!(Args, name = DEFAULT_NAME);

/// The program: check flags, meet the reader, run the mode, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common();
    // Flags first, before any object exists (a bad value exits 2): a frame must fit half
    // a ring, the region the kernel's limit for the flavour; --verify seq needs --zero-copy.
    args.shm.check((c.mode != Mode::Text).then_some(c.size))?;
    args.loans.check()?;
    // 1-2. Create or open the object, map it, meet the reader.
    let shared = rendezvous(&args.shm, c.name_or(DEFAULT_NAME), Role::Writer, c.timeout)?;

    // The producer end of ring 0, our frames'. Every wait checks each 100 ms that the
    // reader's pid still exists (kill -9) and gives up after --timeout (not in text mode:
    // a person types); one over half a second is narrated as it starts and ends.
    let limit = (c.mode != Mode::Text).then_some(c.timeout);
    let opts = shared.end_opts(args.wait, limit);
    let mut tx = shared.region.producer(Direction::WriterToReader, opts)?;
    tx.narrate_full();
    // Pingpong: one Ping at a time, so its records may keep to the start of the ring,
    // where the caches still hold the bytes (RESTART_WINDOW).
    tx.answered_one_at_a_time(c.mode == Mode::Pingpong);
    // Pingpong's way back is ring 1 (S4: both processes read and write the region).
    let back = (c.mode == Mode::Pingpong).then_some(Direction::ReaderToWriter);
    let mut rx = back.map(|d| shared.region.consumer(d, opts)).transpose()?;
    // Each Pong is an answer we wait for: a spinning wait prefetches its second line.
    if let Some(rx) = rx.as_mut() {
        rx.awaits_answers(true);
    }
    // What the report says about this run; a text line may take at most half a ring.
    let setup = Setup {
        program: PROGRAM,
        mechanism: Mechanism::Shm,
        flavour: args.shm.flavour(),
        wait: args.wait,
        args: c.clone(),
        max_payload: shared.region.max_payload(),
    };
    match c.mode {
        Mode::Text => narrate!(
            "type a line and press Enter to send it as one message; Ctrl-D (end of input) ends"
        ),
        m => narrate!(
            "{} mode: {} messages of {} bytes (+{} warm-up), waiting strategy {}",
            m.as_str(),
            c.count,
            c.size,
            c.warmup(),
            args.wait
        ),
    }
    args.loans.say(c.mode == Mode::Text);
    // 3-4. The loop.
    let mut report = send_frames(&setup, &args.loans, &shared, &mut tx, rx.as_mut())?;
    report.notes.push(shared.note());
    report.notes.extend(args.loans.notes());
    // 5. Our endpoints and then the region go: munmap (shmdt). The reader removes the object.
    drop((tx, rx));
    shared.leave();
    conclude(&report, c.json)
}

/// Step 3: the session says what to send; each frame goes into ring 0 with the ring's
/// three calls (built in place with `--zero-copy`), and each Pong comes back from ring 1.
fn send_frames(
    setup: &Setup,
    loans: &LoanArgs,
    shared: &Shared,
    tx: &mut Producer,
    mut rx: Option<&mut Consumer>,
) -> Result<Report> {
    // The session builds each frame in `frame`, our own memory, and says what comes next;
    // its Hello states the ring's capacity, whether frames are lent, and the verify level.
    let mut session = WriterSession::new(setup)
        .capacity(shared.region.capacity() as u64)
        .zero_copy(loans.zero_copy)
        .verify(loans.verify);
    let mut frame = FrameBuf::new();
    // Text mode's lines come from stdin, locked once rather than per line.
    let (mut stdin, mut line) = (io::stdin().lock(), Vec::new());
    loop {
        // 4. Zero-copy: a timed frame is built in the reserved bytes of ring 0 themselves
        // (a loan: the reader reads nothing there before the publish), then published. The
        // payload past its sequence number is what the slot held; the ring's memo of the
        // slot (the CRC of those bytes when we last built a frame there) spares the session
        // a pass over them for the checksum.
        if loans.zero_copy && session.next_is_timed() {
            let slot = tx
                .reserve_in_place(setup.args.size)
                .map_err(|e| reader_gone(&session, tx.peer_index(), e))?;
            let memo = tx.memo(&slot);
            let (_, memo) = session.next_in_slot(tx.frame_mut(&slot), memo)?;
            tx.remember(&slot, memo);
            tx.publish(slot);
            continue;
        }
        match session.next(&mut frame)? {
            Next::Send(out) => {
                // Text mode sends rarely: kill(pid, 0) and /proc/PID/stat say whether the
                // reader still exists (and is the process that attached).
                if setup.mode() == Mode::Text {
                    shared
                        .peer_alive()
                        .map_err(|e| reader_gone(&session, tx.peer_index(), e))?;
                }
                // Room for the frame: free already (no system call), or wait for the reader
                // to consume (spin, or FUTEX_WAIT on its index in the shared page).
                let slot = tx
                    .reserve(out.payload.len())
                    .map_err(|e| reader_gone(&session, tx.peer_index(), e))?;
                // Plain copies into the shared pages; the reader cannot see them yet.
                tx.copy_in(&slot, out.header, out.payload)?;
                // Release store of the record's stamp and our index: the bytes above are
                // visible to an Acquire load of it. FUTEX_WAKE only if the reader sleeps.
                tx.publish(slot);
            }
            Next::AwaitAnswer => {
                let rx = rx.as_deref_mut().context("pingpong without a way back")?;
                // Acquire load of the Pong's stamp in ring 1; copy out and check, or (4.
                // zero-copy) check it where it lies, lent to us until the next receive.
                let pong = if loans.zero_copy {
                    rx.recv_in_place()
                } else {
                    rx.recv()
                };
                let (pong, payload) =
                    pong.map_err(|e| reader_gone(&session, tx.peer_index(), e))?;
                session.answer(&pong, payload)?;
            }
            // Text mode: read(2) on stdin blocks until a line is typed; None is Ctrl-D.
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
