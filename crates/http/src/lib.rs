//! `cocoon-http`: the one place where Cocoon builds an outbound HTTP client (toncenter, the
//! OpenAI-compatible engines and model downloads, Intel's PCCS/PCS, AMD's KDS).
//!
//! Every client speaks TLS through rustls with the ring provider (the only provider this
//! workspace links) and trusts the bundled WebPKI roots plus only the extra roots its
//! configuration names. Nothing is taken from the environment: `SSL_CERT_FILE` and the
//! machine's bundle are not read, since inside a TEE the host controls both. The one
//! exception is explicit: [`os_ca_bundle`], for downloads pinned by hash.
//!
//! [`get_limited`] reads a GET answer with a cap on its size (collateral servers are not
//! trusted to bound their answers). `reqwest` is re-exported so that users name the same
//! version.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

pub use reqwest;
use rustls::pki_types::CertificateDer;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// An extra root certificate from the configuration does not parse.
    #[error("extra CA certificate: {0}")]
    BadRoot(String),
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// reqwest refused the client settings.
    #[error("HTTP client: {0}")]
    Build(String),
}

/// Settings of an outbound HTTP client; [`ClientBuilder::build`] makes the client.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    extra_roots: Vec<CertificateDer<'static>>,
    max_redirects: usize,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientBuilder {
    /// No overall timeout, no connect timeout, WebPKI roots only, at most 10 redirects (as
    /// reqwest's default).
    pub fn new() -> Self {
        Self {
            timeout: None,
            connect_timeout: None,
            extra_roots: Vec::new(),
            max_redirects: 10,
        }
    }

    /// Whole-request timeout (connect, send, read the body).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Timeout of the TCP and TLS connect alone.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Also trust these roots (an explicit setting, e.g. the CA of a private server).
    pub fn extra_roots(mut self, roots: &[CertificateDer<'static>]) -> Self {
        self.extra_roots.extend(roots.iter().cloned());
        self
    }

    /// Follow at most `n` redirects.
    pub fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// The client. Also installs ring as rustls' process-wide default provider (harmless
    /// when already installed), so that other rustls users in the process, reqwest's own
    /// builder included, find the same provider.
    pub fn build(self) -> Result<reqwest::Client, HttpError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let _ = rustls::crypto::CryptoProvider::install_default((*provider).clone());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in self.extra_roots {
            roots
                .add(der)
                .map_err(|e| HttpError::BadRoot(e.to_string()))?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // What reqwest offers when it builds the TLS configuration itself (HTTP/2 enabled).
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::limited(self.max_redirects))
            .user_agent(concat!("cocoon/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = self.timeout {
            builder = builder.timeout(t);
        }
        if let Some(t) = self.connect_timeout {
            builder = builder.connect_timeout(t);
        }
        builder
            .build()
            .map_err(|e| HttpError::Build(error_chain(&e)))
    }
}

/// A service's base URL from a setting: surrounding whitespace, trailing slashes and one of
/// the API path `suffixes` (e.g. `/vcek/v1`) removed; it must be `http(s)://host…`.
pub fn base_url(setting: &str, suffixes: &[&str]) -> Result<String, String> {
    let mut base = setting.trim().trim_end_matches('/');
    for suffix in suffixes {
        base = base.strip_suffix(suffix).unwrap_or(base);
    }
    let base = base.trim_end_matches('/');
    let url = reqwest::Url::parse(base).map_err(|e| format!("bad URL {setting:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("URL {setting:?} is not http(s)://host"));
    }
    Ok(base.to_owned())
}

/// `err: cause: cause…` (reqwest's `Display` alone hides the cause).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A successful GET answer read in full.
#[derive(Debug)]
pub struct Fetched {
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

/// GET `url`; a non-2xx status or a body over `max_len` bytes is an error (the reason, for
/// the caller to name what it was fetching).
pub async fn get_limited(
    client: &reqwest::Client,
    url: &str,
    max_len: usize,
) -> Result<Fetched, String> {
    let mut resp = client.get(url).send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let too_large = || format!("response larger than {max_len} bytes");
    if resp.content_length().is_some_and(|n| n > max_len as u64) {
        return Err(too_large());
    }
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > max_len {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { headers, body })
}

/// The operating system's CA bundle at its fixed places (Debian/Ubuntu, Fedora/RHEL, Alpine;
/// not `SSL_CERT_FILE`), for pinned downloads only: what they fetch is checked against a
/// SHA-256 pin, so the trust store does not protect them, and TLS-inspecting egress proxies
/// that the machine trusts keep working.
pub fn os_ca_bundle() -> Vec<CertificateDer<'static>> {
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
            CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(app: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[test]
    fn bad_extra_roots_are_refused() {
        let junk = CertificateDer::from(b"not a certificate".to_vec());
        let err = ClientBuilder::new()
            .extra_roots(&[junk])
            .build()
            .unwrap_err();
        assert!(matches!(err, HttpError::BadRoot(_)), "{err}");
        assert!(
            ClientBuilder::new()
                .timeout(Duration::from_secs(1))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn base_urls_lose_api_suffixes_and_must_be_http() {
        let b = |s| base_url(s, &["/sgx/certification/v4", "/tdx/certification/v4"]);
        assert_eq!(
            b(" https://pccs.example:8081/sgx/certification/v4/ ").unwrap(),
            "https://pccs.example:8081"
        );
        assert_eq!(b("http://10.0.0.5/").unwrap(), "http://10.0.0.5");
        assert!(b("ftp://x").unwrap_err().contains("is not http(s)://host"));
        assert!(
            b("not a url")
                .unwrap_err()
                .starts_with("bad URL \"not a url\"")
        );
    }

    #[tokio::test]
    async fn bodies_are_capped_and_statuses_checked() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/small", get(|| async { ([("x-test", "1")], "hello") }))
            .route("/big", get(|| async { vec![b'x'; 100] }))
            .route(
                "/missing",
                get(|| async { (axum::http::StatusCode::NOT_FOUND, "no") }),
            );
        let base = serve(app).await;
        let c = ClientBuilder::new().build().unwrap();
        let f = get_limited(&c, &format!("{base}/small"), 10).await.unwrap();
        assert_eq!(f.body, b"hello");
        assert_eq!(f.headers["x-test"], "1");
        let e = get_limited(&c, &format!("{base}/big"), 10)
            .await
            .unwrap_err();
        assert_eq!(e, "response larger than 10 bytes");
        let e = get_limited(&c, &format!("{base}/missing"), 10)
            .await
            .unwrap_err();
        assert_eq!(e, "HTTP 404 Not Found");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let e = get_limited(&c, &closed, 10).await.unwrap_err();
        assert!(e.contains("error sending request"), "{e}");
    }
}
