//! Load shedding that never sheds health checks.
//!
//! Calls beyond `server.max_concurrent_requests` in flight are refused at once with
//! RESOURCE_EXHAUSTED (tonic maps tower's `Overloaded`) instead of queueing. Health checks
//! bypass the limit: a busy server is not a dead one, and Kubernetes must not restart a pod
//! because it is shedding load.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer};
use tower::load_shed::LoadShed;
use tower::{BoxError, Layer, Service, ServiceExt};

#[derive(Clone, Debug)]
pub struct ShedLayer {
    limit: GlobalConcurrencyLimitLayer,
}

impl ShedLayer {
    pub fn new(max_in_flight: usize) -> Self {
        Self { limit: GlobalConcurrencyLimitLayer::new(max_in_flight) }
    }
}

impl<S: Clone> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed { limited: LoadShed::new(self.limit.layer(inner.clone())), direct: inner }
    }
}

#[derive(Clone, Debug)]
pub struct Shed<S> {
    limited: LoadShed<ConcurrencyLimit<S>>,
    direct: S,
}

fn is_health(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // LoadShed is always ready (it decides per call); the direct path is checked at call.
        self.limited.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_health(req.uri().path()) {
            let direct = self.direct.clone();
            async move { direct.oneshot(req).await.map_err(Into::into) }.boxed()
        } else {
            self.limited.call(req).boxed()
        }
    }
}

/// Run `work` — a call's heavy part, e.g. reading and converting a page of a thousand rows —
/// on a blocking thread, so its CPU time does not hold one of the runtime's few workers for
/// tens of milliseconds at a time: many such calls at once would otherwise keep health
/// probes and small calls waiting behind them (a liveness probe timing out under load).
pub async fn off_runtime<F>(work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(work)).await {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
