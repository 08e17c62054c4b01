//! The SEV-SNP launch digest (`cocoon_attest::measure::snp`) against digests recorded from
//! PyPI's `sev-snp-measure` 0.0.13 (`testvectors/measure/snp/`): synthetic OVMF images this
//! test rebuilds deterministically, the last page of a real AmdSev OVMF, and Debian's OVMF
//! builds when they are installed. With
//! `COCOON_SEV_SNP_MEASURE` naming the `sev-snp-measure` executable, the same cases (and more
//! vCPU counts) are also run through it live.

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_attest::measure::snp::{
    KernelHashes, LaunchDigest, Ovmf, PADDED_HASH_TABLE_LEN, SectionKind, SnpImage,
    SnpMeasureError, VcpuType, Vmm, firmware_digest, host_data_for_config, image_hash, vmsa_page,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A deterministic byte stream (xorshift64*), for firmware bodies, kernels and initrds.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Stored (mixed-endian) bytes of a GUID in text form.
fn guid(s: &str) -> [u8; 16] {
    let raw = hex::decode(s.replace('-', "")).expect("guid hex");
    let mut g = [0u8; 16];
    g.copy_from_slice(&raw);
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

const FOOTER: &str = "96b582de-1fb2-45f7-baea-a366c55a082d";
const HASH_TABLE_RV: &str = "7255371f-3a3b-4b04-927b-1da6efa8d454";
const RESET_BLOCK: &str = "00f771de-1a7e-4fcb-890e-68c77e2fb44e";
const METADATA: &str = "dc886566-984a-4798-a75e-5585a7bf67cc";
/// An entry the measurement does not use (OVMF's TDX metadata GUID), to be skipped.
const OTHER: &str = "e47a6535-984a-4798-865e-4685a7bf8ec2";

/// The AP reset address of the synthetic firmware (low 16 bits non-zero: CS base and RIP
/// split it).
const AP_EIP: u32 = 0xFFFE_F004;
/// Offset of the `ASEV` header from the end of the synthetic image.
const METADATA_FROM_END: usize = 0x800;

/// Parameters of a synthetic OVMF image.
#[derive(Debug, Clone, Copy)]
struct Synth {
    seed: u64,
    pages: usize,
    kernel_hashes: bool,
    svsm_caa: bool,
    hash_table_offset: u32,
}

impl Synth {
    fn from_json(v: &Value) -> Self {
        Self {
            seed: v["seed"].as_u64().expect("seed"),
            pages: v["pages"].as_u64().expect("pages") as usize,
            kernel_hashes: v["kernel_hashes"].as_bool().expect("kernel_hashes"),
            svsm_caa: v["svsm_caa"].as_bool().expect("svsm_caa"),
            hash_table_offset: v["hash_table_offset"].as_u64().expect("offset") as u32,
        }
    }

    /// A firmware image with an OVMF footer table (reset block, hash table, SEV metadata and
    /// one unrelated entry) and `ASEV` metadata laid out like OVMF's AmdSev build, over a
    /// pseudo-random body.
    fn build(&self) -> Vec<u8> {
        let len = self.pages * 4096;
        let mut fw = pseudo_random(self.seed, len);

        let mut sections: Vec<(u32, u32, u32)> = vec![
            (0x80_0000, 0x9000, 1),
            (0x80_9000, 0x1000, 2),
            (0x80_A000, 0x1000, 3),
        ];
        if self.svsm_caa {
            sections.push((0x80_B000, 0x1000, 4));
        }
        sections.push((0x80_C000, 0x4000, 1));
        if self.kernel_hashes {
            sections.push((0x81_0000, 0x1000, 0x10));
        }
        let meta_at = len - METADATA_FROM_END;
        let meta_len = 16 + 12 * sections.len();
        let mut meta = b"ASEV".to_vec();
        meta.extend_from_slice(&(meta_len as u32).to_le_bytes());
        meta.extend_from_slice(&1u32.to_le_bytes());
        meta.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for (gpa, size, kind) in &sections {
            for v in [gpa, size, kind] {
                meta.extend_from_slice(&v.to_le_bytes());
            }
        }
        fw[meta_at..meta_at + meta_len].copy_from_slice(&meta);

        let mut entries: Vec<(&str, Vec<u8>)> = vec![
            (OTHER, 0x1234u32.to_le_bytes().to_vec()),
            (RESET_BLOCK, AP_EIP.to_le_bytes().to_vec()),
            (METADATA, (METADATA_FROM_END as u32).to_le_bytes().to_vec()),
        ];
        if self.kernel_hashes {
            let mut body = (0x81_0000 + self.hash_table_offset).to_le_bytes().to_vec();
            body.extend_from_slice(&0x1000u32.to_le_bytes());
            entries.push((HASH_TABLE_RV, body));
        }
        let mut table = Vec::new();
        for (g, body) in entries {
            table.extend_from_slice(&body);
            table.extend_from_slice(&((body.len() + 18) as u16).to_le_bytes());
            table.extend_from_slice(&guid(g));
        }
        table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&guid(FOOTER));
        let end = len - 32;
        fw[end - table.len()..end].copy_from_slice(&table);
        fw
    }
}

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/measure/snp");

fn vectors() -> Value {
    let path = format!("{VECTORS}/vectors.json");
    serde_json::from_slice(&std::fs::read(path).expect("read vectors.json")).expect("vectors")
}

/// A case's firmware: a file of the vectors directory, or a synthetic image.
fn firmware(v: &Value) -> Vec<u8> {
    match v["file"].as_str() {
        Some(file) => std::fs::read(format!("{VECTORS}/{file}")).expect("read firmware"),
        None => Synth::from_json(v).build(),
    }
}

fn blob(v: &Value) -> Option<Vec<u8>> {
    if v.is_null() {
        return None;
    }
    Some(pseudo_random(
        v["seed"].as_u64().expect("seed"),
        v["len"].as_u64().expect("len") as usize,
    ))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The inputs of one synthetic case.
struct Case {
    name: String,
    firmware: Vec<u8>,
    kernel: Option<Vec<u8>>,
    initrd: Option<Vec<u8>>,
    cmdline: Option<String>,
    vcpus: u32,
    vcpu_type: String,
    vmm: String,
    guest_features: u64,
}

impl Case {
    fn from_json(c: &Value) -> Self {
        Self {
            name: c["name"].as_str().expect("name").to_owned(),
            firmware: firmware(&c["firmware"]),
            kernel: blob(&c["kernel"]),
            initrd: blob(&c["initrd"]),
            cmdline: c["cmdline"].as_str().map(str::to_owned),
            vcpus: c["vcpus"].as_u64().expect("vcpus") as u32,
            vcpu_type: c["vcpu_type"].as_str().expect("vcpu_type").to_owned(),
            vmm: c["vmm"].as_str().expect("vmm").to_owned(),
            guest_features: u64::from_str_radix(
                c["guest_features"]
                    .as_str()
                    .expect("guest_features")
                    .trim_start_matches("0x"),
                16,
            )
            .expect("guest_features hex"),
        }
    }

    fn ours(&self) -> Result<[u8; 48], SnpMeasureError> {
        SnpImage {
            firmware: &self.firmware,
            kernel: self.kernel.as_deref(),
            initrd: self.initrd.as_deref(),
            cmdline: self.cmdline.as_deref(),
            vcpus: self.vcpus,
            vcpu_type: self.vcpu_type.parse()?,
            vmm: self.vmm.parse()?,
            guest_features: self.guest_features,
        }
        .launch_digest()
    }

    /// Writes the inputs under `dir` and runs `sev-snp-measure` on them.
    fn reference(&self, tool: &Path, dir: &Path) -> String {
        let fw = dir.join(format!("{}.fd", self.name));
        std::fs::write(&fw, &self.firmware).expect("write firmware");
        let mut cmd = Command::new(tool);
        cmd.args(["--mode", "snp", "--vcpus", &self.vcpus.to_string()])
            .args(["--vcpu-type", &self.vcpu_type])
            .args(["--vmm-type", &self.vmm])
            .args(["--guest-features", &format!("{:#x}", self.guest_features)])
            .arg("--ovmf")
            .arg(&fw);
        if let Some(k) = &self.kernel {
            let p = dir.join(format!("{}.kernel", self.name));
            std::fs::write(&p, k).expect("write kernel");
            cmd.arg("--kernel").arg(p);
        }
        if let Some(i) = &self.initrd {
            let p = dir.join(format!("{}.initrd", self.name));
            std::fs::write(&p, i).expect("write initrd");
            cmd.arg("--initrd").arg(p);
        }
        if let Some(c) = &self.cmdline {
            cmd.args(["--append", c]);
        }
        run_tool(cmd)
    }
}

fn run_tool(mut cmd: Command) -> String {
    let out = cmd.output().expect("run sev-snp-measure");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn firmware_cases_match_recorded_sev_snp_measure_digests() {
    let v = vectors();
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8);
    for c in cases {
        let case = Case::from_json(c);
        assert_eq!(
            sha256_hex(&case.firmware),
            c["firmware_sha256"].as_str().expect("firmware_sha256"),
            "{}: the generator no longer builds the recorded firmware",
            case.name
        );
        if let Some(k) = &case.kernel {
            assert_eq!(sha256_hex(k), c["kernel_sha256"].as_str().expect("kernel"));
        }
        if let Some(i) = &case.initrd {
            assert_eq!(sha256_hex(i), c["initrd_sha256"].as_str().expect("initrd"));
        }
        let ours = hex::encode(case.ours().expect("digest"));
        assert_eq!(
            ours,
            c["digest"].as_str().expect("digest"),
            "case {}",
            case.name
        );
    }
}

/// Where `scripts/setup --measure` unpacks the Debian packages of the vectors.
fn measure_inputs() -> std::path::PathBuf {
    std::env::var_os("COCOON_MEASURE_INPUTS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/cocoon/measure-inputs")
        },
        std::path::PathBuf::from,
    )
}

