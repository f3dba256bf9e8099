//! A small HTTP/1.1 client for the few outgoing HTTP calls CLM makes (a JWKS fetch, webhooks):
//! one request on a fresh connection, http or https (rustls with ring, verified against the
//! system's roots, which `SSL_CERT_FILE` / `SSL_CERT_DIR` can replace), the whole exchange under
//! one timeout, the answer's body read up to a limit.
//!
//! With [`Request::public_only`] the destination must be a public address: the host is resolved
//! once, every address it resolves to that is loopback, private, link-local, unique-local,
//! shared (CGNAT), unspecified, multicast or reserved is set aside, and the connection goes to
//! an address that was checked (never to a second lookup a DNS server could answer
//! differently). Without one left, the request is [`Error::Refused`] before any packet is sent.
//! That keeps a URL a tenant typed from reaching CLM's own network (SSRF). Redirects are never
//! followed: a 3xx is an answer like any other.
//!
//! Not a general client: no connection reuse, no HTTP/2, no proxies, no cookies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio_rustls::rustls::ClientConfig;

/// One request: built with [`Request::new`] and the setters, sent with [`Client::send`].
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Sent as given; `Host` is added from the URL unless set here.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// For the whole exchange: resolving, connecting, TLS, sending, the answer and its body.
    pub timeout: Duration,
    /// A longer answer body is [`Error::TooLarge`].
    pub max_response_bytes: usize,
    /// Refuse destinations that are not public addresses (see the module's header).
    pub public_only: bool,
}

impl Request {
    /// A request with no headers or body, a 10 s timeout, a 1 MiB answer limit, any destination.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
            public_only: false,
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::GET, url)
    }

    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::POST, url)
    }

    /// Add a header (appended: a name may repeat).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    pub fn public_only(mut self, public_only: bool) -> Self {
        self.public_only = public_only;
        self
    }
}

/// The answer, whatever its status.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why there is no answer. [`Error::is_transient`] tells whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not an http(s) URL with a host.
    #[error("bad URL: {0}")]
    BadUrl(String),
    /// `public_only` and the host is (or resolves only to) a non-public address.
    #[error("refused: {0}")]
    Refused(String),
    /// The name did not resolve, nothing accepted the connection, or TLS failed.
    #[error("{0}")]
    Connect(String),
    /// No complete answer within the request's timeout.
    #[error("no answer within {}", human(*.0))]
    Timeout(Duration),
    /// The connection broke or the peer spoke something else than HTTP/1.1.
    #[error("{0}")]
    Exchange(String),
    /// The answer's body is over the request's limit (its status is kept).
    #[error("HTTP {status}: the answer's body is over {limit} bytes")]
    TooLarge { status: StatusCode, limit: usize },
}

impl Error {
    /// Whether the same request may succeed later (connection, timeout, exchange failures);
    /// a bad URL or a refused destination will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Timeout(_) | Self::Exchange(_))
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

/// Sends [`Request`]s. Cheap to clone; the TLS configuration (the system's roots) is built on
/// the first https request and kept.
#[derive(Clone, Default)]
pub struct Client {
    tls: Arc<Mutex<Option<Arc<ClientConfig>>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client whose https requests use `config` (e.g. a test's own root) instead of the
    /// system's roots.
    pub fn with_tls(config: Arc<ClientConfig>) -> Self {
        Self { tls: Arc::new(Mutex::new(Some(config))) }
    }

    /// Send `request`; any status is an answer (`Ok`).
    pub async fn send(&self, request: Request) -> Result<Response, Error> {
        let timeout = request.timeout;
        tokio::time::timeout(timeout, self.exchange(request)).await.unwrap_or(Err(Error::Timeout(timeout)))
    }

    async fn exchange(&self, request: Request) -> Result<Response, Error> {
        use http_body_util::BodyExt as _;
        use hyper_util::rt::TokioIo;

        let target = Target::parse(&request.url)?;
        let addrs = resolve(&target, request.public_only).await?;
        let tcp = connect(&target, &addrs).await?;

        let mut builder = http::Request::builder().method(request.method).uri(target.path.as_str());
        if !request.headers.contains_key(http::header::HOST) {
            builder = builder.header(http::header::HOST, target.authority.as_str());
        }
        let mut http_request = builder
            .body(http_body_util::Full::new(request.body))
            .map_err(|e| Error::BadUrl(format!("{}: {e}", request.url)))?;
        http_request.headers_mut().extend(request.headers);

        let response = if target.https {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| Error::BadUrl(format!("bad host name {}: {e}", target.host)))?;
            let config = self.tls_config()?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Connect(format!("TLS with {}: {e}", target.host)))?;
            send(TokioIo::new(tls), http_request).await?
        } else {
            send(TokioIo::new(tcp), http_request).await?
        };
        let (parts, body) = response.into_parts();
        let limit = request.max_response_bytes;
        let body = http_body_util::Limited::new(body, limit).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::TooLarge { status: parts.status, limit }
            } else {
                Error::Exchange(format!("reading the answer: {e}"))
            }
        })?;
        Ok(Response { status: parts.status, headers: parts.headers, body: body.to_bytes() })
    }

    fn tls_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let mut slot = self.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(config) = &*slot {
            return Ok(config.clone());
        }
        let config = Arc::new(tls_client_config().map_err(|e| Error::Connect(format!("{e:#}")))?);
        *slot = Some(config.clone());
        Ok(config)
    }
}

