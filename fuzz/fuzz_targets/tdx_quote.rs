//! TDX quote parsing and the full policy evaluation on arbitrary bytes.
//!
//! The first byte chooses what the rest is:
//! * `0 mod 4`: a quote, parsed with `tdx::parse_quote` and evaluated with
//!   `Policy::evaluate` (`Evidence::Tdx`) against the committed sample collateral
//!   (`testvectors/attest/tdx_quote_collateral.json`, at 2025-07-04);
//! * `1 mod 4`: the same with COCOON's 90c06f collateral at 1772707833;
//! * `2 mod 4`: collateral JSON, parsed with `TdxCollateral::from_json` and, when it parses,
//!   used to evaluate the real sample quote;
//! * `3 mod 4`: a quote evaluated with a lax policy (any TCB status, any root key), which
//!   gets further into the checks.
//!
//! What must hold: no panic; whatever is accepted parses with `parse_quote` to the same
//! report data and image hash.
#![no_main]

use cocoon_attest::tdx::{self, TdxCollateral};
use cocoon_attest::{Evidence, Policy, TcbStatus};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SAMPLE_QUOTE: &[u8] = include_bytes!("../../testvectors/attest/tdx_quote");
const SAMPLE_COLLATERAL: &[u8] =
    include_bytes!("../../testvectors/attest/tdx_quote_collateral.json");
const COCOON_COLLATERAL: &[u8] =
    include_bytes!("../../testvectors/attest/cocoon_quote_collateral_90c06f.json");
const SAMPLE_NOW: u64 = 1_751_630_400;
const COCOON_NOW: u64 = 1_772_707_833;

fn collaterals() -> &'static (TdxCollateral, TdxCollateral) {
    static C: OnceLock<(TdxCollateral, TdxCollateral)> = OnceLock::new();
    C.get_or_init(|| {
        (
            TdxCollateral::from_json(SAMPLE_COLLATERAL).expect("sample collateral"),
            TdxCollateral::from_json(COCOON_COLLATERAL).expect("cocoon collateral"),
        )
    })
}

fn evaluate(policy: &Policy, quote: &[u8], collateral: &TdxCollateral, now: u64) {
    let parsed = tdx::parse_quote(quote);
    let expected = parsed.as_ref().map_or([0; 64], |p| p.report_data);
    let ev = Evidence::Tdx { quote, collateral };
    match policy.evaluate(&ev, &expected, now) {
        Ok(peer) => {
            let p = parsed.expect("accepted quote must parse");
            assert_eq!(peer.report_data(), &p.report_data);
            assert_eq!(peer.image_hash(), &tdx::image_hash(&p.measurements));
            assert!(peer.valid_until() >= now);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (sample, cocoon) = collaterals();
    match mode % 4 {
        0 => evaluate(&Policy::tdx_default(), rest, sample, SAMPLE_NOW),
        1 => evaluate(&Policy::tdx_default(), rest, cocoon, COCOON_NOW),
        2 => {
            if let Ok(c) = TdxCollateral::from_json(rest) {
                let _ = c.check_window(SAMPLE_NOW, Some(86_400));
                evaluate(&Policy::tdx_default(), SAMPLE_QUOTE, &c, SAMPLE_NOW);
            }
        }
        _ => {
            let mut lax = Policy::tdx_default();
            lax.min_tcb_status = TcbStatus::Revoked;
            evaluate(&lax, rest, sample, SAMPLE_NOW);
            evaluate(&lax, rest, cocoon, COCOON_NOW);
        }
    }
});
