//! The two programs explain themselves: a reader with no mode flags follows the writer's
//! Hello; a reader flag that contradicts it, a queue of the other flavour, a second reader
//! or writer, each is named with both values (or the pid already there) and the fix; the
//! "look with" hints name commands that really list the queue; a long wait on a full queue
//! is told as it starts and ends; `--help` offers only the flags that act. Each test has
//! its own runtime directory and name, runs every child under the harness deadline and
//! checks that no queue and no file is left behind.

mod harness;

use harness::{posix_or_skip, Done, Env, FLAVOURS};
use nix::sys::signal::Signal;

fn ok(d: &Done, who: &str) {
    assert!(
        d.status.success(),
        "{who} failed ({}):\n{}",
        d.status,
        d.stderr
    );
}

fn failed(d: &Done, who: &str) {
    assert_eq!(d.status.code(), Some(1), "{who}:\n{}", d.stderr);
}

fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

/// The flavours this machine runs: System V always, POSIX where `mq_open` works.
fn flavours(test: &str) -> Vec<(usize, &'static [&'static str])> {
    FLAVOURS
        .iter()
        .copied()
        .enumerate()
        .filter(|&(fi, _)| fi == 0 || posix_or_skip(&format!("{test} (POSIX part)")))
        .collect()
}

/// A reader started first with `r`, then a writer with `w`; both finished.
fn reader_first(env: &Env, r: &[&str], w: &[&str]) -> (Done, Done) {
    let mut rd = env.reader(r);
    rd.wait_for("waiting in ");
    let wd = env.writer(w).finish();
    (wd, rd.finish())
}

