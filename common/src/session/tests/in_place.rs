//! Zero-copy sessions: frames built in a slot and read where they lie, with a slot's memo
//! or without.

use super::*;

/// The writer's next frame that is not built in place (its Hello, its End), handed to
/// the reader's in-place path; false once the writer is done.
fn hand_over_copied(w: &mut WriterSession, r: &mut ReaderSession, buf: &mut FrameBuf) -> bool {
    match w.next(buf).unwrap() {
        Next::Send(out) => {
            let f = out.to_vec();
            let (h, p) = parse(&f);
            let _ = r.on_frame_in_place(&h, p).unwrap();
            true
        }
        Next::Done => false,
        other => panic!("{other:?}"),
    }
}

/// Zero-copy pingpong, both sides in place: the writer builds each Ping in a slot, the
/// reader answers it with a Pong sealed in another slot, and with `--verify seq` the
/// checksum covers headers only: both reports say what was checked, never "verified".
#[test]
fn zero_copy_pingpong_in_place_checks_what_it_says() {
    use crate::hello::Verify;
    for verify in [Verify::Full, Verify::Seq] {
        let s = setup(&[
            "--mode", "pingpong", "--count", "20", "--size", "300", "--warmup", "2",
        ]);
        let mut w = WriterSession::new(&s).zero_copy(true).verify(verify);
        let mut r = ReaderSession::new(&s);
        let mut buf = FrameBuf::new();
        let mut slot = vec![0xa5u8; HEADER_LEN + 300];
        let mut back = vec![0x5au8; HEADER_LEN + 300];
        loop {
            if w.next_is_timed() {
                let kind = w.next_in_place(&mut slot).unwrap();
                assert_eq!(kind, crate::frame::Kind::Ping);
                let (h, p) = parse(&slot);
                assert_eq!(h.header_sum_only(), verify == Verify::Seq);
                let InPlace::Answer(pong) = r.on_frame_in_place(&h, p).unwrap() else {
                    panic!("a Ping is answered in place")
                };
                pong.seal(&mut back).unwrap();
                let (h, p) = parse(&back);
                assert_eq!(p[..8], h.seq.to_le_bytes());
                assert_eq!(
                    p[8], 0x5a,
                    "the Pong's payload is built in place, not copied"
                );
                w.answer(&h, p).unwrap();
                continue;
            }
            if !hand_over_copied(&mut w, &mut r, &mut buf) {
                break;
            }
        }
        let (wr, rr) = (w.finish(), r.finish());
        assert!(wr.verified && rr.verified, "{wr:?} {rr:?}");
        assert!(wr.zero_copy && rr.zero_copy);
        assert_eq!((wr.count, rr.count), (20, 20));
        let text = rr.to_string();
        match verify {
            Verify::Seq => {
                assert_eq!(rr.verify, "seq");
                assert!(
                    text.contains("sequence, session and length checked")
                        && !text.contains(", verified"),
                    "{text}"
                );
            }
            Verify::Full => assert!(text.contains(", verified"), "{text}"),
        }
        assert!(text.contains("zero-copy"), "{text}");
    }
}

/// Zero-copy with the ring's memos: the Ping and the Pong are built again and again in
/// one slot each, their checksums derived from the memo the previous frame there left
/// (the slot's payload past the sequence number never changes), and every frame still
/// decodes, which checks its checksum over every byte. A memo that does not hold gives a
/// frame that fails that check.
#[test]
fn frames_built_in_a_slot_from_its_memo_carry_the_checksum_of_their_bytes() {
    let size = crate::resum::MEMO_FROM + 100;
    let s = setup(&[
        "--mode",
        "pingpong",
        "--count",
        "5",
        "--size",
        &size.to_string(),
        "--warmup",
        "0",
    ]);
    let mut w = WriterSession::new(&s).zero_copy(true);
    let mut r = ReaderSession::new(&s);
    let mut buf = FrameBuf::new();
    let mut slot: Vec<u8> = (0..HEADER_LEN + size).map(|i| i as u8).collect();
    let mut back: Vec<u8> = (0..HEADER_LEN + size).map(|i| (i * 7) as u8).collect();
    let (mut ping_memo, mut pong_memo) = (None, None);
    let mut derived = 0;
    loop {
        if w.next_is_timed() {
            derived += usize::from(ping_memo.is_some()) + usize::from(pong_memo.is_some());
            let (_, memo) = w.next_in_slot(&mut slot, ping_memo).unwrap();
            ping_memo = Some(memo.expect("a payload of MEMO_FROM bytes has a memo"));
            let (h, p) = parse(&slot);
            let InPlace::Answer(pong) = r.on_frame_in_place(&h, p).unwrap() else {
                panic!("a Ping is answered in place")
            };
            pong_memo = r.seal_pong(&pong, &mut back, pong_memo).unwrap();
            let (h, p) = parse(&back);
            w.answer(&h, p).unwrap();
            continue;
        }
        if !hand_over_copied(&mut w, &mut r, &mut buf) {
            break;
        }
    }
    assert_eq!(
        derived, 8,
        "frames 2 to 5 of each side from their slot's memo"
    );
    let (wr, rr) = (w.finish(), r.finish());
    assert!(wr.verified && rr.verified, "{wr:?} {rr:?}");

    // A memo of other bytes: the frame's checksum disagrees with what the slot holds.
    let mut w = WriterSession::new(&s).zero_copy(true);
    w.next(&mut buf).unwrap();
    let (_, memo) = w.next_in_slot(&mut slot, ping_memo.map(|m| !m)).unwrap();
    assert!(memo.is_some());
    assert!(
        decode(&slot, MAX_PAYLOAD).is_err(),
        "a checksum from a false memo must fail the receiver's check"
    );
    // The same for a Pong sealed from a false memo.
    let mut w = WriterSession::new(&s).zero_copy(true);
    let mut r = ReaderSession::new(&s);
    let hello = match w.next(&mut buf).unwrap() {
        Next::Send(out) => out.to_vec(),
        other => panic!("{other:?}"),
    };
    let (h, p) = parse(&hello);
    r.on_frame_in_place(&h, p).unwrap();
    w.next_in_slot(&mut slot, None).unwrap();
    let (h, p) = parse(&slot);
    let InPlace::Answer(pong) = r.on_frame_in_place(&h, p).unwrap() else {
        panic!("a Ping is answered in place")
    };
    r.seal_pong(&pong, &mut back, pong_memo.map(|m| !m))
        .unwrap();
    assert!(
        decode(&back, MAX_PAYLOAD).is_err(),
        "a Pong's checksum from a false memo must fail the receiver's check"
    );
}
