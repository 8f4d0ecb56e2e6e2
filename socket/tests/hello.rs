//! Issue 10 for the socket pair: the writer's Hello and the reader's answer. A reader
//! started with only its rendezvous flags runs whatever the writer runs (stream, pingpong,
//! text); a reader flag that contradicts the Hello (mode, size, --max-size) is an error
//! naming both values and the fix, and the writer says the reader left right after its
//! Hello; each program's --help lists only its own flags, with the real defaults.

mod harness;

use std::process::Stdio;

use harness::pair::{assert_ok, dir, run_pair, start, start_pair, Via, READER, WRITER};
use harness::Proc;

/// The number after `before` in `text` (`capacity 212992 B` → 212992).
fn number_after(text: &str, before: &str) -> u64 {
    let rest = text
        .split(before)
        .nth(1)
        .unwrap_or_else(|| panic!("no {before:?} in {text}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

#[test]
fn a_reader_without_flags_follows_a_stream_writer() {
    for via in [Via::Tcp, Via::Unix] {
        for reader_first in [true, false] {
            let d = dir(&format!("follow-stream-{via:?}-{reader_first}"));
            let wargs = [
                "--mode", "stream", "--count", "300", "--size", "4K", "--json",
            ];
            let (wd, rd) = run_pair(&d, via, reader_first, &wargs, &["--json"]);
            assert_ok(&wd, "writer");
            assert_ok(&rd, "reader");
            let rep = rd.report("reader", false);
            assert!(rep.verified, "{rep:?}");
            assert_eq!(
                (rep.mode.as_str(), rep.count, rep.size_bytes, rep.bytes),
                ("stream", 300, 4096, 300 * 4096)
            );
            assert!(
                rd.stderr.contains(
                    "the writer's Hello: socket-writer 0.1.0 runs --mode stream --size 4096 --count 300 --warmup 30"
                ) && rd.stderr.contains("this reader follows it"),
                "{}",
                rd.stderr
            );
            // The Hello states the capacity the writer measured: SO_SNDBUF as the kernel
            // reports it.
            let said = number_after(&wd.stderr, "the Hello states a capacity of ");
            assert!(said > 0, "{}", wd.stderr);
            assert_eq!(number_after(&rd.stderr, "capacity "), said, "{}", rd.stderr);
            // The reader answered with its own Hello: the same run, its program.
            assert!(
                wd.stderr.contains(
                    "the reader answered the Hello with its own: socket-reader 0.1.0 runs --mode stream --size 4096 --count 300 --warmup 30"
                ),
                "{}",
                wd.stderr
            );
            d.assert_empty();
        }
    }
}

#[test]
fn a_reader_without_flags_follows_a_pingpong_writer() {
    for via in [Via::Tcp, Via::Unix] {
        for reader_first in [true, false] {
            let d = dir(&format!("follow-pingpong-{via:?}-{reader_first}"));
            let wargs = ["--mode", "pingpong", "--count", "200", "--json"];
            let (wd, rd) = run_pair(&d, via, reader_first, &wargs, &["--json"]);
            assert_ok(&wd, "writer");
            assert_ok(&rd, "reader");
            let wrep = wd.report("writer", false);
            assert!(wrep.verified && wrep.count == 200, "{wrep:?}");
            assert!(wrep.latency_ns.is_some(), "{wrep:?}");
            let rep = rd.report("reader", false);
            assert!(rep.verified && rep.mode == "pingpong", "{rep:?}");
            assert!(
                rd.stderr
                    .contains("runs --mode pingpong --size 64 --count 200")
                    && rd.stderr.contains("this reader follows it"),
                "{}",
                rd.stderr
            );
            // What pingpong needs is set up only once the Hello said pingpong.
            if let Via::Tcp = via {
                assert!(
                    rd.stderr.contains("TCP_NODELAY set for the Pongs"),
                    "{}",
                    rd.stderr
                );
            }
            d.assert_empty();
        }
    }
}

#[test]
fn a_reader_without_flags_follows_a_text_writer() {
    for via in [Via::Tcp, Via::Unix] {
        let d = dir(&format!("follow-text-{via:?}"));
        let (mut w, mut r) = start_pair(&d, via, true, &[], &["--json"], true);
        w.write_stdin(b"first\nsecond\n");
        r.wait_for(": second");
        w.close_stdin();
        let (wd, rd) = (w.finish(), r.finish());
        assert_ok(&wd, "writer");
        assert_ok(&rd, "reader");
        assert!(
            rd.stderr.contains("runs --mode text (")
                && rd.stderr.contains("this reader follows it"),
            "{}",
            rd.stderr
        );
        assert!(
            rd.stdout.contains(": first") && rd.stdout.contains(": second"),
            "{}",
            rd.stdout
        );
        let rep = rd.report("reader", false);
        assert!(
            rep.verified && rep.mode == "text" && rep.count == 2,
            "{rep:?}"
        );
        d.assert_empty();
    }
}

/// Runs a stream writer against a reader started with `rargs`, which must refuse its
/// Hello: the reader's error contains each of `needles`, the writer's says the reader left
/// right after the Hello, both exit 1 and nothing is left behind.
fn refused(test: &str, wargs: &[&str], rargs: &[&str], needles: &[&str]) {
    for via in [Via::Tcp, Via::Unix] {
        for reader_first in [true, false] {
            let d = dir(&format!("{test}-{via:?}-{reader_first}"));
            let (wd, rd) = run_pair(&d, via, reader_first, wargs, rargs);
            assert_eq!(rd.status.code(), Some(1), "reader: {}", rd.stderr);
            for n in needles {
                assert!(rd.stderr.contains(n), "reader: no {n:?} in {}", rd.stderr);
            }
            assert_eq!(wd.status.code(), Some(1), "writer: {}", wd.stderr);
            assert!(
                wd.stderr
                    .contains("reader reset or closed the connection (read returned 0 or ECONNRESET) right after this writer's Hello (--mode stream")
                    && wd.stderr.contains("before any message"),
                "writer: {}",
                wd.stderr
            );
            assert!(!wd.stdout.contains("messages x"), "{}", wd.stdout);
            d.assert_empty();
        }
    }
}

#[test]
fn a_pingpong_reader_refuses_a_stream_writer_naming_both_modes_and_the_fix() {
    refused(
        "mode-mismatch",
        &["--mode", "stream", "--count", "1000"],
        &["--mode", "pingpong"],
        &[
            "the writer (socket-writer) runs --mode stream --size 64 --count 1000 --warmup 100",
            "this reader was started with --mode pingpong",
            "restart the reader without --mode, or with --mode stream",
        ],
    );
}

#[test]
fn a_size_16_reader_refuses_a_4096_writer_naming_both_sizes_and_the_fix() {
    refused(
        "size-mismatch",
        &["--mode", "stream", "--count", "100", "--size", "4096"],
        &["--size", "16"],
        &[
            "the writer (socket-writer) runs --mode stream --size 4096 --count 100",
            "this reader was started with --size 16",
            "restart the reader without --size, or with --size 4096",
        ],
    );
}

#[test]
fn a_writer_over_the_readers_max_size_is_refused_at_the_hello() {
    refused(
        "max-size",
        &["--mode", "stream", "--count", "100", "--size", "4K"],
        &["--max-size", "1K"],
        &["the writer runs --size 4096; this reader takes at most --max-size 1024: restart it with --max-size 4096 or more"],
    );
}

/// The long flags `--help` lists (`  -q, --quiet`, `      --tcp [<HOST:PORT>]`).
fn listed_flags(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .map(|l| {
            l.strip_prefix("-q, ")
                .or(l.strip_prefix("-h, "))
                .unwrap_or(l)
        })
        .filter(|l| l.starts_with("--"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    flags.sort();
    flags
}

fn help(d: &harness::TestDir, bin: &str) -> String {
    let mut c = d.cmd(bin, &["--help"]);
    let out = Proc::spawn("help", c.stdin(Stdio::null())).finish();
    assert_ok(&out, bin);
    out.stdout
}

#[test]
fn help_lists_only_each_programs_flags_with_the_real_defaults() {
    let d = dir("help");
    let sock = format!("[default with no PATH: {}/socket.sock", d.path.display());
    let shared = [
        "--count",
        "--help",
        "--json",
        "--mode",
        "--nagle",
        "--name",
        "--quiet",
        "--size",
        "--sock-buf",
        "--tcp",
        "--timeout",
        "--unix",
        "--warmup",
    ];
    let w = help(&d, WRITER);
    let mut want: Vec<String> = shared.iter().map(|s| s.to_string()).collect();
    want.push("--batch".into());
    want.sort();
    assert_eq!(listed_flags(&w), want, "{w}");
    for needle in [
        "[default: socket]",
        "127.0.0.1:47400",
        &sock,
        "[default: text]",
        "[default: 100000]",
        "[default: 64]",
        "SO_SNDBUF",
        "[default: one write per frame]",
    ] {
        assert!(w.contains(needle), "writer --help: no {needle:?} in\n{w}");
    }
    assert!(
        !w.contains("SO_RCVBUF") && !w.contains("follow the writer"),
        "{w}"
    );

    let r = help(&d, READER);
    want.retain(|f| f != "--batch");
    want.extend(["--busy-poll", "--listen", "--max-size", "--show-reads"].map(String::from));
    want.sort();
    assert_eq!(listed_flags(&r), want, "{r}");
    for needle in [
        "[default: socket]",
        "127.0.0.1:47400",
        &sock,
        "[default: 16MiB]",
        "SO_RCVBUF",
        "SO_BUSY_POLL",
        "net.core.busy_read it needs CAP_NET_ADMIN",
    ] {
        assert!(r.contains(needle), "reader --help: no {needle:?} in\n{r}");
    }
    // The run flags are checks on the Hello, with no default of their own.
    assert_eq!(r.matches("[default: follow the writer]").count(), 4, "{r}");
    assert!(
        !r.contains("[default: text]") && !r.contains("SO_SNDBUF"),
        "{r}"
    );
    // --help creates nothing, not even the runtime dir it names.
    assert!(!d.path.exists(), "--help made {}", d.path.display());
    // A flag of the other role is refused (clap: exit 2).
    for other in ["--show-reads", "--listen", "--max-size", "--busy-poll"] {
        let out = start(&d, WRITER, &[other, "1", "--timeout", "0.5"]).finish();
        assert_eq!(out.status.code(), Some(2), "writer {other}: {}", out.stderr);
        assert!(out.stderr.contains("unexpected argument"), "{}", out.stderr);
    }
    let out = start(&d, READER, &["--batch", "1", "--timeout", "0.5"]).finish();
    assert_eq!(out.status.code(), Some(2), "reader --batch: {}", out.stderr);
    assert!(out.stderr.contains("unexpected argument"), "{}", out.stderr);
}
