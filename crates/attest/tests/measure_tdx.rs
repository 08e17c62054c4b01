//! TDX measurement prediction (`cocoon_attest::measure::tdx`): a synthetic TDVF image built
//! here (parsing, MRTD, every malformed-input error), and the vectors of the independent
//! calculator tinfoilsh/tdx-measure on Debian's OVMF.fd and kernel
//! (`testvectors/measure/tdx/`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_attest::measure::tdx::{
    self, InitrdArg, KernelError, KernelLoad, PageAddOrder, PeError, QemuKernelParams, Rtmr0Inputs,
    SectionFault, TdvfError, TdvfSectionType, TdxImage, TdxMeasureError,
};
use sha2::{Digest, Sha256, Sha384};

// --- a synthetic TDVF image ------------------------------------------------------------

const IMAGE_LEN: usize = 0x10000;
const DESCRIPTOR_AT: usize = 0x8000;

/// `(data_offset, raw_size, address, memory_size, type, attributes)`
type Sec = (u32, u32, u64, u64, u32, u32);

fn default_sections() -> Vec<Sec> {
    vec![
        (0x1000, 0x2000, 0xffc0_0000, 0x2000, 0, 1), // BFV, MR.EXTEND
        (0x3000, 0x1000, 0xffc0_2000, 0x1000, 1, 0), // CFV, not extended
        (0, 0, 0x80_9000, 0x2000, 2, 0),             // TD HOB
        (0, 0, 0x80_b000, 0x1000, 3, 0),             // TempMem
        (0, 0, 0x90_0000, 0x4000, 4, 2),             // PermMem, PAGE.AUG
    ]
}

fn guid_bytes(s: &str) -> [u8; 16] {
    let parts: Vec<&str> = s.split('-').collect();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let mut b = hex::decode(p).unwrap();
        if i < 3 {
            b.reverse();
        }
        out.extend(b);
    }
    out.try_into().unwrap()
}

/// Builds an image: a `TDVF` descriptor at 0x8000 with `sections`, the OVMF GUIDed table
/// (an unrelated entry, then the TDX metadata offset entry) ending 32 bytes before the end.
fn build(sections: &[Sec]) -> Vec<u8> {
    let mut img: Vec<u8> = (0..IMAGE_LEN).map(|i| (i * 31 % 251) as u8).collect();
    let d = DESCRIPTOR_AT;
    img[d..d + 4].copy_from_slice(b"TDVF");
    let len = 16 + 32 * sections.len() as u32;
    img[d + 4..d + 8].copy_from_slice(&len.to_le_bytes());
    img[d + 8..d + 12].copy_from_slice(&1u32.to_le_bytes());
    img[d + 12..d + 16].copy_from_slice(&(sections.len() as u32).to_le_bytes());
    for (i, s) in sections.iter().enumerate() {
        let at = d + 16 + 32 * i;
        img[at..at + 4].copy_from_slice(&s.0.to_le_bytes());
        img[at + 4..at + 8].copy_from_slice(&s.1.to_le_bytes());
        img[at + 8..at + 16].copy_from_slice(&s.2.to_le_bytes());
        img[at + 16..at + 24].copy_from_slice(&s.3.to_le_bytes());
        img[at + 24..at + 28].copy_from_slice(&s.4.to_le_bytes());
        img[at + 28..at + 32].copy_from_slice(&s.5.to_le_bytes());
    }
    let mut table = Vec::new();
    // An unrelated entry (SEV's) with 6 bytes of data: skipped while searching.
    table.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    table.extend_from_slice(&24u16.to_le_bytes());
    table.extend_from_slice(&guid_bytes("00f771de-1a7e-4fcb-890e-68c77e2fb44e"));
    table.extend_from_slice(&((IMAGE_LEN - d) as u32).to_le_bytes());
    table.extend_from_slice(&22u16.to_le_bytes());
    table.extend_from_slice(&guid_bytes("e47a6535-984a-4798-865e-4685a7bf8ec2"));
    let total = (table.len() + 18) as u16;
    table.extend_from_slice(&total.to_le_bytes());
    table.extend_from_slice(&guid_bytes("96b582de-1fb2-45f7-baea-a366c55a082d"));
    let end = IMAGE_LEN - 32;
    img[end - table.len()..end].copy_from_slice(&table);
    img
}

