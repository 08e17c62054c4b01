//! RA-TLS certificates (COCOON-compatible, see docs/cocoon-compat.md).
//!
//! A certificate is self-signed by a fresh Ed25519 key. Its *claims* are the 32 raw
//! public-key bytes; the attestation evidence binds `report_data = SHA-512(claims)`.
//! Two **critical** extensions carry the attestation, as raw bytes inside the
//! extnValue OCTET STRING:
//!
//! * [`OID_EVIDENCE`] `1.3.6.1.4.1.12345.1`: the evidence envelope (below);
//! * [`OID_CLAIMS`] `1.3.6.1.4.1.12345.2`: the claims (32-byte Ed25519 public key).
//!
//! # Evidence envelope
//!
//! A TDX quote is stored raw, as peers that only know TDX expect it. Other evidence
//! kinds start with an 8-byte magic that no TDX quote can start with
//! (a quote starts with its `u16` version, 4 or 5):
//!
//! ```text
//! TDX:      quote                                           (raw)
//! SEV-SNP:  "CCN-SEV1" ‖ u32le len ‖ report ‖ u32le len ‖ vcek_der ‖ u32le len ‖ chain_pem
//! Sim:      "CCN-SIM1" ‖ sim evidence (cocoon_attest::sim format)
//! FakeTdx:  report_data (exactly 64 bytes; COCOON's test-mode `fake_tdx`)
//! ```
//!
//! A third, **non-critical** extension may carry NVIDIA GPU evidence ([`OID_GPU`]
//! `1.3.6.1.4.1.12345.3`, see [`GpuClaim`]): peers that do not know it (COCOON's) ignore it.
//!
//! Any other content starting with `"CCN-"` is rejected. No TDX quote is 64 bytes long (its
//! header alone is 48, its body 584), so 64 bytes are COCOON's fake evidence. Parsing is bounded: the whole
//! extension is capped at [`MAX_EVIDENCE_LEN`], lengths are checked before slicing, and
//! trailing bytes are an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cocoon_attest::sev;
use cocoon_attest::tsm::{Tsm, TsmFs, TsmProvider};
use cocoon_attest::{AttestError, SimKey, report_data_for_public_key};
use rcgen::{
    CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// OID arcs of the evidence extension (`1.3.6.1.4.1.12345.1`).
pub const OID_EVIDENCE: &[u64] = &[1, 3, 6, 1, 4, 1, 12345, 1];
/// OID arcs of the claims extension (`1.3.6.1.4.1.12345.2`).
pub const OID_CLAIMS: &[u64] = &[1, 3, 6, 1, 4, 1, 12345, 2];
/// OID arcs of the GPU evidence extension (`1.3.6.1.4.1.12345.3`, non-critical).
pub const OID_GPU: &[u64] = &[1, 3, 6, 1, 4, 1, 12345, 3];
/// Dotted form of [`OID_GPU`].
pub const OID_GPU_STR: &str = "1.3.6.1.4.1.12345.3";
/// Largest GPU evidence extension accepted or produced. A Hopper report is about 4 KiB and
/// its chain about 5 KiB; this keeps the certificate (with [`MAX_EVIDENCE_LEN`] of CPU
/// evidence) within rustls' 64 KiB handshake message.
pub const MAX_GPU_EVIDENCE_LEN: usize = 14 * 1024;
/// Magic of the GPU evidence extension.
pub const GPU_MAGIC: &[u8; 8] = b"CCN-GPU1";
/// Dotted form of [`OID_EVIDENCE`].
pub const OID_EVIDENCE_STR: &str = "1.3.6.1.4.1.12345.1";
/// Dotted form of [`OID_CLAIMS`].
pub const OID_CLAIMS_STR: &str = "1.3.6.1.4.1.12345.2";
/// Largest evidence extension accepted or produced (rustls caps a handshake message at
/// 64 KiB, and the certificate must fit with the rest of the flight).
pub const MAX_EVIDENCE_LEN: usize = 48 * 1024;
/// Certificate lifetime: one day.
pub const CERT_VALIDITY_SECS: u64 = 86_400;
/// Magic of the SEV-SNP envelope.
pub const SEV_MAGIC: &[u8; 8] = b"CCN-SEV1";
/// Magic of the simulated-evidence envelope.
pub const SIM_MAGIC: &[u8; 8] = b"CCN-SIM1";
/// Prefix reserved for non-TDX envelopes.
const RESERVED_PREFIX: &[u8; 4] = b"CCN-";

/// Why a certificate could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen could not build the certificate.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Evidence could not be produced.
    #[error("evidence: {0}")]
    Evidence(#[from] AttestError),
    /// The evidence source failed.
    #[error("evidence source: {0}")]
    Source(String),
    /// Evidence larger than a certificate may carry.
    #[error("evidence is {len} bytes, limit is {MAX_EVIDENCE_LEN}")]
    EvidenceTooLarge {
        /// Its length.
        len: usize,
    },
    /// GPU evidence larger than a certificate may carry.
    #[error("GPU evidence is {len} bytes, limit is {MAX_GPU_EVIDENCE_LEN}")]
    GpuEvidenceTooLarge {
        /// Its encoded length.
        len: usize,
    },
    /// A validity time that does not fit a certificate.
    #[error("time {0} is out of range")]
    BadTime(u64),
    /// rustls does not accept the key.
    #[error("rustls rejected the key: {0}")]
    Key(#[from] rustls::Error),
}

/// Evidence as carried in the certificate, decoded from the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceEnvelope<'a> {
    /// A TDX quote.
    Tdx(&'a [u8]),
    /// An SEV-SNP report with its VCEK and chain.
    SevSnp {
        /// The attestation report.
        report: &'a [u8],
        /// The VCEK certificate, DER.
        vcek_der: &'a [u8],
        /// The ASK and ARK, PEM.
        chain_pem: &'a [u8],
    },
    /// Simulated evidence.
    Sim(&'a [u8]),
    /// COCOON's test-mode TDX evidence (`fake_tdx`): the report data in place of a quote.
    FakeTdx(&'a [u8]),
}

impl<'a> EvidenceEnvelope<'a> {
    /// Encode into the extension bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            EvidenceEnvelope::Tdx(q) | EvidenceEnvelope::FakeTdx(q) => q.to_vec(),
            EvidenceEnvelope::Sim(s) => [SIM_MAGIC.as_slice(), s].concat(),
            EvidenceEnvelope::SevSnp {
                report,
                vcek_der,
                chain_pem,
            } => {
                let mut out = SEV_MAGIC.to_vec();
                for part in [report, vcek_der, chain_pem] {
                    // Parts above u32::MAX cannot occur within MAX_EVIDENCE_LEN; saturate.
                    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(part);
                }
                out
            }
        }
    }

    /// The image hash computed from the evidence alone, **unverified** (no signature,
    /// chain or collateral check): for display, e.g. right after generating a certificate
    /// on a machine without DCAP collateral. TDX: the image hash over the quote body's
    /// registers; SEV-SNP: over measurement and host data; sim: the reserved sim hash.
    pub fn unverified_image_hash(&self) -> Result<[u8; 32], AttestError> {
        match self {
            EvidenceEnvelope::Tdx(quote) => Ok(cocoon_attest::tdx::image_hash(
                &cocoon_attest::tdx::parse_quote(quote)?.measurements,
            )),
            EvidenceEnvelope::SevSnp { report, .. } => {
                Ok(sev::image_hash(&sev::parse_report(report)?))
            }
            EvidenceEnvelope::Sim(_) => Ok(cocoon_attest::sim::sim_image_hash()),
            EvidenceEnvelope::FakeTdx(_) => Ok(cocoon_attest::tdx::fake_tdx_image_hash()),
        }
    }

    /// Decode extension bytes. Bounded, never panics.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(format!(
                "evidence is {} bytes, limit is {MAX_EVIDENCE_LEN}",
                bytes.len()
            ));
        }
        if bytes.is_empty() {
            return Err("evidence is empty".into());
        }
        if let Some(rest) = bytes.strip_prefix(SIM_MAGIC.as_slice()) {
            return Ok(EvidenceEnvelope::Sim(rest));
        }
        if let Some(mut rest) = bytes.strip_prefix(SEV_MAGIC.as_slice()) {
            let mut take = || -> Result<&'a [u8], String> {
                let (len, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or("SEV envelope truncated (length)")?;
                let len = u32::from_le_bytes(*len) as usize;
                if len > tail.len() {
                    return Err("SEV envelope truncated (part)".into());
                }
                let (part, tail) = tail.split_at(len);
                rest = tail;
                Ok(part)
            };
            let report = take()?;
            let vcek_der = take()?;
            let chain_pem = take()?;
            if !rest.is_empty() {
                return Err("SEV envelope has trailing bytes".into());
            }
            return Ok(EvidenceEnvelope::SevSnp {
                report,
                vcek_der,
                chain_pem,
            });
        }
        if bytes.starts_with(RESERVED_PREFIX) {
            return Err("unknown evidence envelope magic".into());
        }
        if bytes.len() == cocoon_attest::tdx::FAKE_TDX_LEN {
            return Ok(EvidenceEnvelope::FakeTdx(bytes));
        }
        Ok(EvidenceEnvelope::Tdx(bytes))
    }
}

