//! The consuming end: the stamp at its index polled (waiting for a record), the frame
//! copied out or read in place and checked, its bytes released.

use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::align::RecordBytes;
use crate::frame::{self, Header, Summer, CHECKSUM_AT, FLAG_HEADER_SUM, HEADER_LEN};
use crate::ring::layout::{
    max_record, read_stamp, record_len, stamp, Control, Inner, RECORD_ALIGN, STAMP_LEN,
};
use crate::ring::wait::Pacer;
use crate::ring::{Direction, RingError, Wait};

use super::stamp_at;

/// How much of a frame the consumer copies out at a time. Where it sums in the same pass
/// ([`Summer::copy_from`] on x86-64: the `crc32` loops, or folding with AVX-512) the size
/// hardly matters; where it sums right after the copy (elsewhere), the piece must stay in
/// any L1 data cache (32 KiB or more) with room for the source lines.
pub(crate) const COPY_PIECE: usize = 16 << 10;

/// The consuming end of one direction.
pub struct Consumer {
    /// The region (keeps the mapping alive).
    pub(in crate::ring) region: Arc<Inner>,
    /// Which ring.
    pub(in crate::ring) d: Direction,
    /// Index into `claimed`, released on drop.
    pub(in crate::ring) claim: usize,
    /// Capacity, from our own configuration.
    pub(in crate::ring) cap: u64,
    /// Our index: the truth.
    pub(in crate::ring) tail: u64,
    /// The producer's index as last read and checked.
    pub(in crate::ring) head_seen: u64,
    /// Private copy of the current frame: decoded and handed out from here, never from
    /// the shared area. Its frame starts 8 bytes past a cache line, as in the ring, so
    /// the copy out runs at full speed ([`crate::align`]).
    pub(in crate::ring) buf: RecordBytes,
    /// Largest payload accepted (from our capacity).
    pub(in crate::ring) max_payload: usize,
    /// Waiting.
    pub(in crate::ring) pacer: Pacer,
    /// Bytes of the frame in `buf`.
    pub(in crate::ring) frame_len: usize,
    /// Bytes of the record lent by `recv_in_place`, released at the next receive.
    pub(in crate::ring) lent: u64,
    /// Whether this end waits for answers: a spinning wait polls hard at first and
    /// prefetches the record's second line ([`Consumer::awaits_answers`]).
    pub(in crate::ring) answers: bool,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.region.claimed[self.claim].store(false, Ordering::Release);
    }
}

impl Consumer {
    fn ctl(&self) -> &Control {
        self.region.control(self.d)
    }

    /// Changes how this end waits for frames (a reader that follows the writer's Hello).
    /// An end that spins keeps spinning, and says so to the producer (the `wait` module:
    /// a spinning consumer spares the producer's publishes their fence).
    pub fn set_wait(&mut self, wait: Wait) {
        self.pacer.set_wait(wait);
        self.declare_wait();
    }

