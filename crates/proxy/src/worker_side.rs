//! One task per worker session: the proxy side of the worker handshake, then the worker's
//! answer messages and state updates.
//!
//! Handshake (what `cocoon-worker` and COCOON's workers send, inventory §3.3):
//! 1. `worker.connectToProxy(params)` → admission; `worker.connectedToProxy(proxy.params,
//!    worker_sc_address)` with the negotiated version and the derived worker contract;
//! 2. `worker.compareBalanceWithProxy` → our totals for that contract; a worker that knows
//!    more than the proxy gets `error_code = 1` and the operator a warning (COCOON aborts
//!    the process here; an inconsistency must not take the whole proxy down);
//! 3. `worker.extendedCompareBalanceWithProxy` → logged, `error_code = 0` (as COCOON);
//! 4. `worker.proxyHandshakeComplete(is_disabled)` → registered for routing.
//!
//! Afterwards: `proxy.queryAnswer{,Part,Error}Ex` go to the request they answer,
//! `worker.enabledDisabled` / `worker.newCoefficient` update the registry, and
//! `worker.updatePaymentStatus` is answered with our totals.
//!
//! The session ends when the worker's attestation verdict expires (`VerifiedPeer::
//! valid_until`, operator event `verdict_expired`) and when a root update no longer allows
//! its image or model; the worker then redials and is verified and admitted again.

use std::sync::Arc;

use cocoon_net::{ErrorCode, Incoming, Responder, SessionHandle};
use cocoon_ratls::net::Accepted;
use cocoon_tl::functions::worker as fworker;
use cocoon_tl::types::{proxy as tproxy, worker as tworker};
use cocoon_tl::{Identifiable, TlRead, peek_constructor};
use cocoon_ton::HashBytes;
use tokio::sync::watch;

use crate::Shared;
use crate::admission::{self, MAX_COEFFICIENT, PeerFacts, Refusal, WorkerParams};
use crate::meter::Party;
use crate::receipts::{clamp_i64, payment};
use crate::registry::{WorkerEntry, WorkerEvent};

/// What the handshake learned before the worker is registered.
struct Pending {
    params: tworker::Params,
    admitted: admission::Admitted,
    worker_sc: String,
}

fn proxy_params(shared: &Shared, proto: i32) -> tproxy::Params {
    tproxy::Params {
        proxy_public_key: shared.public_key,
        proxy_owner_address: shared.owner_address.to_string(),
        proxy_sc_address: shared.proxy_sc.to_string(),
        is_test: Some(shared.is_test),
        proto_version: Some(proto),
    }
}

pub(crate) async fn run(shared: Arc<Shared>, a: Accepted, mut stop: watch::Receiver<bool>) {
    let Accepted {
        handle,
        mut incoming,
        peer,
        addr,
        verdict_deadline,
    } = a;
    let facts = PeerFacts {
        backend: peer.backend(),
        image_hash: *peer.image_hash(),
    };
    let peer_name = addr.to_string();
    let id = shared.next_id();
    let mut pending: Option<Pending> = None;
    let mut registered = false;
    let mut model = String::new();
    let mut root_rx = shared.root.subscribe();
    // Contract addresses depend on the params: a params change ends the session so that
    // the worker reconnects and learns its new worker contract.
    let params_version = root_rx.borrow_and_update().params.params_version;
    let hs_deadline = tokio::time::Instant::now() + shared.timings.handshake_timeout * 4;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(hs_deadline), if !registered => {
                shared.refused("worker", &peer_name, "handshake not completed in time");
                break;
            }
            // The attestation verdict the session was admitted under holds until then; the
            // worker redials and is verified again.
            _ = tokio::time::sleep_until(verdict_deadline) => {
                shared.event(
                    "verdict_expired",
                    &peer_name,
                    &format!(
                        "the worker's attestation verdict expired (valid until {}); session closed, the worker reconnects and attests again",
                        peer.valid_until()
                    ),
                );
                break;
            }
            r = root_rx.changed() => {
                if r.is_err() { break; }
                let root = root_rx.borrow_and_update().clone();
                if root.params.params_version != params_version {
                    tracing::info!(peer = %peer_name, "root params changed; closing the session");
                    break;
                }
                if registered
                    && let Err(e) = admission::still_allowed(&root, shared.is_test, &facts, &model)
                {
                    shared.refused("worker", &peer_name, &format!("dropped after root update: {e}"));
                    break;
                }
            }
            msg = incoming.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Incoming::Query { data, responder } => {
                        let keep = on_query(&shared, &handle, id, &facts, &peer_name, &data, responder, &mut pending, &mut registered, &mut model).await;
                        if !keep { break; }
                    }
                    Incoming::Message { data } => {
                        if !registered {
                            tracing::debug!(peer = %peer_name, "message before handshake end, ignored");
                            continue;
                        }
                        if let Err(e) = on_message(&shared, id, &data) {
                            tracing::warn!(peer = %peer_name, error = %e, "worker protocol violation; closing");
                            break;
                        }
                    }
                }
            }
        }
    }
    shared.registry.remove(id);
    handle.close();
    tracing::info!(peer = %peer_name, worker = id, "worker session ended");
}

