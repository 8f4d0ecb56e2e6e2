//! The producing end: room for a record (waiting for the consumer to release bytes), the
//! frame copied in or built in place, then published by its stamp.

use std::collections::BTreeMap;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::frame::HEADER_LEN;
use crate::ring::layout::{
    max_payload, record_len, stamp, Control, Inner, RECORD_ALIGN, STAMP_LEN,
};
use crate::ring::wait::Pacer;
use crate::ring::{Direction, RingError, Wait};
use crate::stall::Stall;

use super::stamp_at;

/// Records of at least this many bytes go back to the start of the area (after a pad)
/// whenever the ring is empty: in pingpong, one frame after another then reuses the same
/// bytes, which stay in the caches, where walking the whole area (at least 4 MiB for
/// 1 MiB frames) sends every frame through bytes the caches have given up. Measured on
/// the development machine (AMD EPYC, Zen 2), spin pingpong medians: 1 MiB in a 4 MiB
/// ring 214 µs walking, 192 starting over (8 MiB ring: 326, 16 MiB: 394, walking); but
/// 64 KiB 12.4 µs walking against 13.6 starting over, hence the threshold. Finding the ring
/// empty reads the consumer's index, a cache line the consumer writes for every frame;
/// beside a half-MiB copy that miss is nothing.
///
/// A frame built in place ([`Producer::reserve_in_place`]) never starts over: it copies
/// nothing, so there is nothing for the caches to keep, while the restart costs each hop
/// cache misses one after the other (the consumer's index; the pad's stamp, then the
/// record's). Measured on the AMD EPYC Zen 5, 1 MiB spin pingpong medians, four interleaved
/// runs each: `--zero-copy --verify seq` 270-311 ns starting over against 221-240 walking;
/// fully verified `--zero-copy` 34.0-34.8 µs against 34.6-35.6; and the copying frames
/// alike both ways (81.9-84.5 against 81.7-84.2 µs), which on the Zen 2 above gained.
pub const RESTART_FROM: u64 = 512 << 10;

/// A producer whose frames are answered one at a time ([`Producer::answered_one_at_a_time`]:
/// pingpong) also goes back to the start of the area, whatever the record's size, when its
/// next record would start this many bytes or more into the area and the ring is empty:
/// its frames then walk the first MiB or so over and over, instead of the whole area (4 MiB
/// by default, in each direction), so each copy into the ring goes to lines the caches still
/// hold. It looks once per lap (at the first record that starts past the mark, judged by
/// its own length: a lap whose records shrink may miss its look and walk on to the end,
/// which is only the old way), so the consumer's index is read once per MiB, not per
/// frame. Measured on an AMD EPYC Zen 1 (family 23 model 1, two vCPUs, 4 MiB rings),
/// copying spin pingpong p50 interleaved with the walking tree, in the VM's faster state:
/// 64 KiB 24.6-31.2 µs walking against 18.9-22.8 starting over (nine pairs; C `shm_copy`,
/// which reuses one slot each way, 13.1-15.9), 4 KiB 1.93-2.39 against 1.83-2.19 (eight
/// pairs, seven faster), 64 B 451-461 ns either way. The same frames through a 1 or 2 MiB
/// ring had given 18.5-19.3 µs at 64 KiB. In the VM's slower state (a cache-line round trip
/// of ~700 ns instead of ~130), where the copy between the cores binds, the 64 KiB round
/// trip was 3-4.5 % slower in four pairs of seven and alike in three. Streams are left walking: on an AMD EPYC Zen 4 a
/// 64 KiB stream ran faster through a 4 MiB ring than through a 1 MiB one (shm's README).
pub const RESTART_WINDOW: u64 = 1 << 20;

/// How far past the record being copied in [`Producer::copy_in`] prefetches for writing.
pub const PREFETCH_AHEAD: u64 = 16 << 10;

/// Records up to this many bytes (payloads up to 4,048 bytes) are prefetched ahead. A
/// 4 KiB payload's stream gained nothing from it, and larger records are long runs of
/// lines that the CPU's own prefetcher follows.
pub const PREFETCH_UP_TO: u64 = 4 << 10;

