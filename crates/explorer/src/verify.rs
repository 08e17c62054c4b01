//! The explorer's own check of the registered proxies: it dials each one's client endpoint
//! over RA-TLS as a client without money does (an unattested certificate, the client's
//! proxy policy), completes the handshake only and closes; what the verified attestation
//! said, or why the handshake failed, is the proxy's [`Verdict`].
//!
//! Bounded: at most [`MAX_CHECKED`] endpoints (the root's first ones), each check under a
//! timeout, a verdict kept [`VERDICT_TTL`] before the endpoint is dialled again, one check
//! at a time per endpoint (the poller runs them), and verdicts of endpoints no longer
//! registered dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use cocoon_attest::{Fault, VerifiedPeer};
use cocoon_ratls::net::{RatlsConnector, RatlsError};
use cocoon_ratls::pow::PowError;
use serde::Serialize;

use crate::view::clip;

/// Most registered proxies the explorer dials.
pub const MAX_CHECKED: usize = 32;
/// How long a verdict is kept before its endpoint is dialled again.
pub const VERDICT_TTL: Duration = Duration::from_secs(60);

/// How the explorer dials the registered proxies: the connector a client without money
/// uses (its unattested certificate, the client's proxy policy) and how long a verdict is
/// kept.
#[derive(Clone)]
pub struct ProxyCheck {
    /// Dials the proxies and verifies them.
    pub connector: RatlsConnector,
    /// How long a verdict is kept ([`VERDICT_TTL`] by default).
    pub ttl: Duration,
}

impl std::fmt::Debug for ProxyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCheck")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// What one handshake with a proxy's client endpoint established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// The handshake completed: the proxy's certificate and attestation passed the policy.
    Attested {
        /// The TEE of the verified evidence (`tdx`, `sev-snp`, `sim`, ...).
        tee: String,
        /// The image hash the verified evidence measured, hex.
        image_hash: String,
        /// The TCB status of the evidence.
        tcb_status: String,
        /// Until when the certificate is valid (unix seconds).
        valid_until: u64,
    },
    /// The proxy's certificate or attestation was refused.
    Refused {
        /// Why, as the verifier says it.
        reason: String,
        /// Whether the refusal is the proxy's fault (its evidence or certificate), not ours
        /// (collateral, configuration).
        peer_fault: bool,
    },
    /// The endpoint could not be reached or did not complete the handshake in time.
    Unreachable {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// The verdict of a completed handshake with `peer`.
    pub fn attested(peer: &VerifiedPeer) -> Verdict {
        Verdict::Attested {
            tee: peer.backend().name().to_owned(),
            image_hash: hex::encode(peer.image_hash()),
            tcb_status: format!("{:?}", peer.tcb_status()),
            valid_until: peer.valid_until(),
        }
    }

    /// The verdict of a failed handshake.
    pub fn failed(e: &RatlsError) -> Verdict {
        match e.verify_error() {
            Some(v) => Verdict::Refused {
                reason: clip(&format!("attestation refused: {v}")),
                peer_fault: v.fault() == Fault::Peer,
            },
            None => match e {
                RatlsError::NoPeerCertificate => Verdict::Refused {
                    reason: "the proxy presented no certificate".into(),
                    peer_fault: true,
                },
                // Solving it would cost the explorer more than it pays to look (a proxy
                // could make every check burn seconds of CPU): not verified, and why.
                RatlsError::Pow(PowError::DifficultyTooHigh { requested, max }) => {
                    Verdict::Refused {
                        reason: format!(
                            "the proxy demands {requested} bits of proof of work; the \
                             explorer solves at most {max} (--pow-max-bits)"
                        ),
                        peer_fault: true,
                    }
                }
                other => Verdict::Unreachable {
                    reason: clip(&format!("no handshake: {other}")),
                },
            },
        }
    }
}

/// A verdict and when it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The verdict.
    pub verdict: Verdict,
    /// When (unix seconds).
    pub at: u64,
}