#[test]
fn a_reader_without_flags_follows_a_stream_writer() {
    for (fi, flavour) in flavours("follows a stream writer") {
        let env = Env::new(&format!("follow-stream-{fi}"));
        let w = with(
            flavour,
            &["--mode", "stream", "--count", "500", "--size", "1000"],
        );
        let (wd, rd) = reader_first(&env, &with(flavour, &["--json"]), &w);
        ok(&wd, "writer");
        ok(&rd, "reader");
        let r = rd.report("reader", false);
        assert_eq!(r.mode, "stream", "{}", rd.stderr);
        assert!(
            r.verified && (r.count, r.size_bytes) == (500, 1000),
            "{r:?}"
        );
        assert!(
            rd.stderr
                .contains("runs --mode stream --size 1000 --count 500")
                && rd.stderr.contains("; this reader follows it"),
            "{}",
            rd.stderr
        );
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

#[test]
fn a_reader_without_flags_follows_a_pingpong_writer() {
    for (fi, flavour) in flavours("follows a pingpong writer") {
        for first in ["reader", "writer"] {
            let env = Env::new(&format!("follow-pingpong-{fi}-{first}"));
            let w = with(flavour, &["--mode", "pingpong", "--count", "200", "--json"]);
            let r = with(flavour, &["--json"]);
            let (wd, rd) = if first == "reader" {
                reader_first(&env, &r, &w)
            } else {
                let mut wr = env.writer(&w);
                wr.wait_for("sent the Hello");
                let rd = env.reader(&r).finish();
                (wr.finish(), rd)
            };
            ok(&wd, "writer");
            ok(&rd, "reader");
            let (wr, rr) = (wd.report("writer", false), rd.report("reader", false));
            assert_eq!(rr.mode, "pingpong", "{}", rd.stderr);
            assert!(wr.verified && wr.count == 200, "{wr:?}");
            assert!(rr.verified && rr.count == 200, "{rr:?}");
            env.assert_clean(&[&wd.stderr, &rd.stderr]);
        }
    }
}

/// M4 in text mode: a typed reader (`--type 2`, no mode flag) asks for the Hello first
/// (type 102), then for its type; it puts the Hello back with the messages it leaves, so
/// the next reader follows the same session too.
#[test]
fn a_typed_reader_follows_a_text_writer_and_puts_the_hello_back_for_the_next_reader() {
    let env = Env::new("follow-typed");
    let mut w = env.writer(&[]);
    w.write_stdin(b"1: one\n2: two\n3: three\n");
    let wd = w.finish();
    ok(&wd, "writer");
    let r2 = env.reader(&["--type", "2", "--json"]).finish();
    ok(&r2, "reader --type 2");
    assert!(r2.stdout.contains("[type 2] #1 (6 B"), "{}", r2.stdout);
    assert!(r2.stderr.contains("msgrcv(msgtyp 102"), "{}", r2.stderr);
    let rest = env.reader(&["--json"]).finish();
    ok(&rest, "the next reader");
    for d in [&r2, &rest] {
        assert!(
            d.stderr.contains("the writer's Hello: msgqueue-writer")
                && d.stderr.contains("runs --mode text"),
            "{}",
            d.stderr
        );
    }
    assert!(
        rest.stdout.contains(": 1: one") && rest.stdout.contains(": 3: three"),
        "{}",
        rest.stdout
    );
    let rep = rest.report("reader", false);
    assert!(
        rep.verified && rep.count == 2 && rep.stale_skipped == 0,
        "{rep:?}"
    );
    env.assert_clean(&[&wd.stderr, &r2.stderr, &rest.stderr]);
}

/// The reader refuses, naming both values and the fix; the writer says the reader left
/// right after its Hello; nothing is left behind. Either start order.
fn refused(test: &str, r: &[&str], w: &[&str], reader_says: &[&str]) {
    for (fi, flavour) in flavours(test) {
        for first in ["reader", "writer"] {
            let env = Env::new(&format!("{test}-{fi}-{first}"));
            let (r, w) = (with(flavour, r), with(flavour, w));
            let (wd, rd) = if first == "reader" {
                reader_first(&env, &r, &w)
            } else {
                let mut wr = env.writer(&w);
                wr.wait_for("the queue is full");
                let rd = env.reader(&r).finish();
                (wr.finish(), rd)
            };
            failed(&rd, "reader");
            failed(&wd, "writer");
            for needle in reader_says {
                assert!(rd.stderr.contains(needle), "{needle:?}:\n{}", rd.stderr);
            }
            assert!(!rd.stderr.contains("verified"), "{}", rd.stderr);
            assert!(
                wd.stderr.contains(&format!(
                    "the reader (pid {}) left right after this writer's Hello",
                    pid_of(&rd, "reader")
                )),
                "{}",
                wd.stderr
            );
            assert!(!wd.stderr.contains("ipcrm"), "{}", wd.stderr);
            env.assert_clean(&[&wd.stderr, &rd.stderr]);
        }
    }
}

#[test]
fn a_pingpong_reader_refuses_a_stream_writer_naming_both_modes_and_the_fix() {
    refused(
        "mismatch-mode",
        &["--mode", "pingpong"],
        &["--mode", "stream", "--size", "4096", "--count", "1000"],
        &[
            "runs --mode stream --size 4096 --count 1000",
            "this reader was started with --mode pingpong",
            "restart the reader without --mode, or with --mode stream",
        ],
    );
}

#[test]
fn a_size_16_reader_refuses_a_size_4096_writer_naming_both_sizes_and_the_fix() {
    refused(
        "mismatch-size",
        &["--size", "16"],
        &["--mode", "stream", "--size", "4096", "--count", "1000"],
        &[
            "runs --mode stream --size 4096",
            "this reader was started with --size 16",
            "restart the reader without --size, or with --size 4096",
        ],
    );
}

#[test]
fn a_typed_reader_refuses_a_stream_writer() {
    let env = Env::new("mismatch-type");
    let w = ["--mode", "stream", "--size", "4096", "--count", "1000"];
    let (wd, rd) = reader_first(&env, &["--type", "2"], &w);
    failed(&rd, "reader");
    failed(&wd, "writer");
    assert!(
        rd.stderr.contains("runs --mode stream")
            && rd.stderr.contains("started with --type 2")
            && rd.stderr.contains("restart it without --type"),
        "{}",
        rd.stderr
    );
    assert!(
        wd.stderr.contains("left right after this writer's Hello"),
        "{}",
        wd.stderr
    );
    env.assert_clean(&[&wd.stderr, &rd.stderr]);
}

/// The other flavour, both ways. The side that starts first runs System V and waits with
/// a short `--timeout`, the second runs POSIX with a long one: the second's waiting line
/// names the first's queue, and the first's final timeout error names the second's; the
/// second is then stopped with Ctrl-C. A POSIX reader while a System V writer waits, then
/// a POSIX writer while a System V reader waits: each role says it in both places.
#[test]
fn a_queue_of_the_other_flavour_is_named_in_the_waiting_line_and_the_timeout_error() {
    if !posix_or_skip("the other flavour") {
        return;
    }
    let stream = ["--mode", "stream", "--size", "4K", "--count", "1000"];
    let runs = [
        (("writer", stream.to_vec()), ("reader", vec!["--posix"])),
        (("reader", vec![]), ("writer", with(&stream, &["--posix"]))),
    ];
    for (i, ((first, f_args), (second, s_args))) in runs.into_iter().enumerate() {
        let env = Env::new(&format!("other-flavour-{i}"));
        let (short, long) = (env.twin("3"), env.twin("30"));
        let start = |e: &Env, role: &str, args: &[&str]| match role {
            "writer" => e.writer(args),
            _ => e.reader(args),
        };
        let mut a = start(&short, first, &f_args);
        a.wait_for(match first {
            "writer" => "the queue is full",
            _ => "waiting in ",
        });
        let mut b = start(&long, second, &s_args);
        b.wait_for("a System V queue for --name");
        let ad = a.finish();
        b.signal(Signal::SIGINT);
        let bd = b.finish();
        failed(&ad, first);
        assert_eq!(bd.status.code(), Some(130), "{}", bd.stderr);
        // The first side's timeout error names the POSIX queue, and what to check.
        let error = ad
            .stderr
            .lines()
            .find(|l| l.contains("] error: "))
            .unwrap_or_else(|| panic!("no error line:\n{}", ad.stderr));
        let said = format!("no {second} came within --timeout, but a POSIX queue for --name");
        assert!(error.contains(&said), "{error}");
        let pid = pid_of(&bd, second);
        assert!(
            error.contains(&format!("its pair file names {second} pid {pid}, running"))
                && error.contains(&format!("is the {second} running with --posix")),
            "{error}"
        );
        assert!(
            !error.contains("went away") && !error.contains("after 0 messages"),
            "{error}"
        );
        // The second side's waiting line names the System V queue, its key and the pid.
        let waiting = bd
            .stderr
            .lines()
            .find(|l| l.contains("a System V queue for --name"))
            .unwrap();
        let pid = pid_of(&ad, first);
        assert!(
            waiting.contains(&format!("no {first} has opened this queue yet"))
                && waiting.contains(&format!("{}, msqid", harness::keys_in(&ad.stderr)[0]))
                && waiting.contains(&format!("its pair file names {first} pid {pid}, running"))
                && waiting.contains(&format!("is the {first} running without --posix")),
            "{waiting}"
        );
        env.assert_clean(&[&ad.stderr, &bd.stderr]);
    }
}

/// The pid in a program's `[msgqueue-ROLE pid]` narration prefix.
fn pid_of(d: &Done, role: &str) -> String {
    d.stderr
        .split(&format!("[msgqueue-{role} "))
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap()
        .to_string()
}

/// One writer and one reader per pair: a second of either is refused with the pid already
/// there before it opens any queue (so the first pair's Ctrl-C or its end cannot hit it
/// with EIDRM), and the first pair goes on and verifies.
#[test]
fn a_second_reader_and_a_second_writer_are_refused_naming_the_first_ones_pid() {
    for (fi, flavour) in flavours("second reader and writer") {
        let env = Env::new(&format!("second-{fi}"));
        let mut w1 = env.writer(flavour);
        w1.write_stdin(b"first\n");
        w1.wait_for("the session starts");
        let mut r1 = env.reader(&with(flavour, &["--json"]));
        r1.wait_for(": first");
        let r2 = env.reader(flavour).finish();
        let w2 = env.writer(flavour).finish();
        for (d, role, pid) in [(&r2, "reader", r1.pid()), (&w2, "writer", w1.pid())] {
            failed(d, &format!("second {role}"));
            assert!(
                d.stderr
                    .contains(&format!("another {role} (pid {pid}, msgqueue-{role})")),
                "{}",
                d.stderr
            );
            assert!(
                !d.stderr.contains("msgget") && !d.stderr.contains("mq_open"),
                "refused before it opened a queue: {}",
                d.stderr
            );
        }
        w1.write_stdin(b"second\n");
        let (w1d, r1d) = (w1.finish(), r1.finish());
        ok(&w1d, "first writer");
        ok(&r1d, "first reader");
        let rep = r1d.report("reader", false);
        assert!(rep.verified && rep.count == 2, "{rep:?}");
        env.assert_clean(&[&w1d.stderr, &r1d.stderr, &r2.stderr, &w2.stderr]);
    }
}

/// Ctrl-C on the reader removes the queue under a writer that is still sending; the writer
/// says the reader stopped (the reader's line says `left`), not "someone ran ipcrm".
#[test]
fn ctrl_c_on_the_reader_tells_the_writer_why_the_queue_went() {
    for (fi, flavour) in flavours("ctrl-c on the reader, told") {
        let env = Env::new(&format!("sigint-told-{fi}"));
        let mut rd = env.reader(flavour);
        rd.wait_for("waiting in ");
        let w = with(
            flavour,
            &["--mode", "stream", "--size", "4K", "--count", "1e9"],
        );
        let wr = env.writer(&w);
        rd.wait_for("the writer's Hello: ");
        rd.signal(Signal::SIGINT);
        let rd = rd.finish();
        let wd = wr.finish();
        assert_eq!(rd.status.code(), Some(130), "{}", rd.stderr);
        failed(&wd, "writer");
        let pid = pid_of(&rd, "reader");
        assert!(
            wd.stderr
                .contains(&format!("the reader (pid {pid}) stopped before the end"))
                && wd
                    .stderr
                    .contains("error: reader stopped (Ctrl-C or an error) after "),
            "{}",
            wd.stderr
        );
        assert!(!wd.stderr.contains("ipcrm"), "{}", wd.stderr);
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

/// The flags `--help` lists, in order.
fn flags_in_help(exe: &str) -> (Vec<String>, String) {
    let out = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let flags = text
        .lines()
        .filter_map(|l| {
            // Flags stand at 2 or 6 spaces; their help, which may name a flag, at 10.
            if l.len() - l.trim_start().len() > 6 {
                return None;
            }
            let l = l
                .trim_start()
                .trim_start_matches("-q, ")
                .trim_start_matches("-h, ");
            let f = l.strip_prefix("--")?;
            Some(f.split([' ', '=']).next()?.to_string())
        })
        .collect();
    (flags, text)
}

#[test]
fn help_lists_only_the_flags_that_act_on_each_program_and_the_default_name() {
    let common = [
        "mode", "count", "size", "warmup", "name", "timeout", "posix", "key", "shared",
    ];
    let writer: Vec<&str> = common
        .iter()
        .copied()
        .chain(["type", "priority", "nowait", "queue-bytes", "queue-depth"])
        .chain(["json", "quiet", "help"])
        .collect();
    let reader: Vec<&str> = common
        .iter()
        .copied()
        .chain(["type", "writers", "queue-depth", "json", "quiet", "help"])
        .collect();
    for (exe, want) in [(harness::WRITER, writer), (harness::READER, reader)] {
        let (flags, text) = flags_in_help(exe);
        assert_eq!(flags, want, "{text}");
        assert!(text.contains("[default: msgqueue]"), "{text}");
        assert!(!text.contains("per mechanism"), "{text}");
    }
    // The reader's run flags are checks on the writer's Hello, not values of their own.
    let (_, text) = flags_in_help(harness::READER);
    assert_eq!(
        text.matches("[default: follow the writer]").count(),
        4,
        "{text}"
    );
}

/// Where to look: System V's hint is `ipcs -q`, and `ipcs -q` lists the queue; POSIX's is
/// `/dev/mqueue` (never `ipcs -q`), and `ls` lists it there, `cat` shows its QSIZE; or,
/// when `mqueue` is not mounted, the hint says so and gives the mount command.
#[test]
fn the_look_with_hints_name_commands_that_really_list_the_queue() {
    let run = |cmd: &str, arg: &str| {
        let out = std::process::Command::new(cmd).arg(arg).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (fi, flavour) in flavours("where to look") {
        let env = Env::new(&format!("look-{fi}"));
        let mut w = env.writer(flavour);
        w.write_stdin(b"look for me\n");
        let wd = w.finish();
        ok(&wd, "writer");
        let end = wd.stderr.lines().find(|l| l.contains("sent End")).unwrap();
        if fi == 0 {
            assert!(end.contains("(M1: ipcs -q lists it"), "{end}");
            let key = &harness::keys_in(&wd.stderr)[0];
            let ipcs = run("ipcs", "-q");
            assert!(
                ipcs.lines().any(|l| l.starts_with(key.as_str())),
                "{key}:\n{ipcs}"
            );
        } else {
            let file = env.posix_names()[0].trim_start_matches('/').to_string();
            assert!(!end.contains("ipcs -q lists"), "{end}");
            match msgqueue::elsewhere::mqueue_mount() {
                Some(at) => {
                    assert!(end.contains("ipcs -q never lists POSIX queues"), "{end}");
                    let at = at.display().to_string();
                    assert!(
                        end.contains(&format!("ls -l {at} lists it as {file}")),
                        "{end}"
                    );
                    assert!(
                        run("ls", &at).lines().any(|l| l == file),
                        "{file} not in {at}"
                    );
                    let info = run("cat", &format!("{at}/{file}"));
                    assert!(info.starts_with("QSIZE:"), "{info}");
                }
                None => {
                    // Without the mount the hint says how to mount it, and that ipcs
                    // never lists "them" (the POSIX queues it has just named).
                    assert!(end.contains(msgqueue::elsewhere::MOUNT_MQUEUE), "{end}");
                    assert!(end.contains("ipcs -q never lists them"), "{end}");
                    common::testing::skip("/dev/mqueue is not mounted: no listing to check");
                }
            }
        }
        let rd = env.reader(flavour).finish();
        ok(&rd, "reader");
        assert!(rd.stdout.contains(": look for me"), "{}", rd.stdout);
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

/// P6's analogue (M6): a writer whose queue stays full says so half a second in, and how
/// long it waited once a reader makes room; then both finish.
#[test]
fn a_long_wait_on_a_full_queue_is_told_as_it_starts_and_as_it_ends() {
    for (fi, flavour) in flavours("a long wait on a full queue") {
        let env = Env::new(&format!("stall-{fi}"));
        let call = if fi == 0 {
            "msgsnd()"
        } else {
            "mq_timedsend()"
        };
        let mut w = env.writer(&with(
            flavour,
            &["--mode", "stream", "--size", "4K", "--count", "200"],
        ));
        w.wait_for(&format!("{call} has been blocked for "));
        let rd = env.reader(flavour).finish();
        let wd = w.finish();
        ok(&wd, "writer");
        ok(&rd, "reader");
        let told = wd
            .stderr
            .lines()
            .find(|l| l.contains(&format!("{call} has been blocked for ")))
            .unwrap();
        assert!(told.contains("the queue is full (M6)"), "{told}");
        // No reader had come yet: the line says so, not "the reader is not taking anything".
        assert!(
            told.contains("no reader has opened the queue yet")
                && !told.contains("the reader is not"),
            "{told}"
        );
        let ended = wd
            .stderr
            .lines()
            .find(|l| l.contains(&format!("{call} blocked for ")))
            .unwrap_or_else(|| panic!("no end of the wait:\n{}", wd.stderr));
        assert!(
            ended.contains("the queue was full (M6); going on"),
            "{ended}"
        );
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

/// The three limit lines (M6) come once per program: at start, not again in the report.
#[test]
fn the_limits_are_printed_once_per_program() {
    for (fi, flavour) in flavours("limits once") {
        let env = Env::new(&format!("limits-once-{fi}"));
        let w = with(flavour, &["--mode", "stream", "--count", "50"]);
        let (wd, rd) = reader_first(&env, flavour, &w);
        ok(&wd, "writer");
        ok(&rd, "reader");
        let sysctl = if fi == 0 {
            "kernel.msgmni"
        } else {
            "fs.mqueue.queues_max"
        };
        for d in [&wd, &rd] {
            let all = format!("{}{}", d.stdout, d.stderr);
            assert_eq!(all.matches(sysctl).count(), 1, "{all}");
        }
        env.assert_clean(&[&wd.stderr, &rd.stderr]);
    }
}

/// M5: every shared writer sends its own Hello, and the reader of its type follows each.
#[test]
fn a_shared_reader_without_mode_flags_follows_each_writers_hello() {
    let env = Env::new("follow-shared");
    let mut r = env.reader(&["--shared", "--type", "4", "--writers", "2", "--json"]);
    r.wait_for("polls msgrcv");
    let args = [
        "--shared", "--type", "4", "--mode", "stream", "--size", "100",
    ];
    let a = env.writer(&with(&args, &["--count", "300"]));
    let b = env.writer(&with(&args, &["--count", "200"]));
    let (ad, bd, rd) = (a.finish(), b.finish(), r.finish());
    ok(&ad, "writer A");
    ok(&bd, "writer B");
    ok(&rd, "reader");
    let rep = rd.report("reader", false);
    assert_eq!(rep.mode, "stream");
    assert!(rep.verified && rep.count == 500, "{rep:?}");
    assert_eq!(
        rd.stderr.matches("the writer's Hello: ").count(),
        2,
        "{}",
        rd.stderr
    );
    env.assert_clean(&[&ad.stderr, &bd.stderr, &rd.stderr]);
}