fn table_start(img_len: usize) -> usize {
    // Footer total length field.
    img_len - 32 - 18
}

/// MRTD written out from the TDX module's definition for the default synthetic image,
/// interleaved: for each non-AUG section page, a PAGE.ADD record; for the BFV's pages, 16
/// MR.EXTEND records each followed by its 256 bytes.
fn spec_mrtd(img: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    let rec = |name: &[u8], gpa: u64| {
        let mut r = [0u8; 128];
        r[..name.len()].copy_from_slice(name);
        r[16..24].copy_from_slice(&gpa.to_le_bytes());
        r
    };
    for page in 0..2u64 {
        let gpa = 0xffc0_0000 + page * 0x1000;
        h.update(rec(b"MEM.PAGE.ADD", gpa));
        for c in 0..16u64 {
            h.update(rec(b"MR.EXTEND", gpa + c * 256));
            let off = 0x1000 + (page * 0x1000 + c * 256) as usize;
            h.update(&img[off..off + 256]);
        }
    }
    h.update(rec(b"MEM.PAGE.ADD", 0xffc0_2000));
    h.update(rec(b"MEM.PAGE.ADD", 0x80_9000));
    h.update(rec(b"MEM.PAGE.ADD", 0x80_a000));
    h.update(rec(b"MEM.PAGE.ADD", 0x80_b000));
    h.finalize().into()
}

#[test]
fn synthetic_tdvf_parses_and_mrtd_follows_the_tdx_module_records() {
    let img = build(&default_sections());
    let meta = tdx::parse_tdvf(&img).unwrap();
    assert_eq!(meta.descriptor_offset, DESCRIPTOR_AT);
    let types: Vec<_> = meta.sections.iter().map(|s| s.section_type).collect();
    assert_eq!(
        types,
        [
            TdvfSectionType::Bfv,
            TdvfSectionType::Cfv,
            TdvfSectionType::TdHob,
            TdvfSectionType::TempMem,
            TdvfSectionType::PermMem
        ]
    );
    assert!(meta.sections[0].mr_extend() && !meta.sections[0].page_aug());
    assert!(meta.sections[4].page_aug());

    let interleaved = tdx::mrtd(&img, &meta, PageAddOrder::Interleaved);
    assert_eq!(interleaved, spec_mrtd(&img));
    let two_pass = tdx::mrtd(&img, &meta, PageAddOrder::AllAddsFirst);
    assert_ne!(interleaved, two_pass, "the page-add order changes MRTD");

    // A byte of the extended BFV changes MRTD; a byte of the (unextended) CFV does not.
    let mut bfv = img.clone();
    bfv[0x1000 + 0x1234] ^= 1;
    assert_ne!(
        tdx::mrtd(
            &bfv,
            &tdx::parse_tdvf(&bfv).unwrap(),
            PageAddOrder::Interleaved
        ),
        interleaved
    );
    let mut cfv = img.clone();
    cfv[0x3000 + 5] ^= 1;
    assert_eq!(
        tdx::mrtd(
            &cfv,
            &tdx::parse_tdvf(&cfv).unwrap(),
            PageAddOrder::Interleaved
        ),
        interleaved
    );
    assert_ne!(
        tdx::cfv_digest(&cfv, &tdx::parse_tdvf(&cfv).unwrap()),
        tdx::cfv_digest(&img, &meta)
    );

    // Moving the PAGE.AUG section leaves MRTD alone; moving the TD HOB does not.
    let mut s = default_sections();
    s[4].2 = 0xa0_0000;
    let moved = build(&s);
    assert_eq!(
        tdx::mrtd(
            &moved,
            &tdx::parse_tdvf(&moved).unwrap(),
            PageAddOrder::Interleaved
        ),
        interleaved
    );
    let mut s = default_sections();
    s[2].2 = 0x70_0000;
    let moved = build(&s);
    assert_ne!(
        tdx::mrtd(
            &moved,
            &tdx::parse_tdvf(&moved).unwrap(),
            PageAddOrder::Interleaved
        ),
        interleaved
    );
}

