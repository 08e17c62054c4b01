//! `FrameDecoder` on arbitrary bytes in arbitrary chunks.
//!
//! Input: `n:u8`, then `n % 16` chunk-size bytes (used in a cycle; size = byte + 1; none: one
//! chunk), then the stream. The decoder must never panic, every frame must be within the
//! length bounds and carry seqnos 0, 1, 2, ..., it must never buffer more than one frame, an
//! error must stick, and the result must not depend on the chunking (compared with decoding
//! the whole stream in one call).
#![no_main]

use cocoon_tl::frame::{
    FRAME_HEADER_LEN, Frame, FrameDecoder, FrameError, MAX_FRAME_LEN, MIN_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    buffered: usize,
}

fn run<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut error = None;
    'outer: for chunk in chunks {
        let mut input = chunk;
        loop {
            let before = input.len();
            match dec.decode(&mut input) {
                Ok(Some(frame)) => {
                    assert!(input.len() < before, "a frame without consuming input");
                    let len = frame.payload.len();
                    assert!(
                        (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len),
                        "payload len {len}"
                    );
                    assert_eq!(frame.seqno, frames.len() as i32, "seqno out of order");
                    frames.push(frame);
                }
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) with input left");
                    break;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    assert_eq!(e.code(), 621);
                    assert!(dec.is_failed());
                    // Errors stick, whatever comes next.
                    assert_eq!(dec.decode(&mut &[0u8; 16][..]), Err(e.clone()));
                    error = Some(e);
                    break 'outer;
                }
            }
            assert!(dec.buffered_len() <= FRAME_HEADER_LEN + MAX_FRAME_LEN);
        }
        assert!(dec.buffered_len() <= FRAME_HEADER_LEN + MAX_FRAME_LEN);
        assert_eq!(dec.has_partial(), dec.buffered_len() > 0);
    }
    Outcome {
        frames,
        error,
        buffered: dec.buffered_len(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16);
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);
    let whole = run(std::iter::once(stream));
    let chunked = if sizes.is_empty() {
        run(stream.chunks(1))
    } else {
        let mut pieces = Vec::new();
        let mut at = 0;
        for &s in sizes.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + usize::from(s) + 1).min(stream.len());
            pieces.push(&stream[at..end]);
            at = end;
        }
        run(pieces.into_iter())
    };
    assert_eq!(whole, chunked, "result depends on chunking");
});
