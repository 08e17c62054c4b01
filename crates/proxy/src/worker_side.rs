//! One task per worker session: the proxy side of the worker handshake, then the worker's
//! answer messages and state updates.
//!
//! Handshake (what workers send):
//! 1. `worker.connectToProxy(params)` → admission; `worker.connectedToProxy(proxy.params,
//!    worker_sc_address)` with the negotiated version and the derived worker contract;
//! 2. `worker.compareBalanceWithProxy` → our totals for that contract; a worker that knows
//!    more than the proxy gets `error_code = 1` and the operator a warning (an
//!    inconsistency must not take the whole proxy down);
//! 3. `worker.extendedCompareBalanceWithProxy` → logged, `error_code = 0`
//!    (COCOON-compatible, see docs/cocoon-compat.md);
//! 4. `worker.proxyHandshakeComplete(is_disabled)` → registered for routing.
//!
//! Afterwards: `proxy.queryAnswer{,Part,Error}Ex` go to the request they answer (the
//! protocol 0 forms `proxy.queryAnswer{,Part,Error,PartError}` too, as their `Ex` equivalents),
//! `worker.enabledDisabled` / `worker.newCoefficient` update the registry, and
//! `worker.updatePaymentStatus` is answered with our totals.
//!
//! Liveness (`worker_ping_seconds`): the session pings the worker after that long of silence
//! and again every that long; a worker from which nothing at all (no pong, no answer) came
//! for two intervals (its own pings do not count) is *suspect*: the registry routes no new request to it and a request it
//! has not started answering is tried on another worker (`forward`); with every worker of
//! a model suspect, requests wait in its queue as when all are busy. Anything it sends
//! clears the suspicion (and wakes the queue).
//!
//! The session ends when the worker's attestation verdict expires (`VerifiedPeer::
//! valid_until`, operator event `verdict_expired`) and when a root update no longer allows
//! its image or model; the worker then redials and is verified and admitted again.

use std::sync::Arc;

use cocoon_net::{ErrorCode, Incoming, Responder, SessionHandle};
use cocoon_ratls::net::Accepted;
use cocoon_tl::DispatchError;
use cocoon_tl::functions::worker as fworker;
use cocoon_tl::messages::worker::ToProxy;
use cocoon_tl::types::{TokensUsed, proxy as tproxy, worker as tworker};
use cocoon_ton::{HashBytes, StdAddr};
use tokio::sync::watch;

use crate::Shared;
use crate::admission::{self, MAX_COEFFICIENT, PeerFacts, Refusal, WorkerParams};
use crate::meter::Party;
use crate::receipts::{clamp_i64, payment};
use crate::registry::{WorkerEntry, WorkerEvent};

/// The final info of a protocol 0 answer: its usage, no debug, no timings.
fn legacy_final(tokens_used: TokensUsed) -> tproxy::QueryFinalInfo {
    tproxy::QueryFinalInfo {
        tokens_used,
        worker_debug: None,
        worker_start_time: None,
        worker_end_time: None,
    }
}

/// `proxy.queryAnswerError` / `proxy.queryAnswerPartError` as the `Ex` error they stand for.
fn legacy_error(
    request_id: [u8; 32],
    error_code: i32,
    error: String,
    tokens_used: TokensUsed,
) -> tproxy::QueryAnswerErrorEx {
    tproxy::QueryAnswerErrorEx {
        request_id,
        error_code,
        error,
        final_info: Some(legacy_final(tokens_used)),
    }
}

/// What the handshake learned before the worker is registered.
struct Pending {
    params: tworker::Params,
    admitted: admission::Admitted,
    worker_sc: String,
}

fn proxy_params(shared: &Shared, proxy_sc: &StdAddr, proto: i32) -> tproxy::Params {
    tproxy::Params {
        proxy_public_key: shared.public_key,
        proxy_owner_address: shared.owner_address.to_string(),
        proxy_sc_address: proxy_sc.to_string(),
        is_test: Some(shared.is_test),
        proto_version: Some(proto),
    }
}

