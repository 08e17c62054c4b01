//! Crash consistency of the whole proxy process: a proxy (with its worker and fake engine)
//! on its SQLite ledger serves concurrent streams and is killed with SIGKILL at a random
//! moment, then restarted on the same files, again and again. Afterwards:
//!
//! - every request whose answer receipt reached the client is in the ledger, once: the
//!   ledger holds a whole number of requests, at least all the receipted ones and at most
//!   all those whose final usage reached the client plus the ones cut off by a kill (which
//!   may have been committed just before it). A protocol 3 client gets its final usage as
//!   soon as the proxy decided the settlement and the receipt once it is durable
//!   (ARCHITECTURE.md D8), so a kill in between may lose answers told but not receipted:
//!   at most the streams in flight at that kill;
//! - the totals a client was told (`db_tokens`) never exceed what the ledger holds, also
//!   after a restart (authorisation reports them again);
//! - the signed receipts the client received verify and never decrease, across restarts, and
//!   never exceed what a confirmed checkpoint covers;
//! - clients and workers balance (conservation), and no account is frozen.
//!
//! The child process is this test binary again, running `crash_child` (which does nothing
//! unless `COCOON_CRASH_DIR` is set). The "chain" of checkpoints is an append-only file, so
//! it survives the kills as a blockchain would.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_ledger::{ChainCheckpoint, SqliteStore};
use cocoon_net::Incoming;
use cocoon_proxy::ProxyChainError;
use cocoon_proxy::{CheckpointChain, LedgerMeter, Meter, SettlementConfig};
use cocoon_testkit::prelude::*;
use cocoon_tl::enums;
use cocoon_ton::StdAddr;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{SignedOp, SignedPayment};
use futures::future::BoxFuture;
use rand::{Rng, SeedableRng};

/// Kills per run: `COCOON_CRASH_KILLS`, 50 when unset (the CI size; a long run outside CI
/// sets 1000).
fn kills() -> usize {
    std::env::var("COCOON_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .filter(|k| *k > 0)
        .unwrap_or(50)
}
const STREAMS: usize = 4;

/// `save_state` records in an append-only file, fsynced: the chain outlives the process.
struct FileChain(PathBuf);

impl FileChain {
    fn read(&self) -> Vec<ChainCheckpoint> {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        // A line cut by a kill is a transaction that never made it.
        text.lines()
            .filter_map(|l| {
                let (s, h) = l.split_once(' ')?;
                let hash: [u8; 32] = hex::decode(h).ok()?.try_into().ok()?;
                Some(ChainCheckpoint {
                    seqno: s.parse().ok()?,
                    hash,
                })
            })
            .collect()
    }
}

impl CheckpointChain for FileChain {
    fn send_checkpoint(&self, c: ChainCheckpoint) -> BoxFuture<'_, Result<(), ProxyChainError>> {
        let r = (|| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.0)?;
            writeln!(f, "{} {}", c.seqno, hex::encode(c.hash))?;
            f.sync_all()
        })()
        .map_err(|e| ProxyChainError::Unavailable(e.to_string()));
        Box::pin(async move { r })
    }

    fn checkpoints_since(
        &self,
        after: u32,
    ) -> BoxFuture<'_, Result<Vec<ChainCheckpoint>, ProxyChainError>> {
        let v = self
            .read()
            .into_iter()
            .filter(|c| c.seqno > after)
            .collect();
        Box::pin(async move { Ok(v) })
    }

    fn submit_receipt<'a>(
        &'a self,
        _contract: &'a StdAddr,
        _boc: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), ProxyChainError>> {
        Box::pin(async { Ok(()) })
    }

    fn withdraw(&self) -> BoxFuture<'_, Result<(), ProxyChainError>> {
        Box::pin(async { Ok(()) })
    }
}

fn proxy_key() -> Arc<SigningKey> {
    Arc::new(SigningKey::from_seed(&PROXY_SEED).unwrap())
}

async fn open_meter(dir: &Path, chain: &FileChain) -> Arc<LedgerMeter> {
    let store = SqliteStore::open(&dir.join("ledger.sqlite")).unwrap();
    LedgerMeter::open_for_root(store, proxy_key(), addr(0x33), &root(1, true, true), chain)
        .await
        .expect("the ledger reopens after a kill")
}

