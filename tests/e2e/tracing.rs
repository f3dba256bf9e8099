//! Trace context: an incoming `traceparent` becomes the parent of the server span, and an
//! outgoing call made through the platform's channel carries the caller's context. Spans follow
//! the OpenTelemetry conventions (SERVER and CLIENT with `rpc.*`, PRODUCER and CONSUMER for
//! events), and every log line written inside a call carries its trace and span ids.

use std::sync::OnceLock;
use std::task::{Context, Poll};

use clm_platform::telemetry::LogCapture;
use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_testkit::{self as testing, Backend, TestDb};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt, TraceId};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The subscriber of this test binary: spans to memory, JSON log lines to memory (tower-http's
/// per-call lines included, at debug).
fn telemetry() -> &'static (InMemorySpanExporter, LogCapture, clm_platform::telemetry::TelemetryGuard) {
    static TELEMETRY: OnceLock<(InMemorySpanExporter, LogCapture, clm_platform::telemetry::TelemetryGuard)> =
        OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let logs = LogCapture::default();
        let settings = testing::settings(&[
            ("CLM_TELEMETRY__LOG_FILTER", "info,tower_http=debug"),
            ("CLM_TELEMETRY__LOG_FORMAT", "json"),
        ]);
        let builder = SdkTracerProvider::builder().with_simple_exporter(exporter.clone());
        let guard =
            clm_platform::telemetry::install_with_writer(&settings, builder, logs.clone()).expect("install telemetry");
        (exporter, logs, guard)
    })
}

fn exporter() -> &'static InMemorySpanExporter {
    &telemetry().0
}

fn attr(span: &SpanData, key: &'static str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key == Key::from_static_str(key)).map(|kv| kv.value.clone())
}

