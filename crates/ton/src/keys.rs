//! Ed25519 keys: loading seeds from files, signing, verifying.
//!
//! Secrets only ever come from files (never flags or environment), and a key file that other
//! users can read is refused on unix, because a leaked proxy or wallet key lets anyone sign
//! payments. `Debug` prints only the public key.

use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Errors while loading or creating a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is neither 32 raw bytes nor 64 hex digits.
    #[error("key file {path}: expected a 32-byte seed as 32 raw bytes or 64 hex digits")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The seed was refused by the Ed25519 implementation.
    #[error("invalid Ed25519 seed")]
    Seed,
    /// The OS random generator failed.
    #[error("random generator failed")]
    Random,
}

/// An Ed25519 signing key made from a 32-byte seed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        Self::from_seed(&self.seed).expect("seed was accepted before")
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.seed = [0u8; 32];
    }
}

impl SigningKey {
    /// A key from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::Seed)?;
        Ok(Self { pair, seed: *seed })
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| KeyError::Random)?;
        Self::from_seed(&seed)
    }

    /// Loads a seed file: 32 raw bytes, or 64 hex digits (surrounding whitespace allowed).
    /// On unix a file readable by group or others is refused.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let mut bytes = std::fs::read(path).map_err(io)?;
        let result = Self::parse_seed(&bytes)
            .ok_or_else(|| KeyError::Format {
                path: path.to_owned(),
            })
            .and_then(|seed| Self::from_seed(&seed));
        bytes.iter_mut().for_each(|b| *b = 0);
        result
    }

    fn parse_seed(bytes: &[u8]) -> Option<[u8; 32]> {
        if bytes.len() == 32 {
            return bytes.try_into().ok();
        }
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let text = text.strip_prefix("0x").unwrap_or(text);
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(out)
    }

    /// Writes the seed as hex to a new file with mode 0600 (fails if the file exists).
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        let mut text = hex::encode(self.seed);
        text.push('\n');
        let r = f.write_all(text.as_bytes()).map_err(io);
        // SAFETY-free zeroing of the temporary hex copy.
        text.clear();
        r
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// Signs `msg` (for cells: the 32-byte representation hash).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

/// Verifies an Ed25519 signature.
pub fn verify(public_key: &[u8; 32], msg: &[u8], signature: &[u8; 64]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(msg, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_debug_hides_seed() {
        let k = SigningKey::from_seed(&[7u8; 32]).unwrap();
        let sig = k.sign(b"hello");
        assert!(verify(&k.public_key(), b"hello", &sig));
        assert!(!verify(&k.public_key(), b"hellp", &sig));
        let dbg = format!("{k:?}");
        assert!(dbg.contains(&hex::encode(k.public_key())));
        assert!(!dbg.contains(&hex::encode([7u8; 32])));
        assert_eq!(k.clone().public_key(), k.public_key());
    }

    /// RFC 8032 test 1: the seed 9d61b1...7f60 has public key d75a98...511a.
    #[test]
    fn rfc8032_vector() {
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let k = SigningKey::from_seed(&seed).unwrap();
        assert_eq!(
            hex::encode(k.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex::encode(k.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn files_hex_raw_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::from_seed(&[1u8; 32]).unwrap();
        let hexf = dir.path().join("k.hex");
        k.write_new_file(&hexf).unwrap();
        assert_eq!(
            SigningKey::from_file(&hexf).unwrap().public_key(),
            k.public_key()
        );
        assert!(matches!(k.write_new_file(&hexf), Err(KeyError::Io { .. })));

        let raw = dir.path().join("k.raw");
        std::fs::write(&raw, [1u8; 32]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = SigningKey::from_file(&raw).unwrap_err();
            assert!(matches!(e, KeyError::Permissions { mode: 0o644, .. }));
            assert!(e.to_string().contains("chmod 600"));
            std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(
            SigningKey::from_file(&raw).unwrap().public_key(),
            k.public_key()
        );

        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            SigningKey::from_file(&bad),
            Err(KeyError::Format { .. })
        ));
        assert!(matches!(
            SigningKey::from_file(&dir.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
    }
}
