//! Offline inspection of evidence (`cocoon attest verify`): a TDX quote or an SEV-SNP report
//! is verified under a policy, taking its own `report_data` as the expected value (there is
//! no key to bind it to), and described as JSON and as text lines. What is parsed but not
//! verified is marked so.

use serde_json::{Value, json};

use crate::model::{Backend, Measurements, TcbStatus, TdxMeasurements, VerifiedPeer};
use crate::policy::{Evidence, Policy};
use crate::sev::{self, SevReportInfo};
use crate::tdx::{self, ParsedTdQuote, TdxCollateral};

/// A verdict and its description.
#[derive(Debug)]
pub struct Inspection {
    /// The verdict; a refusal as its message.
    pub result: Result<VerifiedPeer, String>,
    /// The JSON description (keys in the order they are written).
    pub json: Value,
    /// The text description, one line each.
    pub text: Vec<String>,
}

/// Raw bytes, or hex text (ASCII hex digits, whitespace, optional `0x`) decoded.
pub fn binary_or_hex(bytes: Vec<u8>) -> Vec<u8> {
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
pub fn utc(t: u64) -> String {
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

/// `valid`, `error` and, when valid, the verified facts; then `backend` and `now`.
fn verdict(result: &Result<VerifiedPeer, String>, backend: Backend, now: u64) -> Value {
    let mut out = match result {
        Ok(peer) => json!({
            "valid": true,
            "error": null,
            "tcb_status": format!("{:?}", peer.tcb_status()),
            "advisory_ids": peer.advisory_ids(),
            "image_hash": hex::encode(peer.image_hash()),
            "valid_until": peer.valid_until(),
        }),
        Err(e) => json!({ "valid": false, "error": e }),
    };
    out["backend"] = json!(backend.name());
    out["now"] = json!(now);
    out
}

/// The text lines of a valid verdict: status, TCB status, the advisories (when
/// `with_advisories`: TDX), image hash and expiry.
fn valid_lines(t: &mut Vec<String>, peer: &VerifiedPeer, with_advisories: bool) {
    t.push("status:         valid".to_string());
    t.push(format!("tcb status:     {:?}", peer.tcb_status()));
    if with_advisories {
        t.push(format!(
            "advisories:     {}",
            advisories(peer.advisory_ids())
        ));
    }
    t.push(format!(
        "image hash:     {}",
        hex::encode(peer.image_hash())
    ));
    t.push(format!(
        "valid until:    {} ({})",
        peer.valid_until(),
        utc(peer.valid_until())
    ));
}

/// Verifies a TDX quote with `collateral` (or why there is none) under `policy` at `now`.
pub fn inspect_tdx_quote(
    quote: &[u8],
    collateral: Result<TdxCollateral, String>,
    policy: &Policy,
    now: u64,
) -> Inspection {
    let parsed = tdx::parse_quote(quote);
    let result: Result<VerifiedPeer, String> = match (&parsed, &collateral) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(_), Err(e)) => Err(e.clone()),
        (Ok(p), Ok(c)) => policy
            .evaluate(
                &Evidence::Tdx {
                    quote,
                    collateral: c,
                },
                &p.report_data,
                now,
            )
            .map_err(|e| e.to_string()),
    };
    let mut out = verdict(&result, Backend::Tdx, now);
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
    let text = tdx_text(&result, parsed.as_ref().ok(), collateral.as_ref().ok(), now);
    Inspection {
        result,
        json: out,
        text,
    }
}

