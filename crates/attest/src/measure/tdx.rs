//! TDX: MRTD from the TDVF metadata of the firmware, RTMR0–3 from the boot event log.
//!
//! What a TD reports, and where each value comes from:
//!
//! * **MRTD** is computed by the TDX module while the host builds the TD: every
//!   `TDH.MEM.PAGE.ADD` (one per 4 KiB page of each TDVF section that is not `PAGE.AUG`) and
//!   every `TDH.MR.EXTEND` (one per 256-byte chunk of each section with the `MR.EXTEND`
//!   attribute, followed by those 256 bytes) feeds a 128-byte record into one SHA-384. It
//!   depends only on the firmware image ([`parse_tdvf`], [`mrtd`]) and on the order in which
//!   the host adds pages ([`PageAddOrder`]).
//! * **RTMR0** is extended by the firmware with platform configuration: the TD HOB the VMM
//!   built, the configuration firmware volume (CFV), the Secure Boot variables, a
//!   separator, QEMU's ACPI tables and table loader, and the boot variables. Most of it
//!   cannot be derived from files: the ACPI tables and boot variables depend on the VMM
//!   version and its command line (devices, vCPUs, memory). [`Rtmr0Inputs`] takes them as
//!   bytes captured from a real TD; [`qemu_td_hob`] rebuilds QEMU's TD HOB and
//!   [`cfv_digest`] hashes the firmware's own CFV.
//! * **RTMR1** holds the boot application OVMF starts (the kernel or UKI given to QEMU with
//!   `-kernel`, measured as its PE/COFF Authenticode SHA-384, [`authenticode_sha384`]) and
//!   the fixed EFI action events around `ExitBootServices` ([`rtmr1_events`]).
//! * **RTMR2** holds the command line as OVMF passes it to the kernel (UTF-16LE with its
//!   NUL terminator, [`cmdline_event`]) and the initrd ([`rtmr2_events`]).
//! * **RTMR3** is left to the guest: Cocoon extends it with the measured role
//!   configuration using [`rtmr_extend`].
//!
//! Every function here is pure (bytes in, digests out). A firmware or kernel file is
//! untrusted input: malformed images give a typed error ([`TdvfError`], [`PeError`],
//! [`KernelError`]), never a panic, and the work done is bounded by the input's length.
//!
//! The event sequences follow what OVMF and QEMU do as modelled by the independent
//! calculators tinfoilsh/tdx-measure and dstack-mr; the values match tdx-measure on the
//! vectors in `testvectors/measure/tdx/`, but none has been checked against a quote from
//! real TDX hardware here.

use sha2::{Digest, Sha384};

/// A SHA-384 digest: the size of MRTD, each RTMR, and each event digest.
pub type Digest384 = [u8; 48];

const PAGE_SIZE: u64 = 0x1000;
const MR_EXTEND_CHUNK: usize = 0x100;
const OVMF_FOOTER_OFFSET: usize = 32;
const GUID_LEN: usize = 16;
const ENTRY_HEADER_LEN: usize = GUID_LEN + 2;
const DESCRIPTOR_LEN: usize = 16;
const SECTION_LEN: usize = 32;

/// At most this many TDVF sections are accepted (real TDVF images have fewer than 10).
pub const MAX_TDVF_SECTIONS: u32 = 64;
/// At most this many 4 KiB pages in all sections together (256 MiB): bounds the work of
/// [`mrtd`] on a hostile image. Real TDVF images describe a few MiB.
pub const MAX_TDVF_PAGES: u64 = 1 << 16;

/// `96b582de-1fb2-45f7-baea-a366c55a082d`: the footer of OVMF's GUIDed table, 32 bytes
/// before the end of the image (in its binary, mixed-endian form).
const OVMF_TABLE_FOOTER_GUID: [u8; 16] = guid(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// `e47a6535-984a-4798-865e-4685a7bf8ec2`: the table entry holding the TDVF metadata
/// offset (a `u32` counted back from the end of the image).
const TDX_METADATA_OFFSET_GUID: [u8; 16] = guid(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);

/// `8be4df61-93ca-11d2-aa0d-00e098032b8c`: `EFI_GLOBAL_VARIABLE` (SecureBoot, PK, KEK,
/// BootOrder, Boot####).
pub const EFI_GLOBAL_VARIABLE: [u8; 16] = guid(
    0x8be4_df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// `d719b2cb-3d3a-4596-a3bc-dad00e67656f`: `EFI_IMAGE_SECURITY_DATABASE` (db, dbx).
pub const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = guid(
    0xd719_b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// `605dab50-e046-4300-abb6-3dd810dd8b23`: shim's vendor GUID (SbatLevel, MokList…).
pub const SHIM_LOCK_GUID: [u8; 16] = guid(
    0x605d_ab50,
    0xe046,
    0x4300,
    [0xab, 0xb6, 0x3d, 0xd8, 0x10, 0xdd, 0x8b, 0x23],
);

/// The binary (EFI, mixed-endian) form of a GUID written `d1-d2-d3-d4`.
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> Digest384 {
    Sha384::digest(data).into()
}

/// Extends a TDX measurement register: `SHA-384(old || digest)`, as `TDG.MR.RTMR.EXTEND`
/// does. RTMRs start at 48 zero bytes.
pub fn rtmr_extend(old: &[u8; 48], digest: &[u8; 48]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(old);
    h.update(digest);
    h.finalize().into()
}

/// Replays an event log into a register that starts at zero: the value an RTMR holds after
/// these event digests were extended into it, in order.
pub fn rtmr_replay(events: &[Digest384]) -> Digest384 {
    events.iter().fold([0u8; 48], |mr, e| rtmr_extend(&mr, e))
}

// ---------------------------------------------------------------------------------------
// TDVF metadata

/// What a malformed firmware image is missing. The image is the caller's input (usually a
/// file from a distribution or a build), so every fault is the input's, not ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TdvfError {
    /// The image cannot hold OVMF's table footer.
    #[error("firmware image of {len} bytes is too short to hold the OVMF table footer")]
    TooShort {
        /// The image's length.
        len: usize,
    },
    /// The footer GUID is not 32 bytes before the end: not an OVMF/TDVF image.
    #[error("no OVMF GUIDed table footer at the end of the image (not an OVMF/TDVF image)")]
    NoFooter,
    /// The table's total length is smaller than its footer or runs past the image start.
    #[error("OVMF GUIDed table length {len} is out of range")]
    BadTableLength {
        /// The length the footer states.
        len: usize,
    },
    /// A table entry's length is smaller than its header or runs past the table.
    #[error("OVMF GUIDed table entry of length {len} is out of range")]
    BadEntryLength {
        /// The length the entry states.
        len: usize,
    },
    /// No TDX metadata entry in the table: the firmware was built without TDX support.
    #[error("the OVMF table has no TDX metadata entry (firmware built without TDX support)")]
    NoTdxMetadata,
    /// The TDX metadata entry is not 4 bytes, or its offset points outside the image.
    #[error("TDX metadata offset {offset:#x} does not point inside the image")]
    BadMetadataOffset {
        /// The offset from the end of the image.
        offset: u64,
    },
    /// The metadata descriptor does not start with `TDVF`.
    #[error("the TDX metadata descriptor has no TDVF signature")]
    BadSignature,
    /// A descriptor version other than 1.
    #[error("unsupported TDVF metadata version {0}")]
    UnsupportedVersion(u32),
    /// More sections than [`MAX_TDVF_SECTIONS`], none, or more than the descriptor's length
    /// or the image can hold.
    #[error(
        "TDVF descriptor: {count} sections do not fit (length {length}, at most {MAX_TDVF_SECTIONS})"
    )]
    BadSectionCount {
        /// The number of sections the descriptor states.
        count: u32,
        /// The descriptor's stated length in bytes.
        length: u32,
    },
    /// A section entry breaks a TDVF rule.
    #[error("TDVF section {index}: {fault}")]
    Section {
        /// The section's index in the descriptor.
        index: usize,
        /// What is wrong with it.
        fault: SectionFault,
    },
    /// The sections describe more than [`MAX_TDVF_PAGES`] pages in all.
    #[error("TDVF sections describe more than {MAX_TDVF_PAGES} pages")]
    TooManyPages,
}

