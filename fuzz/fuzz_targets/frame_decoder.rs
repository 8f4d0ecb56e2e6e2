//! The frame decoder over arbitrary bytes: it must answer frame, need-more or an error,
//! never panic, never read past the input, and a frame it accepts must re-encode to the
//! same bytes.
#![no_main]

use common::frame::{decode, encode_into, Decoded, Fields, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the reader's limit, the rest is the stream.
    let (max, bytes) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
        _ => return,
    };
    match decode(bytes, max) {
        Ok(Decoded::Frame { header, total }) => {
            assert!(total <= bytes.len() && total == HEADER_LEN + header.payload_len());
            assert!(header.payload_len() <= max);
            let fields = Fields {
                kind: header.kind,
                flags: header.flags,
                nonce: header.nonce,
                seq: header.seq,
                sent_ns: header.sent_ns,
            };
            let mut again = vec![0; total];
            let n = encode_into(fields, &bytes[HEADER_LEN..total], &mut again).unwrap();
            assert_eq!(&again[..n], &bytes[..total], "an accepted frame re-encodes to itself");
        }
        Ok(Decoded::NeedMore { total }) => assert!(total > bytes.len()),
        Err(_) => {}
    }
});
