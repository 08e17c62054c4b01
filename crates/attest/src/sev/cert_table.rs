//! The SEV-SNP extended report's certificate table (configfs-tsm `auxblob`).

use super::SevError;

/// GUIDs of the SEV-SNP extended-report certificate table (RFC 4122 byte order, as the
/// GHCB specification and the `sev` crate use them).
pub const GUID_VCEK: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
/// GUID of the VLEK entry.
pub const GUID_VLEK: [u8; 16] = [
    0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];
/// GUID of the ASK entry.
pub const GUID_ASK: [u8; 16] = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
/// GUID of the ARK entry.
pub const GUID_ARK: [u8; 16] = [
    0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
];
const CERT_TABLE_ENTRY_LEN: usize = 24;

/// The certificates found in an SEV-SNP certificate table (configfs-tsm `auxblob`, or the
/// extended report's certificate buffer). Entries with other GUIDs are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SevCertTable {
    /// VCEK certificate, DER.
    pub vcek: Option<Vec<u8>>,
    /// VLEK certificate, DER.
    pub vlek: Option<Vec<u8>>,
    /// ASK certificate, DER.
    pub ask: Option<Vec<u8>>,
    /// ARK certificate, DER.
    pub ark: Option<Vec<u8>>,
}

/// Parse a certificate table: entries of `{ guid: [u8; 16], offset: u32 LE, length: u32
/// LE }` ended by an all-zero GUID, offsets relative to the start of `aux`. Bounded;
/// malformed input is an error, never a panic.
pub fn parse_cert_table(aux: &[u8]) -> Result<SevCertTable, SevError> {
    let bad = |r: String| SevError::CertTable(r);
    let mut table = SevCertTable::default();
    let mut pos = 0usize;
    let mut ranges = Vec::new();
    loop {
        let entry = aux
            .get(pos..pos + CERT_TABLE_ENTRY_LEN)
            .ok_or_else(|| bad(format!("no terminating entry within {} bytes", aux.len())))?;
        pos += CERT_TABLE_ENTRY_LEN;
        let guid: [u8; 16] = entry[..16].try_into().unwrap_or_default();
        if guid == [0; 16] {
            break;
        }
        let offset = u32::from_le_bytes(entry[16..20].try_into().unwrap_or_default()) as usize;
        let len = u32::from_le_bytes(entry[20..24].try_into().unwrap_or_default()) as usize;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= aux.len() && len > 0)
            .ok_or_else(|| {
                bad(format!(
                    "entry {} at offset {offset} length {len} outside the {}-byte table",
                    ranges.len(),
                    aux.len()
                ))
            })?;
        ranges.push((guid, offset, end));
    }
    for (guid, offset, end) in ranges {
        if offset < pos {
            return Err(bad(format!(
                "certificate at offset {offset} overlaps the {pos}-byte entry list"
            )));
        }
        let slot = match guid {
            GUID_VCEK => &mut table.vcek,
            GUID_VLEK => &mut table.vlek,
            GUID_ASK => &mut table.ask,
            GUID_ARK => &mut table.ark,
            _ => continue,
        };
        if slot.is_some() {
            return Err(bad(format!("duplicate entry {}", hex::encode(guid))));
        }
        *slot = Some(aux[offset..end].to_vec());
    }
    Ok(table)
}

/// Build a certificate table (the inverse of [`parse_cert_table`]; tests, fuzz seeds).
pub fn build_cert_table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let header = (entries.len() + 1) * CERT_TABLE_ENTRY_LEN;
    let mut out = Vec::new();
    let mut offset = header;
    for (guid, data) in entries {
        out.extend_from_slice(guid);
        out.extend_from_slice(&u32::try_from(offset).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
        offset += data.len();
    }
    out.extend_from_slice(&[0; CERT_TABLE_ENTRY_LEN]);
    for (_, data) in entries {
        out.extend_from_slice(data);
    }
    out
}