/// Debian's OVMF builds (package `ovmf` 2022.11-6+deb12u2), as `scripts/setup --measure`
/// unpacks that exact version under `COCOON_MEASURE_INPUTS` (default
/// `~/.cache/cocoon/measure-inputs`): absent is skipped with a message, other bytes fail.
#[test]
fn debian_ovmf_matches_recorded_sev_snp_measure_digests() {
    let v = vectors();
    let inputs = measure_inputs();
    let mut checked = 0;
    for c in v["debian_ovmf"].as_array().expect("debian_ovmf") {
        let rel = c["path"].as_str().expect("path").trim_start_matches('/');
        let path = &inputs.join("ovmf").join(rel).display().to_string();
        let Ok(firmware) = std::fs::read(path) else {
            assert!(
                std::env::var_os("COCOON_REQUIRE_SYSTEM_VECTORS").is_none()
                    && std::env::var_os("COCOON_REQUIRE_PREREQS").is_none()
                    && std::env::var_os("CI").is_none(),
                "{path} absent (scripts/setup --measure unpacks it)"
            );
            eprintln!("SKIPPED: {path} absent (scripts/setup --measure unpacks it)");
            continue;
        };
        assert_eq!(
            sha256_hex(&firmware),
            c["sha256"].as_str().expect("sha256"),
            "{path} is not the build the digests were recorded from"
        );
        let ovmf = Ovmf::parse(&firmware).expect("parse Debian OVMF");
        assert!(ovmf.sev_es_reset_eip().is_some(), "{path}: reset block");
        assert!(!ovmf.has_section(SectionKind::KernelHashes));
        let image = SnpImage {
            firmware: &firmware,
            kernel: None,
            initrd: None,
            cmdline: None,
            vcpus: c["vcpus"].as_u64().expect("vcpus") as u32,
            vcpu_type: c["vcpu_type"]
                .as_str()
                .expect("type")
                .parse()
                .expect("type"),
            vmm: Vmm::Qemu,
            guest_features: 1,
        };
        assert_eq!(
            hex::encode(image.launch_digest().expect("digest")),
            c["digest"].as_str().expect("digest"),
            "{path}"
        );
        // Without SNP_KERNEL_HASHES a kernel cannot be measured.
        let with_kernel = SnpImage {
            kernel: Some(b"kernel"),
            ..image
        };
        assert_eq!(
            with_kernel.launch_digest(),
            Err(SnpMeasureError::NoKernelHashesSection)
        );
        checked += 1;
    }
    eprintln!("{checked} Debian OVMF builds checked");
}

