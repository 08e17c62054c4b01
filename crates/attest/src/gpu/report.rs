//! The NVIDIA attestation report: an SPDM 1.1 `GET_MEASUREMENTS` request followed by the
//! GPU's signed `MEASUREMENTS` response (DMTF DSP0274 §10.11), as the driver returns it.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! request  (37 bytes): version | code 0xE0 | param1 | param2 | nonce[32] | slot id
//! response:            version | code 0x60 | param1 | param2 | number of blocks (1)
//!                      | record length (3) | measurement record | nonce[32]
//!                      | opaque length (2) | opaque data | signature (96: P-384 r‖s)
//! block:               index (1) | spec (1, DMTF = 1) | size (2)
//!                      | value type (1) | value size (2) | value
//! opaque field:        type (2) | size (2) | data
//! ```
//!
//! Parsing is bounded by the input: every length is checked against what is left, nothing
//! is allocated from a declared length before it is known to fit, and no input panics.

use std::collections::BTreeMap;

/// SPDM version 1.1, the one Hopper speaks.
pub const SPDM_VERSION_1_1: u8 = 0x11;
/// `GET_MEASUREMENTS` request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// `MEASUREMENTS` response code.
pub const MEASUREMENTS: u8 = 0x60;
/// Length of the request with a signature requested (it carries the slot id).
pub const REQUEST_LEN: usize = 37;
/// Length of the ECDSA P-384 signature (raw r‖s).
pub const SIGNATURE_LEN: usize = 96;
/// Largest report accepted (a Hopper report is about 4 KiB).
pub const MAX_REPORT_LEN: usize = 64 * 1024;
/// DMTF measurement specification bit.
const DMTF_SPEC: u8 = 1;

/// NVIDIA's opaque-data field types this crate names.
pub mod field {
    /// Driver version, a NUL-terminated string.
    pub const DRIVER_VERSION: u16 = 3;
    /// GPU information.
    pub const GPU_INFO: u16 = 4;
    /// SKU.
    pub const SKU: u16 = 5;
    /// VBIOS version, 8 bytes little-endian.
    pub const VBIOS_VERSION: u16 = 6;
    /// NVDEC0 status: 0xAA enabled, 0x55 disabled.
    pub const NVDEC0_STATUS: u16 = 11;
    /// Board id.
    pub const BOARD_ID: u16 = 14;
    /// Chip SKU.
    pub const CHIP_SKU: u16 = 15;
    /// Project.
    pub const PROJECT: u16 = 17;
    /// Project SKU.
    pub const PROJECT_SKU: u16 = 18;
    /// Firmware id: the 48-byte digest the leaf certificate also carries.
    pub const FWID: u16 = 20;
}

