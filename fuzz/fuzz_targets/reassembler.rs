//! The stream reassembler fed arbitrary bytes in arbitrary pieces, as `read(2)` would:
//! every frame it hands out is a whole, checked frame; it never panics, and its buffer
//! never grows past one frame of the limit.
#![no_main]

use common::frame::{Reassembler, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0: the limit in KiB; byte 1: the size of each "read"; the rest is the stream.
    let (max, chunk, mut bytes) = match data {
        [m, c, rest @ ..] => ((*m as usize) << 10, (*c as usize).max(1), rest),
        _ => return,
    };
    let mut frames = Reassembler::with_capacity(max, 64);
    loop {
        loop {
            match frames.next_frame() {
                Ok(Some((h, payload))) => {
                    assert_eq!(payload.len(), h.payload_len());
                    assert!(payload.len() <= max);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let spare = frames.spare();
        assert!(spare.len() <= (HEADER_LEN + max).max(64), "grew past one frame");
        let n = chunk.min(spare.len()).min(bytes.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        if n == 0 {
            let _ = frames.cut();
            return;
        }
        frames.filled(n);
    }
});
