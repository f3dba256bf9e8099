//! [`Receiver`]: a real HTTP/1.1 server on 127.0.0.1 (hyper) that records every request and
//! answers from a script of statuses, for testing what CLM sends (webhooks); [`request`]: one
//! real HTTP/1.1 request, for testing what CLM serves (the hosted pages).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: http::HeaderMap,
    /// The body's bytes exactly as received.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<u16>>,
}

/// A running receiver; it stops when this is dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Receiver {
    /// Listen on 127.0.0.1 (a free port); answer the first requests with `statuses` in order,
    /// then 200 to every request.
    pub async fn start(statuses: &[u16]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state =
            Arc::new(State { requests: Mutex::default(), script: Mutex::new(statuses.iter().copied().collect()) });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT` (append a path).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Wait until at least `n` requests arrived; panics after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{n} requests expected in {timeout:?}, {} arrived", got.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<State>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str).to_owned();
    state.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Recorded {
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body: body.to_vec(),
    });
    let code = state.script.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front().unwrap_or(200);
    let status = http::StatusCode::from_u16(code).expect("a status code");
    let text = format!("{} {}", code, status.canonical_reason().unwrap_or(""));
    Ok(http::Response::builder().status(status).body(Full::new(Bytes::from(text))).expect("response"))
}

/// An answer as [`request`] received it.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The first value of header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request on a connection of its own: `method` to `url` (`http://host:port/path`)
/// with `headers` and `body`; the whole answer, body as text. Panics when the server cannot be
/// reached (a test failure).
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let uri: http::Uri = url.parse().expect("a URL");
    let authority = uri.authority().expect("host and port").clone();
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(uri.path_and_query().map_or("/", |p| p.as_str()));
    req = req.header(http::header::HOST, authority.as_str());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).expect("request");
    let res = sender.send_request(req).await.expect("an answer");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}
