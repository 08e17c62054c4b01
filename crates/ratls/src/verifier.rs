//! The RA-TLS certificate verifier: one type implementing both rustls'
//! [`ServerCertVerifier`] and [`ClientCertVerifier`].
//!
//! Checks, in order: no intermediates; size limits; X.509 parse with no trailing bytes;
//! validity at the injected clock's `now` (a start of validity up to [`NOT_BEFORE_SKEW_SECS`]
//! ahead of it is allowed: the issuer's clock may run ahead of ours); Ed25519 key and signature algorithm; valid
//! self-signature; not a CA; every critical extension known, the two RA-TLS extensions
//! present exactly once; claims == certificate key; then
//! [`Policy::evaluate_bound`] on the evidence. Successful verdicts are cached by
//! SHA-256(public key ‖ evidence) until `min(now + cache TTL, VerifiedPeer::valid_until)`.
//! While that cache is on, what the structural checks found in a certificate that passed
//! them (its key, validity and where its extensions lie) is kept too, by SHA-256 of the
//! exact DER bytes: the same certificate seen again (a receipt's signer, checked for every
//! answer) is not parsed and its self-signature not verified again; only its validity is
//! judged anew at `now`, and the attestation and GPU checks run as for a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How far a peer certificate's start of validity may be ahead of our clock. A peer issues
/// its certificate with its own clock's `now` as the start; without this allowance a peer
/// whose clock is ahead of ours by any amount — a fraction of a second across a second
/// boundary is enough — is refused until our clock passes that moment (the fault lab: a
/// worker, a client 300 s ahead or a proxy 300 s behind had its handshakes refused;
/// docs/reliability.md).
/// The end of validity is judged without allowance.
pub const NOT_BEFORE_SKEW_SECS: u64 = 60;

use cocoon_attest::VerificationCache;
use cocoon_attest::{AttestError, Evidence, Fault, Policy, VerifiedPeer};
use ring::signature::{ED25519, UnparsedPublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use cocoon_attest::gpu::{GpuAttestation, GpuError, GpuEvidence, GpuPolicy};

use crate::cert::{
    EvidenceEnvelope, GpuClaim, MAX_EVIDENCE_LEN, OID_CLAIMS_STR, OID_EVIDENCE_STR, OID_GPU_STR,
    gpu_nonce_for_public_key,
};

/// Largest certificate accepted (rustls' handshake message cap).
pub const MAX_CERT_LEN: usize = 64 * 1024;
/// Ed25519 (RFC 8410).
const OID_ED25519: &str = "1.3.101.112";
/// Standard extensions we understand and accept as critical.
const KNOWN_CRITICAL: &[&str] = &[
    "2.5.29.15", // keyUsage
    "2.5.29.17", // subjectAltName
    "2.5.29.19", // basicConstraints
    "2.5.29.37", // extKeyUsage
    OID_EVIDENCE_STR,
    OID_CLAIMS_STR,
];

/// Seconds since the Unix epoch; injectable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// A clock stuck at `t`.
pub fn fixed_clock(t: u64) -> Clock {
    Arc::new(move || t)
}

/// Why a peer certificate was rejected. Reaches rustls as
/// `Error::InvalidCertificate(CertificateError::Other(..))`; see [`VerifyError::find`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A certificate chain instead of a single self-signed certificate.
    #[error("certificate chains are not accepted ({intermediates} intermediates)")]
    ChainNotAllowed {
        /// How many intermediates were sent.
        intermediates: usize,
    },
    /// A certificate above the size limit.
    #[error("certificate is {len} bytes, limit {MAX_CERT_LEN}")]
    CertTooLarge {
        /// Its length.
        len: usize,
    },
    /// A certificate that does not parse.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// A certificate past its validity.
    #[error("certificate expired: not after {not_after}, now {now}")]
    Expired {
        /// End of validity, Unix seconds.
        not_after: i64,
        /// The verification time, Unix seconds.
        now: u64,
    },
    /// A certificate whose validity has not started.
    #[error("certificate not yet valid: not before {not_before}, now {now}")]
    NotYetValid {
        /// Start of validity, Unix seconds.
        not_before: i64,
        /// The verification time, Unix seconds.
        now: u64,
    },
    /// A key or signature that is not Ed25519.
    #[error("certificate key or signature is not Ed25519")]
    NotEd25519,
    /// A self-signature that does not verify.
    #[error("certificate self-signature is invalid")]
    BadSelfSignature,
    /// A CA certificate.
    #[error("CA certificates are not accepted")]
    IsCa,
    /// A critical extension this verifier does not know.
    #[error("unknown critical extension {0}")]
    UnknownCriticalExtension(String),
    /// An extension present twice.
    #[error("extension {0} appears more than once")]
    DuplicateExtension(String),
    /// No evidence extension.
    #[error("missing evidence extension {OID_EVIDENCE_STR}")]
    MissingEvidence,
    /// No claims extension.
    #[error("missing claims extension {OID_CLAIMS_STR}")]
    MissingClaims,
    /// Evidence above the size limit.
    #[error("evidence is {len} bytes, limit {MAX_EVIDENCE_LEN}")]
    EvidenceTooLarge {
        /// Its length.
        len: usize,
    },
    /// An evidence envelope that does not decode.
    #[error("malformed evidence envelope: {0}")]
    Envelope(String),
    /// Claims that are not the certificate's key.
    #[error("claims are not the certificate's public key")]
    ClaimsKeyMismatch,
    /// The attestation policy refused the evidence.
    #[error("attestation rejected: {0}")]
    Attest(#[from] AttestError),
    /// GPU evidence is required and the certificate carries none.
    #[error("missing GPU evidence extension {OID_GPU_STR} (GPU confidential computing required)")]
    MissingGpuEvidence,
    /// The GPU evidence extension does not decode.
    #[error("malformed GPU evidence: {0}")]
    GpuEnvelope(String),
    /// The GPU evidence does not verify.
    #[error("GPU evidence rejected: {0}")]
    Gpu(#[from] GpuError),
    /// The GPU evidence verifies but the GPU requirement does not allow it (project, driver
    /// or VBIOS version).
    #[error("GPU not allowed: {0}")]
    GpuNotAllowed(String),
}

impl VerifyError {
    /// Find a `VerifyError` inside a rustls error (or an I/O error wrapping one).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a VerifyError> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(v) = e.downcast_ref::<VerifyError>() {
                return Some(v);
            }
            if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) =
                e.downcast_ref::<rustls::Error>()
            {
                return o.0.downcast_ref::<VerifyError>();
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(inner) = io.get_ref() {
                    cur = Some(inner);
                    continue;
                }
                return None;
            }
            cur = e.source();
        }
        None
    }
}

