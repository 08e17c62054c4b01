//! A role's RA-TLS identity and how it verifies its peers: evidence from this machine's TEE
//! (or sim evidence on test networks), refreshed hourly; peer policies by name or from a file;
//! TDX collateral and AMD CRL caches fetched in the background, never inside a handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::{
    AttestError, Backend, CollateralFetcher, CollateralStore, KdsClient, KdsFetcher, PccsClient,
    Policy, SevCollateral, SimKey, VcekStore,
};
use cocoon_ratls::cert::{
    EvidenceSource, FakeTdxSource, GpuEvidenceSource, Identity, SimSource, TsmSevSource,
    TsmTdxSource, WithGpu,
};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::RatlsConnector;
use cocoon_ratls::verifier::{GpuRequirement, RatlsVerifier, VerifierConfig, system_clock};
use rustls::pki_types::CertificateDer;

/// Which evidence a role presents: the `tee` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeChoice {
    /// Whatever [`crate::tee::detect`] finds.
    Auto,
    /// This backend (`Unattested`: a plain certificate, for clients only).
    Fixed(Backend),
}

impl std::str::FromStr for TeeChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TeeChoice::Auto),
            other => other.parse().map(TeeChoice::Fixed).map_err(|_| {
                format!("unknown tee {other:?} (auto, tdx, sev-snp, sim, fake-tdx, none)")
            }),
        }
    }
}

impl TeeChoice {
    /// The backend this choice means on this machine (`Auto` resolved by detection).
    pub fn resolve(self) -> Result<Backend, String> {
        match self {
            TeeChoice::Fixed(b) => Ok(b),
            TeeChoice::Auto => crate::tee::detect().backend.ok_or_else(|| {
                format!(
                    "no TEE found ({} and /dev/tdx_guest or /dev/sev-guest); on a test network \
                     set tee = \"sim\"",
                    cocoon_attest::tsm::DEFAULT_ROOT
                )
            }),
        }
    }

    /// Whether this is (or, for `Auto`, resolves to) a hardware TEE.
    pub fn is_hardware(self) -> bool {
        matches!(self.resolve(), Ok(Backend::Tdx) | Ok(Backend::SevSnp))
    }
}

/// A role's RA-TLS identity: the certificate resolver, where fresh evidence comes from, and
/// which TEE that is.
pub struct RoleIdentity {
    /// Presents the current certificate.
    pub resolver: Arc<CertResolver>,
    /// Produces fresh evidence.
    pub source: Arc<dyn EvidenceSource>,
    /// The TEE the evidence comes from.
    pub tee: Backend,
}

/// Our RA-TLS identity from `tee`. Sim and fake-tdx evidence are refused unless the network
/// is a test network; the sim key is kept in `<state_dir>/sim-key.pk8`.
pub fn identity(tee: TeeChoice, is_test: bool, state_dir: &Path) -> Result<RoleIdentity, String> {
    identity_with_gpu(tee, is_test, state_dir, None)
}

/// [`identity`] whose certificates also carry GPU evidence from `gpu` (extension
/// `1.3.6.1.4.1.12345.3`, bound to each certificate's key; see docs/ra-tls.md).
pub fn identity_with_gpu(
    tee: TeeChoice,
    is_test: bool,
    state_dir: &Path,
    gpu: Option<Arc<dyn GpuEvidenceSource>>,
) -> Result<RoleIdentity, String> {
    let tee = tee.resolve()?;
    if matches!(tee, Backend::Sim | Backend::FakeTdx) && !is_test {
        return Err(format!(
            "{tee} attestation is for test networks only (is_test = true)"
        ));
    }
    let mut source = evidence_source(tee, &state_dir.join("sim-key.pk8"))
        .map_err(|e| format!("sim key: {e}"))?;
    if let Some(gpu) = gpu {
        source = Arc::new(WithGpu { cpu: source, gpu });
    }
    let now = (system_clock())();
    let id = Identity::generate(source.as_ref(), now)
        .map_err(|e| format!("cannot produce {tee} evidence for the RA-TLS certificate: {e}"))?;
    let resolver = CertResolver::new(&id).map_err(|e| e.to_string())?;
    Ok(RoleIdentity {
        resolver,
        source,
        tee,
    })
}

/// Where `tee` evidence comes from: configfs-tsm for TDX and SEV-SNP (read when a
/// certificate is made), a simulated signer whose key is kept in `sim_key` (created if
/// missing; the only step that can fail), or none for an unattested certificate.
pub fn evidence_source(
    tee: Backend,
    sim_key: &Path,
) -> Result<Arc<dyn EvidenceSource>, AttestError> {
    Ok(match tee {
        Backend::Sim => {
            // The emulated RTMR3 of this (simulated) machine, if its boot measured a
            // configuration: it goes into the evidence and so into the image hash.
            let rtmr3 = crate::measured::SimRegisters::from_env()
                .rtmr3()
                .map_err(|e| AttestError::SimKey {
                    path: crate::measured::SIM_REGISTERS_ENV.into(),
                    reason: e.to_string(),
                })?;
            Arc::new(SimSource(
                SimKey::load_or_create(sim_key)?.with_rtmr3(rtmr3),
            ))
        }
        Backend::FakeTdx => Arc::new(FakeTdxSource),
        Backend::Unattested => Arc::new(cocoon_ratls::cert::Unattested),
        Backend::Tdx => Arc::new(TsmTdxSource::system()),
        Backend::SevSnp => Arc::new(TsmSevSource::system()),
    })
}

