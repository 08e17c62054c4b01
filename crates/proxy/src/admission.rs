//! Worker and client admission: pure checks of handshake parameters against the root
//! configuration and the peer's verified attestation.
//!
//! The rules are COCOON-compatible (see docs/cocoon-compat.md), with one addition:
//! simulated attestation is accepted only on a test network (the root's
//! `is_test` *and* the proxy's own), so a misconfigured production proxy cannot admit a
//! software-"attested" worker.

use cocoon_attest::Backend;
use cocoon_ton::HashBytes;
use cocoon_ton::root::{RootConfig, model_hash};

/// Protocol versions the proxy speaks (1 = Ex messages, 2 = timings, 3 = Cocoon's additions).
pub(crate) const MIN_PROTO_VERSION: i32 = 1;
pub(crate) const MAX_PROTO_VERSION: i32 = 3;

/// Largest coefficient accepted (coefficients are in `[0, 1e9)`).
pub(crate) const MAX_COEFFICIENT: i32 = 999_999_999;

/// Why a peer was refused; the message goes back to the peer and to the admin page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("too old {0}: parameters without flag bit 0")]
    TooOld(&'static str),
    #[error("test mode mismatch: peer is_test={peer}, proxy is_test={proxy}")]
    TestMismatch { peer: bool, proxy: bool },
    #[error("simulated attestation is accepted only on a test network")]
    SimOnProduction,
    #[error("image hash {0} is not in the root configuration")]
    ImageNotAllowed(String),
    #[error("model {0:?} is not in the root configuration")]
    ModelNotAllowed(String),
    #[error("empty model name")]
    EmptyModel,
    #[error("coefficient {0} out of range [0, {MAX_COEFFICIENT}]")]
    Coefficient(i64),
    #[error("max_active_requests must be at least 1, got {0}")]
    MaxActive(i32),
    #[error("proxy_cnt must be at least 1, got {0}")]
    ProxyCount(i32),
    #[error(
        "no common protocol version: peer speaks {min}..={max}, proxy {MIN_PROTO_VERSION}..={MAX_PROTO_VERSION}"
    )]
    Protocol { min: i32, max: i32 },
    #[error("proxy is disabled")]
    Disabled,
}

/// What admission needs to know about the attested peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerFacts {
    pub backend: Backend,
    pub image_hash: [u8; 32],
}

/// A worker's `worker.params`, unpacked.
#[derive(Debug, Clone)]
pub(crate) struct WorkerParams {
    pub model: String,
    pub coefficient: i32,
    pub is_test: Option<bool>,
    pub proxy_cnt: Option<i32>,
    pub max_active_requests: Option<i32>,
    pub min_proto: Option<i32>,
    pub max_proto: Option<i32>,
}

/// A worker that passed admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// Negotiated protocol version.
    pub proto: i32,
    /// Per-connection limit: `ceil(max_active_requests / proxy_cnt)`.
    pub max_active: u32,
    /// Model base name (text before `@`), the routing key.
    pub model_base: String,
}

/// The negotiated version, or why none exists. Peers without version fields speak 0..=0.
pub(crate) fn negotiate(min: Option<i32>, max: Option<i32>) -> Result<i32, Refusal> {
    let (min, max) = (min.unwrap_or(0), max.unwrap_or(0));
    let proto = max.min(MAX_PROTO_VERSION);
    if min > max || proto < MIN_PROTO_VERSION || proto < min {
        return Err(Refusal::Protocol { min, max });
    }
    Ok(proto)
}

/// Whether the attestation backend and image are acceptable under `root`.
pub(crate) fn check_image(
    root: &RootConfig,
    proxy_is_test: bool,
    peer: &PeerFacts,
    allowed: impl Fn(&RootConfig, &HashBytes) -> bool,
) -> Result<(), Refusal> {
    if peer.backend == Backend::Sim && !(proxy_is_test && root.params.is_test) {
        return Err(Refusal::SimOnProduction);
    }
    if !allowed(root, &HashBytes(peer.image_hash)) {
        return Err(Refusal::ImageNotAllowed(hex::encode(peer.image_hash)));
    }
    Ok(())
}

/// Whether the worker's image hash is whitelisted (not relying on sorted vectors).
pub(crate) fn worker_image_allowed(root: &RootConfig, h: &HashBytes) -> bool {
    root.worker_hashes.contains(h)
}

/// Whether a model is whitelisted (SHA-256 of the full model id).
pub(crate) fn model_allowed(root: &RootConfig, model: &str) -> bool {
    root.model_hashes.contains(&model_hash(model))
}

/// The routing key of a model id: the text before `@`.
pub(crate) fn model_base(model: &str) -> &str {
    model.split('@').next().unwrap_or(model)
}