#[test]
fn synthetic_mr_extend_beyond_raw_data_hashes_zeros() {
    // A BFV with one page of raw data in two pages of memory: the second page is zeros.
    let mut s = default_sections();
    s[0].1 = 0x1000;
    let img = build(&s);
    let meta = tdx::parse_tdvf(&img).unwrap();
    let mut full = default_sections();
    full[0].1 = 0x2000;
    let reference = build(&full);
    let mut reference = reference;
    reference[0x2000..0x3000].fill(0);
    assert_eq!(
        tdx::mrtd(&img, &meta, PageAddOrder::Interleaved),
        tdx::mrtd(
            &reference,
            &tdx::parse_tdvf(&reference).unwrap(),
            PageAddOrder::Interleaved
        )
    );
}

fn parse_err(img: &[u8]) -> TdvfError {
    tdx::parse_tdvf(img).unwrap_err()
}

fn section_fault(sections: &[Sec]) -> SectionFault {
    match parse_err(&build(sections)) {
        TdvfError::Section { fault, .. } => fault,
        e => panic!("expected a section fault, got {e:?}"),
    }
}

#[test]
fn malformed_images_give_typed_errors() {
    let good = build(&default_sections());
    assert_eq!(parse_err(&good[..40]), TdvfError::TooShort { len: 40 });
    assert_eq!(parse_err(&[]), TdvfError::TooShort { len: 0 });
    assert_eq!(parse_err(&vec![0u8; 4096]), TdvfError::NoFooter);

    let t = table_start(IMAGE_LEN);
    let mut img = good.clone();
    img[t..t + 2].copy_from_slice(&10u16.to_le_bytes());
    assert_eq!(parse_err(&img), TdvfError::BadTableLength { len: 10 });
    let mut small = img[IMAGE_LEN - 0x1000..].to_vec();
    let ts = table_start(small.len());
    small[ts..ts + 2].copy_from_slice(&0xf000u16.to_le_bytes());
    assert_eq!(parse_err(&small), TdvfError::BadTableLength { len: 0xf000 });

    // The TDX entry's length (just before its GUID, at the end of the table body).
    let entry_len_at = t - 16 - 2;
    let mut img = good.clone();
    img[entry_len_at..entry_len_at + 2].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(parse_err(&img), TdvfError::BadEntryLength { len: 3 });
    img[entry_len_at..entry_len_at + 2].copy_from_slice(&500u16.to_le_bytes());
    assert_eq!(parse_err(&img), TdvfError::BadEntryLength { len: 500 });

    let mut img = good.clone();
    img[t - 16..t][0] ^= 0xff; // another GUID: no TDX entry, the other one is walked past
    assert_eq!(parse_err(&img), TdvfError::NoTdxMetadata);

    let off_at = entry_len_at - 4;
    let mut img = good.clone();
    img[off_at..off_at + 4].copy_from_slice(&0x20_0000u32.to_le_bytes());
    assert_eq!(
        parse_err(&img),
        TdvfError::BadMetadataOffset { offset: 0x20_0000 }
    );
    img[off_at..off_at + 4].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(parse_err(&img), TdvfError::BadMetadataOffset { offset: 8 });
    // A 5-byte entry instead of 4.
    let mut img = good.clone();
    img[entry_len_at..entry_len_at + 2].copy_from_slice(&23u16.to_le_bytes());
    assert_eq!(parse_err(&img), TdvfError::BadMetadataOffset { offset: 5 });

    let mut img = good.clone();
    img[DESCRIPTOR_AT] = b'X';
    assert_eq!(parse_err(&img), TdvfError::BadSignature);
    let mut img = good.clone();
    img[DESCRIPTOR_AT + 8] = 2;
    assert_eq!(parse_err(&img), TdvfError::UnsupportedVersion(2));
    for (count, length) in [
        (0u32, 16u32),
        (65, 16 + 32 * 65),
        (5, 100),
        (0x7000_0000, u32::MAX),
    ] {
        let mut img = good.clone();
        img[DESCRIPTOR_AT + 4..DESCRIPTOR_AT + 8].copy_from_slice(&length.to_le_bytes());
        img[DESCRIPTOR_AT + 12..DESCRIPTOR_AT + 16].copy_from_slice(&count.to_le_bytes());
        assert_eq!(
            parse_err(&img),
            TdvfError::BadSectionCount { count, length },
            "{count} sections"
        );
    }
    let mut s = default_sections();
    s[2].4 = 9;
    assert_eq!(section_fault(&s), SectionFault::UnknownType(9));
    let mut s = default_sections();
    s[0].5 = 5;
    assert_eq!(section_fault(&s), SectionFault::UnknownAttributes(5));
    let mut s = default_sections();
    s[2].2 = 0x80_9001;
    assert!(matches!(section_fault(&s), SectionFault::Unaligned { .. }));
    let mut s = default_sections();
    s[2].3 = 0;
    assert!(matches!(section_fault(&s), SectionFault::Unaligned { .. }));
    let mut s = default_sections();
    s[2].2 = u64::MAX - 0xfff;
    assert_eq!(section_fault(&s), SectionFault::AddressOverflow);
    let mut s = default_sections();
    s[0].1 = 0x3000;
    assert!(matches!(
        section_fault(&s),
        SectionFault::RawLargerThanMemory { .. }
    ));
    let mut s = default_sections();
    s[0].0 = 0xf000;
    assert!(matches!(
        section_fault(&s),
        SectionFault::RawOutsideImage { .. }
    ));
    let mut s = default_sections();
    s[0].0 = u32::MAX;
    assert!(matches!(
        section_fault(&s),
        SectionFault::RawOutsideImage { .. }
    ));
    let mut s = default_sections();
    s[2].1 = 0x10;
    assert_eq!(
        section_fault(&s),
        SectionFault::WrongRawSize(TdvfSectionType::TdHob)
    );
    let mut s = default_sections();
    s[1].1 = 0;
    assert_eq!(
        section_fault(&s),
        SectionFault::WrongRawSize(TdvfSectionType::Cfv)
    );
    let mut s = default_sections();
    s[0].5 = 3;
    assert_eq!(
        section_fault(&s),
        SectionFault::WrongAttributes(TdvfSectionType::Bfv)
    );
    let mut s = default_sections();
    s[3].5 = 1;
    assert_eq!(
        section_fault(&s),
        SectionFault::WrongAttributes(TdvfSectionType::TempMem)
    );
    let mut s = default_sections();
    s[4].5 = 0;
    assert_eq!(
        section_fault(&s),
        SectionFault::WrongAttributes(TdvfSectionType::PermMem)
    );

    // A huge memory-only section: refused before any hashing.
    let mut s = default_sections();
    s[3].3 = 1 << 40;
    assert_eq!(parse_err(&build(&s)), TdvfError::TooManyPages);
}

