//! The role's configuration as its TEE measured it at boot (ARCHITECTURE D14).
//!
//! A guest image takes its role configuration from the host (QEMU `fw_cfg`), so the host
//! chooses it; what makes that safe is that the configuration is measured before the role
//! runs and the measurement is part of the image hash the root allows. On TDX the image's
//! init extends RTMR3 with SHA-384 of the file (`cocoon image measure-config`, through
//! Linux 6.16's RTMR interface), or, on guest kernels without that interface, the launcher
//! sets MRCONFIGID to the same SHA-384 when it creates the TD; on SEV-SNP the launcher
//! passes SHA-256 of the file as host data; the sim backend keeps an emulated RTMR3 in a
//! per-boot directory ([`SimRegisters`]). At start a proxy or worker compares the
//! file it reads with the register ([`check`]) and refuses to run on a mismatch, so a host
//! cannot boot the approved image and then hand the role a different configuration.
//!
//! [`check`] is pure: [`read_register`] does the reading.

use std::io;
use std::path::{Path, PathBuf};

use cocoon_attest::Backend;
use cocoon_attest::measure::{config_digest, host_data_for_config, rtmr_extend, rtmr3_for_config};

/// Environment variable naming the sim backend's register directory (tests; the default is
/// [`SIM_REGISTERS_DEFAULT`], a tmpfs path that a reboot empties, like a real register).
pub const SIM_REGISTERS_ENV: &str = "COCOON_SIM_REGISTERS";
/// Where the sim backend keeps its emulated registers unless [`SIM_REGISTERS_ENV`] says.
pub const SIM_REGISTERS_DEFAULT: &str = "/run/cocoon/sim-registers";
/// Where the boot step leaves a copy of the configuration it measured (tmpfs), for a role
/// to show a KMS which configuration its attestation commits to.
pub const MEASURED_CONFIG_COPY: &str = "/run/cocoon/measured-config.toml";

/// Linux's TDX RTMR3 interface (6.16+): reading gives the register, writing 48 bytes
/// extends it.
pub const TDX_RTMR3_SYSFS: &str = "/sys/class/misc/tdx_guest/measurements/rtmr3:sha384";

/// The sim backend's emulated RTMR3: a file holding the register in hex. Absent means
/// nothing was measured (a development machine), so sim evidence stays version 1.
#[derive(Debug, Clone)]
pub struct SimRegisters {
    dir: PathBuf,
}

impl SimRegisters {
    /// The registers in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SimRegisters { dir: dir.into() }
    }

    /// The registers named by `COCOON_SIM_REGISTERS`, else [`SIM_REGISTERS_DEFAULT`].
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os(SIM_REGISTERS_ENV)
                .map_or_else(|| PathBuf::from(SIM_REGISTERS_DEFAULT), PathBuf::from),
        )
    }

    /// The copy of the measured configuration on a sim machine.
    pub fn config_copy(&self) -> PathBuf {
        self.dir.join("measured-config.toml")
    }

    fn rtmr3_path(&self) -> PathBuf {
        self.dir.join("rtmr3")
    }

    /// The emulated RTMR3, or `None` when nothing was ever extended into it.
    pub fn rtmr3(&self) -> io::Result<Option<[u8; 48]>> {
        match std::fs::read_to_string(self.rtmr3_path()) {
            Ok(s) => parse_register(&s).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not 48 bytes of hex", self.rtmr3_path().display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Extends the emulated RTMR3 with `digest` (from zero when never extended) and returns
    /// the new value.
    pub fn extend(&self, digest: &[u8; 48]) -> io::Result<[u8; 48]> {
        let new = rtmr_extend(&self.rtmr3()?.unwrap_or([0; 48]), digest);
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join("rtmr3.tmp");
        std::fs::write(&tmp, hex::encode(new))?;
        std::fs::rename(&tmp, self.rtmr3_path())?;
        Ok(new)
    }
}

fn parse_register(s: &str) -> Option<[u8; 48]> {
    hex::decode(s.trim()).ok()?.try_into().ok()
}

/// What the TEE measured, as [`check`] compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Register {
    /// RTMR3 of a TDX guest or the sim backend's emulated one (`None`: the sim backend on a
    /// machine where nothing was measured).
    Rtmr3(Option<[u8; 48]>),
    /// A TDX guest's RTMR3 and MRCONFIGID, from its quote.
    Tdx {
        /// RTMR3.
        rtmr3: [u8; 48],
        /// MRCONFIGID.
        mr_config_id: [u8; 48],
    },
    /// SEV-SNP host data.
    HostData([u8; 32]),
    /// A backend without such a register (COCOON's fake TDX, unattested).
    NotMeasured,
}

