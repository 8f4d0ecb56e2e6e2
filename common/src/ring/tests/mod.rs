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

/// An initialized region of `cap` bytes per direction with the spinning producer and
/// consumer of ring 0, both in this process: the start of most single-ring tests.
fn spin_ends(cap: usize) -> (Region, *mut u8, Producer, Consumer) {
    let (r, base) = region(cap);
    r.initialize(Role::Writer, 1);
    let p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    let c = r
        .consumer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    (r, base, p, c)
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
    // The programs' default, as their flag spells it, is the constant the docs name.
    assert_eq!(
        parse_capacity(DEFAULT_CAPACITY_ARG).unwrap(),
        DEFAULT_CAPACITY
    );
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
mod memos;
mod spins;
mod stamps;