/// The tests' runtime: two worker threads, I/O and time.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The kill times' random source: seeded by `COCOON_CRASH_SEED` or at random, the seed printed.
fn kill_rng() -> rand::rngs::StdRng {
    let seed: u64 = std::env::var("COCOON_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (COCOON_CRASH_SEED reproduces the kill times)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The meter on `dir`'s ledger with its settlement loop running every 25 ms against the
/// file chain (client charges and worker payouts never due).
async fn settling_meter(dir: &Path) -> Arc<LedgerMeter> {
    let chain = Arc::new(FileChain(dir.join("chain.txt")));
    let meter = open_meter(dir, &chain).await;
    let cfg = SettlementConfig {
        interval: Duration::from_millis(25),
        resend_after: Duration::from_millis(200),
        min_client_charge: u128::MAX,
        min_worker_payout: u128::MAX,
        ..SettlementConfig::default()
    };
    tokio::spawn(meter.clone().run_settlement(chain, cfg));
    meter
}

/// The child: proxy + worker + fake engine on the ledger in `COCOON_CRASH_DIR`, until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("COCOON_CRASH_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    // Warnings and errors go to the child's log file (kept when COCOON_CRASH_KEEP is set).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = runtime();
    rt.block_on(async move {
        let meter = settling_meter(&dir).await;
        let m = meter.clone();
        let net = start_proxy_with(root(1, true, true), move |c| c.meter = m).await;
        let _worker = start_worker(&net, 0x41).await;
        net.wait_workers(1).await;
        net.fund_client(&addr(0x51), 1_000_000_000_000, true);
        let tmp = dir.join("ready.tmp");
        std::fs::write(&tmp, net.proxy.client_addr().to_string()).unwrap();
        std::fs::rename(&tmp, dir.join("ready")).unwrap();
        futures::future::pending::<()>().await;
    });
}

fn spawn_child(dir: &Path, cycle: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("child-{cycle}.log"))).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("COCOON_CRASH_DIR", dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_ready(dir: &Path, child: &mut Child, cycle: usize) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = std::fs::read_to_string(dir.join("ready")) {
            std::fs::remove_file(dir.join("ready")).unwrap();
            return a;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log =
                std::fs::read_to_string(dir.join(format!("child-{cycle}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "the proxy child exited during start-up (cycle {cycle}): {status}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        assert!(Instant::now() < end, "the proxy child did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the client learned over the whole run.
#[derive(Default)]
struct Told {
    /// Requests whose final usage reached the client, and their adjusted tokens.
    answered: Vec<u64>,
    /// Answered requests whose receipt reached the client too (durable at the proxy).
    receipted: u64,
    /// Answered requests whose receipt never came (a kill between the two).
    unreceipted: u64,
    /// Requests sent that never got a final answer (cut by a kill).
    cut: usize,
    /// Highest `db_tokens` the client was told.
    max_db: u64,
    /// Errors the client got (code, message, tokens).
    errors: Vec<(i32, String, u64)>,
    /// Receipts' tokens in arrival order.
    receipts: Vec<u64>,
    cycles_mid_stream: usize,
}

fn receipt(p: &enums::proxy::SignedPayment, sc: &StdAddr) -> Option<u64> {
    match p {
        enums::proxy::SignedPayment::SignedPaymentEmpty(_) => None,
        enums::proxy::SignedPayment::SignedPayment(s) => Some(
            SignedPayment::from_boc(&s.data)
                .expect("receipt parses")
                .verify(SignedOp::ClientCharge, sc, &proxy_key().public_key())
                .expect("receipt verifies")
                .tokens
                .unwrap(),
        ),
    }
}

/// One cycle's client side: authorise, start streams, read until the session dies.
async fn load(
    addr: &str,
    sc: &StdAddr,
    told: &mut Told,
    next_id: &mut u64,
    kill_after: Duration,
    kill: impl FnOnce(),
) {
    let owner = cocoon_testkit::fixtures::addr(0x51);
    let (mut c, auth) = TestClient::authorized_at(addr, &owner).await;
    let db = u64::try_from(auth.tokens_committed_to_db).unwrap();
    assert!(
        db >= told.max_db,
        "after a restart the proxy reports {db} tokens committed, but it had told the client {}",
        told.max_db
    );
    told.max_db = db;
    if let Some(r) = receipt(&auth.signed_payment, sc) {
        told.receipts.push(r);
    }
    let mut open = std::collections::HashSet::new();
    // Answered, receipt not yet received.
    let mut told_only = std::collections::HashSet::new();
    let rid_of = |id: u64| {
        let mut rid = [0u8; 32];
        rid[..8].copy_from_slice(&id.to_be_bytes());
        rid
    };
    for _ in 0..STREAMS {
        *next_id += 1;
        let rid = rid_of(*next_id);
        c.run_id(rid, "stream", 200, 30.0).await;
        open.insert(rid);
    }
    let deadline = tokio::time::Instant::now() + kill_after;
    let mut kill = Some(kill);
    loop {
        let m = if kill.is_some() {
            match tokio::time::timeout_at(deadline, c.incoming.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    if !open.is_empty() {
                        told.cycles_mid_stream += 1;
                    }
                    (kill.take().unwrap())();
                    continue;
                }
            }
        } else {
            tokio::time::timeout(LIMIT, c.incoming.recv())
                .await
                .expect("the session ends after the kill")
        };
        let Some(m) = m else { break };
        let Incoming::Message { data } = m else {
            continue;
        };
        let (rid, fi) = match from_proxy(&data) {
            FromProxy::Head(h, _) => (h.request_id, h.final_info),
            FromProxy::Part(p) => (p.request_id, p.final_info),
            FromProxy::Error(e) => {
                let Some(fi) = &e.final_info else {
                    panic!("errors carry usage: {e:?}");
                };
                let t = u64::try_from(fi.tokens_used.total_tokens_used).unwrap();
                told.errors.push((e.error_code, e.error.clone(), t));
                (e.request_id, e.final_info)
            }
            FromProxy::Payment(p) => {
                let db = u64::try_from(p.db_tokens).unwrap();
                assert!(
                    db >= told.max_db,
                    "db_tokens went down: {db} < {}",
                    told.max_db
                );
                told.max_db = told.max_db.max(db);
                if let Some(r) = receipt(&p.signed_payment, sc) {
                    told.receipts.push(r);
                }
                continue;
            }
            FromProxy::Receipt(r) => {
                assert!(
                    told_only.remove(&r.request_id),
                    "a receipt follows its answer's final usage, once"
                );
                told.receipted += 1;
                continue;
            }
            FromProxy::Evidence(_) => continue,
        };
        let Some(fi) = fi else { continue };
        assert!(open.remove(&rid), "one final answer per request");
        if fi.tokens_used.total_tokens_used > 0 && !matches!(from_proxy(&data), FromProxy::Error(_))
        {
            told_only.insert(rid);
        }
        told.answered
            .push(u64::try_from(fi.tokens_used.total_tokens_used).unwrap());
        if kill.is_some() {
            *next_id += 1;
            let rid = rid_of(*next_id);
            c.run_id(rid, "stream", 200, 30.0).await;
            open.insert(rid);
        }
    }
    told.cut += open.len();
    told.unreceipted += told_only.len() as u64;
}

#[test]
fn sigkill_at_random_points_loses_and_doubles_nothing() {
    if std::env::var("COCOON_CRASH_DIR").is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var("COCOON_CRASH_KEEP") {
        Ok(d) => PathBuf::from(d),
        Err(_) => tmp.path().to_owned(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let rt = runtime();
    let mut rng = kill_rng();
    // The client contract the child's proxy (contract `addr(0x11)`) derives for our owner.
    let sc = cocoon_ton::contracts::client_contract(
        &root(1, true, true).params,
        &addr(0x51),
        &addr(0x11),
        &cocoon_ton::HashBytes(proxy_key().public_key()),
    )
    .unwrap()
    .address;
    let mut told = Told::default();
    let mut next_id = 0u64;
    let cycles = kills();
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut child = spawn_child(&dir, cycle);
        let addr = wait_ready(&dir, &mut child, cycle);
        let kill_after = Duration::from_millis(rng.random_range(20..400));
        rt.block_on(load(
            &addr,
            &sc,
            &mut told,
            &mut next_id,
            kill_after,
            || {
                // SIGKILL (what `Child::kill` sends on Unix): no destructor, no flush, no goodbye.
                child.kill().unwrap();
            },
        ));
        let status = child.wait().unwrap();
        assert!(!status.success(), "cycle {cycle}: the child was not killed");
    }
    let elapsed = started.elapsed();

    // Reopen the ledger as the next proxy start would, and check everything.
    let chain = FileChain(dir.join("chain.txt"));
    let meter = rt.block_on(open_meter(&dir, &chain));
    let ledger = meter.client_totals(&sc.to_string());
    let per = told.answered[0];
    assert!(per > 0);
    // A request refused before it ran (the worker's slots were all busy for a moment) is
    // answered with zero tokens; every request that ran was booked in full.
    assert!(
        told.answered.iter().all(|t| *t == per || *t == 0),
        "{:?} errors {:?}",
        told.answered,
        told.errors
    );
    assert!(
        told.errors.iter().all(|e| e.2 == 0),
        "errors with usage: {:?}",
        told.errors
    );
    let answered = told.answered.iter().filter(|t| **t > 0).count() as u64;
    if let Some(e) = told.errors.first() {
        println!("first refusal: {e:?}");
    }
    println!(
        "{cycles} kills in {elapsed:?}: {answered} answered ({} with their answer receipt, {} without), {} refused, {} cut, {} kills mid-stream, ledger {} tokens ({per} per request), {} receipts up to {:?}",
        told.receipted,
        told.unreceipted,
        told.errors.len(),
        told.cut,
        told.cycles_mid_stream,
        ledger.max,
        told.receipts.len(),
        told.receipts.last()
    );
    assert_eq!(ledger.max % per, 0, "the ledger holds a part of a request");
    let booked = ledger.max / per;
    assert_eq!(told.receipted + told.unreceipted, answered);
    assert!(
        booked >= told.receipted,
        "lost: the client holds receipts for {} requests, the ledger has {booked}",
        told.receipted
    );
    // What a kill may cost between "told" and "durable": only answers without their receipt,
    // at most the streams in flight at each kill.
    assert!(
        answered - booked.min(answered) <= told.unreceipted.min((STREAMS * cycles) as u64),
        "lost more than the unreceipted answers: {answered} answered, {booked} booked"
    );
    assert!(
        booked <= answered + told.cut as u64,
        "doubled: {booked} requests booked, only {answered} answered and {} cut",
        told.cut
    );
    assert!(ledger.max >= told.max_db);
    assert!(
        told.receipts.windows(2).all(|w| w[0] <= w[1]),
        "receipts went down: {:?}",
        told.receipts
    );
    assert!(told.receipts.last().copied().unwrap_or(0) <= ledger.committed_to_blockchain);
    assert!(
        !told.receipts.is_empty(),
        "checkpoints were confirmed during the run"
    );
    assert!(
        told.cycles_mid_stream >= cycles / 2,
        "most kills hit running streams"
    );
    assert!(meter.audit().is_empty(), "{:?}", meter.audit());
    assert!(meter.stats().frozen.is_empty());
    let t = meter.totals();
    assert_eq!(t.client_tokens, t.worker_tokens);
}

/// The worker child: a worker (owner `addr(0x41)`) with its own fake engine, dialling the
/// proxy at `COCOON_CRASH_WORKER_OF`, until killed. Does nothing when that is unset.
#[test]
fn crash_worker_child() {
    let Ok(proxy) = std::env::var("COCOON_CRASH_WORKER_OF") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("COCOON_CRASH_WORKER_DIR").unwrap());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = runtime();
    rt.block_on(async move {
        let (base, _engine) = fake_engine().await;
        let mut cfg = worker_config(&proxy, &base, &dir);
        cfg.owner_address = addr(0x41).to_string();
        cfg.contract_params = Some(root(1, true, true).params);
        cfg.tokenizer = Some(Arc::new(Words));
        let _worker = cocoon_worker::Worker::start(cfg).await.unwrap();
        futures::future::pending::<()>().await;
    });
}

/// A child process killed (and reaped) when dropped, also when the test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Content chunks of the fake engine's `stream` mode in `bytes` (one word each).
fn words_in(bytes: &[u8]) -> u64 {
    let needle = b"\"content\":\"w";
    bytes.windows(needle.len()).filter(|w| w == needle).count() as u64
}

/// One request as the client saw it: words received, and the final usage (total,
/// completion) with the error if it ended in one.
#[derive(Default)]
struct Seen {
    words: u64,
    usage: Option<(u64, u64)>,
    error: Option<(i32, String)>,
}

/// The proxy (in this process, on its SQLite ledger) serves a client (in this process)
/// while its only worker, a child process, is killed with SIGKILL at a random moment of the
/// client's streams and started again, `COCOON_CRASH_KILLS` times (8 when unset). Each
/// stream the kill cuts ends for the client with an error carrying usage, billed at most
/// what reached the client (the tokens the worker reported up to the cut); the ledger holds
/// exactly what the client was told, the worker is credited exactly what clients were
/// charged, receipts verify and never decrease, and no account is frozen.
#[test]
fn worker_killed_mid_stream_bills_at_most_what_reached_the_client() {
    if std::env::var("COCOON_CRASH_DIR").is_ok() || std::env::var("COCOON_CRASH_WORKER_OF").is_ok()
    {
        return;
    }
    let cycles = std::env::var("COCOON_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .filter(|k: &usize| *k > 0)
        .unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let mut rng = kill_rng();
    let rt = runtime();
    let started = Instant::now();
    rt.block_on(async move {
        let meter = settling_meter(&dir).await;
        let m = meter.clone();
        let net = start_proxy_with(root(1, true, true), move |c| c.meter = m).await;
        let sc = net.fund_client(&addr(0x51), 1_000_000_000_000, true);
        let (mut c, _auth) =
            TestClient::authorized_at(&net.proxy.client_addr().to_string(), &addr(0x51)).await;
        let worker_of = net.proxy.worker_addr().to_string();
        let mut seen: std::collections::HashMap<[u8; 32], Seen> = Default::default();
        let mut receipts: Vec<u64> = Vec::new();
        let mut max_db = 0u64;
        let mut next_id = 0u64;
        let mut mid_stream = 0usize;
        for cycle in 0..cycles {
            let log = std::fs::File::create(dir.join(format!("worker-{cycle}.log"))).unwrap();
            let mut child = KillOnDrop(
                Command::new(std::env::current_exe().unwrap())
                .args(["crash_worker_child", "--exact", "--nocapture", "--test-threads=1"])
                .env("COCOON_CRASH_WORKER_OF", &worker_of)
                .env("COCOON_CRASH_WORKER_DIR", dir.join("worker"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
            );
            net.wait_workers(1).await;
            let mut open = std::collections::HashSet::new();
            let start = |open: &mut std::collections::HashSet<[u8; 32]>, next_id: &mut u64| {
                *next_id += 1;
                let mut rid = [0u8; 32];
                rid[..8].copy_from_slice(&next_id.to_be_bytes());
                open.insert(rid);
                rid
            };
            for _ in 0..STREAMS {
                let rid = start(&mut open, &mut next_id);
                c.run_id(rid, "stream", 200, 30.0).await;
            }
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(rng.random_range(20..400));
            let mut killed = false;
            while !open.is_empty() || !killed {
                let m = if killed {
                    tokio::time::timeout(LIMIT, c.incoming.recv())
                        .await
                        .expect("every stream the kill cut ends for the client")
                } else {
                    match tokio::time::timeout_at(deadline, c.incoming.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            if !open.is_empty() {
                                mid_stream += 1;
                            }
                            child.0.kill().unwrap();
                            assert!(!child.0.wait().unwrap().success());
                            killed = true;
                            continue;
                        }
                    }
                };
                let Some(Incoming::Message { data }) = m else {
                    assert!(m.is_some(), "the client's session with the proxy survives");
                    continue;
                };
                let (rid, bytes, fi, error) = match from_proxy(&data) {
                    FromProxy::Head(h, r) => (h.request_id, r.payload, h.final_info, None),
                    FromProxy::Part(p) => (p.request_id, p.answer, p.final_info, None),
                    FromProxy::Error(e) => (
                        e.request_id,
                        Vec::new(),
                        e.final_info,
                        Some((e.error_code, e.error)),
                    ),
                    FromProxy::Payment(p) => {
                        let db = u64::try_from(p.db_tokens).unwrap();
                        assert!(db >= max_db, "db_tokens went down: {db} < {max_db}");
                        max_db = db;
                        if let Some(r) = receipt(&p.signed_payment, &sc) {
                            receipts.push(r);
                        }
                        continue;
                    }
                    FromProxy::Evidence(_) | FromProxy::Receipt(_) => continue,
                };
                let s = seen.entry(rid).or_default();
                assert!(s.usage.is_none(), "nothing after a request's final answer");
                s.words += words_in(&bytes);
                if error.is_some() {
                    assert!(fi.is_some(), "errors carry usage: {error:?}");
                    s.error = error;
                }
                let Some(fi) = fi else { continue };
                let t = &fi.tokens_used;
                s.usage = Some((
                    u64::try_from(t.total_tokens_used).unwrap(),
                    u64::try_from(t.completion_tokens_used).unwrap(),
                ));
                assert!(open.remove(&rid), "one final answer per request");
                if !killed {
                    let rid = start(&mut open, &mut next_id);
                    c.run_id(rid, "stream", 200, 30.0).await;
                }
            }
            net.wait_workers(0).await;
        }
        let elapsed = started.elapsed();
        // A whole answer: 20 words; its usage sets the price of one word.
        let whole: Vec<&Seen> = seen
            .values()
            .filter(|s| s.error.is_none() && s.words == 20)
            .collect();
        assert!(!whole.is_empty(), "some answers were whole");
        let (per, completion) = whole[0].usage.unwrap();
        assert!(
            whole.iter().all(|s| s.usage == Some((per, completion))),
            "whole answers are billed alike"
        );
        let cut: Vec<&Seen> = seen.values().filter(|s| s.error.is_some()).collect();
        for s in &cut {
            let (total, comp) = s.usage.unwrap();
            assert!(total <= per, "a cut request billed {total} > a whole one {per}");
            assert!(
                comp * 20 <= completion * s.words,
                "billed {comp} completion tokens for {} words received (a whole answer: {completion} for 20)",
                s.words
            );
        }
        let told: u64 = seen.values().map(|s| s.usage.unwrap().0).sum();
        let billed_cut: u64 = cut.iter().map(|s| s.usage.unwrap().0).sum();
        // Settlement confirms checkpoints in the background: wait for it to cover the end.
        let sc_s = sc.to_string();
        eventually("the ledger covers every answer", || {
            meter.client_totals(&sc_s).max == told
        })
        .await;
        let worker_sc = net.worker_sc(&addr(0x41)).to_string();
        let ledger = meter.client_totals(&sc_s);
        let earned = meter.worker_totals(&worker_sc);
        println!(
            "{cycles} worker kills in {elapsed:?}: {} whole, {} cut ({billed_cut} tokens billed for them, {} words received), {mid_stream} kills mid-stream, ledger {} tokens, worker credited {}, {} receipts up to {:?}",
            whole.len(),
            cut.len(),
            cut.iter().map(|s| s.words).sum::<u64>(),
            ledger.max,
            earned.max,
            receipts.len(),
            receipts.last()
        );
        assert_eq!(ledger.max, told, "the ledger holds what the client was told");
        assert_eq!(earned.max, ledger.max, "the worker is credited what the client pays");
        assert!(max_db <= ledger.max);
        assert!(
            receipts.windows(2).all(|w| w[0] <= w[1]),
            "receipts went down: {receipts:?}"
        );
        assert!(receipts.last().copied().unwrap_or(0) <= ledger.committed_to_blockchain);
        assert!(mid_stream >= cycles / 2, "most kills hit running streams");
        assert!(!cut.is_empty(), "some kills cut a stream");
        assert!(meter.audit().is_empty(), "{:?}", meter.audit());
        assert!(meter.stats().frozen.is_empty());
        let t = meter.totals();
        assert_eq!(t.client_tokens, t.worker_tokens);
    });
}

/// The client child: a `cocoon-client` gateway (owner `addr(0x42)`, state in
/// `COCOON_CRASH_CLIENT_DIR/client.sqlite`) on the proxy at `COCOON_CRASH_CLIENT_OF`; writes
/// its API's base URL to `ready` and serves until killed. Does nothing when unset.
#[test]
fn crash_client_child() {
    let Ok(proxy) = std::env::var("COCOON_CRASH_CLIENT_OF") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("COCOON_CRASH_CLIENT_DIR").unwrap());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("COCOON_CRASH_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = runtime();
    rt.block_on(async move {
        let mut cfg = cocoon_testkit::client::gateway_config(
            vec![proxy],
            cocoon_testkit::fixtures::root_with_proxy_image(1, true),
        );
        cfg.state_path = Some(dir.join("client.sqlite"));
        let client = cocoon_client::Client::start(cfg).await.unwrap();
        while client.ready_proxies() < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let base = format!("http://{}", client.api_addr().unwrap());
        let tmp = dir.join("ready.tmp");
        std::fs::write(&tmp, base).unwrap();
        std::fs::rename(&tmp, dir.join("ready")).unwrap();
        futures::future::pending::<()>().await;
    });
}

/// The receipt the client's SQLite holds for `sc`: its tokens, checked to be the tokens of
/// the proxy-signed BOC stored beside them, which must verify.
fn stored_receipt(db: &Path, sc: &StdAddr) -> Option<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT tokens, boc FROM receipts WHERE client_sc = ?1",
            [sc.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    let (tokens, boc) = row?;
    let signed = SignedPayment::from_boc(&boc)
        .expect("the stored receipt parses")
        .verify(SignedOp::ClientCharge, sc, &proxy_key().public_key())
        .expect("the stored receipt verifies")
        .tokens
        .unwrap();
    assert_eq!(
        u64::try_from(tokens).unwrap(),
        signed,
        "stored tokens are the receipt's"
    );
    Some(signed)
}

/// The client process (a real `cocoon-client` gateway with its SQLite state) is killed with
/// SIGKILL while its OpenAI API streams answers, and started again on the same files,
/// `COCOON_CRASH_KILLS` times (6 when unset); the proxy (with its worker, in this process)
/// keeps serving. Every answer that reached the caller whole is booked by the proxy, at
/// most the cut ones on top; the receipt in the client's SQLite verifies, never decreases
/// across restarts and never exceeds a confirmed checkpoint; after the last restart it
/// reaches the proxy's latest signed receipt; clients and workers balance, nothing frozen.
#[test]
fn client_killed_mid_stream_keeps_receipts_that_agree_with_the_proxy() {
    if std::env::var("COCOON_CRASH_DIR").is_ok()
        || std::env::var("COCOON_CRASH_WORKER_OF").is_ok()
        || std::env::var("COCOON_CRASH_CLIENT_OF").is_ok()
    {
        return;
    }
    let cycles = std::env::var("COCOON_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .filter(|k: &usize| *k > 0)
        .unwrap_or(6);
    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var("COCOON_CRASH_KEEP") {
        Ok(d) => PathBuf::from(d),
        Err(_) => tmp.path().to_owned(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = kill_rng();
    let rt = runtime();
    let started = Instant::now();
    rt.block_on(async move {
        let meter = settling_meter(&dir).await;
        let m = meter.clone();
        let root = cocoon_testkit::fixtures::root_with_proxy_image(1, true);
        let net = start_proxy_with(root, move |c| c.meter = m).await;
        let sc = net.fund_client(&addr(0x42), 1_000_000_000_000, true);
        let sc_s = sc.to_string();
        let _worker = start_worker(&net, 0x41).await;
        net.wait_workers(1).await;
        let proxy = net.proxy.client_addr().to_string();
        let db = dir.join("client.sqlite");
        let http = reqwest::Client::new();
        let body = serde_json::json!({"model": "Smol", "stream": true, "max_tokens": 50,
            "messages": [{"role": "user", "content": "stream"}]});
        let spawn = |cycle: usize| {
            let log = std::fs::File::create(dir.join(format!("child-{cycle}.log"))).unwrap();
            KillOnDrop(
                Command::new(std::env::current_exe().unwrap())
                    .args(["crash_client_child", "--exact", "--nocapture", "--test-threads=1"])
                    .env("COCOON_CRASH_CLIENT_OF", &proxy)
                    .env("COCOON_CRASH_CLIENT_DIR", &dir)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        };
        // One whole answer first: what a request costs in the ledger.
        let mut child = spawn(0);
        let mut base = wait_ready(&dir, &mut child.0, 0);
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().trim_end().ends_with("data: [DONE]"));
        eventually("the first answer is booked", || {
            meter.client_totals(&sc_s).max > 0
        })
        .await;
        let per = meter.client_totals(&sc_s).max;
        let (mut answered, mut cut) = (1u64, 0u64);
        let mut stored: Vec<u64> = Vec::new();
        for cycle in 1..=cycles {
            if cycle > 1 {
                child = spawn(cycle);
                base = wait_ready(&dir, &mut child.0, cycle);
            }
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
            let mut streams = Vec::new();
            for _ in 0..STREAMS {
                let (http, body, base, tx) = (http.clone(), body.clone(), base.clone(), tx.clone());
                // Each loop streams answers one after another until the kill; sends true
                // for an answer read whole, false for one cut.
                streams.push(tokio::spawn(async move {
                    loop {
                        let whole = async {
                            let mut r = http
                                .post(format!("{base}/v1/chat/completions"))
                                .json(&body)
                                .send()
                                .await
                                .ok()?;
                            let mut all = Vec::new();
                            while let Some(c) = r.chunk().await.ok()? {
                                all.extend_from_slice(&c);
                            }
                            Some(String::from_utf8_lossy(&all).trim_end().ends_with("data: [DONE]"))
                        }
                        .await
                        .unwrap_or(false);
                        if tx.send(whole).is_err() || !whole {
                            return;
                        }
                    }
                }));
            }
            drop(tx);
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
            // Mid-stream: an answer takes about 100 ms and four are always running (the
            // cut count below says how many streams each kill cut).
            child.0.kill().unwrap();
            assert!(!child.0.wait().unwrap().success());
            for s in streams {
                tokio::time::timeout(LIMIT, s).await.unwrap().unwrap();
            }
            while let Some(whole) = rx.recv().await {
                if whole {
                    answered += 1;
                } else {
                    cut += 1;
                }
            }
            if let Some(t) = stored_receipt(&db, &sc) {
                stored.push(t);
            }
        }
        // Restart once more: the client learns the proxy's latest receipt and stores it.
        eventually("the proxy's bookings are confirmed", || {
            let t = meter.client_totals(&sc_s);
            t.committed_to_blockchain == t.max
        })
        .await;
        let mut child = spawn(cycles + 1);
        let _ = wait_ready(&dir, &mut child.0, cycles + 1);
        let ledger = meter.client_totals(&sc_s);
        eventually("the client's SQLite holds the proxy's latest receipt", || {
            stored_receipt(&db, &sc) == Some(ledger.committed_to_blockchain)
        })
        .await;
        stored.push(ledger.committed_to_blockchain);
        drop(child);
        let elapsed = started.elapsed();
        println!(
            "{cycles} client kills in {elapsed:?}: {answered} answered whole, {cut} streams cut, ledger {} tokens ({per} per request), client's stored receipt after each restart: {} values, {:?} ... {:?}",
            ledger.max,
            stored.len(),
            &stored[..stored.len().min(3)],
            &stored[stored.len().saturating_sub(3)..]
        );
        assert!(ledger.max >= answered * per, "an answer the caller got is not booked");
        assert!(
            ledger.max <= (answered + cut) * per,
            "booked more than was answered and cut"
        );
        assert!(cut > 0, "the kills cut streams");
        assert!(
            stored.windows(2).all(|w| w[0] <= w[1]),
            "the client's stored receipt went down: {stored:?}"
        );
        assert!(meter.audit().is_empty(), "{:?}", meter.audit());
        assert!(meter.stats().frozen.is_empty());
        let t = meter.totals();
        assert_eq!(t.client_tokens, t.worker_tokens);
    });
}
