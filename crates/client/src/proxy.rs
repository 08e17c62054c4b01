//! One task per proxy: dial over RA-TLS, check the proxy's TEE and image, handshake,
//! authorise, then demultiplex answers and keep the payment channel in order.
//!
//! Handshake: `client.connectToProxy(client.params …)` →
//! `client.connectedToProxy(proxy.params, client_sc_address, auth, signed_payment)`. The
//! proxy's contract (when the root address is known) and our client contract are derived
//! again here and must match what the proxy says; the proxy's key must not change between
//! sessions while the params stay. Authorisation is short (`authorizeWithProxyShort` with
//! our secret) when the contract's secret hash is ours, long otherwise (our wallet registers
//! the proxy's nonce on chain, then `authorizeWithProxyLong`). With a wallet, a client
//! contract that does not exist yet is deployed first.
//!
//! While the session serves, answers (`client.queryAnswer*Ex`, and the version 0 forms
//! `client.queryAnswer*` that COCOON's proxy sends for rejections and its own failures) go
//! to the request they name,
//! payment reports (`proxy.clientRequestPayment`) and the periodic
//! `client.updatePaymentStatus` answer are verified (a receipt must be signed by the proxy
//! key for our client contract) and the best receipt is kept durably. When the session ends
//! every request waiting on it fails at once, rather than waiting for its timeout.
//!
//! A session ends when the proxy's attestation verdict expires (`VerifiedPeer::
//! valid_until`; the redial attests the proxy again) and when a root update no longer allows
//! it: its image removed from `proxy_hashes`, its contract no longer derived, or `is_test`
//! switched. Requests waiting on it fail (before their first byte they fail over to another
//! proxy), and no new request is sent to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cocoon_attest::Backend;
use cocoon_net::{Backoff, ErrorCode, Incoming, SessionHandle};
use cocoon_tl::functions::client as fclient;
use cocoon_tl::messages::proxy::ToClient;
use cocoon_tl::types::{client as tclient, proxy as tproxy};
use cocoon_tl::{DispatchError, TlRead, enums};
use cocoon_ton::HashBytes;
use cocoon_ton::StdAddr;
use cocoon_ton::payments::{SignedOp, SignedPayment};
use cocoon_ton::root::RootConfig;
use sha2::Digest;
use tokio::sync::{mpsc, watch};

use crate::Shared;
use crate::config::{MAX_PROTO_VERSION, MIN_PROTO_VERSION};
use crate::payments::{Step, plan};
use crate::store::StoredReceipt;

/// Answer messages a request may have queued before its reader takes them; past this the
/// request is cut off (a proxy cannot make the client buffer without bound).
const ANSWER_QUEUE: usize = 4096;

/// What a request hears from its proxy.
#[derive(Debug)]
pub(crate) enum Event {
    /// The HTTP head and the first bytes.
    Head {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
        done: Option<tclient::QueryFinalInfo>,
    },
    /// More bytes.
    Part {
        body: Bytes,
        done: Option<tclient::QueryFinalInfo>,
    },
    /// The request failed at the proxy or beyond.
    Error {
        code: i32,
        message: String,
        done: Option<tclient::QueryFinalInfo>,
    },
    /// The session to the proxy ended.
    Closed(String),
    /// The answer's receipts (protocol 3): after its final part from our proxy (once its
    /// settlement is committed), before it from older ones.
    Receipt(Box<tclient::AnswerReceipt>),
}

/// A ready, authorised session.
pub(crate) struct Link {
    pub handle: SessionHandle,
    pub proto: i32,
    pub proxy_sc: StdAddr,
    pub client_sc: StdAddr,
    pub proxy_key: [u8; 32],
    /// The proxy's RA-TLS certificate (what its receipts are checked against).
    pub proxy_certificate: Vec<u8>,
    /// Our own certificate key on this session (receipts name it).
    pub own_key: [u8; 32],
    /// Workers' certificates the proxy sent on this session (`client.workerEvidence`).
    workers: Mutex<WorkerCerts>,
    pending: Mutex<HashMap<[u8; 32], mpsc::Sender<Event>>>,
    closed: AtomicBool,
}

/// Most worker certificates kept per session: twice what a proxy keeps track of having
/// sent (`EVIDENCE_SENT_MAX` there), oldest dropped first.
const WORKER_CERTS_MAX: usize = 2048;
/// Most bytes of worker certificates kept per session (a real one with TDX and GPU evidence
/// is about 20 KB), oldest dropped first.
const WORKER_CERTS_BYTES: usize = 16 << 20;

/// Worker certificates by key, oldest first.
#[derive(Default)]
struct WorkerCerts {
    by_key: HashMap<[u8; 32], Arc<Vec<u8>>>,
    order: std::collections::VecDeque<[u8; 32]>,
    bytes: usize,
}

