//! Schema-driven conversion between TL bytes and JSON, for `cocoon tl decode/encode`, golden
//! vectors and cross-checks of the generated code.
//!
//! JSON shape: an object is `{"@type": "tcp.query", "id": 5, "data": ...}` with its fields in
//! declaration order. `int`/`long` are numbers (strings are accepted on input), `double` a
//! number (or `"NaN"`, `"inf"`, `"-inf"`), `int128`/`int256` hex strings, `Bool` true/false,
//! vectors arrays. A `string` is a JSON string, or `{"hex": "..."}` when it is not UTF-8.
//! A `bytes` value is a hex string, or `{"tl": {...}}` when it holds exactly one boxed TL
//! object that we know (re-encoding that object gives the same bytes). A `flags:#` field is
//! shown as a number; on input it may be omitted and is then computed from the conditional
//! fields present.

use crate::codec::{Error, ErrorKind, Reader, write};
use crate::schema::{self, Declaration, FieldKind, Type};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::OnceLock;

/// How deep `bytes` fields are searched for nested TL objects.
const MAX_NESTING: usize = 8;

struct Schema {
    decls: Vec<Declaration>,
    by_id: HashMap<u32, usize>,
    by_name: HashMap<String, usize>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The same files were parsed by build.rs, so this cannot fail at run time.
        let decls = schema::cocoon_schema().unwrap_or_default();
        let by_id = decls.iter().enumerate().map(|(i, d)| (d.id, i)).collect();
        let by_name = decls
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        Schema {
            decls,
            by_id,
            by_name,
        }
    })
}

/// Decode one boxed object (type or function) that fills `bytes` exactly.
pub fn decode_boxed(bytes: &[u8]) -> Result<Value, Error> {
    decode_boxed_at(bytes, 0)
}

fn decode_boxed_at(bytes: &[u8], depth: usize) -> Result<Value, Error> {
    let mut r = Reader::new(bytes);
    let value = read_boxed(&mut r, None, depth)?;
    r.finish()?;
    Ok(value)
}

/// Decode a boxed object at the reader's position; `expected` is the boxed type, if known.
fn read_boxed(
    r: &mut Reader<'_>,
    expected: Option<&'static str>,
    depth: usize,
) -> Result<Value, Error> {
    let s = schema();
    let start = r.offset();
    let id = r.read_u32()?;
    let decl = s.by_id.get(&id).map(|i| &s.decls[*i]);
    match decl {
        Some(d) if expected.is_none_or(|t| !d.is_function && d.result == t) => {
            read_fields(r, d, depth)
        }
        _ => Err(Error::new(
            ErrorKind::UnknownConstructor {
                id,
                expected: expected.unwrap_or("any object"),
            },
            start,
        )),
    }
}

fn read_fields(r: &mut Reader<'_>, d: &'static Declaration, depth: usize) -> Result<Value, Error> {
    let mut obj = Map::new();
    obj.insert("@type".into(), Value::String(d.name.clone()));
    let mut flag_values: HashMap<&str, u32> = HashMap::new();
    for f in &d.fields {
        let in_field = |e: Error| e.in_field(&d.name, &f.name);
        match &f.kind {
            FieldKind::Flags => {
                let at = r.offset();
                let v = r.read_u32().map_err(in_field)?;
                let known = d.flag_mask(&f.name);
                if v & !known != 0 {
                    let what = format!("unknown bits {:#x} in flags", v & !known);
                    return Err(in_field(Error::new(ErrorKind::Invalid { what }, at)));
                }
                flag_values.insert(&f.name, v);
                obj.insert(f.name.clone(), json!(v));
            }
            FieldKind::Plain(ty) => {
                let v = read_value(r, ty, depth).map_err(in_field)?;
                obj.insert(f.name.clone(), v);
            }
            FieldKind::Conditional { flags, bit, ty } => {
                if flag_values.get(flags.as_str()).copied().unwrap_or(0) & (1 << bit) != 0 {
                    let v = read_value(r, ty, depth).map_err(in_field)?;
                    obj.insert(f.name.clone(), v);
                }
            }
        }
    }
    Ok(Value::Object(obj))
}

