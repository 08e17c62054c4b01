//! One task per client session: handshake, authorisation, then requests.
//!
//! Handshake (inventory §2.5): `client.connectToProxy(params, min_config_version)` →
//! `client.connectedToProxy(proxy.params, client_sc_address, auth, signed_payment)` where
//! `auth` is `authShort(secret_hash, nonce)` when the client contract holds a secret hash
//! and `authLong(nonce)` otherwise. `client.authorizeWithProxyShort(secret)` succeeds when
//! SHA-256(secret) equals the stored hash; `client.authorizeWithProxyLong` waits until the
//! chain shows the client contract registering the nonce. Then the client's credit (what
//! its contract's balance and stake cover) is opened in the meter.
//!
//! Requests are messages: `client.runQueryEx` (one task each, see `forward`),
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
use cocoon_tl::types::{client as tclient, proxy as tproxy};
use cocoon_tl::{Identifiable, TlRead, TlWrite, enums, peek_constructor};
use cocoon_ton::{HashBytes, StdAddr};
use rand::Rng;
use sha2::Digest;
use tokio::sync::watch;

use crate::admission;
use crate::forward::{self, CancelReason, ClientCtx};
use crate::meter::Party;
use crate::receipts::{clamp_i64, payment};
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
    id: u64,
    ip: std::net::IpAddr,
    handle: SessionHandle,
    auth: Mutex<Auth>,
    pay_lock: crate::registry::PayLock,
    running: Mutex<HashMap<[u8; 32], watch::Sender<Option<CancelReason>>>>,
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
    } = a;
    let peer = addr.to_string();
    let sess = Arc::new(ClientSession {
        id: shared.next_id(),
        ip: addr.ip(),
        handle: handle.clone(),
        auth: Mutex::new(Auth::None),
        pay_lock: Default::default(),
        running: Mutex::default(),
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
                        if !on_query(&shared, &sess, &peer, &data, responder).await {
                            break;
                        }
                    }
                    Incoming::Message { data } => {
                        if let Err(e) = on_message(&shared, &sess, &data) {
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

/// Opens the client's credit in the meter and answers the authorisation query.
async fn authorize(
    shared: &Arc<Shared>,
    sess: &Arc<ClientSession>,
    owner: String,
    client_sc: StdAddr,
    proto: i32,
) -> enums::client::AuthorizationWithProxy {
    let failed = |code: ErrorCode, error: String| {
        enums::client::AuthorizationWithProxy::AuthorizationWithProxyFailed(
            tclient::AuthorizationWithProxyFailed {
                error_code: code as i32,
                error,
            },
        )
    };
    let state = match shared.chain.client_state(&client_sc).await {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return failed(ErrorCode::NotReady, e.to_string()),
    };
    if state.closing || state.closed {
        return failed(ErrorCode::Error, "client is closing".into());
    }
    let price = shared.root.borrow().params.price_per_token;
    let sc = client_sc.to_string();
    let totals = match shared.meter.open_client(&sc, &state, price).await {
        Ok(t) => t,
        Err(e) => return failed(ErrorCode::Error, e.to_string()),
    };
    sess.set_auth(Auth::Authorized {
        owner: owner.clone(),
        client_sc,
        proto,
    });
    let sc_for_payment = sc.clone();
    shared.update_client(sess.id, |c| {
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

fn answer_auth(responder: Responder, a: &enums::client::AuthorizationWithProxy) {
    let _ = responder.answer(a.to_bytes());
}

/// Handles one client query; `false` ends the session.
async fn on_query(
    shared: &Arc<Shared>,
    sess: &Arc<ClientSession>,
    peer: &str,
    data: &[u8],
    responder: Responder,
) -> bool {
    let Some(cid) = peek_constructor(data) else {
        let _ = responder.error(ErrorCode::ProtoViolation as i32, "query too short");
        return false;
    };
    let refuse = |responder: Responder, code: ErrorCode, reason: &str| {
        shared.refused("client", peer, reason);
        let _ = responder.error(code as i32, reason.to_owned());
    };
    match cid {
        fclient::ConnectToProxy::CONSTRUCTOR_ID => {
            let q = match fclient::ConnectToProxy::from_bytes(data) {
                Ok(q) => q,
                Err(e) => {
                    refuse(
                        responder,
                        ErrorCode::ProtoViolation,
                        &format!("malformed client.connectToProxy: {e}"),
                    );
                    return false;
                }
            };
            if !matches!(sess.auth(), Auth::None) {
                refuse(
                    responder,
                    ErrorCode::ProtoViolation,
                    "repeated client.connectToProxy",
                );
                return false;
            }
            if !shared.enabled.load(Ordering::SeqCst) {
                refuse(
                    responder,
                    ErrorCode::NotReady,
                    "proxy is not participating in this iteration",
                );
                return true;
            }
            let p = &q.params;
            let Some(is_test) = p.is_test else {
                refuse(responder, ErrorCode::Error, "too old client");
                return true;
            };
            if is_test != shared.is_test {
                refuse(responder, ErrorCode::Error, "test mode mismatch");
                return true;
            }
            let proto = match admission::negotiate(p.min_proto_version, p.max_proto_version) {
                Ok(v) => v,
                Err(e) => {
                    refuse(responder, ErrorCode::Error, &e.to_string());
                    return true;
                }
            };
            let root = shared.root();
            if i64::from(q.min_config_version) > i64::from(root.version) {
                refuse(
                    responder,
                    ErrorCode::NotReady,
                    "active config version is too low",
                );
                return true;
            }
            let owner = match cocoon_ton::parse_address(&p.client_owner_address) {
                Ok(a) => a,
                Err(e) => {
                    refuse(
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
                &shared.proxy_sc,
                &HashBytes(shared.public_key),
            ) {
                Ok(d) => d.address,
                Err(e) => {
                    refuse(
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
                .client_state(&*shared.chain, sess.ip, &client_sc)
                .await
            {
                Ok(s) => s.and_then(|s| s.secret_hash),
                Err(e) => {
                    refuse(responder, ErrorCode::NotReady, &e.to_string());
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
            sess.set_auth(Auth::Pending {
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
                    proxy_sc_address: shared.proxy_sc.to_string(),
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
        fclient::AuthorizeWithProxyShort::CONSTRUCTOR_ID => {
            let q = match fclient::AuthorizeWithProxyShort::from_bytes(data) {
                Ok(q) => q,
                Err(e) => {
                    refuse(
                        responder,
                        ErrorCode::ProtoViolation,
                        &format!("malformed authorizeWithProxyShort: {e}"),
                    );
                    return false;
                }
            };
            let Auth::Pending {
                owner,
                client_sc,
                proto,
                secret_hash,
                ..
            } = sess.auth()
            else {
                refuse(
                    responder,
                    ErrorCode::ProtoViolation,
                    "authorisation without a pending handshake",
                );
                return false;
            };
            match secret_hash {
                Some(h) if h == sha256(&q.data) => {
                    let a = authorize(shared, sess, owner, client_sc, proto).await;
                    answer_auth(responder, &a);
                }
                _ => {
                    shared.refused("client", peer, "short authorisation: secret does not match");
                    answer_auth(
                        responder,
                        &enums::client::AuthorizationWithProxy::AuthorizationWithProxyFailed(
                            tclient::AuthorizationWithProxyFailed {
                                error_code: ErrorCode::Error as i32,
                                error: "secret does not match the client contract".into(),
                            },
                        ),
                    );
                }
            }
            true
        }
        fclient::AuthorizeWithProxyLong::CONSTRUCTOR_ID => {
            let Auth::Pending {
                owner,
                client_sc,
                proto,
                nonce,
                ..
            } = sess.auth()
            else {
                refuse(
                    responder,
                    ErrorCode::ProtoViolation,
                    "authorisation without a pending handshake",
                );
                return false;
            };
            let shared = Arc::clone(shared);
            let sess = Arc::clone(sess);
            tokio::spawn(async move {
                let waited = tokio::time::timeout(
                    shared.timings.long_auth_timeout,
                    shared.chain.wait_register(&client_sc, nonce),
                )
                .await;
                let a = match waited {
                    Ok(Ok(())) => authorize(&shared, &sess, owner, client_sc, proto).await,
                    Ok(Err(e)) => {
                        enums::client::AuthorizationWithProxy::AuthorizationWithProxyFailed(
                            tclient::AuthorizationWithProxyFailed {
                                error_code: ErrorCode::NotReady as i32,
                                error: e.to_string(),
                            },
                        )
                    }
                    Err(_) => enums::client::AuthorizationWithProxy::AuthorizationWithProxyFailed(
                        tclient::AuthorizationWithProxyFailed {
                            error_code: ErrorCode::Timeout as i32,
                            error: "no registration seen on-chain in time".into(),
                        },
                    ),
                };
                answer_auth(responder, &a);
            });
            true
        }
        fclient::UpdatePaymentStatus::CONSTRUCTOR_ID => {
            let Auth::Authorized { client_sc, .. } = sess.auth() else {
                let _ = responder.error(ErrorCode::NotReady as i32, "not authorised");
                return true;
            };
            let _g = sess.pay_lock.lock().await;
            let sc = client_sc.to_string();
            let t = shared.meter.client_totals(&sc);
            let _ = responder.answer_tl(&tclient::PaymentStatus {
                signed_payment: payment(&*shared.meter, Party::Client, &sc),
                db_tokens: clamp_i64(t.committed_to_db),
                max_tokens: clamp_i64(t.max),
            });
            true
        }
        fclient::GetWorkerTypesV2::CONSTRUCTOR_ID => {
            let types = shared
                .registry
                .types()
                .into_iter()
                .map(|(name, ws)| tclient::WorkerTypeV2 {
                    name,
                    workers: ws
                        .into_iter()
                        .map(|(c, r, m)| tclient::WorkerInstanceV2 {
                            coefficient: c,
                            active_requests: i32::try_from(r).unwrap_or(i32::MAX),
                            max_active_requests: i32::try_from(m).unwrap_or(i32::MAX),
                        })
                        .collect(),
                })
                .collect();
            let _ = responder.answer_tl(&tclient::WorkerTypesV2 { types });
            true
        }
        fclient::GetWorkerTypes::CONSTRUCTOR_ID => {
            let types = shared
                .registry
                .types()
                .into_iter()
                .map(|(name, ws)| {
                    let mut c: Vec<i32> = ws.iter().map(|w| w.0).collect();
                    c.sort_unstable();
                    tclient::WorkerType {
                        name,
                        active_workers: i32::try_from(c.len()).unwrap_or(i32::MAX),
                        coefficient_min: c.first().copied().unwrap_or(0),
                        coefficient_bucket50: c.get(c.len() / 2).copied().unwrap_or(0),
                        coefficient_max: c.last().copied().unwrap_or(0),
                    }
                })
                .collect();
            let _ = responder.answer_tl(&tclient::WorkerTypes { types });
            true
        }
        other => {
            let _ = responder.error(
                ErrorCode::ProtoViolation as i32,
                format!("unexpected query {other:08x} from a client"),
            );
            true
        }
    }
}

/// Handles one client message; an error ends the session.
fn on_message(shared: &Arc<Shared>, sess: &Arc<ClientSession>, data: &[u8]) -> Result<(), String> {
    let Some(cid) = peek_constructor(data) else {
        return Err("message shorter than a constructor id".into());
    };
    match cid {
        fclient::RunQueryEx::CONSTRUCTOR_ID => {
            let q = fclient::RunQueryEx::from_bytes(data)
                .map_err(|e| format!("malformed client.runQueryEx: {e}"))?;
            let Auth::Authorized {
                owner,
                client_sc,
                proto,
            } = sess.auth()
            else {
                forward::reject(
                    shared,
                    &sess.handle,
                    1,
                    q.request_id,
                    ErrorCode::NotReady,
                    "not authorised",
                );
                return Ok(());
            };
            let (tx, rx) = watch::channel(None);
            {
                let mut running = sess.running();
                if running.contains_key(&q.request_id) {
                    forward::reject(
                        shared,
                        &sess.handle,
                        proto,
                        q.request_id,
                        ErrorCode::ProtoViolation,
                        "duplicate request id",
                    );
                    return Ok(());
                }
                if running.len() >= shared.timings.max_session_requests {
                    forward::reject(
                        shared,
                        &sess.handle,
                        proto,
                        q.request_id,
                        ErrorCode::Error,
                        &format!(
                            "too many active queries on this connection (at most {})",
                            shared.timings.max_session_requests
                        ),
                    );
                    return Ok(());
                }
                running.insert(q.request_id, tx);
                let n = running.len() as u32;
                shared.update_client(sess.id, |c| c.running = n);
            }
            let ctx = ClientCtx {
                handle: sess.handle.clone(),
                pay_lock: Arc::clone(&sess.pay_lock),
                proto,
                client_sc: client_sc.to_string(),
                owner,
            };
            let shared = Arc::clone(shared);
            let sess = Arc::clone(sess);
            tokio::spawn(async move {
                let rid = q.request_id;
                forward::run(Arc::clone(&shared), ctx, q, rx).await;
                let mut running = sess.running();
                running.remove(&rid);
                let n = running.len() as u32;
                shared.update_client(sess.id, |c| c.running = n);
            });
        }
        fclient::RunQuery::CONSTRUCTOR_ID => {
            let q = fclient::RunQuery::from_bytes(data)
                .map_err(|e| format!("malformed client.runQuery: {e}"))?;
            forward::reject(
                shared,
                &sess.handle,
                1,
                q.request_id,
                ErrorCode::ProtoViolation,
                "client.runQuery (protocol 0) is not supported; use client.runQueryEx",
            );
        }
        tclient::CancelQuery::CONSTRUCTOR_ID => {
            let m = tclient::CancelQuery::from_bytes(data)
                .map_err(|e| format!("malformed client.cancelQuery: {e}"))?;
            if let Some(tx) = sess.running().get(&m.request_id) {
                let _ = tx.send(Some(CancelReason::ClientCancel));
            }
        }
        other => {
            tracing::debug!(
                id = format_args!("{other:08x}"),
                "unknown client message ignored"
            );
        }
    }
    Ok(())
}
