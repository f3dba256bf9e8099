//! The event path as a trace viewer and a log reader see it: the relay's publish is a PRODUCER
//! span and a consumer's apply a CONSUMER span, both with the `messaging.*` attributes of the
//! OpenTelemetry conventions and both children of the span the event was written in (the
//! consumer's also linked to it); a line a handler logs carries the ids of its CONSUMER span.

mod common;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use clm_platform::TenantId;
use clm_platform::events::inbox::EventHandler;
use clm_platform::events::log_bus::LogBus;
use clm_platform::events::outbox::{OutboxWriter, relay_once};
use clm_platform::telemetry::{LogCapture, TelemetryGuard, install_with_writer, semconv};
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use clm_testkit::{self as testing, Backend, TestDb};
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sea_orm::DatabaseTransaction;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Telemetry {
    spans: InMemorySpanExporter,
    logs: LogCapture,
    _guard: TelemetryGuard,
}

/// The process-wide subscriber of this test binary: spans to memory, JSON logs to memory.
fn telemetry() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let logs = LogCapture::default();
        let settings =
            testing::settings(&[("CLM_TELEMETRY__LOG_FORMAT", "json"), ("CLM_TELEMETRY__LOG_FILTER", "info")]);
        let builder = SdkTracerProvider::builder().with_simple_exporter(spans.clone());
        let guard = install_with_writer(&settings, builder, logs.clone()).expect("install telemetry");
        Telemetry { spans, logs, _guard: guard }
    })
}

/// Logs a line for every event it applies.
struct Logging;

#[async_trait]
impl EventHandler for Logging {
    async fn handle(&self, _: &clm_platform::events::UnitOfWork, e: &ev::EventEnvelope) -> clm_platform::Result<()> {
        tracing::info!(applied_event = %e.event_id, "applied in the test handler");
        Ok(())
    }

    async fn reset(&self, _: &DatabaseTransaction) -> clm_platform::Result<()> {
        Ok(())
    }
}

fn attr(span: &SpanData, key: &'static str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key == Key::from_static_str(key)).map(|kv| kv.value.clone())
}

fn string(span: &SpanData, key: &'static str) -> String {
    attr(span, key).map_or_else(|| panic!("{} has no {key}: {span:?}", span.name), |v| v.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_and_processed_under_messaging_spans_and_handler_logs_carry_their_ids() {
    let t = telemetry();
    let Some(tdb) = TestDb::create(Backend::Sqlite, "telemetry").await else { return };
    let db = clm_platform::db::connect(&tdb.url, &common::db_settings()).await.unwrap();
    clm_platform::db::migrate::<common::TestMigrator>(&db).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<LogBus> = Arc::new(
        LogBus::connect(&format!("sqlite://{}/bus.db?mode=rwc", dir.path().display()), &common::db_settings())
            .await
            .unwrap(),
    );

    // A request writes an event.
    let service = "teltest";
    let outbox = OutboxWriter::new(service);
    let request = tracing::info_span!("request");
    let request_cx = request.context().span().span_context().clone();
    let env = async {
        let txn = clm_platform::events::UnitOfWork::begin(&db).await.unwrap();
        let env = outbox
            .append(
                &txn,
                &TenantId::parse("acme").unwrap(),
                "contact",
                "c1",
                0,
                Payload::ContactUpdated(ev::ContactUpdated {
                    contact_id: "c1".into(),
                    changed_paths: vec!["1".into()],
                    facts: None,
                }),
            )
            .await
            .unwrap();
        txn.commit().await.unwrap();
        env
    }
    .instrument(request.clone())
    .await;
    drop(request);

    // The relay publishes it; a consumer applies it.
    assert_eq!(relay_once(&db, bus.as_ref(), 10).await.unwrap(), 1);
    let mut spec = common::spec("telemetry", service);
    spec.system = semconv::LOG_BUS;
    let done = clm_platform::events::consumer::consume_once(bus.as_ref(), &db, &spec, &spec.prefixes[0], &Logging)
        .await
        .unwrap();
    assert_eq!(done.done, 1);

    let subject = format!("clm.{service}.contact.ContactUpdated");
    let spans: Vec<SpanData> = t
        .spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == request_cx.trace_id())
        .collect();
    let named = |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };

    let publish = named(&format!("publish {subject}"));
    assert_eq!(publish.len(), 1, "one publish span: {spans:?}");
    let publish = publish[0];
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(publish.parent_span_id, request_cx.span_id(), "child of the span that wrote the event");
    assert_eq!(string(publish, "messaging.system"), "clm_log");
    assert_eq!(string(publish, "messaging.destination.name"), subject);
    assert_eq!(string(publish, "messaging.message.id"), env.event_id);
    assert_eq!(string(publish, "messaging.operation.type"), "send");
    assert_eq!(string(publish, "messaging.operation.name"), "publish");

    let process = named(&format!("process {subject}"));
    assert_eq!(process.len(), 1, "one process span for one event: {spans:?}");
    let process = process[0];
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(process.parent_span_id, request_cx.span_id());
    assert!(
        process
            .links
            .iter()
            .any(|l| l.span_context.trace_id() == request_cx.trace_id()
                && l.span_context.span_id() == request_cx.span_id()),
        "linked to the creation context: {:?}",
        process.links
    );
    assert_eq!(string(process, "messaging.system"), "clm_log");
    assert_eq!(string(process, "messaging.destination.name"), subject);
    assert_eq!(string(process, "messaging.message.id"), env.event_id);
    assert_eq!(string(process, "messaging.operation.type"), "process");
    assert_eq!(string(process, "messaging.consumer.group.name"), "telemetry");

    // The handler's line leads to the CONSUMER span.
    let lines = t.logs.json_lines();
    let line = lines
        .iter()
        .find(|l| l["applied_event"] == env.event_id.as_str())
        .unwrap_or_else(|| panic!("no handler line in {}", t.logs.text()));
    assert_eq!(line["trace_id"], process.span_context.trace_id().to_string().as_str(), "{line}");
    assert_eq!(line["span_id"], process.span_context.span_id().to_string().as_str(), "{line}");
    tdb.cleanup().await;
}
