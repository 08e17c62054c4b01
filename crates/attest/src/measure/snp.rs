//! SEV-SNP: the launch digest of firmware, kernel hashes table, and VMSAs.
//!
//! An SEV-SNP guest's attestation report carries a 48-byte `MEASUREMENT`: the launch digest
//! the AMD secure processor computed while the hypervisor loaded the guest. Every page the
//! hypervisor hands to `SNP_LAUNCH_UPDATE` extends it with one `PAGE_INFO` record (SEV-SNP
//! ABI, "PAGE_INFO"): `digest = SHA-384(digest ‖ contents ‖ length ‖ page type ‖ flags ‖
//! GPA)`, starting from 48 zero bytes. What QEMU loads, in order, for an OVMF guest:
//!
//! 1. the firmware image, page by page, as normal pages ending at 4 GiB;
//! 2. the sections the firmware's SEV metadata (`ASEV`) declares, in their order: zero pages
//!    for `SNP_SEC_MEMORY` and `SVSM_CAA`, the secrets page, the CPUID page, and the
//!    `SNP_KERNEL_HASHES` page, which holds the SHA-256 of kernel, initrd and command line
//!    when QEMU boots with `-kernel` and `kernel-hashes=on` (zero pages otherwise);
//! 3. one VMSA page (initial register state) per vCPU: the bootstrap processor starts at the
//!    reset vector, the others at the AP reset address of the firmware's SEV-ES reset block.
//!    The VMSA holds the vCPU's CPUID signature and the guest's SEV features.
//!
//! [`SnpImage::launch_digest`] is the one entry point; [`Ovmf`], [`LaunchDigest`],
//! [`KernelHashes`] and [`vmsa_page`] are the steps, public for tools that need one of them
//! (a precomputed firmware digest, a dump of the hashes page). Everything is pure: callers
//! read the files and pass bytes. The firmware is untrusted input: every count, offset and
//! size in it is checked against the image, and a malformed image is a [`SnpMeasureError`],
//! never a panic or an allocation it chose.
//!
//! Cross-checked against PyPI's `sev-snp-measure` 0.0.13 (`testvectors/measure/snp/`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256, Sha384};

/// The SNP host data for a role's configuration (SHA-256 of its bytes), defined beside the
/// TDX RTMR3 value in [`super`]: the launcher passes it as `HOST_DATA` (QEMU
/// `sev-snp-guest,host-data=`), the PSP copies it into every report, and the role refuses
/// a configuration whose hash differs. It binds the config (root address, network,
/// policies, backend URL and model) to the attested guest outside the launch digest, so
/// one measured image serves every config while [`image_hash`] still differs per config.
pub use super::host_data_for_config;

/// Size of a guest page, the unit the launch digest measures.
pub const PAGE_SIZE: usize = 4096;

/// Size of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;

/// The firmware is mapped so that it ends here (the x86 reset vector sits just below).
const FOUR_GIB: u64 = 1 << 32;

/// Most vCPUs a guest may have here (QEMU's q35 maximum).
pub const MAX_VCPUS: u32 = 4096;

/// Most pages the SEV metadata sections may declare in all (256 MiB of guest memory; OVMF's
/// sections take well under 1 MiB): bounds the work a malformed firmware can cause.
const MAX_SECTION_PAGES: u64 = 1 << 16;

/// The GPA the PSP records for a VMSA page: `u64::MAX`, page-aligned, bits above 51 clear.
const VMSA_GPA: u64 = 0x0000_FFFF_FFFF_F000;

/// The bootstrap processor's first instruction (the x86 reset vector).
const BSP_RESET_EIP: u32 = 0xFFFF_FFF0;