/// One worker session's state, owned by its task.
struct WorkerSession {
    shared: Arc<Shared>,
    handle: SessionHandle,
    /// The worker's id in the registry.
    id: u64,
    facts: PeerFacts,
    /// The peer's verified GPU evidence, summarised (admin pages).
    gpu: Option<String>,
    /// The peer's certificate key and certificate (receipts).
    tls_key: [u8; 32],
    certificate: Arc<Vec<u8>>,
    /// The peer's address, for logs and refusals.
    peer: String,
    /// What the handshake learned, until `worker.proxyHandshakeComplete`.
    pending: Option<Pending>,
    /// In the registry (the handshake completed).
    registered: bool,
    model: String,
    /// Whether the worker is suspect (silent for two ping intervals); the registry's entry
    /// and the leases of its requests watch it.
    suspect: watch::Sender<bool>,
}

/// Receive silence of a worker session, from its frame counter (less the worker's own pings)
/// sampled by the session task.
struct Liveness {
    frames_in: u64,
    last_heard: tokio::time::Instant,
    /// Silence after which the worker is suspect (two ping intervals).
    suspect_after: std::time::Duration,
    /// How often the counter is sampled.
    every: std::time::Duration,
}

impl Liveness {
    fn new(ping: std::time::Duration, now: tokio::time::Instant) -> Liveness {
        Liveness {
            frames_in: 0,
            last_heard: now,
            suspect_after: ping.saturating_mul(2),
            every: (ping / 4).max(std::time::Duration::from_millis(100)),
        }
    }

    /// Takes a sample of the frame counter; returns whether the worker is suspect now.
    fn sample(&mut self, frames_in: u64, now: tokio::time::Instant) -> bool {
        if frames_in != self.frames_in {
            self.frames_in = frames_in;
            self.last_heard = now;
        }
        now.saturating_duration_since(self.last_heard) >= self.suspect_after
    }
}

pub(crate) async fn run(shared: Arc<Shared>, a: Accepted, mut stop: watch::Receiver<bool>) {
    let Accepted {
        handle,
        mut incoming,
        peer,
        addr,
        verdict_deadline,
        peer_certificate,
        ..
    } = a;
    let mut sess = WorkerSession {
        shared: Arc::clone(&shared),
        handle: handle.clone(),
        id: shared.next_id(),
        facts: PeerFacts {
            backend: peer.backend(),
            image_hash: *peer.image_hash(),
        },
        gpu: peer.gpu().map(|g| g.summary()),
        tls_key: peer.public_key().copied().unwrap_or_default(),
        certificate: Arc::new(peer_certificate.to_vec()),
        peer: addr.to_string(),
        pending: None,
        registered: false,
        model: String::new(),
        suspect: watch::channel(false).0,
    };
    let mut liveness = shared
        .timings
        .worker_ping
        .map(|ping| Liveness::new(ping, tokio::time::Instant::now()));
    let mut next_sample = tokio::time::Instant::now();
    let peer_name = sess.peer.clone();
    let mut root_rx = shared.root.subscribe();
    // Contract addresses depend on the params: a params change ends the session so that
    // the worker reconnects and learns its new worker contract.
    let params_version = root_rx.borrow_and_update().params.params_version;
    let hs_deadline = tokio::time::Instant::now() + shared.timings.handshake_timeout * 4;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(hs_deadline), if !sess.registered => {
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
            _ = tokio::time::sleep_until(next_sample), if liveness.is_some() => {
                if let Some(l) = liveness.as_mut() {
                    let now = tokio::time::Instant::now();
                    next_sample = now + l.every;
                    // The worker's own pings do not count: across a partition of the
                    // proxy's direction they still arrive (every 10 s, COCOON's initiator
                    // timing) while nothing of ours reaches the worker.
                    let st = handle.stats();
                    let suspect = l.sample(st.frames_in.saturating_sub(st.pings_in), now);
                    sess.set_suspect(suspect, now.saturating_duration_since(l.last_heard));
                }
            }
            r = root_rx.changed() => {
                if r.is_err() { break; }
                let root = root_rx.borrow_and_update().clone();
                if root.params.params_version != params_version {
                    tracing::info!(peer = %peer_name, "root params changed; closing the session");
                    break;
                }
                if sess.registered
                    && let Err(e) = admission::still_allowed(&root, shared.is_test, &sess.facts, &sess.model)
                {
                    shared.refused("worker", &peer_name, &format!("dropped after root update: {e}"));
                    break;
                }
            }
            msg = incoming.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Incoming::Query { data, responder } => {
                        if !sess.on_query(&data, responder).await { break; }
                    }
                    Incoming::Message { data } => {
                        if !sess.registered {
                            tracing::debug!(peer = %peer_name, "message before handshake end, ignored");
                            continue;
                        }
                        if let Err(e) = sess.on_message(&data) {
                            tracing::warn!(peer = %peer_name, error = %e, "worker protocol violation; closing");
                            break;
                        }
                    }
                }
            }
        }
    }
    shared.registry.remove(sess.id);
    handle.close();
    tracing::info!(peer = %peer_name, worker = sess.id, "worker session ended");
}