fn refuse(shared: &Shared, peer: &str, responder: Responder, code: ErrorCode, reason: &str) {
    shared.refused("worker", peer, reason);
    let _ = responder.error(code as i32, reason.to_owned());
}

/// Handles one worker query; `false` ends the session.
#[allow(clippy::too_many_arguments)]
async fn on_query(
    shared: &Arc<Shared>,
    handle: &SessionHandle,
    id: u64,
    facts: &PeerFacts,
    peer: &str,
    data: &[u8],
    responder: Responder,
    pending: &mut Option<Pending>,
    registered: &mut bool,
    model: &mut String,
) -> bool {
    let Some(cid) = peek_constructor(data) else {
        let _ = responder.error(ErrorCode::ProtoViolation as i32, "query too short");
        return false;
    };
    match cid {
        fworker::ConnectToProxy::CONSTRUCTOR_ID => {
            let q = match fworker::ConnectToProxy::from_bytes(data) {
                Ok(q) => q,
                Err(e) => {
                    refuse(
                        shared,
                        peer,
                        responder,
                        ErrorCode::ProtoViolation,
                        &format!("malformed worker.connectToProxy: {e}"),
                    );
                    return false;
                }
            };
            if pending.is_some() || *registered {
                refuse(
                    shared,
                    peer,
                    responder,
                    ErrorCode::ProtoViolation,
                    "repeated worker.connectToProxy",
                );
                return false;
            }
            if !shared.enabled.load(std::sync::atomic::Ordering::SeqCst) {
                refuse(
                    shared,
                    peer,
                    responder,
                    ErrorCode::NotReady,
                    &Refusal::Disabled.to_string(),
                );
                return true;
            }
            let p = &q.params;
            let wp = WorkerParams {
                model: p.model.clone(),
                coefficient: p.coefficient,
                is_test: p.is_test,
                proxy_cnt: p.proxy_cnt,
                max_active_requests: p.max_active_requests,
                min_proto: p.min_proto_version,
                max_proto: p.max_proto_version,
            };
            let root = shared.root();
            let admitted = match admission::admit_worker(&root, shared.is_test, facts, &wp) {
                Ok(a) => a,
                Err(e) => {
                    refuse(
                        shared,
                        peer,
                        responder,
                        ErrorCode::Error,
                        &format!("worker refused: {e}"),
                    );
                    return true;
                }
            };
            let owner = match cocoon_ton::parse_address(&p.worker_owner_address) {
                Ok(a) => a,
                Err(e) => {
                    refuse(
                        shared,
                        peer,
                        responder,
                        ErrorCode::Error,
                        &format!("worker refused: bad owner address: {e}"),
                    );
                    return true;
                }
            };
            let worker_sc = match cocoon_ton::contracts::worker_contract(
                &root.params,
                &owner,
                &shared.proxy_sc,
                &HashBytes(shared.public_key),
            ) {
                Ok(d) => d.address.to_string(),
                Err(e) => {
                    refuse(
                        shared,
                        peer,
                        responder,
                        ErrorCode::Failure,
                        &format!("cannot derive worker contract: {e}"),
                    );
                    return true;
                }
            };
            let ans = tworker::ConnectedToProxy {
                params: proxy_params(shared, admitted.proto),
                worker_sc_address: worker_sc.clone(),
            };
            let _ = responder.answer_tl(&ans);
            *pending = Some(Pending {
                params: q.params,
                admitted,
                worker_sc,
            });
            true
        }
        fworker::CompareBalanceWithProxy::CONSTRUCTOR_ID => {
            let Some(p) = pending.as_ref() else {
                refuse(
                    shared,
                    peer,
                    responder,
                    ErrorCode::ProtoViolation,
                    "balance comparison before connectToProxy",
                );
                return false;
            };
            let q = match fworker::CompareBalanceWithProxy::from_bytes(data) {
                Ok(q) => q,
                Err(e) => {
                    refuse(
                        shared,
                        peer,
                        responder,
                        ErrorCode::ProtoViolation,
                        &format!("malformed compareBalanceWithProxy: {e}"),
                    );
                    return false;
                }
            };
            let ours = shared.meter.worker_totals(&p.worker_sc);
            let worker_knows_more = q.tokens_committed_to_blockchain
                > clamp_i64(ours.committed_to_blockchain)
                || q.tokens_committed_to_db > clamp_i64(ours.committed_to_db)
                || q.max_tokens > clamp_i64(ours.max);
            if worker_knows_more {
                tracing::error!(
                    worker_sc = %p.worker_sc,
                    worker_signed = q.tokens_committed_to_blockchain,
                    worker_db = q.tokens_committed_to_db,
                    worker_max = q.max_tokens,
                    ours_db = ours.committed_to_db,
                    ours_max = ours.max,
                    "worker knows more tokens than the proxy: proxy state was lost or rolled back"
                );
            }
            let _ = responder.answer_tl(&tworker::CompareBalanceWithProxyResult {
                signed_payment: payment(&*shared.meter, Party::Worker, &p.worker_sc),
                tokens_committed_to_db: clamp_i64(ours.committed_to_db),
                max_tokens: clamp_i64(ours.max),
                error_code: i32::from(worker_knows_more),
            });
            true
        }
        fworker::ExtendedCompareBalanceWithProxy::CONSTRUCTOR_ID => {
            if pending.is_none() {
                refuse(
                    shared,
                    peer,
                    responder,
                    ErrorCode::ProtoViolation,
                    "extended comparison before connectToProxy",
                );
                return false;
            }
            tracing::warn!(
                peer,
                "extended balance comparison requested; not implemented, accepted as COCOON does"
            );
            let _ = responder
                .answer_tl(&tworker::ExtendedCompareBalanceWithProxyResult { error_code: 0 });
            true
        }
        fworker::ProxyHandshakeComplete::CONSTRUCTOR_ID => {
            let q = match fworker::ProxyHandshakeComplete::from_bytes(data) {
                Ok(q) => q,
                Err(e) => {
                    refuse(
                        shared,
                        peer,
                        responder,
                        ErrorCode::ProtoViolation,
                        &format!("malformed proxyHandshakeComplete: {e}"),
                    );
                    return false;
                }
            };
            let Some(p) = pending.take() else {
                refuse(
                    shared,
                    peer,
                    responder,
                    ErrorCode::ProtoViolation,
                    "handshake completed before connectToProxy",
                );
                return false;
            };
            *model = p.params.model.clone();
            shared.registry.insert(WorkerEntry {
                id,
                handle: handle.clone(),
                proto: p.admitted.proto,
                model: p.params.model.clone(),
                model_base: p.admitted.model_base.clone(),
                owner: p.params.worker_owner_address.clone(),
                worker_sc: p.worker_sc.clone(),
                coefficient: p.params.coefficient,
                max_active: p.admitted.max_active,
                running: 0,
                disabled: q.is_disabled,
                health: Default::default(),
                pending: Default::default(),
                pay_lock: Default::default(),
                served: 0,
                failed: 0,
                bad_reports: 0,
                image_hash: facts.image_hash,
            });
            *registered = true;
            let _ = responder.answer_tl(&tworker::ProxyHandshakeCompleted {});
            tracing::info!(
                peer,
                worker = id,
                model = %p.params.model,
                coefficient = p.params.coefficient,
                max_active = p.admitted.max_active,
                proto = p.admitted.proto,
                disabled = q.is_disabled,
                "worker registered"
            );
            true
        }
        fworker::UpdatePaymentStatus::CONSTRUCTOR_ID => {
            let mut found = None;
            shared.registry.update(id, |e| {
                found = Some((e.worker_sc.clone(), Arc::clone(&e.pay_lock)))
            });
            let Some((sc, lock)) = found else {
                let _ = responder.error(ErrorCode::NotReady as i32, "handshake not complete");
                return true;
            };
            let _g = lock.lock().await;
            let t = shared.meter.worker_totals(&sc);
            let _ = responder.answer_tl(&tworker::PaymentStatus {
                signed_payment: payment(&*shared.meter, Party::Worker, &sc),
                db_tokens: clamp_i64(t.committed_to_db),
                max_tokens: clamp_i64(t.max),
            });
            true
        }
        other => {
            let _ = responder.error(
                ErrorCode::ProtoViolation as i32,
                format!("unexpected query {other:08x} from a worker"),
            );
            true
        }
    }
}

