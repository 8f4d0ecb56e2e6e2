//! Running a pair of the programs: the binaries, a runtime directory per test, a TCP
//! address no parallel test shares, both start orders. Test code: it panics where a test
//! should fail.

use std::process::Stdio;

use common::testing::{Done, Proc, TestDir};

pub const WRITER: &str = env!("CARGO_BIN_EXE_socket-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_socket-reader");

pub fn dir(test: &str) -> TestDir {
    TestDir::new("socket", test)
}

pub fn start(d: &TestDir, bin: &str, args: &[&str]) -> Proc {
    let mut c = d.cmd(bin, args);
    Proc::spawn(bin.rsplit('/').next().unwrap_or(bin), &mut c)
}

/// A TCP port that was free a moment ago (the kernel's choice for port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for the reader's "listening on tcp ADDR" line and returns ADDR.
pub fn bound_addr(r: &mut Proc) -> String {
    r.wait_for("listening on tcp ");
    let err = r.stderr_now();
    let rest = err.split("listening on tcp ").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_string()
}

pub fn assert_ok(d: &Done, who: &str) {
    assert!(
        d.status.success(),
        "{who} failed: {}\nstdout:\n{}\nstderr:\n{}",
        d.status,
        d.stdout,
        d.stderr
    );
}

#[derive(Clone, Copy, Debug)]
pub enum Via {
    Tcp,
    Unix,
}

/// Starts a pair over `via` in the given order; `wargs`/`rargs` exclude the transport.
pub fn start_pair(
    d: &TestDir,
    via: Via,
    reader_first: bool,
    wargs: &[&str],
    rargs: &[&str],
    writer_stdin: bool,
) -> (Proc, Proc) {
    let spawn_writer = |extra: Vec<String>| {
        let mut c = d.cmd(WRITER, wargs);
        c.args(extra);
        if writer_stdin {
            c.stdin(Stdio::piped());
        }
        Proc::spawn("socket-writer", &mut c)
    };
    match (via, reader_first) {
        (Via::Tcp, true) => {
            let mut r = start(d, READER, &[rargs, &["--tcp", "127.0.0.1:0"]].concat());
            let addr = bound_addr(&mut r);
            (spawn_writer(vec!["--tcp".into(), addr]), r)
        }
        (Via::Tcp, false) => {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut w = spawn_writer(vec!["--tcp".into(), addr.clone()]);
            w.wait_for("waiting for a reader at");
            (w, start(d, READER, &[rargs, &["--tcp", &addr]].concat()))
        }
        (Via::Unix, true) => {
            let mut r = start(d, READER, &[rargs, &["--unix"]].concat());
            r.wait_for("listening on unix");
            (spawn_writer(vec!["--unix".into()]), r)
        }
        (Via::Unix, false) => {
            let mut w = spawn_writer(vec!["--unix".into()]);
            w.wait_for("waiting for a reader at");
            (w, start(d, READER, &[rargs, &["--unix"]].concat()))
        }
    }
}

pub fn run_pair(
    d: &TestDir,
    via: Via,
    reader_first: bool,
    wargs: &[&str],
    rargs: &[&str],
) -> (Done, Done) {
    let (w, r) = start_pair(d, via, reader_first, wargs, rargs, false);
    (w.finish(), r.finish())
}