fn read_value(r: &mut Reader<'_>, ty: &'static Type, depth: usize) -> Result<Value, Error> {
    Ok(match ty {
        Type::Int => json!(r.read_i32()?),
        Type::Long => json!(r.read_i64()?),
        Type::Double => double_to_json(r.read_f64()?),
        Type::String => {
            let raw = r.read_bytes_ref()?;
            match std::str::from_utf8(raw) {
                Ok(s) => json!(s),
                Err(_) => json!({ "hex": hex::encode(raw) }),
            }
        }
        Type::Bytes => {
            let raw = r.read_bytes_ref()?;
            match nested_tl(raw, depth) {
                Some(v) => json!({ "tl": v }),
                None => json!(hex::encode(raw)),
            }
        }
        Type::Int128 => json!(hex::encode(r.read_int128()?)),
        Type::Int256 => json!(hex::encode(r.read_int256()?)),
        Type::Bool => json!(r.read_bool()?),
        Type::Vector(inner) => {
            let min = min_size(inner);
            Value::Array(r.read_vector(min, |r| read_value(r, inner, depth))?)
        }
        Type::Bare(name) => {
            let s = schema();
            let d = &s.decls[s.by_name[name.as_str()]];
            read_fields(r, d, depth)?
        }
        Type::Boxed(name) => read_boxed(r, Some(name.as_str()), depth)?,
    })
}

/// A `bytes` value holding exactly one known boxed object that re-encodes to the same bytes.
fn nested_tl(raw: &[u8], depth: usize) -> Option<Value> {
    if depth >= MAX_NESTING || raw.len() < 4 {
        return None;
    }
    let id = crate::peek_constructor(raw)?;
    schema().by_id.get(&id)?;
    let value = decode_boxed_at(raw, depth + 1).ok()?;
    (encode_boxed(&value).ok()?.as_slice() == raw).then_some(value)
}

fn min_size(ty: &Type) -> usize {
    let s = schema();
    ty.min_size(&|name: &str| s.by_name.get(name).map(|i| &s.decls[*i]))
}

/// Finite doubles are JSON numbers (printed so that they parse back to the same bits);
/// infinities and the canonical NaN are strings; any other NaN keeps its bits.
fn double_to_json(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v == f64::INFINITY {
        json!("inf")
    } else if v == f64::NEG_INFINITY {
        json!("-inf")
    } else if v.to_bits() == f64::NAN.to_bits() {
        json!("NaN")
    } else {
        json!({ "f64_bits": format!("{:016x}", v.to_bits()) })
    }
}

fn double_from_json(v: &Value, path: &str) -> Result<f64, EncodeError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| enc_err(path, "bad number")),
        Value::String(s) if s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == "inf" => Ok(f64::INFINITY),
        Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
        Value::Object(o) if o.len() == 1 && o.contains_key("f64_bits") => o["f64_bits"]
            .as_str()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map(f64::from_bits)
            .ok_or_else(|| enc_err(path, "f64_bits must be 16 hex digits")),
        _ => Err(enc_err(
            path,
            "expected a number, \"NaN\", \"inf\", \"-inf\" or {\"f64_bits\": ...}",
        )),
    }
}

/// An error converting JSON to TL: the JSON path and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct EncodeError {
    /// Where in the JSON (e.g. `$.query.timeout`).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

fn enc_err(path: &str, message: impl Into<String>) -> EncodeError {
    EncodeError {
        path: if path.is_empty() {
            "$".into()
        } else {
            path.to_string()
        },
        message: message.into(),
    }
}

/// Encode a boxed object (type or function) given as JSON.
pub fn encode_boxed(value: &Value) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    write_boxed(&mut out, value, None, "$")?;
    Ok(out)
}

fn type_name<'v>(value: &'v Value, path: &str) -> Result<&'v str, EncodeError> {
    value
        .as_object()
        .ok_or_else(|| enc_err(path, "expected an object with \"@type\""))?
        .get("@type")
        .and_then(Value::as_str)
        .ok_or_else(|| enc_err(path, "missing \"@type\""))
}

fn write_boxed(
    out: &mut Vec<u8>,
    value: &Value,
    expected: Option<&str>,
    path: &str,
) -> Result<(), EncodeError> {
    let s = schema();
    let name = type_name(value, path)?;
    let d = s
        .by_name
        .get(name)
        .map(|i| &s.decls[*i])
        .ok_or_else(|| enc_err(path, format!("unknown constructor `{name}`")))?;
    if let Some(t) = expected
        && (d.is_function || d.result != t)
    {
        return Err(enc_err(
            path,
            format!("`{name}` is not a constructor of {t}"),
        ));
    }
    write::u32(out, d.id);
    write_fields(out, value, d, path)
}

