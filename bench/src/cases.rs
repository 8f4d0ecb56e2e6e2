//! What to measure: one [`Case`] per mechanism, flavour, wait strategy, mode and size.
//!
//! A case lists the processes to start. Each is `bench __role --pin CPU PROGRAM ARGS`;
//! the shared flags (`--mode --count --size --name --json --quiet --timeout`) are added
//! by the runner, so a case only says what is particular to its mechanism. It also names
//! the floor that bounds it and the bare loop ([`crate::bare`]) it is compared with.

use common::cli::Mode;

use crate::bare;

/// Which floor bounds a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloorKind {
    /// Busy-polling on a shared cache line: the floor for spinning waits.
    Cacheline,
    /// Futex wait/wake: the floor for anything that sleeps.
    Futex,
    /// One memcpy of the message: the floor for moving bytes.
    Memcpy,
}

/// One process of a case.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Program name (`pipe-writer`, ...), run through `bench __role`.
    pub program: &'static str,
    /// 0: the first pinned CPU (writers), 1: the second (readers).
    pub cpu_slot: usize,
    /// Mechanism-specific arguments.
    pub args: Vec<String>,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Case {
    pub mechanism: &'static str,
    pub flavour: String,
    pub wait: String,
    pub mode: Mode,
    pub size: usize,
    pub count: u64,
    /// Started in this order (readers first: either order works, this one waits less).
    pub procs: Vec<Launch>,
    pub floor: FloorKind,
    /// The bare loop this case is compared with (the "x bare" column).
    pub bare: BareLoop,
}

/// Which bare loop (see [`crate::bare`]) matches a case: the kind, how it waits, and the
/// pipe capacity the case's own pipe has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BareLoop {
    pub kind: bare::Kind,
    pub wait: bare::Wait,
    pub pipe_size: Option<usize>,
    /// shm-copy stream: bytes of ring (the ring row's `--capacity`).
    pub ring: Option<usize>,
}

impl BareLoop {
    fn new(kind: bare::Kind) -> BareLoop {
        BareLoop {
            kind,
            wait: bare::Wait::Spin,
            pipe_size: None,
            ring: None,
        }
    }
}

impl Case {
    /// `bench __bare`'s spec for this case's bare loop: same mode, size and count, the
    /// processes pinned as the case's writer and reader are.
    pub fn bare_spec(&self, pins: Option<(usize, usize)>) -> bare::Spec {
        bare::Spec {
            kind: self.bare.kind,
            mode: self.mode,
            size: self.size,
            count: self.count,
            pin: pins.map(|(a, b)| vec![a, b]).unwrap_or_default(),
            pipe_size: self.bare.pipe_size,
            wait: self.bare.wait,
            ring: self.bare.ring,
        }
    }

    /// "pipe spawn block pingpong 64 B", for progress and errors.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} {} {} B",
            self.mechanism,
            self.flavour,
            self.wait,
            self.mode.as_str(),
            self.size
        )
    }
}

/// What the case builders need to know.
pub struct Ctx {
    /// This executable, to be started as the reader by `pipe-writer --spawn`.
    pub exe: String,
    /// CPUs to pin writer and reader to, if pinning.
    pub pins: Option<(usize, usize)>,
    /// This run's private runtime directory (`IPC_STUDY_DIR` of every child).
    pub runtime: std::path::PathBuf,
}

impl Ctx {
    fn cpu(&self, slot: usize) -> Option<usize> {
        self.pins.map(|(a, b)| if slot == 0 { a } else { b })
    }
}

/// Every mechanism the runner knows, in the note's order.
pub const MECHANISMS: &[&str] = &["pipe", "named-pipe", "msgqueue", "shm", "mmap", "socket"];

/// The cases of one mechanism for one mode and size.
pub fn cases_for(ctx: &Ctx, mechanism: &str, mode: Mode, size: usize, count: u64) -> Vec<Case> {
    let Some(mechanism) = MECHANISMS.iter().copied().find(|m| *m == mechanism) else {
        return Vec::new();
    };
    let plan = Plan {
        ctx,
        mechanism,
        mode,
        size,
        count,
    };
    match mechanism {
        "pipe" => plan.pipe(),
        "msgqueue" => plan.msgqueue(),
        "named-pipe" => plan.named_pipe(),
        "socket" => plan.socket(),
        _ => plan.ring(),
    }
}

/// What every case of one mechanism, mode and size shares.
struct Plan<'a> {
    ctx: &'a Ctx,
    mechanism: &'static str,
    mode: Mode,
    size: usize,
    count: u64,
}

