//! Runs the real `cocoon` binary on hand-encoded frames and on the golden vectors.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn cocoon(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cocoon");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait for cocoon")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version() {
    let o = cocoon(&["--version"], None);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("cocoon {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `tcp.queryError id=9 code=652 message="timeout"` in a frame with seqno 1, laid out by hand
/// from the layout in docs/protocol.md: len, seqno, id 4cd2f602, long, int, string with padding.
const QUERY_ERROR_FRAME: &str = concat!(
    "18000000", // len = 24
    "01000000", // seqno = 1
    "02f6d24c", // tcp.queryError
    "0900000000000000",
    "8c020000",         // 652
    "0774696d656f7574"  // "timeout": length 7, 7 bytes, no padding needed
);

#[test]
fn decodes_a_hand_encoded_frame() {
    let o = cocoon(&["tl", "decode", QUERY_ERROR_FRAME], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "frame": {"len": 24, "seqno": 1},
            "payload": {"@type": "tcp.queryError", "id": 9, "code": 652, "message": "timeout"}
        })
    );
    // And back, from stdin.
    let o = cocoon(&["tl", "encode"], Some(&stdout(&o)));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), QUERY_ERROR_FRAME);
}

#[test]
fn decode_errors_are_one_line_with_offset_and_exit_1() {
    // Cut inside the message string.
    let cut = &QUERY_ERROR_FRAME[..QUERY_ERROR_FRAME.len() - 2];
    let o = cocoon(&["tl", "decode", cut], None);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: at offset 0: frame is truncated"),
        "{err}"
    );

    // A known constructor with a bad Bool inside (client.proxyHandshakeComplete is_disabled).
    let o = cocoon(&["tl", "decode", "66b043f801020304"], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "error: at offset 4: worker.proxyHandshakeComplete.is_disabled: invalid Bool: \
         constructor id 04030201 is neither boolTrue nor boolFalse"
    );

    let o = cocoon(&["tl", "decode", "xyz"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not hex"));

    let o = cocoon(&["tl", "encode", "{\"@type\": \"tcp.ping\"}"], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "error: $.id: missing field");
}

#[test]
fn decodes_every_handmade_golden_vector() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testvectors/tl/handmade.txt"
    );
    let text = std::fs::read_to_string(path).expect("testvectors/tl/handmade.txt");
    let mut count = 0;
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.split('\t');
        let (name, _kind, hex) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let o = cocoon(&["tl", "decode", hex], None);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let o = cocoon(&["tl", "encode", "-"], Some(&stdout(&o)));
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), hex, "{name}: round trip differs");
        count += 1;
    }
    assert!(count >= 40, "only {count} handmade vectors");
}
