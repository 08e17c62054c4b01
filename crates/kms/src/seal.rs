//! Sealing (pure apart from [`SealKey::snp`]): the master secret on the host's disk is only
//! ever AES-256-GCM ciphertext under a key that the TEE derives and the host cannot:
//!
//! - `sim` (test networks): HKDF of the sim evidence key and the measured image hash, so a
//!   different image cannot unseal (the sim key itself is on the host's disk: sim protects
//!   nothing from the host and exists for tests);
//! - SEV-SNP (feature `snp-seal`): the firmware's derived key (`SNP_GET_DERIVED_KEY`) rooted
//!   in the chip's VCEK, with the launch measurement and the guest policy mixed in;
//! - TDX has no sealing key: a TDX KMS keeps its master in memory and gets it back from a
//!   peer KMS after a restart.
//!
//! Format: `"COCOON-SEALED-1" (15) ‖ backend (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`; the
//! first 16 bytes are the AEAD's associated data.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::derive::hkdf32;

const MAGIC: &[u8; 15] = b"COCOON-SEALED-1";
const HEADER: usize = MAGIC.len() + 1;
/// Largest sealed plaintext accepted (the master is 32 bytes).
const MAX_PLAINTEXT: usize = 1024;

/// Which TEE's key sealed a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealBackend {
    /// The sim backend's key (test networks).
    Sim,
    /// The SEV-SNP firmware's derived key.
    SevSnp,
}

impl SealBackend {
    fn tag(self) -> u8 {
        match self {
            SealBackend::Sim => 1,
            SealBackend::SevSnp => 2,
        }
    }
}

/// Why sealing or unsealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Not a sealed blob of ours.
    #[error("not a sealed file (bad header or length)")]
    Format,
    /// Sealed by another backend.
    #[error("sealed by another TEE backend")]
    OtherBackend,
    /// The tag did not verify: another key (another image, another machine) sealed it, or
    /// the bytes were changed.
    #[error("cannot unseal: sealed under another key (another image or machine) or altered")]
    WrongKey,
    /// The system's random source failed.
    #[error("random source failed")]
    Random,
    /// The TEE's sealing key could not be obtained.
    #[error("sealing key: {0}")]
    Key(String),
}

/// A 32-byte sealing key and the backend it comes from. Never printed.
pub struct SealKey {
    backend: SealBackend,
    key: [u8; 32],
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({:?}, <redacted>)", self.backend)
    }
}

impl Drop for SealKey {
    fn drop(&mut self) {
        self.key = [0; 32];
    }
}

impl SealKey {
    /// The sim sealing key: HKDF-SHA256 over the sim evidence key's bytes (its PKCS#8
    /// document) and the image hash this KMS measures as.
    pub fn sim(sim_key_pkcs8: &[u8], image_hash: &[u8; 32]) -> Self {
        SealKey {
            backend: SealBackend::Sim,
            key: hkdf32(sim_key_pkcs8, b"cocoon-kms/seal/sim", image_hash),
        }
    }

    /// The SEV-SNP sealing key from the firmware's derived key (see [`snp_key_request`]),
    /// passed through HKDF so the raw firmware key is used for nothing else.
    #[cfg(feature = "snp-seal")]
    pub fn snp() -> Result<Self, SealError> {
        let mut fw = sev::firmware::guest::Firmware::open()
            .map_err(|e| SealError::Key(format!("/dev/sev-guest: {e}")))?;
        let raw = fw
            .get_derived_key(Some(1), snp_key_request())
            .map_err(|e| SealError::Key(format!("SNP_GET_DERIVED_KEY: {e}")))?;
        Ok(Self::from_snp_derived(&raw))
    }

    /// The sealing key from the firmware's 32-byte derived key.
    pub fn from_snp_derived(raw: &[u8; 32]) -> Self {
        SealKey {
            backend: SealBackend::SevSnp,
            key: hkdf32(raw, b"cocoon-kms/seal/sev-snp", b"master"),
        }
    }

