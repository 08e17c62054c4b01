//! Simulated evidence for development and test networks.
//!
//! Format (version 1, 172 bytes):
//! `magic "COCOON-SIM-1" (12) ‖ report_data (64) ‖ signer Ed25519 public key (32) ‖
//! Ed25519 signature (64) over magic ‖ report_data ‖ public key`.
//!
//! The measurement is the reserved value [`SIM_MEASUREMENT`] (all 0xFF), and the image
//! hash is the TDX image hash computed with every register set to it, so it can
//! never collide with a real image and no production allowlist contains it.

use std::io::Write;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::AttestError;

/// First bytes of simulated evidence.
pub const SIM_MAGIC: &[u8; 12] = b"COCOON-SIM-1";
/// Length of simulated evidence: magic, report data, public key, signature.
pub const SIM_EVIDENCE_LEN: usize = 12 + 64 + 32 + 64;
/// Reserved measurement of simulated evidence.
pub const SIM_MEASUREMENT: [u8; 48] = [0xFF; 48];

/// Image hash reported for simulated evidence.
pub fn sim_image_hash() -> [u8; 32] {
    let m = &SIM_MEASUREMENT;
    crate::tdx::image_hash_of(m, m, m, m, &[*m; 4])
}

/// Per-installation Ed25519 key that signs simulated evidence.
pub struct SimKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimKey({})", hex::encode(self.public_key()))
    }
}

impl SimKey {
    /// A fresh in-memory key.
    pub fn generate() -> Result<Self, AttestError> {
        let (_, pair) = Self::generate_pkcs8()?;
        Ok(Self { pair })
    }

    fn generate_pkcs8() -> Result<(Vec<u8>, Ed25519KeyPair), AttestError> {
        let bad = |reason: &str| AttestError::SimKey {
            path: "<memory>".into(),
            reason: reason.into(),
        };
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| bad("key generation failed"))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| bad("generated key invalid"))?;
        Ok((doc.as_ref().to_vec(), pair))
    }

    /// Load the PKCS#8 key at `path`, or create it (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, AttestError> {
        let err = |reason: String| AttestError::SimKey {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(path) {
            Ok(doc) => Ed25519KeyPair::from_pkcs8(&doc)
                .map(|pair| Self { pair })
                .map_err(|e| err(format!("not an Ed25519 PKCS#8 key: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (doc, pair) = Self::generate_pkcs8()?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
                f.write_all(&doc).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                Ok(Self { pair })
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The Ed25519 public key that signs the evidence.
    pub fn public_key(&self) -> [u8; 32] {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        pk
    }

    /// Produce simulated evidence binding `report_data`.
    pub fn evidence(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIM_EVIDENCE_LEN);
        out.extend_from_slice(SIM_MAGIC);
        out.extend_from_slice(report_data);
        out.extend_from_slice(&self.public_key());
        let sig = self.pair.sign(&out);
        out.extend_from_slice(sig.as_ref());
        out
    }
}

/// Simulated evidence whose signature has been checked.
#[derive(Debug, Clone)]
pub(crate) struct SimVerified {
    pub report_data: [u8; 64],
    pub signer: [u8; 32],
}

pub(crate) fn verify_evidence(evidence: &[u8]) -> Result<SimVerified, AttestError> {
    if evidence.len() != SIM_EVIDENCE_LEN {
        return Err(AttestError::Malformed(format!(
            "sim evidence is {} bytes, expected {SIM_EVIDENCE_LEN}",
            evidence.len()
        )));
    }
    if &evidence[..12] != SIM_MAGIC {
        return Err(AttestError::Malformed("sim evidence: bad magic".into()));
    }
    let (signed, sig) = evidence.split_at(12 + 64 + 32);
    let mut report_data = [0u8; 64];
    report_data.copy_from_slice(&signed[12..76]);
    let mut signer = [0u8; 32];
    signer.copy_from_slice(&signed[76..108]);
    UnparsedPublicKey::new(&ED25519, &signer)
        .verify(signed, sig)
        .map_err(|_| AttestError::SimBadSignature)?;
    Ok(SimVerified {
        report_data,
        signer,
    })
}
