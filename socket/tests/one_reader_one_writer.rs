//! Issue 10, item 3, for the socket pair: one reader and one writer, always. A reader closes
//! its listening socket when it accepts its writer (K2), so a second writer's `connect` is
//! refused as if nobody were there, and a second reader could bind the same port
//! (SO_REUSEADDR) or take the socket file for a stale one. Both are refused at once with
//! the pids already there (from /proc/net/tcp, /proc/net/unix, /proc/PID/fd and sock_diag);
//! the first pair still completes verified; nothing is left behind.

mod harness;

use std::process::Stdio;

use harness::pair::{assert_ok, bound_addr, dir, start, Via, READER, WRITER};
use harness::{Proc, TestDir};

/// A reader listening at a fresh address: the reader, its transport flags for the others
/// and the address as the programs print it (`tcp 127.0.0.1:41234`, `unix /…/socket.sock`).
fn listening(d: &TestDir, via: Via) -> (Proc, Vec<String>, String) {
    match via {
        Via::Tcp => {
            let mut r = start(d, READER, &["--tcp", "127.0.0.1:0", "--json"]);
            let addr = bound_addr(&mut r);
            (r, vec!["--tcp".into(), addr.clone()], format!("tcp {addr}"))
        }
        Via::Unix => {
            let mut r = start(d, READER, &["--unix", "--json"]);
            r.wait_for("listening on unix");
            let path = d.join("socket.sock");
            (r, vec!["--unix".into()], format!("unix {}", path.display()))
        }
    }
}

/// A text-mode writer for `ep`, with stdin piped, once the reader has answered its Hello.
fn writer_of(d: &TestDir, ep: &[String], r: &mut Proc) -> Proc {
    let mut c = d.cmd(WRITER, &[]);
    c.args(ep).stdin(Stdio::piped());
    let mut w = Proc::spawn("socket-writer", &mut c);
    r.wait_for("this reader follows it");
    w.wait_for("the reader answered the Hello");
    w
}

/// The first pair sends a line and ends: both exit 0, the reader verified one message
/// from its one connection.
fn first_pair_completes(mut w: Proc, mut r: Proc) {
    w.write_stdin(b"still one pair\n");
    r.wait_for("still one pair");
    w.close_stdin();
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    let rep = rd.report("reader", false);
    assert!(rep.verified && rep.count == 1, "{rep:?}");
    assert_eq!(
        rd.stderr.matches("accepted a connection").count(),
        1,
        "{}",
        rd.stderr
    );
}

#[test]
fn a_second_writer_is_refused_naming_the_reader_and_its_writer() {
    for via in [Via::Tcp, Via::Unix] {
        let d = dir(&format!("second-writer-{via:?}"));
        let (mut r, ep, shown) = listening(&d, via);
        let w = writer_of(&d, &ep, &mut r);
        // A --timeout far longer than the test: the refusal comes at once, not from it.
        let mut args: Vec<&str> = ep.iter().map(String::as_str).collect();
        args.extend(["--timeout", "600"]);
        let second = start(&d, WRITER, &args).finish();
        assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
        let expected = format!(
            "socket-reader pid {} at {shown} already has its writer (socket-writer pid {})",
            r.pid(),
            w.pid()
        );
        assert!(
            second.stderr.contains(&expected),
            "{expected:?} not in {}",
            second.stderr
        );
        assert!(
            second
                .stderr
                .contains("A pair has one reader and one writer")
                && !second.stderr.contains("no reader accepted"),
            "{}",
            second.stderr
        );
        // The hint names a command that lists this connection.
        let look = match via {
            Via::Tcp => {
                let port = ep[1].rsplit(":").next().unwrap();
                format!("`ss -tnp 'sport = :{port} or dport = :{port}'`")
            }
            Via::Unix => format!("`ss -xp src {}`", d.join("socket.sock").display()),
        };
        assert!(
            second.stderr.contains(&look),
            "{look} not in {}",
            second.stderr
        );
        first_pair_completes(w, r);
        d.assert_empty();
    }
}

#[test]
fn a_second_reader_is_refused_naming_the_reader_already_there() {
    for via in [Via::Tcp, Via::Unix] {
        let d = dir(&format!("second-reader-{via:?}"));
        let (mut r, ep, shown) = listening(&d, via);
        let mut args: Vec<&str> = ep.iter().map(String::as_str).collect();
        args.extend(["--timeout", "0.5"]);
        // While the first one listens: its pid, from the listening socket's inode.
        let second = start(&d, READER, &args).finish();
        assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
        let expected = match via {
            Via::Tcp => format!(
                "EADDRINUSE: port {} is already in use (socket-reader pid {} listens there)",
                ep[1].rsplit(':').next().unwrap(),
                r.pid()
            ),
            Via::Unix => format!(
                "another reader (socket-reader pid {}) is already listening at {shown}",
                r.pid()
            ),
        };
        assert!(
            second.stderr.contains(&expected),
            "{expected:?} not in {}",
            second.stderr
        );
        // Once it has its writer it listens no more; a second reader is refused all the
        // same (it would have bound the port again, or taken the file for a stale one).
        let w = writer_of(&d, &ep, &mut r);
        let second = start(&d, READER, &args).finish();
        assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
        let expected = format!(
            "a reader (socket-reader pid {}) at {shown} already has its writer (socket-writer pid {})",
            r.pid(),
            w.pid()
        );
        assert!(
            second.stderr.contains(&expected),
            "{expected:?} not in {}",
            second.stderr
        );
        assert!(!second.stderr.contains("listening on"), "{}", second.stderr);
        if let Via::Unix = via {
            assert!(
                d.join("socket.sock").exists(),
                "the live reader's file was removed"
            );
            assert!(!second.stderr.contains("removed"), "{}", second.stderr);
        }
        first_pair_completes(w, r);
        d.assert_empty();
    }
}
