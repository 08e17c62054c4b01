//! Inference engines for the Cocoon worker.
//!
//! - [`store`]: the model store — pinned downloads (`cocoon model pull`), SHA-256 verification,
//!   and the `Name@revision:sha256` identities that the root contract allowlists.
#![forbid(unsafe_code)]

pub mod store;

/// A reqwest client that uses rustls with the ring provider (the only provider this project
/// links) and the bundled WebPKI roots.
pub fn http_client(
    connect_timeout: std::time::Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    // Installing twice is harmless: the second call reports the provider already present.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("cocoon/", env!("CARGO_PKG_VERSION")))
        .build()
}