/// Handles one worker message; an error ends the session.
fn on_message(shared: &Shared, id: u64, data: &[u8]) -> Result<(), String> {
    let Some(cid) = peek_constructor(data) else {
        return Err("message shorter than a constructor id".into());
    };
    let bad = |what: &str, e: cocoon_tl::Error| format!("malformed {what}: {e}");
    match cid {
        tproxy::QueryAnswerEx::CONSTRUCTOR_ID => {
            let m = tproxy::QueryAnswerEx::from_bytes(data).map_err(|e| bad("queryAnswerEx", e))?;
            let rid = m.request_id;
            if !shared.registry.deliver(id, &rid, WorkerEvent::Head(m)) {
                tracing::debug!(worker = id, "answer for an unknown request dropped");
            }
        }
        tproxy::QueryAnswerPartEx::CONSTRUCTOR_ID => {
            let m = tproxy::QueryAnswerPartEx::from_bytes(data)
                .map_err(|e| bad("queryAnswerPartEx", e))?;
            let rid = m.request_id;
            if !shared.registry.deliver(id, &rid, WorkerEvent::Part(m)) {
                tracing::debug!(worker = id, "answer part for an unknown request dropped");
            }
        }
        tproxy::QueryAnswerErrorEx::CONSTRUCTOR_ID => {
            let m = tproxy::QueryAnswerErrorEx::from_bytes(data)
                .map_err(|e| bad("queryAnswerErrorEx", e))?;
            let rid = m.request_id;
            if !shared.registry.deliver(id, &rid, WorkerEvent::Error(m)) {
                tracing::debug!(worker = id, "answer error for an unknown request dropped");
            }
        }
        tworker::EnabledDisabled::CONSTRUCTOR_ID => {
            let m = tworker::EnabledDisabled::from_bytes(data)
                .map_err(|e| bad("enabledDisabled", e))?;
            shared.registry.update(id, |e| e.disabled = m.disabled != 0);
            tracing::info!(
                worker = id,
                disabled = m.disabled != 0,
                "worker state changed"
            );
        }
        tworker::NewCoefficient::CONSTRUCTOR_ID => {
            let m =
                tworker::NewCoefficient::from_bytes(data).map_err(|e| bad("newCoefficient", e))?;
            if !(0..=MAX_COEFFICIENT).contains(&m.new_coefficient) {
                return Err(format!("coefficient {} out of range", m.new_coefficient));
            }
            shared
                .registry
                .update(id, |e| e.coefficient = m.new_coefficient);
            tracing::info!(
                worker = id,
                coefficient = m.new_coefficient,
                "worker coefficient changed"
            );
        }
        other => {
            tracing::debug!(
                worker = id,
                id = format_args!("{other:08x}"),
                "unknown worker message ignored"
            );
        }
    }
    Ok(())
}
