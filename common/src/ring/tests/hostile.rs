//! The ring against a hostile peer: indices, lengths, magic and header words a buggy or
//! malicious process could write, and arbitrary bytes over the whole region. Every case
//! must end in "corrupt shared region", never a panic or an access out of bounds.

use super::*;

/// A consumer on a fresh ring, a producer index set by a hostile peer.
fn consumer_sees_head(head: u64) -> RingError {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Block))
        .unwrap();
    poke_u64(base, offsets::head(0), head);
    c.recv().unwrap_err()
}

#[test]
fn hostile_producer_index_beyond_capacity() {
    let e = consumer_sees_head(4096 + 64).to_string();
    assert!(
        e.starts_with("corrupt shared region: ring 0 producer index 4160"),
        "{e}"
    );
    let e = consumer_sees_head(u64::MAX - 63).to_string();
    assert!(e.starts_with("corrupt shared region"), "{e}");
    let e = consumer_sees_head(65).to_string();
    assert!(e.contains("not a multiple of 64"), "{e}");
}

#[test]
fn hostile_producer_index_going_back() {
    let (_r, base, mut p, mut c) = spin_ends(4096);
    p.send(&hdr(Kind::Data, 0, b"a"), b"a").unwrap();
    p.send(&hdr(Kind::Data, 1, b"b"), b"b").unwrap();
    c.recv().unwrap();
    c.recv().unwrap();
    // A consumer takes records by their stamps; finding none, it reads the index too.
    assert!(c.try_recv().unwrap().is_none());
    // The consumer saw 128 and consumed it all; a producer index of 64 goes back.
    poke_u64(base, offsets::head(0), 64);
    let e = c.recv().unwrap_err().to_string();
    assert!(
        e.starts_with("corrupt shared region: ring 0 producer index 64"),
        "{e}"
    );
}

#[test]
fn hostile_consumer_index_ahead_of_producer() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    // Fill the ring so the producer has to read the consumer's index.
    let data = vec![1u8; 1000];
    for seq in 0..3 {
        p.send(&hdr(Kind::Data, seq, &data), &data).unwrap();
    }
    poke_u64(base, offsets::tail(0), 1 << 40);
    let e = p
        .send(&hdr(Kind::Data, 3, &data), &data)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("corrupt shared region: ring 0 consumer index 1099511627776"),
        "{e}"
    );
}

#[test]
fn hostile_bad_magic_and_capacity() {
    let (r, base) = region(4096);
    assert!(
        r.check_header().unwrap().is_none(),
        "all zero: not ready yet"
    );
    r.initialize(Role::Writer, 1);
    assert!(r.check_header().unwrap().is_some());
    poke_u64(base, offsets::CAPACITY, 8192);
    let e = r.check_header().unwrap_err();
    assert!(
        matches!(
            e,
            RingError::CapacityMismatch {
                found: 8192,
                expected: 4096
            }
        ),
        "{e}"
    );
    poke_u64(base, offsets::MAGIC, 0xdead_beef);
    let e = r.check_header().unwrap_err().to_string();
    assert!(
        e.starts_with("corrupt shared region: magic 0x00000000deadbeef"),
        "{e}"
    );
    // A waiter notices a scribbled magic at its next periodic check.
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Block))
        .unwrap();
    let e = c.recv().unwrap_err().to_string();
    assert!(e.contains("magic became"), "{e}");
}

#[test]
fn hostile_huge_frame_length() {
    let (_r, base, mut p, mut c) = spin_ends(4096);
    p.send(&hdr(Kind::Data, 0, b"hi"), b"hi").unwrap();
    // Overwrite the frame's length field (header offset 32) with 1 GiB.
    let len_at = offsets::data(0, 4096) + STAMP_LEN + 32;
    // SAFETY: inside the data area; the consumer is not reading concurrently.
    unsafe { ptr::copy_nonoverlapping((1u32 << 30).to_le_bytes().as_ptr(), base.add(len_at), 4) };
    let e = c.recv().unwrap_err().to_string();
    assert!(
        e.starts_with("corrupt shared region: frame at ring 0 position 0"),
        "{e}"
    );
    assert!(e.contains("exceeds the limit of 2000"), "{e}");
}