/// What is wrong with one TDVF section entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SectionFault {
    /// A type outside 0–6.
    #[error("unknown section type {0}")]
    UnknownType(u32),
    /// Attribute bits other than MR.EXTEND and PAGE.AUG.
    #[error("unknown attribute bits {0:#x}")]
    UnknownAttributes(u32),
    /// The memory address or size is not a multiple of 4 KiB, or the size is zero.
    #[error("memory range {address:#x}+{size:#x} is not 4 KiB aligned or is empty")]
    Unaligned {
        /// The section's guest-physical address.
        address: u64,
        /// The section's memory size.
        size: u64,
    },
    /// The memory range wraps around the 64-bit address space.
    #[error("memory range overflows the address space")]
    AddressOverflow,
    /// More raw data than memory to hold it.
    #[error("raw data ({raw:#x}) larger than its memory ({memory:#x})")]
    RawLargerThanMemory {
        /// Raw data size.
        raw: u32,
        /// Memory size.
        memory: u64,
    },
    /// The raw data lies (partly) outside the image.
    #[error("raw data {offset:#x}+{size:#x} lies outside the image")]
    RawOutsideImage {
        /// Offset in the image.
        offset: u32,
        /// Size.
        size: u32,
    },
    /// A BFV or CFV without data, or a memory-only section (TD HOB, TempMem, PermMem) with
    /// data.
    #[error("{0:?} section with the wrong raw data size")]
    WrongRawSize(TdvfSectionType),
    /// MR.EXTEND together with PAGE.AUG (an augmented page is never measured), or on a TD HOB
    /// or TempMem section.
    #[error("{0:?} section with contradictory attributes")]
    WrongAttributes(TdvfSectionType),
}

/// The type of a TDVF section (TDVF design guide, table "TDVF_SECTION.Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdvfSectionType {
    /// 0: boot firmware volume (the code).
    Bfv,
    /// 1: configuration firmware volume (the UEFI variable store).
    Cfv,
    /// 2: the TD HOB the VMM writes.
    TdHob,
    /// 3: temporary memory for the firmware's early phase.
    TempMem,
    /// 4: permanent memory, added later by `TDH.MEM.PAGE.AUG`.
    PermMem,
    /// 5: a payload (kernel) the firmware launches.
    Payload,
    /// 6: the payload's parameters (command line).
    PayloadParam,
}

impl TdvfSectionType {
    fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            4 => Self::PermMem,
            5 => Self::Payload,
            6 => Self::PayloadParam,
            _ => return None,
        })
    }
}

/// Attribute bit 0: the section's content is measured into MRTD with `TDH.MR.EXTEND`.
pub const ATTR_MR_EXTEND: u32 = 1;
/// Attribute bit 1: the section is added with `TDH.MEM.PAGE.AUG` after boot, not
/// `TDH.MEM.PAGE.ADD` (so it is not in MRTD).
pub const ATTR_PAGE_AUG: u32 = 2;

/// One TDVF section entry (32 bytes in the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the section's raw data in the image.
    pub data_offset: u32,
    /// Size of the raw data in the image (0 for memory-only sections).
    pub raw_data_size: u32,
    /// Guest-physical address the section is loaded at (4 KiB aligned).
    pub memory_address: u64,
    /// Size of the section in guest memory (4 KiB aligned, at least `raw_data_size`).
    pub memory_data_size: u64,
    /// Its type.
    pub section_type: TdvfSectionType,
    /// [`ATTR_MR_EXTEND`] and [`ATTR_PAGE_AUG`].
    pub attributes: u32,
}

impl TdvfSection {
    /// Whether its content goes into MRTD through `TDH.MR.EXTEND`.
    pub fn mr_extend(&self) -> bool {
        self.attributes & ATTR_MR_EXTEND != 0
    }

    /// Whether it is added after boot with `TDH.MEM.PAGE.AUG` (so not in MRTD at all).
    pub fn page_aug(&self) -> bool {
        self.attributes & ATTR_PAGE_AUG != 0
    }

    /// Its number of 4 KiB pages in guest memory.
    pub fn pages(&self) -> u64 {
        self.memory_data_size / PAGE_SIZE
    }
}

/// The TDX metadata of a TDVF image: its sections in descriptor order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdvfMetadata {
    /// Offset of the `TDVF` descriptor in the image.
    pub descriptor_offset: usize,
    /// The sections, in the order the descriptor lists them (the order the VMM adds them).
    pub sections: Vec<TdvfSection>,
}

