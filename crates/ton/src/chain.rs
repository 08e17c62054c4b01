//! The `Chain` trait: everything Cocoon needs from a TON node.
//!
//! Services never talk to a node directly; they hold a `Chain`. Production uses the
//! toncenter-v2 HTTP client ([`crate::Toncenter`]); tests point the same client at
//! the devnet, which serves the same API. The trait is deliberately small: send a BOC, run a
//! get-method, read an account, list new transactions.

use std::future::Future;

use tycho_types::cell::Cell;
use tycho_types::models::StdAddr;

use crate::codec::LayoutError;

/// Errors from a chain backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// Connection failure or timeout (retryable).
    #[error("transport: {0}")]
    Transport(String),
    /// A non-2xx HTTP answer.
    #[error("HTTP {status}: {message}")]
    Http {
        /// Status code.
        status: u16,
        /// Error text from the body.
        message: String,
    },
    /// The API answered `ok: false`.
    #[error("API error{}: {message}", code.map(|c| format!(" {c}")).unwrap_or_default())]
    Api {
        /// Error code, when given.
        code: Option<i64>,
        /// Error text.
        message: String,
    },
    /// The answer does not have the documented shape.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// A get-method ended with a non-zero exit code.
    #[error("get-method {method} exited with code {exit_code}")]
    GetMethodExit {
        /// Method name.
        method: String,
        /// TVM exit code.
        exit_code: i32,
    },
    /// A cell in the answer could not be parsed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Every endpoint failed; the last error is kept.
    #[error("all {attempts} attempts failed; last: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<ChainError>,
    },
    /// Fewer than `quorum` independently configured endpoints gave the same answer (or two
    /// different answers both reached it), so no answer is returned: the caller keeps what
    /// it had. Answers are named by a short hash, never by their content.
    #[error(
        "no quorum of {quorum} for {what}: {}",
        answers.iter().map(|a| format!("{} said {}", a.endpoint, a.said)).collect::<Vec<_>>().join(", ")
    )]
    NoQuorum {
        /// The read, e.g. `account 0:ab..`.
        what: String,
        /// Endpoints that had to agree.
        quorum: usize,
        /// What each endpoint said in the last round.
        answers: Vec<EndpointAnswer>,
    },
}

/// One endpoint's part in a failed quorum read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAnswer {
    /// The endpoint (its URL without credentials, query or fragment).
    pub endpoint: String,
    /// `answer <first 8 bytes of the answer's SHA-256 in hex>`, `error: <reason>`, or
    /// `no answer` when the read was decided without it.
    pub said: String,
}

impl ChainError {
    /// Whether retrying (possibly elsewhere) may help: transport errors, 5xx and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChainError::Transport(_) => true,
            ChainError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether this is a [`ChainError::NoQuorum`] in which endpoints gave different answers
    /// (rather than too few answering at all): a lie or a lag the rounds did not resolve.
    pub fn is_disagreement(&self) -> bool {
        match self {
            ChainError::NoQuorum { answers, .. } => {
                let mut seen: Vec<&str> = answers
                    .iter()
                    .filter(|a| a.said.starts_with("answer "))
                    .map(|a| a.said.as_str())
                    .collect();
                seen.sort_unstable();
                seen.dedup();
                seen.len() >= 2
            }
            _ => false,
        }
    }
}

/// Account status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Never seen on chain.
    Nonexist,
    /// Holds a balance but no code.
    Uninit,
    /// Deployed.
    Active,
    /// Frozen for unpaid storage.
    Frozen,
}

/// A transaction id: logical time and hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxId {
    /// Logical time.
    pub lt: u64,
    /// Transaction hash.
    pub hash: [u8; 32],
}

/// Account state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// Balance in nanoTON.
    pub balance: u128,
    /// Status.
    pub status: AccountStatus,
    /// Code, when active.
    pub code: Option<Cell>,
    /// Data, when active.
    pub data: Option<Cell>,
    /// Last transaction, if any.
    pub last_tx: Option<TxId>,
    /// Time of the state the node answered from (unix seconds), when known.
    pub sync_utime: Option<u64>,
}

/// A TVM integer on a get-method stack (up to 257 bits), kept as sign and big-endian
/// magnitude.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TvmInt {
    /// Negative flag.
    pub negative: bool,
    /// Magnitude, big-endian, 33 bytes.
    pub magnitude: [u8; 33],
}

impl TvmInt {
    /// From a signed 128-bit value.
    pub fn from_i128(v: i128) -> Self {
        let mut magnitude = [0u8; 33];
        magnitude[17..].copy_from_slice(&v.unsigned_abs().to_be_bytes());
        Self {
            negative: v < 0,
            magnitude,
        }
    }

    /// From 32 unsigned big-endian bytes (e.g. a public key).
    pub fn from_u256(v: &[u8; 32]) -> Self {
        let mut magnitude = [0u8; 33];
        magnitude[1..].copy_from_slice(v);
        Self {
            negative: false,
            magnitude,
        }
    }