/// The verdict of [`check`] when the role may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Measured {
    /// The configuration is the measured one; the register's value in hex.
    Matches(String),
    /// Nothing was measured and the backend allows that (sim without a measured
    /// configuration, fake TDX): a development or test machine.
    NotMeasured,
}

/// Why a role refuses its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasuredError {
    /// The register holds another configuration's measurement (or more than one event).
    #[error(
        "the configuration is not the one this TEE measured at boot ({what} is {found}, the \
         configuration's measurement is {expected}); a role in a TEE runs only the measured \
         configuration"
    )]
    Mismatch {
        /// The register's name.
        what: &'static str,
        /// Its value, hex.
        found: String,
        /// What the configuration gives, hex.
        expected: String,
    },
    /// The register could not be read.
    #[error("cannot read the measured configuration: {0}")]
    Read(String),
}

/// Compares the configuration file's bytes with what the TEE measured. A TDX guest always
/// has RTMR3 (zero when its boot measured nothing), so a hardware TEE without the
/// configuration measured is a mismatch too.
pub fn check(register: &Register, config: &[u8]) -> Result<Measured, MeasuredError> {
    match register {
        Register::NotMeasured | Register::Rtmr3(None) => Ok(Measured::NotMeasured),
        Register::Rtmr3(Some(r)) => {
            let expected = rtmr3_for_config(config);
            if *r == expected {
                Ok(Measured::Matches(hex::encode(r)))
            } else {
                Err(MeasuredError::Mismatch {
                    what: "RTMR3",
                    found: hex::encode(r),
                    expected: hex::encode(expected),
                })
            }
        }
        Register::Tdx {
            rtmr3,
            mr_config_id,
        } => {
            let in_rtmr3 = rtmr3_for_config(config);
            if *rtmr3 == in_rtmr3 {
                Ok(Measured::Matches(hex::encode(rtmr3)))
            } else if *rtmr3 == [0; 48] && *mr_config_id == config_digest(config) {
                Ok(Measured::Matches(hex::encode(mr_config_id)))
            } else {
                Err(MeasuredError::Mismatch {
                    what: "RTMR3 (with MRCONFIGID)",
                    found: format!("{} ({})", hex::encode(rtmr3), hex::encode(mr_config_id)),
                    expected: format!(
                        "{} (or RTMR3 zero and MRCONFIGID {})",
                        hex::encode(in_rtmr3),
                        hex::encode(config_digest(config))
                    ),
                })
            }
        }
        Register::HostData(d) => {
            let expected = host_data_for_config(config);
            if *d == expected {
                Ok(Measured::Matches(hex::encode(d)))
            } else {
                Err(MeasuredError::Mismatch {
                    what: "host data",
                    found: hex::encode(d),
                    expected: hex::encode(expected),
                })
            }
        }
    }
}