impl VerifyError {
    /// Whose fault the refusal is: everything about the certificate is the peer's; an
    /// attestation refusal is as [`AttestError::fault`] says.
    pub fn fault(&self) -> Fault {
        match self {
            VerifyError::Attest(e) => e.fault(),
            VerifyError::Gpu(e) => e.fault(),
            VerifyError::ChainNotAllowed { .. }
            | VerifyError::CertTooLarge { .. }
            | VerifyError::Parse(_)
            | VerifyError::Expired { .. }
            | VerifyError::NotYetValid { .. }
            | VerifyError::NotEd25519
            | VerifyError::BadSelfSignature
            | VerifyError::IsCa
            | VerifyError::UnknownCriticalExtension(_)
            | VerifyError::DuplicateExtension(_)
            | VerifyError::MissingEvidence
            | VerifyError::MissingClaims
            | VerifyError::EvidenceTooLarge { .. }
            | VerifyError::Envelope(_)
            | VerifyError::ClaimsKeyMismatch
            | VerifyError::MissingGpuEvidence
            | VerifyError::GpuEnvelope(_)
            | VerifyError::GpuNotAllowed(_) => Fault::Peer,
        }
    }
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

pub use cocoon_attest::{CollateralSource, NoCollateral};

/// What a verifier requires of a peer's GPU evidence (extension [`OID_GPU_STR`]).
#[derive(Debug, Clone, Default)]
pub struct GpuRequirement {
    /// Refuse peers without valid GPU evidence. When off, GPU evidence that is present is
    /// still verified and recorded in [`VerifiedPeer::gpu`] when valid (and ignored when
    /// not).
    pub required: bool,
    /// The driver and VBIOS reference manifests (RIM files) to compare measurements with.
    pub rims: Vec<Vec<u8>>,
    /// The device root, revoked serials and whether RIM versions must be the report's.
    pub policy: GpuPolicy,
    /// Allowed GPUs: each entry is a project (`1010`) or a project and SKU (`1010-0200`),
    /// as in the report's opaque data. Empty: any.
    pub allowed_projects: Vec<String>,
    /// Lowest driver version accepted (dotted decimal, `550.90.07`).
    pub min_driver_version: Option<String>,
    /// Lowest VBIOS version accepted (dotted hex pairs, `96.00.9f.00.01`).
    pub min_vbios_version: Option<String>,
    /// Accept a report whose nonce is not bound to the certificate's key (recorded
    /// evidence; the verdict says `nonce_bound: false`). Test networks only: the roles
    /// refuse the setting elsewhere.
    pub allow_unbound_nonce: bool,
    /// A directory of revocation lists for NVIDIA's GPU certificates (DER or PEM, kept
    /// current by the operator or a job; read at each check, never fetched here): see
    /// [`cocoon_attest::gpu::chain::check_crls`]. `None`: no revocation data.
    pub crl_dir: Option<std::path::PathBuf>,
}

/// The revocation lists in `dir` (at most [`cocoon_attest::gpu::chain::MAX_CRLS`] files,
/// each at most `MAX_CRL_LEN` bytes; names starting with `.` skipped), in name order.
fn read_crls(dir: &std::path::Path) -> Result<Vec<Vec<u8>>, VerifyError> {
    use cocoon_attest::gpu::chain::{MAX_CRL_LEN, MAX_CRLS};
    let local = |e: String| {
        VerifyError::Attest(AttestError::MissingCollateral {
            what: format!("GPU revocation lists in {}: {e}", dir.display()),
        })
    };
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| local(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    names.sort();
    if names.len() > MAX_CRLS {
        return Err(local(format!("more than {MAX_CRLS} files")));
    }
    names
        .iter()
        .map(|p| {
            let len = std::fs::metadata(p)
                .map_err(|e| local(e.to_string()))?
                .len();
            if len > MAX_CRL_LEN as u64 {
                return Err(local(format!(
                    "{} is over {MAX_CRL_LEN} bytes",
                    p.display()
                )));
            }
            std::fs::read(p).map_err(|e| local(format!("{}: {e}", p.display())))
        })
        .collect()
}

impl GpuRequirement {
    /// Verifies `claim` (the extension's bytes) for a certificate with `public_key` at
    /// `now`.
    pub fn check(
        &self,
        claim: &[u8],
        public_key: &[u8; 32],
        now: u64,
    ) -> Result<GpuAttestation, VerifyError> {
        let claim = GpuClaim::decode(claim).map_err(VerifyError::GpuEnvelope)?;
        let rims: Vec<&[u8]> = self.rims.iter().map(Vec::as_slice).collect();
        let evidence = GpuEvidence {
            report: claim.report,
            cert_chain_pem: claim.cert_chain_pem,
            rims: &rims,
        };
        let bound = gpu_nonce_for_public_key(public_key);
        let with_crls;
        let policy = match &self.crl_dir {
            Some(dir) => {
                let mut p = self.policy.clone();
                p.crls.extend(read_crls(dir)?);
                with_crls = p;
                &with_crls
            }
            None => &self.policy,
        };
        let (verdict, nonce_bound) =
            match cocoon_attest::gpu::verify(&evidence, &bound, policy, now) {
                Ok(v) => (v, true),
                Err(GpuError::NonceMismatch) if self.allow_unbound_nonce => {
                    let own = cocoon_attest::gpu::report::parse(claim.report)
                        .map_err(GpuError::from)?
                        .request_nonce;
                    (
                        cocoon_attest::gpu::verify(&evidence, &own, policy, now)?,
                        false,
                    )
                }
                Err(e) => return Err(e.into()),
            };
        if !self.allowed_projects.is_empty() {
            let project = verdict.project.clone().unwrap_or_default();
            let with_sku = format!(
                "{project}-{}",
                verdict.project_sku.clone().unwrap_or_default()
            );
            if !self
                .allowed_projects
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&project) || a.eq_ignore_ascii_case(&with_sku))
            {
                return Err(VerifyError::GpuNotAllowed(format!(
                    "project {with_sku} is not among the allowed {:?}",
                    self.allowed_projects
                )));
            }
        }
        for (what, min, have, radix) in [
            (
                "driver",
                &self.min_driver_version,
                &verdict.driver_version,
                10,
            ),
            ("VBIOS", &self.min_vbios_version, &verdict.vbios_version, 16),
        ] {
            if let Some(min) = min
                && !version_at_least(have, min, radix)
            {
                return Err(VerifyError::GpuNotAllowed(format!(
                    "{what} version {have:?} is below the minimum {min:?}"
                )));
            }
        }
        Ok(GpuAttestation {
            verdict,
            nonce_bound,
        })
    }
}

