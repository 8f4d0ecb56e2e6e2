//! The data path: one producer and one consumer per direction.
//!
//! The producer copies a frame in at its index `head` (or builds it there, in place) and
//! publishes it by storing the record's stamp with Release, then the new `head`; the
//! consumer polls the stamp at its index `tail` with an Acquire load, copies the frame out
//! (or reads it in place), checks it, and publishes its own index `tail` so the bytes can
//! be reused. Everything else in [`super`] is how the two sides meet and wait; this is how
//! a message moves. The record layout (stamp, header, payload; pads) is in [`super::layout`].
//!
//! # Loans: zero-copy in both directions
//!
//! [`Producer::reserve`] returns the room for one record; the producer either copies a
//! frame into it ([`Producer::copy_in`]) or is lent it ([`Producer::frame_mut`]): a `&mut
//! [u8]` over the shared bytes themselves, where it builds the frame in place, and then
//! [`Producer::publish`]es. The consumer either copies a frame out ([`Consumer::recv`]) or
//! reads it where it lies ([`Consumer::recv_in_place`]), and the record stays lent to it
//! until its next receive (or [`Consumer::release_lent`]). Who owns the bytes, and when:
//!
//! | bytes of a record | after `reserve`      | after `publish`            | after the consumer's release |
//! |-------------------|----------------------|----------------------------|------------------------------|
//! | owned by          | the producer (a loan) | the consumer (a loan, read-only) | the producer again      |
//!
//! The protocol makes the loans exclusive: the producer lends only bytes the consumer has
//! released (`tail` says so), and the consumer reads only bytes whose stamp says they are
//! published. A peer that breaks the protocol (a hostile or buggy process writing bytes it
//! lent away) can still change the bytes under a loan while this side uses it: the
//! compiler cannot know (the writes come from another process), and what this side can
//! then see is bytes that differ from what it checked. So nothing that decides *where* to
//! read or write is taken from shared bytes after they are checked: the header is copied
//! into private memory and decoded from there, the payload's length and position come from
//! that private copy and are bounds-checked against the area, and the checksum is computed
//! over the payload as it is read. A peer that scribbles a payload while we read it makes
//! us read wrong bytes (and usually fail the checksum), never read or write outside the
//! region.

use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::frame::{self, Decoded, Header, HEADER_LEN};