/// NVIDIA GPU evidence as carried in extension [`OID_GPU`]:
///
/// ```text
/// "CCN-GPU1" ‖ u32le len ‖ report ‖ u32le len ‖ cert_chain_pem
/// ```
///
/// `report` is the binary SPDM request ‖ signed response (`cocoon_attest::gpu::report`),
/// `cert_chain_pem` the GPU's certificate chain, PEM, leaf first. The report's nonce is
/// [`gpu_nonce_for_public_key`] of the certificate's key. The whole extension is at most
/// [`MAX_GPU_EVIDENCE_LEN`] bytes; lengths are checked before slicing and trailing bytes are
/// an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuClaim<'a> {
    /// The SPDM report (request ‖ response), binary.
    pub report: &'a [u8],
    /// The certificate chain, PEM, leaf first.
    pub cert_chain_pem: &'a [u8],
}

impl<'a> GpuClaim<'a> {
    /// Encode into the extension bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = GPU_MAGIC.to_vec();
        for part in [self.report, self.cert_chain_pem] {
            // Parts above u32::MAX are refused by the size check before they are sent.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Decode extension bytes. Bounded, never panics.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() > MAX_GPU_EVIDENCE_LEN {
            return Err(format!(
                "GPU evidence is {} bytes, limit is {MAX_GPU_EVIDENCE_LEN}",
                bytes.len()
            ));
        }
        let mut rest = bytes
            .strip_prefix(GPU_MAGIC.as_slice())
            .ok_or("GPU evidence does not start with CCN-GPU1")?;
        let mut take = || -> Result<&'a [u8], String> {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or("GPU evidence truncated (length)")?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > tail.len() {
                return Err("GPU evidence truncated (part)".into());
            }
            let (part, tail) = tail.split_at(len);
            rest = tail;
            Ok(part)
        };
        let report = take()?;
        let cert_chain_pem = take()?;
        if !rest.is_empty() {
            return Err("GPU evidence has trailing bytes".into());
        }
        Ok(GpuClaim {
            report,
            cert_chain_pem,
        })
    }
}