impl Link {
    /// The certificate of the worker with certificate key `key`, if the proxy sent it.
    pub(crate) fn worker_certificate(&self, key: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w.by_key.get(key).cloned()
    }

    /// Keeps a worker's certificate; one whose key is not `key` is a protocol violation.
    fn add_worker(&self, key: [u8; 32], cert: Vec<u8>) -> Result<(), SessionError> {
        if cert.len() > cocoon_ratls::verifier::MAX_CERT_LEN
            || cocoon_ratls::sign::certificate_public_key(&cert).ok() != Some(key)
        {
            return Err(SessionError::Protocol(
                "client.workerEvidence: the certificate is not the named key's".into(),
            ));
        }
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        w.insert(key, cert);
        Ok(())
    }
}

impl WorkerCerts {
    /// Keeps `cert` under `key`, dropping the oldest past the count or byte bound.
    fn insert(&mut self, key: [u8; 32], cert: Vec<u8>) {
        self.bytes += cert.len();
        match self.by_key.insert(key, Arc::new(cert)) {
            Some(old) => self.bytes -= old.len(),
            None => self.order.push_back(key),
        }
        while self.order.len() > WORKER_CERTS_MAX || self.bytes > WORKER_CERTS_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(c) = self.by_key.remove(&old) {
                self.bytes -= c.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_certificates_are_bounded_in_count_and_bytes_oldest_first() {
        let key = |i: usize| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            k
        };
        let mut w = WorkerCerts::default();
        for i in 0..WORKER_CERTS_MAX + 10 {
            w.insert(key(i), vec![1; 100]);
        }
        assert_eq!(w.by_key.len(), WORKER_CERTS_MAX);
        assert!(!w.by_key.contains_key(&key(9)) && w.by_key.contains_key(&key(10)));
        // The same key again replaces, not duplicates.
        w.insert(key(10), vec![2; 50]);
        assert_eq!(w.by_key.len(), WORKER_CERTS_MAX);
        assert_eq!(w.bytes, (WORKER_CERTS_MAX - 1) * 100 + 50);
        let mut w = WorkerCerts::default();
        for i in 0..20 {
            w.insert(key(i), vec![0; 1 << 20]);
        }
        assert!(w.bytes <= WORKER_CERTS_BYTES, "{}", w.bytes);
        assert_eq!(w.by_key.len(), WORKER_CERTS_BYTES >> 20);
        assert!(w.by_key.contains_key(&key(19)) && !w.by_key.contains_key(&key(0)));
    }
}

impl Link {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], mpsc::Sender<Event>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request; `None` when the session already ended.
    pub(crate) fn register(&self, id: [u8; 32]) -> Option<mpsc::Receiver<Event>> {
        let mut p = self.pending();
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = mpsc::channel(ANSWER_QUEUE);
        p.insert(id, tx);
        Some(rx)
    }

    /// Forgets a request (it ended or its caller left).
    pub(crate) fn forget(&self, id: &[u8; 32]) {
        self.pending().remove(id);
    }

    fn route(&self, id: &[u8; 32], ev: Event, last: bool) {
        let mut p = self.pending();
        if let Some(tx) = p.get(id)
            && tx.try_send(ev).is_err()
        {
            // The caller reads slower than the proxy sends (or left): the request is cut
            // off here rather than buffered without bound; its reader sees the end.
            p.remove(id);
            return;
        }
        if last {
            p.remove(id);
        }
    }

    fn close_all(&self, why: &str) {
        let mut p = self.pending();
        self.closed.store(true, Ordering::SeqCst);
        for (_, tx) in p.drain() {
            let _ = tx.try_send(Event::Closed(why.to_owned()));
        }
    }
}

/// A proxy's state, for routing and stats.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProxyInfo {
    /// `ip:port` dialled.
    pub address: String,
    /// connecting | ready | failed | stopped.
    pub state: String,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Attestation facts of the current (or last) session.
    pub tee: Option<Backend>,
    /// The proxy's image hash, hex.
    pub image_hash: Option<String>,
    /// The proxy platform's TCB status.
    pub tcb_status: Option<String>,
    /// The proxy contract.
    pub proxy_sc: Option<String>,
    /// Our client contract with this proxy.
    pub client_sc: Option<String>,
    /// Negotiated protocol version.
    pub proto: Option<i32>,
    /// Unix time until which the proxy's attestation verdict holds (current or last
    /// session); the session is closed then and redialled, which attests again.
    pub valid_until: Option<u64>,
    /// Sessions closed because the proxy's verdict expired.
    pub verdict_expiries: u64,
    /// `short` or `long`.
    pub auth: Option<String>,
    /// Tokens the best receipt held covers.
    pub receipt_tokens: u64,
    /// Tokens the proxy has committed to its database / knows about.
    pub db_tokens: u64,
    /// Tokens the proxy knows about (the highest `max_tokens` it reported).
    pub max_tokens: u64,
    /// Client contract on chain, when a wallet is configured.
    pub channel: Option<crate::payments::ChannelState>,
    /// Sessions opened.
    pub sessions: u64,
    /// Sessions that failed.
    pub failures: u64,
    /// Requests sent.
    pub requests: u64,
    /// Receipts that failed verification.
    pub bad_receipts: u64,
    /// Unix seconds the session became ready.
    pub ready_since: Option<u64>,
}

