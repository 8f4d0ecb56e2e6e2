//! The frames a writer session hands out: [`Outgoing`] (header and payload, as `write`/`writev`,
//! the ring and a message queue take them) and [`FrameBuf`] (the caller's buffer they are
//! built in, header and payload back to back).

use std::io::IoSlice;

use crate::align::RecordBytes;
use crate::frame::{Kind, END_PAYLOAD_LEN, HEADER_LEN};
use crate::resum::Repeated;

/// One frame ready to leave: the 40-byte header and the payload, in two pieces (a byte
/// stream sends a frame whose pieces lie apart with one `writev(2)`, and the shared ring
/// copies them in two steps); and, when the two lie back to back in memory (every frame a writer session
/// builds), the whole frame as one slice, which a message queue sends as one message with
/// no copy of its own.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// What kind of frame this is (message queues give Pings and Pongs their own types).
    pub kind: Kind,
    /// The encoded header (checksum included).
    pub header: &'a [u8; HEADER_LEN],
    /// The payload the checksum covers.
    pub payload: &'a [u8],
    /// Header and payload as one contiguous slice, when they are (`None` for a Pong,
    /// whose payload is the received Ping's).
    pub whole: Option<&'a [u8]>,
}

impl<'a> Outgoing<'a> {
    /// Header plus payload bytes.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Never empty: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The two pieces as `writev(2)` takes them (an empty payload is left out).
    pub fn iovecs(&self) -> ([IoSlice<'a>; 2], usize) {
        let n = if self.payload.is_empty() { 1 } else { 2 };
        ([IoSlice::new(self.header), IoSlice::new(self.payload)], n)
    }

    /// The frame as a byte stream sends it: one piece when header and payload lie back to
    /// back ([`Outgoing::whole`]: every frame a writer session builds), so it leaves with
    /// one `write(2)`; else the two pieces of [`Outgoing::iovecs`] for `writev(2)`.
    pub fn pieces(&self) -> ([IoSlice<'a>; 2], usize) {
        match self.whole {
            Some(whole) => ([IoSlice::new(whole), IoSlice::new(&[])], 1),
            None => self.iovecs(),
        }
    }

    /// The frame as one owned byte string (tests and examples).
    pub fn to_vec(&self) -> Vec<u8> {
        [&self.header[..], self.payload].concat()
    }

    /// A frame whose header and payload are in one buffer, `HEADER_LEN` bytes of header
    /// first; `None` when the buffer is shorter than a header.
    pub fn from_bytes(kind: Kind, bytes: &'a [u8]) -> Option<Outgoing<'a>> {
        let (header, payload) = bytes.split_first_chunk::<HEADER_LEN>()?;
        Some(Outgoing {
            kind,
            header,
            payload,
            whole: Some(bytes),
        })
    }
}

/// The caller's buffer for the frame being sent. [`WriterSession::next`](super::WriterSession::next) fills it; the
/// caller sends from it. Header and payload are kept back to back, so the frame is one
/// contiguous message as well as two pieces ([`Outgoing::whole`]).
///
/// In stream and pingpong modes the payload is written once (a fixed pattern) and then
/// only its first 8 bytes change per message (the sequence number), so building a frame
/// costs a header and a checksum, not a fresh payload.
#[derive(Debug)]
pub struct FrameBuf {
    /// Data or Ping frame (or a text line): header, then payload, laid out as in a ring
    /// record (see [`crate::align`]), so the ring's copies run at full speed.
    pub(super) data: RecordBytes,
    /// For the timed payload (a pattern whose first 8 bytes only change): its checksum
    /// from those 8 bytes ([`crate::resum`]). `None` for a text line.
    pub(super) repeated: Option<Repeated>,
    /// Pingpong: `data` holds the Ping of this session nonce and sequence number, sealed
    /// ahead with a send time of 0 (`WriterSession::seal_ahead`), to be stamped.
    pub(super) sealed: Option<(u64, u64)>,
    /// The End frame: header, then its payload (count and bytes).
    pub(super) end: [u8; HEADER_LEN + END_PAYLOAD_LEN],
    /// The Hello frame: header, then what the writer runs.
    pub(super) hello: Vec<u8>,
}

impl Default for FrameBuf {
    fn default() -> FrameBuf {
        FrameBuf {
            data: RecordBytes::zeroed(HEADER_LEN),
            repeated: None,
            sealed: None,
            end: [0; HEADER_LEN + END_PAYLOAD_LEN],
            hello: Vec::new(),
        }
    }
}

impl FrameBuf {
    /// An empty buffer; the session sizes it on first use.
    pub fn new() -> FrameBuf {
        FrameBuf::default()
    }

    /// Makes the payload the timed pattern, whose checksum is then derived from its
    /// first 8 bytes (the sequence number) alone.
    pub(super) fn set_repeated(&mut self, payload: &[u8]) {
        self.set_payload(payload);
        self.repeated = Some(Repeated::new(&self.data[HEADER_LEN..], 8));
    }

    pub(super) fn data_frame(&self, kind: Kind) -> Outgoing<'_> {
        Outgoing::from_bytes(kind, &self.data[..])
            .unwrap_or_else(|| unreachable!("data holds a header"))
    }

    pub(super) fn end_frame(&self) -> Outgoing<'_> {
        Outgoing::from_bytes(Kind::End, &self.end)
            .unwrap_or_else(|| unreachable!("end holds a header"))
    }

    /// Makes the data frame's payload `payload` (its header is written by `encode`).
    pub(super) fn set_payload(&mut self, payload: &[u8]) {
        let header = [0; HEADER_LEN];
        self.data.set(&header, payload);
        self.repeated = None;
        self.sealed = None;
    }
}
