//! Fuzzes the offload frame decoder: arbitrary bytes, fed in arbitrary chunk
//! sizes, must give messages or a typed error; every decoded message must
//! re-encode and decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_edge::offload::protocol::{FrameDecoder, encode_with_limit};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else { return };
    let mut decoder = FrameDecoder::new(4096);
    let mut messages = Vec::new();
    for piece in bytes.chunks(chunk as usize + 1) {
        match decoder.push(piece) {
            Ok(m) => messages.extend(m),
            Err(_) => return,
        }
    }
    let _ = decoder.finish();
    for message in messages {
        let frame = encode_with_limit(&message, 4096).expect("a decoded message re-encodes within the limit");
        let again = FrameDecoder::new(4096).push(&frame).expect("a re-encoded frame decodes");
        assert_eq!(again.len(), 1);
    }
});
