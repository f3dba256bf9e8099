//! Webhooks: a JSON body POSTed to a tenant's URL, signed so the receiver can tell it came from
//! CLM and was not replayed (the scheme Stripe uses).
//!
//! Every request carries:
//! - `Content-Type: application/json`, `User-Agent: clm/<version>`;
//! - `CLM-Delivery-Id` and `Idempotency-Key`: the delivery's id, the same on every attempt, so
//!   a receiver that saw it already can answer 2xx without acting twice;
//! - `CLM-Attempt`: 1 for the first attempt;
//! - `CLM-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`: the
//!   receiver recomputes it over the raw body ([`verify`] is what a Rust receiver would call)
//!   and rejects a `t` too far from its clock.
//!
//! Destinations: `https://` only, to public addresses only (the host is resolved once and the
//! connection goes to the address checked: [`clm_platform::http_client`]); a URL that names or
//! resolves to loopback, private, link-local… addresses is refused (SSRF), permanently. With
//! `allow_private_hosts` (development and tests, never production) both rules are lifted:
//! `http://` and private addresses are accepted. Redirects are not followed.
//!
//! Outcome: a 2xx answer is delivered; 408, 429, 5xx, no connection or no answer in time are
//! transient (retried); any other answer (3xx, 4xx) is permanent: the receiver understood and
//! refused, and the same request would be refused again.

use std::fmt::Write as _;
use std::time::Duration;

use clm_platform::http_client::{self, Client, Request};
use hmac::{Hmac, Mac as _};
use http::{HeaderName, HeaderValue};
use sha2::Sha256;

use super::{SendError, without_credentials};

/// How webhooks are sent (the lead's settings fill it).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// For one attempt as a whole (connect, TLS, request, answer).
    pub timeout: Duration,
    /// Accept `http://` URLs and private/loopback destinations: development and tests only.
    pub allow_private_hosts: bool,
    /// The answer's body is read up to this many bytes (only a snippet of it is kept).
    pub max_response_bytes: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), allow_private_hosts: false, max_response_bytes: 64 * 1024 }
    }
}

/// One webhook attempt.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    /// The JSON document, sent byte for byte as given (and signed as such).
    pub body: String,
    /// The endpoint's signing secret.
    pub secret: String,
    pub delivery_id: String,
    /// 1-based.
    pub attempt: u32,
    /// Unix seconds, signed into `CLM-Signature`.
    pub timestamp: i64,
}

/// Sends webhooks; cheap to clone.
#[derive(Clone, Debug)]
pub struct Webhooks {
    cfg: WebhookConfig,
    client: Client,
}

pub const SIGNATURE_HEADER: &str = "clm-signature";
pub const DELIVERY_ID_HEADER: &str = "clm-delivery-id";
pub const ATTEMPT_HEADER: &str = "clm-attempt";
const USER_AGENT: &str = concat!("clm/", env!("CARGO_PKG_VERSION"));
/// How much of a refusal's body is kept in the error's detail.
const SNIPPET_BYTES: usize = 200;

impl Webhooks {
    pub fn new(cfg: WebhookConfig) -> Self {
        Self { cfg, client: Client::new() }
    }

    /// The same, with `client` (e.g. one trusting a test's TLS root).
    pub fn with_client(cfg: WebhookConfig, client: Client) -> Self {
        Self { cfg, client }
    }

