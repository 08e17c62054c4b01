//! Errors: each variant names the check that failed and the value it failed on, and
//! [`AttestError::fault`] tells whose fault it is: the peer's evidence, or something on our
//! side (as rustls tells a peer's misbehaviour from local failures).

use crate::model::{Backend, Fault, TcbStatus};

/// Hex helper for error messages.
fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Why evidence was not accepted (or could not be produced).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// Evidence from a backend the policy does not list.
    #[error("backend {backend:?} is not allowed by the policy")]
    BackendNotAllowed {
        /// The backend of the evidence.
        backend: Backend,
    },
    /// Simulated evidence where the policy or network does not accept it.
    #[error(
        "simulated evidence is only accepted by a policy that allows Sim on a network marked as test"
    )]
    SimNotAllowed,
    /// COCOON's test-mode TDX evidence (`fake_tdx`) where the network is not a test network
    /// (or the policy does not list `fake-tdx`).
    #[error(
        "COCOON fake_tdx evidence (report data without a quote) is only accepted by a policy that \
         allows fake-tdx on a network marked as test"
    )]
    FakeTdxNotAllowed,
    /// Evidence that does not parse.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// An SGX enclave quote where a TD quote is required.
    #[error("quote is not a TD quote (SGX enclave quotes are not accepted)")]
    NotATdQuote,
    /// A TD with the debug bit set.
    #[error("TD is a debug TD (td_attributes {td_attributes})", td_attributes = h(.td_attributes))]
    DebugTd {
        /// The TD's attributes.
        td_attributes: [u8; 8],
    },
    /// The DCAP quote verification refused the quote.
    #[error("DCAP verification failed: {0}")]
    Dcap(String),
    /// Collateral needed for verification is not available.
    #[error("missing collateral: {what}")]
    MissingCollateral {
        /// Which collateral item.
        what: String,
    },
    /// Fetching TDX collateral from the PCCS failed.
    #[error("cannot fetch {item} for FMSPC {fmspc} from {url}: {reason}")]
    CollateralFetch {
        /// The platform's FMSPC, hex.
        fmspc: String,
        /// Which collateral item.
        item: String,
        /// The URL asked.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// Fetching SEV-SNP collateral from AMD's KDS failed.
    #[error("cannot fetch {item} for {product} from {url}: {reason}")]
    KdsFetch {
        /// The processor generation.
        product: String,
        /// Which item (certificate chain, CRL, VCEK).
        item: String,
        /// The URL asked.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A KDS client that cannot be built from its settings.
    #[error("AMD KDS client: {0}")]
    KdsConfig(String),
    /// A policy that is not valid.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// A PCCS client that cannot be built from its settings.
    #[error("PCCS client: {0}")]
    PccsConfig(String),
    /// Collateral that does not parse or verify.
    #[error("invalid collateral ({what}): {reason}")]
    InvalidCollateral {
        /// Which collateral item.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Collateral past its validity.
    #[error("collateral expired: {what} not after {not_after}, now {now}")]
    CollateralExpired {
        /// Which collateral item.
        what: String,
        /// End of its validity, Unix seconds.
        not_after: u64,
        /// The verification time, Unix seconds.
        now: u64,
    },
    /// Collateral whose validity has not started.
    #[error("collateral not yet valid: {what} not before {not_before}, now {now}")]
    CollateralNotYetValid {
        /// Which collateral item.
        what: String,
        /// Start of its validity, Unix seconds.
        not_before: u64,
        /// The verification time, Unix seconds.
        now: u64,
    },
    /// Collateral issued longer ago than the policy allows.
    #[error("collateral too old: {what} issued at {issued}, now {now}, max age {max_age}s")]
    CollateralTooOld {
        /// Which collateral item.
        what: String,
        /// Issue time, Unix seconds.
        issued: u64,
        /// The verification time, Unix seconds.
        now: u64,
        /// The policy's maximum age, seconds.
        max_age: u64,
    },
    /// A quote chained to an Intel root key the policy does not pin.
    #[error("Intel root key id {root_key_id} is not pinned by the policy", root_key_id = h(.root_key_id))]
    RootKeyNotPinned {
        /// The root key id in the quote.
        root_key_id: Vec<u8>,
    },
    /// A platform TCB status below the policy's minimum.
    #[error("TCB status {status:?} is below the policy minimum {minimum:?}")]
    TcbStatusTooLow {
        /// The platform's status.
        status: TcbStatus,
        /// The policy's minimum.
        minimum: TcbStatus,
    },
    /// A security advisory that applies to the platform and the policy does not accept.
    #[error("advisory {advisory_id} is not accepted by the policy")]
    AdvisoryNotAllowed {
        /// The advisory, e.g. `INTEL-SA-00837`.
        advisory_id: String,
    },
    /// Report data that does not bind the expected key.
    #[error("report data in the evidence does not match the expected value")]
    ReportDataMismatch,
    /// An MRTD the policy does not allow.
    #[error("MRTD {mrtd} is not allowed by the policy", mrtd = h(.mrtd))]
    MrtdNotAllowed {
        /// The TD's MRTD.
        mrtd: [u8; 48],
    },
    /// RTMR values the policy does not allow.
    #[error("RTMR set (RTMR0 {rtmr0}…) is not allowed by the policy", rtmr0 = h(&.rtmrs[0]))]
    RtmrsNotAllowed {
        /// The TD's four RTMRs.
        rtmrs: Box<[[u8; 48]; 4]>,
    },
    /// An image hash the policy does not allow.
    #[error("image hash {image_hash} is not allowed by the policy", image_hash = h(.image_hash))]
    ImageHashNotAllowed {
        /// The evidence's image hash.
        image_hash: [u8; 32],
    },
    /// Simulated evidence signed by a key the policy does not allow.
    #[error("simulated evidence signer {signer} is not allowed", signer = h(.signer))]
    SimSignerNotAllowed {
        /// The signer's public key.
        signer: [u8; 32],
    },
    /// Simulated evidence whose signature does not verify.
    #[error("simulated evidence signature is invalid")]
    SimBadSignature,
    /// SEV-SNP evidence refused.
    #[error(transparent)]
    Sev(#[from] crate::sev::SevError),
    /// A sim key file that cannot be read or parsed.
    #[error("sim key file {path}: {reason}")]
    SimKey {
        /// The key file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file that cannot be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
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
            | E::FakeTdxNotAllowed
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