/// With `COCOON_SEV_SNP_MEASURE` set, `sev-snp-measure` computes every recorded case (and
/// each synthetic firmware over more vCPU counts and types) live.
#[test]
fn sev_snp_measure_agrees_live() {
    let Some(tool) = std::env::var_os("COCOON_SEV_SNP_MEASURE") else {
        assert!(
            std::env::var_os("COCOON_REQUIRE_PREREQS").is_none()
                && std::env::var_os("CI").is_none(),
            "COCOON_SEV_SNP_MEASURE must be set under scripts/test (scripts/setup --measure)"
        );
        eprintln!("COCOON_SEV_SNP_MEASURE not set: live cross-check skipped");
        return;
    };
    let tool = PathBuf::from(tool);
    let dir = tempfile::tempdir().expect("tempdir");
    let v = vectors();
    let mut compared = 0;
    let mut unrecorded = Vec::new();
    for c in v["cases"].as_array().expect("cases") {
        let mut case = Case::from_json(c);
        let theirs = case.reference(&tool, dir.path());
        // The line the vectors file records for this case.
        eprintln!(
            "{}: firmware {} kernel {:?} initrd {:?} digest {theirs}",
            case.name,
            sha256_hex(&case.firmware),
            case.kernel.as_deref().map(sha256_hex),
            case.initrd.as_deref().map(sha256_hex),
        );
        if theirs != c["digest"].as_str().expect("digest") {
            unrecorded.push(case.name.clone());
        }
        assert_eq!(
            hex::encode(case.ours().expect("ours")),
            theirs,
            "{}",
            case.name
        );
        compared += 1;
        for (vcpus, vcpu_type) in [(3, "EPYC-Rome"), (16, "EPYC-Turin")] {
            case.vcpus = vcpus;
            case.vcpu_type = vcpu_type.to_owned();
            let theirs = case.reference(&tool, dir.path());
            assert_eq!(
                hex::encode(case.ours().expect("ours")),
                theirs,
                "{} with {vcpus} × {vcpu_type}",
                case.name
            );
            compared += 1;
        }
    }
    assert!(
        unrecorded.is_empty(),
        "sev-snp-measure gives other digests than recorded for {unrecorded:?}"
    );
    for c in v["debian_ovmf"].as_array().expect("debian_ovmf") {
        let rel = c["path"].as_str().expect("path").trim_start_matches('/');
        let path = &measure_inputs()
            .join("ovmf")
            .join(rel)
            .display()
            .to_string();
        let Ok(firmware) = std::fs::read(path) else {
            continue;
        };
        for vcpus in [1u32, 4] {
            let mut cmd = Command::new(&tool);
            cmd.args(["--mode", "snp", "--vcpus", &vcpus.to_string()])
                .args(["--vcpu-type", "EPYC-Genoa", "--ovmf", path]);
            let theirs = run_tool(cmd);
            let ours = SnpImage {
                firmware: &firmware,
                kernel: None,
                initrd: None,
                cmdline: None,
                vcpus,
                vcpu_type: VcpuType::EpycGenoa,
                vmm: Vmm::Qemu,
                guest_features: 1,
            }
            .launch_digest()
            .expect("ours");
            assert_eq!(hex::encode(ours), theirs, "{path} with {vcpus} vCPUs");
            compared += 1;
        }
    }
    eprintln!("{compared} digests compared with {}", tool.display());
}