/// Whether dotted version `have` is at least `min`, each part a number in `radix` (missing
/// parts count as 0). A part that does not parse in `have` fails the comparison.
pub fn version_at_least(have: &str, min: &str, radix: u32) -> bool {
    let parse = |v: &str| -> Option<Vec<u64>> {
        v.trim()
            .split('.')
            .map(|p| u64::from_str_radix(p, radix).ok())
            .collect()
    };
    let (Some(mut have), Some(mut min)) = (parse(have), parse(min)) else {
        return false;
    };
    let len = have.len().max(min.len());
    have.resize(len, 0);
    min.resize(len, 0);
    have >= min
}

/// Verifier settings.
#[derive(Clone)]
pub struct VerifierConfig {
    /// What evidence is accepted.
    pub policy: Policy,
    /// Where TDX collateral comes from.
    pub collateral: Arc<dyn CollateralSource>,
    /// The time verification runs at.
    pub clock: Clock,
    /// Verdict cache TTL in seconds (0 disables the cache).
    pub cache_ttl_secs: u64,
    /// Most cached verdicts.
    pub cache_capacity: usize,
    /// Accept certificates without evidence as [`VerifiedPeer::unattested`] (a proxy's
    /// clients: their trust rests on their payment channel, not on their machine). A
    /// certificate that does carry evidence is still verified against the policy.
    pub allow_unattested: bool,
    /// What is required of GPU evidence; `None`: the GPU extension is ignored.
    pub gpu: Option<Arc<GpuRequirement>>,
}

impl VerifierConfig {
    /// System clock, no TDX collateral, 1 h cache of at most 10 000 verdicts.
    pub fn new(policy: Policy) -> Self {
        VerifierConfig {
            policy,
            collateral: Arc::new(NoCollateral),
            clock: system_clock(),
            cache_ttl_secs: 3600,
            cache_capacity: 10_000,
            allow_unattested: false,
            gpu: None,
        }
    }
}

