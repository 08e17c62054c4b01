//! The chain and trust settings every role that reads TON shares (proxy, worker, client):
//! which toncenter endpoints confirm a read and how many must agree (`ton_url`/`ton_urls`,
//! `ton_api_key_file`/`ton_api_key_files`, `ton_quorum`), which extra CA bundle HTTPS
//! clients trust (`extra_ca_file`, `extra_ca_in_tee`), and the root watcher that keeps the
//! last agreed root configuration when the endpoints disagree.
//!
//! Inside a TEE the host controls the disk, the network and the environment, so nothing
//! from the environment extends the trust store (`SSL_CERT_FILE` is not read), an extra
//! bundle inside a real TEE needs `extra_ca_in_tee = true` as well, and security-relevant
//! reads go through [`QuorumChain`].

use std::path::Path;
use std::time::Duration;

use cocoon_ton::StdAddr;
use cocoon_ton::chain::{Chain, ChainError, load_root_config};
use cocoon_ton::quorum::{QuorumChain, QuorumConfig, QuorumConfigError, check_quorum};
use cocoon_ton::root::RootConfig;
use cocoon_ton::toncenter::ToncenterConfig;
use rustls::pki_types::CertificateDer;

use crate::config::{ConfigError, Layers};

/// The chain client of a role: one endpoint (quorum 1) behaves as a plain toncenter client.
pub type Ton = QuorumChain;

/// A role's endpoint settings, as its defaults file declares them.
pub struct TonSettings<'a> {
    /// `ton_url`: the one endpoint when `ton_urls` is empty.
    pub url: &'a str,
    /// `ton_urls`: independently operated endpoints.
    pub urls: &'a [String],
    /// `ton_api_key_file`: the key for `ton_url` (or for every endpoint of `ton_urls`).
    pub key_file: &'a str,
    /// `ton_api_key_files`: one per `ton_urls` entry, `-` for none.
    pub key_files: &'a [String],
    /// `ton_quorum`: endpoints that must give the same answer.
    pub quorum: u32,
}

