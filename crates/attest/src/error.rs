//! Errors: each variant names the check that failed and the value it failed on, and
//! [`AttestError::fault`] tells whose fault it is: the peer's evidence, or something on our
//! side (as rustls tells a peer's misbehaviour from local failures).

use crate::model::{Backend, TcbStatus};

/// Hex helper for error messages.
fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Whose fault a refusal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The peer's evidence is malformed, forged or not allowed by the policy: the same
    /// evidence is refused again, whatever we fix on our side.
    Peer,
    /// Something on our side: collateral or CRLs missing, expired or not fetchable, a bad
    /// policy or setting, I/O. The same evidence may verify once that is fixed.
    Local,
}

/// Why evidence was not accepted (or could not be produced).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("backend {backend:?} is not allowed by the policy")]
    BackendNotAllowed { backend: Backend },
    #[error(
        "simulated evidence is only accepted by a policy that allows Sim on a network marked as test"
    )]
    SimNotAllowed,
    #[error("malformed evidence: {0}")]
    Malformed(String),
    #[error("quote is not a TD quote (SGX enclave quotes are not accepted)")]
    NotATdQuote,
    #[error("TD is a debug TD (td_attributes {td_attributes})", td_attributes = h(.td_attributes))]
    DebugTd { td_attributes: [u8; 8] },
    #[error("DCAP verification failed: {0}")]
    Dcap(String),
    #[error("missing collateral: {what}")]
    MissingCollateral { what: String },
    #[error("cannot fetch {item} for FMSPC {fmspc} from {url}: {reason}")]
    CollateralFetch {
        fmspc: String,
        item: String,
        url: String,
        reason: String,
    },
    #[error("cannot fetch {item} for {product} from {url}: {reason}")]
    KdsFetch {
        product: String,
        item: String,
        url: String,
        reason: String,
    },
    #[error("AMD KDS client: {0}")]
    KdsConfig(String),
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    #[error("PCCS client: {0}")]
    PccsConfig(String),
    #[error("invalid collateral ({what}): {reason}")]
    InvalidCollateral { what: String, reason: String },
    #[error("collateral expired: {what} not after {not_after}, now {now}")]
    CollateralExpired {
        what: String,
        not_after: u64,
        now: u64,
    },
    #[error("collateral not yet valid: {what} not before {not_before}, now {now}")]
    CollateralNotYetValid {
        what: String,
        not_before: u64,
        now: u64,
    },
    #[error("collateral too old: {what} issued at {issued}, now {now}, max age {max_age}s")]
    CollateralTooOld {
        what: String,
        issued: u64,
        now: u64,
        max_age: u64,
    },
    #[error("Intel root key id {root_key_id} is not pinned by the policy", root_key_id = h(.root_key_id))]
    RootKeyNotPinned { root_key_id: Vec<u8> },
    #[error("TCB status {status:?} is below the policy minimum {minimum:?}")]
    TcbStatusTooLow {
        status: TcbStatus,
        minimum: TcbStatus,
    },
    #[error("advisory {advisory_id} is not accepted by the policy")]
    AdvisoryNotAllowed { advisory_id: String },
    #[error("report data in the evidence does not match the expected value")]
    ReportDataMismatch,
    #[error("MRTD {mrtd} is not allowed by the policy", mrtd = h(.mrtd))]
    MrtdNotAllowed { mrtd: [u8; 48] },
    #[error("RTMR set (RTMR0 {rtmr0}…) is not allowed by the policy", rtmr0 = h(&.rtmrs[0]))]
    RtmrsNotAllowed { rtmrs: Box<[[u8; 48]; 4]> },
    #[error("image hash {image_hash} is not allowed by the policy", image_hash = h(.image_hash))]
    ImageHashNotAllowed { image_hash: [u8; 32] },
    #[error("simulated evidence signer {signer} is not allowed", signer = h(.signer))]
    SimSignerNotAllowed { signer: [u8; 32] },
    #[error("simulated evidence signature is invalid")]
    SimBadSignature,
    #[error(transparent)]
    Sev(#[from] crate::sev::SevError),
    #[error("sim key file {path}: {reason}")]
    SimKey { path: String, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl AttestError {
    /// Whether the peer's evidence or our side is at fault.
    pub fn fault(&self) -> Fault {
        use AttestError as E;
        match self {
            E::BackendNotAllowed { .. }
            | E::SimNotAllowed
            | E::Malformed(_)
            | E::NotATdQuote
            | E::DebugTd { .. }
            | E::Dcap(_)
            | E::RootKeyNotPinned { .. }
            | E::TcbStatusTooLow { .. }
            | E::AdvisoryNotAllowed { .. }
            | E::ReportDataMismatch
            | E::MrtdNotAllowed { .. }
            | E::RtmrsNotAllowed { .. }
            | E::ImageHashNotAllowed { .. }
            | E::SimSignerNotAllowed { .. }
            | E::SimBadSignature => Fault::Peer,
            E::Sev(e) => e.fault(),
            E::MissingCollateral { .. }
            | E::CollateralFetch { .. }
            | E::KdsFetch { .. }
            | E::KdsConfig(_)
            | E::InvalidPolicy(_)
            | E::PccsConfig(_)
            | E::InvalidCollateral { .. }
            | E::CollateralExpired { .. }
            | E::CollateralNotYetValid { .. }
            | E::CollateralTooOld { .. }
            | E::SimKey { .. }
            | E::Io { .. } => Fault::Local,
        }
    }
}
