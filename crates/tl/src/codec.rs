//! The TL binary codec: little-endian integers, length-prefixed padded strings, boxed and
//! bare objects. Decoding never panics and never allocates more than the input can fill.

use std::fmt;

/// Constructor id of `boolTrue`.
pub const BOOL_TRUE: u32 = 0x9972_75b5;
/// Constructor id of `boolFalse`.
pub const BOOL_FALSE: u32 = 0xbc79_9737;

/// What went wrong while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ended before a value was complete.
    UnexpectedEnd {
        /// Bytes the value needed.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A constructor id that the expected type does not have.
    UnknownConstructor {
        /// The id found.
        id: u32,
        /// The type expected.
        expected: &'static str,
    },
    /// A `Bool` that is neither `boolTrue` nor `boolFalse`.
    InvalidBool {
        /// The id found.
        id: u32,
    },
    /// A string field that is not UTF-8.
    InvalidUtf8,
    /// A string or vector length larger than the remaining input allows.
    LengthTooLarge {
        /// The declared length.
        len: u64,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A negative vector length.
    NegativeLength {
        /// The declared length.
        len: i32,
    },
    /// A string length written in a longer form than needed, or non-zero padding.
    NonCanonical {
        /// Which encoding was not canonical.
        what: &'static str,
    },
    /// Bytes left after a value that must fill its input exactly.
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// A value that violates a rule of the schema (e.g. nesting too deep).
    Invalid {
        /// The rule broken.
        what: String,
    },
}

/// One step of the path to where a decoding error happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Inside `field` of `constructor` (e.g. `client.runQueryEx`, `timeout`).
    Field(&'static str, &'static str),
    /// Inside element `index` of a vector.
    Index(usize),
    /// While decoding a value of this type (e.g. `tcp.Packet`), before its constructor was known.
    Type(&'static str),
}

/// A decoding error: what, at which byte offset, and inside which constructor and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Byte offset in the input where the problem was found.
    pub offset: usize,
    /// Innermost first: where the decoder was.
    pub context: Vec<Location>,
}

impl Error {
    /// An error of `kind` at byte `offset`, with no context yet.
    pub fn new(kind: ErrorKind, offset: usize) -> Error {
        Error {
            kind,
            offset,
            context: Vec::new(),
        }
    }

    /// Record that the error happened while decoding `field` of `constructor`.
    #[must_use]
    pub fn in_field(mut self, constructor: &'static str, field: &'static str) -> Error {
        self.context.push(Location::Field(constructor, field));
        self
    }

    /// Record that the error happened in element `index` of a vector.
    #[must_use]
    pub fn in_element(mut self, index: usize) -> Error {
        self.context.push(Location::Index(index));
        self
    }

    /// Record the type being decoded, when nothing names the place yet.
    #[must_use]
    pub fn in_type(mut self, type_name: &'static str) -> Error {
        if self.context.is_empty() {
            self.context.push(Location::Type(type_name));
        }
        self
    }

    /// The innermost constructor (or type) the error happened in, if any.
    pub fn constructor(&self) -> Option<&'static str> {
        self.context.iter().find_map(|l| match l {
            Location::Field(c, _) | Location::Type(c) => Some(*c),
            Location::Index(_) => None,
        })
    }

    /// The path, outermost first, e.g. `http.response.headers[2] > http.header.value`.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for loc in self.context.iter().rev() {
            match loc {
                Location::Field(ctor, field) => {
                    if !out.is_empty() {
                        out.push_str(" > ");
                    }
                    out.push_str(ctor);
                    out.push('.');
                    out.push_str(field);
                }
                Location::Index(i) => out.push_str(&format!("[{i}]")),
                Location::Type(t) => {
                    if !out.is_empty() {
                        out.push_str(" > ");
                    }
                    out.push_str(t);
                }
            }
        }
        out
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::UnexpectedEnd { needed, remaining } => {
                write!(
                    f,
                    "unexpected end of input (need {needed} bytes, {remaining} left)"
                )
            }
            ErrorKind::UnknownConstructor { id, expected } => {
                write!(f, "unknown constructor id {id:08x} for {expected}")
            }
            ErrorKind::InvalidBool { id } => {
                write!(
                    f,
                    "invalid Bool: constructor id {id:08x} is neither boolTrue nor boolFalse"
                )
            }
            ErrorKind::InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            ErrorKind::LengthTooLarge { len, remaining } => {
                write!(f, "length {len} exceeds the remaining {remaining} bytes")
            }
            ErrorKind::NegativeLength { len } => write!(f, "negative vector length {len}"),
            ErrorKind::NonCanonical { what } => write!(f, "non-canonical encoding: {what}"),
            ErrorKind::TrailingBytes { count } => write!(f, "{count} trailing bytes after value"),
            ErrorKind::Invalid { what } => f.write_str(what),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.context.is_empty() {
            write!(f, "{} at offset {}", self.kind, self.offset)
        } else {
            write!(
                f,
                "{}: {} at offset {}",
                self.path(),
                self.kind,
                self.offset
            )
        }
    }
}