fn tdx_text(
    result: &Result<VerifiedPeer, String>,
    parsed: Option<&ParsedTdQuote>,
    collateral: Option<&TdxCollateral>,
    now: u64,
) -> Vec<String> {
    let mut t = Vec::new();
    match result {
        Ok(peer) => {
            valid_lines(&mut t, peer, true);
            if let Measurements::Tdx(m) = peer.measurements() {
                tdx_measurements(&mut t, &m.mrtd, &m.rtmr, &m.td_attributes);
            }
            t.push(format!(
                "report data:    {}",
                hex::encode(peer.report_data())
            ));
        }
        Err(e) => {
            t.push(format!("status:         invalid: {e}"));
            if let Some(p) = parsed {
                t.push("(the values below are parsed from the quote, NOT verified)".into());
                t.push(format!(
                    "image hash:     {}",
                    hex::encode(tdx::image_hash(&p.measurements))
                ));
                let m = &p.measurements;
                tdx_measurements(&mut t, &m.mrtd, &m.rtmr, &m.td_attributes);
                t.push(format!("report data:    {}", hex::encode(p.report_data)));
            }
        }
    }
    if let Some(p) = parsed {
        t.push(format!("quote version:  {}", p.version));
        t.push(format!(
            "fmspc:          {}",
            p.fmspc.map_or("unknown".into(), hex::encode)
        ));
    }
    if let Some(c) = collateral {
        t.push(format!(
            "collateral:     TCB info {} .. {}, QE identity {} .. {} (fmspc {}); now {}",
            utc(c.tcb_info_issue),
            utc(c.tcb_info_next_update),
            utc(c.qe_identity_issue),
            utc(c.qe_identity_next_update),
            c.fmspc,
            utc(now)
        ));
    }
    t
}