    /// Stores "spins, for good" in our "sleeps" flag if this end spins.
    pub(in crate::ring) fn declare_wait(&self) {
        self.pacer.declare(&self.ctl().consumer_sleeping.0);
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
        if self.answers {
            waiting.poll_hard();
        }
        let mut polls = 0u64;
        loop {
            polls += 1;
            // Ask the producer's index now and then (and before every sleep), so a region
            // whose index and stamps disagree is reported rather than waited on forever;
            // not during the hard polls, where the load of the producer's line (which it
            // stores after every record) could hold up the poll that would see the stamp.
            let check = waiting.sleepy() || (!waiting.polling_hard() && polls.is_multiple_of(64));
            if let Some(len) = self.poll(check)? {
                return Ok(len);
            }
            if self.answers && !waiting.sleepy() {
                self.prefetch_second_line();
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

    /// Marks this end as one that waits for answers (pingpong: the writer's Pongs, the
    /// reader's Pings), which changes two things in a spinning wait. Off by default: a
    /// consumer that follows a stream closely would pull the lines the producer is about
    /// to write, which then cost the producer a transfer each.
    ///
    /// - **Each poll prefetches the cache line after the one holding the stamp at
    ///   `tail`.** The second line of the record to come (a 64-byte payload's frame takes
    ///   two) then travels to this core while the producer writes the first one, instead
    ///   of after the stamp is seen. Measured on an Intel Xeon (family 6 model 207), spin
    ///   medians of interleaved runs: 64-byte pingpong 750 ns without it and 662 with it
    ///   (10 runs; cache-line round trip 362 ns); a 64-byte stream prefetching throughout
    ///   0.49-0.50 GB/s without, 0.455 with (8 runs each way).
    /// - **The first polls of a wait do not pause**
    ///   ([`HARD_POLLS`](crate::ring::wait::HARD_POLLS)): a line that arrives during a
    ///   pause hint waits for it to end. Same Xeon, 64-byte spin
    ///   pingpong, 12 interleaved runs: 633 ns with a pause after every poll, 595 without
    ///   one for the first 512 polls (median of the paired differences -29 ns). When the
    ///   two vCPUs of that VM shared one core (round trips near 280 ns), the same change
    ///   cost about +40 ns: a polling hardware thread takes issue slots from its sibling.
    pub fn awaits_answers(&mut self, on: bool) {
        self.answers = on;
    }

    /// The prefetch of [`Consumer::awaits_answers`]. A prefetch is only a hint:
    /// it never faults and writes nothing, and if the producer writes the line after it,
    /// the line is fetched again.
    fn prefetch_second_line(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let off = (self.tail + RECORD_ALIGN as u64) & (self.cap - 1);
            // SAFETY: `off` is below `cap`, so the address lies inside this direction's
            // area; a prefetch reads nothing into the program and cannot fault anyway.
            unsafe {
                let p = self.region.data(self.d).add(off as usize);
                _mm_prefetch::<_MM_HINT_T0>(p.cast_const().cast::<i8>());
            }
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
        // check: the header, decoded from our private copy, which nothing changes after
        // this: the length and checksum the rest is judged by are the ones we hold.
        let h = self.header_of(at, off, rec)?;
        let total = HEADER_LEN + h.payload_len();
        let mut done = first.min(total);
        if done == total {
            // check: the checksum over our private copy (or its header alone, as flagged).
            let (head, payload) = self.buf[..total].split_at(HEADER_LEN);
            frame::verify(&h, head, payload).map_err(|e| self.corrupt(at, &e))?;
        } else {
            // The rest in pieces of at most COPY_PIECE bytes, each copied and summed in one
            // pass (or, without the x86-64 loops, summed right after its copy while it is
            // still in the L1 cache): the check reads no byte twice from further than L1.
            let summed = h.flags & FLAG_HEADER_SUM == 0;
            let mut sum = Summer::new(&self.buf[..CHECKSUM_AT]);
            if summed {
                sum.update(&self.buf[HEADER_LEN..done]);
            }
            while done < total {
                let end = (done + COPY_PIECE).min(total);
                self.copy_out(at, off, done, end, summed.then_some(&mut sum))?;
                done = end;
            }
            // check: the checksum over our private copy (or its header alone, as flagged).
            frame::check_sum(&h, sum.finish()).map_err(|e| self.corrupt(at, &e))?;
        }
        self.frame_len = total;
        self.tail += rec;
        self.release();
        Ok(h)
    }

    /// Copies bytes `from..to` of the frame published at `at` (area offset `off`) into the
    /// same place of our private buffer, adding them to `sum` if given; `to` is at most the
    /// frame's length as its header, already checked against the record, says.
    fn copy_out(
        &mut self,
        at: u64,
        off: usize,
        from: usize,
        to: usize,
        sum: Option<&mut Summer>,
    ) -> Result<(), RingError> {
        let data = self.region.data(self.d);
        // total <= max_record - 8 <= buf.len(): decode_header limited the payload.
        let Some(dst) = self.buf.get_mut(from..to) else {
            return Err(RingError::Corrupt(format!(
                "frame at position {at} of {to} bytes exceeds the {}-byte record limit",
                max_record(self.cap as usize)
            )));
        };
        // SAFETY: [off + 8 + from, off + 8 + to) lies inside the area (header_of: off +
        // record_len <= cap, and to <= the frame's length); `dst` is our private buffer.
        let src = unsafe { data.add(off + STAMP_LEN + from) };
        match sum {
            // SAFETY: as above: `src` is readable for dst.len() bytes, apart from `dst`.
            Some(sum) => unsafe { sum.copy_from(src, dst) },
            // SAFETY: as above.
            None => unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) },
        }
        Ok(())
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
        self.pacer
            .publish(&c.tail.0, self.tail, &c.producer_sleeping.0);
    }
}
