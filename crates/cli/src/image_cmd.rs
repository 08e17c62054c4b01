//! `cocoon image`: the guest images of ARCHITECTURE D14 (built by `scripts/image build ROLE`,
//! images/README.md). `run` prints or runs the QEMU command that boots one: on a TDX host,
//! on an SEV-SNP host, or plainly (KVM or TCG) for tests (docs/operations.md, "TEE images");
//! its command line is [`qemu_args`], a pure function of the [`Launch`] plan. `measure`
//! predicts, from an image's
//! files, the registers a TEE will report and the image hash the root must allow (the
//! arithmetic is `cocoon_attest::measure`; this module reads the files and prints);
//! `measure-config` is the boot step that measures a role's configuration into the TEE
//! before the role starts.

use std::fmt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use cocoon_attest::measure::{self, snp, tdx};
use cocoon_service::identity::TeeChoice;
use cocoon_service::measured::{Extended, SimRegisters, extend_config};
use sha2::{Digest, Sha256, Sha384};

#[derive(Subcommand)]
pub(crate) enum ImageCmd {
    /// Print (--print) or run the QEMU command that boots a role's image.
    Run(Box<RunArgs>),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
        ImageCmd::Run(args) => run_image(*args),
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

/// The role an image runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// `cocoon proxy`.
    Proxy,
    /// `cocoon worker`.
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Proxy => "proxy",
            Role::Worker => "worker",
        })
    }
}

/// The kind of host the guest runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Tee {
    /// Intel TDX: a tdx-guest object, TDVF firmware.
    Tdx,
    /// AMD SEV-SNP: an sev-snp-guest object with kernel hashes and the config's hash as
    /// host data, the AmdSev OVMF build.
    SevSnp,
    /// No TEE (tests): KVM or TCG, the role must use `tee = "sim"`.
    None,
}

/// The accelerator of `--tee none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator (slow, works everywhere).
    Tcg,
}

/// How the guest is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Boot {
    /// `-kernel vmlinuz -initrd initrd -append CMDLINE` (what TDVF and SEV-SNP kernel hashes
    /// measure).
    Direct,
    /// The UKI (kernel, initrd and command line in one signed-able EFI binary) through the
    /// firmware.
    Uki,
}

/// Options of `cocoon image run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The role whose image to boot.
    role: Role,
    /// The image directory `scripts/image build` wrote (default: target/image/ROLE).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The host's TEE.
    #[arg(long, value_enum, default_value_t = Tee::None)]
    tee: Tee,
    /// The accelerator with `--tee none`.
    #[arg(long, value_enum, default_value_t = Accel::Kvm)]
    accel: Accel,
    /// Direct kernel boot or the UKI.
    #[arg(long, value_enum, default_value_t = Boot::Direct)]
    boot: Boot,
    /// The role's config, passed as fw_cfg opt/cocoon/config (measured by the guest; on
    /// SEV-SNP also its SHA-256 as host data). Without it the image's default is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The encrypted data disk's backing file (created sparse if missing; default:
    /// DIR/data.img).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Size of a data disk created here, in GiB.
    #[arg(long, default_value_t = 8)]
    data_size_gib: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mib: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// A TCP port forward HOST_PORT:GUEST_PORT (host side on 127.0.0.1; repeatable).
    #[arg(long = "forward")]
    forwards: Vec<String>,
    /// Host address of the port forwards.
    #[arg(long, default_value = "127.0.0.1")]
    forward_address: String,
    /// A vsock device with this guest CID (vhost-vsock).
    #[arg(long)]
    vsock_cid: Option<u32>,
    /// A GPU (PCI address 0000:xx:00.0, bound to vfio-pci) passed through (repeatable).
    #[arg(long = "gpu")]
    gpus: Vec<String>,
    /// Firmware: TDVF (tdx), AmdSev OVMF (sev-snp), OVMF (--boot uki). Defaults to Debian's
    /// /usr/share/ovmf/OVMF.fd where one is needed and not given.
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// TDX: where the guest's configuration is measured: `mrconfigid` (this launcher sets
    /// MRCONFIGID to SHA-384 of --config; guest kernels before Linux 6.16, as the images'
    /// Debian 6.12) or `rtmr3` (the guest's boot extends RTMR3; MRCONFIGID stays zero).
    #[arg(long, value_enum, default_value = "mrconfigid")]
    tdx_config_in: TdxConfigIn,
    /// SEV-SNP: the C-bit position.
    #[arg(long, default_value_t = 51)]
    cbitpos: u32,
    /// SEV-SNP: physical address bits lost to encryption.
    #[arg(long, default_value_t = 1)]
    reduced_phys_bits: u32,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Print the command (shell-quoted) instead of running it.
    #[arg(long)]
    print: bool,
}

