//! The ring over a heap buffer standing in for a mapping, and adversarial regions.

use super::*;
use crate::frame::{self, HEADER_LEN};
use crate::frame::{encode_header, Fields, Kind};
use crate::peer::Identity;
use crate::timing::now_ns;
use proptest::prelude::*;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr;
use std::sync::atomic::AtomicU64;

/// A page-aligned zeroed heap buffer standing in for a mapping.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}
// SAFETY: a plain heap allocation owned by this value; the ring accesses it through
// atomics and SPSC-partitioned copies only.
unsafe impl Send for Buf {}
// SAFETY: as above.
unsafe impl Sync for Buf {}
impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `region` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn region(cap: usize) -> (Region, *mut u8) {
    let layout = Layout::from_size_align(region_len(cap), 4096).unwrap();
    // SAFETY: non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    let buf = Buf { ptr, layout };
    // SAFETY: the buffer is region_len(cap) bytes, lives as long as the Region (keeper),
    // and no reference to it exists.
    let r = unsafe { Region::from_raw(ptr, region_len(cap), cap, buf) }.unwrap();
    (r, ptr)
}

fn opts(wait: Wait) -> EndOpts {
    EndOpts {
        wait,
        peer: Identity::me(),
        idle_timeout: Some(Duration::from_secs(20)),
    }
}

fn hdr(kind: Kind, seq: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    encode_header(
        Fields {
            kind,
            flags: 0,
            nonce: 7,
            seq,
            sent_ns: 0,
        },
        payload,
    )
    .unwrap()
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 ^ seq) as u8).collect()
}

/// Writes `v` at byte `off` of the region, as a hostile peer would.
fn poke_u64(base: *mut u8, off: usize, v: u64) {
    // SAFETY: tests only poke offsets inside the region, 8-aligned, through an atomic.
    unsafe { (*base.add(off).cast::<AtomicU64>()).store(v, Ordering::SeqCst) }
}

#[test]
fn layout_offsets_match_the_table() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 0xfeed);
    // SAFETY: reading 8-aligned words inside the region through atomics.
    let at = |off: usize| unsafe { (*base.add(off).cast::<AtomicU64>()).load(Ordering::SeqCst) };
    assert_eq!(at(offsets::MAGIC).to_le_bytes(), *b"IPCSRING");
    assert_eq!(at(8), 3 | (1 << 32), "version 3, ready 1");
    assert_eq!(at(offsets::CAPACITY), 4096);
    assert_eq!(at(24), region_len(4096) as u64);
    assert_eq!(at(32), 0xfeed);
    assert_eq!(at(offsets::CREATOR_PID) as u32, std::process::id());
    assert_eq!(at(48) as u32, Role::Writer as u32);
    let mut p = r
        .producer(Direction::ReaderToWriter, opts(Wait::Spin))
        .unwrap();
    p.send(&hdr(Kind::Pong, 0, b"x"), b"x").unwrap();
    assert_eq!(at(offsets::head(1)), 64);
    assert_eq!(at(offsets::tail(1)), 0);
    // The record's stamp (position 0 + 1, 64 bytes long) at the start of ring 1's data
    // area, then the frame's magic.
    assert_eq!(at(offsets::data(1, 4096)), 1 | (1 << 42));
    assert_eq!(
        at(offsets::data(1, 4096)),
        super::layout::stamp(0, 64, false)
    );
    assert_eq!(at(offsets::data(1, 4096) + STAMP_LEN) as u32, frame::MAGIC);
}

fn stream(wait: Wait, cap: usize, n: u64) {
    let (r, _) = region(cap);
    r.initialize(Role::Writer, 1);
    let mut p = r.producer(Direction::WriterToReader, opts(wait)).unwrap();
    let mut c = r.consumer(Direction::WriterToReader, opts(wait)).unwrap();
    let max = r.max_payload();
    let t = std::thread::spawn(move || {
        for seq in 0..n {
            let data = payload(seq, (seq as usize * 37) % (max + 1));
            p.send(&hdr(Kind::Data, seq, &data), &data).unwrap();
        }
    });
    for seq in 0..n {
        let (h, got) = c.recv().unwrap();
        assert_eq!(h.seq, seq);
        assert_eq!(got, &payload(seq, (seq as usize * 37) % (max + 1))[..]);
    }
    t.join().unwrap();
}

