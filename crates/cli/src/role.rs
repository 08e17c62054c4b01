//! What every long-running role (`worker`, `proxy`, `client`) sets up the same way: logging,
//! its state directory, its RA-TLS identity from this machine's TEE, the policy its peers are
//! verified with, and the stop signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::{
    Backend, CollateralFetcher, CollateralStore, KdsClient, KdsFetcher, PccsClient, SevCollateral,
    SimKey, VcekStore,
};
use cocoon_ratls::cert::{EvidenceSource, Identity, SimSource, TsmSevSource, TsmTdxSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::RatlsConnector;
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig, system_clock};
use rustls::pki_types::CertificateDer;

/// Checks the browser guard's allowlists, naming the key at fault (`<prefix>allowed_origins`
/// or `<prefix>allowed_hosts`).
pub fn check_browser_allowlist(
    l: &crate::config::Layers,
    origins: &[String],
    hosts: &[String],
    prefix: &str,
) -> Result<(), crate::config::ConfigError> {
    use cocoon_service::browser::{Allowlist, AllowlistError};
    match Allowlist::new(origins, hosts) {
        Ok(_) => Ok(()),
        Err(e @ AllowlistError::Origin { .. }) => {
            Err(l.invalid(&format!("{prefix}allowed_origins"), e))
        }
        Err(e @ AllowlistError::Host { .. }) => {
            Err(l.invalid(&format!("{prefix}allowed_hosts"), e))
        }
    }
}

/// `~/.local/share/cocoon/<role>` (or `$XDG_DATA_HOME/cocoon/<role>`).
pub fn default_state_dir(role: &str) -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cocoon")
        .join(role)
}

/// Logs to stderr; `RUST_LOG` overrides `filter`.
pub fn init_logging(filter: &str) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The TEE this machine offers through configfs-tsm: `tdx`, `sev-snp`, or none.
pub fn detect_tee() -> Option<&'static str> {
    if !Path::new(cocoon_attest::tsm::DEFAULT_ROOT).is_dir() {
        return None;
    }
    if Path::new("/dev/tdx_guest").exists() {
        Some("tdx")
    } else if Path::new("/dev/sev-guest").exists() {
        Some("sev-snp")
    } else {
        None
    }
}

/// A role's RA-TLS identity: the certificate resolver, where fresh evidence comes from, and
/// which TEE that is (`tdx`, `sev-snp`, `sim`).
pub struct RoleIdentity {
    pub resolver: Arc<CertResolver>,
    pub source: Arc<dyn EvidenceSource>,
    pub tee: &'static str,
}

/// Our RA-TLS identity: evidence from `tee` (`auto`, `tdx`, `sev-snp`, `sim`, or `none` for
/// a plain certificate, which only a client may use), refreshed hourly. Sim evidence is
/// refused unless the network is a test network.
pub fn identity(tee: &str, is_test: bool, state_dir: &Path) -> Result<RoleIdentity, String> {
    let tee = match tee {
        "auto" => detect_tee().ok_or_else(|| {
            format!(
                "no TEE found ({} and /dev/tdx_guest or /dev/sev-guest); on a test network set \
                 tee = \"sim\"",
                cocoon_attest::tsm::DEFAULT_ROOT
            )
        })?,
        "tdx" => "tdx",
        "sev-snp" => "sev-snp",
        "sim" => "sim",
        "none" => "none",
        other => {
            return Err(format!(
                "unknown tee {other:?} (auto, tdx, sev-snp, sim, none)"
            ));
        }
    };
    let source: Arc<dyn EvidenceSource> = match tee {
        "sim" => {
            if !is_test {
                return Err("sim attestation is for test networks only (is_test = true)".into());
            }
            let key = SimKey::load_or_create(&state_dir.join("sim-key.pk8"))
                .map_err(|e| format!("sim key: {e}"))?;
            Arc::new(SimSource(key))
        }
        "none" => Arc::new(cocoon_ratls::cert::Unattested),
        "tdx" => Arc::new(TsmTdxSource::system()),
        _ => Arc::new(TsmSevSource::system()),
    };
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

/// Regenerates the certificate hourly (COCOON does the same).
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

/// Where TDX collateral comes from: `pccs_url` (empty: none) and the CAs besides WebPKI that
/// its HTTPS is checked with (`extra_ca_file`; collateral itself is signature-checked up to
/// Intel's pinned root either way).
#[derive(Clone, Copy)]
pub struct Pccs<'a> {
    pub url: &'a str,
    pub extra_roots: &'a [CertificateDer<'static>],
}

/// The verifier for peers: `policy` is `any`, `tdx`, `sev-snp`, `sim` or a JSON policy file;
/// on a test network sim peers are accepted too. TDX collateral comes from
/// `<state_dir>/collateral`, fetched from `pccs_url` when one is given (then refreshed in the
/// background before it expires). AMD's CRLs for SEV-SNP peers come from `<state_dir>/kds`,
/// fetched from `kds_url` when one is given (only once an SEV-SNP peer needs them; then
/// refreshed in the background); handshakes never wait on either.
pub fn peer_verifier(
    policy: &str,
    is_test: bool,
    pccs: Pccs<'_>,
    kds_url: &str,
    state_dir: &Path,
) -> Result<Arc<RatlsVerifier>, String> {
    peer_verifier_with(policy, is_test, pccs, kds_url, state_dir, false)
}

