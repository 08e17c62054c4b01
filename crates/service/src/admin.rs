//! What every role's admin HTTP server shares: the bearer token of its POST controls
//! (compared in constant time), the Prometheus text writer, the HTML of the stats pages, and
//! serving a router behind the browser guard with a graceful stop.
//!
//! A role implements [`StatsPages`] (what its pages show) and [`Switch`] (its operator
//! switch); [`router`] gives the stats routes and the `enable`/`disable` controls, the role
//! adds its own controls and [`spawn`] serves them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::browser::{Allowlist, Guard, plain_text};

/// An admin server's settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// File holding the bearer token for POST controls; without one controls are refused.
    pub token_file: Option<PathBuf>,
    /// Web origins whose pages may call the server from a browser (none by default: every
    /// other origin is refused, see [`crate::browser`]).
    pub allowed_origins: Vec<String>,
    /// Host names it answers to besides loopback ones and the address it is bound to.
    pub allowed_hosts: Vec<String>,
}

/// The controls' bearer token (or none: controls refused).
#[derive(Clone, Default)]
pub struct Token(Option<Arc<str>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Token(<redacted>)"
        } else {
            "Token(none)"
        })
    }
}

/// Reads the control token (first line, trimmed); an empty file is an error.
pub fn read_token(path: &Path) -> Result<String, String> {
    crate::process::read_first_line(path).map_err(|e| format!("token file {e}"))
}

impl Token {
    /// The token of `file`, or none.
    pub fn from_file(file: Option<&Path>) -> Result<Token, String> {
        match file {
            Some(p) => Ok(Token(Some(Arc::from(read_token(p)?)))),
            None => Ok(Token(None)),
        }
    }

    /// The token of an admin server's token file (none without a server or a file).
    pub fn of(admin: Option<&AdminConfig>) -> Result<Token, String> {
        Token::from_file(admin.and_then(|a| a.token_file.as_deref()))
    }

    /// `None` when the request carries the right `Authorization: Bearer` token; otherwise
    /// the refusal to send (403 without a token configured, 401 for a missing or wrong one).
    pub fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(want) = &self.0 else {
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    "controls are disabled: no token file configured\n",
                )
                    .into_response(),
            );
        };
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match got {
            Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => None,
            _ => Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "missing or wrong bearer token\n",
                )
                    .into_response(),
            ),
        }
    }
}

/// Constant-time comparison of equal-length byte strings (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prometheus text exposition, one metric family at a time.
#[derive(Debug, Default)]
pub struct Prometheus(String);

impl Prometheus {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// A family: `# HELP`, `# TYPE`, then one sample per `(labels, value)` (`labels` is
    /// `{k="v",...}` or empty).
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl ToString) {
        self.metric(name, kind, help, &[(String::new(), value.to_string())]);
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.0
    }
}

impl IntoResponse for Prometheus {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            self.0,
        )
            .into_response()
    }
}

/// A Prometheus label value, escaped as the text format asks (`\\`, `\"`, `\n`).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HTML-escapes `s` for text and attribute values.
pub fn esc(s: &str) -> String {
    cocoon_webui::html::esc(s)
}

/// A page built with [`cocoon_webui::html::Page`] as an HTML response, under the
/// Content-Security-Policy the pages are written for (nothing but their own stylesheet and
/// script, requests to their own origin, no framing).
pub fn html_page(page: &cocoon_webui::html::Page) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, cocoon_webui::CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        page.render(),
    )
        .into_response()
}

/// The pages' stylesheet and script ([`cocoon_webui::CSS_PATH`], [`cocoon_webui::JS_PATH`]),
/// embedded in the binary.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    fn asset(kind: &'static str, body: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, kind),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            body,
        )
            .into_response()
    }
    Router::new()
        .route(
            cocoon_webui::CSS_PATH,
            get(|| async { asset("text/css; charset=utf-8", cocoon_webui::CSS) }),
        )
        .route(
            cocoon_webui::JS_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", cocoon_webui::JS) }),
        )
}

/// Unix seconds now (0 before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Calls [`StatsPages::sample`] of `role` once a second until `stop` changes: the time
/// series behind the pages' charts.
pub fn spawn_sampler<R: StatsPages>(
    role: Arc<R>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => role.sample(unix_now()),
                _ = stop.changed() => return,
            }
        }
    })
}

