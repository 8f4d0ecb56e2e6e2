//! The fault matrix: every fault scenario against every mechanism and flavour, run as real
//! processes (`bench __role PROGRAM ...`, the code a learner runs), printed as a table of
//! pass / FAIL / skip so a reader sees what is covered.
//!
//! A cell passes when the programs end as the READMEs promise (the survivor of a killed
//! peer exits 1 and says so, Ctrl-C and SIGTERM exit 130, a bad flag value exits 2, a
//! stale object is replaced) and nothing is left behind: no file in the cell's runtime
//! directory, no `/dev/shm` or `/dev/mqueue` entry of its name, no System V queue or
//! segment it created. A skip says why the scenario does not apply (an anonymous pipe has
//! no name to go stale). Timings are never judged; the only waits are for narration lines
//! and generous deadlines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::testing::{Done, Proc};
use nix::sys::signal::Signal;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

/// One mechanism and flavour, as a learner starts it.
#[derive(Clone, Copy)]
struct Flavour {
    label: &'static str,
    writer: &'static str,
    reader: &'static str,
    /// Flags both programs take (after `--name`).
    flags: &'static [&'static str],
}

const FLAVOURS: &[Flavour] = &[
    Flavour {
        label: "pipe",
        writer: "pipe-writer",
        reader: "",
        flags: &[],
    },
    Flavour {
        label: "fifo",
        writer: "named-pipe-writer",
        reader: "named-pipe-reader",
        flags: &[],
    },
    Flavour {
        label: "mq-sysv",
        writer: "msgqueue-writer",
        reader: "msgqueue-reader",
        flags: &[],
    },
    Flavour {
        label: "mq-posix",
        writer: "msgqueue-writer",
        reader: "msgqueue-reader",
        flags: &["--posix"],
    },
    Flavour {
        label: "shm-posix",
        writer: "shm-writer",
        reader: "shm-reader",
        flags: &[],
    },
    Flavour {
        label: "shm-sysv",
        writer: "shm-writer",
        reader: "shm-reader",
        flags: &["--sysv"],
    },
    Flavour {
        label: "mmap",
        writer: "mmap-writer",
        reader: "mmap-reader",
        flags: &[],
    },
    Flavour {
        label: "tcp",
        writer: "socket-writer",
        reader: "socket-reader",
        flags: &["--tcp"],
    },
    Flavour {
        label: "unix",
        writer: "socket-writer",
        reader: "socket-reader",
        flags: &["--unix"],
    },
];

/// What one cell found.
#[derive(Clone, Debug)]
enum Cell {
    Pass,
    /// The killed side owned the object, so it stayed; the next run's stale rule replaced
    /// it and left nothing (what the README documents for `kill -9`).
    PassAfterStale(String),
    Fail(String),
    Skip(&'static str),
}

/// A cell's private world: its runtime directory, its rendezvous name, its TCP port.
struct Scene {
    flavour: Flavour,
    dir: PathBuf,
    name: String,
    port: u16,
    /// Everything the cell's programs printed on stderr, for the leak check's ids.
    stderr: Mutex<String>,
}

impl Scene {
    fn new(flavour: Flavour, scenario: &str) -> Scene {
        let name = format!("fm-{}-{scenario}-{}", flavour.label, std::process::id());
        let dir = std::env::temp_dir().join(format!("ipc-study-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        Scene {
            flavour,
            dir,
            name,
            port,
            stderr: Mutex::new(String::new()),
        }
    }

    /// `bench __role PROGRAM --name N [flavour flags] ARGS`, in this cell's runtime dir (the
    /// anonymous pipe has no name to meet by, so no `--name` or `--timeout`).
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(BENCH);
        cmd.arg("__role").arg(program);
        if !program.starts_with("pipe-") {
            cmd.args(["--name", &self.name, "--timeout", "10"]);
        }
        for f in self.flavour.flags {
            cmd.arg(f);
            if *f == "--tcp" {
                cmd.arg(format!("127.0.0.1:{}", self.port));
            }
        }
        if program == "pipe-writer" {
            cmd.args([
                "--spawn",
                "--reader-exe",
                BENCH,
                "--reader-arg=__role",
                "--reader-arg=pipe-reader",
            ]);
        }
        cmd.args(args)
            .env(common::runtime::DIR_ENV, &self.dir)
            .stdin(Stdio::null());
        cmd
    }

