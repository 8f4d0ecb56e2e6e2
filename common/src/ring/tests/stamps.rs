//! Ring v3's records: stamps that publish them, pads instead of wrapping, loans (a frame
//! built and read in place), the full-ring stall; and a hostile peer's stamps and pads.

use super::*;

/// A spinning consumer takes a record as soon as its stamp is stored: it polls the record's
/// own first line and never needs the producer's index (`head` is not stored here at all).
#[test]
fn a_spinning_consumer_polls_the_stamp_not_the_index() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    let h = hdr(Kind::Data, 0, b"x");
    let frame_at = offsets::data(0, 4096) + STAMP_LEN;
    // SAFETY: 41 bytes after the first stamp of data area 0; the consumer reads them only
    // after the stamp below.
    unsafe {
        ptr::copy_nonoverlapping(h.as_ptr(), base.add(frame_at), 40);
        *base.add(frame_at + 40) = b'x';
    }
    poke_u64(
        base,
        offsets::data(0, 4096),
        super::layout::stamp(0, 64, false),
    );
    let (got, p) = c.recv().unwrap();
    assert_eq!((got.seq, p), (0, &b"x"[..]));
    // SAFETY: reading an 8-aligned word of the region through an atomic.
    let head = unsafe { (*base.add(offsets::head(0)).cast::<AtomicU64>()).load(Ordering::SeqCst) };
    assert_eq!(head, 0, "the index was never stored, and not needed");
}

/// A record never wraps: one that does not fit before the end of the area goes to its
/// start, after a pad stamp, and arrives whole.
#[test]
fn a_record_that_does_not_fit_before_the_end_goes_after_a_pad() {
    let (_r, base, mut p, mut c) = spin_ends(4096);
    // 3 records of 1024 bytes fill [0, 3072); a fourth of 1536 does not fit in [3072, 4096).
    for seq in 0..3 {
        let d = payload(seq, 1024 - 48);
        p.send(&hdr(Kind::Data, seq, &d), &d).unwrap();
        let (h, got) = c.recv().unwrap();
        assert_eq!((h.seq, got), (seq, &d[..]));
    }
    let d = payload(3, 1536 - 48);
    p.send(&hdr(Kind::Data, 3, &d), &d).unwrap();
    // SAFETY: reading 8-aligned words of the region through atomics.
    let at = |off: usize| unsafe { (*base.add(off).cast::<AtomicU64>()).load(Ordering::SeqCst) };
    assert_eq!(
        at(offsets::data(0, 4096) + 3072),
        super::layout::stamp(3072, 1024, true)
    );
    assert_eq!(
        at(offsets::data(0, 4096)),
        super::layout::stamp(4096, 1536, false)
    );
    let (h, got) = c.recv().unwrap();
    assert_eq!((h.seq, got), (3, &d[..]));
    assert_eq!(
        at(offsets::tail(0)),
        4096 + 1536,
        "the pad and the record are released"
    );
}

/// Zero-copy: the producer builds the frame where it lies, the consumer reads it there,
/// and the record stays the consumer's (the producer cannot reuse it) until released.
#[test]
fn a_frame_built_in_place_is_read_in_place_and_lent_until_released() {
    let (_r, _, mut p, mut c) = spin_ends(4096);
    let size = 2000; // the largest: a 2048-byte record, half the area
    let build = |p: &mut Producer, seq: u64| {
        let slot = p.reserve(size).unwrap();
        let frame = p.frame_mut(&slot);
        frame[HEADER_LEN..].copy_from_slice(&payload(seq, size));
        let f = Fields {
            kind: Kind::Data,
            flags: 0,
            nonce: 1,
            seq,
            sent_ns: 0,
        };
        let h = encode_header(f, &frame[HEADER_LEN..]).unwrap();
        frame[..HEADER_LEN].copy_from_slice(&h);
        p.publish(slot);
    };
    for lap in 0..4u64 {
        build(&mut p, 2 * lap);
        let (h, got) = c.recv_in_place().unwrap();
        assert_eq!((h.seq, got), (2 * lap, &payload(2 * lap, size)[..]));
        build(&mut p, 2 * lap + 1);
        assert!(
            p.try_reserve(size).unwrap().is_none(),
            "one record lent, one published: full"
        );
        c.release_lent();
        assert!(
            p.try_reserve(size).unwrap().is_some(),
            "released: its half is free again"
        );
        let (h, got) = c.recv_in_place().unwrap();
        assert_eq!((h.seq, got), (2 * lap + 1, &payload(2 * lap + 1, size)[..]));
    }
}

/// A hostile producer's index that says "published" where no stamp is: reported.
#[test]
fn hostile_index_without_a_stamp_is_corrupt() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Block))
        .unwrap();
    poke_u64(base, offsets::head(0), 64);
    let e = c.recv().unwrap_err().to_string();
    assert!(
        e.contains("the producer index says it is published, but its stamp is 0x0"),
        "{e}"
    );
}

