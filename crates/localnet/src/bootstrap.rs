//! Network bootstrap: the model, the ports, the devnet, the wallets and their
//! faucet funding, the root contract (deployed once, then made to allow the simulated TEE
//! image, list the model and register exactly this proxy), the workers' contract, and the
//! command lines of the roles. Chain operations are `cocoon_ton::ops` calls, run in this
//! process; what they did goes to `logs/setup.log`.

use std::fs;
use std::path::{Path, PathBuf};

use cocoon_engine::store::{self, ModelStore};
use cocoon_ton::Toncenter;
use cocoon_ton::chain::load_root_config;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::messages::ProxyEndpoint;
use cocoon_ton::ops::{self, OpsError, RootOp, WalletOps};
use cocoon_ton::root::{CocoonParams, model_hash};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{HashBytes, StdAddr, format_ton, parse_address};
use serde::{Deserialize, Serialize};

use crate::Plan;
use crate::supervise::{Fail, Supervisor, chain_fail, model_fail, say, write_atomic};

/// Preferred ports (the roles' defaults); a busy one is replaced by a free one.
const DEVNET_PORT: u16 = 8081;
const PROXY_WORKER_PORT: u16 = 9101;
const PROXY_CLIENT_PORT: u16 = 9102;
const PROXY_ADMIN_PORT: u16 = 12100;
const WORKER_ADMIN_PORT: u16 = 12000;
const EXPLORER_PORT: u16 = 12300;
/// Faucet top-ups: a wallet below `LOW` nanoTON gets `GRANT` more.
const OWNER_LOW: u128 = 20_000_000_000;
const OWNER_GRANT: u128 = 100_000_000_000;
const CLIENT_LOW: u128 = 10_000_000_000;
const CLIENT_GRANT: u128 = 50_000_000_000;
const WORKER_LOW: u128 = 1_000_000_000;
const WORKER_GRANT: u128 = 2_000_000_000;
/// What the root is deployed with (`cocoon root deploy`'s default, 1 TON).
const ROOT_VALUE: u64 = 1_000_000_000;
/// What each owner operation attaches for gas (`cocoon root`'s default, 0.1 TON).
const OP_VALUE: u64 = 100_000_000;
/// What the workers' owner sends to deploy its worker contract.
const WORKER_DEPLOY: u64 = 300_000_000;

/// What a run created, kept in `<dir>/up.json` for the next run.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Saved {
    pub(crate) root_address: String,
    owner_key_file: String,
    owner_address: String,
    client_key_file: String,
    client_address: String,
    /// Where the workers' earnings go (a wallet key made for it; the workers deploy their
    /// contracts from it).
    worker_owner_key_file: String,
    worker_owner_address: String,
    model: String,
    devnet_port: u16,
    pub(crate) proxy_worker_port: u16,
    pub(crate) proxy_client_port: u16,
    pub(crate) proxy_admin_port: u16,
    pub(crate) worker_admin_ports: Vec<u16>,
    api_port: u16,
    /// Where the network explorer serves its pages.
    pub(crate) explorer_port: u16,
}

impl Saved {
    pub(crate) fn load(dir: &Path) -> Result<Self, Fail> {
        let path = dir.join("up.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Fail::from(format!(
                    "{} is not a `cocoon up` state file ({e}); move it away to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
            Err(e) => Err(Fail::from(format!("{}: {e}", path.display()))),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), Fail> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        write_atomic(&dir.join("up.json"), format!("{text}\n").as_bytes()).map_err(Fail::from)
    }