/// The producing end of one direction.
pub struct Producer {
    /// The region (keeps the mapping alive).
    pub(in crate::ring) region: Arc<Inner>,
    /// Which ring.
    pub(in crate::ring) d: Direction,
    /// Index into `claimed`, released on drop.
    pub(in crate::ring) claim: usize,
    /// Capacity, from our own configuration.
    pub(in crate::ring) cap: u64,
    /// Our index: the truth. The shared copy is only ever written from it, never read.
    pub(in crate::ring) head: u64,
    /// The consumer's index as last read and checked.
    pub(in crate::ring) tail_seen: u64,
    /// Waiting.
    pub(in crate::ring) pacer: Pacer,
    /// Waits for room, counted and narrated when long ([`Producer::narrate_full`]).
    pub(in crate::ring) full: Option<Stall>,
    /// Memos of frames built in place ([`Producer::remember`]): by the record's offset in
    /// the area, its length in the ring, the payload length and the memo.
    pub(in crate::ring) memos: BTreeMap<u64, Memo>,
    /// The longest record among `memos` (how far back an overlapping one may start).
    pub(in crate::ring) memo_reach: u64,
    /// Frames go one at a time, each answered before the next (pingpong): records start
    /// over past [`RESTART_WINDOW`] when the ring is empty.
    pub(in crate::ring) one_at_a_time: bool,
}

/// What [`Producer::remember`] keeps of a record built in place.
#[derive(Clone, Copy, Debug)]
pub(in crate::ring) struct Memo {
    /// The record's length in the ring.
    rec: u64,
    /// The payload length it was built for.
    payload_len: usize,
    /// The caller's value; `None` while the frame is being built again in the slot (lent
    /// by [`Producer::frame_mut`] and not remembered yet).
    value: Option<u32>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.region.claimed[self.claim].store(false, Ordering::Release);
    }
}

impl Producer {
    fn ctl(&self) -> &Control {
        self.region.control(self.d)
    }

    /// Changes how this end waits for room (a side that follows its peer's Hello).
    /// An end that spins keeps spinning, and says so to the consumer (the `wait` module:
    /// a spinning producer spares the consumer's releases their fence).
    pub fn set_wait(&mut self, wait: Wait) {
        self.pacer.set_wait(wait);
        self.declare_wait();
    }

    /// Stores "spins, for good" in our "sleeps" flag if this end spins.
    pub(in crate::ring) fn declare_wait(&self) {
        self.pacer.declare(&self.ctl().producer_sleeping.0);
    }

    /// Says that this end's frames are answered one at a time (pingpong: the next frame
    /// goes once the answer to the last one came), so that its records keep to the first
    /// [`RESTART_WINDOW`] bytes of the area, where the caches still hold them.
    pub fn answered_one_at_a_time(&mut self, on: bool) {
        self.one_at_a_time = on;
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
        self.reserve_for(payload_len, true)
    }

    /// As [`Producer::reserve`], for a frame to be built where it lies
    /// ([`Producer::frame_mut`]): a large record then follows the last one instead of
    /// going back to the start of the area (see [`RESTART_FROM`]).
    pub fn reserve_in_place(&mut self, payload_len: usize) -> Result<Reserved, RingError> {
        self.reserve_for(payload_len, false)
    }

