//! Starting a devnet: open (or create) the chain, make sure the root contract is there, and
//! serve the API until told to stop. `cocoon devnet` is a thin wrapper around [`run`];
//! integration tests use [`start`] and [`crate::api::spawn`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::api::{self, ApiState, DevnetInfo};
use crate::chain::{Devnet, DevnetError};
use crate::root::{self, RootDeployment, RootError};

/// How to start.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// State directory (persistent when given).
    pub dir: Option<PathBuf>,
    /// Initial chain time for a new chain (default: the wall clock). Ignored when an
    /// existing state is reloaded.
    pub now: Option<u32>,
    /// Deploy the Cocoon root contract.
    pub deploy_root: bool,
}

/// Errors while starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The chain could not be opened.
    #[error(transparent)]
    Chain(#[from] DevnetError),
    /// The root contract could not be deployed.
    #[error(transparent)]
    Root(#[from] RootError),
    /// The listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A key directory for an in-memory chain could not be made.
    #[error("temporary key directory: {0}")]
    TempDir(std::io::Error),
}

/// A started (not yet serving) devnet.
pub struct Started {
    /// Server state (chain + info).
    pub state: ApiState,
    /// The root deployment, when requested.
    pub root: Option<RootDeployment>,
}

fn wall_clock() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// Opens the chain and deploys the root. For an in-memory chain the owner key goes to a
/// fresh private directory under the system temp dir.
pub fn start(opts: &RunOptions) -> Result<Started, RunError> {
    let now = opts.now.unwrap_or_else(wall_clock);
    let mut chain = match &opts.dir {
        Some(dir) => Devnet::open(dir, now)?,
        None => Devnet::new(now)?,
    };
    let mut info = DevnetInfo::default();
    let root = if opts.deploy_root {
        let key_dir = match &opts.dir {
            Some(dir) => dir.clone(),
            None => private_temp_dir().map_err(RunError::TempDir)?,
        };
        let dep = root::ensure_root(&mut chain, &key_dir)?;
        info.root_address = Some(dep.address.clone());
        info.root_owner = Some(dep.owner.clone());
        info.root_owner_key = Some(dep.owner_key_path.display().to_string());
        Some(dep)
    } else {
        None
    };
    Ok(Started {
        state: ApiState::new(chain, info),
        root,
    })
}

fn private_temp_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "cocoon-devnet-{}-{}-{attempt}",
            std::process::id(),
            wall_clock()
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary directory name"))
}

/// Starts, prints where everything is, and serves until `shutdown` resolves; then writes
/// the state one last time (when persistent).
pub async fn run(
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let t0 = Instant::now();
    let started = tokio::task::spawn_blocking({
        let opts = opts.clone();
        move || start(&opts)
    })
    .await
    .map_err(|e| RunError::Chain(DevnetError::Internal(e.to_string())))??;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: opts.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| RunError::Listen {
        addr: opts.listen,
        source,
    })?;
    println!("cocoon devnet: toncenter v2 API at http://{bound}/api/v2/");
    if let Some(dep) = &started.root {
        println!(
            "root contract: {} ({})",
            dep.address.display_base64_url(true),
            dep.address
        );
        println!(
            "root owner: wallet v4r2 {} (key file {})",
            dep.owner.display_base64_url(false),
            dep.owner_key_path.display()
        );
    }
    {
        let chain = started.state.lock();
        match chain.dir() {
            Some(d) => println!("state: {} (now = {})", d.display(), chain.now()),
            None => println!("state: in memory (now = {})", chain.now()),
        }
    }
    println!("ready in {} ms; Ctrl-C stops", t0.elapsed().as_millis());
    let state = started.state.clone();
    api::serve(listener, started.state, shutdown)
        .await
        .map_err(|source| RunError::Listen {
            addr: bound,
            source,
        })?;
    state.lock().flush()?;
    println!("cocoon devnet stopped");
    Ok(())
}

/// Builds a small runtime and runs until Ctrl-C or SIGTERM (what `cocoon devnet` calls).
/// The signal handlers are installed before the server starts, so a signal that arrives
/// right after "ready" is not lost.
pub fn run_until_ctrl_c(opts: RunOptions) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Chain(DevnetError::Internal(format!("tokio runtime: {e}"))))?;
    let result = runtime.block_on(async {
        let stop = stop_signal();
        run(opts, stop).await
    });
    // The state is flushed already; do not wait on idle worker threads.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

/// A future that resolves on SIGINT or SIGTERM; registered when this is called.
#[cfg(unix)]
fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            // Without handlers the default actions apply; every batch is already on disk.
            _ => std::future::pending::<()>().await,
        }
    }
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
