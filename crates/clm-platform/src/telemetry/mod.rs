//! Logs and traces: `tracing` for everything, exported as OpenTelemetry spans.
//!
//! The OpenTelemetry layer is always installed so every span has a W3C trace context that can be
//! propagated (incoming `traceparent` → server span → outgoing calls and events). Spans are
//! *exported* only when `telemetry.otlp_endpoint` is set; otherwise they are dropped as they
//! end, which costs little.
//!
//! Every log line written inside a span carries that span's OpenTelemetry `trace_id` and
//! `span_id` (`log_ids`), in both formats, so a line leads to its trace. Span kinds, names and
//! attributes follow the OpenTelemetry semantic conventions (`semconv`): SERVER and CLIENT spans
//! for gRPC (`rpc.*`), PRODUCER and CONSUMER spans for events (`messaging.*`).

mod capture;
mod log_ids;
pub mod semconv;

pub use capture::LogCapture;

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, TracerProviderBuilder};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, Settings};

/// Flushes and shuts the tracer provider down when dropped (at process exit).
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {err}");
        }
    }
}

/// A tracer-provider builder with CLM's resource and sampler, and the OTLP exporter when an
/// endpoint is configured. Tests add their own in-memory exporter before [`install`].
pub fn provider_builder(settings: &Settings) -> anyhow::Result<TracerProviderBuilder> {
    let t = &settings.telemetry;
    let resource = Resource::builder()
        .with_service_name(t.service_name.clone())
        .with_attributes([KeyValue::new("deployment.environment.name", settings.env.clone())])
        .build();
    let root = if (t.sample_ratio - 1.0).abs() < f64::EPSILON {
        Sampler::AlwaysOn
    } else {
        Sampler::TraceIdRatioBased(t.sample_ratio)
    };
    let mut builder =
        SdkTracerProvider::builder().with_resource(resource).with_sampler(Sampler::ParentBased(Box::new(root)));
    if !t.otlp_endpoint.is_empty() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(t.otlp_endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder)
}

/// Install the global subscriber (filter + pretty/JSON logs on stderr + OpenTelemetry) and
/// propagator.
pub fn install(settings: &Settings, builder: TracerProviderBuilder) -> anyhow::Result<TelemetryGuard> {
    install_with_writer(settings, builder, std::io::stderr)
}

/// [`install`], with the log lines written to `writer` instead of stderr (tests read them).
pub fn install_with_writer<W>(
    settings: &Settings,
    builder: TracerProviderBuilder,
    writer: W,
) -> anyhow::Result<TelemetryGuard>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = builder.build();
    let tracer = provider.tracer("clm");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.telemetry.log_filter))
        .map_err(|e| anyhow::anyhow!("key `telemetry.log_filter`: {e}"))?;
    tracing_subscriber::registry()
        .with(filter)
        .with(log_layer(settings.log_format(), writer))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The log lines: JSON (one object a line, the event's fields flattened, the current span's
/// fields under `span`) or pretty (compact, one line an event); both with `trace_id` and
/// `span_id` of the span the event happened in (`log_ids`).
fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = log_ids::DispatchCell::default();
    let capture = log_ids::CaptureDispatch(dispatch.clone());
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(log_ids::JsonLines::new(dispatch))
            .with_writer(writer)
            .and_then(capture)
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .event_format(log_ids::Pretty::new(dispatch))
            .with_writer(writer)
            .and_then(capture)
            .boxed(),
    }
}

/// `provider_builder` + `install`: what binaries call at start-up.
pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    install(settings, provider_builder(settings)?)
}

/// The trace id of the current span, for logs and error messages (all zeros when none).
pub fn current_trace_id() -> String {
    tracing::Span::current().context().span().span_context().trace_id().to_string()
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent carried by `traceparent`/`tracestate` headers (empty context if none).
pub fn extract_context(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Write the current span's context as `traceparent`/`tracestate` headers.
pub fn inject_current(headers: &mut http::HeaderMap) {
    inject(&tracing::Span::current(), headers);
}

/// Write `span`'s context as `traceparent`/`tracestate` headers.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The current span's context as a string map (for event envelopes).
pub fn current_context_map() -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map
}

/// The remote parent stored in an event envelope's trace-context map.
pub fn context_from_map(map: &std::collections::HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(map)
}

/// Make `span` a child of `parent` when the parent is a valid remote context.
pub fn set_remote_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Only fails when the span is disabled; then there is nothing to link.
        let _ = span.set_parent(parent);
    }
}
