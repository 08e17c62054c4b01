//! How a request ends: the usage is settled, the client gets its last message with the
//! final info, and the payment reports to both peers follow.
//!
//! The settlement is decided in memory first ([`crate::meter::Meter::book`]), then committed. A protocol
//! 3 client gets its final info as soon as the settlement is decided, and the answer's
//! signed receipt once it is durable; a protocol 1–2 client (COCOON's) gets the final info
//! only once it is durable, as before. Payment reports (signed payments, totals) go to
//! either peer only after the commit (ARCHITECTURE.md D8).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use cocoon_net::{ErrorCode, SessionHandle};
use cocoon_tl::TlWrite;
use cocoon_tl::types::{TokensUsed, client as tclient, proxy as tproxy};

use super::{Attempt, ClientCtx, Ended, Forwarding, Relay, Stop, stop_outcome};
use crate::meter::{Charge, Durable, Party, Settlement};
use crate::receipts::{clamp_i64, payment};
use crate::registry::{Lease, PayLock};
use crate::{Counters, Shared};

pub(super) fn send_detached(h: &SessionHandle, bytes: Vec<u8>) {
    let h = h.clone();
    tokio::spawn(async move {
        let _ = h.send_message(bytes).await;
    });
}

/// Seconds since the Unix epoch, as the TL timing fields carry them.
pub(super) fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn tokens(c: &Charge) -> TokensUsed {
    TokensUsed {
        prompt_tokens_used: clamp_i64(c.prompt),
        cached_tokens_used: clamp_i64(c.cached),
        completion_tokens_used: clamp_i64(c.completion),
        reasoning_tokens_used: clamp_i64(c.reasoning),
        total_tokens_used: clamp_i64(c.total),
    }
}

/// Refuses a request before it ran (zero tokens).
pub(crate) fn reject(
    shared: &Shared,
    h: &SessionHandle,
    proto: i32,
    request_id: [u8; 32],
    code: ErrorCode,
    msg: &str,
) {
    Counters::inc(&shared.counters.requests_rejected);
    tracing::info!(request = %hex::encode(&request_id[..8]), reason = msg, "request rejected");
    let m = tclient::QueryAnswerErrorEx {
        request_id,
        error_code: code as i32,
        error: msg.to_owned(),
        final_info: Some(client_final(
            proto,
            &Charge::default(),
            None,
            None,
            None,
            None,
        )),
    };
    send_detached(h, m.to_bytes());
}

/// The client's final info: the booked usage, and (protocol 2) the proxy's and the worker's
/// timings; `proxy_start` is `None` for a request refused before it ran.
pub(super) fn client_final(
    proto: i32,
    usage: &Charge,
    worker: Option<&tproxy::QueryFinalInfo>,
    proxy_start: Option<SystemTime>,
    debug: Option<bool>,
    answer_at: Option<SystemTime>,
) -> tclient::QueryFinalInfo {
    let timed = proto >= 2;
    let with_debug = debug.unwrap_or(false);
    let start = proxy_start.map(unix_secs);
    let now = unix_secs(SystemTime::now());
    tclient::QueryFinalInfo {
        tokens_used: tokens(usage),
        worker_debug: with_debug.then(|| {
            worker
                .and_then(|w| w.worker_debug.clone())
                .unwrap_or_default()
        }),
        proxy_debug: with_debug.then(|| {
            // COCOON's fields: when the proxy took the request, when the worker's answer
            // began to arrive (null when none did), and when it ended.
            serde_json::json!({
                "type": "proxy_stats",
                "start_time": start,
                "answer_receive_start_at": answer_at.map(unix_secs),
                "answer_receive_end_at": now,
            })
            .to_string()
        }),
        proxy_start_time: timed.then(|| start.unwrap_or_else(|| unix_secs(SystemTime::now()))),
        proxy_end_time: timed.then(|| unix_secs(SystemTime::now())),
        worker_start_time: timed.then(|| worker.and_then(|w| w.worker_start_time).unwrap_or(0.0)),
        worker_end_time: timed.then(|| worker.and_then(|w| w.worker_end_time).unwrap_or(0.0)),
    }
}

/// What to tell the peers once the books and the worker's health have the outcome.
pub(super) struct Outgoing {
    /// The answer's receipts (protocol 3).
    receipt: Option<Vec<u8>>,
    client: Vec<u8>,
    notify: Option<PendingNotify>,
    /// The settlement's commit when it is still to come (protocol 3): the client's message
    /// goes first, the receipt and the payment reports once it completed.
    durable: Option<Durable>,
}