/// The parts of a URL the exchange needs.
struct Target {
    https: bool,
    /// Without IPv6 brackets.
    host: String,
    port: u16,
    /// `host[:port]` as in the URL, for `Host`.
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let uri: http::Uri = url.parse().map_err(|e| Error::BadUrl(format!("{url}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Error::BadUrl("the URL must start with https:// or http://".into())),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| Error::BadUrl("the URL has no host".into()))?;
        let authority = uri.authority().map(ToString::to_string).unwrap_or_default();
        if authority.contains('@') {
            return Err(Error::BadUrl("the URL must not hold credentials (user@)".into()));
        }
        Ok(Self {
            https,
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority,
            path: uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str).to_owned(),
        })
    }
}

/// The addresses to try, resolved once; with `public_only`, only public ones (none: refused).
async fn resolve(target: &Target, public_only: bool) -> Result<Vec<SocketAddr>, Error> {
    let (host, port) = (target.host.as_str(), target.port);
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Connect(format!("cannot connect to {host}:{port}: {e}")))?
        .collect();
    if all.is_empty() {
        return Err(Error::Connect(format!("cannot connect to {host}:{port}: the name has no address")));
    }
    if !public_only {
        return Ok(all);
    }
    let public: Vec<SocketAddr> = all.iter().copied().filter(|a| is_public(a.ip())).collect();
    if public.is_empty() {
        let ips: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
        return Err(Error::Refused(format!("{host} is not a public address ({})", ips.join(", "))));
    }
    Ok(public)
}

async fn connect(target: &Target, addrs: &[SocketAddr]) -> Result<tokio::net::TcpStream, Error> {
    let mut last = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.map_or_else(|| "no address".to_owned(), |e| e.to_string());
    Err(Error::Connect(format!("cannot connect to {}:{}: {e}", target.host, target.port)))
}

/// Whether `ip` is an address on the public internet: not loopback, private (RFC 1918, IPv6
/// unique-local), link-local, shared (100.64/10), unspecified, "this network" (0/8),
/// multicast, broadcast, reserved (240/4) or documentation; IPv4 inside IPv6 (mapped,
/// compatible, NAT64 64:ff9b::/96) is judged as the IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::a.b.c.d).
    if (s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified())
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        let [_, _, _, _, _, _, hi, lo] = s;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
}

async fn send<T>(
    io: hyper_util::rt::TokioIo<T>,
    request: http::Request<http_body_util::Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| Error::Exchange(format!("HTTP handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(request).await;
    if response.is_err() {
        conn.abort();
    }
    response.map_err(|e| Error::Exchange(format!("HTTP exchange: {e}")))
}

/// rustls with ring, the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` replace them),
/// HTTP/1.1 by ALPN.
pub fn tls_client_config() -> anyhow::Result<ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        anyhow::bail!("no trusted root certificates found on this system (set SSL_CERT_FILE)");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn urls_are_parsed_or_refused() {
        let t = Target::parse("https://example.com/a/b?c=d").unwrap();
        assert!(t.https && t.port == 443 && t.host == "example.com" && t.path == "/a/b?c=d");
        let t = Target::parse("http://[::1]:8080").unwrap();
        assert!(!t.https && t.port == 8080 && t.host == "::1" && t.path == "/" && t.authority == "[::1]:8080");
        for bad in ["ftp://example.com/", "example.com/x", "https://", "https://u:p@example.com/"] {
            assert!(matches!(Target::parse(bad), Err(Error::BadUrl(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn private_destinations_are_refused_before_connecting() {
        let client = Client::new();
        for url in ["http://127.0.0.1:9/x", "http://localhost:9/x", "https://[::1]:9/", "http://169.254.169.254/"] {
            let e = client.send(Request::post(url).public_only(true)).await.unwrap_err();
            assert!(matches!(e, Error::Refused(_)), "{url}: {e}");
            assert!(!e.is_transient());
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_a_transient_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = Client::new().send(Request::get(format!("http://127.0.0.1:{port}/"))).await.unwrap_err();
        assert!(matches!(e, Error::Connect(_)) && e.is_transient(), "{e}");
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
