//! socket-reader: the server. Listens, accepts one writer and receives its messages.
//!
//! Run it in two terminals, in either order (K2). It needs no `--mode`, `--size` or
//! `--count`: it runs whatever the writer's Hello says (given, each is a check on it).
//! ```text
//! terminal 1: socket-reader                         # TCP 127.0.0.1:47400
//! terminal 2: socket-writer                         # type lines; Ctrl-D ends both
//! socket-reader --unix --show-reads                 # per message: how many read() calls (K5)
//! socket-reader --tcp 127.0.0.1:0                   # the kernel picks a port; printed below
//! socket-reader --listen 0.0.0.0:47400              # reachable from other machines (K3)
//! ```
//!
//! System calls, in order:
//! 1. TCP: `socket(AF_INET, SOCK_STREAM)`, `setsockopt(SO_REUSEADDR)`, `bind` (EADDRINUSE:
//!    the port is taken), `listen`. Unix: `lstat` of the path; for an existing socket
//!    file, a read of /proc/net/unix, then a `connect` probe (removed only if refused:
//!    nobody listens, it is stale); `umask(0177)` + `bind` (the file is created 0600) +
//!    `listen`. A reader already there, listening or with its writer, is named with its
//!    pid (`who.rs`). `getsockname`: the port.
//! 2. `poll(POLLIN)` on the listening socket, so the wait ends at `--timeout`, then
//!    `accept`: the kernel has completed the handshake, and accept hands over the connection.
//!    `close` of the listening socket: one writer. `getpeername`/`SO_PEERCRED`: who it is.
//! 3. `setsockopt(SO_RCVBUF)` if `--sock-buf` asks, `setsockopt(SO_BUSY_POLL)` if
//!    `--busy-poll` does (`options::tune_reader`, which says what busy polling trades).
//! 4. The loop: `read` into a 1 MiB buffer (128 KiB over TCP): whatever has arrived, which is neither one
//!    message nor a whole number of them (K5); the header's length field puts the messages
//!    back together. The first frame is the writer's Hello: this reader takes its mode and
//!    size, sets `TCP_NODELAY` in pingpong, and answers with one `write` of its own Hello
//!    (`handshake.rs`). `write` of each Pong on the same connection. `read` returns 0
//!    when the writer closes: after End a clean finish, before it the writer died (exit 1).
//! 5. `unlink` of the Unix socket file; `close` of the connection.
//!
//! Start order: either (the writer retries `connect` until this side listens).
//! Cleanup: a Unix socket file stays in the file system after `close`; this side removes
//! it when the pair is done, on errors and on Ctrl-C. A TCP port needs no cleanup. A
//! client that sends anything but frames is disconnected, with why ("not an ipc-study
//! frame ..."), exit 1.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{parse_size, ExpectArgs, MeetArgs, OutputArgs, Program};
use common::frame::{Reassembler, DEFAULT_READ_BUFFER, MAX_PAYLOAD};
use common::narrate;
use common::session::{conclude, Action, ReaderSession};
use common::setup::{Setup, Wait};
use common::stream::{self, Delivery};

use crate::rendezvous::{self, EndpointArgs};
use crate::{handshake, options, reads};
use crate::{Stream, MECHANISM};

/// How much one `read(2)` asks for over TCP: two 64 KiB frames. More was slower over TCP
/// loopback on the development VM: a 64 KiB stream (five interleaved runs, 2026-12-02) moved
/// 2.37 GB/s (median) with 128 KiB reads, 1.83 with 256 KiB, 1.72 with 512 KiB and 1.53
/// with 1 MiB, against 2.4 GB/s for the bare loop's 64 KiB reads. The likely cause: a large
/// read keeps copying in the kernel for as long as segments arrive, and the receive window
/// the writer waits for opens when it returns. A Unix socket has no window and reads up to
/// 1 MiB (`DEFAULT_READ_BUFFER`), which drains many frames per call (on an earlier day,
/// 128 KiB reads cost Unix 25-40 %; on this one they made no difference). A frame larger
/// than the buffer grows it to fit.
const TCP_READ_BUFFER: usize = 128 << 10;

/// Program name, in narration and reports.
pub const PROGRAM: &str = "socket-reader";

/// Command line of socket-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Listen on TCP or a Unix domain socket, accept socket-writer and receive its messages (claims K1-K5).",
    after_help = "Examples (start socket-writer with the same --tcp/--unix in another terminal; this reader follows its --mode, --size, --count):\n  socket-reader\n  socket-reader --unix --show-reads\n  socket-reader --listen 0.0.0.0:47400"
)]
pub struct Args {
    #[command(flatten)]
    pub run: ExpectArgs,
    #[command(flatten)]
    pub meet: MeetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// Listen on this TCP address, e.g. 0.0.0.0:47400 for other machines (K3). Open to anyone who can reach it.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["tcp", "unix"])]
    pub listen: Option<String>,

    /// Receive buffer (SO_RCVBUF; the kernel doubles it, and setting it turns TCP's autotuning off) [default: the kernel's].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub sock_buf: Option<usize>,

    /// TCP, pingpong: leave Nagle's algorithm on for the Pongs (no TCP_NODELAY), to see what it costs.
    #[arg(long, conflicts_with = "unix")]
    pub nagle: bool,