fn write_fields(
    out: &mut Vec<u8>,
    value: &Value,
    d: &Declaration,
    path: &str,
) -> Result<(), EncodeError> {
    let obj = value
        .as_object()
        .ok_or_else(|| enc_err(path, format!("expected an object for {}", d.name)))?;
    if let Some(t) = obj.get("@type")
        && t.as_str() != Some(d.name.as_str())
    {
        return Err(enc_err(
            path,
            format!("\"@type\" must be `{}` here", d.name),
        ));
    }
    for key in obj.keys() {
        if key != "@type" && !d.fields.iter().any(|f| &f.name == key) {
            return Err(enc_err(path, format!("{} has no field `{key}`", d.name)));
        }
    }
    let mut flag_values: HashMap<&str, u32> = HashMap::new();
    for f in &d.fields {
        let fpath = format!("{path}.{}", f.name);
        match &f.kind {
            FieldKind::Flags => {
                let mut v = match obj.get(&f.name) {
                    None => 0,
                    Some(x) => u32::try_from(as_i64(x, &fpath)?)
                        .map_err(|_| enc_err(&fpath, "flags must fit in 32 unsigned bits"))?,
                };
                let unknown = v & !d.flag_mask(&f.name);
                if unknown != 0 {
                    return Err(enc_err(
                        &fpath,
                        format!("unknown bits {unknown:#x} in flags"),
                    ));
                }
                for g in &d.fields {
                    if let FieldKind::Conditional { flags, bit, .. } = &g.kind
                        && *flags == f.name
                        && obj.contains_key(&g.name)
                    {
                        v |= 1 << bit;
                    }
                }
                flag_values.insert(&f.name, v);
                write::u32(out, v);
            }
            FieldKind::Plain(ty) => {
                let v = obj
                    .get(&f.name)
                    .ok_or_else(|| enc_err(&fpath, "missing field"))?;
                write_value(out, v, ty, &fpath)?;
            }
            FieldKind::Conditional { flags, bit, ty } => {
                if flag_values.get(flags.as_str()).copied().unwrap_or(0) & (1 << bit) == 0 {
                    continue;
                }
                match obj.get(&f.name) {
                    Some(v) => write_value(out, v, ty, &fpath)?,
                    None => write_default(out, ty, &fpath)?,
                }
            }
        }
    }
    Ok(())
}

fn write_default(out: &mut Vec<u8>, ty: &Type, path: &str) -> Result<(), EncodeError> {
    if !ty.has_zero_value() {
        return Err(enc_err(path, "missing field (its flag bit is set)"));
    }
    match ty {
        Type::Int => write::i32(out, 0),
        Type::Long | Type::Double => write::i64(out, 0),
        Type::Vector(_) => write::vector_len(out, 0),
        Type::Bool => write::bool(out, false),
        _ => write::bytes(out, &[]),
    }
    Ok(())
}

fn as_i64(v: &Value, path: &str) -> Result<i64, EncodeError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| enc_err(path, format!("{n} is not an integer"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| enc_err(path, format!("`{s}` is not an integer"))),
        _ => Err(enc_err(path, "expected an integer")),
    }
}

fn as_hex(v: &Value, path: &str) -> Result<Vec<u8>, EncodeError> {
    let s = v
        .as_str()
        .ok_or_else(|| enc_err(path, "expected a hex string"))?;
    hex::decode(s.trim()).map_err(|e| enc_err(path, format!("bad hex: {e}")))
}

