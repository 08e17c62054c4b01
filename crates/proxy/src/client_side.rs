//! One task per client session: handshake, authorisation, then requests.
//!
//! Handshake: `client.connectToProxy(params, min_config_version)` →
//! `client.connectedToProxy(proxy.params, client_sc_address, auth, signed_payment)` where
//! `auth` is `authShort(secret_hash, nonce)` when the client contract holds a secret hash
//! and `authLong(nonce)` otherwise. `client.authorizeWithProxyShort(secret)` succeeds when
//! SHA-256(secret) equals the stored hash; `client.authorizeWithProxyLong` waits until the
//! chain shows the client contract registering the nonce. Then the client's credit (what
//! its contract's balance and stake cover) is opened in the meter.
//!
//! Requests are messages: `client.runQueryEx` (one task each, see `forward`; the protocol 0
//! `client.runQuery` is taken as a `client.runQueryEx` without debug),
//! `client.cancelQuery` (v3). Queries: `client.updatePaymentStatus`,
//! `client.getWorkerTypes(V2)`. When the session ends, every request of it is cancelled.
//!
//! The session ends when the client's verdict expires (`VerifiedPeer::valid_until`; for a
//! client without evidence, its certificate's notAfter capped by the client policy's
//! `max_validity_secs`). Client images are not restricted by the root contract (it lists
//! proxy and worker images only), so a root update re-checks nothing about a client
//! beyond the params version.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cocoon_net::{ErrorCode, Incoming, Responder, SessionHandle};
use cocoon_ratls::net::Accepted;
use cocoon_tl::functions::client as fclient;
use cocoon_tl::messages::client::{ToProxy, ToProxyQuery};
use cocoon_tl::types::{client as tclient, proxy as tproxy};
use cocoon_tl::{DispatchError, TlWrite, enums};
use cocoon_ton::{HashBytes, StdAddr};
use rand::Rng;
use sha2::Digest;
use tokio::sync::watch;

use crate::admission;
use crate::forward::{self, CancelReason, ClientCtx};
use crate::meter::Party;
use crate::receipts::{clamp_i64, payment};
use crate::registry::ModelWorkers;
use crate::{ClientStat, Shared};

#[derive(Debug, Clone)]
enum Auth {
    None,
    Pending {
        owner: String,
        client_sc: StdAddr,
        proto: i32,
        nonce: u64,
        secret_hash: Option<[u8; 32]>,
    },
    Authorized {
        owner: String,
        client_sc: StdAddr,
        proto: i32,
    },
}

pub(crate) struct ClientSession {
    shared: Arc<Shared>,
    id: u64,
    /// The peer's address, for logs and refusals.
    peer: String,
    ip: std::net::IpAddr,
    handle: SessionHandle,
    auth: Mutex<Auth>,
    pay_lock: crate::registry::PayLock,
    running: Mutex<HashMap<[u8; 32], watch::Sender<Option<CancelReason>>>>,
    /// Signs this session's answer receipts (used at protocol 3).
    receipts: Arc<forward::SessionReceipts>,
}