/// Longest session lifetime [`verdict_remaining`] gives, whatever the policy says (about ten
/// years: a deadline this far is never reached, and adding it to a monotonic clock cannot
/// overflow).
pub const MAX_SESSION_LIFETIME_SECS: u64 = 10 * 366 * 86_400;

/// How long a session admitted under a verdict valid until `valid_until` (Unix seconds) may
/// still run at `now`: until the verdict expires, and never longer than `max_validity_secs`
/// from now. The cap matters for unattested peers, whose `valid_until` is their own
/// certificate's `notAfter` (they choose it); attested verdicts are already capped by the
/// policy when they are made. Zero once the verdict has expired (a verdict holds while
/// `now < valid_until`, as in the verdict cache).
pub fn verdict_remaining(
    valid_until: u64,
    now: u64,
    max_validity_secs: u64,
) -> std::time::Duration {
    let secs = valid_until
        .saturating_sub(now)
        .min(max_validity_secs)
        .min(MAX_SESSION_LIFETIME_SECS);
    std::time::Duration::from_secs(secs)
}

/// The RA-TLS verifier (see the module docs).
pub struct RatlsVerifier {
    cfg: VerifierConfig,
    algs: WebPkiSupportedAlgorithms,
    /// Verdicts by (public key, evidence); `None` when caching is off.
    cache: Option<VerificationCache>,
    invocations: AtomicU64,
    attest_runs: AtomicU64,
    /// Successful GPU verdicts by SHA-256(public key ‖ GPU claim), with the time they were
    /// reached: the handshake's check and the `VerifiedPeer` built after it run the GPU
    /// verification once (16 ECDSA P-384 checks), as the verdict cache does for the CPU's.
    gpu_verdicts: std::sync::Mutex<std::collections::HashMap<[u8; 32], (GpuAttestation, u64)>>,
    gpu_runs: AtomicU64,
    /// What the structural checks found in certificates that passed them, by SHA-256 of
    /// the exact DER bytes (kept while the verdict cache is on, at most `cache_capacity`).
    structures: std::sync::Mutex<std::collections::HashMap<[u8; 32], Structure>>,
    structure_runs: AtomicU64,
}

impl std::fmt::Debug for RatlsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RatlsVerifier")
            .field("policy", &self.cfg.policy)
            .field("invocations", &self.invocations())
            .finish_non_exhaustive()
    }
}

impl RatlsVerifier {
    /// A verifier for `cfg` (with a verdict cache unless disabled).
    pub fn new(cfg: VerifierConfig) -> Arc<Self> {
        let cache = (cfg.cache_ttl_secs > 0 && cfg.cache_capacity > 0)
            .then(|| VerificationCache::new(&cfg.policy, cfg.cache_ttl_secs, cfg.cache_capacity));
        Arc::new(RatlsVerifier {
            cfg,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            cache,
            invocations: AtomicU64::new(0),
            attest_runs: AtomicU64::new(0),
            gpu_verdicts: std::sync::Mutex::default(),
            gpu_runs: AtomicU64::new(0),
            structures: std::sync::Mutex::default(),
            structure_runs: AtomicU64::new(0),
        })
    }

    /// Times GPU evidence was actually verified (not taken from the GPU verdict cache).
    pub fn gpu_runs(&self) -> u64 {
        self.gpu_runs.load(Ordering::Relaxed)
    }

