//! toncenter's get-method stack JSON and TVM stack values.
//!
//! toncenter v2 `runGetMethod` speaks the "legacy" stack format
//! (<https://docs.ton.org/applications/api/toncenter/v2/run-method/run-get-method>): each
//! entry is a two-element array `[type, value]`.
//!
//! Arguments we accept (the spellings clients send; `@ton/ton`'s `HttpApi` sends
//! `["num", "123"]`, `["tvm.Cell", b64]`, `["tvm.Slice", b64]`, `["tvm.Builder", b64]`):
//! - `["num"|"int"|"number", "123" | "-0x7b" | 123]`
//! - `["cell"|"tvm.Cell", b64boc | {"bytes": b64boc}]`, likewise `slice`/`tvm.Slice` and
//!   `builder`/`tvm.Builder`
//! - `["null"]` or `["null", null]`
//!
//! Results are rendered as toncenter renders tonlib's entries (and as `@ton/ton`'s
//! `parseStackItem` reads them): integers as `["num", "0x7b"]` / `["num", "-0x7b"]`, cells
//! *and slices* as `["cell", {"bytes": b64boc, "object": tree}]`, builders as
//! `["builder", {"bytes": ...}]`, tuples as `["tuple", {"@type": "tvm.tuple", "elements":
//! [tonlib entries]}]`, and null as `["null", null]` (toncenter answers with a `null` entry
//! type, which `@ton/ton` and `cocoon-ton` read as null). Inside tuples the elements are tonlib
//! objects (`tvm.stackEntryNumber` with a decimal `tvm.numberDecimal`, `tvm.stackEntryCell`,
//! `tvm.stackEntrySlice`, `tvm.stackEntryTuple`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use num_bigint::BigInt;
use serde_json::{Value, json};
use tycho_types::prelude::*;
use tycho_vm::{OwnedCellSlice, RcStackValue, Stack, StackValueType};

/// The most stack entries a request may carry.
pub const MAX_ARGS: usize = 255;
/// Cells nested deeper than this are rendered without the `object` tree.
pub const MAX_OBJECT_DEPTH: u16 = 32;
/// Expanded `object` trees larger than this are left out.
pub const MAX_OBJECT_NODES: usize = 4096;

/// Parses toncenter's argument stack (bottom first).
pub fn parse_stack(value: &Value) -> Result<Vec<RcStackValue>, String> {
    let Some(items) = value.as_array() else {
        return Err("Stack should be array".into());
    };
    if items.len() > MAX_ARGS {
        return Err(format!("at most {MAX_ARGS} stack entries"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_entry(item).map_err(|e| format!("stack entry {i}: {e}")))
        .collect()
}

fn parse_entry(item: &Value) -> Result<RcStackValue, String> {
    let pair = item.as_array().ok_or("expected a [type, value] pair")?;
    let ty = pair
        .first()
        .and_then(Value::as_str)
        .ok_or("type must be a string")?;
    // `["null"]` has no value; every other entry is exactly a pair.
    if ty == "null" && pair.len() <= 2 {
        return Ok(Stack::make_null());
    }
    if pair.len() != 2 {
        return Err("expected a [type, value] pair".into());
    }
    let val = &pair[1];
    match ty {
        "num" | "int" | "number" => {
            let n = match val {
                Value::Number(n) => n
                    .as_i64()
                    .map(BigInt::from)
                    .ok_or("numbers beyond i64 must be strings")?,
                Value::String(s) => parse_int(s)?,
                _ => return Err("num value must be a string or number".into()),
            };
            if n.bits() > 256 {
                return Err("integer does not fit in 257 bits".into());
            }
            Ok(RcStackValue::new_dyn_value(n))
        }
        "cell" | "tvm.Cell" => Ok(RcStackValue::new_dyn_value(parse_cell(val)?)),
        "slice" | "tvm.Slice" => Ok(RcStackValue::new_dyn_value(
            OwnedCellSlice::new_allow_exotic(parse_cell(val)?),
        )),
        "builder" | "tvm.Builder" => {
            let cell = parse_cell(val)?;
            let mut b = CellBuilder::new();
            b.store_slice(cell.as_slice_allow_exotic())
                .map_err(|e| format!("builder: {e}"))?;
            Ok(RcStackValue::new_dyn_value(b))
        }
        other => Err(format!("Unsupported stack entry type: {other}")),
    }
}

fn parse_int(s: &str) -> Result<BigInt, String> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let parsed = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(hex) => BigInt::parse_bytes(hex.as_bytes(), 16),
        None => BigInt::parse_bytes(body.as_bytes(), 10),
    };
    let n = parsed.ok_or_else(|| format!("{s:?} is not a decimal or 0x-hex integer"))?;
    Ok(if neg { -n } else { n })
}

