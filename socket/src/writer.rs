//! socket-writer: the client. Connects to socket-reader and sends messages.
//!
//! Run it in two terminals, in either order (K2: the reader is the server):
//! ```text
//! terminal 1: socket-reader                         # TCP 127.0.0.1:47400
//! terminal 2: socket-writer                         # type lines; Ctrl-D ends both
//!
//! socket-reader --unix        /  socket-writer --unix          # Unix domain, same host
//! socket-reader --mode pingpong  /  socket-writer --mode pingpong --count 100000
//! two machines (K3): socket-reader --listen 0.0.0.0:47400   (on host B)
//!                    socket-writer --tcp HOST_B:47400        (on host A)
//! ```
//!
//! System calls, in order:
//! - `socket(AF_INET or AF_UNIX, SOCK_STREAM)` and `connect` to the reader's address,
//!   retried every 20 ms while it answers ECONNREFUSED or ENOENT (nobody listens yet),
//!   until `--timeout`. Over TCP `connect` sends the SYN and returns after the handshake.
//! - `getsockopt(TCP_MAXSEG)`; `setsockopt(TCP_NODELAY)` in text and pingpong, and in stream
//!   mode when a frame fills a segment (see below); `setsockopt(SO_SNDBUF)` if asked.
//! - `dup` of the socket (`try_clone`): one handle to send, one to receive. A socket is
//!   two-way, so the answers (pingpong) come back on the same connection.
//! - one `writev` per frame (and `read`s for each Pong); `close`, which sends FIN: the
//!   reader's `read` returns 0 after the End frame.
//!
//! Start order: either; this side waits for the server by retrying `connect`.
//! Cleanup: a client owns no file. If the reader dies, the kernel answers further data with
//! a reset: `write` fails with EPIPE or ECONNRESET ("reader reset or closed the
//! connection"), exit 1.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{CommonArgs, Mode};
use common::frame::MAX_PAYLOAD;
use common::narrate;
use common::protocol::{conclude, run_writer, Setup, StreamSink, StreamSource};

use crate::{connect_within, resolve, set_buffer, EndpointArgs, Stream, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "socket-writer";

/// Command line of socket-writer.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Connect to socket-reader over TCP or a Unix domain socket and send messages (claims K1-K5).",
    after_help = "Examples (start socket-reader with the same flags in another terminal):\n  socket-writer\n  socket-writer --unix --mode pingpong --count 100000\n  socket-writer --tcp 192.168.1.20:47400 --mode stream --size 64K"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// Entry point of the `socket-writer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs socket-writer with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: connect, run the mode over the one connection, report.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    // Every flag is checked (and the host name resolved) before any socket exists.
    let ep = resolve(&args.endpoint, None, c)?;
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: ep.flavour().into(),
        wait: "blocking".into(),
        args: c.clone(),
        max_payload: MAX_PAYLOAD,
    };

    narrate!("connecting to {ep} (K2: this writer is the client, socket-reader the server)");
    let Some(stream) = connect_within(&ep, c.timeout)? else {
        bail!(
            "no reader accepted at {ep} within {:?}: start socket-reader with the same --tcp/--unix, or raise --timeout",
            c.timeout
        );
    };
    narrate!(
        "connected to {}: one connection, both directions (K1)",
        stream.peer()
    );
    let mut notes = vec![format!("connected to {}", stream.peer())];

    if let Stream::Tcp(_) = &stream {
        let frame = c.size + common::frame::HEADER_LEN;
        let mss = stream.max_segment().unwrap_or(0);
        // Nagle's algorithm holds a segment smaller than the MSS back while an earlier one
        // is unacknowledged, hoping to merge it with more data, and the peer delays its
        // ACK (40 to 200 ms on Linux) hoping to piggyback it on an answer. A message that
        // someone waits for (pingpong, text) must never be held: TCP_NODELAY. (With one
        // writev per frame Nagle seldom bites there, since each Pong acknowledges its
        // Ping, but the tail of a frame larger than a segment could be held.) In stream
        // mode, frames smaller than a segment gain from the merging (many per segment,
        // fewer packets and reads); a frame of a segment or more gains nothing, and Nagle
        // would only hold back its last, partial segment: TCP_NODELAY too.
        let nodelay = !args.endpoint.nagle && (c.mode != Mode::Stream || frame >= mss as usize);
        if nodelay {
            stream.set_nodelay()?;
            narrate!("TCP_NODELAY set (MSS {mss} bytes, frames {frame} bytes): each message leaves at once, no Nagle delay");
        } else {
            narrate!("Nagle's algorithm on (MSS {mss} bytes, frames {frame} bytes): small frames are merged into full segments");
        }
        notes.push(format!(
            "TCP_NODELAY {}",
            if nodelay { "on" } else { "off (Nagle)" }
        ));
    }
    if let Some(bytes) = args.endpoint.sock_buf {
        let got = set_buffer(stream.as_fd(), bytes, true)?;
        narrate!("SO_SNDBUF set: the kernel reports {got} bytes (it doubles the request)");
        notes.push(format!("SO_SNDBUF {got} bytes"));
    }

    // Two handles on one socket: the sink writes frames, the source reads Pongs.
    let back = stream
        .try_clone()
        .context("dup of the socket (try_clone)")?;
    let mut sink = StreamSink::new(stream);
    let mut stdin = io::stdin().lock();
    let end = if c.mode == Mode::Pingpong {
        let mut src = StreamSource::new(back, MAX_PAYLOAD);
        run_writer(&setup, &mut sink, Some(&mut src), &mut stdin)?
    } else {
        drop(back);
        run_writer::<_, StreamSource<Stream>>(&setup, &mut sink, None, &mut stdin)?
    };
    // Closing sends FIN: the reader's read() returns 0 after End.
    drop(sink);
    let mut report =
        end.into_report("reset or closed the connection (write failed with EPIPE or ECONNRESET)")?;
    notes.push(format!("writer pid {}", std::process::id()));
    report.notes = notes;
    conclude(&report, c.json)
}