    /// Both reserves; `restart` allows a large record to go back to the start.
    fn reserve_for(&mut self, payload_len: usize, restart: bool) -> Result<Reserved, RingError> {
        let rec = self.record_for(payload_len)?;
        self.pacer.tick(&self.region)?;
        let pad = self.pad_before(rec, restart)?;
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
        let pad = self.pad_before(rec, true)?;
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
    /// would not fit before it (a record never wraps), or if `restart` allows it, the ring
    /// is empty and the record is large (see [`RESTART_FROM`]) or the first of a lap past
    /// [`RESTART_WINDOW`] of a producer answered one at a time; else 0. Going back to the
    /// start needs the record to fit before `off` (`rec <= off`): then pad and record
    /// together take no more than the whole, empty, ring.
    fn pad_before(&mut self, rec: u64, restart: bool) -> Result<u64, RingError> {
        let off = self.head & (self.cap - 1);
        if off + rec > self.cap {
            return Ok(self.cap - off);
        }
        let large = rec >= RESTART_FROM;
        let past_window = self.one_at_a_time && off >= RESTART_WINDOW && off - RESTART_WINDOW < rec;
        if restart && off >= rec && (large || past_window) && self.refresh_room()? == self.cap {
            return Ok(self.cap - off);
        }
        Ok(0)
    }

    /// The reserved frame's bytes where they lie in the shared area: header (40 bytes),
    /// then the payload it was reserved for. The producer builds the frame here in place
    /// (zero-copy); nothing is visible to the consumer until [`Producer::publish`].
    ///
    /// Compute first, write last: the record's first cache line holds the stamp that a
    /// spinning consumer polls, so that line is in the consumer's cache until the first
    /// store into it takes it away. Work between that store and the stamp's (a checksum
    /// over a header just written in small pieces waits for every earlier store to reach
    /// the cache, the one into the polled line included) lets the consumer's next poll take
    /// the line back, and the stamp then waits for it a second time: one more transfer
    /// between the cores per frame. The sessions therefore sum the payload with its new
    /// sequence number held aside and write header and sequence number together at the
    /// end, from the values, reading nothing back ([`crate::frame::encode_header_into`]),
    /// as [`Producer::copy_in`] writes that line last.
    /// Measured on an Intel Xeon (family 6 model 207, two vCPUs, cache-line round trip
    /// 326 ns), 64-byte spin pingpong medians of 10 interleaved runs: `--zero-copy --verify
    /// seq` 717 ns with the sequence number written first, 540 this way.
    pub fn frame_mut(&mut self, slot: &Reserved) -> &mut [u8] {
        // Whatever is written through the loan, a memo of these bytes no longer holds
        // unless the caller makes a new one (Producer::remember) before the publish.
        let off = slot.at & (self.cap - 1);
        self.forget(off, slot.rec, self.exact(slot));
        if let Some(m) = self.memos.get_mut(&off) {
            m.value = None;
        }
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
        self.forget(slot.at & (self.cap - 1), slot.rec, None);
        self.prefetch_ahead(slot);
        let data = self.region.data(self.d);
        let off = (slot.at & (self.cap - 1)) as usize + STAMP_LEN;
        // The payload past the record's first cache line goes first, then the header and
        // the payload's first bytes: the stores into the line the consumer polls then
        // follow one another and the stamp (`publish`), so the line is taken from the
        // consumer once. Stored the other way, the line could go back to the polling
        // consumer while the stores into the next lines wait for those lines, and the stamp
        // would wait for it a second time.
        let first = payload.len().min(RECORD_ALIGN - STAMP_LEN - HEADER_LEN);
        // SAFETY: as in `frame_mut`: [off, off + HEADER_LEN + payload.len()) lies inside the
        // area, released by the consumer and not read by it before the stamp is stored.
        // `header` and `payload` are our own memory and cannot overlap the region.
        unsafe {
            let (to, from) = (data.add(off + HEADER_LEN), payload.as_ptr());
            ptr::copy_nonoverlapping(from.add(first), to.add(first), payload.len() - first);
            ptr::copy_nonoverlapping(header.as_ptr(), data.add(off), HEADER_LEN);
            ptr::copy_nonoverlapping(from, to, first);
        }
        Ok(())
    }

    /// Asks the CPU to take for writing the lines [`PREFETCH_AHEAD`] bytes past `slot`'s
    /// record, as many as the record has (up to [`PREFETCH_UP_TO`] bytes), if the consumer
    /// has released them (as far as its index seen last tells: nothing shared is read).
    /// A stream of small records then finds each line already in this core's cache, in
    /// the state a store needs, when it gets there, instead of asking for it then; and
    /// `publish`, whose SeqCst store waits for every earlier store to reach the cache,
    /// waits for fewer of them. The lines lie well past the one a caught-up consumer
    /// polls (the record at `head`). A prefetch is only a hint: it never faults and
    /// changes no byte. Measured on an Intel Xeon (family 6 model 207), spin streams,
    /// medians of 8-10 interleaved runs without and with it: 256 B 1.67 -> 1.90 GB/s, 1 KiB
    /// 5.2 -> 6.7, 2 KiB 5.9 -> 8.2; 64 B 0.63 against 0.59 and 4 KiB 10.3 against 9.7
    /// (within the noise, and 4 KiB records are past [`PREFETCH_UP_TO`] now); 64 B and
    /// 1 KiB pingpong alike both ways.
    fn prefetch_ahead(&self, slot: &Reserved) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
        #[cfg(target_arch = "x86_64")]
        if slot.rec <= PREFETCH_UP_TO {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            let from = slot.at + slot.rec + PREFETCH_AHEAD;
            if from + slot.rec > self.tail_seen + self.cap {
                return;
            }
            let data = self.region.data(self.d);
            for pos in (from..from + slot.rec).step_by(RECORD_ALIGN) {
                let off = (pos & (self.cap - 1)) as usize;
                // SAFETY: `off` is below `cap`, inside this direction's area; a prefetch
                // reads nothing into the program, writes nothing and cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(data.add(off).cast_const().cast::<i8>()) };
            }
        }
    }

    /// Publishes the frame written into `slot`: the pad's stamp first if there is one, the
    /// record's stamp (Release: the frame's bytes are visible to whoever reads the stamp
    /// with Acquire), then `head`, and the consumer is woken (`FUTEX_WAKE`) only if it said
    /// it sleeps.
    pub fn publish(&mut self, slot: Reserved) {
        if slot.pad > 0 {
            // The pad's stamp lands on bytes a memo may cover.
            self.forget(self.head & (self.cap - 1), STAMP_LEN as u64, None);
            let pad = stamp(self.head, slot.pad, true);
            self.stamp(self.head).store(pad, Ordering::Release);
        }
        // A loan not remembered again leaves no memo.
        let off = slot.at & (self.cap - 1);
        if self.memos.get(&off).is_some_and(|m| m.value.is_none()) {
            self.memos.remove(&off);
        }
        self.stamp(slot.at)
            .store(stamp(slot.at, slot.rec, false), Ordering::Release);
        self.head = slot.at + slot.rec;
        let c = self.ctl();
        self.pacer
            .publish(&c.head.0, self.head, &c.consumer_sleeping.0);
    }

