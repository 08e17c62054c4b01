//! `cocoon attest probe`: the operator's first tool when a handshake is refused. It dials a
//! live proxy (or, with `--as-proxy`, accepts one worker's connection), does the
//! proof-of-work and the RA-TLS handshake as our roles do, and prints what the peer's
//! evidence proved; with `--root` it also says whether the root contract's allowlists admit
//! the peer's image, read through the chain as the client and the worker read them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Args};
use cocoon_attest::{Backend, SimKey, VerifiedPeer};
use cocoon_ratls::cert::{EvidenceSource, Identity, SimSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::inspect as cert_inspect;
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector, RatlsError};
use cocoon_ratls::pow;
use cocoon_ratls::verifier::{RatlsVerifier, system_clock};
use cocoon_ton::root::RootConfig;
use serde_json::{Value, json};

use super::{PeerSources, print_json, runtime};

#[derive(Args)]
#[command(group(ArgGroup::new("side").required(true).args(["addr", "as_proxy"])))]
pub(crate) struct ProbeArgs {
    /// The proxy's client or worker port to dial.
    #[arg(value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Act as a proxy instead: accept one worker's connection on `--listen` and print the
    /// worker's evidence.
    #[arg(long, requires = "listen")]
    as_proxy: bool,
    /// Where to accept the worker with `--as-proxy` (`ip:port`; port 0 picks one, printed).
    #[arg(long, value_name = "ADDR", requires = "as_proxy")]
    listen: Option<String>,
    /// The peer policy: `tdx`, `sev-snp`, `any`, `sim`, or a JSON policy file
    /// (docs/ra-tls.md).
    #[arg(long, value_name = "P|FILE", default_value = "any")]
    policy: String,
    /// A test network: sim peers are accepted, and `--tee sim` may be presented.
    #[arg(long)]
    test: bool,
    /// The evidence we present: `none` (no evidence; a proxy's client port accepts it),
    /// `sim` or `fake-tdx` (COCOON's test mode; test networks), `tdx` or `sev-snp` (this
    /// machine's TEE). A worker refuses a
    /// proxy without evidence, so `--as-proxy` needs one.
    #[arg(long, value_name = "TEE", default_value = "none")]
    tee: String,
    /// Simulated-TEE signing key (PKCS#8), created if missing; default: a fresh key.
    #[arg(long, value_name = "FILE")]
    sim_key: Option<PathBuf>,
    #[command(flatten)]
    sources: PeerSources,
    /// The root contract whose allowlists to check the peer's image against
    /// (`proxy_hashes` for a proxy, `worker_hashes` for a worker).
    #[arg(long, value_name = "ADDR", requires = "ton")]
    root: Option<String>,
    /// toncenter v2 endpoint to read the root from.
    #[arg(long, value_name = "URL", requires = "root")]
    ton: Option<String>,
    /// File with the API key for `--ton`.
    #[arg(long, value_name = "FILE", requires = "ton")]
    ton_api_key_file: Option<String>,
    /// Highest proof-of-work difficulty we solve when dialing.
    #[arg(long, value_name = "BITS", default_value_t = pow::CLIENT_MAX_DIFFICULTY)]
    pow_max_difficulty: u32,
    /// Proof-of-work difficulty we demand with `--as-proxy`.
    #[arg(long, value_name = "BITS", default_value_t = pow::DEFAULT_DIFFICULTY)]
    pow_difficulty: u32,
    /// Seconds to wait for the whole probe (with `--as-proxy`: for the worker to come).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Which kind of peer the probe met, and so which root allowlist applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerRole {
    Proxy,
    Worker,
}

impl PeerRole {
    fn name(self) -> &'static str {
        match self {
            PeerRole::Proxy => "proxy",
            PeerRole::Worker => "worker",
        }
    }

    fn list(self) -> &'static str {
        match self {
            PeerRole::Proxy => "proxy_hashes",
            PeerRole::Worker => "worker_hashes",
        }
    }
}

/// Whether the root configuration admits a peer with these verified facts, as the roles
/// check it: the network's `is_test` must be the probe's, and the image must be listed for
/// the peer's role. `Ok` says why it is admitted, `Err` why not.
fn root_verdict(
    root: &RootConfig,
    role: PeerRole,
    is_test: bool,
    peer: &VerifiedPeer,
) -> Result<String, String> {
    if root.params.is_test != is_test {
        return Err(format!(
            "the root says is_test = {}, the probe runs with is_test = {is_test} (--test)",
            root.params.is_test
        ));
    }
    let image = cocoon_ton::HashBytes(*peer.image_hash());
    let (list, allowed) = match role {
        PeerRole::Proxy => (&root.proxy_hashes, root.has_proxy_hash(&image)),
        PeerRole::Worker => (&root.worker_hashes, root.has_worker_hash(&image)),
    };
    if allowed {
        Ok(format!(
            "allowed: image in {} ({} listed), root version {}",
            role.list(),
            list.len(),
            root.version
        ))
    } else {
        Err(format!(
            "the {}'s image hash {} is not in the root's {} ({} listed), root version {}",
            role.name(),
            hex::encode(image),
            role.list(),
            list.len(),
            root.version
        ))
    }
}