impl ClientSession {
    fn auth(&self) -> Auth {
        self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_auth(&self, a: Auth) {
        *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = a;
    }

    fn running(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], watch::Sender<Option<CancelReason>>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) async fn run(shared: Arc<Shared>, a: Accepted, mut stop: watch::Receiver<bool>) {
    let Accepted {
        handle,
        mut incoming,
        addr,
        peer: verified,
        verdict_deadline,
        own_key,
        ..
    } = a;
    let receipts = Arc::new(forward::SessionReceipts {
        key: own_key,
        client_key: verified.public_key().copied().unwrap_or_default(),
        evidence_sent: Default::default(),
    });
    let peer = addr.to_string();
    let sess = Arc::new(ClientSession {
        shared: Arc::clone(&shared),
        id: shared.next_id(),
        peer: peer.clone(),
        ip: addr.ip(),
        handle: handle.clone(),
        auth: Mutex::new(Auth::None),
        pay_lock: Default::default(),
        running: Mutex::default(),
        receipts,
    });
    shared
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            sess.id,
            ClientStat {
                session: sess.id,
                owner: String::new(),
                client_sc: String::new(),
                authorized: false,
                running: 0,
                totals: Default::default(),
            },
        );
    // A session that does not authorise in time holds nothing more.
    let auth_deadline = tokio::time::Instant::now()
        + shared.timings.handshake_timeout
        + shared.timings.long_auth_timeout;
    // Contract addresses depend on the params: a params change ends the session so that
    // the client reconnects and learns its new client contract.
    let mut root_rx = shared.root.subscribe();
    let params_version = root_rx.borrow_and_update().params.params_version;
    loop {
        let authorized = matches!(sess.auth(), Auth::Authorized { .. });
        tokio::select! {
            _ = stop.changed() => break,
            r = root_rx.changed() => {
                if r.is_err() || root_rx.borrow_and_update().params.params_version != params_version {
                    tracing::info!(peer = %peer, "root params changed; closing the session");
                    break;
                }
            }
            _ = tokio::time::sleep_until(auth_deadline), if !authorized => {
                shared.refused("client", &peer, "not authorised in time");
                break;
            }
            // The verdict the session was admitted under (for an unattested client: its
            // certificate's notAfter, capped by the client policy's max_validity_secs).
            _ = tokio::time::sleep_until(verdict_deadline) => {
                shared.event(
                    "verdict_expired",
                    &peer,
                    &format!(
                        "the client's {:?} verdict expired (valid until {}); session closed, the client reconnects",
                        verified.backend(),
                        verified.valid_until()
                    ),
                );
                break;
            }
            msg = incoming.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Incoming::Query { data, responder } => {
                        if !sess.on_query(&data, responder).await {
                            break;
                        }
                    }
                    Incoming::Message { data } => {
                        if let Err(e) = sess.on_message(&data) {
                            tracing::warn!(peer = %peer, error = %e, "client protocol violation; closing");
                            break;
                        }
                    }
                }
            }
        }
    }
    let reason = if *stop.borrow() {
        CancelReason::Shutdown
    } else {
        CancelReason::ClientGone
    };
    for (_, tx) in sess.running().drain() {
        let _ = tx.send(Some(reason));
    }
    shared
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&sess.id);
    handle.close();
    tracing::info!(peer = %peer, session = sess.id, "client session ended");
}

fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

fn auth_failed(code: ErrorCode, error: String) -> enums::client::AuthorizationWithProxy {
    enums::client::AuthorizationWithProxy::AuthorizationWithProxyFailed(
        tclient::AuthorizationWithProxyFailed {
            error_code: code as i32,
            error,
        },
    )
}

fn answer_auth(responder: Responder, a: &enums::client::AuthorizationWithProxy) {
    let _ = responder.answer(a.to_bytes());
}

/// Queries: each handler answers through the responder and returns `false` to end the
/// session.
impl ClientSession {
    /// Refuses a query, counted as a refusal of this client.
    fn refuse(&self, responder: Responder, code: ErrorCode, reason: &str) {
        self.shared.refused("client", &self.peer, reason);
        let _ = responder.error(code as i32, reason.to_owned());
    }

    async fn on_query(self: &Arc<Self>, data: &[u8], responder: Responder) -> bool {
        let decoded = ToProxyQuery::decode(data);
        let (q, responder) = match self
            .shared
            .decode_query(decoded, responder, "client", &self.peer)
        {
            Ok(q) => q,
            Err(session_goes_on) => return session_goes_on,
        };
        match q {
            ToProxyQuery::ConnectToProxy(q) => self.on_connect(q, responder).await,
            ToProxyQuery::AuthorizeWithProxyShort(q) => self.on_authorize_short(q, responder).await,
            ToProxyQuery::AuthorizeWithProxyLong(_) => self.on_authorize_long(responder),
            ToProxyQuery::UpdatePaymentStatus(_) => self.on_payment_status(responder).await,
            ToProxyQuery::GetWorkerTypesV2(_) => self.on_worker_types(responder, true),
            ToProxyQuery::GetWorkerTypes(_) => self.on_worker_types(responder, false),
            ToProxyQuery::GetModelInfo(_) => {
                let models = (self.shared.registry.model_infos().into_iter())
                    .map(|(name, n, caps)| {
                        let (capabilities_known, capabilities) = caps.to_bits();
                        tclient::ModelInfo {
                            name,
                            context_length: i32::try_from(n).unwrap_or(i32::MAX),
                            capabilities_known,
                            capabilities,
                        }
                    })
                    .collect();
                let _ = responder.answer_tl(&tclient::ModelInfos { models });
                true
            }
        }
    }

