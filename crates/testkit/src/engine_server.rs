//! A real OpenAI-compatible server for the HTTP engine's tests: llama-cpp-python's, from the
//! venv `scripts/setup --engine-server` makes (`COCOON_ENGINE_SERVER_PYTHON`), started as a
//! child process by `scripts/engine-server/serve.py`, which binds `127.0.0.1:0` itself and
//! reports the port once the model is loaded (no port picked, dropped and bound again).
//!
//! Only `std`: `crates/engine/tests/external.rs` compiles this file too (`#[path]`), since
//! the engine crate cannot depend on the testkit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server, killed when dropped.
#[derive(Debug)]
pub struct EngineServer {
    child: Child,
    /// Base URL without `/v1`, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

/// How long loading the model may take before the start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(300);

impl EngineServer {
    /// The server's Python, when `COCOON_ENGINE_SERVER_PYTHON` names an existing file. When
    /// it does not: under `scripts/test` (`COCOON_REQUIRE_PREREQS` or `CI` set) the test fails;
    /// elsewhere it is skipped with a message naming what to install.
    pub fn python() -> Option<PathBuf> {
        let p = std::env::var_os("COCOON_ENGINE_SERVER_PYTHON").map(PathBuf::from);
        if let Some(p) = p.filter(|p| p.is_file()) {
            return Some(p);
        }
        let required = std::env::var_os("COCOON_REQUIRE_PREREQS").is_some()
            || std::env::var_os("CI").is_some();
        assert!(
            !required,
            "COCOON_ENGINE_SERVER_PYTHON must name the engine server's Python under \
             scripts/test (scripts/setup --engine-server makes it)"
        );
        eprintln!(
            "skipped: no real engine server (run scripts/setup --engine-server and set \
             COCOON_ENGINE_SERVER_PYTHON=~/.cache/cocoon/engine-server/venv/bin/python)"
        );
        None
    }

    /// Starts the server under `python` serving `gguf` as `name` with a context of `n_ctx`
    /// tokens; returns once it listens with the model loaded. Panics if it does not.
    pub fn start(python: &Path, gguf: &Path, name: &str, n_ctx: u32) -> EngineServer {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/engine-server/serve.py");
        // Its log (tracebacks of the requests it refuses included) goes to a file, named
        // when the start fails.
        let log = std::env::temp_dir().join(format!(
            "cocoon-engine-server-{}-{}.log",
            std::process::id(),
            name.len() ^ n_ctx as usize
        ));
        let err = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut child = Command::new(python)
            .arg(&script)
            .arg(gguf)
            .arg(name)
            .arg(n_ctx.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let url = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line.strip_prefix("listening ").map(str::to_owned),
            Err(_) => None,
        };
        let Some(url) = url else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "the engine server did not start within {START_TIMEOUT:?} ({status:?}); its log: {}",
                log.display()
            );
        };
        EngineServer { child, url }
    }
}

impl Drop for EngineServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