impl TdvfMetadata {
    /// The first section of a type, if any.
    pub fn section(&self, t: TdvfSectionType) -> Option<&TdvfSection> {
        self.sections.iter().find(|s| s.section_type == t)
    }
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Finds an entry of OVMF's GUIDed table (the table that ends 32 bytes before the end of
/// the image, read backwards from its footer, as QEMU reads it) and returns its data.
pub fn ovmf_table_entry<'a>(
    firmware: &'a [u8],
    wanted: &[u8; 16],
) -> Result<Option<&'a [u8]>, TdvfError> {
    let len = firmware.len();
    let footer_end = len
        .checked_sub(OVMF_FOOTER_OFFSET)
        .filter(|e| *e >= ENTRY_HEADER_LEN)
        .ok_or(TdvfError::TooShort { len })?;
    if firmware[footer_end - GUID_LEN..footer_end] != OVMF_TABLE_FOOTER_GUID {
        return Err(TdvfError::NoFooter);
    }
    let total = usize::from(
        le_u16(firmware, footer_end - ENTRY_HEADER_LEN).ok_or(TdvfError::TooShort { len })?,
    );
    // The total counts the footer's own GUID and length.
    let body_len = total
        .checked_sub(ENTRY_HEADER_LEN)
        .filter(|b| *b <= footer_end - ENTRY_HEADER_LEN)
        .ok_or(TdvfError::BadTableLength { len: total })?;
    let body_end = footer_end - ENTRY_HEADER_LEN;
    let table = &firmware[body_end - body_len..body_end];
    let mut end = table.len();
    while end >= ENTRY_HEADER_LEN {
        let guid = &table[end - GUID_LEN..end];
        let entry_len =
            usize::from(le_u16(table, end - ENTRY_HEADER_LEN).ok_or(TdvfError::TooShort { len })?);
        if entry_len < ENTRY_HEADER_LEN || entry_len > end {
            return Err(TdvfError::BadEntryLength { len: entry_len });
        }
        if guid == wanted {
            return Ok(Some(&table[end - entry_len..end - ENTRY_HEADER_LEN]));
        }
        end -= entry_len;
    }
    Ok(None)
}

/// Parses the TDX metadata (the `TDVF` descriptor and its sections) of an OVMF/TDVF image,
/// checking every rule QEMU checks before it builds a TD, bounded by the image's length.
pub fn parse_tdvf(firmware: &[u8]) -> Result<TdvfMetadata, TdvfError> {
    let entry =
        ovmf_table_entry(firmware, &TDX_METADATA_OFFSET_GUID)?.ok_or(TdvfError::NoTdxMetadata)?;
    let back = match <[u8; 4]>::try_from(entry) {
        Ok(b) => u32::from_le_bytes(b),
        Err(_) => {
            return Err(TdvfError::BadMetadataOffset {
                offset: entry.len() as u64,
            });
        }
    };
    let descriptor_offset = firmware
        .len()
        .checked_sub(back as usize)
        .filter(|o| {
            o.checked_add(DESCRIPTOR_LEN)
                .is_some_and(|e| e <= firmware.len())
        })
        .ok_or(TdvfError::BadMetadataOffset {
            offset: u64::from(back),
        })?;
    let d = &firmware[descriptor_offset..descriptor_offset + DESCRIPTOR_LEN];
    if &d[..4] != b"TDVF" {
        return Err(TdvfError::BadSignature);
    }
    let length = le_u32(d, 4).unwrap_or(0);
    let version = le_u32(d, 8).unwrap_or(0);
    let count = le_u32(d, 12).unwrap_or(0);
    if version != 1 {
        return Err(TdvfError::UnsupportedVersion(version));
    }
    let needed = DESCRIPTOR_LEN as u64 + u64::from(count) * SECTION_LEN as u64;
    if count == 0
        || count > MAX_TDVF_SECTIONS
        || u64::from(length) < needed
        || descriptor_offset as u64 + needed > firmware.len() as u64
    {
        return Err(TdvfError::BadSectionCount { count, length });
    }
    let mut sections = Vec::with_capacity(count as usize);
    let mut pages = 0u64;
    for index in 0..count as usize {
        let at = descriptor_offset + DESCRIPTOR_LEN + index * SECTION_LEN;
        let raw = &firmware[at..at + SECTION_LEN];
        let fault = |fault| TdvfError::Section { index, fault };
        let type_raw = le_u32(raw, 24).unwrap_or(u32::MAX);
        let section = TdvfSection {
            data_offset: le_u32(raw, 0).unwrap_or(0),
            raw_data_size: le_u32(raw, 4).unwrap_or(0),
            memory_address: le_u64(raw, 8).unwrap_or(0),
            memory_data_size: le_u64(raw, 16).unwrap_or(0),
            section_type: TdvfSectionType::from_raw(type_raw)
                .ok_or(fault(SectionFault::UnknownType(type_raw)))?,
            attributes: le_u32(raw, 28).unwrap_or(0),
        };
        check_section(&section, firmware.len()).map_err(fault)?;
        pages += section.pages();
        if pages > MAX_TDVF_PAGES {
            return Err(TdvfError::TooManyPages);
        }
        sections.push(section);
    }
    Ok(TdvfMetadata {
        descriptor_offset,
        sections,
    })
}

