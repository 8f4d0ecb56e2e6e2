//! Who is running: the typed facts a report states about a program.
//!
//! Every program builds one [`Setup`] from its flags before it meets its peer, and the
//! protocol sessions ([`crate::session`]) stamp each [`Report`] from it. The names here
//! are enums rather than strings, so that every report spells a mechanism, a flavour and
//! a wait strategy the same way and the `bench` runner can compare them.

use std::fmt;

use crate::cli::{CommonArgs, Mode};
use crate::timing::Report;

/// Which program of a pair this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends Data and Ping frames; in a shared ring it produces on ring 0.
    Writer = 1,
    /// Receives and verifies them, answers Pings; in a shared ring it consumes ring 0.
    Reader = 2,
}

impl Role {
    /// `writer` or `reader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    /// The other program of the pair.
    pub fn peer(self) -> Role {
        match self {
            Role::Writer => Role::Reader,
            Role::Reader => Role::Writer,
        }
    }

    /// The role stored as a number (in the shared ring's header): 1 writer, 2 reader.
    pub fn from_u32(v: u32) -> Option<Role> {
        match v {
            1 => Some(Role::Writer),
            2 => Some(Role::Reader),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a side does when it has nothing to do: the report's `wait` field.
///
/// The shared-memory pairs choose with `--wait`; every other mechanism waits inside a
/// blocking system call (`read`, `msgrcv`, `recv`), which is [`Wait::Block`] too: the
/// process sleeps in the kernel until the peer's call wakes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// Re-read the index in a loop: lowest latency, one CPU busy.
    Spin,
    /// Sleep in the kernel (a futex, or the mechanism's own blocking call) until woken.
    Block,
    /// Spin briefly, then sleep.
    Adaptive,
}

impl Wait {
    /// `spin`, `block` or `adaptive`, as in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Block => "block",
            Wait::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The six mechanisms, one crate each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// Anonymous pipe (`pipe`).
    Pipe,
    /// FIFO (`named-pipe`).
    NamedPipe,
    /// System V or POSIX message queue (`msgqueue`).
    Msgqueue,
    /// POSIX or System V shared memory (`shm`).
    Shm,
    /// A file mapped into memory (`mmap`).
    Mmap,
    /// TCP or Unix domain socket (`socket`).
    Socket,
}

impl Mechanism {
    /// The crate name, as in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Pipe => "pipe",
            Mechanism::NamedPipe => "named-pipe",
            Mechanism::Msgqueue => "msgqueue",
            Mechanism::Shm => "shm",
            Mechanism::Mmap => "mmap",
            Mechanism::Socket => "socket",
        }
    }
}

/// The variant of a mechanism that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `a | b`: the shell made the pipe.
    Shell,
    /// `pipe-writer --spawn`: the writer made the pipe and started the reader.
    Spawn,
    /// A named pipe in the file system.
    Fifo,
    /// The POSIX interface (`mq_open`, `shm_open`).
    Posix,
    /// The System V interface (`msgget`, `shmget`).
    Sysv,
    /// TCP over loopback or a network.
    Tcp,
    /// A Unix domain socket.
    Unix,
    /// A mapped file, named by the file system it lives on (`tmpfs`, `ext4`, ...).
    File(String),
}

impl Flavour {
    /// As in reports: `shell`, `spawn`, `fifo`, `posix`, `sysv`, `tcp`, `unix`, or the
    /// file system's name.
    pub fn as_str(&self) -> &str {
        match self {
            Flavour::Shell => "shell",
            Flavour::Spawn => "spawn",
            Flavour::Fifo => "fifo",
            Flavour::Posix => "posix",
            Flavour::Sysv => "sysv",
            Flavour::Tcp => "tcp",
            Flavour::Unix => "unix",
            Flavour::File(fs) => fs,
        }
    }
}

/// Who is running and what the report should say about it.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `pipe-writer`, ...: the program's name in reports.
    pub program: &'static str,
    /// Which crate.
    pub mechanism: Mechanism,
    /// Which variant of it.
    pub flavour: Flavour,
    /// How a side with nothing to do waits.
    pub wait: Wait,
    /// The shared flags (mode, count, size, warm-up, ...).
    pub args: CommonArgs,
    /// Largest payload this mechanism carries (a longer text line is refused).
    pub max_payload: usize,
}

impl Setup {
    /// An empty report of this program in `role`, to be filled in by a session.
    pub fn report(&self, role: Role) -> Report {
        Report {
            program: self.program.into(),
            role: role.as_str().into(),
            mechanism: self.mechanism.as_str().into(),
            flavour: self.flavour.as_str().into(),
            mode: self.args.mode.as_str().into(),
            wait: self.wait.as_str().into(),
            ..Report::default()
        }
    }

    /// The mode both sides run (a reader's: the writer's, once its Hello came and
    /// [`Setup::follow`] took it).
    pub fn mode(&self) -> Mode {
        self.args.mode
    }

    /// A reader takes the writer's mode, size, count and warm-up from its Hello.
    pub fn follow(&mut self, hello: &crate::hello::Hello) {
        self.args.follow(hello);
    }
}
