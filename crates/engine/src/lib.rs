//! Inference engines for the Cocoon worker.
//!
//! - [`engine`]: the [`Engine`] trait the worker drives, with body events that carry usage.
//! - [`http`]: OpenAI-compatible HTTP engines (vLLM, SGLang, llama.cpp server, Ollama).
//! - [`store`]: the model store — pinned downloads (`cocoon model pull`), SHA-256 verification,
//!   and the `Name@revision:sha256` identities that the root contract allowlists.
#![forbid(unsafe_code)]

pub mod engine;
pub mod http;
pub mod store;

pub use engine::{
    BodyEvent, Engine, EngineError, EngineRequest, EngineResponse, Health, ModelInfo, Tokenizer,
};
pub use http::{BackendKind, HttpEngine, HttpEngineConfig};

/// A reqwest client that uses rustls with the ring provider (the only provider this project
/// links), the bundled WebPKI roots and `extra_roots` (an explicit setting, e.g. the CA of a
/// private inference server). Nothing from the environment is trusted: `SSL_CERT_FILE` and
/// the machine's bundle are not read, since inside a TEE the host controls both.
pub fn http_client(
    connect_timeout: std::time::Duration,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<reqwest::Client, reqwest::Error> {
    // Installing twice is harmless: the second call reports the provider already present.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("cocoon/", env!("CARGO_PKG_VERSION")));
    for der in extra_roots {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(der)?);
    }
    builder.build()
}

/// The operating system's CA bundle at its fixed places (Debian/Ubuntu, Fedora/RHEL, Alpine;
/// not `SSL_CERT_FILE`), for pinned downloads only: what they fetch is checked against a
/// SHA-256 pin, so the trust store does not protect them, and TLS-inspecting egress proxies
/// that the machine trusts keep working.
pub fn os_ca_bundle() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    const PLACES: [&str; 3] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    PLACES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .map(|pem| {
            rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default()
}
