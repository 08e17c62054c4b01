//! The verified-facts model shared with the rest of Cocoon.

use serde::{Deserialize, Serialize};

/// Which kind of trusted execution environment produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// Intel TDX (DCAP quote).
    Tdx,
    /// AMD SEV-SNP (attestation report).
    SevSnp,
    /// Software-simulated evidence for development and test networks only.
    Sim,
    /// COCOON's test-mode TDX evidence (`fake_tdx`): the 64 bytes of report data in place
    /// of a quote, nothing signed or measured. Test networks only.
    FakeTdx,
    /// No evidence at all: a plain self-signed certificate, accepted only where a verifier
    /// is told to (a proxy's clients, whose trust rests on their payment channel).
    Unattested,
}

impl Backend {
    /// The settings' name: `tdx`, `sev-snp`, `sim`, `fake-tdx`, `none` (unattested).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tdx => "tdx",
            Backend::SevSnp => "sev-snp",
            Backend::Sim => "sim",
            Backend::FakeTdx => "fake-tdx",
            Backend::Unattested => "none",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend by its [`Backend::name`].
impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            Backend::Tdx,
            Backend::SevSnp,
            Backend::Sim,
            Backend::FakeTdx,
            Backend::Unattested,
        ]
        .into_iter()
        .find(|b| b.name() == s)
        .ok_or_else(|| format!("unknown TEE {s:?} (one of: tdx, sev-snp, sim, fake-tdx, none)"))
    }
}

/// Intel TCB status. The derived order goes from worst to best, so that
/// `status >= minimum` means "at least as good as `minimum`":
///
/// `Revoked < OutOfDateConfigurationNeeded < OutOfDate < ConfigurationAndSWHardeningNeeded
///  < ConfigurationNeeded < SWHardeningNeeded < UpToDate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    /// Platform keys revoked.
    Revoked,
    /// Out of date, and a configuration change is needed too.
    OutOfDateConfigurationNeeded,
    /// TCB level out of date.
    OutOfDate,
    /// Up to date once configuration and software hardening are applied.
    ConfigurationAndSWHardeningNeeded,
    /// Up to date once a configuration change is applied.
    ConfigurationNeeded,
    /// Up to date once software hardening is applied.
    SWHardeningNeeded,
    /// Up to date.
    UpToDate,
}

impl TcbStatus {
    /// Every status, worst first.
    pub const ALL: [TcbStatus; 7] = [
        TcbStatus::Revoked,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::UpToDate,
    ];

    /// Map dcap-qvl's status. The TD 1.5 "relaunch advised" statuses are treated
    /// conservatively as their out-of-date counterparts.
    pub(crate) fn from_dcap(s: dcap_qvl::TcbStatus) -> Self {
        use dcap_qvl::TcbStatus as D;
        match s {
            D::UpToDate => Self::UpToDate,
            D::SWHardeningNeeded => Self::SWHardeningNeeded,
            D::ConfigurationNeeded => Self::ConfigurationNeeded,
            D::ConfigurationAndSWHardeningNeeded => Self::ConfigurationAndSWHardeningNeeded,
            D::OutOfDate | D::TDRelaunchAdvised => Self::OutOfDate,
            D::OutOfDateConfigurationNeeded | D::TDRelaunchAdvisedConfigurationNeeded => {
                Self::OutOfDateConfigurationNeeded
            }
            D::Revoked => Self::Revoked,
        }
    }
}

