//! One task per proxy: dial over RA-TLS, handshake, serve, redial with backoff.
//!
//! Handshake (COCOON-compatible, see docs/cocoon-compat.md):
//! 1. `worker.connectToProxy(worker.params flags=3 …)` → `worker.connectedToProxy` with the
//!    proxy's signing key, its contract, our worker contract and the negotiated version;
//! 2. `worker.compareBalanceWithProxy(signed, db, max)` with what we hold durably → the
//!    proxy's signed payout and totals; any value lower than ours means the proxy lost or
//!    rolled back state, and the connection is refused;
//! 3. (`worker.extendedCompareBalanceWithProxy` when the proxy reports a mismatch);
//! 4. `worker.proxyHandshakeComplete(is_disabled)`.
//!
//! Before step 1 the proxy's attested image must be in the root's `proxy_hashes`, and after
//! it the proxy's contract must derive from the root's params, its owner and key and the
//! root address (when the worker follows a root, `proxy_check`); the worker contract is then
//! derived from that contract. Every root update re-runs these checks on open sessions, and
//! a session ends when the proxy's attestation verdict expires (`VerifiedPeer::
//! valid_until`); the redial attests the proxy again.
//!
//! Then the session carries `proxy.runQuery(Ex)` (one task each), payment messages
//! (verified, kept durably, a lower or invalid one closes the session so that the next
//! handshake compares again), `proxy.cancelQuery` (v3), and periodic
//! `worker.updatePaymentStatus`. When the session ends every running request of it is
//! cancelled, which cancels its engine request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cocoon_net::{Backoff, ErrorCode, Incoming, SessionHandle};
use cocoon_tl::functions::{proxy as fproxy, worker as fworker};
use cocoon_tl::messages::proxy::ToWorker;
use cocoon_tl::types::{proxy as tproxy, worker as tworker};
use cocoon_tl::{DispatchError, TlWrite, enums};
use cocoon_ton::StdAddr;
use cocoon_ton::payments::{SignedOp, SignedPayment};
use cocoon_ton::root::RootConfig;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::config::{MAX_PROTO_VERSION, MIN_PROTO_VERSION};
use crate::proxy_check::{self, ProxyFacts, ProxyRefusal};
use crate::request::{self, RunRequest};
use crate::store::{Observed, Report};
use crate::{ConnState, Control, Shared};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connect: {0}")]
    Connect(String),
    #[error(
        "no root configuration applied within {0:?}; this worker follows a root and serves no proxy before it knows the root's allowlists"
    )]
    NoRoot(Duration),
    #[error("proxy refused: {0}")]
    Refused(#[from] ProxyRefusal),
    #[error("proxy dropped: root configuration v{version} no longer allows it: {reason}")]
    RootChanged { version: u32, reason: ProxyRefusal },
    #[error(
        "the proxy's attestation verdict expired (valid until {valid_until}); redialling to attest it again"
    )]
    VerdictExpired { valid_until: u64 },
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("{0}")]
    Contract(crate::payout::ContractError),
    #[error("payment inconsistency: {0}")]
    Payment(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("session closed")]
    Closed,
    #[error("reconnecting after a root configuration change")]
    Reconnect,
}

/// The proxy as learned in the handshake.
pub(crate) struct Link {
    pub proxy_sc: String,
    /// What the proxy proved and claimed, re-checked on every root update.
    pub facts: ProxyFacts,
    pub worker_sc: StdAddr,
    pub proxy_key: [u8; 32],
    pub proto: i32,
    /// The switches as the proxy was told them during the handshake (coefficient in
    /// `connectToProxy`, disabled in `proxyHandshakeComplete`); a change made while the
    /// handshake ran is sent as soon as the session serves.
    pub told: Control,
    /// What the proxy reported in this session's ordered messages (the handshake's balance
    /// comparison, then payment messages): each report must not go below it.
    pub floor: Floor,
    /// Signs answer receipts (sessions at protocol 3).
    pub signer: Option<Arc<request::Signer>>,
}

/// The highest values a proxy reported in a session's ordered messages.
#[derive(Debug, Default)]
pub(crate) struct Floor {
    signed: AtomicU64,
    db: AtomicU64,
    max: AtomicU64,
}

