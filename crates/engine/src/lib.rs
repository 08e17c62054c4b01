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
/// links), the bundled WebPKI roots and the machine's own CA bundle (`SSL_CERT_FILE`, else
/// `/etc/ssl/certs/ca-certificates.crt`), so that private CAs and TLS-inspecting egress proxies
/// the machine trusts work too.
pub fn http_client(
    connect_timeout: std::time::Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    // Installing twice is harmless: the second call reports the provider already present.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("cocoon/", env!("CARGO_PKG_VERSION")));
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    if let Ok(pem) = std::fs::read(&bundle)
        && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
    {
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder.build()
}
