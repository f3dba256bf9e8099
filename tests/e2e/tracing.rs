//! Trace context: an incoming `traceparent` becomes the parent of the server span, and an
//! outgoing call made through the platform's channel carries the caller's context.

use std::sync::OnceLock;
use std::task::{Context, Poll};

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_testkit::{self as testing, Backend, TestDb};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, clm_platform::telemetry::TelemetryGuard)> = OnceLock::new();
    &EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let settings = testing::settings(&[("CLM_TELEMETRY__LOG_FILTER", "info")]);
            let builder = SdkTracerProvider::builder().with_simple_exporter(exporter.clone());
            let guard = clm_platform::telemetry::install(&settings, builder).expect("install telemetry");
            (exporter, guard)
        })
        .0
}

/// The first finished span matching `want`, waiting up to 5 s for it to be exported.
async fn finished_span(
    exporter: &InMemorySpanExporter,
    want: impl Fn(&opentelemetry_sdk::trace::SpanData) -> bool,
) -> opentelemetry_sdk::trace::SpanData {
    let start = std::time::Instant::now();
    loop {
        let spans = exporter.get_finished_spans().unwrap();
        if let Some(s) = spans.iter().find(|s| want(s)) {
            return s.clone();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "no such span; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_parents_the_server_span_and_outgoing_calls_carry_it() {
    let exporter = exporter();
    let db = TestDb::create(Backend::Sqlite, "trace").await.unwrap();
    let server =
        testing::spawn::<clm_contacts::ContactsService>(testing::settings(&[("CLM_CONTACTS__DATABASE_URL", &db.url)]))
            .await;

    // 1. A raw traceparent header from a caller outside CLM.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let mut client = ContactsServiceClient::new(server.authed(&testing::token("acme", "clm.read")).await);
    let mut req = tonic::Request::new(pb::ListContactsRequest::default());
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{parent_span}-01").parse().unwrap());
    client.list_contacts(req).await.unwrap();
    // The server span ends (and is exported) a moment after the response is on its way.
    let server_span = finished_span(exporter, |s| {
        s.name.contains("ListContacts") && s.span_context.trace_id() == TraceId::from_hex(trace_id).unwrap()
    })
    .await;
    assert_eq!(server_span.parent_span_id, SpanId::from_hex(parent_span).unwrap());

    // 2. An outgoing call through the platform channel, made inside a span, carries that span's
    //    context: the server span lands in the same trace, as its child.
    let channel =
        clm_platform::client::channel(&server.url(), &clm_platform::config::TlsSettings::default(), None).unwrap();
    let token = testing::token("acme", "clm.read");
    let caller = tracing::info_span!("caller");
    let caller_cx = caller.context().span().span_context().clone();
    let mut c2 = ContactsServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(r)
    });
    {
        let _g = caller.enter();
        c2.get_contact(pb::GetContactRequest { id: uuid::Uuid::new_v4().to_string() }).await.unwrap_err();
    }
    drop(caller);
    let child =
        finished_span(exporter, |s| s.name.contains("GetContact") && s.span_context.trace_id() == caller_cx.trace_id())
            .await;
    assert_eq!(child.parent_span_id, caller_cx.span_id());
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// The propagation layer writes `traceparent` of the current span into request headers.
#[tokio::test]
async fn propagation_layer_injects_traceparent() {
    let _ = exporter();
    #[derive(Clone)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Option<String>>>);
    impl tower::Service<http::Request<()>> for Capture {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), std::convert::Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            *self.0.lock().unwrap() = req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned());
            std::future::ready(Ok(()))
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut svc = clm_platform::client::TracePropagation::new(Capture(seen.clone()));
    let span = tracing::info_span!("outgoing");
    let cx = span.context().span().span_context().clone();
    {
        let _g = span.enter();
        tower::Service::call(&mut svc, http::Request::new(())).await.unwrap();
    }
    let header = seen.lock().unwrap().clone().expect("traceparent sent");
    assert_eq!(header, format!("00-{}-{}-01", cx.trace_id(), cx.span_id()));
}

/// One trace from the gRPC request through the outbox relay to the consumer in another service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_the_event_to_the_consumer() {
    let exporter = exporter();
    let contacts_db = TestDb::create(Backend::Sqlite, "tc").await.unwrap();
    let metrics_db = TestDb::create(Backend::Sqlite, "tm").await.unwrap();
    let server =
        testing::spawn_pair::<clm_contacts::ContactsService, clm_metrics::MetricsService>(testing::settings(&[
            ("CLM_CONTACTS__DATABASE_URL", &contacts_db.url),
            ("CLM_METRICS__DATABASE_URL", &metrics_db.url),
        ]))
        .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut client = ContactsServiceClient::new(server.authed(&testing::token("acme", "clm.write")).await);
    let mut req = tonic::Request::new(pb::CreateContactRequest {
        contact: Some(pb::Contact { email: "traced@example.com".into(), ..Default::default() }),
        request_id: String::new(),
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01").parse().unwrap());
    client.create_contact(req).await.unwrap();

    let tid = TraceId::from_hex(trace_id).unwrap();
    let mut names = Vec::new();
    for _ in 0..200 {
        names = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == tid)
            .map(|s| s.name.to_string())
            .collect::<Vec<_>>();
        if names.iter().any(|n| n.starts_with("consume ")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(names.iter().any(|n| n.contains("CreateContact")), "request span: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("publish clm.contacts.")), "relay span: {names:?}");
    assert!(names.iter().any(|n| n == "consume clm.events.v1.ContactCreated"), "consumer span: {names:?}");
    server.stop().await.unwrap();
}
