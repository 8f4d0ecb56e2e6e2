//! The data path: one producer and one consumer per direction.
//!
//! The producer copies a frame in at its index `head` and publishes the new `head` with a
//! Release store; the consumer reads `head` with an Acquire load, copies the frame out,
//! checks it, and publishes its own index `tail` so the bytes can be reused. Everything
//! else in [`super`] is how the two sides meet and wait; this is how a message moves.

use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::frame::{self, Decoded, Header, HEADER_LEN};

use super::layout::{max_payload, max_record, record_len, Control, Inner, RECORD_ALIGN};
use super::wait::{futex_wake, low_word, Pacer};
use super::{Direction, RingError};

/// The producing end of one direction.
pub struct Producer {
    /// The region (keeps the mapping alive).
    pub(super) region: Arc<Inner>,
    /// Which ring.
    pub(super) d: Direction,
    /// Index into `claimed`, released on drop.
    pub(super) claim: usize,
    /// Capacity, from our own configuration.
    pub(super) cap: u64,
    /// Our index: the truth. The shared copy is only ever written from it, never read.
    pub(super) head: u64,
    /// The consumer's index as last read and checked.
    pub(super) tail_seen: u64,
    /// Waiting.
    pub(super) pacer: Pacer,
}

/// The consuming end of one direction.
pub struct Consumer {
    /// The region (keeps the mapping alive).
    pub(super) region: Arc<Inner>,
    /// Which ring.
    pub(super) d: Direction,
    /// Index into `claimed`, released on drop.
    pub(super) claim: usize,
    /// Capacity, from our own configuration.
    pub(super) cap: u64,
    /// Our index: the truth.
    pub(super) tail: u64,
    /// The producer's index as last read and checked.
    pub(super) head_seen: u64,
    /// Private copy of the current frame: decoded and handed out from here, never from
    /// the shared area.
    pub(super) buf: Vec<u8>,
    /// Largest payload accepted (from our capacity).
    pub(super) max_payload: usize,
    /// Waiting.
    pub(super) pacer: Pacer,
    /// Bytes of the frame in `buf`.
    pub(super) frame_len: usize,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.region.claimed[self.claim].store(false, Ordering::Release);
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.region.claimed[self.claim].store(false, Ordering::Release);
    }
}

impl Producer {
    fn ctl(&self) -> &Control {
        self.region.control(self.d)
    }

    /// Reads and checks the consumer's index; returns the free bytes.
    fn refresh_room(&mut self) -> Result<u64, RingError> {
        let tail = self.ctl().tail.0.load(Ordering::Acquire);
        // check: the consumer cannot go back, cannot pass what we published, and moves
        // whole records.
        if tail < self.tail_seen || tail > self.head || !tail.is_multiple_of(RECORD_ALIGN as u64) {
            return Err(RingError::Corrupt(format!(
                "ring {} consumer index {tail} is outside [{}, {}] (last seen, our producer index) \
                 or not a multiple of {RECORD_ALIGN}",
                self.d as usize, self.tail_seen, self.head
            )));
        }
        self.tail_seen = tail;
        Ok(self.cap - (self.head - tail))
    }

    /// Reserves room for a frame with a `payload_len`-byte payload, waiting (with the
    /// configured strategy) until the consumer has released enough bytes. The fast path
    /// reads nothing shared: the consumer's index seen last time may already leave room.
    pub fn reserve(&mut self, payload_len: usize) -> Result<Reserved, RingError> {
        let rec = self.record_for(payload_len)?;
        self.pacer.tick(&self.region)?;
        if self.room() < rec && self.refresh_room()? < rec {
            let mut waiting = self.pacer.begin();
            loop {
                let seen = self.tail_seen;
                let c = self.ctl();
                self.pacer.pause(
                    &mut waiting,
                    &self.region,
                    &c.producer_sleeping.0,
                    &c.tail.0,
                    seen,
                    "room in the ring (the reader to consume)",
                )?;
                if self.refresh_room()? >= rec {
                    break;
                }
            }
        }
        Ok(Reserved { rec, payload_len })
    }