    /// The ports of this run: the saved ones where still free, else the defaults, else any
    /// free one; `api_port` is taken as given.
    pub(crate) fn pick_ports(&mut self, api_port: u16, workers: u32) -> Result<(), Fail> {
        let mut taken = vec![api_port];
        self.devnet_port = pick_port(self.devnet_port, DEVNET_PORT, &mut taken)?;
        self.proxy_worker_port = pick_port(self.proxy_worker_port, PROXY_WORKER_PORT, &mut taken)?;
        self.proxy_client_port = pick_port(self.proxy_client_port, PROXY_CLIENT_PORT, &mut taken)?;
        self.proxy_admin_port = pick_port(self.proxy_admin_port, PROXY_ADMIN_PORT, &mut taken)?;
        let mut worker_ports = Vec::new();
        for i in 0..workers as usize {
            let prev = self.worker_admin_ports.get(i).copied().unwrap_or(0);
            let default = WORKER_ADMIN_PORT.saturating_add(i as u16);
            worker_ports.push(pick_port(prev, default, &mut taken)?);
        }
        self.worker_admin_ports = worker_ports;
        self.explorer_port = pick_port(self.explorer_port, EXPLORER_PORT, &mut taken)?;
        self.api_port = api_port;
        Ok(())
    }
}

/// The chain side of the network, once bootstrapped.
pub(crate) struct Network {
    /// The devnet's base URL.
    pub(crate) url: String,
    chain: Toncenter,
    pub(crate) root: StdAddr,
    owner: StdAddr,
    owner_key: PathBuf,
    client_key: PathBuf,
    worker_owner: StdAddr,
    worker_owner_key: PathBuf,
    /// The address the proxy binds and is registered at.
    proxy_addr: String,
}

/// Starts the devnet, makes and funds the wallets, deploys (or finds) the root and
/// configures it for `models` (the chat model first) and this proxy; `saved` is updated and
/// written.
pub(crate) async fn network(
    sup: &mut Supervisor,
    saved: &mut Saved,
    models: &[&str],
) -> Result<Network, Fail> {
    let dir = sup.dir.clone();
    saved.model = models.first().copied().unwrap_or_default().to_owned();
    let url = sup.start_devnet(saved.devnet_port).await?;
    let chain = Toncenter::with_url(&url).map_err(|e| chain_fail(format!("devnet client: {e}")))?;

    // Wallets, funded from the faucet.
    let owner_key = dir.join("owner.key");
    let client_key = dir.join("client.key");
    let worker_owner_key = dir.join("worker-owner.key");
    let owner = ensure_wallet(&owner_key)?;
    let client = ensure_wallet(&client_key)?;
    let worker_owner = ensure_wallet(&worker_owner_key)?;
    saved.worker_owner_key_file = path_str(&worker_owner_key);
    saved.worker_owner_address = worker_owner.to_string();
    saved.owner_key_file = path_str(&owner_key);
    saved.owner_address = owner.to_string();
    saved.client_key_file = path_str(&client_key);
    saved.client_address = client.to_string();
    for (addr, low, grant, who) in [
        (&owner, OWNER_LOW, OWNER_GRANT, "owner"),
        (&client, CLIENT_LOW, CLIENT_GRANT, "client"),
        (&worker_owner, WORKER_LOW, WORKER_GRANT, "workers' owner"),
    ] {
        fund(sup, &chain, addr, low, grant, who).await?;
    }

    // The root contract: deployed once, then configured for this network.
    let mut ops = wallet_ops(&chain, &owner_key)?;
    let root = ensure_root(sup, &mut ops, saved).await?;
    saved.root_address = root.to_string();
    saved.save(&dir)?;
    let proxy_addr = sup.addr("proxy");
    let endpoint = format!(
        "{proxy_addr}:{} {proxy_addr}:{}",
        saved.proxy_worker_port, saved.proxy_client_port
    );
    configure_root(sup, &mut ops, &root, &endpoint, models).await?;
    Ok(Network {
        url,
        chain,
        root,
        owner,
        owner_key,
        client_key,
        worker_owner,
        worker_owner_key,
        proxy_addr,
    })
}

