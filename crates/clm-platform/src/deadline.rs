//! Deadlines: a call runs at most until the earlier of the client's deadline (`grpc-timeout`)
//! and `server.request_timeout_ms`. Past it, the handler's future is dropped — its work stops
//! and an open transaction rolls back — and the client gets DEADLINE_EXCEEDED, as the gRPC
//! spec asks (tonic's own timeout answers CANCELLED).
//!
//! The limit covers the call until its response headers: unary calls entirely, streaming calls
//! until the stream starts (a stream's own pace is bounded by its handler's limits).

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tower::{BoxError, Layer, Service};

#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    max: Duration,
}

impl DeadlineLayer {
    pub fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, max: self.max }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    max: Duration,
}

/// The `grpc-timeout` header's duration: 1-8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Headroom taken off a client's deadline. tonic's server runs its own timer on
/// `grpc-timeout` outside every layer and answers CANCELLED when it fires; ending the call this
/// much sooner makes the answer ours (DEADLINE_EXCEEDED) even when both timers would fall in
/// the same millisecond tick.
pub const HEADROOM: Duration = Duration::from_millis(2);

/// The time a call may take: the client's deadline (less [`HEADROOM`]) when it is sooner than
/// the server's limit.
pub fn budget(header: Option<&str>, max: Duration) -> Duration {
    header.and_then(parse_grpc_timeout).map_or(max, |d| if d < max { d.saturating_sub(HEADROOM) } else { max })
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = budget(req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()), self.max);
        let call = self.inner.call(req);
        async move {
            match tokio::time::timeout(limit, call).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "the call's deadline ({} ms) passed; its work was stopped",
                    limit.as_millis()
                ))) as BoxError),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_hours(1)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "100", "123456789m", "-1S", "1x", "1.5S", "１S", "S１", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let max = Duration::from_secs(30);
        assert_eq!(budget(None, max), max);
        assert_eq!(budget(Some("100m"), max), Duration::from_millis(98), "the client's, less the headroom");
        assert_eq!(budget(Some("1m"), max), Duration::ZERO);
        assert_eq!(budget(Some("1H"), max), max, "the server's limit wins when sooner");
        assert_eq!(budget(Some("garbage"), max), max);
    }
}