/// What a role shows on `/stats`, `/jsonstats` and `/metrics` (counters and public
/// identifiers only), each from one snapshot of its stats.
pub trait StatsPages: Send + Sync + 'static {
    /// The snapshot; `/jsonstats` is its JSON.
    type Stats: serde::Serialize;
    /// Takes the snapshot.
    fn stats(&self) -> Self::Stats;
    /// `/stats`: the stats page.
    fn page(&self, stats: &Self::Stats) -> Response;
    /// `/metrics`: the Prometheus text.
    fn metrics(&self, stats: &Self::Stats) -> Prometheus;
    /// What `/stats` serves: the page of a fresh snapshot. A role whose page reads its
    /// counters itself overrides this so the page does not pay for the whole snapshot.
    fn stats_page(&self) -> Response {
        self.page(&self.stats())
    }
    /// What `/metrics` serves: the metrics of a fresh snapshot (overridable as
    /// [`StatsPages::stats_page`] is).
    fn metrics_text(&self) -> Prometheus {
        self.metrics(&self.stats())
    }
    /// Records the role's time series at `now` (Unix seconds); called once a second by
    /// [`spawn_sampler`] (which [`spawn`] starts). Nothing by default.
    fn sample(&self, now: u64) {
        let _ = now;
    }
}

/// A role whose admin server switches it off and on (`enable` and `disable` controls).
pub trait Switch: StatsPages {
    /// The role's name in log lines.
    const NAME: &'static str;
    /// Takes work (`true`) or refuses it, by the operator's word.
    fn set_enabled(&self, on: bool);
}

/// The state an admin server's handlers share: the role and the controls' token.
pub struct Admin<R> {
    /// The role's shared state.
    pub role: Arc<R>,
    /// The bearer token of the controls.
    pub token: Token,
}

impl<R> Clone for Admin<R> {
    fn clone(&self) -> Self {
        Admin {
            role: Arc::clone(&self.role),
            token: self.token.clone(),
        }
    }
}

impl<R> FromRef<Admin<R>> for Arc<R> {
    fn from_ref(a: &Admin<R>) -> Arc<R> {
        Arc::clone(&a.role)
    }
}

/// `/stats`, `/jsonstats` and `/metrics` of `R` and the pages' assets ([`asset_routes`]),
/// for any router whose state holds an `Arc<R>`.
pub fn stats_routes<R: StatsPages, S>() -> Router<S>
where
    Arc<R>: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    asset_routes()
        .route(
            "/stats",
            get(|State(r): State<Arc<R>>| async move { r.stats_page() }),
        )
        .route(
            "/jsonstats",
            get(|State(r): State<Arc<R>>| async move { axum::Json(r.stats()).into_response() }),
        )
        .route(
            "/metrics",
            get(|State(r): State<Arc<R>>| async move {
                let mut m = r.metrics_text();
                runtime_metrics(&mut m);
                m.into_response()
            }),
        )
}

/// The process's runtime figures every role's `/metrics` ends with: `cocoon_tasks`, the
/// tokio tasks alive in the runtime serving the request (what a leak of spawned tasks
/// shows in; the soak in `bench/soak` samples it).
fn runtime_metrics(m: &mut Prometheus) {
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        m.single(
            "cocoon_tasks",
            "gauge",
            "Tokio tasks alive in this process's runtime.",
            h.metrics().num_alive_tasks(),
        );
    }
}

/// An admin server's routes: the stats pages and the POST switches `{prefix}/enable` and
/// `{prefix}/disable` behind the token, for each of `prefixes` (every role serves
/// `/control`; a role keeps an older prefix as an alias). The role adds its other controls,
/// whose handlers check [`Admin::token`] first.
pub fn router<R: Switch>(prefixes: &[&str]) -> Router<Admin<R>> {
    prefixes
        .iter()
        .fold(stats_routes::<R, Admin<R>>(), |r, prefix| {
            r.route(
                &format!("{prefix}/enable"),
                post(|State(a): State<Admin<R>>, h: HeaderMap| async move { switch(&a, &h, true) }),
            )
            .route(
                &format!("{prefix}/disable"),
                post(
                    |State(a): State<Admin<R>>, h: HeaderMap| async move { switch(&a, &h, false) },
                ),
            )
        })
}

fn switch<R: Switch>(a: &Admin<R>, headers: &HeaderMap, on: bool) -> Response {
    if let Some(r) = a.token.refuse(headers) {
        return r;
    }
    a.role.set_enabled(on);
    let word = if on { "enabled" } else { "disabled" };
    tracing::info!("{} {word} by operator", R::NAME);
    format!("{word}\n").into_response()
}

/// Serves an admin server's `routes` for `role` (controls behind `token`) as `cfg` says,
/// and samples its time series ([`spawn_sampler`]), until `stop` changes; returns the
/// bound address.
pub async fn spawn<R: Switch>(
    routes: Router<Admin<R>>,
    role: Arc<R>,
    token: Token,
    cfg: &AdminConfig,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let sampler = spawn_sampler(Arc::clone(&role), stop.clone());
    let (addr, task) = serve(
        routes.with_state(Admin { role, token }),
        cfg.bind,
        &cfg.allowed_origins,
        &cfg.allowed_hosts,
        stop,
    )
    .await
    .inspect_err(|_| sampler.abort())?;
    let task = tokio::spawn(async move {
        let _ = task.await;
        let _ = sampler.await;
    });
    Ok((addr, task))
}

