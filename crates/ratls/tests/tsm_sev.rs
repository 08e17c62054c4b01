//! `TsmSevSource`: SEV-SNP evidence through configfs-tsm, against a fake kernel that
//! answers with the real Milan report and an `auxblob` certificate table.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cocoon_attest::sev::{self, GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, build_cert_table};
use cocoon_attest::tsm::{StdFs, Tsm, TsmFs, TsmProvider};
use cocoon_attest::{AttestError, Backend, Policy, report_data_for_public_key};
use cocoon_ratls::cert::{CertError, EvidenceEnvelope, FixedSource, Identity, TsmSevSource};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig, VerifyError, fixed_clock};

const NOW: u64 = 1_772_707_833;

/// The bytes of `testvectors/attest/sev/{name}`.
fn vector(name: &str) -> Vec<u8> {
    common::vector(&format!("sev/{name}"))
}

/// Plays the `sev_guest` provider in a temporary directory.
struct FakeSevKernel {
    provider: &'static str,
    report: Vec<u8>,
    aux: Option<Vec<u8>>,
    inblobs: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TsmFs for FakeSevKernel {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        std::fs::write(path.join("provider"), format!("{}\n", self.provider))?;
        std::fs::write(path.join("generation"), "0\n")
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap();
        self.inblobs.lock().unwrap().push(data.to_vec());
        std::fs::write(dir.join("outblob"), &self.report)?;
        if let Some(aux) = &self.aux {
            std::fs::write(dir.join("auxblob"), aux)?;
        }
        std::fs::write(dir.join("generation"), "1\n")
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
}

fn ask_ark() -> (Vec<u8>, Vec<u8>) {
    let chain = vector("cert_chain_milan");
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&chain)
        .map(|p| p.unwrap().contents)
        .collect();
    (ders[0].clone(), ders[1].clone())
}

type Inblobs = Arc<Mutex<Vec<Vec<u8>>>>;

fn source_logged(
    root: &Path,
    provider: &'static str,
    aux: Option<Vec<u8>>,
) -> (TsmSevSource<FakeSevKernel>, Inblobs) {
    let report = sev::decode_report_hex(&vector("report_milan.hex")).unwrap();
    let inblobs = Inblobs::default();
    let src = TsmSevSource(Tsm::with_fs(
        root,
        TsmProvider::SevGuest,
        FakeSevKernel {
            provider,
            report,
            aux,
            inblobs: Arc::clone(&inblobs),
        },
    ));
    (src, inblobs)
}

fn source(
    root: &Path,
    provider: &'static str,
    aux: Option<Vec<u8>>,
) -> TsmSevSource<FakeSevKernel> {
    source_logged(root, provider, aux).0
}

/// The SEV policy, relaxed only where the public sample guest needs it.
fn sev_verifier() -> Arc<RatlsVerifier> {
    let report = sev::decode_report_hex(&vector("report_milan.hex")).unwrap();
    let info = sev::parse_report(&report).unwrap();
    let policy = common::sample_sev_policy(&info);
    let mut cfg = VerifierConfig::new(policy);
    cfg.clock = fixed_clock(NOW);
    cfg.cache_ttl_secs = 0;
    RatlsVerifier::new(cfg)
}

/// The real report passes every SEV check (chain, signature, TCB, chip id) and fails only
/// because the sample guest did not bind this certificate's key.
fn assert_verified_up_to_binding(id: &Identity) {
    match sev_verifier().verify_cert(id.cert_der(), &[]) {
        Err(VerifyError::Attest(AttestError::ReportDataMismatch)) => {}
        r => panic!("expected ReportDataMismatch, got {r:?}"),
    }
}

