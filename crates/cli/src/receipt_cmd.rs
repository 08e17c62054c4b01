//! `cocoon receipt verify FILE`: checks a saved answer receipt (the JSON that
//! `GET /v1/receipts/{id}` serves) offline: both signatures, both certificates and their
//! evidence under a policy at the time the proxy signed (collateral from files or a PCCS),
//! the images and the model against the hashes given, the two parts against each other, the
//! readable fields against the signed ones and, when given, the answer bytes.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use cocoon_ratls::verifier::fixed_clock;
use cocoon_receipt::{Expect, Receipt, Trust};
use serde_json::json;

use crate::attest_cmd::PeerSources;

#[derive(Subcommand)]
pub(crate) enum ReceiptCommand {
    /// Verify a saved answer receipt offline; exit 1 when it does not hold.
    Verify(Box<VerifyArgs>),
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The receipt document (JSON from `GET /v1/receipts/{id}`).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Policy for both certificates: `tdx`, `sev-snp`, `any`, `sim` (test networks) or a
    /// JSON policy file (docs/ra-tls.md).
    #[arg(long, value_name = "P|FILE", default_value = "any")]
    policy: String,
    /// Also accept simulated evidence (test networks only).
    #[arg(long)]
    allow_sim: bool,
    /// An allowed worker image hash (hex; the root's `worker_hashes`, `cocoon root show`),
    /// repeatable; at least one.
    #[arg(long = "worker-hash", value_name = "HEX", required = true)]
    worker_hashes: Vec<String>,
    /// An allowed proxy image hash (the root's `proxy_hashes`), repeatable; none: not
    /// checked.
    #[arg(long = "proxy-hash", value_name = "HEX")]
    proxy_hashes: Vec<String>,
    /// An allowed full model id (`Name@revision:sha256`), repeatable; none: the receipt's
    /// own model must be given with `--model-hash`.
    #[arg(long = "model", value_name = "ID")]
    models: Vec<String>,
    /// An allowed model hash (the root's `model_hashes`), repeatable.
    #[arg(long = "model-hash", value_name = "HEX")]
    model_hashes: Vec<String>,
    /// The answer body as received (checked against the worker's hash and length).
    #[arg(long, value_name = "FILE")]
    answer: Option<PathBuf>,
    #[command(flatten)]
    sources: PeerSources,
    /// Verification time (Unix seconds); defaults to when the proxy signed.
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: ReceiptCommand) -> Result<(), String> {
    match command {
        ReceiptCommand::Verify(args) => verify(*args),
    }
}

fn hash(s: &str) -> Result<[u8; 32], String> {
    let b = hex::decode(s.trim()).map_err(|e| format!("{s:?}: not hex: {e}"))?;
    b.try_into()
        .map_err(|_| format!("{s:?}: a hash is 32 bytes (64 hex digits)"))
}

fn hashes(v: &[String]) -> Result<Vec<[u8; 32]>, String> {
    v.iter().map(|s| hash(s)).collect()
}

fn verify(args: VerifyArgs) -> Result<(), String> {
    let text = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let doc: Receipt = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a receipt document: {e}", args.file.display()))?;
    if doc.object != cocoon_receipt::OBJECT {
        return Err(format!(
            "{}: object is {:?}, not {:?}",
            args.file.display(),
            doc.object,
            cocoon_receipt::OBJECT
        ));
    }
    let at = match args.now {
        Some(t) => t,
        None => doc
            .signed_at()
            .ok_or("the proxy's receipt does not decode")?,
    };
    let policy = cocoon_service::identity::peer_policy(&args.policy, args.allow_sim)?;
    let verifier = args.sources.verifier(policy, fixed_clock(at))?;
    let workers = hashes(&args.worker_hashes)?;
    let proxies = hashes(&args.proxy_hashes)?;
    let mut models = hashes(&args.model_hashes)?;
    models.extend(
        args.models
            .iter()
            .map(|m| cocoon_receipt::sha256(m.as_bytes())),
    );
    if models.is_empty() {
        return Err("name the allowed models with --model or --model-hash".into());
    }
    let answer = match &args.answer {
        Some(p) => {
            let b = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Some((cocoon_receipt::sha256(&b), b.len() as u64))
        }
        None => None,
    };
    let trust = Trust {
        proxy_verifier: &verifier,
        worker_verifier: &verifier,
        proxy_hashes: (!proxies.is_empty()).then_some(&proxies[..]),
        worker_hashes: &workers,
        model_hashes: &models,
    };
    let expect = Expect {
        answer,
        ..Expect::default()
    };
    let checked = doc
        .parts()
        .and_then(|parts| cocoon_receipt::verify(&parts, &trust, &expect))
        .and_then(|v| doc.check_fields(&v).map(|()| v));
    let v = match checked {
        Ok(v) => v,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    json!({"valid": false, "id": doc.id, "error": e.to_string()})
                );
            } else {
                println!("receipt {}: REFUSED: {e}", doc.id);
            }
            return Err(format!("the receipt does not hold: {e}"));
        }
    };
    if args.json {
        let out = json!({
            "valid": true,
            "id": doc.id,
            "verified_at": at,
            "model": doc.model,
            "usage": doc.usage,
            "answer_checked": args.answer.is_some(),
            "worker": v.worker_evidence,
            "proxy": v.proxy_evidence,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let ev = |e: &cocoon_receipt::Evidence| {
        format!(
            "{} image {} TCB {}{}",
            e.backend,
            e.image_hash,
            e.tcb_status,
            e.gpu
                .as_deref()
                .map(|g| format!(", GPU {g}"))
                .unwrap_or_default()
        )
    };
    println!("receipt {}: valid (certificates checked at {at})", doc.id);
    println!("  model    {}", doc.model);
    println!("  worker   {}", ev(&v.worker_evidence));
    println!("  proxy    {}", ev(&v.proxy_evidence));
    println!(
        "  request  sha256 {}; answer sha256 {} ({} bytes{})",
        doc.request_sha256,
        doc.answer_sha256,
        doc.answer_bytes,
        if args.answer.is_some() {
            ", matches the file"
        } else {
            ""
        }
    );
    let u = &doc.usage;
    println!(
        "  usage    {} prompt ({} cached), {} completion ({} reasoning); coefficient {}",
        u.prompt_tokens, u.cached_tokens, u.completion_tokens, u.reasoning_tokens, u.coefficient
    );
    println!(
        "  billed   {} tokens x {} nanoTON = {} nanoTON",
        u.billed_tokens, u.price_per_token, u.cost_nanoton
    );
    Ok(())
}
