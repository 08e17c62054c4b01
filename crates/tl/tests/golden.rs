//! Golden vectors under `testvectors/tl/` (see its README):
//!
//! - `handmade.txt`: frames and objects built byte by byte by `handmade.py`, independently of
//!   our encoder;
//! - `encoded.txt`: one sample per constructor, written by our typed encoder
//!   (regenerate with `COCOON_REGEN_VECTORS=1 cargo test -p cocoon-tl --test golden`);
//! - `invalid.txt`: inputs that must be rejected with a given error.
//!
//! Every valid vector must decode with the typed and the JSON codec and encode back to the
//! same bytes; frames must carry consecutive seqnos per stream; every invalid vector must fail
//! (without panicking) with an error whose text contains the expected substring.

use cocoon_tl::frame::{Frame, FrameDecoder};
use cocoon_tl::schema::{self, Declaration, FieldKind, Type};
use cocoon_tl::{CONSTRUCTORS, TlRead, TlWrite, enums, json, roundtrip_boxed};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const REGEN_ENV: &str = "COCOON_REGEN_VECTORS";

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testvectors/tl")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Frame,
    Object,
}

#[derive(Debug, Clone)]
struct Vector {
    name: String,
    kind: Kind,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Invalid {
    name: String,
    kind: Kind,
    expected: String,
    bytes: Vec<u8>,
}

fn parse_kind(s: &str, file: &str, lineno: usize) -> Kind {
    match s {
        "frame" => Kind::Frame,
        "object" => Kind::Object,
        other => panic!("{file}:{lineno}: unknown kind `{other}`"),
    }
}

/// Non-empty, non-comment lines of `text`, split at tabs, with their line numbers.
fn records(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i + 1, l.split('\t').collect()))
}

fn parse_vectors(text: &str, file: &str) -> Vec<Vector> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (lineno, cols) in records(text) {
        assert_eq!(cols.len(), 3, "{file}:{lineno}: expected name, kind, hex");
        assert!(
            names.insert(cols[0]),
            "{file}:{lineno}: duplicate name {}",
            cols[0]
        );
        out.push(Vector {
            name: cols[0].to_string(),
            kind: parse_kind(cols[1], file, lineno),
            bytes: hex::decode(cols[2]).unwrap_or_else(|e| panic!("{file}:{lineno}: {e}")),
        });
    }
    assert!(!out.is_empty(), "{file}: no vectors");
    out
}

