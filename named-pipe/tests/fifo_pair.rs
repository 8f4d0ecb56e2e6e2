//! Process-level tests of named-pipe-writer and named-pipe-reader: every mode in both start
//! orders, each claim N1-N7 that a program can check, stale and foreign paths, faults and
//! Ctrl-C. Each test has its own runtime directory (IPC_STUDY_DIR) and asserts that nothing
//! is left in it; each child runs under the harness deadline.

mod harness;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::{is_fifo, Proc, TestDir};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

const WRITER: &str = env!("CARGO_BIN_EXE_named-pipe-writer");
const READER: &str = env!("CARGO_BIN_EXE_named-pipe-reader");

fn dir(test: &str) -> TestDir {
    TestDir::new("named-pipe", test)
}

fn start(d: &TestDir, bin: &str, args: &[&str]) -> Proc {
    let mut c = d.cmd(bin, args);
    Proc::spawn(bin.rsplit('/').next().unwrap_or(bin), &mut c)
}

fn start_with_stdin(d: &TestDir, bin: &str, args: &[&str]) -> Proc {
    let mut c = d.cmd(bin, args);
    c.stdin(Stdio::piped());
    Proc::spawn(bin.rsplit('/').next().unwrap_or(bin), &mut c)
}

/// Runs a pair in the given start order and returns (writer, reader) results.
fn run_pair(
    d: &TestDir,
    reader_first: bool,
    wargs: &[&str],
    rargs: &[&str],
) -> (harness::Done, harness::Done) {
    let (w, r) = if reader_first {
        let mut r = start(d, READER, rargs);
        r.wait_for("blocks until named-pipe-writer opens it");
        (start(d, WRITER, wargs), r)
    } else {
        let mut w = start(d, WRITER, wargs);
        w.wait_for("blocks until named-pipe-reader opens it");
        (w, start(d, READER, rargs))
    };
    (w.finish(), r.finish())
}

fn assert_ok(d: &harness::Done, who: &str) {
    assert!(
        d.status.success(),
        "{who} failed: {}\nstdout:\n{}\nstderr:\n{}",
        d.status,
        d.stdout,
        d.stderr
    );
}

#[test]
fn text_mode_delivers_each_line_in_both_start_orders() {
    for reader_first in [true, false] {
        let d = dir(&format!("text-{reader_first}"));
        let (mut w, mut r) = if reader_first {
            let mut r = start(&d, READER, &["--json"]);
            r.wait_for("blocks until named-pipe-writer");
            (start_with_stdin(&d, WRITER, &["--json"]), r)
        } else {
            let mut w = start_with_stdin(&d, WRITER, &["--json"]);
            w.wait_for("blocks until named-pipe-reader");
            (w, start(&d, READER, &["--json"]))
        };
        w.write_stdin(b"hello\nsecond line\n");
        r.wait_for("second line");
        w.close_stdin();
        let (wd, rd) = (w.finish(), r.finish());
        assert_ok(&wd, "writer");
        assert_ok(&rd, "reader");
        assert!(rd.stdout.contains("#0 (5 B"), "{}", rd.stdout);
        assert!(rd.stdout.contains(": second line"), "{}", rd.stdout);
        let rep = rd.report("reader", false);
        assert!(rep.verified && rep.count == 2, "{rep:?}");
        d.assert_empty();
    }
}

#[test]
fn stream_mode_is_verified_in_both_start_orders() {
    for reader_first in [true, false] {
        let d = dir(&format!("stream-{reader_first}"));
        let args = [
            "--mode", "stream", "--count", "3000", "--size", "4K", "--json",
        ];
        let (wd, rd) = run_pair(&d, reader_first, &args, &args);
        assert_ok(&wd, "writer");
        assert_ok(&rd, "reader");
        let rep = rd.report("reader", false);
        assert!(rep.verified, "{rep:?}");
        assert_eq!((rep.count, rep.bytes), (3000, 3000 * 4096));
        let named = (
            rep.mechanism.as_str(),
            rep.flavour.as_str(),
            rep.wait.as_str(),
        );
        assert_eq!(named, ("named-pipe", "fifo", "block"), "{rep:?}");
        d.assert_empty();
    }
}