    /// `req.check` of `claim`, or its earlier success for the same key and claim within the
    /// cache's lifetime (`cache_ttl_secs`; none when caching is off). Failures are not kept.
    fn check_gpu(
        &self,
        req: &GpuRequirement,
        claim: &[u8],
        public_key: &[u8; 32],
        now: u64,
    ) -> Result<GpuAttestation, VerifyError> {
        use sha2::Digest;
        let ttl = self.cfg.cache_ttl_secs;
        let key: [u8; 32] = sha2::Sha256::new()
            .chain_update(public_key)
            .chain_update(claim)
            .finalize()
            .into();
        let lock = || {
            self.gpu_verdicts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if self.cache.is_some()
            && let Some((gpu, at)) = lock().get(&key)
            && now >= *at
            && now - at < ttl
        {
            return Ok(gpu.clone());
        }
        self.gpu_runs.fetch_add(1, Ordering::Relaxed);
        let gpu = req.check(claim, public_key, now)?;
        if self.cache.is_some() {
            let mut map = lock();
            if map.len() >= self.cfg.cache_capacity {
                map.retain(|_, (_, at)| now >= *at && now - *at < ttl);
                if map.len() >= self.cfg.cache_capacity {
                    map.clear();
                }
            }
            map.insert(key, (gpu.clone(), now));
        }
        Ok(gpu)
    }

    /// Times rustls asked this verifier to check a certificate.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    /// Times a certificate was parsed and its self-signature verified (not found among
    /// the certificates already checked).
    pub fn structure_runs(&self) -> u64 {
        self.structure_runs.load(Ordering::Relaxed)
    }

    /// Times the attestation policy actually ran (cache misses).
    pub fn attestation_runs(&self) -> u64 {
        self.attest_runs.load(Ordering::Relaxed)
    }

    /// The attestation policy.
    pub fn policy(&self) -> &Policy {
        &self.cfg.policy
    }

    /// What is required of GPU evidence, when anything is.
    pub fn gpu_requirement(&self) -> Option<&GpuRequirement> {
        self.cfg.gpu.as_deref()
    }

    /// The verifier's clock (Unix seconds): the time verdicts are judged against.
    pub fn now(&self) -> u64 {
        (self.cfg.clock)()
    }

    /// How long a session admitted under `peer` may still run, judged by this verifier's
    /// clock (see [`verdict_remaining`]).
    pub fn verdict_remaining(&self, peer: &VerifiedPeer) -> std::time::Duration {
        verdict_remaining(
            peer.valid_until(),
            self.now(),
            self.cfg.policy.max_validity_secs,
        )
    }

    /// Full verification of an end-entity certificate at the clock's `now`.
    ///
    /// After a handshake, call this on the peer's certificate to obtain its
    /// [`VerifiedPeer`]: the verdict cache makes it cheap, and no state is shared between
    /// connections.
    pub fn verify_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<VerifiedPeer, VerifyError> {
        if !intermediates.is_empty() {
            return Err(VerifyError::ChainNotAllowed {
                intermediates: intermediates.len(),
            });
        }
        let now = (self.cfg.clock)();
        let checked = self.check_structure(end_entity.as_ref(), now)?;
        match &checked.evidence {
            Some(evidence) => {
                let peer = self.evaluate(evidence, &checked.public_key, now)?;
                let Some(req) = &self.cfg.gpu else {
                    return Ok(peer);
                };
                match (&checked.gpu, req.required) {
                    (None, true) => Err(VerifyError::MissingGpuEvidence),
                    (None, false) => Ok(peer),
                    (Some(claim), required) => {
                        match self.check_gpu(req, claim, &checked.public_key, now) {
                            Ok(gpu) => Ok(peer.with_gpu(gpu)),
                            Err(e) if required => Err(e),
                            Err(_) => Ok(peer),
                        }
                    }
                }
            }
            None if self.cfg.allow_unattested => Ok(VerifiedPeer::unattested(
                checked.public_key,
                u64::try_from(checked.not_after).unwrap_or(0),
            )),
            None => Err(VerifyError::MissingEvidence),
        }
    }

    /// [`check_certificate`], or what it found earlier in the same DER bytes (judging only
    /// the validity again at `now`: nothing else it checks depends on more than the bytes).
    fn check_structure<'a>(&self, der: &'a [u8], now: u64) -> Result<Checked<'a>, VerifyError> {
        if self.cache.is_none() || der.len() > MAX_CERT_LEN {
            self.structure_runs.fetch_add(1, Ordering::Relaxed);
            return check_certificate(der, now);
        }
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(der).into();
        let lock = || {
            self.structures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let found = lock().get(&key).cloned();
        if let Some(s) = found {
            check_validity(s.not_before, s.not_after, now)?;
            return Ok(s.checked(der));
        }
        self.structure_runs.fetch_add(1, Ordering::Relaxed);
        let checked = check_certificate(der, now)?;
        if let Some(s) = Structure::of(der, &checked) {
            let mut map = lock();
            if map.len() >= self.cfg.cache_capacity {
                map.clear();
            }
            map.insert(key, s);
        }
        Ok(checked)
    }

    fn evaluate(
        &self,
        evidence: &[u8],
        public_key: &[u8; 32],
        now: u64,
    ) -> Result<VerifiedPeer, VerifyError> {
        let env = EvidenceEnvelope::decode(evidence).map_err(VerifyError::Envelope)?;
        let run = || {
            self.attest_runs.fetch_add(1, Ordering::Relaxed);
            self.attest(&env, public_key, now)
        };
        let peer = match &self.cache {
            Some(cache) => cache.get_or_verify(&[public_key, evidence], now, run)?,
            None => run()?,
        };
        Ok(peer)
    }

    /// Runs the attestation policy on decoded evidence (no cache).
    fn attest(
        &self,
        env: &EvidenceEnvelope<'_>,
        public_key: &[u8; 32],
        now: u64,
    ) -> Result<VerifiedPeer, AttestError> {
        let policy = &self.cfg.policy;
        match *env {
            EvidenceEnvelope::Tdx(quote) => {
                // Check the backend before loading collateral, so that a TDX quote under
                // a policy without TDX fails with the right error.
                if !policy
                    .allowed_backends
                    .contains(&cocoon_attest::Backend::Tdx)
                {
                    return Err(AttestError::BackendNotAllowed {
                        backend: cocoon_attest::Backend::Tdx,
                    });
                }
                let collateral = self.cfg.collateral.collateral_for(quote, now)?;
                policy.evaluate_bound(
                    &Evidence::Tdx {
                        quote,
                        collateral: &collateral,
                    },
                    public_key,
                    now,
                )
            }
            EvidenceEnvelope::SevSnp {
                report,
                vcek_der,
                chain_pem,
            } => policy.evaluate_bound(
                &Evidence::SevSnp {
                    report,
                    vcek_der,
                    chain_pem,
                },
                public_key,
                now,
            ),
            EvidenceEnvelope::Sim(sim) => {
                policy.evaluate_bound(&Evidence::Sim(sim), public_key, now)
            }
            EvidenceEnvelope::FakeTdx(fake) => {
                policy.evaluate_bound(&Evidence::FakeTdx(fake), public_key, now)
            }
        }
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        let (_, x509) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| to_rustls(VerifyError::Parse(e.to_string())))?;
        let spki = SubjectPublicKeyInfoDer::from(x509.public_key().raw);
        verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algs)
    }
}