#[test]
fn certificate_from_full_certificate_table() {
    let root = tempfile::tempdir().unwrap();
    let vcek = vector("vcek_milan.der");
    let (ask, ark) = ask_ark();
    let aux = build_cert_table(&[(GUID_VCEK, &vcek), (GUID_ASK, &ask), (GUID_ARK, &ark)]);
    let (src, inblobs) = source_logged(root.path(), "sev_guest", Some(aux));
    let id = Identity::generate(&src, NOW - 60).expect("certificate");
    // The kernel was asked to bind SHA-512 of the certificate key.
    let inblobs = inblobs.lock().unwrap().clone();
    assert_eq!(
        inblobs,
        vec![report_data_for_public_key(id.public_key()).to_vec()]
    );
    assert_verified_up_to_binding(&id);
    // The envelope carries the report, VCEK and chain; its unverified image hash is the
    // report's.
    let report = sev::decode_report_hex(&vector("report_milan.hex")).unwrap();
    match EvidenceEnvelope::decode(id.evidence()).unwrap() {
        EvidenceEnvelope::SevSnp {
            report: r,
            vcek_der,
            chain_pem,
        } => {
            assert_eq!(r, &report[..]);
            assert_eq!(vcek_der, &vcek[..]);
            sev::verify_vcek_chain(vcek_der, chain_pem, NOW as i64).expect("chain verifies");
        }
        e => panic!("expected an SEV envelope, got {e:?}"),
    }
    assert_eq!(
        EvidenceEnvelope::decode(id.evidence())
            .unwrap()
            .unverified_image_hash()
            .unwrap(),
        sev::image_hash(&sev::parse_report(&report).unwrap())
    );
    // A TDX policy refuses it as the wrong backend.
    let mut cfg = VerifierConfig::new(Policy::tdx_default());
    cfg.clock = fixed_clock(NOW);
    match RatlsVerifier::new(cfg).verify_cert(id.cert_der(), &[]) {
        Err(VerifyError::Attest(AttestError::BackendNotAllowed {
            backend: Backend::SevSnp,
        })) => {}
        r => panic!("expected BackendNotAllowed, got {r:?}"),
    }
}

#[test]
fn vcek_only_table_uses_the_builtin_chain() {
    let root = tempfile::tempdir().unwrap();
    let vcek = vector("vcek_milan.der");
    let src = source(
        root.path(),
        "sev_guest",
        Some(build_cert_table(&[(GUID_VCEK, &vcek)])),
    );
    let id = Identity::generate(&src, NOW - 60).expect("certificate");
    assert_verified_up_to_binding(&id);
}

#[test]
fn unusable_tables_are_clear_errors() {
    let vcek = vector("vcek_milan.der");
    let (ask, _) = ask_ark();
    let cases: Vec<(&str, &'static str, Option<Vec<u8>>, &str)> = vec![
        ("no auxblob", "sev_guest", None, "no auxblob"),
        (
            "VLEK only",
            "sev_guest",
            Some(build_cert_table(&[(GUID_VLEK, &vcek)])),
            "VLEK",
        ),
        (
            "no VCEK",
            "sev_guest",
            Some(build_cert_table(&[(GUID_ASK, &ask)])),
            "no VCEK",
        ),
        (
            "ASK as VCEK, no chain",
            "sev_guest",
            Some(build_cert_table(&[(GUID_VCEK, &ask)])),
            "no built-in AMD chain",
        ),
        (
            "garbage table",
            "sev_guest",
            Some(vec![7; 10]),
            "certificate table",
        ),
        (
            "TDX kernel",
            "tdx_guest",
            Some(build_cert_table(&[(GUID_VCEK, &vcek)])),
            "provider",
        ),
    ];
    for (name, provider, aux, needle) in cases {
        let root = tempfile::tempdir().unwrap();
        match Identity::generate(&source(root.path(), provider, aux), NOW) {
            Err(CertError::Source(m)) => assert!(m.contains(needle), "{name}: {m}"),
            Err(e) => panic!("{name}: expected CertError::Source, got {e}"),
            Ok(_) => panic!("{name}: expected an error"),
        }
    }
}

/// A TDX quote's image hash is computed from the quote body without collateral (what
/// `gen-cert --tee tdx` prints).
#[test]
fn tdx_image_hash_without_collateral() {
    let path = format!(
        "{}/../../testvectors/attest/cocoon_quote.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    let quote = std::fs::read(path).unwrap();
    let id = Identity::generate(&FixedSource(quote), NOW).unwrap();
    let env = EvidenceEnvelope::decode(id.evidence()).unwrap();
    assert!(matches!(env, EvidenceEnvelope::Tdx(_)));
    assert_eq!(
        hex::encode(env.unverified_image_hash().unwrap()),
        "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436"
    );
    // Garbage is an error, not a panic.
    assert!(
        EvidenceEnvelope::Tdx(b"not a quote")
            .unverified_image_hash()
            .is_err()
    );
}