impl TonSettings<'_> {
    /// The endpoints in use.
    pub fn endpoints(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.to_owned()]
        } else {
            self.urls.to_vec()
        }
    }

    /// Refuses what cannot confirm a read, naming the key.
    pub fn check(&self, l: &Layers) -> Result<(), ConfigError> {
        if !self.urls.is_empty() && l.origin("ton_url") != "default" {
            return Err(l.invalid("ton_url", "set ton_url or ton_urls, not both"));
        }
        let urls = self.endpoints();
        let key = if self.urls.is_empty() {
            "ton_url"
        } else {
            "ton_urls"
        };
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(l.invalid(key, format!("{u:?} is not an http(s):// URL")));
            }
        }
        check_quorum(&urls, self.quorum as usize).map_err(|e| match e {
            QuorumConfigError::NoEndpoints => l.invalid("ton_url", "required"),
            QuorumConfigError::ZeroQuorum => l.invalid("ton_quorum", "must be at least 1"),
            QuorumConfigError::QuorumAboveEndpoints { quorum, endpoints } => l.invalid(
                "ton_quorum",
                format!(
                    "{quorum} endpoints cannot agree when only {endpoints} are configured \
                     (ton_url/ton_urls)"
                ),
            ),
            QuorumConfigError::Duplicate(u) => l.invalid(
                key,
                format!("{u} is listed twice (same scheme, host and port); one server cannot count as two"),
            ),
        })?;
        if !self.key_files.is_empty() {
            if self.urls.is_empty() {
                return Err(l.invalid(
                    "ton_api_key_files",
                    "goes with ton_urls (ton_url takes ton_api_key_file)",
                ));
            }
            if !self.key_file.is_empty() {
                return Err(l.invalid(
                    "ton_api_key_file",
                    "set ton_api_key_file or ton_api_key_files, not both",
                ));
            }
            if self.key_files.len() != self.urls.len() {
                return Err(l.invalid(
                    "ton_api_key_files",
                    format!(
                        "{} entries for {} ton_urls (one each, \"-\" for none)",
                        self.key_files.len(),
                        self.urls.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The API key file of endpoint `i`, if any.
    fn key_file_of(&self, i: usize) -> Option<&str> {
        let f = match self.key_files.get(i) {
            Some(f) => f.as_str(),
            None => self.key_file,
        };
        (!f.is_empty() && f != "-").then_some(f)
    }

    /// The chain client: one toncenter client per endpoint, each with its own key and
    /// `extra_roots`, confirmed by `ton_quorum`.
    pub fn chain(&self, extra_roots: &[CertificateDer<'static>]) -> Result<Ton, String> {
        let mut endpoints = Vec::new();
        for (i, url) in self.endpoints().into_iter().enumerate() {
            let mut cfg = ToncenterConfig::new(url);
            if let Some(f) = self.key_file_of(i) {
                let k = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
                cfg.api_key = Some(k.trim().to_owned());
            }
            cfg.extra_roots = extra_roots.to_vec();
            endpoints.push(cfg);
        }
        QuorumChain::toncenter(endpoints, QuorumConfig::new(self.quorum as usize))
            .map_err(|e| e.to_string())
    }
}

/// Reads a PEM bundle of CA certificates (at least one).
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Checks `extra_ca_file`: readable, and inside a real TEE (`tee` is `tdx`, `sev-snp`, or
/// `auto` finding one) only with `extra_ca_in_tee`, since there the host controls the disk.
pub fn check_extra_ca(
    l: &Layers,
    extra_ca_file: &str,
    extra_ca_in_tee: bool,
    tee: &str,
) -> Result<(), ConfigError> {
    if extra_ca_file.is_empty() {
        return Ok(());
    }
    let tee = match tee {
        "auto" => crate::role::detect_tee().unwrap_or("none"),
        t => t,
    };
    if matches!(tee, "tdx" | "sev-snp") && !extra_ca_in_tee {
        return Err(l.invalid(
            "extra_ca_file",
            format!(
                "refused inside a TEE ({tee}): the host controls the disk, so an extra CA lets \
                 it impersonate any server; set extra_ca_in_tee = true to trust it anyway"
            ),
        ));
    }
    load_ca_bundle(Path::new(extra_ca_file))
        .map(|_| ())
        .map_err(|e| l.invalid("extra_ca_file", e))
}

/// The certificates of `extra_ca_file` (none when empty).
pub fn extra_roots(extra_ca_file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if extra_ca_file.is_empty() {
        return Ok(Vec::new());
    }
    load_ca_bundle(Path::new(extra_ca_file)).map_err(|e| format!("extra_ca_file {e}"))
}

/// Reads the root contract's configuration, retrying for up to `patience` while the chain
/// is not reachable yet (a devnet still starting) or its endpoints do not agree yet.
pub async fn load_root_patiently<C: Chain>(
    chain: &C,
    root: &StdAddr,
    patience: Duration,
) -> Result<RootConfig, String> {
    let end = tokio::time::Instant::now() + patience;
    loop {
        match load_root_config(chain, root).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= end => {
                return Err(format!("cannot read the root contract {root}: {e}"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "root contract not readable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One periodic read of the root configuration.
#[derive(Debug)]
pub enum RootRead {
    /// The endpoints agreed on this configuration.
    Agreed(Box<RootConfig>),
    /// They did not: the caller keeps its last agreed configuration. Logged as the operator
    /// event `ton_no_quorum` (with endpoints and answer hashes, never payloads).
    NoQuorum,
    /// The read failed otherwise (endpoint down, contract unreadable): kept as well.
    Failed,
}

/// Reads the root configuration for a role's poll; see [`RootRead`].
pub async fn poll_root<C: Chain>(chain: &C, root: &StdAddr) -> RootRead {
    match load_root_config(chain, root).await {
        Ok(c) => RootRead::Agreed(Box::new(c)),
        Err(e @ ChainError::NoQuorum { .. }) => {
            tracing::error!(
                root = %root,
                error = %e,
                "ton_no_quorum: the chain endpoints do not agree on the root configuration; \
                 keeping the last agreed one"
            );
            RootRead::NoQuorum
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the root contract; keeping the last one");
            RootRead::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "[r]\nton_url = \"http://127.0.0.1:8081\"\nton_urls = []\n\
                     ton_api_key_file = \"\"\nton_api_key_files = []\nton_quorum = 1\n";

    #[derive(serde::Deserialize)]
    struct R {
        ton_url: String,
        ton_urls: Vec<String>,
        ton_api_key_file: String,
        ton_api_key_files: Vec<String>,
        ton_quorum: u32,
    }

    fn check(sets: &[&str]) -> Result<Vec<String>, String> {
        let mut l = Layers::new("r", D);
        l.sets(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(|e| e.0)?;
        let r: R = l.build().map_err(|e| e.0)?;
        let t = TonSettings {
            url: &r.ton_url,
            urls: &r.ton_urls,
            key_file: &r.ton_api_key_file,
            key_files: &r.ton_api_key_files,
            quorum: r.ton_quorum,
        };
        t.check(&l).map_err(|e| e.0)?;
        Ok(t.endpoints())
    }

    #[test]
    fn endpoint_settings() {
        assert_eq!(check(&[]).unwrap(), vec!["http://127.0.0.1:8081"]);
        assert_eq!(
            check(&[
                "ton_urls=https://a.example,https://b.example",
                "ton_quorum=2"
            ])
            .unwrap(),
            vec!["https://a.example", "https://b.example"]
        );
        let cases: [(&[&str], &str); 8] = [
            (
                &["ton_quorum=0"],
                "config: r.ton_quorum (from --set): must be at least 1",
            ),
            (
                &["ton_quorum=2"],
                "config: r.ton_quorum (from --set): 2 endpoints cannot agree when only 1 are \
                 configured (ton_url/ton_urls)",
            ),
            (
                &[
                    "ton_urls=https://a.example,https://b.example",
                    "ton_quorum=3",
                ],
                "config: r.ton_quorum (from --set): 3 endpoints cannot agree",
            ),
            (
                &["ton_urls=https://a.example,https://A.example/"],
                "config: r.ton_urls (from --set): https://A.example is listed twice",
            ),
            (
                &["ton_url=https://a.example", "ton_urls=https://b.example"],
                "config: r.ton_url (from --set): set ton_url or ton_urls, not both",
            ),
            (
                &["ton_urls=ftp://a.example"],
                "config: r.ton_urls (from --set): \"ftp://a.example\" is not an http(s)://",
            ),
            (
                &[
                    "ton_urls=https://a.example,https://b.example",
                    "ton_api_key_files=/k1",
                ],
                "config: r.ton_api_key_files (from --set): 1 entries for 2 ton_urls",
            ),
            (
                &["ton_quorum=-1"],
                "config: r: invalid value: integer `-1`, expected u32",
            ),
        ];
        for (sets, want) in cases {
            let e = check(sets).unwrap_err();
            assert!(e.starts_with(want), "{sets:?}: {e}");
        }
    }

    #[test]
    fn per_endpoint_keys_and_ca_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = dir.path().join("k1");
        std::fs::write(&k1, "secret-one\n").unwrap();
        let urls = vec!["http://a.example".to_owned(), "http://b.example".to_owned()];
        let files = vec![k1.display().to_string(), "-".to_owned()];
        let t = TonSettings {
            url: "",
            urls: &urls,
            key_file: "",
            key_files: &files,
            quorum: 2,
        };
        assert_eq!(t.key_file_of(0), Some(k1.to_str().unwrap()));
        assert_eq!(t.key_file_of(1), None);
        let q = t.chain(&[]).unwrap();
        assert!(!format!("{q:?}").contains("secret"), "{q:?}");
        // A bundle without certificates, or no file, is refused; a real one loads.
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        assert!(
            load_ca_bundle(&bad)
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(load_ca_bundle(&dir.path().join("missing.pem")).is_err());
        let good = dir.path().join("ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert_eq!(load_ca_bundle(&good).unwrap().len(), 1);
        // Inside a TEE the bundle needs the second key.
        let l = Layers::new("r", "[r]\nextra_ca_file = \"\"\n");
        let g = good.to_str().unwrap();
        let e = check_extra_ca(&l, g, false, "tdx").unwrap_err().0;
        assert!(e.contains("refused inside a TEE (tdx)"), "{e}");
        check_extra_ca(&l, g, true, "sev-snp").unwrap();
        check_extra_ca(&l, g, false, "sim").unwrap();
        check_extra_ca(&l, "", false, "tdx").unwrap();
        assert!(check_extra_ca(&l, bad.to_str().unwrap(), false, "sim").is_err());
    }
}
