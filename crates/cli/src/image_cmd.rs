//! `cocoon image`: the guest images of ARCHITECTURE D14. `measure` predicts, from an image's
//! files, the registers a TEE will report and the image hash the root must allow (the
//! arithmetic is `cocoon_attest::measure`; this module reads the files and prints);
//! `measure-config` is the boot step that measures a role's configuration into the TEE
//! before the role starts.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use cocoon_attest::measure::{self, snp, tdx};
use cocoon_service::identity::TeeChoice;
use cocoon_service::measured::{Extended, SimRegisters, extend_config};

#[derive(Subcommand)]
pub(crate) enum ImageCmd {
    /// Predict the measurements a TEE will report for an image and the Cocoon image hash
    /// that goes into the root's allowlist (TDX: MRTD, RTMR0–3; SEV-SNP: the launch digest
    /// and host data; sim: the emulated RTMR3).
    Measure(Box<MeasureArgs>),
    /// Measure a role's configuration file into this TEE (the guest's boot runs it once,
    /// before the role): extends RTMR3 on TDX and on the sim backend's emulated register;
    /// on SEV-SNP prints the host data the launcher must have passed. The role then refuses
    /// to start with any other configuration.
    MeasureConfig {
        /// The role's configuration file, exactly as the role will read it.
        file: PathBuf,
        /// auto, tdx, sev-snp or sim.
        #[arg(long, default_value = "auto")]
        tee: String,
    },
}

/// Which TEE `measure` predicts for.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum MeasureTee {
    /// Intel TDX through OVMF/TDVF.
    Tdx,
    /// AMD SEV-SNP (the launch digest; the configuration goes in as host data).
    SevSnp,
    /// The sim backend (test networks): only the configuration is measured.
    Sim,
}

/// Where a TD's configuration is measured.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TdxConfigIn {
    /// RTMR3, extended by the guest's boot.
    Rtmr3,
    /// MRCONFIGID, set by the launcher.
    Mrconfigid,
}

/// QEMU's page-add order ([`tdx::PageAddOrder`]).
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PageOrder {
    /// QEMU 9+ with upstream KVM (Linux 6.16+).
    Interleaved,
    /// The QEMU 8.x TDX trees.
    AllAddsFirst,
}

#[derive(Args)]
pub(crate) struct MeasureArgs {
    /// The TEE.
    #[arg(long, value_enum)]
    tee: MeasureTee,
    /// The role configuration the boot measures (RTMR3 on TDX and sim); none: RTMR3 zero.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Firmware (`-bios`): OVMF with TDX metadata.
    #[arg(long, value_name = "FILE")]
    firmware: Option<PathBuf>,
    /// Kernel or UKI (`-kernel`).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initrd (`-initrd`).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line (`-append`).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// The command line from a file (the `cmdline` an image build writes), trailing newline
    /// removed.
    #[arg(long, value_name = "FILE", conflicts_with = "cmdline")]
    cmdline_file: Option<PathBuf>,
    /// Guest memory in MiB (`-m`): QEMU before 10.0 patches it into the kernel header.
    #[arg(long, default_value_t = 2048)]
    memory_mib: u64,
    /// The kernel as given, unpatched (QEMU 10+ with an OVMF that loads `etc/boot/kernel`).
    #[arg(long)]
    unmodified_kernel: bool,
    /// The host's page-add order.
    #[arg(long, value_enum, default_value = "interleaved")]
    page_order: PageOrder,
    /// Directory of RTMR0 inputs captured from a TD on the target host: `table_loader.bin`,
    /// `rsdp.bin`, `acpi_tables.bin`, `BootOrder.bin`, `Boot0000.bin`…, optionally
    /// `td_hob.bin` (else QEMU's default TD HOB for `--memory-mib`). Without it RTMR0 and
    /// the image hash are not predicted.
    #[arg(long, value_name = "DIR")]
    rtmr0_dir: Option<PathBuf>,
    /// TDX: where the configuration is measured: `rtmr3` (the guest extends it at boot;
    /// Linux 6.16+ guest kernels) or `mrconfigid` (the launcher sets it; any guest kernel).
    #[arg(long, value_enum, default_value = "rtmr3")]
    tdx_config_in: TdxConfigIn,
    /// SEV-SNP: vCPUs (`-smp`).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// SEV-SNP: the vCPU model (`-cpu`), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long, default_value = "EPYC-v4")]
    vcpu_type: String,
    /// SEV-SNP: the hypervisor (qemu, ec2, gce).
    #[arg(long, default_value = "qemu")]
    vmm: String,
    /// SEV-SNP: the guest features in each VMSA (0x1 for a plain QEMU guest).
    #[arg(long, default_value = "0x1")]
    guest_features: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn cmdline_of(a: &MeasureArgs) -> Result<String, String> {
    Ok(match &a.cmdline_file {
        Some(p) => String::from_utf8(read(p)?)
            .map_err(|_| format!("{}: not UTF-8", p.display()))?
            .trim_end_matches('\n')
            .to_owned(),
        None => a.cmdline.clone(),
    })
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn need<'a>(p: &'a Option<PathBuf>, flag: &str) -> Result<&'a Path, String> {
    p.as_deref()
        .ok_or_else(|| format!("--{flag} is required for this TEE"))
}