/// GUIDs of the OVMF footer table and its entries, as their bytes appear in the image
/// (EFI GUIDs are stored with the first three fields little-endian).
mod guid {
    /// Parses the canonical text form into the stored (mixed-endian) bytes.
    const fn le(s: &[u8; 36]) -> [u8; 16] {
        let mut raw = [0u8; 16];
        let mut i = 0;
        let mut j = 0;
        while i < 36 {
            if s[i] == b'-' {
                i += 1;
                continue;
            }
            raw[j] = (nibble(s[i]) << 4) | nibble(s[i + 1]);
            j += 1;
            i += 2;
        }
        [
            raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6], raw[8], raw[9],
            raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
        ]
    }

    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit in a GUID constant"),
        }
    }

    /// Marks the end of the OVMF GUIDed footer table.
    pub(super) const FOOTER: [u8; 16] = le(b"96b582de-1fb2-45f7-baea-a366c55a082d");
    /// Where OVMF reserves the SEV kernel hashes table (GPA, size).
    pub(super) const SEV_HASH_TABLE_RV: [u8; 16] = le(b"7255371f-3a3b-4b04-927b-1da6efa8d454");
    /// The SEV-ES reset block: the AP reset address.
    pub(super) const SEV_ES_RESET_BLOCK: [u8; 16] = le(b"00f771de-1a7e-4fcb-890e-68c77e2fb44e");
    /// Where the SEV metadata (`ASEV`) sits, as an offset from the end of the image.
    pub(super) const SEV_METADATA: [u8; 16] = le(b"dc886566-984a-4798-a75e-5585a7bf67cc");
    /// Header of the kernel hashes table.
    pub(super) const HASH_TABLE_HEADER: [u8; 16] = le(b"9438d606-4f22-4cc9-b479-a793d411fd21");
    /// Kernel entry of the hashes table.
    pub(super) const HASH_KERNEL: [u8; 16] = le(b"4de79437-abd2-427f-b835-d5b172d2045b");
    /// Initrd entry of the hashes table.
    pub(super) const HASH_INITRD: [u8; 16] = le(b"44baf731-3a2f-4bd7-9af1-41e29169781d");
    /// Command-line entry of the hashes table.
    pub(super) const HASH_CMDLINE: [u8; 16] = le(b"97d02dd8-bd20-4c94-aa78-e7714d36ab2a");
}

