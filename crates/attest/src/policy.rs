//! Attestation policy: which evidence is acceptable, and the single entry point that
//! turns evidence into a [`VerifiedPeer`].

use sha2::{Digest, Sha512};

use crate::error::AttestError;
use crate::kds::{self, SevCollateral};
use crate::model::{Backend, Measurements, TcbStatus, TdxMeasurements, VerifiedPeer};
use crate::sev::{self, SevPolicy};
use crate::sim;
use crate::tdx::{self, TdxCollateral};

/// Evidence presented by a peer.
#[derive(Debug, Clone, Copy)]
pub enum Evidence<'a> {
    /// A raw TDX quote with the DCAP collateral for its platform (FMSPC).
    Tdx {
        /// The quote.
        quote: &'a [u8],
        /// Collateral for the quote's platform.
        collateral: &'a TdxCollateral,
    },
    /// A raw SEV-SNP attestation report with its VCEK (DER) and ASK/ARK chain (PEM).
    SevSnp {
        /// The report.
        report: &'a [u8],
        /// The VCEK certificate, DER.
        vcek_der: &'a [u8],
        /// The ASK and ARK, PEM.
        chain_pem: &'a [u8],
    },
    /// Simulated evidence produced by [`crate::SimKey::evidence`].
    Sim(&'a [u8]),
    /// COCOON's test-mode TDX evidence (`fake_tdx`): exactly
    /// [`crate::tdx::FAKE_TDX_LEN`] bytes, the report data itself.
    FakeTdx(&'a [u8]),
}

impl Evidence<'_> {
    /// The backend that produced this evidence.
    pub fn backend(&self) -> Backend {
        match self {
            Evidence::Tdx { .. } => Backend::Tdx,
            Evidence::SevSnp { .. } => Backend::SevSnp,
            Evidence::Sim(_) => Backend::Sim,
            Evidence::FakeTdx(_) => Backend::FakeTdx,
        }
    }
}

/// The binding of a TLS key to evidence: `report_data = SHA-512(public_key)`.
pub fn report_data_for_public_key(public_key: &[u8; 32]) -> [u8; 64] {
    Sha512::digest(public_key).into()
}

/// Policy for accepting attestation evidence. Empty allowlists mean "any", except
/// `allowed_root_key_ids`, where empty means "none" (fail closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Backends accepted.
    pub allowed_backends: Vec<Backend>,
    /// Image hashes (see [`tdx::image_hash`]); empty = any.
    pub allowed_image_hashes: Vec<[u8; 32]>,
    /// TDX MRTD values; empty = any.
    pub allowed_mrtds: Vec<[u8; 48]>,
    /// TDX RTMR0..3 sets; empty = any.
    pub allowed_rtmrs: Vec<[[u8; 48]; 4]>,
    /// Minimum acceptable TCB status (see the order on [`TcbStatus`]).
    pub min_tcb_status: TcbStatus,
    /// Advisory ids that make evidence unacceptable whatever the status.
    pub denied_advisories: Vec<String>,
    /// When set, every advisory reported must be in this list.
    pub allowed_advisories: Option<Vec<String>>,
    /// Maximum age in seconds of the TCB info / QE identity at `now`.
    pub max_collateral_age: Option<u64>,
    /// Intel root key ids (SHA-384 of the root CA public key) accepted. Empty = none.
    pub allowed_root_key_ids: Vec<[u8; 48]>,
    /// Sim signer keys accepted; empty = any (sim is test-only anyway).
    pub allowed_sim_signers: Vec<[u8; 32]>,
    /// Whether this policy serves a network marked as test; sim evidence needs it.
    pub is_test_network: bool,
    /// SEV-SNP checks beyond signatures (minimum TCB, debug, migration agent, VMPL 0, CRL).
    pub sev: SevPolicy,
    /// Where SEV-SNP verification reads AMD's CRLs (a [`crate::KdsFetcher`] or
    /// [`crate::VcekStore`]; never the network). `None` with `sev.require_crl` refuses
    /// every SEV-SNP report.
    pub sev_collateral: Option<SevCollateral>,
    /// Upper bound on [`VerifiedPeer::valid_until`] − `now`.
    pub max_validity_secs: u64,
}