    /// POST `hook`; `Ok` with the 2xx status it was answered with.
    pub async fn post(&self, hook: &Webhook) -> Result<u16, SendError> {
        let scheme_ok =
            hook.url.starts_with("https://") || (self.cfg.allow_private_hosts && hook.url.starts_with("http://"));
        if !scheme_ok {
            return Err(SendError::permanent(format!("webhook URL {:?} must be https://", redact(&hook.url))));
        }
        let header =
            |s: &str| HeaderValue::from_str(s).map_err(|_| SendError::permanent(format!("bad header value {s:?}")));
        let request = Request::post(&hook.url)
            .header(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(http::header::USER_AGENT, HeaderValue::from_static(USER_AGENT))
            .header(HeaderName::from_static(DELIVERY_ID_HEADER), header(&hook.delivery_id)?)
            .header(HeaderName::from_static("idempotency-key"), header(&hook.delivery_id)?)
            .header(HeaderName::from_static(ATTEMPT_HEADER), HeaderValue::from(hook.attempt))
            .header(
                HeaderName::from_static(SIGNATURE_HEADER),
                header(&signature(&hook.secret, hook.timestamp, &hook.body))?,
            )
            .body(hook.body.clone())
            .timeout(self.cfg.timeout)
            .max_response_bytes(self.cfg.max_response_bytes)
            .public_only(!self.cfg.allow_private_hosts);
        let (status, body) = match self.client.send(request).await {
            Ok(r) => (r.status, r.body),
            // The receiver answered; its status decides, whatever the body's size.
            Err(http_client::Error::TooLarge { status, .. }) => (status, bytes::Bytes::new()),
            Err(e) if e.is_transient() => return Err(SendError::transient(e.to_string())),
            Err(e) => return Err(SendError::permanent(e.to_string())),
        };
        let code = status.as_u16();
        if status.is_success() {
            return Ok(code);
        }
        let mut detail = format!("HTTP {status}");
        let snippet = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_BYTES)]).trim().to_owned();
        if !snippet.is_empty() {
            detail = format!("{detail}: {snippet}");
        }
        if code == 408 || code == 429 || status.is_server_error() {
            Err(SendError::transient(detail))
        } else {
            Err(SendError::permanent(detail))
        }
    }
}

/// The URL without password, query or fragment (which may hold tokens), for messages.
fn redact(url: &str) -> String {
    without_credentials(url.split(['?', '#']).next().unwrap_or_default())
}

fn mac(secret: &str, timestamp: i64, body: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac
}

/// The `CLM-Signature` value: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let hex = tag.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    format!("t={timestamp},v1={hex}")
}

/// Whether `header` (a `CLM-Signature` value) signs `body` with `secret`, at a `t` within
/// `tolerance` of `now` (unix seconds). Any one of several `v1=` may match (a sender rotating
/// secrets sends one per secret); the comparison takes constant time.
pub fn verify(secret: &str, header: &str, body: &str, now: i64, tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => tags.push(v),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(t) > tolerance.unsigned_abs() {
        return false;
    }
    tags.iter().filter_map(|hex| unhex(hex)).any(|tag| mac(secret, t, body).verify_slice(&tag).is_ok())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_mins(5);

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            signature("whsec_test", 1_700_000_000, r#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verify_accepts_its_own_signature_within_the_tolerance() {
        let body = r#"{"event":"stage_changed","id":"x"}"#;
        let h = signature("s3cret", 1000, body);
        assert!(verify("s3cret", &h, body, 1000, TOLERANCE));
        assert!(verify("s3cret", &h, body, 1300, TOLERANCE));
        assert!(verify("s3cret", &h, body, 700, TOLERANCE));
        // Another secret among the tags (rotation).
        let other = signature("old", 1000, body);
        let both = format!("{h},{}", other.split_once(',').unwrap().1);
        assert!(verify("old", &both, body, 1000, TOLERANCE) && verify("s3cret", &both, body, 1000, TOLERANCE));
    }

    #[test]
    fn verify_refuses_what_was_changed_replayed_or_malformed() {
        let body = r#"{"a":1}"#;
        let h = signature("s3cret", 1000, body);
        assert!(!verify("s3cret", &h, r#"{"a":2}"#, 1000, TOLERANCE), "another body");
        assert!(!verify("other", &h, body, 1000, TOLERANCE), "another secret");
        assert!(!verify("s3cret", &h, body, 1301, TOLERANCE), "too old");
        assert!(!verify("s3cret", &h, body, 699, TOLERANCE), "from the future");
        assert!(!verify("s3cret", &h.replace("t=1000", "t=1001"), body, 1000, TOLERANCE), "another timestamp");
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", &h.replace("v1=", "v0="), &format!("{h}0"), &h[..h.len() - 2]] {
            assert!(!verify("s3cret", bad, body, 1000, TOLERANCE), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(redact("https://u:p@example.com/hook?token=x"), "https://u@example.com/hook");
        assert_eq!(redact("http://example.com/a#b"), "http://example.com/a");
    }

    #[tokio::test]
    async fn only_https_unless_private_hosts_are_allowed() {
        let hooks = Webhooks::new(WebhookConfig::default());
        let hook = Webhook {
            url: "http://example.com/hook".into(),
            body: "{}".into(),
            secret: "s".into(),
            delivery_id: "d".into(),
            attempt: 1,
            timestamp: 0,
        };
        let e = hooks.post(&hook).await.unwrap_err();
        assert!(e.permanent && e.detail.contains("https://"), "{e}");
    }
}
