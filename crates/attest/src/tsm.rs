//! Quote generation through the Linux configfs-tsm report interface (Linux ≥ 6.7):
//! create `<root>/<name>`, check `provider`, read `generation`, write the 64-byte
//! `inblob`, read `outblob` (and `auxblob` for SEV-SNP), check that `generation`
//! advanced by exactly one (no concurrent writer), remove the directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default configfs-tsm report directory.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// Which kernel provider must serve the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsmProvider {
    /// Intel TDX (`tdx_guest`).
    TdxGuest,
    /// AMD SEV-SNP (`sev_guest`).
    SevGuest,
}

impl TsmProvider {
    /// The provider's name as configfs-tsm reports it.
    pub fn name(self) -> &'static str {
        match self {
            TsmProvider::TdxGuest => "tdx_guest",
            TsmProvider::SevGuest => "sev_guest",
        }
    }
}

/// Why a configfs-tsm report could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TsmError {
    /// A file operation failed.
    #[error("configfs-tsm: {op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The kernel's provider is not the one asked for.
    #[error("configfs-tsm provider is {found:?}, expected {expected:?}")]
    WrongProvider {
        /// The provider asked for.
        expected: &'static str,
        /// The provider found.
        found: String,
    },
    /// A generation file that does not hold a number.
    #[error("configfs-tsm generation {path}: not a number: {value:?}")]
    BadGeneration {
        /// The generation file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
    /// Another writer used the report directory at the same time.
    #[error(
        "configfs-tsm generation went from {before} to {after} (expected +1): concurrent writer"
    )]
    GenerationRace {
        /// Generation before the request.
        before: u64,
        /// Generation after it.
        after: u64,
    },
    /// The kernel returned no evidence.
    #[error("configfs-tsm returned an empty outblob")]
    EmptyOutblob,
}

/// File operations used by [`Tsm`]; [`StdFs`] is the real one. Tests substitute a fake
/// kernel that reacts to writes.
pub trait TsmFs: Send + Sync {
    /// Creates a directory.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Writes a whole file.
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Removes a directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
}

/// Plain `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl TsmFs for StdFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// Evidence returned by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    /// The provider that produced it.
    pub provider: TsmProvider,
    /// The TDX quote or SEV-SNP attestation report.
    pub outblob: Vec<u8>,
    /// SEV-SNP certificate table (VCEK etc.), when the kernel provides one.
    pub auxblob: Option<Vec<u8>>,
}

/// configfs-tsm client.
pub struct Tsm<F: TsmFs = StdFs> {
    root: PathBuf,
    provider: TsmProvider,
    fs: F,
}

impl Tsm<StdFs> {
    /// Client for `provider` under [`DEFAULT_ROOT`].
    pub fn new(provider: TsmProvider) -> Self {
        Self::with_root(DEFAULT_ROOT, provider)
    }

    /// Client for `provider` under `root`.
    pub fn with_root(root: impl Into<PathBuf>, provider: TsmProvider) -> Self {
        Self::with_fs(root, provider, StdFs)
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TsmError + 'a {
    move |source| TsmError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl<F: TsmFs> Tsm<F> {
    /// Client for `provider` under `root`, through `fs`.
    pub fn with_fs(root: impl Into<PathBuf>, provider: TsmProvider, fs: F) -> Self {
        Self {
            root: root.into(),
            provider,
            fs,
        }
    }

    /// The report directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Ask the kernel for a quote/report binding `report_data`.
    pub fn get_report(&self, report_data: &[u8; 64]) -> Result<TsmReport, TsmError> {
        let name = format!(
            "cocoon-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.root.join(name);
        self.fs
            .create_dir(&dir)
            .map_err(io_err("create directory", &dir))?;
        let result = self.exchange(&dir, report_data);
        let removed = self
            .fs
            .remove_dir(&dir)
            .map_err(io_err("remove directory", &dir));
        let report = result?;
        removed?;
        Ok(report)
    }

    fn read_generation(&self, path: &Path) -> Result<u64, TsmError> {
        let raw = self.fs.read(path).map_err(io_err("read", path))?;
        let text = String::from_utf8_lossy(&raw).trim().to_string();
        text.parse().map_err(|_| TsmError::BadGeneration {
            path: path.to_path_buf(),
            value: text,
        })
    }

    fn exchange(&self, dir: &Path, report_data: &[u8; 64]) -> Result<TsmReport, TsmError> {
        let provider_path = dir.join("provider");
        let provider = self
            .fs
            .read(&provider_path)
            .map_err(io_err("read", &provider_path))?;
        let provider = String::from_utf8_lossy(&provider).trim().to_string();
        if provider != self.provider.name() {
            return Err(TsmError::WrongProvider {
                expected: self.provider.name(),
                found: provider,
            });
        }
        let gen_path = dir.join("generation");
        let before = self.read_generation(&gen_path)?;
        let inblob = dir.join("inblob");
        self.fs
            .write(&inblob, report_data)
            .map_err(io_err("write", &inblob))?;
        let out_path = dir.join("outblob");
        let outblob = self.fs.read(&out_path).map_err(io_err("read", &out_path))?;
        let auxblob = if self.provider == TsmProvider::SevGuest {
            let aux_path = dir.join("auxblob");
            match self.fs.read(&aux_path) {
                Ok(a) if a.is_empty() => None,
                Ok(a) => Some(a),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("read", &aux_path)(e)),
            }
        } else {
            None
        };
        let after = self.read_generation(&gen_path)?;
        if after != before.wrapping_add(1) {
            return Err(TsmError::GenerationRace { before, after });
        }
        if outblob.is_empty() {
            return Err(TsmError::EmptyOutblob);
        }
        Ok(TsmReport {
            provider: self.provider,
            outblob,
            auxblob,
        })
    }
}