/// The JSON policy file (`cocoon attest verify-cert --policy FILE`; format in
/// docs/ra-tls.md). Hex values may be upper or lower case.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    backends: Vec<String>,
    #[serde(default)]
    image_hashes: Vec<String>,
    #[serde(default)]
    mrtds: Vec<String>,
    #[serde(default)]
    rtmrs: Vec<[String; 4]>,
    #[serde(default)]
    min_tcb_status: Option<TcbStatus>,
    #[serde(default)]
    denied_advisories: Vec<String>,
    #[serde(default)]
    allowed_advisories: Option<Vec<String>>,
    #[serde(default)]
    max_collateral_age_secs: Option<u64>,
    #[serde(default)]
    root_key_ids: Option<Vec<String>>,
    #[serde(default)]
    sim_signers: Vec<String>,
    #[serde(default)]
    test_network: bool,
    #[serde(default)]
    sev: Option<SevPolicyFile>,
    #[serde(default)]
    max_validity_secs: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SevPolicyFile {
    #[serde(default)]
    min_tcb: Option<SevMinTcbFile>,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default)]
    allow_migration_agent: bool,
    #[serde(default)]
    require_vmpl0: Option<bool>,
    #[serde(default)]
    require_crl: Option<bool>,
    #[serde(default)]
    crl_grace_secs: Option<u64>,
}

/// `min_tcb`: one TCB for every product, or per product (omitted products keep the
/// default floor).
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum SevMinTcbFile {
    All(SevTcbFile),
    PerProduct(SevPerProductFile),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SevPerProductFile {
    #[serde(default)]
    milan: Option<SevTcbFile>,
    #[serde(default)]
    genoa: Option<SevTcbFile>,
    #[serde(default)]
    turin: Option<SevTcbFile>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SevTcbFile {
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
    #[serde(default)]
    fmc: u8,
}

impl SevTcbFile {
    fn tcb(&self) -> sev::SevTcb {
        sev::SevTcb {
            bootloader: self.bootloader,
            tee: self.tee,
            snp: self.snp,
            microcode: self.microcode,
            fmc: self.fmc,
        }
    }
}

fn hex_n<const N: usize>(field: &str, s: &str) -> Result<[u8; N], AttestError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| {
        AttestError::InvalidPolicy(format!("{field}: {s:?} is not {N} bytes of hex"))
    })?;
    Ok(out)
}

fn hex_list<const N: usize>(field: &str, v: &[String]) -> Result<Vec<[u8; N]>, AttestError> {
    v.iter().map(|s| hex_n::<N>(field, s)).collect()
}

impl Policy {
    /// The TD's MRTD and RTMRs against the allowlists (empty: any).
    fn check_td_registers(&self, m: &TdxMeasurements) -> Result<(), AttestError> {
        if !self.allowed_mrtds.is_empty() && !self.allowed_mrtds.contains(&m.mrtd) {
            return Err(AttestError::MrtdNotAllowed { mrtd: m.mrtd });
        }
        if !self.allowed_rtmrs.is_empty() && !self.allowed_rtmrs.contains(&m.rtmr) {
            return Err(AttestError::RtmrsNotAllowed {
                rtmrs: Box::new(m.rtmr),
            });
        }
        Ok(())
    }

