//! `cocoon up`: the whole network on one machine in one command.
//!
//! It runs `cocoon devnet` (chain state in `<dir>/devnet`), makes an owner wallet, a wallet key
//! for the workers' earnings (`worker-owner.key`, never needs funds) and a
//! client wallet and funds them from the devnet faucet, deploys a test root contract that
//! allows the simulated TEE image for workers and proxies, registers the proxy and the
//! model, then runs `cocoon proxy`, `--workers N` × `cocoon worker` (the embedded engine with
//! the default model, or `--backend URL`) and `cocoon client` on `127.0.0.1:<port>` — each
//! a child process of this binary in its own process group, logging to
//! `<dir>/logs/<role>.log`. It waits until the client has a ready proxy session and lists
//! the model, prints where everything is and `cocoon up: ready`, then watches: SIGINT,
//! SIGTERM or SIGHUP stops the children in reverse order (client first, devnet last) and
//! exits 0; a child that exits on its own is reported with the end of its log, the others
//! are stopped and the exit code is 1.
//!
//! What it created is saved in `<dir>/up.json` (root address, wallets, ports, model), so a
//! second run reuses the chain, the root, the balances, the proxy's ledger and the client's
//! receipts instead of starting over. `<dir>/pids` names the running processes: a second
//! `cocoon up` on the same directory is refused, and children left behind by a `cocoon up`
//! that was killed are stopped before the next start.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use cocoon_engine::store::{self, ModelStore};
use cocoon_ton::chain::{Chain, load_root_config};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::{RootConfig, model_hash};
use cocoon_ton::toncenter::{Devnet, Toncenter};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{HashBytes, StdAddr, format_ton, parse_address};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::role;

/// The model a worker serves when none is named.
const DEFAULT_MODEL: &str = "smollm2-135m";
/// Preferred ports (the roles' defaults); a busy one is replaced by a free one.
const DEVNET_PORT: u16 = 8081;
const PROXY_WORKER_PORT: u16 = 9101;
const PROXY_CLIENT_PORT: u16 = 9102;
const PROXY_ADMIN_PORT: u16 = 12100;
const WORKER_ADMIN_PORT: u16 = 12000;
/// Faucet top-ups: a wallet below `LOW` nanoTON gets `GRANT` more.
const OWNER_LOW: u128 = 20_000_000_000;
const OWNER_GRANT: u128 = 100_000_000_000;
const CLIENT_LOW: u128 = 10_000_000_000;
const CLIENT_GRANT: u128 = 50_000_000_000;
const WORKER_LOW: u128 = 1_000_000_000;
const WORKER_GRANT: u128 = 2_000_000_000;
/// What the workers' owner sends to deploy its worker contract (COCOON: 0.3 TON).
const WORKER_DEPLOY: u64 = 300_000_000;
/// How long start-up may take once the roles run (an embedded model loads in that time).
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of a failed role's log that are shown.
const TAIL_LINES: usize = 20;

/// Options of `cocoon up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// State directory: chain, wallets, the roles' state, logs/ and up.json (default:
    /// ~/.local/share/cocoon/up). A second run on it reuses everything.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Port of the OpenAI-compatible API (and the client's /stats) on 127.0.0.1.
    #[arg(long, default_value_t = 10000)]
    port: u16,
    /// How many workers to run.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// The model: a model store alias, name or id, or a GGUF file (embedded engine; default
    /// smollm2-135m, pulled if missing); with --backend, the full model id
    /// Name@revision:sha256 the workers announce.
    #[arg(long)]
    model: Option<String>,
    /// An OpenAI-compatible inference server (vLLM, SGLang, llama-server, Ollama) the
    /// workers use instead of the embedded llama.cpp, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    backend: Option<String>,
    /// What --backend is: vllm, sglang, llama-server, ollama or openai.
    #[arg(long, default_value = "openai")]
    backend_kind: String,
    /// The model name the backend serves (default: the part of --model before `@`).
    #[arg(long)]
    backend_model: Option<String>,
}