/// One proxy slot: a task dialling `address` and the ready link, if any.
pub(crate) struct Slot {
    pub address: String,
    pub link: watch::Sender<Option<Arc<Link>>>,
    pub info: Mutex<ProxyInfo>,
    pub inflight: AtomicU64,
    pub stop: watch::Sender<bool>,
    /// When the slot was last ready (or created).
    pub last_ready: Mutex<Instant>,
}

impl Slot {
    pub(crate) fn new(address: String) -> Arc<Slot> {
        Arc::new(Slot {
            info: Mutex::new(ProxyInfo {
                address: address.clone(),
                state: "connecting".into(),
                ..ProxyInfo::default()
            }),
            address,
            link: watch::channel(None).0,
            inflight: AtomicU64::new(0),
            stop: watch::channel(false).0,
            last_ready: Mutex::new(Instant::now()),
        })
    }

    pub(crate) fn info(&self) -> ProxyInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ProxyInfo)) {
        f(&mut self.info.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The ready link.
    pub(crate) fn ready(&self) -> Option<Arc<Link>> {
        self.link
            .borrow()
            .as_ref()
            .filter(|l| !l.closed.load(Ordering::SeqCst) && l.handle.is_ready())
            .cloned()
    }

    pub(crate) fn not_ready_for(&self) -> Duration {
        if self.ready().is_some() {
            *self.last_ready.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return Duration::ZERO;
        }
        self.last_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// Why a session ended (each names the proxy in the log and in `last_error`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("attestation refused: {0}")]
    Attestation(String),
    #[error("image not allowed: {0}")]
    Image(String),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("authorisation: {0}")]
    Auth(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("invalid receipt: {0}")]
    Receipt(String),
    #[error("session closed: {0}")]
    Closed(String),
    #[error("root params changed; reconnecting")]
    Params,
    #[error(
        "test mode mismatch: the root configuration says is_test = {root}, this client is configured with is_test = {ours}"
    )]
    TestMismatch { root: bool, ours: bool },
    #[error("proxy dropped: root configuration v{version} no longer allows it: {reason}")]
    RootChanged { version: u32, reason: String },
    #[error(
        "the proxy's attestation verdict expired (valid until {valid_until}); redialling to attest it again"
    )]
    VerdictExpired { valid_until: u64 },
}

/// What a session learned about its proxy, re-checked against every root configuration.
struct ProxyFacts {
    image_hash: [u8; 32],
    owner: StdAddr,
    key: [u8; 32],
    proxy_sc: StdAddr,
}

/// The root's `is_test` must be ours.
fn same_network(shared: &Shared, root: &RootConfig) -> Result<(), SessionError> {
    if root.params.is_test != shared.is_test {
        return Err(SessionError::TestMismatch {
            root: root.params.is_test,
            ours: shared.is_test,
        });
    }
    Ok(())
}

/// The proxy's attested image must be in the root's `proxy_hashes` (with
/// `check_proxy_hashes`).
fn image_allowed(shared: &Shared, root: &RootConfig, image: &[u8; 32]) -> Result<(), SessionError> {
    if shared.check_proxy_hashes && !root.proxy_hashes.iter().any(|h| h.0 == *image) {
        return Err(SessionError::Image(format!(
            "the proxy's image hash {} is not in the root contract's proxy list ({} allowed)",
            hex::encode(image),
            root.proxy_hashes.len()
        )));
    }
    Ok(())
}

/// The proxy's contract must derive from the root's params, its owner and key and the root
/// address (when the root address is known).
fn contract_derived(
    shared: &Shared,
    root: &RootConfig,
    p: &ProxyFacts,
) -> Result<(), SessionError> {
    let Some(root_addr) = &shared.root_address else {
        return Ok(());
    };
    let derived =
        cocoon_ton::contracts::proxy_contract(&root.params, &p.owner, &HashBytes(p.key), root_addr)
            .map_err(|e| {
                SessionError::Handshake(format!("cannot derive the proxy contract: {e}"))
            })?;
    if derived.address != p.proxy_sc {
        return Err(SessionError::Handshake(format!(
            "the proxy says its contract is {}, its key and owner give {}",
            p.proxy_sc, derived.address
        )));
    }
    Ok(())
}

