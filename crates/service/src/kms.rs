//! The key-release exchange with a `cocoon kms` (docs/ra-tls.md, "Key release"), and its
//! client side: what a proxy or worker (or `cocoon kms fetch`, or another KMS) sends and
//! receives over one RA-TLS stream.
//!
//! After TCP → proof-of-work → mutual RA-TLS, the peer writes one request and the KMS answers
//! once; then the connection closes. Each message is a 4-byte big-endian length and that many
//! bytes of JSON, at most [`MAX_MESSAGE`] bytes. The whole exchange after the handshake has a
//! time limit ([`DEFAULT_TIMEOUT`]). The client checks that the KMS's image hash is one it
//! was configured with before it sends anything: a KMS it does not trust could hand out keys
//! its host knows.

use std::time::Duration;

use cocoon_attest::{Fault, VerifiedPeer};
use cocoon_ratls::net::{RatlsConnector, RatlsError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request or response, in bytes (the length prefix excluded).
pub const MAX_MESSAGE: usize = 65536;
/// Longest measured configuration a request carries, in bytes.
pub const MAX_CONFIG: usize = 60 * 1024;
/// Time limit on one request and its answer, after the handshake.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Version of the request format.
pub const VERSION: u32 = 1;
/// Longest identity, in bytes.
pub const MAX_IDENTITY: usize = 128;
/// Most purposes in one request.
pub const MAX_PURPOSES: usize = 4;

/// The role a peer asks keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsRole {
    /// A proxy: its image must be in the root's proxy hashes.
    Proxy,
    /// A worker: its image must be in the root's worker hashes.
    Worker,
    /// Another KMS asking for the master secret: its image must be in the KMS's own
    /// `kms_image_hashes`.
    Kms,
}

impl KmsRole {
    /// The name used on the wire and in key derivation.
    pub fn name(self) -> &'static str {
        match self {
            KmsRole::Proxy => "proxy",
            KmsRole::Worker => "worker",
            KmsRole::Kms => "kms",
        }
    }
}

impl std::str::FromStr for KmsRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "proxy" => Ok(KmsRole::Proxy),
            "worker" => Ok(KmsRole::Worker),
            other => Err(format!("unknown role {other:?} (proxy, worker)")),
        }
    }
}

/// Which key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// The Ed25519 seed of the proxy's receipt-signing key.
    Signing,
    /// The Ed25519 seed of the role's TON wallet.
    Wallet,
    /// The 32-byte key of the role's encrypted data disk.
    Disk,
    /// The KMS master secret itself (role `kms` only).
    Master,
}

impl Purpose {
    /// The name used on the wire and in key derivation.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Signing => "signing",
            Purpose::Wallet => "wallet",
            Purpose::Disk => "disk",
            Purpose::Master => "master",
        }
    }
}

impl std::str::FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "signing" => Ok(Purpose::Signing),
            "wallet" => Ok(Purpose::Wallet),
            "disk" => Ok(Purpose::Disk),
            other => Err(format!("unknown purpose {other:?} (signing, wallet, disk)")),
        }
    }
}

/// What a peer asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// [`VERSION`].
    pub version: u32,
    /// The role the peer claims.
    pub role: KmsRole,
    /// What the role is on chain: its owner address in raw form (`0:<64 hex>`), with
    /// `/<instance>` for one of several instances, see [`identity_of`]; `kms` for a KMS.
    pub identity: String,
    /// The keys wanted (1 to [`MAX_PURPOSES`]).
    pub purposes: Vec<Purpose>,
    /// The configuration the peer's TEE measured at boot (its RTMR3, MRCONFIGID or host
    /// data commits to these bytes): the KMS takes the identity from it, so an allowed
    /// image cannot ask for another owner's keys. Absent only where nothing was measured
    /// (test networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl KeyRequest {
    /// Checks what the types alone cannot: the version, the identity's length and
    /// characters, the number of purposes, and that only a KMS asks for the master.
    pub fn check(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!("version {} (expected {VERSION})", self.version));
        }
        if self.identity.is_empty()
            || self.identity.len() > MAX_IDENTITY
            || !self.identity.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "identity must be 1 to {MAX_IDENTITY} printable ASCII characters"
            ));
        }
        if self.purposes.is_empty() || self.purposes.len() > MAX_PURPOSES {
            return Err(format!("1 to {MAX_PURPOSES} purposes"));
        }
        if self.config.as_ref().is_some_and(|c| c.len() > MAX_CONFIG) {
            return Err(format!("configuration over {MAX_CONFIG} bytes"));
        }
        let is_kms = self.role == KmsRole::Kms;
        if self
            .purposes
            .iter()
            .any(|p| (*p == Purpose::Master) != is_kms)
        {
            return Err("only a kms asks for the master, and only for it".into());
        }
        Ok(())
    }
}