impl Outgoing {
    pub(super) async fn send(self, shared: &Shared, ctx: &ClientCtx, request_id: &[u8; 32]) {
        let limit = shared.timings.handshake_timeout;
        let Some(durable) = self.durable else {
            // Already durable: the receipt right before the last message.
            if let Some(r) = self.receipt {
                let _ = tokio::time::timeout(limit, ctx.handle.send_message(r)).await;
            }
            let _ = tokio::time::timeout(limit, ctx.handle.send_message(self.client)).await;
            if let Some(n) = self.notify {
                n.send(&shared.meter, ctx);
            }
            return;
        };
        let _ = tokio::time::timeout(limit, ctx.handle.send_message(self.client)).await;
        if let Err(e) = durable.await {
            // The settlement stands in memory and the ledger retries its commit; nothing the
            // proxy could be held to is signed for it meanwhile.
            tracing::error!(request = %hex::encode(&request_id[..8]), error = %e,
                "settlement not committed; its receipt and payment reports are not sent");
            return;
        }
        if let Some(r) = self.receipt {
            let _ = tokio::time::timeout(limit, ctx.handle.send_message(r)).await;
        }
        if let Some(n) = self.notify {
            n.send(&shared.meter, ctx);
        }
    }
}

/// The worker's final answer message, as the client gets it.
pub(super) enum Last {
    /// `client.queryAnswerEx`: the whole answer in its head.
    Head(Vec<u8>),
    /// `client.queryAnswerPartEx`: the last part of the body.
    Part(Vec<u8>),
}

/// Settling and the client's last message, however the request ended.
impl Forwarding {
    /// Nothing reached the client: release the reservation and report the last failure.
    pub(super) async fn fail(&self, last: Option<(i32, String)>) {
        let _ = self.shared.meter.cancel(self.q.request_id).await;
        Counters::inc(&self.shared.counters.requests_failed);
        let (code, msg) =
            last.unwrap_or((ErrorCode::NotReady as i32, "no worker available".into()));
        let m = tclient::QueryAnswerErrorEx {
            request_id: self.q.request_id,
            error_code: code,
            error: msg,
            final_info: Some(self.final_info(&Charge::default(), None)),
        };
        send_detached(&self.ctx.handle, m.to_bytes());
    }

    /// The client's final info for this request.
    fn final_info(
        &self,
        usage: &Charge,
        worker: Option<&tproxy::QueryFinalInfo>,
    ) -> tclient::QueryFinalInfo {
        client_final(
            self.ctx.proto,
            usage,
            worker,
            Some(self.start),
            self.q.enable_debug,
            self.answer_at.get().copied(),
        )
    }

