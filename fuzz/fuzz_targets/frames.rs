//! The frame decoder on both sides, fed arbitrary bytes in arbitrary chunks: it must return
//! frames or an error, never panic, and never hold more than its message limit plus a frame.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use reaper_core::wire::{FrameDecoder, Side};

const MAX_MESSAGE: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    for side in [Side::Request, Side::Response] {
        let mut decoder = FrameDecoder::new(side, MAX_MESSAGE);
        // The first byte says where the stream is cut in two chunks.
        let cut = (split as usize).min(data.len());
        for chunk in [&data[..cut], &data[cut..]] {
            decoder.push(Bytes::copy_from_slice(chunk));
            for _ in 0..data.len() + 2 {
                match decoder.next_frame() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let _ = decoder.finish();
    }
});
