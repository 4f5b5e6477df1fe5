//! Length-prefixed framing: a `u32` big-endian length, then that many bytes.
//!
//! Pure bytes in, frames out; the I/O stays in the agent and the server. A length over the limit is refused as soon as
//! its four bytes arrive, before any of the frame is buffered or allocated.

/// Default hard limit on one frame's payload: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Why the byte stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame announces {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
}

/// Prefixes `payload` with its length. Callers keep payloads under the limit (the envelope enforces it).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Incremental decoder: feed bytes as they arrive with [`FrameDecoder::push`], take frames with
/// [`FrameDecoder::next_frame`]. After an error the stream is unusable and the connection should close.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), start: 0, max }
    }

    /// Appends received bytes. The announced length is checked here too, so an attacker cannot make the buffer
    /// grow past one frame plus what it already sent.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.max {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.check_len().map(|_| ())
    }

    fn check_len(&self) -> Result<Option<usize>, FrameError> {
        let pending = &self.buf[self.start..];
        if pending.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        Ok(Some(len))
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.check_len()? else {
            return Ok(None);
        };
        let pending = &self.buf[self.start..];
        if pending.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        let frame = pending[PREFIX_LEN..PREFIX_LEN + len].to_vec();
        self.start += PREFIX_LEN + len;
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_every_byte_boundary() {
        let frames: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![7u8; 300], b"hello".to_vec()];
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f)).collect();
        for cut in 0..=wire.len() {
            let mut d = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                d.push(part).unwrap();
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "cut at {cut}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn byte_by_byte() {
        let wire = [encode(b"one"), encode(b"two")].concat();
        let mut d = FrameDecoder::new(16);
        let mut got = Vec::new();
        for b in wire {
            d.push(&[b]).unwrap();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn oversize_is_refused_on_its_prefix_alone() {
        let mut d = FrameDecoder::default();
        // Announce 2 MiB and send only the prefix: refused without waiting for (or allocating) the body.
        let err = d.push(&(2u32 << 20).to_be_bytes()).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: 2 << 20, max: DEFAULT_MAX_FRAME });
        assert!(d.buf.capacity() < 64);
        let mut d = FrameDecoder::new(8);
        assert!(d.push(&encode(&[0; 9])).is_err());
        let mut d = FrameDecoder::new(8);
        d.push(&encode(&[0; 8])).unwrap();
        assert_eq!(d.next_frame().unwrap(), Some(vec![0; 8]));
    }

    #[test]
    fn u32_max_length_is_refused() {
        let mut d = FrameDecoder::default();
        assert!(d.push(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn empty_frame_is_an_error() {
        let mut d = FrameDecoder::default();
        assert_eq!(d.push(&[0, 0, 0, 0]), Err(FrameError::Empty));
    }
}
