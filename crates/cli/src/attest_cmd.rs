//! `cocoon attest verify|show|gen-cert|verify-cert|probe`: check TDX quotes, SEV-SNP
//! reports and NVIDIA GPU evidence offline against the default policies of `cocoon-attest`, report which TEE this
//! machine offers, generate / verify RA-TLS certificates (`cocoon-ratls`), and probe a live
//! peer's RA-TLS handshake (`probe`).
//!
//! The evidence's own `report_data` is taken as the expected value (the CLI has no key to
//! bind it to), so "valid" means: signatures, certificate chains, collateral, TCB status,
//! debug and root-key checks all pass under the policy. The checks and their descriptions
//! are `cocoon_attest::inspect` and `cocoon_ratls::inspect`; this module parses arguments,
//! fetches what `--pccs` / `--kds` name (blocking on a runtime of its own) and prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{ArgGroup, Args, Subcommand};
use cocoon_attest::inspect::{self, Inspection};
use cocoon_attest::kds::{SevCollateralSource, SevCrl, crl_cached_or_fetched};
use cocoon_attest::pccs::collateral_cached_or_fetched;
use cocoon_attest::sev::SevGeneration;
use cocoon_attest::{
    AttestError, Backend, CollateralSource, CollateralStore, KdsClient, PccsClient, Policy,
    SevCollateral, TcbStatus, TdxCollateral, VcekStore,
};
use cocoon_ratls::cert::Identity;
use cocoon_ratls::inspect as cert_inspect;
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig, fixed_clock};
use serde_json::Value;

mod probe;

