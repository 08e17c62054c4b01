//! What `cocoon attest gen-cert` and `verify-cert` do and report: an identity written as PEM
//! files, the image hash its evidence claims, and a certificate checked as the RA-TLS
//! verifier checks it, described as JSON and text lines (as [`cocoon_attest::inspect`]
//! describes raw evidence).

use std::io::Write;
use std::path::{Path, PathBuf};

use cocoon_attest::inspect::{Inspection, utc};
use cocoon_attest::{Backend, Measurements, Policy, VerifiedPeer};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

use crate::cert::{EvidenceEnvelope, Identity};
use crate::verifier::{RatlsVerifier, VerifierConfig, fixed_clock};

/// A file or directory that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done (`create`, `write`, ...).
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// `der` as a PEM block with LF line endings.
pub fn pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// Where [`write_identity`] put the certificate and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// Writes `id` as `DIR/key.pem` (PKCS#8, mode 0600) and `DIR/cert.pem` (mode 0644), creating
/// `dir` if missing.
pub fn write_identity(id: &Identity, dir: &Path) -> Result<IdentityFiles, FileError> {
    std::fs::create_dir_all(dir).map_err(|source| FileError {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;
    let files = IdentityFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    write_file(
        &files.key,
        pem("PRIVATE KEY", id.key_pkcs8()).as_bytes(),
        0o600,
    )?;
    write_file(
        &files.cert,
        pem("CERTIFICATE", id.cert_der()).as_bytes(),
        0o644,
    )?;
    Ok(files)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| FileError {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its mode through `open`; set it explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

/// The image hash to show for a generated identity: for sim, as the verifier reports it;
/// for TDX and SEV-SNP, computed from the quote/report body (no collateral needed), marked
/// unverified.
pub fn image_hash_line(id: &Identity, now: u64) -> String {
    let env = match EvidenceEnvelope::decode(id.evidence()) {
        Ok(env) => env,
        Err(e) => return format!("unknown ({e})"),
    };
    if let EvidenceEnvelope::Sim(_) = env {
        let mut policy = Policy::sim_test();
        policy.allowed_backends = vec![Backend::Sim];
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = fixed_clock(now);
        cfg.cache_ttl_secs = 0;
        return RatlsVerifier::new(cfg)
            .verify_cert(id.cert_der(), &[])
            .map(|p| hex::encode(p.image_hash()))
            .unwrap_or_else(|e| format!("unknown ({e})"));
    }
    match env.unverified_image_hash() {
        Ok(h) => format!(
            "{} (computed from the evidence; not verified)",
            hex::encode(h)
        ),
        Err(e) => format!("unknown ({e})"),
    }
}

/// A role's own attestation as it publishes it: the TEE of its certificate's evidence and
/// the image hash (sim: as the verifier reports it; TDX and SEV-SNP: computed from the
/// evidence, whose verification is the peers' business). `None` for a certificate without
/// evidence or with evidence that does not decode.
pub fn own_attestation(der: &CertificateDer<'_>, now: u64) -> Option<(&'static str, [u8; 32])> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).ok()?;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == crate::cert::OID_EVIDENCE_STR)?;
    let env = EvidenceEnvelope::decode(ext.value).ok()?;
    let backend = match env {
        EvidenceEnvelope::Tdx(_) => Backend::Tdx,
        EvidenceEnvelope::SevSnp { .. } => Backend::SevSnp,
        EvidenceEnvelope::Sim(_) => Backend::Sim,
        EvidenceEnvelope::FakeTdx(_) => Backend::FakeTdx,
    };
    if backend == Backend::Sim {
        let mut policy = Policy::sim_test();
        policy.allowed_backends = vec![Backend::Sim];
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = fixed_clock(now);
        cfg.cache_ttl_secs = 0;
        let peer = RatlsVerifier::new(cfg).verify_cert(der, &[]).ok()?;
        return Some((backend.name(), *peer.image_hash()));
    }
    Some((backend.name(), env.unverified_image_hash().ok()?))
}

/// The lines describing an identity with `tee` evidence just written to `files`.
pub fn generated_lines(
    id: &Identity,
    files: &IdentityFiles,
    tee: Backend,
    now: u64,
) -> Vec<String> {
    vec![
        format!("certificate:    {}", files.cert.display()),
        format!("key:            {} (mode 0600)", files.key.display()),
        format!("public key:     {}", hex::encode(id.public_key())),
        format!("evidence:       {tee}"),
        format!("image hash:     {}", image_hash_line(id, now)),
        format!(
            "validity:       {} .. {}",
            utc(id.not_before()),
            utc(id.not_after())
        ),
    ]
}

/// A verified peer's facts (what a handshake established) as JSON and as text lines:
/// backend, image hash, TCB status and advisories, measurements, the certificate key and
/// how long the verdict holds.
pub fn describe_peer(peer: &VerifiedPeer) -> (Value, Vec<String>) {
    let measurements = match peer.measurements() {
        Measurements::Tdx(m) => cocoon_attest::inspect::tdx_measurements_json(m),
        Measurements::SevSnp {
            measurement,
            host_data,
        } => json!({
            "measurement": hex::encode(measurement),
            "host_data": hex::encode(host_data),
        }),
        Measurements::Sim { measurement, rtmr3 } => json!({
            "measurement": hex::encode(measurement),
            "rtmr3": rtmr3.map(hex::encode),
        }),
        Measurements::Unattested => json!({}),
    };
    let advisories = if peer.advisory_ids().is_empty() {
        "none".to_owned()
    } else {
        peer.advisory_ids().join(", ")
    };
    let key = peer.public_key().map_or("none".into(), hex::encode);
    let mut t = vec![
        format!("backend:        {}", peer.backend()),
        format!("image hash:     {}", hex::encode(peer.image_hash())),
        format!("tcb status:     {:?}", peer.tcb_status()),
        format!("advisories:     {advisories}"),
    ];
    match peer.measurements() {
        Measurements::Tdx(m) => {
            t.push(format!("mrtd:           {}", hex::encode(m.mrtd)));
            for (i, r) in m.rtmr.iter().enumerate() {
                t.push(format!("rtmr{i}:          {}", hex::encode(r)));
            }
            t.push(format!("td attributes:  {}", hex::encode(m.td_attributes)));
        }
        Measurements::SevSnp {
            measurement,
            host_data,
        } => {
            t.push(format!("measurement:    {}", hex::encode(measurement)));
            t.push(format!("host data:      {}", hex::encode(host_data)));
        }
        Measurements::Sim { measurement, rtmr3 } => {
            t.push(format!(
                "measurement:    {} (sim)",
                hex::encode(measurement)
            ));
            if let Some(r) = rtmr3 {
                t.push(format!("rtmr3:          {} (sim)", hex::encode(r)));
            }
        }
        Measurements::Unattested => t.push("measurements:   none (no evidence)".into()),
    }
    t.push(format!("public key:     {key}"));
    t.push(format!(
        "valid until:    {} ({})",
        peer.valid_until(),
        utc(peer.valid_until())
    ));
    let json = json!({
        "backend": peer.backend().name(),
        "image_hash": hex::encode(peer.image_hash()),
        "tcb_status": format!("{:?}", peer.tcb_status()),
        "advisory_ids": peer.advisory_ids(),
        "measurements": measurements,
        "public_key": peer.public_key().map(hex::encode),
        "valid_until": peer.valid_until(),
    });
    (json, t)
}

/// A certificate from a file's bytes: PEM when it starts like PEM, else DER.
pub fn cert_from_pem_or_der(
    raw: Vec<u8>,
) -> Result<CertificateDer<'static>, rustls::pki_types::pem::Error> {
    use rustls::pki_types::pem::PemObject;
    if raw.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateDer::from_pem_slice(&raw)
    } else {
        Ok(CertificateDer::from(raw))
    }
}

