//! Trace ids in log lines: every line written inside a span carries the OpenTelemetry
//! `trace_id` and `span_id` of that span (hex, as exported over OTLP), so a line found in the
//! logs leads to its trace, and a trace to its lines.
//!
//! The ids are the ones the OpenTelemetry layer gave the span; they exist whether or not spans
//! are exported (the provider makes them with or without an exporter). A line outside any span
//! (start-up, the relay's back-off) has none.
//!
//! How: the formatters below wrap tracing-subscriber's own (compact and JSON) and add the two
//! fields. The span's OpenTelemetry context is asked of the dispatcher the subscriber runs in
//! ([`tracing_opentelemetry::get_otel_context`]); the formatter cannot ask for "the current
//! dispatcher" while an event is being dispatched (a nested lookup answers "none" whenever a
//! scoped dispatcher is in use), so [`CaptureDispatch`] keeps a weak handle to it, given when
//! the subscriber is built. Looking a span's ids up starts its OpenTelemetry span, so a span's
//! remote parent is set before anything is logged in it (as `telemetry::set_remote_parent`'s
//! callers do, right after making the span).

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::{self, Compact, Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The dispatcher the log formatters look span contexts up in (set once the subscriber is
/// registered).
#[derive(Clone, Default)]
pub(super) struct DispatchCell(Arc<OnceLock<WeakDispatch>>);

impl DispatchCell {
    /// The OpenTelemetry ids of the span `event` happened in, when it has valid ones.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(TraceId, SpanId)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let id = ctx.parent_span()?.id();
        let dispatch = self.0.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    }
}

/// A layer that does nothing but hand the dispatcher it is registered in to the formatters.
pub(super) struct CaptureDispatch(pub(super) DispatchCell);

impl<S: Subscriber> tracing_subscriber::Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.0.0.set(subscriber.downgrade());
    }
}

/// Compact one-line logs (development), ending in ` trace_id=… span_id=…` inside a span.
pub(super) struct Pretty {
    plain: Format<Compact>,
    colored: Format<Compact>,
    dispatch: DispatchCell,
}

impl Pretty {
    pub(super) fn new(dispatch: DispatchCell) -> Self {
        let base = format().compact().with_target(false);
        Self { plain: base.clone().with_ansi(false), colored: base.with_ansi(true), dispatch }
    }
}

impl<S, N> FormatEvent<S, N> for Pretty
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // The inner format ends the line; ours goes before that newline, so it is written to a
        // buffer first (colours as the writer has them: the buffer's own writer has none).
        let inner = if writer.has_ansi_escapes() { &self.colored } else { &self.plain };
        let mut line = String::with_capacity(256);
        inner.format_event(ctx, Writer::new(&mut line), event)?;
        if let Some((trace_id, span_id)) = self.dispatch.ids(ctx) {
            let end = line.trim_end_matches('\n').len();
            line.insert_str(end, &format!(" trace_id={trace_id} span_id={span_id}"));
        }
        writer.write_str(&line)
    }
}

/// JSON logs (production): one object a line, with `"trace_id"` and `"span_id"` at the top
/// level inside a span.
pub(super) struct JsonLines {
    inner: Format<Json>,
    dispatch: DispatchCell,
}

impl JsonLines {
    pub(super) fn new(dispatch: DispatchCell) -> Self {
        Self { inner: format().json().flatten_event(true).with_current_span(true).with_span_list(false), dispatch }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some((trace_id, span_id)) = self.dispatch.ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        // The object always has its timestamp and level, so the ids open it followed by a comma.
        match line.strip_prefix('{') {
            Some(rest) => {
                write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",")?;
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}

fn format() -> Format {
    format::format()
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::super::{LogCapture, log_layer};
    use crate::config::LogFormat;

    /// What `f` logs in `format`, through the layers `install` sets up (no exporter: the ids
    /// are made all the same), and the (trace id, span id) of the span it returns.
    fn logged(format: LogFormat, f: impl FnOnce() -> tracing::Span) -> (String, String, String) {
        let logs = LogCapture::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(log_layer(format, logs.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let span = tracing::subscriber::with_default(subscriber, f);
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (logs.text(), sc.trace_id().to_string(), sc.span_id().to_string())
    }

    /// Logs a line outside any span, then one in a request span and one in its child; returns
    /// the child.
    fn request() -> tracing::Span {
        tracing::info!("starting");
        let request = tracing::info_span!("request", tenant = "acme");
        let child = tracing::info_span!(parent: &request, "store");
        request.in_scope(|| tracing::info!("in the request"));
        child.in_scope(|| tracing::warn!(rows = 3, "in the store"));
        child
    }

    #[test]
    fn pretty_lines_in_a_span_end_with_its_trace_and_span_ids() {
        let (text, trace_id, span_id) = logged(LogFormat::Pretty, request);
        let line = |needle: &str| text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{text}"));
        assert!(!line("starting").contains("trace_id"), "outside any span: {text}");
        assert!(line("in the store").ends_with(&format!(" trace_id={trace_id} span_id={span_id}")), "{text}");
        let parent = line("in the request");
        assert!(parent.contains(&format!(" trace_id={trace_id} span_id=")), "{text}");
        assert!(!parent.contains(&span_id), "the request's own span id, not its child's: {text}");
    }

    #[test]
    fn json_lines_in_a_span_have_its_trace_and_span_ids() {
        let (text, trace_id, span_id) = logged(LogFormat::Json, request);
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        let line = |msg: &str| lines.iter().find(|l| l["message"] == msg).unwrap_or_else(|| panic!("{text}"));
        assert!(line("starting").get("trace_id").is_none(), "{text}");
        let store = line("in the store");
        assert_eq!(store["trace_id"], trace_id.as_str());
        assert_eq!(store["span_id"], span_id.as_str());
        assert_eq!(store["rows"], 3, "the event's own fields stay: {text}");
        assert_eq!(store["span"]["name"], "store", "and the current span: {text}");
        let request = line("in the request");
        assert_eq!(request["trace_id"], trace_id.as_str());
        assert_ne!(request["span_id"], span_id.as_str());
        assert_eq!(request["span"]["tenant"], "acme");
    }
}