fn check_section(s: &TdvfSection, image_len: usize) -> Result<(), SectionFault> {
    use TdvfSectionType as T;
    if s.attributes & !(ATTR_MR_EXTEND | ATTR_PAGE_AUG) != 0 {
        return Err(SectionFault::UnknownAttributes(s.attributes));
    }
    if !s.memory_address.is_multiple_of(PAGE_SIZE)
        || !s.memory_data_size.is_multiple_of(PAGE_SIZE)
        || s.memory_data_size == 0
    {
        return Err(SectionFault::Unaligned {
            address: s.memory_address,
            size: s.memory_data_size,
        });
    }
    if s.memory_address.checked_add(s.memory_data_size).is_none() {
        return Err(SectionFault::AddressOverflow);
    }
    if u64::from(s.raw_data_size) > s.memory_data_size {
        return Err(SectionFault::RawLargerThanMemory {
            raw: s.raw_data_size,
            memory: s.memory_data_size,
        });
    }
    if u64::from(s.data_offset) + u64::from(s.raw_data_size) > image_len as u64 {
        return Err(SectionFault::RawOutsideImage {
            offset: s.data_offset,
            size: s.raw_data_size,
        });
    }
    let memory_only = matches!(s.section_type, T::TdHob | T::TempMem | T::PermMem);
    let needs_data = matches!(s.section_type, T::Bfv | T::Cfv);
    if (memory_only && s.raw_data_size != 0) || (needs_data && s.raw_data_size == 0) {
        return Err(SectionFault::WrongRawSize(s.section_type));
    }
    if (s.mr_extend() && s.page_aug())
        || (matches!(s.section_type, T::TdHob | T::TempMem) && s.mr_extend())
        || (s.section_type == T::PermMem && !s.page_aug())
    {
        return Err(SectionFault::WrongAttributes(s.section_type));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// MRTD

/// The order in which the host adds a section's pages and measures their content. Both
/// orders hash the same records; only their interleaving differs, so they give different
/// MRTDs from the same firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageAddOrder {
    /// For each page of a section: `PAGE.ADD`, then its 16 `MR.EXTEND`s. What KVM does when
    /// QEMU passes a region with `KVM_TDX_MEASURE_MEMORY_REGION` (upstream TDX: Linux 6.16+
    /// with QEMU 10.1+, and the QEMU 9.x TDX trees; dstack-mr's default for QEMU ≥ 9).
    #[default]
    Interleaved,
    /// For each section: every `PAGE.ADD` first, then every `MR.EXTEND`. What the earlier
    /// TDX KVM/QEMU 8.x trees did (dstack-mr's and tdx-measure's `two_pass_add_pages`, the
    /// default there for QEMU 8.x).
    AllAddsFirst,
}

fn page_add_record(gpa: u64) -> [u8; 128] {
    let mut r = [0u8; 128];
    r[..12].copy_from_slice(b"MEM.PAGE.ADD");
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

fn mr_extend_record(gpa: u64) -> [u8; 128] {
    let mut r = [0u8; 128];
    r[..9].copy_from_slice(b"MR.EXTEND");
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

/// MRTD of a TD built from this firmware. `meta` must come from [`parse_tdvf`] on the same
/// bytes (it bounds every read); a section's memory beyond its raw data is zero-filled, as
/// QEMU loads it.
pub fn mrtd(firmware: &[u8], meta: &TdvfMetadata, order: PageAddOrder) -> Digest384 {
    let mut h = Sha384::new();
    for s in &meta.sections {
        let add = |h: &mut Sha384, page: u64| {
            if !s.page_aug() {
                h.update(page_add_record(s.memory_address + page * PAGE_SIZE));
            }
        };
        let extend = |h: &mut Sha384, page: u64| {
            if !s.mr_extend() {
                return;
            }
            for chunk in 0..(PAGE_SIZE as usize / MR_EXTEND_CHUNK) {
                let within = page as usize * PAGE_SIZE as usize + chunk * MR_EXTEND_CHUNK;
                h.update(mr_extend_record(s.memory_address + within as u64));
                let mut data = [0u8; MR_EXTEND_CHUNK];
                let raw_len = s.raw_data_size as usize;
                if within < raw_len {
                    let n = (raw_len - within).min(MR_EXTEND_CHUNK);
                    let from = s.data_offset as usize + within;
                    if let Some(src) = firmware.get(from..from + n) {
                        data[..n].copy_from_slice(src);
                    }
                }
                h.update(data);
            }
        };
        match order {
            PageAddOrder::Interleaved => {
                for page in 0..s.pages() {
                    add(&mut h, page);
                    extend(&mut h, page);
                }
            }
            PageAddOrder::AllAddsFirst => {
                for page in 0..s.pages() {
                    add(&mut h, page);
                }
                for page in 0..s.pages() {
                    extend(&mut h, page);
                }
            }
        }
    }
    h.finalize().into()
}

// ---------------------------------------------------------------------------------------
// RTMR0

/// SHA-384 of the firmware's configuration firmware volume (the CFV section's raw data),
/// which OVMF extends into RTMR0 as it is in the image. `None` when the image has no CFV
/// (a split CODE/VARS build: then the caller supplies the varstore's digest).
pub fn cfv_digest(firmware: &[u8], meta: &TdvfMetadata) -> Option<Digest384> {
    let s = meta.section(TdvfSectionType::Cfv)?;
    let from = s.data_offset as usize;
    firmware
        .get(from..from + s.raw_data_size as usize)
        .map(sha384)
}

/// The TD HOB QEMU writes for a q35 TD with `memory_size` bytes of RAM (PHIT, then one
/// resource descriptor per range: the TD HOB and TempMem sections as accepted system
/// memory, the rest of RAM as unaccepted memory; RAM at and above 2 GiB moves above 4 GiB
/// when there is at least 2.75 GiB), up to but not including the end-of-list HOB, which is
/// what OVMF measures. This is the model of tdx-measure/dstack-mr for QEMU's default
/// memory map; a VMM with another layout (PCI holes, hot-plug, other machine types) gives
/// another HOB, and then the caller passes the HOB captured from a real TD instead.
pub fn qemu_td_hob(meta: &TdvfMetadata, memory_size: u64) -> Vec<u8> {
    // (accepted, start, end), sorted, non-overlapping, covering [0, memory_size).
    let mut ranges: Vec<(bool, u64, u64)> = vec![(false, 0, memory_size)];
    let mut hob_base = 0x80_9000u64;
    for s in &meta.sections {
        if s.section_type == TdvfSectionType::TdHob {
            hob_base = s.memory_address;
        }
        if matches!(
            s.section_type,
            TdvfSectionType::TdHob | TdvfSectionType::TempMem
        ) {
            let (start, end) = (s.memory_address, s.memory_address + s.memory_data_size);
            let mut next = Vec::with_capacity(ranges.len() + 2);
            for &(accepted, a, b) in &ranges {
                if accepted || b <= start || a >= end {
                    next.push((accepted, a, b));
                    continue;
                }
                if a < start {
                    next.push((false, a, start));
                }
                if b > end {
                    next.push((false, end, b));
                }
            }
            next.push((true, start, end));
            next.sort_by_key(|r| r.1);
            ranges = next;
        }
    }
    let mut hob = Vec::with_capacity(56 + 48 * (ranges.len() + 1));
    // EFI_HOB_HANDOFF_INFO_TABLE: type 1, length 56, version 9, boot mode 0, four memory
    // bounds left zero, EfiEndOfHobList patched below.
    hob.extend_from_slice(&1u16.to_le_bytes());
    hob.extend_from_slice(&56u16.to_le_bytes());
    hob.extend_from_slice(&[0u8; 4]);
    hob.extend_from_slice(&9u32.to_le_bytes());
    hob.extend_from_slice(&[0u8; 4 + 8 * 5]);
    let mut resource = |kind: u32, start: u64, length: u64| {
        // EFI_HOB_RESOURCE_DESCRIPTOR: type 3, length 48, zero owner GUID, resource type,
        // attributes PRESENT|INITIALIZED|TESTED.
        hob.extend_from_slice(&3u16.to_le_bytes());
        hob.extend_from_slice(&48u16.to_le_bytes());
        hob.extend_from_slice(&[0u8; 4 + 16]);
        hob.extend_from_slice(&kind.to_le_bytes());
        hob.extend_from_slice(&7u32.to_le_bytes());
        hob.extend_from_slice(&start.to_le_bytes());
        hob.extend_from_slice(&length.to_le_bytes());
    };
    const SYSTEM_MEMORY: u32 = 0;
    const UNACCEPTED: u32 = 7;
    let last = ranges.pop();
    for (accepted, a, b) in ranges {
        resource(if accepted { SYSTEM_MEMORY } else { UNACCEPTED }, a, b - a);
    }
    if let Some((_, a, b)) = last {
        if memory_size >= 0xb000_0000 && a < 0x8000_0000 {
            resource(UNACCEPTED, a, 0x8000_0000 - a);
            resource(UNACCEPTED, 0x1_0000_0000, b - 0x8000_0000);
        } else {
            resource(UNACCEPTED, a, b - a);
        }
    }
    let end_of_list = hob_base + hob.len() as u64 + 8;
    hob[48..56].copy_from_slice(&end_of_list.to_le_bytes());
    hob
}

/// Digest of an `EV_EFI_VARIABLE_DRIVER_CONFIG` event as OVMF logs it: SHA-384 of the
/// `UEFI_VARIABLE_DATA` structure (vendor GUID, name length in UTF-16 units, data length,
/// the name in UTF-16LE without terminator, the data).
pub fn efi_variable_event(vendor: &[u8; 16], name: &str, data: &[u8]) -> Digest384 {
    let name16: Vec<u16> = name.encode_utf16().collect();
    let mut h = Sha384::new();
    h.update(vendor);
    h.update((name16.len() as u64).to_le_bytes());
    h.update((data.len() as u64).to_le_bytes());
    for u in name16 {
        h.update(u.to_le_bytes());
    }
    h.update(data);
    h.finalize().into()
}

/// The digest of an `EV_SEPARATOR` event (four zero bytes).
pub fn separator_event() -> Digest384 {
    sha384(&[0u8; 4])
}

/// What goes into RTMR0 for a TD that OVMF boots without Secure Boot (empty SecureBoot, PK,
/// KEK, db, dbx). None of it is in the firmware file except the CFV: the TD HOB, the ACPI
/// blobs and the boot variables are what the VMM provided, captured from a running TD
/// configured identically (same QEMU version, machine, memory, vCPUs and devices), for
/// example with tdx-measure's `extract_config_files.py`.
#[derive(Debug, Clone, Copy)]
pub struct Rtmr0Inputs<'a> {
    /// The TD HOB bytes OVMF measures (see [`qemu_td_hob`]).
    pub td_hob: &'a [u8],
    /// SHA-384 of the CFV (see [`cfv_digest`]).
    pub cfv_digest: Digest384,
    /// QEMU's `etc/table-loader` fw_cfg blob.
    pub acpi_loader: &'a [u8],
    /// QEMU's `etc/acpi/rsdp` fw_cfg blob.
    pub acpi_rsdp: &'a [u8],
    /// QEMU's `etc/acpi/tables` fw_cfg blob.
    pub acpi_tables: &'a [u8],
    /// The `BootOrder` variable's data.
    pub boot_order: &'a [u8],
    /// The data of each `Boot####` variable OVMF measures, in BootOrder order.
    pub boot_options: &'a [&'a [u8]],
    /// shim's `SbatLevel` variable data when the boot goes through shim (not for direct
    /// boot).
    pub sbat_level: Option<&'a [u8]>,
}

/// The RTMR0 event digests, in the order OVMF extends them.
pub fn rtmr0_events(i: &Rtmr0Inputs<'_>) -> Vec<Digest384> {
    let mut ev = vec![
        sha384(i.td_hob),
        i.cfv_digest,
        efi_variable_event(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[]),
        efi_variable_event(&EFI_GLOBAL_VARIABLE, "PK", &[]),
        efi_variable_event(&EFI_GLOBAL_VARIABLE, "KEK", &[]),
        efi_variable_event(&EFI_IMAGE_SECURITY_DATABASE, "db", &[]),
        efi_variable_event(&EFI_IMAGE_SECURITY_DATABASE, "dbx", &[]),
        separator_event(),
        sha384(i.acpi_loader),
        sha384(i.acpi_rsdp),
        sha384(i.acpi_tables),
        sha384(i.boot_order),
    ];
    ev.extend(i.boot_options.iter().map(|b| sha384(b)));
    if let Some(sbat) = i.sbat_level {
        ev.push(efi_variable_event(&SHIM_LOCK_GUID, "SbatLevel", sbat));
    }
    ev
}

// ---------------------------------------------------------------------------------------
// PE/COFF Authenticode

/// Why a kernel or UKI is not a PE/COFF image whose Authenticode hash can be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    /// A header field lies outside the file.
    #[error("PE/COFF image truncated: {0} lies outside the file")]
    Truncated(&'static str),
    /// No `PE\0\0` signature where the DOS header points.
    #[error("no PE signature (not an EFI-bootable image)")]
    NoPeSignature,
    /// An optional header magic other than PE32 (0x10b) or PE32+ (0x20b).
    #[error("unknown optional header magic {0:#x}")]
    BadMagic(u16),
    /// `SizeOfHeaders` runs past the file or into the fields it must cover.
    #[error("SizeOfHeaders {0:#x} is out of range")]
    BadHeaderSize(u32),
    /// A section's raw data lies outside the file.
    #[error("section {0} raw data lies outside the file")]
    SectionOutsideFile(usize),
    /// The sections' raw data together is larger than the file: they overlap.
    #[error("the sections' raw data overlaps (more than the file's length in all)")]
    SectionsOverlap,
    /// The certificate table is larger than what follows the sections (EDK2 refuses to
    /// measure such an image).
    #[error("the certificate table is larger than the data after the sections")]
    BadCertTable,
}

/// The PE/COFF Authenticode SHA-384 of an image, as EDK2 computes it when it measures an
/// EFI application it loads (the image's bytes minus the checksum field, the certificate
/// table entry and the certificate table itself, sections in file order). Unlike
/// tdx-measure, no zero padding to a multiple of 8 bytes is hashed; the two agree on every
/// file whose length is a multiple of 8 (kernels and UKIs usually are).
pub fn authenticode_sha384(pe: &[u8]) -> Result<Digest384, PeError> {
    let lfanew = le_u32(pe, 0x3c).ok_or(PeError::Truncated("DOS header"))? as usize;
    if pe.get(lfanew..lfanew.saturating_add(4)) != Some(b"PE\0\0".as_slice()) {
        return Err(PeError::NoPeSignature);
    }
    let coff = lfanew + 4;
    let sections = usize::from(le_u16(pe, coff + 2).ok_or(PeError::Truncated("COFF header"))?);
    let opt_size = usize::from(le_u16(pe, coff + 16).ok_or(PeError::Truncated("COFF header"))?);
    let opt = coff + 20;
    let magic = le_u16(pe, opt).ok_or(PeError::Truncated("optional header"))?;
    let (rva_count_at, dirs_at) = match magic {
        0x10b => (opt + 92, opt + 96),
        0x20b => (opt + 108, opt + 112),
        m => return Err(PeError::BadMagic(m)),
    };
    let checksum_at = opt + 64;
    let header_size = le_u32(pe, opt + 60).ok_or(PeError::Truncated("SizeOfHeaders"))?;
    let rva_count = le_u32(pe, rva_count_at).ok_or(PeError::Truncated("NumberOfRvaAndSizes"))?;
    const SECURITY_DIR: usize = 4;
    let cert_entry_at = dirs_at + SECURITY_DIR * 8;
    let has_cert_entry = rva_count as usize > SECURITY_DIR;
    let headers_end = header_size as usize;
    let min_end = if has_cert_entry {
        cert_entry_at + 8
    } else {
        checksum_at + 4
    };
    if headers_end > pe.len() || headers_end < min_end {
        return Err(PeError::BadHeaderSize(header_size));
    }
    let mut h = Sha384::new();
    h.update(&pe[..checksum_at]);
    let cert_size = if has_cert_entry {
        h.update(&pe[checksum_at + 4..cert_entry_at]);
        h.update(&pe[cert_entry_at + 8..headers_end]);
        le_u32(pe, cert_entry_at + 4).unwrap_or(0) as usize
    } else {
        h.update(&pe[checksum_at + 4..headers_end]);
        0
    };
    let table = opt + opt_size;
    let mut raw: Vec<(usize, usize, usize)> = Vec::with_capacity(sections.min(pe.len() / 40));
    for i in 0..sections {
        let at = table + i * 40;
        let size = le_u32(pe, at + 16).ok_or(PeError::Truncated("section table"))? as usize;
        let ptr = le_u32(pe, at + 20).ok_or(PeError::Truncated("section table"))? as usize;
        if size == 0 {
            continue;
        }
        if ptr.checked_add(size).is_none_or(|e| e > pe.len()) {
            return Err(PeError::SectionOutsideFile(i));
        }
        raw.push((ptr, size, i));
    }
    raw.sort_by_key(|r| r.0);
    // Sections of a real image do not overlap in the file; hostile ones that do could make
    // the hash cover the file thousands of times over.
    let hashed = raw.iter().try_fold(headers_end, |sum, r| {
        sum.checked_add(r.1).filter(|s| *s <= pe.len())
    });
    let hashed = hashed.ok_or(PeError::SectionsOverlap)?;
    for (ptr, size, _) in raw {
        h.update(&pe[ptr..ptr + size]);
    }
    if pe.len() > hashed {
        let end = pe
            .len()
            .checked_sub(cert_size)
            .ok_or(PeError::BadCertTable)?;
        if end < hashed {
            return Err(PeError::BadCertTable);
        }
        h.update(&pe[hashed..end]);
    }
    Ok(h.finalize().into())
}

// ---------------------------------------------------------------------------------------
// QEMU direct kernel boot

/// Why QEMU would refuse this kernel for `-kernel`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Shorter than the setup header QEMU reads (or than its own setup size).
    #[error("kernel image of {0} bytes is too short for its setup header")]
    TooShort(usize),
    /// An initrd with a kernel that has no boot protocol ≥ 2.00 (QEMU refuses it; a UKI
    /// carries its initrd inside instead).
    #[error("the kernel's boot protocol cannot take an initrd (a UKI carries its own)")]
    NoInitrdSupport,
    /// The initrd does not fit below QEMU's limit for this kernel and memory size.
    #[error("initrd of {size} bytes does not fit below {max:#x}")]
    InitrdTooLarge {
        /// The initrd's size.
        size: u64,
        /// The highest address QEMU would load it below.
        max: u64,
    },
    /// A `vga=` argument QEMU cannot parse.
    #[error("the command line's vga= value is invalid")]
    BadVgaMode,
}