fn synth(kernel_hashes: bool) -> Vec<u8> {
    Synth {
        seed: 7,
        pages: 16,
        kernel_hashes,
        svsm_caa: false,
        hash_table_offset: 0,
    }
    .build()
}

#[test]
fn the_parser_reads_what_the_generator_wrote() {
    let fw = synth(true);
    let ovmf = Ovmf::parse(&fw).expect("parse");
    assert_eq!(ovmf.sev_es_reset_eip(), Some(AP_EIP));
    assert_eq!(ovmf.sev_hashes_table_gpa(), Some(0x81_0000));
    assert_eq!(ovmf.gpa(), (1 << 32) - 16 * 4096);
    let kinds: Vec<_> = ovmf.sections().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            SectionKind::SecMemory,
            SectionKind::Secrets,
            SectionKind::Cpuid,
            SectionKind::SecMemory,
            SectionKind::KernelHashes
        ]
    );
}

#[test]
fn every_input_changes_the_digest() {
    let fw = synth(true);
    let base = SnpImage {
        firmware: &fw,
        kernel: Some(b"kernel"),
        initrd: Some(b"initrd"),
        cmdline: Some("console=ttyS0"),
        vcpus: 2,
        vcpu_type: VcpuType::EpycMilan,
        vmm: Vmm::Qemu,
        guest_features: 1,
    };
    let d = base.launch_digest().expect("base");
    let mut other_fw = fw.clone();
    other_fw[100] ^= 1;
    let variants = [
        SnpImage {
            firmware: &other_fw,
            ..base
        },
        SnpImage {
            kernel: Some(b"kernel2"),
            ..base
        },
        SnpImage {
            initrd: None,
            ..base
        },
        SnpImage {
            cmdline: Some("console=ttyS1"),
            ..base
        },
        SnpImage { vcpus: 3, ..base },
        SnpImage {
            vcpu_type: VcpuType::EpycGenoa,
            ..base
        },
        SnpImage {
            vmm: Vmm::Ec2,
            ..base
        },
        SnpImage {
            guest_features: 0x21,
            ..base
        },
    ];
    for (i, v) in variants.iter().enumerate() {
        assert_ne!(v.launch_digest().expect("variant"), d, "variant {i}");
    }
    // An empty command line and none are the same: QEMU passes a lone NUL for both.
    assert_eq!(
        SnpImage {
            cmdline: Some(""),
            ..base
        }
        .launch_digest(),
        SnpImage {
            cmdline: None,
            ..base
        }
        .launch_digest()
    );
}