impl Floor {
    /// Checks an ordered report against the floor (a lower value means the proxy lost
    /// state), then raises the floor.
    fn check(&self, obs: &Observed) -> Result<(), SessionError> {
        let fields = [
            (
                "signed payment",
                &self.signed,
                obs.signed.as_ref().map(|s| s.0),
            ),
            (
                "tokens committed to the proxy database",
                &self.db,
                obs.db_tokens,
            ),
            (
                "maximum known tokens",
                &self.max,
                obs.max_tokens.filter(|_| obs.strict_max),
            ),
        ];
        for (what, floor, got) in &fields {
            let held = floor.load(Ordering::Relaxed);
            if let Some(got) = got
                && *got < held
            {
                return Err(SessionError::Payment(format!(
                    "payment inconsistency: {what} went down: proxy reports {got}, it reported {held}"
                )));
            }
        }
        for (_, floor, got) in fields {
            if let Some(got) = got {
                floor.fetch_max(got, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    idx: u64,
    addr: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(shared.timings.backoff.clone());
    loop {
        if *stop.borrow() {
            break;
        }
        shared.update_conn(idx, |c| c.state = ConnState::Connecting);
        let started = Instant::now();
        let res = session(&shared, idx, &addr, &mut stop).await;
        // Not ready while waiting to redial (the session is gone).
        shared.update_conn(idx, |c| c.state = ConnState::Connecting);
        if let Err(e) = &res {
            let expired = matches!(e, SessionError::VerdictExpired { .. });
            if expired {
                tracing::info!(proxy = %addr, reason = %e, "proxy session ended");
            } else if matches!(e, SessionError::Contract(_)) {
                tracing::error!(proxy = %addr, error = %e, "proxy session refused");
            } else {
                tracing::warn!(proxy = %addr, error = %e, "proxy session ended");
            }
            let msg = e.to_string();
            shared.update_conn(idx, |c| {
                c.last_error = Some(msg);
                c.verdict_expiries += u64::from(expired);
            });
        }
        if *stop.borrow() {
            break;
        }
        if started.elapsed() >= shared.timings.backoff.reset_after {
            backoff.reset();
        }
        let delay = backoff.next_delay(rand::rng().random::<f64>());
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    shared.update_conn(idx, |c| {
        c.state = ConnState::Stopped;
        c.proto_version = None;
    });
}

/// How long the worker contract check of a handshake may take.
const CONTRACT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// With a payout wallet, the worker contract must exist before the proxy's receipts can be
/// cashed: it is deployed when missing. A wallet too poor to deploy it refuses the session
/// (the receipts would be worthless until it is funded; the redial checks again); a chain
/// that cannot be read only warns, and serving goes on.
async fn ensure_contract(
    shared: &Shared,
    contract: &cocoon_ton::contracts::Deployable,
    proxy_sc: &StdAddr,
) -> Result<(), SessionError> {
    use crate::payout::{ContractError, ContractStatus};
    let Some(sink) = &shared.payout_sink else {
        return Ok(());
    };
    // Bounded: a slow chain must not hold the handshake (the proxy waits for it).
    let checked = tokio::time::timeout(
        CONTRACT_CHECK_TIMEOUT,
        sink.ensure_contract(contract, proxy_sc),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ContractError::Chain {
            contract: contract.address.to_string(),
            reason: format!("no answer within {CONTRACT_CHECK_TIMEOUT:?}"),
        })
    });
    match checked {
        Ok(ContractStatus::DeploySent) => {
            tracing::info!(contract = %contract.address, "worker contract missing: deployment sent from the payout wallet");
            Ok(())
        }
        Ok(ContractStatus::ProxyNotActive) => {
            tracing::warn!(contract = %contract.address, proxy = %proxy_sc, "worker contract missing, not deployed: the proxy contract is not active on chain");
            Ok(())
        }
        Ok(ContractStatus::Active | ContractStatus::DeployPending | ContractStatus::Unchecked) => {
            Ok(())
        }
        Err(e @ ContractError::WalletTooPoor { .. }) => Err(SessionError::Contract(e)),
        Err(e) => {
            tracing::warn!(error = %e, "worker contract not checked; serving, the next connection checks again");
            Ok(())
        }
    }
}

fn hs_err(what: &str) -> impl FnOnce(cocoon_net::QueryError) -> SessionError + '_ {
    move |e| SessionError::Handshake(format!("{what}: {} {}", e.code, e.message))
}

fn parse_addr(field: &str, s: &str) -> Result<StdAddr, SessionError> {
    cocoon_ton::parse_address(s)
        .map_err(|e| SessionError::Handshake(format!("bad {field} in proxy params: {e}")))
}

fn non_negative(field: &str, v: i64) -> Result<u64, SessionError> {
    u64::try_from(v).map_err(|_| SessionError::Protocol(format!("negative {field} {v}")))
}

/// The handshake with a proxy whose attestation passed (`image_hash`), under `root` (the
/// root configuration applied last, if any).
async fn handshake(
    shared: &Arc<Shared>,
    s: &SessionHandle,
    root: Option<&RootConfig>,
    image_hash: [u8; 32],
) -> Result<Link, SessionError> {
    let t = shared.timings.handshake_timeout;
    let control = shared.control();
    let params = tworker::Params {
        worker_owner_address: shared.owner_address.clone(),
        model: shared.model.clone(),
        coefficient: control.coefficient as i32,
        is_test: Some(shared.is_test),
        proxy_cnt: Some(
            shared
                .proxy_cnt
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(1) as i32,
        ),
        max_active_requests: Some(shared.max_active as i32),
        min_proto_version: Some(MIN_PROTO_VERSION),
        max_proto_version: Some(MAX_PROTO_VERSION),
    };
    let ans: tworker::ConnectedToProxy = s
        .query_tl(&fworker::ConnectToProxy { params }, t)
        .await
        .map_err(hs_err("connectToProxy"))?;
    let p = &ans.params;
    if p.is_test.is_none() && p.proto_version.is_none() {
        return Err(SessionError::Handshake("proxy is too old".into()));
    }
    if p.is_test.unwrap_or(false) != shared.is_test {
        return Err(SessionError::Handshake("test mode mismatch".into()));
    }
    let proto = p.proto_version.unwrap_or(0);
    if !(MIN_PROTO_VERSION..=MAX_PROTO_VERSION).contains(&proto) {
        return Err(SessionError::Handshake(format!(
            "proxy chose protocol version {proto}, we speak {MIN_PROTO_VERSION}..={MAX_PROTO_VERSION}"
        )));
    }
    let proxy_owner = parse_addr("proxy_owner_address", &p.proxy_owner_address)?;
    let proxy_sc_addr = parse_addr("proxy_sc_address", &p.proxy_sc_address)?;
    let worker_sc = parse_addr("worker_sc_address", &ans.worker_sc_address)?;
    let facts = ProxyFacts {
        image_hash,
        owner: proxy_owner,
        key: p.proxy_public_key,
        proxy_sc: proxy_sc_addr.clone(),
    };
    // The proxy contract is derived, not taken from the proxy (with a root to derive it
    // from); the worker contract below is derived from it.
    if let Some(root) = root {
        let checked = proxy_check::allowed(
            root,
            shared.root_address.as_ref(),
            shared.check_proxy_hashes,
            &facts,
        );
        if let Err(ProxyRefusal::ContractMismatch { .. }) = &checked {
            // The proxy may already follow newer params (a root change): read the root
            // now rather than at the next poll, so the redial after it can pass.
            shared.root_wake.notify_one();
        }
        checked?;
    }
    // One read of the params: the contract derived and the fee recorded belong together.
    let params = shared.contract_params();
    if let Some(params) = &params {
        let contract = cocoon_ton::contracts::worker_contract(
            params,
            &shared.owner,
            &proxy_sc_addr,
            &cocoon_ton::HashBytes(p.proxy_public_key),
        )
        .map_err(|e| SessionError::Handshake(format!("cannot derive worker contract: {e}")))?;
        let derived = &contract.address;
        if *derived != worker_sc {
            return Err(SessionError::Handshake(format!(
                "worker contract address is unexpected: proxy says {worker_sc}, derived {derived}"
            )));
        }
        ensure_contract(shared, &contract, &proxy_sc_addr).await?;
    }
    let proxy_sc = proxy_sc_addr.to_string();
    let rec = shared
        .store
        .register(
            &proxy_sc,
            &p.proxy_public_key,
            &worker_sc.to_string(),
            params.as_ref().map(|c| c.worker_fee_per_token),
        )
        .map_err(|e| SessionError::Handshake(format!("cannot register proxy: {e}")))?;
    let mut link = Link {
        proxy_sc,
        facts,
        worker_sc,
        proxy_key: p.proxy_public_key,
        proto,
        told: control,
        floor: Floor::default(),
        signer: None,
    };

    let cmp: tworker::CompareBalanceWithProxyResult = s
        .query_tl(
            &fworker::CompareBalanceWithProxy {
                tokens_committed_to_blockchain: clamp_i64(rec.signed_tokens),
                tokens_committed_to_db: clamp_i64(rec.db_tokens),
                max_tokens: clamp_i64(rec.max_tokens),
            },
            t,
        )
        .await
        .map_err(hs_err("compareBalanceWithProxy"))?;
    let obs = Observed {
        signed: Some(verify_payment(&link, &cmp.signed_payment)?),
        db_tokens: Some(non_negative(
            "tokens_committed_to_db",
            cmp.tokens_committed_to_db,
        )?),
        max_tokens: Some(non_negative("max_tokens", cmp.max_tokens)?),
        strict_max: false,
    };
    let held = shared
        .store
        .apply(&link.proxy_sc, &obs)
        .map_err(|e| SessionError::Payment(format!("balance comparison refused: {e}")))?;
    link.floor.check(&obs)?;
    if cmp.error_code != 0 {
        let ext: tworker::ExtendedCompareBalanceWithProxyResult = s
            .query_tl(
                &fworker::ExtendedCompareBalanceWithProxy {
                    tokens_committed_to_db: clamp_i64(held.db_tokens),
                    other: Vec::new(),
                },
                t,
            )
            .await
            .map_err(hs_err("extendedCompareBalanceWithProxy"))?;
        if ext.error_code != 0 {
            return Err(SessionError::Payment(format!(
                "cannot reconcile payment information: proxy error {}",
                ext.error_code
            )));
        }
    }
    let mut told = shared.control();
    told.coefficient = control.coefficient;
    link.told = told;
    let _: tworker::ProxyHandshakeCompleted = s
        .query_tl(
            &fworker::ProxyHandshakeComplete {
                is_disabled: told.disabled(),
            },
            t,
        )
        .await
        .map_err(hs_err("proxyHandshakeComplete"))?;
    // Version 3: the model's context length (0: unknown), which worker.params cannot carry,
    // and what the engine supports, for the clients' /v1/models.
    if link.proto >= 3 {
        let info = shared.engine.model_info();
        let (capabilities_known, capabilities) = info.capabilities.to_bits();
        let m = tworker::ModelInfo {
            context_length: info
                .context_length
                .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            capabilities_known,
            capabilities,
        };
        s.send_message(m.to_bytes())
            .await
            .map_err(|_| SessionError::Closed)?;
    }
    shared.maybe_payout(&link.proxy_sc, false);
    Ok(link)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Verifies a proxy-signed payout for our worker contract; an empty payment is 0 tokens.
fn verify_payment(
    link: &Link,
    p: &enums::proxy::SignedPayment,
) -> Result<(u64, Vec<u8>), SessionError> {
    match p {
        enums::proxy::SignedPayment::SignedPaymentEmpty(_) => Ok((0, Vec::new())),
        enums::proxy::SignedPayment::SignedPayment(sp) => verify_boc(link, &sp.data),
    }
}

fn verify_boc(link: &Link, boc: &[u8]) -> Result<(u64, Vec<u8>), SessionError> {
    let bad = |e: String| SessionError::Payment(format!("bad signed payment: {e}"));
    let sp = SignedPayment::from_boc(boc).map_err(|e| bad(e.to_string()))?;
    let payload = sp
        .verify(SignedOp::WorkerPayout, &link.worker_sc, &link.proxy_key)
        .map_err(|e| bad(e.to_string()))?;
    let tokens = payload
        .tokens
        .ok_or_else(|| bad("payout without tokens".into()))?;
    Ok((tokens, boc.to_vec()))
}

/// Most reports one state-file write takes.
const PAYMENT_BATCH: usize = 256;
/// Reports waiting for the writer before the session loop waits for it.
const PAYMENT_QUEUE: usize = 1024;

/// The session's payment reports on their way to the state file. A report is checked against
/// the session's floor in the loop, then made durable by [`payment_writer`] in the order the
/// reports came, off the loop: a request that arrives behind a report is not held up by the
/// report's fsync, and the reports waiting together go to disk in one write. Nothing is
/// acknowledged, compared or paid out before it is on disk (the writer asks for a payout only
/// after its write).
struct Payments {
    tx: mpsc::Sender<Report>,
}

impl Payments {
    /// Queues `obs`; `raise_only` for a report that may come out of the session's order.
    async fn push(&self, obs: Observed, raise_only: bool) -> Result<(), SessionError> {
        self.tx
            .send(Report { obs, raise_only })
            .await
            .map_err(|_| SessionError::Payment("the payment state writer stopped".into()))
    }
}

/// Makes the reports of `rx` durable, in order, as many at once as are waiting, until the
/// session drops its sender; any inconsistency or write failure is sent on `failed` and ends
/// the writer (and with it the session).
async fn payment_writer(
    shared: Arc<Shared>,
    proxy_sc: String,
    mut rx: mpsc::Receiver<Report>,
    failed: tokio::sync::oneshot::Sender<SessionError>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < PAYMENT_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let sh = Arc::clone(&shared);
        let sc = proxy_sc.clone();
        // On a blocking thread: the store's lock is held across the write and its fsync.
        let r = tokio::task::spawn_blocking(move || {
            let before = sh.store.get(&sc).map(|r| r.signed_tokens);
            sh.store.apply_all(&sc, &batch).map(|rec| (before, rec))
        })
        .await;
        let (before, rec) = match r {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = failed.send(SessionError::Payment(e.to_string()));
                return;
            }
            Err(e) => {
                let _ = failed.send(SessionError::Payment(format!(
                    "payment state task failed: {e}"
                )));
                return;
            }
        };
        if before != Some(rec.signed_tokens) {
            tracing::debug!(proxy = %proxy_sc, tokens = rec.signed_tokens, "new signed payout held");
            shared.maybe_payout(&proxy_sc, false);
        }
    }
}

/// Status of the periodic payment query, reported back to the session loop.
type StatusResult = Result<tworker::PaymentStatus, String>;

async fn session(
    shared: &Arc<Shared>,
    idx: u64,
    addr: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    // Subscribed before the root is read: no update between the checks and the session's
    // re-checks can be missed.
    let mut root_rx = shared.root.subscribe();
    let keyed = tokio::select! {
        r = shared.connector.connect_keyed(addr) => r.map_err(|e| SessionError::Connect(e.to_string()))?,
        _ = stop.changed() => return Ok(()),
    };
    let (s, mut incoming, peer) = (keyed.handle, keyed.incoming, keyed.peer);
    // What this worker signs its answers' receipts with (protocol 3): the key of the
    // certificate the proxy verified, naming the proxy's certificate key.
    let signer = peer.public_key().map(|proxy_tls_key| {
        Arc::new(request::Signer {
            key: keyed.own_key,
            proxy_tls_key: *proxy_tls_key,
        })
    });
    let verdict = Verdict {
        deadline: shared.connector.verdict_deadline(&peer),
        valid_until: peer.valid_until(),
    };
    let image_hash = *peer.image_hash();
    shared.update_conn(idx, |c| {
        c.state = ConnState::Handshaking;
        c.image_hash = Some(hex::encode(image_hash));
        c.verdict_valid_until = Some(verdict.valid_until);
    });
    let link = tokio::select! {
        r = async {
            let root = current_root(shared, &mut root_rx).await?;
            // Checked before the proxy learns anything about this worker.
            if let Some(root) = &root {
                proxy_check::image_allowed(root, shared.check_proxy_hashes, &image_hash)?;
            }
            handshake(shared, &s, root.as_deref(), image_hash).await
        } => r,
        _ = tokio::time::sleep_until(verdict.deadline) => Err(verdict.expired()),
        _ = stop.changed() => { s.close(); return Ok(()); }
    };
    let mut link = match link {
        Ok(l) => l,
        Err(e) => {
            s.close();
            return Err(e);
        }
    };
    link.signer = signer;
    shared.update_conn(idx, |c| {
        c.state = ConnState::Ready;
        c.proto_version = Some(link.proto);
        c.proxy_sc_address = Some(link.proxy_sc.clone());
        c.handshakes += 1;
    });
    tracing::info!(proxy = %addr, proto = link.proto, "proxy handshake complete");
    let res = serve(shared, &s, &mut incoming, &link, stop, root_rx, verdict).await;
    s.close();
    res
}

/// The proxy's attestation verdict of this session.
#[derive(Clone, Copy)]
struct Verdict {
    /// When the session must end (`cocoon_ratls::net::verdict_deadline`).
    deadline: tokio::time::Instant,
    /// The verdict's `valid_until` (Unix seconds), for the error.
    valid_until: u64,
}

impl Verdict {
    fn expired(&self) -> SessionError {
        SessionError::VerdictExpired {
            valid_until: self.valid_until,
        }
    }
}

/// The root configuration to check a proxy against: the last one applied. A worker that
/// follows a root (`root_address`) waits for the first one (up to the handshake timeout);
/// one that does not goes on without (no image or contract checks).
async fn current_root(
    shared: &Shared,
    root_rx: &mut watch::Receiver<Option<Arc<RootConfig>>>,
) -> Result<Option<Arc<RootConfig>>, SessionError> {
    if shared.root_address.is_none() {
        return Ok(root_rx.borrow_and_update().clone());
    }
    let t = shared.timings.handshake_timeout;
    match tokio::time::timeout(t, root_rx.wait_for(Option::is_some)).await {
        Ok(Ok(r)) => Ok(r.clone()),
        Ok(Err(_)) => Err(SessionError::Closed),
        Err(_) => Err(SessionError::NoRoot(t)),
    }
}

/// [`serve_loop`] with the session's payment writer beside it; the reports received are on
/// disk before the session is over.
async fn serve(
    shared: &Arc<Shared>,
    s: &SessionHandle,
    incoming: &mut mpsc::Receiver<Incoming>,
    link: &Link,
    stop: &mut watch::Receiver<bool>,
    root_rx: watch::Receiver<Option<Arc<RootConfig>>>,
    verdict: Verdict,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel(PAYMENT_QUEUE);
    let (failed_tx, mut failed) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(payment_writer(
        Arc::clone(shared),
        link.proxy_sc.clone(),
        rx,
        failed_tx,
    ));
    let payments = Payments { tx };
    let res = serve_loop(
        shared,
        s,
        incoming,
        link,
        stop,
        root_rx,
        verdict,
        &payments,
        &mut failed,
    )
    .await;
    drop(payments);
    let _ = writer.await;
    match (res, failed.try_recv()) {
        (Ok(()), Ok(e)) => Err(e),
        (res, _) => res,
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_loop(
    shared: &Arc<Shared>,
    s: &SessionHandle,
    incoming: &mut mpsc::Receiver<Incoming>,
    link: &Link,
    stop: &mut watch::Receiver<bool>,
    mut root_rx: watch::Receiver<Option<Arc<RootConfig>>>,
    verdict: Verdict,
    payments: &Payments,
    failed: &mut tokio::sync::oneshot::Receiver<SessionError>,
) -> Result<(), SessionError> {
    let mut control_rx = shared.control.subscribe();
    let mut generation = shared.generation.subscribe();
    generation.mark_unchanged();
    // Whatever changed since the handshake told the proxy is sent on the first turn.
    let mut last_sent: Control = link.told;
    control_rx.mark_changed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<[u8; 32]>();
    let mut running = Running {
        cancels: HashMap::new(),
        done_tx,
    };
    let (status_tx, mut status_rx) = mpsc::channel::<StatusResult>(1);
    let mut next_status = tokio::time::Instant::now() + status_delay(shared);
    let mut status_running = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if let Some(d) = drain_deadline
            && (running.cancels.is_empty() || tokio::time::Instant::now() >= d)
        {
            return Ok(());
        }
        tokio::select! {
            _ = stop.changed(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + shared.timings.drain_timeout);
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() => {}
            msg = incoming.recv() => {
                let Some(msg) = msg else { return Err(SessionError::Closed) };
                match msg {
                    Incoming::Message { data } => {
                        // Draining once this session was told to stop, or as soon as the worker
                        // shuts down (the proxy was told "disabled" then; the stop signal may
                        // not have reached this loop yet).
                        let draining = drain_deadline.is_some() || shared.control().draining;
                        handle_message(shared, s, link, &data, &mut running, draining, payments).await?;
                    }
                    Incoming::Query { responder, .. } => {
                        let _ = responder.error(ErrorCode::ProtoViolation as i32, "worker answers no queries");
                    }
                }
            }
            Some(id) = done_rx.recv() => { running.cancels.remove(&id); }
            r = &mut *failed => {
                return Err(r.unwrap_or_else(|_| {
                    SessionError::Payment("the payment state writer stopped".into())
                }));
            }
            _ = generation.changed() => return Err(SessionError::Reconnect),
            // Returning ends the session, which cancels every request still running on it.
            _ = tokio::time::sleep_until(verdict.deadline) => return Err(verdict.expired()),
            r = root_rx.changed() => {
                if r.is_err() { return Err(SessionError::Closed); }
                let root = root_rx.borrow_and_update().clone();
                if let Some(root) = root
                    && let Err(reason) = proxy_check::allowed(
                        &root,
                        shared.root_address.as_ref(),
                        shared.check_proxy_hashes,
                        &link.facts,
                    )
                {
                    return Err(SessionError::RootChanged { version: root.version, reason });
                }
            }
            r = control_rx.changed() => {
                if r.is_err() { return Err(SessionError::Closed); }
                let now = *control_rx.borrow_and_update();
                if now.disabled() != last_sent.disabled() {
                    let m = tworker::EnabledDisabled { disabled: i32::from(now.disabled()) };
                    s.send_message(m.to_bytes()).await.map_err(|_| SessionError::Closed)?;
                }
                if now.coefficient != last_sent.coefficient {
                    let m = tworker::NewCoefficient { new_coefficient: now.coefficient as i32 };
                    s.send_message(m.to_bytes()).await.map_err(|_| SessionError::Closed)?;
                }
                last_sent = now;
            }
            _ = tokio::time::sleep_until(next_status), if !status_running => {
                status_running = true;
                let s2 = s.clone();
                let tx = status_tx.clone();
                let timeout = shared.timings.payment_status_timeout;
                tokio::spawn(async move {
                    let r = s2.query_tl::<_, tworker::PaymentStatus>(&fworker::UpdatePaymentStatus {}, timeout)
                        .await
                        .map_err(|e| format!("{} {}", e.code, e.message));
                    let _ = tx.send(r).await;
                });
            }
            Some(r) = status_rx.recv() => {
                status_running = false;
                next_status = tokio::time::Instant::now() + status_delay(shared);
                match r {
                    Ok(st) => {
                        // The answer travels through its own task, so it may be applied
                        // before or after payment messages sent around it: it only raises
                        // what is held (ordered messages are checked against the floor).
                        let obs = Observed {
                            signed: Some(verify_payment(link, &st.signed_payment)?),
                            db_tokens: Some(non_negative("db_tokens", st.db_tokens)?),
                            max_tokens: Some(non_negative("max_tokens", st.max_tokens)?),
                            strict_max: true,
                        };
                        payments.push(obs, true).await?;
                    }
                    Err(e) => tracing::debug!(proxy = %link.proxy_sc, error = %e, "payment status query failed"),
                }
            }
        }
    }
}

fn status_delay(shared: &Shared) -> Duration {
    let (lo, hi) = shared.timings.payment_status_interval;
    if hi <= lo {
        return lo;
    }
    lo + (hi - lo).mul_f64(rand::rng().random::<f64>())
}

/// The requests running on one session, each with its cancel switch; a request reports its
/// id on `done_tx` when it ends. Dropping this cancels every request still running.
struct Running {
    cancels: HashMap<[u8; 32], watch::Sender<bool>>,
    done_tx: mpsc::UnboundedSender<[u8; 32]>,
}

/// One message from the proxy; an error ends the session, an unknown message is ignored.
async fn handle_message(
    shared: &Arc<Shared>,
    s: &SessionHandle,
    link: &Link,
    data: &[u8],
    running: &mut Running,
    draining: bool,
    payments: &Payments,
) -> Result<(), SessionError> {
    let m = match ToWorker::decode(data) {
        Ok(m) => m,
        Err(DispatchError::Unknown { id, .. }) => {
            tracing::debug!(
                id = format_args!("{id:08x}"),
                "ignoring unknown message from proxy"
            );
            return Ok(());
        }
        Err(DispatchError::TooShort { .. }) => {
            return Err(SessionError::Protocol(
                "message shorter than a constructor id".into(),
            ));
        }
        Err(e) => return Err(SessionError::Protocol(e.to_string())),
    };
    match m {
        ToWorker::RunQueryEx(q) => {
            start_request(shared, s, link, q, running, draining, payments).await
        }
        ToWorker::RunQuery(q) => {
            let q = fproxy::RunQueryEx {
                query: q.query,
                signed_payment: q.signed_payment,
                coefficient: q.coefficient,
                timeout: q.timeout,
                request_id: q.request_id,
                enable_debug: None,
            };
            start_request(shared, s, link, q, running, draining, payments).await
        }
        ToWorker::WorkerRequestPayment(m) => on_request_payment(link, &m, payments).await,
        ToWorker::SignedPayment(m) => on_signed_payment(link, &m, payments).await,
        ToWorker::SignedPaymentEmpty(_) => Ok(()),
        ToWorker::CancelQuery(m) => {
            if let Some(tx) = running.cancels.get(&m.request_id) {
                let _ = tx.send(true);
            }
            Ok(())
        }
    }
}

/// `proxy.workerRequestPayment`: the payment report after a request, an ordered message
/// (checked against the session's floor).
async fn on_request_payment(
    link: &Link,
    m: &tproxy::WorkerRequestPayment,
    payments: &Payments,
) -> Result<(), SessionError> {
    let obs = Observed {
        signed: Some(verify_payment(link, &m.signed_payment)?),
        db_tokens: Some(non_negative("db_tokens", m.db_tokens)?),
        max_tokens: Some(non_negative("max_tokens", m.max_tokens)?),
        strict_max: true,
    };
    link.floor.check(&obs)?;
    payments.push(obs, true).await
}

/// `proxy.signedPayment`: a receipt on its own, an ordered message.
async fn on_signed_payment(
    link: &Link,
    m: &tproxy::SignedPayment,
    payments: &Payments,
) -> Result<(), SessionError> {
    let obs = Observed {
        signed: Some(verify_boc(link, &m.data)?),
        ..Observed::default()
    };
    link.floor.check(&obs)?;
    payments.push(obs, true).await
}

/// `proxy.runQuery(Ex)`: one task per request, unless the worker is draining, the id is
/// already running or every slot is taken (then the proxy gets a rejection).
async fn start_request(
    shared: &Arc<Shared>,
    s: &SessionHandle,
    link: &Link,
    q: fproxy::RunQueryEx,
    running: &mut Running,
    draining: bool,
    payments: &Payments,
) -> Result<(), SessionError> {
    use crate::stats::Counters;
    Counters::add(&shared.counters.requests_received, 1);
    Counters::add(&shared.counters.request_bytes, q.query.len() as u64);
    // The latest signed payout rides along with every request.
    if let enums::proxy::SignedPayment::SignedPayment(sp) = &q.signed_payment {
        let obs = Observed {
            signed: Some(verify_boc(link, &sp.data)?),
            ..Observed::default()
        };
        payments.push(obs, false).await?;
    }
    let reject = |code: ErrorCode, msg: &str| {
        Counters::add(&shared.counters.requests_rejected, 1);
        request::send_rejection(s, link.proto, q.request_id, code, msg);
    };
    if draining {
        reject(ErrorCode::NotReady, "worker is shutting down");
        return Ok(());
    }
    if running.cancels.contains_key(&q.request_id) {
        reject(ErrorCode::ProtoViolation, "duplicate request id");
        return Ok(());
    }
    let Some(guard) = request::ActiveGuard::try_new(shared) else {
        reject(ErrorCode::Error, "too many active queries");
        return Ok(());
    };
    let (cancel_tx, cancel_rx) = watch::channel(false);
    running.cancels.insert(q.request_id, cancel_tx);
    let req = RunRequest {
        request_id: q.request_id,
        query: q.query,
        timeout: q.timeout,
        proxy_coefficient: q.coefficient,
        enable_debug: q.enable_debug.unwrap_or(false),
        proto: link.proto,
        signer: link.signer.clone().filter(|_| link.proto >= 3),
    };
    tokio::spawn(request::serve(
        Arc::clone(shared),
        s.clone(),
        req,
        cancel_rx,
        guard,
        running.done_tx.clone(),
    ));
    Ok(())
}

#[cfg(test)]
mod floor_tests {
    use super::*;

    fn obs(signed: u64, db: u64, max: u64, strict_max: bool) -> Observed {
        Observed {
            signed: Some((signed, Vec::new())),
            db_tokens: Some(db),
            max_tokens: Some(max),
            strict_max,
        }
    }

    #[test]
    fn ordered_reports_may_not_go_down_in_a_session() {
        let f = Floor::default();
        f.check(&obs(10, 20, 30, true)).unwrap();
        f.check(&obs(10, 25, 30, true)).unwrap();
        let e = f.check(&obs(10, 24, 40, true)).unwrap_err();
        assert!(e.to_string().contains("went down"), "{e}");
        // A refused report changes nothing.
        f.check(&obs(10, 25, 30, true)).unwrap();
        assert!(f.check(&obs(9, 30, 40, true)).is_err());
        // The balance comparison's maximum may be lower (the proxy says so itself).
        f.check(&obs(10, 25, 1, false)).unwrap();
    }
}