/// How the VMM hands the kernel to OVMF, which decides what bytes OVMF measures.
///
/// The model assumes QEMU appends no random-seed `setup_data` to the kernel of a TD (as the
/// reference calculators do; a per-boot seed in the measured blob would make RTMR1
/// unpredictable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelLoad {
    /// QEMU patches the Linux setup header (loader type, heap end, command line and initrd
    /// addresses) of the `-kernel` file before exposing it through fw_cfg, and OVMF
    /// measures the patched image: QEMU before 10.0 with any OVMF, and later QEMU with an
    /// OVMF that still loads the patched kernel (such as Debian bookworm's 2022.11). The
    /// patch depends on the memory size and the ACPI data size ([`QemuKernelParams`]).
    QemuPatched(QemuKernelParams),
    /// The file as it is: QEMU 10.0 and later exposing the unpatched kernel (fw_cfg
    /// `etc/boot/kernel`) to an OVMF that loads it (as dstack-mr models QEMU ≥ 10), or a
    /// loader that does not patch.
    Unmodified,
}

/// The VMM facts QEMU's setup-header patch depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuKernelParams {
    /// Guest RAM in bytes (`-m`).
    pub memory_size: u64,
    /// Size of the ACPI data QEMU reserves below 4 GiB: 0x28000 on q35 machine types
    /// since QEMU 2.x ([`QemuKernelParams::DEFAULT_ACPI_DATA_SIZE`]).
    pub acpi_data_size: u32,
    /// Whether QEMU also patches an image without a Linux setup header (a UKI): QEMU
    /// before 9.2.1 did, writing the old command-line magic into its DOS header; since
    /// "x86/loader: only patch linux kernels" (9.2.1, 10.0) it leaves such images alone.
    pub patch_headerless: bool,
}