/// Queries (the handshake and payment status): each handler answers through the responder
/// and returns `false` to end the session.
impl WorkerSession {
    /// Records whether the worker is suspect; a change is logged, and a worker heard again
    /// may take waiting requests.
    fn set_suspect(&self, suspect: bool, silent: std::time::Duration) {
        if !self
            .suspect
            .send_if_modified(|s| std::mem::replace(s, suspect) != suspect)
        {
            return;
        }
        if suspect {
            tracing::warn!(peer = %self.peer, worker = self.id, silent_ms = silent.as_millis() as u64, "worker silent (no pong, no answer); no new requests until it is heard again");
        } else {
            tracing::info!(peer = %self.peer, worker = self.id, "worker heard again; routing to it resumes");
        }
        // Wakes requests waiting in the model's queue for a slot it now offers.
        self.shared.registry.update(self.id, |_| {});
    }

    /// Refuses a query, counted as a refusal of this worker.
    fn refuse(&self, responder: Responder, code: ErrorCode, reason: &str) {
        self.shared.refused("worker", &self.peer, reason);
        let _ = responder.error(code as i32, reason.to_owned());
    }

    async fn on_query(&mut self, data: &[u8], responder: Responder) -> bool {
        let (q, responder) = match self.shared.decode_query(
            fworker::Any::decode(data),
            responder,
            "worker",
            &self.peer,
        ) {
            Ok(q) => q,
            Err(session_goes_on) => return session_goes_on,
        };
        match q {
            fworker::Any::ConnectToProxy(q) => self.on_connect(q, responder),
            fworker::Any::CompareBalanceWithProxy(q) => self.on_compare_balance(&q, responder),
            fworker::Any::ExtendedCompareBalanceWithProxy(_) => self.on_extended_compare(responder),
            fworker::Any::ProxyHandshakeComplete(q) => self.on_handshake_complete(&q, responder),
            fworker::Any::UpdatePaymentStatus(_) => self.on_payment_status(responder).await,
        }
    }