/// Every check a root configuration makes on an open session.
fn still_allowed(shared: &Shared, root: &RootConfig, p: &ProxyFacts) -> Result<(), SessionError> {
    same_network(shared, root)?;
    image_allowed(shared, root, &p.image_hash)?;
    contract_derived(shared, root, p)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sha256(d: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(d).into()
}

/// Runs the slot until it is stopped.
pub(crate) async fn run(shared: Arc<Shared>, slot: Arc<Slot>) {
    let mut stop = slot.stop.subscribe();
    let mut backoff = Backoff::new(shared.timings.backoff.clone());
    // The proxy key learned in the first session under these params.
    let mut known_key: Option<([u8; 32], u32)> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        slot.update(|i| i.state = "connecting".into());
        let started = Instant::now();
        let res = tokio::select! {
            r = session(&shared, &slot, &mut known_key) => r,
            _ = stop.changed() => Err(SessionError::Closed("stopped".into())),
        };
        if let Some(l) = slot.link.send_replace(None) {
            l.close_all("proxy connection closed");
            l.handle.close();
        }
        if *stop.borrow() {
            break;
        }
        let expired = matches!(res, Err(SessionError::VerdictExpired { .. }));
        let err = match res {
            Ok(()) => "session closed by the proxy".to_owned(),
            Err(e) => e.to_string(),
        };
        if expired {
            tracing::info!(proxy = %slot.address, reason = %err, "proxy session ended");
        } else {
            tracing::warn!(proxy = %slot.address, error = %err, "proxy session ended");
        }
        slot.update(|i| {
            i.state = "failed".into();
            i.last_error = Some(err);
            i.failures += u64::from(!expired);
            i.verdict_expiries += u64::from(expired);
            i.ready_since = None;
        });
        if started.elapsed() >= shared.timings.backoff.reset_after {
            backoff.reset();
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
    slot.update(|i| i.state = "stopped".into());
}

async fn session(
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    known_key: &mut Option<([u8; 32], u32)>,
) -> Result<(), SessionError> {
    let root = shared.root();
    let t = &shared.timings;
    let connect = shared.connector.connect_keyed(slot.address.as_str());
    let keyed = match tokio::time::timeout(t.connect_timeout, connect).await {
        Err(_) => return Err(SessionError::Connect("timed out".into())),
        Ok(Err(e)) => {
            return Err(match e.verify_error() {
                Some(v) => SessionError::Attestation(v.to_string()),
                None => match &e {
                    cocoon_ratls::net::RatlsError::Verify(v) => {
                        SessionError::Attestation(v.to_string())
                    }
                    _ => SessionError::Connect(e.to_string()),
                },
            });
        }
        Ok(Ok(x)) => x,
    };
    let (handle, mut incoming, peer) = (keyed.handle, keyed.incoming, keyed.peer);
    let image = *peer.image_hash();
    let verdict_deadline = shared.connector.verdict_deadline(&peer);
    let valid_until = peer.valid_until();
    slot.update(|i| {
        i.tee = Some(peer.backend());
        i.image_hash = Some(hex::encode(image));
        i.tcb_status = Some(format!("{:?}", peer.tcb_status()));
        i.valid_until = Some(valid_until);
    });
    let closer = CloseOnDrop(handle.clone());
    same_network(shared, &root)?;
    image_allowed(shared, &root, &image)?;

    // connectToProxy
    let q = fclient::ConnectToProxy {
        params: tclient::Params {
            client_owner_address: shared.owner_address.to_string(),
            is_test: Some(shared.is_test),
            min_proto_version: Some(MIN_PROTO_VERSION),
            max_proto_version: Some(MAX_PROTO_VERSION),
        },
        min_config_version: root.version as i32,
    };
    let connected: tclient::ConnectedToProxy = handle
        .query_tl(&q, t.connect_timeout)
        .await
        .map_err(|e| SessionError::Handshake(format!("client.connectToProxy: {}", e.message)))?;
    let p = &connected.params;
    if p.is_test != Some(shared.is_test) {
        return Err(SessionError::Handshake(format!(
            "test mode mismatch: the proxy says is_test={:?}",
            p.is_test
        )));
    }
    let proto = p.proto_version.unwrap_or(1);
    if !(MIN_PROTO_VERSION..=MAX_PROTO_VERSION).contains(&proto) {
        return Err(SessionError::Handshake(format!(
            "the proxy chose protocol version {proto}, we speak {MIN_PROTO_VERSION}..={MAX_PROTO_VERSION}"
        )));
    }
    if shared.require_receipts && proto < 3 {
        return Err(SessionError::Handshake(format!(
            "the proxy speaks protocol version {proto}, whose answers carry no receipts \
             (require_receipts is on)"
        )));
    }
    let proxy_key = p.proxy_public_key;
    let proxy_sc = cocoon_ton::parse_address(&p.proxy_sc_address)
        .map_err(|e| SessionError::Handshake(format!("bad proxy contract address: {e}")))?;
    let proxy_owner = cocoon_ton::parse_address(&p.proxy_owner_address)
        .map_err(|e| SessionError::Handshake(format!("bad proxy owner address: {e}")))?;
    let facts = ProxyFacts {
        image_hash: image,
        owner: proxy_owner,
        key: proxy_key,
        proxy_sc: proxy_sc.clone(),
    };
    if let Err(e) = contract_derived(shared, &root, &facts) {
        // The proxy may already follow newer params (a root change): read the root now
        // rather than at the next poll, so the redial after it can pass.
        shared.root_wake.notify_one();
        return Err(e);
    }
    let client = cocoon_ton::contracts::client_contract(
        &root.params,
        &shared.owner_address,
        &proxy_sc,
        &HashBytes(proxy_key),
    )
    .map_err(|e| SessionError::Handshake(format!("cannot derive our client contract: {e}")))?;
    if client.address.to_string() != connected.client_sc_address
        && cocoon_ton::parse_address(&connected.client_sc_address).ok()
            != Some(client.address.clone())
    {
        return Err(SessionError::Handshake(format!(
            "the proxy says our client contract is {}, we derive {}",
            connected.client_sc_address, client.address
        )));
    }
    match known_key {
        Some((k, v)) if *v == root.params.params_version && *k != proxy_key => {
            return Err(SessionError::Handshake(
                "the proxy's key changed while the params did not".into(),
            ));
        }
        _ => *known_key = Some((proxy_key, root.params.params_version)),
    }
    let client_sc = client.address.clone();
    slot.update(|i| {
        i.proxy_sc = Some(proxy_sc.to_string());
        i.client_sc = Some(client_sc.to_string());
        i.proto = Some(proto);
    });

    // With a wallet: make sure the contract exists before authorising.
    let mut deployed_now = false;
    // Whether the channel's state read here is the one to show (not deployed just now).
    let mut channel_read = false;
    if let Some(ch) = &shared.channels {
        let st = ch
            .state(&client_sc)
            .await
            .map_err(|e| SessionError::Auth(format!("reading our client contract: {e}")))?;
        if let Some(cs) = &st {
            slot.update(|i| i.channel = Some(cs.clone()));
            channel_read = true;
        }
        if st.is_none() {
            let amount = if shared.auto_pay.top_up_amount > 0 {
                shared.auto_pay.top_up_amount
            } else {
                root.params.min_client_stake
            };
            tracing::info!(proxy = %slot.address, contract = %client_sc, amount, "deploying our client contract");
            ch.deploy(&client, amount, Some(sha256(&shared.secret)))
                .await
                .map_err(|e| SessionError::Auth(format!("deploying our client contract: {e}")))?;
            deployed_now = true;
        }
    }

    // Authorise.
    let ours = sha256(&shared.secret);
    let (auth, kind) = match &connected.auth {
        enums::client::ProxyConnectionAuth::ProxyConnectionAuthShort(s)
            if s.secret_hash == ours && !deployed_now =>
        {
            let a: enums::client::AuthorizationWithProxy = handle
                .query_tl(
                    &fclient::AuthorizeWithProxyShort {
                        data: shared.secret.clone(),
                    },
                    t.connect_timeout,
                )
                .await
                .map_err(|e| SessionError::Auth(e.message))?;
            (a, "short")
        }
        other => {
            let nonce = match other {
                enums::client::ProxyConnectionAuth::ProxyConnectionAuthShort(s) => s.nonce,
                enums::client::ProxyConnectionAuth::ProxyConnectionAuthLong(l) => l.nonce,
            };
            let Some(ch) = &shared.channels else {
                return Err(SessionError::Auth(
                    "the proxy asks for an on-chain registration (its client contract does not hold the SHA-256 of our secret) and no wallet is configured".into(),
                ));
            };
            ch.register(&client_sc, nonce as u64)
                .await
                .map_err(|e| SessionError::Auth(format!("registering the proxy's nonce: {e}")))?;
            if !deployed_now {
                // Next time the short path works.
                if let Err(e) = ch.set_secret_hash(&client_sc, ours).await {
                    tracing::warn!(proxy = %slot.address, error = %e, "could not set our secret hash");
                }
            }
            let a: enums::client::AuthorizationWithProxy = handle
                .query_tl(&fclient::AuthorizeWithProxyLong {}, t.long_auth_timeout)
                .await
                .map_err(|e| SessionError::Auth(e.message))?;
            (a, "long")
        }
    };
    let ok = match auth {
        enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(ok) => ok,
        enums::client::AuthorizationWithProxy::AuthorizationWithProxyFailed(f) => {
            return Err(SessionError::Auth(format!(
                "refused by the proxy ({}): {}",
                f.error_code, f.error
            )));
        }
    };
    let link = Arc::new(Link {
        handle: handle.clone(),
        proto,
        proxy_sc: proxy_sc.clone(),
        client_sc: client_sc.clone(),
        proxy_key,
        proxy_certificate: keyed.peer_certificate.to_vec(),
        own_key: *keyed.own_key.public_key(),
        workers: Mutex::default(),
        pending: Mutex::default(),
        closed: AtomicBool::new(false),
    });
    for sp in [&connected.signed_payment, &ok.signed_payment] {
        take_receipt(shared, slot, &link, sp)?;
    }
    slot.update(|i| {
        i.state = "ready".into();
        i.last_error = None;
        i.auth = Some(kind.into());
        i.sessions += 1;
        i.ready_since = Some(now_unix());
        i.db_tokens = i.db_tokens.max(ok.tokens_committed_to_db.max(0) as u64);
        i.max_tokens = i.max_tokens.max(ok.max_tokens.max(0) as u64);
    });
    // A long authorisation may outlast a short verdict: the link is never published then.
    if tokio::time::Instant::now() >= verdict_deadline {
        return Err(SessionError::VerdictExpired { valid_until });
    }
    *slot.last_ready.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    tracing::info!(proxy = %slot.address, contract = %proxy_sc, proto, auth = kind, "proxy session ready");
    slot.link.send_replace(Some(link.clone()));
    shared.ready_changed.notify_waiters();

    // Serve.
    let mut root_rx = shared.root_tx.subscribe();
    let params_version = root.params.params_version;
    // The first tick fires at once only when the channel was not read above (deployed just
    // now): its state is then known as soon as the session is ready, not one interval later,
    // and an existing channel is not read twice.
    let mut status_tick = tokio::time::interval(t.payment_status_interval);
    if channel_read {
        status_tick.tick().await;
    }
    let (pay_tx, _pay_rx) = mpsc::channel::<()>(1);
    let result = loop {
        tokio::select! {
            msg = incoming.recv() => {
                let Some(msg) = msg else {
                    let why = handle.closed().await;
                    break Err(SessionError::Closed(format!("{why:?}")));
                };
                match msg {
                    Incoming::Message { data } => on_message(shared, slot, &link, &data)?,
                    Incoming::Query { responder, .. } => {
                        let _ = responder.error(ErrorCode::ProtoViolation as i32, "clients serve no queries");
                    }
                }
            }
            r = root_rx.changed() => {
                if r.is_err() {
                    break Err(SessionError::Closed("the gateway is stopping".into()));
                }
                let root = root_rx.borrow_and_update().clone();
                if root.params.params_version != params_version {
                    break Err(SessionError::Params);
                }
                // A proxy the new configuration no longer allows gets no more requests.
                if let Err(e) = still_allowed(shared, &root, &facts) {
                    break Err(SessionError::RootChanged { version: root.version, reason: e.to_string() });
                }
            }
            _ = tokio::time::sleep_until(verdict_deadline) => {
                break Err(SessionError::VerdictExpired { valid_until });
            }
            _ = status_tick.tick() => {
                // Status and automatic payments run beside the demultiplexer; one at a time.
                if let Ok(permit) = pay_tx.clone().try_reserve_owned() {
                    let (shared, slot, link) = (shared.clone(), slot.clone(), link.clone());
                    tokio::spawn(async move {
                        if let Err(e) = payment_status(&shared, &slot, &link).await {
                            tracing::warn!(proxy = %slot.address, error = %e, "payment status");
                            slot.update(|i| i.last_error = Some(e));
                        }
                        drop(permit);
                    });
                }
            }
        }
    };
    drop(closer);
    result
}

/// Closes the session when the handshake or serving ends early.
struct CloseOnDrop(SessionHandle);
impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Verifies a receipt and keeps it if it is the best; an invalid one ends the session.
fn take_receipt(
    shared: &Shared,
    slot: &Slot,
    link: &Link,
    sp: &enums::proxy::SignedPayment,
) -> Result<(), SessionError> {
    let data = match sp {
        enums::proxy::SignedPayment::SignedPaymentEmpty(_) => return Ok(()),
        enums::proxy::SignedPayment::SignedPayment(tproxy::SignedPayment { data }) => data,
    };
    let checked = SignedPayment::from_boc(data)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.verify(SignedOp::ClientCharge, &link.client_sc, &link.proxy_key)
                .map_err(|e| e.to_string())
        });
    let payload = match checked {
        Ok(p) => p,
        Err(e) => {
            slot.update(|i| i.bad_receipts += 1);
            return Err(SessionError::Receipt(e));
        }
    };
    let tokens = payload.tokens.unwrap_or(0);
    if i64::try_from(tokens).is_err() {
        slot.update(|i| i.bad_receipts += 1);
        return Err(SessionError::Receipt(format!(
            "{tokens} tokens is beyond any real usage"
        )));
    }
    let saved = shared.store.save_receipt(&StoredReceipt {
        client_sc: link.client_sc.to_string(),
        proxy_sc: link.proxy_sc.to_string(),
        tokens,
        boc: data.clone(),
    });
    match saved {
        Ok(_) => slot.update(|i| i.receipt_tokens = i.receipt_tokens.max(tokens)),
        Err(e) => tracing::error!(error = %e, "could not store a receipt"),
    }
    Ok(())
}

