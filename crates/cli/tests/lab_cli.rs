//! Issue 22 §1: the multi-host fault lab. Each role of a `cocoon up` network runs on its own
//! lab host — a Linux network namespace with its own address — and every frame between the
//! hosts goes through `scripts/lab-router` (a user-space switch in a router namespace that
//! adds latency, jitter, loss, reordering, rate limits and one-way or full partitions per
//! host and direction; this machine's kernel has no `sch_netem`). The test drives streamed and
//! whole chat completions through the client's API under each fault and records what the user
//! sees (status, error, time: never past the request's deadline), what is billed (the client's
//! `/jsonstats` tokens and the proxy's books for its clients' accounts against the usage of
//! the answers that reached the user) and that nothing acknowledged is lost (after healing:
//! the books hold at least every delivered answer, all committed, nothing halted or frozen;
//! at the end the proxy's ledger database is audited offline, clients' tokens = workers').
//!
//! `lab_ci_subset` (CI): 50 ms latency with 2 % loss, a partition of one worker with
//! failover to the other (every request answered), a worker frozen by SIGSTOP mid-stream. `lab_fault_table`
//! (`scripts/lab run`, ignored in CI): the whole table of docs/reliability.md, printed as
//! Markdown rows (and written to `$COCOON_LAB_REPORT` when set).
//!
//! Needs root (namespaces), `ip` and python3; without them the tests skip with a message,
//! except under `scripts/test` (`COCOON_REQUIRE_PREREQS`) or CI, where that is a failure.
//! Names carry this process's id (`cocoonlab<pid>-<host>`, `cl<pid>...` interfaces) so
//! parallel runs do not collide; a Drop guard removes them (`scripts/lab down` removes what a
//! killed run left).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_localnet::{Host, Hosts, Ready, Settings, Stop};
use serde_json::{Value, json};

mod common;
use common::have_test_model;

/// The lab's hosts besides the driver (this process, `.1`): name and address suffix.
const HOSTS: [(&str, u8); 5] = [
    ("chain", 2),
    ("proxy", 3),
    ("client", 4),
    ("worker-1", 5),
    ("worker-2", 6),
];
/// The client's API port on its host.
const API_PORT: u16 = 8080;
/// Each request's deadline (`timeout` in the body), seconds.
const DEADLINE: u64 = 20;
/// The client's API key (set once the lab made it).
static API_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// libfaketime, for a host's clock skew (installed by scripts/setup).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Runs a command; panics with its output when it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the lab can run here; `false` (with a message) skips, except where prerequisites
/// are required.
fn lab_possible() -> bool {
    let why = if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("`ip` (iproute2) is not installed".to_owned())
    } else if !Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("python3 is not installed".to_owned())
    } else {
        let name = format!("cocoonlab{}-probe", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .is_ok_and(|o| o.status.success());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        (!ok).then(|| "`ip netns add` failed (needs root)".to_owned())
    };
    let Some(why) = why else { return true };
    assert!(
        !cocoon_testkit::fixtures::prereqs_required(),
        "the fault lab cannot run: {why}"
    );
    eprintln!("skipped: the fault lab needs root, `ip netns` and python3: {why}");
    false
}

/// The lab network: namespaces, veth pairs, the router; removed on drop.
struct Lab {
    pid: u32,
    dir: tempfile::TempDir,
    router: Option<Child>,
    namespaces: Vec<String>,
    prefix: String,
    /// The client's API key.
    api_key: String,
}

impl Lab {
    fn ns(&self, host: &str) -> String {
        format!("cocoonlab{}-{host}", self.pid)
    }