/// The wallet (v4r2) of the key in `path`, sending through `chain`.
fn wallet_ops(chain: &Toncenter, path: &Path) -> Result<WalletOps<Toncenter>, Fail> {
    let key =
        SigningKey::from_file(path).map_err(|e| chain_fail(format!("{}: {e}", path.display())))?;
    let wallet = Wallet::v4r2(key.public_key(), 0);
    WalletOps::new(chain.clone(), wallet, key)
        .map_err(|e| chain_fail(format!("{}: {e}", path.display())))
}

/// Tops a wallet up from the faucet when it runs low.
async fn fund(
    sup: &Supervisor,
    chain: &Toncenter,
    addr: &StdAddr,
    low: u128,
    grant: u128,
    who: &str,
) -> Result<(), Fail> {
    match sup
        .or_stop(ops::faucet_top_up(chain, addr, low, grant))
        .await?
    {
        Ok(None) => Ok(()),
        Ok(Some(got)) => {
            say(&format!(
                "{who} wallet {addr} funded with {} TON from the faucet",
                format_ton(got)
            ));
            Ok(())
        }
        Err(OpsError::Faucet(e)) => Err(chain_fail(format!(
            "the devnet faucet refused the {who} wallet: {e}"
        ))),
        Err(e) => Err(chain_fail(format!(
            "cannot read the {who} wallet's balance: {e}"
        ))),
    }
}

/// The root from `up.json` if it is on chain, otherwise a new one with the test params
/// (the same owner and params give the same address, so one deployed before is reused).
async fn ensure_root(
    sup: &Supervisor,
    ops: &mut WalletOps<Toncenter>,
    saved: &Saved,
) -> Result<StdAddr, Fail> {
    if !saved.root_address.is_empty() {
        let addr = parse_address(&saved.root_address).map_err(|e| {
            chain_fail(format!(
                "up.json: root_address {:?}: {e}",
                saved.root_address
            ))
        })?;
        if sup
            .or_stop(load_root_config(ops.chain(), &addr))
            .await?
            .is_ok()
        {
            say(&format!("root contract {addr} (reused)"));
            return Ok(addr);
        }
        say(&format!(
            "root contract {addr} is not on the chain any more; deploying it again"
        ));
    }
    let params = CocoonParams {
        is_test: true,
        ..CocoonParams::default()
    };
    match sup
        .or_stop(ops::deploy_root(ops, params, ROOT_VALUE))
        .await?
    {
        Ok(root) => {
            sup.setup_log(&format!("root deployed at {}", root.address));
            say(&format!("root contract {} deployed", root.address));
            Ok(root.address)
        }
        Err(OpsError::AlreadyDeployed(addr)) => {
            say(&format!("root contract {addr} (reused)"));
            Ok(addr)
        }
        Err(e) => Err(chain_fail(format!("cannot deploy the root contract: {e}"))),
    }
}

/// Makes the root allow the sim image for workers and proxies, list `models`, and register
/// exactly this proxy.
async fn configure_root(
    sup: &Supervisor,
    ops: &mut WalletOps<Toncenter>,
    root: &StdAddr,
    endpoint: &str,
    models: &[&str],
) -> Result<(), Fail> {
    let cfg = sup
        .or_stop(load_root_config(ops.chain(), root))
        .await?
        .map_err(|e| chain_fail(format!("cannot read the root contract {root}: {e}")))?;
    let sim = HashBytes(cocoon_attest::sim::sim_image_hash());
    let mut todo = Vec::new();
    if !cfg.worker_hashes.contains(&sim) {
        todo.push(RootOp::AddWorkerImage(sim));
    }
    if !cfg.proxy_hashes.contains(&sim) {
        todo.push(RootOp::AddProxyImage(sim));
    }
    let mut listed = Vec::new();
    for model in models {
        if !cfg.model_hashes.contains(&model_hash(model)) {
            todo.push(RootOp::AddModel(model_hash(model)));
            listed.push(*model);
        }
    }
    let mut listed = listed.into_iter();
    for r in &cfg.registered_proxies {
        if r.endpoint.0 != endpoint {
            todo.push(RootOp::UnregisterProxy(r.seqno));
        }
    }
    if !cfg
        .registered_proxies
        .iter()
        .any(|r| r.endpoint.0 == endpoint)
    {
        todo.push(RootOp::RegisterProxy(ProxyEndpoint(endpoint.to_owned())));
    }
    for op in todo {
        let change = sup
            .or_stop(ops::root_op(ops, root, &op, OP_VALUE))
            .await?
            .map_err(|e| chain_fail(format!("the root operation {} failed: {e}", op.name())))?;
        sup.setup_log(&format!(
            "root {op:?}: version {} -> {}",
            change.version_before, change.config.version
        ));
        match op {
            RootOp::AddModel(_) => {
                let model = listed.next().unwrap_or_default();
                say(&format!("model {model} listed in the root"))
            }
            RootOp::RegisterProxy(_) => say(&format!("proxy {endpoint} registered in the root")),
            _ => {}
        }
    }
    Ok(())
}