    /// `client.connectToProxy`: checks the client's params, derives its contract, and
    /// answers with the proxy's params and the authorisation the contract calls for.
    async fn on_connect(&self, q: fclient::ConnectToProxy, responder: Responder) -> bool {
        let shared = &self.shared;
        if !matches!(self.auth(), Auth::None) {
            self.refuse(
                responder,
                ErrorCode::ProtoViolation,
                "repeated client.connectToProxy",
            );
            return false;
        }
        if !shared.enabled.load(Ordering::SeqCst) {
            self.refuse(
                responder,
                ErrorCode::NotReady,
                "proxy is not participating in this iteration",
            );
            return true;
        }
        let p = &q.params;
        let Some(is_test) = p.is_test else {
            self.refuse(responder, ErrorCode::Error, "too old client");
            return true;
        };
        if is_test != shared.is_test {
            self.refuse(responder, ErrorCode::Error, "test mode mismatch");
            return true;
        }
        let proto = match admission::negotiate(p.min_proto_version, p.max_proto_version) {
            Ok(v) => v,
            Err(e) => {
                self.refuse(responder, ErrorCode::Error, &e.to_string());
                return true;
            }
        };
        let (root, proxy_sc) = shared.root_and_contract();
        if i64::from(q.min_config_version) > i64::from(root.version) {
            self.refuse(
                responder,
                ErrorCode::NotReady,
                "active config version is too low",
            );
            return true;
        }
        let owner = match cocoon_ton::parse_address(&p.client_owner_address) {
            Ok(a) => a,
            Err(e) => {
                self.refuse(
                    responder,
                    ErrorCode::Error,
                    &format!("bad client owner address: {e}"),
                );
                return true;
            }
        };
        let client_sc = match cocoon_ton::contracts::client_contract(
            &root.params,
            &owner,
            &proxy_sc,
            &HashBytes(shared.public_key),
        ) {
            Ok(d) => d.address,
            Err(e) => {
                self.refuse(
                    responder,
                    ErrorCode::Failure,
                    &format!("cannot derive client contract: {e}"),
                );
                return true;
            }
        };
        // Nobody is authenticated yet: the read is cached and rate-limited per address.
        let secret_hash = match shared
            .lookups
            .client_state(&*shared.chain, self.ip, &client_sc)
            .await
        {
            Ok(s) => s.and_then(|s| s.secret_hash),
            Err(e) => {
                self.refuse(responder, ErrorCode::NotReady, &e.to_string());
                return true;
            }
        };
        let nonce: u64 = rand::rng().random();
        let auth = match secret_hash {
            Some(h) => enums::client::ProxyConnectionAuth::ProxyConnectionAuthShort(
                tclient::ProxyConnectionAuthShort {
                    secret_hash: h,
                    nonce: nonce as i64,
                },
            ),
            None => enums::client::ProxyConnectionAuth::ProxyConnectionAuthLong(
                tclient::ProxyConnectionAuthLong {
                    nonce: nonce as i64,
                },
            ),
        };
        self.set_auth(Auth::Pending {
            owner: owner.to_string(),
            client_sc: client_sc.clone(),
            proto,
            nonce,
            secret_hash,
        });
        let ans = tclient::ConnectedToProxy {
            params: tproxy::Params {
                proxy_public_key: shared.public_key,
                proxy_owner_address: shared.owner_address.to_string(),
                proxy_sc_address: proxy_sc.to_string(),
                is_test: Some(shared.is_test),
                proto_version: Some(proto),
            },
            client_sc_address: client_sc.to_string(),
            auth,
            signed_payment: payment(&*shared.meter, Party::Client, &client_sc.to_string()),
        };
        let _ = responder.answer_tl(&ans);
        true
    }

    /// Refuses an authorisation that no handshake asked for; the session ends.
    fn refuse_unpending(&self, responder: Responder) -> bool {
        let reason = "authorisation without a pending handshake";
        self.refuse(responder, ErrorCode::ProtoViolation, reason);
        false
    }