/// The `rpc.*` attributes of a gRPC span: system, service, method, status code.
fn rpc(span: &SpanData) -> (String, String, String, Option<i64>) {
    let s = |k| attr(span, k).map(|v| v.as_str().into_owned()).unwrap_or_default();
    let code = attr(span, "rpc.grpc.status_code").and_then(|v| match v {
        Value::I64(c) => Some(c),
        _ => None,
    });
    (s("rpc.system"), s("rpc.service"), s("rpc.method"), code)
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
    assert_eq!(server_span.span_kind, SpanKind::Server);
    assert_eq!(server_span.name, "clm.contacts.v1.ContactsService/ListContacts");
    assert_eq!(
        rpc(&server_span),
        ("grpc".into(), "clm.contacts.v1.ContactsService".into(), "ListContacts".into(), Some(0))
    );

    // 2. An outgoing call through the platform channel, made inside a span, is a CLIENT span
    //    child of it, and carries the CLIENT span's context: the server span is its child.
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
    let caller_trace = caller_cx.trace_id();
    let in_trace = |kind: SpanKind| {
        move |s: &SpanData| {
            s.name == "clm.contacts.v1.ContactsService/GetContact"
                && s.span_kind == kind
                && s.span_context.trace_id() == caller_trace
        }
    };
    let client = finished_span(exporter, in_trace(SpanKind::Client)).await;
    assert_eq!(client.parent_span_id, caller_cx.span_id());
    assert_eq!(
        rpc(&client),
        ("grpc".into(), "clm.contacts.v1.ContactsService".into(), "GetContact".into(), Some(5)),
        "NOT_FOUND"
    );
    assert!(matches!(client.status, Status::Error { .. }), "a client's NOT_FOUND is an error: {:?}", client.status);
    let child = finished_span(exporter, in_trace(SpanKind::Server)).await;
    assert_eq!(child.parent_span_id, client.span_context.span_id());
    assert_eq!(rpc(&child).3, Some(5));
    assert_eq!(child.status, Status::Unset, "the caller's mistake is not the server's error");
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// A service asking contacts (metrics resolving a segment filter) makes a CLIENT span between
/// its own SERVER span and the contacts service's, all in the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_one_service_to_another_is_a_client_span_between_their_server_spans() {
    let exporter = exporter();
    let contacts_db = TestDb::create(Backend::Sqlite, "tcc").await.unwrap();
    let metrics_db = TestDb::create(Backend::Sqlite, "tcm").await.unwrap();
    let server =
        testing::spawn_pair::<clm_contacts::ContactsService, clm_metrics::MetricsService>(testing::settings(&[
            ("CLM_CONTACTS__DATABASE_URL", &contacts_db.url),
            ("CLM_METRICS__DATABASE_URL", &metrics_db.url),
        ]))
        .await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let mut metrics = clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient::new(
        server.authed(&testing::token("acme", "clm.read")).await,
    );
    let mut req = tonic::Request::new(clm_proto::metrics::v1::GetFunnelRequest {
        scope: Some(clm_proto::metrics::v1::MetricsScope {
            segment_filter: "email = \"nobody@example.com\"".into(),
            ..Default::default()
        }),
        conversion_window: None,
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    metrics.get_funnel(req).await.unwrap();

    let tid = TraceId::from_hex(trace_id).unwrap();
    let asked = finished_span(exporter, |s| s.span_context.trace_id() == tid && s.name.ends_with("/GetFunnel")).await;
    let list = "clm.contacts.v1.ContactsService/ListContacts";
    let client = finished_span(exporter, |s| {
        s.span_context.trace_id() == tid && s.name == list && s.span_kind == SpanKind::Client
    })
    .await;
    let answered = finished_span(exporter, |s| {
        s.span_context.trace_id() == tid && s.name == list && s.span_kind == SpanKind::Server
    })
    .await;
    assert_eq!(asked.span_kind, SpanKind::Server);
    assert_eq!(client.parent_span_id, asked.span_context.span_id(), "the call is made inside the metrics call");
    assert_eq!(answered.parent_span_id, client.span_context.span_id(), "contacts answers the CLIENT span");
    assert_eq!(rpc(&client), ("grpc".into(), "clm.contacts.v1.ContactsService".into(), "ListContacts".into(), Some(0)));
    assert_eq!(client.status, Status::Unset);
    server.stop().await.unwrap();
}

/// Every log line written inside a call carries the call's trace id and its SERVER span's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_inside_a_call_carry_its_trace_and_span_ids() {
    let (exporter, logs, _) = telemetry();
    let db = TestDb::create(Backend::Sqlite, "tlog").await.unwrap();
    let server =
        testing::spawn::<clm_contacts::ContactsService>(testing::settings(&[("CLM_CONTACTS__DATABASE_URL", &db.url)]))
            .await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4738";
    let mut client = ContactsServiceClient::new(server.authed(&testing::token("acme", "clm.read")).await);
    let mut req = tonic::Request::new(pb::ListContactsRequest::default());
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    client.list_contacts(req).await.unwrap();
    let span = finished_span(exporter, |s| {
        s.span_context.trace_id() == TraceId::from_hex(trace_id).unwrap() && s.span_kind == SpanKind::Server
    })
    .await;

    let lines: Vec<serde_json::Value> = logs.json_lines().into_iter().filter(|l| l["trace_id"] == trace_id).collect();
    let done = lines
        .iter()
        .find(|l| l["message"] == "finished processing request")
        .unwrap_or_else(|| panic!("no line of the call with its trace id in {}", logs.text()));
    assert_eq!(done["span_id"], span.span_context.span_id().to_string().as_str(), "{done}");
    assert_eq!(done["span"]["rpc.method"], "ListContacts", "{done}");
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
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            *self.0.lock().unwrap() = req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned());
            std::future::ready(Ok(http::Response::new(())))
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut svc = clm_platform::client::TracePropagation::new(Capture(seen.clone()));
    let span = tracing::info_span!("outgoing");
    let cx = span.context().span().span_context().clone();
    {
        let _g = span.enter();
        let req = http::Request::builder().uri("/clm.test.v1.Probe/Ping").body(()).unwrap();
        drop(tower::Service::call(&mut svc, req).await.unwrap());
    }
    let header = seen.lock().unwrap().clone().expect("traceparent sent");
    let client =
        finished_span(exporter(), |s| s.name == "clm.test.v1.Probe/Ping" && s.span_context.trace_id() == cx.trace_id())
            .await;
    assert_eq!(client.span_kind, SpanKind::Client);
    assert_eq!(client.parent_span_id, cx.span_id());
    assert_eq!(
        header,
        format!("00-{}-{}-01", cx.trace_id(), client.span_context.span_id()),
        "the CLIENT span's context"
    );
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
    let subject = "clm.contacts.contact.ContactCreated";
    let request =
        finished_span(exporter, |s| s.span_context.trace_id() == tid && s.name.ends_with("/CreateContact")).await;
    let publish =
        finished_span(exporter, |s| s.span_context.trace_id() == tid && s.name == format!("publish {subject}")).await;
    let process = finished_span(exporter, |s| {
        s.span_context.trace_id() == tid
            && s.name == format!("process {subject}")
            && attr(s, "messaging.consumer.group.name").is_some_and(|v| v.as_str() == "metrics")
    })
    .await;
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(publish.parent_span_id, request.span_context.span_id(), "publish: child of the request");
    assert_eq!(process.parent_span_id, request.span_context.span_id(), "process: child of the request");
    assert!(
        process.links.iter().any(|l| l.span_context.span_id() == request.span_context.span_id()),
        "process: linked to the request that wrote the event: {:?}",
        process.links
    );
    let message_id = attr(&publish, "messaging.message.id").expect("publish: messaging.message.id");
    assert_eq!(attr(&process, "messaging.message.id"), Some(message_id), "the same event");
    for span in [&publish, &process] {
        assert_eq!(attr(span, "messaging.system").map(|v| v.as_str().into_owned()).as_deref(), Some("clm_log"));
        assert_eq!(attr(span, "messaging.destination.name").map(|v| v.as_str().into_owned()).as_deref(), Some(subject));
    }
    server.stop().await.unwrap();
}
