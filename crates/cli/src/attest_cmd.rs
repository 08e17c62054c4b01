//! `cocoon attest verify|show|gen-cert|verify-cert`: check TDX quotes and SEV-SNP reports
//! offline against the default policies of `cocoon-attest`, report which TEE this machine
//! offers, and generate / verify RA-TLS certificates (`cocoon-ratls`).
//!
//! The evidence's own `report_data` is taken as the expected value (the CLI has no key to
//! bind it to), so "valid" means: signatures, certificate chains, collateral, TCB status,
//! debug and root-key checks all pass under the policy.

use clap::{ArgGroup, Args, Subcommand};
use cocoon_attest::kds::{SevCollateralSource, SevCrl};
use cocoon_attest::pccs::{self, CollateralFetcher, PccsClient};
use cocoon_attest::sev::{self, SevGeneration, SevReportInfo};
use cocoon_attest::tdx::{self, ParsedTdQuote};
use cocoon_attest::{
    AttestError, CollateralStore, Evidence, KdsClient, KdsFetcher, Measurements, Policy,
    SevCollateral, TcbStatus, TdxCollateral, VcekStore, VerifiedPeer,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand)]
pub enum AttestCommand {
    /// Verify a TDX quote (`--quote`) or an SEV-SNP report (`--sev-report`, `--vcek`, `--chain`).
    Verify(VerifyArgs),
    /// Generate an RA-TLS certificate and key (`DIR/cert.pem`, `DIR/key.pem`).
    GenCert(GenCertArgs),
    /// Verify an RA-TLS certificate (PEM) as the RA-TLS verifier does.
    VerifyCert(VerifyCertArgs),
    /// Show which TEE interfaces this machine offers.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(group(ArgGroup::new("evidence").required(true).args(["quote", "sev_report"])))]
pub struct VerifyArgs {
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
    /// Verification time (Unix seconds); defaults to now.
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(command: AttestCommand) -> Result<(), String> {
    match command {
        AttestCommand::Verify(args) => verify(args),
        AttestCommand::Show { json } => show(json),
        AttestCommand::GenCert(args) => ratls::gen_cert(args),
        AttestCommand::VerifyCert(args) => ratls::verify_cert(args),
    }
}

#[derive(Args)]
pub struct GenCertArgs {
    /// Evidence source: `sim`, `tdx` (configfs-tsm) or `sev-snp`.
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
pub struct VerifyCertArgs {
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
    /// DCAP collateral directory (`<fmspc>.json`) for TDX quotes.
    #[arg(long, value_name = "DIR")]
    collateral_dir: Option<PathBuf>,
    /// Fetch missing or expired TDX collateral from this PCCS / Intel PCS base URL (into
    /// `--collateral-dir` when given).
    #[arg(long, value_name = "URL")]
    pccs: Option<String>,
    /// Fetch AMD's CRLs for SEV-SNP evidence from this AMD KDS base URL (into `--kds-dir`
    /// when given).
    #[arg(long, value_name = "URL")]
    kds: Option<String>,
    /// AMD KDS cache directory for SEV-SNP evidence (`<Product>/crl.der`, …).
    #[arg(long, value_name = "DIR")]
    kds_dir: Option<PathBuf>,
    /// Verification time (Unix seconds); defaults to now.
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
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

fn verify(args: VerifyArgs) -> Result<(), String> {
    let now = match args.now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| format!("system clock before 1970: {e}"))?
            .as_secs(),
    };
    if let Some(quote) = &args.quote {
        let statuses = args
            .allow_status
            .iter()
            .map(|s| parse_status(s))
            .collect::<Result<Vec<_>, _>>()?;
        let source = CollateralArgs {
            file: args.collateral.as_deref(),
            pccs: args.pccs.as_deref(),
            dir: args.collateral_dir.as_deref(),
        };
        verify_tdx(quote, &source, &statuses, now, args.json)
    } else if let (Some(report), Some(vcek), Some(chain)) =
        (&args.sev_report, &args.vcek, &args.chain)
    {
        let mut policy = cocoon_service::identity::peer_policy(&args.policy, false)?;
        policy.sev_collateral = kds_source(args.kds.as_deref(), args.kds_dir.as_deref())?;
        verify_sev(report, vcek, chain, &policy, now, args.json)
    } else {
        Err("give --quote FILE, or --sev-report FILE --vcek FILE --chain FILE".into())
    }
}

const STATUSES: [(&str, TcbStatus); 7] = [
    ("Revoked", TcbStatus::Revoked),
    (
        "OutOfDateConfigurationNeeded",
        TcbStatus::OutOfDateConfigurationNeeded,
    ),
    ("OutOfDate", TcbStatus::OutOfDate),
    (
        "ConfigurationAndSWHardeningNeeded",
        TcbStatus::ConfigurationAndSWHardeningNeeded,
    ),
    ("ConfigurationNeeded", TcbStatus::ConfigurationNeeded),
    ("SWHardeningNeeded", TcbStatus::SWHardeningNeeded),
    ("UpToDate", TcbStatus::UpToDate),
];

fn parse_status(s: &str) -> Result<TcbStatus, String> {
    STATUSES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|(_, st)| *st)
        .ok_or_else(|| {
            let names: Vec<&str> = STATUSES.iter().map(|(n, _)| *n).collect();
            format!("unknown TCB status {s:?} (one of: {})", names.join(", "))
        })
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Raw bytes, or hex text (ASCII hex digits, whitespace, optional `0x`) decoded.
fn binary_or_hex(bytes: Vec<u8>) -> Vec<u8> {
    let text = bytes.trim_ascii();
    let text = text.strip_prefix(b"0x").unwrap_or(text);
    let digits: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let is_hex = !digits.is_empty()
        && digits.len().is_multiple_of(2)
        && text
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    match is_hex.then(|| hex::decode(&digits)) {
        Some(Ok(decoded)) => decoded,
        _ => bytes,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
fn utc(t: u64) -> String {
    let days = t / 86_400;
    let secs = t % 86_400;
    // Civil-from-days (Howard Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn print_json(value: &Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn verdict(result: &Result<VerifiedPeer, String>) -> Value {
    match result {
        Ok(peer) => json!({
            "valid": true,
            "error": null,
            "tcb_status": format!("{:?}", peer.tcb_status()),
            "advisory_ids": peer.advisory_ids(),
            "image_hash": hex::encode(peer.image_hash()),
            "valid_until": peer.valid_until(),
        }),
        Err(e) => json!({ "valid": false, "error": e }),
    }
}

/// Where `verify --quote` takes its collateral from.
struct CollateralArgs<'a> {
    file: Option<&'a Path>,
    pccs: Option<&'a str>,
    dir: Option<&'a Path>,
}

/// Collateral for `quote` from a cache directory (if valid at `now`) or a PCCS (stored
/// into the directory when one is given). `Err` is the verdict's error.
fn collateral_from(
    quote: &[u8],
    pccs: Option<&str>,
    dir: Option<&Path>,
    now: u64,
) -> Result<TdxCollateral, AttestError> {
    let (fmspc, ca) = pccs::quote_platform(quote)?;
    let store = dir.map(CollateralStore::new);
    let cached = store.as_ref().map(|s| s.load(&fmspc, now));
    let Some(url) = pccs else {
        return match cached {
            Some(r) => r,
            None => Err(AttestError::MissingCollateral {
                what: "no collateral given (--collateral FILE, --collateral-dir DIR or --pccs \
                       URL)"
                    .into(),
            }),
        };
    };
    if let Some(Ok(c)) = cached {
        return Ok(c);
    }
    let client = PccsClient::new(url)?;
    match store {
        Some(store) => CollateralFetcher::new(client, store)
            .refresh_blocking(&fmspc, ca, now)
            .map(|c| (*c).clone()),
        None => client.fetch_blocking(&fmspc, ca),
    }
}

/// `--kds URL` / `--kds-dir DIR`: where SEV-SNP verification in the CLI takes AMD's CRLs
/// from. The directory's CRL (verified against AMD's ARK on every read) is used while
/// fresh at `now`; otherwise, with a URL, the CRL is fetched now (blocking; the CLI runs
/// outside any async runtime) and stored into the directory when one is given.
struct CliKds {
    client: Option<KdsClient>,
    store: Option<VcekStore>,
}

impl SevCollateralSource for CliKds {
    fn crl(&self, product: SevGeneration, now: u64) -> Result<Arc<SevCrl>, AttestError> {
        let cached = self.store.as_ref().map(|s| s.load_crl(product));
        let Some(client) = &self.client else {
            return match cached {
                Some(r) => r.map(Arc::new),
                None => Err(AttestError::MissingCollateral {
                    what: format!("AMD {product} CRL: give --kds URL or --kds-dir DIR"),
                }),
            };
        };
        if let Some(Ok(c)) = &cached
            && now <= c.next_update()
        {
            return Ok(Arc::new(c.clone()));
        }
        match &self.store {
            Some(store) => KdsFetcher::new(client.clone(), store.clone(), now)
                .refresh_blocking(product, None, now)
                .map(|(c, _)| c),
            None => client.fetch_crl_blocking(product).map(Arc::new),
        }
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
    }))))
}