    /// `client.authorizeWithProxyShort(secret)`: succeeds when SHA-256 of the secret is the
    /// contract's secret hash.
    async fn on_authorize_short(
        &self,
        q: fclient::AuthorizeWithProxyShort,
        responder: Responder,
    ) -> bool {
        let Auth::Pending {
            owner,
            client_sc,
            proto,
            secret_hash,
            ..
        } = self.auth()
        else {
            return self.refuse_unpending(responder);
        };
        match secret_hash {
            Some(h) if h == sha256(&q.data) => {
                let a = self.authorize(owner, client_sc, proto).await;
                answer_auth(responder, &a);
            }
            _ => {
                self.shared.refused(
                    "client",
                    &self.peer,
                    "short authorisation: secret does not match",
                );
                answer_auth(
                    responder,
                    &auth_failed(
                        ErrorCode::Error,
                        "secret does not match the client contract".into(),
                    ),
                );
            }
        }
        true
    }

    /// `client.authorizeWithProxyLong`: answered (from its own task) once the chain shows
    /// the client contract registering the nonce, or when the wait times out.
    fn on_authorize_long(self: &Arc<Self>, responder: Responder) -> bool {
        let Auth::Pending {
            owner,
            client_sc,
            proto,
            nonce,
            ..
        } = self.auth()
        else {
            return self.refuse_unpending(responder);
        };
        let sess = Arc::clone(self);
        tokio::spawn(async move {
            let waited = tokio::time::timeout(
                sess.shared.timings.long_auth_timeout,
                sess.shared.chain.wait_register(&client_sc, nonce),
            )
            .await;
            let a = match waited {
                Ok(Ok(())) => sess.authorize(owner, client_sc, proto).await,
                Ok(Err(e)) => auth_failed(ErrorCode::NotReady, e.to_string()),
                Err(_) => auth_failed(
                    ErrorCode::Timeout,
                    "no registration seen on-chain in time".into(),
                ),
            };
            answer_auth(responder, &a);
        });
        true
    }

    /// Opens the client's credit in the meter and builds the authorisation answer.
    async fn authorize(
        &self,
        owner: String,
        client_sc: StdAddr,
        proto: i32,
    ) -> enums::client::AuthorizationWithProxy {
        let shared = &self.shared;
        let state = match shared.chain.client_state(&client_sc).await {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => return auth_failed(ErrorCode::NotReady, e.to_string()),
        };
        if state.closing || state.closed {
            return auth_failed(ErrorCode::Error, "client is closing".into());
        }
        let price = shared.root.borrow().params.price_per_token;
        let sc = client_sc.to_string();
        let totals = match shared.meter.open_client(&sc, &state, price).await {
            Ok(t) => t,
            Err(e) => return auth_failed(ErrorCode::Error, e.to_string()),
        };
        self.set_auth(Auth::Authorized {
            owner: owner.clone(),
            client_sc,
            proto,
        });
        let sc_for_payment = sc.clone();
        shared.update_client(self.id, |c| {
            c.authorized = true;
            c.owner = owner;
            c.client_sc = sc;
        });
        enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(
            tclient::AuthorizationWithProxySuccess {
                signed_payment: payment(&*shared.meter, Party::Client, &sc_for_payment),
                tokens_committed_to_db: clamp_i64(totals.committed_to_db),
                max_tokens: clamp_i64(totals.max),
            },
        )
    }

    /// `client.updatePaymentStatus`: the latest receipt and totals, under the session's
    /// payment lock.
    async fn on_payment_status(&self, responder: Responder) -> bool {
        let Auth::Authorized { client_sc, .. } = self.auth() else {
            let _ = responder.error(ErrorCode::NotReady as i32, "not authorised");
            return true;
        };
        let _g = self.pay_lock.lock().await;
        let sc = client_sc.to_string();
        let meter = &*self.shared.meter;
        let t = meter.client_totals(&sc);
        let _ = responder.answer_tl(&tclient::PaymentStatus {
            signed_payment: payment(meter, Party::Client, &sc),
            db_tokens: clamp_i64(t.committed_to_db),
            max_tokens: clamp_i64(t.max),
        });
        true
    }

    /// `client.getWorkerTypesV2` (`v2`: every model with each worker's coefficient and load)
    /// or `client.getWorkerTypes` (every model with its worker count and coefficient spread).
    fn on_worker_types(&self, responder: Responder, v2: bool) -> bool {
        let models = self.shared.registry.types().into_iter();
        let _ = if v2 {
            let types = models.map(worker_type_v2).collect();
            responder.answer_tl(&tclient::WorkerTypesV2 { types })
        } else {
            let types = models.map(worker_type).collect();
            responder.answer_tl(&tclient::WorkerTypes { types })
        };
        true
    }
}

