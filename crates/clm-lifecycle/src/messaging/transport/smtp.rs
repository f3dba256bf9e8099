//! Email over SMTP (lettre, async on Tokio; TLS by rustls with the system's roots, plus the CAs
//! of [`SmtpConfig::ca_file`] for a relay with a private CA).
//!
//! The server is named by one URL, lettre's form:
//! - `smtp://host:25`: plain SMTP, no TLS at all (a relay on the same host or network);
//! - `smtp://host:587?tls=required`: STARTTLS, refused if the server does not offer it
//!   (`tls=opportunistic`: STARTTLS when offered);
//! - `smtps://host:465`: TLS from the first byte;
//! - credentials as `smtp://user:password@host…` (percent-encoded), sent with PLAIN or LOGIN,
//!   whichever the server offers. With `smtps://` or `tls=required` nothing (not even EHLO's
//!   answer is trusted) goes before TLS is up with a certificate that verifies: an untrusted
//!   certificate, or a server without STARTTLS, fails the attempt with nothing sent.
//!
//! A message is built from an [`Email`]: `multipart/alternative` when it has both an HTML and a
//! text body; its `Message-ID` is the delivery's (so a receiver drops a resent copy of one it
//! already has); with `list_unsubscribe` it carries `List-Unsubscribe: <url>` and
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058: one-click unsubscribe that
//! mailbox providers require of bulk senders). The envelope is From → To.
//!
//! Outcome: the server's final reply on success; a 5xx reply is permanent (the address or the
//! message is refused), as is a message that cannot be built (a bad address, an unusable
//! header); a 4xx reply to the message is transient. What is wrong with the *relay* rather than
//! the message is a relay fault ([`SendError::relay`]), even when the server says 5xx: no
//! connection, a lost connection, 421, a timeout, a TLS failure, refused credentials (530, 534,
//! 535, 538), no STARTTLS when it is required. They fail every email alike until the relay or
//! `messaging.smtp_url` is fixed; dead-lettering each would lose the whole queue to one outage
//! or one wrong password, so they are retried with backoff (capped at `retry_max_ms`, each
//! attempt recorded and logged) for as long as it takes, never given up.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use lettre::message::header::{HeaderName, HeaderValue, MessageId};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

use super::{SendError, without_credentials};

/// Where and how mail is sent (the lead's settings fill it).
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    /// `smtp://host:port`, `smtp://host:587?tls=required`, `smtps://host:465`, with optional
    /// `user:password@` (module header).
    pub url: String,
    /// The longest one attempt may take, all of it: connect, TLS, AUTH and the message (lettre's
    /// own timeout bounds only the connect; a relay that accepts and then says nothing would
    /// hold a send for ever).
    pub timeout: Duration,
    /// PEM file of CA certificates trusted besides the system's (a relay whose certificate a
    /// private CA issued); used only when the URL asks for TLS.
    pub ca_file: Option<PathBuf>,
}

/// One email to send.
#[derive(Clone, Debug, Default)]
pub struct Email {
    /// The Message-ID, with or without its angle brackets: `"<delivery-uuid@clm>"` and
    /// `"delivery-uuid@clm"` both give `Message-ID: <delivery-uuid@clm>`. Must hold an `@`.
    pub message_id: String,
    /// `"Name <addr>"` or `"addr"`.
    pub from: String,
    /// `"Name <addr>"` or `"addr"`.
    pub to: String,
    pub reply_to: Option<String>,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    /// An `https://` URL that unsubscribes with one POST (RFC 8058).
    pub list_unsubscribe: Option<String>,
    /// More headers (e.g. `X-CLM-Tenant`); not the ones this module sets itself.
    pub extra_headers: Vec<(String, String)>,
}

