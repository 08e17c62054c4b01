//! Running the `cocoon` binary from integration tests.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// Starts `cocoon devnet` and returns the child, its base URL, its stdout lines so far and
/// the channel with the rest.
pub fn start_devnet(dir: &std::path::Path) -> (Child, String, Vec<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args([
            "devnet",
            "--listen",
            "127.0.0.1:0",
            "--now",
            "1800000000",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("cocoon devnet did not become ready");
        let ready = line.starts_with("ready in ");
        lines.push(line);
        if ready {
            break;
        }
    }
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("cocoon devnet: toncenter v2 API at "))
        .and_then(|u| u.strip_suffix("/api/v2/"))
        .expect("URL line")
        .to_owned();
    (child, url, lines, rx)
}

pub fn stop_devnet(mut child: Child, rx: mpsc::Receiver<String>) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "devnet exit status {status}");
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l == "cocoon devnet stopped"),
        "{rest:?}"
    );
}