impl QemuKernelParams {
    /// QEMU's `acpi_data_size` for current x86 machine types.
    pub const DEFAULT_ACPI_DATA_SIZE: u32 = 0x28000;

    /// The parameters for `memory_size` bytes of RAM, the default ACPI data size, and
    /// headerless images patched (QEMU 8.x–9.2.0, the TDX QEMU of Ubuntu 24.04 and the
    /// one tdx-measure models).
    pub fn new(memory_size: u64) -> Self {
        Self {
            memory_size,
            acpi_data_size: Self::DEFAULT_ACPI_DATA_SIZE,
            patch_headerless: true,
        }
    }
}

/// The kernel image as QEMU (before 10.0) hands it to the firmware for `-kernel`, with
/// `-initrd` of `initrd_size` bytes (None: no initrd) and `-append cmdline`: the Linux
/// boot-protocol fields of its setup header filled in as `x86_load_linux` fills them. A
/// PE image without a Linux setup header (a UKI) is protocol 0: it cannot take `-initrd`,
/// and QEMU writes the old command-line magic at offset 0x20, inside its DOS header, only
/// when [`QemuKernelParams::patch_headerless`] says so.
pub fn qemu_patch_kernel(
    kernel: &[u8],
    initrd_size: Option<u64>,
    cmdline: &str,
    p: &QemuKernelParams,
) -> Result<Vec<u8>, KernelError> {
    const HEADER_LEN: usize = 8192;
    if kernel.len() < 0x1000 {
        return Err(KernelError::TooShort(kernel.len()));
    }
    let mut k = kernel.to_vec();
    let protocol = if le_u32(&k, 0x202) == Some(0x5372_6448) {
        le_u16(&k, 0x206).unwrap_or(0)
    } else {
        0
    };
    let cmdline_size = (cmdline.len() as u32).wrapping_add(16) & !15;
    let (real_addr, cmdline_addr): (u32, u32) = if protocol < 0x202 || k[0x211] & 1 == 0 {
        (0x9_0000, 0x9_a000u32.wrapping_sub(cmdline_size))
    } else {
        (0x1_0000, 0x2_0000)
    };
    let lowmem: u64 = if p.memory_size >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    let below_4g = p.memory_size.min(lowmem);
    let reserve = below_4g.saturating_sub(u64::from(p.acpi_data_size));
    let mut initrd_max: u64 = if protocol >= 0x20c && le_u16(&k, 0x236).unwrap_or(0) & 0x40 != 0 {
        u64::from(u32::MAX)
    } else if protocol >= 0x203 {
        u64::from(le_u32(&k, 0x22c).unwrap_or(0))
    } else {
        0x37ff_ffff
    };
    if initrd_max >= reserve {
        initrd_max = reserve.saturating_sub(1);
    }
    let put16 =
        |k: &mut Vec<u8>, at: usize, v: u16| k[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |k: &mut Vec<u8>, at: usize, v: u32| k[at..at + 4].copy_from_slice(&v.to_le_bytes());
    if protocol >= 0x202 {
        put32(&mut k, 0x228, cmdline_addr);
    } else {
        put16(&mut k, 0x20, 0xa33f);
        put16(&mut k, 0x22, cmdline_addr.wrapping_sub(real_addr) as u16);
    }
    if let Some(pos) = cmdline.find("vga=") {
        let v = &cmdline[pos + 4..];
        let word = v.split(' ').next().unwrap_or("");
        let mode: u16 = if v.starts_with("normal") {
            0xffff
        } else if v.starts_with("ext") {
            0xfffe
        } else if v.starts_with("ask") {
            0xfffd
        } else {
            parse_c_uint(word)
                .and_then(|m| u16::try_from(m).ok())
                .ok_or(KernelError::BadVgaMode)?
        };
        put16(&mut k, 0x1fa, mode);
    }
    if protocol >= 0x200 {
        k[0x210] = 0xb0;
    }
    if protocol >= 0x201 {
        k[0x211] |= 0x80;
        put16(
            &mut k,
            0x224,
            cmdline_addr.wrapping_sub(real_addr).wrapping_sub(0x200) as u16,
        );
    }
    if let Some(size) = initrd_size {
        if protocol < 0x200 {
            return Err(KernelError::NoInitrdSupport);
        }
        if size >= initrd_max {
            return Err(KernelError::InitrdTooLarge {
                size,
                max: initrd_max,
            });
        }
        let addr = ((initrd_max - size) & !4095) as u32;
        put32(&mut k, 0x218, addr);
        put32(&mut k, 0x21c, size as u32);
    }
    let setup_sectors = if k[0x1f1] == 0 {
        4
    } else {
        usize::from(k[0x1f1])
    };
    let setup_size = (setup_sectors + 1) * 512;
    if setup_size > kernel.len() {
        return Err(KernelError::TooShort(kernel.len()));
    }
    if protocol == 0 && !p.patch_headerless {
        return Ok(kernel.to_vec());
    }
    // Only the header copy (the first 8 KiB, within the setup area) carries the patch.
    let patched = setup_size.min(HEADER_LEN);
    k[patched..].copy_from_slice(&kernel[patched..]);
    Ok(k)
}

/// `strtoul(s, 0)`-style: decimal, `0x` hex or leading-zero octal, the whole word.
fn parse_c_uint(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

// ---------------------------------------------------------------------------------------
// RTMR1, RTMR2

/// The RTMR1 events for a boot in which OVMF starts one EFI application (`boot_app`: the
/// Authenticode digest of the kernel or UKI it loaded): the application's image, "Calling
/// EFI Application from Boot Option", the separator, "Exit Boot Services Invocation" and
/// "Exit Boot Services Returned with Success".
pub fn rtmr1_events(boot_app: &Digest384) -> Vec<Digest384> {
    vec![
        *boot_app,
        sha384(b"Calling EFI Application from Boot Option"),
        separator_event(),
        sha384(b"Exit Boot Services Invocation"),
        sha384(b"Exit Boot Services Returned with Success"),
    ]
}

/// Where OVMF's QEMU loader puts `initrd=initrd` in the command line it passes to the
/// kernel when QEMU was given `-initrd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitrdArg {
    /// `"<cmdline> initrd=initrd"`: `X86QemuLoadImageLib`, used by the `OvmfPkgX64` and
    /// `IntelTdxX64` builds (Debian's OVMF.fd, Canonical's TDX OVMF).
    #[default]
    Appended,
    /// `"initrd=initrd <cmdline>"`: `GenericQemuLoadImageLib` (AmdSevX64 and non-x86).
    Prepended,
}

/// The digest of the command-line event OVMF extends into RTMR2: the command line it
/// passes to the kernel (with `initrd=initrd` when there is an initrd, see [`InitrdArg`]),
/// as UTF-16LE with its NUL terminator.
pub fn cmdline_event(cmdline: &str, has_initrd: bool, arg: InitrdArg) -> Digest384 {
    let full = match (has_initrd, arg) {
        (false, _) => cmdline.to_owned(),
        (true, InitrdArg::Appended) => format!("{cmdline} initrd=initrd"),
        (true, InitrdArg::Prepended) => format!("initrd=initrd {cmdline}"),
    };
    let mut h = Sha384::new();
    for u in full.encode_utf16().chain(std::iter::once(0)) {
        h.update(u.to_le_bytes());
    }
    h.finalize().into()
}

/// The RTMR2 events of a direct boot: the command line ([`cmdline_event`]) and, when
/// there is one, the initrd's SHA-384.
pub fn rtmr2_events(cmdline: &str, initrd: Option<&[u8]>, arg: InitrdArg) -> Vec<Digest384> {
    let mut ev = vec![cmdline_event(cmdline, initrd.is_some(), arg)];
    if let Some(i) = initrd {
        ev.push(sha384(i));
    }
    ev
}

// ---------------------------------------------------------------------------------------
// The one entry point

/// Everything [`predict`] needs: the files of a TD image and the VMM facts the
/// measurements depend on.
#[derive(Debug, Clone, Copy)]
pub struct TdxImage<'a> {
    /// The OVMF/TDVF firmware image (`-bios`), e.g. Debian's `/usr/share/ovmf/OVMF.fd`.
    pub firmware: &'a [u8],
    /// The kernel (bzImage with an EFI stub) or UKI given to QEMU with `-kernel`.
    pub kernel: &'a [u8],
    /// The initrd given with `-initrd` (None for a UKI, which carries its own).
    pub initrd: Option<&'a [u8]>,
    /// The command line given with `-append` (empty when there is none).
    pub cmdline: &'a str,
    /// How the VMM hands the kernel over ([`KernelLoad`]).
    pub kernel_load: KernelLoad,
    /// The host's page-add order ([`PageAddOrder`]).
    pub page_add_order: PageAddOrder,
    /// Where OVMF puts `initrd=initrd` ([`InitrdArg`]).
    pub initrd_arg: InitrdArg,
    /// Events the booted image itself extends into RTMR2 after OVMF's (for a UKI:
    /// whatever its stub measures there, taken from a real boot's event log). Empty for a
    /// plain kernel.
    pub extra_rtmr2_events: &'a [Digest384],
    /// The platform inputs of RTMR0 (None: RTMR0 is not predicted).
    pub rtmr0: Option<Rtmr0Inputs<'a>>,
}