#[test]
fn pingpong_is_verified_in_both_start_orders_with_a_bigger_fifo() {
    for reader_first in [true, false] {
        let d = dir(&format!("pingpong-{reader_first}"));
        let args = ["--mode", "pingpong", "--count", "500", "--json"];
        let mut wargs = args.to_vec();
        wargs.extend(["--pipe-size", "1M"]);
        let (wd, rd) = run_pair(&d, reader_first, &wargs, &args);
        assert_ok(&wd, "writer");
        assert_ok(&rd, "reader");
        let rep = wd.report("writer", false);
        assert!(rep.verified && rep.count == 500, "{rep:?}");
        assert!(rep.latency_ns.is_some());
        assert!(
            rep.notes
                .iter()
                .any(|n| n.contains("FIFO capacity 1048576")),
            "{:?}",
            rep.notes
        );
        d.assert_empty();
    }
}

#[test]
fn claim_n1_n4_each_open_end_goes_one_way() {
    let d = dir("n1n4");
    fs::create_dir_all(&d.path).unwrap();
    let p = d.join("f");
    nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let r = open(&p, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    let w = open(&p, OFlag::O_WRONLY, Mode::empty()).unwrap();
    let mut rf = fs::File::from(r);
    let mut wf = fs::File::from(w);
    // Writing on the read end and reading from the write end are refused: EBADF.
    assert_eq!(
        rf.write(b"x").unwrap_err().raw_os_error(),
        Some(Errno::EBADF as i32)
    );
    let mut b = [0u8; 1];
    assert_eq!(
        wf.read(&mut b).unwrap_err().raw_os_error(),
        Some(Errno::EBADF as i32)
    );
    // The right direction works.
    wf.write_all(b"y").unwrap();
    rf.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
    drop((rf, wf));
    fs::remove_file(&p).unwrap();
    d.assert_empty();
}

#[test]
fn claim_n2_n5_unrelated_processes_meet_only_by_name() {
    let d = dir("n2n5");
    // The writer is started by a shell, the reader by this test: different parents, and
    // neither is the other's parent. All they share is the name.
    // Pingpong: the writer cannot finish before the reader has looked at who holds the FIFO.
    let mut r = start(
        &d,
        READER,
        &["--mode", "pingpong", "--count", "200", "--json"],
    );
    r.wait_for("blocks until named-pipe-writer");
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!(
            "\"{WRITER}\" --mode pingpong --count 200 --json & wait"
        ))
        .env("IPC_STUDY_DIR", &d.path)
        .stdin(Stdio::null());
    let w = Proc::spawn("sh -c named-pipe-writer", &mut sh);
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    assert!(
        rd.stderr
            .contains("they met only through the name (N2, N5)"),
        "{}",
        rd.stderr
    );
    let rep = rd.report("reader", false);
    let ppids: Vec<&String> = rep.notes.iter().filter(|n| n.contains("ppid")).collect();
    assert_eq!(ppids.len(), 2, "{:?}", rep.notes);
    assert_ne!(
        ppids[0].split("ppid ").nth(1),
        ppids[1].split("ppid ").nth(1),
        "{ppids:?}"
    );
    d.assert_empty();
}

#[test]
fn claim_n3_messages_arrive_in_fifo_order() {
    let d = dir("n3");
    // The reader counts any message out of order or repeated; verified means none was.
    let args = [
        "--mode", "stream", "--count", "20000", "--size", "100", "--json",
    ];
    let (wd, rd) = run_pair(&d, true, &args, &args);
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    let rep = rd.report("reader", false);
    assert!(rep.verified && rep.count == 20000, "{rep:?}");
    d.assert_empty();
}

#[test]
fn claim_n6_pingpong_uses_a_second_fifo_for_the_answers() {
    let d = dir("n6");
    let mut r = start(&d, READER, &["--mode", "pingpong", "--count", "100"]);
    r.wait_for("blocks until named-pipe-writer");
    // Both names exist before the writer comes: one per direction.
    assert!(is_fifo(&d.join("fifo")) && is_fifo(&d.join("fifo.back")));
    let w = start(&d, WRITER, &["--mode", "pingpong", "--count", "100"]);
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    assert!(rd.stderr.contains("fifo.back for writing"), "{}", rd.stderr);
    d.assert_empty();
}