/// Why a report could not be parsed. Always the peer's fault: the bytes are what it sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The report is not hex text.
    #[error("the report is not hex: {0}")]
    Hex(String),
    /// Longer than [`MAX_REPORT_LEN`].
    #[error("report of {0} bytes is larger than the {MAX_REPORT_LEN}-byte limit")]
    TooLarge(usize),
    /// The input ended inside a field.
    #[error("report truncated in {0}")]
    Truncated(&'static str),
    /// A header byte has a value this verifier does not accept.
    #[error("{field} is {got:#04x}, expected {want:#04x}")]
    Header {
        /// Which header field.
        field: &'static str,
        /// Its value.
        got: u8,
        /// The value required.
        want: u8,
    },
    /// The request does not ask for a signed response.
    #[error("the request does not ask for a signature")]
    Unsigned,
    /// The response announces no measurement block.
    #[error("no measurement blocks")]
    NoBlocks,
    /// A measurement block is malformed.
    #[error("measurement block {index}: {reason}")]
    Block {
        /// Its SPDM index.
        index: u8,
        /// What is wrong.
        reason: &'static str,
    },
    /// The record holds a different number of blocks, or bytes after the last one.
    #[error("measurement record: {0}")]
    Record(&'static str),
    /// An opaque-data field is malformed.
    #[error("opaque data: {0}")]
    Opaque(&'static str),
    /// What follows the opaque data is not one signature.
    #[error("signature of {0} bytes, expected {SIGNATURE_LEN}")]
    SignatureLength(usize),
}

/// One DMTF measurement block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock<'a> {
    /// SPDM index (1-based; NVIDIA's RIM index is this minus one).
    pub index: u8,
    /// DMTF value type.
    pub value_type: u8,
    /// The digest.
    pub value: &'a [u8],
}

/// A parsed report, borrowing the input.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The request (37 bytes).
    pub request: &'a [u8],
    /// The response including its signature.
    pub response: &'a [u8],
    /// Request param2: which measurements were asked for (0xFF: all).
    pub requested: u8,
    /// The nonce the verifier put in the request.
    pub request_nonce: [u8; 32],
    /// The nonce the GPU put in its response.
    pub response_nonce: [u8; 32],
    /// Measurement blocks by SPDM index.
    pub blocks: BTreeMap<u8, MeasurementBlock<'a>>,
    /// NVIDIA opaque fields by type, in order of appearance (a repeated type keeps the first).
    pub opaque: BTreeMap<u16, &'a [u8]>,
    /// The signature, raw r‖s.
    pub signature: &'a [u8],
}

impl<'a> Report<'a> {
    /// What the GPU signed: the request and the response without its signature.
    pub fn signed_parts(&self) -> [&'a [u8]; 2] {
        let end = self.response.len().saturating_sub(SIGNATURE_LEN);
        [self.request, self.response.get(..end).unwrap_or_default()]
    }

    /// The driver version from the opaque data, without its terminating NULs.
    pub fn driver_version(&self) -> Option<String> {
        self.text_field(field::DRIVER_VERSION)
    }

    /// The VBIOS version as NVIDIA writes it (`96.00.5e.00.01`): of the 8 little-endian
    /// bytes, the low four (most significant first) then the fifth.
    pub fn vbios_version(&self) -> Option<String> {
        let raw = self.opaque.get(&field::VBIOS_VERSION)?;
        if raw.len() != 8 {
            return None;
        }
        let order = [3usize, 2, 1, 0, 4];
        let parts: Vec<String> = order
            .iter()
            .filter_map(|&i| raw.get(i).map(|b| format!("{b:02x}")))
            .collect();
        Some(parts.join("."))
    }

    /// A NUL-terminated text field, lossily decoded.
    pub fn text_field(&self, ty: u16) -> Option<String> {
        let raw = self.opaque.get(&ty)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned())
    }

    /// Whether NVDEC0 is reported disabled (its measurement, RIM index 35, is then skipped,
    /// as NVIDIA's verifier does).
    pub fn nvdec0_disabled(&self) -> bool {
        self.opaque
            .get(&field::NVDEC0_STATUS)
            .is_some_and(|v| v.first() == Some(&0x55))
    }
}