    /// The backend of this key.
    pub fn backend(&self) -> SealBackend {
        self.backend
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.key).expect("a 32-byte key fits AES-256-GCM"),
        )
    }

    /// Seals `plain` (at most 1 KiB) under a fresh random nonce.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        if plain.len() > MAX_PLAINTEXT {
            return Err(SealError::Format);
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(HEADER + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(self.backend.tag());
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..HEADER]),
                &mut body,
            )
            .map_err(|_| SealError::Format)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`SealKey::seal`] produced under the same key.
    pub fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < HEADER + NONCE_LEN + 16
            || sealed.len() > HEADER + NONCE_LEN + MAX_PLAINTEXT + 16
            || &sealed[..MAGIC.len()] != MAGIC
        {
            return Err(SealError::Format);
        }
        if sealed[MAGIC.len()] != self.backend.tag() {
            return Err(SealError::OtherBackend);
        }
        let (head, rest) = sealed.split_at(HEADER);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Format)?;
        let mut body = body.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(head), &mut body)
            .map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }
}

/// The derived-key request the SEV-SNP KMS sends its firmware: root key VCEK (bound to this
/// chip), mixing in the launch measurement (another image gets another key) and the guest
/// policy (a debuggable launch of the same image gets another key); VMPL 0, guest SVN 0, TCB
/// version 0.
#[cfg(feature = "snp-seal")]
pub fn snp_key_request() -> sev::firmware::guest::DerivedKey {
    use sev::firmware::guest::{DerivedKey, GuestFieldSelect};
    let mut fields = GuestFieldSelect::default();
    fields.set_measurement(true);
    fields.set_guest_policy(true);
    DerivedKey::new(false, fields, 0, 0, 0, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_image_cannot_unseal() {
        let sim_key = b"pkcs8 document of the sim key";
        let k = SealKey::sim(sim_key, &[1; 32]);
        let sealed = k.seal(&[9; 32]).unwrap();
        assert!(!sealed.windows(32).any(|w| w == [9; 32]), "no plaintext");
        assert_eq!(k.unseal(&sealed).unwrap(), vec![9; 32]);
        // Another image hash, another sim key: both fail.
        let other_image = SealKey::sim(sim_key, &[2; 32]);
        assert!(matches!(
            other_image.unseal(&sealed),
            Err(SealError::WrongKey)
        ));
        let other_machine = SealKey::sim(b"another sim key", &[1; 32]);
        assert!(matches!(
            other_machine.unseal(&sealed),
            Err(SealError::WrongKey)
        ));
        // Altered bytes, a wrong backend, garbage.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(k.unseal(&bad), Err(SealError::WrongKey)));
        let snp = SealKey::from_snp_derived(&[3; 32]);
        assert!(matches!(snp.unseal(&sealed), Err(SealError::OtherBackend)));
        assert!(matches!(k.unseal(b"short"), Err(SealError::Format)));
        assert!(matches!(k.unseal(&[0; 100]), Err(SealError::Format)));
        // Two seals of the same plaintext differ (fresh nonces).
        assert_ne!(k.seal(&[9; 32]).unwrap(), sealed);
        assert!(!format!("{k:?}").contains("09"));
    }

    #[test]
    fn snp_sealing_round_trips_and_binds_to_the_firmware_key() {
        let k = SealKey::from_snp_derived(&[3; 32]);
        let sealed = k.seal(b"master").unwrap();
        assert_eq!(k.unseal(&sealed).unwrap(), b"master");
        // Another measurement means another firmware key.
        let other = SealKey::from_snp_derived(&[4; 32]);
        assert!(matches!(other.unseal(&sealed), Err(SealError::WrongKey)));
    }

    #[cfg(feature = "snp-seal")]
    #[test]
    fn the_snp_request_mixes_in_measurement_and_policy_from_the_vcek() {
        let r = snp_key_request();
        assert_eq!(r.get_root_key_select(), 0, "VCEK");
        assert!(r.guest_field_select.get_measurement());
        assert!(r.guest_field_select.get_guest_policy());
        assert!(!r.guest_field_select.get_image_id());
        assert_eq!(r.vmpl, 0);
        // Without the firmware (no /dev/sev-guest here) it is a typed error, not a panic.
        if !std::path::Path::new("/dev/sev-guest").exists() {
            assert!(matches!(SealKey::snp(), Err(SealError::Key(_))));
        }
    }
}