/// One message from the proxy; an error ends the session, an unknown message is ignored.
fn on_message(
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    link: &Arc<Link>,
    data: &[u8],
) -> Result<(), SessionError> {
    let m = match ToClient::decode(data) {
        Ok(m) => m,
        Err(DispatchError::Unknown { id, .. }) => {
            tracing::debug!(proxy = %slot.address, constructor = format!("{id:08x}"), "ignoring an unknown message");
            return Ok(());
        }
        Err(DispatchError::Malformed { error, .. }) => {
            return Err(SessionError::Protocol(error.to_string()));
        }
        Err(_) => return Err(SessionError::Protocol("message too short".into())),
    };
    match m {
        ToClient::QueryAnswerEx(a) => on_answer_head(link, &a.request_id, &a.answer, a.final_info),
        ToClient::QueryAnswerPartEx(a) => {
            on_answer_part(link, &a.request_id, a.answer, a.final_info)
        }
        ToClient::QueryAnswerErrorEx(a) => {
            on_answer_error(link, &a.request_id, a.error_code, a.error, a.final_info);
        }
        // The version 0 forms: COCOON's proxy answers a version 0 client with them, and any
        // client with `queryAnswerError` (a request it refuses or that fails at the proxy
        // before its head: no worker, balance too low, timeout) or `queryAnswerPartError`
        // (one that fails there after its head). Their token count is the request's usage.
        ToClient::QueryAnswer(a) => {
            let done = a.is_completed.then(|| legacy_final(a.request_tokens_used));
            on_answer_head(link, &a.request_id, &a.answer, done);
        }
        ToClient::QueryAnswerPart(a) => {
            let done = a.is_completed.then(|| legacy_final(a.request_tokens_used));
            on_answer_part(link, &a.request_id, a.answer, done);
        }
        ToClient::QueryAnswerError(a) => {
            let done = Some(legacy_final(a.request_tokens_used));
            on_answer_error(link, &a.request_id, a.error_code, a.error, done);
        }
        ToClient::QueryAnswerPartError(a) => {
            let done = Some(legacy_final(a.request_tokens_used));
            on_answer_error(link, &a.request_id, a.error_code, a.error, done);
        }
        ToClient::ClientRequestPayment(p) => {
            take_receipt(shared, slot, link, &p.signed_payment)?;
            slot.update(|i| {
                i.db_tokens = i.db_tokens.max(p.db_tokens.max(0) as u64);
                i.max_tokens = i.max_tokens.max(p.max_tokens.max(0) as u64);
            });
        }
        // A receipt on its own (COCOON's client takes it; COCOON's proxy sends none).
        ToClient::SignedPayment(p) => {
            take_receipt(
                shared,
                slot,
                link,
                &enums::proxy::SignedPayment::SignedPayment(p),
            )?;
        }
        ToClient::SignedPaymentEmpty(_) => {}
        ToClient::WorkerEvidence(w) => link.add_worker(w.worker_key, w.certificate)?,
        ToClient::AnswerReceipt(r) => {
            let id = r.request_id;
            link.route(&id, Event::Receipt(Box::new(r)), false);
        }
    }
    Ok(())
}