/// Reads `backend`'s register on this machine: the sim registers, Linux's TDX RTMR3 file
/// (else RTMR3 from a fresh quote), or the host data of a fresh SEV-SNP report.
pub fn read_register(backend: Backend, sim: &SimRegisters) -> Result<Register, MeasuredError> {
    let read = |e: String| MeasuredError::Read(e);
    match backend {
        Backend::Sim => sim
            .rtmr3()
            .map(Register::Rtmr3)
            .map_err(|e| read(e.to_string())),
        Backend::Tdx => {
            let tsm = cocoon_attest::tsm::Tsm::new(cocoon_attest::tsm::TsmProvider::TdxGuest);
            let report = tsm.get_report(&[0; 64]).map_err(|e| read(e.to_string()))?;
            let q = cocoon_attest::tdx::parse_quote(&report.outblob)
                .map_err(|e| read(e.to_string()))?;
            Ok(Register::Tdx {
                rtmr3: q.measurements.rtmr[3],
                mr_config_id: q.measurements.mr_config_id,
            })
        }
        Backend::SevSnp => {
            let tsm = cocoon_attest::tsm::Tsm::new(cocoon_attest::tsm::TsmProvider::SevGuest);
            let report = tsm.get_report(&[0; 64]).map_err(|e| read(e.to_string()))?;
            let info = cocoon_attest::sev::parse_report(&report.outblob)
                .map_err(|e| read(e.to_string()))?;
            Ok(Register::HostData(info.host_data))
        }
        Backend::FakeTdx | Backend::Unattested => Ok(Register::NotMeasured),
    }
}

/// The copy of the measured configuration for `backend` on this machine.
pub fn config_copy(backend: Backend, sim: &SimRegisters) -> PathBuf {
    match backend {
        Backend::Sim => sim.config_copy(),
        _ => PathBuf::from(MEASURED_CONFIG_COPY),
    }
}

/// The register a verified peer's evidence reports, for checking a configuration it shows
/// (a KMS binding keys to the identity in the peer's measured configuration).
pub fn register_of(m: &cocoon_attest::Measurements) -> Register {
    use cocoon_attest::Measurements;
    match m {
        Measurements::Tdx(t) => Register::Tdx {
            rtmr3: t.rtmr[3],
            mr_config_id: t.mr_config_id,
        },
        Measurements::SevSnp { host_data, .. } => Register::HostData(*host_data),
        Measurements::Sim { rtmr3, .. } => Register::Rtmr3(*rtmr3),
        _ => Register::NotMeasured,
    }
}

/// What `cocoon image measure-config` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extended {
    /// RTMR3 (TDX or sim) now holds this value.
    Rtmr3([u8; 48]),
    /// TDX without Linux's RTMR interface: the launcher put the configuration's digest in
    /// MRCONFIGID, and the quote says so.
    MrConfigId([u8; 48]),
    /// SEV-SNP: nothing to extend; the launcher must have passed this host data.
    HostData([u8; 32]),
}

/// Measures the configuration at `path` into `backend`'s register: the boot step of a guest
/// image, run once before the role starts.
pub fn extend_config(
    backend: Backend,
    path: &Path,
    sim: &SimRegisters,
) -> Result<Extended, String> {
    let config = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let extended = extend(backend, &config, sim)?;
    let copy = config_copy(backend, sim);
    if let Some(dir) = copy.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&copy, &config).map_err(|e| format!("{}: {e}", copy.display()))?;
    Ok(extended)
}

