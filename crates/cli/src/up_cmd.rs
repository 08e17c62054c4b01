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
//! `bootstrap` sets up the chain side (in this process, with `cocoon_ton::ops`) and the
//! roles' command lines; `supervise` runs and watches the children.
//!
//! What it created is saved in `<dir>/up.json` (root address, wallets, ports, model), so a
//! second run reuses the chain, the root, the balances, the proxy's ledger and the client's
//! receipts instead of starting over. `<dir>/pids` names the running processes: a second
//! `cocoon up` on the same directory is refused, and children left behind by a `cocoon up`
//! that was killed are stopped before the next start.

mod bootstrap;
mod supervise;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use bootstrap::Saved;
use supervise::{Fail, Signals, Supervisor, say};

/// The model a worker serves when none is named.
const DEFAULT_MODEL: &str = "smollm2-135m";

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
        None => cocoon_service::process::default_state_dir("up"),
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
    let mut sup = Supervisor::new(plan.dir.clone(), rt, signals);
    let started = Instant::now();
    let end = match start(&mut sup, &plan) {
        Ok(ready) => {
            ready.print(&sup.dir, started.elapsed());
            sup.supervise()
        }
        Err(f) => f,
    };
    sup.stop_all();
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

/// Brings the network up: the chain and its contracts ([`bootstrap`]), then the proxy, the
/// workers and the client as children, until the client lists the model.
fn start(sup: &mut Supervisor, plan: &Plan) -> Result<Ready, Fail> {
    sup.prepare()?;
    sup.lock()?;
    // The API port is the user's choice: a busy one is an error, not a surprise.
    let api_listen = format!("127.0.0.1:{}", plan.port);
    if std::net::TcpListener::bind(&api_listen).is_err() {
        return Err(Fail::Error(format!(
            "{api_listen} is already in use (another `cocoon up` or `cocoon client`?); \
             choose another port with --port"
        )));
    }
    let dir = sup.dir.clone();
    let mut saved = Saved::load(&dir)?;
    say(&format!(
        "{} {}",
        if saved.root_address.is_empty() {
            "creating a local network in"
        } else {
            "resuming the local network in"
        },
        dir.display()
    ));

    // The model first: a pull shows its progress before anything else starts.
    let model = bootstrap::resolve_model(sup, plan)?;
    saved.pick_ports(plan.port, plan.workers)?;
    let net = bootstrap::network(sup, &mut saved, &model)?;

    // The roles. Root operations are done: from here on the proxy owns the owner wallet.
    let padmin = format!("127.0.0.1:{}", saved.proxy_admin_port);
    sup.spawn("proxy", &bootstrap::proxy_args(&net, &saved, &dir))?;
    sup.wait_until("the proxy's admin API", |s| {
        s.get_json(&format!("http://{padmin}/jsonstats"))
    })?;
    let threads = if plan.workers > 1 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / plan.workers as usize).max(1)
    } else {
        0
    };
    let mut worker_admins = Vec::new();
    for (i, port) in saved.worker_admin_ports.iter().enumerate() {
        let wadmin = format!("127.0.0.1:{port}");
        let args = bootstrap::worker_args(&net, plan, &model, i + 1, &wadmin, threads, &dir);
        sup.spawn(&format!("worker-{}", i + 1), &args)?;
        worker_admins.push(wadmin);
    }
    let api = format!("http://{api_listen}");
    sup.spawn("client", &bootstrap::client_args(&net, &api_listen, &dir))?;

    // Ready: the workers admitted, a proxy session, and the model listed.
    let n = plan.workers as usize;
    for (i, w) in worker_admins.iter().enumerate() {
        sup.wait_until(&format!("worker-{} to load the model", i + 1), |s| {
            s.get_json(&format!("http://{w}/jsonstats"))
        })?;
    }
    sup.wait_until(&format!("the proxy to admit {n} worker(s)"), |s| {
        let j = s.get_json(&format!("http://{padmin}/jsonstats"))?;
        (j["workers"].as_array()?.len() >= n).then_some(())
    })?;
    bootstrap::deploy_worker_contract(sup, &net)?;
    sup.wait_until("the client's session with the proxy", |s| {
        let j = s.get_json(&format!("{api}/jsonstats"))?;
        (j["proxies_ready"].as_u64()? >= 1).then_some(())
    })?;
    let base = cocoon_worker::config::model_base_name(&model)
        .unwrap_or(&model)
        .to_owned();
    let what = match &plan.backend {
        Some(b) => format!("the model in the client's /v1/models (is {b} serving it?)"),
        None => "the model in the client's /v1/models".to_owned(),
    };
    let model_name = sup.wait_until(&what, |s| {
        let m = s.get_json(&format!("{api}/v1/models"))?;
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
        devnet: net.url.clone(),
        root: net.root.to_string(),
        client_token: dir.join("client").join("admin-token"),
    })
}