    fn start(&self, program: &str, args: &[&str]) -> Proc {
        Proc::spawn(program, &mut self.command(program, args))
    }

    fn keep(&self, d: &Done) {
        self.stderr.lock().unwrap().push_str(&d.stderr);
    }

    /// Nothing of this cell is left: runtime files, named objects, System V ids.
    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for d in ["/dev/shm", "/dev/mqueue"] {
            let mine = format!("-{}", self.name);
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.contains(&mine) {
                    left.push(format!("{d}/{n}"));
                }
            }
        }
        if self.flavour.label == "shm-sysv" {
            let key = format!("{:#010x}", shm::sysv_key(&self.name));
            if ipcs("-m").iter().any(|(k, _)| *k == key) {
                left.push(format!("System V segment key {key}"));
            }
        }
        if self.flavour.label == "mq-sysv" {
            let said = self.stderr.lock().unwrap().clone();
            for id in ids_after(&said, "msqid ") {
                if ipcs("-q").iter().any(|(_, i)| *i == id) {
                    left.push(format!("System V queue msqid {id}"));
                }
            }
        }
        left
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (key, id) of each System V object `ipcs -q` or `ipcs -m` lists.
fn ipcs(what: &str) -> Vec<(String, String)> {
    let out = Command::new("ipcs")
        .arg(what)
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (k, i) = (w.next()?, w.next()?);
            (k.starts_with("0x") && i.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (k.to_string(), i.to_string()))
        })
        .collect()
}

/// The numbers that follow `prefix` in `text` ("msqid 42" -> "42").
fn ids_after(text: &str, prefix: &str) -> Vec<String> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// A check inside a cell: `Err(why)` fails it.
type Check = Result<(), String>;

fn expect(cond: bool, why: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(why())
    }
}

fn status_is(d: &Done, code: i32, who: &str) -> Check {
    expect(d.status.code() == Some(code), || {
        format!(
            "{who} exited {:?}, expected {code}: {}",
            d.status.code(),
            last_line(&d.stderr)
        )
    })
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

const STREAM: &[&str] = &["--mode", "stream", "--count", "2000"];
const LONG: &[&str] = &["--mode", "stream", "--count", "1000000000"];

/// Reader and writer of a long stream, started reader first; returns both once the writer
/// has said it streams (or a pipe writer has started its child).
fn long_pair(s: &Scene) -> (Proc, Option<Proc>) {
    let f = s.flavour;
    if f.reader.is_empty() {
        let mut w = s.start(f.writer, LONG);
        w.wait_for("started pipe-reader as child pid");
        return (w, None);
    }
    let mut r = s.start(f.reader, LONG);
    r.wait_for("waiting");
    let w = s.start(f.writer, LONG);
    // Not a timing assertion: only a pause so the fault lands mid-stream rather than in
    // the rendezvous; the expected outcome is the same either way.
    std::thread::sleep(Duration::from_millis(300));
    (w, Some(r))
}

/// A narration line each program prints while it waits for its peer.
fn waiting_line(program: &str) -> &'static str {
    match program {
        // Alone, a queue writer fills the queue (M1), then blocks in msgsnd.
        "msgqueue-writer" => "blocks",
        _ => "waiting",
    }
}

