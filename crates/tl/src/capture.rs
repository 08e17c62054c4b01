//! Hex captures of TL traffic, for tools (`cocoon tl decode|encode`): one or more frames
//! (`len ‖ seqno ‖ payload`) or one boxed object, to JSON and back. Errors say where in the
//! whole input they are.

use serde_json::{Value, json};

use crate::frame::{self, FRAME_HEADER_LEN, FrameDecoder};
use crate::json as tljson;

/// Why a capture (or its JSON) could not be read: one line that says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaptureError(String);

/// Hex text to bytes; whitespace and a `0x` prefix are allowed.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, CaptureError> {
    hex_bytes(text).map_err(CaptureError)
}

/// Frames (the first seqno may be any; each next one follows by one) or one boxed object,
/// as JSON: `{"frame": {"len", "seqno"}, "payload": ...}` per frame (an array of them when
/// there are several), or the object itself.
pub fn decode(bytes: &[u8]) -> Result<Value, CaptureError> {
    decode_value(bytes).map_err(CaptureError)
}

/// JSON as [`decode`] writes it back to bytes.
pub fn encode(value: &Value) -> Result<Vec<u8>, CaptureError> {
    encode_value(value).map_err(CaptureError)
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.is_empty() {
        return Err("empty input".into());
    }
    if let Some(pos) = digits.find(|c: char| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "input is not hex: character {:?} at hex digit {pos}",
            &digits[pos..=pos]
        ));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!(
            "input is not hex: odd number of hex digits ({})",
            digits.len()
        ));
    }
    hex::decode(&digits).map_err(|e| format!("input is not hex: {e}"))
}

/// Does `bytes` start with something that can only be a frame header?
fn looks_like_frames(bytes: &[u8]) -> bool {
    let Some((len, _)) = frame::parse_frame_header(bytes) else {
        return false;
    };
    let first_word_is_constructor = crate::constructor_by_id(len).is_some();
    let payload_is_constructor = bytes
        .get(FRAME_HEADER_LEN..)
        .and_then(crate::peek_constructor)
        .is_some_and(|id| crate::constructor_by_id(id).is_some());
    let fits_exactly = FRAME_HEADER_LEN + len as usize == bytes.len();
    !first_word_is_constructor
        && frame::check_frame_len(len as usize).is_ok()
        && (payload_is_constructor || fits_exactly)
}

fn decode_value(bytes: &[u8]) -> Result<Value, String> {
    if !looks_like_frames(bytes) {
        return tljson::decode_boxed(bytes).map_err(|e| locate(&e, 0));
    }
    // A capture may start at any seqno; after the first, each must follow by exactly one.
    let first_seqno = frame::parse_frame_header(bytes)
        .map(|(_, s)| s)
        .unwrap_or(0);
    let mut decoder = FrameDecoder::with_seqno(first_seqno);
    let mut input = bytes;
    let mut frames = Vec::new();
    while !input.is_empty() {
        let start = bytes.len() - input.len();
        let decoded = decoder
            .decode(&mut input)
            .map_err(|e| format!("at offset {start}: {e}"))?;
        let Some(f) = decoded else {
            return Err(format!(
                "at offset {start}: frame is truncated ({} bytes left, header says {})",
                bytes.len() - start,
                frame::parse_frame_header(&bytes[start..])
                    .map(|(len, _)| format!("{} bytes", len as usize + FRAME_HEADER_LEN))
                    .unwrap_or_else(|| "more".into())
            ));
        };
        let payload =
            tljson::decode_boxed(&f.payload).map_err(|e| locate(&e, start + FRAME_HEADER_LEN))?;
        frames.push(json!({
            "frame": { "len": f.payload.len(), "seqno": f.seqno },
            "payload": payload,
        }));
    }
    Ok(if frames.len() == 1 {
        frames.remove(0)
    } else {
        Value::Array(frames)
    })
}

/// One line: where in the whole input, and what.
fn locate(e: &crate::Error, base: usize) -> String {
    let path = e.path();
    if path.is_empty() {
        format!("at offset {}: {}", base + e.offset, e.kind)
    } else {
        format!("at offset {}: {path}: {}", base + e.offset, e.kind)
    }
}

fn encode_value(value: &Value) -> Result<Vec<u8>, String> {
    match value {
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.extend(encode_frame(item).map_err(|e| format!("frame {i}: {e}"))?);
            }
            Ok(out)
        }
        Value::Object(obj) if obj.contains_key("frame") => encode_frame(value),
        _ => tljson::encode_boxed(value).map_err(|e| e.to_string()),
    }
}

fn encode_frame(value: &Value) -> Result<Vec<u8>, String> {
    let seqno = value
        .pointer("/frame/seqno")
        .and_then(Value::as_i64)
        .and_then(|s| i32::try_from(s).ok())
        .ok_or("$.frame.seqno: expected a 32-bit integer")?;
    let payload = value.get("payload").ok_or("$.payload: missing")?;
    let payload =
        tljson::encode_boxed(payload).map_err(|e| e.to_string().replacen('$', "$.payload", 1))?;
    frame::encode_frame(seqno, &payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hex_errors_are_precise() {
        assert_eq!(hex_bytes("0x0a0B 0c").unwrap(), [10, 11, 12]);
        assert_eq!(
            hex_bytes("abz1").unwrap_err(),
            "input is not hex: character \"z\" at hex digit 2"
        );
        assert_eq!(
            hex_bytes("abc").unwrap_err(),
            "input is not hex: odd number of hex digits (3)"
        );
        assert_eq!(hex_bytes("  ").unwrap_err(), "empty input");
    }

    #[test]
    fn frame_and_object_round_trip() {
        // tcp.ping id=1 as a frame with seqno 3, built by hand.
        let hex_frame = "0c00000003000000" /* len 12, seqno 3 */.to_string()
            + "7c62e9bb" /* tcp.ping */
            + "0100000000000000";
        let bytes = hex_bytes(&hex_frame).unwrap();
        let value = decode_value(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"frame": {"len": 12, "seqno": 3}, "payload": {"@type": "tcp.ping", "id": 1}})
        );
        assert_eq!(hex::encode(encode_value(&value).unwrap()), hex_frame);
        // The same payload without a header decodes as an object.
        let value = decode_value(&bytes[8..]).unwrap();
        assert_eq!(value, json!({"@type": "tcp.ping", "id": 1}));
    }

    #[test]
    fn errors_point_into_the_whole_input() {
        // Two frames, the second with a wrong seqno.
        let ping = "0c000000000000007c62e9bb0100000000000000";
        let bad = "0c000000050000007c62e9bb0100000000000000";
        let err = decode_value(&hex_bytes(&format!("{ping}{bad}")).unwrap()).unwrap_err();
        assert!(err.starts_with("at offset 20: "), "{err}");
        assert!(err.contains("seqno"), "{err}");
        // Truncated payload inside a frame: offset counts the header.
        let err = decode_value(&hex_bytes("0c000000000000007c62e9bb01000000000000").unwrap())
            .unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        // Payload with trailing garbage inside an exact frame.
        let err =
            decode_value(&hex_bytes("10000000000000007c62e9bb0100000000000000ffffffff").unwrap())
                .unwrap_err();
        assert_eq!(err, "at offset 20: 4 trailing bytes after value");
    }
}
