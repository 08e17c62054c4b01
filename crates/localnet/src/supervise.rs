//! Process supervision: the children (each `cocoon <role>` in its own process
//! group, logging to `logs/<role>.log`), `<dir>/pids` and `<dir>/status.json`, waiting for
//! readiness while watching for a stop and the children, then restarting a child that exits
//! on its own (reported with the end of its log; backoff and limit in `restart`), and the
//! clean stop in reverse start order.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cocoon_service::http::reqwest;
use serde_json::Value;

use crate::UpError;
use crate::restart::{POLICY, Restarts, Verdict};

/// How long start-up may take once the roles run (an embedded model loads in that time).
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of a failed role's log that are shown.
const TAIL_LINES: usize = 20;

/// Why start-up or supervision ended.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A stop was requested.
    Stopped,
    /// Something went wrong.
    Error(UpError),
}

impl From<UpError> for Fail {
    fn from(e: UpError) -> Self {
        Fail::Error(e)
    }
}

/// A file, port or child process that could not be had.
impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::Error(UpError::Process(e))
    }
}

impl From<&str> for Fail {
    fn from(e: &str) -> Self {
        Fail::from(e.to_owned())
    }
}

/// A chain step that failed.
pub(crate) fn chain_fail(e: String) -> Fail {
    Fail::Error(UpError::Chain(e))
}

/// A model that could not be had.
pub(crate) fn model_fail(e: String) -> Fail {
    Fail::Error(UpError::Model(e))
}

pub(crate) fn say(msg: &str) {
    eprintln!("cocoon up: {msg}");
}

/// Stop requests: the first stops the network; one more while it stops kills the children
/// that are still running.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicU32>);

impl Stop {
    /// No request yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Each SIGINT, SIGTERM or SIGHUP is a request. Call it inside a tokio runtime.
    pub fn on_signals() -> Result<Self, UpError> {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ))
        })();
        let (mut int, mut term, mut hup) = streams.map_err(UpError::Signals)?;
        let stop = Stop::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
                s.request();
            }
        });
        Ok(stop)
    }

    /// Asks the network to stop (again: to stop at once).
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.count() > 0
    }

    /// Resolves once a stop is requested.
    async fn wait(&self) {
        while !self.stopping() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where a role stands.
#[derive(Debug)]
enum RoleState {
    /// Its process runs.
    Running(Child),
    /// It exited on its own; it is started again at `at`.
    Waiting {
        /// When.
        at: Instant,
    },
    /// It exited too often and is not started again.
    Failed,
}

impl RoleState {
    fn name(&self) -> &'static str {
        match self {
            RoleState::Running(_) => "running",
            RoleState::Waiting { .. } => "restarting",
            RoleState::Failed => "failed",
        }
    }
}

/// A child role: how it is started, and where it stands.
struct Proc {
    role: String,
    /// `cocoon ARGS`: the same on every start (same state directory, ports and settings).
    args: Vec<String>,
    log: PathBuf,
    state: RoleState,
    /// When its process was last started.
    started: Instant,
    /// The same in unix seconds, for `status.json`.
    started_unix: u64,
    restarts: Restarts,
    /// How it last exited, in words.
    last_exit: Option<String>,
}

impl Proc {
    fn new(role: &str, args: Vec<String>, log: PathBuf, child: Child) -> Self {
        Proc {
            role: role.to_owned(),
            args,
            log,
            state: RoleState::Running(child),
            started: Instant::now(),
            started_unix: unix_now(),
            restarts: Restarts::default(),
            last_exit: None,
        }
    }

    fn pid(&self) -> Option<u32> {
        match &self.state {
            RoleState::Running(c) => Some(c.id()),
            _ => None,
        }
    }
}

/// The children of one run and the state directory they share.
pub(crate) struct Supervisor {
    pub(crate) dir: PathBuf,
    exe: PathBuf,
    stop: Stop,
    /// In start order; stopped in reverse.
    procs: Vec<Proc>,
    http: reqwest::Client,
    /// Whether `<dir>/pids` is ours (removed when we are done).
    locked: bool,
    /// Where each role runs, when not all on this host's loopback.
    pub(crate) hosts: Option<crate::Hosts>,
}

impl Supervisor {
    pub(crate) fn new(dir: PathBuf, exe: PathBuf, stop: Stop) -> Result<Self, UpError> {
        let http = cocoon_service::http::ClientBuilder::new()
            .build()
            .map_err(|e| UpError::Process(e.to_string()))?;
        Ok(Supervisor {
            dir,
            exe,
            stop,
            procs: Vec::new(),
            http,
            locked: false,
            hosts: None,
        })
    }

