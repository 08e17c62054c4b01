//! configfs-tsm protocol against a fake kernel backed by a temporary directory.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io;
use std::path::Path;
use std::sync::Mutex;

use cocoon_attest::tsm::{StdFs, Tsm, TsmError, TsmFs, TsmProvider};

/// Plays the kernel: populates new report directories, answers `inblob` writes with an
/// `outblob` (and `auxblob`) and bumps `generation`, and removes the attribute files with
/// the directory.
struct FakeKernel {
    provider: &'static str,
    /// Extra generation bumps per write (simulates a concurrent writer when > 0).
    extra_bumps: u64,
    log: Mutex<Vec<String>>,
}

impl FakeKernel {
    fn new(provider: &'static str) -> Self {
        Self {
            provider,
            extra_bumps: 0,
            log: Mutex::new(Vec::new()),
        }
    }
}

impl TsmFs for FakeKernel {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        std::fs::write(path.join("provider"), format!("{}\n", self.provider))?;
        std::fs::write(path.join("generation"), "0\n")?;
        self.log.lock().unwrap().push("mkdir".into());
        Ok(())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        assert_eq!(path.file_name().unwrap(), "inblob");
        assert_eq!(data.len(), 64);
        let dir = path.parent().unwrap();
        std::fs::write(path, data)?;
        let mut out = b"QUOTE:".to_vec();
        out.extend_from_slice(data);
        std::fs::write(dir.join("outblob"), out)?;
        std::fs::write(dir.join("auxblob"), b"CERTS")?;
        let g: u64 = String::from_utf8(std::fs::read(dir.join("generation"))?)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(
            dir.join("generation"),
            format!("{}\n", g + 1 + self.extra_bumps),
        )?;
        self.log.lock().unwrap().push("inblob".into());
        Ok(())
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        // configfs removes the attribute files with the directory.
        std::fs::remove_dir_all(path)?;
        self.log.lock().unwrap().push("rmdir".into());
        Ok(())
    }
}

fn empty(root: &Path) -> bool {
    std::fs::read_dir(root).unwrap().next().is_none()
}

#[test]
fn tdx_quote_generation() {
    let root = tempfile::tempdir().unwrap();
    let tsm = Tsm::with_fs(
        root.path(),
        TsmProvider::TdxGuest,
        FakeKernel::new("tdx_guest"),
    );
    let rd = [0x5a; 64];
    let r = tsm.get_report(&rd).unwrap();
    assert_eq!(r.provider, TsmProvider::TdxGuest);
    assert_eq!(&r.outblob[..6], b"QUOTE:");
    assert_eq!(&r.outblob[6..], &rd[..]);
    assert_eq!(r.auxblob, None);
    assert!(empty(root.path()), "report directory removed");
    // Twice in a row works (fresh directory each time).
    tsm.get_report(&rd).unwrap();
}

#[test]
fn sev_reads_auxblob() {
    let root = tempfile::tempdir().unwrap();
    let tsm = Tsm::with_fs(
        root.path(),
        TsmProvider::SevGuest,
        FakeKernel::new("sev_guest"),
    );
    let r = tsm.get_report(&[1; 64]).unwrap();
    assert_eq!(r.auxblob.as_deref(), Some(&b"CERTS"[..]));
}

#[test]
fn wrong_provider_and_cleanup() {
    let root = tempfile::tempdir().unwrap();
    let tsm = Tsm::with_fs(
        root.path(),
        TsmProvider::TdxGuest,
        FakeKernel::new("sev_guest"),
    );
    match tsm.get_report(&[0; 64]) {
        Err(TsmError::WrongProvider { expected, found }) => {
            assert_eq!(expected, "tdx_guest");
            assert_eq!(found, "sev_guest");
        }
        r => panic!("expected WrongProvider, got {r:?}"),
    }
    assert!(empty(root.path()), "directory removed on error too");
}

#[test]
fn concurrent_writer_detected() {
    let root = tempfile::tempdir().unwrap();
    let mut kernel = FakeKernel::new("tdx_guest");
    kernel.extra_bumps = 1;
    let tsm = Tsm::with_fs(root.path(), TsmProvider::TdxGuest, kernel);
    assert!(matches!(
        tsm.get_report(&[0; 64]),
        Err(TsmError::GenerationRace {
            before: 0,
            after: 2
        })
    ));
}

#[test]
fn missing_configfs_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let tsm = Tsm::with_root(root.path().join("nope"), TsmProvider::TdxGuest);
    let err = tsm.get_report(&[0; 64]).unwrap_err();
    assert!(
        matches!(
            err,
            TsmError::Io {
                op: "create directory",
                ..
            }
        ),
        "{err}"
    );
    // With plain std::fs on a directory that is not configfs, `provider` is missing.
    let tsm = Tsm::with_root(root.path(), TsmProvider::TdxGuest);
    let err = tsm.get_report(&[0; 64]).unwrap_err();
    assert!(err.to_string().contains("provider"), "{err}");
}
