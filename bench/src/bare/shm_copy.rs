//! Bare shared-memory message passing (as `shm_copy.c`): memcpy into a slot, publish with
//! a release store, the peer waits until its acquire load sees it, memcpy out. No frame,
//! no checksum, no bounds checks against a hostile peer: the least a copying ring such as
//! `shm`'s and `mmap`'s can do per message.
//!
//! Memory: one anonymous `MAP_SHARED` region made before `fork` (so both processes see it
//! at the same address), holding the control words, each on its own 128-byte block so
//! that neither the words nor the adjacent-line prefetcher share a line, then the slots.
//!
//! - **pingpong**: two slots, A and B. The parent copies its message into A and stores
//!   `head = i`; the child waits for `head == i`, copies A out into its own buffer, copies
//!   that into B and stores `tail = i`; the parent waits for `tail == i` and copies B out.
//!   Four copies of SIZE bytes per round trip, two of them pulling lines from the other core.
//! - **stream**: a ring of N slots, 8 as in `shm_copy.c` or as many as `--ring` bytes
//!   hold. The parent waits for room (`tail + N >= i`), copies message `i` into slot
//!   `(i - 1) % N` and stores `head = i`; the child waits for `head >= i`, copies the slot
//!   out and stores `tail = i`.
//!
//! Waiting (`--wait`): `spin` busy-polls the word (`spin_loop`, a PAUSE on x86), as the C
//! program does. `block` is the least a sleeping ring can do: a side that finds nothing
//! counts itself in the word's `waiters`, looks once more, and sleeps in `FUTEX_WAIT`
//! while the word is unchanged; the publishing side stores the word and calls
//! `FUTEX_WAKE` only when `waiters` is not zero. Both orders use SeqCst, so of "I store
//! the word, then read waiters" and "I count myself, then read the word" at least one side
//! sees the other: no wake-up is lost, and an idle peer costs no system call.
//!
//! The sequence words are 32 bits (a futex word is); the loop refuses a count that would
//! wrap them.
//!
//! The bench gives the stream as many bytes of ring as the ring row it is compared with
//! (`--ring`, its `--capacity`: 4 MiB, or four messages for larger ones). The size of a
//! ring matters on its own: on an AMD EPYC Zen 4 (1 MiB L2 per core) 8 slots of 64 KiB
//! (512 KiB, all in the writer's L2) streamed at 5-9 GB/s and 64 of them (4 MiB) at 36-40
//! (C, glibc's copies without `rep movsb`), so the "x bare" of a pair against 8 slots
//! would say more about the ring's size than about the framing. With `--wait block` a
//! small ring makes each side sleep and be woken more often, so a blocking ring's stream
//! can come out faster than a small bare ring (x bare below 1.0x): there the bare figure
//! measures wake-ups more than copies.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Result};
use common::cli::Mode;

use super::{pingpong, stream, Bare, SharedRegion, Spec, Wait};
use crate::floors::futex;

/// Slots of the stream ring without `--ring` (as `shm_copy.c`).
const SLOTS: u64 = 8;
/// Offsets of the control words in the region.
const HEAD: usize = 0;
const TAIL: usize = 128;
const HEAD_WAITERS: usize = 256;
const TAIL_WAITERS: usize = 384;
/// The slots start after the control block, page-aligned as `shm_copy.c`'s are.
const SLOTS_AT: usize = 4096;
/// The byte every message is filled with, checked by the child at the end.
const FILL: u8 = 7;

/// One sequence word and the count of sides sleeping on it.
struct Word<'a> {
    seq: &'a AtomicU32,
    waiters: &'a AtomicU32,
    wait: Wait,
}