/// Everything [`qemu_args`] needs, paths resolved.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) tee: Tee,
    pub(crate) accel: Accel,
    pub(crate) boot: Boot,
    pub(crate) dir: PathBuf,
    /// The kernel command line (the image's `cmdline` file) for direct boot.
    pub(crate) cmdline: String,
    pub(crate) config: Option<PathBuf>,
    /// SHA-256 of the config file (SEV-SNP host data).
    pub(crate) config_sha256: Option<[u8; 32]>,
    /// SHA-384 of the config file (TDX MRCONFIGID).
    pub(crate) config_sha384: Option<[u8; 48]>,
    pub(crate) tdx_config_in: TdxConfigIn,
    pub(crate) data: PathBuf,
    pub(crate) memory_mib: u64,
    pub(crate) cpus: u32,
    pub(crate) forwards: Vec<(u16, u16)>,
    pub(crate) forward_address: String,
    pub(crate) vsock_cid: Option<u32>,
    pub(crate) gpus: Vec<String>,
    pub(crate) firmware: Option<PathBuf>,
    pub(crate) cbitpos: u32,
    pub(crate) reduced_phys_bits: u32,
}

/// A launch that cannot work, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LaunchError {
    /// A `--forward` that is not HOST_PORT:GUEST_PORT.
    #[error("--forward {0:?} is not HOST_PORT:GUEST_PORT")]
    Forward(String),
    /// A `--gpu` that is not a PCI address.
    #[error("--gpu {0:?} is not a PCI address like 0000:17:00.0")]
    Gpu(String),
    /// `--accel tcg` with a TEE.
    #[error("--accel tcg works only with --tee none (a TEE needs KVM)")]
    TcgInTee,
    /// SEV-SNP without a config: its hash is the host data the guest checks.
    #[error("--tee sev-snp needs --config (its SHA-256 is the guest's host data)")]
    SnpWithoutConfig,
    /// TDX with MRCONFIGID but without a config to take its digest of.
    #[error("--tee tdx with --tdx-config-in mrconfigid needs --config (MRCONFIGID is its SHA-384)")]
    TdxWithoutConfig,
    /// A GPU without KVM.
    #[error("--gpu needs KVM (not --accel tcg)")]
    GpuWithTcg,
}

/// `HOST:GUEST` port pairs.
pub(crate) fn parse_forward(s: &str) -> Result<(u16, u16), LaunchError> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| LaunchError::Forward(s.to_owned()))?;
    match (h.trim().parse::<u16>(), g.trim().parse::<u16>()) {
        (Ok(h), Ok(g)) if h != 0 && g != 0 => Ok((h, g)),
        _ => Err(LaunchError::Forward(s.to_owned())),
    }
}