#[test]
fn every_truncation_and_byte_flip_of_the_metadata_is_refused_or_parsed_without_panic() {
    let good = build(&default_sections());
    for cut in (0..good.len()).step_by(97) {
        let _ = tdx::parse_tdvf(&good[cut..]);
        let _ = tdx::parse_tdvf(&good[..cut]);
    }
    for at in (DESCRIPTOR_AT..DESCRIPTOR_AT + 16 + 32 * 5).chain(IMAGE_LEN - 120..IMAGE_LEN) {
        for bit in [0x01u8, 0x80] {
            let mut img = good.clone();
            img[at] ^= bit;
            if let Ok(meta) = tdx::parse_tdvf(&img) {
                let _ = tdx::mrtd(&img, &meta, PageAddOrder::AllAddsFirst);
            }
        }
    }
}

// --- RTMR helpers ------------------------------------------------------------------------

#[test]
fn rtmr_extend_and_replay() {
    let zero = [0u8; 48];
    let d = tdx::sha384(b"role config");
    let mut h = Sha384::new();
    h.update(zero);
    h.update(d);
    let once: [u8; 48] = h.finalize().into();
    assert_eq!(tdx::rtmr_extend(&zero, &d), once);
    assert_eq!(tdx::rtmr_replay(&[d]), once);
    assert_eq!(tdx::rtmr_replay(&[]), zero);
    assert_ne!(tdx::rtmr_replay(&[d, d]), once);
}