fn read_file(name: &str) -> String {
    let path = vectors_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn handmade() -> Vec<Vector> {
    parse_vectors(&read_file("handmade.txt"), "handmade.txt")
}

fn encoded() -> Vec<Vector> {
    if std::env::var_os(REGEN_ENV).is_some() {
        // The file is being rewritten by `encoded_vectors_are_up_to_date`: check the new text.
        parse_vectors(&render_encoded(), "encoded.txt (regenerated)")
    } else {
        parse_vectors(&read_file("encoded.txt"), "encoded.txt")
    }
}

fn invalid() -> Vec<Invalid> {
    let text = read_file("invalid.txt");
    let mut out = Vec::new();
    for (lineno, cols) in records(&text) {
        assert_eq!(
            cols.len(),
            4,
            "invalid.txt:{lineno}: expected name, kind, error, hex"
        );
        out.push(Invalid {
            name: cols[0].to_string(),
            kind: parse_kind(cols[1], "invalid.txt", lineno),
            expected: cols[2].to_string(),
            bytes: hex::decode(cols[3]).unwrap_or_else(|e| panic!("invalid.txt:{lineno}: {e}")),
        });
    }
    assert!(!out.is_empty());
    out
}

// ---------------------------------------------------------------------------------------------
// Checks of valid vectors
// ---------------------------------------------------------------------------------------------

/// The `data` of a `tcp.Packet` that carries one (query, answer, message).
fn packet_data(packet: &enums::tcp::Packet) -> Option<&[u8]> {
    match packet {
        enums::tcp::Packet::Query(q) => Some(&q.data),
        enums::tcp::Packet::QueryAnswer(a) => Some(&a.data),
        enums::tcp::Packet::Packet(p) => Some(&p.data),
        _ => None,
    }
}

/// Typed decode + encode by constructor id must give `bytes` back.
fn check_typed_roundtrip(bytes: &[u8], what: &str) -> Result<(), String> {
    match roundtrip_boxed(bytes) {
        None => Err(format!(
            "{what}: constructor {:08x?} unknown to roundtrip_boxed",
            cocoon_tl::peek_constructor(bytes)
        )),
        Some(Err(e)) => Err(format!("{what}: typed decode failed: {e}")),
        Some(Ok(again)) if again != bytes => Err(format!(
            "{what}: typed re-encoding differs\n  in:  {}\n  out: {}",
            hex::encode(bytes),
            hex::encode(&again)
        )),
        Some(Ok(_)) => Ok(()),
    }
}

/// Collects every `@type` in a JSON value from `json::decode_boxed`, and checks every nested
/// `{"tl": ...}` object (bytes holding a TL object) with the typed codec as well.
fn walk_json(v: &Value, names: &mut BTreeSet<String>, what: &str) -> Result<(), String> {
    match v {
        Value::Object(obj) => {
            if let Some(Value::String(t)) = obj.get("@type") {
                names.insert(t.clone());
            }
            if let (1, Some(inner)) = (obj.len(), obj.get("tl")) {
                let bytes = json::encode_boxed(inner).map_err(|e| format!("{what}: {e}"))?;
                check_typed_roundtrip(&bytes, &format!("{what} (nested)"))?;
            }
            for value in obj.values() {
                walk_json(value, names, what)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                walk_json(item, names, what)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One boxed object: typed and JSON round trips, nested objects included. Returns the
/// constructor names it contains.
fn check_object(bytes: &[u8], what: &str) -> Result<BTreeSet<String>, String> {
    check_typed_roundtrip(bytes, what)?;
    let value = json::decode_boxed(bytes).map_err(|e| format!("{what}: JSON decode: {e}"))?;
    let again = json::encode_boxed(&value).map_err(|e| format!("{what}: JSON encode: {e}"))?;
    if again != bytes {
        return Err(format!("{what}: JSON re-encoding differs: {value}"));
    }
    let mut names = BTreeSet::new();
    walk_json(&value, &mut names, what)?;
    Ok(names)
}

/// The payload of one frame: a `tcp.Packet`, whose `data` is a known boxed object.
fn check_payload(payload: &[u8], what: &str) -> Result<BTreeSet<String>, String> {
    let packet = enums::tcp::Packet::from_bytes(payload)
        .map_err(|e| format!("{what}: tcp.Packet decode: {e}"))?;
    if packet.to_bytes() != payload {
        return Err(format!("{what}: tcp.Packet re-encoding differs"));
    }
    if let Some(data) = packet_data(&packet) {
        check_typed_roundtrip(data, &format!("{what} data"))?;
    }
    check_object(payload, what)
}

/// Per stream: all its bytes, and the frames decoded from them.
type Streams = BTreeMap<String, (Vec<u8>, Vec<Frame>)>;

/// Checks every vector; frames are decoded per stream (the part of the name before `/`) with
/// one `FrameDecoder` each, so their seqnos must follow 0, 1, 2, ... in file order. Returns
/// the constructor names seen, and the frames of each stream.
fn check_vectors(vectors: &[Vector]) -> (BTreeSet<String>, Streams) {
    let mut names = BTreeSet::new();
    let mut streams: BTreeMap<String, (FrameDecoder, Vec<u8>, Vec<Frame>)> = BTreeMap::new();
    let mut failures = Vec::new();
    for v in vectors {
        let result = match v.kind {
            Kind::Object => check_object(&v.bytes, &v.name),
            Kind::Frame => {
                let (stream, _) = v
                    .name
                    .split_once('/')
                    .unwrap_or_else(|| panic!("{}: frame names are <stream>/<label>", v.name));
                let (decoder, all, frames) = streams.entry(stream.to_string()).or_default();
                let expected_seqno = decoder.expected_seqno();
                all.extend_from_slice(&v.bytes);
                match decoder.decode_all(&v.bytes) {
                    Err(e) => Err(format!("{}: frame: {e}", v.name)),
                    Ok(got) if got.len() != 1 || decoder.has_partial() => Err(format!(
                        "{}: expected exactly one frame, got {} (partial: {})",
                        v.name,
                        got.len(),
                        decoder.has_partial()
                    )),
                    Ok(mut got) => {
                        let frame = got.remove(0);
                        assert_eq!(frame.seqno, expected_seqno, "{}", v.name);
                        let r = check_payload(&frame.payload, &v.name);
                        frames.push(frame);
                        r
                    }
                }
            }
        };
        match result {
            Ok(n) => names.extend(n),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let streams = streams
        .into_iter()
        .map(|(name, (_, bytes, frames))| (name, (bytes, frames)))
        .collect();
    (names, streams)
}

#[test]
fn handmade_vectors_decode_and_reencode() {
    let vectors = handmade();
    let (names, streams) = check_vectors(&vectors);
    assert!(vectors.iter().any(|v| v.kind == Kind::Frame));
    assert!(vectors.iter().any(|v| v.kind == Kind::Object));
    // Both directions of at least the client and worker connections.
    assert!(streams.len() >= 4, "{:?}", streams.keys());
    assert!(names.contains("client.runQueryEx") && names.contains("http.request"));
}

#[test]
fn encoded_vectors_decode_and_reencode() {
    let vectors = encoded();
    check_vectors(&vectors);
}

#[test]
fn handmade_streams_decode_in_any_chunking() {
    let (_, streams) = check_vectors(&handmade());
    for (name, (bytes, frames)) in &streams {
        for chunk in [1usize, 2, 3, 5, 7, 8, 13, 64, 1000] {
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                got.extend(decoder.decode_all(piece).unwrap());
            }
            assert!(!decoder.has_partial(), "{name}, chunks of {chunk}");
            assert_eq!(&got, frames, "{name}, chunks of {chunk}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid vectors
// ---------------------------------------------------------------------------------------------

/// Runs the whole decoding pipeline (frames, packet, nested data, or one object) and returns
/// the first error as text.
fn first_error(v: &Invalid) -> Option<String> {
    match v.kind {
        Kind::Frame => {
            let mut decoder = FrameDecoder::new();
            let frames = match decoder.decode_all(&v.bytes) {
                Ok(frames) => frames,
                Err(e) => return Some(e.to_string()),
            };
            if decoder.has_partial() {
                return Some(format!(
                    "truncated frame: {} bytes of a partial frame at end of input",
                    decoder.buffered_len()
                ));
            }
            for frame in frames {
                let packet = match enums::tcp::Packet::from_bytes(&frame.payload) {
                    Ok(p) => p,
                    Err(e) => return Some(e.to_string()),
                };
                if let Some(data) = packet_data(&packet) {
                    match roundtrip_boxed(data) {
                        None => {
                            return Some(format!(
                                "unknown constructor id {:08x} in nested data",
                                cocoon_tl::peek_constructor(data).unwrap_or(0)
                            ));
                        }
                        Some(Err(e)) => return Some(e.to_string()),
                        Some(Ok(_)) => {}
                    }
                }
            }
            None
        }
        Kind::Object => match roundtrip_boxed(&v.bytes) {
            None => Some(format!(
                "unknown constructor id {:08x}",
                cocoon_tl::peek_constructor(&v.bytes).unwrap_or(0)
            )),
            Some(Err(e)) => Some(e.to_string()),
            Some(Ok(_)) => None,
        },
    }
}

#[test]
fn invalid_vectors_are_rejected_with_the_expected_error() {
    let mut failures = Vec::new();
    for v in invalid() {
        let result = std::panic::catch_unwind(|| first_error(&v));
        match result {
            Err(_) => failures.push(format!("{}: PANIC", v.name)),
            Ok(None) => failures.push(format!("{}: accepted", v.name)),
            Ok(Some(msg)) if !msg.contains(&v.expected) => {
                failures.push(format!("{}: error `{msg}` lacks `{}`", v.name, v.expected))
            }
            Ok(Some(msg)) => println!("{}: {msg}", v.name),
        }
        if v.kind == Kind::Object {
            // The JSON codec is as strict, except that it shows a non-UTF-8 string as
            // {"hex": ...} instead of failing (`cocoon tl decode` must be able to show it).
            let json = std::panic::catch_unwind(|| json::decode_boxed(&v.bytes));
            match json {
                Err(_) => failures.push(format!("{}: JSON decoder PANIC", v.name)),
                Ok(Ok(value)) if v.expected.contains("UTF-8") => {
                    let again = json::encode_boxed(&value).map(|b| b == v.bytes);
                    if again != Ok(true) {
                        failures.push(format!("{}: JSON hex string does not round-trip", v.name));
                    }
                }
                Ok(Ok(value)) => {
                    failures.push(format!("{}: JSON decoder accepted: {value}", v.name))
                }
                Ok(Err(e)) if !e.to_string().contains(&v.expected) => failures.push(format!(
                    "{}: JSON error `{e}` lacks `{}`",
                    v.name, v.expected
                )),
                Ok(Err(_)) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Coverage
// ---------------------------------------------------------------------------------------------

#[test]
fn vectors_cover_every_constructor() {
    let (hand, _) = check_vectors(&handmade());
    let (enc, _) = check_vectors(&encoded());
    let all: BTreeSet<&str> = CONSTRUCTORS.iter().map(|c| c.name).collect();
    let hand_n = all.iter().filter(|n| hand.contains(**n)).count();
    let enc_n = all.iter().filter(|n| enc.contains(**n)).count();
    println!(
        "constructors covered: handmade {hand_n}/{n}, encoded {enc_n}/{n}",
        n = all.len()
    );
    let missing: Vec<&str> = all
        .iter()
        .filter(|n| !hand.contains(**n) && !enc.contains(**n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "constructors without a golden vector: {missing:?}"
    );
    // Names seen must all be constructors of the scheme.
    for n in hand.iter().chain(&enc) {
        assert!(all.contains(n.as_str()), "unexpected @type {n}");
    }
}

// ---------------------------------------------------------------------------------------------
// encoded.txt: one sample per constructor from our typed encoder
// ---------------------------------------------------------------------------------------------

/// Deterministic, non-default sample values for every field type.
struct Sampler {
    decls: Vec<Declaration>,
    counter: u64,
}

impl Sampler {
    fn new() -> Sampler {
        Sampler {
            decls: schema::cocoon_schema().expect("scheme parses"),
            counter: 0,
        }
    }

    fn decl(&self, name: &str) -> &Declaration {
        self.decls
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no declaration {name}"))
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The fields of `name` as JSON; conditional fields are all present when `optional`,
    /// all absent otherwise (flags are then computed by the JSON encoder).
    fn fields(&mut self, name: &str, optional: bool) -> Map<String, Value> {
        let decl = self.decl(name).clone();
        let mut obj = Map::new();
        obj.insert("@type".into(), json!(decl.name));
        for f in &decl.fields {
            match &f.kind {
                FieldKind::Flags => {}
                FieldKind::Plain(ty) => {
                    let v = self.value(ty);
                    obj.insert(f.name.clone(), v);
                }
                FieldKind::Conditional { ty, .. } if optional => {
                    let v = self.value(ty);
                    obj.insert(f.name.clone(), v);
                }
                FieldKind::Conditional { .. } => {}
            }
        }
        obj
    }

    fn value(&mut self, ty: &Type) -> Value {
        let k = self.next();
        match ty {
            Type::Int => json!(1000 + (k as i32) * 7),
            Type::Long => json!(0x1_0000_0000_i64 * k as i64 + 12_345),
            Type::Double => json!(k as f64 + 0.25),
            Type::String => json!(format!("sample string {k} é")),
            Type::Bytes => {
                // Lengths vary so that both length-prefix forms and every padding appear.
                let len = (k as usize * 37) % 300;
                json!(hex::encode(
                    (0..len).map(|i| (i as u64 + k) as u8).collect::<Vec<_>>()
                ))
            }
            Type::Int128 => json!(hex::encode(
                (0..16u64).map(|i| (i * 11 + k) as u8).collect::<Vec<_>>()
            )),
            Type::Int256 => json!(hex::encode(
                (0..32u64).map(|i| (i * 13 + k) as u8).collect::<Vec<_>>()
            )),
            Type::Bool => json!(!k.is_multiple_of(3)),
            Type::Vector(inner) => json!([self.value(inner), self.value(inner)]),
            Type::Bare(name) => Value::Object(self.fields(name, true)),
            Type::Boxed(name) => {
                let ctor = self
                    .decls
                    .iter()
                    .find(|d| !d.is_function && &d.result == name)
                    .unwrap_or_else(|| panic!("no constructor of {name}"))
                    .name
                    .clone();
                Value::Object(self.fields(&ctor, true))
            }
        }
    }
}

/// The text of `encoded.txt`: for every constructor a sample with all optional fields (and,
/// where it has some, one without), encoded through JSON, then decoded into the typed
/// struct and written by the typed encoder; both encoders must agree.
fn render_encoded() -> String {
    let mut sampler = Sampler::new();
    let mut out = String::from(
        "# Generated by crates/tl/tests/golden.rs from our typed encoder; do not edit.\n\
         # Regenerate: COCOON_REGEN_VECTORS=1 cargo test -p cocoon-tl --test golden\n\
         # name<TAB>kind<TAB>hex\n",
    );
    for c in CONSTRUCTORS {
        let has_optional = sampler
            .decl(c.name)
            .fields
            .iter()
            .any(|f| matches!(f.kind, FieldKind::Conditional { .. }));
        let variants: &[(bool, &str)] = if has_optional {
            &[(true, ""), (false, "#no-optional")]
        } else {
            &[(true, "")]
        };
        for &(optional, suffix) in variants {
            let sample = Value::Object(sampler.fields(c.name, optional));
            let via_json = json::encode_boxed(&sample)
                .unwrap_or_else(|e| panic!("{}: JSON encode of {sample}: {e}", c.name));
            let typed = match roundtrip_boxed(&via_json) {
                Some(Ok(bytes)) => bytes,
                other => panic!("{}: typed round trip: {other:?}", c.name),
            };
            assert_eq!(
                typed, via_json,
                "{}: typed and JSON encoders disagree",
                c.name
            );
            out.push_str(&format!(
                "{}{suffix}\tobject\t{}\n",
                c.name,
                hex::encode(&typed)
            ));
        }
    }
    out
}

#[test]
fn encoded_vectors_are_up_to_date() {
    let text = render_encoded();
    let path = vectors_dir().join("encoded.txt");
    if std::env::var_os(REGEN_ENV).is_some() {
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let committed = read_file("encoded.txt");
    if committed != text {
        let old: BTreeMap<&str, &str> = records(&committed)
            .map(|(_, c)| (c[0], *c.last().unwrap_or(&"")))
            .collect();
        let new: BTreeMap<&str, &str> = records(&text)
            .map(|(_, c)| (c[0], *c.last().unwrap_or(&"")))
            .collect();
        let changed: Vec<&str> = old
            .keys()
            .chain(new.keys())
            .filter(|k| old.get(*k) != new.get(*k))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        panic!(
            "testvectors/tl/encoded.txt is out of date (our encoder or the scheme changed); \
             changed vectors: {changed:?}. If the change is intended, regenerate with \
             {REGEN_ENV}=1 cargo test -p cocoon-tl --test golden"
        );
    }
}