/// A PCI address `DDDD:BB:DD.F`.
pub(crate) fn check_gpu(s: &str) -> Result<(), LaunchError> {
    let bad = || LaunchError::Gpu(s.to_owned());
    let parts: Vec<&str> = s.split([':', '.']).collect();
    let widths = [4, 2, 2, 1];
    if parts.len() != 4 {
        return Err(bad());
    }
    for (p, w) in parts.iter().zip(widths) {
        if p.len() != w || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The QEMU arguments (without the binary) that boot the image of `l`.
pub(crate) fn qemu_args(l: &Launch) -> Result<Vec<String>, LaunchError> {
    if l.tee != Tee::None && l.accel == Accel::Tcg {
        return Err(LaunchError::TcgInTee);
    }
    if !l.gpus.is_empty() && l.tee == Tee::None && l.accel == Accel::Tcg {
        return Err(LaunchError::GpuWithTcg);
    }
    for g in &l.gpus {
        check_gpu(g)?;
    }
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    push(&[
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    let mem = format!("{}M", l.memory_mib);
    let smp = l.cpus.to_string();
    push(&["-m", &mem, "-smp", &smp]);
    let default_fw = PathBuf::from("/usr/share/ovmf/OVMF.fd");
    match l.tee {
        Tee::None => match l.accel {
            Accel::Tcg => push(&["-machine", "q35", "-accel", "tcg", "-cpu", "max"]),
            Accel::Kvm => push(&["-machine", "q35", "-accel", "kvm", "-cpu", "host"]),
        },
        Tee::Tdx => {
            push(&[
                "-machine",
                "q35,kernel-irqchip=split,hpet=off,confidential-guest-support=tdx0",
                "-accel",
                "kvm",
                "-cpu",
                "host",
            ]);
            // The quote generation service (QGS) on the host, reached over vsock CID 2; with
            // `mrconfigid`, the configuration's SHA-384 as MRCONFIGID.
            let mrconfigid = match l.tdx_config_in {
                TdxConfigIn::Rtmr3 => String::new(),
                TdxConfigIn::Mrconfigid => {
                    let d = l.config_sha384.ok_or(LaunchError::TdxWithoutConfig)?;
                    format!(
                        r#","mrconfigid":"{}""#,
                        base64::engine::general_purpose::STANDARD.encode(d)
                    )
                }
            };
            let obj = format!(
                r#"{{"qom-type":"tdx-guest","id":"tdx0"{mrconfigid},"quote-generation-socket":{{"type":"vsock","cid":"2","port":"4050"}}}}"#
            );
            push(&["-object", &obj]);
        }
        Tee::SevSnp => {
            let hash = l.config_sha256.ok_or(LaunchError::SnpWithoutConfig)?;
            let host_data = base64::engine::general_purpose::STANDARD.encode(hash);
            let obj = format!(
                "sev-snp-guest,id=sev0,cbitpos={},reduced-phys-bits={},kernel-hashes=on,host-data={host_data}",
                l.cbitpos, l.reduced_phys_bits
            );
            push(&[
                "-machine",
                "q35,confidential-guest-support=sev0,memory-backend=ram0",
                "-accel",
                "kvm",
                "-cpu",
                "EPYC-v4",
            ]);
            let ram = format!(
                "memory-backend-memfd,id=ram0,size={}M,share=true",
                l.memory_mib
            );
            push(&["-object", &ram, "-object", &obj]);
        }
    }
    let firmware = match (l.tee, l.boot) {
        (Tee::None, Boot::Direct) => l.firmware.clone(),
        _ => Some(l.firmware.clone().unwrap_or(default_fw)),
    };
    if let Some(fw) = firmware {
        push(&["-bios", &path(&fw)]);
    }
    match l.boot {
        Boot::Direct => {
            let kernel = path(&l.dir.join("vmlinuz"));
            let initrd = path(&l.dir.join("initrd"));
            push(&[
                "-kernel", &kernel, "-initrd", &initrd, "-append", &l.cmdline,
            ]);
        }
        Boot::Uki => {
            let uki = path(&l.dir.join("uki.efi"));
            push(&["-kernel", &uki]);
        }
    }
    // Disks in a fixed order (vda, vdb, vdc), as the image's command line names them: the
    // dm-verity root and its hash tree read-only, then the encrypted data disk.
    let disks = [
        ("root", l.dir.join("root.squashfs"), true, "0x4"),
        ("verity", l.dir.join("root.verity"), true, "0x5"),
        ("data", l.data.clone(), false, "0x6"),
    ];
    for (id, file, ro, addr) in disks {
        let drive = format!(
            "file={},if=none,id={id},format=raw{}",
            path(&file),
            if ro { ",readonly=on" } else { "" }
        );
        let dev = format!("virtio-blk-pci,drive={id},bus=pcie.0,addr={addr}");
        push(&["-drive", &drive, "-device", &dev]);
    }
    let mut net = "user,id=net0".to_owned();
    for (h, g) in &l.forwards {
        net.push_str(&format!(",hostfwd=tcp:{}:{h}-:{g}", l.forward_address));
    }
    push(&[
        "-netdev",
        &net,
        "-device",
        "virtio-net-pci,netdev=net0,romfile=,bus=pcie.0,addr=0x7",
    ]);
    if let Some(c) = &l.config {
        let fw = format!("name=opt/cocoon/config,file={}", path(c));
        push(&["-fw_cfg", &fw]);
    }
    if let Some(cid) = l.vsock_cid {
        let v = format!("vhost-vsock-pci,guest-cid={cid}");
        push(&["-device", &v]);
    }
    for (i, g) in l.gpus.iter().enumerate() {
        // Each GPU behind its own root port, so its large BARs fit the 64-bit window.
        let port = format!("pcie-root-port,id=gpuport{i},bus=pcie.0,chassis={}", i + 1);
        let dev = format!("vfio-pci,host={g},bus=gpuport{i}");
        push(&["-device", &port, "-device", &dev]);
    }
    if !l.gpus.is_empty() {
        // A 64-bit MMIO window large enough for H100-class BARs (OVMF's default is 32 GiB).
        push(&["-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=262144"]);
    }
    Ok(a)
}

/// Shell quoting for `--print`.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=,@%+-".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn run_image(args: RunArgs) -> Result<(), String> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/image").join(args.role.to_string()));
    let cmdline_file = dir.join("cmdline");
    let cmdline = std::fs::read_to_string(&cmdline_file).map_err(|e| {
        format!(
            "{}: {e} (build the image first: scripts/image build {})",
            cmdline_file.display(),
            args.role
        )
    })?;
    if !cmdline.contains(&format!("cocoon.role={}", args.role)) {
        return Err(format!(
            "{} is not an image of the {} role",
            dir.display(),
            args.role
        ));
    }
    let config = match &args.config {
        Some(c) => Some(std::fs::read(c).map_err(|e| format!("--config {}: {e}", c.display()))?),
        None => None,
    };
    let config_sha256 = config.as_ref().map(|b| Sha256::digest(b).into());
    let config_sha384 = config.as_ref().map(|b| Sha384::digest(b).into());
    let forwards = args
        .forwards
        .iter()
        .map(|f| parse_forward(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let data = args.data.clone().unwrap_or_else(|| dir.join("data.img"));
    let launch = Launch {
        tee: args.tee,
        accel: args.accel,
        boot: args.boot,
        dir,
        cmdline: cmdline.trim().to_owned(),
        config: args.config.clone(),
        config_sha256,
        config_sha384,
        tdx_config_in: args.tdx_config_in,
        data: data.clone(),
        memory_mib: args.memory_mib,
        cpus: args.cpus,
        forwards,
        forward_address: args.forward_address.clone(),
        vsock_cid: args.vsock_cid,
        gpus: args.gpus.clone(),
        firmware: args.firmware.clone(),
        cbitpos: args.cbitpos,
        reduced_phys_bits: args.reduced_phys_bits,
    };
    let qemu = qemu_args(&launch).map_err(|e| e.to_string())?;
    if args.print {
        let line: Vec<String> = std::iter::once(args.qemu.as_str())
            .chain(qemu.iter().map(String::as_str))
            .map(quote)
            .collect();
        println!("{}", line.join(" "));
        return Ok(());
    }
    if !data.exists() {
        let f = std::fs::File::create(&data)
            .map_err(|e| format!("data disk {}: {e}", data.display()))?;
        f.set_len(args.data_size_gib * (1 << 30))
            .map_err(|e| format!("data disk {}: {e}", data.display()))?;
    }
    // QEMU replaces this process: a signal to it stops the VM, and its exit status is ours.
    let err = std::process::Command::new(&args.qemu).args(&qemu).exec();
    Err(format!("{}: {err}", args.qemu))
}

#[cfg(test)]
mod run_tests {
    use super::*;

    fn launch(tee: Tee) -> Launch {
        Launch {
            tee,
            accel: Accel::Kvm,
            boot: Boot::Direct,
            dir: PathBuf::from("/img"),
            cmdline: "console=ttyS0 cocoon.role=worker cocoon.verity=ab".into(),
            config: Some(PathBuf::from("/c/worker.toml")),
            config_sha256: Some([7; 32]),
            config_sha384: Some([9; 48]),
            tdx_config_in: TdxConfigIn::Mrconfigid,
            data: PathBuf::from("/d/data.img"),
            memory_mib: 2048,
            cpus: 2,
            forwards: vec![(18000, 12000)],
            forward_address: "127.0.0.1".into(),
            vsock_cid: None,
            gpus: vec![],
            firmware: None,
            cbitpos: 51,
            reduced_phys_bits: 1,
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn sev_snp_host_data_is_the_config_hash_and_kernel_hashes_are_on() {
        let a = qemu_args(&launch(Tee::SevSnp)).unwrap();
        let obj = after(&a, "-object");
        let snp = obj.iter().find(|o| o.starts_with("sev-snp-guest")).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(snp.contains(&format!("host-data={expected}")), "{snp}");
        assert!(snp.contains("kernel-hashes=on,"));
        assert!(snp.contains("cbitpos=51,reduced-phys-bits=1"));
        assert_eq!(after(&a, "-bios"), ["/usr/share/ovmf/OVMF.fd"]);
        let mut no_config = launch(Tee::SevSnp);
        no_config.config_sha256 = None;
        assert_eq!(qemu_args(&no_config), Err(LaunchError::SnpWithoutConfig));
    }

    #[test]
    fn tdx_has_a_tdx_guest_with_the_config_as_mrconfigid_and_refuses_tcg() {
        let a = qemu_args(&launch(Tee::Tdx)).unwrap();
        assert!(after(&a, "-machine")[0].contains("confidential-guest-support=tdx0"));
        let obj = after(&a, "-object")[0];
        assert!(obj.contains(r#""qom-type":"tdx-guest""#));
        let mrconfigid = base64::engine::general_purpose::STANDARD.encode([9u8; 48]);
        assert!(
            obj.contains(&format!(r#""mrconfigid":"{mrconfigid}""#)),
            "{obj}"
        );
        let v: serde_json::Value = serde_json::from_str(obj).unwrap();
        assert_eq!(v["quote-generation-socket"]["port"], "4050");
        let mut rtmr3 = launch(Tee::Tdx);
        rtmr3.tdx_config_in = TdxConfigIn::Rtmr3;
        rtmr3.config_sha384 = None;
        let a = qemu_args(&rtmr3).unwrap();
        assert!(!after(&a, "-object")[0].contains("mrconfigid"));
        let mut no_config = launch(Tee::Tdx);
        no_config.config_sha384 = None;
        assert_eq!(qemu_args(&no_config), Err(LaunchError::TdxWithoutConfig));
        let mut tcg = launch(Tee::Tdx);
        tcg.accel = Accel::Tcg;
        assert_eq!(qemu_args(&tcg), Err(LaunchError::TcgInTee));
    }

    #[test]
    fn disks_config_forwards_and_gpus_are_where_the_guest_looks() {
        let mut l = launch(Tee::None);
        l.accel = Accel::Tcg;
        l.vsock_cid = Some(5);
        let a = qemu_args(&l).unwrap();
        let drives = after(&a, "-drive");
        assert_eq!(drives.len(), 3);
        assert!(
            drives[0].starts_with("file=/img/root.squashfs,") && drives[0].ends_with("readonly=on")
        );
        assert!(
            drives[1].starts_with("file=/img/root.verity,") && drives[1].ends_with("readonly=on")
        );
        assert!(drives[2].starts_with("file=/d/data.img,") && !drives[2].contains("readonly"));
        assert_eq!(after(&a, "-append"), [l.cmdline.as_str()]);
        assert_eq!(
            after(&a, "-fw_cfg"),
            ["name=opt/cocoon/config,file=/c/worker.toml"]
        );
        assert!(after(&a, "-netdev")[0].contains("hostfwd=tcp:127.0.0.1:18000-:12000"));
        assert!(after(&a, "-device").contains(&"vhost-vsock-pci,guest-cid=5"));
        assert!(after(&a, "-bios").is_empty());

        l.gpus = vec!["0000:17:00.0".into()];
        assert_eq!(qemu_args(&l), Err(LaunchError::GpuWithTcg));
        l.accel = Accel::Kvm;
        let a = qemu_args(&l).unwrap();
        assert!(after(&a, "-device").contains(&"vfio-pci,host=0000:17:00.0,bus=gpuport0"));
        l.gpus = vec!["17:00.0".into()];
        assert_eq!(qemu_args(&l), Err(LaunchError::Gpu("17:00.0".into())));

        let mut uki = launch(Tee::None);
        uki.boot = Boot::Uki;
        let a = qemu_args(&uki).unwrap();
        assert_eq!(after(&a, "-kernel"), ["/img/uki.efi"]);
        assert!(after(&a, "-append").is_empty());
    }

    #[test]
    fn forwards_and_quoting() {
        assert_eq!(parse_forward("18000:12000"), Ok((18000, 12000)));
        assert!(parse_forward("18000").is_err());
        assert!(parse_forward("0:1").is_err());
        assert!(parse_forward("x:1").is_err());
        assert_eq!(quote("a=b,c"), "a=b,c");
        assert_eq!(quote(r#"{"a":1}"#), r#"'{"a":1}'"#);
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