/// The endpoints of `registered` (the root's order, at most [`MAX_CHECKED`]) that need a
/// check at `now`: never checked, or checked more than `ttl` ago.
pub fn due<'a>(
    registered: impl IntoIterator<Item = &'a str>,
    verdicts: &BTreeMap<String, Checked>,
    now: u64,
    ttl: Duration,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ep in registered.into_iter().take(MAX_CHECKED) {
        let fresh = verdicts
            .get(ep)
            .is_some_and(|c| now.saturating_sub(c.at) < ttl.as_secs());
        if !fresh && !out.iter().any(|e| e == ep) {
            out.push(ep.to_owned());
        }
    }
    out
}

/// Drops the verdicts of endpoints not among the first [`MAX_CHECKED`] of `registered`.
pub fn retain_registered<'a>(
    verdicts: &mut BTreeMap<String, Checked>,
    registered: impl IntoIterator<Item = &'a str>,
) {
    let keep: Vec<&str> = registered.into_iter().take(MAX_CHECKED).collect();
    verdicts.retain(|ep, _| keep.contains(&ep.as_str()));
}

/// The client endpoint of a registered proxy: `"ip:port"`, or the second of
/// `"ip_workers:port ip_clients:port"`.
pub fn client_endpoint(registered: &str) -> &str {
    let mut parts = registered.split_whitespace();
    let first = parts.next().unwrap_or_default();
    parts.next().unwrap_or(first)
}

/// Dials `endpoint` with `connector`, completes the RA-TLS handshake (proof of work, TLS,
/// the proxy's attestation checked by the connector's verifier) within `limit` and closes.
pub async fn check(connector: &RatlsConnector, endpoint: &str, limit: Duration) -> Verdict {
    match tokio::time::timeout(limit, connector.connect_tls(client_endpoint(endpoint))).await {
        Ok(Ok((tls, peer))) => {
            drop(tls);
            Verdict::attested(&peer)
        }
        Ok(Err(e)) => Verdict::failed(&e),
        Err(_) => Verdict::Unreachable {
            reason: format!("no handshake within {} s", limit.as_secs()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: u64) -> Checked {
        Checked {
            verdict: Verdict::Unreachable { reason: "x".into() },
            at: t,
        }
    }

    #[test]
    fn only_stale_or_new_endpoints_are_due_and_at_most_max_checked() {
        let mut v = BTreeMap::new();
        v.insert("a:1".to_owned(), at(100));
        v.insert("b:1".to_owned(), at(30));
        let ttl = Duration::from_secs(60);
        assert_eq!(
            due(["a:1", "b:1", "c:1", "c:1"], &v, 120, ttl),
            vec!["b:1".to_owned(), "c:1".to_owned()]
        );
        let many: Vec<String> = (0..1000).map(|i| format!("10.0.0.1:{i}")).collect();
        assert_eq!(
            due(many.iter().map(String::as_str), &v, 120, ttl).len(),
            MAX_CHECKED
        );
        retain_registered(&mut v, ["b:1"]);
        assert_eq!(v.keys().collect::<Vec<_>>(), vec!["b:1"]);
    }

    #[test]
    fn a_proof_of_work_demand_over_the_limit_is_a_refusal_that_says_so() {
        let e = RatlsError::Pow(PowError::DifficultyTooHigh {
            requested: 28,
            max: 22,
        });
        match Verdict::failed(&e) {
            Verdict::Refused { reason, peer_fault } => {
                assert!(peer_fault);
                assert!(reason.contains("demands 28 bits"), "{reason}");
                assert!(reason.contains("at most 22"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_client_endpoint_of_a_split_registration_is_the_second() {
        assert_eq!(client_endpoint("1.2.3.4:5"), "1.2.3.4:5");
        assert_eq!(client_endpoint("1.2.3.4:5 6.7.8.9:10"), "6.7.8.9:10");
        assert_eq!(client_endpoint(""), "");
    }
}