/// Verifies `der` with `verifier` (policy named `policy` in the description) at `now`, and
/// describes the verdict with the certificate's own (unverified) validity and key.
pub fn inspect_cert(
    der: &CertificateDer<'_>,
    verifier: &RatlsVerifier,
    policy: &str,
    now: u64,
) -> Inspection {
    let result: Result<VerifiedPeer, String> =
        verifier.verify_cert(der, &[]).map_err(|e| e.to_string());
    // Unverified facts from the certificate itself, for display.
    use x509_parser::prelude::FromDer;
    let parsed = x509_parser::certificate::X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| {
            (
                c.validity().not_before.timestamp(),
                c.validity().not_after.timestamp(),
                hex::encode(c.public_key().subject_public_key.data.as_ref()),
            )
        });
    let mut out = match &result {
        Ok(peer) => json!({
            "valid": true,
            "error": null,
            "backend": peer.backend().name(),
            "tcb_status": format!("{:?}", peer.tcb_status()),
            "image_hash": hex::encode(peer.image_hash()),
            "public_key": peer.public_key().map(hex::encode),
            "valid_until": peer.valid_until(),
        }),
        Err(e) => json!({ "valid": false, "error": e }),
    };
    out["policy"] = json!(policy);
    out["now"] = json!(now);
    if let Some((nb, na, pk)) = &parsed {
        out["not_before"] = json!(nb);
        out["not_after"] = json!(na);
        if result.is_err() {
            out["public_key_unverified"] = json!(pk);
        }
    }
    let mut t = Vec::new();
    match &result {
        Ok(peer) => {
            t.push(format!("status:         accepted (policy {policy})"));
            t.push(format!("backend:        {}", peer.backend()));
            t.push(format!("tcb status:     {:?}", peer.tcb_status()));
            t.push(format!(
                "image hash:     {}",
                hex::encode(peer.image_hash())
            ));
            t.push(format!(
                "public key:     {}",
                peer.public_key().map_or("none".into(), hex::encode)
            ));
            t.push(format!(
                "evidence until: {} ({})",
                peer.valid_until(),
                utc(peer.valid_until())
            ));
        }
        Err(e) => {
            t.push(format!("status:         rejected (policy {policy}): {e}"));
            if let Some((_, _, pk)) = &parsed {
                t.push("(the values below are parsed from the certificate, NOT verified)".into());
                t.push(format!("public key:     {pk}"));
            }
        }
    }
    if let Some((nb, na, _)) = parsed {
        let at = |x: i64| u64::try_from(x).map_or(x.to_string(), utc);
        t.push(format!(
            "validity:       {} .. {}; now {}",
            at(nb),
            at(na),
            utc(now)
        ));
    }
    Inspection {
        result,
        json: out,
        text: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{FixedSource, SimSource};
    use cocoon_attest::SimKey;

    const NOW: u64 = 1_772_707_833;

    #[test]
    fn pem_base64() {
        assert_eq!(
            pem("X", b"foobar!"),
            "-----BEGIN X-----\nZm9vYmFyIQ==\n-----END X-----\n"
        );
        assert!(pem("X", b"fo").contains("\nZm8=\n"));
    }

    #[test]
    fn gen_cert_image_hash_from_quote_without_collateral() {
        let quote = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testvectors/attest/cocoon_quote.dat"
        ))
        .unwrap();
        let id = Identity::generate(&FixedSource(quote), NOW).unwrap();
        assert_eq!(
            image_hash_line(&id, NOW),
            "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436 \
             (computed from the evidence; not verified)"
        );
        let sim = SimSource(SimKey::generate().unwrap());
        let id = Identity::generate(&sim, NOW).unwrap();
        assert_eq!(
            image_hash_line(&id, NOW),
            hex::encode(cocoon_attest::sim::sim_image_hash())
        );
        let id = Identity::generate(&FixedSource(b"junk".to_vec()), NOW).unwrap();
        assert!(image_hash_line(&id, NOW).starts_with("unknown ("));
    }

    #[test]
    fn own_attestation_names_the_tee_and_image_of_a_certificate() {
        let sim = SimSource(SimKey::generate().unwrap());
        let id = Identity::generate(&sim, NOW).unwrap();
        assert_eq!(
            own_attestation(id.cert_der(), NOW),
            Some(("sim", cocoon_attest::sim::sim_image_hash()))
        );
        let quote = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testvectors/attest/cocoon_quote.dat"
        ))
        .unwrap();
        let id = Identity::generate(&FixedSource(quote), NOW).unwrap();
        let (tee, hash) = own_attestation(id.cert_der(), NOW).unwrap();
        assert_eq!(tee, "tdx");
        assert_eq!(
            hex::encode(hash),
            "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436"
        );
        let id = Identity::generate(&FixedSource(b"junk".to_vec()), NOW).unwrap();
        assert_eq!(own_attestation(id.cert_der(), NOW), None);
        assert_eq!(
            own_attestation(&CertificateDer::from(vec![1, 2, 3]), NOW),
            None
        );
    }

    #[test]
    fn verified_peers_are_described_with_their_measurements() {
        let tv = |name: &str| {
            std::fs::read(format!(
                "{}/../../testvectors/attest/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let collateral =
            cocoon_attest::TdxCollateral::from_json(&tv("cocoon_quote_collateral_90c06f.json"))
                .unwrap();
        let mut policy = Policy::tdx_default();
        cocoon_attest::inspect::allow_statuses(&mut policy, &[cocoon_attest::TcbStatus::Revoked]);
        let peer = cocoon_attest::inspect::inspect_tdx_quote(
            &tv("cocoon_quote.dat"),
            Ok(collateral),
            &policy,
            NOW,
        )
        .result
        .unwrap();
        let (json, lines) = describe_peer(&peer);
        assert_eq!(json["backend"], "tdx");
        assert_eq!(
            json["image_hash"],
            "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436"
        );
        let Measurements::Tdx(m) = peer.measurements() else {
            panic!("tdx measurements")
        };
        assert_eq!(json["measurements"]["mrtd"], hex::encode(m.mrtd));
        assert_eq!(json["measurements"]["rtmr"][3], hex::encode(m.rtmr[3]));
        assert_eq!(lines[0], "backend:        tdx");
        assert!(lines.contains(&format!("mrtd:           {}", hex::encode(m.mrtd))));
        assert!(lines.contains(&format!("rtmr2:          {}", hex::encode(m.rtmr[2]))));
        assert!(lines.last().unwrap().starts_with("valid until:"));

        let sim = SimSource(SimKey::generate().unwrap());
        let id = Identity::generate(&sim, NOW).unwrap();
        let mut policy = Policy::sim_test();
        policy.allowed_backends = vec![Backend::Sim];
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = fixed_clock(NOW);
        let peer = RatlsVerifier::new(cfg)
            .verify_cert(id.cert_der(), &[])
            .unwrap();
        let (json, lines) = describe_peer(&peer);
        assert_eq!(json["public_key"], hex::encode(id.public_key()));
        assert!(lines.contains(&format!("measurement:    {} (sim)", "ff".repeat(48))));
    }

    #[test]
    fn written_identity_verifies_and_is_described() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sim = SimSource(SimKey::generate().unwrap());
        let id = Identity::generate(&sim, NOW).unwrap();
        let files = write_identity(&id, &dir.path().join("out")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&files.key), mode(&files.cert)), (0o600, 0o644));
        let lines = generated_lines(&id, &files, Backend::Sim, NOW);
        assert_eq!(lines[3], "evidence:       sim");

        let der = cert_from_pem_or_der(std::fs::read(&files.cert).unwrap()).unwrap();
        assert_eq!(&der, id.cert_der());
        let mut policy = Policy::sim_test();
        policy.allowed_backends = vec![Backend::Sim];
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = fixed_clock(NOW);
        let ok = inspect_cert(&der, &RatlsVerifier::new(cfg), "sim", NOW);
        assert_eq!(ok.json["backend"], "sim");
        assert_eq!(ok.text[0], "status:         accepted (policy sim)");
        assert!(ok.text.last().unwrap().starts_with("validity:"));

        let tdx = VerifierConfig::new(Policy::tdx_default());
        let refused = inspect_cert(&der, &RatlsVerifier::new(tdx), "tdx", NOW);
        assert_eq!(refused.json["valid"], false);
        assert_eq!(
            refused.json["public_key_unverified"].as_str().map(str::len),
            Some(64)
        );
        assert!(refused.text[0].starts_with("status:         rejected (policy tdx): "));
    }
}
