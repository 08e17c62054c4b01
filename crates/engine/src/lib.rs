//! Inference engines for the Cocoon worker.
//!
//! - [`engine`]: the [`Engine`] trait the worker drives, with body events that carry usage.
//! - [`http`]: OpenAI-compatible HTTP engines (vLLM, SGLang, llama.cpp server, Ollama).
//! - [`convert`]: a BERT sentence-embedding checkpoint (safetensors) converted to GGUF.
//! - [`store`]: the model store — pinned downloads (`cocoon model pull`), SHA-256 verification,
//!   and the `Name@revision:sha256` identities that the root contract allowlists.
#![forbid(unsafe_code)]

pub mod convert;
pub mod engine;
pub mod http;
pub mod store;

pub use engine::{
    BodyEvent, Engine, EngineError, EngineRequest, EngineResponse, Health, ModelInfo, Tokenizer,
};
pub use http::{BackendKind, HttpEngine, HttpEngineConfig};

pub use cocoon_http::os_ca_bundle;

/// The engines' and model downloads' HTTP client ([`cocoon_http::ClientBuilder`]: rustls with
/// ring, the bundled WebPKI roots and only `extra_roots` besides, e.g. the CA of a private
/// inference server or, for pinned downloads, [`os_ca_bundle`]); no overall timeout, since
/// answers stream for as long as generation runs.
pub fn http_client(
    connect_timeout: std::time::Duration,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<reqwest::Client, cocoon_http::HttpError> {
    cocoon_http::ClientBuilder::new()
        .connect_timeout(connect_timeout)
        .extra_roots(extra_roots)
        .build()
}