/// The nonce a GPU report in an RA-TLS certificate must carry: SHA-256 of the certificate's
/// raw Ed25519 key (the key the CPU evidence binds through `SHA-512`).
pub fn gpu_nonce_for_public_key(public_key: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(public_key).into()
}

/// GPU evidence owned by its producer (see [`GpuClaim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvidenceBytes {
    /// The SPDM report (request ‖ response), binary.
    pub report: Vec<u8>,
    /// The certificate chain, PEM, leaf first.
    pub cert_chain_pem: Vec<u8>,
}

/// Produces NVIDIA GPU evidence for a 32-byte nonce.
pub trait GpuEvidenceSource: Send + Sync {
    /// Evidence whose report carries `nonce` (a source that cannot, such as recorded
    /// evidence, returns its fixed report: verifiers then refuse it unless they accept
    /// unbound nonces).
    fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<GpuEvidenceBytes, CertError>;
}

/// Recorded GPU evidence, the same whatever the nonce (test networks only: the report is
/// not bound to the certificate's key).
#[derive(Debug, Clone)]
pub struct RecordedGpuSource(pub GpuEvidenceBytes);

impl GpuEvidenceSource for RecordedGpuSource {
    fn gpu_evidence(&self, _nonce: &[u8; 32]) -> Result<GpuEvidenceBytes, CertError> {
        Ok(self.0.clone())
    }
}

