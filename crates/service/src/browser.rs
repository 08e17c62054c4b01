//! The browser guard of our local HTTP servers.
//!
//! A server on 127.0.0.1 is reachable by every web page its user opens. The browser keeps a
//! page from reading a cross-origin answer unless the server grants it (CORS), but lets the
//! page *send* "simple" requests without asking first (GET, and POST with a `text/plain`,
//! form or multipart body), and with DNS rebinding (a name of the attacker's that resolves to
//! the attacker first and to 127.0.0.1 next) the page's requests become same-origin and
//! readable. So before any route runs, the guard:
//!
//! - refuses a `Host` that is not a loopback name or address (`localhost`, `127.0.0.0/8`,
//!   `[::1]`, any port), the specific address the server is bound to, or a name in
//!   `allowed_hosts`: a rebinding page's requests carry the attacker's name;
//! - refuses a request whose `Origin` is neither the server's own (`http://` + its `Host`)
//!   nor in `allowed_origins`, and answers such a preflight with no CORS grant at all;
//! - grants CORS to the allowed origins only, echoing the origin (never `*`);
//! - refuses a request body not declared `application/json` (415): the bodies a page can send
//!   cross-origin without a preflight are `text/plain`, form and multipart ones. A POST with
//!   no body and no `Content-Type` (an operator's `curl -X POST` to a control) passes.
//!
//! Requests without `Origin` (curl, SDKs, servers) pass the origin rule: browsers send one
//! on every cross-origin `fetch` and on every POST. Every response carries `Vary: Origin`.
//!
//! [`decide`] is the pure rule; [`Guard`] applies it to an axum router.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// A host: an IP address or a lower-case DNS name without its trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostName {
    /// An IP address.
    Ip(IpAddr),
    /// A DNS name.
    Name(String),
}

