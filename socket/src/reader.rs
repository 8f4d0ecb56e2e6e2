//! socket-reader: the server. Listens, accepts one writer and receives its messages.
//!
//! Run it in two terminals, in either order (K2):
//! ```text
//! terminal 1: socket-reader                         # TCP 127.0.0.1:47400
//! terminal 2: socket-writer                         # type lines; Ctrl-D ends both
//!
//! socket-reader --unix --show-reads                 # per message: how many read() calls (K5)
//! socket-reader --tcp 127.0.0.1:0                   # the kernel picks a port; printed below
//! socket-reader --listen 0.0.0.0:47400              # reachable from other machines (K3)
//! ```
//!
//! System calls, in order:
//! - TCP: `socket(AF_INET, SOCK_STREAM)`, `setsockopt(SO_REUSEADDR)`, `bind` (EADDRINUSE:
//!   the port is taken), `listen`. Unix: `lstat` of the path; an existing socket file is
//!   probed with `connect` and removed only if that is refused (nobody listens: stale);
//!   `umask(0177)` + `bind` (the file is created 0600) + `listen`.
//! - `poll(POLLIN)` on the listening socket, so the wait ends at `--timeout`, then
//!   `accept`: the kernel has completed the handshake, and accept hands over the connection.
//!   The listening socket is closed right after: this reader serves one writer.
//! - `setsockopt(TCP_NODELAY)` in pingpong (the Pongs are small), `SO_RCVBUF` if asked.
//! - `read` into a 1 MiB buffer: whatever has arrived, which is neither one message nor
//!   a whole number of them (K5). The frame header's length field puts the messages back
//!   together. `writev` of each Pong on the same connection. `read` returns 0 when the
//!   writer closes: after End that is a clean finish, before it the writer died (exit 1).
//!
//! Start order: either (the writer retries `connect` until this side listens).
//! Cleanup: a Unix socket file stays in the file system after `close`; this side removes
//! it when the pair is done, on errors and on Ctrl-C. A TCP port needs no cleanup.
//! A client that sends something other than frames is told nothing: the connection is
//! closed and this side says why ("not an ipc-study frame ...") and exits 1.

use std::cell::Cell;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::cli::{parse_size, CommonArgs, Mode};
use common::frame::MAX_PAYLOAD;
use common::narrate;
use common::protocol::{
    conclude, run_reader, FrameSource, Incoming, NoWayBack, Setup, StreamSink, StreamSource,
};

use crate::{listen, resolve, set_buffer, CountingReader, Endpoint, EndpointArgs, MECHANISM};

/// Program name, in narration and reports.
pub const PROGRAM: &str = "socket-reader";

/// Command line of socket-reader.
#[derive(Parser, Debug, Clone)]
#[command(
    name = PROGRAM,
    about = "Listen on TCP or a Unix domain socket, accept socket-writer and receive its messages (claims K1-K5).",
    after_help = "Examples (start socket-writer with the same flags in another terminal):\n  socket-reader\n  socket-reader --unix --show-reads\n  socket-reader --listen 0.0.0.0:47400 --mode stream"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// Listen on this TCP address, e.g. 0.0.0.0:47400 for other machines (K3). Open to anyone who can reach it.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["tcp", "unix"])]
    pub listen: Option<String>,

    /// Print, per message, how many read() calls it took (K5). For study, not for timing.
    #[arg(long)]
    pub show_reads: bool,

    /// Largest message accepted; a longer length is refused before anything is allocated.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_size: usize,
}

/// Entry point of the `socket-reader` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs socket-reader with an explicit argument list (the `bench` runner uses this).
pub fn main_from<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(argv);
    common::cli::run_main(PROGRAM, args.common.quiet, || run(args))
}

