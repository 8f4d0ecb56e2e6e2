//! The shared ring's consumer over a region whose every byte the fuzzer controls (a
//! hostile peer): header, indices and data area. Every call must return a frame or an
//! error; never panic, never touch memory outside the region (the address sanitizer
//! checks that), never hand out a frame that did not pass the decoder, and never lend a
//! payload slice that is not the frame's own bytes inside the region.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::time::Duration;

use common::ring::{region_len, Direction, EndOpts, Region, Role, Wait};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 4096;

/// A page-aligned zeroed heap buffer standing in for a mapping.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}
// SAFETY: a plain heap allocation owned by this value; the ring reaches it only through
// atomics and raw-pointer copies.
unsafe impl Send for Buf {}
// SAFETY: as above.
unsafe impl Sync for Buf {}
impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated below with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fuzz_target!(|data: &[u8]| {
    let len = region_len(CAP);
    let layout = Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    let buf = Buf { ptr, layout };
    // SAFETY: `buf` holds `len` writable bytes for as long as the Region lives (it is the
    // keeper), and no reference into them exists.
    let region = unsafe { Region::from_raw(ptr, len, CAP, buf) }.unwrap();
    region.initialize(Role::Writer, 1);
    // The hostile peer: the fuzzer's bytes over the control lines and the data area
    // (the header's first 64 bytes are kept so the endpoints are made at all).
    let n = data.len().min(len - 64);
    // SAFETY: [64, 64 + n) is inside the region; no reference to it exists.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.add(64), n) };
    let opts = EndOpts {
        wait: Wait::Spin,
        peer: common::peer::Identity::me(),
        idle_timeout: Some(Duration::from_millis(1)),
    };
    let Ok(mut rx) = region.consumer(Direction::WriterToReader, opts) else {
        return;
    };
    // Copying out, then (from wherever that stopped) reading in place: the zero-copy
    // path hands out a slice of the region itself, which must be exactly the frame's
    // payload and inside the region.
    for _ in 0..16 {
        match rx.try_recv() {
            Ok(Some(h)) => assert_eq!(rx.payload().len(), h.payload_len()),
            Ok(None) | Err(_) => break,
        }
    }
    for _ in 0..16 {
        match rx.try_recv_in_place() {
            Ok(Some((h, p))) => {
                assert_eq!(p.len(), h.payload_len());
                let (start, end) = (p.as_ptr() as usize, p.as_ptr() as usize + p.len());
                assert!(start >= ptr as usize && end <= ptr as usize + len);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