/// The evidence we present.
fn our_source(args: &ProbeArgs) -> Result<Arc<dyn EvidenceSource>, String> {
    let tee = args
        .tee
        .parse::<Backend>()
        .map_err(|e| format!("--tee: {e}"))?;
    match tee {
        Backend::Sim | Backend::FakeTdx if !args.test => Err(format!(
            "--tee {tee} is for test networks only (add --test)"
        )),
        Backend::Sim => {
            let key = match &args.sim_key {
                Some(path) => SimKey::load_or_create(path),
                None => SimKey::generate(),
            }
            .map_err(|e| format!("sim key: {e}"))?;
            Ok(Arc::new(SimSource(key)))
        }
        other => cocoon_service::identity::evidence_source(other, &PathBuf::new())
            .map_err(|e| e.to_string()),
    }
}

/// The verifier for the peer: the policy by name or file, collateral and CRLs as given, the
/// system clock, no cache (every probe verifies afresh).
fn verifier(args: &ProbeArgs) -> Result<Arc<RatlsVerifier>, String> {
    let mut policy = cocoon_service::identity::peer_policy(&args.policy, args.test)?;
    if !args.test && policy.allowed_backends.contains(&Backend::Sim) {
        return Err("a sim peer policy needs a test network (add --test)".into());
    }
    policy.is_test_network = args.test;
    args.sources.verifier(policy, system_clock())
}

/// A refused or failed handshake in one line: what failed, and whose fault it is.
fn refusal(e: &RatlsError) -> String {
    let whose = if e.fault() == cocoon_attest::Fault::Peer {
        "the peer's fault"
    } else {
        "not the peer's evidence"
    };
    let what = match e.verify_error() {
        Some(v) => format!("peer certificate refused: {v}"),
        None => e.to_string(),
    };
    format!("handshake refused: {what} ({whose})")
}

/// Reads the root configuration through the chain.
async fn read_root(args: &ProbeArgs) -> Result<Option<RootConfig>, String> {
    let (Some(root), Some(url)) = (&args.root, &args.ton) else {
        return Ok(None);
    };
    let address = cocoon_ton::parse_address(root).map_err(|e| format!("--root: {e}"))?;
    let settings = cocoon_service::chain::TonSettings {
        url,
        url_given: true,
        urls: &[],
        key_file: args.ton_api_key_file.as_deref().unwrap_or(""),
        key_files: &[],
        quorum: 1,
    };
    settings.check().map_err(|e| e.to_string())?;
    let chain = settings.chain(&[])?;
    cocoon_ton::chain::load_root_config(&chain, &address)
        .await
        .map(Some)
        .map_err(|e| format!("cannot read the root contract {address}: {e}"))
}

pub(crate) fn run(args: ProbeArgs) -> Result<(), String> {
    let source = our_source(&args)?;
    let verifier = verifier(&args)?;
    let now = (system_clock())();
    let id = Identity::generate(source.as_ref(), now).map_err(|e| e.to_string())?;
    let resolver = CertResolver::new(&id).map_err(|e| e.to_string())?;
    let rt = runtime()?;
    let limit = Duration::from_secs(args.timeout);
    let net = cocoon_net::Config::default();
    let (role, at, peer, session) = rt.block_on(async {
        let handshake = async {
            if args.as_proxy {
                let listen = args.listen.as_deref().unwrap_or_default();
                let acceptor =
                    RatlsAcceptor::new(resolver, verifier, args.pow_difficulty, net.clone())
                        .map_err(|e| e.to_string())?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
                let local = listener.local_addr().map_err(|e| e.to_string())?;
                if !args.json {
                    println!("listening:      {local} (waiting for one worker)");
                }
                let (tcp, from) = listener.accept().await.map_err(|e| e.to_string())?;
                let (tls, peer) = acceptor.accept_tls(tcp).await.map_err(|e| refusal(&e))?;
                let session = accepted_session(tls, &net).await;
                Ok::<_, String>((PeerRole::Worker, from.to_string(), peer, session))
            } else {
                let addr = args.addr.as_deref().unwrap_or_default();
                let connector =
                    RatlsConnector::new(resolver, verifier, args.pow_max_difficulty, net.clone())
                        .map_err(|e| e.to_string())?;
                let (tls, peer) = connector.connect_tls(addr).await.map_err(|e| refusal(&e))?;
                let session = match cocoon_net::connect_stream(tls, &net).await {
                    Ok((handle, _incoming)) => {
                        handle.close();
                        Ok(())
                    }
                    Err(e) => Err(format!(
                        "the proxy did not open the session after the handshake ({e}): it \
                         refused our certificate, or our evidence"
                    )),
                };
                Ok((PeerRole::Proxy, addr.to_owned(), peer, session))
            }
        };
        tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| format!("no handshake within {} s", args.timeout))?
    })?;
    let root = rt.block_on(read_root(&args))?;
    let verdict = root
        .as_ref()
        .map(|r| root_verdict(r, role, args.test, &peer));
    let (facts, lines) = cert_inspect::describe_peer(&peer);
    if args.json {
        let mut out = json!({
            "peer": role.name(),
            "address": at,
            "policy": args.policy,
            "test_network": args.test,
            "accepted": true,
        });
        out["evidence"] = facts;
        out["session"] = match &session {
            Ok(()) => json!({ "opened": true }),
            Err(why) => json!({ "opened": false, "reason": why }),
        };
        out["root"] = match &verdict {
            None => Value::Null,
            Some(Ok(why)) => json!({ "allowed": true, "reason": why }),
            Some(Err(why)) => json!({ "allowed": false, "reason": why }),
        };
        print_json(&out)?;
    } else {
        let network = if args.test { ", test network" } else { "" };
        println!("peer:           {} at {at}", role.name());
        println!("status:         accepted (policy {}{network})", args.policy);
        lines.iter().for_each(|l| println!("{l}"));
        match &session {
            Ok(()) => println!("session:        opened (tcp.connect answered)"),
            Err(why) => println!("session:        refused: {why}"),
        }
        match &verdict {
            None => println!("root:           not checked (give --root ADDR --ton URL)"),
            Some(Ok(why)) => println!("root:           {why}"),
            Some(Err(why)) => println!("root:           refused: {why}"),
        }
    }
    session.map_err(|why| format!("session refused: {why}"))?;
    match verdict {
        Some(Err(why)) => Err(format!("refused by the root: {why}")),
        _ => Ok(()),
    }
}