fn worker_type_v2((name, ws): ModelWorkers) -> tclient::WorkerTypeV2 {
    tclient::WorkerTypeV2 {
        name,
        workers: ws
            .into_iter()
            .map(|(c, r, m)| tclient::WorkerInstanceV2 {
                coefficient: c,
                active_requests: i32::try_from(r).unwrap_or(i32::MAX),
                max_active_requests: i32::try_from(m).unwrap_or(i32::MAX),
            })
            .collect(),
    }
}

fn worker_type((name, ws): ModelWorkers) -> tclient::WorkerType {
    let mut c: Vec<i32> = ws.iter().map(|w| w.0).collect();
    c.sort_unstable();
    tclient::WorkerType {
        name,
        active_workers: i32::try_from(c.len()).unwrap_or(i32::MAX),
        coefficient_min: c.first().copied().unwrap_or(0),
        coefficient_bucket50: c.get(c.len() / 2).copied().unwrap_or(0),
        coefficient_max: c.last().copied().unwrap_or(0),
    }
}

/// Messages: an error ends the session; an unknown message is ignored.
impl ClientSession {
    fn on_message(self: &Arc<Self>, data: &[u8]) -> Result<(), String> {
        let m = match ToProxy::decode(data) {
            Ok(m) => m,
            Err(DispatchError::Unknown { id, .. }) => {
                tracing::debug!(
                    id = format_args!("{id:08x}"),
                    "unknown client message ignored"
                );
                return Ok(());
            }
            Err(DispatchError::TooShort { .. }) => {
                return Err("message shorter than a constructor id".into());
            }
            Err(e) => return Err(e.to_string()),
        };
        match m {
            ToProxy::RunQueryEx(q) => self.on_run_query(q),
            // The protocol 0 form, taken as COCOON's proxy takes it: a request without debug.
            ToProxy::RunQuery(q) => self.on_run_query(fclient::RunQueryEx {
                model_name: q.model_name,
                query: q.query,
                max_coefficient: q.max_coefficient,
                max_tokens: q.max_tokens,
                timeout: q.timeout,
                request_id: q.request_id,
                min_config_version: q.min_config_version,
                enable_debug: None,
            }),
            ToProxy::CancelQuery(m) => {
                if let Some(tx) = self.running().get(&m.request_id) {
                    let _ = tx.send(Some(CancelReason::ClientCancel));
                }
            }
        }
        Ok(())
    }

    /// `client.runQueryEx`: one task per request (`forward`), at most
    /// `max_session_requests` at a time, request ids unique among the running ones.
    fn on_run_query(self: &Arc<Self>, q: fclient::RunQueryEx) {
        let shared = &self.shared;
        let Auth::Authorized {
            owner,
            client_sc,
            proto,
        } = self.auth()
        else {
            forward::reject(
                shared,
                &self.handle,
                1,
                q.request_id,
                ErrorCode::NotReady,
                "not authorised",
            );
            return;
        };
        let (tx, rx) = watch::channel(None);
        {
            let mut running = self.running();
            if running.contains_key(&q.request_id) {
                forward::reject(
                    shared,
                    &self.handle,
                    proto,
                    q.request_id,
                    ErrorCode::ProtoViolation,
                    "duplicate request id",
                );
                return;
            }
            if running.len() >= shared.timings.max_session_requests {
                forward::reject(
                    shared,
                    &self.handle,
                    proto,
                    q.request_id,
                    ErrorCode::Error,
                    &format!(
                        "too many active queries on this connection (at most {})",
                        shared.timings.max_session_requests
                    ),
                );
                return;
            }
            running.insert(q.request_id, tx);
            let n = running.len() as u32;
            shared.update_client(self.id, |c| c.running = n);
        }
        let ctx = ClientCtx {
            handle: self.handle.clone(),
            pay_lock: Arc::clone(&self.pay_lock),
            proto,
            client_sc: client_sc.to_string(),
            owner,
            receipts: (proto >= 3).then(|| Arc::clone(&self.receipts)),
            session: self.id,
        };
        let sess = Arc::clone(self);
        tokio::spawn(async move {
            let rid = q.request_id;
            forward::run(Arc::clone(&sess.shared), ctx, q, rx).await;
            let mut running = sess.running();
            running.remove(&rid);
            let n = running.len() as u32;
            sess.shared.update_client(sess.id, |c| c.running = n);
        });
    }
}