    /// Parse a JSON policy file (format in docs/ra-tls.md). Unknown fields are errors;
    /// omitted fields take the values of [`Policy::tdx_default`]. `sim` in `backends`
    /// requires `"test_network": true`.
    pub fn from_json(json: &[u8]) -> Result<Self, AttestError> {
        let f: PolicyFile =
            serde_json::from_slice(json).map_err(|e| AttestError::InvalidPolicy(e.to_string()))?;
        let mut p = Self::tdx_default();
        p.allowed_backends.clear();
        for b in &f.backends {
            let backend = match b.parse::<Backend>() {
                Ok(
                    backend @ (Backend::Tdx | Backend::SevSnp | Backend::Sim | Backend::FakeTdx),
                ) => backend,
                _ => {
                    return Err(AttestError::InvalidPolicy(format!(
                        "backends: unknown backend {b:?} (one of: tdx, sev-snp, sim, fake-tdx)"
                    )));
                }
            };
            if !p.allowed_backends.contains(&backend) {
                p.allowed_backends.push(backend);
            }
        }
        if p.allowed_backends.is_empty() {
            return Err(AttestError::InvalidPolicy("backends: empty".into()));
        }
        for test_only in [Backend::Sim, Backend::FakeTdx] {
            if p.allowed_backends.contains(&test_only) && !f.test_network {
                return Err(AttestError::InvalidPolicy(format!(
                    "backends: \"{test_only}\" requires \"test_network\": true"
                )));
            }
        }
        p.allowed_image_hashes = hex_list("image_hashes", &f.image_hashes)?;
        p.allowed_mrtds = hex_list("mrtds", &f.mrtds)?;
        p.allowed_rtmrs = f
            .rtmrs
            .iter()
            .map(|set| {
                Ok([
                    hex_n("rtmrs", &set[0])?,
                    hex_n("rtmrs", &set[1])?,
                    hex_n("rtmrs", &set[2])?,
                    hex_n("rtmrs", &set[3])?,
                ])
            })
            .collect::<Result<_, AttestError>>()?;
        if let Some(s) = f.min_tcb_status {
            p.min_tcb_status = s;
        }
        p.denied_advisories = f.denied_advisories;
        p.allowed_advisories = f.allowed_advisories;
        p.max_collateral_age = f.max_collateral_age_secs;
        if let Some(ids) = &f.root_key_ids {
            p.allowed_root_key_ids = hex_list("root_key_ids", ids)?;
        }
        p.allowed_sim_signers = hex_list("sim_signers", &f.sim_signers)?;
        p.is_test_network = f.test_network;
        if let Some(sev) = f.sev {
            match sev.min_tcb {
                None => {}
                Some(SevMinTcbFile::All(t)) => p.sev.min_tcb = sev::SevMinTcb::uniform(t.tcb()),
                Some(SevMinTcbFile::PerProduct(per)) => {
                    for (slot, t) in [
                        (&mut p.sev.min_tcb.milan, per.milan),
                        (&mut p.sev.min_tcb.genoa, per.genoa),
                        (&mut p.sev.min_tcb.turin, per.turin),
                    ] {
                        if let Some(t) = t {
                            *slot = t.tcb();
                        }
                    }
                }
            }
            p.sev.allow_debug = sev.allow_debug;
            p.sev.allow_migration_agent = sev.allow_migration_agent;
            if let Some(v) = sev.require_vmpl0 {
                p.sev.require_vmpl0 = v;
            }
            if let Some(v) = sev.require_crl {
                p.sev.require_crl = v;
            }
            if let Some(v) = sev.crl_grace_secs {
                p.sev.crl_grace_secs = v;
            }
        }
        if let Some(v) = f.max_validity_secs {
            p.max_validity_secs = v;
        }
        Ok(p)
    }

    /// Production TDX policy: only `UpToDate`, Intel root key pinned
    /// ([`tdx::INTEL_ROOT_KEY_ID`]), debug TDs rejected, sim rejected.
    /// Image/MRTD/RTMR allowlists start empty: fill them from the root contract.
    pub fn tdx_default() -> Self {
        Self {
            allowed_backends: vec![Backend::Tdx],
            allowed_image_hashes: Vec::new(),
            allowed_mrtds: Vec::new(),
            allowed_rtmrs: Vec::new(),
            min_tcb_status: TcbStatus::UpToDate,
            denied_advisories: Vec::new(),
            allowed_advisories: None,
            max_collateral_age: None,
            allowed_root_key_ids: vec![tdx::INTEL_ROOT_KEY_ID],
            allowed_sim_signers: Vec::new(),
            is_test_network: false,
            sev: SevPolicy::default(),
            sev_collateral: None,
            max_validity_secs: 86_400,
        }
    }

    /// Production SEV-SNP policy: debug and migration agents refused, VMPL 0 required,
    /// AMD's bulletin TCB floors ([`sev::SevMinTcb::AMD_BULLETINS`]), a fresh ARK-signed CRL
    /// required (attach `sev_collateral`, e.g. a [`crate::KdsFetcher`]), sim rejected. Set
    /// the image-hash allowlist for the deployment.
    pub fn sev_default() -> Self {
        Self {
            allowed_backends: vec![Backend::SevSnp],
            ..Self::tdx_default()
        }
    }

    /// Test-network policy that accepts simulated evidence, COCOON's test-mode TDX
    /// evidence (`fake_tdx`), and TDX as `tdx_default`.
    pub fn sim_test() -> Self {
        Self {
            allowed_backends: vec![Backend::Sim, Backend::FakeTdx, Backend::Tdx],
            is_test_network: true,
            ..Self::tdx_default()
        }
    }