/// A hostile pad stamp at the start of the area, or of the wrong length: reported.
#[test]
fn hostile_pads_are_corrupt() {
    for (pos_bytes, len) in [(0u64, 4096u64), (0, 64)] {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut c = r
            .consumer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        poke_u64(
            base,
            offsets::data(0, 4096),
            super::layout::stamp(pos_bytes, len, true),
        );
        let e = c.recv().unwrap_err().to_string();
        assert!(e.contains("a pad of") && e.contains("at offset 0"), "{e}");
    }
}

/// A producer asked to narrate a full ring counts its waits for room and reports them.
#[test]
fn a_full_ring_wait_is_counted_and_reported() {
    let (r, _) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut p = r
        .producer(Direction::WriterToReader, opts(Wait::Block))
        .unwrap();
    p.narrate_full();
    assert!(p.full_note().is_none(), "never waited yet");
    let d = payload(0, 2000);
    p.send(&hdr(Kind::Data, 0, &d), &d).unwrap();
    p.send(&hdr(Kind::Data, 1, &d), &d).unwrap();
    let r2 = r.clone();
    let t = std::thread::spawn(move || {
        let mut c = r2
            .consumer(Direction::WriterToReader, opts(Wait::Block))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..3 {
            c.recv().unwrap();
        }
    });
    p.send(&hdr(Kind::Data, 2, &d), &d).unwrap();
    t.join().unwrap();
    let note = p.full_note().expect("it waited");
    assert!(
        note.starts_with("reserve() waited 1 time for room (the ring was full"),
        "{note}"
    );
    assert_eq!(p.peer_index(), 3 * 2048);
}

/// The non-waiting in-place receive: nothing published, nothing lent; a frame, lent.
#[test]
fn try_recv_in_place_lends_only_what_is_published() {
    let (_r, _, mut p, mut c) = spin_ends(4096);
    assert!(c.try_recv_in_place().unwrap().is_none());
    p.send(&hdr(Kind::Data, 0, b"in place"), b"in place")
        .unwrap();
    let (h, got) = c.try_recv_in_place().unwrap().expect("published");
    assert_eq!((h.seq, got), (0, &b"in place"[..]));
    assert!(c.try_recv_in_place().unwrap().is_none());
}

/// A frame larger than one copy piece is copied out and summed piece by piece: it arrives
/// whole, and a byte changed in any piece (the first, a middle one, the last) is caught
/// by the checksum, as in a frame taken in one copy. The private copy starts where a ring
/// frame does in its cache line ([`crate::align`]), which is what keeps the copies fast.
#[test]
fn a_large_frame_is_taken_and_checked_in_pieces() {
    let cap = 1 << 18;
    let len = 3 * super::spsc::consumer::COPY_PIECE + 1000;
    for flip in [
        None,
        Some(100),
        Some(super::spsc::consumer::COPY_PIECE + 7),
        Some(len - 1),
    ] {
        let (_r, base, mut p, mut c) = spin_ends(cap);
        let d = payload(0, len);
        let slot = p.reserve(len).unwrap();
        p.copy_in(&slot, &hdr(Kind::Data, 0, &d), &d).unwrap();
        if let Some(i) = flip {
            let at = offsets::data(0, cap) + STAMP_LEN + HEADER_LEN + i;
            // SAFETY: a byte of the reserved, not yet published record in data area 0.
            unsafe { *base.add(at) ^= 0x20 };
        }
        p.publish(slot);
        match (flip, c.recv()) {
            (None, Ok((h, got))) => {
                assert_eq!((h.seq, got), (0, &d[..]));
                assert_eq!(
                    got.as_ptr() as usize % 64,
                    48,
                    "payload at 48 mod 64, as in the ring"
                );
            }
            (Some(_), Err(RingError::Corrupt(e))) => assert!(e.contains("checksum"), "{e}"),
            (flip, other) => panic!("flip {flip:?}: {other:?}"),
        }
    }
}

/// The area of the two large-record tests below: 4 MiB.
const LARGE_CAP: usize = 4 << 20;

/// Spinning ends over a `LARGE_CAP` area; the address where the area's first frame starts
/// (offsets are measured from it); and a payload of `RESTART_FROM` bytes.
fn large_ends() -> (Region, Producer, Consumer, usize, Vec<u8>) {
    let (r, base, p, c) = spin_ends(LARGE_CAP);
    let area = base.wrapping_add(offsets::data(0, LARGE_CAP) + STAMP_LEN) as usize;
    let len = super::spsc::producer::RESTART_FROM as usize;
    (r, p, c, area, payload(0, len))
}

