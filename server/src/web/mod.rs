//! The read-only web dashboard on `[web] listen`: HTML pages (`pages`), the JSON API behind them (`api`), Prometheus
//! `/metrics` (`metrics`) and the vendored chart library (`assets/`, uPlot, MIT). Nothing here writes: the server
//! reads through its own read-only connection to the database, never the ingest writer's, and only GET (and HEAD)
//! is routed.
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles from this server only, no inline
//! script). With `[web] token_env`, every request must present the token (HTTP Basic password or `Authorization:
//! Bearer`), compared in constant time; without it the server listens on loopback only (`vigil check` refuses
//! anything else).

mod api;
mod metrics;
mod pages;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::endpoint::Shared;
use crate::ingest::IngestHandle;
use crate::store::{Store, StoreError};

pub use metrics::render as render_metrics;

/// The policy every response carries: nothing from other sites, no inline script, no framing, no forms.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("[web] token_env names {var}, which is not set (or empty) in the environment")]
    TokenMissing { var: String },
    #[error("cannot listen on {addr} for the web dashboard")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The access token: never printed.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token named by `token_env`, read from the environment.
    pub fn from_env(var: &str) -> Result<Token, WebError> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Token(Arc::from(v.into_bytes()))),
            _ => Err(WebError::TokenMissing { var: var.to_owned() }),
        }
    }

    /// Whether `given` is the token, in time independent of where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // Lengths differ: compare with itself so the time does not depend on the token's content either.
        if given.len() != self.0.len() {
            let _ = self.0.ct_eq(&self.0);
            return false;
        }
        self.0.ct_eq(given).into()
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct WebState {
    /// The read-only connection; queries run on the blocking pool, one at a time.
    store: Mutex<Store>,
    config: watch::Receiver<Arc<Config>>,
    token: Option<Token>,
    /// The daemon's own health for `/metrics`; absent in tests that run the dashboard alone.
    health: Option<Health>,
}

/// Where `/metrics` reads vigil's own counters.
#[derive(Debug, Clone)]
pub struct Health {
    pub endpoint: Arc<Shared>,
    pub ingest: IngestHandle,
}

impl WebState {
    /// Opens the database `[server]` names, read-only, for the dashboard.
    pub fn open(
        server: &crate::config::ServerSettings,
        config: watch::Receiver<Arc<Config>>,
        token: Option<Token>,
        health: Option<Health>,
    ) -> Result<WebState, WebError> {
        Ok(Self::with_store(Store::open_server_readonly(server)?, config, token, health))
    }

    /// The dashboard's state over an open store.
    pub fn with_store(
        store: Store,
        config: watch::Receiver<Arc<Config>>,
        token: Option<Token>,
        health: Option<Health>,
    ) -> WebState {
        WebState { store: Mutex::new(store), config, token, health }
    }

    /// Runs `f` on the store on the blocking pool.
    async fn read<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store, &Config) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, Response> {
        let state = self.clone();
        let config = self.config.borrow().clone();
        let joined = tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a read-only connection half-changed.
            let store = state.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&store, &config)
        })
        .await;
        match joined {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "web: database read failed");
                Err((StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response())
            }
            Err(e) => {
                tracing::error!(error = %e, "web: a request's database read failed");
                Err(StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
        }
    }
}

/// The routes, with the token check and the security headers on every one.
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(pages::fleet))
        .route("/hosts/{name}", get(pages::host))
        .route("/alerts", get(pages::alerts))
        .route("/api/hosts", get(api::hosts))
        .route("/api/series", get(api::series))
        .route("/metrics", get(metrics::handler))
        .route("/assets/{file}", get(asset))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Serves the dashboard on `listener` until `cancel` fires.
pub async fn run(listener: TcpListener, state: Arc<WebState>, cancel: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::error!(error = %e, "web dashboard stopped");
    }
}

async fn require_token(State(state): State<Arc<WebState>>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else { return next.run(req).await };
    if presented(req.headers()).is_some_and(|given| token.matches(&given)) {
        return next.run(req).await;
    }
    let mut resp = (StatusCode::UNAUTHORIZED, "this vigil dashboard needs its access token\n").into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"vigil\""));
    resp
}