impl Word<'_> {
    /// Stores `v` (Release; SeqCst when blocking) and wakes a sleeper if there is one.
    fn publish(&self, v: u32) {
        match self.wait {
            Wait::Spin => self.seq.store(v, Ordering::Release),
            Wait::Block => {
                self.seq.store(v, Ordering::SeqCst);
                if self.waiters.load(Ordering::SeqCst) != 0 {
                    futex(self.seq, libc::FUTEX_WAKE, 1);
                }
            }
        }
    }

    /// Returns once `ready(seq)` holds, spinning or sleeping as `wait` says. Every load is
    /// at least Acquire, so the slot the peer filled before its store is visible after.
    fn wait_until(&self, ready: impl Fn(u32) -> bool) {
        loop {
            let v = self.seq.load(Ordering::Acquire);
            if ready(v) {
                return;
            }
            match self.wait {
                Wait::Spin => std::hint::spin_loop(),
                Wait::Block => {
                    self.waiters.fetch_add(1, Ordering::SeqCst);
                    let v = self.seq.load(Ordering::SeqCst);
                    if !ready(v) {
                        // Sleeps only while the word still holds `v`; returns at once
                        // (EAGAIN) if the peer stored since, or on a spurious wake-up.
                        futex(self.seq, libc::FUTEX_WAIT, v);
                    }
                    self.waiters.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Copies `size` bytes from `src` to `dst`.
///
/// # Safety
/// Both ranges are valid for `size` bytes and do not overlap, and the protocol keeps the
/// peer away from the shared one while this copy runs (see the callers).
unsafe fn copy(src: *const u8, dst: *mut u8, size: usize) {
    // SAFETY: guaranteed by the caller, as documented above.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, size) }
}

/// The `size` bytes of `raw` (which holds `size + 64`) that start on a 64-byte boundary.
fn on_a_line(raw: &mut [u8], size: usize) -> &mut [u8] {
    let start = (64 - raw.as_ptr() as usize % 64) % 64;
    &mut raw[start..start + size]
}

/// Runs the pingpong or stream loop of `spec`.
pub fn run(spec: &Spec) -> Result<Bare> {
    let size = spec.size;
    if spec.warmup() + spec.count >= u64::from(u32::MAX) {
        bail!("shm-copy: COUNT must stay below 2^32 (32-bit sequence words)");
    }
    let slots = match (spec.mode, spec.ring) {
        (Mode::Pingpong, _) => 2,
        (_, Some(ring)) => (ring / size).max(2),
        _ => SLOTS as usize,
    };
    let ring = slots as u64;
    let region = SharedRegion::new(SLOTS_AT + slots * size)?;
    let slot = |k: usize| -> *mut u8 {
        assert!(k < slots && SLOTS_AT + (k + 1) * size <= region.len());
        // SAFETY: the assert keeps the slot inside the mapping.
        unsafe { region.base().add(SLOTS_AT + k * size) }
    };
    let head = Word {
        seq: region.u32_at(HEAD),
        waiters: region.u32_at(HEAD_WAITERS),
        wait: spec.wait,
    };
    let tail = Word {
        seq: region.u32_at(TAIL),
        waiters: region.u32_at(TAIL_WAITERS),
        wait: spec.wait,
    };
    // Private buffers: the parent's message and the child's copy of it, each starting on
    // a cache line (as the slots do), so every copy is at a distance that is a multiple of
    // 64 bytes: the fast case of `rep movsb` (see common::align for the slow ones).
    let (mut mine_raw, mut theirs_raw) = (vec![FILL; size + 64], vec![0u8; size + 64]);
    let mine = on_a_line(&mut mine_raw, size);
    let theirs = on_a_line(&mut theirs_raw, size);
    let how = match spec.wait {
        Wait::Spin => "spinning",
        Wait::Block => "futex waits",
    };
    let check = |got: &[u8]| {
        if got.first() != Some(&FILL) {
            bail!("the child's copy does not hold the parent's bytes");
        }
        Ok(())
    };
    if spec.mode == Mode::Pingpong {
        let (a, b) = (slot(0), slot(1));
        pingpong(
            spec,
            format!("two slots of {size} bytes in MAP_SHARED memory, {how}"),
            |i| {
                head.wait_until(|v| v == i as u32);
                // SAFETY: the parent wrote slot A before publishing `head = i` and will
                // not touch it again before it sees `tail = i`; slot B is the child's
                // until it publishes `tail = i`; `theirs` is private to this process.
                unsafe {
                    copy(a, theirs.as_mut_ptr(), size);
                    copy(theirs.as_ptr(), b, size);
                }
                tail.publish(i as u32);
                if i == spec.warmup() + spec.count {
                    check(theirs)?;
                }
                Ok(())
            },
            |i| {
                // SAFETY: the child reads slot A only after `head = i`, and has finished
                // with it (and with B) when it publishes `tail = i - 1`, which this side
                // saw in the previous round trip.
                unsafe { copy(mine.as_ptr(), a, size) };
                head.publish(i as u32);
                tail.wait_until(|v| v == i as u32);
                // SAFETY: the child wrote slot B before publishing `tail = i`.
                unsafe { copy(b, mine.as_mut_ptr(), size) };
                Ok(())
            },
        )
    } else {
        let total = spec.warmup() + spec.count;
        stream(
            spec,
            format!("a ring of {slots} slots of {size} bytes in MAP_SHARED memory, {how}"),
            || {
                for i in 1..=total {
                    head.wait_until(|v| u64::from(v) >= i);
                    // SAFETY: the parent filled slot (i-1) % N before publishing head >= i
                    // and refills it only after seeing tail >= i, published below.
                    unsafe { copy(slot(((i - 1) % ring) as usize), theirs.as_mut_ptr(), size) };
                    // The copy goes to a buffer nobody reads: keep the compiler from
                    // dropping it.
                    std::hint::black_box(&mut *theirs);
                    tail.publish(i as u32);
                }
                check(theirs)
            },
            |i| {
                tail.wait_until(|v| u64::from(v) + ring >= i);
                // SAFETY: tail + N >= i means the child has copied message i - N out of
                // this slot, and it reads message i only after head = i below.
                unsafe { copy(mine.as_ptr(), slot(((i - 1) % ring) as usize), size) };
                head.publish(i as u32);
                Ok(())
            },
        )
    }
}
