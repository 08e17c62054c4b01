//! HTTP in tests: pages read as JSON or text, raw requests whose every header (Host included)
//! is ours, and the checks every admin server must pass against what web pages can send.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `url` with `http`; the body as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url` with `http`; the body as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// POST to `url` with `http`, with `token` as bearer if any; the status.
pub async fn post_status(http: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut r = http.post(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().status().as_u16()
}

/// A response read off the wire: status, lower-case header names with values, body.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The names of the CORS headers present.
    pub fn cors(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-"))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `head` (request line and headers, no final CRLF) and `body` over a fresh
/// connection to `addr`, adding `Connection: close` and the length; reads the whole answer
/// (bodies are small and not chunked).
pub async fn raw_request(addr: SocketAddr, head: &str, body: &str) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    if tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .is_err()
    {
        panic!("{head}: no whole answer within 5 s");
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The names of the CORS headers of `r`.
pub fn cors(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .map(|k| k.to_string())
        .collect()
}

/// An admin server at `admin` (port `port`) under attack by web pages, its controls behind
/// `token` (which a page could learn or guess).
pub struct AdminTarget<'a> {
    pub http: &'a reqwest::Client,
    pub admin: &'a str,
    pub port: u16,
    pub token: &'a str,
    pub pages: &'a [&'a str],
    pub controls: &'a [&'a str],
}

/// The pages every admin server serves, and one it does not.
pub const ADMIN_PAGES: [&str; 4] = ["/stats", "/jsonstats", "/metrics", "/nothing-here"];

impl<'a> AdminTarget<'a> {
    /// The admin server at `http://127.0.0.1:{port}`-like `admin` with [`ADMIN_PAGES`] and
    /// `controls`.
    pub fn new(
        http: &'a reqwest::Client,
        admin: &'a str,
        port: u16,
        token: &'a str,
        controls: &'a [&'a str],
    ) -> Self {
        AdminTarget {
            http,
            admin,
            port,
            token,
            pages: &ADMIN_PAGES,
            controls,
        }
    }

    /// DNS rebinding: the attacker's name in Host, the right token: every page and control
    /// is refused (403) before any handler runs, with no CORS grant.
    pub async fn assert_foreign_host_refused(&self) {
        let host = format!("rebind.example:{}", self.port);
        for p in self.pages {
            let r = self
                .http
                .get(format!("{}{p}", self.admin))
                .header("host", &host)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{p}");
            assert!(cors(&r).is_empty());
            assert!(r.text().await.unwrap().starts_with("refused: Host "), "{p}");
        }
        for c in self.controls {
            let r = self
                .http
                .post(format!("{}{c}", self.admin))
                .header("host", &host)
                .bearer_auth(self.token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{c}");
        }
    }

    /// A foreign origin: pages and controls refused (403), preflights without a grant.
    pub async fn assert_foreign_origins_refused(&self) {
        for origin in ["https://evil.example", "http://127.0.0.1:1"] {
            for p in self.pages {
                let r = self
                    .http
                    .get(format!("{}{p}", self.admin))
                    .header("origin", origin)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 403, "{origin} {p}");
                assert!(cors(&r).is_empty());
            }
            for c in self.controls {
                let r = self
                    .http
                    .post(format!("{}{c}", self.admin))
                    .header("origin", origin)
                    .bearer_auth(self.token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 403, "{origin} {c}");
                let r = self
                    .http
                    .request(reqwest::Method::OPTIONS, format!("{}{c}", self.admin))
                    .header("origin", origin)
                    .header("access-control-request-method", "POST")
                    .header("access-control-request-headers", "authorization")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 403);
                assert!(cors(&r).is_empty(), "{:?}", r.headers());
            }
        }
    }

    /// Text and form bodies (no preflight in a browser) to each of `controls`: 415, token or
    /// not.
    pub async fn assert_bodies_refused(&self, controls: &[&str]) {
        for ct in ["text/plain", "application/x-www-form-urlencoded"] {
            for c in controls {
                let r = self
                    .http
                    .post(format!("{}{c}", self.admin))
                    .header("content-type", ct)
                    .bearer_auth(self.token)
                    .body("x=1")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 415, "{ct} {c}");
            }
        }
    }

    /// The allowed origin reads the stats, granted its own origin only.
    pub async fn assert_origin_granted(&self, allowed: &str) {
        let r = self
            .http
            .get(format!("{}/jsonstats", self.admin))
            .header("origin", allowed)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["access-control-allow-origin"], allowed);
        assert_eq!(r.headers()["vary"], "Origin");
    }
}

/// Where `html` shows a Rust `Debug` value (`Some(3)`, `None`, `[1, 2]`, `{ field: 1 }`,
/// `Ready`-style unit variants are not checked): the first such text, or `None`.
pub fn debug_value(html: &str) -> Option<String> {
    // Text only: markup (tags, attributes, SVG coordinates) is skipped.
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let words = ["Some(", "None", "Ok(", "Err("];
    if let Some(w) = words.iter().find(|w| text.contains(*w)) {
        let at = text.find(w).unwrap_or(0);
        return Some(text[at.saturating_sub(40)..(at + 40).min(text.len())].to_owned());
    }
    let b = text.as_bytes();
    for i in 0..b.len() {
        // `[1, 2]` or `[184]`: a bracket, digits, then `,` or `]`.
        if b[i] == b'[' {
            let j = b[i + 1..]
                .iter()
                .position(|c| !c.is_ascii_digit())
                .map(|p| i + 1 + p);
            if let Some(j) = j
                && j > i + 1
                && (b[j] == b']' || b[j] == b',')
            {
                return Some(String::from_utf8_lossy(&b[i..(j + 1).min(b.len())]).into_owned());
            }
        }
        // `{ field:` (a struct's Debug).
        if b[i] == b'{' && b.get(i + 1) == Some(&b' ') {
            let rest = &b[i + 2..];
            let n = rest
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            if n > 0 && rest.get(n) == Some(&b':') {
                return Some(String::from_utf8_lossy(&b[i..(i + 2 + n + 1)]).into_owned());
            }
        }
    }
    None
}

/// Panics with the offending text when `html` shows a Rust `Debug` value ([`debug_value`]).
pub fn assert_no_debug_values(what: &str, html: &str) {
    if let Some(bad) = debug_value(html) {
        panic!("{what} shows a Debug value: {bad:?}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_values_are_found_in_text_not_in_markup() {
        use super::debug_value;
        for bad in [
            "<td>Some(183)</td>",
            "<p>[184]</p>",
            "a [1, 2] b",
            "x { field: 1 }",
            "None",
        ] {
            assert!(debug_value(bad).is_some(), "{bad}");
        }
        for good in [
            "<svg viewBox=\"0 0 10 10\"><polyline points=\"1,2 3,4\"/></svg>",
            "<td>1\u{202f}234 TON</td><td>–</td>",
            "<a title=\"[1]\">x</a>",
            "none of it",
        ] {
            assert_eq!(debug_value(good), None, "{good}");
        }
    }
}