fn verified_in_both_orders(s: &Scene) -> Check {
    let f = s.flavour;
    if f.reader.is_empty() {
        let d = s.start(f.writer, &[STREAM, &["--json"]].concat()).finish();
        s.keep(&d);
        status_is(&d, 0, "pipe-writer --spawn")?;
        return expect(d.stdout.contains("\"verified\":true"), || {
            "no verified reader report".into()
        });
    }
    for reader_first in [true, false] {
        let (w, r) = if reader_first {
            let mut r = s.start(f.reader, &[STREAM, &["--json"]].concat());
            r.wait_for("waiting");
            (s.start(f.writer, STREAM), r)
        } else {
            let w = s.start(f.writer, STREAM);
            // Not a timing assertion: the writer gets a head start, whatever it does with it.
            std::thread::sleep(Duration::from_millis(200));
            (w, s.start(f.reader, &[STREAM, &["--json"]].concat()))
        };
        let (w, r) = (w.finish(), r.finish());
        s.keep(&w);
        s.keep(&r);
        status_is(&w, 0, "writer")?;
        status_is(&r, 0, "reader")?;
        expect(r.any_report().verified, || {
            format!("reader first = {reader_first}: not verified")
        })?;
    }
    Ok(())
}

fn kill9_writer_midstream(s: &Scene) -> Check {
    let (w, r) = long_pair(s);
    let wd = w.kill9();
    s.keep(&wd);
    let Some(r) = r else {
        // The child reader of a killed pipe writer sees EOF without End and exits 1; its
        // stderr is the writer's, collected above.
        return Ok(());
    };
    let rd = r.finish();
    s.keep(&rd);
    status_is(&rd, 1, "the reader of a killed writer")
}

fn kill9_reader_midstream(s: &Scene) -> Check {
    let (w, r) = long_pair(s);
    match r {
        Some(r) => {
            let rd = r.kill9();
            s.keep(&rd);
        }
        None => {
            // Spawn mode: the reader is the writer's child; its pid is in the narration.
            let said = w.stderr_now();
            let pid: i32 = ids_after(&said, "as child pid ")
                .first()
                .and_then(|p| p.parse().ok())
                .ok_or("no child pid")?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
                .map_err(|e| e.to_string())?;
        }
    }
    let wd = w.finish();
    s.keep(&wd);
    status_is(&wd, 1, "the writer of a killed reader")
}

fn sigint_while_waiting(s: &Scene) -> Check {
    let f = s.flavour;
    if f.reader.is_empty() {
        return Err("unreachable: pipe is skipped".into());
    }
    for program in [f.reader, f.writer] {
        let mut p = s.start(program, STREAM);
        p.wait_for(waiting_line(program));
        p.signal(Signal::SIGINT);
        let d = p.finish();
        s.keep(&d);
        status_is(&d, 130, &format!("{program} after Ctrl-C while waiting"))?;
    }
    Ok(())
}

fn sigterm_midstream(s: &Scene) -> Check {
    let (w, r) = long_pair(s);
    w.signal(Signal::SIGTERM);
    let wd = w.finish();
    s.keep(&wd);
    status_is(&wd, 130, "the writer after SIGTERM")?;
    if let Some(r) = r {
        let rd = r.finish();
        s.keep(&rd);
        status_is(&rd, 1, "the reader of a terminated writer")?;
    }
    Ok(())
}

fn stale_is_replaced(s: &Scene) -> Check {
    let f = s.flavour;
    let mut r = s.start(f.reader, STREAM);
    r.wait_for("waiting");
    let d = r.kill9();
    s.keep(&d);
    let mut r = s.start(f.reader, &[STREAM, &["--json"]].concat());
    r.wait_for("waiting");
    let w = s.start(f.writer, STREAM).finish();
    let r = r.finish();
    s.keep(&w);
    s.keep(&r);
    status_is(&w, 0, "the writer after a stale object")?;
    status_is(&r, 0, "the reader after a stale object")?;
    expect(r.any_report().verified, || {
        "not verified after a stale object".into()
    })
}

/// A fresh short pair in the same scene: it must replace what a killed run left.
fn stale_next_run(s: &Scene) -> Check {
    let f = s.flavour;
    let mut r = s.start(f.reader, &[STREAM, &["--json"]].concat());
    r.wait_for("waiting");
    let w = s.start(f.writer, STREAM).finish();
    let r = r.finish();
    s.keep(&w);
    s.keep(&r);
    status_is(&w, 0, "the next writer")?;
    status_is(&r, 0, "the next reader")
}