/// Why a launch digest could not be computed. Every variant but [`Self::Input`] is a
/// malformed or unsuitable firmware image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnpMeasureError {
    /// The firmware is empty, not a whole number of pages, or larger than 4 GiB.
    #[error("firmware size {len} is not a non-zero multiple of 4096 bytes up to 4 GiB")]
    FirmwareSize {
        /// The image length in bytes.
        len: usize,
    },
    /// No OVMF footer table GUID 32 bytes before the end: not an SEV-capable OVMF.
    #[error("firmware has no OVMF GUIDed footer table")]
    NoFooterTable,
    /// The footer table or one of its entries has a size that does not fit.
    #[error("malformed OVMF footer table: {0}")]
    FooterTable(&'static str),
    /// An entry the measurement needs is missing from the footer table.
    #[error("firmware has no {0} entry in its OVMF footer table")]
    MissingEntry(&'static str),
    /// The SEV metadata (`ASEV`) is out of bounds or malformed.
    #[error("malformed SEV metadata: {0}")]
    Metadata(&'static str),
    /// A metadata section of a type this code does not know.
    #[error("unknown SEV metadata section type {0:#x}")]
    UnknownSectionType(u32),
    /// A metadata section that is not page-aligned, or its size is not whole pages.
    #[error("SEV metadata section at {gpa:#x} (size {size:#x}) is not page-aligned")]
    SectionAlignment {
        /// The section's guest-physical address.
        gpa: u32,
        /// The section's size.
        size: u32,
    },
    /// The metadata sections declare more than 4 GiB of pages in all.
    #[error("SEV metadata sections declare more than {MAX_SECTION_PAGES} pages in all")]
    TooManyPages,
    /// Kernel hashes were asked for but the firmware has no `SNP_KERNEL_HASHES` section.
    #[error("a kernel was given but the firmware has no SNP_KERNEL_HASHES section")]
    NoKernelHashesSection,
    /// The `SNP_KERNEL_HASHES` section is not exactly one page.
    #[error("SNP_KERNEL_HASHES section size {0:#x} is not one page")]
    KernelHashesSectionSize(u32),
    /// The hashes table would not fit in its page at the offset the firmware gives.
    #[error("kernel hashes table at page offset {0:#x} does not fit in the page")]
    HashTableOffset(usize),
    /// The caller's parameters are inconsistent (vCPU count, initrd without kernel…).
    #[error("invalid measurement input: {0}")]
    Input(String),
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The type of an SEV metadata section (OVMF `OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// `SNP_SEC_MEMORY` (1): memory SEC uses before it validates RAM; measured as zero pages
    /// (unmeasured on GCE).
    SecMemory,
    /// `SNP_SECRETS` (2): the secrets page the PSP fills.
    Secrets,
    /// `CPUID` (3): the CPUID page the PSP checks.
    Cpuid,
    /// `SVSM_CAA` (4): the SVSM calling area; zero pages.
    SvsmCaa,
    /// `SNP_KERNEL_HASHES` (0x10): the page QEMU fills with the kernel hashes table.
    KernelHashes,
}

impl SectionKind {
    fn from_raw(raw: u32) -> Result<Self, SnpMeasureError> {
        Ok(match raw {
            1 => Self::SecMemory,
            2 => Self::Secrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::KernelHashes,
            other => return Err(SnpMeasureError::UnknownSectionType(other)),
        })
    }
}

/// One section of the SEV metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataSection {
    /// Guest-physical address of the section.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// What the section holds, which decides how it is measured.
    pub kind: SectionKind,
}

/// An OVMF image parsed for SEV-SNP: its footer table entries and SEV metadata, all checked
/// against the image length.
#[derive(Debug, Clone)]
pub struct Ovmf<'a> {
    data: &'a [u8],
    reset_eip: Option<u32>,
    hashes_table_gpa: Option<u32>,
    sections: Vec<MetadataSection>,
}

/// Size of a footer table entry header: a `u16` length then a GUID.
const ENTRY_HEADER: usize = 18;
/// Size of the `ASEV` header: signature, size, version, item count.
const METADATA_HEADER: usize = 16;
/// Size of one `ASEV` section descriptor: GPA, size, type.
const METADATA_ITEM: usize = 12;

impl<'a> Ovmf<'a> {
    /// Parses the footer table (which ends 32 bytes before the end of the image) and the SEV
    /// metadata it points to. Entries the digest may need are kept; others are skipped. A
    /// firmware without the metadata entry has no sections (and so no SNP-specific pages).
    pub fn parse(data: &'a [u8]) -> Result<Self, SnpMeasureError> {
        let len = data.len();
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len as u64 > FOUR_GIB {
            return Err(SnpMeasureError::FirmwareSize { len });
        }
        let footer_at = len - 32 - ENTRY_HEADER;
        if data[footer_at + 2..footer_at + ENTRY_HEADER] != guid::FOOTER {
            return Err(SnpMeasureError::NoFooterTable);
        }
        let total = usize::from(le16(data, footer_at).unwrap_or(0));
        let table_len = total
            .checked_sub(ENTRY_HEADER)
            .ok_or(SnpMeasureError::FooterTable(
                "footer size smaller than its header",
            ))?;
        let table_start = footer_at
            .checked_sub(table_len)
            .ok_or(SnpMeasureError::FooterTable("table larger than the image"))?;
        let mut table = &data[table_start..footer_at];

        let mut reset_eip = None;
        let mut hashes_table_gpa = None;
        let mut metadata_offset = None;
        // Entries are laid out backwards from the footer: data, then length and GUID.
        while table.len() >= ENTRY_HEADER {
            let header = table.len() - ENTRY_HEADER;
            let size = usize::from(le16(table, header).unwrap_or(0));
            if size < ENTRY_HEADER || size > table.len() {
                return Err(SnpMeasureError::FooterTable("entry size out of bounds"));
            }
            let entry_guid = &table[header + 2..];
            let body = &table[table.len() - size..header];
            let slot = if entry_guid == guid::SEV_ES_RESET_BLOCK {
                Some((&mut reset_eip, "SEV-ES reset block"))
            } else if entry_guid == guid::SEV_HASH_TABLE_RV {
                Some((&mut hashes_table_gpa, "SEV hash table"))
            } else if entry_guid == guid::SEV_METADATA {
                Some((&mut metadata_offset, "SEV metadata"))
            } else {
                None
            };
            if let Some((slot, name)) = slot {
                if slot.is_some() {
                    return Err(SnpMeasureError::FooterTable("duplicate entry"));
                }
                *slot = Some(le32(body, 0).ok_or(SnpMeasureError::FooterTable(name))?);
            }
            table = &table[..table.len() - size];
        }

        let sections = match metadata_offset {
            Some(offset) => Self::parse_metadata(data, offset)?,
            None => Vec::new(),
        };
        Ok(Self {
            data,
            reset_eip,
            hashes_table_gpa,
            sections,
        })
    }

    fn parse_metadata(data: &[u8], offset: u32) -> Result<Vec<MetadataSection>, SnpMeasureError> {
        let start = data
            .len()
            .checked_sub(offset as usize)
            .ok_or(SnpMeasureError::Metadata("offset beyond the image start"))?;
        let header = data
            .get(start..start + METADATA_HEADER)
            .ok_or(SnpMeasureError::Metadata("header beyond the image end"))?;
        if &header[0..4] != b"ASEV" {
            return Err(SnpMeasureError::Metadata("no ASEV signature"));
        }
        let size = le32(header, 4).unwrap_or(0) as usize;
        let version = le32(header, 8).unwrap_or(0);
        let count = le32(header, 12).unwrap_or(0) as usize;
        if version != 1 {
            return Err(SnpMeasureError::Metadata("version is not 1"));
        }
        let items = size
            .checked_sub(METADATA_HEADER)
            .and_then(|n| data.get(start + METADATA_HEADER..start + METADATA_HEADER + n))
            .ok_or(SnpMeasureError::Metadata("size out of bounds"))?;
        if count > items.len() / METADATA_ITEM {
            return Err(SnpMeasureError::Metadata("more items than its size holds"));
        }
        items
            .chunks_exact(METADATA_ITEM)
            .take(count)
            .map(|item| {
                Ok(MetadataSection {
                    gpa: le32(item, 0).unwrap_or(0),
                    size: le32(item, 4).unwrap_or(0),
                    kind: SectionKind::from_raw(le32(item, 8).unwrap_or(0))?,
                })
            })
            .collect()
    }

    /// The image bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Guest-physical address of the first byte: the image ends at 4 GiB.
    pub fn gpa(&self) -> u64 {
        FOUR_GIB - self.data.len() as u64
    }

    /// The AP reset address from the SEV-ES reset block, if the image has one.
    pub fn sev_es_reset_eip(&self) -> Option<u32> {
        self.reset_eip
    }

    /// Guest-physical address of the kernel hashes table, if the image reserves one.
    pub fn sev_hashes_table_gpa(&self) -> Option<u32> {
        self.hashes_table_gpa
    }

    /// The SEV metadata sections, in the order the firmware declares (and QEMU measures)
    /// them.
    pub fn sections(&self) -> &[MetadataSection] {
        &self.sections
    }

    /// Whether the firmware declares a section of this kind.
    pub fn has_section(&self, kind: SectionKind) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }
}

/// `PAGE_INFO.PAGE_TYPE` values (SEV-SNP ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// A page of data, measured by its SHA-384.
    Normal = 1,
    /// A VMSA page (register state), measured by its SHA-384 at the VMSA GPA.
    Vmsa = 2,
    /// A zero page.
    Zero = 3,
    /// A page whose contents are not measured.
    Unmeasured = 4,
    /// The secrets page.
    Secrets = 5,
    /// The CPUID page.
    Cpuid = 6,
}

/// A launch digest being extended page by page, as the PSP does during `SNP_LAUNCH_UPDATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    ld: [u8; DIGEST_LEN],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// The digest before any page: 48 zero bytes.
    pub fn new() -> Self {
        Self {
            ld: [0; DIGEST_LEN],
        }
    }

    /// Continues from a digest computed earlier (for example [`firmware_digest`] of a
    /// firmware published only as its digest).
    pub fn from_seed(seed: [u8; DIGEST_LEN]) -> Self {
        Self { ld: seed }
    }

    /// The digest so far.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        self.ld
    }

    /// Extends the digest with one `PAGE_INFO` record (all VMPL permissions zero, not an IMI
    /// page).
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; DIGEST_LEN]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        // 99: IMI_PAGE, 100..103: VMPL3..1 permissions, 103: reserved; all zero.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.ld = Sha384::digest(info).into();
    }

    /// Measures `data` as normal pages starting at `gpa`; `data` must be whole pages (a
    /// trailing partial page is measured zero-padded, which no VMM does: callers check).
    pub fn update_normal_pages(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks(PAGE_SIZE).enumerate() {
            let digest: [u8; DIGEST_LEN] = if page.len() == PAGE_SIZE {
                Sha384::digest(page).into()
            } else {
                let mut full = [0u8; PAGE_SIZE];
                full[..page.len()].copy_from_slice(page);
                Sha384::digest(full).into()
            };
            self.update(PageType::Normal, gpa + (i * PAGE_SIZE) as u64, &digest);
        }
    }

    /// Measures `pages` pages of one contents-less type (zero, unmeasured, secrets, CPUID)
    /// starting at `gpa`.
    pub fn update_empty_pages(&mut self, page_type: PageType, gpa: u64, pages: u64) {
        for i in 0..pages {
            self.update(page_type, gpa + i * PAGE_SIZE as u64, &[0; DIGEST_LEN]);
        }
    }

    /// Measures one VMSA page.
    pub fn update_vmsa_page(&mut self, page: &[u8; PAGE_SIZE]) {
        self.update(PageType::Vmsa, VMSA_GPA, &Sha384::digest(page).into());
    }
}

