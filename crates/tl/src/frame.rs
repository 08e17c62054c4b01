//! Stream framing (pure, no I/O).
//!
//! Every frame on the wire is
//!
//! ```text
//! len:u32 (little-endian) ‖ seqno:i32 (little-endian) ‖ payload[len]
//! ```
//!
//! with `MIN_FRAME_LEN <= len <= MAX_FRAME_LEN`. Sequence numbers start at 0 in each
//! direction and every frame must carry exactly the previous seqno + 1 (wrapping). Any
//! violation is a protocol error (TON code 621, `protoviolation`).
//!
//! [`FrameDecoder`] accepts bytes in arbitrary chunks (down to single bytes) and yields frames
//! one at a time. It never holds more than one partial frame: the caller hands it a slice and
//! it consumes only what it needs to finish the current frame, so unread input stays with the
//! caller. Length and seqno are validated as soon as the 8 header bytes are known, before any
//! body byte is buffered, so a peer claiming a 4 GiB frame is rejected immediately.

use std::fmt;

/// Smallest payload length accepted on the wire.
pub const MIN_FRAME_LEN: usize = 4;
/// Largest payload length accepted on the wire (16 MiB).
pub const MAX_FRAME_LEN: usize = 1 << 24;
/// Size of the frame header (`len` + `seqno`).
pub const FRAME_HEADER_LEN: usize = 8;

/// TON error code for protocol violations (`protoviolation`).
const PROTOVIOLATION: i32 = 621;

/// A framing error. Every variant is a protocol violation (code 621).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame length is below [`MIN_FRAME_LEN`].
    TooShort {
        /// Offending payload length.
        len: usize,
    },
    /// The frame length is above [`MAX_FRAME_LEN`].
    TooLong {
        /// Offending payload length.
        len: usize,
    },
    /// The frame's sequence number is not the expected one.
    BadSeqno {
        /// The sequence number that was expected.
        expected: i32,
        /// The sequence number that was received.
        got: i32,
    },
}

