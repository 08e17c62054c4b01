//! `cocoon attest probe` as a real process against real peers on the devnet: a `cocoon
//! proxy` (sim TEE, test root) probed on its client port, refused by a production policy
//! and, once the root drops its image, by the root; and `--as-proxy` accepting a worker's
//! connection (another probe presenting sim evidence, and a real `cocoon worker` when the
//! test model is available).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{
    Killed, SimRoot, cocoon, get_json, have_test_model, start_devnet, stop_devnet, wait_for,
    worker_process,
};

fn sim_image() -> String {
    hex::encode(cocoon_attest::sim::sim_image_hash())
}

/// The one line on stderr of a failed run (exit code 1).
fn one_line_error(rc: i32, out: &str, err: &str) -> String {
    assert_eq!(rc, 1, "stdout: {out}\nstderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    err.trim_end().to_owned()
}

#[test]
fn probe_a_live_proxy_shows_its_evidence_and_the_roots_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let (devnet, url, _lines, rx) = start_devnet(&tmp.path().join("devnet"));
    let mut devnet = Killed::new(devnet);
    let net = SimRoot::deploy(tmp.path(), &url, "31");
    let (_proxy, bound) = net.proxy(&tmp.path().join("proxy"));
    let (admin, pw, pc) = (
        bound.get("admin_listen"),
        bound.get("worker_listen"),
        bound.get("client_listen"),
    );
    wait_for("the proxy's admin server", || {
        get_json(&format!("http://{admin}/jsonstats")).is_some()
    });
    let probe = |extra: &[&str]| {
        let mut a = vec!["attest", "probe", pc.as_str()];
        a.extend_from_slice(extra);
        cocoon(&a)
    };
    let with_root = ["--test", "--root", &net.root, "--ton", &url];

    // Accepted: the proxy's sim evidence, and the root lists its image for proxies.
    let (rc, out, err) = probe(&with_root);
    assert_eq!(rc, 0, "{out}{err}");
    let line = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("no {key:?} in {out}"))
            .to_owned()
    };
    assert_eq!(line("peer:"), format!("proxy at {pc}"));
    assert_eq!(line("status:"), "accepted (policy any, test network)");
    assert_eq!(line("backend:"), "sim");
    assert_eq!(line("image hash:"), sim_image());
    assert_eq!(line("tcb status:"), "UpToDate");
    assert_eq!(line("measurement:"), format!("{} (sim)", "ff".repeat(48)));
    assert!(line("valid until:").ends_with("Z)"), "{out}");
    assert_eq!(line("session:"), "opened (tcp.connect answered)");
    assert!(
        line("root:").starts_with("allowed: image in proxy_hashes (1 listed)"),
        "{out}"
    );
    // The same as JSON.
    let (rc, json, err) = probe(&[&with_root[..], &["--json"]].concat());
    assert_eq!(rc, 0, "{json}{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["peer"], "proxy");
    assert_eq!(v["evidence"]["backend"], "sim");
    assert_eq!(v["evidence"]["image_hash"], sim_image());
    assert_eq!(v["root"]["allowed"], true);

    // A production policy refuses sim evidence: the typed reason in one line.
    let (rc, out, err) = probe(&[]);
    let e = one_line_error(rc, &out, &err);
    assert!(
        e.starts_with("error: handshake refused: peer certificate refused: attestation rejected:"),
        "{e}"
    );
    assert!(
        e.contains("sim") && e.ends_with("(the peer's fault)"),
        "{e}"
    );
    // A proxy's worker port refuses a worker without evidence: the proxy's evidence is
    // shown, then the proxy's refusal of ours.
    let (rc, out, err) = cocoon(&["attest", "probe", &pw, "--test"]);
    let e = one_line_error(rc, &out, &err);
    assert!(out.contains("backend:        sim"), "{out}");
    assert!(out.contains("session:        refused: "), "{out}");
    assert!(
        e.starts_with("error: session refused: the proxy did not open the session"),
        "{e}"
    );

    // The root drops the proxy image: the evidence still verifies, the root refuses it.
    net.op(&["del-image", "--kind", "proxy", &sim_image()]);
    let (rc, out, err) = probe(&with_root);
    let e = one_line_error(rc, &out, &err);
    assert!(out.contains("backend:        sim"), "{out}");
    let refused = format!(
        "the proxy's image hash {} is not in the root's proxy_hashes (0 listed)",
        sim_image()
    );
    assert!(
        out.contains(&format!("root:           refused: {refused}")),
        "{out}"
    );
    assert!(
        e.starts_with(&format!("error: refused by the root: {refused}")),
        "{e}"
    );
    stop_devnet(devnet.take(), rx);
}

/// Starts `cocoon attest probe --as-proxy --listen ADDR ARGS...` and returns it with the
/// address it listens on.
fn as_proxy(listen: &str, args: &[&str]) -> (Killed, String, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(["attest", "probe", "--as-proxy", "--listen", listen])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first
        .strip_prefix("listening:")
        .and_then(|l| l.trim().split(' ').next())
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .to_owned();
    (Killed::new(child), addr, out)
}

/// The rest of an `--as-proxy` probe's output and its exit code.
fn finish(
    mut child: Killed,
    mut out: BufReader<std::process::ChildStdout>,
) -> (i32, String, String) {
    use std::io::Read;
    let mut c = child.take();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = c.wait().unwrap();
    (status.code().unwrap_or(-1), text, err)
}

#[test]
fn probe_as_proxy_shows_a_workers_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let (devnet, url, _lines, rx) = start_devnet(&tmp.path().join("devnet"));
    let mut devnet = Killed::new(devnet);
    let net = SimRoot::deploy(tmp.path(), &url, "32");
    let root_args = ["--test", "--tee", "sim", "--root", &net.root, "--ton", &url];

    // Another probe dials it with sim evidence, as a worker does.
    let (child, addr, out) = as_proxy("127.0.0.1:0", &root_args);
    let (rc, dial_out, dial_err) = cocoon(&["attest", "probe", &addr, "--test", "--tee", "sim"]);
    assert_eq!(rc, 0, "{dial_out}{dial_err}");
    assert!(dial_out.contains("backend:        sim"), "{dial_out}");
    let (rc, text, err) = finish(child, out);
    assert_eq!(rc, 0, "{text}{err}");
    assert!(
        text.contains("peer:           worker at 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains(&format!("image hash:     {}", sim_image())));
    assert!(
        text.contains("root:           allowed: image in worker_hashes (1 listed)"),
        "{text}"
    );

    // A dialer without evidence is refused by the probe's policy, in one line.
    let (child, addr, out) = as_proxy("127.0.0.1:0", &root_args);
    let _ = cocoon(&["attest", "probe", &addr, "--test"]);
    let (rc, text, err) = finish(child, out);
    let e = one_line_error(rc, &text, &err);
    assert!(
        e.starts_with("error: handshake refused: peer certificate refused:"),
        "{e}"
    );

    // A real worker, following the root that registers the probe's address as its proxy
    // (nobody listens for clients at port 0).
    if have_test_model() {
        let (child, addr, out) = as_proxy("127.0.0.1:0", &root_args);
        net.register(&addr, "127.0.0.1:0");
        let (_worker, _) = worker_process(&net.root, &url, "1", &tmp.path().join("worker"));
        let (rc, text, err) = finish(child, out);
        assert_eq!(rc, 0, "{text}{err}");
        assert!(
            text.contains("peer:           worker at 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("backend:        sim"), "{text}");
        assert!(text.contains("root:           allowed: image in worker_hashes"));
    }
    stop_devnet(devnet.take(), rx);
}