/// Deploys the workers' contract with this proxy (one per owner and proxy) from the workers'
/// owner wallet, as a worker operator does before the first payout: payouts the proxy
/// submits go to that contract, which pays the owner. Nothing when it exists.
pub(crate) async fn deploy_worker_contract(sup: &Supervisor, net: &Network) -> Result<(), Fail> {
    let root = sup
        .or_stop(load_root_config(&net.chain, &net.root))
        .await?
        .map_err(|e| chain_fail(format!("cannot read the root contract: {e}")))?;
    let proxy_key = SigningKey::from_file(&sup.dir.join("proxy/proxy-key"))
        .map_err(|e| chain_fail(format!("the proxy's key: {e}")))?;
    let pk = HashBytes(proxy_key.public_key());
    let proxy = cocoon_ton::contracts::proxy_contract(&root.params, &net.owner, &pk, &net.root)
        .map_err(|e| chain_fail(format!("the proxy contract: {e}")))?;
    let contract = cocoon_ton::contracts::worker_contract(
        &root.params,
        &net.worker_owner,
        &proxy.address,
        &pk,
    )
    .map_err(|e| chain_fail(format!("the worker contract: {e}")))?;
    let mut ops = wallet_ops(&net.chain, &net.worker_owner_key)?;
    let deploy = ops::deploy_contract(&mut ops, &contract, WORKER_DEPLOY, "worker contract");
    if sup
        .or_stop(deploy)
        .await?
        .map_err(|e| chain_fail(format!("cannot deploy the worker contract: {e}")))?
    {
        say(&format!(
            "worker contract {} deployed (pays the workers' owner {})",
            contract.address, net.worker_owner
        ));
    }
    Ok(())
}

/// The full model id of `model` (the plan's, or the embedding model) the workers will
/// announce; an embedded model missing from the store is pulled here, with its progress on
/// the terminal.
pub(crate) async fn resolve_model(
    sup: &Supervisor,
    plan: &Plan,
    model: &str,
) -> Result<String, Fail> {
    if plan.backend.is_some() {
        return Ok(model.to_owned());
    }
    let dir = store::default_dir();
    let st = ModelStore::open(&dir)
        .map_err(|e| model_fail(format!("model store {}: {e}", dir.display())))?;
    let path = Path::new(model);
    if path.is_file() {
        // A GGUF file: into the store (as the worker would), then named by its id.
        let given = fs::canonicalize(path).map_err(|e| model_fail(format!("{}: {e}", model)))?;
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
        say(&format!("adding {} to the model store", model));
        let rec = st
            .add_file(path, &stem, "local", None)
            .map_err(|e| model_fail(format!("cannot add {} to the model store: {e}", model)))?;
        return Ok(rec.id());
    }
    if let Ok(r) = st.get(model) {
        return Ok(r.id());
    }
    let Some(known) = store::known(model) else {
        let aliases: Vec<&str> = store::KNOWN_MODELS.iter().map(|m| m.alias).collect();
        return Err(model_fail(format!(
            "model {:?} is not in the model store {} and is not a known model ({}) or a file",
            model,
            dir.display(),
            aliases.join(", ")
        )));
    };
    say(&format!("pulling {} into {} (once)", model, dir.display()));
    let mut progress = store::progress_printer(false);
    let rec = sup
        .or_stop(st.pull_known(known, None, &mut progress))
        .await?
        .map_err(|e| model_fail(format!("cannot pull {}: {e}", model)))?;
    Ok(rec.id())
}