impl FrameError {
    /// TON error code of this error: always 621 (`protoviolation`).
    pub fn code(&self) -> i32 {
        PROTOVIOLATION
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort { len } => {
                write!(f, "frame too short: {len} bytes (minimum {MIN_FRAME_LEN})")
            }
            FrameError::TooLong { len } => {
                write!(f, "frame too long: {len} bytes (maximum {MAX_FRAME_LEN})")
            }
            FrameError::BadSeqno { expected, got } => {
                write!(f, "bad frame seqno: expected {expected}, got {got}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Checks a payload length against the frame bounds.
pub fn check_frame_len(len: usize) -> Result<(), FrameError> {
    if len < MIN_FRAME_LEN {
        Err(FrameError::TooShort { len })
    } else if len > MAX_FRAME_LEN {
        Err(FrameError::TooLong { len })
    } else {
        Ok(())
    }
}

/// A decoded frame. `Debug` shows the seqno and the payload length, never the payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number carried by the frame.
    pub seqno: i32,
    /// Frame payload (a boxed TL `tcp.Packet`).
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("seqno", &self.seqno)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Parses a frame header from the first [`FRAME_HEADER_LEN`] bytes of `bytes`.
///
/// Returns `(len, seqno)` without validating either, or `None` if fewer than 8 bytes are given.
pub fn parse_frame_header(bytes: &[u8]) -> Option<(u32, i32)> {
    bytes.first_chunk().map(header_fields)
}

fn header_fields(header: &[u8; FRAME_HEADER_LEN]) -> (u32, i32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let seqno = i32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, seqno)
}

/// Appends one frame to `out` (stateless). `out` is left untouched on error.
pub fn encode_frame_into(seqno: i32, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    check_frame_len(payload.len())?;
    out.reserve(FRAME_HEADER_LEN + payload.len());
    // Cannot truncate: checked against MAX_FRAME_LEN (< u32::MAX) above.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seqno.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Encodes one frame with an explicit sequence number (stateless).
pub fn encode_frame(seqno: i32, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(seqno, payload, &mut out)?;
    Ok(out)
}

/// Stateful encoder assigning consecutive sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct FrameEncoder {
    next_seqno: i32,
}

impl FrameEncoder {
    /// A new encoder whose first frame gets seqno 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new encoder whose first frame gets `seqno`.
    pub fn with_seqno(seqno: i32) -> Self {
        Self { next_seqno: seqno }
    }

    /// Sequence number the next frame will carry.
    pub fn next_seqno(&self) -> i32 {
        self.next_seqno
    }

    /// Appends a frame carrying `payload` to `out`. On error nothing is written and the
    /// sequence number is not consumed.
    pub fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        encode_frame_into(self.next_seqno, payload, out)?;
        self.next_seqno = self.next_seqno.wrapping_add(1);
        Ok(())
    }

    /// Appends a frame to `out` whose payload is written by `write_payload` directly into
    /// `out` (no intermediate copy). On error (payload length out of bounds) `out` is restored
    /// to its previous length and the sequence number is not consumed.
    pub fn encode_with(
        &mut self,
        out: &mut Vec<u8>,
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), FrameError> {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        write_payload(out);
        let len = out.len() - start - FRAME_HEADER_LEN;
        if let Err(err) = check_frame_len(len) {
            out.truncate(start);
            return Err(err);
        }
        // Cannot truncate: checked against MAX_FRAME_LEN (< u32::MAX) above.
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        out[start + 4..start + FRAME_HEADER_LEN].copy_from_slice(&self.next_seqno.to_le_bytes());
        self.next_seqno = self.next_seqno.wrapping_add(1);
        Ok(())
    }

    /// Like [`FrameEncoder::encode`], returning a fresh buffer.
    pub fn encode_to_vec(&mut self, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode(payload, &mut out)?;
        Ok(out)
    }
}

#[derive(Clone)]
enum DecodeState {
    /// Collecting the 8 header bytes.
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Header validated; collecting `len` payload bytes.
    Body {
        seqno: i32,
        len: usize,
        buf: Vec<u8>,
    },
}

const EMPTY_HEADER: DecodeState = DecodeState::Header {
    buf: [0; FRAME_HEADER_LEN],
    have: 0,
};

/// Incremental frame decoder.
///
/// Feed it with [`FrameDecoder::decode`]: it consumes bytes from the front of the given slice
/// until one frame is complete (returned) or the slice is exhausted (`Ok(None)`). It buffers at
/// most one partial frame, and its buffer grows only as body bytes arrive and never beyond the
/// frame's length (a frame whose body arrives at once is copied once, into an exact
/// allocation). After an error the decoder stays failed and returns the same error forever.
///
/// `Debug` shows the decoder's position and sizes, never buffered bytes.
#[derive(Clone)]
pub struct FrameDecoder {
    state: DecodeState,
    expected_seqno: i32,
    error: Option<FrameError>,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("expected_seqno", &self.expected_seqno)
            .field("buffered_len", &self.buffered_len())
            .field("error", &self.error)
            .finish()
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder expecting the first frame to carry seqno 0.
    pub fn new() -> Self {
        Self::with_seqno(0)
    }

    /// A decoder expecting the first frame to carry `seqno`.
    pub fn with_seqno(seqno: i32) -> Self {
        Self {
            state: EMPTY_HEADER,
            expected_seqno: seqno,
            error: None,
        }
    }

    /// Sequence number expected on the next frame.
    pub fn expected_seqno(&self) -> i32 {
        self.expected_seqno
    }

    /// The error the decoder failed with, if any.
    pub fn error(&self) -> Option<&FrameError> {
        self.error.as_ref()
    }

    /// Whether the decoder has failed.
    pub fn is_failed(&self) -> bool {
        self.error.is_some()
    }

    /// Whether a partial frame is buffered (i.e. the stream is not at a frame boundary).
    pub fn has_partial(&self) -> bool {
        !matches!(self.state, DecodeState::Header { have: 0, .. })
    }

    /// Number of bytes of the current partial frame held by the decoder.
    pub fn buffered_len(&self) -> usize {
        match &self.state {
            DecodeState::Header { have, .. } => *have,
            DecodeState::Body { buf, .. } => FRAME_HEADER_LEN + buf.len(),
        }
    }

    /// Consumes bytes from the front of `input` and returns the next complete frame, or
    /// `Ok(None)` once `input` is exhausted without completing one. Bytes after a returned
    /// frame are left in `input`; call again to continue.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        loop {
            match &mut self.state {
                DecodeState::Header { buf, have } => {
                    let header = if *have == 0
                        && let Some((header, rest)) = input.split_first_chunk()
                    {
                        // Fast path: the whole header is in `input`.
                        *input = rest;
                        *header
                    } else {
                        let take = (FRAME_HEADER_LEN - *have).min(input.len());
                        buf[*have..*have + take].copy_from_slice(&input[..take]);
                        *have += take;
                        *input = &input[take..];
                        if *have < FRAME_HEADER_LEN {
                            return Ok(None);
                        }
                        *buf
                    };
                    let (len, seqno) = header_fields(&header);
                    // Validated before any body byte is buffered.
                    let len = len as usize;
                    if let Err(err) = self.check_header(len, seqno) {
                        self.state = EMPTY_HEADER;
                        self.error = Some(err.clone());
                        return Err(err);
                    }
                    self.state = DecodeState::Body {
                        seqno,
                        len,
                        buf: Vec::new(),
                    };
                }
                DecodeState::Body { seqno, len, buf } => {
                    let (seqno, len) = (*seqno, *len);
                    let payload = if buf.is_empty() && input.len() >= len {
                        // Whole body in `input`: one exact copy.
                        let (body, rest) = input.split_at(len);
                        *input = rest;
                        body.to_vec()
                    } else {
                        let take = (len - buf.len()).min(input.len());
                        let needed = buf.len() + take;
                        if needed > buf.capacity() {
                            // Grow geometrically (amortized copying), but only for bytes that
                            // arrived and never beyond the frame length.
                            let target = needed.max(buf.capacity().saturating_mul(2)).min(len);
                            buf.reserve_exact(target - buf.len());
                        }
                        buf.extend_from_slice(&input[..take]);
                        *input = &input[take..];
                        if buf.len() < len {
                            return Ok(None);
                        }
                        std::mem::take(buf)
                    };
                    self.state = EMPTY_HEADER;
                    self.expected_seqno = self.expected_seqno.wrapping_add(1);
                    return Ok(Some(Frame { seqno, payload }));
                }
            }
        }
    }