#[test]
fn the_lower_level_steps_compose_to_the_digest() {
    let fw = synth(true);
    let image = SnpImage {
        firmware: &fw,
        kernel: Some(b"k"),
        initrd: None,
        cmdline: Some("ro"),
        vcpus: 2,
        vcpu_type: VcpuType::Epyc,
        vmm: Vmm::Qemu,
        guest_features: 1,
    };
    let seed = firmware_digest(&fw).expect("firmware digest");
    assert_eq!(
        image.launch_digest_from_firmware_digest(seed),
        image.launch_digest()
    );

    let ovmf = Ovmf::parse(&fw).expect("parse");
    let mut ld = LaunchDigest::from_seed(seed);
    let hashes = KernelHashes::new(b"k", None, Some("ro"));
    cocoon_attest::measure::snp::measure_sections(&mut ld, &ovmf, Some(&hashes), Vmm::Qemu)
        .expect("sections");
    let sig = VcpuType::Epyc.signature();
    assert_eq!(sig, 0x800f12);
    ld.update_vmsa_page(&vmsa_page(0xFFFF_FFF0, 1, sig, Vmm::Qemu));
    ld.update_vmsa_page(&vmsa_page(AP_EIP, 1, sig, Vmm::Qemu));
    assert_eq!(Ok(ld.digest()), image.launch_digest());

    // The table: header GUID, its length (168), cmdline entry first with SHA-256("ro\0").
    let table = hashes.table();
    assert_eq!(table.len(), PADDED_HASH_TABLE_LEN);
    assert_eq!(&table[..16], &guid("9438d606-4f22-4cc9-b479-a793d411fd21"));
    assert_eq!(u16::from_le_bytes([table[16], table[17]]), 168);
    assert_eq!(&table[18 + 18..18 + 50], Sha256::digest(b"ro\0").as_slice());
    assert!(hashes.page(4096 - PADDED_HASH_TABLE_LEN).is_ok());
    assert_eq!(
        hashes.page(4096 - PADDED_HASH_TABLE_LEN + 1),
        Err(SnpMeasureError::HashTableOffset(4096 - 176 + 1))
    );
}