/// The digest after the firmware's own pages only (`sev-snp-measure --mode snp:ovmf-hash`):
/// a seed for [`LaunchDigest::from_seed`] when the firmware is published as a digest.
pub fn firmware_digest(firmware: &[u8]) -> Result<[u8; DIGEST_LEN], SnpMeasureError> {
    let ovmf = Ovmf::parse(firmware)?;
    let mut ld = LaunchDigest::new();
    ld.update_normal_pages(ovmf.gpa(), ovmf.data());
    Ok(ld.digest())
}

/// The SHA-256 hashes QEMU writes into the `SNP_KERNEL_HASHES` page for a direct kernel boot
/// (`-kernel`, `-initrd`, `-append` with `kernel-hashes=on`); OVMF refuses to boot a kernel,
/// initrd or command line whose hash differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel image.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of nothing when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line with its terminating NUL (just the NUL when empty).
    pub cmdline: [u8; 32],
}

/// Size of the hashes table QEMU writes: a GUID header and three GUIDed SHA-256 entries.
const HASH_TABLE_LEN: usize = 16 + 2 + 3 * (16 + 2 + 32);
/// The table as QEMU places it, padded to 16 bytes.
pub const PADDED_HASH_TABLE_LEN: usize = HASH_TABLE_LEN.next_multiple_of(16);