    /// Verify `evidence` and check that it binds `report_data_expected`.
    pub fn evaluate(
        &self,
        evidence: &Evidence<'_>,
        report_data_expected: &[u8; 64],
        now: u64,
    ) -> Result<VerifiedPeer, AttestError> {
        let backend = evidence.backend();
        if !self.allowed_backends.contains(&backend) {
            return Err(match backend {
                Backend::Sim => AttestError::SimNotAllowed,
                Backend::FakeTdx => AttestError::FakeTdxNotAllowed,
                backend => AttestError::BackendNotAllowed { backend },
            });
        }
        let peer = match evidence {
            Evidence::Tdx { quote, collateral } => self.evaluate_tdx(quote, collateral, now)?,
            Evidence::SevSnp {
                report,
                vcek_der,
                chain_pem,
            } => self.evaluate_sev(report, vcek_der, chain_pem, now)?,
            Evidence::Sim(ev) => self.evaluate_sim(ev, now)?,
            Evidence::FakeTdx(ev) => self.evaluate_fake_tdx(ev, now)?,
        };
        if &peer.report_data != report_data_expected {
            return Err(AttestError::ReportDataMismatch);
        }
        self.check_image_hash(&peer.image_hash)?;
        Ok(peer)
    }

    /// Like [`Self::evaluate`] with `report_data = SHA-512(public_key)` (the RA-TLS
    /// binding); the returned peer carries `public_key`.
    pub fn evaluate_bound(
        &self,
        evidence: &Evidence<'_>,
        public_key: &[u8; 32],
        now: u64,
    ) -> Result<VerifiedPeer, AttestError> {
        let mut peer = self.evaluate(evidence, &report_data_for_public_key(public_key), now)?;
        peer.public_key = Some(*public_key);
        Ok(peer)
    }

    fn check_image_hash(&self, image_hash: &[u8; 32]) -> Result<(), AttestError> {
        if !self.allowed_image_hashes.is_empty() && !self.allowed_image_hashes.contains(image_hash)
        {
            return Err(AttestError::ImageHashNotAllowed {
                image_hash: *image_hash,
            });
        }
        Ok(())
    }

    fn evaluate_tdx(
        &self,
        quote: &[u8],
        collateral: &TdxCollateral,
        now: u64,
    ) -> Result<VerifiedPeer, AttestError> {
        // Structural checks first, so that the error names the real problem.
        let parsed = tdx::parse_quote(quote)?;
        tdx::check_td_attributes(&parsed.measurements.td_attributes)?;
        collateral.check_window(now, self.max_collateral_age)?;

        let out = tdx::dcap_verify(quote, collateral, now)?;
        if out.collateral_expires < now {
            return Err(AttestError::CollateralExpired {
                what: "collateral (earliest expiry of CRLs, certificates, TCB info, QE identity)"
                    .into(),
                not_after: out.collateral_expires,
                now,
            });
        }
        if !self
            .allowed_root_key_ids
            .iter()
            .any(|k| k[..] == out.root_key_id[..])
        {
            return Err(AttestError::RootKeyNotPinned {
                root_key_id: out.root_key_id,
            });
        }
        tdx::check_td_attributes(&out.measurements.td_attributes)?;
        let status = TcbStatus::from_dcap(out.status);
        if status < self.min_tcb_status {
            return Err(AttestError::TcbStatusTooLow {
                status,
                minimum: self.min_tcb_status,
            });
        }
        for a in &out.advisory_ids {
            let denied = self.denied_advisories.contains(a);
            let unlisted = self
                .allowed_advisories
                .as_ref()
                .is_some_and(|allowed| !allowed.contains(a));
            if denied || unlisted {
                return Err(AttestError::AdvisoryNotAllowed {
                    advisory_id: a.clone(),
                });
            }
        }
        let m = out.measurements;
        self.check_td_registers(&m)?;
        Ok(VerifiedPeer {
            backend: Backend::Tdx,
            image_hash: tdx::image_hash(&m),
            measurements: Measurements::Tdx(Box::new(m)),
            tcb_status: status,
            advisory_ids: out.advisory_ids,
            report_data: out.report_data,
            public_key: None,
            valid_until: out
                .collateral_expires
                .min(now.saturating_add(self.max_validity_secs)),
            gpu: None,
        })
    }