#[test]
fn vcpu_and_vmm_names_parse() {
    for (name, sig) in [
        ("EPYC", 0x800f12),
        ("EPYC-v4", 0x800f12),
        ("EPYC-IBPB", 0x800f12),
        ("EPYC-Rome-v3", 0x830f10),
        ("EPYC-Milan", 0xa00f11),
        ("EPYC-Genoa-v1", 0xa10f10),
        ("EPYC-Turin", 0xb00f00),
        ("0xa10f11", 0xa10f11),
    ] {
        let t: VcpuType = name.parse().expect(name);
        assert_eq!(t.signature(), sig, "{name}");
    }
    assert!("Skylake".parse::<VcpuType>().is_err());
    assert!("0xzz".parse::<VcpuType>().is_err());
    assert_eq!("QEMU".parse::<Vmm>(), Ok(Vmm::Qemu));
    assert_eq!("ec2".parse::<Vmm>(), Ok(Vmm::Ec2));
    assert_eq!("gce".parse::<Vmm>(), Ok(Vmm::Gce));
    assert!("xen".parse::<Vmm>().is_err());
}

#[test]
fn bad_parameters_are_input_errors() {
    let fw = synth(false);
    let base = SnpImage {
        firmware: &fw,
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus: 1,
        vcpu_type: VcpuType::Epyc,
        vmm: Vmm::Qemu,
        guest_features: 1,
    };
    assert!(base.launch_digest().is_ok());
    for bad in [
        SnpImage { vcpus: 0, ..base },
        SnpImage {
            vcpus: 4097,
            ..base
        },
        SnpImage {
            initrd: Some(b"i"),
            ..base
        },
        SnpImage {
            cmdline: Some("x"),
            ..base
        },
    ] {
        assert!(matches!(
            bad.launch_digest(),
            Err(SnpMeasureError::Input(_))
        ));
    }
    assert_eq!(
        SnpImage {
            kernel: Some(b"k"),
            ..base
        }
        .launch_digest(),
        Err(SnpMeasureError::NoKernelHashesSection)
    );
}

/// Overwrites `fw[at..]` with `bytes`.
fn patched(fw: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut fw = fw.to_vec();
    fw[at..at + bytes.len()].copy_from_slice(bytes);
    fw
}

