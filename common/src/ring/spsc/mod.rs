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
//!
//! A producer that builds frames in place may keep a **memo** per slot
//! ([`Producer::remember`], [`Producer::memo`]): a `u32` the caller computed from the
//! slot's bytes (the session's is the CRC of the payload past its sequence number, so the
//! next frame built there derives its checksum instead of summing the payload again). The
//! producer forgets a memo as soon as it writes the slot's bytes any other way; it cannot
//! know of a peer's writes, but a memo that no longer holds only makes the frame's
//! checksum disagree with its bytes, which the consumer's check over the bytes it reads
//! reports.
//!
//! Tried and left out: the producer's per-frame steps (`reserve_for`, `copy_in`,
//! `prefetch_ahead`, `publish`, `forget`) and the writer session's `seal_timed` forced
//! inline (`#[inline(always)]`), so that a small frame's hop saves and restores no
//! registers on the stack between them (662 -> 525 instructions per 64-byte frame under
//! callgrind). On an AMD EPYC Zen 1 the 64-byte stream then ran 1.5x as fast in the VM's
//! slower state (cache-line round trip ~750 ns) and 0.8x as fast in its faster one (~220
//! ns), interleaved runs each; a change whose sign depends on the machine's state is not
//! one to keep.
//!
//! | file            | what it holds                                                         |
//! |-----------------|-----------------------------------------------------------------------|
//! | [`producer`]    | reserve (waiting for room), copy in or build in place, publish        |
//! | [`consumer`]    | poll the stamp (waiting for a record), copy out or read in place, release |

use std::sync::atomic::AtomicU64;

pub mod consumer;
pub mod producer;

pub use consumer::Consumer;
pub use producer::{Producer, Reserved};

/// The stamp word of the record at stream position `pos` in an area of `cap` bytes.
pub(super) fn stamp_at<'a>(data: *mut u8, cap: u64, pos: u64) -> &'a AtomicU64 {
    let off = (pos & (cap - 1)) as usize;
    // SAFETY: `off` is a multiple of 64 (positions advance by whole records and pads) below
    // `cap`, so the 8 bytes at `data + off` are inside the area and 8-aligned (the area
    // starts on a page). The region outlives every endpoint that calls this (their `Arc`).
    // An atomic is valid for any bits and for concurrent access by the peer.
    unsafe { AtomicU64::from_ptr(data.add(off).cast::<u64>()) }
}