fn advisories(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

fn tdx_measurements(t: &mut Vec<String>, mrtd: &[u8; 48], rtmr: &[[u8; 48]; 4], attrs: &[u8; 8]) {
    t.push(format!("mrtd:           {}", hex::encode(mrtd)));
    for (i, r) in rtmr.iter().enumerate() {
        t.push(format!("rtmr{i}:          {}", hex::encode(r)));
    }
    t.push(format!("td attributes:  {}", hex::encode(attrs)));
}

fn tdx_quote_json(p: &ParsedTdQuote) -> Value {
    let mut v = json!({
        "version": p.version,
        "fmspc": p.fmspc.map(hex::encode),
    });
    if let (Value::Object(o), Value::Object(m)) = (&mut v, tdx_measurements_json(&p.measurements)) {
        o.extend(m);
        o.insert("report_data".into(), hex::encode(p.report_data).into());
    }
    v
}

/// A TD's registers as JSON (hex): `mrtd`, `rtmr`, `mr_config_id`, `mr_owner`,
/// `mr_owner_config`, `td_attributes`, `xfam`.
pub fn tdx_measurements_json(m: &TdxMeasurements) -> Value {
    json!({
        "mrtd": hex::encode(m.mrtd),
        "rtmr": m.rtmr.iter().map(hex::encode).collect::<Vec<_>>(),
        "mr_config_id": hex::encode(m.mr_config_id),
        "mr_owner": hex::encode(m.mr_owner),
        "mr_owner_config": hex::encode(m.mr_owner_config),
        "td_attributes": hex::encode(m.td_attributes),
        "xfam": hex::encode(m.xfam),
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

/// Verifies an SEV-SNP report with its VCEK (DER) and ASK/ARK chain (PEM) under `policy` at
/// `now` (AMD's CRL comes from `policy.sev_collateral`).
pub fn inspect_sev_report(
    report: &[u8],
    vcek_der: &[u8],
    chain_pem: &[u8],
    policy: &Policy,
    now: u64,
) -> Inspection {
    let parsed = sev::parse_report(report);
    let result: Result<VerifiedPeer, String> = match &parsed {
        Err(e) => Err(e.to_string()),
        Ok(info) => policy
            .evaluate(
                &Evidence::SevSnp {
                    report,
                    vcek_der,
                    chain_pem,
                },
                &info.report_data,
                now,
            )
            .map_err(|e| e.to_string()),
    };
    let mut out = verdict(&result, Backend::SevSnp, now);
    if let Ok(info) = &parsed {
        out["report"] = sev_report_json(info);
        if result.is_err() {
            out["image_hash_unverified"] = json!(hex::encode(sev::image_hash(info)));
        }
    }
    let text = sev_text(&result, parsed.as_ref().ok());
    Inspection {
        result,
        json: out,
        text,
    }
}

fn sev_text(result: &Result<VerifiedPeer, String>, parsed: Option<&SevReportInfo>) -> Vec<String> {
    let mut t = Vec::new();
    match result {
        Ok(peer) => valid_lines(&mut t, peer, false),
        Err(e) => {
            t.push(format!("status:         invalid: {e}"));
            if parsed.is_some() {
                t.push("(the values below are parsed from the report, NOT verified)".into());
            }
        }
    }
    if let Some(info) = parsed {
        if result.is_err() {
            t.push(format!(
                "image hash:     {}",
                hex::encode(sev::image_hash(info))
            ));
        }
        let r = info.reported_tcb;
        t.push(format!("version:        {}", info.version));
        t.push(format!("measurement:    {}", hex::encode(info.measurement)));
        t.push(format!("host data:      {}", hex::encode(info.host_data)));
        t.push(format!("report data:    {}", hex::encode(info.report_data)));
        t.push(format!(
            "reported tcb:   bootloader {} tee {} snp {} microcode {}",
            r.bootloader, r.tee, r.snp, r.microcode
        ));
        t.push(format!("chip id:        {}", hex::encode(info.chip_id)));
        t.push(format!(
            "vmpl:           {} (debug {}, migration agent {})",
            info.vmpl, info.debug_allowed, info.migrate_ma_allowed
        ));
    }
    t
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

/// The statuses `allow` names added to `policy`'s minimum: every status at least as good as
/// the worst of them is accepted.
pub fn allow_statuses(policy: &mut Policy, allow: &[TcbStatus]) {
    policy.min_tcb_status = allow
        .iter()
        .copied()
        .fold(policy.min_tcb_status, TcbStatus::min);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_vectors::vector;

    const COCOON_NOW: u64 = 1_772_707_833;
    const COCOON_IMAGE_HASH: &str =
        "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436";

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
    fn tdx_quote_described_valid_and_invalid() {
        let quote = vector("cocoon_quote.dat");
        let collateral =
            TdxCollateral::from_json(&vector("cocoon_quote_collateral_90c06f.json")).unwrap();
        let policy = Policy::tdx_default();
        let ok = inspect_tdx_quote(&quote, Ok(collateral.clone()), &policy, COCOON_NOW);
        assert!(ok.result.is_ok());
        assert_eq!(ok.json["valid"], true);
        assert_eq!(ok.json["image_hash"], COCOON_IMAGE_HASH);
        assert_eq!(ok.json["collateral"]["fmspc"], collateral.fmspc.as_str());
        assert_eq!(ok.text[0], "status:         valid");
        assert!(ok.text.iter().any(|l| l.starts_with("rtmr3:")));
        assert!(
            ok.text
                .last()
                .unwrap()
                .starts_with("collateral:     TCB info")
        );

        let missing = inspect_tdx_quote(&quote, Err("no collateral".into()), &policy, COCOON_NOW);
        assert_eq!(missing.result.unwrap_err(), "no collateral");
        assert_eq!(missing.json["image_hash_unverified"], COCOON_IMAGE_HASH);
        assert!(missing.json.get("collateral").is_none());
        assert_eq!(missing.text[0], "status:         invalid: no collateral");
        assert_eq!(
            missing.text[1],
            "(the values below are parsed from the quote, NOT verified)"
        );

        let junk = inspect_tdx_quote(b"junk", Ok(collateral), &policy, COCOON_NOW);
        assert!(junk.result.is_err());
        assert!(junk.json.get("quote").is_none());
        assert_eq!(
            junk.text.len(),
            2,
            "status and collateral only: {:?}",
            junk.text
        );
    }

    #[test]
    fn sev_report_described_with_its_parsed_fields() {
        let report = sev::decode_report_hex(&vector("sev/report_milan.hex")).unwrap();
        let vcek = vector("sev/vcek_milan.der");
        let chain = vector("sev/cert_chain_milan");
        // The default floors refuse this 2022 sample.
        let i = inspect_sev_report(&report, &vcek, &chain, &Policy::sev_default(), COCOON_NOW);
        assert!(i.result.unwrap_err().contains("below the Milan minimum"));
        assert_eq!(i.json["backend"], "sev-snp");
        assert_eq!(
            i.json["report"]["chip_id"].as_str().map(str::len),
            Some(128)
        );
        assert!(i.json["image_hash_unverified"].is_string());
        assert!(i.text.iter().any(|l| l.starts_with("chip id:")));
        let garbage = inspect_sev_report(b"x", &vcek, &chain, &Policy::sev_default(), 0);
        assert_eq!(garbage.text.len(), 1);
    }

    #[test]
    fn allowed_statuses_lower_the_minimum_to_the_worst() {
        let mut p = Policy::tdx_default();
        allow_statuses(
            &mut p,
            &[TcbStatus::SWHardeningNeeded, TcbStatus::OutOfDate],
        );
        assert_eq!(p.min_tcb_status, TcbStatus::OutOfDate);
    }
}