#[test]
fn malformed_firmware_gives_typed_errors() {
    let fw = synth(true);
    let len = fw.len();
    let footer = len - 50;
    let meta = len - METADATA_FROM_END;
    let err = |fw: &[u8]| Ovmf::parse(fw).err();

    assert_eq!(err(&[]), Some(SnpMeasureError::FirmwareSize { len: 0 }));
    assert_eq!(
        err(&fw[..len - 1]),
        Some(SnpMeasureError::FirmwareSize { len: len - 1 })
    );
    assert_eq!(err(&fw[..len - 4096]), Some(SnpMeasureError::NoFooterTable));
    assert_eq!(err(&vec![0u8; 4096]), Some(SnpMeasureError::NoFooterTable));
    // Footer size below its own header, and larger than the image.
    assert!(matches!(
        err(&patched(&fw, footer, &5u16.to_le_bytes())),
        Some(SnpMeasureError::FooterTable(_))
    ));
    let small = patched(&fw[..4096], 4096 - 50, &fw[footer..footer + 18]);
    let small = patched(&small, 4096 - 50, &0xfff0u16.to_le_bytes());
    assert!(matches!(err(&small), Some(SnpMeasureError::FooterTable(_))));
    // An entry whose size runs past the table.
    assert!(matches!(
        err(&patched(&fw, footer - 18, &0xff00u16.to_le_bytes())),
        Some(SnpMeasureError::FooterTable(_))
    ));
    // SEV metadata: bad signature, version, size, count, section type, offset.
    assert!(matches!(
        err(&patched(&fw, meta, b"XSEV")),
        Some(SnpMeasureError::Metadata(_))
    ));
    assert!(matches!(
        err(&patched(&fw, meta + 8, &2u32.to_le_bytes())),
        Some(SnpMeasureError::Metadata(_))
    ));
    assert!(matches!(
        err(&patched(&fw, meta + 4, &u32::MAX.to_le_bytes())),
        Some(SnpMeasureError::Metadata(_))
    ));
    assert!(matches!(
        err(&patched(&fw, meta + 12, &u32::MAX.to_le_bytes())),
        Some(SnpMeasureError::Metadata(_))
    ));
    assert_eq!(
        err(&patched(&fw, meta + 16 + 8, &7u32.to_le_bytes())),
        Some(SnpMeasureError::UnknownSectionType(7))
    );
    // The metadata entry's body: before the hash table entry (8 + 18) and its own header.
    let meta_body = footer - 26 - 18 - 4;
    assert_eq!(
        &fw[meta_body..meta_body + 4],
        &(METADATA_FROM_END as u32).to_le_bytes()
    );
    for offset in [u32::MAX, 8, 4096 * 1024] {
        assert!(matches!(
            err(&patched(&fw, meta_body, &offset.to_le_bytes())),
            Some(SnpMeasureError::Metadata(_))
        ));
    }

    // Sections that cannot be measured.
    let misaligned = patched(&fw, meta + 16, &0x80_0800u32.to_le_bytes());
    let image = |fw: &[u8]| {
        SnpImage {
            firmware: fw,
            kernel: Some(b"k"),
            initrd: None,
            cmdline: None,
            vcpus: 1,
            vcpu_type: VcpuType::Epyc,
            vmm: Vmm::Qemu,
            guest_features: 1,
        }
        .launch_digest()
    };
    assert!(matches!(
        image(&misaligned),
        Err(SnpMeasureError::SectionAlignment { .. })
    ));
    // The kernel hashes section (the fifth) two pages long.
    let two_pages = patched(&fw, meta + 16 + 4 * 12 + 4, &0x2000u32.to_le_bytes());
    assert_eq!(
        image(&two_pages),
        Err(SnpMeasureError::KernelHashesSectionSize(0x2000))
    );
    // Huge zero sections: bounded, not hashed for minutes.
    let mut huge = fw.clone();
    for i in 0..4 {
        let at = meta + 16 + i * 12;
        huge[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        huge[at + 4..at + 8].copy_from_slice(&0xFFFF_F000u32.to_le_bytes());
        huge[at + 8..at + 12].copy_from_slice(&1u32.to_le_bytes());
    }
    assert_eq!(image(&huge), Err(SnpMeasureError::TooManyPages));
}

/// Every single-byte corruption of the tables gives a digest or an error, never a panic.
#[test]
fn corrupting_the_tables_never_panics() {
    let fw = synth(true);
    let len = fw.len();
    let regions = [(len - METADATA_FROM_END, 16 + 5 * 12), (len - 200, 200)];
    for (start, n) in regions {
        for at in start..start + n {
            for value in [0u8, 0x01, 0x7f, 0xff] {
                let mut bad = fw.clone();
                bad[at] = value;
                // The firmware pages are not what is corrupted here: skip hashing them.
                let _ = SnpImage {
                    firmware: &bad,
                    kernel: Some(b"k"),
                    initrd: None,
                    cmdline: None,
                    vcpus: 2,
                    vcpu_type: VcpuType::Epyc,
                    vmm: Vmm::Qemu,
                    guest_features: 1,
                }
                .launch_digest_from_firmware_digest([0; 48]);
            }
        }
    }
}

#[test]
fn host_data_is_the_config_sha256() {
    let config = b"{\"root\":\"EQ...\"}";
    assert_eq!(
        host_data_for_config(config).as_slice(),
        Sha256::digest(config).as_slice()
    );
    assert_ne!(host_data_for_config(b"a"), host_data_for_config(b"b"));
}

/// The image hash from a predicted digest is the one the verifier computes from the report.
#[test]
fn the_image_hash_is_the_verifiers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testvectors/attest/sev/report_milan.hex"
    );
    let text = std::fs::read(path).expect("report");
    let info = cocoon_attest::sev::parse_report_hex(&text).expect("parse report");
    assert_eq!(
        image_hash(&info.measurement, &info.host_data),
        cocoon_attest::sev::image_hash(&info)
    );
    let config = host_data_for_config(b"config");
    assert_ne!(
        image_hash(&info.measurement, &config),
        image_hash(&info.measurement, &info.host_data)
    );
}