    fn check_header(&self, len: usize, seqno: i32) -> Result<(), FrameError> {
        check_frame_len(len)?;
        if seqno != self.expected_seqno {
            return Err(FrameError::BadSeqno {
                expected: self.expected_seqno,
                got: seqno,
            });
        }
        Ok(())
    }

    /// Decodes every complete frame in `input`; a trailing partial frame stays buffered.
    pub fn decode_all(&mut self, mut input: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = self.decode(&mut input)? {
            frames.push(frame);
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
    }

    fn stream(lens: &[usize]) -> (Vec<u8>, Vec<Frame>) {
        let mut enc = FrameEncoder::new();
        let mut out = Vec::new();
        let mut frames = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let p = payload(i, len);
            enc.encode(&p, &mut out).unwrap();
            frames.push(Frame {
                seqno: i as i32,
                payload: p,
            });
        }
        (out, frames)
    }

    fn decode_chunks(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Frame>, FrameError> {
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        let mut prev = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            frames.extend(dec.decode_all(&bytes[prev..cut])?);
            prev = cut;
        }
        assert!(!dec.has_partial());
        Ok(frames)
    }

    /// Tiny deterministic PRNG (xorshift64*) for split tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn frame_header_layout() {
        let f = encode_frame(5, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(f, [5, 0, 0, 0, 5, 0, 0, 0, 1, 2, 3, 4, 5]);
        assert_eq!(parse_frame_header(&f), Some((5, 5)));
        assert_eq!(parse_frame_header(&f[..7]), None);
        let neg = encode_frame(-2, &[0; 4]).unwrap();
        assert_eq!(parse_frame_header(&neg), Some((4, -2)));
    }

