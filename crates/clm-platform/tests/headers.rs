//! Request metadata over `server.max_header_bytes`, over a real socket to `serve()`: the call
//! ends with RESOURCE_EXHAUSTED naming the limit (not UNKNOWN from the HTTP/2 layer's own
//! HTTP 431, nor a closed connection), and the server goes on serving.

use clm_testkit::{Services, settings};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const LIMIT: usize = 8192;

/// A health check (no auth needed) carrying a header `x-pad` of `pad` bytes.
async fn check(channel: &Channel, pad: usize) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest { service: String::new() });
    req.metadata_mut().insert("x-pad", "p".repeat(pad).parse().expect("an ASCII value"));
    HealthClient::new(channel.clone()).check(req).await.map(|_| ())
}

fn assert_names_the_limit(status: &tonic::Status, size: Option<usize>) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let msg = status.message();
    assert!(msg.contains("server.max_header_bytes") && msg.contains(&format!("limit of {LIMIT} bytes")), "{msg}");
    if let Some(size) = size {
        assert!(msg.contains(&format!("is {size} bytes")), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_metadata_gets_resource_exhausted_naming_the_limit() {
    let limit = LIMIT.to_string();
    let server = Services::new(settings(&[("CLM_SERVER__MAX_HEADER_BYTES", &limit)])).await.serve().await;
    let channel = server.channel().await;

    // The largest header that fits, found by bisection: one byte more and the metadata is one
    // byte over the limit, which the answer says.
    let (mut fits, mut over) = (0, LIMIT);
    check(&channel, fits).await.expect("a small header is served");
    let status = check(&channel, over).await.expect_err("metadata over the limit");
    assert_names_the_limit(&status, None);
    while over - fits > 1 {
        let mid = usize::midpoint(fits, over);
        if check(&channel, mid).await.is_ok() {
            fits = mid;
        } else {
            over = mid;
        }
    }
    assert!(fits > LIMIT - 1024, "the other headers of a call take less than 1 KiB ({fits} bytes fit)");
    check(&channel, fits).await.expect("metadata at the limit is served");
    let status = check(&channel, fits + 1).await.expect_err("one byte over the limit");
    assert_names_the_limit(&status, Some(LIMIT + 1));

    // Far over it (100 KiB, past what HTTP/2 alone would have read): the same answer, and the
    // connection is not torn down: the next call on the channel is served.
    let status = check(&channel, 100 * 1024).await.expect_err("100 KiB of metadata");
    assert_names_the_limit(&status, None);
    check(&channel, 16).await.expect("the server still serves, on the same channel");

    // Past the HTTP/2 layer's own ceiling (`header_limit::http2_limit`, 1 MiB here) the
    // connection is refused as abusive; the server itself goes on.
    check(&channel, 6 * 1024 * 1024).await.expect_err("6 MiB of metadata");
    let fresh = server.channel().await;
    check(&fresh, 16).await.expect("the server still serves");
}
