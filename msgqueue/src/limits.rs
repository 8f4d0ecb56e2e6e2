//! M6: the kernel's limits on message queues, read from /proc/sys, and what a sender
//! does when a queue is full.
//!
//! The programs print the limits once, at start, refuse a `--size` that cannot fit before
//! any queue exists (naming the sysctl), and size a POSIX queue's messages from them. A
//! full queue is noticed, narrated once and then waited for ([`Full`]); a long wait is
//! narrated as it happens (`watch.rs`, with `common::stall`).

use anyhow::{bail, Context, Result};
use common::frame::HEADER_LEN;
use common::narrate;
use common::setup::Role;
use libc::c_int;
use nix::mqueue::MqdT;

use crate::sysv::SysvQueue;
use crate::MTEXT_MAX;

/// The kernel's limits on message queues (M6), read from /proc/sys.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// `kernel.msgmax`: largest System V message text in bytes.
    pub msgmax: usize,
    /// `kernel.msgmnb`: default (and, unprivileged, maximum) bytes in one System V queue.
    pub msgmnb: usize,
    /// `kernel.msgmni`: System V queues system-wide.
    pub msgmni: usize,
    /// `fs.mqueue.msg_max`: most messages an unprivileged POSIX queue may hold.
    pub mq_msg_max: usize,
    /// `fs.mqueue.msgsize_max`: largest POSIX message an unprivileged queue may allow.
    pub mq_msgsize_max: usize,
    /// `fs.mqueue.queues_max`: POSIX queues system-wide.
    pub mq_queues_max: usize,
}

fn read_sysctl(path: &str) -> Result<usize> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    s.trim()
        .parse()
        .with_context(|| format!("parsing {path}: {s:?}"))
}

impl Limits {
    /// Reads the System V and POSIX limits; a POSIX file that is missing reads as 0.
    pub fn read() -> Result<Limits> {
        Ok(Limits {
            msgmax: read_sysctl("/proc/sys/kernel/msgmax")?,
            msgmnb: read_sysctl("/proc/sys/kernel/msgmnb")?,
            msgmni: read_sysctl("/proc/sys/kernel/msgmni")?,
            mq_msg_max: read_sysctl("/proc/sys/fs/mqueue/msg_max").unwrap_or(0),
            mq_msgsize_max: read_sysctl("/proc/sys/fs/mqueue/msgsize_max").unwrap_or(0),
            mq_queues_max: read_sysctl("/proc/sys/fs/mqueue/queues_max").unwrap_or(0),
        })
    }

    /// Largest frame (header + payload) one message may carry, and the sysctl that sets it.
    pub fn max_frame(&self, posix: bool) -> (usize, &'static str) {
        if posix {
            (self.mq_msgsize_max.min(MTEXT_MAX), "fs.mqueue.msgsize_max")
        } else if self.msgmnb < self.msgmax {
            // A message larger than the whole queue could never be sent.
            (self.msgmnb.min(MTEXT_MAX), "kernel.msgmnb")
        } else {
            (self.msgmax.min(MTEXT_MAX), "kernel.msgmax")
        }
    }

    /// Largest payload (`--size`) after the 40-byte frame header.
    pub fn max_payload(&self, posix: bool) -> usize {
        self.max_frame(posix).0.saturating_sub(HEADER_LEN)
    }

    /// Refuses a `--size` the queue cannot carry, naming the sysctl (never clamps): a bad
    /// flag value, so the program exits 2 (`common::cli::bad_flag`).
    pub fn check_size(&self, size: usize, posix: bool) -> Result<()> {
        let (frame, sysctl) = self.max_frame(posix);
        let max = frame.saturating_sub(HEADER_LEN);
        if size > max {
            let cap = if frame == MTEXT_MAX {
                format!(" (this program caps messages at {MTEXT_MAX} bytes)")
            } else {
                String::new()
            };
            return Err(common::cli::bad_flag(format!(
                "--size {size} is too large: a message may hold at most {frame} bytes ({sysctl} = {frame}){cap}, \
                 and the frame header takes {HEADER_LEN}, so --size may be at most {max} (M6; an administrator can raise {sysctl} with sysctl -w)"
            )));
        }
        Ok(())
    }

    /// Narrates the limits that apply to this flavour (M6).
    pub fn narrate(&self, posix: bool) {
        for l in self.describe(posix) {
            narrate!("limit (M6): {l}");
        }
    }

    /// The lines a learner sees at start (M6).
    pub fn describe(&self, posix: bool) -> Vec<String> {
        if posix {
            vec![
                format!(
                    "fs.mqueue.msgsize_max = {} bytes: largest message a queue may be created for",
                    self.mq_msgsize_max
                ),
                format!(
                    "fs.mqueue.msg_max = {}: most messages a queue may hold",
                    self.mq_msg_max
                ),
                format!(
                    "fs.mqueue.queues_max = {}: POSIX queues on the system",
                    self.mq_queues_max
                ),
            ]
        } else {
            vec![
                format!("kernel.msgmax = {} bytes: largest message", self.msgmax),
                format!(
                    "kernel.msgmnb = {} bytes: what one queue holds before msgsnd blocks",
                    self.msgmnb
                ),
                format!(
                    "kernel.msgmni = {}: System V queues on the system",
                    self.msgmni
                ),
            ]
        }
    }
}