    /// Settles and prepares the client's final message built by `msg` and the payment
    /// messages; on a settlement failure the client gets an error (with the usage) instead.
    /// A protocol 3 client's message is prepared once the settlement is decided in memory
    /// (the commit is awaited by [`Outgoing::send`] after sending it); any other client's
    /// once it is durable.
    async fn settle_then(
        &self,
        lease: &Lease,
        usage: Charge,
        msg: impl FnOnce(tclient::QueryFinalInfo) -> Vec<u8>,
        fi: Option<&tproxy::QueryFinalInfo>,
    ) -> Result<Outgoing, Outgoing> {
        let final_info = self.final_info(&usage, fi);
        let booked = match self.book(lease, usage) {
            Ok((durable, n)) if self.ctx.proto >= 3 => Ok((Some(durable), n)),
            Ok((durable, n)) => durable.await.map(|_| (None, n)).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match booked {
            Ok((durable, n)) => Ok(Outgoing {
                receipt: None,
                client: msg(final_info),
                notify: Some(n),
                durable,
            }),
            Err(e) => {
                let rid = self.q.request_id;
                tracing::error!(request = %hex::encode(&rid[..8]), error = %e, "settlement failed");
                Err(Outgoing {
                    client: tclient::QueryAnswerErrorEx {
                        request_id: rid,
                        error_code: ErrorCode::Failure as i32,
                        error: format!("proxy: accounting failed: {e}"),
                        final_info: Some(final_info),
                    }
                    .to_bytes(),
                    receipt: None,
                    notify: None,
                    durable: None,
                })
            }
        }
    }

    /// Books the usage in memory (`Meter::book`); returns the wait for its commit and the
    /// payment reports it owes.
    fn book(&self, lease: &Lease, usage: Charge) -> Result<(Durable, PendingNotify), String> {
        let shared = &self.shared;
        let durable = shared
            .meter
            .book(
                self.q.request_id,
                Settlement {
                    client: self.ctx.client_sc.clone(),
                    worker: lease.worker_sc.clone(),
                    usage,
                    coefficient: lease.coefficient,
                },
            )
            .map_err(|e| e.to_string())?;
        shared
            .counters
            .tokens_total
            .fetch_add(usage.total, Ordering::Relaxed);
        let notify = PendingNotify {
            request_id: self.q.request_id,
            worker_request_id: lease.proxy_request_id,
            request_tokens: usage.total,
            client_sc: self.ctx.client_sc.clone(),
            worker_sc: lease.worker_sc.clone(),
            client_lock: Arc::clone(&self.ctx.pay_lock),
            worker_lock: Arc::clone(&lease.pay_lock),
            worker_handle: lease.handle.clone(),
        };
        Ok((durable, notify))
    }

    /// The worker's final message arrived: settle, then the client gets the last bytes with
    /// the final info. Returns whether the settlement was booked.
    pub(super) async fn finish_success(
        &self,
        r: &Relay,
        last: Last,
        usage: Charge,
        fi: &tproxy::QueryFinalInfo,
    ) -> (Outgoing, bool) {
        let lease = &r.lease;
        let rid = self.q.request_id;
        let build = |final_info| match last {
            Last::Head(answer) => tclient::QueryAnswerEx {
                request_id: rid,
                answer,
                final_info: Some(final_info),
            }
            .to_bytes(),
            Last::Part(answer) => tclient::QueryAnswerPartEx {
                request_id: rid,
                answer,
                final_info: Some(final_info),
            }
            .to_bytes(),
        };
        match self.settle_then(lease, usage, build, Some(fi)).await {
            Ok(mut out) => {
                Counters::inc(&self.shared.counters.requests_success);
                out.receipt = self.receipt(r, &usage);
                (out, true)
            }
            Err(out) => {
                Counters::inc(&self.shared.counters.requests_failed);
                (out, false)
            }
        }
    }

    /// `client.answerReceipt` for a settled answer (protocol 3 sessions): the worker's receipt
    /// as it came (absent when the worker gave none) and the proxy's, signed, saying what it
    /// billed.
    fn receipt(&self, r: &Relay, usage: &Charge) -> Option<Vec<u8>> {
        let signer = self.ctx.receipts.as_ref()?;
        let lease = &r.lease;
        let price = self.plan.prices.price_per_token;
        let billed = tokens(usage);
        let worker_receipt_hash = r
            .receipt
            .as_ref()
            .map(|w| cocoon_receipt::sha256(&w.receipt))
            .unwrap_or_default();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let p = cocoon_tl::types::receipt::Proxy {
            request_id: self.q.request_id,
            proxy_key: *signer.key.public_key(),
            client_key: signer.client_key,
            client_sc: self.ctx.client_sc.clone(),
            worker_request_id: lease.proxy_request_id,
            worker_receipt_hash,
            worker_key: lease.tls_key,
            tokens_used: billed,
            price_per_token: clamp_i64(price),
            cost: clamp_i64(usage.total.saturating_mul(price)),
            signed_at_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
        };
        let (proxy_receipt, proxy_signature) = match cocoon_receipt::sign_proxy(&p, &signer.key) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not sign a receipt");
                return None;
            }
        };
        Some(
            tclient::AnswerReceipt {
                request_id: self.q.request_id,
                worker_receipt: r.receipt.as_ref().map(|w| w.receipt.clone()),
                worker_signature: r.receipt.as_ref().map(|w| w.signature.clone()),
                proxy_receipt,
                proxy_signature,
            }
            .to_bytes(),
        )
    }

    /// The worker failed (after the first byte, or in a way another worker would not fix):
    /// bill what it reported and tell the client.
    pub(super) async fn finish_error(
        &self,
        lease: &Lease,
        code: i32,
        msg: &str,
        usage: Charge,
        fi: Option<&tproxy::QueryFinalInfo>,
    ) -> Outgoing {
        Counters::inc(&self.shared.counters.requests_failed);
        let rid = self.q.request_id;
        let build = |final_info| {
            tclient::QueryAnswerErrorEx {
                request_id: rid,
                error_code: code,
                error: msg.to_owned(),
                final_info: Some(final_info),
            }
            .to_bytes()
        };
        self.settle_then(lease, usage, build, fi)
            .await
            .unwrap_or_else(|e| e)
    }

    /// The client or the deadline stopped the request; bill what the worker reported.
    pub(super) async fn stopped(
        &self,
        r: &Relay,
        stop: Stop,
        usage: Charge,
        fi: Option<&tproxy::QueryFinalInfo>,
    ) -> Ended {
        let (code, msg) = match stop {
            Stop::Deadline => {
                Counters::inc(&self.shared.counters.requests_failed);
                (ErrorCode::Timeout, "timeout in proxy")
            }
            Stop::Client(_) => {
                Counters::inc(&self.shared.counters.requests_cancelled);
                (ErrorCode::Cancelled, "cancelled by the client")
            }
            Stop::Depleted => {
                Counters::inc(&self.shared.counters.requests_failed);
                (ErrorCode::Error, "reserved_tokens depleted")
            }
            Stop::ClientSlow => {
                Counters::inc(&self.shared.counters.requests_failed);
                (ErrorCode::Error, "client not reading; answer cut")
            }
        };
        let rid = self.q.request_id;
        tracing::info!(request = %hex::encode(&rid[..8]), reason = ?stop, tokens = usage.total, "request stopped");
        let build = |final_info| {
            tclient::QueryAnswerErrorEx {
                request_id: rid,
                error_code: code as i32,
                error: msg.to_owned(),
                final_info: Some(final_info),
            }
            .to_bytes()
        };
        let out = self
            .settle_then(&r.lease, usage, build, fi)
            .await
            .unwrap_or_else(|e| e);
        (
            Attempt::Done(Box::new(out)),
            stop_outcome(stop, r.first_byte),
        )
    }
}