    /// Reserves room without waiting; `None` if the ring has no room for the frame now.
    pub fn try_reserve(&mut self, payload_len: usize) -> Result<Option<Reserved>, RingError> {
        let rec = self.record_for(payload_len)?;
        if self.room() < rec && self.refresh_room()? < rec {
            return Ok(None);
        }
        Ok(Some(Reserved { rec, payload_len }))
    }

    /// Copies the frame into the reserved bytes at `head` (two `copy_nonoverlapping` calls
    /// each, for a frame that runs past the end of the area and continues at offset 0).
    /// Nothing is visible to the consumer until [`Producer::publish`].
    pub fn copy_in(
        &mut self,
        slot: &Reserved,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> Result<(), RingError> {
        if payload.len() != slot.payload_len {
            return Err(RingError::Invalid(format!(
                "a {}-byte payload offered for a slot reserved for {} bytes",
                payload.len(),
                slot.payload_len
            )));
        }
        let data = self.region.data(self.d);
        // SAFETY: `data` is this direction's area of `cap` bytes (Inner::data). The frame's
        // HEADER_LEN + payload bytes <= rec <= cap / 2 (record_for, and the length check
        // above), starting at head, lie in [head, head + rec), which the consumer has
        // released (`reserve`): no one else reads or writes them until we publish.
        // `copy_to_ring` wraps at `cap`.
        unsafe {
            copy_to_ring(data, self.cap, self.head, header);
            copy_to_ring(data, self.cap, self.head + HEADER_LEN as u64, payload);
        }
        Ok(())
    }

    /// Publishes the frame copied into `slot`: `head` moves past it with a Release store,
    /// then the consumer is woken (`FUTEX_WAKE`) only if it said it sleeps.
    pub fn publish(&mut self, slot: Reserved) {
        self.head += slot.rec;
        let c = self.ctl();
        // SeqCst store then SeqCst load: the waker's half of the lost-wake-up argument in
        // the wait module's docs. It is also a Release store: the frame bytes copied in
        // are visible to whoever reads this index with Acquire.
        c.head.0.store(self.head, Ordering::SeqCst);
        if c.consumer_sleeping.0.load(Ordering::SeqCst) != 0 {
            // SAFETY: the word is the aligned low half of `head`, inside the live region.
            unsafe { futex_wake(low_word(&c.head.0)) };
        }
    }

    /// Sends one frame: [`reserve`](Producer::reserve), [`copy_in`](Producer::copy_in),
    /// [`publish`](Producer::publish).
    pub fn send(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> Result<(), RingError> {
        let slot = self.reserve(payload.len())?;
        self.copy_in(&slot, header, payload)?;
        self.publish(slot);
        Ok(())
    }

    /// Sends one frame without waiting; `Ok(false)` if the ring has no room for it now.
    pub fn try_send(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> Result<bool, RingError> {
        let Some(slot) = self.try_reserve(payload.len())? else {
            return Ok(false);
        };
        self.copy_in(&slot, header, payload)?;
        self.publish(slot);
        Ok(true)
    }

    /// Free bytes as far as the consumer's index seen last tells.
    fn room(&self) -> u64 {
        self.cap - (self.head - self.tail_seen)
    }

    fn record_for(&self, payload_len: usize) -> Result<u64, RingError> {
        let max = max_payload(self.cap as usize);
        if payload_len > max {
            return Err(RingError::TooLarge {
                len: payload_len,
                max,
            });
        }
        Ok(record_len(payload_len) as u64)
    }
}

/// Room for one frame that [`Producer::reserve`] waited for: the next `rec` bytes at the
/// producer's index, which the consumer has released and will not read until published.
#[derive(Debug)]
#[must_use = "a reserved slot is sent only by copy_in and publish"]
pub struct Reserved {
    /// The record's length in the ring: header + payload rounded up to 64 bytes.
    rec: u64,
    /// The payload length it was reserved for.
    payload_len: usize,
}

impl Consumer {
    fn ctl(&self) -> &Control {
        self.region.control(self.d)
    }

    /// Reads and checks the producer's index; returns the published, unconsumed bytes.
    fn refresh_available(&mut self) -> Result<u64, RingError> {
        let head = self.ctl().head.0.load(Ordering::Acquire);
        // check: the producer cannot go back, cannot be more than one ring ahead of what
        // we consumed, and publishes whole records.
        if head < self.head_seen
            || head < self.tail
            || head - self.tail > self.cap
            || !head.is_multiple_of(RECORD_ALIGN as u64)
        {
            return Err(RingError::Corrupt(format!(
                "ring {} producer index {head} is outside [{}, {}] (last seen, our consumer \
                 index + capacity {}) or not a multiple of {RECORD_ALIGN}",
                self.d as usize,
                self.head_seen.max(self.tail),
                self.tail + self.cap,
                self.cap
            )));
        }
        self.head_seen = head;
        Ok(head - self.tail)
    }

    /// Takes the next frame into the private buffer if one is published; its header.
    pub fn try_recv(&mut self) -> Result<Option<Header>, RingError> {
        self.pacer.tick(&self.region)?;
        let mut avail = self.head_seen - self.tail;
        if avail == 0 {
            avail = self.refresh_available()?;
            if avail == 0 {
                return Ok(None);
            }
        }
        self.take(avail).map(Some)
    }

    /// Waits for the next frame (configured strategy); returns its header and payload.
    /// The payload is this consumer's private copy, valid until the next call.
    pub fn recv(&mut self) -> Result<(Header, &[u8]), RingError> {
        self.pacer.tick(&self.region)?;
        let mut avail = self.head_seen - self.tail;
        if avail == 0 {
            avail = self.refresh_available()?;
            if avail == 0 {
                let mut waiting = self.pacer.begin();
                loop {
                    let seen = self.head_seen;
                    let c = self.ctl();
                    self.pacer.pause(
                        &mut waiting,
                        &self.region,
                        &c.consumer_sleeping.0,
                        &c.head.0,
                        seen,
                        "a frame from the peer",
                    )?;
                    avail = self.refresh_available()?;
                    if avail > 0 {
                        break;
                    }
                }
            }
        }
        let header = self.take(avail)?;
        Ok((header, &self.buf[HEADER_LEN..self.frame_len]))
    }

    /// The payload of the frame last returned by `try_recv`.
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADER_LEN.min(self.frame_len)..self.frame_len]
    }

    /// Copies the frame at `tail` out (checking it), releases its bytes, returns its header.
    /// `avail` > 0 is what `refresh_available` checked: <= cap, a multiple of 64.
    fn take(&mut self, avail: u64) -> Result<Header, RingError> {
        let data = self.region.data(self.d);
        let at = self.tail;
        // One copy takes the header and the start of the payload: the CPU then fetches
        // both cache lines of a small frame from the other core at once, not one by one.
        let first = (avail as usize).min(FIRST_COPY).min(self.buf.len());
        // SAFETY: `first` <= avail bytes are published at `at` (avail is a nonzero multiple
        // of 64, checked in refresh_available), first <= FIRST_COPY <= cap; `data` is our
        // direction's area of `cap` bytes and `copy_from_ring` wraps at `cap`. The
        // destination is our private buffer (first <= buf.len()).
        unsafe { copy_from_ring(data, self.cap, at, &mut self.buf[..first]) };
        // check: the header's length is limited by our capacity before it sizes anything.
        let h = match frame::decode_header(&self.buf[..first], self.max_payload) {
            Ok(Some(h)) => h,
            Ok(None) => unreachable_need_more(at)?,
            Err(e) => return Err(self.corrupt(at, &e)),
        };
        let total = HEADER_LEN + h.payload_len();
        let rec = record_len(h.payload_len()) as u64;
        // check: the frame must lie within what the producer published.
        if rec > avail {
            let why = format!("claims {total} bytes, but only {avail} are published");
            return Err(self.corrupt(at, &why));
        }
        if total > first {
            // total <= max_record == buf.len(): decode_header limited the payload.
            let Some(dst) = self.buf.get_mut(first..total) else {
                return Err(RingError::Corrupt(format!(
                    "frame at position {at} of {total} bytes exceeds the {}-byte record limit",
                    max_record(self.cap as usize)
                )));
            };
            // SAFETY: [at + first, at + total) is within the published bytes (rec <= avail,
            // checked just above) and total <= cap / 2; `dst` is our private buffer.
            unsafe { copy_from_ring(data, self.cap, at + first as u64, dst) };
        }
        // check: decode the private copy again; the shared bytes may have changed between
        // the two copies, so the length and checksum are taken from what we now hold.
        match frame::decode(&self.buf[..total], self.max_payload) {
            Ok(Decoded::Frame { header, total: t }) if t == total => {
                self.frame_len = total;
                self.tail += rec;
                self.release();
                Ok(header)
            }
            Ok(_) => Err(self.corrupt(at, &"changed while it was being read")),
            Err(e) => Err(self.corrupt(at, &e)),
        }
    }

    /// "corrupt shared region: frame at ring D position P: why".
    fn corrupt(&self, at: u64, why: &dyn std::fmt::Display) -> RingError {
        RingError::Corrupt(format!(
            "frame at ring {} position {at}: {why}",
            self.d as usize
        ))
    }

    /// Publishes `tail` (the bytes are free again), waking the producer only if it sleeps.
    fn release(&self) {
        let c = self.ctl();
        // SeqCst store, SeqCst load: the waker's half of the argument in the module docs.
        c.tail.0.store(self.tail, Ordering::SeqCst);
        if c.producer_sleeping.0.load(Ordering::SeqCst) != 0 {
            // SAFETY: the word is the aligned low half of `tail`, inside the live region.
            unsafe { futex_wake(low_word(&c.tail.0)) };
        }
    }
}

/// Bytes the consumer copies before it knows a frame's length: four cache lines.
const FIRST_COPY: usize = 256;

/// `decode_header` answers "need more" only below 40 bytes, and we always pass 64 or more.
fn unreachable_need_more(at: u64) -> Result<Header, RingError> {
    Err(RingError::Corrupt(format!(
        "frame header at position {at} could not be read"
    )))
}

/// Copies `src` into the ring at stream position `pos`, continuing at offset 0 past the end.
///
/// # Safety
/// `data` must be valid for writes of `cap` bytes, `cap` a power of two, `src.len() <= cap`,
/// and no one else may access the destination bytes during the copy.
unsafe fn copy_to_ring(data: *mut u8, cap: u64, pos: u64, src: &[u8]) {
    let start = (pos & (cap - 1)) as usize;
    let first = src.len().min(cap as usize - start);
    // SAFETY: start < cap and start + first <= cap; the rest, src.len() - first <= cap -
    // first, goes to offset 0. `src` is our own memory and cannot overlap the ring.
    unsafe {
        ptr::copy_nonoverlapping(src.as_ptr(), data.add(start), first);
        ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
    }
}

/// Copies `dst.len()` bytes out of the ring from stream position `pos`, wrapping.
///
/// # Safety
/// `data` must be valid for reads of `cap` bytes, `cap` a power of two, `dst.len() <= cap`.
unsafe fn copy_from_ring(data: *const u8, cap: u64, pos: u64, dst: &mut [u8]) {
    let start = (pos & (cap - 1)) as usize;
    let first = dst.len().min(cap as usize - start);
    // SAFETY: as in copy_to_ring, with the roles swapped; `dst` is private memory.
    unsafe {
        ptr::copy_nonoverlapping(data.add(start), dst.as_mut_ptr(), first);
        ptr::copy_nonoverlapping(data, dst.as_mut_ptr().add(first), dst.len() - first);
    }
}
