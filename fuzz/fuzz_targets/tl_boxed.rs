//! Every boxed type of the scheme, the id-dispatched `roundtrip_boxed` and the JSON codec on
//! arbitrary bytes. Our encoding is canonical, so whatever decodes must re-encode to exactly
//! the input; the typed decoders are at least as strict as the JSON one.
//!
//! One documented exception: error-text fields (`tcp.queryError.message`, `*.error`,
//! `*_debug`, see `schema::string_kind`) decode invalid UTF-8 lossily, so their re-encoding
//! holds U+FFFD instead of the input bytes. A difference is accepted only when it is exactly
//! that: the JSON view of the input, with its non-UTF-8 strings (`{"hex": ...}`) replaced by
//! their lossy text, equals the JSON view of the re-encoding. Set `COCOON_FUZZ_STRICT=1` to
//! reject that too.
#![no_main]

use cocoon_tl::{BOXED_TYPES, json, roundtrip_boxed};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("COCOON_FUZZ_STRICT").is_some_and(|v| v != "0"))
}

/// `{"hex": ...}` strings replaced by their lossy UTF-8 text, not looking inside nested
/// `{"tl": ...}` objects (those stay raw bytes for the typed codec).
fn lossy(v: &Value) -> Value {
    match v {
        Value::Object(o) if o.len() == 1 && o.contains_key("tl") => v.clone(),
        Value::Object(o) if o.len() == 1 && o.contains_key("hex") => {
            let raw = hex::decode(o["hex"].as_str().unwrap_or_default()).unwrap_or_default();
            Value::String(String::from_utf8_lossy(&raw).into_owned())
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), lossy(x))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(lossy).collect()),
        other => other.clone(),
    }
}

fn check_reencoding(what: &str, input: &[u8], out: &[u8]) {
    if out == input {
        return;
    }
    assert!(!strict(), "{what}: re-encoding differs from the input");
    let before = json::decode_boxed(input)
        .unwrap_or_else(|e| panic!("{what}: re-encoding differs, and JSON rejects the input: {e}"));
    let after = json::decode_boxed(out)
        .unwrap_or_else(|e| panic!("{what}: JSON rejects the re-encoding: {e}"));
    assert_eq!(
        lossy(&before),
        after,
        "{what}: re-encoding differs from the input beyond lossy UTF-8 text"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut typed_ok = None;
    for (name, roundtrip) in BOXED_TYPES {
        match roundtrip(data) {
            Ok(out) => {
                check_reencoding(name, data, &out);
                // The re-encoding is canonical.
                assert_eq!(
                    roundtrip(&out).as_deref(),
                    Ok(&out[..]),
                    "{name}: not a fixpoint"
                );
                typed_ok = Some(*name);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let by_id = match roundtrip_boxed(data) {
        None => false,
        Some(Ok(out)) => {
            check_reencoding("roundtrip_boxed", data, &out);
            true
        }
        Some(Err(e)) => {
            let _ = e.to_string();
            false
        }
    };
    if let Some(name) = typed_ok {
        assert!(by_id, "{name} decodes it but roundtrip_boxed does not");
    }
    match json::decode_boxed(data) {
        Ok(value) => {
            let again = json::encode_boxed(&value)
                .unwrap_or_else(|e| panic!("decoded JSON does not encode: {e}: {value}"));
            assert_eq!(
                again, data,
                "JSON re-encoding differs from the input: {value}"
            );
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(
                !by_id,
                "typed decoder accepts what the JSON decoder rejects: {e}"
            );
        }
    }
});
