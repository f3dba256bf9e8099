//! Outgoing gRPC: a channel that carries the current trace context (`traceparent`) and the
//! caller's credentials on every call, so a trace follows a request across services.

use std::task::{Context, Poll};

/// Wraps a transport (usually a `tonic::transport::Channel`) and injects the current span's
/// W3C trace context into each request's headers.
#[derive(Clone, Debug)]
pub struct TracePropagation<S> {
    inner: S,
}

impl<S> TracePropagation<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for TracePropagation<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        crate::telemetry::inject_current(req.headers_mut());
        self.inner.call(req)
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
