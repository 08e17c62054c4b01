//! A headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands in on fd 3, answers out on fd 4, each message JSON
//! ended by a NUL byte). The two descriptors are FIFOs the shell opens for it, so the test
//! needs neither a WebSocket client nor unsafe code.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// Chromium's binary: `COCOON_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
/// Absent: `None` (the caller skips), except under `scripts/test` or CI
/// (`cocoon_testkit::fixtures::prereqs_required`), where a missing browser is a failure.
pub(crate) fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("COCOON_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            !cocoon_testkit::fixtures::prereqs_required(),
            "chromium must be installed under scripts/test (it runs scripts/setup --browser)"
        );
        eprintln!("skipped: chromium is not installed (scripts/setup --browser)");
    }
    found
}

/// A running headless Chromium and one page (tab) in it.
pub(crate) struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next: u64,
    session: String,
    _dir: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LIMIT: Duration = Duration::from_secs(60);

impl Browser {
    /// Starts `chromium` headless with a fresh profile and opens a blank page.
    pub(crate) fn start(chromium: &Path) -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let (cmd_in, cmd_out) = (dir.path().join("in"), dir.path().join("out"));
        for f in [&cmd_in, &cmd_out] {
            let ok = Command::new("mkfifo").arg(f).status().unwrap();
            assert!(ok.success(), "mkfifo {}", f.display());
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<\"$CDP_IN\" 4>\"$CDP_OUT\"")
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg("about:blank")
            .env("CDP_IN", &cmd_in)
            .env("CDP_OUT", &cmd_out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Opening a FIFO waits for its other end: done on a thread, so a browser that never
        // starts fails the test instead of hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let to = std::fs::OpenOptions::new().write(true).open(&cmd_in);
            let from = std::fs::File::open(&cmd_out);
            let _ = tx.send((to, from));
        });
        let (to, from) = rx
            .recv_timeout(LIMIT)
            .expect("chromium did not open its pipes");
        let (to, from) = (to.unwrap(), from.unwrap());
        let (mtx, mrx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop_if(|b| *b == 0);
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && mtx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from: mrx,
            next: 0,
            session: String::new(),
            _dir: dir,
        };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b.browser_call(
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Page.enable", json!({}));
        b
    }

    fn send(&mut self, session: Option<String>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let end = Instant::now() + LIMIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method} within {LIMIT:?}"));
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(None, method, params)
    }

    /// A DevTools command on the page.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.send(Some(s), method, params)
    }

    /// The value of the JavaScript expression `js` in the page (awaited if a promise).
    pub(crate) fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits (bounded) until `js` is true in the page.
    pub(crate) fn wait_for(&mut self, what: &str, js: &str) {
        let end = Instant::now() + LIMIT;
        while self.eval(js) != json!(true) {
            assert!(Instant::now() < end, "{what}: not within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets the viewport to `width` CSS pixels (a phone's below 600) and opens `url`,
    /// waiting until it and its stylesheet and script are loaded.
    pub(crate) fn open(&mut self, url: &str, width: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600}),
        );
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            &format!("{url} loaded"),
            &format!(
                "location.href === {} && document.readyState === 'complete'",
                json!(url)
            ),
        );
    }

    /// The page's whole DOM as HTML.
    pub(crate) fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Writes a PNG of the whole page (beyond the viewport) to `path`.
    pub(crate) fn screenshot(&mut self, path: &Path) {
        let m = self.call("Page.getLayoutMetrics", json!({}));
        let w = m["cssContentSize"]["width"].as_f64().unwrap();
        let h = m["cssContentSize"]["height"].as_f64().unwrap();
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
            }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