/// The final info of a version 0 answer: its token count, no debug, no timings.
fn legacy_final(tokens_used: cocoon_tl::types::TokensUsed) -> tclient::QueryFinalInfo {
    tclient::QueryFinalInfo {
        tokens_used,
        worker_debug: None,
        proxy_debug: None,
        proxy_start_time: None,
        proxy_end_time: None,
        worker_start_time: None,
        worker_end_time: None,
    }
}

/// An answer's head (`client.queryAnswerEx`, `client.queryAnswer`): the HTTP head and the
/// first bytes (the whole answer when final); a head that is no HTTP response fails the
/// request.
fn on_answer_head(
    link: &Link,
    id: &[u8; 32],
    answer: &[u8],
    done: Option<tclient::QueryFinalInfo>,
) {
    let last = done.is_some();
    let ev = match cocoon_tl::types::http::Response::from_bytes(answer) {
        Ok(r) => Event::Head {
            status: u16::try_from(r.status_code).unwrap_or(502),
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: Bytes::from(r.payload),
            done,
        },
        Err(e) => Event::Error {
            code: ErrorCode::ProtoViolation as i32,
            message: format!("malformed HTTP answer from the proxy: {e}"),
            done,
        },
    };
    // Version 3: the answer's receipt follows its final info (once the proxy's settlement is
    // committed); the request's reader forgets the route once it has it.
    link.route(id, ev, last && link.proto < 3);
}