/// Regenerates the certificate hourly.
pub fn spawn_identity_refresh(
    resolver: &Arc<CertResolver>,
    source: Arc<dyn EvidenceSource>,
) -> tokio::task::JoinHandle<()> {
    cocoon_ratls::config::spawn_refresh(
        Arc::clone(resolver),
        source,
        system_clock(),
        Duration::from_secs(3600),
    )
}

/// A peer policy by name (`any`, `tdx`, `sev-snp`, `sim`) or from a JSON policy file; with
/// `allow_sim`, sim evidence and COCOON's test-mode TDX evidence (`fake_tdx`) are accepted
/// too and the policy is for a test network.
pub fn peer_policy(spec: &str, allow_sim: bool) -> Result<Policy, String> {
    let mut p = match spec {
        "sim" => {
            let mut p = Policy::sim_test();
            p.allowed_backends = vec![Backend::Sim];
            p
        }
        "tdx" => Policy::tdx_default(),
        "sev-snp" => Policy::sev_default(),
        "any" => {
            let mut p = Policy::tdx_default();
            p.allowed_backends = vec![Backend::Tdx, Backend::SevSnp];
            p
        }
        file => {
            let path = Path::new(file);
            if !path.is_file() {
                return Err(format!(
                    "unknown policy {file:?} (one of: tdx, sev-snp, any, sim, or a JSON policy \
                     file)"
                ));
            }
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Policy::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    if allow_sim {
        for test_only in [Backend::Sim, Backend::FakeTdx] {
            if !p.allowed_backends.contains(&test_only) {
                p.allowed_backends.push(test_only);
            }
        }
        p.is_test_network = true;
    }
    Ok(p)
}

/// Where TDX collateral comes from: `pccs_url` (empty: none) and the CAs besides WebPKI that
/// its HTTPS is checked with (`extra_ca_file`; collateral itself is signature-checked up to
/// Intel's pinned root either way).
#[derive(Clone, Copy)]
pub struct Pccs<'a> {
    /// Base URL.
    pub url: &'a str,
    /// CA certificates trusted besides the WebPKI roots.
    pub extra_roots: &'a [CertificateDer<'static>],
}

/// How a role verifies its peers.
#[derive(Clone, Copy)]
pub struct PeerVerification<'a> {
    /// `any`, `tdx`, `sev-snp`, `sim` or a JSON policy file; on a test network sim peers are
    /// accepted too.
    pub policy: &'a str,
    /// Whether this is a test network.
    pub is_test: bool,
    /// Where TDX collateral comes from.
    pub pccs: Pccs<'a>,
    /// AMD KDS base URL (empty: only `<state_dir>/kds`).
    pub kds_url: &'a str,
    /// `<state_dir>`: collateral and CRL caches live below it.
    pub state_dir: &'a Path,
    /// Also accept peers without evidence (a proxy's clients).
    pub allow_unattested: bool,
    /// What is required of the peers' GPU evidence (`None`: it is ignored).
    pub gpu: Option<&'a GpuRequirement>,
}

/// The verifier for peers. TDX collateral comes from `<state_dir>/collateral`, fetched from
/// `pccs_url` when one is given (then refreshed in the background before it expires). AMD's
/// CRLs for SEV-SNP peers come from `<state_dir>/kds`, fetched from `kds_url` when one is
/// given (only once an SEV-SNP peer needs them; then refreshed in the background);
/// handshakes never wait on either.
pub fn peer_verifier(v: PeerVerification<'_>) -> Result<Arc<RatlsVerifier>, String> {
    let mut p = peer_policy(v.policy, v.is_test)?;
    if !v.is_test
        && (p.allowed_backends)
            .iter()
            .any(|b| matches!(b, Backend::Sim | Backend::FakeTdx))
    {
        return Err("a sim or fake-tdx peer policy needs a test network (is_test = true)".into());
    }
    p.is_test_network = v.is_test;
    if !v.is_test && v.gpu.is_some_and(|g| g.allow_unbound_nonce) {
        return Err(
            "accepting GPU evidence not bound to the peer's key needs a test network (is_test = true)"
                .into(),
        );
    }
    if !v.is_test && v.gpu.is_some_and(|g| !g.policy.require_rim_signatures) {
        return Err("accepting unsigned GPU RIMs needs a test network (is_test = true)".into());
    }
    if p.allowed_backends.contains(&Backend::SevSnp) {
        p.sev_collateral = Some(sev_collateral(v.kds_url, &v.state_dir.join("kds"))?);
    }
    let mut cfg = VerifierConfig::new(p);
    cfg.allow_unattested = v.allow_unattested;
    cfg.gpu = v.gpu.map(|g| Arc::new(g.clone()));
    let dir = v.state_dir.join("collateral");
    if v.pccs.url.is_empty() {
        cfg.collateral = Arc::new(CollateralStore::new(dir));
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let client = PccsClient::with_roots(
            v.pccs.url,
            cocoon_attest::pccs::DEFAULT_TIMEOUT,
            v.pccs.extra_roots,
        )
        .map_err(|e| format!("pccs_url: {e}"))?;
        let fetcher = Arc::new(CollateralFetcher::new(client, CollateralStore::new(dir)));
        fetcher.spawn_refresher(system_clock(), Duration::from_secs(3600));
        cfg.collateral = fetcher;
    }
    Ok(RatlsVerifier::new(cfg))
}

