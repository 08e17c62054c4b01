//! Process supervision for `cocoon up`: the children (each `cocoon <role>` in its own process
//! group, logging to `logs/<role>.log`), `<dir>/pids`, waiting for readiness while watching
//! signals and children, reporting a child that exits with the end of its log, and the clean
//! stop in reverse start order.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long start-up may take once the roles run (an embedded model loads in that time).
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of a failed role's log that are shown.
const TAIL_LINES: usize = 20;

/// Why start-up or supervision ended.
pub(super) enum Fail {
    /// A signal asked us to stop.
    Stopped,
    /// Something went wrong; one sentence (possibly followed by a log tail).
    Error(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::Error(e)
    }
}

impl From<&str> for Fail {
    fn from(e: &str) -> Self {
        Fail::Error(e.to_owned())
    }
}

pub(super) fn say(msg: &str) {
    eprintln!("cocoon up: {msg}");
}

/// The signals received so far (SIGINT, SIGTERM, SIGHUP).
#[derive(Clone)]
pub(super) struct Signals(Arc<AtomicU32>);

impl Signals {
    pub(super) fn install(rt: &tokio::runtime::Runtime) -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let count = Arc::new(AtomicU32::new(0));
        let streams = rt.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ))
        });
        let (mut int, mut term, mut hup) =
            streams.map_err(|e| format!("cannot install the signal handlers: {e}"))?;
        let c = Arc::clone(&count);
        rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(Signals(count))
    }

    fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.count() > 0
    }

    /// Resolves once a signal arrived.
    async fn wait(&self) {
        while !self.stopping() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A running child role.
struct Proc {
    role: String,
    child: Child,
    log: PathBuf,
}

/// The children of one `cocoon up` and the state directory they share.
pub(super) struct Supervisor {
    pub(super) dir: PathBuf,
    exe: PathBuf,
    rt: tokio::runtime::Runtime,
    signals: Signals,
    /// In start order; stopped in reverse.
    procs: Vec<Proc>,
    http: reqwest::Client,
    /// Whether `<dir>/pids` is ours (removed when we are done).
    locked: bool,
}

impl Supervisor {
    pub(super) fn new(dir: PathBuf, rt: tokio::runtime::Runtime, signals: Signals) -> Self {
        Supervisor {
            dir,
            exe: PathBuf::new(),
            rt,
            signals,
            procs: Vec::new(),
            http: reqwest::Client::new(),
            locked: false,
        }
    }

    /// Finds this binary (the children run it) and creates `<dir>/logs`.
    pub(super) fn prepare(&mut self) -> Result<(), Fail> {
        self.exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the cocoon binary itself: {e}"))?;
        let logs = self.dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
        Ok(())
    }

    /// Runs `fut` to completion on the runtime, or gives up with [`Fail::Stopped`] when a
    /// signal arrives first.
    pub(super) fn block_on<T>(&self, fut: impl Future<Output = T>) -> Result<T, Fail> {
        let signals = self.signals.clone();
        self.rt.block_on(async {
            tokio::select! {
                v = fut => Ok(v),
                _ = signals.wait() => Err(Fail::Stopped),
            }
        })
    }

    /// Appends a line to `logs/setup.log` (what the bootstrap did on the chain).
    pub(super) fn setup_log(&self, line: &str) {
        let log = self.dir.join("logs/setup.log");
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&log) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Refuses a second `cocoon up` on the same directory and stops children an earlier,
    /// killed one left behind; then claims the directory.
    pub(super) fn lock(&mut self) -> Result<(), Fail> {
        let text = fs::read_to_string(self.dir.join("pids")).unwrap_or_default();
        let live: Vec<(&str, u32, Vec<String>)> = text
            .lines()
            .filter_map(|line| {
                let (role, pid) = line.split_once(' ')?;
                let pid = pid.trim().parse::<u32>().ok()?;
                if pid == std::process::id() {
                    return None;
                }
                Some((role, pid, cmdline(pid)?))
            })
            .collect();
        for (role, pid, cmd) in &live {
            if *role == "up"
                && cmd.iter().any(|a| a == "up")
                && cmd.iter().any(|a| a.contains("cocoon"))
            {
                return Err(Fail::Error(format!(
                    "`cocoon up` is already running on {} (pid {pid})",
                    self.dir.display()
                )));
            }
        }
        // Newest first: the client before the devnet, as a normal stop does.
        let dir_s = self.dir.to_string_lossy().into_owned();
        for (role, pid, cmd) in live.iter().rev() {
            if *role == "up" || !cmd.iter().any(|a| a.starts_with(&dir_s)) {
                continue;
            }
            say(&format!(
                "stopping a {role} (pid {pid}) left behind by an earlier run"
            ));
            kill(*pid, "TERM");
            let end = Instant::now() + Duration::from_secs(10);
            while cmdline(*pid).is_some() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
            if cmdline(*pid).is_some() {
                kill(*pid, "KILL");
            }
        }
        self.locked = true;
        self.write_pids()
    }

    fn write_pids(&self) -> Result<(), Fail> {
        let mut text = format!("up {}\n", std::process::id());
        for p in &self.procs {
            text.push_str(&format!("{} {}\n", p.role, p.child.id()));
        }
        write_atomic(&self.dir.join("pids"), text.as_bytes()).map_err(Fail::Error)
    }

    /// Starts `cocoon devnet` with its state in `<dir>/devnet`; returns its base URL.
    pub(super) fn start_devnet(&mut self, port: u16) -> Result<String, Fail> {
        let log = self.dir.join("logs/devnet.log");
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&self.exe)
            .args(["devnet", "--no-root", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--dir")
            .arg(self.dir.join("devnet"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start `cocoon devnet`: {e}"))?;
        self.procs.push(Proc {
            role: "devnet".into(),
            child,
            log: log.clone(),
        });
        self.write_pids()?;
        let stdout = self
            .procs
            .last_mut()
            .and_then(|p| p.child.stdout.take())
            .ok_or("the devnet's output is not readable")?;
        let (tx, rx) = mpsc::channel();
        let mut file = file;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let _ = tx.send(line);
            }
        });
        let mut url = None;
        self.wait_until("the devnet", |_| {
            while let Ok(line) = rx.try_recv() {
                if let Some(u) = line
                    .strip_prefix("cocoon devnet: toncenter v2 API at ")
                    .and_then(|u| u.strip_suffix("/api/v2/"))
                {
                    url = Some(u.to_owned());
                }
                if line.starts_with("ready in ") {
                    return url.clone();
                }
            }
            None
        })
        .inspect(|u| say(&format!("devnet at {u} (logs/devnet.log)")))
    }

    /// Starts `cocoon ARGS` as the child `role`, logging to `logs/<role>.log`.
    pub(super) fn spawn(&mut self, role: &str, args: &[String]) -> Result<(), Fail> {
        let log = self.dir.join(format!("logs/{role}.log"));
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&self.exe)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start `cocoon {}`: {e}", args[0]))?;
        say(&format!("{role} started (logs/{role}.log)"));
        self.procs.push(Proc {
            role: role.into(),
            child,
            log,
        });
        self.write_pids()
    }

    /// Polls `probe` every 250 ms until it gives a value, while watching the signals and
    /// the children.
    pub(super) fn wait_until<T>(
        &mut self,
        what: &str,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, Fail> {
        let start = Instant::now();
        let mut next_note = start + Duration::from_secs(30);
        loop {
            if self.signals.stopping() {
                return Err(Fail::Stopped);
            }
            self.check_children()?;
            if let Some(v) = probe(self) {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= start + READY_TIMEOUT {
                return Err(Fail::Error(format!(
                    "{what} was not ready after {} s; see the logs in {}",
                    READY_TIMEOUT.as_secs(),
                    self.dir.join("logs").display()
                )));
            }
            if now >= next_note {
                say(&format!(
                    "still waiting for {what} ({} s)",
                    start.elapsed().as_secs()
                ));
                next_note = now + Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// GET `url` as JSON; `None` while it is not up or not JSON.
    pub(super) fn get_json(&self, url: &str) -> Option<Value> {
        self.rt.block_on(async {
            let r = self
                .http
                .get(url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json::<Value>().await.ok()
        })
    }

    /// An error naming the first child that has exited, with the end of its log.
    fn check_children(&mut self) -> Result<(), Fail> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(Fail::Error(format!(
                    "the {} exited on its own ({}); the last lines of {}:\n{}",
                    p.role,
                    describe(status),
                    p.log.display(),
                    tail(&p.log, TAIL_LINES)
                )));
            }
        }
        Ok(())
    }

    /// Watches the children until a signal (`Stopped`) or one of them exits (`Error`).
    pub(super) fn supervise(&mut self) -> Fail {
        loop {
            if self.signals.stopping() {
                return Fail::Stopped;
            }
            if let Err(f) = self.check_children() {
                return f;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM to each child, newest first (client, workers, proxy, devnet), waiting for
    /// each; a child still running after the grace period, or after a second signal, is
    /// killed.
    pub(super) fn stop_all(&mut self) {
        let signals_at_start = self.signals.count();
        while let Some(mut p) = self.procs.pop() {
            if let Ok(Some(_)) = p.child.try_wait() {
                continue;
            }
            say(&format!("stopping the {}", p.role));
            kill(p.child.id(), "TERM");
            let end = Instant::now() + STOP_GRACE;
            let status = loop {
                match p.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) => {}
                    Err(_) => break None,
                }
                let again = self.signals.count() > signals_at_start;
                if Instant::now() >= end || again {
                    say(&format!("killing the {}", p.role));
                    let _ = p.child.kill();
                    break p.child.wait().ok();
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if let Some(s) = status
                && !s.success()
                && s.code().is_some()
            {
                say(&format!("the {} stopped with {}", p.role, describe(s)));
            }
            let _ = self.write_pids();
        }
        if self.locked {
            let _ = fs::remove_file(self.dir.join("pids"));
        }
    }
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The arguments of a live process (Linux /proc), `None` when there is none.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None; // a zombie or a kernel thread
    }
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Sends a signal through `kill(1)` (this crate has no unsafe code for `kill(2)`).
fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => s.to_string(),
    }
}

/// The last `n` lines of a log, indented; a note when there is none.
fn tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return "  (no log)".into();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "  (the log is empty)".into();
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