/// Why a KMS refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Refusal {
    /// The request broke the format's rules.
    BadRequest,
    /// The peer's image hash is not allowed for the role it claims (root contract for
    /// proxies and workers, the KMS's `kms_image_hashes` for a KMS).
    ImageNotAllowed,
    /// The KMS could not read the root contract; try again later.
    RootUnavailable,
    /// The identity asked for is not the one in the configuration the peer's TEE measured
    /// (or no measured configuration was shown where one is required).
    IdentityNotMeasured,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::BadRequest => "bad request",
            Refusal::ImageNotAllowed => "image not allowed",
            Refusal::RootUnavailable => "root contract unavailable",
            Refusal::IdentityNotMeasured => "identity not in the measured configuration",
        })
    }
}

/// One released key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedKey {
    /// Which key.
    pub purpose: Purpose,
    /// 32 bytes, hex.
    pub key: String,
}

impl std::fmt::Debug for ReleasedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReleasedKey({}, <redacted>)", self.purpose.name())
    }
}

/// The KMS's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyResponse {
    /// The keys, in the order asked.
    Released {
        /// One per purpose asked.
        keys: Vec<ReleasedKey>,
    },
    /// Nothing released.
    Refused {
        /// Why.
        reason: Refusal,
        /// A line for the operator (never key material).
        detail: String,
    },
}

/// A 32-byte secret that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0 = [0; 32];
    }
}

