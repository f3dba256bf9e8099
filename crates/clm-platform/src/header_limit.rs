//! A request's metadata (its HTTP/2 header block) is bounded by `server.max_header_bytes`, and a
//! call over it ends with RESOURCE_EXHAUSTED naming the limit.
//!
//! Left to the HTTP/2 layer (hyper/h2, 16 KiB by default), an oversized header block is
//! refused before any gRPC code runs: with an HTTP 431 and no `grpc-status`, which gRPC clients
//! report as UNKNOWN, or, sent in more frames than the limit allows, by closing the whole
//! connection (ENHANCE_YOUR_CALM, or COMPRESSION_ERROR: other calls on it fail too). So the
//! HTTP/2 layer is given a higher ceiling ([`http2_limit`]) and the limit is enforced here,
//! where the answer can be a gRPC status: above `server.max_header_bytes`, RESOURCE_EXHAUSTED
//! with the size and the limit, and the connection goes on serving. Only header blocks above
//! that ceiling, which no client sends by mistake, still get the HTTP/2 layer's own answer.
//!
//! Sizes are counted as HTTP/2 counts them (RFC 9113 § 6.5.2, SETTINGS_MAX_HEADER_LIST_SIZE):
//! name + value + 32 bytes per field, pseudo-header fields (`:method`, `:path`…) included.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tower::{BoxError, Layer, Service};

/// What the HTTP/2 layer reads in full for a limit of `max_header_bytes`: four times the limit,
/// at least 1 MiB. Header blocks up to it get the gRPC answer; a larger one is refused by the
/// HTTP/2 layer as abuse, without being stored.
pub fn http2_limit(max_header_bytes: usize) -> u32 {
    u32::try_from(max_header_bytes.saturating_mul(4).max(1024 * 1024)).unwrap_or(u32::MAX)
}

/// The size of a request's header block as HTTP/2 counts it.
pub fn header_list_size<B>(req: &http::Request<B>) -> usize {
    const FIELD_OVERHEAD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        (":method".len(), req.method().as_str().len()),
        (":scheme".len(), uri.scheme_str().map_or(0, str::len)),
        (":authority".len(), uri.authority().map_or(0, |a| a.as_str().len())),
        (":path".len(), uri.path_and_query().map_or(0, |p| p.as_str().len())),
    ];
    let pseudo: usize = pseudo.iter().filter(|(_, v)| *v > 0).map(|(n, v)| n + v + FIELD_OVERHEAD).sum();
    pseudo + req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + FIELD_OVERHEAD).sum::<usize>()
}

#[derive(Clone, Debug)]
pub struct HeaderLimitLayer {
    max: usize,
}

impl HeaderLimitLayer {
    pub fn new(max_header_bytes: usize) -> Self {
        Self { max: max_header_bytes }
    }
}

impl<S> Layer<S> for HeaderLimitLayer {
    type Service = HeaderLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HeaderLimit { inner, max: self.max }
    }
}

#[derive(Clone, Debug)]
pub struct HeaderLimit<S> {
    inner: S,
    max: usize,
}

impl<S, B> Service<http::Request<B>> for HeaderLimit<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let size = header_list_size(&req);
        if size > self.max {
            let status = tonic::Status::resource_exhausted(format!(
                "the request's metadata is {size} bytes, over the server's limit of {} bytes \
                 (server.max_header_bytes; counted as HTTP/2 does: name + value + 32 per header)",
                self.max
            ));
            return std::future::ready(Err(Box::new(status) as BoxError)).boxed();
        }
        let call = self.inner.call(req);
        async move { call.await.map_err(Into::into) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_counted_as_http2_counts_them() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:50051/grpc.health.v1.Health/Check")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let expected = (7 + 4 + 32) // :method POST
            + (7 + 4 + 32) // :scheme http
            + (10 + 15 + 32) // :authority 127.0.0.1:50051
            + (5 + 28 + 32) // :path /grpc.health.v1.Health/Check
            + (2 + 8 + 32); // te: trailers
        assert_eq!(header_list_size(&req), expected);
    }

    #[test]
    fn the_http2_layer_reads_well_past_the_limit() {
        assert_eq!(http2_limit(16 * 1024), 1024 * 1024);
        assert_eq!(http2_limit(1024 * 1024), 4 * 1024 * 1024);
    }
}
