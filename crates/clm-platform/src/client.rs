//! Outgoing gRPC: a channel that makes a CLIENT span for every call (`rpc.*` attributes, the
//! status recorded when the answer ends: `telemetry::semconv`) and carries that span's W3C
//! trace context (`traceparent`), so a trace follows a request across services and shows the
//! call from both sides.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::telemetry::semconv::{self, Side};

/// Wraps a transport (usually a `tonic::transport::Channel`): each request gets a CLIENT span,
/// child of the current span, whose context goes into the request's headers.
#[derive(Clone, Debug)]
pub struct TracePropagation<S> {
    inner: S,
}

impl<S> TracePropagation<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for TracePropagation<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Traced<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let span = semconv::rpc_span(Side::Client, req.uri().path());
        crate::telemetry::inject(&span, req.headers_mut());
        let sent = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(async move {
            match sent.await {
                Ok(response) => {
                    // A trailers-only answer (most errors) has its status in the headers.
                    if let Some(code) = semconv::grpc_status(response.headers()) {
                        semconv::record_grpc_status(&span, Side::Client, code);
                    }
                    Ok(response.map(|body| Traced { inner: body, span: Some(span) }))
                }
                Err(e) => {
                    // No answer (connection refused, reset): tonic reports UNAVAILABLE.
                    semconv::record_grpc_status(&span, Side::Client, tonic::Code::Unavailable as i32);
                    Err(e)
                }
            }
        })
    }
}

/// A response body that keeps the call's CLIENT span open until the answer ends and records
/// the `grpc-status` of its trailers.
#[derive(Debug)]
pub struct Traced<B> {
    inner: B,
    span: Option<tracing::Span>,
}

/// An empty answer with no span (what an interceptor that refuses a call sends back).
impl<B: Default> Default for Traced<B> {
    fn default() -> Self {
        Self { inner: B::default(), span: None }
    }
}

impl<B> http_body::Body for Traced<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(span)) = (frame.trailers_ref(), &self.span)
                    && let Some(code) = semconv::grpc_status(trailers)
                {
                    semconv::record_grpc_status(span, Side::Client, code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(span) = &self.span {
                    span.record("otel.status_code", "error");
                }
            }
            Poll::Ready(None) => self.span = None,
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            // The answer is complete: the span ends now, not when the body is dropped.
            self.span = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A channel to another CLM service (lazy: connects on first use, reconnects as needed).
pub type TracedChannel = TracePropagation<tonic::transport::Channel>;

/// Connect lazily to `url` (e.g. `http://clm-contacts:50051`; `https://…` uses TLS from
/// `tls`, checking the name `domain` when given, else the URL's host).
pub fn channel(url: &str, tls: &crate::config::TlsSettings, domain: Option<&str>) -> anyhow::Result<TracedChannel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("invalid service URL {url:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        endpoint = endpoint.tls_config(crate::tls::client_config(tls, domain)?)?;
    }
    Ok(TracePropagation::new(endpoint.connect_lazy()))
}