/// A CPU evidence source with a GPU evidence source beside it: certificates carry both.
pub struct WithGpu {
    /// The CPU evidence.
    pub cpu: Arc<dyn EvidenceSource>,
    /// The GPU evidence.
    pub gpu: Arc<dyn GpuEvidenceSource>,
}

impl EvidenceSource for WithGpu {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, CertError> {
        self.cpu.evidence(report_data)
    }
    fn is_unattested(&self) -> bool {
        self.cpu.is_unattested()
    }
    fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<Option<GpuEvidenceBytes>, CertError> {
        self.gpu.gpu_evidence(nonce).map(Some)
    }
}

/// Produces evidence binding a 64-byte report data, already wrapped in the envelope.
pub trait EvidenceSource: Send + Sync {
    /// Evidence whose report data is `report_data`, in its envelope.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, CertError>;
    /// Whether this source produces no evidence at all ([`Unattested`]).
    fn is_unattested(&self) -> bool {
        false
    }
    /// GPU evidence for `nonce` ([`gpu_nonce_for_public_key`] of the certificate's key), to
    /// carry in extension [`OID_GPU`]; `None` (the default): no GPU evidence.
    fn gpu_evidence(&self, _nonce: &[u8; 32]) -> Result<Option<GpuEvidenceBytes>, CertError> {
        Ok(None)
    }
}

/// No evidence: certificates from [`Identity::generate`] with this source carry no
/// evidence extension. Only verifiers with `allow_unattested` accept them (a proxy's
/// clients); every other peer refuses them with "missing evidence".
#[derive(Debug, Clone, Copy)]
pub struct Unattested;

impl EvidenceSource for Unattested {
    fn evidence(&self, _report_data: &[u8; 64]) -> Result<Vec<u8>, CertError> {
        Ok(Vec::new())
    }
    fn is_unattested(&self) -> bool {
        true
    }
}

/// Simulated evidence (test networks only).
#[derive(Debug)]
pub struct SimSource(pub SimKey);

impl EvidenceSource for SimSource {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, CertError> {
        Ok(EvidenceEnvelope::Sim(&self.0.evidence(report_data)).encode())
    }
}

/// COCOON's test-mode TDX evidence (`fake_tdx`): the report data itself, as COCOON's
/// `gen-cert --tdx fake_tdx` and its runners in fake mode write it (test networks only).
#[derive(Debug, Clone, Copy)]
pub struct FakeTdxSource;

impl EvidenceSource for FakeTdxSource {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, CertError> {
        Ok(EvidenceEnvelope::FakeTdx(report_data).encode())
    }
}

/// Raw bytes used as the evidence extension whatever the report data (tests, and
/// replaying a pre-generated quote).
#[derive(Debug, Clone)]
pub struct FixedSource(pub Vec<u8>);

impl EvidenceSource for FixedSource {
    fn evidence(&self, _report_data: &[u8; 64]) -> Result<Vec<u8>, CertError> {
        Ok(self.0.clone())
    }
}

/// TDX quotes from Linux configfs-tsm (`/sys/kernel/config/tsm/report`). The quote is
/// stored raw.
pub struct TsmTdxSource<F: TsmFs>(pub Tsm<F>);