#[test]
fn stream_spin() {
    stream(Wait::Spin, 4096, 20_000);
}
#[test]
fn stream_block() {
    stream(Wait::Block, 4096, 5_000);
}
#[test]
fn stream_adaptive() {
    stream(Wait::Adaptive, 8192, 20_000);
}

fn pingpong(wait: Wait, n: u64) {
    let (r, _) = region(4096);
    r.initialize(Role::Writer, 1);
    let r2 = r.clone();
    let t = std::thread::spawn(move || {
        let mut c = r2.consumer(Direction::WriterToReader, opts(wait)).unwrap();
        let mut p = r2.producer(Direction::ReaderToWriter, opts(wait)).unwrap();
        for _ in 0..n {
            let (h, got) = c.recv().unwrap();
            let got = got.to_vec();
            p.send(&hdr(Kind::Pong, h.seq, &got), &got).unwrap();
        }
    });
    let mut p = r.producer(Direction::WriterToReader, opts(wait)).unwrap();
    let mut c = r.consumer(Direction::ReaderToWriter, opts(wait)).unwrap();
    for seq in 0..n {
        let data = payload(seq, 64);
        p.send(&hdr(Kind::Ping, seq, &data), &data).unwrap();
        let (h, got) = c.recv().unwrap();
        assert_eq!((h.kind, h.seq), (Kind::Pong, seq));
        assert_eq!(got, &data[..]);
    }
    t.join().unwrap();
}

#[test]
fn pingpong_spin() {
    pingpong(Wait::Spin, 20_000);
}
#[test]
fn pingpong_block() {
    pingpong(Wait::Block, 2_000);
}
#[test]
fn pingpong_adaptive() {
    pingpong(Wait::Adaptive, 5_000);
}

#[test]
fn one_producer_per_direction() {
    let (r, _) = region(4096);
    let _p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    assert!(r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .is_err());
    assert!(r
        .producer(Direction::ReaderToWriter, opts(Wait::Spin))
        .is_ok());
}

#[test]
fn too_large_and_bad_capacity_are_refused() {
    let (r, _) = region(4096);
    let mut p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    let big = vec![0; 2048];
    let e = p.send(&hdr(Kind::Data, 0, &big), &big).unwrap_err();
    assert!(
        matches!(
            e,
            RingError::TooLarge {
                len: 2048,
                max: 2000
            }
        ),
        "{e}"
    );
    assert!(parse_capacity("3000").is_err());
    assert!(parse_capacity("512M").is_err());
    assert_eq!(parse_capacity("1M").unwrap(), 1 << 20);
    let e = check_size(65536, 128 << 10).unwrap_err();
    assert!(e.contains("--capacity 262144"), "{e}");
    assert!(check_size(65536, 256 << 10).is_ok());
}

#[test]
fn a_dead_peer_is_noticed_and_idle_time_is_limited() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    for wait in [Wait::Spin, Wait::Block, Wait::Adaptive] {
        let (r, _) = region(4096);
        r.initialize(Role::Writer, 1);
        let o = EndOpts {
            wait,
            peer: Identity { pid, start: 0 },
            idle_timeout: None,
        };
        let mut c = r.consumer(Direction::WriterToReader, o).unwrap();
        let t = now_ns();
        let e = c.recv().unwrap_err();
        assert!(
            matches!(e, RingError::PeerGone { pid: p } if p == pid),
            "{e}"
        );
        assert_eq!(e.to_string(), format!("peer (pid {pid}) is gone"));
        assert!(now_ns() - t < 5_000_000_000);
    }
    let (r, _) = region(4096);
    r.initialize(Role::Writer, 1);
    let o = EndOpts {
        wait: Wait::Adaptive,
        peer: Identity { pid: 0, start: 0 },
        idle_timeout: Some(Duration::from_millis(200)),
    };
    let mut c = r.consumer(Direction::WriterToReader, o).unwrap();
    assert!(matches!(c.recv().unwrap_err(), RingError::TimedOut { .. }));
}

