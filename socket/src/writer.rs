//! socket-writer: the client. Connects to socket-reader and sends messages.
//!
//! Run it in two terminals, in either order (K2: the reader is the server):
//! ```text
//! terminal 1: socket-reader                         # TCP 127.0.0.1:47400
//! terminal 2: socket-writer                         # type lines; Ctrl-D ends both
//!
//! socket-reader --unix        /  socket-writer --unix          # Unix domain, same host
//! socket-reader               /  socket-writer --mode pingpong --count 100000
//! two machines (K3): socket-reader --listen 0.0.0.0:47400   (on host B)
//!                    socket-writer --tcp HOST_B:47400        (on host A)
//! ```
//! The reader needs no `--mode`, `--size` or `--count`: it runs what this writer's Hello says.
//!
//! System calls, in order:
//! 1. `socket(AF_INET or AF_UNIX, SOCK_STREAM)` and `connect` to the reader's address,
//!    retried every 20 ms while it answers ECONNREFUSED or ENOENT (nobody listens yet),
//!    until `--timeout`. Over TCP `connect` sends the SYN and returns after the handshake.
//!    A refusal because a reader there already has its writer is told apart by the
//!    kernel's tables (/proc/net/tcp or /proc/net/unix) and is an error naming both pids
//!    (`who.rs`). Then `getpeername` (or `SO_PEERCRED`) to say whom it reached.
//! 2. TCP: `getsockopt(TCP_MAXSEG)`, and `setsockopt(TCP_NODELAY)` in text and pingpong,
//!    and in stream mode when a frame fills a segment; `setsockopt(SO_SNDBUF)` if
//!    `--sock-buf` asks (`options::tune_writer`, with the reasons). `getsockopt(SO_SNDBUF)`:
//!    the capacity this writer's Hello states.
//! 3. The Hello leaves in one `write`; `read` until the reader's answer is whole (its own
//!    Hello: it runs this one), or 0 (it refused the Hello and closed) (`handshake.rs`).
//! 4. The loop, driven by the session: text mode `read`s a line from stdin; each frame
//!    leaves in one `write` (header and payload back to back), or with `--batch` (stream) several
//!    frames in one (`batch.rs`); in pingpong the Pong comes back on the same socket, a
//!    socket being two-way: `read` until the Pong is whole.
//! 5. `close`, which sends FIN: the reader's `read` returns 0 after the End frame.
//!
//! Start order: either; this side waits for the server by retrying `connect`.
//! Cleanup: a client owns no file. If the reader dies, the kernel answers further data with
//! a reset: `write` fails with EPIPE or ECONNRESET ("reader reset or closed the
//! connection"), exit 1.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use common::cli::{MeetArgs, Mode, OutputArgs, Program, RunArgs};
use common::frame::{Kind, Reassembler, MAX_PAYLOAD};
use common::narrate;
use common::session::{conclude, FrameBuf, Next, WriterSession};
use common::setup::{Setup, Wait};
use common::stream::{self, Delivery};

use crate::batch::{self, Batch};
use crate::rendezvous::{self, EndpointArgs};
use crate::{handshake, options};
use crate::{Stream, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "socket-writer";

/// How the reader left, in "reader ... after N messages; stopping".
const READER_GONE: &str = "reset or closed the connection (write failed with EPIPE or ECONNRESET)";
/// How it left when this writer was reading (the Hello's answer, a Pong).
const READER_CLOSED: &str = "reset or closed the connection (read returned 0 or ECONNRESET)";

/// Command line of socket-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Connect to socket-reader over TCP or a Unix domain socket and send messages (claims K1-K5).",
    after_help = "Examples (start socket-reader in another terminal; it follows this writer's --mode, --size, --count):\n  socket-writer\n  socket-writer --unix --mode pingpong --count 100000\n  socket-writer --tcp 192.168.1.20:47400 --mode stream --size 64K"
)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub meet: MeetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// Send buffer (SO_SNDBUF; the kernel doubles it, and setting it turns TCP's autotuning off) [default: the kernel's].
    #[arg(long, value_name = "BYTES", value_parser = common::cli::parse_size)]
    pub sock_buf: Option<usize>,

    /// Stream mode: gather frames until at least BYTES, then send them in one writev (at most 512 frames) [default: one write per frame].
    #[arg(long, value_name = "BYTES", value_parser = common::cli::parse_size)]
    pub batch: Option<usize>,

    /// TCP: leave Nagle's algorithm on (no TCP_NODELAY) whatever the mode, to see what it costs.
    // A Unix socket has no Nagle algorithm: the two flags contradict each other (exit 2).
    #[arg(long, conflicts_with = "unix")]
    pub nagle: bool,
}

common::program!(Args, name = crate::DEFAULT_NAME);