/// The first full queue (M6). Sends go out with `IPC_NOWAIT` (System V) or on a
/// non-blocking descriptor (POSIX) until one finds the queue full: that is narrated once
/// (with `--nowait` it is an error), and from then on sends block, so a busy stream pays
/// one system call per message rather than a failed one and a blocking one.
#[derive(Debug)]
pub struct Full {
    /// `--nowait`: a full queue is an EAGAIN error instead of a wait.
    nowait: bool,
    /// Whether a send has found the queue full yet.
    seen: bool,
}

impl Full {
    /// Nothing found full yet.
    pub fn new(nowait: bool) -> Full {
        Full {
            nowait,
            seen: false,
        }
    }

    /// Whether a send ever found the queue full.
    pub fn seen(&self) -> bool {
        self.seen
    }

    /// The report's note.
    pub fn note(&self) -> String {
        if self.seen {
            "the queue was at least once full while sending (msgsnd/mq_send waited for room, M6)"
                .into()
        } else {
            "the queue was never full while sending".into()
        }
    }

    /// msgsnd's flags: `IPC_NOWAIT` until the queue was first found full (always with
    /// `--nowait`), then 0: block.
    pub(crate) fn sysv_flags(&self) -> c_int {
        if self.nowait || !self.seen {
            libc::IPC_NOWAIT
        } else {
            0
        }
    }

    /// msgsnd said EAGAIN; `absent` says that no peer has come yet (and what the other
    /// flavour has), for the narration.
    pub(crate) fn sysv(&mut self, q: SysvQueue, peer: Role, absent: Option<String>) -> Result<()> {
        if self.nowait {
            let st = q.stat().ok();
            bail!(
                "msgsnd IPC_NOWAIT: EAGAIN: the queue is full ({}, {} of msg_qbytes {} bytes; kernel.msgmnb unless --queue-bytes) and --nowait asked not to block (M6)",
                crate::messages(st.map_or(0, |s| s.qnum)), st.map_or(0, |s| s.cbytes), st.map_or(0, |s| s.qbytes)
            );
        }
        self.seen = true;
        narrate!(
            "the queue is full (msg_qbytes reached, M6): msgsnd blocks here until the {peer} takes a message, at most --timeout while it takes none (--nowait shows EAGAIN instead){}",
            absent.map(|a| format!("; {a}")).unwrap_or_default()
        );
        Ok(())
    }

    /// mq_send said EAGAIN: from now on the descriptor blocks (mq_timedsend); `absent` as
    /// for [`Full::sysv`].
    pub(crate) fn posix(&mut self, q: &MqdT, peer: Role, absent: Option<String>) -> Result<()> {
        if self.nowait {
            let at = nix::mqueue::mq_getattr(q).ok();
            bail!(
                "mq_send: EAGAIN: the queue is full ({} of mq_maxmsg {} messages; at most fs.mqueue.msg_max, --queue-depth) and --nowait asked not to block (M6)",
                at.map_or(0, |a| a.curmsgs()), at.map_or(0, |a| a.maxmsg())
            );
        }
        self.seen = true;
        narrate!(
            "the queue is full (mq_maxmsg messages, M6): mq_send blocks here until the {peer} takes one, at most --timeout while it takes none (--nowait shows EAGAIN instead){}",
            absent.map(|a| format!("; {a}")).unwrap_or_default()
        );
        nix::mqueue::mq_remove_nonblock(q).context("mq_setattr (clear O_NONBLOCK)")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits_name_the_sysctl() {
        let l = Limits {
            msgmax: 8192,
            msgmnb: 16384,
            mq_msgsize_max: 8192,
            ..Limits::default()
        };
        assert_eq!(l.max_payload(false), 8152);
        assert!(l.check_size(8152, false).is_ok());
        let e = l.check_size(8153, false).unwrap_err();
        assert!(
            e.downcast_ref::<common::cli::BadFlag>().is_some(),
            "exits 2"
        );
        let e = e.to_string();
        assert!(e.contains("kernel.msgmax") && e.contains("8152"), "{e}");
        let e = l.check_size(9000, true).unwrap_err().to_string();
        assert!(e.contains("fs.mqueue.msgsize_max"), "{e}");
    }

    #[test]
    fn a_send_waits_without_ipc_nowait_only_after_the_queue_was_found_full() {
        let (q, _) = SysvQueue::create_or_open(libc::IPC_PRIVATE).unwrap();
        let mut full = Full::new(false);
        assert_eq!(full.sysv_flags(), libc::IPC_NOWAIT);
        full.sysv(q, Role::Reader, None).unwrap();
        assert!(full.seen() && full.note().contains("at least once full"));
        assert_eq!(full.sysv_flags(), 0);
        // --nowait: the first full queue is the error, naming EAGAIN and the limit.
        let mut nowait = Full::new(true);
        let e = nowait.sysv(q, Role::Reader, None).unwrap_err().to_string();
        assert!(e.contains("EAGAIN") && e.contains("kernel.msgmnb"), "{e}");
        assert_eq!(nowait.sysv_flags(), libc::IPC_NOWAIT);
        SysvQueue::remove(q.id).unwrap();
    }
}
