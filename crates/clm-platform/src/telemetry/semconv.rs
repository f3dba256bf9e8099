//! The spans CLM makes at its edges, named and shaped after the OpenTelemetry semantic
//! conventions, in one place so every service names them alike:
//!
//! | where | kind | name | attributes |
//! |---|---|---|---|
//! | a call served | SERVER | `clm.contacts.v1.ContactsService/CreateContact` | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | a call to another service | CLIENT | same as the server's | same |
//! | a hosted page served (`crate::pages`) | SERVER | `POST /u/{token}`: method and route template (never the path, which holds a token) | `http.request.method`, `http.route`, `url.scheme`, `network.protocol.version`, `http.response.status_code` |
//! | the relay publishing an event | PRODUCER | `publish <subject>` | `messaging.system`, `messaging.destination.name` (the subject), `messaging.message.id` (the event id), `messaging.operation.type` = `send`, `messaging.operation.name` = `publish` |
//! | a consumer applying an event | CONSUMER | `process <subject>` | the same `messaging.*`, `messaging.operation.type` = `process`, `messaging.consumer.group.name` |
//!
//! Span names are `{operation} {destination}` and the publish operation's type is `send` (the
//! conventions' current names; `publish` is their deprecated alias). Kinds, names and statuses go
//! through tracing-opentelemetry's `otel.kind`, `otel.name` and `otel.status_code` fields.
//!
//! An event's envelope carries the W3C context of the span that wrote it (its creation context,
//! the request's). The publish span is that span's child; the process span is its child too and
//! also links to it, as the conventions ask of consumers, so a trace shows request → publish and
//! request → process, with the hop's delay as the gap between them.

use std::collections::HashMap;

use opentelemetry::trace::TraceContextExt as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::EventTransport;

/// `messaging.system` of the durable log bus (the single binary's).
pub const LOG_BUS: &str = "clm_log";
/// `messaging.system` of NATS JetStream.
pub const NATS: &str = "nats";

/// `messaging.system` of the bus `transport` names.
pub fn messaging_system(transport: EventTransport) -> &'static str {
    match transport {
        EventTransport::Log => LOG_BUS,
        EventTransport::Nats => NATS,
    }
}

/// `grpc-status` of a response's headers (a trailers-only answer) or trailers.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Which side of a call a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Record the call's outcome: `rpc.grpc.status_code`, and an error status where the
/// conventions call the code one — any but OK for a client; for a server only the codes that
/// say the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS), not the caller's mistakes.
pub fn record_grpc_status(span: &tracing::Span, side: Side, code: i32) {
    span.record("rpc.grpc.status_code", i64::from(code));
    let error = match side {
        Side::Client => code != 0,
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    };
    if error {
        span.record("otel.status_code", "error");
    }
}

/// The span of one gRPC call: SERVER for a call served, CLIENT for a call made. `path` is the
/// request's, `/package.Service/Method`; the status is recorded later ([`record_grpc_status`]).
pub fn rpc_span(side: Side, path: &str) -> tracing::Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    match side {
        Side::Server => tracing::info_span!(
            "grpc.request",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            tenant = Empty,
        ),
        Side::Client => tracing::info_span!(
            "grpc.call",
            otel.name = %name,
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
        ),
    }
}

/// The relay publishing one event (PRODUCER), child of the context the event was written in.
pub fn publish_span(
    system: &str,
    subject: &str,
    event_id: &str,
    trace_context: &HashMap<String, String>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "event.publish",
        otel.name = %format!("publish {subject}"),
        otel.kind = "producer",
        messaging.system = %system,
        messaging.destination.name = %subject,
        messaging.message.id = %event_id,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
    );
    super::set_remote_parent(&span, super::context_from_map(trace_context));
    span
}

/// A consumer applying one event (CONSUMER): child of, and linked to, the context the event
/// was written in.
pub fn process_span(
    system: &str,
    consumer: &str,
    subject: &str,
    event_id: &str,
    tenant: &str,
    trace_context: &HashMap<String, String>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "event.process",
        otel.name = %format!("process {subject}"),
        otel.kind = "consumer",
        messaging.system = %system,
        messaging.destination.name = %subject,
        messaging.message.id = %event_id,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.consumer.group.name = %consumer,
        tenant = %tenant,
    );
    let creation = super::context_from_map(trace_context);
    let link = creation.span().span_context().clone();
    if link.is_valid() {
        super::set_remote_parent(&span, creation);
        span.add_link(link);
    }
    span
}

/// The server's `TraceLayer` callbacks: the call's `grpc-status` (in the response headers of a
/// trailers-only answer, else in the trailers) onto its span, then tower-http's own lines at
/// debug level.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerOutcome;

impl<B> tower_http::trace::OnResponse<B> for ServerOutcome {
    fn on_response(self, response: &http::Response<B>, latency: std::time::Duration, span: &tracing::Span) {
        if let Some(code) = grpc_status(response.headers()) {
            record_grpc_status(span, Side::Server, code);
        }
        tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG).on_response(response, latency, span);
    }
}

impl tower_http::trace::OnEos for ServerOutcome {
    fn on_eos(self, trailers: Option<&http::HeaderMap>, stream_duration: std::time::Duration, span: &tracing::Span) {
        if let Some(code) = trailers.and_then(grpc_status) {
            record_grpc_status(span, Side::Server, code);
        }
        tower_http::trace::DefaultOnEos::new().on_eos(trailers, stream_duration, span);
    }
}

/// The span of one HTTP request to the hosted pages (SERVER): named `{method} {route}` after the
/// route template (`POST /u/{token}`), or the method alone when no route matched. The path is
/// not recorded: it holds the page's token. The status is recorded by [`HttpOutcome`].
pub fn http_server_span(method: &str, route: Option<&str>, version: http::Version) -> tracing::Span {
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let version = match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    tracing::info_span!(
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route.unwrap_or_default(),
        url.scheme = "http",
        network.protocol.version = version,
        http.response.status_code = Empty,
    )
}

/// The hosted pages' `TraceLayer` callback: `http.response.status_code` onto the span, an
/// error status for a 5xx only (a 4xx is the client's), then tower-http's line at debug level.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpOutcome;

impl<B> tower_http::trace::OnResponse<B> for HttpOutcome {
    fn on_response(self, response: &http::Response<B>, latency: std::time::Duration, span: &tracing::Span) {
        let status = response.status();
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
        tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG).on_response(response, latency, span);
    }
}