#[test]
fn claim_n7_open_blocks_until_both_ends_exist() {
    let d = dir("n7-open");
    fs::create_dir_all(&d.path).unwrap();
    let p = d.join("f");
    nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    // Without a reader, a non-blocking open for writing is refused with ENXIO.
    assert_eq!(
        open(&p, OFlag::O_WRONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap_err(),
        Errno::ENXIO
    );
    // A blocking open for writing waits; it returns once a reader opens.
    let (tx, rx) = mpsc::channel();
    let p2 = p.clone();
    let t = std::thread::spawn(move || {
        let fd = open(&p2, OFlag::O_WRONLY, Mode::empty()).unwrap();
        tx.send(()).unwrap();
        fd
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "open(O_WRONLY) returned with no reader"
    );
    let r = open(&p, OFlag::O_RDONLY, Mode::empty()).unwrap();
    rx.recv_timeout(Duration::from_secs(30))
        .expect("open(O_WRONLY) still blocked after a reader opened");
    drop((t.join().unwrap(), r));
    fs::remove_file(&p).unwrap();
    d.assert_empty();
}

#[test]
fn claim_n7_the_program_waits_in_open_and_gives_up_at_the_timeout() {
    let d = dir("n7-timeout");
    let w = start(&d, WRITER, &["--timeout", "0.5"]).finish();
    assert_eq!(w.status.code(), Some(1), "{}", w.stderr);
    assert!(w.stderr.contains("O_NONBLOCK gives ENXIO"), "{}", w.stderr);
    assert!(w.stderr.contains("no reader opened"), "{}", w.stderr);
    let r = start(&d, READER, &["--timeout", "0.5"]).finish();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("no writer opened"), "{}", r.stderr);
    // Each removed the FIFO it created.
    d.assert_empty();
}

#[test]
fn claim_n7_writer_narrates_a_full_fifo_and_epipe_when_the_reader_leaves() {
    let d = dir("n7-full");
    let mut w = start(
        &d,
        WRITER,
        &["--mode", "stream", "--count", "1e6", "--size", "4K"],
    );
    w.wait_for("blocks until named-pipe-reader");
    // This test is a reader that opens the FIFO and never reads: the writer fills it.
    let r = open(&d.join("fifo"), OFlag::O_RDONLY, Mode::empty()).unwrap();
    w.wait_for("the FIFO is full");
    // Now the reader goes away: the writer's next write fails with EPIPE.
    drop(r);
    let wd = w.finish();
    assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
    assert!(
        wd.stderr
            .contains("reader closed the FIFO (write failed with EPIPE)"),
        "{}",
        wd.stderr
    );
    // The writer had handed the name to a reader; this "reader" removes it.
    fs::remove_file(d.join("fifo")).unwrap();
    d.assert_empty();
}

#[test]
fn reader_killed_gives_epipe_and_the_stale_fifo_is_reused_by_the_next_run() {
    let d = dir("stale");
    let mut w = start(&d, WRITER, &["--mode", "stream", "--count", "1e9"]);
    w.wait_for("blocks until named-pipe-reader");
    let mut r = start(&d, READER, &["--mode", "stream"]);
    r.wait_for("reading from the FIFO");
    r.signal(Signal::SIGKILL);
    let _ = r.finish();
    let wd = w.finish();
    assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
    assert!(wd.stderr.contains("EPIPE"), "{}", wd.stderr);
    // kill -9 cannot be caught: the name stays behind.
    assert!(is_fifo(&d.join("fifo")));
    let args = ["--mode", "stream", "--count", "100", "--json"];
    let (wd, rd) = run_pair(&d, true, &args, &args);
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    assert!(
        rd.stderr.contains("already exists") && rd.stderr.contains("reusing it"),
        "{}",
        rd.stderr
    );
    d.assert_empty();
}

#[test]
fn writer_killed_mid_stream_fails_the_reader_and_the_fifo_is_removed() {
    let d = dir("writer-killed");
    let mut r = start(&d, READER, &["--mode", "stream"]);
    r.wait_for("blocks until named-pipe-writer");
    let mut w = start(
        &d,
        WRITER,
        &["--mode", "stream", "--count", "1e9", "--size", "60000"],
    );
    w.wait_for("FIFO capacity");
    std::thread::sleep(Duration::from_millis(100));
    w.signal(Signal::SIGKILL);
    let _ = w.finish();
    let rd = r.finish();
    assert_eq!(rd.status.code(), Some(1), "{}", rd.stderr);
    assert!(
        rd.stderr.contains("truncated stream") || rd.stderr.contains("without sending End"),
        "{}",
        rd.stderr
    );
    d.assert_empty();
}

#[test]
fn a_path_that_is_not_a_fifo_is_refused_and_kept() {
    let d = dir("not-fifo");
    fs::create_dir_all(&d.path).unwrap();
    fs::write(d.join("fifo"), b"someone's file").unwrap();
    for bin in [WRITER, READER] {
        let p = start(&d, bin, &["--timeout", "0.5"]).finish();
        assert_eq!(p.status.code(), Some(1), "{}", p.stderr);
        assert!(
            p.stderr.contains("is a regular file, not a FIFO"),
            "{}",
            p.stderr
        );
    }
    assert_eq!(fs::read(d.join("fifo")).unwrap(), b"someone's file");
    fs::remove_file(d.join("fifo")).unwrap();
    d.assert_empty();
}

#[test]
fn another_users_fifo_is_refused_and_kept() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give a FIFO to another user");
        return;
    }
    let d = dir("foreign");
    fs::create_dir_all(&d.path).unwrap();
    let p = d.join("theirs");
    nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let out = start(&d, READER, &["--name", "theirs", "--timeout", "0.5"]).finish();
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("belongs to uid 65534"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::symlink_metadata(&p).unwrap().uid(), 65534);
    fs::remove_file(&p).unwrap();
    d.assert_empty();
}

