//! Logs and traces: `tracing` for everything, exported as OpenTelemetry spans.
//!
//! The OpenTelemetry layer is always installed so every span has a W3C trace context that can be
//! propagated (incoming `traceparent` → server span → outgoing calls and events). Spans are
//! *exported* only when `telemetry.otlp_endpoint` is set; otherwise they are dropped as they
//! end, which costs little.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, TracerProviderBuilder};
use tracing_opentelemetry::OpenTelemetrySpanExt;
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

/// Install the global subscriber (filter + pretty/JSON logs + OpenTelemetry) and propagator.
pub fn install(settings: &Settings, builder: TracerProviderBuilder) -> anyhow::Result<TelemetryGuard> {
    let provider = builder.build();
    let tracer = provider.tracer("clm");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.telemetry.log_filter))
        .map_err(|e| anyhow::anyhow!("key `telemetry.log_filter`: {e}"))?;
    let fmt_layer = match settings.log_format() {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        _ => tracing_subscriber::fmt::layer().with_target(false).compact().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    Ok(TelemetryGuard { provider })
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
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
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