/// What [`check_certificate`] extracts.
struct Checked<'a> {
    public_key: [u8; 32],
    /// `None`: the certificate carries no evidence extension.
    evidence: Option<&'a [u8]>,
    /// The GPU evidence extension, when present.
    gpu: Option<&'a [u8]>,
    not_before: i64,
    not_after: i64,
}

/// A [`Checked`] kept for the DER bytes it came from: the extensions as ranges of them.
#[derive(Clone)]
struct Structure {
    public_key: [u8; 32],
    evidence: Option<std::ops::Range<usize>>,
    gpu: Option<std::ops::Range<usize>>,
    not_before: i64,
    not_after: i64,
}

impl Structure {
    /// `checked` as ranges of `der` (`None` if an extension does not lie inside it).
    fn of(der: &[u8], checked: &Checked<'_>) -> Option<Structure> {
        let range = |part: Option<&[u8]>| -> Option<Option<std::ops::Range<usize>>> {
            let Some(part) = part else {
                return Some(None);
            };
            let start = (part.as_ptr() as usize).checked_sub(der.as_ptr() as usize)?;
            let r = start..start.checked_add(part.len())?;
            (der.get(r.clone()) == Some(part)).then_some(Some(r))
        };
        Some(Structure {
            public_key: checked.public_key,
            evidence: range(checked.evidence)?,
            gpu: range(checked.gpu)?,
            not_before: checked.not_before,
            not_after: checked.not_after,
        })
    }

    /// The [`Checked`] of `der` (the bytes this was made from).
    fn checked<'a>(&self, der: &'a [u8]) -> Checked<'a> {
        Checked {
            public_key: self.public_key,
            evidence: self.evidence.clone().and_then(|r| der.get(r)),
            gpu: self.gpu.clone().and_then(|r| der.get(r)),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// A certificate valid from `not_before` to `not_after` (Unix seconds) at `now`, with
/// [`NOT_BEFORE_SKEW_SECS`] allowed at the start.
fn check_validity(not_before: i64, not_after: i64, now: u64) -> Result<(), VerifyError> {
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    if now_i.saturating_add(NOT_BEFORE_SKEW_SECS as i64) < not_before {
        return Err(VerifyError::NotYetValid { not_before, now });
    }
    if now_i > not_after {
        return Err(VerifyError::Expired { not_after, now });
    }
    Ok(())
}

/// Whether the certificate is a SEQUENCE ending with the one DER encoding of an Ed25519
/// signature algorithm and signature (RFC 8410): these bytes lie outside what the signature
/// covers, and the parser accepts variants of them (another tag class, another tag for the
/// OID), so that without this check one certificate would have several encodings.
fn canonical_signature_tail(der: &[u8]) -> bool {
    const TAIL: [u8; 10] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x41, 0x00];
    der.first() == Some(&0x30)
        && der.len() >= TAIL.len() + 64
        && der[der.len() - 64 - TAIL.len()..der.len() - 64] == TAIL
}

/// Structural checks of an RA-TLS certificate (everything but the attestation).
fn check_certificate(der: &[u8], now: u64) -> Result<Checked<'_>, VerifyError> {
    if der.len() > MAX_CERT_LEN {
        return Err(VerifyError::CertTooLarge { len: der.len() });
    }
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(VerifyError::Parse(
            "trailing bytes after certificate".into(),
        ));
    }
    let validity = cert.validity();
    let nb = validity.not_before.timestamp();
    let na = validity.not_after.timestamp();
    check_validity(nb, na, now)?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != OID_ED25519
        || cert.signature_algorithm.algorithm.to_id_string() != OID_ED25519
        || !canonical_signature_tail(der)
    {
        return Err(VerifyError::NotEd25519);
    }
    let key_bytes: &[u8] = &spki.subject_public_key.data;
    let public_key: [u8; 32] = key_bytes.try_into().map_err(|_| VerifyError::NotEd25519)?;
    UnparsedPublicKey::new(&ED25519, &public_key)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| VerifyError::BadSelfSignature)?;
    if cert.is_ca() {
        return Err(VerifyError::IsCa);
    }

    let mut evidence = None;
    let mut claims = None;
    let mut gpu = None;
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if ext.critical && !KNOWN_CRITICAL.contains(&oid.as_str()) {
            return Err(VerifyError::UnknownCriticalExtension(oid));
        }
        let slot = if oid == OID_EVIDENCE_STR {
            &mut evidence
        } else if oid == OID_CLAIMS_STR {
            &mut claims
        } else if oid == OID_GPU_STR {
            &mut gpu
        } else {
            continue;
        };
        if slot.replace(ext.value).is_some() {
            return Err(VerifyError::DuplicateExtension(oid));
        }
    }
    let claims = claims.ok_or(VerifyError::MissingClaims)?;
    if let Some(evidence) = evidence
        && evidence.len() > MAX_EVIDENCE_LEN
    {
        return Err(VerifyError::EvidenceTooLarge {
            len: evidence.len(),
        });
    }
    if claims != public_key {
        return Err(VerifyError::ClaimsKeyMismatch);
    }
    Ok(Checked {
        public_key,
        evidence,
        gpu,
        not_before: nb,
        not_after: na,
    })
}