impl Plan<'_> {
    fn case(
        &self,
        flavour: &str,
        wait: &str,
        floor: FloorKind,
        procs: Vec<Launch>,
        bare: BareLoop,
    ) -> Case {
        Case {
            mechanism: self.mechanism,
            flavour: flavour.into(),
            wait: wait.into(),
            mode: self.mode,
            size: self.size,
            count: self.count,
            procs,
            // A stream is bounded by copying bytes; a round trip by the wake-up.
            floor: if self.mode == Mode::Stream {
                FloorKind::Memcpy
            } else {
                floor
            },
            bare,
        }
    }

    /// Spawn mode: the writer makes both pipes and starts the reader (this executable in
    /// the pipe-reader role, pinned to the second CPU).
    fn pipe(&self) -> Vec<Case> {
        let mut reader = vec!["__role".to_string()];
        if let Some(cpu) = self.ctx.cpu(1) {
            reader.extend(["--pin".into(), cpu.to_string()]);
        }
        reader.push("pipe-reader".into());
        let mut args = vec![
            "--spawn".into(),
            "--reader-exe".into(),
            self.ctx.exe.clone(),
        ];
        for a in reader {
            args.push(format!("--reader-arg={a}"));
        }
        let mut bare = BareLoop::new(bare::Kind::Pipe);
        if self.mode == Mode::Stream {
            // 1 MiB (pipe-max-size): fewer wake-ups per byte; see pipe/README.md.
            args.extend(["--pipe-size".into(), "1M".into()]);
            bare.pipe_size = Some(1 << 20);
        }
        let mut out = Vec::new();
        if self.mode == Mode::Stream {
            // vmsplice: the writer's pages lent to the pipe (pipe/README.md), compared with
            // the bare vmsplice loop (`pipe_bw.c vms_read`).
            let mut spliced = args.clone();
            spliced.push("--splice".into());
            let writer = Launch {
                program: "pipe-writer",
                cpu_slot: 0,
                args: spliced,
            };
            // The bare loop gets the same 1 MiB pipe (its buffers are never rewritten).
            let bare = BareLoop {
                pipe_size: Some(1 << 20),
                ..BareLoop::new(bare::Kind::PipeVmsplice)
            };
            out.push(self.case(
                "spawn+splice",
                "block",
                FloorKind::Futex,
                vec![writer],
                bare,
            ));
        }
        let writer = Launch {
            program: "pipe-writer",
            cpu_slot: 0,
            args,
        };
        out.insert(
            0,
            self.case("spawn", "block", FloorKind::Futex, vec![writer], bare),
        );
        out
    }

    fn msgqueue(&self) -> Vec<Case> {
        let mut out = Vec::new();
        for (flavour, posix) in [("sysv", false), ("posix", true)] {
            // The kernel bounds a message (kernel.msgmax, fs.mqueue.msgsize_max): the case
            // carries the largest payload that fits, and the table says so.
            let Ok(limits) = msgqueue::Limits::read() else {
                continue;
            };
            let args: Vec<String> = if posix {
                vec!["--posix".into()]
            } else {
                vec![]
            };
            let procs = pair("msgqueue", args.clone(), args);
            let kind = if posix {
                bare::Kind::PosixMq
            } else {
                bare::Kind::SysvMq
            };
            let mut c = self.case(
                flavour,
                "block",
                FloorKind::Futex,
                procs,
                BareLoop::new(kind),
            );
            c.size = self.size.min(limits.max_payload(posix));
            out.push(c);
        }
        out
    }

    fn named_pipe(&self) -> Vec<Case> {
        let mut wargs = Vec::new();
        let mut bare = BareLoop::new(bare::Kind::Fifo);
        if self.mode == Mode::Stream {
            // As for the anonymous pipe: a 1 MiB FIFO buffer (see named-pipe/README.md).
            wargs.extend(["--pipe-size".into(), "1M".into()]);
            bare.pipe_size = Some(1 << 20);
        }
        let mut out = Vec::new();
        if self.mode == Mode::Stream {
            let mut spliced = wargs.clone();
            spliced.push("--splice".into());
            let procs = pair("named-pipe", vec![], spliced);
            let bare = BareLoop {
                pipe_size: Some(1 << 20),
                ..BareLoop::new(bare::Kind::PipeVmsplice)
            };
            out.push(self.case("fifo+splice", "block", FloorKind::Futex, procs, bare));
        }
        let procs = pair("named-pipe", vec![], wargs);
        out.insert(0, self.case("fifo", "block", FloorKind::Futex, procs, bare));
        out
    }

    fn socket(&self) -> Vec<Case> {
        let mut out = Vec::new();
        for flavour in ["tcp", "unix"] {
            let addr = if flavour == "tcp" {
                vec!["--tcp".to_string(), format!("127.0.0.1:{}", free_port())]
            } else {
                // The default path: <runtime dir>/<name>.sock, unique per case.
                vec!["--unix".to_string()]
            };
            let procs = pair("socket", addr.clone(), addr);
            let kind = if flavour == "tcp" {
                bare::Kind::Tcp
            } else {
                bare::Kind::Unix
            };
            out.push(self.case(
                flavour,
                "block",
                FloorKind::Futex,
                procs,
                BareLoop::new(kind),
            ));
        }
        out
    }

    /// shm and mmap: the shared ring, over each backing and each wait strategy.
    fn ring(&self) -> Vec<Case> {
        // The ring needs room for two of the largest frames: the programs' default (4 MiB)
        // or 4x the message.
        let capacity = (4 * self.size)
            .next_power_of_two()
            .max(common::ring::DEFAULT_CAPACITY);
        let backings: Vec<(&str, Vec<String>)> = if self.mechanism == "shm" {
            vec![("posix", vec![]), ("sysv", vec!["--sysv".into()])]
        } else {
            // tmpfs: the same page cache as shm, so the two compare fairly; "disk": the
            // default runtime directory's file system.
            let uid = nix::unistd::geteuid();
            let tmpfs = format!(
                "/dev/shm/ipc-study-{uid}-bench-{}-{}.map",
                std::process::id(),
                self.size
            );
            vec![("tmpfs", vec!["--path".into(), tmpfs]), ("disk", vec![])]
        };
        let mut out = Vec::new();
        for (flavour, extra) in backings {
            // The disk-backed map runs with the default wait only: it differs from tmpfs
            // in its backing, not in how the two sides wait.
            let waits: &[&str] = if flavour == "disk" {
                &["adaptive"]
            } else {
                &["spin", "block", "adaptive"]
            };
            for &wait in waits {
                // Adaptive spins before it sleeps, so when messages come quickly its bound
                // is the cache line, like spin; only `block` always pays a wake-up.
                let floor = if wait == "block" {
                    FloorKind::Futex
                } else {
                    FloorKind::Cacheline
                };
                let mut args = extra.clone();
                args.extend(["--wait".into(), wait.into()]);
                args.extend(["--capacity".into(), capacity.to_string()]);
                // The bare copy loop waits as the ring does: spinning for spin and
                // adaptive (which spins while messages come quickly), futex for block;
                // its stream ring holds as many bytes as ours.
                let bare = BareLoop {
                    wait: if wait == "block" {
                        bare::Wait::Block
                    } else {
                        bare::Wait::Spin
                    },
                    ring: (self.mode == Mode::Stream).then_some(capacity),
                    ..BareLoop::new(bare::Kind::ShmCopy)
                };
                // Zero-copy (frames built and read in place, `--zero-copy`), on the page
                // cache backings (posix, tmpfs) with spin and block waits, fully verified;
                // and with spin, `--verify seq` (the payload not read at all), as the
                // zero-copy frameworks' own benchmarks measure.
                let zero: &[(&str, &[&str])] = match (flavour, wait) {
                    ("posix" | "tmpfs", "spin") => &[
                        ("zc", &["--zero-copy"]),
                        ("zc-seq", &["--zero-copy", "--verify", "seq"]),
                    ],
                    ("posix" | "tmpfs", "block") => &[("zc", &["--zero-copy"])],
                    _ => &[],
                };
                let procs = pair(self.mechanism, args.clone(), args.clone());
                out.push(self.case(flavour, wait, floor, procs, bare));
                for (label, flags) in zero {
                    let mut wargs = args.clone();
                    wargs.extend(flags.iter().map(|f| f.to_string()));
                    let procs = pair(self.mechanism, args.clone(), wargs);
                    let f = format!("{flavour}+{label}");
                    out.push(self.case(&f, wait, floor, procs, bare));
                }
            }
        }
        out
    }
}

/// The reader (started first, on the second CPU) and the writer of `mechanism`.
fn pair(mechanism: &'static str, rargs: Vec<String>, wargs: Vec<String>) -> Vec<Launch> {
    let (reader, writer) = match mechanism {
        "msgqueue" => ("msgqueue-reader", "msgqueue-writer"),
        "named-pipe" => ("named-pipe-reader", "named-pipe-writer"),
        "socket" => ("socket-reader", "socket-writer"),
        "shm" => ("shm-reader", "shm-writer"),
        _ => ("mmap-reader", "mmap-writer"),
    };
    vec![
        Launch {
            program: reader,
            cpu_slot: 1,
            args: rargs,
        },
        Launch {
            program: writer,
            cpu_slot: 0,
            args: wargs,
        },
    ]
}

/// A TCP port on 127.0.0.1 that nobody listens on right now (the kernel picks it for a
/// listener on port 0, which is then closed). Another program could take it before the
/// reader binds; the reader would then fail with a clear EADDRINUSE, and the case FAILED.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(47_400)
}