/// What a run created, kept in `<dir>/up.json` for the next run.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
struct Saved {
    root_address: String,
    owner_key_file: String,
    owner_address: String,
    client_key_file: String,
    client_address: String,
    /// Where the workers' earnings go (a wallet key made for it; never needs funds).
    worker_owner_key_file: String,
    worker_owner_address: String,
    model: String,
    devnet_port: u16,
    proxy_worker_port: u16,
    proxy_client_port: u16,
    proxy_admin_port: u16,
    worker_admin_ports: Vec<u16>,
    api_port: u16,
}

/// Why start-up or supervision ended.
enum Fail {
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

/// The signals received so far (SIGINT, SIGTERM, SIGHUP).
#[derive(Clone)]
struct Signals(Arc<AtomicU32>);

impl Signals {
    fn install(rt: &tokio::runtime::Runtime) -> Result<Self, String> {
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

/// The checked command line.
struct Plan {
    dir: PathBuf,
    port: u16,
    workers: u32,
    model: String,
    backend: Option<String>,
    backend_kind: String,
    backend_model: Option<String>,
}

fn plan(args: UpArgs) -> Result<Plan, String> {
    if args.workers == 0 || args.workers > 64 {
        return Err(format!(
            "--workers must be between 1 and 64, not {}",
            args.workers
        ));
    }
    if args.port == 0 {
        return Err("--port must be a port number between 1 and 65535".into());
    }
    let dir = match args.dir {
        Some(d) if d.as_os_str().is_empty() => return Err("--dir must not be empty".into()),
        Some(d) => d,
        None => role::default_state_dir("up"),
    };
    let dir = std::path::absolute(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if dir.to_str().is_none() {
        return Err(format!("{} is not a UTF-8 path", dir.display()));
    }
    let model = args.model.unwrap_or_default();
    if let Some(b) = &args.backend {
        if !(b.starts_with("http://") || b.starts_with("https://")) {
            return Err(format!("--backend {b:?} is not an http:// or https:// URL"));
        }
        if cocoon_engine::BackendKind::parse(&args.backend_kind).is_none() {
            return Err(format!(
                "--backend-kind {:?} is not one of vllm, sglang, llama-server, ollama, openai",
                args.backend_kind
            ));
        }
        if model.is_empty() {
            return Err(
                "--backend needs --model with the full model id (Name@revision:sha256)".into(),
            );
        }
        if !model.contains('@') || cocoon_worker::config::model_base_name(&model).is_none() {
            return Err(format!(
                "--model {model:?} is not a full model id (Name@revision:sha256 of the weights)"
            ));
        }
    } else if args.backend_model.is_some() {
        return Err("--backend-model needs --backend".into());
    }
    let model = if model.is_empty() {
        DEFAULT_MODEL.to_owned()
    } else {
        model
    };
    Ok(Plan {
        dir,
        port: args.port,
        workers: args.workers,
        model,
        backend: args.backend,
        backend_kind: args.backend_kind,
        backend_model: args.backend_model,
    })
}

/// Runs `cocoon up` until a signal or a failure.
pub fn main(args: UpArgs) -> ExitCode {
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(crate::config::EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let signals = match Signals::install(&rt) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // reqwest is built without a default TLS crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut up = Up {
        dir: plan.dir.clone(),
        exe: PathBuf::new(),
        rt,
        signals,
        procs: Vec::new(),
        http: reqwest::Client::new(),
        locked: false,
    };
    let started = Instant::now();
    let end = match up.start(&plan) {
        Ok(ready) => {
            ready.print(&up.dir, started.elapsed());
            up.supervise()
        }
        Err(f) => f,
    };
    up.stop_all();
    // The error last, so that it is what the terminal shows at the bottom.
    match end {
        Fail::Stopped => {
            println!("cocoon up: stopped");
            ExitCode::SUCCESS
        }
        Fail::Error(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the ready message shows.
struct Ready {
    api: String,
    model_name: String,
    proxy_admin: String,
    worker_admins: Vec<String>,
    devnet: String,
    root: String,
    client_token: PathBuf,
}

impl Ready {
    fn print(&self, dir: &Path, took: Duration) {
        let mut o = String::new();
        o.push_str(&format!(
            "cocoon up: the network is running (state in {}, started in {:.1} s)\n\n",
            dir.display(),
            took.as_secs_f64()
        ));
        o.push_str(&format!(
            "  OpenAI API   {}/v1   (model {})\n",
            self.api, self.model_name
        ));
        o.push_str(&format!("  dashboards   client    {}/stats\n", self.api));
        o.push_str(&format!(
            "               proxy     http://{}/stats\n",
            self.proxy_admin
        ));
        for (i, w) in self.worker_admins.iter().enumerate() {
            let label = if self.worker_admins.len() == 1 {
                "worker".to_owned()
            } else {
                format!("worker-{}", i + 1)
            };
            o.push_str(&format!("               {label:<9} http://{w}/stats\n"));
        }
        o.push_str(&format!(
            "  chain        devnet    {}/api/v2/   root {}\n",
            self.devnet, self.root
        ));
        o.push_str(&format!("  logs         {}\n", dir.join("logs").display()));
        o.push_str(&format!(
            "  operate      cocoon client status --api {}   (topup: add --token-file {})\n\n",
            self.api,
            self.client_token.display()
        ));
        let body = serde_json::json!({
            "model": self.model_name,
            "messages": [{"role": "user", "content": "Hello! Who are you?"}],
            "stream": true,
        });
        o.push_str("Try it:\n");
        o.push_str(&format!(
            "  curl -N {}/v1/chat/completions -H 'Content-Type: application/json' \\\n    -d '{}'\n\n",
            self.api, body
        ));
        o.push_str(
            "Ctrl-C stops everything; `cocoon up` again resumes with the same chain, root and \
             balances.\n",
        );
        o.push_str("cocoon up: ready\n");
        print!("{o}");
        let _ = std::io::stdout().flush();
    }
}

struct Up {
    dir: PathBuf,
    exe: PathBuf,
    rt: tokio::runtime::Runtime,
    signals: Signals,
    /// In start order; stopped in reverse.
    procs: Vec<Proc>,
    http: reqwest::Client,
    /// Whether `<dir>/pids` is ours (removed when we are done).
    locked: bool,
}

fn say(msg: &str) {
    eprintln!("cocoon up: {msg}");
}

impl Up {
    fn start(&mut self, plan: &Plan) -> Result<Ready, Fail> {
        self.exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the cocoon binary itself: {e}"))?;
        let dir = self.dir.clone();
        fs::create_dir_all(dir.join("logs"))
            .map_err(|e| format!("cannot create {}: {e}", dir.join("logs").display()))?;
        self.lock()?;
        // The API port is the user's choice: a busy one is an error, not a surprise.
        let api_listen = format!("127.0.0.1:{}", plan.port);
        if std::net::TcpListener::bind(&api_listen).is_err() {
            return Err(Fail::Error(format!(
                "{api_listen} is already in use (another `cocoon up` or `cocoon client`?); \
                 choose another port with --port"
            )));
        }
        let mut saved = self.load_saved()?;
        let first_run = saved.root_address.is_empty();
        say(&format!(
            "{} {}",
            if first_run {
                "creating a local network in"
            } else {
                "resuming the local network in"
            },
            dir.display()
        ));

        // The model first: a pull shows its progress before anything else starts.
        let model = self.resolve_model(plan)?;
        let mut taken = vec![plan.port];
        saved.devnet_port = pick_port(saved.devnet_port, DEVNET_PORT, &mut taken)?;
        saved.proxy_worker_port =
            pick_port(saved.proxy_worker_port, PROXY_WORKER_PORT, &mut taken)?;
        saved.proxy_client_port =
            pick_port(saved.proxy_client_port, PROXY_CLIENT_PORT, &mut taken)?;
        saved.proxy_admin_port = pick_port(saved.proxy_admin_port, PROXY_ADMIN_PORT, &mut taken)?;
        let mut worker_ports = Vec::new();
        for i in 0..plan.workers as usize {
            let prev = saved.worker_admin_ports.get(i).copied().unwrap_or(0);
            let default = WORKER_ADMIN_PORT.saturating_add(i as u16);
            worker_ports.push(pick_port(prev, default, &mut taken)?);
        }
        saved.worker_admin_ports = worker_ports;
        saved.api_port = plan.port;
        saved.model = model.clone();

        // The chain.
        let url = self.start_devnet(saved.devnet_port)?;
        let chain = Toncenter::with_url(&url).map_err(|e| format!("devnet client: {e}"))?;

        // Wallets, funded from the faucet.
        let owner_key = dir.join("owner.key");
        let client_key = dir.join("client.key");
        let owner = ensure_wallet(&owner_key)?;
        let client = ensure_wallet(&client_key)?;
        let worker_owner_key = dir.join("worker-owner.key");
        let worker_owner = ensure_wallet(&worker_owner_key)?;
        saved.worker_owner_key_file = path_str(&worker_owner_key);
        saved.worker_owner_address = worker_owner.to_string();
        saved.owner_key_file = path_str(&owner_key);
        saved.owner_address = owner.to_string();
        saved.client_key_file = path_str(&client_key);
        saved.client_address = client.to_string();
        self.fund(&chain, &owner, OWNER_LOW, OWNER_GRANT, "owner")?;
        self.fund(&chain, &client, CLIENT_LOW, CLIENT_GRANT, "client")?;
        self.fund(
            &chain,
            &worker_owner,
            WORKER_LOW,
            WORKER_GRANT,
            "workers' owner",
        )?;

        // The root contract: deployed once, then configured for this network.
        let root = self.ensure_root(&chain, &saved, &url)?;
        saved.root_address = root.to_string();
        self.save(&saved)?;
        let pw = format!("127.0.0.1:{}", saved.proxy_worker_port);
        let pc = format!("127.0.0.1:{}", saved.proxy_client_port);
        self.configure_root(
            &chain,
            &root,
            &url,
            &owner_key,
            &format!("{pw} {pc}"),
            &model,
        )?;

        // The roles. Root operations are done: from here on the proxy owns the owner wallet.
        let owner_raw = owner.to_string();
        let worker_owner_raw = worker_owner.to_string();
        let root_s = root.to_string();
        let padmin = format!("127.0.0.1:{}", saved.proxy_admin_port);
        let state = |name: &str| path_str(&dir.join(name));
        let owner_wallet = format!("wallet_key_file={}", path_str(&owner_key));
        let proxy_args = argv(
            "proxy --test --tee sim --set stake_ton=1 --set checkpoint_seconds=2 \
             --set root_poll_seconds=2 --set pow_difficulty=4",
            &[
                ("--owner", &owner_raw),
                ("--root", &root_s),
                ("--ton", &url),
                ("--worker-listen", &pw),
                ("--client-listen", &pc),
                ("--admin", &padmin),
                ("--state-dir", &state("proxy")),
                ("--set", &owner_wallet),
            ],
        );
        self.spawn("proxy", &proxy_args)?;
        self.wait_until("the proxy's admin API", |up| {
            up.get_json(&format!("http://{padmin}/jsonstats"))
        })?;

        let threads = if plan.workers > 1 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / plan.workers as usize).max(1)
        } else {
            0
        };
        let mut worker_admins = Vec::new();
        for (i, port) in saved.worker_admin_ports.iter().enumerate() {
            let n = i + 1;
            let wadmin = format!("127.0.0.1:{port}");
            let mut a = argv(
                "worker --test --tee sim --set root_poll_seconds=2",
                &[
                    ("--owner", &worker_owner_raw),
                    ("--root", &root_s),
                    ("--ton", &url),
                    ("--model", &model),
                    ("--admin", &wadmin),
                    ("--state-dir", &state(&format!("worker-{n}"))),
                ],
            );
            if let Some(b) = &plan.backend {
                a.extend(["--backend".into(), b.clone()]);
                a.extend([
                    "--set".into(),
                    format!("backend_kind={}", plan.backend_kind),
                ]);
                if let Some(m) = &plan.backend_model {
                    a.extend(["--set".into(), format!("backend_model={m}")]);
                }
            } else if threads > 0 {
                a.extend(["--set".into(), format!("threads={threads}")]);
            }
            self.spawn(&format!("worker-{n}"), &a)?;
            worker_admins.push(wadmin);
        }

        let api = format!("http://{api_listen}");
        let client_wallet = format!("wallet_key_file={}", path_str(&client_key));
        let client_args = argv(
            "client --test --tee sim --set top_up_ton=5 --set payment_status_seconds=2 \
             --set root_poll_seconds=2",
            &[
                ("--root", &root_s),
                ("--ton", &url),
                ("--listen", &api_listen),
                ("--state-dir", &state("client")),
                ("--set", &client_wallet),
            ],
        );
        self.spawn("client", &client_args)?;

        // Ready: the workers admitted, a proxy session, and the model listed.
        let n = plan.workers as usize;
        for (i, w) in worker_admins.iter().enumerate() {
            self.wait_until(&format!("worker-{} to load the model", i + 1), |up| {
                up.get_json(&format!("http://{w}/jsonstats"))
            })?;
        }
        self.wait_until(&format!("the proxy to admit {n} worker(s)"), |up| {
            let s = up.get_json(&format!("http://{padmin}/jsonstats"))?;
            (s["workers"].as_array()?.len() >= n).then_some(())
        })?;
        self.deploy_worker_contract(&chain, &root, &owner, &worker_owner_key, &worker_owner)?;
        self.wait_until("the client's session with the proxy", |up| {
            let s = up.get_json(&format!("{api}/jsonstats"))?;
            (s["proxies_ready"].as_u64()? >= 1).then_some(())
        })?;
        let base = cocoon_worker::config::model_base_name(&model)
            .unwrap_or(&model)
            .to_owned();
        let what = match &plan.backend {
            Some(b) => format!("the model in the client's /v1/models (is {b} serving it?)"),
            None => "the model in the client's /v1/models".to_owned(),
        };
        let model_name = self.wait_until(&what, |up| {
            let m = up.get_json(&format!("{api}/v1/models"))?;
            m["data"]
                .as_array()?
                .iter()
                .filter_map(|e| e["id"].as_str())
                .find(|id| *id == base)
                .map(str::to_owned)
        })?;
        Ok(Ready {
            api,
            model_name,
            proxy_admin: padmin,
            worker_admins,
            devnet: url,
            root: root_s,
            client_token: dir.join("client").join("admin-token"),
        })
    }

    /// Refuses a second `cocoon up` on the same directory and stops children an earlier,
    /// killed one left behind; then claims the directory.
    fn lock(&mut self) -> Result<(), Fail> {
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
        let dir_s = path_str(&self.dir);
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
        let path = self.dir.join("pids");
        write_atomic(&path, text.as_bytes()).map_err(Fail::Error)
    }

    fn load_saved(&self) -> Result<Saved, Fail> {
        let path = self.dir.join("up.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Fail::Error(format!(
                    "{} is not a `cocoon up` state file ({e}); move it away to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
            Err(e) => Err(Fail::Error(format!("{}: {e}", path.display()))),
        }
    }

    fn save(&self, s: &Saved) -> Result<(), Fail> {
        let text = serde_json::to_string_pretty(s).map_err(|e| e.to_string())?;
        write_atomic(&self.dir.join("up.json"), format!("{text}\n").as_bytes()).map_err(Fail::Error)
    }

    /// The full model id the workers will announce; an embedded model missing from the
    /// store is pulled here, with its progress on the terminal.
    fn resolve_model(&self, plan: &Plan) -> Result<String, Fail> {
        if plan.backend.is_some() {
            return Ok(plan.model.clone());
        }
        let dir = crate::model_cmd::default_dir();
        let st =
            ModelStore::open(&dir).map_err(|e| format!("model store {}: {e}", dir.display()))?;
        let path = Path::new(&plan.model);
        if path.is_file() {
            // A GGUF file: into the store (as the worker would), then named by its id.
            let given = fs::canonicalize(path).map_err(|e| format!("{}: {e}", plan.model))?;
            let list = st.list().map_err(|e| e.to_string())?;
            if let Some(r) = list
                .iter()
                .find(|r| fs::canonicalize(st.path_of(r)).is_ok_and(|p| p == given))
            {
                return Ok(r.id());
            }
            let stem = path
                .file_stem()
                .and_then(|x| x.to_str())
                .unwrap_or("model")
                .to_owned();
            say(&format!("adding {} to the model store", plan.model));
            let rec = st
                .add_file(path, &stem, "local", None)
                .map_err(|e| format!("cannot add {} to the model store: {e}", plan.model))?;
            return Ok(rec.id());
        }
        if let Ok(r) = st.get(&plan.model) {
            return Ok(r.id());
        }
        let Some(known) = store::known(&plan.model) else {
            let aliases: Vec<&str> = store::KNOWN_MODELS.iter().map(|m| m.alias).collect();
            return Err(Fail::Error(format!(
                "model {:?} is not in the model store {} and is not a known model ({}) or a file",
                plan.model,
                dir.display(),
                aliases.join(", ")
            )));
        };
        say(&format!(
            "pulling {} into {} (once)",
            plan.model,
            dir.display()
        ));
        let signals = self.signals.clone();
        let rec = self.rt.block_on(async {
            let mut progress = crate::model_cmd::progress_printer(false);
            tokio::select! {
                r = st.pull_known(known, None, &mut progress) => {
                    r.map_err(|e| Fail::Error(format!("cannot pull {}: {e}", plan.model)))
                }
                _ = signals.wait() => Err(Fail::Stopped),
            }
        })?;
        Ok(rec.id())
    }

    /// Starts `cocoon devnet` with its state in `<dir>/devnet`; returns its base URL.
    fn start_devnet(&mut self, port: u16) -> Result<String, Fail> {
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
    fn spawn(&mut self, role: &str, args: &[String]) -> Result<(), Fail> {
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
    fn wait_until<T>(
        &mut self,
        what: &str,
        mut probe: impl FnMut(&Up) -> Option<T>,
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
    fn supervise(&mut self) -> Fail {
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
    fn stop_all(&mut self) {
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

    /// Tops a wallet up from the faucet when it runs low.
    fn fund(
        &self,
        chain: &Toncenter,
        addr: &StdAddr,
        low: u128,
        grant: u128,
        who: &str,
    ) -> Result<(), Fail> {
        let st = self
            .rt
            .block_on(chain.account_state(addr))
            .map_err(|e| format!("cannot read the {who} wallet's balance: {e}"))?;
        if st.balance >= low {
            return Ok(());
        }
        self.rt
            .block_on(chain.faucet(addr, grant))
            .map_err(|e| format!("the devnet faucet refused the {who} wallet: {e}"))?;
        say(&format!(
            "{who} wallet {addr} funded with {} TON from the faucet",
            format_ton(grant)
        ));
        Ok(())
    }

    /// Deploys the workers' contract with this proxy (one per owner and proxy) from the
    /// workers' owner wallet, as a worker operator does before the first payout: payouts the
    /// proxy submits go to that contract, which pays the owner. Nothing when it exists.
    fn deploy_worker_contract(
        &self,
        chain: &Toncenter,
        root_addr: &StdAddr,
        proxy_owner: &StdAddr,
        key_file: &Path,
        worker_owner: &StdAddr,
    ) -> Result<(), Fail> {
        use cocoon_ton::chain::AccountStatus;
        use cocoon_ton::wallet::{OutMsg, SenderEvent, WalletSender};
        let root = self
            .rt
            .block_on(load_root_config(chain, root_addr))
            .map_err(|e| format!("cannot read the root contract: {e}"))?;
        let proxy_key = SigningKey::from_file(&self.dir.join("proxy/proxy-key"))
            .map_err(|e| format!("the proxy's key: {e}"))?;
        let pk = HashBytes(proxy_key.public_key());
        let proxy =
            cocoon_ton::contracts::proxy_contract(&root.params, proxy_owner, &pk, root_addr)
                .map_err(|e| format!("the proxy contract: {e}"))?;
        let contract =
            cocoon_ton::contracts::worker_contract(&root.params, worker_owner, &proxy.address, &pk)
                .map_err(|e| format!("the worker contract: {e}"))?;
        let active = |up: &Self| -> Result<bool, Fail> {
            Ok(up
                .rt
                .block_on(chain.account_state(&contract.address))
                .map_err(|e| format!("cannot read the worker contract: {e}"))?
                .status
                == AccountStatus::Active)
        };
        if active(self)? {
            return Ok(());
        }
        let key =
            SigningKey::from_file(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
        let wallet = Wallet::v4r2(key.public_key(), 0);
        let init = contract
            .state_init()
            .map_err(|e| format!("the worker contract: {e}"))?;
        let mut sender = WalletSender::new(chain.clone(), wallet, key)
            .map_err(|e| format!("the workers' owner wallet: {e}"))?;
        sender.enqueue(OutMsg::deploy(
            contract.address.clone(),
            WORKER_DEPLOY,
            init,
            None,
        ));
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let events = self
                .rt
                .block_on(sender.tick(now))
                .map_err(|e| format!("deploying the worker contract: {e}"))?;
            if events
                .iter()
                .any(|e| matches!(e, SenderEvent::Confirmed { .. }))
                && active(self)?
            {
                say(&format!(
                    "worker contract {} deployed (pays the workers' owner {worker_owner})",
                    contract.address
                ));
                return Ok(());
            }
            if Instant::now() > end {
                return Err(Fail::Error(
                    "the worker contract did not become active within 60 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The root from `up.json` if it is on chain, otherwise a new one (`cocoon root deploy`).
    fn ensure_root(&self, chain: &Toncenter, saved: &Saved, url: &str) -> Result<StdAddr, Fail> {
        if !saved.root_address.is_empty() {
            let addr = parse_address(&saved.root_address)
                .map_err(|e| format!("up.json: root_address {:?}: {e}", saved.root_address))?;
            if self.rt.block_on(load_root_config(chain, &addr)).is_ok() {
                say(&format!("root contract {addr} (reused)"));
                return Ok(addr);
            }
            say(&format!(
                "root contract {addr} is not on the chain any more; deploying it again"
            ));
        }
        let key = path_str(&self.dir.join("owner.key"));
        let out = self.tool(&["root", "deploy", "--key", &key, "--ton", url]);
        let text = match out {
            Ok(t) => t,
            Err(Fail::Error(e)) => {
                // The same owner and params give the same address: deployed before.
                if let Some(a) = e
                    .split("already deployed at ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    && let Ok(addr) = parse_address(a)
                {
                    say(&format!("root contract {addr} (reused)"));
                    return Ok(addr);
                }
                return Err(Fail::Error(e));
            }
            Err(f) => return Err(f),
        };
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix("root deployed at "))
            .and_then(|a| parse_address(a.trim()).ok())
            .ok_or("`cocoon root deploy` did not print the root address")?;
        say(&format!("root contract {addr} deployed"));
        Ok(addr)
    }

    /// Makes the root allow the sim image for workers and proxies, list `model`, and
    /// register exactly this proxy.
    fn configure_root(
        &self,
        chain: &Toncenter,
        root: &StdAddr,
        url: &str,
        owner_key: &Path,
        endpoint: &str,
        model: &str,
    ) -> Result<(), Fail> {
        let cfg: RootConfig = self
            .rt
            .block_on(load_root_config(chain, root))
            .map_err(|e| format!("cannot read the root contract {root}: {e}"))?;
        let sim = HashBytes(cocoon_attest::sim::sim_image_hash());
        let sim_hex = hex::encode(sim.0);
        let key = path_str(owner_key);
        let root_s = root.to_string();
        let op = |args: &[&str]| -> Result<(), Fail> {
            let mut a = vec!["root"];
            a.extend_from_slice(args);
            a.extend_from_slice(&["--key", &key, "--ton", url, "--root", &root_s]);
            self.tool(&a).map(|_| ())
        };
        if !cfg.worker_hashes.contains(&sim) {
            op(&["add-image", &sim_hex])?;
        }
        if !cfg.proxy_hashes.contains(&sim) {
            op(&["add-image", "--kind", "proxy", &sim_hex])?;
        }
        if !cfg.model_hashes.contains(&model_hash(model)) {
            op(&["add-model", model])?;
            say(&format!("model {model} listed in the root"));
        }
        for r in &cfg.registered_proxies {
            if r.endpoint.0 != endpoint {
                op(&["del-proxy", &r.seqno.to_string()])?;
            }
        }
        if !cfg
            .registered_proxies
            .iter()
            .any(|r| r.endpoint.0 == endpoint)
        {
            op(&["add-proxy", endpoint])?;
            say(&format!("proxy {endpoint} registered in the root"));
        }
        Ok(())
    }

    /// Runs a `cocoon` tool command to completion, its output appended to `logs/setup.log`;
    /// returns its stdout.
    fn tool(&self, args: &[&str]) -> Result<String, Fail> {
        let out = Command::new(&self.exe)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `cocoon {}`: {e}", args[..2].join(" ")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let log = self.dir.join("logs/setup.log");
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&log) {
            let _ = writeln!(f, "$ cocoon {}\n{stdout}{stderr}", args.join(" "));
        }
        if self.signals.stopping() {
            return Err(Fail::Stopped);
        }
        if !out.status.success() {
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim_start_matches("error: ")
                .to_owned();
            return Err(Fail::Error(format!(
                "`cocoon {}` failed: {why}",
                args[..2].join(" ")
            )));
        }
        Ok(stdout)
    }

    /// GET `url` as JSON; `None` while it is not up or not JSON.
    fn get_json(&self, url: &str) -> Option<Value> {
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
}

/// The wallet (v4r2) of the key in `path`, creating the key (mode 0600) if missing.
fn ensure_wallet(path: &Path) -> Result<StdAddr, Fail> {
    let key = if path.exists() {
        SigningKey::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        let k = SigningKey::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        k.write_new_file(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        k
    };
    Wallet::v4r2(key.public_key(), 0)
        .address()
        .map_err(|e| Fail::Error(format!("wallet address: {e}")))
}

/// `saved` if it can be bound, else `default`, else any free port; never one in `taken`.
fn pick_port(saved: u16, default: u16, taken: &mut Vec<u16>) -> Result<u16, Fail> {
    let free = |p: u16| {
        p != 0 && !taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
    };
    let port = if free(saved) {
        saved
    } else if free(default) {
        default
    } else {
        let mut found = None;
        for _ in 0..20 {
            let p = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
            if !taken.contains(&p) {
                found = Some(p);
                break;
            }
        }
        found.ok_or("no free port on 127.0.0.1")?
    };
    taken.push(port);
    Ok(port)
}

/// A command line: the fixed words of `fixed`, then each flag with its value (which may
/// hold spaces).
fn argv(fixed: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    let mut v: Vec<String> = fixed.split_whitespace().map(str::to_owned).collect();
    for (flag, value) in pairs {
        v.push((*flag).to_owned());
        v.push((*value).to_owned());
    }
    v
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
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
