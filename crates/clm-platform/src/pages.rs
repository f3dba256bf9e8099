//! The hosted pages: the small HTTP surface links in messages open (lifecycle's unsubscribe
//! confirmation, feedback's survey page), on a port of its own (`pages.listen_addr`, 8080).
//!
//! Services contribute routes while they register ([`crate::server::Shared::add_pages`], an
//! `axum::Router` with its state applied); the process merges them and serves one HTTP/1.1
//! server, started by `server::serve` beside the gRPC server and stopped with it (its graceful
//! shutdown begins when the gRPC drain does; a tracked task). A process whose services have no
//! pages (contacts, metrics) opens no port.
//!
//! There is no authentication: a page is authorised by the signed token in its URL, and a token
//! that does not verify is the same [`not_found`] page as a path that does not exist, so nothing
//! tells a visitor whether a contact, a tenant or a delivery exists. Because those tokens are in
//! URLs, every answer carries headers that keep them out of caches, `Referer` headers and other
//! origins, and pages may load nothing from anywhere ([`csp`]):
//!
//! | header | value |
//! |---|---|
//! | `Cache-Control` | `no-store` |
//! | `Referrer-Policy` | `no-referrer` |
//! | `X-Content-Type-Options` | `nosniff` |
//! | `X-Frame-Options` | `DENY` (and CSP `frame-ancestors 'none'`) |
//! | `Content-Security-Policy` | `default-src 'none'`, the one stylesheet of [`document`] by its hash, forms to this origin only |
//!
//! Adding pages: build an `axum::Router` with its state applied (paths of its own: lifecycle has
//! `/u/`; no fallback, the platform's is [`not_found`]), answer with [`page`] (a [`document`]
//! around HTML whose values went through [`escape`]; style only through [`STYLE`], the one the
//! CSP allows; no script), and hand it to `Shared::add_pages` in `Service::register`. A GET
//! never changes anything (mail scanners open links). axum is built without its form and query
//! extractors: read a form as `bytes::Bytes` and parse it with `url::form_urlencoded`.
//!
//! Layers, outermost first: a SERVER span per request (`telemetry::semconv::http_server_span`,
//! named `{method} {route}` with the route template, never the path: the path holds the token) →
//! the headers above → a timeout (`pages.request_timeout_ms` → 503) → the body limit
//! (`pages.max_body_bytes` → 413) → the route. Connections go through the same guard as gRPC's
//! (`crate::listener`: connection cap, handshake and idle timeouts).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::MatchedPath;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::config::Settings;
use crate::listener::{Guard, Limits};
use crate::telemetry::semconv;

