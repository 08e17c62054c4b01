//! [`VcekStore`]: the KDS cache directory; every file is verified again when read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{KdsRoots, MAX_LISTED_VCEKS, SevCertChain, SevCollateralSource, SevCrl, Vcek, VcekKey};
use crate::error::AttestError;
use crate::fs::write_atomic;
use crate::sev::{SevGeneration, SevTcb};

/// The KDS cache directory (see the module docs for the layout). Reads verify every file
/// against the pinned roots; writes take only verified values and are atomic.
#[derive(Debug, Clone)]
pub struct VcekStore {
    dir: PathBuf,
    roots: KdsRoots,
}

impl VcekStore {
    /// A store in `dir` trusting AMD's roots.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            roots: KdsRoots::amd(),
        }
    }

    /// A store trusting test roots (unit tests only).
    #[cfg(all(test, feature = "fetch"))]
    pub(crate) fn with_roots(dir: impl Into<PathBuf>, roots: KdsRoots) -> Self {
        Self {
            dir: dir.into(),
            roots,
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The AMD roots that stored data is verified against.
    pub fn roots(&self) -> &KdsRoots {
        &self.roots
    }

    /// Where a generation's chain is stored.
    pub fn chain_path(&self, product: SevGeneration) -> PathBuf {
        self.dir.join(product.name()).join("cert_chain.pem")
    }

    /// Where a generation's CRL is stored.
    pub fn crl_path(&self, product: SevGeneration) -> PathBuf {
        self.dir.join(product.name()).join("crl.der")
    }

    /// Where a VCEK is stored.
    pub fn vcek_path(&self, key: &VcekKey) -> PathBuf {
        self.dir.join(key.product.name()).join("vcek").join(format!(
            "{}-{}.der",
            hex::encode(&key.hwid),
            key.tcb.key()
        ))
    }

    fn read(&self, path: &Path, what: String) -> Result<Vec<u8>, AttestError> {
        match std::fs::read(path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(AttestError::MissingCollateral {
                    what: format!("{what} ({} does not exist)", path.display()),
                })
            }
            Err(source) => Err(AttestError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn invalid(path: &Path, reason: String) -> AttestError {
        AttestError::InvalidCollateral {
            what: path.display().to_string(),
            reason,
        }
    }

    /// The cached chain of `product`, verified against the pinned ARK at `now`.
    pub fn load_chain(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<SevCertChain, AttestError> {
        let path = self.chain_path(product);
        let pem = self.read(&path, format!("AMD {product} cert_chain"))?;
        SevCertChain::verify(product, &pem, &self.roots, now).map_err(|r| Self::invalid(&path, r))
    }

    /// The cached CRL of `product`, its signature verified against the pinned ARK.
    pub fn load_crl(&self, product: SevGeneration) -> Result<SevCrl, AttestError> {
        let path = self.crl_path(product);
        let der = self.read(&path, format!("AMD {product} CRL"))?;
        SevCrl::verify(product, &der, &self.roots).map_err(|r| Self::invalid(&path, r))
    }

    /// The cached VCEK `key`, verified against the cached chain at `now` and checked to be
    /// the VCEK of exactly that chip and TCB (a file renamed to another key is refused).
    pub fn load_vcek(&self, key: &VcekKey, now: u64) -> Result<Vcek, AttestError> {
        let chain = self.load_chain(key.product, now)?;
        self.load_vcek_with(key, &chain, now)
    }

    pub(super) fn load_vcek_with(
        &self,
        key: &VcekKey,
        chain: &SevCertChain,
        now: u64,
    ) -> Result<Vcek, AttestError> {
        let path = self.vcek_path(key);
        let der = self.read(&path, key.to_string())?;
        Vcek::verify(&der, chain, Some(key), now).map_err(|r| Self::invalid(&path, r))
    }

    /// Writes the chain atomically; returns its path.
    pub fn save_chain(&self, chain: &SevCertChain) -> Result<PathBuf, AttestError> {
        let path = self.chain_path(chain.product);
        write_atomic(&path, &chain.pem)?;
        Ok(path)
    }

    /// Writes the CRL atomically; returns its path.
    pub fn save_crl(&self, crl: &SevCrl) -> Result<PathBuf, AttestError> {
        let path = self.crl_path(crl.product);
        write_atomic(&path, &crl.der)?;
        Ok(path)
    }

    /// Writes the VCEK atomically; returns its path.
    pub fn save_vcek(&self, vcek: &Vcek) -> Result<PathBuf, AttestError> {
        let path = self.vcek_path(&vcek.key);
        write_atomic(&path, &vcek.der)?;
        Ok(path)
    }

    /// The VCEK keys named by the files under `<dir>/<product>/vcek` (names only; loading
    /// verifies the contents), at most [`MAX_LISTED_VCEKS`] entries.
    pub fn list_vceks(&self, product: SevGeneration) -> Vec<VcekKey> {
        let dir = self.dir.join(product.name()).join("vcek");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<VcekKey> = entries
            .take(MAX_LISTED_VCEKS)
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (hwid, tcb) = name.strip_suffix(".der")?.split_once('-')?;
                let hwid = hex::decode(hwid).ok()?;
                let mut t = [0u8; 5];
                hex::decode_to_slice(tcb, &mut t).ok()?;
                let key = VcekKey {
                    product,
                    hwid,
                    tcb: SevTcb {
                        fmc: t[0],
                        bootloader: t[1],
                        tee: t[2],
                        snp: t[3],
                        microcode: t[4],
                    },
                };
                key.check().ok().map(|()| key)
            })
            .collect();
        out.sort_by(|a, b| a.hwid.cmp(&b.hwid).then(a.tcb.key().cmp(&b.tcb.key())));
        out
    }
}

/// The directory as a CRL source: each lookup reads and verifies the file (an operator
/// fills the directory; nothing is fetched).
impl SevCollateralSource for VcekStore {
    fn crl(&self, product: SevGeneration, _now: u64) -> Result<Arc<SevCrl>, AttestError> {
        self.load_crl(product).map(Arc::new)
    }

    fn describe(&self) -> String {
        format!("AMD KDS cache {} (no fetching)", self.dir.display())
    }
}