    /// The memo [`Producer::remember`] left for a record of this slot's offset and payload
    /// length, if nothing has been written over its bytes since but frames built in place
    /// in that same slot (each of which the caller remembered again).
    ///
    /// What a memo is for: a sender that builds frames in place (`--zero-copy`) writes only
    /// a header and the payload's first 8 bytes (its sequence number) into a slot, and the
    /// rest of the payload is what the slot held. The session keeps the CRC of that rest as
    /// the slot's memo, so the next frame built there has its checksum derived from the 8
    /// bytes that changed ([`crate::resum`]) instead of a pass over the whole payload. The
    /// producer forgets a memo whenever it writes any of those bytes otherwise: a copied
    /// frame, a pad's stamp, a record of another length or offset over them, or a loan not
    /// remembered again. Only this producer writes the area, so a memo that holds says what
    /// the bytes are; if another process scribbles them anyway, the checksum no longer
    /// matches the bytes and the consumer, which sums what it reads, reports the frame
    /// corrupt.
    pub fn memo(&self, slot: &Reserved) -> Option<u32> {
        let key = self.exact(slot)?;
        self.memos[&key].value
    }

    /// The offset of `slot`'s record if a memo is kept for a record of exactly its place
    /// and lengths.
    fn exact(&self, slot: &Reserved) -> Option<u64> {
        let off = slot.at & (self.cap - 1);
        let m = self.memos.get(&off)?;
        (m.payload_len == slot.payload_len && m.rec == slot.rec).then_some(off)
    }

    /// Leaves `value` as the memo of the frame just built in `slot` through
    /// [`Producer::frame_mut`] (call it before [`Producer::publish`]); `None` leaves none.
    /// The caller vouches for what it means: the session's is the CRC-32C of the payload
    /// past its first 8 bytes, as the slot now holds it.
    pub fn remember(&mut self, slot: &Reserved, value: Option<u32>) {
        let Some(value) = value else { return };
        let off = slot.at & (self.cap - 1);
        // The same slot again (the steady state): the memo is replaced where it is.
        if let Some(key) = self.exact(slot) {
            self.memos.get_mut(&key).expect("exact() found it").value = Some(value);
            return;
        }
        self.forget(off, slot.rec, None);
        self.memo_reach = self.memo_reach.max(slot.rec);
        let m = Memo {
            rec: slot.rec,
            payload_len: slot.payload_len,
            value: Some(value),
        };
        self.memos.insert(off, m);
    }

    /// Forgets every memo whose bytes (the payload past its first 8 bytes: the stamp,
    /// header and sequence number are written anew with every frame) overlap area bytes
    /// `off..off + len`, but the one at offset `keep`, if given.
    pub(in crate::ring) fn forget(&mut self, off: u64, len: u64, keep: Option<u64>) {
        if self.memos.is_empty() {
            return;
        }
        // A memo's bytes lie inside its record: a record starting memo_reach or more
        // before `off` ends before it.
        let first = off.saturating_sub(self.memo_reach - 1);
        while let Some(o) = self
            .memos
            .range(first..off + len)
            .find(|(o, m)| {
                let (from, to) = Memo::bytes(**o, m);
                Some(**o) != keep && from < off + len && to > off
            })
            .map(|(o, _)| *o)
        {
            self.memos.remove(&o);
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

impl Memo {
    /// The area bytes the memo of the record at offset `o` speaks for: its payload past
    /// the first 8 bytes.
    fn bytes(o: u64, m: &Memo) -> (u64, u64) {
        let payload = o + (STAMP_LEN + HEADER_LEN) as u64;
        (payload + 8, payload + m.payload_len as u64)
    }
}

/// Room for one frame that [`Producer::reserve`] waited for: `rec` bytes at stream
/// position `at` (after `pad` bytes skipped to the start of the area, if any), which the
/// consumer has released and will not read until published: a loan to the producer.
#[derive(Debug)]
#[must_use = "a reserved slot is sent only by publish"]
pub struct Reserved {
    /// Stream position of the record.
    pub(in crate::ring) at: u64,
    /// The record's length in the ring: stamp, header and payload rounded up to 64 bytes.
    rec: u64,
    /// Bytes skipped before it (a pad), 0 mostly.
    pad: u64,
    /// The payload length it was reserved for.
    payload_len: usize,
}