/// The vectors virtee/sev 8.0.0 publishes with its own measurement code (the last page of an
/// AmdSev and of an OvmfX64 build), as a second independent reference.
#[test]
fn virtee_sev_published_vectors_match() {
    let doc: Value = serde_json::from_slice(
        &std::fs::read(format!("{VECTORS}/virtee_sev.json")).expect("read virtee_sev.json"),
    )
    .expect("virtee_sev.json");
    for (file, digest) in doc["firmware_digests"].as_object().expect("digests") {
        let fw = std::fs::read(format!("{VECTORS}/{file}")).expect("firmware");
        assert_eq!(
            hex::encode(firmware_digest(&fw).expect("firmware digest")),
            digest.as_str().expect("digest"),
            "{file}"
        );
    }
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 10);
    for c in cases {
        let test = c["test"].as_str().expect("test");
        let fw = std::fs::read(format!(
            "{VECTORS}/{}",
            c["firmware"].as_str().expect("file")
        ))
        .expect("firmware");
        let empty: Option<&[u8]> = c["empty_kernel_and_initrd"]
            .as_bool()
            .expect("kernel")
            .then_some(&[]);
        let image = SnpImage {
            firmware: &fw,
            kernel: empty,
            initrd: empty,
            cmdline: c["cmdline"].as_str(),
            vcpus: c["vcpus"].as_u64().expect("vcpus") as u32,
            vcpu_type: c["vcpu_type"]
                .as_str()
                .expect("type")
                .parse()
                .expect("type"),
            vmm: c["vmm"].as_str().expect("vmm").parse().expect("vmm"),
            guest_features: u64::from_str_radix(
                c["guest_features"]
                    .as_str()
                    .expect("features")
                    .trim_start_matches("0x"),
                16,
            )
            .expect("features"),
        };
        let ours = image.launch_digest().expect("digest");
        assert_eq!(
            hex::encode(ours),
            c["digest"].as_str().expect("digest"),
            "{test}"
        );
        let seed = firmware_digest(&fw).expect("firmware digest");
        assert_eq!(image.launch_digest_from_firmware_digest(seed), Ok(ours));
    }
    // The OvmfX64 build has no SNP_KERNEL_HASHES section: a kernel cannot be measured.
    let x64 = std::fs::read(format!("{VECTORS}/ovmf_OvmfX64_suffix.bin")).expect("firmware");
    let with_kernel = SnpImage {
        firmware: &x64,
        kernel: Some(&[]),
        initrd: Some(&[]),
        cmdline: None,
        vcpus: 1,
        vcpu_type: VcpuType::Epyc,
        vmm: Vmm::Qemu,
        guest_features: 0x21,
    };
    assert_eq!(
        with_kernel.launch_digest(),
        Err(SnpMeasureError::NoKernelHashesSection)
    );
}