/// Headers an [`Email`]'s own fields set (or lettre does): not accepted as extra headers.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// Sends [`Email`]s through one SMTP server; connections are pooled and reused.
#[derive(Clone)]
pub struct Mailer {
    /// The pool in use; replaced after a timed-out attempt (see [`Mailer::send`]).
    transport: Arc<Mutex<Arc<AsyncSmtpTransport<Tokio1Executor>>>>,
    builder: AsyncSmtpTransportBuilder,
    timeout: Duration,
    url: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for `cfg.url`; an unusable URL is an error naming it (without its password).
    /// Nothing is sent or connected yet. Call it inside a Tokio runtime: the connection pool
    /// closes idle connections from a task of its own.
    pub fn new(cfg: &SmtpConfig) -> anyhow::Result<Self> {
        let url = without_credentials(&cfg.url);
        tokio::runtime::Handle::try_current().map_err(|_| anyhow!("SMTP {url:?}: the mailer needs a Tokio runtime"))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.url).map_err(|e| {
            anyhow!(
                "SMTP URL {url:?}: {e} (expected smtp://host:port, smtp://host:587?tls=required or smtps://host:465)"
            )
        })?;
        if let Some(file) = &cfg.ca_file {
            builder = builder.tls(tls_with_ca(&cfg.url, file)?);
        }
        let builder = builder.timeout(Some(cfg.timeout));
        let transport = Arc::new(Mutex::new(Arc::new(builder.clone().build())));
        Ok(Self { transport, builder, timeout: cfg.timeout, url })
    }

    /// Send `email`; `Ok` with the server's reply to the message (code and text, e.g.
    /// `"250 2.0.0 Ok: queued as 4BC2D"`).
    pub async fn send(&self, email: &Email) -> Result<String, SendError> {
        let message = message(email)?;
        let transport = self.transport.lock().expect("mailer lock").clone();
        match tokio::time::timeout(self.timeout, transport.send(message)).await {
            Ok(Ok(reply)) => Ok(format!("{} {}", reply.code(), reply.message().collect::<Vec<_>>().join(" "))),
            Ok(Err(e)) => Err(classify(&self.url, &e)),
            Err(_) => {
                // The attempt was cut off, maybe in the middle of a conversation whose
                // connection lettre would put back in its pool, out of step (the next message
                // would read this one's late replies). Start a new pool; shutting the old one
                // closes its idle connections and every one given back to it from now on.
                let fresh = Arc::new(self.builder.clone().build());
                let old = std::mem::replace(&mut *self.transport.lock().expect("mailer lock"), fresh);
                tokio::spawn(async move { old.shutdown().await });
                Err(SendError::relay(format!(
                    "{}: no answer within {:?} (timed out; messaging.smtp_url)",
                    self.url, self.timeout
                )))
            }
        }
    }
}

/// The TLS mode `url` asks for, trusting the CAs in `file` besides the system's; `Tls::None`
/// for plain `smtp://` (the URL already decided: no TLS).
fn tls_with_ca(url: &str, file: &std::path::Path) -> anyhow::Result<Tls> {
    let shown = file.display();
    let pem = std::fs::read(file).map_err(|e| anyhow!("CA file {shown}: {e}"))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(anyhow!("CA file {shown}: no PEM certificate in it"));
    }
    let ca = Certificate::from_pem(&pem).map_err(|e| anyhow!("CA file {shown}: {e}"))?;
    let parsed = url::Url::parse(url).map_err(|e| anyhow!("SMTP URL {:?}: {e}", without_credentials(url)))?;
    let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let tls = parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    let params = || {
        TlsParameters::builder(host.clone())
            .add_root_certificate(ca.clone())
            .build_rustls()
            .map_err(|e| anyhow!("CA file {shown}: {e}"))
    };
    Ok(match (parsed.scheme(), tls.as_deref()) {
        ("smtps", _) => Tls::Wrapper(params()?),
        (_, Some("required")) => Tls::Required(params()?),
        (_, Some("opportunistic")) => Tls::Opportunistic(params()?),
        _ => Tls::None,
    })
}