fn bad_flag_exits_2(s: &Scene) -> Check {
    let f = s.flavour;
    for program in [f.writer, f.reader].into_iter().filter(|p| !p.is_empty()) {
        for bad in [
            &["--count", "0"][..],
            &["--timeout", "0"],
            &["--name", "a/b"],
        ] {
            let d = Proc::spawn(program, s.command(program, bad).stdin(Stdio::null())).finish();
            s.keep(&d);
            status_is(&d, 2, &format!("{program} {}", bad.join(" ")))?;
            expect(d.stderr.contains(bad[0]), || {
                format!("{program}: the error does not name {}", bad[0])
            })?;
        }
    }
    Ok(())
}

/// A fake peer sends bytes that are no frame (a 4 GiB length claim, say): the reader
/// refuses them with a message, exits 1, allocates nothing for the claim, leaves nothing.
fn garbage_is_refused(s: &Scene) -> Check {
    use std::io::Write;
    let f = s.flavour;
    // A header of this build's version that claims a 4 GiB payload, then plain text.
    let mut junk = b"IPCS".to_vec();
    junk.extend_from_slice(&[common::frame::VERSION, 1, 0, 0]);
    junk.extend_from_slice(&[0; 24]);
    junk.extend_from_slice(&u32::MAX.to_le_bytes());
    junk.extend_from_slice(b"....this is not a frame\n");
    let rd = match f.label {
        "pipe" => {
            let mut cmd = Command::new(BENCH);
            cmd.args(["__role", "pipe-reader", "--mode", "stream"])
                .env(common::runtime::DIR_ENV, &s.dir)
                .stdin(Stdio::piped());
            let mut p = Proc::spawn("pipe-reader", &mut cmd);
            p.write_stdin(&junk);
            p.close_stdin();
            p.finish()
        }
        "fifo" => {
            let mut r = s.start(f.reader, STREAM);
            r.wait_for("waiting");
            let mut fifo = std::fs::OpenOptions::new()
                .write(true)
                .open(s.dir.join(&s.name))
                .map_err(|e| format!("open the FIFO: {e}"))?;
            fifo.write_all(&junk).map_err(|e| e.to_string())?;
            drop(fifo);
            r.finish()
        }
        _ => {
            let mut r = s.start(f.reader, STREAM);
            r.wait_for("waiting");
            let sent = if f.label == "tcp" {
                std::net::TcpStream::connect(("127.0.0.1", s.port))
                    .and_then(|mut c| c.write_all(&junk))
            } else {
                let path = s.dir.join(format!("{}.sock", s.name));
                std::os::unix::net::UnixStream::connect(path).and_then(|mut c| c.write_all(&junk))
            };
            sent.map_err(|e| format!("connect and send: {e}"))?;
            r.finish()
        }
    };
    s.keep(&rd);
    status_is(&rd, 1, "a reader fed garbage")?;
    expect(
        rd.stderr.contains("exceeds the limit") || rd.stderr.contains("not an ipc-study frame"),
        || {
            format!(
                "the reader does not say what was wrong: {}",
                last_line(&rd.stderr)
            )
        },
    )
}

type Scenario = (
    &'static str,
    fn(&Scene) -> Check,
    fn(Flavour) -> Option<&'static str>,
);

const SCENARIOS: &[Scenario] = &[
    (
        "both start orders, verified",
        verified_in_both_orders,
        |_| None,
    ),
    ("kill -9 writer mid-stream", kill9_writer_midstream, |_| {
        None
    }),
    ("kill -9 reader mid-stream", kill9_reader_midstream, |_| {
        None
    }),
    ("Ctrl-C while waiting", sigint_while_waiting, |f| {
        f.reader
            .is_empty()
            .then_some("a spawned pipe never waits for a peer")
    }),
    ("SIGTERM mid-stream", sigterm_midstream, |_| None),
    ("stale object replaced", stale_is_replaced, |f| {
        match f.label {
            "pipe" => Some("an anonymous pipe has no name to outlive a run"),
            "tcp" => Some("a TCP port is freed by the kernel when its process dies"),
            _ => None,
        }
    }),
    ("bad flag value exits 2", bad_flag_exits_2, |_| None),
    (
        "garbage from a fake peer",
        garbage_is_refused,
        |f| match f.label {
            "pipe" | "fifo" | "tcp" | "unix" => None,
            "mq-sysv" | "mq-posix" => Some("a queue's hostile messages are msgqueue's own tests"),
            _ => Some("a hostile ring is common::ring's and the fuzz targets' (fuzz/)"),
        },
    ),
];