    /// SEV-SNP: signatures, the ARK pinned to AMD's roots, certificate validity at `now`,
    /// chip id / TCB binding to the VCEK and [`SevPolicy`] (per-product TCB floor) are
    /// checked by [`sev::verify_report_full_at`]; then the product's CRL from
    /// `sev_collateral` by [`kds::check_revocation`]: a listed ASK or VCEK is refused; a
    /// missing or stale CRL is refused when `sev.require_crl`. The TCB status is reported as
    /// `UpToDate` once all that passes. `valid_until` is capped by the earliest `notAfter` of
    /// the VCEK, ASK and ARK and, with a fresh CRL, by its `nextUpdate` + grace.
    fn evaluate_sev(
        &self,
        report: &[u8],
        vcek_der: &[u8],
        chain_pem: &[u8],
        now: u64,
    ) -> Result<VerifiedPeer, AttestError> {
        let now_unix = i64::try_from(now).unwrap_or(i64::MAX);
        let v = sev::verify_report_full_at(report, vcek_der, chain_pem, &self.sev, now_unix)?;
        let crl = match &self.sev_collateral {
            Some(source) => source.source().crl(v.generation, now),
            None => Err(AttestError::MissingCollateral {
                what: format!(
                    "AMD {} CRL: no AMD KDS cache is configured (kds_url, or --kds / \
                     --kds-dir)",
                    v.generation
                ),
            }),
        };
        let crl_fresh_until = match crl {
            Ok(crl) => kds::check_revocation(&v, &crl, &self.sev, now)?,
            Err(e) if self.sev.require_crl => return Err(e),
            Err(_) => None,
        };
        let certs_expire = sev::certs_not_after(vcek_der, chain_pem)?;
        let info = v.info;
        Ok(VerifiedPeer {
            backend: Backend::SevSnp,
            image_hash: sev::image_hash(&info),
            measurements: Measurements::SevSnp {
                measurement: info.measurement,
                host_data: info.host_data,
            },
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            report_data: info.report_data,
            public_key: None,
            valid_until: certs_expire
                .min(crl_fresh_until.unwrap_or(u64::MAX))
                .min(now.saturating_add(self.max_validity_secs)),
            gpu: None,
        })
    }

    /// COCOON's `fake_tdx`: the evidence is the report data itself (64 bytes), with every
    /// register zero, as COCOON's fake TDX interface reads it; so the image hash is
    /// [`tdx::fake_tdx_image_hash`]. Nothing is signed: accepted only on a test network, and
    /// the MRTD/RTMR allowlists apply to the zero registers as COCOON applies them.
    fn evaluate_fake_tdx(&self, evidence: &[u8], now: u64) -> Result<VerifiedPeer, AttestError> {
        if !self.is_test_network {
            return Err(AttestError::FakeTdxNotAllowed);
        }
        let report_data: [u8; 64] = evidence.try_into().map_err(|_| {
            AttestError::Malformed(format!(
                "fake_tdx evidence is {} bytes, expected {}",
                evidence.len(),
                tdx::FAKE_TDX_LEN
            ))
        })?;
        let m = tdx::fake_tdx_measurements();
        self.check_td_registers(&m)?;
        Ok(VerifiedPeer {
            backend: Backend::FakeTdx,
            image_hash: tdx::image_hash(&m),
            measurements: Measurements::Tdx(Box::new(m)),
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            report_data,
            public_key: None,
            valid_until: now.saturating_add(self.max_validity_secs),
            gpu: None,
        })
    }

    fn evaluate_sim(&self, evidence: &[u8], now: u64) -> Result<VerifiedPeer, AttestError> {
        if !self.is_test_network {
            return Err(AttestError::SimNotAllowed);
        }
        let v = sim::verify_evidence(evidence)?;
        if !self.allowed_sim_signers.is_empty() && !self.allowed_sim_signers.contains(&v.signer) {
            return Err(AttestError::SimSignerNotAllowed { signer: v.signer });
        }
        Ok(VerifiedPeer {
            backend: Backend::Sim,
            measurements: Measurements::Sim {
                measurement: sim::SIM_MEASUREMENT,
                rtmr3: v.rtmr3,
            },
            image_hash: sim::sim_image_hash_for(v.rtmr3.as_ref()),
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            report_data: v.report_data,
            public_key: None,
            valid_until: now.saturating_add(self.max_validity_secs),
            gpu: None,
        })
    }
}