    /// `worker.connectToProxy(params)`: admission against the root, then the proxy's params
    /// and the derived worker contract.
    fn on_connect(&mut self, q: fworker::ConnectToProxy, responder: Responder) -> bool {
        let shared = &self.shared;
        if self.pending.is_some() || self.registered {
            self.refuse(
                responder,
                ErrorCode::ProtoViolation,
                "repeated worker.connectToProxy",
            );
            return false;
        }
        if !shared.enabled.load(std::sync::atomic::Ordering::SeqCst) {
            self.refuse(
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
        let (root, proxy_sc) = shared.root_and_contract();
        let admitted = match admission::admit_worker(&root, shared.is_test, &self.facts, &wp) {
            Ok(a) => a,
            Err(e) => {
                self.refuse(responder, ErrorCode::Error, &format!("worker refused: {e}"));
                return true;
            }
        };
        let owner = match cocoon_ton::parse_address(&p.worker_owner_address) {
            Ok(a) => a,
            Err(e) => {
                self.refuse(
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
            &proxy_sc,
            &HashBytes(shared.public_key),
        ) {
            Ok(d) => d.address.to_string(),
            Err(e) => {
                self.refuse(
                    responder,
                    ErrorCode::Failure,
                    &format!("cannot derive worker contract: {e}"),
                );
                return true;
            }
        };
        let ans = tworker::ConnectedToProxy {
            params: proxy_params(shared, &proxy_sc, admitted.proto),
            worker_sc_address: worker_sc.clone(),
        };
        let _ = responder.answer_tl(&ans);
        self.pending = Some(Pending {
            params: q.params,
            admitted,
            worker_sc,
        });
        true
    }

    /// `worker.compareBalanceWithProxy`: our totals for the worker's contract; a worker that
    /// knows more than the proxy gets `error_code = 1` and the operator an error log.
    fn on_compare_balance(
        &self,
        q: &fworker::CompareBalanceWithProxy,
        responder: Responder,
    ) -> bool {
        let Some(p) = self.pending.as_ref() else {
            self.refuse(
                responder,
                ErrorCode::ProtoViolation,
                "balance comparison before connectToProxy",
            );
            return false;
        };
        let meter = &*self.shared.meter;
        let ours = meter.worker_totals(&p.worker_sc);
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
            signed_payment: payment(meter, Party::Worker, &p.worker_sc),
            tokens_committed_to_db: clamp_i64(ours.committed_to_db),
            max_tokens: clamp_i64(ours.max),
            error_code: i32::from(worker_knows_more),
        });
        true
    }

    /// `worker.extendedCompareBalanceWithProxy`: logged and accepted (`error_code = 0`).
    fn on_extended_compare(&self, responder: Responder) -> bool {
        if self.pending.is_none() {
            self.refuse(
                responder,
                ErrorCode::ProtoViolation,
                "extended comparison before connectToProxy",
            );
            return false;
        }
        tracing::warn!(
            peer = %self.peer,
            "extended balance comparison requested; not implemented, accepted as COCOON does"
        );
        let _ =
            responder.answer_tl(&tworker::ExtendedCompareBalanceWithProxyResult { error_code: 0 });
        true
    }

    /// `worker.proxyHandshakeComplete(is_disabled)`: the worker joins the registry.
    fn on_handshake_complete(
        &mut self,
        q: &fworker::ProxyHandshakeComplete,
        responder: Responder,
    ) -> bool {
        let Some(p) = self.pending.take() else {
            self.refuse(
                responder,
                ErrorCode::ProtoViolation,
                "handshake completed before connectToProxy",
            );
            return false;
        };
        self.model = p.params.model.clone();
        self.shared.registry.insert(WorkerEntry {
            id: self.id,
            handle: self.handle.clone(),
            proto: p.admitted.proto,
            model: p.params.model.clone(),
            model_base: p.admitted.model_base.clone(),
            owner: p.params.worker_owner_address.clone(),
            worker_sc: p.worker_sc.clone(),
            coefficient: p.params.coefficient,
            max_active: p.admitted.max_active,
            running: 0,
            disabled: q.is_disabled,
            suspect: self.suspect.subscribe(),
            health: Default::default(),
            pending: Default::default(),
            pay_lock: Default::default(),
            served: 0,
            failed: 0,
            bad_reports: 0,
            image_hash: self.facts.image_hash,
            gpu: self.gpu.clone(),
            tls_key: self.tls_key,
            certificate: Arc::clone(&self.certificate),
            context_length: 0,
            capabilities: Default::default(),
        });
        self.registered = true;
        let _ = responder.answer_tl(&tworker::ProxyHandshakeCompleted {});
        tracing::info!(
            peer = %self.peer,
            worker = self.id,
            model = %p.params.model,
            coefficient = p.params.coefficient,
            max_active = p.admitted.max_active,
            proto = p.admitted.proto,
            disabled = q.is_disabled,
            "worker registered"
        );
        true
    }

    /// `worker.updatePaymentStatus`: the latest receipt and totals, under the worker's
    /// payment lock.
    async fn on_payment_status(&self, responder: Responder) -> bool {
        let mut found = None;
        self.shared.registry.update(self.id, |e| {
            found = Some((e.worker_sc.clone(), Arc::clone(&e.pay_lock)))
        });
        let Some((sc, lock)) = found else {
            let _ = responder.error(ErrorCode::NotReady as i32, "handshake not complete");
            return true;
        };
        let _g = lock.lock().await;
        let meter = &*self.shared.meter;
        let t = meter.worker_totals(&sc);
        let _ = responder.answer_tl(&tworker::PaymentStatus {
            signed_payment: payment(meter, Party::Worker, &sc),
            db_tokens: clamp_i64(t.committed_to_db),
            max_tokens: clamp_i64(t.max),
        });
        true
    }
}

/// Messages (answers and state changes): an error ends the session; an unknown message is
/// ignored.
impl WorkerSession {
    fn on_message(&self, data: &[u8]) -> Result<(), String> {
        let m = match ToProxy::decode(data) {
            Ok(m) => m,
            Err(DispatchError::Unknown { id, .. }) => {
                tracing::debug!(
                    worker = self.id,
                    id = format_args!("{id:08x}"),
                    "unknown worker message ignored"
                );
                return Ok(());
            }
            Err(DispatchError::TooShort { .. }) => {
                return Err("message shorter than a constructor id".into());
            }
            Err(e) => return Err(e.to_string()),
        };
        match m {
            ToProxy::QueryAnswerEx(m) => self.deliver(m.request_id, WorkerEvent::Head(m), "answer"),
            ToProxy::QueryAnswerPartEx(m) => {
                self.deliver(m.request_id, WorkerEvent::Part(m), "answer part")
            }
            ToProxy::QueryAnswerErrorEx(m) => {
                self.deliver(m.request_id, WorkerEvent::Error(m), "answer error")
            }
            // The protocol 0 forms, taken on any session as COCOON's proxy does: the usage
            // they carry becomes the final info of the last one.
            ToProxy::QueryAnswer(m) => {
                let ex = tproxy::QueryAnswerEx {
                    request_id: m.request_id,
                    answer: m.answer,
                    final_info: m.is_completed.then(|| legacy_final(m.tokens_used)),
                };
                self.deliver(ex.request_id, WorkerEvent::Head(ex), "legacy answer")
            }
            ToProxy::QueryAnswerPart(m) => {
                let ex = tproxy::QueryAnswerPartEx {
                    request_id: m.request_id,
                    answer: m.answer,
                    final_info: m.is_completed.then(|| legacy_final(m.tokens_used)),
                };
                self.deliver(ex.request_id, WorkerEvent::Part(ex), "legacy answer part")
            }
            ToProxy::QueryAnswerError(m) => {
                let ex = legacy_error(m.request_id, m.error_code, m.error, m.tokens_used);
                self.deliver(ex.request_id, WorkerEvent::Error(ex), "legacy answer error")
            }
            ToProxy::QueryAnswerPartError(m) => {
                let ex = legacy_error(m.request_id, m.error_code, m.error, m.tokens_used);
                self.deliver(ex.request_id, WorkerEvent::Error(ex), "legacy answer error")
            }
            ToProxy::AnswerReceipt(m) => {
                self.deliver(m.request_id, WorkerEvent::Receipt(m), "answer receipt")
            }
            ToProxy::EnabledDisabled(m) => self.on_enabled_disabled(&m),
            ToProxy::NewCoefficient(m) => return self.on_new_coefficient(&m),
            ToProxy::ModelInfo(m) => {
                // A negative length is no length; the last announcement holds.
                let n = u32::try_from(m.context_length).unwrap_or(0);
                let caps =
                    cocoon_openai::Capabilities::from_bits(m.capabilities_known, m.capabilities);
                self.shared.registry.update(self.id, |e| {
                    e.context_length = n;
                    e.capabilities = caps;
                });
            }
        }
        Ok(())
    }

    /// Hands an answer message to the request it names (dropped when none runs).
    fn deliver(&self, request_id: [u8; 32], ev: WorkerEvent, what: &str) {
        if !self.shared.registry.deliver(self.id, &request_id, ev) {
            tracing::debug!(worker = self.id, "{what} for an unknown request dropped");
        }
    }

    /// `worker.enabledDisabled`: a disabled worker gets no new requests.
    fn on_enabled_disabled(&self, m: &tworker::EnabledDisabled) {
        self.shared
            .registry
            .update(self.id, |e| e.disabled = m.disabled != 0);
        tracing::info!(
            worker = self.id,
            disabled = m.disabled != 0,
            "worker state changed"
        );
    }

    /// `worker.newCoefficient`: a coefficient out of range is a protocol violation.
    fn on_new_coefficient(&self, m: &tworker::NewCoefficient) -> Result<(), String> {
        if !(0..=MAX_COEFFICIENT).contains(&m.new_coefficient) {
            return Err(format!("coefficient {} out of range", m.new_coefficient));
        }
        self.shared
            .registry
            .update(self.id, |e| e.coefficient = m.new_coefficient);
        tracing::info!(
            worker = self.id,
            coefficient = m.new_coefficient,
            "worker coefficient changed"
        );
        Ok(())
    }
}