/// Why keys could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// TCP, proof-of-work or the RA-TLS handshake failed (the KMS's attestation, or ours).
    #[error("kms connection: {0}")]
    Connect(#[from] RatlsError),
    /// The KMS attested an image that is not in our `kms_image_hashes`.
    #[error("the kms runs image {0}, which is not in kms_image_hashes")]
    UntrustedKms(String),
    /// Reading or writing the stream failed.
    #[error("kms exchange: {0}")]
    Io(#[from] std::io::Error),
    /// The exchange took longer than its limit.
    #[error("kms exchange timed out")]
    Timeout,
    /// A message broke the format (too long, not JSON, wrong keys).
    #[error("kms message: {0}")]
    Malformed(String),
    /// The KMS refused to release the keys.
    #[error("kms refused: {reason}: {detail}")]
    Refused {
        /// Why.
        reason: Refusal,
        /// Its line.
        detail: String,
    },
}

impl KmsError {
    /// Whose fault: a KMS that attests a wrong image or breaks the format is the peer's;
    /// a refusal (our image or request), I/O and timeouts are ours.
    pub fn fault(&self) -> Fault {
        match self {
            KmsError::Connect(e) => e.fault(),
            KmsError::UntrustedKms(_) | KmsError::Malformed(_) => Fault::Peer,
            KmsError::Io(_) | KmsError::Timeout | KmsError::Refused { .. } => Fault::Local,
        }
    }

    /// Whether trying again later may help (the KMS not up yet, the root unreadable).
    pub fn is_transient(&self) -> bool {
        match self {
            KmsError::Connect(e) => matches!(
                e,
                RatlsError::Io(_) | RatlsError::Timeout(_) | RatlsError::Pow(_)
            ),
            KmsError::Io(_) | KmsError::Timeout => true,
            KmsError::Refused { reason, .. } => *reason == Refusal::RootUnavailable,
            KmsError::UntrustedKms(_) | KmsError::Malformed(_) => false,
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds [`MAX_MESSAGE`].
    #[error("message of {0} bytes (at most {MAX_MESSAGE})")]
    TooLong(usize),
    /// The bytes are not the expected JSON.
    #[error("not a valid message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes one message.
pub async fn write_message<S: AsyncWrite + Unpin, T: Serialize>(
    stream: &mut S,
    msg: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(FrameError::TooLong(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLong(body.len()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one message; a length over [`MAX_MESSAGE`] is refused before anything is buffered.
pub async fn read_message<S: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    stream: &mut S,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(FrameError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Longest instance name.
pub const MAX_INSTANCE: usize = 32;

/// The identity a role's keys are bound to: its owner address in raw form
/// (`<workchain>:<64 hex>`), whatever form the setting was written in, followed by
/// `/<instance>` when an instance name is given (several workers of one owner, each with
/// keys of its own: 1 to 32 of `A-Z a-z 0-9 . _ -`).
pub fn identity_of(owner_address: &str, instance: &str) -> Result<String, String> {
    let a = cocoon_ton::parse_address(owner_address).map_err(|e| e.to_string())?;
    let owner = format!("{}:{}", a.workchain, hex::encode(a.address.0));
    if instance.is_empty() {
        return Ok(owner);
    }
    if instance.len() > MAX_INSTANCE
        || !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "{instance:?}: 1 to {MAX_INSTANCE} of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(format!("{owner}/{instance}"))
}

/// Parses `kms_image_hashes`: 64 hex digits each.
pub fn parse_image_hashes(list: &[String]) -> Result<Vec<[u8; 32]>, String> {
    list.iter()
        .map(|s| {
            let mut h = [0u8; 32];
            hex::decode_to_slice(s.trim(), &mut h)
                .map_err(|_| format!("{s:?} is not 64 hex digits"))?;
            Ok(h)
        })
        .collect()
}

/// Asks the KMS at `addr` for keys over a fresh RA-TLS connection made by `connector` (our
/// identity; the KMS verified under its policy), after checking that the KMS's image is
/// one of `kms_images`. Returns one secret per purpose, in the order asked.
pub async fn fetch(
    connector: &RatlsConnector,
    addr: &str,
    kms_images: &[[u8; 32]],
    req: &KeyRequest,
    timeout: Duration,
) -> Result<Vec<Secret>, KmsError> {
    let (mut tls, kms) = connector.connect_tls(addr).await?;
    check_kms(&kms, kms_images)?;
    let exchange = async {
        write_message(&mut tls, req).await.map_err(frame_error)?;
        let resp: KeyResponse = read_message(&mut tls).await.map_err(frame_error)?;
        Ok::<_, KmsError>(resp)
    };
    let resp = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| KmsError::Timeout)??;
    let _ = tls.shutdown().await;
    match resp {
        KeyResponse::Refused { reason, detail } => Err(KmsError::Refused { reason, detail }),
        KeyResponse::Released { keys } => {
            if keys.len() != req.purposes.len() {
                return Err(KmsError::Malformed(format!(
                    "{} keys for {} purposes",
                    keys.len(),
                    req.purposes.len()
                )));
            }
            req.purposes
                .iter()
                .zip(keys)
                .map(|(want, k)| {
                    if k.purpose != *want {
                        return Err(KmsError::Malformed("keys out of order".into()));
                    }
                    let mut out = Secret([0; 32]);
                    hex::decode_to_slice(&k.key, &mut out.0)
                        .map_err(|_| KmsError::Malformed("a key is not 64 hex digits".into()))?;
                    Ok(out)
                })
                .collect()
        }
    }
}

fn check_kms(kms: &VerifiedPeer, kms_images: &[[u8; 32]]) -> Result<(), KmsError> {
    if kms_images.contains(kms.image_hash()) {
        Ok(())
    } else {
        Err(KmsError::UntrustedKms(hex::encode(kms.image_hash())))
    }
}

fn frame_error(e: FrameError) -> KmsError {
    match e {
        FrameError::Io(e) => KmsError::Io(e),
        e => KmsError::Malformed(e.to_string()),
    }
}

/// [`fetch`], tried again on transient failures (the KMS not up yet, the root unreadable)
/// until `patience` has passed; a refusal or an untrusted KMS ends it at once.
pub async fn fetch_patiently(
    connector: &RatlsConnector,
    addr: &str,
    kms_images: &[[u8; 32]],
    req: &KeyRequest,
    patience: Duration,
) -> Result<Vec<Secret>, KmsError> {
    let end = tokio::time::Instant::now() + patience;
    loop {
        match fetch(connector, addr, kms_images, req, DEFAULT_TIMEOUT).await {
            Ok(k) => return Ok(k),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < end => {
                tracing::info!(%addr, error = %e, "kms not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where a role (proxy, worker) gets its keys when its `kms` setting is not empty.
#[derive(Debug, Clone, Copy)]
pub struct KmsClientSettings<'a> {
    /// The KMS, `host:port` (`kms`).
    pub addr: &'a str,
    /// How the KMS's attestation is verified (`kms_policy`: `any`, `tdx`, `sev-snp`, `sim`
    /// or a JSON policy file; sim is accepted on test networks).
    pub policy: &'a str,
    /// The KMS images trusted (`kms_image_hashes`, 64 hex digits each).
    pub image_hashes: &'a [String],
    /// Which of the owner's instances this is (`kms_instance`; empty: the owner's only one).
    pub instance: &'a str,
}

impl KmsClientSettings<'_> {
    /// Checks the address and the hashes, naming the key; nothing to check when `kms` is
    /// empty.
    pub fn check(&self) -> Result<(), crate::SettingError> {
        use crate::SettingError;
        if self.addr.is_empty() {
            return Ok(());
        }
        if !self.instance.is_empty() {
            identity_of(
                "0:0000000000000000000000000000000000000000000000000000000000000000",
                self.instance,
            )
            .map_err(|e| SettingError::new("kms_instance", e))?;
        }
        if !self.addr.contains(':') {
            return Err(SettingError::new("kms", "expected host:port"));
        }
        let hashes = parse_image_hashes(self.image_hashes)
            .map_err(|e| SettingError::new("kms_image_hashes", e))?;
        if hashes.is_empty() {
            return Err(SettingError::new(
                "kms_image_hashes",
                "required with kms (the KMS images this role trusts)",
            ));
        }
        Ok(())
    }
}

/// Fetches `purposes` for `role` from the KMS of `kms`, presenting a fresh RA-TLS identity of
/// this machine (`common.tee`) and verifying the KMS as `common` verifies peers under
/// `kms.policy`; the keys are bound to the role's `owner_address` (and `kms.instance`).
/// Transient failures are retried for 30 seconds.
pub async fn role_keys(
    common: &crate::setting::Common,
    start: &crate::setting::Start,
    kms: KmsClientSettings<'_>,
    role: KmsRole,
    purposes: &[Purpose],
) -> Result<Vec<Secret>, String> {
    let images = parse_image_hashes(kms.image_hashes)?;
    let tee = common.tee().map_err(|e| e.to_string())?;
    let me = crate::identity::identity(tee, common.is_test, &start.state_dir)?;
    let verifier = crate::identity::peer_verifier(common.verification(kms.policy, start))?;
    let connector = RatlsConnector::new(
        me.resolver,
        verifier,
        cocoon_ratls::pow::CLIENT_MAX_DIFFICULTY,
        cocoon_net::Config::default(),
    )
    .map_err(|e| e.to_string())?;
    // The configuration this machine's boot measured, if any: the KMS checks it against our
    // attestation and takes our identity from it.
    let copy = crate::measured::config_copy(me.tee, &crate::measured::SimRegisters::from_env());
    let config = match std::fs::read_to_string(&copy) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", copy.display())),
    };
    let req = KeyRequest {
        version: VERSION,
        role,
        identity: identity_of(&common.owner_address, kms.instance)?,
        purposes: purposes.to_vec(),
        config,
    };
    fetch_patiently(&connector, kms.addr, &images, &req, Duration::from_secs(30))
        .await
        .map_err(|e| format!("kms {}: {e}", kms.addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> KeyRequest {
        KeyRequest {
            version: VERSION,
            role: KmsRole::Proxy,
            identity: identity_of(&format!("0:{}", "44".repeat(32)), "").unwrap(),
            purposes: vec![Purpose::Signing, Purpose::Wallet],
            config: None,
        }
    }

    #[test]
    fn requests_are_checked() {
        assert!(req().check().is_ok());
        let mut r = req();
        r.version = 2;
        assert!(r.check().unwrap_err().contains("version"));
        let mut r = req();
        r.identity = "x".repeat(MAX_IDENTITY + 1);
        assert!(r.check().is_err());
        r.identity = "a b".into();
        assert!(r.check().is_err());
        let mut r = req();
        r.purposes = vec![];
        assert!(r.check().is_err());
        r.purposes = vec![Purpose::Disk; MAX_PURPOSES + 1];
        assert!(r.check().is_err());
        // Only a KMS gets the master, and a KMS gets nothing else.
        r.purposes = vec![Purpose::Master];
        assert!(r.check().is_err());
        r.role = KmsRole::Kms;
        assert!(r.check().is_ok());
        r.purposes = vec![Purpose::Master, Purpose::Disk];
        assert!(r.check().is_err());
    }

    #[test]
    fn identities_are_raw_addresses() {
        let raw = format!("0:{}", "44".repeat(32));
        assert_eq!(identity_of(&raw, "").unwrap(), raw);
        assert_eq!(identity_of(&raw, "gpu-1").unwrap(), format!("{raw}/gpu-1"));
        assert!(identity_of(&raw, "a/b").is_err());
        assert!(identity_of(&raw, &"x".repeat(MAX_INSTANCE + 1)).is_err());
        assert!(identity_of("nowhere", "").is_err());
        assert!(parse_image_hashes(&["ab".into()]).is_err());
        assert_eq!(
            parse_image_hashes(&["11".repeat(32)]).unwrap(),
            vec![[0x11; 32]]
        );
    }

    #[tokio::test]
    async fn messages_round_trip_and_long_ones_are_refused_unread() {
        let (mut a, mut b) = tokio::io::duplex(16 * 1024);
        write_message(&mut a, &req()).await.unwrap();
        let got: KeyRequest = read_message(&mut b).await.unwrap();
        assert_eq!(got, req());
        let refused = KeyResponse::Refused {
            reason: Refusal::ImageNotAllowed,
            detail: "x".into(),
        };
        write_message(&mut a, &refused).await.unwrap();
        let got: KeyResponse = read_message(&mut b).await.unwrap();
        assert_eq!(got, refused);
        // A length over the limit: refused before the body is read.
        a.write_all(&(MAX_MESSAGE as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let e = read_message::<_, KeyRequest>(&mut b).await.unwrap_err();
        assert!(matches!(e, FrameError::TooLong(_)), "{e}");
        // Unknown keys are refused.
        let body = br#"{"version":1,"role":"proxy","identity":"a","purposes":["disk"],"x":1}"#;
        a.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        a.write_all(body).await.unwrap();
        assert!(matches!(
            read_message::<_, KeyRequest>(&mut b).await,
            Err(FrameError::Json(_))
        ));
        let k = ReleasedKey {
            purpose: Purpose::Disk,
            key: "ab".repeat(32),
        };
        assert!(!format!("{k:?}").contains("abab"));
        assert_eq!(format!("{:?}", Secret([7; 32])), "Secret(<redacted>)");
    }

    proptest::proptest! {
        /// Whatever a peer sends: no panic, nothing buffered past the limit, and what parses
        /// is what re-encodes.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..6000), json in proptest::bool::ANY) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut input = bytes.clone();
                if json {
                    // A well-framed body, so the JSON layer is reached too.
                    let n = bytes.len().min(MAX_MESSAGE) as u32;
                    input = n.to_be_bytes().to_vec();
                    input.extend_from_slice(&bytes[..n as usize]);
                }
                let mut r: &[u8] = &input;
                if let Ok(req) = read_message::<_, KeyRequest>(&mut r).await {
                    let mut out = Vec::new();
                    write_message(&mut out, &req).await.unwrap();
                    let mut again: &[u8] = &out;
                    assert_eq!(read_message::<_, KeyRequest>(&mut again).await.unwrap(), req);
                    let _ = req.check();
                }
                let mut r: &[u8] = &input;
                if let Ok(resp) = read_message::<_, KeyResponse>(&mut r).await {
                    let mut out = Vec::new();
                    write_message(&mut out, &resp).await.unwrap();
                }
                let mut r: &[u8] = &input;
                if let Err(FrameError::TooLong(n)) = read_message::<_, KeyRequest>(&mut r).await {
                    assert!(n > MAX_MESSAGE);
                }
            });
        }
    }
}