/// A frame published without a wake-up just before the peer died is still delivered:
/// the periodic check finds the peer gone, sees the index moved, and lets it through.
#[test]
fn a_dead_peers_last_frame_is_delivered() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let o = EndOpts {
        wait: Wait::Block,
        peer: Identity { pid, start: 0 },
        idle_timeout: None,
    };
    let mut c = r.consumer(Direction::WriterToReader, o).unwrap();
    let base = base as usize;
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        let base = base as *mut u8;
        let h = hdr(Kind::Data, 0, b"x");
        let frame_at = offsets::data(0, 4096) + STAMP_LEN;
        // SAFETY: 41 bytes after the first stamp of data area 0, which nobody else writes.
        unsafe {
            ptr::copy_nonoverlapping(h.as_ptr(), base.add(frame_at), 40);
            *base.add(frame_at + 40) = b'x';
        }
        // Publish (stamp, then index) without FUTEX_WAKE, as if the peer died right after.
        poke_u64(
            base,
            offsets::data(0, 4096),
            super::layout::stamp(0, 64, false),
        );
        poke_u64(base, offsets::head(0), 64);
    });
    let (h, p) = c.recv().unwrap();
    assert_eq!((h.kind, p), (Kind::Data, &b"x"[..]));
    t.join().unwrap();
    assert!(matches!(c.recv().unwrap_err(), RingError::PeerGone { .. }));
}

#[test]
fn rendezvous_attach_and_roles() {
    let (r, _) = region(4096);
    assert!(matches!(
        r.wait_for_opener(Duration::from_millis(1)),
        Err(RingError::TimedOut { .. }) | Err(RingError::Corrupt(_))
    ));
    r.initialize(Role::Reader, 9);
    let e = r.attach(Role::Reader).unwrap_err();
    assert!(
        matches!(
            e,
            RingError::SameRole {
                role: Role::Reader,
                ..
            }
        ),
        "{e}"
    );
    let r2 = r.clone();
    let t = std::thread::spawn(move || r2.wait_for_opener(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        r.attach(Role::Writer).unwrap(),
        Identity::me(),
        "the creator as recorded: pid and start time"
    );
    assert_eq!(
        t.join().unwrap().unwrap(),
        Identity::me(),
        "the opener as recorded: pid and start time"
    );
    assert!(matches!(
        r.attach(Role::Writer),
        Err(RingError::Busy { .. })
    ));
}

#[test]
fn the_decoder_reads_what_initialize_wrote_and_judge_follows_the_rules() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 0x5e55);
    let mut bytes = [0u8; offsets::HEADER_FIELDS];
    // SAFETY: the region is at least a header page; `bytes` is private memory.
    unsafe { ptr::copy_nonoverlapping(base, bytes.as_mut_ptr(), bytes.len()) };
    let v = HeaderView::decode(&bytes).unwrap();
    assert_eq!(v, r.header());
    assert_eq!(judge(Some(&v), Duration::ZERO), Verdict::Ready);
    assert!(HeaderView::decode(&bytes[..40]).is_none());

    // A creator pid that no process has: stale, whatever the age.
    let mut dead = v;
    dead.creator_pid = i32::MAX - 7;
    assert!(
        matches!(judge(Some(&dead), Duration::ZERO), Verdict::Stale(why) if why.contains("is gone"))
    );
    // ... unless its opener is alive.
    dead.opener_pid = std::process::id() as i32;
    assert!(matches!(judge(Some(&dead), Duration::ZERO), Verdict::Ready));
    // No header yet, no creator pid yet: not ready, then stale after the grace.
    assert!(matches!(judge(None, Duration::ZERO), Verdict::NotReady(_)));
    assert!(matches!(judge(None, SETUP_GRACE), Verdict::Stale(_)));
    let mut unborn = v;
    unborn.creator_pid = 0;
    assert!(matches!(
        judge(Some(&unborn), Duration::from_millis(10)),
        Verdict::NotReady(_)
    ));
    assert!(matches!(
        judge(Some(&unborn), SETUP_GRACE),
        Verdict::Stale(_)
    ));
    let mut unready = v;
    unready.ready = false;
    assert!(matches!(
        judge(Some(&unready), SETUP_GRACE),
        Verdict::NotReady(_)
    ));
    let mut foreign = v;
    foreign.magic = 0x1234;
    assert_eq!(
        judge(Some(&foreign), Duration::ZERO),
        Verdict::Foreign(0x1234)
    );
}

/// A scribble on the header while frames flow is noticed within AUDIT_EVERY frames.
mod hostile;

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
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
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
    let (r, _) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
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
    let (r, _) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    assert!(c.try_recv_in_place().unwrap().is_none());
    p.send(&hdr(Kind::Data, 0, b"in place"), b"in place")
        .unwrap();
    let (h, got) = c.try_recv_in_place().unwrap().expect("published");
    assert_eq!((h.seq, got), (0, &b"in place"[..]));
    assert!(c.try_recv_in_place().unwrap().is_none());
}