impl TsmTdxSource<cocoon_attest::tsm::StdFs> {
    /// The default configfs-tsm root with the `tdx_guest` provider.
    pub fn system() -> Self {
        TsmTdxSource(Tsm::new(TsmProvider::TdxGuest))
    }
}

impl<F: TsmFs> EvidenceSource for TsmTdxSource<F> {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, CertError> {
        let r = self
            .0
            .get_report(report_data)
            .map_err(|e| CertError::Source(e.to_string()))?;
        Ok(EvidenceEnvelope::Tdx(&r.outblob).encode())
    }
}

/// SEV-SNP reports from Linux configfs-tsm (provider `sev_guest`). The `auxblob` is the
/// host's certificate table: the VCEK is required; the ASK/ARK come from the table when
/// present, else from the AMD chain built into `sev` that signs the VCEK. Stored in the
/// SEV envelope (report, VCEK DER, ASK+ARK PEM).
pub struct TsmSevSource<F: TsmFs>(pub Tsm<F>);

impl TsmSevSource<cocoon_attest::tsm::StdFs> {
    /// The default configfs-tsm root with the `sev_guest` provider.
    pub fn system() -> Self {
        TsmSevSource(Tsm::new(TsmProvider::SevGuest))
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

impl<F: TsmFs> EvidenceSource for TsmSevSource<F> {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, CertError> {
        let r = self
            .0
            .get_report(report_data)
            .map_err(|e| CertError::Source(e.to_string()))?;
        let aux = r.auxblob.ok_or_else(|| {
            CertError::Source(
                "configfs-tsm returned no auxblob: the host provides no SEV-SNP certificate \
                 table (VCEK)"
                    .into(),
            )
        })?;
        let table = sev::parse_cert_table(&aux).map_err(|e| CertError::Source(e.to_string()))?;
        let vcek = match (table.vcek, table.vlek) {
            (Some(v), _) => v,
            (None, Some(_)) => {
                return Err(CertError::Source(
                    "the SEV-SNP certificate table holds a VLEK, not a VCEK (VLEK-signed \
                     reports are not supported)"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(CertError::Source(
                    "the SEV-SNP certificate table holds no VCEK".into(),
                ));
            }
        };
        let chain = match (table.ask, table.ark) {
            (Some(ask), Some(ark)) => {
                (pem_block("CERTIFICATE", &ask) + &pem_block("CERTIFICATE", &ark)).into_bytes()
            }
            _ => sev::builtin_chain_for(&vcek).ok_or_else(|| {
                CertError::Source(
                    "the SEV-SNP certificate table has no ASK/ARK and no built-in AMD chain \
                     signs its VCEK"
                        .into(),
                )
            })?,
        };
        Ok(EvidenceEnvelope::SevSnp {
            report: &r.outblob,
            vcek_der: &vcek,
            chain_pem: &chain,
        }
        .encode())
    }
}

/// Extra knobs for tests: each one produces a certificate our verifier must reject.
#[derive(Debug, Clone, Default)]
pub struct CertOptions {
    /// Omit the evidence extension.
    pub omit_evidence: bool,
    /// Put these bytes as claims instead of the certificate key.
    pub claims_override: Option<Vec<u8>>,
    /// Add an extra extension `(oid, critical, content)`.
    pub extra_extension: Option<(Vec<u64>, bool, Vec<u8>)>,
    /// Skip the evidence-size check (to test the verifier's and rustls' limits).
    pub allow_oversized_evidence: bool,
    /// Validity in seconds (default [`CERT_VALIDITY_SECS`]).
    pub validity_secs: Option<u64>,
}

/// A certificate with its private key.
#[derive(Clone)]
pub struct Identity {
    cert_der: CertificateDer<'static>,
    key_pkcs8: Arc<Vec<u8>>,
    public_key: [u8; 32],
    not_before: u64,
    not_after: u64,
    /// The evidence extension's content (the envelope).
    evidence: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &hex::encode(self.public_key))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("cert_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generate a certificate valid for `[now, now + 86400]`.
    pub fn generate(source: &dyn EvidenceSource, now: u64) -> Result<Self, CertError> {
        Self::generate_with(source, now, &CertOptions::default())
    }

    /// [`Self::generate`] with test options.
    pub fn generate_with(
        source: &dyn EvidenceSource,
        now: u64,
        opts: &CertOptions,
    ) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut public_key = [0u8; 32];
        let raw = key.public_key_raw();
        if raw.len() != 32 {
            return Err(CertError::Source("Ed25519 key is not 32 bytes".into()));
        }
        public_key.copy_from_slice(raw);
        let report_data = report_data_for_public_key(&public_key);
        let evidence = source.evidence(&report_data)?;
        if evidence.len() > MAX_EVIDENCE_LEN && !opts.allow_oversized_evidence {
            return Err(CertError::EvidenceTooLarge {
                len: evidence.len(),
            });
        }
        let gpu = source
            .gpu_evidence(&gpu_nonce_for_public_key(&public_key))?
            .map(|g| {
                GpuClaim {
                    report: &g.report,
                    cert_chain_pem: &g.cert_chain_pem,
                }
                .encode()
            });
        if let Some(g) = &gpu
            && g.len() > MAX_GPU_EVIDENCE_LEN
        {
            return Err(CertError::GpuEvidenceTooLarge { len: g.len() });
        }

        let validity = opts.validity_secs.unwrap_or(CERT_VALIDITY_SECS);
        let not_after = now.checked_add(validity).ok_or(CertError::BadTime(now))?;
        let to_time = |t: u64| {
            i64::try_from(t)
                .ok()
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                .ok_or(CertError::BadTime(t))
        };

        let mut params = CertificateParams::default();
        params.not_before = to_time(now)?;
        params.not_after = to_time(not_after)?;
        let mut serial: [u8; 16] = rand::random();
        serial[0] = (serial[0] & 0x7f) | 0x01; // positive, 16 significant bytes
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "AE");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Cocoon");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if !opts.omit_evidence && !source.is_unattested() {
            let mut ext = CustomExtension::from_oid_content(OID_EVIDENCE, evidence.clone());
            ext.set_criticality(true);
            params.custom_extensions.push(ext);
        }
        let claims = opts
            .claims_override
            .clone()
            .unwrap_or_else(|| public_key.to_vec());
        let mut ext = CustomExtension::from_oid_content(OID_CLAIMS, claims);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
        if let Some(gpu) = gpu {
            let mut ext = CustomExtension::from_oid_content(OID_GPU, gpu);
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
        }
        if let Some((oid, critical, content)) = &opts.extra_extension {
            let mut ext = CustomExtension::from_oid_content(oid, content.clone());
            ext.set_criticality(*critical);
            params.custom_extensions.push(ext);
        }

        let cert = params.self_signed(&key)?;
        Ok(Identity {
            cert_der: cert.der().clone(),
            key_pkcs8: Arc::new(key.serialize_der()),
            public_key,
            not_before: now,
            not_after,
            evidence: Arc::new(evidence),
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }
    /// The raw Ed25519 public key (= the claims).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }
    /// The evidence envelope carried in the certificate (see [`EvidenceEnvelope::decode`]).
    pub fn evidence(&self) -> &[u8] {
        &self.evidence
    }

    /// Start of validity, Unix seconds.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }
    /// End of validity, Unix seconds.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
    /// PKCS#8 private key (sensitive).
    pub fn key_pkcs8(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// The rustls form, with `chain` (normally empty) appended after our certificate.
    /// Built with [`CertifiedKey::new`], not `with_single_cert`, which rejects our
    /// critical extensions.
    pub fn certified_key_with_chain(
        &self,
        chain: &[CertificateDer<'static>],
    ) -> Result<Arc<CertifiedKey>, CertError> {
        let provider = rustls::crypto::ring::default_provider();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                self.key_pkcs8.to_vec(),
            )))?;
        let mut certs = vec![self.cert_der.clone()];
        certs.extend_from_slice(chain);
        Ok(Arc::new(CertifiedKey::new(certs, key)))
    }

    /// The rustls form of this identity.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertError> {
        self.certified_key_with_chain(&[])
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn envelope_roundtrip_and_bounds() {
        let sev = EvidenceEnvelope::SevSnp {
            report: b"r",
            vcek_der: b"vv",
            chain_pem: b"",
        };
        let enc = sev.encode();
        assert_eq!(EvidenceEnvelope::decode(&enc), Ok(sev));
        for cut in 0..enc.len() {
            let _ = EvidenceEnvelope::decode(&enc[..cut]);
        }
        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(EvidenceEnvelope::decode(&trailing).is_err());
        let mut huge = SEV_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(EvidenceEnvelope::decode(&huge).is_err());
        assert_eq!(
            EvidenceEnvelope::decode(b"CCN-SIM1ab"),
            Ok(EvidenceEnvelope::Sim(b"ab"))
        );
        assert!(EvidenceEnvelope::decode(b"CCN-XXXX").is_err());
        assert!(EvidenceEnvelope::decode(b"").is_err());
        assert_eq!(
            EvidenceEnvelope::decode(&[4, 0, 2, 0]),
            Ok(EvidenceEnvelope::Tdx(&[4, 0, 2, 0]))
        );
        assert!(EvidenceEnvelope::decode(&vec![1u8; MAX_EVIDENCE_LEN + 1]).is_err());
    }

    #[test]
    fn gpu_claim_roundtrip_bounds_and_tamper() {
        let claim = GpuClaim {
            report: b"report",
            cert_chain_pem: b"-----BEGIN CERTIFICATE-----",
        };
        let enc = claim.encode();
        assert_eq!(&enc[..8], GPU_MAGIC);
        assert_eq!(GpuClaim::decode(&enc), Ok(claim));
        for cut in 0..enc.len() {
            assert!(GpuClaim::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(GpuClaim::decode(&trailing).is_err());
        // A length pointing past the end.
        let mut long = enc.clone();
        long[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(GpuClaim::decode(&long).is_err());
        let mut magic = enc.clone();
        magic[4] = b'X';
        assert!(GpuClaim::decode(&magic).is_err());
        // Every single-byte change of the framing changes the decoded parts or fails.
        for i in 0..enc.len() {
            let mut t = enc.clone();
            t[i] ^= 0x01;
            assert_ne!(GpuClaim::decode(&t), Ok(claim), "byte {i}");
        }
        let big = vec![0u8; MAX_GPU_EVIDENCE_LEN];
        let over = GpuClaim {
            report: &big,
            cert_chain_pem: b"",
        }
        .encode();
        assert!(GpuClaim::decode(&over).unwrap_err().contains("limit"));
        let sim = SimSource(SimKey::generate().unwrap());
        let too_big = WithGpu {
            cpu: Arc::new(sim),
            gpu: Arc::new(RecordedGpuSource(GpuEvidenceBytes {
                report: big,
                cert_chain_pem: Vec::new(),
            })),
        };
        assert!(matches!(
            Identity::generate(&too_big, 1_772_707_833),
            Err(CertError::GpuEvidenceTooLarge { .. })
        ));
    }

    /// Records the nonce it is asked for.
    struct NonceEcho;

    impl GpuEvidenceSource for NonceEcho {
        fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<GpuEvidenceBytes, CertError> {
            Ok(GpuEvidenceBytes {
                report: nonce.to_vec(),
                cert_chain_pem: b"chain".to_vec(),
            })
        }
    }

    #[test]
    fn gpu_extension_is_non_critical_and_bound_to_the_key() {
        let source = WithGpu {
            cpu: Arc::new(SimSource(SimKey::generate().unwrap())),
            gpu: Arc::new(NonceEcho),
        };
        let id = Identity::generate(&source, 1_772_707_833).unwrap();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(id.cert_der()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == OID_GPU_STR)
            .unwrap();
        assert!(!ext.critical);
        let claim = GpuClaim::decode(ext.value).unwrap();
        assert_eq!(claim.report, gpu_nonce_for_public_key(id.public_key()));
        assert_eq!(claim.cert_chain_pem, b"chain");
        // Without a GPU source there is no such extension.
        let plain = Identity::generate(&SimSource(SimKey::generate().unwrap()), 1).unwrap();
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(plain.cert_der()).unwrap();
        assert!(
            cert.extensions()
                .iter()
                .all(|e| e.oid.to_id_string() != OID_GPU_STR)
        );
    }

    #[test]
    fn certificate_has_cocoon_layout() {
        let sim = SimKey::generate().unwrap();
        let now = 1_772_707_833;
        let id = Identity::generate(&SimSource(sim), now).unwrap();
        let (rest, cert) =
            x509_parser::certificate::X509Certificate::from_der(id.cert_der()).unwrap();
        assert!(rest.is_empty());
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
        assert_eq!(cert.raw_serial().len(), 16);
        assert_eq!(cert.validity().not_before.timestamp(), now as i64);
        assert_eq!(cert.validity().not_after.timestamp(), (now + 86_400) as i64);
        assert_eq!(cert.subject(), cert.issuer());
        let mut seen = Vec::new();
        for ext in cert.extensions() {
            let oid = ext.oid.to_id_string();
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(ext.critical && !bc.ca);
                    seen.push("bc");
                }
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ext.critical && ku.digital_signature());
                    seen.push("ku");
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    assert!(eku.server_auth && eku.client_auth);
                    seen.push("eku");
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    let names: Vec<String> = san
                        .general_names
                        .iter()
                        .map(|g| match g {
                            GeneralName::DNSName(d) => d.to_string(),
                            GeneralName::IPAddress(ip) => format!("{ip:?}"),
                            other => format!("{other:?}"),
                        })
                        .collect();
                    assert_eq!(names.len(), 3, "{names:?}");
                    assert_eq!(names[0], "localhost");
                    seen.push("san");
                }
                _ if oid == OID_EVIDENCE_STR => {
                    assert!(ext.critical);
                    assert!(ext.value.starts_with(SIM_MAGIC));
                    seen.push("evidence");
                }
                _ if oid == OID_CLAIMS_STR => {
                    assert!(ext.critical);
                    assert_eq!(ext.value, id.public_key());
                    seen.push("claims");
                }
                _ => {}
            }
        }
        seen.sort();
        assert_eq!(seen, ["bc", "claims", "eku", "evidence", "ku", "san"]);
    }

    /// configfs-tsm stand-in: the "quote" is `4, 0` (a v4 header start) ‖ inblob.
    #[derive(Default)]
    struct FakeTsm {
        inblob: std::sync::Mutex<Vec<u8>>,
        generation: std::sync::atomic::AtomicU64,
    }

    impl TsmFs for FakeTsm {
        fn create_dir(&self, _: &std::path::Path) -> std::io::Result<()> {
            Ok(())
        }
        fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
            let g = self.generation.load(std::sync::atomic::Ordering::SeqCst);
            Ok(match path.file_name().and_then(|n| n.to_str()) {
                Some("provider") => b"tdx_guest\n".to_vec(),
                Some("generation") => format!("{g}\n").into_bytes(),
                Some("outblob") => [&[4u8, 0][..], &self.inblob.lock().unwrap()].concat(),
                _ => return Err(std::io::ErrorKind::NotFound.into()),
            })
        }
        fn write(&self, _: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
            *self.inblob.lock().unwrap() = data.to_vec();
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn remove_dir(&self, _: &std::path::Path) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tsm_source_stores_the_raw_quote() {
        let src = TsmTdxSource(Tsm::with_fs(
            "/nonexistent",
            TsmProvider::TdxGuest,
            FakeTsm::default(),
        ));
        let id = Identity::generate(&src, 1_772_707_833).unwrap();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(id.cert_der()).unwrap();
        let ev = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == OID_EVIDENCE_STR)
            .unwrap()
            .value;
        let rd = report_data_for_public_key(id.public_key());
        assert_eq!(EvidenceEnvelope::decode(ev), Ok(EvidenceEnvelope::Tdx(ev)));
        assert_eq!(&ev[2..], &rd[..]);
    }
}
