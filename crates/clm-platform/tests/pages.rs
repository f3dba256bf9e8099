//! The hosted pages' server over real HTTP (`clm_platform::pages`): the routes two services add
//! are served together on one port of their own, beside gRPC; every answer (a page, the 404 of
//! an unknown path, a refused body, a timeout) carries the privacy headers; each request is a
//! SERVER span named after its route, never its path, child of the caller's `traceparent`; the
//! pages stop with the server; a process without pages opens no port.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use clm_platform::server::{Shared, serve};
use clm_platform::telemetry::{LogCapture, TelemetryGuard, install_with_writer};
use clm_testkit::http::{Answer, request};
use clm_testkit::{self as testing};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tonic::service::RoutesBuilder;

struct Telemetry {
    spans: InMemorySpanExporter,
    _guard: TelemetryGuard,
}

fn telemetry() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let settings = testing::settings(&[("CLM_TELEMETRY__LOG_FILTER", "info")]);
        let builder = SdkTracerProvider::builder().with_simple_exporter(spans.clone());
        let guard = install_with_writer(&settings, builder, LogCapture::default()).expect("install telemetry");
        Telemetry { spans, _guard: guard }
    })
}

fn attr(span: &SpanData, key: &'static str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key == Key::from_static_str(key)).map(|kv| kv.value.clone())
}

fn assert_private(a: &Answer) {
    for (name, value) in [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(a.header(name), Some(value), "{name}: {a:?}");
    }
    let csp = a.header("content-security-policy").unwrap_or_default();
    assert_eq!(csp, clm_platform::pages::csp().to_str().unwrap(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_several_services_are_served_privately_and_traced_by_route() {
    let t = telemetry();
    let settings =
        testing::settings(&[("CLM_PAGES__REQUEST_TIMEOUT_MS", "300"), ("CLM_PAGES__MAX_BODY_BYTES", "1024")]);
    let shared = Shared::new(settings).await.unwrap();
    // Two services' routes, as `register` would add them.
    shared.add_pages(Router::new().route(
        "/a/{token}",
        get(|Path(token): Path<String>| async move {
            clm_platform::pages::page(
                http::StatusCode::OK,
                "A",
                &format!("<p>{}</p>", clm_platform::pages::escape(&token)),
            )
        }),
    ));
    shared.add_pages(
        Router::new()
            .route("/b", post(|body: String| async move { format!("{} bytes", body.len()) }))
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await })),
    );
    let addr = shared.bind_pages().await.unwrap().expect("pages bound");
    assert_ne!(addr.port(), 0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(&shared, listener, RoutesBuilder::default(), vec![], async move {
                let _ = stopped.await;
            })
            .await
        })
    };
    let base = format!("http://{addr}");
    testing::wait_for("the pages answer", async || tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let a = request("GET", &format!("{base}/a/se%3Ccret%3E"), &[("traceparent", &parent)], b"").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_private(&a);
    assert!(a.body.contains("<p>se&lt;cret&gt;</p>"), "escaped: {}", a.body);
    let b = request("POST", &format!("{base}/b"), &[("content-type", "text/plain")], b"hello").await;
    assert_eq!((b.status.as_u16(), b.body.as_str()), (200, "5 bytes"), "the second service's route");
    assert_private(&b);

    let unknown = request("GET", &format!("{base}/nowhere"), &[], b"").await;
    assert_eq!(unknown.status, 404);
    assert_private(&unknown);
    assert_eq!(unknown.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(unknown.body.contains("This link does not work"), "{}", unknown.body);
    let big = request("POST", &format!("{base}/b"), &[("content-type", "text/plain")], &[b'x'; 2048]).await;
    assert_eq!(big.status, 413, "{big:?}");
    assert_private(&big);
    let slow = request("GET", &format!("{base}/slow"), &[], b"").await;
    assert_eq!(slow.status, 503, "{slow:?}");
    assert_private(&slow);
    // gRPC is still where it was: the pages are another port.
    assert_ne!(grpc.port(), addr.port());

    // The SERVER span: named by route, the token nowhere, child of the caller's context.
    let spans = testing::wait_for("the page's span", async || {
        let spans = t.spans.get_finished_spans().unwrap();
        spans.iter().any(|s| s.name == "GET /a/{token}").then_some(spans)
    })
    .await;
    let span = spans.iter().find(|s| s.name == "GET /a/{token}").unwrap();
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(span.span_context.trace_id().to_string(), trace_id);
    assert_eq!(attr(span, "http.route").map(|v| v.as_str().into_owned()).as_deref(), Some("/a/{token}"));
    assert_eq!(attr(span, "http.request.method").map(|v| v.as_str().into_owned()).as_deref(), Some("GET"));
    assert_eq!(attr(span, "http.response.status_code"), Some(Value::I64(200)));
    assert!(!format!("{span:?}").contains("cret"), "the token is not recorded: {span:?}");
    let timed_out = testing::wait_for("the slow span", async || {
        let spans = t.spans.get_finished_spans().unwrap();
        spans.into_iter().find(|s| s.name == "GET /slow")
    })
    .await;
    assert_eq!(attr(&timed_out, "http.response.status_code"), Some(Value::I64(503)));
    assert!(
        matches!(timed_out.status, opentelemetry::trace::Status::Error { .. }),
        "a 5xx is the server's error: {timed_out:?}"
    );

    // The pages stop with the server.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops").unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the pages port is closed");
}

#[tokio::test]
async fn a_process_without_pages_opens_no_port() {
    let shared = Shared::new(testing::settings(&[("CLM_PAGES__LISTEN_ADDR", "127.0.0.1:1")])).await.unwrap();
    assert_eq!(shared.bind_pages().await.unwrap(), None, "nothing bound, not even an unusable address");
    assert_eq!(shared.pages_addr(), None);
}