impl KernelHashes {
    /// Hashes the kernel, the initrd (none hashes as empty) and the command line (none is
    /// empty; the NUL QEMU passes is appended here).
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> Self {
        let mut cmd = Sha256::new();
        cmd.update(cmdline.unwrap_or("").as_bytes());
        cmd.update([0u8]);
        Self {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or(&[])).into(),
            cmdline: cmd.finalize().into(),
        }
    }

    /// The padded table: header GUID and length, then the cmdline, initrd and kernel entries
    /// (GUID, length, hash each), zero-padded to a multiple of 16 bytes.
    pub fn table(&self) -> [u8; PADDED_HASH_TABLE_LEN] {
        let mut t = [0u8; PADDED_HASH_TABLE_LEN];
        t[..16].copy_from_slice(&guid::HASH_TABLE_HEADER);
        t[16..18].copy_from_slice(&(HASH_TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (guid::HASH_CMDLINE, &self.cmdline),
            (guid::HASH_INITRD, &self.initrd),
            (guid::HASH_KERNEL, &self.kernel),
        ];
        for (i, (g, hash)) in entries.into_iter().enumerate() {
            let at = 18 + i * 50;
            t[at..at + 16].copy_from_slice(&g);
            t[at + 16..at + 18].copy_from_slice(&50u16.to_le_bytes());
            t[at + 18..at + 50].copy_from_slice(hash);
        }
        t
    }

    /// The page QEMU loads: the padded table at `offset` within the page, zeros around it.
    pub fn page(&self, offset: usize) -> Result<[u8; PAGE_SIZE], SnpMeasureError> {
        if offset > PAGE_SIZE - PADDED_HASH_TABLE_LEN {
            return Err(SnpMeasureError::HashTableOffset(offset));
        }
        let mut page = [0u8; PAGE_SIZE];
        page[offset..offset + PADDED_HASH_TABLE_LEN].copy_from_slice(&self.table());
        Ok(page)
    }
}

/// The CPUID family/model/stepping signature (CPUID Fn0000_0001_EAX) as AMD's CPUID
/// specification composes it; QEMU puts it in each VMSA's RDX.
pub fn cpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// The guest vCPU model (QEMU `-cpu`). Only its CPUID signature enters the digest, so QEMU's
/// versioned names (`EPYC-v4`, `EPYC-Milan-v2`…) map to their family here; [`FromStr`]
/// accepts every name `sev-snp-measure` 0.0.13 lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuType {
    /// `EPYC`, `EPYC-v1`…`EPYC-v4`, `EPYC-IBPB`: family 23, model 1, stepping 2.
    Epyc,
    /// `EPYC-Rome`, `EPYC-Rome-v1`…`v3`: family 23, model 49, stepping 0.
    EpycRome,
    /// `EPYC-Milan`, `EPYC-Milan-v1`, `v2`: family 25, model 1, stepping 1.
    EpycMilan,
    /// `EPYC-Genoa`, `EPYC-Genoa-v1`: family 25, model 17, stepping 0.
    EpycGenoa,
    /// `EPYC-Turin`: family 26, model 0, stepping 0.
    EpycTurin,
    /// Any other model, by its signature (see [`cpu_signature`]).
    Signature(u32),
}