/// What a failed send means for the delivery (module header): permanent when the message or
/// its recipient is refused; a relay fault when the relay (or its configuration: credentials,
/// TLS) fails every email alike; transient when a later attempt may pass.
fn classify(url: &str, e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(u16::from);
    let text = e.to_string();
    if matches!(code, Some(530 | 534 | 535 | 538)) {
        return SendError::relay(format!("{url}: the relay refused the credentials (messaging.smtp_url): {e}"));
    }
    if e.is_client() && (text.contains("STARTTLS") || text.contains("authentication mechanism")) {
        return SendError::relay(format!("{url}: the relay cannot be used as configured (messaging.smtp_url): {e}"));
    }
    if e.is_tls() {
        return SendError::relay(format!(
            "{url}: TLS with the relay failed (messaging.smtp_url, messaging.smtp_ca_file): {e}"
        ));
    }
    let answered = e.is_transient() || e.is_permanent() || e.is_response() || e.is_client();
    if e.is_timeout() || code == Some(421) || !answered {
        // No connection, the connection lost, the relay closing down: the relay, not the message.
        return SendError::relay(format!("{url}: the relay is unavailable (messaging.smtp_url): {e}"));
    }
    if e.is_permanent() || e.is_client() {
        return SendError::permanent(format!("{url}: {e}"));
    }
    SendError::transient(format!("{url}: {e}"))
}

/// The MIME message of `email` (headers, bodies, envelope From → To).
pub fn message(email: &Email) -> Result<Message, SendError> {
    let mailbox = |what: &str, s: &str| {
        s.parse::<Mailbox>().map_err(|e| SendError::permanent(format!("bad {what} address {s:?}: {e}")))
    };
    let id = email.message_id.trim().trim_start_matches('<').trim_end_matches('>');
    if !id.contains('@') || id.contains(|c: char| c.is_whitespace() || c.is_control() || "<>".contains(c)) {
        return Err(SendError::permanent(format!("bad Message-ID {:?}: expected <unique@domain>", email.message_id)));
    }
    let mut builder = Message::builder()
        .from(mailbox("From", &email.from)?)
        .to(mailbox("To", &email.to)?)
        .subject(email.subject.clone())
        .header(MessageId::from(format!("<{id}>")));
    if let Some(reply_to) = &email.reply_to {
        builder = builder.reply_to(mailbox("Reply-To", reply_to)?);
    }
    if let Some(url) = &email.list_unsubscribe {
        let https = url.starts_with("https://");
        if !(https || url.starts_with("http://"))
            || url.contains(|c: char| c.is_whitespace() || c.is_control() || "<>".contains(c))
        {
            return Err(SendError::permanent(format!("bad List-Unsubscribe URL {url:?}: expected https://…")));
        }
        builder = builder.raw_header(raw("List-Unsubscribe", format!("<{url}>"))?);
        // RFC 8058 one-click needs https; a plain-http link (local development: deployed
        // environments require an https `messaging.public_url`) is a link only.
        if https {
            builder = builder.raw_header(raw("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".to_owned())?);
        }
    }
    for (name, value) in &email.extra_headers {
        if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(SendError::permanent(format!("header {name} is set from the email's own fields")));
        }
        builder = builder.raw_header(raw(name, value.clone())?);
    }
    let built = match (&email.html, &email.text) {
        (Some(html), Some(text)) => builder.multipart(MultiPart::alternative_plain_html(text.clone(), html.clone())),
        (Some(html), None) => builder.singlepart(SinglePart::html(html.clone())),
        (None, Some(text)) => builder.singlepart(SinglePart::plain(text.clone())),
        (None, None) => return Err(SendError::permanent("the email has neither an HTML nor a text body")),
    };
    built.map_err(|e| SendError::permanent(format!("cannot build the message: {e}")))
}