#[test]
fn hostile_length_beyond_published_and_bad_checksum() {
    let (_r, base, mut p, mut c) = spin_ends(4096);
    p.send(&hdr(Kind::Data, 0, b"hi"), b"hi").unwrap();
    let len_at = offsets::data(0, 4096) + STAMP_LEN + 32;
    // SAFETY: inside the data area; nobody reads concurrently.
    unsafe { ptr::copy_nonoverlapping(500u32.to_le_bytes().as_ptr(), base.add(len_at), 4) };
    let e = c.recv().unwrap_err().to_string();
    assert!(e.contains("only 64 are published"), "{e}");

    let (_r, base, mut p, mut c) = spin_ends(4096);
    p.send(&hdr(Kind::Data, 0, b"hi"), b"hi").unwrap();
    // SAFETY: inside the data area (the payload's first byte).
    unsafe { *base.add(offsets::data(0, 4096) + STAMP_LEN + HEADER_LEN) = b'X' };
    let e = c.recv().unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of frame sizes goes through a small ring, wrapping many times,
    /// interleaved however the ring's room allows: what comes out is what went in.
    #[test]
    fn any_sizes_round_trip_through_a_small_ring(
        sizes in proptest::collection::vec(0usize..=2000, 1..80),
        burst in 1usize..6,
    ) {
        let (r, _) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut p = r.producer(Direction::WriterToReader, opts(Wait::Spin)).unwrap();
        let mut c = r.consumer(Direction::WriterToReader, opts(Wait::Spin)).unwrap();
        let mut next_out = 0usize;
        for (seq, &len) in sizes.iter().enumerate() {
            let data = payload(seq as u64, len);
            while !p.try_send(&hdr(Kind::Data, seq as u64, &data), &data).unwrap() {
                // Full: drain up to `burst` frames, then try again.
                for _ in 0..burst {
                    let Some(h) = c.try_recv().unwrap() else { break };
                    prop_assert_eq!(h.seq, next_out as u64);
                    prop_assert_eq!(c.payload(), &payload(next_out as u64, sizes[next_out])[..]);
                    next_out += 1;
                }
            }
        }
        while let Some(h) = c.try_recv().unwrap() {
            prop_assert_eq!(h.seq, next_out as u64);
            prop_assert_eq!(c.payload(), &payload(next_out as u64, sizes[next_out])[..]);
            next_out += 1;
        }
        prop_assert_eq!(next_out, sizes.len());
    }

    /// Whatever a hostile peer writes into the indices and the data area, the consumer
    /// returns frames or a "corrupt shared region" error: never a panic.
    #[test]
    fn scribbled_region_never_panics(
        head in any::<u64>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 1);
        let mut c = r.consumer(Direction::WriterToReader, opts(Wait::Spin)).unwrap();
        // SAFETY: garbage.len() <= 4096 bytes into data area 0.
        unsafe { ptr::copy_nonoverlapping(garbage.as_ptr(), base.add(offsets::data(0, 4096)), garbage.len()) };
        poke_u64(base, offsets::head(0), head);
        for _ in 0..4 {
            match c.try_recv() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => { prop_assert!(e.to_string().starts_with("corrupt shared region"), "{}", e); break }
            }
        }
    }
}

#[test]
fn a_header_scribbled_mid_stream_is_reported_within_a_bounded_number_of_frames() {
    for (word, off) in [
        ("capacity", offsets::CAPACITY),
        ("session", offsets::SESSION),
    ] {
        let (r, base) = region(4096);
        r.initialize(Role::Writer, 0x5e55);
        let mut tx = r
            .producer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        let mut rx = r
            .consumer(Direction::WriterToReader, opts(Wait::Spin))
            .unwrap();
        let p = payload(0, 8);
        let mut moved = 0u64;
        let err = loop {
            if moved == 5 {
                poke_u64(base, off, 0xdead_beef);
            }
            if let Err(e) = tx.send(&hdr(Kind::Data, moved, &p), &p) {
                break e;
            }
            if let Err(e) = rx.recv() {
                break e;
            }
            moved += 1;
            assert!(
                moved < 5 + 2 * wait::AUDIT_EVERY,
                "the scribble on {word} went unnoticed"
            );
        };
        let e = err.to_string();
        assert!(
            e.starts_with("corrupt shared region: the header's") && e.contains(word),
            "{e}"
        );
    }
}

/// A waiter re-checks the header at each periodic check, so a scribble on a pid word while
/// nothing moves is reported within about one SLEEP_SLICE, not at the idle timeout.
#[test]
fn a_header_scribbled_while_waiting_is_reported_at_the_next_check() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 0x5e55);
    let mut rx = r
        .consumer(Direction::WriterToReader, opts(Wait::Block))
        .unwrap();
    let poker = {
        let base = base as usize;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            // creator_pid (u32) and opener_pid (u32) share one u64 at offset 40.
            poke_u64(base as *mut u8, offsets::CREATOR_PID, 0x0000_0001_0000_0001);
        })
    };
    let e = rx.recv().unwrap_err().to_string();
    poker.join().unwrap();
    assert!(
        e.starts_with("corrupt shared region: the header's creator_pid changed")
            && e.contains("while waiting for"),
        "{e}"
    );
}