impl VcpuType {
    /// The CPUID signature QEMU reports for this model.
    pub fn signature(self) -> u32 {
        match self {
            Self::Epyc => cpu_signature(23, 1, 2),
            Self::EpycRome => cpu_signature(23, 49, 0),
            Self::EpycMilan => cpu_signature(25, 1, 1),
            Self::EpycGenoa => cpu_signature(25, 17, 0),
            Self::EpycTurin => cpu_signature(26, 0, 0),
            Self::Signature(sig) => sig,
        }
    }
}

impl FromStr for VcpuType {
    type Err = SnpMeasureError;

    /// A QEMU model name (`EPYC-Milan`, `EPYC-v4`…), or a signature in hex (`0x800f12`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "EPYC" | "EPYC-v1" | "EPYC-v2" | "EPYC-IBPB" | "EPYC-v3" | "EPYC-v4" => Self::Epyc,
            "EPYC-Rome" | "EPYC-Rome-v1" | "EPYC-Rome-v2" | "EPYC-Rome-v3" => Self::EpycRome,
            "EPYC-Milan" | "EPYC-Milan-v1" | "EPYC-Milan-v2" => Self::EpycMilan,
            "EPYC-Genoa" | "EPYC-Genoa-v1" => Self::EpycGenoa,
            "EPYC-Turin" => Self::EpycTurin,
            other => match other.strip_prefix("0x") {
                Some(hex) => Self::Signature(
                    u32::from_str_radix(hex, 16)
                        .map_err(|_| SnpMeasureError::Input(format!("bad signature {other}")))?,
                ),
                None => {
                    return Err(SnpMeasureError::Input(format!(
                        "unknown vCPU type {other} (a QEMU EPYC model name or 0x signature)"
                    )));
                }
            },
        })
    }
}

/// The hypervisor that launches the guest: each sets a few initial registers differently,
/// and EC2 measures the CPUID page last, GCE the SEC memory unmeasured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vmm {
    /// QEMU/KVM.
    #[default]
    Qemu,
    /// Amazon EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

impl FromStr for Vmm {
    type Err = SnpMeasureError;

    /// `qemu`, `ec2` or `gce` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(Self::Qemu),
            "ec2" => Ok(Self::Ec2),
            "gce" => Ok(Self::Gce),
            _ => Err(SnpMeasureError::Input(format!(
                "unknown VMM {s} (qemu, ec2, gce)"
            ))),
        }
    }
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::Ec2 => "ec2",
            Self::Gce => "gce",
        })
    }
}

/// Writes a VMCB segment (selector, attributes, limit, base) at `at`.
fn put_segment(page: &mut [u8; PAGE_SIZE], at: usize, selector: u16, attrib: u16, base: u64) {
    page[at..at + 2].copy_from_slice(&selector.to_le_bytes());
    page[at + 2..at + 4].copy_from_slice(&attrib.to_le_bytes());
    page[at + 4..at + 8].copy_from_slice(&0xffffu32.to_le_bytes());
    page[at + 8..at + 16].copy_from_slice(&base.to_le_bytes());
}