use super::layout::{
    max_payload, max_record, read_stamp, record_len, stamp, Control, Inner, RECORD_ALIGN, STAMP_LEN,
};
use super::wait::{futex_wake, low_word, Pacer};
use super::{Direction, RingError, Wait};
use crate::stall::Stall;

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
    /// Waits for room, counted and narrated when long ([`Producer::narrate_full`]).
    pub(super) full: Option<Stall>,
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
    /// Bytes of the record lent by `recv_in_place`, released at the next receive.
    pub(super) lent: u64,
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

    /// Changes how this end waits for room (a side that follows its peer's Hello).
    pub fn set_wait(&mut self, wait: Wait) {
        self.pacer.set_wait(wait);
    }

    /// Counts the waits for room and narrates each one longer than half a second as it
    /// starts and ends (a stopped reader: "reserve() has been blocked for 0.50 s: ring 0 is
    /// full ..."); [`Producer::full_note`] gives the report's line.
    pub fn narrate_full(&mut self) {
        self.full = Some(Stall::new(
            "reserve()",
            "the ring is full",
            "the ring was full",
            "P6's analogue for a ring: the writer waits for the reader",
        ));
    }

    /// "reserve() waited 12 times for room (...): longest 3.02 s, ...", if it ever waited
    /// and [`Producer::narrate_full`] was asked for.
    pub fn full_note(&self) -> Option<String> {
        self.full.as_ref().and_then(Stall::note)
    }

    /// The consumer's index as it is now (bytes it has released), read with Acquire and
    /// not checked: for telling how far a reader that left got.
    pub fn peer_index(&self) -> u64 {
        self.ctl().tail.0.load(Ordering::Acquire)
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
    /// configured strategy) until the consumer has released enough bytes: the record's, and
    /// a pad's if the record does not fit before the end of the area. The fast path reads
    /// nothing shared: the consumer's index seen last time may already leave room.
    pub fn reserve(&mut self, payload_len: usize) -> Result<Reserved, RingError> {
        let rec = self.record_for(payload_len)?;
        self.pacer.tick(&self.region)?;
        let pad = self.pad_before(rec);
        let need = pad + rec;
        if self.room() < need && self.refresh_room()? < need {
            if let Some(s) = self.full.as_mut() {
                s.begin();
            }
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
                if self.refresh_room()? >= need {
                    break;
                }
                if waiting.sleepy() || waiting.spins.is_multiple_of(64) {
                    if let Some(s) = self.full.as_mut() {
                        s.tick();
                    }
                }
            }
            if let Some(s) = self.full.as_mut() {
                s.end();
            }
        }
        Ok(Reserved {
            at: self.head + pad,
            rec,
            pad,
            payload_len,
        })
    }

    /// Reserves room without waiting; `None` if the ring has no room for the frame now.
    pub fn try_reserve(&mut self, payload_len: usize) -> Result<Option<Reserved>, RingError> {
        let rec = self.record_for(payload_len)?;
        let pad = self.pad_before(rec);
        if self.room() < pad + rec && self.refresh_room()? < pad + rec {
            return Ok(None);
        }
        Ok(Some(Reserved {
            at: self.head + pad,
            rec,
            pad,
            payload_len,
        }))
    }

    /// Bytes to skip before a record of `rec` bytes: those to the end of the area if it
    /// would not fit before it (a record never wraps), else 0.
    fn pad_before(&self, rec: u64) -> u64 {
        let off = self.head & (self.cap - 1);
        if off + rec > self.cap {
            self.cap - off
        } else {
            0
        }
    }

    /// The reserved frame's bytes where they lie in the shared area: header (40 bytes),
    /// then the payload it was reserved for. The producer builds the frame here in place
    /// (zero-copy); nothing is visible to the consumer until [`Producer::publish`].
    pub fn frame_mut(&mut self, slot: &Reserved) -> &mut [u8] {
        let data = self.region.data(self.d);
        let off = (slot.at & (self.cap - 1)) as usize + STAMP_LEN;
        // SAFETY: the record [at, at + rec) lies in one piece inside this direction's area
        // of `cap` bytes (`reserve` placed it after a pad if needed: off + rec <= cap), and
        // HEADER_LEN + payload_len <= rec - STAMP_LEN (record_for). The consumer has
        // released those bytes (`reserve` waited for it) and reads them only after the
        // stamp is published, and this is the direction's only producer (`claimed`), so for
        // the life of the `&mut self` borrow nothing else in this process touches them. A
        // peer that writes them anyway breaks the protocol: see the module docs (Loans).
        unsafe { std::slice::from_raw_parts_mut(data.add(off), HEADER_LEN + slot.payload_len) }
    }

    /// Copies the frame into the reserved bytes (the copying path; [`Producer::frame_mut`]
    /// is the in-place one). Nothing is visible to the consumer until [`Producer::publish`].
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
        let off = (slot.at & (self.cap - 1)) as usize + STAMP_LEN;
        // SAFETY: as in `frame_mut`: [off, off + HEADER_LEN + payload.len()) lies inside the
        // area, released by the consumer and not read by it before the stamp is stored.
        // `header` and `payload` are our own memory and cannot overlap the region.
        unsafe {
            ptr::copy_nonoverlapping(header.as_ptr(), data.add(off), HEADER_LEN);
            ptr::copy_nonoverlapping(payload.as_ptr(), data.add(off + HEADER_LEN), payload.len());
        }
        Ok(())
    }

    /// Publishes the frame written into `slot`: the pad's stamp first if there is one, the
    /// record's stamp (Release: the frame's bytes are visible to whoever reads the stamp
    /// with Acquire), then `head`, and the consumer is woken (`FUTEX_WAKE`) only if it said
    /// it sleeps.
    pub fn publish(&mut self, slot: Reserved) {
        if slot.pad > 0 {
            let pad = stamp(self.head, slot.pad, true);
            self.stamp(self.head).store(pad, Ordering::Release);
        }
        self.stamp(slot.at)
            .store(stamp(slot.at, slot.rec, false), Ordering::Release);
        self.head = slot.at + slot.rec;
        let c = self.ctl();
        // SeqCst store then SeqCst load: the waker's half of the lost-wake-up argument in
        // the wait module's docs.
        c.head.0.store(self.head, Ordering::SeqCst);
        if c.consumer_sleeping.0.load(Ordering::SeqCst) != 0 {
            // SAFETY: the word is the aligned low half of `head`, inside the live region.
            unsafe { futex_wake(low_word(&c.head.0)) };
        }
    }

    /// The stamp word of the record at stream position `pos`.
    fn stamp(&self, pos: u64) -> &AtomicU64 {
        stamp_at(self.region.data(self.d), self.cap, pos)
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

/// Room for one frame that [`Producer::reserve`] waited for: `rec` bytes at stream
/// position `at` (after `pad` bytes skipped to the start of the area, if any), which the
/// consumer has released and will not read until published: a loan to the producer.
#[derive(Debug)]
#[must_use = "a reserved slot is sent only by publish"]
pub struct Reserved {
    /// Stream position of the record.
    at: u64,
    /// The record's length in the ring: stamp, header and payload rounded up to 64 bytes.
    rec: u64,
    /// Bytes skipped before it (a pad), 0 mostly.
    pad: u64,
    /// The payload length it was reserved for.
    payload_len: usize,
}

impl Consumer {
    fn ctl(&self) -> &Control {
        self.region.control(self.d)
    }

    /// Changes how this end waits for frames (a reader that follows the writer's Hello).
    pub fn set_wait(&mut self, wait: Wait) {
        self.pacer.set_wait(wait);
    }

    /// How this end waits.
    pub fn wait(&self) -> Wait {
        self.pacer.wait()
    }

    /// Reads and checks the producer's index; returns the published bytes it says are not
    /// consumed yet. The index may lag one record behind `tail`: the producer stores a
    /// record's stamp first and the index after it, and the consumer may have taken the
    /// record (by its stamp) in between.
    fn refresh_available(&mut self) -> Result<u64, RingError> {
        let head = self.ctl().head.0.load(Ordering::Acquire);
        // check: the producer cannot go back, cannot be more than one ring ahead of what
        // we consumed, and publishes whole records.
        if head < self.head_seen
            || head > self.tail + self.cap
            || !head.is_multiple_of(RECORD_ALIGN as u64)
        {
            return Err(RingError::Corrupt(format!(
                "ring {} producer index {head} is outside [{}, {}] (last seen, our consumer \
                 index + capacity {}) or not a multiple of {RECORD_ALIGN}",
                self.d as usize,
                self.head_seen,
                self.tail + self.cap,
                self.cap
            )));
        }
        self.head_seen = head;
        Ok(head.saturating_sub(self.tail))
    }

    /// The length of the record at `tail` if it is published (its stamp is that of
    /// `tail`; see [`super::layout::stamp`]). A pad is skipped (and released) on the way.
    /// When the stamp says no and `check_head` is set, the producer's index is asked too:
    /// an index that says the record is there while its stamp says otherwise is a corrupt
    /// region.
    fn poll(&mut self, check_head: bool) -> Result<Option<u64>, RingError> {
        loop {
            let word = self.stamp_word();
            match read_stamp(word, self.tail) {
                Some((len, true)) => {
                    let off = self.tail & (self.cap - 1);
                    // check: a pad runs from a record's place to the end of the area.
                    if off == 0 || len != self.cap - off {
                        let why = format!("a pad of {len} bytes at offset {off} of {}", self.cap);
                        return Err(self.corrupt(self.tail, &why));
                    }
                    self.tail += len;
                    self.release();
                    continue;
                }
                Some((len, false)) => return Ok(Some(len)),
                None if !check_head => return Ok(None),
                None => {}
            }
            // The producer stores the stamp before `head`: once `head` is past `tail` (an
            // Acquire load), the stamp must be visible.
            if self.refresh_available()? == 0 {
                return Ok(None);
            }
            let again = self.stamp_word();
            if read_stamp(again, self.tail).is_none() {
                return Err(self.corrupt(
                    self.tail,
                    &format_args!(
                        "the producer index says it is published, but its stamp is {again:#x} (expected {:#x} in the low 42 bits)",
                        stamp(self.tail, 0, false)
                    ),
                ));
            }
        }
    }

    /// The stamp word at `tail`, loaded with Acquire.
    fn stamp_word(&self) -> u64 {
        stamp_at(self.region.data(self.d), self.cap, self.tail).load(Ordering::Acquire)
    }

    /// Waits (configured strategy) until the record at `tail` is published. A spinning
    /// consumer polls the stamp (the record's own first cache line); one about to sleep
    /// reads `head` first, which is also its futex word.
    fn wait_for_record(&mut self) -> Result<u64, RingError> {
        self.pacer.tick(&self.region)?;
        if let Some(len) = self.poll(false)? {
            return Ok(len);
        }
        let mut waiting = self.pacer.begin();
        let mut polls = 0u64;
        loop {
            polls += 1;
            // Ask the producer's index now and then (and before every sleep), so a region
            // whose index and stamps disagree is reported rather than waited on forever.
            let check = waiting.sleepy() || polls.is_multiple_of(64);
            if let Some(len) = self.poll(check)? {
                return Ok(len);
            }
            let seen = if check { self.head_seen } else { self.tail };
            let c = self.ctl();
            self.pacer.pause(
                &mut waiting,
                &self.region,
                &c.consumer_sleeping.0,
                &c.head.0,
                seen,
                "a frame from the peer",
            )?;
        }
    }

    /// Takes the next frame into the private buffer if one is published; its header.
    pub fn try_recv(&mut self) -> Result<Option<Header>, RingError> {
        self.pacer.tick(&self.region)?;
        self.settle();
        let Some(rec) = self.poll(true)? else {
            return Ok(None);
        };
        self.take(rec).map(Some)
    }

    /// Waits for the next frame (configured strategy); returns its header and payload.
    /// The payload is this consumer's private copy, valid until the next call.
    pub fn recv(&mut self) -> Result<(Header, &[u8]), RingError> {
        self.settle();
        let rec = self.wait_for_record()?;
        let header = self.take(rec)?;
        Ok((header, &self.buf[HEADER_LEN..self.frame_len]))
    }

    /// Waits for the next frame and returns its header (decoded from a private copy) and
    /// its payload **where it lies in the shared area**, checksum verified over those
    /// bytes: zero-copy. The record stays lent to this consumer (the producer cannot
    /// reuse it) until the next receive or [`Consumer::release_lent`]. See the module docs
    /// (Loans) for what a peer that breaks the protocol can still do to those bytes.
    pub fn recv_in_place(&mut self) -> Result<(Header, &[u8]), RingError> {
        self.settle();
        let rec = self.wait_for_record()?;
        self.lend(rec)
    }

    /// [`Consumer::recv_in_place`] without waiting: `None` if no frame is published now.
    pub fn try_recv_in_place(&mut self) -> Result<Option<(Header, &[u8])>, RingError> {
        self.pacer.tick(&self.region)?;
        self.settle();
        match self.poll(true)? {
            Some(rec) => self.lend(rec).map(Some),
            None => Ok(None),
        }
    }

    /// The published record of `rec` bytes at `tail`, read in place and lent out.
    fn lend(&mut self, rec: u64) -> Result<(Header, &[u8]), RingError> {
        let data = self.region.data(self.d);
        let at = self.tail;
        let off = (at & (self.cap - 1)) as usize;
        // SAFETY: the record at `at` is published (its stamp, Acquire), and its first
        // STAMP_LEN + HEADER_LEN bytes lie inside the area (off is a multiple of 64 below
        // cap, and cap - off >= 64 >= 48). The destination is our private buffer.
        unsafe {
            ptr::copy_nonoverlapping(data.add(off + STAMP_LEN), self.buf.as_mut_ptr(), HEADER_LEN)
        };
        let h = self.header_of(at, off, rec)?;
        let len = h.payload_len();
        // SAFETY: [off + 48, off + 48 + len) lies inside the area (header_of checked that the
        // record fits before its end), and the record is lent to us until `settle` releases
        // it. The peer may still write it (the module docs, Loans): we only read it, and
        // nothing we do with it decides where to read or write.
        let payload =
            unsafe { std::slice::from_raw_parts(data.add(off + STAMP_LEN + HEADER_LEN), len) };
        // check: the checksum over the private header and the payload as it lies.
        frame::verify(&h, &self.buf[..HEADER_LEN], payload).map_err(|e| self.corrupt(at, &e))?;
        self.lent = rec;
        Ok((h, payload))
    }

    /// Gives back the record lent by [`Consumer::recv_in_place`] now, rather than at the
    /// next receive, so the producer may reuse its bytes.
    pub fn release_lent(&mut self) {
        self.settle();
    }

    /// Releases a record still lent out.
    fn settle(&mut self) {
        if self.lent > 0 {
            self.tail += self.lent;
            self.lent = 0;
            self.release();
        }
    }

    /// The payload of the frame last returned by `try_recv`.
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADER_LEN.min(self.frame_len)..self.frame_len]
    }

    /// Decodes the private copy of the header at `buf[..HEADER_LEN]` for the record at
    /// `at` (area offset `off`), whose stamp says `rec` bytes were published, and checks
    /// that the frame fits in them and the record before the end of the area.
    fn header_of(&self, at: u64, off: usize, rec: u64) -> Result<Header, RingError> {
        // check: the header's length is limited by our capacity before it sizes anything.
        let h = match frame::decode_header(&self.buf[..HEADER_LEN], self.max_payload) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(self.corrupt(at, &"its header could not be read")),
            Err(e) => return Err(self.corrupt(at, &e)),
        };
        // check: the frame lies in the record its stamp published.
        let need = record_len(h.payload_len()) as u64;
        if need != rec {
            let why = format!(
                "claims {} bytes, but only {rec} are published",
                HEADER_LEN + h.payload_len()
            );
            return Err(self.corrupt(at, &why));
        }
        // check: a record never wraps; one that claims to run past the end is corrupt.
        if off + rec as usize > self.cap as usize {
            let why = format!(
                "claims {rec} bytes at offset {off}, past the end of the {}-byte area",
                self.cap
            );
            return Err(self.corrupt(at, &why));
        }
        Ok(h)
    }

    /// Copies the published frame at `tail` out (checking it), releases its bytes, returns
    /// its header.
    fn take(&mut self, rec: u64) -> Result<Header, RingError> {
        let data = self.region.data(self.d);
        let at = self.tail;
        let off = (at & (self.cap - 1)) as usize;
        // One copy takes the header and the start of the payload: the rest of the record's
        // first two cache lines (which the CPU fetches as a pair), or of its only one.
        let first = ((rec as usize).clamp(RECORD_ALIGN, 2 * RECORD_ALIGN) - STAMP_LEN)
            .min(self.cap as usize - off - STAMP_LEN);
        // SAFETY: [off + 8, off + 8 + first) lies inside the area (first <= cap - off - 8);
        // the record at `at` is published. `first` <= 120 <= buf.len() (a maximal record
        // is at least 2 KiB). The destination is our private buffer.
        unsafe {
            ptr::copy_nonoverlapping(data.add(off + STAMP_LEN), self.buf.as_mut_ptr(), first)
        };
        let h = self.header_of(at, off, rec)?;
        let total = HEADER_LEN + h.payload_len();
        if total > first {
            // total <= max_record - 8 <= buf.len(): decode_header limited the payload.
            let Some(dst) = self.buf.get_mut(first..total) else {
                return Err(RingError::Corrupt(format!(
                    "frame at position {at} of {total} bytes exceeds the {}-byte record limit",
                    max_record(self.cap as usize)
                )));
            };
            // SAFETY: [off + 8 + first, off + 8 + total) lies inside the area (header_of:
            // off + record_len <= cap); `dst` is our private buffer.
            unsafe {
                ptr::copy_nonoverlapping(
                    data.add(off + STAMP_LEN + first),
                    dst.as_mut_ptr(),
                    total - first,
                )
            };
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

/// The stamp word of the record at stream position `pos` in an area of `cap` bytes.
fn stamp_at<'a>(data: *mut u8, cap: u64, pos: u64) -> &'a AtomicU64 {
    let off = (pos & (cap - 1)) as usize;
    // SAFETY: `off` is a multiple of 64 (positions advance by whole records and pads) below
    // `cap`, so the 8 bytes at `data + off` are inside the area and 8-aligned (the area
    // starts on a page). The region outlives every endpoint that calls this (their `Arc`).
    // An atomic is valid for any bits and for concurrent access by the peer.
    unsafe { AtomicU64::from_ptr(data.add(off).cast::<u64>()) }
}