/// Decodes the hex text of a report file (surrounding whitespace ignored).
pub fn decode_hex(text: &[u8]) -> Result<Vec<u8>, ReportError> {
    let trimmed = text.trim_ascii();
    if trimmed.len() > 2 * MAX_REPORT_LEN {
        return Err(ReportError::TooLarge(trimmed.len() / 2));
    }
    hex::decode(trimmed).map_err(|e| ReportError::Hex(e.to_string()))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ReportError> {
        if self.buf.len() < n {
            return Err(ReportError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ReportError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }
    fn le(&mut self, n: usize, what: &'static str) -> Result<usize, ReportError> {
        let b = self.take(n, what)?;
        Ok(b.iter()
            .rev()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
    }
    fn nonce(&mut self, what: &'static str) -> Result<[u8; 32], ReportError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32, what)?);
        Ok(out)
    }
}

fn expect(field: &'static str, got: u8, want: u8) -> Result<(), ReportError> {
    if got == want {
        Ok(())
    } else {
        Err(ReportError::Header { field, got, want })
    }
}

/// Parses a binary report (request ‖ response).
pub fn parse(bytes: &[u8]) -> Result<Report<'_>, ReportError> {
    if bytes.len() > MAX_REPORT_LEN {
        return Err(ReportError::TooLarge(bytes.len()));
    }
    if bytes.len() < REQUEST_LEN {
        return Err(ReportError::Truncated("request"));
    }
    let (request, response) = bytes.split_at(REQUEST_LEN);

    let mut r = Reader { buf: request };
    expect("request version", r.u8("request")?, SPDM_VERSION_1_1)?;
    expect("request code", r.u8("request")?, GET_MEASUREMENTS)?;
    let param1 = r.u8("request")?;
    if param1 & 1 == 0 {
        return Err(ReportError::Unsigned);
    }
    let requested = r.u8("request")?;
    let request_nonce = r.nonce("request nonce")?;
    let _slot = r.u8("request slot")?;

    let mut r = Reader { buf: response };
    expect(
        "response version",
        r.u8("response header")?,
        SPDM_VERSION_1_1,
    )?;
    expect("response code", r.u8("response header")?, MEASUREMENTS)?;
    let _param1 = r.u8("response header")?;
    let _param2 = r.u8("response header")?;
    let count = r.u8("response header")?;
    if count == 0 {
        return Err(ReportError::NoBlocks);
    }
    let record_len = r.le(3, "record length")?;
    let record = r.take(record_len, "measurement record")?;
    let blocks = parse_record(record, count)?;
    let response_nonce = r.nonce("response nonce")?;
    let opaque_len = r.le(2, "opaque length")?;
    let opaque_raw = r.take(opaque_len, "opaque data")?;
    let opaque = parse_opaque(opaque_raw)?;
    let signature = r.buf;
    if signature.len() != SIGNATURE_LEN {
        return Err(ReportError::SignatureLength(signature.len()));
    }
    Ok(Report {
        request,
        response,
        requested,
        request_nonce,
        response_nonce,
        blocks,
        opaque,
        signature,
    })
}

fn parse_record(
    record: &[u8],
    count: u8,
) -> Result<BTreeMap<u8, MeasurementBlock<'_>>, ReportError> {
    let mut r = Reader { buf: record };
    let mut blocks = BTreeMap::new();
    for _ in 0..count {
        let index = r.u8("block header")?;
        let spec = r.u8("block header")?;
        if spec != DMTF_SPEC {
            return Err(ReportError::Block {
                index,
                reason: "not a DMTF measurement",
            });
        }
        let size = r.le(2, "block header")?;
        let body = r.take(size, "block body")?;
        let mut b = Reader { buf: body };
        let value_type = b.u8("block value header")?;
        let value_size = b.le(2, "block value header")?;
        let value = b.take(value_size, "block value")?;
        if !b.buf.is_empty() {
            return Err(ReportError::Block {
                index,
                reason: "block size disagrees with its value size",
            });
        }
        let block = MeasurementBlock {
            index,
            value_type,
            value,
        };
        if blocks.insert(index, block).is_some() {
            return Err(ReportError::Block {
                index,
                reason: "index repeated",
            });
        }
    }
    if !r.buf.is_empty() {
        return Err(ReportError::Record("bytes after the last announced block"));
    }
    Ok(blocks)
}

fn parse_opaque(raw: &[u8]) -> Result<BTreeMap<u16, &[u8]>, ReportError> {
    let mut r = Reader { buf: raw };
    let mut out = BTreeMap::new();
    while !r.buf.is_empty() {
        let ty = u16::try_from(r.le(2, "opaque field type")?)
            .map_err(|_| ReportError::Opaque("field type"))?;
        let len = r.le(2, "opaque field size")?;
        let data = r
            .take(len, "opaque field")
            .map_err(|_| ReportError::Opaque("field longer than the opaque data"))?;
        out.entry(ty).or_insert(data);
    }
    Ok(out)
}