/// A header lettre writes as given (RFC 2047-encoded and folded if needed); no line breaks.
fn raw(name: &str, value: String) -> Result<HeaderValue, SendError> {
    if value.contains(['\r', '\n']) {
        return Err(SendError::permanent(format!("header {name}: line breaks are not allowed in a value")));
    }
    let header = HeaderName::new_from_ascii(name.to_owned())
        .map_err(|_| SendError::permanent(format!("bad header name {name:?}")))?;
    Ok(HeaderValue::new(header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email {
            message_id: "d-1@clm".into(),
            from: "Acme <news@acme.test>".into(),
            to: "ann@example.test".into(),
            subject: "Hello".into(),
            text: Some("hi".into()),
            ..Email::default()
        }
    }

    fn formatted(e: &Email) -> String {
        String::from_utf8(message(e).unwrap().formatted()).unwrap()
    }

    #[test]
    fn the_message_id_has_one_pair_of_brackets() {
        for id in ["d-1@clm", "<d-1@clm>", " <d-1@clm> "] {
            let m = formatted(&Email { message_id: id.into(), ..email() });
            assert!(m.contains("\r\nMessage-ID: <d-1@clm>\r\n"), "{id}: {m}");
        }
        for bad in ["", "no-at", "a b@c", "<a>b@c>"] {
            let e = message(&Email { message_id: bad.into(), ..email() }).unwrap_err();
            assert!(e.permanent && e.detail.contains("Message-ID"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_addresses_and_headers_are_permanent_errors() {
        let cases = [
            Email { from: "not an address".into(), ..email() },
            Email { to: String::new(), ..email() },
            Email { reply_to: Some("x@".into()), ..email() },
            Email { text: None, ..email() },
            Email { list_unsubscribe: Some("ftp://acme.test/u".into()), ..email() },
            Email { list_unsubscribe: Some("https://acme.test/u>\r\nBcc: x@y".into()), ..email() },
            Email { extra_headers: vec![("Bcc".into(), "spy@example.test".into())], ..email() },
            Email { extra_headers: vec![("X-A".into(), "1\r\nBcc: spy@example.test".into())], ..email() },
            Email { extra_headers: vec![("X A".into(), "1".into())], ..email() },
        ];
        for case in cases {
            let e = message(&case).unwrap_err();
            assert!(e.permanent, "{case:?}: {e}");
        }
    }

    #[test]
    fn one_click_unsubscribe_only_over_https() {
        let m = formatted(&Email { list_unsubscribe: Some("https://acme.test/u/t".into()), ..email() });
        assert!(m.contains("\r\nList-Unsubscribe: <https://acme.test/u/t>\r\n"), "{m}");
        assert!(m.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{m}");
        // Local development (deployed environments require an https public_url): a link only.
        let m = formatted(&Email { list_unsubscribe: Some("http://127.0.0.1:8080/u/t".into()), ..email() });
        assert!(m.contains("\r\nList-Unsubscribe: <http://127.0.0.1:8080/u/t>\r\n"), "{m}");
        assert!(!m.contains("List-Unsubscribe-Post"), "{m}");
    }

    #[tokio::test]
    async fn a_bad_url_is_an_error_naming_it_without_the_password() {
        let cfg =
            SmtpConfig { url: "smtpx://u:hunter2@mail.test:25".into(), timeout: Duration::from_secs(1), ca_file: None };
        let e = Mailer::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("smtpx://") && e.contains("mail.test") && !e.contains("hunter2"), "{e}");
        for ok in ["smtp://127.0.0.1:2525", "smtp://mail.test:587?tls=required", "smtps://u:p@mail.test:465"] {
            Mailer::new(&SmtpConfig { url: ok.into(), timeout: Duration::from_secs(1), ca_file: None }).unwrap();
        }
    }

    #[tokio::test]
    async fn an_unusable_ca_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        for file in [dir.path().join("missing.pem"), empty] {
            let cfg = SmtpConfig {
                url: "smtps://u:hunter2@mail.test:465".into(),
                timeout: Duration::from_secs(1),
                ca_file: Some(file.clone()),
            };
            let e = Mailer::new(&cfg).unwrap_err().to_string();
            assert!(e.contains(&file.display().to_string()) && !e.contains("hunter2"), "{e}");
        }
    }
}