fn parse_cell(val: &Value) -> Result<Cell, String> {
    let b64 = match val {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o
            .get("bytes")
            .and_then(Value::as_str)
            .ok_or("cell object needs a \"bytes\" string")?,
        _ => return Err("cell value must be a base64 BOC string".into()),
    };
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| format!("cell is not base64: {e}"))?;
    Boc::decode(&bytes).map_err(|e| format!("cell is not a BOC: {e}"))
}

/// Renders a result stack (bottom first) in toncenter's legacy format.
pub fn render_stack(stack: &[RcStackValue]) -> Result<Value, String> {
    stack
        .iter()
        .map(|v| render_top(v.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn render_top(v: &dyn tycho_vm::StackValue) -> Result<Value, String> {
    match StackValueType::from_raw(v.raw_ty()) {
        Some(StackValueType::Int) => Ok(json!(["num", int_hex(v)])),
        Some(StackValueType::Null) => Ok(json!(["null", null])),
        Some(StackValueType::Cell) => {
            let cell = v.as_cell().ok_or("cell expected")?;
            Ok(json!(["cell", cell_json(cell)]))
        }
        Some(StackValueType::Slice) => {
            let cell = slice_cell(v)?;
            Ok(json!(["cell", cell_json(&cell)]))
        }
        Some(StackValueType::Builder) => {
            let b = v.as_cell_builder().ok_or("builder expected")?;
            let cell = b.clone().build().map_err(|e| e.to_string())?;
            Ok(json!(["builder", cell_json(&cell)]))
        }
        Some(StackValueType::Tuple) => {
            let items = v.as_tuple().ok_or("tuple expected")?;
            Ok(json!(["tuple", {"@type": "tvm.tuple", "elements": render_elements(items)?}]))
        }
        Some(StackValueType::Cont) | None => Err("continuations cannot be rendered".into()),
    }
}

fn render_elements(items: &[RcStackValue]) -> Result<Vec<Value>, String> {
    items.iter().map(|v| render_entry(v.as_ref())).collect()
}

fn render_entry(v: &dyn tycho_vm::StackValue) -> Result<Value, String> {
    Ok(match StackValueType::from_raw(v.raw_ty()) {
        Some(StackValueType::Int) => json!({
            "@type": "tvm.stackEntryNumber",
            "number": {"@type": "tvm.numberDecimal", "number": int_dec(v)},
        }),
        Some(StackValueType::Null) => json!({
            "@type": "tvm.stackEntryList",
            "list": {"@type": "tvm.list", "elements": []},
        }),
        Some(StackValueType::Cell) => json!({
            "@type": "tvm.stackEntryCell",
            "cell": {"@type": "tvm.cell", "bytes": boc64(v.as_cell().ok_or("cell expected")?)},
        }),
        Some(StackValueType::Slice) => json!({
            "@type": "tvm.stackEntrySlice",
            "slice": {"@type": "tvm.slice", "bytes": boc64(&slice_cell(v)?)},
        }),
        Some(StackValueType::Builder) => {
            let b = v.as_cell_builder().ok_or("builder expected")?;
            let cell = b.clone().build().map_err(|e| e.to_string())?;
            json!({"@type": "tvm.stackEntryCell", "cell": {"@type": "tvm.cell", "bytes": boc64(&cell)}})
        }
        Some(StackValueType::Tuple) => json!({
            "@type": "tvm.stackEntryTuple",
            "tuple": {"@type": "tvm.tuple", "elements": render_elements(v.as_tuple().ok_or("tuple expected")?)?},
        }),
        Some(StackValueType::Cont) | None => return Err("continuations cannot be rendered".into()),
    })
}

fn int_hex(v: &dyn tycho_vm::StackValue) -> String {
    match v.as_int() {
        Some(n) if n.sign() == num_bigint::Sign::Minus => format!("-0x{:x}", -n),
        Some(n) => format!("0x{n:x}"),
        None => "NaN".into(),
    }
}

fn int_dec(v: &dyn tycho_vm::StackValue) -> String {
    v.as_int().map_or_else(|| "NaN".into(), |n| n.to_string())
}

fn slice_cell(v: &dyn tycho_vm::StackValue) -> Result<Cell, String> {
    let s = v.as_cell_slice().ok_or("slice expected")?;
    CellBuilder::build_from(s.apply()).map_err(|e| e.to_string())
}

/// Base64 BOC of a cell.
pub fn boc64(cell: &Cell) -> String {
    Boc::encode_base64(cell)
}

/// toncenter's `{"bytes": ..., "object": ...}` rendering of a cell. The `object` tree is
/// left out for cells deeper than [`MAX_OBJECT_DEPTH`] or with more than
/// [`MAX_OBJECT_NODES`] nodes once expanded (a BOC shares repeated subtrees, so a small
/// cell can expand into an exponential tree).
pub fn cell_json(cell: &Cell) -> Value {
    let mut out = json!({"bytes": boc64(cell)});
    let mut budget = MAX_OBJECT_NODES;
    if cell.repr_depth() <= MAX_OBJECT_DEPTH
        && let Some(object) = cell_object(cell.as_ref(), &mut budget)
    {
        out["object"] = object;
    }
    out
}

fn cell_object(cell: &DynCell, budget: &mut usize) -> Option<Value> {
    *budget = budget.checked_sub(1)?;
    let bits = cell.bit_len();
    let data = cell.data();
    let bytes = &data[..usize::from(bits).div_ceil(8).min(data.len())];
    let refs = cell
        .references()
        .map(|r| cell_object(r, budget))
        .collect::<Option<Vec<Value>>>()?;
    Some(json!({
        "data": {"b64": B64.encode(bytes), "len": bits},
        "refs": refs,
        "special": cell.is_exotic(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_in_hex_and_decimal() {
        let parsed = parse_stack(&json!([
            ["num", "123"],
            ["num", "-0x7b"],
            ["int", 5],
            ["num", "0xFF"],
            ["null"]
        ]))
        .unwrap();
        let rendered = render_stack(&parsed).unwrap();
        assert_eq!(
            rendered,
            json!([
                ["num", "0x7b"],
                ["num", "-0x7b"],
                ["num", "0x5"],
                ["num", "0xff"],
                ["null", null]
            ])
        );
    }

    #[test]
    fn cells_and_slices_render_as_cells() {
        let mut b = CellBuilder::new();
        b.store_u32(0xdeadbeef).unwrap();
        let cell = b.build().unwrap();
        let b64 = boc64(&cell);
        let parsed = parse_stack(&json!([["tvm.Cell", b64], ["slice", {"bytes": b64}]])).unwrap();
        let rendered = render_stack(&parsed).unwrap();
        for entry in rendered.as_array().unwrap() {
            assert_eq!(entry[0], "cell");
            assert_eq!(entry[1]["bytes"], json!(b64));
            assert_eq!(entry[1]["object"]["data"]["len"], 32);
            assert_eq!(entry[1]["object"]["data"]["b64"], "3q2+7w==");
        }
    }

    #[test]
    fn tuples_use_tonlib_entries_and_null_renders_as_null() {
        let tuple: Vec<RcStackValue> = vec![
            RcStackValue::new_dyn_value(BigInt::from(-5)),
            Stack::make_null(),
        ];
        let rendered =
            render_stack(&[RcStackValue::new_dyn_value(tuple), Stack::make_null()]).unwrap();
        assert_eq!(rendered[0][0], "tuple");
        assert_eq!(rendered[0][1]["elements"][0]["number"]["number"], "-5");
        assert_eq!(rendered[0][1]["elements"][1]["@type"], "tvm.stackEntryList");
        assert_eq!(rendered[1], json!(["null", null]));
    }

    #[test]
    fn shared_subtrees_do_not_explode_the_object_tree() {
        // 30 levels, each cell referencing the one below twice: 2^30 nodes as a tree.
        let mut cell = Cell::empty_cell();
        for _ in 0..30 {
            let mut b = CellBuilder::new();
            b.store_reference(cell.clone()).unwrap();
            b.store_reference(cell).unwrap();
            cell = b.build().unwrap();
        }
        let j = cell_json(&cell);
        assert!(j.get("object").is_none());
        assert_eq!(j["bytes"], json!(boc64(&cell)));
        // A small tree keeps its object.
        let mut b = CellBuilder::new();
        b.store_reference(Cell::empty_cell()).unwrap();
        let small = b.build().unwrap();
        assert_eq!(
            cell_json(&small)["object"]["refs"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bad_stacks_are_errors_not_panics() {
        for bad in [
            json!({"a": 1}),
            json!([["num"]]),
            json!([["num", "12z"]]),
            json!([["num", 1.5]]),
            json!([["cell", "!!"]]),
            json!([["cell", "AAAA"]]),
            json!([["weird", "1"]]),
            json!([[1, "1"]]),
            json!([["num", format!("0x{}", "f".repeat(70))]]),
        ] {
            assert!(parse_stack(&bad).is_err(), "{bad} should be rejected");
        }
    }
}