/// [`peer_verifier`], optionally also accepting peers without evidence (a proxy's clients).
pub fn peer_verifier_with(
    policy: &str,
    is_test: bool,
    pccs: Pccs<'_>,
    kds_url: &str,
    state_dir: &Path,
    allow_unattested: bool,
) -> Result<Arc<RatlsVerifier>, String> {
    let mut p = crate::attest_cmd::ratls::cert_policy(policy, is_test)?;
    if !is_test && p.allowed_backends.contains(&Backend::Sim) {
        return Err("a sim peer policy needs a test network (is_test = true)".into());
    }
    p.is_test_network = is_test;
    if p.allowed_backends.contains(&Backend::SevSnp) {
        p.sev_collateral = Some(sev_collateral(kds_url, &state_dir.join("kds"))?);
    }
    let mut cfg = VerifierConfig::new(p);
    cfg.allow_unattested = allow_unattested;
    let dir = state_dir.join("collateral");
    if pccs.url.is_empty() {
        cfg.collateral = Arc::new(CollateralStore::new(dir));
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let client = PccsClient::with_roots(
            pccs.url,
            cocoon_attest::pccs::DEFAULT_TIMEOUT,
            pccs.extra_roots,
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
/// (which TEE that resolved to), refreshed hourly in the background, and proxies verified
/// under `proxy_policy`.
pub struct ProxyDialer {
    pub connector: RatlsConnector,
    pub tee: &'static str,
}

pub fn proxy_dialer(
    tee: &str,
    proxy_policy: &str,
    is_test: bool,
    pccs: Pccs<'_>,
    kds_url: &str,
    pow_max_difficulty: u32,
    state_dir: &Path,
) -> Result<ProxyDialer, String> {
    let RoleIdentity {
        resolver,
        source,
        tee,
    } = identity(tee, is_test, state_dir)?;
    spawn_identity_refresh(&resolver, source);
    let verifier = peer_verifier(proxy_policy, is_test, pccs, kds_url, state_dir)?;
    let connector = RatlsConnector::new(
        resolver,
        verifier,
        pow_max_difficulty,
        cocoon_net::Config::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(ProxyDialer { connector, tee })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Reads a bearer token file, creating it (mode 0600, 32 random bytes in hex) if missing.
pub fn ensure_token_file(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{}", hex::encode(bytes)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The common life of a role command: print the defaults or the layered configuration if
/// asked, build and check the settings (config errors exit 64 with one line), start
/// logging, run `run` on a tokio runtime, and turn its error into exit code 1.
pub fn main_with<S, F>(
    defaults: &str,
    print_defaults: bool,
    print_config: bool,
    layers: Result<crate::config::Layers, crate::config::ConfigError>,
    check: impl FnOnce(&S, &crate::config::Layers) -> Result<(), crate::config::ConfigError>,
    log: impl FnOnce(&S) -> String,
    run: impl FnOnce(S) -> F,
) -> std::process::ExitCode
where
    S: serde::de::DeserializeOwned,
    F: std::future::Future<Output = Result<(), String>>,
{
    use std::process::ExitCode;
    if print_defaults {
        print!("{defaults}");
        return ExitCode::SUCCESS;
    }
    let layered = layers.and_then(|l| {
        let s: S = l.build()?;
        check(&s, &l)?;
        Ok((l, s))
    });
    let (l, s) = match layered {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(crate::config::EXIT_CONFIG);
        }
    };
    if print_config {
        print!("{}", l.render());
        return ExitCode::SUCCESS;
    }
    init_logging(&log(&s));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The state directory `configured`, or the role's default; created if missing.
pub fn state_dir(configured: &str, role: &str) -> Result<PathBuf, String> {
    let d = if configured.is_empty() {
        default_state_dir(role)
    } else {
        PathBuf::from(configured)
    };
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

/// The admin token file: `configured`, or `<state_dir>/admin-token`; created if missing.
pub fn admin_token_file(configured: &str, state_dir: &Path) -> Result<PathBuf, String> {
    let p = if configured.is_empty() {
        state_dir.join("admin-token")
    } else {
        PathBuf::from(configured)
    };
    ensure_token_file(&p)?;
    Ok(p)
}

/// Flags every role command takes.
#[derive(clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (keys under the role's table, e.g. [worker]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any key: --set key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// auto, tdx, sev-snp or sim.
    #[arg(long)]
    pub tee: Option<String>,
    /// Test network.
    #[arg(long)]
    pub test: bool,
    /// State directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Admin HTTP listen address ("" for none).
    #[arg(long)]
    pub admin: Option<String>,
    /// Print the effective configuration (with where each value came from) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Print the documented defaults file and exit.
    #[arg(long)]
    pub print_defaults: bool,
}

impl CommonArgs {
    /// Defaults, the file, `COCOON_<ROLE>_*`, `--set`, the common flags, then `flags`
    /// (`(key, value, flag name)`, applied when given).
    pub fn layers(
        &self,
        role: &'static str,
        defaults: &str,
        env: Vec<(String, String)>,
        flags: Vec<(&'static str, Option<String>, &'static str)>,
    ) -> Result<crate::config::Layers, crate::config::ConfigError> {
        let mut l = crate::config::Layers::new(role, defaults);
        if let Some(p) = &self.config {
            l.file(p)?;
        }
        l.env(env)?;
        l.sets(&self.sets)?;
        let common = [
            ("tee", self.tee.clone(), "--tee"),
            (
                "state_dir",
                self.state_dir.as_ref().map(|p| p.display().to_string()),
                "--state-dir",
            ),
            ("admin_listen", self.admin.clone(), "--admin"),
        ];
        for (key, v, flag) in common.into_iter().chain(flags) {
            if let Some(v) = v {
                l.set(key, &v, flag)?;
            }
        }
        if self.test {
            l.set("is_test", "true", "--test")?;
        }
        Ok(l)
    }
}