/// The token a request presents: a Bearer token, or the password of HTTP Basic (any user name).
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    if let Some(bearer) = value.strip_prefix(b"Bearer ") {
        return Some(bearer.to_vec());
    }
    let basic = value.strip_prefix(b"Basic ")?;
    let decoded = base64_decode(basic)?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Standard base64 (with or without padding); `None` on anything else.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text: &[u8] = match text {
        [rest @ .., b'=', b'='] | [rest @ .., b'='] => rest,
        t => t,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// The vendored chart library and the dashboard's own script and style, compiled into the binary.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "uPlot.iife.min.js" => (include_bytes!("assets/uPlot.iife.min.js"), "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (include_bytes!("assets/uPlot.min.css"), "text/css; charset=utf-8"),
        "uPlot.LICENSE" => (include_bytes!("assets/uPlot.LICENSE"), "text/plain; charset=utf-8"),
        "app.js" => (include_bytes!("assets/app.js"), "text/javascript; charset=utf-8"),
        "app.css" => (include_bytes!("assets/app.css"), "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_basic_or_bearer_and_compared_whole() {
        let token = Token(Arc::from(b"s3cret".to_vec()));
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(token.matches(&presented(&h).unwrap()));
        // "prom:s3cret"
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic cHJvbTpzM2NyZXQ="));
        assert!(token.matches(&presented(&h).unwrap()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cre"));
        assert!(!token.matches(&presented(&h).unwrap()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret!"));
        assert!(!token.matches(&presented(&h).unwrap()));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert_eq!(base64_decode(b"YQ"), Some(b"a".to_vec()));
        assert_eq!(base64_decode(b"Y!=="), None);
    }
}

/// The dashboard over real HTTP on a loopback port, fed by a store with hostile agent-supplied strings.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod http_tests {
    use super::*;
    use crate::store::Incoming;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use vigil_schema::report::Report;

    const SCRIPT: &str = "<script>alert(1)</script>";

    async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
        request(addr, "GET", path, auth).await
    }

    async fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, out)
    }

    /// A served dashboard over a database holding one report of `web1` whose strings carry `<script>`.
    async fn serve(token: Option<&str>) -> (SocketAddr, CancellationToken, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let clients = dir.path().join("clients.xml");
        let jobs = dir.path().join("jobs.toml");
        std::fs::write(&clients, "<clients><client name=\"web1\" ip=\"10.0.0.1\" transport=\"local\"/></clients>")
            .unwrap();
        std::fs::write(
            &jobs,
            "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[web]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let config = crate::config::Config::load(&clients, &jobs).unwrap().config;
        let db = dir.path().join("v.db");
        let mut store = Store::open(&db).unwrap();
        let now = vigil_sys::clock::now_ms();
        let mut r = Report::example(1, now);
        if let Some(d) = r.stats.disk_usage.as_mut() {
            d[0].mount_point = format!("/mnt/{SCRIPT}");
        }
        if let Some(s) = r.stats.system.as_mut() {
            s.hostname = SCRIPT.into();
        }
        if let Some(n) = r.stats.network.as_mut() {
            n[0].name = format!("e\"{SCRIPT}");
        }
        r.validate().unwrap();
        let inc = Incoming {
            agent_id: "ag".into(),
            host: "web1".into(),
            ip: "10.0.0.1".into(),
            received_at_ms: now,
            report: r,
        };
        store.insert_reports(&[inc]).unwrap();
        drop(store);
        let (_tx, rx) = watch::channel(Arc::new(config));
        let token = token.map(|t| Token(Arc::from(t.as_bytes().to_vec())));
        let state = Arc::new(WebState::with_store(Store::open_readonly(&db).unwrap(), rx, token, None));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(run(listener, state, cancel.clone()));
        (addr, cancel, dir)
    }

    #[tokio::test]
    async fn agent_supplied_text_is_escaped_and_every_page_sends_the_policy() {
        let (addr, cancel, _dir) = serve(None).await;
        for path in ["/", "/hosts/web1", "/alerts", "/api/hosts", "/metrics", "/assets/app.js", "/nope"] {
            let (code, resp) = get(addr, path, None).await;
            assert!(code == 200 || path == "/nope", "{path}: {resp}");
            assert!(resp.contains(&format!("content-security-policy: {CSP}")), "{path}: {resp}");
        }
        let (_, host) = get(addr, "/hosts/web1", None).await;
        assert!(!host.contains("<script>alert"), "{host}");
        assert!(host.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the hostname is shown, escaped: {host}");
        let (_, fleet) = get(addr, "/", None).await;
        assert!(fleet.contains("/mnt/&lt;script&gt;"), "the fullest disk is shown, escaped: {fleet}");
        assert!(!fleet.contains("<script>alert"), "{fleet}");
        // Only the page's own script tags: no inline script anywhere.
        assert!(fleet.matches("<script").count() == 2 && fleet.contains("<script src=\"/assets/app.js\""), "{fleet}");
        let (_, metrics) = get(addr, "/metrics", None).await;
        assert!(metrics.contains("device=\"e\\\"<script>alert(1)</script>\""), "label values escaped: {metrics}");
        let (code, series) = get(addr, "/api/series?host=web1&metric=disk&points=10", None).await;
        assert_eq!(code, 200, "{series}");
        assert!(series.contains("\"label\":\"/mnt/<script>alert(1)</script>\""), "{series}");
        // Nothing changes state: no other method is routed.
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            assert_eq!(request(addr, method, "/api/hosts", None).await.0, 405, "{method}");
        }
        cancel.cancel();
    }

    #[tokio::test]
    async fn with_a_token_every_request_without_it_is_refused() {
        let (addr, cancel, _dir) = serve(Some("s3cret")).await;
        for path in ["/", "/hosts/web1", "/metrics", "/api/hosts", "/assets/app.js", "/nope"] {
            let (code, resp) = get(addr, path, None).await;
            assert_eq!(code, 401, "{path}: {resp}");
            assert!(!resp.contains("web1"), "{path}: {resp}");
            assert_eq!(get(addr, path, Some("Bearer wrong")).await.0, 401, "{path}");
        }
        assert_eq!(get(addr, "/metrics", Some("Bearer s3cret")).await.0, 200);
        // "prometheus:s3cret"
        assert_eq!(get(addr, "/", Some("Basic cHJvbWV0aGV1czpzM2NyZXQ=")).await.0, 200);
        cancel.cancel();
    }
}