#[derive(Subcommand)]
pub(crate) enum AttestCommand {
    /// Verify a TDX quote (`--quote`), an SEV-SNP report (`--sev-report`, `--vcek`,
    /// `--chain`) or NVIDIA GPU evidence (`--gpu-report`, `--gpu-chain`, `--rim`).
    Verify(Box<VerifyArgs>),
    /// Generate an RA-TLS certificate and key (`DIR/cert.pem`, `DIR/key.pem`).
    GenCert(GenCertArgs),
    /// Verify an RA-TLS certificate (PEM) as the RA-TLS verifier does.
    VerifyCert(VerifyCertArgs),
    /// Dial a live proxy (or with `--as-proxy` accept one worker), do the proof-of-work and
    /// the RA-TLS handshake, and print the peer's verified evidence and whether the root
    /// allows it.
    Probe(Box<probe::ProbeArgs>),
    /// Show which TEE interfaces this machine offers.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(group(ArgGroup::new("evidence").required(true).args(["quote", "sev_report", "gpu_report"])))]
pub(crate) struct VerifyArgs {
    /// TDX quote, raw binary or hex text.
    #[arg(long, value_name = "FILE")]
    quote: Option<PathBuf>,
    /// DCAP collateral for the quote (`QuoteCollateralV3` JSON).
    #[arg(long, value_name = "FILE", requires = "quote")]
    collateral: Option<PathBuf>,
    /// Fetch the collateral for the quote's FMSPC from this PCCS or Intel PCS base URL
    /// (e.g. `https://api.trustedservices.intel.com`).
    #[arg(
        long,
        value_name = "URL",
        requires = "quote",
        conflicts_with = "collateral"
    )]
    pccs: Option<String>,
    /// Collateral cache directory (`<fmspc>.json`): used when valid at `--now`, otherwise
    /// (with `--pccs`) refreshed there atomically.
    #[arg(
        long,
        value_name = "DIR",
        requires = "quote",
        conflicts_with = "collateral"
    )]
    collateral_dir: Option<PathBuf>,
    /// Extra TCB statuses to accept besides `UpToDate` (e.g. `SWHardeningNeeded`); the
    /// policy then accepts every status at least as good as the worst one named.
    #[arg(long = "allow-status", value_name = "S", num_args = 1.., requires = "quote")]
    allow_status: Vec<String>,
    /// SEV-SNP attestation report, raw binary or hex text.
    #[arg(long, value_name = "FILE", requires_all = ["vcek", "chain"])]
    sev_report: Option<PathBuf>,
    /// VCEK certificate (DER) for the SEV-SNP report.
    #[arg(long, value_name = "FILE", requires = "sev_report")]
    vcek: Option<PathBuf>,
    /// ASK and ARK certificates (PEM) for the SEV-SNP report.
    #[arg(long, value_name = "FILE", requires = "sev_report")]
    chain: Option<PathBuf>,
    /// SEV-SNP policy: `sev-snp` (AMD's bulletin TCB floors, a fresh AMD CRL required) or a
    /// JSON policy file (docs/ra-tls.md).
    #[arg(
        long,
        value_name = "P|FILE",
        requires = "sev_report",
        default_value = "sev-snp"
    )]
    policy: String,
    /// Fetch AMD's CRL for the report's product from this AMD KDS base URL (e.g.
    /// `https://kdsintf.amd.com`; into `--kds-dir` when given).
    #[arg(long, value_name = "URL", requires = "sev_report")]
    kds: Option<String>,
    /// AMD KDS cache directory (`<Product>/crl.der`, …): its CRL is used when fresh at
    /// `--now`, otherwise (with `--kds`) refreshed there.
    #[arg(long, value_name = "DIR", requires = "sev_report")]
    kds_dir: Option<PathBuf>,
    /// NVIDIA GPU attestation report: hex text (as NVIDIA's tools write it) or raw binary,
    /// the SPDM `GET_MEASUREMENTS` request followed by the signed response.
    #[arg(long, value_name = "FILE", requires_all = ["gpu_chain", "rim"])]
    gpu_report: Option<PathBuf>,
    /// The GPU's certificate chain (PEM, leaf first, ending at NVIDIA's device root).
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    gpu_chain: Option<PathBuf>,
    /// A reference manifest (SWID tag) for the GPU report: give the driver's and the VBIOS's.
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    rim: Vec<PathBuf>,
    /// The nonce (64 hex digits) the GPU report must carry; without it the report's own
    /// nonce is taken (and said so).
    #[arg(long, value_name = "HEX", requires = "gpu_report")]
    nonce: Option<String>,
    /// Accept RIMs for another driver or VBIOS version than the report's (NVIDIA's verifier
    /// only warns on this).
    #[arg(long, requires = "gpu_report")]
    allow_rim_version_mismatch: bool,
    /// Do not check the RIMs' XML signatures (trust the RIM files as given).
    #[arg(long, requires = "gpu_report")]
    allow_unsigned_rims: bool,
    /// A revoked certificate serial (hex) from revocation data you hold; repeatable.
    #[arg(long, value_name = "HEX", requires = "gpu_report")]
    revoked_serial: Vec<String>,
    /// Verification time (Unix seconds); defaults to now.
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct GenCertArgs {
    /// Evidence source: `sim`, `fake-tdx` (COCOON's test mode), `tdx` (configfs-tsm) or
    /// `sev-snp`.
    #[arg(long, value_name = "TEE")]
    tee: String,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Simulated-TEE signing key (PKCS#8), created if missing; default `DIR/sim-key.pk8`.
    #[arg(long, value_name = "FILE")]
    sim_key: Option<PathBuf>,
    /// Start of validity (Unix seconds); defaults to now.
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
}

#[derive(Args)]
pub(crate) struct VerifyCertArgs {
    /// RA-TLS certificate, PEM (or DER).
    #[arg(value_name = "CERT")]
    cert: PathBuf,
    /// Policy: `tdx`, `sev-snp`, `any` (any real TEE whose evidence verifies), `sim`
    /// (test networks), or a JSON policy file (format in docs/ra-tls.md).
    #[arg(long, value_name = "P|FILE", default_value = "tdx")]
    policy: String,
    /// Also accept simulated evidence (test networks only).
    #[arg(long)]
    allow_sim: bool,
    #[command(flatten)]
    sources: PeerSources,
    /// Verification time (Unix seconds); defaults to now.
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Where a peer's collateral and CRLs come from (`verify-cert`, `probe`).
#[derive(Args)]
pub(crate) struct PeerSources {
    /// DCAP collateral directory (`<fmspc>.json`) for a TDX peer.
    #[arg(long, value_name = "DIR")]
    collateral_dir: Option<PathBuf>,
    /// Fetch missing or expired TDX collateral from this PCCS / Intel PCS base URL (into
    /// `--collateral-dir` when given).
    #[arg(long, value_name = "URL")]
    pccs: Option<String>,
    /// Fetch AMD's CRLs for an SEV-SNP peer from this AMD KDS base URL (into `--kds-dir`
    /// when given).
    #[arg(long, value_name = "URL")]
    kds: Option<String>,
    /// AMD KDS cache directory for an SEV-SNP peer (`<Product>/crl.der`, …).
    #[arg(long, value_name = "DIR")]
    kds_dir: Option<PathBuf>,
}

impl PeerSources {
    /// A verifier for `policy` with these sources and `clock`, without a cache (every run
    /// verifies afresh).
    pub(crate) fn verifier(
        &self,
        mut policy: cocoon_attest::Policy,
        clock: cocoon_ratls::verifier::Clock,
    ) -> Result<Arc<RatlsVerifier>, String> {
        policy.sev_collateral = kds_source(self.kds.as_deref(), self.kds_dir.as_deref())?;
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = clock;
        cfg.cache_ttl_secs = 0;
        if self.pccs.is_some() {
            let source = CliCollateral::new(self.pccs.as_deref(), self.collateral_dir.as_deref())?;
            cfg.collateral = Arc::new(source);
        } else if let Some(dir) = &self.collateral_dir {
            cfg.collateral = Arc::new(CollateralStore::new(dir.clone()));
        }
        Ok(RatlsVerifier::new(cfg))
    }
}

pub(crate) fn run(command: AttestCommand) -> Result<(), String> {
    match command {
        AttestCommand::Verify(args) => verify(*args),
        AttestCommand::Show { json } => show(json),
        AttestCommand::GenCert(args) => gen_cert(args),
        AttestCommand::VerifyCert(args) => verify_cert(args),
        AttestCommand::Probe(args) => probe::run(*args),
    }
}

fn now_or(now: Option<u64>) -> Result<u64, String> {
    match now {
        Some(n) => Ok(n),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| format!("system clock before 1970: {e}"))?
            .as_secs()),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn print_json(value: &Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Prints the description and returns the verdict (a refusal exits with code 1).
fn print(inspection: Inspection, as_json: bool) -> Result<(), String> {
    if as_json {
        print_json(&inspection.json)?;
    } else {
        inspection.text.iter().for_each(|l| println!("{l}"));
    }
    inspection.result.map(|_| ())
}

/// A runtime for the fetches `--pccs` and `--kds` ask for: the CLI runs outside any, and
/// verification asks for collateral synchronously.
fn runtime() -> Result<Arc<tokio::runtime::Runtime>, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn verify(args: VerifyArgs) -> Result<(), String> {
    let now = now_or(args.now)?;
    if let Some(quote) = &args.quote {
        let statuses = (args.allow_status.iter())
            .map(|s| s.parse::<TcbStatus>())
            .collect::<Result<Vec<_>, _>>()?;
        let quote = inspect::binary_or_hex(read_file(quote)?);
        let collateral = match &args.collateral {
            Some(p) => Ok(TdxCollateral::from_json(&read_file(p)?)
                .map_err(|e| format!("{}: {e}", p.display()))?),
            None => CliCollateral::new(args.pccs.as_deref(), args.collateral_dir.as_deref())?
                .collateral_for(&quote, now)
                .map_err(|e| e.to_string()),
        };
        let mut policy = Policy::tdx_default();
        inspect::allow_statuses(&mut policy, &statuses);
        print(
            inspect::inspect_tdx_quote(&quote, collateral, &policy, now),
            args.json,
        )
    } else if let (Some(report), Some(vcek), Some(chain)) =
        (&args.sev_report, &args.vcek, &args.chain)
    {
        let mut policy = cocoon_service::identity::peer_policy(&args.policy, false)?;
        policy.sev_collateral = kds_source(args.kds.as_deref(), args.kds_dir.as_deref())?;
        let report = inspect::binary_or_hex(read_file(report)?);
        let (vcek, chain) = (read_file(vcek)?, read_file(chain)?);
        print(
            inspect::inspect_sev_report(&report, &vcek, &chain, &policy, now),
            args.json,
        )
    } else if let (Some(report), Some(chain)) = (&args.gpu_report, &args.gpu_chain) {
        verify_gpu(&args, report, chain, now)
    } else {
        Err(
            "give --quote FILE, or --sev-report FILE --vcek FILE --chain FILE, or \
             --gpu-report FILE --gpu-chain FILE --rim FILE --rim FILE"
                .into(),
        )
    }
}

/// `cocoon attest verify --gpu-report`: `cocoon_attest::gpu::verify`, described.
fn verify_gpu(args: &VerifyArgs, report: &Path, chain: &Path, now: u64) -> Result<(), String> {
    use cocoon_attest::gpu;
    let report = inspect::binary_or_hex(read_file(report)?);
    let chain = read_file(chain)?;
    let rims = args
        .rim
        .iter()
        .map(|p| read_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (nonce, nonce_source) = match &args.nonce {
        Some(h) => {
            let n: [u8; 32] = hex::decode(h.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or("--nonce: 64 hex digits")?;
            (n, "given")
        }
        None => {
            let n = gpu::report::parse(&report)
                .map(|r| r.request_nonce)
                .unwrap_or_default();
            (n, "the report's own (no --nonce given)")
        }
    };
    let policy = gpu::GpuPolicy {
        revoked_serials: (args.revoked_serial.iter())
            .map(|h| hex::decode(h.trim()).map_err(|e| format!("--revoked-serial {h}: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        require_rim_versions: !args.allow_rim_version_mismatch,
        require_rim_signatures: !args.allow_unsigned_rims,
        ..gpu::GpuPolicy::default()
    };
    let rim_refs: Vec<&[u8]> = rims.iter().map(Vec::as_slice).collect();
    let evidence = gpu::GpuEvidence {
        report: &report,
        cert_chain_pem: &chain,
        rims: &rim_refs,
    };
    let result = gpu::verify(&evidence, &nonce, &policy, now);
    let mut json = serde_json::json!({
        "backend": "nvidia-gpu",
        "now": now,
        "nonce": hex::encode(nonce),
        "nonce_source": nonce_source,
    });
    let mut text = Vec::new();
    match &result {
        Ok(v) => {
            json["status"] = "valid".into();
            json["driver_version"] = v.driver_version.clone().into();
            json["vbios_version"] = v.vbios_version.clone().into();
            json["driver_rim_version"] = v.driver_rim_version.clone().into();
            json["vbios_rim_version"] = v.vbios_rim_version.clone().into();
            json["project"] = v.project.clone().into();
            json["project_sku"] = v.project_sku.clone().into();
            json["chip_sku"] = v.chip_sku.clone().into();
            json["measurement_blocks"] = v.blocks.into();
            json["measurements_checked"] = v.measurements_checked.into();
            json["chain"] = v.chain_subjects.clone().into();
            let signed = v.rim_signature == gpu::RimSignature::Verified;
            json["rim_signature"] = if signed { "verified" } else { "not_checked" }.into();
            text.push("status:         valid".to_owned());
            text.push(format!(
                "nonce:          {} ({nonce_source})",
                hex::encode(nonce)
            ));
            text.push(format!(
                "driver:         {} (RIM {})",
                v.driver_version, v.driver_rim_version
            ));
            text.push(format!(
                "vbios:          {} (RIM {})",
                v.vbios_version, v.vbios_rim_version
            ));
            text.push(format!(
                "project:        {} sku {} chip sku {}",
                v.project.as_deref().unwrap_or("-"),
                v.project_sku.as_deref().unwrap_or("-"),
                v.chip_sku.as_deref().unwrap_or("-")
            ));
            text.push(format!(
                "measurements:   {} checked, {} blocks",
                v.measurements_checked, v.blocks
            ));
            for (i, s) in v.chain_subjects.iter().enumerate() {
                text.push(format!("chain {i}:        {s}"));
            }
            text.push(
                if signed {
                    "rim signature:  verified (up to NVIDIA's RIM root)"
                } else {
                    "rim signature:  not checked (RIMs trusted as given)"
                }
                .to_owned(),
            );
        }
        Err(e) => {
            json["status"] = "refused".into();
            json["error"] = e.to_string().into();
            json["fault"] = format!("{:?}", e.fault()).to_lowercase().into();
            text.push(format!("status:         refused: {e}"));
        }
    }
    if args.json {
        print_json(&json)?;
    } else {
        text.iter().for_each(|l| println!("{l}"));
    }
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// Runs `f` to completion on `rt` from a thread of its own, so that it works from inside a
/// handshake that `probe` drives on another runtime (a runtime cannot block inside one).
fn block_on<F>(rt: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `--collateral-dir` / `--pccs`: the directory's collateral while valid, else fetched now.
struct CliCollateral {
    store: Option<CollateralStore>,
    pccs: Option<PccsClient>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl CliCollateral {
    fn new(pccs: Option<&str>, dir: Option<&Path>) -> Result<Self, String> {
        let pccs = pccs
            .map(PccsClient::new)
            .transpose()
            .map_err(|e| format!("--pccs: {e}"))?;
        Ok(Self {
            store: dir.map(CollateralStore::new),
            pccs,
            rt: runtime()?,
        })
    }
}

impl CollateralSource for CliCollateral {
    fn collateral_for(&self, quote: &[u8], now: u64) -> Result<TdxCollateral, AttestError> {
        if self.store.is_none() && self.pccs.is_none() {
            return Err(AttestError::MissingCollateral {
                what: "no collateral given (--collateral FILE, --collateral-dir DIR or --pccs \
                       URL)"
                    .into(),
            });
        }
        block_on(
            &self.rt,
            collateral_cached_or_fetched(quote, self.store.as_ref(), self.pccs.as_ref(), now),
        )
    }
}

/// `--kds URL` / `--kds-dir DIR`: where SEV-SNP verification takes AMD's CRLs from. The
/// directory's CRL (verified against AMD's ARK on every read) is used while fresh at `now`;
/// otherwise, with a URL, the CRL is fetched now and stored into the directory when given.
struct CliKds {
    client: Option<KdsClient>,
    store: Option<VcekStore>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl SevCollateralSource for CliKds {
    fn crl(&self, product: SevGeneration, now: u64) -> Result<Arc<SevCrl>, AttestError> {
        block_on(
            &self.rt,
            crl_cached_or_fetched(product, self.store.as_ref(), self.client.as_ref(), now),
        )
    }

    fn describe(&self) -> String {
        format!(
            "cli kds {:?} dir {:?}",
            self.client.as_ref().map(KdsClient::base_url),
            self.store.as_ref().map(VcekStore::dir)
        )
    }
}

/// The CRL source for `--kds` / `--kds-dir`, if either is given.
fn kds_source(url: Option<&str>, dir: Option<&Path>) -> Result<Option<SevCollateral>, String> {
    if url.is_none() && dir.is_none() {
        return Ok(None);
    }
    let client = url
        .map(KdsClient::new)
        .transpose()
        .map_err(|e| format!("--kds: {e}"))?;
    Ok(Some(SevCollateral::new(Arc::new(CliKds {
        client,
        store: dir.map(VcekStore::new),
        rt: runtime()?,
    }))))
}

fn show(as_json: bool) -> Result<(), String> {
    let info = cocoon_service::tee::detect();
    if as_json {
        return print_json(&info.to_json());
    }
    info.lines().iter().for_each(|l| println!("{l}"));
    Ok(())
}

fn gen_cert(args: GenCertArgs) -> Result<(), String> {
    let now = now_or(args.now)?;
    let tee = match args.tee.parse::<Backend>() {
        Ok(b @ (Backend::Sim | Backend::FakeTdx | Backend::Tdx | Backend::SevSnp)) => b,
        _ => {
            let other = &args.tee;
            return Err(format!(
                "unknown TEE {other:?} (one of: sim, fake-tdx, tdx, sev-snp)"
            ));
        }
    };
    if matches!(tee, Backend::Sim | Backend::FakeTdx) {
        // The default sim key lives in the output directory.
        std::fs::create_dir_all(&args.out)
            .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    } else if !Path::new(cocoon_attest::tsm::DEFAULT_ROOT).is_dir() {
        let root = cocoon_attest::tsm::DEFAULT_ROOT;
        return Err(format!("no TEE: {root} not found"));
    }
    let sim_key = (args.sim_key.clone()).unwrap_or_else(|| args.out.join("sim-key.pk8"));
    let source =
        cocoon_service::identity::evidence_source(tee, &sim_key).map_err(|e| e.to_string())?;
    let id = Identity::generate(source.as_ref(), now).map_err(|e| e.to_string())?;
    let files = cert_inspect::write_identity(&id, &args.out).map_err(|e| e.to_string())?;
    for line in cert_inspect::generated_lines(&id, &files, tee, now) {
        println!("{line}");
    }
    Ok(())
}

fn verify_cert(args: VerifyCertArgs) -> Result<(), String> {
    let now = now_or(args.now)?;
    let policy = cocoon_service::identity::peer_policy(&args.policy, args.allow_sim)?;
    let der = cert_inspect::cert_from_pem_or_der(read_file(&args.cert)?)
        .map_err(|e| format!("{}: no PEM certificate: {e:?}", args.cert.display()))?;
    let verifier = args.sources.verifier(policy, fixed_clock(now))?;
    print(
        cert_inspect::inspect_cert(&der, &verifier, &args.policy, now),
        args.json,
    )
}