fn verify_tdx(
    quote_path: &Path,
    source: &CollateralArgs<'_>,
    allow: &[TcbStatus],
    now: u64,
    as_json: bool,
) -> Result<(), String> {
    let quote = binary_or_hex(read_file(quote_path)?);
    let collateral: Result<TdxCollateral, String> = match source.file {
        Some(p) => Ok(TdxCollateral::from_json(&read_file(p)?)
            .map_err(|e| format!("{}: {e}", p.display()))?),
        None => collateral_from(&quote, source.pccs, source.dir, now).map_err(|e| e.to_string()),
    };
    let mut policy = Policy::tdx_default();
    policy.min_tcb_status = allow
        .iter()
        .copied()
        .fold(policy.min_tcb_status, TcbStatus::min);

    let parsed = tdx::parse_quote(&quote);
    let result: Result<VerifiedPeer, String> = match (&parsed, &collateral) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(_), Err(e)) => Err(e.clone()),
        (Ok(p), Ok(c)) => policy
            .evaluate(
                &Evidence::Tdx {
                    quote: &quote,
                    collateral: c,
                },
                &p.report_data,
                now,
            )
            .map_err(|e| e.to_string()),
    };

    if as_json {
        let mut out = verdict(&result);
        out["backend"] = json!("tdx");
        out["now"] = json!(now);
        out["min_tcb_status"] = json!(format!("{:?}", policy.min_tcb_status));
        if let Ok(p) = &parsed {
            out["quote"] = tdx_quote_json(p);
            if result.is_err() {
                out["image_hash_unverified"] = json!(hex::encode(tdx::image_hash(&p.measurements)));
            }
        }
        if let Ok(c) = &collateral {
            out["collateral"] = collateral_json(c);
        }
        print_json(&out)?;
    } else {
        match &result {
            Ok(peer) => {
                println!("status:         valid");
                println!("tcb status:     {:?}", peer.tcb_status());
                println!("advisories:     {}", advisories(peer.advisory_ids()));
                println!("image hash:     {}", hex::encode(peer.image_hash()));
                println!(
                    "valid until:    {} ({})",
                    peer.valid_until(),
                    utc(peer.valid_until())
                );
                if let Measurements::Tdx(m) = peer.measurements() {
                    print_tdx_measurements(&m.mrtd, &m.rtmr, &m.td_attributes);
                }
                println!("report data:    {}", hex::encode(peer.report_data()));
            }
            Err(e) => {
                println!("status:         invalid: {e}");
                if let Ok(p) = &parsed {
                    println!("(the values below are parsed from the quote, NOT verified)");
                    println!(
                        "image hash:     {}",
                        hex::encode(tdx::image_hash(&p.measurements))
                    );
                    let m = &p.measurements;
                    print_tdx_measurements(&m.mrtd, &m.rtmr, &m.td_attributes);
                    println!("report data:    {}", hex::encode(p.report_data));
                }
            }
        }
        if let Ok(p) = &parsed {
            println!("quote version:  {}", p.version);
            println!(
                "fmspc:          {}",
                p.fmspc.map_or("unknown".into(), hex::encode)
            );
        }
        if let Ok(c) = &collateral {
            println!(
                "collateral:     TCB info {} .. {}, QE identity {} .. {} (fmspc {}); now {}",
                utc(c.tcb_info_issue),
                utc(c.tcb_info_next_update),
                utc(c.qe_identity_issue),
                utc(c.qe_identity_next_update),
                c.fmspc,
                utc(now)
            );
        }
    }
    result.map(|_| ())
}