    /// Parses `0x..`, `-0x..` or decimal (decimal up to 128 bits).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (negative, body) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let mut magnitude = [0u8; 33];
        if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            if h.is_empty() || h.len() > 66 {
                return None;
            }
            let padded = format!("{h:0>66}");
            hex::decode_to_slice(padded, &mut magnitude).ok()?;
        } else {
            let v: u128 = body.parse().ok()?;
            magnitude[17..].copy_from_slice(&v.to_be_bytes());
        }
        let negative = negative && magnitude.iter().any(|b| *b != 0);
        Some(Self {
            negative,
            magnitude,
        })
    }

    /// The value as i128, if it fits.
    pub fn to_i128(&self) -> Option<i128> {
        if self.magnitude[..17].iter().any(|b| *b != 0) {
            return None;
        }
        let m = u128::from_be_bytes(self.magnitude[17..].try_into().ok()?);
        if self.negative {
            if m > i128::MAX as u128 + 1 {
                None
            } else {
                Some((m as i128).wrapping_neg())
            }
        } else {
            i128::try_from(m).ok()
        }
    }

    /// The value as 32 unsigned bytes, if non-negative and below 2^256.
    pub fn to_u256(&self) -> Option<[u8; 32]> {
        if self.negative || self.magnitude[0] != 0 {
            return None;
        }
        self.magnitude[1..].try_into().ok()
    }

    /// `0x`-prefixed hex, as toncenter writes numbers.
    pub fn to_hex(&self) -> String {
        let h = hex::encode(self.magnitude);
        let h = h.trim_start_matches('0');
        let h = if h.is_empty() { "0" } else { h };
        format!("{}0x{h}", if self.negative { "-" } else { "" })
    }
}

/// A get-method stack entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackValue {
    /// Integer.
    Int(TvmInt),
    /// Cell.
    Cell(Cell),
    /// Slice (transported as the cell holding it).
    Slice(Cell),
    /// Null.
    Null,
    /// Tuple or list.
    Tuple(Vec<StackValue>),
}

impl StackValue {
    /// Integer as i128.
    pub fn as_i128(&self) -> Option<i128> {
        match self {
            StackValue::Int(i) => i.to_i128(),
            _ => None,
        }
    }

    /// Cell or slice content.
    pub fn as_cell(&self) -> Option<&Cell> {
        match self {
            StackValue::Cell(c) | StackValue::Slice(c) => Some(c),
            _ => None,
        }
    }
}

/// A get-method result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetMethodResult {
    /// TVM exit code (0 or 1 on success).
    pub exit_code: i32,
    /// Gas used, if reported.
    pub gas_used: Option<u64>,
    /// Result stack, bottom first.
    pub stack: Vec<StackValue>,
}

/// A message as seen in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxMessage {
    /// Source (`None` for external inbound messages).
    pub source: Option<StdAddr>,
    /// Destination (`None` for external outbound messages).
    pub destination: Option<StdAddr>,
    /// Value in nanoTON.
    pub value: u128,
    /// Body, when present.
    pub body: Option<Cell>,
}

/// A transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Id.
    pub id: TxId,
    /// Unix time.
    pub utime: u64,
    /// Total fees in nanoTON.
    pub fee: u128,
    /// Inbound message.
    pub in_msg: Option<TxMessage>,
    /// Outbound messages.
    pub out_msgs: Vec<TxMessage>,
    /// The raw transaction cell, when the backend provides it.
    pub raw: Option<Cell>,
}

/// How a transaction ended, read from its raw cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// The transaction was rolled back.
    pub aborted: bool,
    /// TVM exit code (`None` when the compute phase was skipped, e.g. a plain transfer to an
    /// account without code or a 1-nanoton notification).
    pub exit_code: Option<i32>,
    /// Action phase result code, when an action phase ran.
    pub action_result_code: Option<i32>,
    /// Gas used by the compute phase.
    pub gas_used: u64,
}

impl TxOutcome {
    /// A failure that matters: aborted with a compute phase that ran (a skipped compute phase
    /// on an uninitialised account also reads as aborted and is not an error).
    pub fn failed(&self) -> bool {
        self.aborted && self.exit_code.is_some()
    }
}

impl Transaction {
    /// Parses the raw transaction cell for its outcome (`None` when the backend did not send
    /// the raw cell or it is not an ordinary transaction).
    pub fn outcome(&self) -> Result<Option<TxOutcome>, LayoutError> {
        use tycho_types::models::{ComputePhase, TxInfo};
        let Some(raw) = &self.raw else {
            return Ok(None);
        };
        let tx: tycho_types::models::Transaction = raw.parse()?;
        let TxInfo::Ordinary(info) = tx.load_info()? else {
            return Ok(None);
        };
        let (exit_code, gas_used) = match &info.compute_phase {
            ComputePhase::Executed(e) => (Some(e.exit_code), e.gas_used.into_inner()),
            ComputePhase::Skipped(_) => (None, 0),
        };
        Ok(Some(TxOutcome {
            aborted: info.aborted,
            exit_code,
            action_result_code: info.action_phase.as_ref().map(|a| a.result_code),
            gas_used,
        }))
    }
}