    /// Creates `<dir>/logs`.
    pub(crate) fn prepare(&mut self) -> Result<(), Fail> {
        let logs = self.dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
        Ok(())
    }

    /// Runs `fut` to completion, or gives up with [`Fail::Stopped`] when a stop is requested
    /// first.
    pub(crate) async fn or_stop<T>(&self, fut: impl Future<Output = T>) -> Result<T, Fail> {
        tokio::select! {
            v = fut => Ok(v),
            _ = self.stop.wait() => Err(Fail::Stopped),
        }
    }

    /// Appends a line to `logs/setup.log` (what the bootstrap did on the chain).
    pub(crate) fn setup_log(&self, line: &str) {
        let log = self.dir.join("logs/setup.log");
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&log) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Refuses a second `cocoon up` on the same directory and stops children an earlier,
    /// killed one left behind; then claims the directory.
    pub(crate) async fn lock(&mut self) -> Result<(), Fail> {
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
                return Err(UpError::AlreadyRunning {
                    dir: self.dir.display().to_string(),
                    pid: *pid,
                }
                .into());
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
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if cmdline(*pid).is_some() {
                kill(*pid, "KILL");
            }
        }
        self.locked = true;
        self.write_pids()
    }

    /// `<dir>/pids`: this process and each running child.
    fn write_pids(&self) -> Result<(), Fail> {
        let mut text = format!("up {}\n", std::process::id());
        for p in &self.procs {
            if let Some(pid) = p.pid() {
                text.push_str(&format!("{} {pid}\n", p.role));
            }
        }
        write_atomic(&self.dir.join("pids"), text.as_bytes()).map_err(Fail::from)
    }

    /// `<dir>/status.json`: each role's state, pid, restarts, last exit and log.
    fn write_status(&self) {
        let roles: Vec<Value> = self
            .procs
            .iter()
            .map(|p| {
                serde_json::json!({
                    "role": p.role,
                    "state": p.state.name(),
                    "pid": p.pid(),
                    "since": p.started_unix,
                    "restarts": p.restarts.total(),
                    "last_exit": p.last_exit,
                    "log": p.log.display().to_string(),
                })
            })
            .collect();
        let v = serde_json::json!({ "up_pid": std::process::id(), "roles": roles });
        let _ = write_atomic(&self.dir.join("status.json"), format!("{v:#}\n").as_bytes());
    }

    /// The role's host: its launcher and address ([`crate::Hosts`]), `None` on loopback.
    fn host(&self, role: &str) -> Option<&crate::Host> {
        let h = self.hosts.as_ref()?;
        match role {
            "devnet" => Some(&h.devnet),
            "proxy" => Some(&h.proxy),
            "client" => Some(&h.client),
            w => {
                let n: usize = w.strip_prefix("worker-")?.parse().ok()?;
                h.workers.get(n.checked_sub(1)?)
            }
        }
    }

    /// The address `role` binds and is reached at: its host's, or 127.0.0.1.
    pub(crate) fn addr(&self, role: &str) -> String {
        self.host(role)
            .map_or_else(|| "127.0.0.1".to_owned(), |h| h.addr.to_string())
    }

    /// `cocoon ARGS` as `role` in its own process group, stdin closed; through the role's
    /// launcher when it has a host (the launcher execs `cocoon`, so the pid is the role's).
    fn launch(
        &self,
        role: &str,
        args: &[String],
        stdout: Stdio,
        stderr: File,
    ) -> std::io::Result<Child> {
        let mut cmd = match self.host(role).and_then(|h| h.launcher.split_first()) {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.args(args)
            .args(self.host(role).map_or(&[][..], |h| &h.args[..]))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .spawn()
    }

    /// Starts `cocoon devnet` with its state in `<dir>/devnet`; returns its base URL.
    pub(crate) async fn start_devnet(&mut self, port: u16) -> Result<String, Fail> {
        let log = self.dir.join("logs/devnet.log");
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let args: Vec<String> = vec![
            "devnet".into(),
            "--no-root".into(),
            "--listen".into(),
            format!("{}:{port}", self.addr("devnet")),
            "--dir".into(),
            self.dir.join("devnet").to_string_lossy().into_owned(),
        ];
        let mut child = self
            .launch("devnet", &args, Stdio::piped(), err)
            .map_err(|e| format!("cannot start `cocoon devnet`: {e}"))?;
        let stdout = child.stdout.take();
        self.procs.push(Proc::new("devnet", args, log, child));
        self.write_pids()?;
        self.write_status();
        let stdout = stdout.ok_or("the devnet's output is not readable")?;
        let (tx, rx) = mpsc::channel();
        let mut file = file;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let _ = tx.send(line);
            }
        });
        let mut url = None;
        self.wait_until("the devnet", async |_: &Self| {
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
        .await
        .inspect(|u| say(&format!("devnet at {u} (logs/devnet.log)")))
    }

    /// Starts `cocoon ARGS` as the child `role`, logging to `logs/<role>.log`.
    pub(crate) fn spawn(&mut self, role: &str, args: &[String]) -> Result<(), Fail> {
        let log = self.dir.join(format!("logs/{role}.log"));
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = self
            .launch(role, args, Stdio::from(file), err)
            .map_err(|e| format!("cannot start `cocoon {}`: {e}", args[0]))?;
        say(&format!("{role} started (logs/{role}.log)"));
        self.procs.push(Proc::new(role, args.to_vec(), log, child));
        self.write_status();
        self.write_pids()
    }

    /// Polls `probe` every 250 ms until it gives a value, while watching for a stop and
    /// the children.
    pub(crate) async fn wait_until<T>(
        &mut self,
        what: &str,
        mut probe: impl AsyncFnMut(&Self) -> Option<T>,
    ) -> Result<T, Fail> {
        let start = Instant::now();
        let mut next_note = start + Duration::from_secs(30);
        loop {
            if self.stop.stopping() {
                return Err(Fail::Stopped);
            }
            self.check_children()?;
            if let Some(v) = probe(self).await {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= start + READY_TIMEOUT {
                return Err(UpError::NotReady {
                    what: what.to_owned(),
                    secs: READY_TIMEOUT.as_secs(),
                    logs: self.dir.join("logs").display().to_string(),
                }
                .into());
            }
            if now >= next_note {
                say(&format!(
                    "still waiting for {what} ({} s)",
                    start.elapsed().as_secs()
                ));
                next_note = now + Duration::from_secs(30);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// GET `url` as JSON; `None` while it is not up or not JSON.
    pub(crate) async fn get_json(&self, url: &str) -> Option<Value> {
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
    }

    /// While starting: an error naming the first child that has exited, with the end of
    /// its log (a start that fails is not retried).
    fn check_children(&mut self) -> Result<(), Fail> {
        for p in &mut self.procs {
            if let RoleState::Running(child) = &mut p.state
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(UpError::RoleExited {
                    role: p.role.clone(),
                    status: describe(status),
                    log: p.log.display().to_string(),
                    tail: tail(&p.log, TAIL_LINES),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Once the network is up: restarts each child that exits on its own (with backoff,
    /// [`restart::POLICY`]) until a stop request (`Stopped`) or until the network cannot
    /// serve any more (`Error`: the devnet, the proxy, the client or every worker failed).
    pub(crate) async fn supervise(&mut self) -> Fail {
        self.write_status();
        loop {
            if self.stop.stopping() {
                return Fail::Stopped;
            }
            if let Err(f) = self.tend(Instant::now()) {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Notices the children that exited and starts those whose wait is over.
    fn tend(&mut self, now: Instant) -> Result<(), Fail> {
        for i in 0..self.procs.len() {
            // Some(exit status) to handle, or Some(None) to start again.
            let due = match &mut self.procs[i].state {
                RoleState::Running(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(Some(describe(status))),
                    _ => None,
                },
                RoleState::Waiting { at } if now >= *at => Some(None),
                _ => None,
            };
            match due {
                Some(Some(status)) => self.exited(i, status, now)?,
                Some(None) => self.restart(i, now)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Writes `pids` and `status.json` after a change, then reports it: whoever reads the
    /// line finds the files up to date.
    fn changed(&self, report: &str) -> Result<(), Fail> {
        self.write_status();
        self.write_pids()?;
        say(report);
        Ok(())
    }

    /// Child `i` exited (`status`, in words) at `now`: its restart is scheduled, or it is
    /// given up; an error when the network cannot serve without it.
    fn exited(&mut self, i: usize, status: String, now: Instant) -> Result<(), Fail> {
        let p = &mut self.procs[i];
        let log = p.log.display().to_string();
        let verdict = p.restarts.on_exit(&POLICY, p.started, now);
        p.last_exit = Some(status.clone());
        let role = p.role.clone();
        let tail = tail(&p.log, TAIL_LINES);
        match verdict {
            Verdict::Restart { delay, nth } => {
                p.state = RoleState::Waiting { at: now + delay };
                self.changed(&format!(
                    "the {role} exited on its own ({status}); restarting it in {:.1} s \
                     (restart {nth} of at most {} within {} s); the last lines of {log}:\n{tail}",
                    delay.as_secs_f64(),
                    POLICY.limit,
                    POLICY.window.as_secs(),
                ))
            }
            Verdict::GiveUp { exits } => {
                p.state = RoleState::Failed;
                let secs = POLICY.window.as_secs();
                let is_worker = |r: &str| r.starts_with("worker-");
                let workers_left = self
                    .procs
                    .iter()
                    .any(|q| is_worker(&q.role) && !matches!(q.state, RoleState::Failed));
                // The explorer only reads: the network serves without it.
                let optional = role == "explorer" || (is_worker(&role) && workers_left);
                let then = if role == "explorer" {
                    "the network keeps serving without it".to_owned()
                } else if optional {
                    format!("the others keep serving without the {role}")
                } else {
                    "the network cannot serve without it: stopping everything".to_owned()
                };
                self.changed(&format!(
                    "the {role} failed: it exited {exits} times within {secs} s, the last \
                     with {status}; it is not restarted and {then}; the last lines of \
                     {log}:\n{tail}"
                ))?;
                if optional {
                    return Ok(());
                }
                Err(UpError::RoleFailed {
                    role,
                    exits,
                    secs,
                    status,
                    log,
                }
                .into())
            }
        }
    }

    /// Starts child `i` again with the same command line, appending to its log.
    fn restart(&mut self, i: usize, now: Instant) -> Result<(), Fail> {
        let p = &self.procs[i];
        let started = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .and_then(|mut out| {
                writeln!(out, "--- cocoon up: restarting the {} ---", p.role)?;
                let err = out.try_clone()?;
                self.launch(&p.role, &p.args, Stdio::from(out), err)
            });
        match started {
            Ok(child) => {
                let p = &mut self.procs[i];
                let report = format!("{} restarted (pid {})", p.role, child.id());
                p.state = RoleState::Running(child);
                p.started = now;
                p.started_unix = unix_now();
                self.changed(&report)
            }
            Err(e) => {
                // A quick exit: the backoff grows.
                self.procs[i].started = now;
                self.exited(i, format!("cannot be started: {e}"), now)
            }
        }
    }

    /// SIGTERM to each running child, newest first (client, workers, proxy, devnet), waiting
    /// for each; a child still running after the grace period, or after a second signal, is
    /// killed.
    pub(crate) async fn stop_all(&mut self) {
        let signals_at_start = self.stop.count();
        while let Some(p) = self.procs.pop() {
            let Proc { role, state, .. } = p;
            let RoleState::Running(mut child) = state else {
                continue;
            };
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            say(&format!("stopping the {role}"));
            kill(child.id(), "TERM");
            let end = Instant::now() + STOP_GRACE;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) => {}
                    Err(_) => break None,
                }
                let again = self.stop.count() > signals_at_start;
                if Instant::now() >= end || again {
                    say(&format!("killing the {role}"));
                    let _ = child.kill();
                    break child.wait().ok();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if let Some(s) = status
                && !s.success()
                && s.code().is_some()
            {
                say(&format!("the {role} stopped with {}", describe(s)));
            }
            let _ = self.write_pids();
        }
        if self.locked {
            let _ = fs::remove_file(self.dir.join("pids"));
            let _ = fs::remove_file(self.dir.join("status.json"));
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_is_its_last_lines_indented() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("role.log");
        assert_eq!(tail(&log, 2), "  (no log)");
        fs::write(&log, "").unwrap();
        assert_eq!(tail(&log, 2), "  (the log is empty)");
        fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&log, 2), "  b\n  c");
    }

    #[tokio::test]
    async fn a_requested_stop_ends_a_wait() {
        let stop = Stop::new();
        let sup = Supervisor::new(PathBuf::from("/nonexistent"), PathBuf::new(), stop.clone());
        let sup = sup.unwrap();
        stop.request();
        let never = std::future::pending::<()>();
        assert!(matches!(sup.or_stop(never).await, Err(Fail::Stopped)));
    }
}
