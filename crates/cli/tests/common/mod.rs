//! Running the `cocoon` binary from integration tests.

use std::process::Command;

/// Runs `cocoon ARGS`: exit code, stdout, stderr.
pub fn cocoon(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cocoon ARGS`, asserts success and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let (rc, out, err) = cocoon(args);
    assert_eq!(rc, 0, "cocoon {args:?} failed: {err}{out}");
    out
}