    #[test]
    fn frame_encode_bounds() {
        assert_eq!(
            encode_frame(0, &[1, 2, 3]),
            Err(FrameError::TooShort { len: 3 })
        );
        assert!(encode_frame(0, &[0; MIN_FRAME_LEN]).is_ok());
        let big = vec![0u8; MAX_FRAME_LEN];
        assert_eq!(
            encode_frame(0, &big).unwrap().len(),
            MAX_FRAME_LEN + FRAME_HEADER_LEN
        );
        let too_big = vec![0u8; MAX_FRAME_LEN + 1];
        assert_eq!(
            encode_frame(0, &too_big),
            Err(FrameError::TooLong {
                len: MAX_FRAME_LEN + 1
            })
        );
        // A failed encode consumes no seqno and writes nothing.
        let mut enc = FrameEncoder::new();
        let mut out = vec![9];
        assert!(enc.encode(&[1], &mut out).is_err());
        assert_eq!(out, [9]);
        assert_eq!(enc.next_seqno(), 0);
        enc.encode(&[1, 2, 3, 4], &mut out).unwrap();
        assert_eq!(enc.next_seqno(), 1);
        // encode_with: same bytes as encode, restores `out` on error.
        let mut a = Vec::new();
        enc.clone().encode(&[5; 6], &mut a).unwrap();
        let mut b = Vec::new();
        enc.encode_with(&mut b, |o| o.extend_from_slice(&[5; 6]))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(enc.next_seqno(), 2);
        assert_eq!(
            enc.encode_with(&mut b, |o| o.push(1)),
            Err(FrameError::TooShort { len: 1 })
        );
        assert_eq!(a, b);
        assert_eq!(enc.next_seqno(), 2);
        assert_eq!(FrameError::TooShort { len: 0 }.code(), 621);
    }

    #[test]
    fn frame_roundtrip_whole() {
        let (bytes, frames) = stream(&[4, 5, 100, 4, 1000]);
        assert_eq!(decode_chunks(&bytes, &[]).unwrap(), frames);
    }

    #[test]
    fn frame_one_byte_chunks() {
        let (bytes, frames) = stream(&[4, 17, 8, 300]);
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(decode_chunks(&bytes, &cuts).unwrap(), frames);
    }

    #[test]
    fn frame_every_two_way_split() {
        let (bytes, frames) = stream(&[4, 9, 12, 5]);
        for cut in 0..=bytes.len() {
            assert_eq!(decode_chunks(&bytes, &[cut]).unwrap(), frames, "cut {cut}");
        }
    }