/// The program: connect, run the mode over the one connection, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common();
    // Every flag is checked (and the host name resolved) before any socket exists.
    let ep = rendezvous::resolve(&args.endpoint, None, c)?;
    batch::check(args.batch, c.mode)?;
    let setup = Setup {
        program: PROGRAM,
        mechanism: MECHANISM,
        flavour: ep.flavour(),
        // write and read sleep in the kernel until the socket buffer has room or data.
        wait: Wait::Block,
        args: c.clone(),
        max_payload: MAX_PAYLOAD,
    };

    // 1. socket + connect, retried while nobody listens; getpeername for the narration.
    narrate!("connecting to {ep} (K2: this writer is the client, socket-reader the server)");
    let Some(conn) = rendezvous::connect_within(&ep, c.timeout)? else {
        bail!(
            "no reader accepted at {ep} within {:?}: start socket-reader with the same --tcp/--unix, or raise --timeout",
            c.timeout
        );
    };
    let peer = conn.peer();
    narrate!("connected to {peer}: one connection, both directions (K1)");
    let mut notes = vec![format!("connected to {peer}")];

    // 2. TCP_MAXSEG, TCP_NODELAY (Nagle's algorithm off unless it helps), SO_SNDBUF.
    notes.extend(options::tune_writer(&conn, args.sock_buf, args.nagle, c)?);
    let sndbuf = conn.send_buffer()?;
    narrate!("the Hello states a capacity of {sndbuf} bytes: SO_SNDBUF as the kernel reports it (its bookkeeping included; TCP may grow it)");

    // 3 and 4. The Hello, its answer, the loop: the session says what to send; the calls
    // are below, in send_all.
    let mut session = WriterSession::new(&setup).capacity(sndbuf as u64);
    let mut batch = args.batch.map(|bytes| Batch::new(bytes, c.size));
    notes.extend(batch.as_ref().map(Batch::note));
    send_all(&mut session, &conn, c.timeout, batch.as_mut())?;
    // 5. close sends FIN: the reader's read() returns 0 after End.
    drop(conn);

    let mut report = session.finish();
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}

/// Steps 3 and 4: the session's frames out through `write`, the reader's answer to the
/// Hello and its Pongs in through `read`, all on the one socket; text lines from stdin.
/// `batch` (`--batch`, stream mode): after the Hello, several frames per `writev`.
/// Returns once End has left.
fn send_all(
    session: &mut WriterSession,
    mut conn: &Stream,
    timeout: Duration,
    batch: Option<&mut Batch>,
) -> Result<()> {
    let mut frame = FrameBuf::new();
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    // Answers arrive as bytes like everything on a stream (K5); this finds them.
    let mut answers = Reassembler::new(MAX_PAYLOAD);
    loop {
        match session.next(&mut frame)? {
            // Text: read(2) of stdin blocks until a line is typed; 0 bytes is Ctrl-D.
            Next::NeedLine => match stream::read_line(&mut stdin, &mut line)? {
                Some(l) => session.push_line(l),
                None => session.end_of_input(),
            },
            // write(2): header and payload in one call (the session builds them back to
            // back); std's `write` on a socket is send(2), which strace shows as sendto. A
            // reader that is gone shows as EPIPE (it closed) or ECONNRESET (its kernel
            // answered with a reset).
            Next::Send(out) => {
                let hello = out.kind == Kind::Hello;
                if stream::write_frame(&mut conn, out)? == Delivery::PeerGone {
                    return Err(session.reader_left(READER_GONE));
                }
                // 3. After the Hello, read(2) until the reader's answer: it runs this
                // Hello, or it refused it and closed (read returns 0).
                if hello {
                    match handshake::await_answer(conn, &mut answers, session.nonce(), timeout)? {
                        Some(h) => narrate!("the reader answered the Hello with its own: {h}"),
                        None => return Err(session.reader_left(READER_CLOSED)),
                    }
                    if session.hello().mode == Mode::Text {
                        narrate!("type a line and press Enter to send it as one message; Ctrl-D (end of input) ends");
                    }
                    // --batch: the rest of the stream, several frames per writev(2).
                    if let Some(b) = batch {
                        return match b.send_rest(session, conn)? {
                            Delivery::Sent => Ok(()),
                            Delivery::PeerGone => Err(session.reader_left(READER_GONE)),
                        };
                    }
                }
            }
            // Pingpong: read(2) on the same socket blocks until the Pong's bytes arrive.
            Next::AwaitAnswer => loop {
                if let Some((header, payload)) = answers.next_frame()? {
                    session.answer(&header, payload)?;
                    break;
                }
                if stream::read(&mut conn, &mut answers)? == 0 {
                    return Err(session.reader_left(READER_CLOSED));
                }
            },
            Next::Done => return Ok(()),
        }
    }
}