/// AMD's CRLs for SEV-SNP peers: the directory alone when `kds_url` is empty (filled by an
/// operator), else a [`KdsFetcher`] on it that fetches from `kds_url` in the background.
fn sev_collateral(kds_url: &str, dir: &Path) -> Result<SevCollateral, String> {
    if kds_url.is_empty() {
        return Ok(SevCollateral::new(Arc::new(VcekStore::new(dir))));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let client = KdsClient::new(kds_url).map_err(|e| format!("kds_url: {e}"))?;
    let clock = system_clock();
    let fetcher = Arc::new(KdsFetcher::new(client, VcekStore::new(dir), clock()));
    fetcher.spawn_refresher(clock, Duration::from_secs(3600));
    Ok(SevCollateral::new(fetcher))
}

/// What a role that dials proxies (a worker, a client) connects with: its identity from `tee`
/// (which TEE that resolved to), refreshed hourly in the background, and proxies verified as
/// `verification` says.
pub struct ProxyDialer {
    /// Dials proxies with the role's identity.
    pub connector: RatlsConnector,
    /// The TEE the identity's evidence comes from.
    pub tee: Backend,
}

/// Builds a [`ProxyDialer`].
pub fn proxy_dialer(
    tee: TeeChoice,
    verification: PeerVerification<'_>,
    pow_max_difficulty: u32,
    gpu: Option<Arc<dyn GpuEvidenceSource>>,
) -> Result<ProxyDialer, String> {
    let RoleIdentity {
        resolver,
        source,
        tee,
    } = identity_with_gpu(tee, verification.is_test, verification.state_dir, gpu)?;
    spawn_identity_refresh(&resolver, source);
    let verifier = peer_verifier(verification)?;
    let connector = RatlsConnector::new(
        resolver,
        verifier,
        pow_max_difficulty,
        cocoon_net::Config::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(ProxyDialer { connector, tee })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tee_choices_and_policies_by_name() {
        assert_eq!("auto".parse::<TeeChoice>(), Ok(TeeChoice::Auto));
        assert_eq!(
            "none".parse::<TeeChoice>(),
            Ok(TeeChoice::Fixed(Backend::Unattested))
        );
        assert!(
            "sgx"
                .parse::<TeeChoice>()
                .unwrap_err()
                .contains("unknown tee")
        );
        let any = peer_policy("any", false).unwrap();
        assert_eq!(any.allowed_backends, vec![Backend::Tdx, Backend::SevSnp]);
        let test = peer_policy("tdx", true).unwrap();
        assert!(test.allowed_backends.contains(&Backend::Sim) && test.is_test_network);
        assert!(test.allowed_backends.contains(&Backend::FakeTdx));
        assert!(
            !peer_policy("any", false)
                .unwrap()
                .allowed_backends
                .contains(&Backend::FakeTdx)
        );
        assert!(
            peer_policy("/nonexistent", false)
                .unwrap_err()
                .contains("unknown policy")
        );
    }

    #[test]
    fn sim_identities_only_on_test_networks() {
        let d = tempfile::tempdir().unwrap();
        let sim = TeeChoice::Fixed(Backend::Sim);
        assert!(identity(sim, false, d.path()).is_err());
        let fake = TeeChoice::Fixed(Backend::FakeTdx);
        assert!(identity(fake, false, d.path()).is_err());
        assert_eq!(
            identity(fake, true, d.path()).unwrap().tee,
            Backend::FakeTdx
        );
        let id = identity(sim, true, d.path()).unwrap();
        assert_eq!(id.tee, Backend::Sim);
        let v = PeerVerification {
            policy: "sim",
            is_test: false,
            pccs: Pccs {
                url: "",
                extra_roots: &[],
            },
            kds_url: "",
            state_dir: d.path(),
            allow_unattested: false,
            gpu: None,
        };
        assert!(peer_verifier(v).is_err(), "sim peers need a test network");
        assert!(peer_verifier(PeerVerification { is_test: true, ..v }).is_ok());
        let unbound = GpuRequirement {
            allow_unbound_nonce: true,
            crl_dir: None,
            ..GpuRequirement::default()
        };
        let v = PeerVerification {
            policy: "any",
            gpu: Some(&unbound),
            ..v
        };
        let e = peer_verifier(v).err().unwrap();
        assert!(e.contains("GPU evidence not bound"), "{e}");
        assert!(peer_verifier(PeerVerification { is_test: true, ..v }).is_ok());
    }
}
