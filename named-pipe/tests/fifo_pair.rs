//! Process-level tests of named-pipe-writer and named-pipe-reader: every mode in both start
//! orders, each claim N1-N7 that a program can check, stale and foreign paths, faults and
//! Ctrl-C. Each test has its own runtime directory (IPC_STUDY_DIR) and asserts that nothing
//! is left in it; each child runs under the harness deadline.

mod harness;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cli::Mode as RunMode;
use common::frame::{encode_header, end_payload, Fields, Kind, Reassembler, MAX_PAYLOAD};
use common::hello::Hello;
use common::setup::Wait;
use common::testing::DEADLINE;
use harness::{is_fifo, kernel, Proc, TestDir};
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
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

/// The descriptors of `pid` open on the FIFO at `path`, as their access modes (0 read, 1 write).
fn modes_on(pid: i32, path: &Path) -> Vec<u32> {
    kernel::fds(pid)
        .into_iter()
        .filter(|l| Path::new(&l.target) == path)
        .map(|l| l.access)
        .collect()
}

/// A FIFO path as `/proc/PID/fd` shows it: absolute, without symbolic links.
fn real(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|e| panic!("realpath {}: {e}", p.display()))
}

/// This test's read end of a FIFO: `O_NONBLOCK` never waits in `open`, and every read of
/// `kernel::next_frame` waits in a `poll` bounded by the deadline instead.
fn open_read_end(p: &Path) -> File {
    File::from(open(p, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap())
}

/// This test's write end of a FIFO, blocking: `open(O_WRONLY | O_NONBLOCK)` is retried
/// until a reader has the FIFO open (ENXIO until then), failing at the deadline, instead of
/// waiting in a blocking `open` that nothing could end.
fn open_write_end(p: &Path) -> File {
    let start = Instant::now();
    loop {
        match open(p, OFlag::O_WRONLY | OFlag::O_NONBLOCK, Mode::empty()) {
            Ok(fd) => {
                fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
                return File::from(fd);
            }
            Err(Errno::ENXIO) | Err(Errno::ENOENT) => {
                assert!(
                    start.elapsed() < DEADLINE,
                    "no reader opened {}",
                    p.display()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("open {} O_WRONLY: {e}", p.display()),
        }
    }
}

/// The payload of the Hello this test sends when it stands in for a writer (session 0x6e36,
/// as `send` stamps every frame): what a writer of `mode` with these numbers runs.
fn hello(mode: RunMode, size: u64, count: u64) -> Vec<u8> {
    Hello {
        program: "a test".into(),
        version: common::hello::VERSION.into(),
        mode,
        size,
        count,
        warmup: 0,
        flavour: "fifo".into(),
        wait: Wait::Block,
        capacity: 0,
        verify: common::hello::Verify::Full,
        zero_copy: false,
    }
    .encode()
}

/// Writes one frame with this test's own `write`: header and payload in one buffer.
fn send(f: &mut File, kind: Kind, seq: u64, payload: &[u8]) {
    let fields = Fields {
        kind,
        flags: 0,
        nonce: 0x6e36,
        seq,
        sent_ns: 1,
    };
    let mut wire = encode_header(fields, payload).unwrap().to_vec();
    wire.extend_from_slice(payload);
    f.write_all(&wire).unwrap();
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

/// N1, what really happens: the FIFO itself is not one-way, each descriptor is. Linux
/// accepts `O_RDWR` on a FIFO (POSIX leaves it undefined), and the process that does it is
/// its own peer: what it writes it reads back itself (N6: one FIFO cannot carry a dialogue).
#[test]
fn claim_n1_n6_one_fifo_used_both_ways_reads_back_its_own_message() {
    let d = dir("n1n6-rdwr");
    fs::create_dir_all(&d.path).unwrap();
    let p = d.join("f");
    nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    // O_RDWR never waits in open: this descriptor is both a reader and a writer.
    let both = open(&p, OFlag::O_RDWR | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    assert_eq!(
        kernel::fd(
            std::process::id() as i32,
            std::os::fd::AsRawFd::as_raw_fd(&both)
        )
        .access,
        2
    );
    assert_eq!(nix::unistd::write(&both, b"question"), Ok(8));
    let mut buf = [0u8; 64];
    let n = nix::unistd::read(&both, &mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"question",
        "the sender read back its own message"
    );
    assert_eq!(
        nix::unistd::read(&both, &mut buf),
        Err(Errno::EAGAIN),
        "nothing left for a peer"
    );
    drop(both);
    fs::remove_file(&p).unwrap();
    d.assert_empty();
}

/// N2 and N5 in the kernel's tables: the writer (started by a shell) and the reader
/// (started by this test) each hold one descriptor on the FIFO's inode, the writer's
/// write-only and the reader's read-only (N4); no ancestor of either holds one, so neither
/// inherited it: each opened the name. And neither is the other's parent.
#[test]
fn claim_n2_n5_both_programs_open_the_named_inode_and_inherit_nothing() {
    let d = dir("n2n5-proc");
    let mut r = start(&d, READER, &["--json"]);
    r.wait_for("blocks until named-pipe-writer");
    // A background job's stdin would be /dev/null, so the shell hands its stdin over as fd 3.
    let script = r#"exec 3<&0; "$0" --json <&3 3<&- & echo "background writer pid $!" >&2; wait"#;
    let mut sh = Command::new("sh");
    sh.args(["-c", script, WRITER])
        .env("IPC_STUDY_DIR", &d.path)
        .stdin(Stdio::piped());
    let mut sh = Proc::spawn("sh -c named-pipe-writer", &mut sh);
    sh.wait_for("background writer pid ");
    let writer: i32 = sh
        .stderr_now()
        .lines()
        .find_map(|l| l.strip_prefix("background writer pid "))
        .and_then(|p| p.trim().parse().ok())
        .expect("the writer's pid");
    sh.write_stdin(b"met by name only\n");
    r.wait_for("met by name only");
    let path = real(&d.join("fifo"));
    let named = fs::symlink_metadata(&path).unwrap();
    assert_eq!(
        modes_on(writer, &path),
        vec![1],
        "the writer's descriptors on the FIFO"
    );
    assert_eq!(
        modes_on(r.pid(), &path),
        vec![0],
        "the reader's descriptors on the FIFO"
    );
    for pid in [writer, r.pid()] {
        let l = kernel::fds(pid)
            .into_iter()
            .find(|l| Path::new(&l.target) == path)
            .unwrap();
        let m = fs::metadata(format!("/proc/{pid}/fd/{}", l.fd)).unwrap();
        assert_eq!((m.dev(), m.ino()), (named.dev(), named.ino()), "pid {pid}");
    }
    let me = std::process::id() as i32;
    for ancestor in [me, sh.pid()] {
        assert!(
            modes_on(ancestor, &path).is_empty(),
            "pid {ancestor} holds the FIFO"
        );
    }
    assert_eq!(
        (kernel::ppid(writer), kernel::ppid(r.pid())),
        (sh.pid(), me)
    );
    sh.close_stdin();
    let (shd, rd) = (sh.finish(), r.finish());
    assert_ok(&shd, "writer");
    assert_ok(&rd, "reader");
    assert!(rd.report("reader", false).verified);
    d.assert_empty();
}

/// N3 in the bytes themselves: this test is the reader, with its own `read` calls, and
/// finds every frame in the order the writer wrote it (seq 0, 1, 2, ..., then End).
#[test]
fn claim_n3_the_bytes_read_are_the_frames_in_the_order_written() {
    let d = dir("n3-bytes");
    let args = [
        "--mode", "stream", "--count", "20000", "--size", "100", "--warmup", "0",
    ];
    let mut w = start(&d, WRITER, &args);
    w.wait_for("blocks until named-pipe-reader");
    let mut fifo = open_read_end(&d.join("fifo"));
    let frames = kernel::read_frames(&mut fifo);
    assert_eq!(frames.len(), 20002);
    // The Hello comes first and says what follows.
    let (h, payload) = &frames[0];
    assert_eq!((h.kind, h.seq), (Kind::Hello, 0));
    let said = Hello::decode(payload).unwrap();
    assert_eq!(
        (said.mode, said.size, said.count, said.warmup),
        (RunMode::Stream, 100, 20000, 0)
    );
    let frames = &frames[1..];
    for (i, (h, payload)) in frames[..20000].iter().enumerate() {
        assert_eq!(
            (h.kind, h.seq),
            (Kind::Data, i as u64),
            "frame {i} out of order"
        );
        assert_eq!(
            payload[..8],
            (i as u64).to_le_bytes(),
            "frame {i}'s payload"
        );
    }
    let (end, payload) = &frames[20000];
    assert_eq!((end.kind, end.seq), (Kind::End, 20000));
    assert_eq!(
        common::frame::parse_end(payload),
        Some((20000, 20000 * 100))
    );
    assert_ok(&w.finish(), "writer");
    // This test was the reader, so it removes the name.
    fs::remove_file(d.join("fifo")).unwrap();
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
    // The reader learns that it needs a way back only from the writer's Hello: so far
    // there is one name, the way there.
    assert!(is_fifo(&d.join("fifo")) && !d.join("fifo.back").exists());
    let w = start(&d, WRITER, &["--mode", "pingpong", "--count", "100"]);
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    // One name per direction: the writer made the second and reads the answers from it.
    let back = real(&d.path).join("fifo.back");
    assert!(
        wd.stderr
            .contains(&format!("created FIFO {} (mkfifo", back.display()))
            && wd
                .stderr
                .contains(&format!("opening {} for reading", back.display())),
        "{}",
        wd.stderr
    );
    assert!(rd.stderr.contains("fifo.back for writing"), "{}", rd.stderr);
    d.assert_empty();
}

/// N6 in the kernel: this test is the writer, with its own calls, and named-pipe-reader
/// answers. Each Pong arrives on `NAME.back`, and nothing comes back on `NAME`: the FIFO
/// this test writes is empty again after each answer (FIONREAD 0). The reader holds `NAME`
/// read-only and `NAME.back` write-only. One FIFO for both ways would fail each of these.
#[test]
fn claim_n6_the_answers_come_back_on_the_second_fifo_and_none_on_the_first() {
    let d = dir("n6-kernel");
    let mut r = start(&d, READER, &["--mode", "pingpong", "--json"]);
    r.wait_for("blocks until named-pipe-writer");
    let (there_p, back_p) = (real(&d.join("fifo")), real(&d.path).join("fifo.back"));
    // The pair's open order: NAME for writing, the Hello, then (the reader, told it is
    // pingpong, has made NAME.back and waits to open it for writing) NAME.back for reading.
    let mut there = open_write_end(&there_p);
    send(&mut there, Kind::Hello, 0, &hello(RunMode::Pingpong, 8, 3));
    r.wait_for("fifo.back for writing");
    let mut back = open_read_end(&back_p);
    let (start_t, mut pongs) = (Instant::now(), Reassembler::new(MAX_PAYLOAD));
    for seq in 0..3u64 {
        send(&mut there, Kind::Ping, seq, &seq.to_le_bytes());
        let (h, payload) =
            kernel::next_frame(&mut back, &mut pongs, start_t).expect("a Pong on NAME.back");
        assert_eq!((h.kind, h.seq), (Kind::Pong, seq));
        assert_eq!(payload, seq.to_le_bytes());
        assert_eq!(
            kernel::fionread(there.as_fd()),
            0,
            "bytes came back on NAME"
        );
    }
    assert_eq!(modes_on(r.pid(), &there_p), vec![0], "the reader's NAME");
    assert_eq!(
        modes_on(r.pid(), &back_p),
        vec![1],
        "the reader's NAME.back"
    );
    send(&mut there, Kind::End, 3, &end_payload(3, 24));
    drop(there);
    assert!(kernel::next_frame(&mut back, &mut pongs, start_t).is_none());
    let rd = r.finish();
    assert_ok(&rd, "reader");
    let rep = rd.report("reader", false);
    assert!(rep.verified && rep.count == 3, "{rep:?}");
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
        tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let fd = open(&p2, OFlag::O_WRONLY, Mode::empty()).unwrap();
        tx.send(0).unwrap();
        fd
    });
    // The kernel says the thread sleeps inside open(2), and the open has not returned.
    let tid = rx.recv().unwrap();
    kernel::wait_until_blocked_in(tid, &kernel::open_calls(), "open(O_WRONLY) with no reader");
    assert!(
        rx.try_recv().is_err(),
        "open(O_WRONLY) returned with no reader"
    );
    let r = open(&p, OFlag::O_RDONLY, Mode::empty()).unwrap();
    rx.recv_timeout(DEADLINE)
        .expect("open(O_WRONLY) still blocked after a reader opened");
    drop((t.join().unwrap(), r));
    fs::remove_file(&p).unwrap();
    d.assert_empty();
}

/// N7 for read and write, at the system-call level: `read` sleeps while the FIFO is empty
/// and a writer has it open, returns 0 (end of file) once no writer has; `write` fails with
/// EPIPE once no reader has it open.
#[test]
fn claim_n7_read_blocks_while_empty_then_eof_without_a_writer_and_epipe_without_a_reader() {
    let d = dir("n7-read");
    fs::create_dir_all(&d.path).unwrap();
    let p = d.join("f");
    nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    // Open the read end without waiting, then make it blocking again, as a reader has it.
    let r = open(&p, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    fcntl(&r, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    let w = open(&p, OFlag::O_WRONLY, Mode::empty()).unwrap();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        (r, buf[..n].to_vec())
    });
    let tid = rx.recv().unwrap();
    kernel::wait_until_blocked_in(tid, &[libc::SYS_read], "read on an empty FIFO");
    assert!(!t.is_finished(), "read returned from an empty FIFO");
    assert_eq!(nix::unistd::write(&w, b"wake up"), Ok(7));
    let (r, got) = t.join().unwrap();
    assert_eq!(got, b"wake up");
    drop(w);
    let mut buf = [0u8; 8];
    assert_eq!(
        nix::unistd::read(&r, &mut buf),
        Ok(0),
        "no writer left: end of file"
    );
    // A write end opened while the reader is there; then the reader goes.
    let w = open(&p, OFlag::O_WRONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    drop(r);
    assert_eq!(nix::unistd::write(&w, b"anyone?"), Err(Errno::EPIPE));
    drop(w);
    fs::remove_file(&p).unwrap();
    d.assert_empty();
}

/// N7's full FIFO at the system-call level: a FIFO holds exactly its capacity
/// (`F_GETPIPE_SZ`); then a blocking write sleeps in `write` until the reader reads.
#[test]
fn claim_n7_a_full_fifo_holds_its_capacity_and_then_a_write_sleeps() {
    let d = dir("n7-cap");
    fs::create_dir_all(&d.path).unwrap();
    let p = d.join("f");
    nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let r = open(&p, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    let w = open(&p, OFlag::O_WRONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    let cap = common::stream::capacity(w.as_fd()).unwrap();
    let page = vec![7u8; 4096];
    let mut queued = 0;
    while let Ok(n) = nix::unistd::write(&w, &page) {
        queued += n;
    }
    assert_eq!(nix::unistd::write(&w, &page), Err(Errno::EAGAIN));
    assert_eq!((queued, kernel::fionread(r.as_fd())), (cap, cap));
    // The name stays empty: the bytes are in the kernel's buffer, not in the file (N2).
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    fcntl(&w, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        tx.send(nix::unistd::gettid().as_raw() as i64).unwrap();
        let n = nix::unistd::write(&w, b"one more").unwrap();
        tx.send(n as i64).unwrap();
    });
    let tid = rx.recv().unwrap() as i32;
    kernel::wait_until_blocked_in(tid, &[libc::SYS_write], "write on a full FIFO");
    assert!(
        rx.try_recv().is_err(),
        "write returned although the FIFO was full"
    );
    let mut buf = vec![0u8; 4096];
    assert_eq!(nix::unistd::read(&r, &mut buf), Ok(4096));
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 8);
    t.join().unwrap();
    drop(r);
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
    let r = open_read_end(&d.join("fifo"));
    w.wait_for("the FIFO is full");
    // The claim is N7 (the FIFO's), not P6 (the anonymous pipe's).
    assert!(
        w.stderr_now()
            .contains("write() would block here until the reader reads (N7)"),
        "{}",
        w.stderr_now()
    );
    assert!(!w.stderr_now().contains("(P6)"), "{}", w.stderr_now());
    // The kernel's view: bytes wait in the FIFO, none in the file, and the writer sleeps
    // in poll(2), where a blocking write would have slept.
    // Frames of 4136 bytes do not pack the 16 page slots full: "full" is at most the
    // capacity (about 45 KB of 64 KiB here, see the README's N7).
    let (queued, cap) = (
        kernel::fionread(r.as_fd()),
        common::stream::capacity(r.as_fd()).unwrap(),
    );
    assert!(
        (1..=cap).contains(&queued),
        "{queued} bytes in a FIFO of {cap}"
    );
    assert_eq!(fs::metadata(d.join("fifo")).unwrap().len(), 0);
    kernel::wait_until_process_blocked_in(w.pid(), &kernel::poll_calls(), "the writer");
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
    // The reader removed the FIFO; `kill -9` cannot be caught, so the writer's lock file
    // stays (its flock went with the process), and the next writer simply takes it over.
    assert_eq!(d.leftovers(), vec!["fifo.writer.lock".to_string()]);
    let args = ["--mode", "stream", "--count", "100", "--json"];
    let (wd, rd) = run_pair(&d, true, &args, &args);
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
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
        return common::testing::skip("needs root to give a FIFO to another user");
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
        let reader = bin.ends_with("reader");
        let d = dir(&format!("ctrlc-{reader}"));
        let mut p = start(&d, bin, &["--mode", "pingpong"]);
        p.wait_for("blocks until");
        // The writer made both names; the reader, which opens the way back only once the
        // writer's Hello says pingpong, only the first. Each holds its role's lock.
        assert!(is_fifo(&d.join("fifo")));
        assert_eq!(is_fifo(&d.join("fifo.back")), !reader);
        let role = if reader { "reader" } else { "writer" };
        assert!(d.join(&format!("fifo.{role}.lock")).exists());
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
    // A value only the program can check exits 2, as clap's own checks do (README).
    assert_eq!(p.status.code(), Some(2));
    assert!(
        p.stderr
            .contains("--pipe-size 1024 is out of range: 4096 to")
            && p.stderr.contains("(/proc/sys/fs/pipe-max-size)"),
        "{}",
        p.stderr
    );
    // Above the upper limit, which the program reads from /proc: exit 2 as well.
    let max: usize = fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // (--pipe-size takes up to 4 GiB, so any pipe-max-size the kernel allows is checked
    // by the program, which names it.)
    let above = (max + 1).to_string();
    let p = start(&d, WRITER, &["--mode", "pingpong", "--pipe-size", &above]).finish();
    assert_eq!(p.status.code(), Some(2), "{}", p.stderr);
    assert!(
        p.stderr.contains(&format!(
            "--pipe-size {above} is out of range: 4096 to {max} bytes"
        )),
        "{}",
        p.stderr
    );
    let p = start(&d, READER, &["--name", "../x"]).finish();
    assert_eq!(p.status.code(), Some(2));
    assert!(p.stderr.contains("--name"), "{}", p.stderr);
    let p = start(&d, READER, &["--max-size", "0"]).finish();
    assert_eq!(p.status.code(), Some(2));
    assert!(
        p.stderr.contains("--max-size") && p.stderr.contains("between 1 byte and"),
        "{}",
        p.stderr
    );
    // Nothing was created, not even a lock: flags are checked first.
    assert!(!d.path.join("fifo").exists());
    d.assert_empty();
}

/// A FIFO held open by some other program (here this test, both ends: a connected pair
/// that took no lock of ours) is refused by either program, which names the holder by its
/// program name and stays out. (A second named-pipe program is refused earlier, by the
/// role lock: `a_second_reader_...`, `a_second_writer_...`.)
#[test]
fn a_fifo_in_use_by_a_connected_pair_is_refused() {
    let d = dir("busy");
    fs::create_dir_all(&d.path).unwrap();
    let p = d.join("fifo");
    nix::unistd::mkfifo(&p, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let r = open(&p, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    let w = open(&p, OFlag::O_WRONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    let me = std::process::id();
    let exe = std::env::current_exe().unwrap();
    let my_name = exe.file_name().unwrap().to_string_lossy();
    for bin in [WRITER, READER] {
        let other = start(&d, bin, &["--timeout", "0.5"]).finish();
        assert_eq!(other.status.code(), Some(1), "{}", other.stderr);
        assert!(
            other.stderr.contains("is in use by a connected pair")
                && other.stderr.contains(&format!("pid {me} ({my_name})")),
            "{}",
            other.stderr
        );
    }
    drop((r, w));
    fs::remove_file(&p).unwrap();
    d.assert_empty();
}

/// Stands in for a pingpong writer: waits (bounded) for the reader to open the FIFO the
/// test made or the reader made, and sends the Hello of a pingpong writer on it. The
/// reader then makes and opens the way back; the returned write end keeps the pair alive.
fn hello_as_a_pingpong_writer(d: &TestDir) -> File {
    let mut there = open_write_end(&real(&d.join("fifo")));
    send(&mut there, Kind::Hello, 0, &hello(RunMode::Pingpong, 8, 3));
    there
}

/// Issue 12, a failure right after a create: pingpong needs two FIFOs, and here the second
/// step is refused (a regular file, not ours to touch, sits at `fifo.back`). Each program
/// created `fifo` first; its error path removes it, and the stranger's file is kept. The
/// writer meets `fifo.back` at its start; the reader only once a pingpong Hello came (here
/// from this test).
#[test]
fn a_refused_second_fifo_removes_the_first_one() {
    for bin in [WRITER, READER] {
        let reader = bin.ends_with("reader");
        let d = dir(&format!("second-refused-{reader}"));
        fs::create_dir_all(&d.path).unwrap();
        fs::write(d.join("fifo.back"), b"someone's file").unwrap();
        let out = if reader {
            let mut r = start(&d, READER, &[]);
            r.wait_for("blocks until named-pipe-writer");
            let there = hello_as_a_pingpong_writer(&d);
            let out = r.finish();
            drop(there);
            out
        } else {
            start(&d, bin, &["--mode", "pingpong", "--timeout", "0.5"]).finish()
        };
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(
            out.stderr.contains("created FIFO")
                && out
                    .stderr
                    .contains("fifo.back exists and is a regular file")
                && out.stderr.contains(&format!(
                    "removed FIFO {}",
                    real(&d.path).join("fifo").display()
                )),
            "{}",
            out.stderr
        );
        assert_eq!(d.leftovers(), vec!["fifo.back".to_string()]);
        assert_eq!(fs::read(d.join("fifo.back")).unwrap(), b"someone's file");
        fs::remove_file(d.join("fifo.back")).unwrap();
        d.assert_empty();
    }
}

/// Issue 12: the runtime dir's file system is full after the first FIFO (a tmpfs of three
/// inodes: its root, the program's role lock and one FIFO), so the second `mkfifo` fails
/// with ENOSPC; the first is removed and the file system is left empty. The reader makes
/// the second once a pingpong Hello came (from this test). Needs root (skipped otherwise).
#[test]
fn a_full_file_system_fails_the_second_mkfifo_and_the_first_is_removed() {
    for bin in [WRITER, READER] {
        let reader = bin.ends_with("reader");
        let tag = format!("enospc-{reader}");
        let fs_ = match harness::Tmpfs::mount(&tag, 3) {
            Ok(t) => t,
            Err(why) => return common::testing::skip(&why),
        };
        let d = &fs_.dir;
        let out = if reader {
            let mut r = start(d, READER, &[]);
            r.wait_for("blocks until named-pipe-writer");
            let there = hello_as_a_pingpong_writer(d);
            let out = r.finish();
            drop(there);
            out
        } else {
            start(d, bin, &["--mode", "pingpong", "--timeout", "0.5"]).finish()
        };
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(
            out.stderr.contains("created FIFO")
                && out.stderr.contains("mkfifo")
                && out.stderr.contains("ENOSPC")
                && out.stderr.contains("removed FIFO"),
            "{}",
            out.stderr
        );
        d.assert_empty();
    }
}

/// Issue 12: both sides are connected on the way there, and the open of the way back
/// times out: the peer read or sent a pingpong Hello and then never opens `fifo.back`
/// (this test stands in for it; a real peer follows the Hello). Whoever created what
/// removes it. `--timeout 2` ends both waits in `open`; the test connects within it.
#[test]
fn a_timed_out_second_open_leaves_no_fifo() {
    // The reader made `fifo.back` after the Hello and owns `fifo` once connected: it
    // removes both (this test made `fifo`, as a writer that came first would).
    let d = dir("back-open-timeout-reader");
    fs::create_dir_all(&d.path).unwrap();
    nix::unistd::mkfifo(&d.join("fifo"), Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let r = start(&d, READER, &["--timeout", "2"]);
    let there = hello_as_a_pingpong_writer(&d);
    let r = r.finish();
    drop(there);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("the writer did not open") && r.stderr.contains("fifo.back for reading"),
        "{}",
        r.stderr
    );
    d.assert_empty();

    // The writer made both names; this test is a reader that opens `fifo`, takes the
    // Hello and never opens `fifo.back`: the writer removes both.
    let d = dir("back-open-timeout-writer");
    let mut w = start(&d, WRITER, &["--mode", "pingpong", "--timeout", "2"]);
    w.wait_for("blocks until named-pipe-reader opens it");
    let mut fifo = open_read_end(&d.join("fifo"));
    let (h, _) = kernel::next_frame(
        &mut fifo,
        &mut Reassembler::new(MAX_PAYLOAD),
        Instant::now(),
    )
    .expect("the writer's Hello");
    assert_eq!(h.kind, Kind::Hello);
    let wd = w.finish();
    drop(fifo);
    assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
    assert!(
        wd.stderr.contains("the reader did not open") && wd.stderr.contains("removed FIFO"),
        "{}",
        wd.stderr
    );
    d.assert_empty();
}

/// The capacity the writer reported (`FIFO capacity: N bytes`).
fn capacity_said(writer_stderr: &str) -> String {
    writer_stderr
        .lines()
        .find_map(|l| l.split_once("FIFO capacity: ")?.1.split_once(' '))
        .map(|(n, _)| n.to_string())
        .expect("the writer's capacity line")
}

/// Issue 10: a reader started with no flags runs whatever the writer runs, as its Hello
/// says: here a stream, verified, and nothing printed but the report.
#[test]
fn a_reader_without_flags_follows_a_stream_writer() {
    for reader_first in [true, false] {
        let d = dir(&format!("follow-stream-{reader_first}"));
        let wargs = [
            "--mode", "stream", "--count", "3000", "--size", "4K", "--json",
        ];
        let (wd, rd) = run_pair(&d, reader_first, &wargs, &["--json"]);
        assert_ok(&wd, "writer");
        assert_ok(&rd, "reader");
        let cap = capacity_said(&wd.stderr);
        for needle in [
            "the writer's Hello: named-pipe-writer ",
            &format!(" runs --mode stream --size 4096 --count 3000 --warmup 300 (fifo, waits: block, capacity {cap} B); this reader follows it"),
        ] {
            assert!(rd.stderr.contains(needle), "no {needle:?} in:\n{}", rd.stderr);
        }
        let rep = rd.report("reader", false);
        assert!(rep.verified && rep.mode == "stream", "{rep:?}");
        assert_eq!((rep.count, rep.bytes), (3000, 3000 * 4096));
        assert_eq!(rd.stdout.lines().count(), 1, "{}", rd.stdout);
        d.assert_empty();
    }
}

/// The same with a pingpong writer: only once the Hello has said pingpong does the reader
/// open the way back, `fifo.back` (the writer, which knew from its start, made it).
#[test]
fn a_reader_without_flags_follows_a_pingpong_writer() {
    for reader_first in [true, false] {
        let d = dir(&format!("follow-pingpong-{reader_first}"));
        let wargs = ["--mode", "pingpong", "--count", "300", "--json"];
        let (wd, rd) = run_pair(&d, reader_first, &wargs, &["--json"]);
        assert_ok(&wd, "writer");
        assert_ok(&rd, "reader");
        let wrep = wd.report("writer", false);
        assert!(wrep.verified && wrep.count == 300, "{wrep:?}");
        let rrep = rd.report("reader", false);
        assert_eq!(
            (rrep.mode.as_str(), rrep.count),
            ("pingpong", 300),
            "{rrep:?}"
        );
        let hello_at = rd
            .stderr
            .find("runs --mode pingpong --size 64 --count 300 --warmup 30 (fifo, ")
            .expect("the Hello, narrated");
        let back_at = rd
            .stderr
            .find("the writer runs pingpong: opening ")
            .expect("the way back, opened");
        assert!(hello_at < back_at, "{}", rd.stderr);
        assert!(
            !rd.stderr[..hello_at].contains("fifo.back"),
            "{}",
            rd.stderr
        );
        d.assert_empty();
    }
}

/// Issue 10, mode mismatch: a reader started with `--mode pingpong` and a stream writer.
/// The reader says both values and the fix and exits 1; the writer finds the FIFO closed
/// and exits 1; nothing is left behind.
#[test]
fn a_reader_expecting_pingpong_refuses_a_stream_writer_naming_both() {
    for reader_first in [true, false] {
        let d = dir(&format!("mode-mismatch-{reader_first}"));
        let wargs = ["--mode", "stream", "--count", "1e6", "--size", "4K"];
        let (wd, rd) = run_pair(&d, reader_first, &wargs, &["--mode", "pingpong"]);
        assert_eq!(rd.status.code(), Some(1), "{}", rd.stderr);
        for needle in [
            "error: the writer (named-pipe-writer) runs --mode stream --size 4096 --count 1000000 --warmup 10000",
            "this reader was started with --mode pingpong",
            "restart the reader without --mode, or with --mode stream",
        ] {
            assert!(rd.stderr.contains(needle), "no {needle:?} in:\n{}", rd.stderr);
        }
        assert!(!rd.stderr.contains("fifo.back"), "{}", rd.stderr);
        assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
        assert!(
            wd.stderr.contains("error: reader closed the FIFO"),
            "{}",
            wd.stderr
        );
        d.assert_empty();
    }
}

/// Issue 10, size mismatch (`named-pipe-reader --size 16 --count 10` used to report the
/// writer's 500 x 4096 B): both flags are checks on the Hello. Against a pingpong writer,
/// which waits for the reader on the way back right after its Hello, the writer says that
/// the reader left right after the Hello.
#[test]
fn a_size_mismatch_is_named_by_the_reader_and_the_writer_says_when_it_left() {
    for reader_first in [true, false] {
        let d = dir(&format!("size-mismatch-stream-{reader_first}"));
        let wargs = ["--mode", "stream", "--count", "500", "--size", "4096"];
        let (wd, rd) = run_pair(&d, reader_first, &wargs, &["--size", "16", "--count", "10"]);
        assert_eq!(rd.status.code(), Some(1), "{}", rd.stderr);
        for needle in [
            "the writer (named-pipe-writer) runs --mode stream --size 4096 --count 500 --warmup 50",
            "this reader was started with --size 16 --count 10",
            "restart the reader without --size --count, or with --size 4096 --count 500",
        ] {
            assert!(
                rd.stderr.contains(needle),
                "no {needle:?} in:\n{}",
                rd.stderr
            );
        }
        assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
        assert!(
            wd.stderr.contains("error: reader closed the FIFO"),
            "{}",
            wd.stderr
        );
        d.assert_empty();

        let d = dir(&format!("size-mismatch-pingpong-{reader_first}"));
        let wargs = ["--mode", "pingpong", "--count", "500", "--size", "4096"];
        let (wd, rd) = run_pair(&d, reader_first, &wargs, &["--size", "16"]);
        assert_eq!(rd.status.code(), Some(1), "{}", rd.stderr);
        assert!(
            rd.stderr.contains(
                "this reader was started with --size 16: restart the reader without --size, or with --size 4096"
            ),
            "{}",
            rd.stderr
        );
        assert_eq!(wd.status.code(), Some(1), "{}", wd.stderr);
        assert!(
            wd.stderr.contains(
                "error: reader closed the FIFO right after this writer's Hello (--mode pingpong --size 4096 --count 500 --warmup 50), before any message"
            ),
            "{}",
            wd.stderr
        );
        d.assert_empty();
    }
}

/// Issue 10: two FIFO readers used to split the messages between them silently. A second
/// reader on the same name is refused by the role lock, with the first one's pid, before
/// it touches the FIFO; the first pair still completes, verified; nothing is left.
#[test]
fn a_second_reader_is_refused_with_the_pid_of_the_first() {
    let d = dir("second-reader");
    let mut r = start(&d, READER, &["--json"]);
    r.wait_for("blocks until named-pipe-writer");
    let second = start(&d, READER, &["--timeout", "0.5"]).finish();
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    let fifo = real(&d.join("fifo"));
    for needle in [
        format!(
            "error: the FIFO {} already has a reader (named-pipe-reader, pid {}, which holds {}.reader.lock)",
            fifo.display(),
            r.pid(),
            fifo.display()
        ),
        "a second reader would split the messages with the first".into(),
    ] {
        assert!(
            second.stderr.contains(&needle),
            "no {needle:?} in:\n{}",
            second.stderr
        );
    }
    // Refused before the FIFO: it neither made, reused nor opened it.
    for not in ["created FIFO", "already exists", "opening ", "opened "] {
        assert!(!second.stderr.contains(not), "{}", second.stderr);
    }
    let mut w = start_with_stdin(&d, WRITER, &["--json"]);
    w.write_stdin(b"still one pair\n");
    r.wait_for("still one pair");
    w.close_stdin();
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    let rep = rd.report("reader", false);
    assert!(rep.verified && rep.count == 1, "{rep:?}");
    d.assert_empty();
}

/// A second writer on a connected pair is refused by the role lock with the first
/// writer's pid; the first pair still completes, verified; nothing is left.
#[test]
fn a_second_writer_is_refused_with_the_pid_of_the_first() {
    let d = dir("second-writer");
    let mut r = start(&d, READER, &["--json"]);
    r.wait_for("blocks until named-pipe-writer");
    let mut w = start_with_stdin(&d, WRITER, &["--json"]);
    w.write_stdin(b"first\n");
    r.wait_for("first");
    let second = start(&d, WRITER, &["--timeout", "0.5"]).finish();
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    let fifo = real(&d.join("fifo"));
    assert!(
        second.stderr.contains(&format!(
            "error: the FIFO {} already has a writer (named-pipe-writer, pid {}, which holds {}.writer.lock)",
            fifo.display(),
            w.pid(),
            fifo.display()
        )),
        "{}",
        second.stderr
    );
    for not in ["created FIFO", "already exists", "opening ", "opened "] {
        assert!(!second.stderr.contains(not), "{}", second.stderr);
    }
    w.write_stdin(b"second\n");
    r.wait_for("second");
    w.close_stdin();
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    let rep = rd.report("reader", false);
    assert!(rep.verified && rep.count == 2, "{rep:?}");
    d.assert_empty();
}

/// The long flags a program's `--help` lists, and the help text.
fn help(bin: &str) -> (std::collections::BTreeSet<String>, String) {
    let d = Proc::spawn(
        "--help",
        Command::new(bin).arg("--help").stdin(Stdio::null()),
    )
    .finish();
    assert_ok(&d, "--help");
    let flags = d
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|t| t.starts_with("--")))
        .map(|t| t.trim_end_matches(',').to_string())
        .collect();
    (flags, d.stdout)
}

/// Issue 10, flags per role: each program lists only the flags that act on it, and
/// `--help` shows the real default name (`fifo`), not "per mechanism".
#[test]
fn help_lists_only_each_programs_flags_with_the_default_name() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let shared = [
        "--mode",
        "--count",
        "--size",
        "--warmup",
        "--name",
        "--timeout",
        "--json",
        "--quiet",
        "--help",
    ];
    let (flags, text) = help(WRITER);
    assert_eq!(
        flags,
        set(&[&shared[..], &["--pipe-size", "--splice"]].concat()),
        "{text}"
    );
    for default in [
        "[default: fifo]",
        "[default: 30]",
        "[default: text]",
        "[default: 64]",
    ] {
        assert!(text.contains(default), "no {default} in:\n{text}");
    }
    let (flags, text) = help(READER);
    assert_eq!(
        flags,
        set(&[&shared[..], &["--max-size"]].concat()),
        "{text}"
    );
    assert!(text.contains("[default: fifo]"), "{text}");
    assert_eq!(
        text.matches("[default: follow the writer]").count(),
        4,
        "{text}"
    );
    // A flag of the other role is refused, not silently accepted; nothing is created.
    let d = dir("help");
    for (bin, flag) in [(WRITER, "--max-size"), (READER, "--pipe-size")] {
        let p = start(&d, bin, &[flag, "64K"]).finish();
        assert_eq!(p.status.code(), Some(2), "{}", p.stderr);
        assert!(
            p.stderr.contains(&format!("unexpected argument '{flag}'")),
            "{}",
            p.stderr
        );
    }
    d.assert_empty();
}

/// `--pipe-size` is checked by the program against the kernel's limit, and the error names
/// that limit (it said "16 MiB", the message size limit, before issue 10).
#[test]
fn a_pipe_size_above_pipe_max_size_names_the_kernel_limit() {
    let max: usize = fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if max >= 100 << 20 {
        return common::testing::skip("pipe-max-size is 100 MiB or more here");
    }
    let d = dir("pipe-size-100m");
    let p = start(&d, WRITER, &["--pipe-size", "100M"]).finish();
    assert_eq!(p.status.code(), Some(2), "{}", p.stderr);
    assert!(
        p.stderr.contains(&format!(
            "--pipe-size 104857600 is out of range: 4096 to {max} bytes (/proc/sys/fs/pipe-max-size)"
        )) && !p.stderr.contains("16 MiB"),
        "{}",
        p.stderr
    );
    d.assert_empty();
}

/// N7 as it happens (issue 10): the reader of a long stream is stopped (`kill -STOP`)
/// right after its `open`; half a second into its wait on the full FIFO the writer
/// says it is blocked and why; the reader is resumed (`kill -CONT`) and the writer says
/// how long the wait lasted; the pair completes, verified; nothing is left.
#[test]
fn claim_n7_a_stopped_reader_is_narrated_while_the_writer_waits() {
    let d = dir("n7-stall");
    let wargs = [
        "--mode", "stream", "--count", "20000", "--size", "4K", "--json",
    ];
    let mut w = start(&d, WRITER, &wargs);
    w.wait_for("blocks until named-pipe-reader");
    let mut r = start(&d, READER, &["--json"]);
    // Stopped as soon as its open has returned (stopped inside open, it would leave it
    // and the writer would have no reader), long before 80 MB could pass.
    r.wait_for("for reading: this descriptor can only read");
    r.signal(Signal::SIGSTOP);
    w.wait_for("write() has been blocked for ");
    assert!(
        w.stderr_now()
            .contains(": the FIFO is full (N7); the reader is not taking anything"),
        "{}",
        w.stderr_now()
    );
    r.signal(Signal::SIGCONT);
    w.wait_for(": the FIFO was full (N7); going on");
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    let rep = rd.report("reader", false);
    assert!(rep.verified && rep.count == 20000, "{rep:?}");
    let notes = wd.report("writer", false).notes;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("write() waited ")
                && n.contains("(the FIFO was full, N7): longest ")),
        "{notes:?}"
    );
    d.assert_empty();
}

/// Issue 10: the reader shows its peer by the name it was run by (`argv[0]`), not by the
/// kernel's `comm`, which cut it to `named-pipe-writ`.
#[test]
fn the_writer_is_shown_by_its_program_name_not_the_cut_comm() {
    let d = dir("argv0");
    let mut r = start(&d, READER, &["--json"]);
    r.wait_for("blocks until named-pipe-writer");
    let mut w = start_with_stdin(&d, WRITER, &["--json"]);
    w.write_stdin(b"who is there\n");
    r.wait_for("who is there");
    w.close_stdin();
    let wpid = w.pid();
    let (wd, rd) = (w.finish(), r.finish());
    assert_ok(&wd, "writer");
    assert_ok(&rd, "reader");
    assert!(
        rd.stderr.contains(&format!(
            "the write end is held by pid {wpid} (named-pipe-writer), whose parent"
        )) && !rd.stderr.contains("(named-pipe-writ)"),
        "{}",
        rd.stderr
    );
    d.assert_empty();
}

/// Issue 13 item 3, `--splice` through the FIFO: a stream lent with vmsplice arrives
/// verified at every size, with the default FIFO and a one-slot one (`--pipe-size 4096`,
/// where the writer waits on nearly every vmsplice and each buffer is rebuilt with the FIFO
/// as full as it gets), in both start orders; the writer says which path ran and with how
/// many buffers (K from the capacity it reports); nothing is left behind.
#[test]
fn splice_stream_through_the_fifo_arrives_verified_at_every_size() {
    let cases: [(usize, &str); 4] = [
        (64, "3000"),
        (4096, "1000"),
        (65537, "200"),
        (1 << 20, "20"),
    ];
    let mut reader_first = false;
    for pipe_size in [None, Some("4096")] {
        for (size, count) in cases {
            reader_first = !reader_first;
            let case = format!("size {size}, count {count}, --pipe-size {pipe_size:?}");
            let d = dir(&format!("splice-{size}-{}", pipe_size.unwrap_or("default")));
            let size_s = size.to_string();
            let mut wargs = vec![
                "--mode", "stream", "--splice", "--size", &size_s, "--count", count, "--json",
            ];
            wargs.extend(pipe_size.iter().flat_map(|p| ["--pipe-size", p]));
            let (wd, rd) = run_pair(&d, reader_first, &wargs, &["--json"]);
            assert_ok(&wd, "writer");
            assert_ok(&rd, "reader");
            let rr = rd.report("reader", false);
            let n: u64 = count.parse().unwrap();
            assert!(
                rr.verified && rr.count == n && rr.bytes == n * size as u64,
                "{case}: {rr:?}"
            );
            let wr = wd.report("writer", false);
            let cap: usize = wr
                .notes
                .iter()
                .find_map(|n| {
                    n.strip_prefix("FIFO capacity ")?
                        .strip_suffix(" bytes")?
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("{case}: no capacity in {:?}", wr.notes));
            let k = pipe::splice::buffers_needed(
                cap,
                common::frame::HEADER_LEN + size,
                pipe::splice::page_size(),
            );
            let lent = format!("vmsplice: frames lent to the FIFO from {k} rotating buffers of ");
            assert!(
                wr.notes.iter().any(|n| n.starts_with(&lent)),
                "{case}: {:?}",
                wr.notes
            );
            assert!(
                wd.stderr.contains(&format!("--splice: frames are lent to the FIFO with vmsplice(2), not copied, from {k} buffers")),
                "{case}: {}",
                wd.stderr
            );
            d.assert_empty();
        }
    }
}

/// `--splice` is for stream mode: text and pingpong are refused as a bad flag (exit 2)
/// naming the flag and the mode, before anything is created (no lock, no FIFO).
#[test]
fn splice_outside_stream_mode_is_a_bad_flag_and_creates_nothing() {
    let d = dir("splice-flags");
    for (args, mode) in [
        (&["--splice"][..], "text"),
        (&["--mode", "pingpong", "--splice"][..], "pingpong"),
    ] {
        let p = start(&d, WRITER, args).finish();
        assert_eq!(p.status.code(), Some(2), "{args:?}: {}", p.stderr);
        assert!(
            p.stderr.contains(&format!(
                "--splice works with --mode stream only, and this run is --mode {mode}"
            )),
            "{args:?}: {}",
            p.stderr
        );
    }
    assert!(!d.path.join("fifo").exists());
    d.assert_empty();
}