fn extend(backend: Backend, config: &[u8], sim: &SimRegisters) -> Result<Extended, String> {
    let digest = config_digest(config);
    match backend {
        Backend::Sim => sim
            .extend(&digest)
            .map(Extended::Rtmr3)
            .map_err(|e| format!("sim registers: {e}")),
        Backend::Tdx => {
            if Path::new(TDX_RTMR3_SYSFS).exists() {
                std::fs::write(TDX_RTMR3_SYSFS, digest)
                    .map_err(|e| format!("extending RTMR3 through {TDX_RTMR3_SYSFS}: {e}"))?;
            }
            match read_register(Backend::Tdx, sim).map_err(|e| e.to_string())? {
                Register::Tdx { rtmr3, .. } if rtmr3 == rtmr3_for_config(config) => {
                    Ok(Extended::Rtmr3(rtmr3))
                }
                Register::Tdx {
                    rtmr3,
                    mr_config_id,
                } if rtmr3 == [0; 48] && mr_config_id == digest => {
                    Ok(Extended::MrConfigId(mr_config_id))
                }
                other => Err(format!(
                    "this TD measured neither the configuration in RTMR3 (no {TDX_RTMR3_SYSFS}: \
                     the guest kernel predates Linux 6.16) nor in MRCONFIGID (set by \
                     `cocoon image run --tee tdx --config`): {other:?}"
                )),
            }
        }
        Backend::SevSnp => Ok(Extended::HostData(host_data_for_config(config))),
        Backend::FakeTdx | Backend::Unattested => Err(format!(
            "{backend} has no register to measure a configuration into"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_configuration_and_no_other_passes() {
        let a = b"[worker]\nbackend_url = \"http://127.0.0.1:8000\"\n";
        let b = b"[worker]\nbackend_url = \"http://evil.example:8000\"\n";
        let r = Register::Rtmr3(Some(rtmr3_for_config(a)));
        assert!(matches!(check(&r, a), Ok(Measured::Matches(_))));
        let e = check(&r, b).unwrap_err();
        assert!(
            e.to_string().contains("not the one this TEE measured"),
            "{e}"
        );
        // A TDX guest whose boot measured nothing has a zero RTMR3: refused.
        assert!(check(&Register::Rtmr3(Some([0; 48])), a).is_err());
        // TDX: the configuration in RTMR3, or RTMR3 untouched and the digest in MRCONFIGID.
        let tdx = |rtmr3, mr_config_id| Register::Tdx {
            rtmr3,
            mr_config_id,
        };
        assert!(check(&tdx(rtmr3_for_config(a), [0; 48]), a).is_ok());
        assert!(check(&tdx([0; 48], config_digest(a)), a).is_ok());
        assert!(check(&tdx([0; 48], config_digest(a)), b).is_err());
        assert!(check(&tdx([0; 48], [0; 48]), a).is_err());
        // Something else extended into RTMR3: MRCONFIGID no longer vouches.
        assert!(check(&tdx([1; 48], config_digest(a)), a).is_err());
        let h = Register::HostData(host_data_for_config(a));
        assert!(check(&h, a).is_ok());
        assert!(check(&h, b).is_err());
        assert_eq!(check(&Register::Rtmr3(None), b), Ok(Measured::NotMeasured));
        assert_eq!(check(&Register::NotMeasured, b), Ok(Measured::NotMeasured));
    }

    #[test]
    fn sim_registers_extend_from_zero_and_survive_rereading() {
        let d = tempfile::tempdir().unwrap();
        let regs = SimRegisters::new(d.path().join("regs"));
        assert_eq!(regs.rtmr3().unwrap(), None);
        let cfg = d.path().join("w.toml");
        std::fs::write(&cfg, "x = 1\n").unwrap();
        let e = extend_config(Backend::Sim, &cfg, &regs).unwrap();
        assert_eq!(e, Extended::Rtmr3(rtmr3_for_config(b"x = 1\n")));
        assert_eq!(regs.rtmr3().unwrap(), Some(rtmr3_for_config(b"x = 1\n")));
        assert_eq!(std::fs::read(regs.config_copy()).unwrap(), b"x = 1\n");
        let reg = read_register(Backend::Sim, &regs).unwrap();
        assert!(check(&reg, b"x = 1\n").is_ok());
        // A second extension (a second config measured) no longer matches either alone.
        extend_config(Backend::Sim, &cfg, &regs).unwrap();
        let reg = read_register(Backend::Sim, &regs).unwrap();
        assert!(check(&reg, b"x = 1\n").is_err());
        std::fs::write(d.path().join("regs/rtmr3"), "zz").unwrap();
        assert!(regs.rtmr3().is_err());
    }
}