/// Checks a worker's handshake parameters and attestation.
pub(crate) fn admit_worker(
    root: &RootConfig,
    proxy_is_test: bool,
    peer: &PeerFacts,
    p: &WorkerParams,
) -> Result<Admitted, Refusal> {
    let (Some(is_test), Some(proxy_cnt), Some(max_active)) =
        (p.is_test, p.proxy_cnt, p.max_active_requests)
    else {
        return Err(Refusal::TooOld("worker"));
    };
    if is_test != proxy_is_test {
        return Err(Refusal::TestMismatch {
            peer: is_test,
            proxy: proxy_is_test,
        });
    }
    check_image(root, proxy_is_test, peer, worker_image_allowed)?;
    if p.model.is_empty() || model_base(&p.model).is_empty() {
        return Err(Refusal::EmptyModel);
    }
    if !(0..=MAX_COEFFICIENT).contains(&p.coefficient) {
        return Err(Refusal::Coefficient(i64::from(p.coefficient)));
    }
    if max_active < 1 {
        return Err(Refusal::MaxActive(max_active));
    }
    if proxy_cnt < 1 {
        return Err(Refusal::ProxyCount(proxy_cnt));
    }
    if !model_allowed(root, &p.model) {
        return Err(Refusal::ModelNotAllowed(p.model.clone()));
    }
    let proto = negotiate(p.min_proto, p.max_proto)?;
    let max_active = (max_active as u32).div_ceil(proxy_cnt as u32);
    Ok(Admitted {
        proto,
        max_active,
        model_base: model_base(&p.model).to_owned(),
    })
}

/// Re-checks a connected worker after a root configuration change.
pub(crate) fn still_allowed(
    root: &RootConfig,
    proxy_is_test: bool,
    peer: &PeerFacts,
    model: &str,
) -> Result<(), Refusal> {
    check_image(root, proxy_is_test, peer, worker_image_allowed)?;
    if !model_allowed(root, model) {
        return Err(Refusal::ModelNotAllowed(model.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_ton::StdAddr;
    use cocoon_ton::root::CocoonParams;

    const MODEL: &str = "Smol@r1:abcd";

    fn root(image: [u8; 32]) -> RootConfig {
        RootConfig {
            owner: StdAddr::new(0, HashBytes([1; 32])),
            version: 1,
            proxy_hashes: vec![],
            registered_proxies: vec![],
            last_proxy_seqno: 0,
            worker_hashes: vec![HashBytes(image)],
            model_hashes: vec![model_hash(MODEL)],
            params: CocoonParams::default(),
        }
    }

    fn params() -> WorkerParams {
        WorkerParams {
            model: MODEL.into(),
            coefficient: 1500,
            is_test: Some(true),
            proxy_cnt: Some(2),
            max_active_requests: Some(5),
            min_proto: Some(1),
            max_proto: Some(2),
        }
    }

    fn sim(image: [u8; 32]) -> PeerFacts {
        PeerFacts {
            backend: Backend::Sim,
            image_hash: image,
        }
    }

    #[test]
    fn admits_and_derives_limits() {
        let a = admit_worker(&root([9; 32]), true, &sim([9; 32]), &params()).unwrap();
        assert_eq!(
            a,
            Admitted {
                proto: 2,
                max_active: 3,
                model_base: "Smol".into()
            }
        );
    }

    #[test]
    fn refusals() {
        let r = root([9; 32]);
        let p = params();
        let chk = |r: &RootConfig, peer: PeerFacts, p: &WorkerParams, test: bool| {
            admit_worker(r, test, &peer, p).unwrap_err()
        };
        assert!(matches!(
            chk(&r, sim([8; 32]), &p, true),
            Refusal::ImageNotAllowed(_)
        ));
        let mut prod = r.clone();
        prod.params.is_test = false;
        assert_eq!(chk(&prod, sim([9; 32]), &p, true), Refusal::SimOnProduction);
        let tdx = PeerFacts {
            backend: Backend::Tdx,
            image_hash: [9; 32],
        };
        let mut q = p.clone();
        q.is_test = Some(false);
        assert!(admit_worker(&prod, false, &tdx, &q).is_ok());
        assert!(matches!(
            chk(&r, sim([9; 32]), &q, true),
            Refusal::TestMismatch { .. }
        ));
        let mut q = p.clone();
        q.model = "Other@r1:ff".into();
        assert!(matches!(
            chk(&r, sim([9; 32]), &q, true),
            Refusal::ModelNotAllowed(_)
        ));
        let mut q = p.clone();
        q.coefficient = -1;
        assert_eq!(chk(&r, sim([9; 32]), &q, true), Refusal::Coefficient(-1));
        let mut q = p.clone();
        q.max_active_requests = Some(0);
        assert_eq!(chk(&r, sim([9; 32]), &q, true), Refusal::MaxActive(0));
        let mut q = p.clone();
        q.proxy_cnt = Some(0);
        assert_eq!(chk(&r, sim([9; 32]), &q, true), Refusal::ProxyCount(0));
        let mut q = p.clone();
        q.is_test = None;
        assert_eq!(chk(&r, sim([9; 32]), &q, true), Refusal::TooOld("worker"));
        let mut q = p.clone();
        q.min_proto = Some(4);
        q.max_proto = Some(5);
        assert!(matches!(
            chk(&r, sim([9; 32]), &q, true),
            Refusal::Protocol { .. }
        ));
        assert!(still_allowed(&r, true, &sim([9; 32]), MODEL).is_ok());
        let mut gone = r.clone();
        gone.model_hashes.clear();
        assert!(still_allowed(&gone, true, &sim([9; 32]), MODEL).is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(negotiate(Some(1), Some(3)), Ok(3));
        assert_eq!(negotiate(Some(1), Some(9)), Ok(3));
        assert_eq!(negotiate(Some(1), Some(2)), Ok(2));
        assert!(negotiate(None, None).is_err());
        assert!(negotiate(Some(3), Some(2)).is_err());
        assert!(negotiate(Some(4), Some(9)).is_err());
    }
}