/// The handshake-signature methods both verifier traits declare alike: TLS 1.2 refused,
/// TLS 1.3 signatures checked against the certificate's raw Ed25519 key.
macro_rules! tls13_ed25519_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("RA-TLS requires TLS 1.3".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.verify_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

impl ServerCertVerifier for RatlsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.verify_cert(end_entity, intermediates)
            .map(|_| ServerCertVerified::assertion())
            .map_err(to_rustls)
    }

    tls13_ed25519_signatures!();
}

impl ClientCertVerifier for RatlsVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.verify_cert(end_entity, intermediates)
            .map(|_| ClientCertVerified::assertion())
            .map_err(to_rustls)
    }

    tls13_ed25519_signatures!();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use cocoon_attest::SimKey;
    use rcgen::{CertificateParams, CustomExtension, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};

    use super::*;
    use crate::cert::{Identity, OID_CLAIMS, OID_EVIDENCE, SimSource};

    const NOW: u64 = 1_772_707_833;

    fn sim_identity() -> Identity {
        Identity::generate(&SimSource(SimKey::generate().unwrap()), NOW - 10).unwrap()
    }

    fn verifier(clock: Clock) -> Arc<RatlsVerifier> {
        let mut cfg = VerifierConfig::new(Policy::sim_test());
        cfg.clock = clock;
        RatlsVerifier::new(cfg)
    }

    fn check(der: &[u8]) -> Result<VerifiedPeer, VerifyError> {
        verifier(fixed_clock(NOW)).verify_cert(&CertificateDer::from(der), &[])
    }

    /// A certificate with both RA-TLS extensions built by hand (to vary key type / CA).
    fn custom(key: &KeyPair, is_ca: IsCa) -> Vec<u8> {
        let mut p = CertificateParams::default();
        p.is_ca = is_ca;
        for (oid, content) in [
            (OID_EVIDENCE, b"CCN-SIM1".to_vec()),
            (OID_CLAIMS, vec![0; 32]),
        ] {
            let mut e = CustomExtension::from_oid_content(oid, content);
            e.set_criticality(true);
            p.custom_extensions.push(e);
        }
        p.self_signed(key).unwrap().der().to_vec()
    }

    #[test]
    fn versions_compare_part_by_part() {
        assert!(version_at_least("550.90.07", "550.90.07", 10));
        assert!(version_at_least("550.90.07", "550.54", 10));
        assert!(version_at_least("550.100", "550.90.07", 10));
        assert!(!version_at_least("550.90.07", "550.100", 10));
        assert!(!version_at_least("545.00", "550", 10));
        assert!(version_at_least("550", "550.0.0", 10));
        assert!(version_at_least("96.00.9f.00.01", "96.00.9F.00.01", 16));
        assert!(version_at_least("96.00.9f.00.01", "96.00.5e.00.01", 16));
        assert!(!version_at_least("96.00.9f.00.01", "96.00.a0", 16));
        assert!(!version_at_least("garbage", "1", 10));
        assert!(!version_at_least("1", "", 10));
    }

    #[test]
    fn good_certificate_verifies() {
        let id = sim_identity();
        let peer = check(id.cert_der()).unwrap();
        assert_eq!(peer.public_key(), Some(id.public_key()));
    }

    #[test]
    fn sessions_last_until_the_verdict_expires_at_most() {
        use std::time::Duration;
        assert_eq!(verdict_remaining(110, 100, 3600), Duration::from_secs(10));
        // Expired, or expiring now: no time left.
        assert_eq!(verdict_remaining(100, 100, 3600), Duration::ZERO);
        assert_eq!(verdict_remaining(90, 100, 3600), Duration::ZERO);
        // A far notAfter (an unattested peer chooses its own) is capped by the policy, and
        // any cap by MAX_SESSION_LIFETIME_SECS.
        assert_eq!(
            verdict_remaining(u64::MAX, 100, 60),
            Duration::from_secs(60)
        );
        assert_eq!(
            verdict_remaining(u64::MAX, 0, u64::MAX),
            Duration::from_secs(MAX_SESSION_LIFETIME_SECS)
        );

        // Through the verifier: a sim verdict holds max_validity_secs on the verifier's clock.
        let mut cfg = VerifierConfig::new(Policy {
            max_validity_secs: 5,
            ..Policy::sim_test()
        });
        cfg.clock = fixed_clock(NOW);
        let v = RatlsVerifier::new(cfg);
        let peer = v
            .verify_cert(
                &CertificateDer::from(sim_identity().cert_der().to_vec()),
                &[],
            )
            .unwrap();
        assert_eq!(peer.valid_until(), NOW + 5);
        assert_eq!(v.now(), NOW);
        assert_eq!(v.verdict_remaining(&peer), Duration::from_secs(5));
        // An unattested peer's certificate says one day; the policy caps the session.
        let unattested = VerifiedPeer::unattested([1; 32], NOW + 86_400);
        assert_eq!(v.verdict_remaining(&unattested), Duration::from_secs(5));
    }

    #[test]
    fn non_ed25519_is_rejected() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            check(&custom(&key, IsCa::ExplicitNoCa)),
            Err(VerifyError::NotEd25519)
        ));
    }

    #[test]
    fn ca_certificate_is_rejected() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = custom(&key, IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
        assert!(matches!(check(&der), Err(VerifyError::IsCa)));
    }

    #[test]
    fn tampered_or_garbage_certificates_are_rejected() {
        let id = sim_identity();
        let mut der = id.cert_der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1; // inside the signature
        assert!(matches!(check(&der), Err(VerifyError::BadSelfSignature)));
        let mut trailing = id.cert_der().to_vec();
        trailing.push(0);
        assert!(matches!(check(&trailing), Err(VerifyError::Parse(_))));
        for len in [0, 1, 10, 100, 400] {
            let cut = &id.cert_der()[..len.min(id.cert_der().len() - 1)];
            assert!(check(cut).is_err());
        }
        assert!(matches!(
            check(&vec![0x30; MAX_CERT_LEN + 1]),
            Err(VerifyError::CertTooLarge { .. })
        ));
    }

    #[test]
    fn verdict_cache_hits_and_expires() {
        let t = Arc::new(AtomicU64::new(NOW));
        let t2 = Arc::clone(&t);
        let mut cfg = VerifierConfig::new(Policy::sim_test());
        cfg.clock = Arc::new(move || t2.load(Ordering::Relaxed));
        cfg.cache_ttl_secs = 100;
        cfg.cache_capacity = 2;
        let v = RatlsVerifier::new(cfg);
        let id = sim_identity();
        v.verify_cert(id.cert_der(), &[]).unwrap();
        v.verify_cert(id.cert_der(), &[]).unwrap();
        assert_eq!(v.attestation_runs(), 1);
        t.store(NOW + 101, Ordering::Relaxed);
        v.verify_cert(id.cert_der(), &[]).unwrap();
        assert_eq!(v.attestation_runs(), 2);
        // Bounded: more certificates than capacity.
        for _ in 0..5 {
            v.verify_cert(sim_identity().cert_der(), &[]).unwrap();
        }
        assert!(v.cache.as_ref().unwrap().len() <= 2);
    }

    /// A certificate seen again is not parsed again, but its validity is judged at each
    /// `now`, its attestation goes through the verdict cache as before, and one changed
    /// byte is another certificate (checked in full, and refused).
    #[test]
    fn structural_checks_are_kept_per_exact_certificate() {
        let t = Arc::new(AtomicU64::new(NOW));
        let t2 = Arc::clone(&t);
        let mut cfg = VerifierConfig::new(Policy::sim_test());
        cfg.clock = Arc::new(move || t2.load(Ordering::Relaxed));
        cfg.cache_ttl_secs = 100;
        let v = RatlsVerifier::new(cfg);
        let id = sim_identity();
        let first = v.verify_cert(id.cert_der(), &[]).unwrap();
        let again = v.verify_cert(id.cert_der(), &[]).unwrap();
        assert_eq!(v.structure_runs(), 1);
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(first.image_hash(), again.image_hash());
        assert_eq!(v.attestation_runs(), 1);
        // Past the verdict cache's TTL the attestation runs again; the structure is kept.
        t.store(NOW + 101, Ordering::Relaxed);
        v.verify_cert(id.cert_der(), &[]).unwrap();
        assert_eq!((v.structure_runs(), v.attestation_runs()), (1, 2));
        // Past the certificate's end: refused as expired, from the kept structure too.
        t.store(id.not_after() + 1, Ordering::Relaxed);
        assert!(matches!(
            v.verify_cert(id.cert_der(), &[]),
            Err(VerifyError::Expired { .. })
        ));
        // Before its start (beyond the allowed skew): not yet valid.
        t.store(NOW - 10 - NOT_BEFORE_SKEW_SECS - 1, Ordering::Relaxed);
        assert!(matches!(
            v.verify_cert(id.cert_der(), &[]),
            Err(VerifyError::NotYetValid { .. })
        ));
        assert_eq!(v.structure_runs(), 1);
        t.store(NOW, Ordering::Relaxed);
        let mut der = id.cert_der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(matches!(
            v.verify_cert(&CertificateDer::from(der), &[]),
            Err(VerifyError::BadSelfSignature)
        ));
        assert_eq!(v.structure_runs(), 2);
        // Without the verdict cache nothing is kept.
        let mut cfg = VerifierConfig::new(Policy::sim_test());
        cfg.clock = fixed_clock(NOW);
        cfg.cache_ttl_secs = 0;
        let v = RatlsVerifier::new(cfg);
        v.verify_cert(id.cert_der(), &[]).unwrap();
        v.verify_cert(id.cert_der(), &[]).unwrap();
        assert_eq!(v.structure_runs(), 2);
    }
}
