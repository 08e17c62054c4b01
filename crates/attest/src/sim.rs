//! Simulated evidence for development and test networks.
//!
//! Format (version 1, 172 bytes):
//! `magic "COCOON-SIM-1" (12) ‖ report_data (64) ‖ signer Ed25519 public key (32) ‖
//! Ed25519 signature (64) over magic ‖ report_data ‖ public key`.
//!
//! Version 2 (220 bytes) carries an emulated RTMR3, the register a TDX guest's boot extends
//! with the role's configuration (ARCHITECTURE D14):
//! `magic "COCOON-SIM-2" (12) ‖ report_data (64) ‖ rtmr3 (48) ‖ public key (32) ‖
//! signature (64) over everything before it`. A sim signer produces it when its machine has
//! a measured configuration ([`SimKey::with_rtmr3`]), version 1 otherwise.
//!
//! The measurement is the reserved value [`SIM_MEASUREMENT`] (all 0xFF), and the image
//! hash is the TDX image hash computed with every register set to it (RTMR3 replaced by the
//! emulated one in version 2), so it can never collide with a real image and no production
//! allowlist contains it; two sim machines measuring different configurations have different
//! image hashes, as two TDX guests would.

use std::io::Write;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::AttestError;

/// First bytes of simulated evidence.
pub const SIM_MAGIC: &[u8; 12] = b"COCOON-SIM-1";
/// First bytes of version-2 simulated evidence (with an emulated RTMR3).
pub const SIM_MAGIC_V2: &[u8; 12] = b"COCOON-SIM-2";
/// Length of simulated evidence: magic, report data, public key, signature.
pub const SIM_EVIDENCE_LEN: usize = 12 + 64 + 32 + 64;
/// Length of version-2 simulated evidence: magic, report data, RTMR3, public key, signature.
pub const SIM_EVIDENCE_V2_LEN: usize = 12 + 64 + 48 + 32 + 64;
/// Reserved measurement of simulated evidence.
pub const SIM_MEASUREMENT: [u8; 48] = [0xFF; 48];

/// Image hash reported for simulated evidence without a measured configuration.
pub fn sim_image_hash() -> [u8; 32] {
    sim_image_hash_for(None)
}

/// Image hash of simulated evidence whose emulated RTMR3 is `rtmr3` (`None`: version 1,
/// every register the reserved value).
pub fn sim_image_hash_for(rtmr3: Option<&[u8; 48]>) -> [u8; 32] {
    let m = &SIM_MEASUREMENT;
    crate::tdx::image_hash_of(m, m, m, m, &[*m, *m, *m, *rtmr3.unwrap_or(m)])
}

/// Per-installation Ed25519 key that signs simulated evidence.
pub struct SimKey {
    pair: Ed25519KeyPair,
    rtmr3: Option<[u8; 48]>,
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
        Ok(Self { pair, rtmr3: None })
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
                .map(|pair| Self { pair, rtmr3: None })
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
                Ok(Self { pair, rtmr3: None })
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

    /// This signer on a machine whose emulated RTMR3 is `rtmr3` (its evidence becomes
    /// version 2); `None` keeps version 1.
    pub fn with_rtmr3(mut self, rtmr3: Option<[u8; 48]>) -> Self {
        self.rtmr3 = rtmr3;
        self
    }

    /// The emulated RTMR3 this signer reports, if any.
    pub fn rtmr3(&self) -> Option<&[u8; 48]> {
        self.rtmr3.as_ref()
    }

    /// The image hash a verifier computes for this signer's evidence.
    pub fn image_hash(&self) -> [u8; 32] {
        sim_image_hash_for(self.rtmr3.as_ref())
    }

    /// Produce simulated evidence binding `report_data`.
    pub fn evidence(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIM_EVIDENCE_V2_LEN);
        match &self.rtmr3 {
            None => out.extend_from_slice(SIM_MAGIC),
            Some(_) => out.extend_from_slice(SIM_MAGIC_V2),
        }
        out.extend_from_slice(report_data);
        if let Some(r) = &self.rtmr3 {
            out.extend_from_slice(r);
        }
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
    pub rtmr3: Option<[u8; 48]>,
}

pub(crate) fn verify_evidence(evidence: &[u8]) -> Result<SimVerified, AttestError> {
    let v2 = match evidence.len() {
        SIM_EVIDENCE_LEN => false,
        SIM_EVIDENCE_V2_LEN => true,
        n => {
            return Err(AttestError::Malformed(format!(
                "sim evidence is {n} bytes, expected {SIM_EVIDENCE_LEN} or {SIM_EVIDENCE_V2_LEN}"
            )));
        }
    };
    let magic = if v2 { SIM_MAGIC_V2 } else { SIM_MAGIC };
    if &evidence[..12] != magic {
        return Err(AttestError::Malformed("sim evidence: bad magic".into()));
    }
    let (signed, sig) = evidence.split_at(evidence.len() - 64);
    let mut report_data = [0u8; 64];
    report_data.copy_from_slice(&signed[12..76]);
    let rtmr3 = v2.then(|| {
        let mut r = [0u8; 48];
        r.copy_from_slice(&signed[76..124]);
        r
    });
    let mut signer = [0u8; 32];
    signer.copy_from_slice(&signed[signed.len() - 32..]);
    UnparsedPublicKey::new(&ED25519, &signer)
        .verify(signed, sig)
        .map_err(|_| AttestError::SimBadSignature)?;
    Ok(SimVerified {
        report_data,
        signer,
        rtmr3,
    })
}
