//! The pingpong writer's work while a Ping is out: what does not need the Pong is done
//! before it comes back, off the round trip.
//!
//! Once a Ping is published, the writer has nothing to do until its Pong arrives (half a
//! microsecond with spinning shared memory, tens of microseconds through the kernel). So
//! [`WriterSession::next`], asked again while the Pong is awaited, records the last round
//! trip's sample in the histogram and seals the next Ping in the caller's buffer: sequence
//! number, flags, header and checksum, all with a send time of 0. When the Pong is in, the
//! clock read that timed it is the next Ping's send time: [`WriterSession::stamp`] writes
//! those 8 bytes and XORs the checksum with their share ([`crate::resum::SendTime`]), and the
//! frame is byte for byte the one a fresh seal would build. The round trip then holds the
//! Pong's check, the clock read, the stamp and the sending of the Ping, as a sender that
//! prepares its next message while it waits would; the copy into the channel still
//! follows the clock read.

use anyhow::{bail, Result};

use super::{Next, Sum, WriterSession};
use crate::cli::Mode;
use crate::frame::{Kind, CHECKSUM_AT, HEADER_LEN, SENT_AT};
use crate::hello::Verify;
use crate::resum::SendTime;
use crate::session::FrameBuf;

impl WriterSession {
    /// The last round trip's sample, if one is due, into the histogram.
    pub(super) fn record_rtt(&mut self) {
        if let Some(ns) = self.rtt_due.take() {
            self.rtt.record(ns);
        }
    }

    /// Pingpong, while a Ping is out: seals the next Ping in `buf` with a send time of 0
    /// (its checksum over that), so that when the Pong is in, [`WriterSession::stamp`]
    /// has only the clock read's value to write. Nothing here needs the Pong: the next
    /// Ping's sequence number, flags and payload are known now. Not for frames built in
    /// place (`--zero-copy`): they are built in the ring's slot, which is reserved then.
    pub(super) fn seal_ahead(&mut self, buf: &mut FrameBuf) -> Result<()> {
        let next = self.seq + 1;
        if self.mode != Mode::Pingpong
            || self.hello.zero_copy
            || next >= self.warmup + self.count
            || buf.sealed == Some((self.nonce, next))
        {
            return Ok(());
        }
        let FrameBuf { data, repeated, .. } = buf;
        let Some(r) = repeated.as_ref().filter(|r| r.payload_len() == self.size) else {
            return Ok(());
        };
        self.build(&mut data[..], next, 0, Sum::Repeated(r))?;
        let summed = if self.hello.verify == Verify::Seq {
            0
        } else {
            self.size
        };
        if self.send_time.as_ref().map(SendTime::summed) != Some(summed) {
            self.send_time = Some(SendTime::new(summed));
        }
        buf.sealed = Some((self.nonce, next));
        Ok(())
    }

    /// The Ping sealed ahead in `buf` ([`WriterSession::seal_ahead`]), given its send time
    /// (the clock read that timed the Pong before it): those 8 bytes written, the checksum
    /// XORed with their share ([`SendTime`]). The frame is then byte for byte the one
    /// [`WriterSession::seal_timed`] would have built.
    pub(super) fn stamp<'b>(&mut self, buf: &'b mut FrameBuf) -> Result<Next<'b>> {
        buf.sealed = None;
        self.start_timing();
        let sent_ns = self.send_time_now();
        let Some(send_time) = self.send_time.as_ref() else {
            bail!("stamp: the Ping sealed ahead has no send-time shift");
        };
        let delta = send_time.delta(sent_ns);
        let header = &mut buf.data[..HEADER_LEN];
        header[SENT_AT..SENT_AT + 8].copy_from_slice(&sent_ns.to_le_bytes());
        let sum = u32::from_le_bytes(header[CHECKSUM_AT..HEADER_LEN].try_into()?) ^ delta;
        header[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
        self.handed_out(Kind::Ping);
        Ok(Next::Send(buf.data_frame(Kind::Ping)))
    }
}