fn put64(page: &mut [u8; PAGE_SIZE], at: usize, v: u64) {
    page[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The initial VMSA (SEV-ES save area, AMD APM vol. 2 table B-4) of a vCPU that starts at
/// `eip` in real mode, as `vmm` sets it up: `sev_features` is the guest's SEV features
/// (bit 0, SNP active, is always set for an SNP guest), `vcpu_sig` goes in RDX.
pub fn vmsa_page(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: Vmm) -> Box<[u8; PAGE_SIZE]> {
    let (cs, ss, tr, rdx, mxcsr, fcw, g_pat): (u16, u16, u16, u64, u32, u16, u64) = match vmm {
        Vmm::Qemu => (
            0x9b,
            0x93,
            0x8b,
            u64::from(vcpu_sig),
            0x1f80,
            0x37f,
            0x0007_0406_0007_0406,
        ),
        Vmm::Ec2 => {
            let cs = if eip == BSP_RESET_EIP { 0x9a } else { 0x9b };
            (cs, 0x92, 0x83, 0x600, 0, 0, 0x0007_0406_0007_0406)
        }
        Vmm::Gce => (0x9b, 0x93, 0x8b, 0x600, 0, 0, 0x0007_0106),
    };
    let mut p = Box::new([0u8; PAGE_SIZE]);
    put_segment(&mut p, 0x00, 0, 0x93, 0); // es
    put_segment(&mut p, 0x10, 0xf000, cs, u64::from(eip & 0xffff_0000)); // cs
    put_segment(&mut p, 0x20, 0, ss, 0); // ss
    put_segment(&mut p, 0x30, 0, 0x93, 0); // ds
    put_segment(&mut p, 0x40, 0, 0x93, 0); // fs
    put_segment(&mut p, 0x50, 0, 0x93, 0); // gs
    put_segment(&mut p, 0x60, 0, 0, 0); // gdtr
    put_segment(&mut p, 0x70, 0, 0x82, 0); // ldtr
    put_segment(&mut p, 0x80, 0, 0, 0); // idtr
    put_segment(&mut p, 0x90, 0, tr, 0); // tr
    put64(&mut p, 0xd0, 0x1000); // efer: SVME, as KVM sets it
    put64(&mut p, 0x148, 0x40); // cr4: MCE, as KVM sets it
    put64(&mut p, 0x158, 0x10); // cr0
    put64(&mut p, 0x160, 0x400); // dr7
    put64(&mut p, 0x168, 0xffff_0ff0); // dr6
    put64(&mut p, 0x170, 0x2); // rflags
    put64(&mut p, 0x178, u64::from(eip & 0xffff)); // rip
    put64(&mut p, 0x268, g_pat); // g_pat
    put64(&mut p, 0x310, rdx); // rdx
    put64(&mut p, 0x3b0, sev_features); // sev_features
    put64(&mut p, 0x3e8, 0x1); // xcr0
    p[0x408..0x40c].copy_from_slice(&mxcsr.to_le_bytes()); // mxcsr
    p[0x410..0x412].copy_from_slice(&fcw.to_le_bytes()); // x87 fcw
    p
}

/// What goes into an SEV-SNP guest at launch: the inputs of its launch digest. The operator
/// must launch with exactly these (same firmware file, same `-kernel`/`-initrd`/`-append`
/// with `kernel-hashes=on`, same `-smp` count and `-cpu` model, same SEV features) for the
/// report's `MEASUREMENT` to equal [`Self::launch_digest`].
#[derive(Debug, Clone, Copy)]
pub struct SnpImage<'a> {
    /// The OVMF firmware image (for kernel hashing, an `AmdSev` build with an
    /// `SNP_KERNEL_HASHES` section).
    pub firmware: &'a [u8],
    /// The kernel (or UKI) QEMU boots directly; `None` measures the firmware alone (no
    /// `-kernel`, or `kernel-hashes=off`).
    pub kernel: Option<&'a [u8]>,
    /// The initrd; only with a kernel.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line, without a terminating NUL; only with a kernel.
    pub cmdline: Option<&'a str>,
    /// Number of vCPUs (`-smp`), 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
    /// The vCPU model (`-cpu`).
    pub vcpu_type: VcpuType,
    /// The hypervisor.
    pub vmm: Vmm,
    /// The guest's SEV features as written into each VMSA (`sev-snp-measure
    /// --guest-features`; 0x1, SNP active, for a QEMU guest without extra features).
    pub guest_features: u64,
}

impl SnpImage<'_> {
    /// The launch digest the PSP will compute for this guest, which its attestation reports
    /// carry as `MEASUREMENT`.
    pub fn launch_digest(&self) -> Result<[u8; DIGEST_LEN], SnpMeasureError> {
        let ovmf = Ovmf::parse(self.firmware)?;
        let mut ld = LaunchDigest::new();
        ld.update_normal_pages(ovmf.gpa(), ovmf.data());
        self.measure_after_firmware(&ovmf, ld)
    }

    /// The launch digest continued from a [`firmware_digest`] of `self.firmware` computed
    /// earlier (`sev-snp-measure --snp-ovmf-hash`): the firmware's pages are not hashed
    /// again, but its metadata is still read from `self.firmware`.
    pub fn launch_digest_from_firmware_digest(
        &self,
        firmware_digest: [u8; DIGEST_LEN],
    ) -> Result<[u8; DIGEST_LEN], SnpMeasureError> {
        let ovmf = Ovmf::parse(self.firmware)?;
        self.measure_after_firmware(&ovmf, LaunchDigest::from_seed(firmware_digest))
    }

    fn measure_after_firmware(
        &self,
        ovmf: &Ovmf<'_>,
        mut ld: LaunchDigest,
    ) -> Result<[u8; DIGEST_LEN], SnpMeasureError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SnpMeasureError::Input(format!(
                "vcpus {} is not in 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.cmdline.is_some()) {
            return Err(SnpMeasureError::Input(
                "an initrd or command line is only measured with a kernel".into(),
            ));
        }
        let hashes = self
            .kernel
            .map(|k| KernelHashes::new(k, self.initrd, self.cmdline));
        if hashes.is_some() && !ovmf.has_section(SectionKind::KernelHashes) {
            return Err(SnpMeasureError::NoKernelHashesSection);
        }
        let ap_eip = ovmf
            .sev_es_reset_eip()
            .ok_or(SnpMeasureError::MissingEntry("SEV-ES reset block"))?;

        measure_sections(&mut ld, ovmf, hashes.as_ref(), self.vmm)?;

        let sig = self.vcpu_type.signature();
        let bsp = vmsa_page(BSP_RESET_EIP, self.guest_features, sig, self.vmm);
        ld.update_vmsa_page(&bsp);
        if self.vcpus > 1 {
            let ap = vmsa_page(ap_eip, self.guest_features, sig, self.vmm);
            for _ in 1..self.vcpus {
                ld.update_vmsa_page(&ap);
            }
        }
        Ok(ld.digest())
    }
}