impl HostName {
    /// Parses a host without port: `[::1]`, `::1`, `127.0.0.1`, `Example.COM.`.
    pub fn parse(s: &str) -> Option<HostName> {
        let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Some(v6) = inner {
            return v6.parse::<Ipv6Addr>().ok().map(|a| HostName::Ip(a.into()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(HostName::Ip(ip));
        }
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        ok.then_some(HostName::Name(name))
    }

    /// `localhost`, 127.0.0.0/8, `::1` or an IPv4-mapped loopback address.
    pub fn is_loopback(&self) -> bool {
        match self {
            HostName::Name(n) => n == "localhost",
            HostName::Ip(IpAddr::V4(a)) => a.is_loopback(),
            HostName::Ip(IpAddr::V6(a)) => {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            HostName::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            HostName::Name(n) => f.write_str(n),
        }
    }
}

/// Splits `host[:port]` (a `Host` header or a URL authority); `None` if malformed.
fn split_authority(s: &str) -> Option<(HostName, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        match &s[end + 1..] {
            "" => (&s[..=end], None),
            rest => (&s[..=end], Some(rest.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((HostName::parse(host)?, port))
}

/// A web origin (`scheme://host[:port]`, the default port left out), as browsers send it in
/// `Origin` and as `allowed_origins` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOrigin {
    scheme: String,
    host: HostName,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl WebOrigin {
    /// Parses `scheme://host[:port]` (a trailing `/` is tolerated); the error says why not.
    pub fn parse(s: &str) -> Result<WebOrigin, &'static str> {
        let s = s.trim();
        let s = s.strip_suffix('/').unwrap_or(s);
        match s {
            "*" => return Err("a wildcard would let every web page spend the channel"),
            "null" => {
                return Err(
                    "sandboxed frames and local files all send the origin null; it cannot be \
                     allowed",
                );
            }
            _ => {}
        }
        let (scheme, authority) = s.split_once("://").ok_or("expected scheme://host[:port]")?;
        let scheme = scheme.to_ascii_lowercase();
        let mut chars = scheme.bytes();
        if !chars.next().is_some_and(|b| b.is_ascii_lowercase())
            || !chars.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        {
            return Err("the scheme is not valid");
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err("an origin has no path, query, fragment or user");
        }
        let (host, port) = split_authority(authority).ok_or("the host or port is not valid")?;
        let port = port.filter(|p| Some(*p) != default_port(&scheme));
        Ok(WebOrigin { scheme, host, port })
    }

    /// Whether this is the origin of a page served by us under `host[:port]` (plain HTTP).
    fn is_own(&self, host: &HostName, port: Option<u16>) -> bool {
        self.scheme == "http" && self.host == *host && self.port.or(Some(80)) == port.or(Some(80))
    }
}

impl fmt::Display for WebOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// A bad `allowed_origins` or `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllowlistError {
    /// A bad `allowed_origins` entry.
    #[error("{value:?} is not an origin: {why}")]
    Origin {
        /// The entry.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A bad `allowed_hosts` entry.
    #[error("{value:?} is not a host name or address: {why}")]
    Host {
        /// The entry.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// What a server accepts beyond loopback requests without `Origin`: the `allowed_origins`
/// that may call it from a browser, and the `allowed_hosts` it may be called by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    origins: Vec<WebOrigin>,
    hosts: Vec<HostName>,
}

impl Allowlist {
    /// Parses the two settings; the error names the bad entry.
    pub fn new(origins: &[String], hosts: &[String]) -> Result<Allowlist, AllowlistError> {
        let origins = origins
            .iter()
            .map(|o| {
                WebOrigin::parse(o).map_err(|why| AllowlistError::Origin {
                    value: o.clone(),
                    why,
                })
            })
            .collect::<Result<_, _>>()?;
        let hosts = hosts
            .iter()
            .map(|h| {
                let err = |why| AllowlistError::Host {
                    value: h.clone(),
                    why,
                };
                let t = h.trim();
                if t == "*" || t.starts_with("*.") {
                    return Err(err("wildcards are not accepted; list each name"));
                }
                match HostName::parse(t) {
                    Some(n) => Ok(n),
                    None if split_authority(t).is_some() => {
                        Err(err("give the name without a port (any port is accepted)"))
                    }
                    None => Err(err("expected a DNS name or an IP address")),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { origins, hosts })
    }
}

/// The rule for one server: its allowlist and the address it is bound to.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Allowlist,
    bound: SocketAddr,
}

impl Policy {
    /// The rule for a server bound to `bound`, allowing what `allow` lists.
    pub fn new(allow: Allowlist, bound: SocketAddr) -> Policy {
        Policy { allow, bound }
    }

    fn host_ok(&self, h: &HostName) -> bool {
        let ip = self.bound.ip();
        h.is_loopback()
            || (!ip.is_unspecified() && !ip.is_loopback() && *h == HostName::Ip(ip))
            || self.allow.hosts.contains(h)
    }
}

/// What the rule looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The `Host` header (or the HTTP/2 authority); `None`: absent.
    pub host: Option<&'a str>,
    /// The `Origin` header; an unreadable one as `Some("")`.
    pub origin: Option<&'a str>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// Whether the request may carry body bytes (a non-zero or unknown length).
    pub has_body: bool,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it; `grant`: the allowed foreign origin to echo in the CORS headers.
    Serve {
        /// The foreign origin to echo, if any.
        grant: Option<String>,
    },
    /// Answer the preflight (OPTIONS) here: 204, with the CORS grant if there is one.
    Preflight {
        /// The foreign origin to echo, if any.
        grant: Option<String>,
    },
    /// Refuse it, without any CORS header.
    Refuse(Refusal),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Host` header.
    #[error("the request has no Host header")]
    NoHost,
    /// A `Host` that is neither loopback, the bound address nor allowed.
    #[error(
        "Host {0:?} is not a loopback name, the address this server is bound to or an allowed \
         host (refused against DNS rebinding; see allowed_hosts)"
    )]
    ForeignHost(String),
    /// An `Origin` not in the allowlist.
    #[error("cross-origin request from {0:?} refused: the origin is not in allowed_origins")]
    ForeignOrigin(String),
    /// A body that is not JSON.
    #[error("request bodies must be Content-Type: application/json, not {0:?}")]
    NotJson(String),
}

impl Refusal {
    /// 400 without Host, 403 for a foreign Host or Origin, 415 for a body that is not JSON.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NoHost => StatusCode::BAD_REQUEST,
            Refusal::ForeignHost(_) | Refusal::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            Refusal::NotJson(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// A machine-readable code (the OpenAI error body's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoHost => "missing_host",
            Refusal::ForeignHost(_) => "foreign_host",
            Refusal::ForeignOrigin(_) => "foreign_origin",
            Refusal::NotJson(_) => "unsupported_media_type",
        }
    }
}

/// A header value quoted in a refusal, cut to 100 characters.
fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The rule: Host, then Origin, then preflight, then the body's type.
pub fn decide(policy: &Policy, f: &Facts<'_>) -> Verdict {
    let Some(raw_host) = f.host else {
        return Verdict::Refuse(Refusal::NoHost);
    };
    let Some((host, port)) = split_authority(raw_host.trim()).filter(|(h, _)| policy.host_ok(h))
    else {
        return Verdict::Refuse(Refusal::ForeignHost(clip(raw_host)));
    };
    let grant = match f.origin {
        None => None,
        Some(raw) => match WebOrigin::parse(raw) {
            Ok(o) if o.is_own(&host, port) => None,
            // Echo what the browser sent: it compares the grant with its own serialisation.
            Ok(o) if policy.allow.origins.contains(&o) => Some(raw.trim().to_owned()),
            _ => return Verdict::Refuse(Refusal::ForeignOrigin(clip(raw))),
        },
    };
    if *f.method == Method::OPTIONS {
        return Verdict::Preflight { grant };
    }
    if *f.method != Method::GET && *f.method != Method::HEAD {
        match f.content_type {
            Some(ct) if is_json(ct) => {}
            None if !f.has_body => {}
            Some(ct) => return Verdict::Refuse(Refusal::NotJson(clip(ct))),
            None => return Verdict::Refuse(Refusal::NotJson("none".into())),
        }
    }
    Verdict::Serve { grant }
}

/// How a server words a refusal (its API's error convention).
pub type Render = fn(&Refusal) -> Response;

/// A plain-text refusal (the admin servers' convention).
pub fn plain_text(r: &Refusal) -> Response {
    (r.status(), format!("refused: {r}\n")).into_response()
}

/// The guard as axum middleware: [`Guard::apply`] puts it in front of every route.
#[derive(Clone)]
pub struct Guard(Arc<Inner>);

struct Inner {
    policy: Policy,
    render: Render,
    expose: Option<HeaderValue>,
}

impl Guard {
    /// The guard of a server bound to `bound`, refusals worded by `render`.
    pub fn new(allow: Allowlist, bound: SocketAddr, render: Render) -> Guard {
        Guard(Arc::new(Inner {
            policy: Policy::new(allow, bound),
            render,
            expose: None,
        }))
    }

    /// Response headers an allowed origin may read beyond the CORS-safelisted ones.
    pub fn expose_headers(self, names: &'static str) -> Guard {
        let inner = Inner {
            policy: self.0.policy.clone(),
            render: self.0.render,
            expose: Some(HeaderValue::from_static(names)),
        };
        Guard(Arc::new(inner))
    }

    /// `router` with the guard in front of all its routes and its fallback (add them first).
    pub fn apply<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        router.layer(axum::middleware::from_fn_with_state(self, guard))
    }
}

fn text(h: &HeaderMap, name: HeaderName) -> Option<&str> {
    // An unreadable value reads as empty, which no rule accepts.
    h.get(name).map(|v| v.to_str().unwrap_or(""))
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let host = text(h, header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str()));
    let facts = Facts {
        method: req.method(),
        host,
        origin: text(h, header::ORIGIN),
        content_type: text(h, header::CONTENT_TYPE),
        has_body: req.body().size_hint().exact() != Some(0),
    };
    let verdict = decide(&g.0.policy, &facts);
    let mut r = match verdict {
        Verdict::Refuse(why) => {
            tracing::info!(reason = %why, method = %req.method(), path = %req.uri().path(), "refused a request");
            (g.0.render)(&why)
        }
        Verdict::Preflight { grant } => preflight(grant.as_deref(), req.headers()),
        Verdict::Serve { grant } => {
            let mut r = next.run(req).await;
            // Only the guard grants CORS, whatever a handler (or an upstream) put there.
            strip_cors(r.headers_mut());
            if let Some(o) = grant.as_deref().and_then(|o| HeaderValue::from_str(o).ok()) {
                let h = r.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
                if let Some(e) = &g.0.expose {
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
                }
            }
            r
        }
    };
    let varies = r.headers().get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("Origin") || v.trim() == "*")
    });
    if !varies {
        r.headers_mut()
            .append(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

fn strip_cors(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|n| n.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

/// 204; for an allowed origin with the grant: the origin, our methods, the headers it asked
/// for, and Private Network Access when asked (a public page calling this local server).
fn preflight(grant: Option<&str>, req: &HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
             Access-Control-Request-Private-Network",
        ),
    );
    let Some(o) = grant.and_then(|o| HeaderValue::from_str(o).ok()) else {
        return r;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(v) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    if req
        .get("access-control-request-private-network")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        h.insert(
            HeaderName::from_static("access-control-allow-private-network"),
            HeaderValue::from_static("true"),
        );
    }
    r
}

/// Whether binding to `addr` exposes the server beyond this machine (any address but a
/// loopback one).
pub fn beyond_loopback(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
        && !matches!(addr.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some_and(|v4: Ipv4Addr| v4.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], hosts: &[&str], bound: &str) -> Policy {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::new(
            Allowlist::new(&s(origins), &s(hosts)).unwrap(),
            bound.parse().unwrap(),
        )
    }

    fn req<'a>(
        method: &'a Method,
        host: Option<&'a str>,
        origin: Option<&'a str>,
        ct: Option<&'a str>,
    ) -> Facts<'a> {
        Facts {
            method,
            host,
            origin,
            content_type: ct,
            has_body: ct.is_some(),
        }
    }

    const LOCAL: &str = "127.0.0.1:10000";
    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn loopback_hosts_pass_any_port_and_others_are_refused() {
        let p = policy(&[], &[], LOCAL);
        for h in [
            "127.0.0.1:10000",
            "127.0.0.1",
            "127.3.4.5:1",
            "localhost",
            "LocalHost:10000",
            "localhost.:80",
            "[::1]:10000",
            "[::1]",
            "[::ffff:127.0.0.1]:5",
        ] {
            assert_eq!(
                decide(&p, &req(&Method::GET, Some(h), None, None)),
                Verdict::Serve { grant: None },
                "{h}"
            );
        }
        for h in [
            "evil.example:10000",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:10000",
            "10.0.0.1:10000",
            "0.0.0.0:10000",
            "[::]:10000",
            "localhost:port",
            "localhost:99999",
            "::1",
            "user@localhost",
            "",
            "[::1",
        ] {
            assert_eq!(
                decide(&p, &req(&Method::GET, Some(h), None, None)),
                Verdict::Refuse(Refusal::ForeignHost(h.into())),
                "{h}"
            );
        }
        assert_eq!(
            decide(&p, &req(&Method::GET, None, None, None)),
            Verdict::Refuse(Refusal::NoHost)
        );
    }

    #[test]
    fn allowed_hosts_and_a_specific_bound_address_pass() {
        let p = policy(&[], &["Cocoon.LAN", "192.168.1.9", "[fd00::1]"], LOCAL);
        for h in [
            "cocoon.lan:10000",
            "cocoon.lan",
            "192.168.1.9:10000",
            "[fd00::1]:1",
        ] {
            assert!(
                matches!(
                    decide(&p, &req(&Method::GET, Some(h), None, None)),
                    Verdict::Serve { .. }
                ),
                "{h}"
            );
        }
        assert!(matches!(
            decide(&p, &req(&Method::GET, Some("sub.cocoon.lan"), None, None)),
            Verdict::Refuse(Refusal::ForeignHost(_))
        ));
        let bound = policy(&[], &[], "192.168.1.5:10000");
        assert!(matches!(
            decide(
                &bound,
                &req(&Method::GET, Some("192.168.1.5:10000"), None, None)
            ),
            Verdict::Serve { .. }
        ));
        assert!(matches!(
            decide(
                &bound,
                &req(&Method::GET, Some("192.168.1.6:10000"), None, None)
            ),
            Verdict::Refuse(_)
        ));
        // Bound to every address: no address is implied, names must be listed.
        let any = policy(&[], &[], "0.0.0.0:10000");
        assert!(matches!(
            decide(&any, &req(&Method::GET, Some("0.0.0.0:10000"), None, None)),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            decide(
                &any,
                &req(&Method::GET, Some("localhost:10000"), None, None)
            ),
            Verdict::Serve { .. }
        ));
    }

    #[test]
    fn foreign_origins_are_refused_allowed_ones_echoed_own_and_none_pass() {
        let p = policy(
            &["http://localhost:3000", "https://App.example/"],
            &[],
            LOCAL,
        );
        let h = Some("127.0.0.1:10000");
        for m in [Method::GET, Method::POST, Method::OPTIONS] {
            for o in [
                "http://evil.example",
                "http://127.0.0.1:10001",
                "https://127.0.0.1:10000",
                "http://localhost:10000",
                "null",
                "",
                "http://localhost:3000/path",
            ] {
                assert_eq!(
                    decide(&p, &req(&m, h, Some(o), JSON)),
                    Verdict::Refuse(Refusal::ForeignOrigin(o.into())),
                    "{m} {o}"
                );
            }
        }
        // The server's own origin: same-origin, no grant needed.
        assert_eq!(
            decide(
                &p,
                &req(&Method::POST, h, Some("http://127.0.0.1:10000"), JSON)
            ),
            Verdict::Serve { grant: None }
        );
        assert_eq!(
            decide(
                &p,
                &req(
                    &Method::GET,
                    Some("localhost"),
                    Some("http://localhost:80"),
                    None
                )
            ),
            Verdict::Serve { grant: None }
        );
        // Allowed: echoed exactly as sent, for requests and preflights.
        assert_eq!(
            decide(
                &p,
                &req(&Method::POST, h, Some("http://localhost:3000"), JSON)
            ),
            Verdict::Serve {
                grant: Some("http://localhost:3000".into())
            }
        );
        assert_eq!(
            decide(
                &p,
                &req(&Method::OPTIONS, h, Some("https://app.example"), None)
            ),
            Verdict::Preflight {
                grant: Some("https://app.example".into())
            }
        );
        assert_eq!(
            decide(
                &p,
                &req(&Method::OPTIONS, h, Some("https://app.example:443"), None)
            ),
            Verdict::Preflight {
                grant: Some("https://app.example:443".into())
            }
        );
        // No Origin: curl, SDKs.
        assert_eq!(
            decide(&p, &req(&Method::OPTIONS, h, None, None)),
            Verdict::Preflight { grant: None }
        );
        assert_eq!(
            decide(&p, &req(&Method::POST, h, None, JSON)),
            Verdict::Serve { grant: None }
        );
    }

    #[test]
    fn bodies_must_be_json() {
        let p = policy(&["http://localhost:3000"], &[], LOCAL);
        let h = Some("localhost:10000");
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
        ] {
            assert!(
                matches!(
                    decide(&p, &req(&Method::POST, h, None, Some(ct))),
                    Verdict::Serve { .. }
                ),
                "{ct}"
            );
        }
        for ct in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "application/json-seq",
            "",
        ] {
            for origin in [None, Some("http://localhost:3000")] {
                assert_eq!(
                    decide(&p, &req(&Method::POST, h, origin, Some(ct))),
                    Verdict::Refuse(Refusal::NotJson(ct.into())),
                    "{ct}"
                );
            }
        }
        // A body without any type is refused; no body and no type (a control) passes.
        let mut f = req(&Method::POST, h, None, None);
        assert_eq!(decide(&p, &f), Verdict::Serve { grant: None });
        f.has_body = true;
        assert_eq!(
            decide(&p, &f),
            Verdict::Refuse(Refusal::NotJson("none".into()))
        );
        for m in [Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(matches!(
                decide(&p, &req(&m, h, None, Some("text/plain"))),
                Verdict::Refuse(Refusal::NotJson(_))
            ));
        }
        // GET is not checked (no body the server reads).
        assert!(matches!(
            decide(&p, &req(&Method::GET, h, None, Some("text/plain"))),
            Verdict::Serve { .. }
        ));
    }

    #[test]
    fn host_is_checked_before_origin_so_rebinding_same_origin_fails() {
        // A rebinding page's requests look same-origin: Host and Origin both the attacker's.
        let p = policy(&[], &[], LOCAL);
        assert_eq!(
            decide(
                &p,
                &req(
                    &Method::POST,
                    Some("rebind.evil.example:10000"),
                    Some("http://rebind.evil.example:10000"),
                    JSON
                )
            ),
            Verdict::Refuse(Refusal::ForeignHost("rebind.evil.example:10000".into()))
        );
    }

    #[test]
    fn allowlist_entries_are_checked() {
        let s = |v: &str| vec![v.to_owned()];
        for bad in [
            "*",
            "null",
            "localhost:3000",
            "http://",
            "http://a b",
            "http://x/y",
            "1http://x",
            "http://u@x",
        ] {
            assert!(
                matches!(
                    Allowlist::new(&s(bad), &[]),
                    Err(AllowlistError::Origin { .. })
                ),
                "{bad}"
            );
        }
        for bad in [
            "*",
            "*.lan",
            "cocoon.lan:80",
            "http://cocoon.lan",
            "",
            "a..b",
        ] {
            assert!(
                matches!(
                    Allowlist::new(&[], &s(bad)),
                    Err(AllowlistError::Host { .. })
                ),
                "{bad}"
            );
        }
        let e = Allowlist::new(&s("*"), &[]).unwrap_err().to_string();
        assert!(e.starts_with("\"*\" is not an origin: a wildcard"), "{e}");
        let a = Allowlist::new(&s("HTTPS://App.Example:443/"), &s("Cocoon.Lan.")).unwrap();
        assert_eq!(a.origins[0].to_string(), "https://app.example");
        assert_eq!(a.hosts[0], HostName::Name("cocoon.lan".into()));
        assert_eq!(
            WebOrigin::parse("http://[::1]:8080").unwrap().to_string(),
            "http://[::1]:8080"
        );
        assert_eq!(
            WebOrigin::parse("chrome-extension://abcdef")
                .unwrap()
                .to_string(),
            "chrome-extension://abcdef"
        );
    }

    #[test]
    fn refusals_have_their_status_and_quote_at_most_100_characters() {
        let p = policy(&[], &[], LOCAL);
        let long = format!("{}.example", "a".repeat(300));
        let Verdict::Refuse(r) = decide(&p, &req(&Method::GET, Some(&long), None, None)) else {
            panic!("not refused");
        };
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.to_string().len() < 300, "{r}");
        assert_eq!(Refusal::NotJson("x".into()).status(), 415);
        assert_eq!(Refusal::ForeignOrigin("x".into()).code(), "foreign_origin");
    }

    #[test]
    fn beyond_loopback_is_every_address_but_loopback() {
        for a in [
            "127.0.0.1:1",
            "[::1]:1",
            "127.9.9.9:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!beyond_loopback(&a.parse().unwrap()), "{a}");
        }
        for a in ["0.0.0.0:1", "[::]:1", "192.168.1.2:1", "[fd00::1]:1"] {
            assert!(beyond_loopback(&a.parse().unwrap()), "{a}");
        }
    }
}