/// What `measure` prints: named hex values, then the image hash if it could be computed.
struct Measured {
    values: Vec<(&'static str, String)>,
    image_hash: Option<[u8; 32]>,
    note: Option<String>,
}

fn measure_cmd(a: &MeasureArgs) -> Result<Measured, String> {
    let config = a.config.as_deref().map(read).transpose()?;
    let in_mrconfigid = a.tdx_config_in == TdxConfigIn::Mrconfigid;
    let rtmr3 = match &config {
        Some(c) if !in_mrconfigid => measure::rtmr3_for_config(c),
        _ => [0; 48],
    };
    let mr_config_id = match &config {
        Some(c) if in_mrconfigid => measure::config_digest(c),
        _ => [0; 48],
    };
    match a.tee {
        MeasureTee::Sim => {
            let Some(config) = &config else {
                return Err("--config is required for sim (nothing else is measured)".into());
            };
            let r = measure::rtmr3_for_config(config);
            Ok(Measured {
                values: vec![("rtmr3", hex::encode(r))],
                image_hash: Some(cocoon_attest::sim::sim_image_hash_for(Some(&r))),
                note: None,
            })
        }
        MeasureTee::SevSnp => {
            let firmware = read(need(&a.firmware, "firmware")?)?;
            let kernel = a.kernel.as_deref().map(read).transpose()?;
            let initrd = a.initrd.as_deref().map(read).transpose()?;
            let cmdline = cmdline_of(a)?;
            let features = a.guest_features.trim_start_matches("0x");
            let digest = snp::SnpImage {
                firmware: &firmware,
                kernel: kernel.as_deref(),
                initrd: initrd.as_deref(),
                cmdline: kernel.as_ref().map(|_| cmdline.as_str()),
                vcpus: a.vcpus,
                vcpu_type: a
                    .vcpu_type
                    .parse()
                    .map_err(|e| format!("--vcpu-type: {e}"))?,
                vmm: a.vmm.parse().map_err(|e| format!("--vmm: {e}"))?,
                guest_features: u64::from_str_radix(features, 16)
                    .map_err(|_| format!("--guest-features: not hex: {}", a.guest_features))?,
            }
            .launch_digest()
            .map_err(|e| e.to_string())?;
            let host_data = config
                .as_deref()
                .map_or([0; 32], measure::host_data_for_config);
            Ok(Measured {
                values: vec![
                    ("measurement", hex::encode(digest)),
                    ("host_data", hex::encode(host_data)),
                ],
                image_hash: Some(snp::image_hash(&digest, &host_data)),
                note: None,
            })
        }
        MeasureTee::Tdx => {
            let firmware = read(need(&a.firmware, "firmware")?)?;
            let kernel = read(need(&a.kernel, "kernel")?)?;
            let initrd = a.initrd.as_deref().map(read).transpose()?;
            let cmdline = cmdline_of(a)?;
            let memory = a.memory_mib << 20;
            let meta = tdx::parse_tdvf(&firmware).map_err(|e| format!("firmware: {e}"))?;
            let r0 = a.rtmr0_dir.as_deref().map(rtmr0_files).transpose()?;
            let td_hob = match r0.as_ref().and_then(|f| f.td_hob.clone()) {
                Some(h) => h,
                None => tdx::qemu_td_hob(&meta, memory),
            };
            let boot: Vec<&[u8]> = r0
                .as_ref()
                .map(|f| f.boot_options.iter().map(Vec::as_slice).collect())
                .unwrap_or_default();
            let cfv = tdx::cfv_digest(&firmware, &meta);
            let rtmr0 = match (&r0, cfv) {
                (Some(f), Some(cfv_digest)) => Some(tdx::Rtmr0Inputs {
                    td_hob: &td_hob,
                    cfv_digest,
                    acpi_loader: &f.loader,
                    acpi_rsdp: &f.rsdp,
                    acpi_tables: &f.tables,
                    boot_order: &f.boot_order,
                    boot_options: &boot,
                    sbat_level: None,
                }),
                (Some(_), None) => return Err("firmware: no CFV section for RTMR0".into()),
                (None, _) => None,
            };
            let p = tdx::predict(&tdx::TdxImage {
                firmware: &firmware,
                kernel: &kernel,
                initrd: initrd.as_deref(),
                cmdline: &cmdline,
                kernel_load: if a.unmodified_kernel {
                    tdx::KernelLoad::Unmodified
                } else {
                    tdx::KernelLoad::QemuPatched(tdx::QemuKernelParams::new(memory))
                },
                page_add_order: match a.page_order {
                    PageOrder::Interleaved => tdx::PageAddOrder::Interleaved,
                    PageOrder::AllAddsFirst => tdx::PageAddOrder::AllAddsFirst,
                },
                initrd_arg: tdx::InitrdArg::Appended,
                extra_rtmr2_events: &[],
                rtmr0,
            })
            .map_err(|e| e.to_string())?;
            let mut values = vec![("mrtd", hex::encode(p.mrtd))];
            if let Some(r) = p.rtmr0 {
                values.push(("rtmr0", hex::encode(r)));
            }
            values.push(("rtmr1", hex::encode(p.rtmr1)));
            values.push(("rtmr2", hex::encode(p.rtmr2)));
            values.push(("rtmr3", hex::encode(rtmr3)));
            values.push(("mr_config_id", hex::encode(mr_config_id)));
            Ok(Measured {
                image_hash: p.rtmr0.map(|r0| {
                    measure::tdx_image_hash(&p.mrtd, &mr_config_id, &[r0, p.rtmr1, p.rtmr2, rtmr3])
                }),
                note: p.rtmr0.is_none().then(|| {
                    "RTMR0 (and so the image hash) needs --rtmr0-dir: the ACPI tables and boot \
                     variables captured from a TD on the target host"
                        .to_owned()
                }),
                values,
            })
        }
    }
}

/// The RTMR0 inputs of `--rtmr0-dir`.
struct Rtmr0Files {
    td_hob: Option<Vec<u8>>,
    loader: Vec<u8>,
    rsdp: Vec<u8>,
    tables: Vec<u8>,
    boot_order: Vec<u8>,
    boot_options: Vec<Vec<u8>>,
}

fn rtmr0_files(dir: &Path) -> Result<Rtmr0Files, String> {
    let opt = |n: &str| {
        let p = dir.join(n);
        p.exists().then(|| read(&p)).transpose()
    };
    let boot_order = read(&dir.join("BootOrder.bin"))?;
    // Boot#### in BootOrder's order (UINT16 little-endian entries).
    let boot_options = boot_order
        .chunks_exact(2)
        .map(|c| read(&dir.join(format!("Boot{:04X}.bin", u16::from_le_bytes([c[0], c[1]])))))
        .collect::<Result<_, _>>()?;
    Ok(Rtmr0Files {
        td_hob: opt("td_hob.bin")?,
        loader: read(&dir.join("table_loader.bin"))?,
        rsdp: read(&dir.join("rsdp.bin"))?,
        tables: read(&dir.join("acpi_tables.bin"))?,
        boot_order,
        boot_options,
    })
}

pub(crate) fn run(cmd: ImageCmd) -> Result<(), String> {
    match cmd {
        ImageCmd::Measure(a) => {
            let m = measure_cmd(&a)?;
            if a.json {
                let mut o = serde_json::Map::new();
                for (k, v) in &m.values {
                    o.insert((*k).into(), v.clone().into());
                }
                o.insert("image_hash".into(), m.image_hash.map(hex::encode).into());
                o.insert("note".into(), m.note.clone().into());
                println!("{}", serde_json::Value::Object(o));
            } else {
                for (k, v) in &m.values {
                    println!("{k:<11} {v}");
                }
                match m.image_hash {
                    Some(h) => println!("image_hash  {}", hex::encode(h)),
                    None => println!("image_hash  (not predicted)"),
                }
                if let Some(n) = &m.note {
                    eprintln!("note: {n}");
                }
            }
            Ok(())
        }
        ImageCmd::MeasureConfig { file, tee } => {
            let backend = tee.parse::<TeeChoice>()?.resolve()?;
            match extend_config(backend, &file, &SimRegisters::from_env())? {
                Extended::Rtmr3(r) => println!("rtmr3 {}", hex::encode(r)),
                Extended::HostData(d) => println!("host_data {}", hex::encode(d)),
                Extended::MrConfigId(d) => println!("mr_config_id {}", hex::encode(d)),
            }
            Ok(())
        }
    }
}
