//! The "sleeps" flag of an end that only spins (`wait` module docs): it says so once, for
//! good, and its peer then publishes without the fence.

use super::*;
use crate::ring::wait::{SLEEPS, SPINS};
use std::sync::atomic::AtomicU32;

/// The u32 flag at `off` of the region at `base`.
fn flag(base: *mut u8, off: usize) -> u32 {
    // SAFETY: a 4-aligned word inside the region, read through an atomic.
    unsafe { (*base.add(off).cast::<AtomicU32>()).load(Ordering::SeqCst) }
}

#[test]
fn a_spinning_end_says_so_in_its_own_sleeps_flag_and_a_sleeping_one_does_not() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let _p = r
        .producer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    let _c = r
        .consumer(Direction::WriterToReader, opts(Wait::Adaptive))
        .unwrap();
    let _b = r
        .consumer(Direction::ReaderToWriter, opts(Wait::Block))
        .unwrap();
    assert_eq!(flag(base, offsets::producer_sleeping(0)), SPINS);
    assert_eq!(flag(base, offsets::consumer_sleeping(0)), 0);
    assert_eq!(flag(base, offsets::consumer_sleeping(1)), 0);
}

#[test]
fn an_end_that_turns_to_spin_says_so_then() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Adaptive))
        .unwrap();
    assert_eq!(flag(base, offsets::consumer_sleeping(0)), 0);
    c.set_wait(Wait::Spin);
    assert_eq!(flag(base, offsets::consumer_sleeping(0)), SPINS);
}

/// Its producer may already publish without waking it, so an end that said it spins never
/// sleeps afterwards, whatever it is asked: an empty ring's wait runs to the idle limit
/// with the flag untouched (a sleep would have stored SLEEPS, then 0).
#[test]
fn an_end_that_said_it_spins_keeps_spinning() {
    let (r, base) = region(4096);
    r.initialize(Role::Writer, 1);
    let o = EndOpts {
        idle_timeout: Some(Duration::from_millis(150)),
        ..opts(Wait::Spin)
    };
    let mut c = r.consumer(Direction::WriterToReader, o).unwrap();
    c.set_wait(Wait::Block);
    assert!(matches!(c.recv(), Err(RingError::TimedOut { .. })));
    assert_eq!(flag(base, offsets::consumer_sleeping(0)), SPINS);
    assert_ne!(SPINS, SLEEPS);
}

/// A producer whose consumer spins publishes with a Release store and no wake-up check;
/// the frames arrive all the same, in order, across threads.
#[test]
fn frames_reach_a_spinning_consumer_through_unfenced_publishes() {
    let (r, base) = region(64 << 10);
    r.initialize(Role::Writer, 1);
    let mut p = r
        .producer(Direction::WriterToReader, opts(Wait::Block))
        .unwrap();
    let mut c = r
        .consumer(Direction::WriterToReader, opts(Wait::Spin))
        .unwrap();
    assert_eq!(flag(base, offsets::consumer_sleeping(0)), SPINS);
    let n = 20_000u64;
    let t = std::thread::spawn(move || {
        for seq in 0..n {
            let (h, got) = c.recv().unwrap();
            assert_eq!((h.seq, got), (seq, &payload(seq, 100)[..]));
        }
    });
    for seq in 0..n {
        let body = payload(seq, 100);
        p.send(&hdr(Kind::Data, seq, &body), &body).unwrap();
    }
    t.join().unwrap();
    drop(r);
}