fn run_cell(f: Flavour, (name, check, skip): &Scenario) -> Cell {
    if let Some(why) = skip(f) {
        return Cell::Skip(why);
    }
    let tag: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    let s = Scene::new(f, &tag);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&s)));
    let mut left = s.leftovers();
    let killed = name.starts_with("kill -9");
    if matches!(result, Ok(Ok(()))) && !left.is_empty() && killed && !f.reader.is_empty() {
        // What kill -9 left is for the next run to find stale: check that it does.
        let was = left.join(", ");
        return match stale_next_run(&s) {
            Ok(()) if s.leftovers().is_empty() => Cell::PassAfterStale(was),
            Ok(()) => Cell::Fail(format!(
                "left behind even after the next run: {}",
                s.leftovers().join(", ")
            )),
            Err(why) => Cell::Fail(format!("left {was}, and the next run failed: {why}")),
        };
    }
    left.sort();
    match result {
        Ok(Ok(())) if left.is_empty() => Cell::Pass,
        Ok(Ok(())) => Cell::Fail(format!("left behind: {}", left.join(", "))),
        Ok(Err(why)) => Cell::Fail(why),
        Err(_) => Cell::Fail("the check panicked (see above)".into()),
    }
}

#[test]
fn fault_matrix() {
    let cells: Arc<Mutex<BTreeMap<(usize, usize), Cell>>> = Arc::default();
    let jobs: Arc<Mutex<Vec<(usize, usize)>>> = Arc::new(Mutex::new(
        (0..SCENARIOS.len())
            .flat_map(|s| (0..FLAVOURS.len()).map(move |f| (s, f)))
            .collect(),
    ));
    // Four cells at a time: each is two short-lived processes.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (cells, jobs) = (cells.clone(), jobs.clone());
            std::thread::spawn(move || loop {
                let Some((s, f)) = jobs.lock().unwrap().pop() else {
                    return;
                };
                let cell = run_cell(FLAVOURS[f], &SCENARIOS[s]);
                cells.lock().unwrap().insert((s, f), cell);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let cells = cells.lock().unwrap();
    let mut table = format!("{:<30}", "fault matrix");
    for f in FLAVOURS {
        table += &format!(" {:>9}", f.label);
    }
    table.push('\n');
    let mut failures = Vec::new();
    let mut skips = Vec::new();
    for (si, (name, _, _)) in SCENARIOS.iter().enumerate() {
        table += &format!("{name:<30}");
        for (fi, f) in FLAVOURS.iter().enumerate() {
            let mark = match &cells[&(si, fi)] {
                Cell::Pass => "pass",
                Cell::PassAfterStale(what) => {
                    skips.push(format!(
                        "{name} x {}: left {what}; the next run replaced it (stale rule)",
                        f.label
                    ));
                    "pass*"
                }
                Cell::Fail(why) => {
                    failures.push(format!("{name} x {}: {why}", f.label));
                    "FAIL"
                }
                Cell::Skip(why) => {
                    skips.push(format!("{name} x {}: {why}", f.label));
                    "skip"
                }
            };
            table += &format!(" {mark:>9}");
        }
        table.push('\n');
    }
    for s in &skips {
        table += &format!("  note: {s}\n");
    }
    table +=
        "  pass: as the README says, nothing left; pass*: see the note; skip: does not apply\n";
    // Shown by `cargo test -- --nocapture`; .ci/run prints the file it names below.
    eprintln!("{table}");
    if let Some(path) = std::env::var_os("IPC_STUDY_FAULT_MATRIX") {
        let _ = std::fs::write(path, &table);
    }
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
}