/// The one stylesheet of every page ([`document`]); the CSP allows exactly it, by its hash.
pub const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;\
padding:2rem 1rem;background:#f6f7f9;color:#1d2430;line-height:1.5}\
main{max-width:32rem;margin:0 auto;background:#fff;border-radius:.5rem;padding:1.5rem 1.75rem;\
box-shadow:0 1px 3px rgba(0,0,0,.12)}\
h1{font-size:1.4rem;margin:0 0 1rem}\
button{font:inherit;font-weight:600;padding:.7rem 1.4rem;min-height:2.75rem;border:0;border-radius:.35rem;\
background:#1f5fbf;color:#fff;cursor:pointer}\
button:focus-visible{outline:3px solid #0b3d91;outline-offset:2px}\
.note{color:#4a5261;font-size:.95rem}\
fieldset{border:0;margin:0 0 1.75rem;padding:0;min-width:0}\
legend{font-weight:600;padding:0;margin-bottom:.5rem}\
.req{font-weight:400;color:#4a5261}\
.hint{color:#4a5261;font-size:.95rem;margin:0 0 .6rem}\
.error{color:#b00020;font-weight:600;margin:0 0 .6rem}\
.errors{border:2px solid #b00020;border-radius:.35rem;padding:.75rem 1rem;margin:0 0 1.5rem}\
.errors h2{font-size:1.1rem;margin:0 0 .5rem}.errors a{color:#b00020}\
.scale{display:flex;flex-wrap:wrap;gap:.4rem}\
.scale label{position:relative}\
.scale input{position:absolute;top:0;left:0;width:100%;height:100%;margin:0;opacity:0;cursor:pointer}\
.scale span{display:flex;align-items:center;justify-content:center;min-width:2.75rem;min-height:2.75rem;\
box-sizing:border-box;border:1px solid #6b7485;border-radius:.35rem;background:#fff;font-weight:600}\
.scale input:checked+span{background:#1f5fbf;border-color:#1f5fbf;color:#fff}\
.scale input:focus-visible+span{outline:3px solid #0b3d91;outline-offset:2px}\
.choices label{display:flex;align-items:center;gap:.6rem;min-height:2.75rem}\
.choices input{width:1.25rem;height:1.25rem;margin:0;flex:none}\
textarea{font:inherit;width:100%;box-sizing:border-box;min-height:6rem;padding:.6rem;border:1px solid #6b7485;\
border-radius:.35rem}\
textarea:focus-visible,.choices input:focus-visible{outline:3px solid #0b3d91;outline-offset:2px}\
@media (max-width:30rem){body{padding:1rem .5rem}main{padding:1.25rem 1rem}}";

/// The `Content-Security-Policy` of every answer: nothing from anywhere but [`STYLE`], forms
/// posted to this origin only, never framed.
pub fn csp() -> &'static HeaderValue {
    static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
        HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'"
        ))
        .expect("ASCII")
    });
    &CSP
}

/// Text made safe to put in HTML (element content or a quoted attribute).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title` (text, escaped here) and `body` (HTML the caller built, with every
/// value in it passed through [`escape`]), in English, readable on a phone, with [`STYLE`]
/// and no script.
pub fn document(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n<title>{title}</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
}

/// A page answer: `status`, `text/html; charset=utf-8`, [`document`]`(title, body)`.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    (status, Html(document(title, body))).into_response()
}

/// The answer to a path that does not exist and to a link whose token does not verify, alike.
pub fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not found",
        "<h1>This link does not work</h1>\n<p>It may be incomplete or mistyped. Please open it again from the \
         message you received.</p>",
    )
}

/// The answer when the page could not do its work now (a database error): nothing is said
/// about why; the log has it.
pub fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "<h1>Something went wrong</h1>\n<p>We could not complete this just now. Please try again in a few \
         minutes.</p>",
    )
}

/// The routes services contributed, and the listener once bound.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    router: Mutex<Option<Router>>,
    bound: tokio::sync::Mutex<Option<TcpListener>>,
    addr: std::sync::OnceLock<SocketAddr>,
}

impl Registry {
    pub(crate) fn add(&self, routes: Router) {
        let mut router = self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *router = Some(match router.take() {
            Some(r) => r.merge(routes),
            None => routes,
        });
    }

    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// Bind `pages.listen_addr` if any service added pages (once; later calls return the same
    /// address).
    pub(crate) async fn bind(&self, settings: &Settings) -> anyhow::Result<Option<SocketAddr>> {
        let mut bound = self.bound.lock().await;
        if let Some(addr) = self.addr() {
            return Ok(Some(addr));
        }
        if self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none() {
            return Ok(None);
        }
        let at = settings.pages.listen_addr;
        let listener = TcpListener::bind(at)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {at} (key `pages.listen_addr`): {e}"))?;
        let addr = listener.local_addr()?;
        let _ = self.addr.set(addr);
        *bound = Some(listener);
        Ok(Some(addr))
    }

    /// The routes and the bound listener, for [`spawn`] (binding now if not yet done).
    async fn take(&self, settings: &Settings) -> anyhow::Result<Option<(Router, TcpListener)>> {
        if self.bind(settings).await?.is_none() {
            return Ok(None);
        }
        let listener = self.bound.lock().await.take();
        let router = self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        Ok(router.zip(listener))
    }
}

/// The pages of `registry` served on its listener until `stop` resolves, then drained: open
/// connections finish their request and close. `None` when no service has pages.
pub(crate) async fn spawn(
    registry: &Arc<Registry>,
    settings: &Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some((routes, listener)) = registry.take(settings).await? else { return Ok(None) };
    let addr = listener.local_addr()?;
    let app = layered(routes, settings);
    let listener = GuardedListener {
        listener,
        guard: Guard::new(Limits {
            max_connections: settings.server.max_connections,
            handshake_timeout: Duration::from_millis(settings.server.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(settings.server.idle_timeout_ms),
        }),
    };
    tracing::info!(%addr, "serving the hosted pages (HTTP)");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "the hosted pages' server failed");
        }
        tracing::info!("hosted pages stopped");
    })))
}

/// The routes behind the layers every page gets (module docs), with [`not_found`] for any
/// other path.
pub fn layered(routes: Router, settings: &Settings) -> Router {
    let fixed = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    routes
        .fallback(|| async { not_found() })
        .layer(RequestBodyLimitLayer::new(settings.pages.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(settings.pages.request_timeout_ms),
        ))
        .layer(fixed(header::CACHE_CONTROL, "no-store"))
        .layer(fixed(header::REFERRER_POLICY, "no-referrer"))
        .layer(fixed(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(fixed(header::X_FRAME_OPTIONS, "DENY"))
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, csp().clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span::<axum::body::Body>)
                .on_response(semconv::HttpOutcome)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

/// The SERVER span of one request: named after its route template (`POST /u/{token}`), child
/// of the caller's `traceparent` if any.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let span = semconv::http_server_span(req.method().as_str(), route, req.version());
    crate::telemetry::set_remote_parent(&span, crate::telemetry::extract_context(req.headers()));
    span
}

/// Accepted connections through the [`Guard`] (cap, handshake and idle timeouts).
struct GuardedListener {
    listener: TcpListener,
    guard: Arc<Guard>,
}

impl axum::serve::Listener for GuardedListener {
    type Io = crate::listener::Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(io) = self.guard.admit(stream) {
                        return (io, addr);
                    }
                }
                // Out of file descriptors and the like: wait a little instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "hosted pages: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_what_html_and_attributes_need() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_pages_stylesheet() {
        let csp = csp().to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"), "{csp}");
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
        assert!(csp.contains(&hash), "{csp}");
        assert!(!csp.contains("unsafe") && !csp.contains("script-src"), "{csp}");
        let doc = document("A <title>", "<p>x</p>");
        assert!(doc.contains(&format!("<style>{STYLE}</style>")), "the hashed text, byte for byte");
        assert!(doc.contains("<title>A &lt;title&gt;</title>") && doc.contains("<html lang=\"en\">"), "{doc}");
        assert!(!doc.contains("<script"), "{doc}");
    }
}