#[test]
fn ctrl_c_while_waiting_in_open_removes_what_that_side_created() {
    for bin in [WRITER, READER] {
        let d = dir(&format!("ctrlc-{}", bin.ends_with("reader")));
        let mut p = start(&d, bin, &["--mode", "pingpong"]);
        p.wait_for("blocks until");
        assert!(is_fifo(&d.join("fifo")) && is_fifo(&d.join("fifo.back")));
        p.signal(Signal::SIGINT);
        let out = p.finish();
        assert_eq!(out.status.code(), Some(130), "{}", out.stderr);
        assert!(
            out.stderr.contains("interrupted by SIGINT"),
            "{}",
            out.stderr
        );
        d.assert_empty();
    }
}

#[test]
fn bad_flag_values_name_the_flag_and_the_limit() {
    let d = dir("flags");
    let p = start(&d, WRITER, &["--pipe-size", "1K"]).finish();
    assert_eq!(p.status.code(), Some(1));
    assert!(
        p.stderr.contains("--pipe-size 1024 is out of range"),
        "{}",
        p.stderr
    );
    let p = start(&d, READER, &["--name", "../x"]).finish();
    assert_eq!(p.status.code(), Some(2));
    assert!(p.stderr.contains("--name"), "{}", p.stderr);
    // Nothing was created: flags are checked first.
    assert!(!d.path.join("fifo").exists());
}

#[test]
fn a_fifo_in_use_by_a_connected_pair_is_refused() {
    let d = dir("busy");
    let mut r = start(&d, READER, &[]);
    r.wait_for("blocks until named-pipe-writer");
    let mut w = start_with_stdin(&d, WRITER, &[]);
    w.write_stdin(b"first\n");
    r.wait_for("first");
    // A third program with the same name finds both ends held, and stays out.
    let third = start(&d, WRITER, &["--timeout", "0.5"]).finish();
    assert_eq!(third.status.code(), Some(1), "{}", third.stderr);
    assert!(
        third.stderr.contains("is in use by a connected pair")
            && third.stderr.contains(&format!("pid {}", r.pid())),
        "{}",
        third.stderr
    );
    w.close_stdin();
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    d.assert_empty();
}