/// The program: listen, accept one writer, read until End, clean up.
pub fn run(args: Args) -> Result<ExitCode> {
    let c = &args.common;
    // Every flag is checked (and the host name resolved) before any socket exists.
    let ep = resolve(&args.endpoint, args.listen.as_deref(), c)?;
    let setup = Setup {
        program: PROGRAM.into(),
        mechanism: MECHANISM.into(),
        flavour: ep.flavour().into(),
        wait: "blocking".into(),
        args: c.clone(),
        max_payload: args.max_size.min(MAX_PAYLOAD),
    };
    if let Endpoint::Tcp(a) = &ep {
        if !a.ip().is_loopback() {
            common::warn!(
                "warning: listening on {a}, not on loopback: anyone who can reach this machine on port {} can connect, and nothing checks who they are (K3). Stop this reader when done.",
                a.port()
            );
        }
    }

    let (listener, socket_file) = listen(&ep)?;
    // For port 0 the kernel chose the port: say which (tests and scripts parse this line).
    let bound = listener.local()?;
    narrate!(
        "listening on {bound} (K2: this reader is the server); waiting for socket-writer to connect: accept() blocks until a client arrives, up to {:?}",
        c.timeout
    );
    let Some(stream) = listener.accept_within(c.timeout)? else {
        bail!(
            "no writer connected to {bound} within {:?}: start socket-writer with the same --tcp/--unix, or raise --timeout",
            c.timeout
        );
    };
    // One writer: close the listening socket, so a second client is refused, not queued.
    drop(listener);
    let peer = stream.peer();
    narrate!("accepted a connection from {peer}");
    let mut notes = vec![format!("accepted {peer} on {bound}")];

    if c.mode == Mode::Pingpong && !args.endpoint.nagle {
        // The Pongs are small answers: with Nagle's algorithm one could wait for the ACK
        // of the previous segment (see socket-writer for the whole story).
        stream.set_nodelay()?;
    }
    if let Some(bytes) = args.endpoint.sock_buf {
        let got = set_buffer(stream.as_fd(), bytes, false)?;
        narrate!("SO_RCVBUF set: the kernel reports {got} bytes (it doubles the request)");
        notes.push(format!("SO_RCVBUF {got} bytes"));
    }

    // Two handles on one socket: frames are read from one, Pongs written to the other.
    let back = stream
        .try_clone()
        .context("dup of the socket (try_clone)")?;
    let (counted, reads) = CountingReader::new(stream);
    let src = StreamSource::new(counted, setup.max_payload);
    narrate!("reading: read() blocks until bytes arrive, and returns whatever has arrived (K5)");
    let mut src = ShowReads {
        src,
        reads: reads.clone(),
        show: args.show_reads,
    };
    let end = if c.mode == Mode::Pingpong {
        let mut sink = StreamSink::new(back);
        run_reader(&setup, &mut src, Some(&mut sink))
    } else {
        drop(back);
        run_reader::<_, NoWayBack>(&setup, &mut src, None)
    };
    // The pair is done (or failed): the socket file goes either way.
    if let Some(f) = socket_file {
        f.remove()?;
    }
    let end = end.with_context(|| format!("reading from {peer}; closed the connection"))?;
    let mut report = end.into_report("the connection")?;
    notes.push(format!(
        "{} read() calls for {} messages (K5: a stream has no message boundaries)",
        reads.get(),
        report.count + report.warmup
    ));
    report.notes = notes;
    conclude(&report, c.json)
}

/// A frame source that can tell, per message, how many `read` calls it took (K5).
///
/// With `show` off it only passes frames through (one branch per message).
struct ShowReads<R> {
    /// The framing reader over a counting socket reader.
    src: StreamSource<R>,
    /// How many reads returned data so far (shared with the [`CountingReader`]).
    reads: Rc<Cell<u64>>,
    /// `--show-reads`.
    show: bool,
}

impl<R: std::io::Read> FrameSource for ShowReads<R> {
    fn recv(&mut self) -> Result<Incoming<'_>> {
        let before = self.reads.get();
        let incoming = self.src.recv()?;
        if self.show {
            if let Incoming::Frame(h, payload) = &incoming {
                let after = self.reads.get();
                let what = format!("message #{} ({} B + 40 B header)", h.seq, payload.len());
                match after - before {
                    0 => narrate!(
                        "{what}: no new read(): it came out of read #{after} together with the message before it (K5)"
                    ),
                    1 => narrate!("{what}: 1 read() (#{after})"),
                    n => narrate!(
                        "{what}: {n} read() calls (#{}..#{after}): it arrived in pieces and was put back together by its length field (K5)",
                        before + 1
                    ),
                }
            }
        }
        Ok(incoming)
    }
}
