//! Where the master secret comes from at start: the sealed file in the state directory, else
//! another KMS (after both attested each other), else a fresh random one; then it is sealed to
//! disk when the TEE offers a sealing key. It is never written in clear.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use cocoon_ratls::net::RatlsConnector;
use cocoon_service::kms::{KeyRequest, KmsRole, Purpose, VERSION, fetch_patiently};

use crate::derive::Master;
use crate::seal::SealKey;

/// Another KMS to get the master from.
pub struct PeerKms {
    /// Its address, `host:port`.
    pub addr: String,
    /// Our identity, and its attestation verified under our peer policy.
    pub connector: RatlsConnector,
    /// The KMS images we trust with (and accept) the master.
    pub kms_images: Vec<[u8; 32]>,
    /// How long to keep trying while it is not reachable.
    pub patience: Duration,
}

/// Where the master came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterSource {
    /// Unsealed from the state directory.
    Sealed,
    /// Received from a peer KMS.
    Peer,
    /// Generated here.
    Generated,
}

/// The master, from `sealed_path` (unsealed with `seal`), else from `peer`, else generated
/// when `new_master` allows it (else an error: a lost state directory or a restarted TDX KMS
/// must not silently change every key); sealed to `sealed_path` unless it came from there or
/// `seal` is `None` (no sealing key in this TEE: the master stays in memory).
pub async fn load_master(
    sealed_path: &Path,
    seal: Option<&SealKey>,
    peer: Option<&PeerKms>,
    new_master: bool,
) -> Result<(Master, MasterSource), String> {
    if let Some(key) = seal
        && sealed_path.exists()
    {
        let bytes =
            std::fs::read(sealed_path).map_err(|e| format!("{}: {e}", sealed_path.display()))?;
        let plain = key
            .unseal(&bytes)
            .map_err(|e| format!("{}: {e}", sealed_path.display()))?;
        let m: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| format!("{}: not a 32-byte master", sealed_path.display()))?;
        return Ok((Master::from_bytes(m), MasterSource::Sealed));
    }
    let (master, source) = match peer {
        Some(p) => {
            let req = KeyRequest {
                version: VERSION,
                role: KmsRole::Kms,
                identity: "kms".into(),
                purposes: vec![Purpose::Master],
                config: None,
            };
            let mut keys = fetch_patiently(&p.connector, &p.addr, &p.kms_images, &req, p.patience)
                .await
                .map_err(|e| format!("master from peer kms {}: {e}", p.addr))?;
            let m = keys.pop().ok_or("the peer kms sent no master")?;
            (Master::from_bytes(m.0), MasterSource::Peer)
        }
        None if new_master => (
            Master::generate().map_err(|_| "random source failed")?,
            MasterSource::Generated,
        ),
        None => {
            return Err(format!(
                "no master: {} does not exist{} and no peer is configured; give peer = \
                 \"host:port\" of a KMS that has it, or new_master = true to create a new \
                 one (every key derived from it changes)",
                sealed_path.display(),
                if seal.is_none() {
                    " (this TEE cannot seal)"
                } else {
                    ""
                }
            ));
        }
    };
    if let Some(key) = seal {
        let sealed = key.seal(&master.0).map_err(|e| e.to_string())?;
        write_new(sealed_path, &sealed).map_err(|e| format!("{}: {e}", sealed_path.display()))?;
    }
    Ok((master, source))
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