/// Opens the acceptor's session on a verified connection: ready once the dialer's
/// `tcp.connect` arrives (it then has our `tcp.connected`); kept until the dialer's first
/// message or close, at most 5 s, so that the answer reaches it.
async fn accepted_session<S>(tls: S, net: &cocoon_net::Config) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (handle, mut incoming) = cocoon_net::accept_stream(tls, net);
    let ready = tokio::time::timeout(Duration::from_secs(10), handle.ready()).await;
    let result = match ready {
        Ok(Ok(())) => {
            let linger = async {
                tokio::select! {
                    _ = incoming.recv() => {}
                    _ = handle.closed() => {}
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), linger).await;
            Ok(())
        }
        Ok(Err(reason)) => Err(format!(
            "the worker closed the connection before tcp.connect ({reason:?}): it refused our \
             certificate, or our evidence"
        )),
        Err(_) => Err("the worker sent no tcp.connect within 10 s".into()),
    };
    handle.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_ratls::verifier::{VerifierConfig, fixed_clock};
    use cocoon_ton::HashBytes;
    use cocoon_ton::root::CocoonParams;

    fn sim_peer() -> VerifiedPeer {
        let key = SimKey::generate().unwrap();
        let id = Identity::generate(&SimSource(key), 1_800_000_000).unwrap();
        let mut policy = cocoon_attest::Policy::sim_test();
        policy.allowed_backends = vec![Backend::Sim];
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = fixed_clock(1_800_000_001);
        RatlsVerifier::new(cfg)
            .verify_cert(id.cert_der(), &[])
            .unwrap()
    }

    fn root(is_test: bool, proxies: &[[u8; 32]], workers: &[[u8; 32]]) -> RootConfig {
        RootConfig {
            owner: cocoon_ton::StdAddr::new(0, HashBytes([1; 32])),
            version: 7,
            proxy_hashes: proxies.iter().map(|h| HashBytes(*h)).collect(),
            registered_proxies: vec![],
            last_proxy_seqno: 0,
            worker_hashes: workers.iter().map(|h| HashBytes(*h)).collect(),
            model_hashes: vec![],
            params: CocoonParams {
                is_test,
                ..CocoonParams::default()
            },
        }
    }

    #[test]
    fn the_root_admits_a_listed_image_for_the_peers_role_only() {
        let peer = sim_peer();
        let sim = *peer.image_hash();
        let r = root(true, &[sim], &[]);
        let ok = root_verdict(&r, PeerRole::Proxy, true, &peer).unwrap();
        assert!(ok.contains("proxy_hashes (1 listed)"), "{ok}");
        // Listed for proxies, not for workers.
        let e = root_verdict(&r, PeerRole::Worker, true, &peer).unwrap_err();
        assert!(e.contains("worker's image hash") && e.contains("worker_hashes (0 listed)"));
        assert!(root_verdict(&root(true, &[], &[sim]), PeerRole::Worker, true, &peer).is_ok());
        // A root of the other kind of network.
        let e = root_verdict(&r, PeerRole::Proxy, false, &peer).unwrap_err();
        assert!(e.contains("is_test = true"), "{e}");
    }
}