/// Measures the SEV metadata sections as QEMU loads them (after the firmware pages, before
/// the VMSAs): `hashes` fills the `SNP_KERNEL_HASHES` page, which is zero pages without it.
pub fn measure_sections(
    ld: &mut LaunchDigest,
    ovmf: &Ovmf<'_>,
    hashes: Option<&KernelHashes>,
    vmm: Vmm,
) -> Result<(), SnpMeasureError> {
    let mut total_pages = 0u64;
    for s in ovmf.sections() {
        let one_page = matches!(s.kind, SectionKind::Secrets | SectionKind::Cpuid);
        if !(s.gpa as usize).is_multiple_of(PAGE_SIZE)
            || (!one_page && !(s.size as usize).is_multiple_of(PAGE_SIZE))
        {
            return Err(SnpMeasureError::SectionAlignment {
                gpa: s.gpa,
                size: s.size,
            });
        }
        total_pages += if one_page {
            1
        } else {
            u64::from(s.size) / PAGE_SIZE as u64
        };
    }
    if total_pages > MAX_SECTION_PAGES {
        return Err(SnpMeasureError::TooManyPages);
    }
    for s in ovmf.sections() {
        let gpa = u64::from(s.gpa);
        let pages = u64::from(s.size) / PAGE_SIZE as u64;
        match s.kind {
            SectionKind::SecMemory if vmm == Vmm::Gce => {
                ld.update_empty_pages(PageType::Unmeasured, gpa, pages)
            }
            SectionKind::SecMemory | SectionKind::SvsmCaa => {
                ld.update_empty_pages(PageType::Zero, gpa, pages)
            }
            SectionKind::Secrets => ld.update_empty_pages(PageType::Secrets, gpa, 1),
            SectionKind::Cpuid if vmm == Vmm::Ec2 => {}
            SectionKind::Cpuid => ld.update_empty_pages(PageType::Cpuid, gpa, 1),
            SectionKind::KernelHashes => match hashes {
                Some(hashes) => {
                    if s.size as usize != PAGE_SIZE {
                        return Err(SnpMeasureError::KernelHashesSectionSize(s.size));
                    }
                    let table_gpa = ovmf
                        .sev_hashes_table_gpa()
                        .ok_or(SnpMeasureError::MissingEntry("SEV hash table"))?;
                    let page = hashes.page(table_gpa as usize % PAGE_SIZE)?;
                    ld.update_normal_pages(gpa, &page);
                }
                None => ld.update_empty_pages(PageType::Zero, gpa, pages),
            },
        }
    }
    if vmm == Vmm::Ec2 {
        for s in ovmf.sections() {
            if s.kind == SectionKind::Cpuid {
                ld.update_empty_pages(PageType::Cpuid, u64::from(s.gpa), 1);
            }
        }
    }
    Ok(())
}

/// The COCOON image hash of an SEV-SNP guest, as the verifier computes it from a report
/// ([`crate::sev::image_hash`]): `SHA-256(launch digest ‖ host data)`. With
/// [`host_data_for_config`] as host data, it names the image and the config together: the
/// value for the root's allowlist.
pub fn image_hash(launch_digest: &[u8; DIGEST_LEN], host_data: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(launch_digest);
    h.update(host_data);
    h.finalize().into()
}