    fn addr(&self, suffix: u8) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            64 + ((self.pid >> 8) % 128) as u8,
            self.pid as u8,
            suffix,
        )
    }

    /// The router's interface toward `host`.
    fn port(&self, host: &str) -> String {
        let i = HOSTS.iter().position(|(h, _)| *h == host).unwrap() + 1;
        format!("cl{}r{i}", self.pid)
    }

    fn new() -> Lab {
        let pid = std::process::id();
        let mut lab = Lab {
            pid,
            dir: tempfile::tempdir().unwrap(),
            router: None,
            namespaces: Vec::new(),
            prefix: String::new(),
            api_key: String::new(),
        };
        let a = lab.addr(0);
        lab.prefix = format!("{}.{}.{}", a.octets()[0], a.octets()[1], a.octets()[2]);
        let router = lab.ns("router");
        sh(&["ip", "netns", "add", &router]);
        lab.namespaces.push(router.clone());
        // The driver's port: this namespace's end keeps an address on the lab's subnet only
        // (no default route in the hosts: nothing leaves the lab).
        let d = format!("cl{pid}d");
        let r0 = format!("cl{pid}r0");
        sh(&["ip", "link", "add", &d, "type", "veth", "peer", "name", &r0]);
        sh(&["ip", "link", "set", &r0, "netns", &router]);
        let cidr = format!("{}.1/24", lab.prefix);
        sh(&["ip", "addr", "add", &cidr, "dev", &d]);
        sh(&["ip", "link", "set", &d, "up", "gso_max_segs", "1"]);
        sh(&["ip", "-n", &router, "link", "set", &r0, "up"]);
        let mut ports = vec![r0];
        for (host, suffix) in HOSTS {
            let ns = lab.ns(host);
            sh(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let r = lab.port(host);
            let h = format!("cl{pid}h{}", ports.len());
            sh(&["ip", "link", "add", &r, "type", "veth", "peer", "name", &h]);
            sh(&["ip", "link", "set", &r, "netns", &router]);
            sh(&["ip", "link", "set", &h, "netns", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", &h, "name", "eth0"]);
            let cidr = format!("{}.{suffix}/24", lab.prefix);
            sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            // One segment per frame: loss and rate act on wire-sized frames.
            sh(&[
                "ip",
                "-n",
                &ns,
                "link",
                "set",
                "eth0",
                "up",
                "gso_max_segs",
                "1",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", &router, "link", "set", &r, "up"]);
            ports.push(r);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab-router");
        let log = std::fs::File::create(lab.dir.path().join("router.log")).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &router, "python3"])
            .arg(&script)
            .arg(lab.faults_file())
            .args(&ports)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        lab.router = Some(cmd.spawn().unwrap());
        std::fs::write(
            lab.dir.path().join("launch"),
            format!(
                "#!/bin/sh\n# A lab host's launcher: the clock skew set for the role, then the role.\n\
                 role=$1; shift\n\
                 if [ -s \"{dir}/skew-$role\" ]; then\n  \
                 export FAKETIME=\"$(cat \"{dir}/skew-$role\")\" FAKETIME_DONT_FAKE_MONOTONIC=1 LD_PRELOAD={FAKETIME}\n\
                 fi\nexec \"$@\"\n",
                dir = lab.dir.path().display()
            ),
        )
        .unwrap();
        // The client's API is reachable beyond its host: it needs API keys.
        let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
            .args(["client", "key", "--file"])
            .arg(lab.dir.path().join("api-keys"))
            .arg("lab")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        lab.api_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let _ = API_KEY.set(lab.api_key.clone());
        lab.heal();
        // The router forwards once it has said so.
        let end = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(lab.dir.path().join("router.log"))
            .unwrap_or_default()
            .contains("forwarding")
        {
            assert!(Instant::now() < end, "the lab router did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        lab
    }

    fn faults_file(&self) -> PathBuf {
        self.dir.path().join("faults.json")
    }

    /// Sets the faults: `(host, "in" | "out" | "both", impairment)`; everything else is
    /// healed.
    fn set(&self, faults: &[(&str, &str, Value)]) {
        let mut all = serde_json::Map::new();
        for (host, dir, imp) in faults {
            let e = all
                .entry(self.port(host))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap();
            for d in if *dir == "both" {
                vec!["in", "out"]
            } else {
                vec![*dir]
            } {
                e.insert(d.to_owned(), imp.clone());
            }
        }
        let tmp = self.dir.path().join("faults.json.tmp");
        std::fs::write(&tmp, Value::Object(all).to_string()).unwrap();
        std::fs::rename(&tmp, self.faults_file()).unwrap();
    }

    fn heal(&self) {
        self.set(&[]);
    }

    /// The clock offset of `role` from its next start (libfaketime's `+300s` form).
    fn skew(&self, role: &str, offset: &str) {
        assert!(
            Path::new(FAKETIME).exists(),
            "{FAKETIME} is missing: scripts/setup installs it"
        );
        std::fs::write(self.dir.path().join(format!("skew-{role}")), offset).unwrap();
    }

    fn host(&self, host: &str, role: &str) -> Host {
        let suffix = HOSTS.iter().find(|(h, _)| *h == host).unwrap().1;
        let launch = self.dir.path().join("launch").display().to_string();
        Host {
            launcher: ["ip", "netns", "exec", &self.ns(host), "sh", &launch, role]
                .map(str::to_owned)
                .to_vec(),
            addr: IpAddr::V4(self.addr(suffix)),
            args: if role == "client" {
                vec![
                    "--set".into(),
                    format!(
                        "api_keys_file={}",
                        self.dir.path().join("api-keys").display()
                    ),
                ]
            } else {
                Vec::new()
            },
        }
    }

    fn hosts(&self) -> Hosts {
        Hosts {
            devnet: self.host("chain", "devnet"),
            proxy: self.host("proxy", "proxy"),
            client: self.host("client", "client"),
            workers: vec![
                self.host("worker-1", "worker-1"),
                self.host("worker-2", "worker-2"),
            ],
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut r) = self.router.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("cl{}d", self.pid)])
            .output();
    }
}

/// A `cocoon up` network on the lab's hosts, run in this process; stopped on drop.
struct Net {
    rt: tokio::runtime::Runtime,
    stop: Stop,
    /// The thread running `cocoon_localnet::run` (its future is not `Send`).
    run: Option<std::thread::JoinHandle<Result<(), cocoon_localnet::UpError>>>,
    ready: Ready,
    /// The network's state directory; kept when the test fails (its logs tell why).
    dir: Option<tempfile::TempDir>,
}

impl Net {
    fn up(lab: &Lab) -> Net {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_cocoon")),
            dir: Some(dir.path().to_owned()),
            port: API_PORT,
            workers: 2,
            model: std::env::var("COCOON_TEST_MODEL").ok(),
            backend: None,
            backend_kind: "openai".into(),
            backend_model: None,
            embeddings: false,
            hosts: Some(lab.hosts()),
        };
        let stop = Stop::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let run = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(cocoon_localnet::run(settings, s, move |r| {
                    let _ = tx.send(r.clone());
                }))
        });
        let ready = loop {
            if let Ok(r) = rx.recv_timeout(Duration::from_millis(200)) {
                break r;
            }
            if run.is_finished() {
                let end = run.join();
                panic!(
                    "the lab network did not start: {end:?}; logs in {}",
                    dir.path().display()
                );
            }
        };
        eprintln!(
            "lab: network up in {:.1} s, API {}",
            ready.took.as_secs_f64(),
            ready.api
        );
        Net {
            rt,
            stop,
            run: Some(run),
            ready,
            dir: Some(dir),
        }
    }

    fn dir(&self) -> &Path {
        &self.ready.dir
    }

    /// A role's pid from `<dir>/pids`.
    fn pid(&self, role: &str) -> u32 {
        let text = std::fs::read_to_string(self.dir().join("pids")).unwrap();
        text.lines()
            .find_map(|l| {
                let (r, p) = l.split_once(' ')?;
                (r == role).then(|| p.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {role} in {text}"))
    }

    fn get(&self, url: &str) -> Option<Value> {
        self.rt.block_on(async {
            let r = reqwest::Client::new()
                .get(url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            r.json().await.ok()
        })
    }

    /// The client's billed tokens since start (`/jsonstats`).
    fn client_tokens(&self) -> u64 {
        let s = self
            .get(&format!("{}/jsonstats", self.ready.api))
            .expect("the client's /jsonstats");
        s["stats"]["tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tokens in {s}"))
    }

    /// The proxy's books (`/jsonstats`): (Σ tokens of its clients' accounts, Σ of those
    /// committed to its ledger database, halted, frozen or failed commits in words).
    fn ledger(&self) -> (u64, u64, String) {
        let s = self
            .get(&format!("http://{}/jsonstats", self.ready.proxy_admin))
            .expect("the proxy's /jsonstats");
        // One entry per client session, each with its account's totals: a client that
        // reconnected is listed twice with the same account.
        let mut accounts = std::collections::BTreeMap::<String, (u64, u64)>::new();
        for c in s["clients"].as_array().into_iter().flatten() {
            let e = accounts
                .entry(c["client_sc"].as_str().unwrap_or("").to_owned())
                .or_default();
            e.0 = e.0.max(c["totals"]["max"].as_u64().unwrap_or(0));
            e.1 =
                e.1.max(c["totals"]["committed_to_db"].as_u64().unwrap_or(0));
        }
        let max = accounts.values().map(|a| a.0).sum();
        let db = accounts.values().map(|a| a.1).sum();
        let l = &s["ledger"];
        let mut bad = String::new();
        if !l["halted"].is_null() {
            bad.push_str(&format!("halted {} ", l["halted"]));
        }
        if l["frozen"].as_array().is_some_and(|f| !f.is_empty()) {
            bad.push_str(&format!("frozen {} ", l["frozen"]));
        }
        if l["commit_failures"].as_u64().unwrap_or(0) > 0 {
            bad.push_str(&format!("commit failures {}", l["commit_failures"]));
        }
        (max, db, bad)
    }

    /// Stops the network and audits the proxy's ledger database offline, as the crash
    /// test does: every invariant (`Ledger::audit`), clients' tokens equal workers'.
    fn finish(mut self) -> (Vec<String>, cocoon_ledger::Totals) {
        let proxy_dir = self.dir().join("proxy");
        let stats = self
            .get(&format!("http://{}/jsonstats", self.ready.proxy_admin))
            .unwrap_or_default();
        let version = stats["ledger"]["params_version"].as_u64().unwrap_or(1) as u32;
        self.stop.request();
        if let Some(run) = self.run.take() {
            let end = run.join().unwrap();
            assert!(end.is_ok(), "{end:?}");
        }
        let key = cocoon_ton::keys::SigningKey::from_file(&proxy_dir.join("proxy-key")).unwrap();
        // The chain's last checkpoint is taken to be the one the database saw confirmed
        // (this audits the books, not a rollback).
        let open = |chain| {
            let store = cocoon_ledger::SqliteStore::open(&proxy_dir.join("ledger.sqlite")).unwrap();
            cocoon_ledger::LedgerDb::open(
                store,
                &key,
                cocoon_ledger::OpenOptions {
                    params_version: version,
                    // Used only for a fresh database or a new version: neither here.
                    prices: cocoon_testkit::fixtures::prices(),
                    chain,
                    session: [7; 32],
                },
            )
        };
        let db = match open(Default::default()) {
            Err(cocoon_ledger::OpenError::ChainBehind { db_confirmed, .. }) => {
                open([(version, db_confirmed)].into()).unwrap()
            }
            other => other.unwrap(),
        };
        (db.ledger().audit(), db.ledger().totals())
    }

    fn signal(&self, role: &str, sig: &str) {
        sh(&["kill", &format!("-{sig}"), &self.pid(role).to_string()]);
    }

    /// SIGKILLs `role` and waits (at most `secs`) until the supervisor has restarted it and
    /// the client lists the model with two workers again: how long that took, or the last
    /// lines of the role's log.
    fn restart(&self, role: &str, secs: u64) -> Result<Duration, String> {
        let old = self.pid(role);
        self.signal(role, "KILL");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.dir().join("pids")).unwrap_or_default();
            let back = text.lines().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(r, p)| r == role && p.trim() != old.to_string())
            });
            if back && self.serving(2) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(secs) {
                let log = std::fs::read_to_string(self.dir().join(format!("logs/{role}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("error"))
                    .collect();
                // The cause, without the time stamp and the log target.
                let cause = |l: &&str| -> String {
                    l.find("error=")
                        .or_else(|| l.find("reason="))
                        .map_or(*l, |i| &l[i..])
                        .to_owned()
                };
                return Err(tail.last().map(cause).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether the client lists the model with at least `workers` workers.
    fn serving(&self, workers: usize) -> bool {
        self.get(&format!("{}/v1/models", self.ready.api))
            .and_then(|m| {
                m["data"]
                    .as_array()?
                    .iter()
                    .find(|e| e["id"] == self.ready.model_name.as_str())
                    .map(|e| e["workers"].as_array().map_or(1, Vec::len) >= workers)
            })
            .unwrap_or(false)
    }

    /// Waits (at most `secs`) until a short request is answered: the time it took and the
    /// tokens of every answer it got on the way.
    fn recovers(&self, secs: u64) -> (Option<Duration>, u64) {
        let start = Instant::now();
        let mut tokens = 0;
        while start.elapsed() < Duration::from_secs(secs) {
            let o = self.rt.block_on(request(&self.ready, Kind::Whole, 4, 10));
            tokens += o.tokens;
            if o.complete {
                return (Some(start.elapsed()), tokens);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (None, tokens)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            eprintln!("lab: the network's logs are kept in {}", d.keep().display());
        }
        self.stop.request();
        if let Some(run) = self.run.take() {
            match run.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("lab: the network ended with {e}"),
                Err(_) => eprintln!("lab: the network's thread panicked"),
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Stream,
    Whole,
}

/// What the user saw of one request.
#[derive(Debug, Clone)]
struct Outcome {
    kind: Kind,
    status: u16,
    /// A whole answer: 200 with usage; a stream: `[DONE]` after usage, no error event.
    complete: bool,
    /// The error the user was shown (JSON `error.message`, an error event, or the
    /// transport's), shortened.
    error: Option<String>,
    /// `usage.total_tokens` of the delivered answer (0 when none reached the user).
    tokens: u64,
    secs: f64,
    /// Seconds to the first content chunk of a stream.
    first: Option<f64>,
    /// The request outlived its deadline by more than 5 s (a hang).
    hung: bool,
}

fn short(s: &str) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > 90 {
        format!("{}…", s.chars().take(90).collect::<String>())
    } else {
        s
    }
}

/// One chat completion through the client's API with `max_tokens` and a `timeout` of
/// `deadline` seconds; `on_first` runs once the first content chunk of a stream arrived.
async fn request(ready: &Ready, kind: Kind, max_tokens: u32, deadline: u64) -> Outcome {
    request_with(ready, kind, max_tokens, deadline, || {}).await
}

async fn request_with(
    ready: &Ready,
    kind: Kind,
    max_tokens: u32,
    deadline: u64,
    on_first: impl FnOnce(),
) -> Outcome {
    use futures::StreamExt;
    let start = Instant::now();
    let mut o = Outcome {
        kind,
        status: 0,
        complete: false,
        error: None,
        tokens: 0,
        secs: 0.0,
        first: None,
        hung: false,
    };
    let body = json!({
        "model": ready.model_name,
        "messages": [{"role": "user", "content": "Count from one to fifty in words."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": kind == Kind::Stream,
        "stream_options": if kind == Kind::Stream { json!({"include_usage": true}) } else { Value::Null },
        "timeout": deadline,
    });
    let limit = Duration::from_secs(deadline + 5);
    let fut = async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", ready.api))
            .bearer_auth(API_KEY.get().map_or("", String::as_str))
            .json(&body)
            .send()
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                o.error = Some(short(&format!("transport: {e}")));
                return;
            }
        };
        o.status = r.status().as_u16();
        if kind == Kind::Whole {
            let text = r.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if o.status == 200 {
                o.tokens = v["usage"]["total_tokens"].as_u64().unwrap_or(0);
                o.complete = o.tokens > 0;
            } else {
                o.error = Some(short(
                    v["error"]["message"].as_str().unwrap_or(text.as_str()),
                ));
            }
            return;
        }
        let mut s = r.bytes_stream();
        let mut buf = String::new();
        let mut on_first = Some(on_first);
        let mut done = false;
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => buf.push_str(&String::from_utf8_lossy(&c)),
                Err(e) => {
                    o.error = Some(short(&format!("transport: {e}")));
                    break;
                }
            }
            while let Some(i) = buf.find("\n\n") {
                let ev: String = buf.drain(..i + 2).collect();
                for line in ev.lines() {
                    let Some(data) = line.strip_prefix("data: ") else {
                        continue;
                    };
                    if data == "[DONE]" {
                        done = true;
                        continue;
                    }
                    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    if !v["error"].is_null() {
                        o.error = Some(short(v["error"]["message"].as_str().unwrap_or(data)));
                    }
                    if let Some(t) = v["usage"]["total_tokens"].as_u64() {
                        o.tokens = t;
                    }
                    if v["choices"][0]["delta"]["content"].is_string()
                        && let Some(f) = on_first.take()
                    {
                        o.first = Some(start.elapsed().as_secs_f64());
                        f();
                    }
                }
            }
        }
        if o.status != 200 && o.error.is_none() {
            let v: Value = serde_json::from_str(&buf).unwrap_or(Value::Null);
            o.error = Some(short(v["error"]["message"].as_str().unwrap_or(&buf)));
        }
        o.complete = o.status == 200 && done && o.error.is_none() && o.tokens > 0;
    };
    if tokio::time::timeout(limit, fut).await.is_err() {
        o.hung = true;
        o.error = Some(format!(
            "no end {} s after the deadline",
            limit.as_secs() - deadline
        ));
    }
    o.secs = start.elapsed().as_secs_f64();
    o
}

/// One row of the results table.
struct Row {
    fault: String,
    setting: String,
    sees: String,
    billed: String,
    lost: String,
    time: String,
    ok: bool,
}

/// Runs `n` streamed and `n` whole requests at once under the current faults (set up by
/// `apply`, healed after), checks billing and the ledger after healing, and returns the
/// row.
fn scenario(
    lab: &Lab,
    net: &Net,
    fault: &str,
    setting: &str,
    n: usize,
    apply: impl FnOnce(),
) -> (Row, Vec<Outcome>) {
    let before = net.client_tokens();
    let (lc0, _, _) = net.ledger();
    apply();
    let ready = net.ready.clone();
    let outcomes: Vec<Outcome> = net.rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..2 * n {
            let r = ready.clone();
            let kind = if i % 2 == 0 {
                Kind::Stream
            } else {
                Kind::Whole
            };
            tasks.push(tokio::spawn(async move {
                request(&r, kind, 32, DEADLINE).await
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    lab.heal();
    let (recovered, probe) = net.recovers(60);
    // The ledger commits and the client counts asynchronously: give them a moment.
    std::thread::sleep(Duration::from_secs(3));
    let after = net.client_tokens();
    let (lc1, lw1, bad) = net.ledger();
    let delivered: u64 = outcomes.iter().map(|o| o.tokens).sum::<u64>() + probe;
    let complete = outcomes.iter().filter(|o| o.complete).count();
    let hung = outcomes.iter().filter(|o| o.hung).count();
    let mut errors: Vec<String> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    errors.sort();
    errors.dedup();
    let statuses: Vec<String> = {
        let mut v: Vec<String> = outcomes
            .iter()
            .filter(|o| !o.complete)
            .map(|o| format!("{:?} {}", o.kind, o.status))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut sees = format!("{complete}/{} answered", outcomes.len());
    if !statuses.is_empty() {
        let _ = write!(sees, "; not: {}", statuses.join(", "));
    }
    if !errors.is_empty() {
        let _ = write!(sees, "; {}", errors.join(" | "));
    }
    if hung > 0 {
        let _ = write!(sees, "; **{hung} HUNG past the deadline**");
    }
    let (billed, billed_ok) = billing(
        delivered,
        probe,
        after.saturating_sub(before),
        lc1.saturating_sub(lc0),
    );
    let (lost, lost_ok) = losses(lc0 + delivered, lc1, lw1, &bad);
    let max = outcomes.iter().map(|o| o.secs).fold(0.0, f64::max);
    let first = outcomes
        .iter()
        .filter_map(|o| o.first)
        .fold(None, |m: Option<f64>, f| Some(m.map_or(f, |m| m.min(f))));
    let time = format!(
        "first chunk {}; max {max:.1} s; recovered {}",
        first.map_or("-".to_owned(), |f| format!("{f:.2} s")),
        recovered.map_or("never (60 s)".to_owned(), |d| format!(
            "in {:.1} s",
            d.as_secs_f64()
        ))
    );
    let ok = hung == 0 && lost_ok && billed_ok && recovered.is_some();
    (
        Row {
            fault: fault.to_owned(),
            setting: setting.to_owned(),
            sees,
            billed,
            lost,
            time,
            ok,
        },
        outcomes,
    )
}

/// The billing cell: the tokens of the answers that reached the user (with the recovery
/// probe's), what the client counted and what the proxy's ledger added; exact when all three
/// agree.
fn billing(delivered: u64, probe: u64, client: u64, ledger: u64) -> (String, bool) {
    let ok = client == delivered && ledger == delivered;
    let text = if ok {
        format!("= delivered: {delivered} (incl. probe {probe})")
    } else {
        format!("**delivered {delivered} (probe {probe}), client {client}, ledger {ledger}**")
    };
    (text, ok)
}

/// The loss cell: the ledger holds at least every delivered answer, all committed to its
/// database, nothing halted or frozen.
fn losses(at_least: u64, ledger: u64, in_db: u64, bad: &str) -> (String, bool) {
    let ok = ledger >= at_least && in_db == ledger && bad.is_empty();
    let text = if ok {
        "none".to_owned()
    } else {
        format!("**ledger {ledger} (in db {in_db}, expected ≥ {at_least}) {bad}**")
    };
    (text, ok)
}

fn print_rows(rows: &[Row]) -> String {
    let mut t = String::from(
        "| fault | setting | user sees | billed (tokens) | lost | time |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            r.fault, r.setting, r.sees, r.billed, r.lost, r.time
        );
    }
    t
}

/// SIGSTOPs the worker serving the first stream once its first chunk arrived, keeps it
/// stopped `secs`, then SIGCONTs it.
fn freeze_mid_stream(net: &Net, secs: u64) -> (Outcome, Option<String>) {
    let ready = net.ready.clone();
    let admins = net.ready.worker_admins.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let f = s.spawn(move || {
            rx.recv().ok()?;
            // The worker with an active request is the one streaming.
            let role = admins.iter().enumerate().find_map(|(i, a)| {
                let v = net.get(&format!("http://{a}/jsonstats"))?;
                (v["active_requests"].as_u64()? > 0).then(|| format!("worker-{}", i + 1))
            })?;
            net.signal(&role, "STOP");
            std::thread::sleep(Duration::from_secs(secs));
            net.signal(&role, "CONT");
            Some(role)
        });
        let o = net.rt.block_on(request_with(
            &ready,
            Kind::Stream,
            200,
            DEADLINE,
            move || {
                let _ = tx.send(());
            },
        ));
        (o, f.join().unwrap())
    })
}

fn freeze_row(lab: &Lab, net: &Net, secs: u64) -> Row {
    let before = net.client_tokens();
    let (lc0, _, _) = net.ledger();
    let (o, role) = freeze_mid_stream(net, secs);
    lab.heal();
    let (recovered, probe) = net.recovers(60);
    std::thread::sleep(Duration::from_secs(3));
    let after = net.client_tokens();
    let (lc1, lw1, bad) = net.ledger();
    let delivered = o.tokens + probe;
    let (billed, billed_ok) = billing(
        delivered,
        probe,
        after.saturating_sub(before),
        lc1.saturating_sub(lc0),
    );
    let (lost, lost_ok) = losses(lc0 + delivered, lc1, lw1, &bad);
    Row {
        fault: "worker freezes mid-stream".into(),
        setting: format!(
            "SIGSTOP of the streaming worker ({}) after the first chunk, SIGCONT {secs} s later",
            role.as_deref().unwrap_or("none found")
        ),
        sees: format!(
            "stream {} after {:.1} s: {}{}",
            if o.complete { "completed" } else { "ended" },
            o.secs,
            o.error.clone().unwrap_or_else(|| "no error".into()),
            if o.hung {
                "; **HUNG past the deadline**"
            } else {
                ""
            }
        ),
        billed,
        lost,
        time: format!(
            "{:.1} s; recovered {}",
            o.secs,
            recovered.map_or("never (60 s)".into(), |d| format!(
                "in {:.1} s",
                d.as_secs_f64()
            ))
        ),
        ok: !o.hung && lost_ok && billed_ok && recovered.is_some() && role.is_some(),
    }
}

fn all_hosts(imp: Value) -> Vec<(&'static str, &'static str, Value)> {
    HOSTS
        .iter()
        .map(|(h, _)| (*h, "out", imp.clone()))
        .collect()
}

fn nothing() {}

/// Whether the fault table runs `fault` (`COCOON_LAB_ONLY`: a comma-separated list of words
/// of the fault names; unset: all).
fn wants(fault: &str) -> bool {
    std::env::var("COCOON_LAB_ONLY")
        .map(|only| only.split(',').any(|w| fault.contains(w.trim())))
        .unwrap_or(true)
}

/// The CI subset: 50 ms latency with 2 % loss on every host, worker-1 partitioned (the
/// other worker answers), worker frozen mid-stream.
#[test]
fn lab_ci_subset() {
    if !have_test_model() || !lab_possible() {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let net = Net::up(&lab);
    let mut rows = Vec::new();
    let (row, outs) = scenario(
        &lab,
        &net,
        "latency + loss",
        "every host: +50 ms out, 2 % loss out",
        2,
        || lab.set(&all_hosts(json!({"delay_ms": 50, "loss": 0.02}))),
    );
    assert!(outs.iter().all(|o| o.complete), "{}", row.sees);
    rows.push(row);
    let (row, outs) = scenario(
        &lab,
        &net,
        "worker partition",
        "worker-1: all frames dropped both ways",
        2,
        || lab.set(&[("worker-1", "both", json!({"drop": true}))]),
    );
    // The proxy's pings find worker-1 silent within two intervals (`worker_ping_seconds`):
    // the requests it had been given are cancelled there and answered by worker-2, well
    // within their deadline, and no new one goes to it (docs/reliability.md).
    let failed_over = outs.iter().all(|o| o.complete);
    rows.push(row);
    rows.push(freeze_row(&lab, &net, 8));
    let (audit, totals) = net.finish();
    let table = print_rows(&rows);
    println!(
        "{table}\nledger audit: {audit:?}, {totals:?}\nlab CI subset: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for r in &rows {
        assert!(r.ok, "{table}");
    }
    assert!(
        failed_over,
        "a request was not failed over to worker-2:\n{table}"
    );
    assert!(audit.is_empty(), "{audit:?}");
    assert_eq!(totals.client_tokens, totals.worker_tokens);
    assert!(totals.client_tokens > 0);
}

/// The whole fault table of docs/reliability.md (`scripts/lab run`).
#[test]
#[ignore = "the whole fault table, some minutes: scripts/lab run"]
fn lab_fault_table() {
    if !have_test_model() || !lab_possible() {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let net = Net::up(&lab);
    let mut rows = Vec::new();
    let mut run = |fault: &str, setting: &str, faults: Vec<(&str, &str, Value)>| {
        if !wants(fault) {
            return;
        }
        let (row, _) = scenario(&lab, &net, fault, setting, 2, || lab.set(&faults));
        eprintln!(
            "lab: {} | {} | {} | {}",
            row.fault, row.sees, row.billed, row.time
        );
        rows.push(row);
    };
    run("none", "baseline", vec![]);
    run(
        "latency",
        "every host +50 ms out (100 ms RTT per hop)",
        all_hosts(json!({"delay_ms": 50})),
    );
    run(
        "latency + jitter",
        "every host +200 ms ± 50 ms out (frames reorder)",
        all_hosts(json!({"delay_ms": 200, "jitter_ms": 50})),
    );
    run(
        "loss",
        "every host 1 % out",
        all_hosts(json!({"loss": 0.01})),
    );
    run(
        "loss",
        "every host 5 % out",
        all_hosts(json!({"loss": 0.05})),
    );
    run(
        "reordering",
        "every host: 25 % of frames sent at once, the rest +20 ms",
        all_hosts(json!({"delay_ms": 20, "reorder": 0.25})),
    );
    run(
        "bandwidth",
        "proxy 1 Mbit/s each way",
        vec![("proxy", "both", json!({"rate_kbit": 1000}))],
    );
    run(
        "bandwidth",
        "client 64 kbit/s each way",
        vec![("client", "both", json!({"rate_kbit": 64}))],
    );
    run(
        "worker partition",
        "worker-1 full (both ways)",
        vec![("worker-1", "both", json!({"drop": true}))],
    );
    run(
        "worker partition",
        "worker-1 one-way: its frames out dropped",
        vec![("worker-1", "out", json!({"drop": true}))],
    );
    run(
        "worker partition",
        "worker-1 one-way: frames to it dropped",
        vec![("worker-1", "in", json!({"drop": true}))],
    );
    // Held past the proxy's 60 s idle timeout for silent workers: requests sent 65 s in.
    if wants("worker partition") {
        lab.set(&[("worker-1", "both", json!({"drop": true}))]);
        std::thread::sleep(Duration::from_secs(65));
        let (row, _) = scenario(
            &lab,
            &net,
            "worker partition",
            "worker-1 full, requests sent 65 s into it",
            2,
            nothing,
        );
        eprintln!(
            "lab: {} | {} | {} | {}",
            row.fault, row.sees, row.billed, row.time
        );
        rows.push(row);
    }
    let mut run = |fault: &str, setting: &str, faults: Vec<(&str, &str, Value)>| {
        if !wants(fault) {
            return;
        }
        let (row, _) = scenario(&lab, &net, fault, setting, 2, || lab.set(&faults));
        eprintln!(
            "lab: {} | {} | {} | {}",
            row.fault, row.sees, row.billed, row.time
        );
        rows.push(row);
    };
    run(
        "proxy partition",
        "proxy full (both ways)",
        vec![("proxy", "both", json!({"drop": true}))],
    );
    run(
        "proxy partition",
        "proxy one-way: its frames out dropped",
        vec![("proxy", "out", json!({"drop": true}))],
    );
    run(
        "chain partition",
        "chain host full (both ways)",
        vec![("chain", "both", json!({"drop": true}))],
    );
    run(
        "both workers partitioned",
        "worker-1 and worker-2 full",
        vec![
            ("worker-1", "both", json!({"drop": true})),
            ("worker-2", "both", json!({"drop": true})),
        ],
    );
    for (role, skew) in [
        ("worker-1", "+30s"),
        ("worker-1", "+300s"),
        ("client", "+300s"),
        ("proxy", "-30s"),
        ("proxy", "-300s"),
    ] {
        if !wants("clock skew") {
            break;
        }
        lab.skew(role, skew);
        let setting = format!("{role} clock {skew} (libfaketime; the role restarted)");
        match net.restart(role, 60) {
            Ok(_) => {
                let (row, _) = scenario(&lab, &net, "clock skew", &setting, 2, nothing);
                eprintln!(
                    "lab: {} | {} | {} | {}",
                    row.fault, row.sees, row.billed, row.time
                );
                rows.push(row);
            }
            Err(log) => {
                eprintln!("lab: {role} {skew}: not serving; {log}");
                rows.push(Row {
                    fault: "clock skew".into(),
                    setting,
                    sees: format!(
                        "**not serving 60 s after the restart**; its log: {}",
                        short(&log)
                    ),
                    billed: "-".into(),
                    lost: "-".into(),
                    time: "-".into(),
                    ok: false,
                })
            }
        }
        lab.skew(role, "");
        let back = net.restart(role, 120);
        assert!(back.is_ok(), "{role} without skew: {back:?}");
    }
    if wants("freezes") {
        rows.push(freeze_row(&lab, &net, 10));
        rows.push(freeze_row(&lab, &net, 30));
    }
    let (audit, totals) = net.finish();
    let mut table = print_rows(&rows);
    let _ = writeln!(
        table,
        "\nAfter the run, the proxy's ledger database audited offline: {} broken invariants{}; clients {} tokens, workers {}.",
        audit.len(),
        if audit.is_empty() {
            String::new()
        } else {
            format!(" ({audit:?})")
        },
        totals.client_tokens,
        totals.worker_tokens
    );
    println!(
        "{table}\nlab fault table: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Ok(p) = std::env::var("COCOON_LAB_REPORT") {
        std::fs::write(p, &table).unwrap();
    }
}
