//! Frame decoding: the input is a byte stream fed to `FrameDecoder` in random chunks, with a small random frame limit.
//! Whatever the chunking, the decoder must yield exactly the frames and the error a one-shot reference reading yields,
//! and after the caller drains it, it never holds more than one incomplete frame.
//!
//! Input layout: `limit selector u8 | chunking seed u8 | stream...`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_schema::frame::{DEFAULT_MAX_FRAME, FrameDecoder, FrameError, PREFIX_LEN};

/// The frames in `stream` read in one go, and the error that stops the reading, if any.
fn reference(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while rest.len() >= PREFIX_LEN {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max {
            return (frames, Some(FrameError::TooLarge { len, max }));
        }
        if len == 0 {
            return (frames, Some(FrameError::Empty));
        }
        if rest.len() < PREFIX_LEN + len {
            break;
        }
        frames.push(rest[PREFIX_LEN..PREFIX_LEN + len].to_vec());
        rest = &rest[PREFIX_LEN + len..];
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, stream @ ..] = data else { return };
    let max = match limit {
        0 => DEFAULT_MAX_FRAME,
        n => usize::from(*n) * 3,
    };
    let (want_frames, want_err) = reference(stream, max);

    let mut rng = vigil_fuzz::Rng::new(u64::from(*seed) << 8 | u64::from(*limit));
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut err = None;
    let mut rest = stream;
    'feed: while !rest.is_empty() {
        let n = rng.between_1_and(rest.len().min(64));
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if let Err(e) = decoder.push(chunk) {
            err = Some(e);
            break;
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break 'feed;
                }
            }
        }
        assert!(decoder.buffered() < PREFIX_LEN + max, "a drained decoder holds {} bytes", decoder.buffered());
    }
    assert_eq!(frames, want_frames, "chunked decoding disagrees with the reference");
    assert_eq!(err, want_err, "chunked decoding stops differently from the reference");
    if err.is_none() {
        let consumed: usize = frames.iter().map(|f| PREFIX_LEN + f.len()).sum();
        assert_eq!(decoder.buffered(), stream.len() - consumed, "bytes lost or invented");
    }
});
