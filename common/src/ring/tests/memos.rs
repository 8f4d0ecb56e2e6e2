//! The producer's memos of slots built in place (`Producer::memo`, `remember`): kept for the
//! same slot lap after lap, forgotten as soon as anything else writes the slot's bytes; and
//! a checksum derived from a memo that no longer holds is caught by the consumer.

use super::*;
use crate::resum::SlotSums;

/// 16 KiB payloads: three records (16 448 bytes each) fill a 64 KiB area but for a pad.
const LEN: usize = 16 << 10;
const CAP: usize = 64 << 10;

/// Builds a Data frame of `len` payload bytes in place (only its first 8 bytes are written
/// here: the rest is what the slot holds), with the checksum derived from the slot's memo
/// as the sessions do, remembers the new memo and publishes; returns the slot's area offset
/// and whether a memo was there.
fn build_in_place(p: &mut Producer, sums: &mut SlotSums, seq: u64, len: usize) -> (u64, bool) {
    let slot = p.reserve(len).unwrap();
    let off = slot.at & (CAP as u64 - 1);
    let had = p.memo(&slot);
    let frame = p.frame_mut(&slot);
    if had.is_none() {
        // A slot without a memo gets bytes of its own, so that a memo applied to the wrong
        // slot gives a wrong checksum.
        let fill = payload(off ^ seq, len);
        frame[HEADER_LEN..].copy_from_slice(&fill);
    }
    frame[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&seq.to_le_bytes());
    let fields = Fields {
        kind: Kind::Data,
        flags: 0,
        nonce: 7,
        seq,
        sent_ns: 0,
    };
    let mut memo = None;
    let header = frame::encode_header_with(fields, len, |prefix| {
        let (front, rest) = frame[HEADER_LEN..].split_at(8);
        let (sum, now) = sums.checksum(frame::checksum(prefix, &[]), front, rest, had);
        memo = now;
        sum
    })
    .unwrap();
    frame[..HEADER_LEN].copy_from_slice(&header);
    assert!(
        memo.is_some(),
        "a payload of MEMO_FROM bytes or more has a memo"
    );
    p.remember(&slot, memo);
    p.publish(slot);
    (off, had.is_some())
}

/// Takes the next frame in place and checks its checksum over the bytes as they lie.
fn take(c: &mut Consumer, seq: u64) {
    let (h, got) = c.recv_in_place().unwrap();
    assert_eq!((h.seq, &got[..8]), (seq, &seq.to_le_bytes()[..]));
}

/// Ring 0 of a 64 KiB area after one lap of three 16 KiB frames built in place and taken:
/// the producer holds memos of the slots at 0, 16448 and 32896, and a pad sends the next
/// record to 0.
fn after_one_lap() -> (Region, *mut u8, Producer, Consumer, SlotSums) {
    let (r, base, mut p, mut c) = spin_ends(CAP);
    let mut sums = SlotSums::default();
    for seq in 0..3 {
        build_in_place(&mut p, &mut sums, seq, LEN);
        take(&mut c, seq);
    }
    (r, base, p, c, sums)
}

#[test]
fn a_slot_built_again_in_place_keeps_its_memo_and_its_checksum_is_right() {
    let (_r, _, mut p, mut c) = spin_ends(CAP);
    let mut sums = SlotSums::default();
    let mut hits = Vec::new();
    for seq in 0..9 {
        let (off, had) = build_in_place(&mut p, &mut sums, seq, LEN);
        take(&mut c, seq);
        hits.push((off, had));
    }
    // The first lap sums every payload; each later lap finds the three slots again (a pad
    // sends the fourth record back to offset 0) and derives the checksums from the memos.
    let lap = [(0, false), (16448, false), (32896, false)];
    assert_eq!(hits[..3], lap);
    for later in hits[3..].chunks(3) {
        assert_eq!(later, [(0, true), (16448, true), (32896, true)]);
    }
}