/// What Cocoon needs from a TON node. Methods return `Send` futures so services can drive
/// them from any tokio task.
pub trait Chain: Send + Sync {
    /// Broadcasts an external message (BOC bytes).
    fn send_boc(&self, boc: &[u8]) -> impl Future<Output = Result<(), ChainError>> + Send;

    /// Runs a get-method; a non-zero, non-one exit code is [`ChainError::GetMethodExit`].
    fn run_get_method(
        &self,
        address: &StdAddr,
        method: &str,
        stack: &[StackValue],
    ) -> impl Future<Output = Result<GetMethodResult, ChainError>> + Send;

    /// Reads an account.
    fn account_state(
        &self,
        address: &StdAddr,
    ) -> impl Future<Output = Result<AccountState, ChainError>> + Send;

    /// Transactions of `address` newer than `after` (all known ones when `None`, at most
    /// `limit`), oldest first.
    fn transactions_since(
        &self,
        address: &StdAddr,
        after: Option<&TxId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Transaction>, ChainError>> + Send;

    /// The latest masterchain seqno (a liveness probe).
    fn masterchain_seqno(&self) -> impl Future<Output = Result<u32, ChainError>> + Send;

    /// Reads refused so far because the configured endpoints gave different answers
    /// ([`crate::QuorumChain`] counts them; a single backend has none). Roles show it
    /// to the operator.
    fn quorum_disagreements(&self) -> u64 {
        0
    }
}

/// Reads and parses the root contract's storage (what every runner does to learn the network
/// configuration).
pub async fn load_root_config<C: Chain>(
    chain: &C,
    root: &StdAddr,
) -> Result<crate::root::RootConfig, ChainError> {
    Ok(load_root_config_timed(chain, root).await?.0)
}

/// [`load_root_config`], with the time of the state it was read from (`sync_utime`: the
/// chain's clock, when the node reports it).
pub async fn load_root_config_timed<C: Chain>(
    chain: &C,
    root: &StdAddr,
) -> Result<(crate::root::RootConfig, Option<u64>), ChainError> {
    let st = chain.account_state(root).await?;
    let utime = st.sync_utime;
    let data = match (st.status, st.data) {
        (AccountStatus::Active, Some(d)) => d,
        (status, _) => {
            return Err(ChainError::Decode(format!(
                "root contract {root} is not active ({status:?})"
            )));
        }
    };
    Ok((crate::root::RootConfig::from_storage_cell(&data)?, utime))
}

/// The devnet's test controls (`cocoon devnet` only; a real toncenter answers 404).
pub trait Devnet {
    /// Mints `amount` nanoTON to `address` (`POST /_devnet/faucet`).
    fn faucet(
        &self,
        address: &StdAddr,
        amount: u128,
    ) -> impl std::future::Future<Output = Result<(), ChainError>> + Send;
    /// The devnet clock (unix seconds, `GET /_devnet/clock`).
    fn clock(&self) -> impl std::future::Future<Output = Result<u64, ChainError>> + Send;
    /// Moves the clock forward; returns the new time.
    fn advance_clock(
        &self,
        secs: u64,
    ) -> impl std::future::Future<Output = Result<u64, ChainError>> + Send;
    /// Sets the clock; returns the new time.
    fn set_clock(
        &self,
        unix: u64,
    ) -> impl std::future::Future<Output = Result<u64, ChainError>> + Send;
    /// `GET /_devnet/info`: chain facts, including `root_address` and `root_owner_key`.
    fn devnet_info(
        &self,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, ChainError>> + Send;
}

#[cfg(any(test, feature = "testing"))]
pub mod fake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tvm_int_parsing() {
        assert_eq!(TvmInt::parse("0x1").unwrap().to_i128(), Some(1));
        assert_eq!(TvmInt::parse("-0x10").unwrap().to_i128(), Some(-16));
        assert_eq!(TvmInt::parse("12345").unwrap().to_i128(), Some(12345));
        assert_eq!(TvmInt::parse("-0x0").unwrap().to_i128(), Some(0));
        let k = [0xab; 32];
        let big = TvmInt::parse(&format!("0x{}", hex::encode(k))).unwrap();
        assert_eq!(big.to_u256(), Some(k));
        assert_eq!(big.to_i128(), None);
        assert_eq!(TvmInt::from_u256(&k), big);
        assert_eq!(TvmInt::from_i128(-5).to_hex(), "-0x5");
        assert_eq!(TvmInt::from_i128(0).to_hex(), "0x0");
        assert_eq!(
            TvmInt::parse(&TvmInt::from_i128(i128::MIN).to_hex())
                .unwrap()
                .to_i128(),
            Some(i128::MIN)
        );
        assert!(TvmInt::parse("0x").is_none());
        assert!(TvmInt::parse("zz").is_none());
        assert!(TvmInt::parse(&format!("0x{}", "f".repeat(67))).is_none());
    }

    #[test]
    fn retryable_classification() {
        assert!(ChainError::Transport("x".into()).is_retryable());
        assert!(
            ChainError::Http {
                status: 503,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            ChainError::Http {
                status: 429,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !ChainError::Http {
                status: 400,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !ChainError::Api {
                code: None,
                message: String::new()
            }
            .is_retryable()
        );
    }
}
