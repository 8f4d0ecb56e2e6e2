//! What to measure: one [`Case`] per mechanism, flavour, wait strategy, mode and size.
//!
//! A case lists the processes to start. Each is `bench __role --pin CPU PROGRAM ARGS`;
//! the shared flags (`--mode --count --size --name --json --quiet --timeout`) are added
//! by the runner, so a case only says what is particular to its mechanism.

use common::cli::Mode;

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
}

impl Case {
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
    let base = |flavour: &str, wait: &str, floor: FloorKind, procs: Vec<Launch>| Case {
        mechanism: MECHANISMS
            .iter()
            .copied()
            .find(|m| *m == mechanism)
            .unwrap_or("?"),
        flavour: flavour.into(),
        wait: wait.into(),
        mode,
        size,
        count,
        procs,
        floor,
    };
    let bytes_floor = |blocking: FloorKind| {
        if mode == Mode::Stream {
            FloorKind::Memcpy
        } else {
            blocking
        }
    };
    match mechanism {
        "pipe" => {
            // Spawn mode: the writer makes both pipes and starts the reader (this
            // executable in the pipe-reader role, pinned to the second CPU).
            let mut reader = vec!["__role".to_string()];
            if let Some(cpu) = ctx.cpu(1) {
                reader.extend(["--pin".into(), cpu.to_string()]);
            }
            reader.push("pipe-reader".into());
            let mut args = vec!["--spawn".into(), "--reader-exe".into(), ctx.exe.clone()];
            for a in reader {
                args.push(format!("--reader-arg={a}"));
            }
            if mode == Mode::Stream {
                // 1 MiB (pipe-max-size): fewer wake-ups per byte; see pipe/README.md.
                args.extend(["--pipe-size".into(), "1M".into()]);
            }
            vec![base(
                "spawn",
                "block",
                bytes_floor(FloorKind::Futex),
                vec![Launch {
                    program: "pipe-writer",
                    cpu_slot: 0,
                    args,
                }],
            )]
        }
        "msgqueue" => {
            let mut out = Vec::new();
            for (flavour, posix) in [("sysv", false), ("posix", true)] {
                // The kernel bounds a message (kernel.msgmax, fs.mqueue.msgsize_max): the
                // case carries the largest payload that fits, and the table says so.
                let Ok(limits) = msgqueue::Limits::read() else {
                    continue;
                };
                let fitted = size.min(limits.max_payload(posix));
                let args: Vec<String> = if posix {
                    vec!["--posix".into()]
                } else {
                    vec![]
                };
                let mut c = base(
                    flavour,
                    "block",
                    bytes_floor(FloorKind::Futex),
                    vec![
                        Launch {
                            program: "msgqueue-reader",
                            cpu_slot: 1,
                            args: args.clone(),
                        },
                        Launch {
                            program: "msgqueue-writer",
                            cpu_slot: 0,
                            args,
                        },
                    ],
                );
                c.size = fitted;
                out.push(c);
            }
            out
        }
        "named-pipe" => {
            let mut wargs = Vec::new();
            if mode == Mode::Stream {
                // As for the anonymous pipe: a 1 MiB FIFO buffer (see named-pipe/README.md).
                wargs.extend(["--pipe-size".into(), "1M".into()]);
            }
            vec![base(
                "fifo",
                "block",
                bytes_floor(FloorKind::Futex),
                vec![
                    Launch {
                        program: "named-pipe-reader",
                        cpu_slot: 1,
                        args: vec![],
                    },
                    Launch {
                        program: "named-pipe-writer",
                        cpu_slot: 0,
                        args: wargs,
                    },
                ],
            )]
        }
        "socket" => {
            let mut out = Vec::new();
            for flavour in ["tcp", "unix"] {
                let addr = if flavour == "tcp" {
                    vec!["--tcp".to_string(), format!("127.0.0.1:{}", free_port())]
                } else {
                    // The default path: <runtime dir>/<name>.sock, unique per case.
                    vec!["--unix".to_string()]
                };
                out.push(base(
                    flavour,
                    "block",
                    bytes_floor(FloorKind::Futex),
                    vec![
                        Launch {
                            program: "socket-reader",
                            cpu_slot: 1,
                            args: addr.clone(),
                        },
                        Launch {
                            program: "socket-writer",
                            cpu_slot: 0,
                            args: addr,
                        },
                    ],
                ));
            }
            out
        }
        "shm" | "mmap" => {
            // The ring needs room for two of the largest frames: 1 MiB or 4x the message.
            let capacity = (4 * size).next_power_of_two().max(1 << 20);
            let backings: Vec<(&str, Vec<String>)> = if mechanism == "shm" {
                vec![("posix", vec![]), ("sysv", vec!["--sysv".into()])]
            } else {
                // tmpfs: the same page cache as shm, so the two compare fairly; "disk":
                // the default runtime directory's file system.
                let uid = nix::unistd::geteuid();
                let tmpfs = format!(
                    "/dev/shm/ipc-study-{uid}-bench-{}-{size}.map",
                    std::process::id()
                );
                vec![("tmpfs", vec!["--path".into(), tmpfs]), ("disk", vec![])]
            };
            let (writer, reader) = if mechanism == "shm" {
                ("shm-writer", "shm-reader")
            } else {
                ("mmap-writer", "mmap-reader")
            };
            let mut out = Vec::new();
            for (flavour, extra) in backings {
                // The disk-backed map runs with the default wait only: it differs from
                // tmpfs in its backing, not in how the two sides wait.
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
                    args.extend([
                        "--wait".into(),
                        wait.into(),
                        "--capacity".into(),
                        capacity.to_string(),
                    ]);
                    out.push(base(
                        flavour,
                        wait,
                        bytes_floor(floor),
                        vec![
                            Launch {
                                program: reader,
                                cpu_slot: 1,
                                args: args.clone(),
                            },
                            Launch {
                                program: writer,
                                cpu_slot: 0,
                                args,
                            },
                        ],
                    ));
                }
            }
            out
        }
        _ => Vec::new(),
    }
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