    /// TCP (SO_BUSY_POLL): a read() with nothing to take polls the network card's queue for up to this many µs instead of sleeping, trading a CPU, busy while it waits, for quicker wake-ups. Above net.core.busy_read it needs CAP_NET_ADMIN; over loopback there is no queue to poll.
    #[arg(long, value_name = "MICROSECONDS", conflicts_with = "unix", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub busy_poll: Option<u32>,

    /// Print, per message, how many read() calls it took (K5). For study, not for timing.
    #[arg(long)]
    pub show_reads: bool,

    /// Largest message accepted; a longer length is refused before anything is allocated.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_size: usize,
}

common::program!(Args, name = crate::DEFAULT_NAME);

/// The program: listen, accept one writer, read until End, clean up.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common();
    // Every flag is checked (and the host name resolved) before any socket exists.
    let ep = rendezvous::resolve(&args.endpoint, args.listen.as_deref(), c)?;
    options::check_busy_poll(args.busy_poll)?;
    let mut setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: ep.flavour(),
        // read sleeps in the kernel until bytes arrive.
        wait: Wait::Block,
        args: c.clone(),
        max_payload: args.max_size.min(MAX_PAYLOAD),
    };

    // 1. socket, bind, listen (the stale-file and one-reader checks are in rendezvous.rs).
    let flag = args.listen.as_ref().map_or("--tcp", |_| "--listen");
    let (listener, socket_file) = rendezvous::listen(&ep, flag)?;
    // For port 0 the kernel chose the port: say which (tests and scripts parse this line).
    let bound = listener.local()?;
    narrate!(
        "listening on {bound} (K2: this reader is the server); waiting for socket-writer to connect: accept() blocks until a client arrives, up to {:?}",
        c.timeout
    );
    // 2. poll + accept.
    let Some(conn) = listener.accept_within(c.timeout)? else {
        bail!(
            "no writer connected to {bound} within {:?}: start socket-writer with the same --tcp/--unix, or raise --timeout",
            c.timeout
        );
    };
    // One writer: close the listening socket, so a second client is refused, not queued.
    drop(listener);
    let peer = conn.peer();
    narrate!("accepted a connection from {peer}");
    let mut notes = vec![format!("accepted {peer} on {bound}")];

    // 3. SO_RCVBUF, SO_BUSY_POLL.
    notes.extend(options::tune_reader(&conn, args.sock_buf, args.busy_poll)?);

    // 4. The loop: the session says what each frame asks for; the calls are in receive.
    narrate!("reading: read() blocks until bytes arrive, and returns whatever has arrived (K5); the writer's Hello comes first");
    let mut session = ReaderSession::new(&setup);
    let read_size = match conn {
        Stream::Tcp(_) => TCP_READ_BUFFER,
        _ => DEFAULT_READ_BUFFER,
    };
    let mut frames = Reassembler::with_capacity(setup.max_payload, read_size);
    let ended = receive(&mut session, &mut setup, &mut frames, &conn, &args);
    // 5. The pair is done (or failed): the socket file goes either way.
    if let Some(f) = socket_file {
        f.remove()?;
    }
    let ended = ended.with_context(|| format!("reading from {peer}; closed the connection"))?;
    if let Ended::WriterLeft(cut) = ended {
        return Err(session.writer_left("the connection", cut));
    }
    let mut report = session.finish();
    notes.push(format!(
        "{} read() calls for {} messages (K5: a stream has no message boundaries)",
        frames.reads(),
        report.count + report.warmup
    ));
    report.notes.extend(notes);
    conclude(&report, c.json)
}

/// How the loop ended: End came, or the writer left first (`(have, need)` mid-frame).
enum Ended {
    End,
    WriterLeft(Option<(usize, usize)>),
}

/// Step 4: `read` whatever has arrived, hand each whole frame to the session, do what it
/// says: follow and answer the Hello, print a line, send a Pong back on the same socket.
fn receive(
    s: &mut ReaderSession,
    setup: &mut Setup,
    frames: &mut Reassembler,
    mut conn: &Stream,
    args: &Args,
) -> Result<Ended> {
    let mut stdout = io::stdout().lock();
    // Reads done when the previous frame came out (K5: how many the next one took).
    let mut shown = 0;
    loop {
        let reads = frames.reads();
        // One read may have completed no frame, one, or many.
        while let Some((header, payload)) = frames.next_frame()? {
            if args.show_reads {
                reads::show(&header, payload.len(), shown, reads);
                shown = reads;
            }
            match s.on_frame(&header, payload)? {
                // The session checked the Hello against this reader's flags: run what it
                // says, TCP_NODELAY in pingpong, write(2) of this reader's answer.
                Action::Hello(h) => handshake::follow(h, &header, setup, conn, args.nagle)?,
                Action::Continue => {}
                Action::Print(line) => writeln!(stdout, "{line}").context("writing to stdout")?,
                // write(2) of the Pong on the connection the Ping came in on (K1), header and
                // payload joined first (a long Pong goes by writev(2), stream::write_frame): a
                // socket is two-way, so the way back is always there.
                Action::Echo(pong) => {
                    if stream::write_frame(&mut conn, pong)? == Delivery::PeerGone {
                        return Ok(Ended::WriterLeft(None));
                    }
                }
                Action::Done => return Ok(Ended::End),
            }
        }
        // read(2) blocks until bytes arrive; 0 once the writer has closed (FIN) or reset.
        if stream::read(&mut conn, frames)? == 0 {
            return Ok(Ended::WriterLeft(frames.cut()));
        }
    }
}