/// Why [`predict`] could not compute the measurements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TdxMeasureError {
    /// The firmware's TDX metadata is malformed.
    #[error("firmware: {0}")]
    Firmware(#[from] TdvfError),
    /// The kernel or UKI is not a PE/COFF image.
    #[error("kernel: {0}")]
    Pe(#[from] PeError),
    /// QEMU would refuse the kernel/initrd combination.
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
}

/// The predicted measurement registers, with the event logs that produced the RTMRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPrediction {
    /// MRTD.
    pub mrtd: Digest384,
    /// RTMR0 (when [`TdxImage::rtmr0`] was given).
    pub rtmr0: Option<Digest384>,
    /// RTMR1.
    pub rtmr1: Digest384,
    /// RTMR2.
    pub rtmr2: Digest384,
    /// The event digests of RTMR0 (empty when not predicted), RTMR1 and RTMR2, in order.
    pub events: [Vec<Digest384>; 3],
    /// The Authenticode digest of the kernel as measured (after QEMU's patch, if any).
    pub kernel_digest: Digest384,
}

/// Predicts MRTD and RTMR0–2 of a TD that QEMU boots from these files through OVMF
/// (`-bios firmware -kernel kernel [-initrd initrd] -append cmdline`). RTMR3 is the
/// guest's: extend it with [`rtmr_extend`].
pub fn predict(img: &TdxImage<'_>) -> Result<TdxPrediction, TdxMeasureError> {
    let meta = parse_tdvf(img.firmware)?;
    let mrtd = mrtd(img.firmware, &meta, img.page_add_order);
    let kernel_digest = match &img.kernel_load {
        KernelLoad::Unmodified => authenticode_sha384(img.kernel)?,
        KernelLoad::QemuPatched(p) => {
            let patched = qemu_patch_kernel(
                img.kernel,
                img.initrd.map(|i| i.len() as u64),
                img.cmdline,
                p,
            )?;
            authenticode_sha384(&patched)?
        }
    };
    let ev1 = rtmr1_events(&kernel_digest);
    let mut ev2 = rtmr2_events(img.cmdline, img.initrd, img.initrd_arg);
    ev2.extend_from_slice(img.extra_rtmr2_events);
    let ev0 = img.rtmr0.as_ref().map(rtmr0_events).unwrap_or_default();
    Ok(TdxPrediction {
        mrtd,
        rtmr0: img.rtmr0.as_ref().map(|_| rtmr_replay(&ev0)),
        rtmr1: rtmr_replay(&ev1),
        rtmr2: rtmr_replay(&ev2),
        events: [ev0, ev1, ev2],
        kernel_digest,
    })
}