impl std::error::Error for Error {}

/// Result of decoding.
pub type Result<T> = std::result::Result<T, Error>;

/// A cursor over TL-encoded input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Current offset from the start of the input.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether the whole input was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Error unless the whole input was consumed.
    pub fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(Error::new(ErrorKind::TrailingBytes { count }, self.pos)),
        }
    }

    /// An error of `kind` at the current offset.
    pub fn err(&self, kind: ErrorKind) -> Error {
        Error::new(kind, self.pos)
    }

    /// The next `n` bytes as they are.
    pub fn read_raw(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.err(ErrorKind::UnexpectedEnd {
                needed: n,
                remaining: self.remaining(),
            }));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let raw = self.read_raw(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(raw);
        Ok(out)
    }

    /// A little-endian `int`.
    pub fn read_i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.read_array()?))
    }

    /// A little-endian `int` read as unsigned (constructor ids, `#` flags).
    pub fn read_u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.read_array()?))
    }

    /// A little-endian `long`.
    pub fn read_i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.read_array()?))
    }

    /// A little-endian `double`.
    pub fn read_f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.read_array()?))
    }

    /// An `int128`, as raw bytes.
    pub fn read_int128(&mut self) -> Result<[u8; 16]> {
        self.read_array()
    }

    /// An `int256`, as raw bytes.
    pub fn read_int256(&mut self) -> Result<[u8; 32]> {
        self.read_array()
    }

    /// Peek the next constructor id without consuming it.
    pub fn peek_u32(&self) -> Option<u32> {
        let raw = self.buf.get(self.pos..self.pos + 4)?;
        Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    /// A boxed `Bool`.
    pub fn read_bool(&mut self) -> Result<bool> {
        let start = self.pos;
        match self.read_u32()? {
            BOOL_TRUE => Ok(true),
            BOOL_FALSE => Ok(false),
            id => Err(Error::new(ErrorKind::InvalidBool { id }, start)),
        }
    }

    /// A TL `bytes`/`string` value: length prefix, data, zero padding to 4 bytes.
    pub fn read_bytes_ref(&mut self) -> Result<&'a [u8]> {
        let start = self.pos;
        let [first] = self.read_array::<1>()?;
        let (len, header) = match first {
            0..=253 => (first as u64, 1usize),
            254 => {
                let b = self.read_raw(3)?;
                let len = u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16;
                if len < 254 {
                    return Err(Error::new(
                        ErrorKind::NonCanonical {
                            what: "short string with long length prefix",
                        },
                        start,
                    ));
                }
                (len, 4)
            }
            255 => {
                let b = self.read_raw(7)?;
                let mut len = 0u64;
                for (i, byte) in b.iter().enumerate() {
                    len |= u64::from(*byte) << (8 * i);
                }
                if len < (1 << 24) {
                    return Err(Error::new(
                        ErrorKind::NonCanonical {
                            what: "string with oversized length prefix",
                        },
                        start,
                    ));
                }
                (len, 8)
            }
        };
        if len > self.remaining() as u64 {
            return Err(Error::new(
                ErrorKind::LengthTooLarge {
                    len,
                    remaining: self.remaining(),
                },
                start,
            ));
        }
        let len = len as usize;
        let data = self.read_raw(len)?;
        let pad = (4 - (header + len) % 4) % 4;
        let padding = self.read_raw(pad)?;
        if padding.iter().any(|b| *b != 0) {
            return Err(Error::new(
                ErrorKind::NonCanonical {
                    what: "non-zero string padding",
                },
                start,
            ));
        }
        Ok(data)
    }

    /// A TL `bytes` value, copied.
    pub fn read_bytes(&mut self) -> Result<Vec<u8>> {
        Ok(self.read_bytes_ref()?.to_vec())
    }

    /// A TL `string` that must be UTF-8.
    pub fn read_string(&mut self) -> Result<String> {
        let start = self.pos;
        let raw = self.read_bytes_ref()?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(Error::new(ErrorKind::InvalidUtf8, start)),
        }
    }

    /// A `string` holding human-readable text from a peer (error messages, debug output):
    /// invalid UTF-8 is replaced rather than rejected, as peers may send any bytes there.
    pub fn read_string_lossy(&mut self) -> Result<String> {
        Ok(String::from_utf8_lossy(self.read_bytes_ref()?).into_owned())
    }

    /// A vector length, bounded so that `len * min_element_size` fits in the input.
    pub fn read_vector_len(&mut self, min_element_size: usize) -> Result<usize> {
        let start = self.pos;
        let len = self.read_i32()?;
        if len < 0 {
            return Err(Error::new(ErrorKind::NegativeLength { len }, start));
        }
        let len = len as usize;
        let min_element_size = min_element_size.max(1);
        if len.saturating_mul(min_element_size) > self.remaining() {
            return Err(Error::new(
                ErrorKind::LengthTooLarge {
                    len: len as u64,
                    remaining: self.remaining(),
                },
                start,
            ));
        }
        Ok(len)
    }

    /// Run `read` for `field` of `constructor`, adding that place to any error.
    pub fn field<T>(
        &mut self,
        constructor: &'static str,
        field: &'static str,
        read: impl FnOnce(&mut Reader<'a>) -> Result<T>,
    ) -> Result<T> {
        read(self).map_err(|e| e.in_field(constructor, field))
    }

    /// A bare vector whose elements take at least `min_element_size` bytes each (bounds the
    /// length by the input left), each read by `read`.
    pub fn read_vector<T>(
        &mut self,
        min_element_size: usize,
        mut read: impl FnMut(&mut Reader<'a>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let len = self.read_vector_len(min_element_size)?;
        let mut out = Vec::with_capacity(len);
        for i in 0..len {
            out.push(read(self).map_err(|e| e.in_element(i))?);
        }
        Ok(out)
    }
}

/// Writing primitives onto a `Vec<u8>`.
pub mod write {
    use super::{BOOL_FALSE, BOOL_TRUE};

    /// Writes an `int`.
    pub fn i32(out: &mut Vec<u8>, v: i32) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an unsigned 32-bit word (constructor ids, `#` flags).
    pub fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes a `long`.
    pub fn i64(out: &mut Vec<u8>, v: i64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes a `double`.
    pub fn f64(out: &mut Vec<u8>, v: f64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes `v` as it is.
    pub fn raw(out: &mut Vec<u8>, v: &[u8]) {
        out.extend_from_slice(v);
    }

    /// Writes a boxed `Bool`.
    pub fn bool(out: &mut Vec<u8>, v: bool) {
        u32(out, if v { BOOL_TRUE } else { BOOL_FALSE });
    }

    /// A TL `bytes`/`string`: the shortest length prefix, the data, zero padding.
    pub fn bytes(out: &mut Vec<u8>, v: &[u8]) {
        let len = v.len();
        let header = if len < 254 {
            out.push(len as u8);
            1
        } else if len < (1 << 24) {
            out.push(254);
            out.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
            4
        } else {
            out.push(255);
            out.extend_from_slice(&(len as u64).to_le_bytes()[..7]);
            8
        };
        out.extend_from_slice(v);
        let pad = (4 - (header + len) % 4) % 4;
        out.extend(std::iter::repeat_n(0u8, pad));
    }

    /// Writes a vector's element count.
    pub fn vector_len(out: &mut Vec<u8>, len: usize) {
        // Frames are at most 16 MiB, so a vector that is sent never has 2^31 elements.
        i32(out, i32::try_from(len).unwrap_or(i32::MAX));
    }
}

/// Size in bytes of a TL `bytes` value of `len` data bytes, padding included.
pub fn bytes_len(len: usize) -> usize {
    let header = if len < 254 {
        1
    } else if len < (1 << 24) {
        4
    } else {
        8
    };
    (header + len).div_ceil(4) * 4
}

/// A constructor with a fixed id and name.
pub trait Identifiable {
    /// The constructor id.
    const CONSTRUCTOR_ID: u32;
    /// Full TL name, e.g. `client.runQueryEx`.
    const NAME: &'static str;
}

/// Encoding of a bare constructor: its fields only.
pub trait BareWrite {
    /// Appends the fields.
    fn write_bare(&self, out: &mut Vec<u8>);
}

/// Decoding of a bare constructor.
pub trait BareRead: Sized {
    /// Reads the fields.
    fn read_bare(r: &mut Reader<'_>) -> Result<Self>;
}

/// Boxed encoding: constructor id, then fields.
pub trait TlWrite {
    /// Appends the constructor id and fields.
    fn write_to(&self, out: &mut Vec<u8>);

    /// The boxed encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

/// Boxed decoding.
pub trait TlRead: Sized {
    /// TL name of the type (`tcp.Packet`) or constructor (`tcp.query`), for error messages.
    const TYPE_NAME: &'static str;

    /// Reads the constructor id and fields.
    fn read_from(r: &mut Reader<'_>) -> Result<Self>;

    /// Decode a value that must fill `bytes` exactly.
    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let value = Self::read_from(&mut r)?;
        r.finish().map_err(|e| e.in_type(Self::TYPE_NAME))?;
        Ok(value)
    }
}

/// A TL function: its boxed encoding is the query, `Return` the answer.
pub trait TlFunction: TlWrite {
    /// The answer's type.
    type Return: TlRead;
}

/// The constructor id at the start of `bytes`, if there are four bytes.
pub fn peek_constructor(bytes: &[u8]) -> Option<u32> {
    Reader::new(bytes).peek_u32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_lengths_and_padding() {
        for len in [0usize, 1, 2, 3, 4, 250, 253, 254, 255, 1000, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            write::bytes(&mut out, &data);
            assert_eq!(out.len() % 4, 0, "len {len}");
            assert_eq!(out.len(), bytes_len(len));
            let mut r = Reader::new(&out);
            assert_eq!(r.read_bytes().unwrap(), data);
            r.finish().unwrap();
        }
    }

    #[test]
    fn known_string_encodings() {
        let mut out = Vec::new();
        write::bytes(&mut out, b"abc");
        assert_eq!(out, [3, b'a', b'b', b'c']);
        out.clear();
        write::bytes(&mut out, b"abcd");
        assert_eq!(out, [4, b'a', b'b', b'c', b'd', 0, 0, 0]);
        out.clear();
        write::bytes(&mut out, &[7u8; 254]);
        assert_eq!(&out[..4], &[254, 254, 0, 0]);
        assert_eq!(out.len(), 4 + 256);
    }

    #[test]
    fn string_rejections() {
        // Length larger than input.
        let err = Reader::new(&[10, 1, 2, 3]).read_bytes().unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::LengthTooLarge { len: 10, .. }),
            "{err}"
        );
        // Long form for a short string.
        let err = Reader::new(&[254, 3, 0, 0, 1, 2, 3, 0])
            .read_bytes()
            .unwrap_err();
        assert!(matches!(err.kind, ErrorKind::NonCanonical { .. }), "{err}");
        // Non-zero padding.
        let err = Reader::new(&[1, 9, 1, 0]).read_bytes().unwrap_err();
        assert!(matches!(err.kind, ErrorKind::NonCanonical { .. }), "{err}");
        // Huge 7-byte length.
        let err = Reader::new(&[255, 255, 255, 255, 255, 255, 255, 127])
            .read_bytes()
            .unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::LengthTooLarge { .. }),
            "{err}"
        );
        // Invalid UTF-8 in a string.
        let err = Reader::new(&[2, 0xff, 0xfe, 0]).read_string().unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidUtf8);
    }

    #[test]
    fn vector_length_is_bounded_by_input() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]);
        let err = r.read_vector(4, |r| r.read_i32()).unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::LengthTooLarge { .. }),
            "{err}"
        );
        let err = Reader::new(&[0xff, 0xff, 0xff, 0xff])
            .read_vector(4, |r| r.read_i32())
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NegativeLength { len: -1 });
    }

    #[test]
    fn bool_values() {
        assert!(Reader::new(&BOOL_TRUE.to_le_bytes()).read_bool().unwrap());
        assert!(!Reader::new(&BOOL_FALSE.to_le_bytes()).read_bool().unwrap());
        let err = Reader::new(&[1, 2, 3, 4]).read_bool().unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidBool { id: 0x0403_0201 });
    }

    #[test]
    fn error_display_names_path_and_offset() {
        let err = Error::new(
            ErrorKind::UnexpectedEnd {
                needed: 8,
                remaining: 3,
            },
            40,
        )
        .in_field("tokensUsed", "total_tokens_used")
        .in_field("client.queryFinalInfo", "tokens_used");
        assert_eq!(
            err.to_string(),
            "client.queryFinalInfo.tokens_used > tokensUsed.total_tokens_used: unexpected end of \
             input (need 8 bytes, 3 left) at offset 40"
        );
        assert_eq!(err.constructor(), Some("tokensUsed"));
        let err = Error::new(ErrorKind::InvalidUtf8, 9)
            .in_field("http.header", "value")
            .in_element(2)
            .in_field("http.response", "headers");
        assert_eq!(
            err.to_string(),
            "http.response.headers[2] > http.header.value: string is not valid UTF-8 at offset 9"
        );
        let err = Error::new(ErrorKind::TrailingBytes { count: 4 }, 12).in_type("tcp.Packet");
        assert_eq!(
            err.to_string(),
            "tcp.Packet: 4 trailing bytes after value at offset 12"
        );
    }
}
