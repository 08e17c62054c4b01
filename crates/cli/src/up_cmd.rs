//! `cocoon up`: the whole network on one machine in one command. The network is
//! `cocoon_localnet::run` (devnet, wallets and root set-up, the roles as children of this
//! binary); this command turns its flags into settings and prints where everything is.
//! SIGINT, SIGTERM or SIGHUP stops it (exit 0). Once the network is up, a role that exits
//! on its own is reported with the end of its log and restarted with backoff; exit 1 when
//! the start fails or when a role the network cannot serve without keeps exiting.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use cocoon_localnet::{Ready, Settings, Stop, UpError};

/// Options of `cocoon up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
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
    /// One more worker serves POST /v1/embeddings with the embedding model all-MiniLM-L6-v2
    /// (its own model in /v1/models; pulled if missing); not with --backend.
    #[arg(long)]
    embeddings: bool,
}

impl UpArgs {
    fn settings(self, exe: PathBuf) -> Settings {
        Settings {
            exe,
            dir: self.dir,
            port: self.port,
            workers: self.workers,
            model: self.model,
            backend: self.backend,
            backend_kind: self.backend_kind,
            backend_model: self.backend_model,
            embeddings: self.embeddings,
            hosts: None,
        }
    }
}

/// Runs `cocoon up` until a signal or a failure.
pub(crate) fn main(args: UpArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find the cocoon binary itself: {e}");
            return ExitCode::from(1);
        }
    };
    let settings = args.settings(exe);
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
    let end = rt.block_on(async {
        let stop = Stop::on_signals()?;
        cocoon_localnet::run(settings, stop, print_ready).await
    });
    // The error last, so that it is what the terminal shows at the bottom.
    match end {
        Ok(()) => {
            println!("cocoon up: stopped");
            ExitCode::SUCCESS
        }
        Err(e @ UpError::Settings(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(crate::config::EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The ready message: where everything is, and a request to try.
fn print_ready(r: &Ready) {
    let mut o = String::new();
    o.push_str(&format!(
        "cocoon up: the network is running (state in {}, started in {:.1} s)\n\n",
        r.dir.display(),
        r.took.as_secs_f64()
    ));
    o.push_str(&format!(
        "  OpenAI API   {}/v1   (model {})\n",
        r.api, r.model_name
    ));
    if let Some(m) = &r.embed_model_name {
        o.push_str(&format!("               embeddings: model {m}\n"));
    }
    o.push_str(&format!("  dashboards   client    {}/stats\n", r.api));
    o.push_str(&format!(
        "               proxy     http://{}/stats\n",
        r.proxy_admin
    ));
    let chat_workers = r.worker_admins.len() - usize::from(r.embed_model_name.is_some());
    for (i, w) in r.worker_admins.iter().enumerate() {
        let label = if i >= chat_workers {
            "embed".to_owned()
        } else if chat_workers == 1 {
            "worker".to_owned()
        } else {
            format!("worker-{}", i + 1)
        };
        o.push_str(&format!("               {label:<9} http://{w}/stats\n"));
    }
    o.push_str(&format!(
        "  explorer     {}/   (models, prices, proxies; JSON at /api/network)\n",
        r.explorer
    ));
    o.push_str(&format!(
        "  chain        devnet    {}/api/v2/   root {}\n",
        r.devnet, r.root
    ));
    o.push_str(&format!(
        "  logs         {}\n",
        r.dir.join("logs").display()
    ));
    o.push_str(&format!(
        "  status       {}   (each role: running, restarting or failed)\n",
        r.dir.join("status.json").display()
    ));
    o.push_str(&format!(
        "  operate      cocoon client status --api {}   (topup: add --token-file {})\n\n",
        r.api,
        r.client_token.display()
    ));
    let body = serde_json::json!({
        "model": r.model_name,
        "messages": [{"role": "user", "content": "Hello! Who are you?"}],
        "stream": true,
    });
    o.push_str("Try it:\n");
    o.push_str(&format!(
        "  curl -N {}/v1/chat/completions -H 'Content-Type: application/json' \\\n    -d '{}'\n\n",
        r.api, body
    ));
    o.push_str(
        "Ctrl-C stops everything; `cocoon up` again resumes with the same chain, root and \
         balances.\n",
    );
    o.push_str("cocoon up: ready\n");
    print!("{o}");
    let _ = std::io::stdout().flush();
}