/// `cocoon proxy`'s command line: test network, sim TEE, the owner wallet for its stake
/// and checkpoints (root operations are done by now), fast polling for a local network, no
/// clock drift check (the devnet's clock moves only when asked, so it falls behind).
pub(crate) fn proxy_args(net: &Network, saved: &Saved, dir: &Path) -> Vec<String> {
    argv(
        "proxy --test --tee sim --set stake_ton=1 --set checkpoint_seconds=2 \
         --set root_poll_seconds=2 --set pow_difficulty=4 --set clock_drift_max_seconds=0",
        &[
            ("--owner", &net.owner.to_string()),
            ("--root", &net.root.to_string()),
            ("--ton", &net.url),
            (
                "--worker-listen",
                &format!("{}:{}", net.proxy_addr, saved.proxy_worker_port),
            ),
            (
                "--client-listen",
                &format!("{}:{}", net.proxy_addr, saved.proxy_client_port),
            ),
            (
                "--admin",
                &format!("{}:{}", net.proxy_addr, saved.proxy_admin_port),
            ),
            ("--state-dir", &path_str(&dir.join("proxy"))),
            (
                "--set",
                &format!("wallet_key_file={}", path_str(&net.owner_key)),
            ),
        ],
    )
}

/// `cocoon worker`'s command line for worker `n` (from 1) with its admin on `admin`;
/// `threads` splits the CPU between embedded workers (0: the worker's default). The
/// workers' owner wallet is the worker's payout wallet too: a worker contract missing at a
/// handshake (after a root params change every address is new) is deployed from it.
pub(crate) fn worker_args(
    net: &Network,
    plan: &Plan,
    model: &str,
    n: usize,
    admin: &str,
    threads: usize,
    dir: &Path,
) -> Vec<String> {
    let mut a = argv(
        "worker --test --tee sim --set root_poll_seconds=2 --set clock_drift_max_seconds=0",
        &[
            ("--owner", &net.worker_owner.to_string()),
            ("--root", &net.root.to_string()),
            ("--ton", &net.url),
            ("--model", model),
            ("--admin", admin),
            ("--state-dir", &path_str(&dir.join(format!("worker-{n}")))),
            (
                "--set",
                &format!("wallet_key_file={}", path_str(&net.worker_owner_key)),
            ),
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
    } else {
        if threads > 0 {
            a.extend(["--set".into(), format!("threads={threads}")]);
        }
    }
    a
}

/// `cocoon worker`'s command line for the embeddings worker (`--embeddings`): the embedded
/// engine with the embedding model, embeddings only.
pub(crate) fn embed_worker_args(
    net: &Network,
    model: &str,
    admin: &str,
    threads: usize,
    dir: &Path,
) -> Vec<String> {
    let mut a = argv(
        "worker --test --tee sim --set root_poll_seconds=2 --set clock_drift_max_seconds=0 \
         --set embeddings=only",
        &[
            ("--owner", &net.worker_owner.to_string()),
            ("--root", &net.root.to_string()),
            ("--ton", &net.url),
            ("--model", model),
            ("--admin", admin),
            ("--state-dir", &path_str(&dir.join("worker-embed"))),
            (
                "--set",
                &format!("wallet_key_file={}", path_str(&net.worker_owner_key)),
            ),
        ],
    );
    if threads > 0 {
        a.extend(["--set".into(), format!("threads={threads}")]);
    }
    a
}

/// `cocoon client`'s command line: the API on `listen`, the client wallet for its stake.
pub(crate) fn client_args(net: &Network, listen: &str, dir: &Path) -> Vec<String> {
    argv(
        "client --test --tee sim --set top_up_ton=5 --set payment_status_seconds=2 \
         --set root_poll_seconds=2 --set clock_drift_max_seconds=0",
        &[
            ("--root", &net.root.to_string()),
            ("--ton", &net.url),
            ("--listen", listen),
            ("--state-dir", &path_str(&dir.join("client"))),
            (
                "--set",
                &format!("wallet_key_file={}", path_str(&net.client_key)),
            ),
        ],
    )
}

/// The wallet (v4r2) of the key in `path`, creating the key (mode 0600) if missing.
fn ensure_wallet(path: &Path) -> Result<StdAddr, Fail> {
    let key = if path.exists() {
        SigningKey::from_file(path).map_err(|e| chain_fail(format!("{}: {e}", path.display())))?
    } else {
        let k = SigningKey::generate()
            .map_err(|e| chain_fail(format!("cannot generate a key: {e}")))?;
        k.write_new_file(path)
            .map_err(|e| chain_fail(format!("{}: {e}", path.display())))?;
        k
    };
    Wallet::v4r2(key.public_key(), 0)
        .address()
        .map_err(|e| chain_fail(format!("wallet address: {e}")))
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

/// `cocoon explorer` over the devnet, the root and the proxy's public stats, verifying the
/// registered proxy as the client does on this test network (its caches in `<dir>/explorer`).
pub(crate) fn explorer_args(net: &Network, saved: &Saved, dir: &Path) -> Vec<String> {
    vec![
        "explorer".into(),
        "--root".into(),
        net.root.to_string(),
        "--chain".into(),
        net.url.clone(),
        "--bind".into(),
        format!("127.0.0.1:{}", saved.explorer_port),
        "--proxy-stats".into(),
        format!("http://127.0.0.1:{}/public.json", saved.proxy_admin_port),
        "--poll-secs".into(),
        "2".into(),
        // The client's proxy verification on this test network (sim proxies accepted).
        "--test".into(),
        "--state-dir".into(),
        path_str(&dir.join("explorer")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_kept_while_free_and_never_shared() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = busy.local_addr().unwrap().port();
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut taken = Vec::new();
        assert_eq!(pick_port(free, busy, &mut taken).unwrap(), free);
        // Taken by this run, or busy: another free port.
        let other = pick_port(free, busy, &mut taken).unwrap();
        assert!(other != free && other != busy);
        assert_eq!(taken, [free, other]);
    }

    #[test]
    fn the_state_file_round_trips_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Saved::load(dir.path()).unwrap().root_address.is_empty());
        let saved = Saved {
            root_address: "0:ab".into(),
            worker_admin_ports: vec![12000, 12001],
            ..Saved::default()
        };
        saved.save(dir.path()).unwrap();
        let back = Saved::load(dir.path()).unwrap();
        assert_eq!(back.root_address, "0:ab");
        assert_eq!(back.worker_admin_ports, [12000, 12001]);
        fs::write(dir.path().join("up.json"), "{").unwrap();
        let Err(Fail::Error(e)) = Saved::load(dir.path()) else {
            panic!("a broken up.json was read");
        };
        assert!(
            e.to_string().contains("is not a `cocoon up` state file"),
            "{e}"
        );
    }

    #[test]
    fn command_lines_keep_values_whole() {
        let a = argv("proxy --test", &[("--state-dir", "/a b/proxy")]);
        assert_eq!(a, ["proxy", "--test", "--state-dir", "/a b/proxy"]);
    }
}