fn advisories(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

fn print_tdx_measurements(mrtd: &[u8; 48], rtmr: &[[u8; 48]; 4], attrs: &[u8; 8]) {
    println!("mrtd:           {}", hex::encode(mrtd));
    for (i, r) in rtmr.iter().enumerate() {
        println!("rtmr{i}:          {}", hex::encode(r));
    }
    println!("td attributes:  {}", hex::encode(attrs));
}

fn tdx_quote_json(p: &ParsedTdQuote) -> Value {
    let m = &p.measurements;
    json!({
        "version": p.version,
        "fmspc": p.fmspc.map(hex::encode),
        "mrtd": hex::encode(m.mrtd),
        "rtmr": m.rtmr.iter().map(hex::encode).collect::<Vec<_>>(),
        "mr_config_id": hex::encode(m.mr_config_id),
        "mr_owner": hex::encode(m.mr_owner),
        "mr_owner_config": hex::encode(m.mr_owner_config),
        "td_attributes": hex::encode(m.td_attributes),
        "xfam": hex::encode(m.xfam),
        "report_data": hex::encode(p.report_data),
    })
}

fn collateral_json(c: &TdxCollateral) -> Value {
    json!({
        "fmspc": c.fmspc,
        "tcb_info_issue": c.tcb_info_issue,
        "tcb_info_next_update": c.tcb_info_next_update,
        "qe_identity_issue": c.qe_identity_issue,
        "qe_identity_next_update": c.qe_identity_next_update,
        "pck_ca": c.pck_ca.as_str(),
        "pck_crl_next_update": c.pck_crl_next_update,
        "root_ca_crl_next_update": c.root_ca_crl_next_update,
        "not_before": c
            .tcb_info_issue
            .max(c.qe_identity_issue)
            .max(c.pck_crl_issue)
            .max(c.root_ca_crl_issue),
        "not_after": c.expires_at(),
    })
}

fn verify_sev(
    report_path: &Path,
    vcek_path: &Path,
    chain_path: &Path,
    policy: &Policy,
    now: u64,
    as_json: bool,
) -> Result<(), String> {
    let report = binary_or_hex(read_file(report_path)?);
    let vcek = read_file(vcek_path)?;
    let chain = read_file(chain_path)?;
    let parsed = sev::parse_report(&report);
    let result: Result<VerifiedPeer, String> = match &parsed {
        Err(e) => Err(e.to_string()),
        Ok(info) => policy
            .evaluate(
                &Evidence::SevSnp {
                    report: &report,
                    vcek_der: &vcek,
                    chain_pem: &chain,
                },
                &info.report_data,
                now,
            )
            .map_err(|e| e.to_string()),
    };
    if as_json {
        let mut out = verdict(&result);
        out["backend"] = json!("sev-snp");
        out["now"] = json!(now);
        if let Ok(info) = &parsed {
            out["report"] = sev_report_json(info);
            if result.is_err() {
                out["image_hash_unverified"] = json!(hex::encode(sev::image_hash(info)));
            }
        }
        print_json(&out)?;
    } else {
        match &result {
            Ok(peer) => {
                println!("status:         valid");
                println!("tcb status:     {:?}", peer.tcb_status());
                println!("image hash:     {}", hex::encode(peer.image_hash()));
                println!(
                    "valid until:    {} ({})",
                    peer.valid_until(),
                    utc(peer.valid_until())
                );
            }
            Err(e) => {
                println!("status:         invalid: {e}");
                if parsed.is_ok() {
                    println!("(the values below are parsed from the report, NOT verified)");
                }
            }
        }
        if let Ok(info) = &parsed {
            if result.is_err() {
                println!("image hash:     {}", hex::encode(sev::image_hash(info)));
            }
            let t = info.reported_tcb;
            println!("version:        {}", info.version);
            println!("measurement:    {}", hex::encode(info.measurement));
            println!("host data:      {}", hex::encode(info.host_data));
            println!("report data:    {}", hex::encode(info.report_data));
            println!(
                "reported tcb:   bootloader {} tee {} snp {} microcode {}",
                t.bootloader, t.tee, t.snp, t.microcode
            );
            println!("chip id:        {}", hex::encode(info.chip_id));
            println!(
                "vmpl:           {} (debug {}, migration agent {})",
                info.vmpl, info.debug_allowed, info.migrate_ma_allowed
            );
        }
    }
    result.map(|_| ())
}

fn sev_report_json(info: &SevReportInfo) -> Value {
    let t = info.reported_tcb;
    json!({
        "version": info.version,
        "measurement": hex::encode(info.measurement),
        "host_data": hex::encode(info.host_data),
        "report_data": hex::encode(info.report_data),
        "chip_id": hex::encode(info.chip_id),
        "reported_tcb": {
            "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode,
        },
        "vmpl": info.vmpl,
        "debug_allowed": info.debug_allowed,
        "migrate_ma_allowed": info.migrate_ma_allowed,
    })
}

fn show(as_json: bool) -> Result<(), String> {
    let info = cocoon_service::tee::detect();
    let tsm_root = info.tsm_root.as_path();
    let tsm_present = info.tsm_present;
    let providers = &info.providers;
    let (tdx_dev, sev_dev) = (info.tdx_device, info.sev_device);
    let tee = info.backend.map(cocoon_service::tee::name);
    if as_json {
        return print_json(&json!({
            "tee": tee,
            "configfs_tsm": { "path": tsm_root, "present": tsm_present, "providers": providers },
            "tdx_guest_device": tdx_dev,
            "sev_guest_device": sev_dev,
        }));
    }
    match tee {
        Some(t) => println!("TEE:            {t}"),
        None => println!("no TEE detected"),
    }
    println!(
        "configfs-tsm:   {} ({}{})",
        tsm_root.display(),
        if tsm_present { "present" } else { "absent" },
        if providers.is_empty() {
            String::new()
        } else {
            format!(", provider {}", providers.join(", "))
        }
    );
    let yn = |b: bool| if b { "present" } else { "absent" };
    println!("/dev/tdx_guest: {}", yn(tdx_dev));
    println!("/dev/sev-guest: {}", yn(sev_dev));
    Ok(())
}

/// `gen-cert` and `verify-cert`: RA-TLS certificates (`cocoon-ratls`).
pub(crate) mod ratls {
    use super::{GenCertArgs, VerifyCertArgs, now_or, print_json, read_file, utc};
    use cocoon_attest::{
        AttestError, Backend, CollateralStore, Policy, SimKey, TdxCollateral, VerifiedPeer,
    };
    use cocoon_ratls::cert::{
        EvidenceEnvelope, EvidenceSource, Identity, SimSource, TsmSevSource, TsmTdxSource,
    };
    use cocoon_ratls::verifier::{CollateralSource, RatlsVerifier, VerifierConfig, fixed_clock};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use serde_json::json;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    pub(super) fn pem(label: &str, der: &[u8]) -> String {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new(label, der), config)
    }

    fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(err)?;
        // An existing file keeps its mode through `open`; set it explicitly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
        f.write_all(data).map_err(err)
    }

    pub fn gen_cert(args: GenCertArgs) -> Result<(), String> {
        let now = now_or(args.now)?;
        let (source, kind): (Box<dyn EvidenceSource>, &str) = match args.tee.as_str() {
            "sim" => {
                std::fs::create_dir_all(&args.out)
                    .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
                let path = args
                    .sim_key
                    .clone()
                    .unwrap_or_else(|| args.out.join("sim-key.pk8"));
                let key = SimKey::load_or_create(&path).map_err(|e| e.to_string())?;
                (Box::new(SimSource(key)), "sim")
            }
            "tdx" => {
                let root = Path::new(cocoon_attest::tsm::DEFAULT_ROOT);
                if !root.is_dir() {
                    return Err(format!("no TEE: {} not found", root.display()));
                }
                (Box::new(TsmTdxSource::system()), "tdx")
            }
            "sev-snp" => {
                let root = Path::new(cocoon_attest::tsm::DEFAULT_ROOT);
                if !root.is_dir() {
                    return Err(format!("no TEE: {} not found", root.display()));
                }
                (Box::new(TsmSevSource::system()), "sev-snp")
            }
            other => return Err(format!("unknown TEE {other:?} (one of: sim, tdx, sev-snp)")),
        };
        let id = Identity::generate(source.as_ref(), now).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&args.out)
            .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
        let cert_path = args.out.join("cert.pem");
        let key_path = args.out.join("key.pem");
        write_file(
            &key_path,
            pem("PRIVATE KEY", id.key_pkcs8()).as_bytes(),
            0o600,
        )?;
        write_file(
            &cert_path,
            pem("CERTIFICATE", id.cert_der()).as_bytes(),
            0o644,
        )?;
        let image_hash = image_hash_line(&id, now);
        println!("certificate:    {}", cert_path.display());
        println!("key:            {} (mode 0600)", key_path.display());
        println!("public key:     {}", hex::encode(id.public_key()));
        println!("evidence:       {kind}");
        println!("image hash:     {image_hash}");
        println!(
            "validity:       {} .. {}",
            utc(id.not_before()),
            utc(id.not_after())
        );
        Ok(())
    }

    /// `verify-cert --pccs`: cached collateral when valid, else fetched now (blocking; the
    /// CLI runs outside any async runtime).
    struct CliCollateral {
        pccs: Option<String>,
        dir: Option<PathBuf>,
    }

    impl CollateralSource for CliCollateral {
        fn collateral_for(&self, quote: &[u8], now: u64) -> Result<TdxCollateral, AttestError> {
            super::collateral_from(quote, self.pccs.as_deref(), self.dir.as_deref(), now)
        }
    }

    /// The image hash to print after `gen-cert`: for sim, as the verifier reports it; for
    /// TDX and SEV-SNP, computed from the quote/report body (no collateral needed), marked
    /// unverified.
    pub(super) fn image_hash_line(id: &Identity, now: u64) -> String {
        let env = match EvidenceEnvelope::decode(id.evidence()) {
            Ok(env) => env,
            Err(e) => return format!("unknown ({e})"),
        };
        if let EvidenceEnvelope::Sim(_) = env {
            let mut policy = Policy::sim_test();
            policy.allowed_backends = vec![Backend::Sim];
            let mut cfg = VerifierConfig::new(policy);
            cfg.clock = fixed_clock(now);
            cfg.cache_ttl_secs = 0;
            return RatlsVerifier::new(cfg)
                .verify_cert(id.cert_der(), &[])
                .map(|p| hex::encode(p.image_hash()))
                .unwrap_or_else(|e| format!("unknown ({e})"));
        }
        match env.unverified_image_hash() {
            Ok(h) => format!(
                "{} (computed from the evidence; not verified)",
                hex::encode(h)
            ),
            Err(e) => format!("unknown ({e})"),
        }
    }

    fn backend_name(b: Backend) -> &'static str {
        match b {
            Backend::Tdx => "tdx",
            Backend::SevSnp => "sev-snp",
            Backend::Sim => "sim",
            Backend::Unattested => "unattested",
        }
    }

    pub fn verify_cert(args: VerifyCertArgs) -> Result<(), String> {
        let now = now_or(args.now)?;
        let mut policy = cocoon_service::identity::peer_policy(&args.policy, args.allow_sim)?;
        policy.sev_collateral = super::kds_source(args.kds.as_deref(), args.kds_dir.as_deref())?;
        let raw = read_file(&args.cert)?;
        let der: CertificateDer<'static> = if raw.trim_ascii_start().starts_with(b"-----BEGIN") {
            CertificateDer::from_pem_slice(&raw)
                .map_err(|e| format!("{}: no PEM certificate: {e:?}", args.cert.display()))?
        } else {
            CertificateDer::from(raw)
        };
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = fixed_clock(now);
        cfg.cache_ttl_secs = 0;
        if args.pccs.is_some() {
            cfg.collateral = Arc::new(CliCollateral {
                pccs: args.pccs.clone(),
                dir: args.collateral_dir.clone(),
            });
        } else if let Some(dir) = &args.collateral_dir {
            cfg.collateral = Arc::new(CollateralStore::new(dir.clone()));
        }
        let result: Result<VerifiedPeer, String> = RatlsVerifier::new(cfg)
            .verify_cert(&der, &[])
            .map_err(|e| e.to_string());
        // Unverified facts from the certificate itself, for display.
        use x509_parser::prelude::FromDer;
        let parsed = x509_parser::certificate::X509Certificate::from_der(&der)
            .ok()
            .map(|(_, c)| {
                (
                    c.validity().not_before.timestamp(),
                    c.validity().not_after.timestamp(),
                    hex::encode(c.public_key().subject_public_key.data.as_ref()),
                )
            });
        if args.json {
            let mut out = match &result {
                Ok(peer) => json!({
                    "valid": true,
                    "error": null,
                    "backend": backend_name(peer.backend()),
                    "tcb_status": format!("{:?}", peer.tcb_status()),
                    "image_hash": hex::encode(peer.image_hash()),
                    "public_key": peer.public_key().map(hex::encode),
                    "valid_until": peer.valid_until(),
                }),
                Err(e) => json!({ "valid": false, "error": e }),
            };
            out["policy"] = json!(args.policy);
            out["now"] = json!(now);
            if let Some((nb, na, pk)) = &parsed {
                out["not_before"] = json!(nb);
                out["not_after"] = json!(na);
                if result.is_err() {
                    out["public_key_unverified"] = json!(pk);
                }
            }
            print_json(&out)?;
        } else {
            match &result {
                Ok(peer) => {
                    println!("status:         accepted (policy {})", args.policy);
                    println!("backend:        {}", backend_name(peer.backend()));
                    println!("tcb status:     {:?}", peer.tcb_status());
                    println!("image hash:     {}", hex::encode(peer.image_hash()));
                    println!(
                        "public key:     {}",
                        peer.public_key().map_or("none".into(), hex::encode)
                    );
                    println!(
                        "evidence until: {} ({})",
                        peer.valid_until(),
                        utc(peer.valid_until())
                    );
                }
                Err(e) => {
                    println!("status:         rejected (policy {}): {e}", args.policy);
                    if let Some((_, _, pk)) = &parsed {
                        println!(
                            "(the values below are parsed from the certificate, NOT verified)"
                        );
                        println!("public key:     {pk}");
                    }
                }
            }
            if let Some((nb, na, _)) = parsed {
                let t = |x: i64| u64::try_from(x).map_or(x.to_string(), utc);
                println!("validity:       {} .. {}; now {}", t(nb), t(na), utc(now));
            }
        }
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_772_707_833), "2026-03-05T10:50:33Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn hex_detection() {
        assert_eq!(binary_or_hex(b"0x0a0B\n".to_vec()), vec![0x0a, 0x0b]);
        assert_eq!(binary_or_hex(b"abc".to_vec()), b"abc".to_vec());
        assert_eq!(binary_or_hex(vec![4, 0, 2]), vec![4, 0, 2]);
    }

    #[test]
    fn pem_base64() {
        assert_eq!(
            ratls::pem("X", b"foobar!"),
            "-----BEGIN X-----\nZm9vYmFyIQ==\n-----END X-----\n"
        );
        assert!(ratls::pem("X", b"fo").contains("\nZm8=\n"));
    }

    #[test]
    fn gen_cert_image_hash_from_quote_without_collateral() {
        use cocoon_ratls::cert::{FixedSource, Identity, SimSource};
        let quote = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testvectors/attest/cocoon_quote.dat"
        ))
        .unwrap();
        let id = Identity::generate(&FixedSource(quote), 1_772_707_833).unwrap();
        assert_eq!(
            ratls::image_hash_line(&id, 1_772_707_833),
            "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436 \
             (computed from the evidence; not verified)"
        );
        let sim = SimSource(cocoon_attest::SimKey::generate().unwrap());
        let id = Identity::generate(&sim, 1_772_707_833).unwrap();
        assert_eq!(
            ratls::image_hash_line(&id, 1_772_707_833),
            hex::encode(cocoon_attest::sim::sim_image_hash())
        );
        let id = Identity::generate(&FixedSource(b"junk".to_vec()), 1_772_707_833).unwrap();
        assert!(ratls::image_hash_line(&id, 1_772_707_833).starts_with("unknown ("));
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(parse_status("uptodate").unwrap(), TcbStatus::UpToDate);
        assert!(parse_status("bogus").is_err());
    }
}