    #[test]
    fn frame_random_splits() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let n = 1 + rng.below(8);
            let lens: Vec<usize> = (0..n).map(|_| 4 + rng.below(200)).collect();
            let (bytes, frames) = stream(&lens);
            let mut cuts: Vec<usize> = (0..rng.below(12))
                .map(|_| rng.below(bytes.len() + 1))
                .collect();
            cuts.sort_unstable();
            assert_eq!(decode_chunks(&bytes, &cuts).unwrap(), frames);
        }
    }

    #[test]
    fn frame_decode_leaves_rest_of_input() {
        let (bytes, frames) = stream(&[4, 6]);
        let mut dec = FrameDecoder::new();
        let mut input = &bytes[..];
        assert_eq!(dec.decode(&mut input).unwrap().as_ref(), Some(&frames[0]));
        assert_eq!(input.len(), 8 + 6);
        assert_eq!(dec.decode(&mut input).unwrap().as_ref(), Some(&frames[1]));
        assert!(input.is_empty());
        assert_eq!(dec.decode(&mut input).unwrap(), None);
        assert_eq!(dec.expected_seqno(), 2);
    }

    #[test]
    fn frame_rejects_short_len() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&[0; 3]);
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.decode_all(&bytes), Err(FrameError::TooShort { len: 3 }));
    }

    #[test]
    fn frame_rejects_huge_len_from_header_alone() {
        // Only the header arrives: the claim is rejected before any body byte.
        for chunked in [false, true] {
            let mut header = Vec::new();
            header.extend_from_slice(&u32::MAX.to_le_bytes());
            header.extend_from_slice(&0i32.to_le_bytes());
            let mut dec = FrameDecoder::new();
            let res = if chunked {
                let mut r = Ok(Vec::new());
                for b in &header {
                    r = dec.decode_all(std::slice::from_ref(b));
                    if r.is_err() {
                        break;
                    }
                }
                r
            } else {
                dec.decode_all(&header)
            };
            assert_eq!(
                res,
                Err(FrameError::TooLong {
                    len: u32::MAX as usize
                })
            );
            assert!(dec.is_failed());
            assert_eq!(dec.buffered_len(), 0);
        }
        let mut header = Vec::new();
        header.extend_from_slice(&((MAX_FRAME_LEN + 1) as u32).to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes());
        assert!(matches!(
            FrameDecoder::new().decode_all(&header),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn frame_rejects_bad_seqno_and_stays_failed() {
        let mut bytes = encode_frame(0, &[1; 4]).unwrap();
        bytes.extend(encode_frame(2, &[2; 4]).unwrap());
        bytes.extend(encode_frame(1, &[3; 4]).unwrap());
        let mut dec = FrameDecoder::new();
        let mut input = &bytes[..];
        assert!(dec.decode(&mut input).unwrap().is_some());
        let err = FrameError::BadSeqno {
            expected: 1,
            got: 2,
        };
        assert_eq!(dec.decode(&mut input), Err(err.clone()));
        assert_eq!(dec.error(), Some(&err));
        // Stays failed, even if valid bytes follow.
        let good = encode_frame(1, &[3; 4]).unwrap();
        assert_eq!(dec.decode_all(&good), Err(err));
        assert!(err_display_nonempty(dec.error().unwrap()));
    }

    fn err_display_nonempty(e: &FrameError) -> bool {
        !e.to_string().is_empty()
    }

    #[test]
    fn frame_first_seqno_must_be_zero() {
        let bytes = encode_frame(1, &[0; 4]).unwrap();
        assert_eq!(
            FrameDecoder::new().decode_all(&bytes),
            Err(FrameError::BadSeqno {
                expected: 0,
                got: 1
            })
        );
    }

    #[test]
    fn frame_seqno_wraps() {
        let mut enc = FrameEncoder::with_seqno(i32::MAX);
        let mut dec = FrameDecoder::with_seqno(i32::MAX);
        let mut out = Vec::new();
        enc.encode(&[0; 4], &mut out).unwrap();
        enc.encode(&[1; 4], &mut out).unwrap();
        let frames = dec.decode_all(&out).unwrap();
        assert_eq!(frames[0].seqno, i32::MAX);
        assert_eq!(frames[1].seqno, i32::MIN);
    }

    /// Capacity of the decoder's body buffer, if it is collecting a body.
    fn body_capacity(dec: &FrameDecoder) -> Option<usize> {
        match &dec.state {
            DecodeState::Body { buf, .. } => Some(buf.capacity()),
            DecodeState::Header { .. } => None,
        }
    }

    #[test]
    fn frame_body_buffer_never_exceeds_frame_len() {
        let len = MAX_FRAME_LEN;
        let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN + len);
        bytes.extend_from_slice(&(len as u32).to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.resize(FRAME_HEADER_LEN + len, 0xA5);
        let mut dec = FrameDecoder::new();
        // A header alone reserves nothing for the announced 16 MiB.
        assert!(
            dec.decode_all(&bytes[..FRAME_HEADER_LEN])
                .unwrap()
                .is_empty()
        );
        assert_eq!(body_capacity(&dec), Some(0));
        // One body byte: no 16 MiB allocation either.
        let mut pos = FRAME_HEADER_LEN;
        assert!(dec.decode_all(&bytes[pos..pos + 1]).unwrap().is_empty());
        pos += 1;
        assert!(body_capacity(&dec).unwrap() < 1024);
        // The rest in 64 KiB reads, as a socket delivers it.
        let mut frame = None;
        while pos < bytes.len() {
            let end = (pos + 65536).min(bytes.len());
            let mut input = &bytes[pos..end];
            frame = dec.decode(&mut input).unwrap();
            assert!(input.is_empty());
            pos = end;
            if let Some(cap) = body_capacity(&dec) {
                assert!(cap <= len, "buffer capacity {cap} > frame length {len}");
            }
        }
        let frame = frame.expect("complete frame");
        assert_eq!(frame.payload.len(), len);
        assert!(frame.payload.capacity() <= len);
        assert!(frame.payload.iter().all(|&b| b == 0xA5));
        assert!(!dec.has_partial());
    }

    #[test]
    fn frame_whole_body_copied_once_exactly() {
        let bytes = encode_frame(0, &[3; 1000]).unwrap();
        let frames = FrameDecoder::new().decode_all(&bytes).unwrap();
        assert_eq!(frames[0].payload.capacity(), 1000);
        // Header first, then the whole body in one piece.
        let mut dec = FrameDecoder::new();
        assert!(
            dec.decode_all(&bytes[..FRAME_HEADER_LEN])
                .unwrap()
                .is_empty()
        );
        let frames = dec.decode_all(&bytes[FRAME_HEADER_LEN..]).unwrap();
        assert_eq!(frames[0].payload.capacity(), 1000);
    }

    #[test]
    fn frame_debug_hides_payload() {
        let frame = Frame {
            seqno: 3,
            payload: b"secret prompt".to_vec(),
        };
        let text = format!("{frame:?}");
        assert_eq!(text, "Frame { seqno: 3, len: 13 }");
        let mut dec = FrameDecoder::new();
        let bytes = encode_frame(0, b"secret prompt").unwrap();
        dec.decode_all(&bytes[..12]).unwrap();
        let text = format!("{dec:?}");
        assert!(!text.contains("115"), "{text}"); // b's' == 115
        assert!(text.contains("buffered_len: 12"), "{text}");
    }

    #[test]
    fn frame_partial_body_is_buffered_only_once() {
        let bytes = encode_frame(0, &[7; 100]).unwrap();
        let mut dec = FrameDecoder::new();
        assert!(dec.decode_all(&bytes[..50]).unwrap().is_empty());
        assert!(dec.has_partial());
        assert_eq!(dec.buffered_len(), 50);
        let frames = dec.decode_all(&bytes[50..]).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(!dec.has_partial());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any split of a stream of valid frames decodes to the same frames.
        #[test]
        fn frame_any_split_decodes_identically(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 4..600), 0..12),
            first_seqno in any::<i32>(),
            mut cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut enc = FrameEncoder::with_seqno(first_seqno);
            let mut bytes = Vec::new();
            for p in &payloads {
                enc.encode(p, &mut bytes).unwrap();
            }
            let mut points: Vec<usize> =
                cuts.drain(..).map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut dec = FrameDecoder::with_seqno(first_seqno);
            let mut frames = Vec::new();
            let mut prev = 0;
            for cut in points.into_iter().chain(std::iter::once(bytes.len())) {
                frames.extend(dec.decode_all(&bytes[prev..cut]).unwrap());
                prop_assert!(dec.buffered_len() <= FRAME_HEADER_LEN + 600);
                prev = cut;
            }
            prop_assert!(!dec.has_partial());
            prop_assert_eq!(frames.len(), payloads.len());
            for (i, (f, p)) in frames.iter().zip(&payloads).enumerate() {
                prop_assert_eq!(f.seqno, first_seqno.wrapping_add(i as i32));
                prop_assert_eq!(&f.payload, p);
            }
        }

        /// Arbitrary bytes never panic the decoder, and once failed it stays failed.
        #[test]
        fn frame_decoder_never_panics(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
        ) {
            let mut dec = FrameDecoder::new();
            let mut failed: Option<FrameError> = None;
            for c in &chunks {
                match dec.decode_all(c) {
                    Ok(_) => prop_assert!(failed.is_none()),
                    Err(e) => {
                        if let Some(prev) = &failed {
                            prop_assert_eq!(prev, &e);
                        }
                        failed = Some(e);
                    }
                }
            }
        }
    }
}