fn write_value(out: &mut Vec<u8>, v: &Value, ty: &Type, path: &str) -> Result<(), EncodeError> {
    match ty {
        Type::Int => {
            let n = as_i64(v, path)?;
            write::i32(
                out,
                i32::try_from(n).map_err(|_| enc_err(path, format!("{n} does not fit in int")))?,
            );
        }
        Type::Long => write::i64(out, as_i64(v, path)?),
        Type::Double => write::f64(out, double_from_json(v, path)?),
        Type::String => match v {
            Value::String(s) => write::bytes(out, s.as_bytes()),
            Value::Object(o) if o.len() == 1 && o.contains_key("hex") => {
                write::bytes(out, &as_hex(&o["hex"], &format!("{path}.hex"))?)
            }
            _ => return Err(enc_err(path, "expected a string or {\"hex\": ...}")),
        },
        Type::Bytes => match v {
            Value::String(_) => write::bytes(out, &as_hex(v, path)?),
            Value::Object(o) if o.len() == 1 && o.contains_key("hex") => {
                write::bytes(out, &as_hex(&o["hex"], &format!("{path}.hex"))?)
            }
            Value::Object(o) if o.len() == 1 && o.contains_key("tl") => {
                let mut inner = Vec::new();
                write_boxed(&mut inner, &o["tl"], None, &format!("{path}.tl"))?;
                write::bytes(out, &inner);
            }
            _ => {
                return Err(enc_err(
                    path,
                    "expected a hex string, {\"hex\": ...} or {\"tl\": {...}}",
                ));
            }
        },
        Type::Int128 | Type::Int256 => {
            let want = if *ty == Type::Int128 { 16 } else { 32 };
            let raw = as_hex(v, path)?;
            if raw.len() != want {
                return Err(enc_err(
                    path,
                    format!("expected {want} bytes of hex, got {}", raw.len()),
                ));
            }
            write::raw(out, &raw);
        }
        Type::Bool => write::bool(
            out,
            v.as_bool()
                .ok_or_else(|| enc_err(path, "expected true or false"))?,
        ),
        Type::Vector(inner) => {
            let items = v
                .as_array()
                .ok_or_else(|| enc_err(path, "expected an array"))?;
            write::vector_len(out, items.len());
            for (i, item) in items.iter().enumerate() {
                write_value(out, item, inner, &format!("{path}[{i}]"))?;
            }
        }
        Type::Bare(name) => {
            let s = schema();
            let d = &s.decls[s.by_name[name.as_str()]];
            write_fields(out, v, d, path)?;
        }
        Type::Boxed(name) => write_boxed(out, v, Some(name), path)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_query_is_decoded() {
        // tcp.query id=7 data=client.getWorkerTypesV2 (hand-assembled).
        let mut bytes = Vec::new();
        write::u32(&mut bytes, 0x3af5_1908);
        write::i64(&mut bytes, 7);
        write::bytes(&mut bytes, &0xb213_3d72u32.to_le_bytes());
        let v = decode_boxed(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"@type": "tcp.query", "id": 7, "data": {"tl": {"@type": "client.getWorkerTypesV2"}}})
        );
        assert_eq!(encode_boxed(&v).unwrap(), bytes);
    }

    #[test]
    fn unrecognised_bytes_stay_hex() {
        let mut bytes = Vec::new();
        write::u32(&mut bytes, 0x9c17_baf8); // tcp.packet
        write::bytes(&mut bytes, &[1, 2, 3, 4, 5]);
        let v = decode_boxed(&bytes).unwrap();
        assert_eq!(v, json!({"@type": "tcp.packet", "data": "0102030405"}));
        assert_eq!(encode_boxed(&v).unwrap(), bytes);
    }

    #[test]
    fn encode_errors_name_the_path() {
        let err = encode_boxed(&json!({"@type": "tcp.query", "id": "x", "data": ""})).unwrap_err();
        assert_eq!(err.to_string(), "$.id: `x` is not an integer");
        let err = encode_boxed(&json!({"@type": "tcp.nope"})).unwrap_err();
        assert_eq!(err.to_string(), "$: unknown constructor `tcp.nope`");
        let err = encode_boxed(&json!({"@type": "tcp.ping", "id": 1, "extra": 2})).unwrap_err();
        assert_eq!(err.to_string(), "$: tcp.ping has no field `extra`");
        let err = encode_boxed(&json!({"@type": "client.connectedToProxy", "params": {}, "client_sc_address": "", "auth": {"@type": "tcp.ping", "id": 1}, "signed_payment": {"@type": "proxy.signedPaymentEmpty"}})).unwrap_err();
        assert!(
            err.to_string().contains("flags") || err.to_string().contains("missing field"),
            "{err}"
        );
    }

    #[test]
    fn doubles_keep_their_bits_through_json_text() {
        let odd_nan = f64::from_bits(0xfff8_0000_0000_0000);
        for v in [
            1700017284.3586025,
            0.1,
            -0.0,
            1e300,
            5e-324,
            f64::INFINITY,
            f64::NAN,
            odd_nan,
        ] {
            let mut bytes = Vec::new();
            write::u32(&mut bytes, 0xe794_e6fc); // proxy.queryFinalInfo
            write::u32(&mut bytes, 2); // timings
            for x in [1i64, 2, 3, 4, 5] {
                write::i64(&mut bytes, x);
            }
            write::f64(&mut bytes, v);
            write::f64(&mut bytes, v);
            let text = decode_boxed(&bytes).unwrap().to_string();
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(encode_boxed(&back).unwrap(), bytes, "{v:e} via {text}");
        }
    }

    #[test]
    fn unknown_flag_bits_are_refused_both_ways() {
        let v = json!({"@type": "client.workerInstanceV2", "flags": 4, "coefficient": 1,
            "active_requests": 0, "max_active_requests": 1});
        assert_eq!(
            encode_boxed(&v).unwrap_err().to_string(),
            "$.flags: unknown bits 0x4 in flags"
        );
    }

    #[test]
    fn decode_errors_have_offsets_and_constructors() {
        // client.runQueryEx cut short inside `timeout`.
        let mut bytes = Vec::new();
        write::u32(&mut bytes, 0xf54c_b74b);
        write::bytes(&mut bytes, b"m");
        write::bytes(&mut bytes, b"");
        write::i32(&mut bytes, 4000);
        write::i32(&mut bytes, 1000);
        bytes.extend_from_slice(&[0, 0, 0]);
        let err = decode_boxed(&bytes).unwrap_err();
        assert_eq!(err.constructor(), Some("client.runQueryEx"));
        assert_eq!(err.offset, 20);
        assert!(
            err.to_string()
                .starts_with("client.runQueryEx.timeout: unexpected end"),
            "{err}"
        );
        let err = decode_boxed(&[1, 2, 3, 4]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown constructor id 04030201 for any object at offset 0"
        );
    }
}