#[test]
fn a_copied_frame_a_pad_or_a_record_of_another_length_makes_the_producer_forget() {
    let (_r, _, mut p, mut c, mut sums) = after_one_lap();
    // Offset 0 again (after the pad), but copied: its memo must go.
    let data = payload(3, LEN);
    p.send(&hdr(Kind::Data, 3, &data), &data).unwrap();
    c.recv().unwrap();
    // Offsets 16448 and 32896: built in place, memos kept.
    assert_eq!(build_in_place(&mut p, &mut sums, 4, LEN), (16448, true));
    take(&mut c, 4);
    assert_eq!(build_in_place(&mut p, &mut sums, 5, LEN), (32896, true));
    take(&mut c, 5);
    // Offset 0: the copy overwrote it, so no memo, and the checksum is summed (and right).
    assert_eq!(build_in_place(&mut p, &mut sums, 6, LEN), (0, false));
    take(&mut c, 6);
    // A shorter record at 16448 overlaps the memo of the record there; the next record of
    // the usual length (at 16448 + 8256) starts inside the old one's bytes: neither finds
    // a memo, and the one at 32896 must not either (the short record moved it to 24704).
    let short = payload(7, 8 << 10);
    p.send(&hdr(Kind::Data, 7, &short), &short).unwrap();
    c.recv().unwrap();
    assert_eq!(build_in_place(&mut p, &mut sums, 8, LEN), (24704, false));
    take(&mut c, 8);
    // The rest of the lap: 24704 + 16448 = 41152; 41152 + 16448 = 57600 does not fit, so a
    // pad goes there and the record to 0, whose memo (seq 6) still holds.
    assert_eq!(build_in_place(&mut p, &mut sums, 9, LEN), (41152, false));
    take(&mut c, 9);
    assert_eq!(build_in_place(&mut p, &mut sums, 10, LEN), (0, true));
    take(&mut c, 10);
    // The old slot at 32896 was overlapped by 24704's record and 41152's: forgotten.
    assert_eq!(build_in_place(&mut p, &mut sums, 11, LEN), (16448, false));
    take(&mut c, 11);
    assert_eq!(build_in_place(&mut p, &mut sums, 12, LEN), (32896, false));
    take(&mut c, 12);
}

#[test]
fn a_loan_not_remembered_again_leaves_no_memo() {
    let (_r, _, mut p, mut c, mut sums) = after_one_lap();
    // Offset 0 lent and rewritten whole, published without a memo.
    let slot = p.reserve(LEN).unwrap();
    assert!(p.memo(&slot).is_some());
    let mut data = payload(3, LEN);
    data[..8].copy_from_slice(&3u64.to_le_bytes());
    let frame = p.frame_mut(&slot);
    frame[HEADER_LEN..].copy_from_slice(&data);
    frame[..HEADER_LEN].copy_from_slice(&hdr(Kind::Data, 3, &data));
    p.publish(slot);
    take(&mut c, 3);
    for seq in 4..6 {
        assert!(build_in_place(&mut p, &mut sums, seq, LEN).1);
        take(&mut c, seq);
    }
    assert_eq!(build_in_place(&mut p, &mut sums, 6, LEN), (0, false));
    take(&mut c, 6);
}

/// A memo that no longer holds (another process scribbled the slot's payload; only the
/// producer's own writes make it forget) gives a checksum that disagrees with the bytes:
/// the consumer, which sums what it reads, reports the frame corrupt rather than taking it.
#[test]
fn a_checksum_from_a_memo_that_does_not_hold_is_caught_by_the_consumer() {
    let (_r, base, mut p, mut c, mut sums) = after_one_lap();
    c.release_lent();
    // 1000 bytes into the payload of the record at 16448, behind the producer's back.
    let at = offsets::data(0, CAP) + 16448 + STAMP_LEN + HEADER_LEN + 1000;
    poke_u64(base, at, 0x5c5c_5c5c_5c5c_5c5c);
    assert_eq!(build_in_place(&mut p, &mut sums, 3, LEN), (0, true));
    take(&mut c, 3);
    assert_eq!(build_in_place(&mut p, &mut sums, 4, LEN), (16448, true));
    match c.recv_in_place() {
        Err(RingError::Corrupt(why)) => assert!(why.contains("checksum"), "{why}"),
        other => panic!("a frame whose checksum came from a stale memo was taken: {other:?}"),
    }
}

/// Which writes make the producer forget: those that touch a memo's bytes (the payload
/// past its sequence number), wherever they start; not those to the stamp, the header or
/// the sequence number, which every frame built there writes anew.
#[test]
fn only_a_write_over_the_bytes_a_memo_speaks_for_forgets_it() {
    let (_r, _, mut p, _c, _sums) = after_one_lap();
    let keys = |p: &Producer| p.memos.keys().copied().collect::<Vec<u64>>();
    assert_eq!(keys(&p), [0, 16448, 32896]);
    let payload_at = |o: u64| o + (STAMP_LEN + HEADER_LEN) as u64;
    // The stamp, header and sequence number of the record at 32896: kept.
    p.forget(32896, (STAMP_LEN + HEADER_LEN + 8) as u64, None);
    // The 8 bytes after the last payload byte of the record at 0 (its rounding): kept.
    p.forget(payload_at(0) + LEN as u64, 8, None);
    assert_eq!(keys(&p), [0, 16448, 32896]);
    // One byte just past the sequence number of 32896, then a write starting in the
    // middle of the record at 16448 (after its start), then the last payload byte of 0.
    p.forget(payload_at(32896) + 8, 1, None);
    assert_eq!(keys(&p), [0, 16448]);
    p.forget(16448 + 9000, 8, None);
    assert_eq!(keys(&p), [0]);
    p.forget(payload_at(0) + LEN as u64 - 1, 1, None);
    assert!(keys(&p).is_empty());
}