/// More bytes of an answer (`client.queryAnswerPartEx`, `client.queryAnswerPart`).
fn on_answer_part(
    link: &Link,
    id: &[u8; 32],
    answer: Vec<u8>,
    done: Option<tclient::QueryFinalInfo>,
) {
    let last = done.is_some();
    let ev = Event::Part {
        body: Bytes::from(answer),
        done,
    };
    // Version 3: the answer's receipt follows its final info (once the proxy's settlement is
    // committed); the request's reader forgets the route once it has it.
    link.route(id, ev, last && link.proto < 3);
}

/// A request's end in failure (`client.queryAnswerErrorEx`, `client.queryAnswerError`,
/// `client.queryAnswerPartError`), before or after its head.
fn on_answer_error(
    link: &Link,
    id: &[u8; 32],
    code: i32,
    message: String,
    done: Option<tclient::QueryFinalInfo>,
) {
    let ev = Event::Error {
        code,
        message,
        done,
    };
    link.route(id, ev, true);
}

/// `client.updatePaymentStatus`, then the automatic top-up or charge if one is due.
async fn payment_status(
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    link: &Arc<Link>,
) -> Result<(), String> {
    let st: enums::client::PaymentStatus = link
        .handle
        .query_tl(
            &fclient::UpdatePaymentStatus {},
            shared.timings.connect_timeout,
        )
        .await
        .map_err(|e| format!("client.updatePaymentStatus: {}", e.message))?;
    let enums::client::PaymentStatus::PaymentStatus(st) = st;
    take_receipt(shared, slot, link, &st.signed_payment).map_err(|e| e.to_string())?;
    slot.update(|i| {
        i.db_tokens = i.db_tokens.max(st.db_tokens.max(0) as u64);
        i.max_tokens = i.max_tokens.max(st.max_tokens.max(0) as u64);
    });
    shared.maintain(slot, link).await
}