/// A status by Intel's name (`UpToDate`, `SWHardeningNeeded`, ...; any case).
impl std::str::FromStr for TcbStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let name = |st: &TcbStatus| format!("{st:?}");
        Self::ALL
            .iter()
            .find(|st| name(st).eq_ignore_ascii_case(s))
            .copied()
            .ok_or_else(|| {
                let names: Vec<String> = Self::ALL.iter().map(name).collect();
                format!("unknown TCB status {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// TDX measurement registers (all 48-byte SHA-384 values) and attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TdxMeasurements {
    /// Measurement of the initial TD contents (firmware).
    pub mrtd: [u8; 48],
    /// Runtime measurement registers 0-3.
    pub rtmr: [[u8; 48]; 4],
    /// Software-defined id of the TD's configuration.
    pub mr_config_id: [u8; 48],
    /// Software-defined id of the TD's owner.
    pub mr_owner: [u8; 48],
    /// Software-defined id of the owner's configuration.
    pub mr_owner_config: [u8; 48],
    /// TD attributes (bit 0: debug).
    pub td_attributes: [u8; 8],
    /// Extended features the TD may use.
    pub xfam: [u8; 8],
}

/// Measurements of the peer's image, per backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Measurements {
    /// A TDX quote's registers.
    Tdx(Box<TdxMeasurements>),
    /// An SEV-SNP report's launch measurement and host data.
    SevSnp {
        /// Launch measurement.
        measurement: [u8; 48],
        /// Data the host supplied at launch.
        host_data: [u8; 32],
    },
    /// Simulated evidence: the reserved measurement [`crate::sim::SIM_MEASUREMENT`]
    /// (every byte 0xFF), which no production allowlist contains.
    Sim {
        /// Always the reserved value.
        measurement: [u8; 48],
        /// The emulated RTMR3 (the measured role configuration), in version-2 evidence.
        rtmr3: Option<[u8; 48]>,
    },
    /// No evidence, nothing measured.
    Unattested,
}

/// Facts established by verifying attestation evidence against a [`crate::Policy`].
///
/// Fields are private: a `VerifiedPeer` is produced by this crate's verification functions,
/// so holding one means the checks ran — or, for [`VerifiedPeer::unattested`], says plainly
/// that there was nothing to check ([`Backend::Unattested`], zero image hash, TCB status
/// `Revoked` so that no TCB minimum passes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    pub(crate) backend: Backend,
    pub(crate) measurements: Measurements,
    pub(crate) image_hash: [u8; 32],
    pub(crate) tcb_status: TcbStatus,
    pub(crate) advisory_ids: Vec<String>,
    pub(crate) report_data: [u8; 64],
    pub(crate) public_key: Option<[u8; 32]>,
    pub(crate) valid_until: u64,
    pub(crate) gpu: Option<crate::gpu::GpuAttestation>,
}

impl VerifiedPeer {
    /// A peer that presented no evidence, identified only by its certificate key.
    pub fn unattested(public_key: [u8; 32], valid_until: u64) -> Self {
        VerifiedPeer {
            backend: Backend::Unattested,
            measurements: Measurements::Unattested,
            image_hash: [0; 32],
            tcb_status: TcbStatus::Revoked,
            advisory_ids: Vec::new(),
            report_data: [0; 64],
            public_key: Some(public_key),
            valid_until,
            gpu: None,
        }
    }

    /// These facts with the verified GPU evidence the peer presented alongside (the RA-TLS
    /// verifier adds it after checking the GPU claim; see `docs/ra-tls.md`).
    pub fn with_gpu(mut self, gpu: crate::gpu::GpuAttestation) -> Self {
        self.gpu = Some(gpu);
        self
    }
    /// The peer's verified GPU evidence, when it presented some and the verifier checked it.
    pub fn gpu(&self) -> Option<&crate::gpu::GpuAttestation> {
        self.gpu.as_ref()
    }

    /// Which TEE produced the evidence.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The measured registers.
    pub fn measurements(&self) -> &Measurements {
        &self.measurements
    }
    /// The 32-byte image hash that allowlists (and the root contract) refer to.
    pub fn image_hash(&self) -> &[u8; 32] {
        &self.image_hash
    }
    /// The platform's TCB status.
    pub fn tcb_status(&self) -> TcbStatus {
        self.tcb_status
    }
    /// Security advisories that apply to the platform (and the policy accepted).
    pub fn advisory_ids(&self) -> &[String] {
        &self.advisory_ids
    }
    /// The 64 bytes of report data in the evidence.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.report_data
    }
    /// The Ed25519 key bound through `report_data = SHA-512(public_key)`, when the
    /// evidence was verified with [`crate::Policy::evaluate_bound`].
    pub fn public_key(&self) -> Option<&[u8; 32]> {
        self.public_key.as_ref()
    }
    /// Unix time after which these facts must be re-established (earliest collateral
    /// expiry, capped by the policy's `max_validity_secs`).
    pub fn valid_until(&self) -> u64 {
        self.valid_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for b in [
            Backend::Tdx,
            Backend::SevSnp,
            Backend::Sim,
            Backend::Unattested,
        ] {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
        }
        assert!(
            "sgx"
                .parse::<Backend>()
                .unwrap_err()
                .contains("unknown TEE")
        );
        assert_eq!("uptodate".parse::<TcbStatus>(), Ok(TcbStatus::UpToDate));
        assert_eq!(
            "SWHardeningNeeded".parse::<TcbStatus>(),
            Ok(TcbStatus::SWHardeningNeeded)
        );
        let err = "bogus".parse::<TcbStatus>().unwrap_err();
        assert!(
            err.starts_with("unknown TCB status \"bogus\" (one of: Revoked,"),
            "{err}"
        );
        assert!(TcbStatus::ALL.windows(2).all(|w| w[0] < w[1]));
    }
}

/// Whose fault a refusal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The peer's evidence is malformed, forged or not allowed by the policy: the same
    /// evidence is refused again, whatever we fix on our side.
    Peer,
    /// Something on our side: collateral or CRLs missing, expired or not fetchable, a bad
    /// policy or setting, I/O. The same evidence may verify once that is fixed.
    Local,
}