/// A record of `RESTART_FROM` bytes or more goes back to the start of the area when the
/// ring is empty (the consumer skips the pad before it); while a frame is still in the
/// ring, the next one follows it.
#[test]
fn a_large_record_starts_over_when_the_ring_is_empty() {
    let (_r, mut p, mut c, area, d) = large_ends();
    let len = d.len();
    let place = |p: &mut Producer, seq: u64| {
        let slot = p
            .reserve(len)
            .unwrap_or_else(|e| panic!("frame {seq}: {e}"));
        let off = p.frame_mut(&slot).as_ptr() as usize - area;
        p.copy_in(&slot, &hdr(Kind::Data, seq, &d), &d).unwrap();
        p.publish(slot);
        off
    };
    let rec = record_len(len);
    assert_eq!(place(&mut p, 0), 0);
    assert_eq!(
        place(&mut p, 1),
        rec,
        "frame 0 is not taken yet: frame 1 follows it"
    );
    for seq in 0..2 {
        assert_eq!(c.recv().unwrap().0.seq, seq);
    }
    for seq in 2..4 {
        assert_eq!(place(&mut p, seq), 0, "frame {seq}, the ring empty");
        let (h, got) = c.recv().unwrap();
        assert_eq!((h.seq, got), (seq, &d[..]));
    }
    // A small record does not go back here: it follows wherever the last one ended (short
    // of RESTART_WINDOW, and this producer is not answered one at a time anyway).
    let slot = p.reserve(64).unwrap();
    assert_eq!(p.frame_mut(&slot).as_ptr() as usize - area, rec);
}

/// A producer answered one at a time (pingpong) sends records of any size back to the
/// start of the area at the first record past `RESTART_WINDOW` when the ring is empty, so
/// they walk only the window; one that is not answered one at a time (a stream) walks the
/// whole area; and a record past the window with a frame still in the ring follows it.
#[test]
fn records_answered_one_at_a_time_keep_to_the_window() {
    use super::spsc::producer::RESTART_WINDOW;
    let len = 64 << 10;
    let d = payload(0, len);
    let rec = record_len(len) as u64;
    // The first record at or past the window: where the walk turns back.
    let turn = RESTART_WINDOW.div_ceil(rec);
    let laps_of_area = LARGE_CAP as u64 / rec;
    for one_at_a_time in [true, false] {
        let (_r, base, mut p, mut c) = spin_ends(LARGE_CAP);
        let area = base.wrapping_add(offsets::data(0, LARGE_CAP) + STAMP_LEN) as usize;
        p.answered_one_at_a_time(one_at_a_time);
        for seq in 0..3 * laps_of_area {
            let slot = p.reserve(len).unwrap();
            let off = (p.frame_mut(&slot).as_ptr() as usize - area) as u64;
            p.copy_in(&slot, &hdr(Kind::Data, seq, &d), &d).unwrap();
            p.publish(slot);
            let want = match one_at_a_time {
                true => (seq % turn) * rec,
                false => (seq % laps_of_area) * rec,
            };
            assert_eq!(off, want, "frame {seq}, one at a time: {one_at_a_time}");
            let (h, got) = c.recv().unwrap();
            assert_eq!((h.seq, got), (seq, &d[..]));
        }
    }
    // The ring not empty at the turn: the record follows the one still in it.
    let (_r, base, mut p, mut c) = spin_ends(LARGE_CAP);
    let area = base.wrapping_add(offsets::data(0, LARGE_CAP) + STAMP_LEN) as usize;
    p.answered_one_at_a_time(true);
    for seq in 0..turn + 1 {
        let slot = p.reserve(len).unwrap();
        let off = (p.frame_mut(&slot).as_ptr() as usize - area) as u64;
        p.copy_in(&slot, &hdr(Kind::Data, seq, &d), &d).unwrap();
        p.publish(slot);
        assert_eq!(
            off,
            seq * rec,
            "frame {seq}: frame {} is still in the ring",
            seq.max(1) - 1
        );
        // Take each frame at once, but the one before the turn only after the next.
        if seq + 1 < turn {
            assert_eq!(c.recv().unwrap().0.seq, seq);
        }
    }
    for seq in turn - 1..turn + 1 {
        assert_eq!(c.recv().unwrap().0.seq, seq);
    }
    // Once a lap: the ring is empty again, but the turn has passed, so the next record
    // follows too (the producer reads the consumer's index at the turn only).
    let slot = p.reserve(len).unwrap();
    let off = (p.frame_mut(&slot).as_ptr() as usize - area) as u64;
    assert_eq!(off, (turn + 1) * rec, "the record after the turn");
}

/// A frame built in place (`reserve_in_place`) never starts over: however large, it
/// follows the last record, and pads only where it would not fit before the end.
#[test]
fn a_large_record_built_in_place_follows_the_last_one() {
    let (_r, mut p, mut c, area, d) = large_ends();
    let (cap, len) = (LARGE_CAP, d.len());
    let rec = record_len(len) as u64;
    let fits = cap as u64 / rec;
    for seq in 0..fits + 2 {
        let slot = p
            .reserve_in_place(len)
            .unwrap_or_else(|e| panic!("frame {seq}: {e}"));
        let frame = p.frame_mut(&slot);
        let off = frame.as_ptr() as usize - area;
        frame[..HEADER_LEN].copy_from_slice(&hdr(Kind::Data, seq, &d));
        frame[HEADER_LEN..].copy_from_slice(&d);
        p.publish(slot);
        // The ring is empty before every frame but the first, and still the frames walk
        // the area: offsets 0, rec, 2 rec, ... and back to 0 after the last that fits.
        let want = (seq % fits) * rec;
        assert_eq!(off as u64, want, "frame {seq}");
        let (h, got) = c.recv().unwrap();
        assert_eq!((h.seq, got), (seq, &d[..]));
    }
}
