//! Private buffers laid out like a ring record, so that copying a frame between them and
//! the shared ring runs at the CPU's full copy speed.
//!
//! glibc's `memcpy` moves 2 KiB to 1 MiB with `rep movsb`. On some CPUs (the AMD EPYC the
//! benchmarks were measured on, with FSRM) that instruction is about twenty times slower
//! when the destination lies 1 to 15 bytes past the source modulo 4096 (2-3 GB/s instead
//! of 40-50 GB/s), and about half as fast for any distance that is not a multiple of 64;
//! glibc 2.36 avoids that case only on Intel (`Avoid_Short_Distance_REP_MOVSB`). A frame
//! lies in the ring `STAMP_LEN` (8) bytes past a 64-byte boundary, so its payload starts
//! at 48 modulo 64. A private buffer whose frame starts 8 bytes past a 64-byte boundary
//! too puts every copy between the two at a distance that is a multiple of 64: the fast
//! case on every CPU, whatever the record's place in the ring.
//!
//! [`RecordBytes`] is that buffer: a byte slice (`Deref<Target = [u8]>`) whose first byte
//! lies [`FRAME_AT`] bytes past a 64-byte boundary. It is safe code: the alignment comes
//! from choosing where in an over-allocated `Vec` the slice starts.

use std::ops::{Deref, DerefMut};

/// The alignment the ring gives its records (a cache line).
pub const LINE: usize = 64;

/// Where a frame starts in its 64-byte line, in the ring (after the record's 8-byte stamp)
/// and in a [`RecordBytes`].
pub const FRAME_AT: usize = 8;

/// A growable byte buffer whose first byte is [`FRAME_AT`] bytes past a 64-byte boundary.
#[derive(Clone, Debug, Default)]
pub struct RecordBytes {
    /// The allocation: `LINE` bytes more than the longest length asked for.
    raw: Vec<u8>,
    /// Where the bytes start in `raw`.
    start: usize,
    /// How many bytes there are.
    len: usize,
}

impl RecordBytes {
    /// An empty buffer (no allocation until it grows).
    pub fn new() -> RecordBytes {
        RecordBytes::default()
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> RecordBytes {
        let mut b = RecordBytes::new();
        b.resize(len);
        b
    }

    /// Makes the buffer `len` bytes long: its first `min(len, old length)` bytes are kept,
    /// any new ones are zero. Allocates only when it grows past what it held before.
    pub fn resize(&mut self, len: usize) {
        if self.raw.len() < len + LINE {
            let mut raw = vec![0; len + LINE];
            let start = start_in(&raw);
            let keep = self.len.min(len);
            raw[start..start + keep].copy_from_slice(&self.raw[self.start..self.start + keep]);
            (self.raw, self.start) = (raw, start);
        } else if len > self.len {
            self.raw[self.start + self.len..self.start + len].fill(0);
        }
        self.len = len;
    }

    /// Makes the buffer hold `head` followed by `tail`.
    pub fn set(&mut self, head: &[u8], tail: &[u8]) {
        self.resize(head.len() + tail.len());
        let (h, t) = self.split_at_mut(head.len());
        h.copy_from_slice(head);
        t.copy_from_slice(tail);
    }
}

/// The index in `raw` whose address is `FRAME_AT` past a 64-byte boundary.
fn start_in(raw: &[u8]) -> usize {
    let addr = raw.as_ptr() as usize;
    (FRAME_AT + LINE - addr % LINE) % LINE
}

impl Deref for RecordBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.raw.is_empty() {
            return &[];
        }
        &self.raw[self.start..self.start + self.len]
    }
}

impl DerefMut for RecordBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.raw.is_empty() {
            return &mut [];
        }
        &mut self.raw[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(b: &RecordBytes) -> usize {
        b.as_ptr() as usize % LINE
    }

    #[test]
    fn the_first_byte_lies_where_a_ring_frame_does() {
        for len in [0usize, 1, 40, 64, 4096, 65_576, 1 << 20] {
            let b = RecordBytes::zeroed(len);
            assert_eq!(b.len(), len);
            if len > 0 {
                assert_eq!(at(&b), FRAME_AT, "len {len}");
            }
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn growing_keeps_the_bytes_and_the_alignment() {
        let mut b = RecordBytes::new();
        assert!(b.is_empty());
        b.set(b"header", b"payload");
        assert_eq!(&b[..], b"headerpayload");
        b.resize(100_000);
        assert_eq!(at(&b), FRAME_AT);
        assert_eq!(&b[..13], b"headerpayload");
        assert!(b[13..].iter().all(|&x| x == 0));
        b.resize(3);
        assert_eq!(&b[..], b"hea");
        // Growing again within the allocation zeroes what was cut off.
        b.resize(6);
        assert_eq!(&b[..], b"hea\0\0\0");
    }
}