impl Shared {
    /// Reads our client contract and runs the automatic policy once.
    pub(crate) async fn maintain(&self, slot: &Slot, link: &Link) -> Result<(), String> {
        let Some(ch) = &self.channels else {
            return Ok(());
        };
        let Some(cs) = ch.state(&link.client_sc).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        slot.update(|i| i.channel = Some(cs.clone()));
        let info = slot.info();
        let price = self.root().params.price_per_token;
        let best = self
            .store
            .receipt(&link.client_sc.to_string())?
            .map(|r| r.tokens)
            .unwrap_or(0);
        match plan(&cs, price, info.max_tokens, best, &self.auto_pay) {
            Step::Idle => Ok(()),
            Step::TopUp(amount) => {
                tracing::info!(proxy = %slot.address, amount, "topping up our client contract");
                ch.top_up(&link.client_sc, amount)
                    .await
                    .map_err(|e| format!("automatic top-up: {e}"))
            }
            Step::Charge(tokens) => {
                tracing::info!(proxy = %slot.address, tokens, "submitting the proxy's charge");
                self.charge(&link.client_sc).await
            }
        }
    }

    /// Submits the best receipt held for `client_sc`.
    pub(crate) async fn charge(&self, client_sc: &StdAddr) -> Result<(), String> {
        let Some(ch) = &self.channels else {
            return Err("no wallet is configured".into());
        };
        let Some(r) = self.store.receipt(&client_sc.to_string())? else {
            return Err("no receipt from this proxy yet".into());
        };
        let sp = SignedPayment::from_boc(&r.boc).map_err(|e| e.to_string())?;
        ch.charge(client_sc, &sp)
            .await
            .map_err(|e| format!("charge: {e}"))
    }
}