/// [`spawn`] when `cfg` configures an admin server: returns its address and adds its task
/// to `tasks`; without one, nothing.
pub async fn spawn_configured<R: Switch>(
    cfg: Option<&AdminConfig>,
    routes: Router<Admin<R>>,
    admin: Admin<R>,
    stop: watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Option<SocketAddr>, String> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let (addr, task) = spawn(routes, admin.role, admin.token, cfg, stop).await?;
    tasks.push(task);
    Ok(Some(addr))
}

/// Serves `app` on `bind` behind the browser guard (foreign Host or Origin refused, bodies
/// must be JSON) until `stop` changes; returns the bound address.
pub async fn serve(
    app: Router,
    bind: SocketAddr,
    allowed_origins: &[String],
    allowed_hosts: &[String],
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let allow = Allowlist::new(allowed_origins, allowed_hosts)
        .map_err(|e| format!("allowed origins or hosts: {e}"))?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Guard::new(allow, addr, plain_text).apply(app);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly_and_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "s3cret\n").unwrap();
        let t = Token::from_file(Some(&f)).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(t.refuse(&h).unwrap().status(), StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(t.refuse(&h).is_some());
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(t.refuse(&h).is_none());
        assert_eq!(
            Token::default().refuse(&h).unwrap().status(),
            StatusCode::FORBIDDEN
        );
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(constant_time_eq(b"ab", b"ab") && !constant_time_eq(b"ab", b"ac"));
    }

    struct Fake(std::sync::atomic::AtomicBool);

    impl StatsPages for Fake {
        type Stats = bool;
        fn stats(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn page(&self, on: &bool) -> Response {
            let mut p = cocoon_webui::html::Page::new("fake");
            p.cards(&[cocoon_webui::html::Card::new(
                "enabled",
                cocoon_webui::fmt::yes_no(*on),
            )]);
            html_page(&p)
        }
        fn metrics(&self, on: &bool) -> Prometheus {
            let mut m = Prometheus::new();
            m.single("fake_enabled", "gauge", "1 while enabled.", u8::from(*on));
            m
        }
    }

    impl Switch for Fake {
        const NAME: &'static str = "fake";
        fn set_enabled(&self, on: bool) {
            self.0.store(on, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_switch_needs_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "s3cret\n").unwrap();
        let a = Admin {
            role: Arc::new(Fake(std::sync::atomic::AtomicBool::new(true))),
            token: Token::from_file(Some(&f)).unwrap(),
        };
        let on = |a: &Admin<Fake>| a.role.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut h = HeaderMap::new();
        assert_eq!(switch(&a, &h, false).status(), StatusCode::UNAUTHORIZED);
        assert!(on(&a));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(switch(&a, &h, false).status(), StatusCode::OK);
        assert!(!on(&a));
        switch(&a, &h, true);
        assert!(on(&a));
        // The routes build (paths are valid and distinct).
        let _: Router = router::<Fake>(&["/control"]).with_state(a);
    }

    #[test]
    fn pages_carry_the_csp_and_metrics_escape_what_they_show() {
        let r = Fake(std::sync::atomic::AtomicBool::new(true)).stats_page();
        assert_eq!(
            r.headers()[header::CONTENT_SECURITY_POLICY],
            cocoon_webui::CSP
        );
        assert!(cocoon_webui::CSP.contains("script-src 'self'"));
        let mut m = Prometheus::new();
        m.single("x_total", "counter", "X.", 3);
        m.metric(
            "y",
            "gauge",
            "Y.",
            &[(format!("{{m=\"{}\"}}", label("a\"b\\c")), "1".into())],
        );
        assert_eq!(
            m.text(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n# HELP y Y.\n# TYPE y gauge\ny{m=\"a\\\"b\\\\c\"} 1\n"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn metrics_count_the_tasks_alive() {
        let tasks = || {
            let mut m = Prometheus::new();
            runtime_metrics(&mut m);
            let line = m
                .text()
                .lines()
                .find(|l| l.starts_with("cocoon_tasks "))
                .map(str::to_owned);
            line.and_then(|l| l["cocoon_tasks ".len()..].parse::<usize>().ok())
                .expect("a cocoon_tasks sample")
        };
        let before = tasks();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let held = tokio::spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(tasks(), before + 1);
        drop(tx);
        held.await.unwrap();
        assert_eq!(tasks(), before);
        // Outside a runtime there is nothing to count, and nothing is written.
        let mut m = Prometheus::new();
        std::thread::spawn(move || runtime_metrics(&mut m))
            .join()
            .unwrap();
    }
}
