//! Who pairs with whom, in the words a learner reads when it goes wrong: a second reader
//! or writer is refused naming the process already there (the ring header records who
//! created the object and who attached), and a peer started with the other flavour
//! (POSIX against System V) is pointed out, since neither can ever find the other's
//! object. Part of the rendezvous (a first reading may skip it).

use common::ring::{Region, Role};

/// An object of the other flavour under our name: `what` it is and what to `ask`.
pub(crate) struct Other {
    /// "a System V segment for --name x exists (key ..., created by pid N)".
    pub(crate) what: String,
    /// "is the writer running with --sysv? ...".
    pub(crate) ask: String,
}

impl Other {
    /// "a System V segment for --name x exists (...): is the writer running with --sysv? ..."
    pub(crate) fn now(&self) -> String {
        format!("{}: {}", self.what, self.ask)
    }

    /// The same, for one that was there while this side waited and is gone now.
    pub(crate) fn then(&self) -> String {
        format!(
            "while this side waited, {}: {}",
            self.what.replacen(" exists (", " existed (", 1),
            self.ask
        )
    }
}

/// The refusal of a second process of `role`: `pid` is the one already there (the creator,
/// if it has our role; else the peer that attached to it), named as a learner typed it.
pub(crate) fn second(object: &str, role: Role, pid: i32, region: &Region) -> String {
    let program = common::peer::program_name(pid).unwrap_or_else(|| format!("shm-{role}"));
    let how = if region.header().creator_pid == pid {
        format!("it was created by a {role}")
    } else {
        format!("a {role} attached to it")
    };
    format!(
        "{object} already has a {role}: {how}, {program} (pid {pid}). A pair has one reader and one writer, \
         and a second {role} {}; stop that one, or use another --name",
        match role {
            Role::Reader => "would take frames meant for the first",
            Role::Writer => "would mix its frames into the first one's",
        }
    )
}