/// Payment reports owed after a settlement, sent after the final answer.
///
/// Peers refuse totals that go down, and reports for different requests are produced by
/// different tasks; so each report is sent under its peer's lock and carries the totals read
/// at that moment (never lower than the settled ones): reports to one peer never decrease.
struct PendingNotify {
    request_id: [u8; 32],
    worker_request_id: [u8; 32],
    request_tokens: u64,
    client_sc: String,
    worker_sc: String,
    client_lock: PayLock,
    worker_lock: PayLock,
    worker_handle: SessionHandle,
}

impl PendingNotify {
    fn send(self, meter: &Arc<dyn crate::meter::Meter>, ctx: &ClientCtx) {
        let m = Arc::clone(meter);
        let h = ctx.handle.clone();
        let (rid, tokens, sc, lock) = (
            self.request_id,
            self.request_tokens,
            self.client_sc,
            self.client_lock,
        );
        tokio::spawn(async move {
            let _g = lock.lock().await;
            let t = m.client_totals(&sc);
            let p = tproxy::ClientRequestPayment {
                request_id: rid,
                signed_payment: payment(&*m, Party::Client, &sc),
                db_tokens: clamp_i64(t.committed_to_db),
                max_tokens: clamp_i64(t.max),
                request_tokens: clamp_i64(tokens),
            };
            let _ = h.send_message(p.to_bytes()).await;
        });
        let m = Arc::clone(meter);
        let (h, rid, sc, lock) = (
            self.worker_handle,
            self.worker_request_id,
            self.worker_sc,
            self.worker_lock,
        );
        tokio::spawn(async move {
            let _g = lock.lock().await;
            let t = m.worker_totals(&sc);
            let p = tproxy::WorkerRequestPayment {
                request_id: rid,
                signed_payment: payment(&*m, Party::Worker, &sc),
                db_tokens: clamp_i64(t.committed_to_db),
                max_tokens: clamp_i64(t.max),
                request_tokens: clamp_i64(tokens),
                // The worker need not know who pays.
                request_client_owner: String::new(),
            };
            let _ = h.send_message(p.to_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn final_info_times_are_unix_seconds() {
        let start = UNIX_EPOCH + Duration::from_millis(1_500);
        let fi = client_final(
            2,
            &Charge::default(),
            None,
            Some(start),
            Some(true),
            Some(start),
        );
        assert_eq!(fi.proxy_start_time, Some(1.5));
        assert!(fi.proxy_end_time.unwrap() > 1.5);
        let debug: serde_json::Value = serde_json::from_str(&fi.proxy_debug.unwrap()).unwrap();
        assert_eq!(debug["start_time"], 1.5);
        assert_eq!(debug["answer_receive_start_at"], 1.5);
        assert!(debug["answer_receive_end_at"].as_f64().unwrap() > 1.5);
        // Refused before it ran: no start in the debug, the start time is now.
        let fi = client_final(2, &Charge::default(), None, None, Some(true), None);
        let debug: serde_json::Value = serde_json::from_str(&fi.proxy_debug.unwrap()).unwrap();
        assert!(debug["start_time"].is_null());
        assert!(debug["answer_receive_start_at"].is_null());
        assert!(fi.proxy_start_time.unwrap() > 1.5);
        // Protocol 1: no timings.
        let fi = client_final(1, &Charge::default(), None, Some(start), None, None);
        assert_eq!(fi.proxy_start_time, None);
        assert_eq!(fi.worker_end_time, None);
    }
}