#[test]
fn cmdline_event_is_utf16le_with_terminator_and_initrd_argument() {
    let utf16 = |s: &str| -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|u| u.to_le_bytes())
            .collect()
    };
    assert_eq!(
        tdx::cmdline_event("ro", false, InitrdArg::Appended),
        tdx::sha384(&utf16("ro"))
    );
    assert_eq!(
        tdx::cmdline_event("ro", true, InitrdArg::Appended),
        tdx::sha384(&utf16("ro initrd=initrd"))
    );
    assert_eq!(
        tdx::cmdline_event("ro", true, InitrdArg::Prepended),
        tdx::sha384(&utf16("initrd=initrd ro"))
    );
    assert_eq!(
        tdx::cmdline_event("", false, InitrdArg::Appended),
        tdx::sha384(&[0, 0])
    );
}

#[test]
fn pe_errors_are_typed() {
    assert_eq!(
        tdx::authenticode_sha384(&[0u8; 10]),
        Err(PeError::Truncated("DOS header"))
    );
    let mut pe = vec![0u8; 0x400];
    pe[0x3c] = 0x80;
    assert_eq!(tdx::authenticode_sha384(&pe), Err(PeError::NoPeSignature));
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    assert_eq!(tdx::authenticode_sha384(&pe), Err(PeError::BadMagic(0)));
    // PE32+, one section, headers 0x200.
    pe[0x86..0x88].copy_from_slice(&1u16.to_le_bytes());
    pe[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
    let opt = 0x98;
    pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    pe[opt + 60..opt + 64].copy_from_slice(&0x1000u32.to_le_bytes());
    pe[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
    assert_eq!(
        tdx::authenticode_sha384(&pe),
        Err(PeError::BadHeaderSize(0x1000))
    );
    pe[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
    let sec = opt + 0xf0;
    pe[sec + 16..sec + 20].copy_from_slice(&0x200u32.to_le_bytes());
    pe[sec + 20..sec + 24].copy_from_slice(&0x300u32.to_le_bytes());
    assert_eq!(
        tdx::authenticode_sha384(&pe),
        Err(PeError::SectionOutsideFile(0))
    );
    pe[sec + 20..sec + 24].copy_from_slice(&0x200u32.to_le_bytes());
    let base = tdx::authenticode_sha384(&pe).unwrap();
    // The checksum field is not hashed; the section's bytes are.
    let mut c = pe.clone();
    c[opt + 64] ^= 0xff;
    assert_eq!(tdx::authenticode_sha384(&c).unwrap(), base);
    let mut c = pe.clone();
    c[0x250] ^= 0xff;
    assert_ne!(tdx::authenticode_sha384(&c).unwrap(), base);
    // A certificate table at the end is excluded, with its directory entry.
    let mut signed = pe.clone();
    signed.extend_from_slice(&[0xaa; 0x40]);
    let dir = opt + 112 + 4 * 8;
    signed[dir..dir + 4].copy_from_slice(&0x400u32.to_le_bytes());
    signed[dir + 4..dir + 8].copy_from_slice(&0x40u32.to_le_bytes());
    assert_eq!(tdx::authenticode_sha384(&signed).unwrap(), base);
    // Data after the sections that is not the certificate table is hashed.
    let mut trailing = signed.clone();
    trailing.splice(0x400..0x400, [0x55u8; 8]);
    trailing[dir..dir + 4].copy_from_slice(&0x408u32.to_le_bytes());
    assert_ne!(tdx::authenticode_sha384(&trailing).unwrap(), base);
    let mut h = Sha384::new();
    h.update(&pe[..opt + 64]);
    h.update(&pe[opt + 68..dir]);
    h.update(&pe[dir + 8..0x200]);
    h.update(&pe[0x200..0x400]);
    h.update([0x55u8; 8]);
    let d: [u8; 48] = h.finalize().into();
    // (the header differs from pe's only in the excluded directory entry)
    assert_eq!(tdx::authenticode_sha384(&trailing).unwrap(), d);
    // Two sections over the same bytes: refused rather than hashed twice.
    let mut twice = pe.clone();
    twice[0x86..0x88].copy_from_slice(&2u16.to_le_bytes());
    twice.copy_within(sec..sec + 40, sec + 40);
    assert_eq!(
        tdx::authenticode_sha384(&twice),
        Err(PeError::SectionsOverlap)
    );
    // A certificate table larger than what follows the sections.
    let mut bad = signed.clone();
    bad[dir + 4..dir + 8].copy_from_slice(&0x80u32.to_le_bytes());
    assert_eq!(tdx::authenticode_sha384(&bad), Err(PeError::BadCertTable));
}

/// A minimal valid PE32+ image of 0x1000 bytes (headers 0x200, one section at 0x200),
/// without a Linux setup header: how a UKI looks to QEMU.
fn headerless_pe() -> Vec<u8> {
    let mut pe = vec![0u8; 0x1000];
    pe[0x3c] = 0x80;
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    pe[0x86..0x88].copy_from_slice(&1u16.to_le_bytes());
    pe[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
    let opt = 0x98;
    pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    pe[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
    pe[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
    let sec = opt + 0xf0;
    pe[sec + 16..sec + 20].copy_from_slice(&0xe00u32.to_le_bytes());
    pe[sec + 20..sec + 24].copy_from_slice(&0x200u32.to_le_bytes());
    for (i, b) in pe[0x200..].iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    pe
}

#[test]
fn uki_boot_measures_the_uki_and_its_command_line_only() {
    let firmware = build(&default_sections());
    let uki = headerless_pe();
    let stub_event = tdx::sha384(b"an event the UKI's stub measures");
    let img = TdxImage {
        firmware: &firmware,
        kernel: &uki,
        initrd: None,
        cmdline: "",
        kernel_load: KernelLoad::QemuPatched(QemuKernelParams {
            patch_headerless: false,
            ..QemuKernelParams::new(2 << 30)
        }),
        page_add_order: PageAddOrder::Interleaved,
        initrd_arg: InitrdArg::Appended,
        extra_rtmr2_events: &[stub_event],
        rtmr0: None,
    };
    let p = tdx::predict(&img).unwrap();
    // QEMU 9.2.1+ leaves a headerless image alone: the file's own Authenticode digest.
    assert_eq!(p.kernel_digest, tdx::authenticode_sha384(&uki).unwrap());
    assert_eq!(
        p.events[1][1..],
        tdx::rtmr1_events(&[0; 48])[1..],
        "the fixed EFI actions follow the UKI"
    );
    assert_eq!(
        p.events[2],
        vec![tdx::sha384(&[0, 0]), stub_event],
        "an empty command line (UTF-16 NUL), then the stub's events; no initrd event"
    );
    assert_eq!(p.rtmr2, tdx::rtmr_replay(&p.events[2]));
    assert_eq!(
        tdx::predict(&TdxImage {
            kernel_load: KernelLoad::Unmodified,
            ..img
        })
        .unwrap(),
        p
    );

    // Older QEMU writes 0xa33f and the command-line offset into the DOS header first.
    let old = tdx::predict(&TdxImage {
        kernel_load: KernelLoad::QemuPatched(QemuKernelParams::new(2 << 30)),
        ..img
    })
    .unwrap();
    let mut patched = uki.clone();
    patched[0x20..0x22].copy_from_slice(&0xa33fu16.to_le_bytes());
    patched[0x22..0x24].copy_from_slice(&(0xa000u16 - 16).to_le_bytes());
    assert_eq!(
        old.kernel_digest,
        tdx::authenticode_sha384(&patched).unwrap()
    );
    assert_ne!(old.rtmr1, p.rtmr1);
    assert_eq!(old.rtmr2, p.rtmr2);

    // A UKI cannot take -initrd.
    assert_eq!(
        tdx::predict(&TdxImage {
            initrd: Some(b"initrd"),
            kernel_load: KernelLoad::QemuPatched(QemuKernelParams::new(2 << 30)),
            ..img
        }),
        Err(TdxMeasureError::Kernel(KernelError::NoInitrdSupport))
    );
}

#[test]
fn qemu_kernel_patch_refusals() {
    let p = QemuKernelParams::new(1 << 30);
    assert_eq!(
        tdx::qemu_patch_kernel(&[0u8; 100], None, "", &p),
        Err(KernelError::TooShort(100))
    );
    // No Linux setup header (like a UKI): protocol 0, no initrd possible.
    let uki = vec![0u8; 0x2000];
    assert_eq!(
        tdx::qemu_patch_kernel(&uki, Some(10), "", &p),
        Err(KernelError::NoInitrdSupport)
    );
    let patched = tdx::qemu_patch_kernel(&uki, None, "console=ttyS0", &p).unwrap();
    assert_eq!(&patched[0x20..0x22], &0xa33fu16.to_le_bytes());
    // 0x9a000 - 16-byte-rounded command line size - 0x90000
    assert_eq!(&patched[0x22..0x24], &(0xa000u16 - 16).to_le_bytes());
    assert_eq!(patched[0x1000..], uki[0x1000..]);
    assert_eq!(
        tdx::qemu_patch_kernel(&uki, None, "vga=bogus", &p),
        Err(KernelError::BadVgaMode)
    );
    let vga = tdx::qemu_patch_kernel(&uki, None, "vga=0x317 ro", &p).unwrap();
    assert_eq!(&vga[0x1fa..0x1fc], &0x317u16.to_le_bytes());
}

// --- recorded vectors of tinfoilsh/tdx-measure on Debian's files ---------------------------

/// Paths inside the measurement inputs directory (`COCOON_MEASURE_INPUTS`, default
/// `~/.cache/cocoon/measure-inputs`), where `scripts/setup --measure` unpacks the exact
/// Debian packages the vectors were recorded from (`apt-get download PKG=VERSION`).
const OVMF_PATH: &str = "ovmf/usr/share/ovmf/OVMF.fd";
const OVMF_SHA256: &str = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773";
const KERNEL_PATH: &str = "linux/boot/vmlinuz-6.1.0-57-amd64";
const KERNEL_SHA256: &str = "85667e6c72245133bd7e3e80bac7d16b26fda15c0a3c68faa4b713850ea526cd";

fn vector_dir() -> String {
    format!(
        "{}/../../testvectors/measure/tdx",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn read_vector(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}", vector_dir())).unwrap()
}

/// A Debian package's file at its system path, checked against the SHA-256 the vectors were
/// recorded with. `None` (with a message) when the package is not installed, unless
/// `COCOON_REQUIRE_SYSTEM_VECTORS` is set; a different file always fails.
fn system_file(path: &str, sha256: &str, package: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("COCOON_MEASURE_INPUTS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/cocoon/measure-inputs")
        },
        std::path::PathBuf::from,
    );
    let path = &dir.join(path).display().to_string();
    match std::fs::read(path) {
        Ok(b) => {
            assert_eq!(
                hex::encode(Sha256::digest(&b)),
                sha256,
                "{path} is not the file the TDX vectors were recorded from \
                 (Debian package {package}; see testvectors/measure/tdx/README.md)"
            );
            Some(b)
        }
        Err(e) => {
            let msg = format!(
                "SKIPPED: {path} is absent ({e}); run scripts/setup --measure (Debian's {package}) \
                 to check the recorded tdx-measure vectors"
            );
            assert!(
                std::env::var_os("COCOON_REQUIRE_SYSTEM_VECTORS").is_none()
                    && std::env::var_os("COCOON_REQUIRE_PREREQS").is_none()
                    && std::env::var_os("CI").is_none(),
                "{msg}"
            );
            eprintln!("{msg}");
            None
        }
    }
}

fn d48(s: &str) -> [u8; 48] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn mem(s: &str) -> u64 {
    s.trim_end_matches('G').parse::<u64>().unwrap() << 30
}

#[test]
fn debian_ovmf_and_kernel_match_tdx_measure() {
    let Some(firmware) = system_file(OVMF_PATH, OVMF_SHA256, "ovmf (2022.11-6+deb12u2)") else {
        return;
    };
    let Some(kernel) = system_file(
        KERNEL_PATH,
        KERNEL_SHA256,
        "linux-image-6.1.0-57-amd64 (6.1.192-3)",
    ) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_slice(&read_vector("tdx-measure.json")).unwrap();
    let initrd = read_vector("initrd.img");
    let (loader, rsdp, tables) = (
        read_vector("table_loader.bin"),
        read_vector("rsdp.bin"),
        read_vector("acpi_tables.bin"),
    );
    let (order, b0, b1) = (
        read_vector("BootOrder.bin"),
        read_vector("Boot0000.bin"),
        read_vector("Boot0001.bin"),
    );
    let boot_options: [&[u8]; 2] = [&b0, &b1];
    let cmdline = v["cmdline"].as_str().unwrap();
    let tool_cfv = d48(v["cfv_digest_assumed_by_tool"].as_str().unwrap());
    let meta = tdx::parse_tdvf(&firmware).unwrap();
    assert!(meta.section(TdvfSectionType::Bfv).is_some());
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let memory = mem(case["memory"].as_str().unwrap());
        let order_name = case["page_add_order"].as_str().unwrap();
        let page_add_order = match order_name {
            "interleaved" => PageAddOrder::Interleaved,
            "all_adds_first" => PageAddOrder::AllAddsFirst,
            o => panic!("{o}"),
        };
        let hob = tdx::qemu_td_hob(&meta, memory);
        let img = TdxImage {
            firmware: &firmware,
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline,
            kernel_load: KernelLoad::QemuPatched(QemuKernelParams::new(memory)),
            page_add_order,
            initrd_arg: InitrdArg::Appended,
            extra_rtmr2_events: &[],
            rtmr0: Some(Rtmr0Inputs {
                td_hob: &hob,
                // tdx-measure does not hash the image's CFV: it uses a fixed digest of its
                // own OVMF_VARS.fd. Take the same to compare the rest of RTMR0.
                cfv_digest: tool_cfv,
                acpi_loader: &loader,
                acpi_rsdp: &rsdp,
                acpi_tables: &tables,
                boot_order: &order,
                boot_options: &boot_options,
                sbat_level: None,
            }),
        };
        let p = tdx::predict(&img).unwrap();
        let what = format!("{} {order_name}", case["memory"]);
        assert_eq!(hex::encode(p.mrtd), case["mrtd"], "MRTD {what}");
        assert_eq!(hex::encode(p.rtmr0.unwrap()), case["rtmr0"], "RTMR0 {what}");
        assert_eq!(hex::encode(p.rtmr1), case["rtmr1"], "RTMR1 {what}");
        assert_eq!(hex::encode(p.rtmr2), case["rtmr2"], "RTMR2 {what}");
        assert_eq!(p.events[1].len(), 5);
        assert_eq!(p.events[2].len(), 2);
    }

    // The unpatched kernel (QEMU >= 10) is measured as the file is: a different RTMR1.
    let unpatched = TdxImage {
        firmware: &firmware,
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline,
        kernel_load: KernelLoad::Unmodified,
        page_add_order: PageAddOrder::Interleaved,
        initrd_arg: InitrdArg::Appended,
        extra_rtmr2_events: &[],
        rtmr0: None,
    };
    let p = tdx::predict(&unpatched).unwrap();
    assert_eq!(p.kernel_digest, tdx::authenticode_sha384(&kernel).unwrap());
    assert_ne!(hex::encode(p.rtmr1), cases[0]["rtmr1"]);
    assert_eq!(p.rtmr0, None);
    assert!(p.events[0].is_empty());

    // Our own CFV digest of this image (tdx-measure has none to compare with).
    assert_eq!(
        hex::encode(tdx::cfv_digest(&firmware, &meta).unwrap()),
        include_str!("../../../testvectors/measure/tdx/debian-ovmf-cfv.sha384").trim()
    );
}

#[test]
fn predict_reports_kernel_and_firmware_faults() {
    let firmware = build(&default_sections());
    let img = TdxImage {
        firmware: &firmware,
        kernel: &[0u8; 0x2000],
        initrd: None,
        cmdline: "",
        kernel_load: KernelLoad::Unmodified,
        page_add_order: PageAddOrder::Interleaved,
        initrd_arg: InitrdArg::Appended,
        extra_rtmr2_events: &[],
        rtmr0: None,
    };
    assert_eq!(
        tdx::predict(&img),
        Err(TdxMeasureError::Pe(PeError::NoPeSignature))
    );
    let patched = TdxImage {
        initrd: Some(&[1, 2, 3]),
        kernel_load: KernelLoad::QemuPatched(QemuKernelParams::new(1 << 30)),
        ..img
    };
    assert_eq!(
        tdx::predict(&patched),
        Err(TdxMeasureError::Kernel(KernelError::NoInitrdSupport))
    );
    let bad_fw = TdxImage {
        firmware: &firmware[..100],
        ..img
    };
    assert_eq!(
        tdx::predict(&bad_fw),
        Err(TdxMeasureError::Firmware(TdvfError::NoFooter))
    );
}
