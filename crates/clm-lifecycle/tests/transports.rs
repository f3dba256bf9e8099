//! The messaging transports against real servers: email through an SMTP server (aiosmtpd,
//! `make test-deps`: plain, implicit TLS or STARTTLS, with AUTH, certificates from a CA made
//! per test) and webhooks through an HTTP server, each answering as told.

use std::time::{Duration, Instant};

use clm_lifecycle::messaging::transport::webhook::{self, Webhook, WebhookConfig, Webhooks};
use clm_lifecycle::messaging::transport::{Email, Mailer, SmtpConfig};
use clm_testkit::certs::TestCa;
use clm_testkit::http::Receiver;
use clm_testkit::smtp::{SmtpSink, Stage, Unresponsive};

const WAIT: Duration = Duration::from_secs(10);

fn mailer(url: String) -> Mailer {
    Mailer::new(&SmtpConfig { url, timeout: Duration::from_secs(5), ca_file: None }).expect("mailer")
}

/// A mailer that trusts `ca` besides the system's roots (`messaging.smtp_ca_file`).
fn trusting(url: String, ca: &TestCa) -> Mailer {
    Mailer::new(&SmtpConfig { url, timeout: Duration::from_secs(5), ca_file: Some(ca.ca_file()) }).expect("mailer")
}

const USER: &str = "clm-relay";
/// In the URL percent-encoded: `s3cret%20p%40ss%3Aword`.
const PASSWORD: &str = "s3cret p@ss:word";
const USERINFO: &str = "clm-relay:s3cret%20p%40ss%3Aword";

fn email() -> Email {
    Email {
        message_id: "0193a5b2-7c1d-7e00-8000-000000000001@clm".into(),
        from: "Acme News <news@acme.test>".into(),
        to: "Ann Lee <ann@example.test>".into(),
        reply_to: Some("help@acme.test".into()),
        subject: "Your trial ends Friday".into(),
        html: Some("<p>Hello <b>Ann</b></p>".into()),
        text: Some("Hello Ann".into()),
        list_unsubscribe: Some("https://acme.test/u/abc".into()),
        extra_headers: vec![("X-CLM-Delivery".into(), "d-1".into())],
    }
}

#[tokio::test]
async fn an_email_arrives_with_its_headers_and_both_bodies() {
    let sink = SmtpSink::start().await;
    let reply = mailer(sink.url()).send(&email()).await.expect("sent");
    assert!(reply.starts_with("250 ") && reply.contains("queued"), "{reply}");

    let got = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.mail_from, "news@acme.test");
    assert_eq!(m.rcpt_to, ["ann@example.test"]);
    let raw = m.text();
    for line in [
        "From: \"Acme News\" <news@acme.test>\r\n",
        "To: \"Ann Lee\" <ann@example.test>\r\n",
        "Reply-To: help@acme.test\r\n",
        "Subject: Your trial ends Friday\r\n",
        "Message-ID: <0193a5b2-7c1d-7e00-8000-000000000001@clm>\r\n",
        "List-Unsubscribe: <https://acme.test/u/abc>\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        "X-CLM-Delivery: d-1\r\n",
        "MIME-Version: 1.0\r\n",
    ] {
        assert!(raw.contains(line), "{line:?} not in\n{raw}");
    }
    assert!(m.header("Date").is_some(), "{raw}");
    let content_type = m.header("Content-Type").expect("Content-Type");
    assert!(content_type.starts_with("multipart/alternative; boundary="), "{content_type}");
    let boundary = content_type.split("boundary=").nth(1).unwrap().trim_matches('"');
    // Two parts, text first (the least preferred), then HTML; bodies as sent.
    let parts: Vec<&str> = raw.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 4, "preamble, two parts, the end: {raw}");
    assert!(parts[1].contains("Content-Type: text/plain; charset=utf-8\r\n"), "{}", parts[1]);
    assert!(parts[1].ends_with("\r\n\r\nHello Ann\r\n"), "{:?}", parts[1]);
    assert!(parts[2].contains("Content-Type: text/html; charset=utf-8\r\n"), "{}", parts[2]);
    assert!(parts[2].ends_with("\r\n\r\n<p>Hello <b>Ann</b></p>\r\n"), "{:?}", parts[2]);
    assert!(parts[3].starts_with("--"), "closing delimiter: {:?}", parts[3]);
}

#[tokio::test]
async fn an_email_with_one_body_is_not_multipart() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(sink.url());
    let plain = Email { html: None, list_unsubscribe: None, reply_to: None, ..email() };
    mailer.send(&plain).await.expect("sent");
    let html = Email { text: None, message_id: "<second@clm>".into(), ..email() };
    mailer.send(&html).await.expect("sent");
    let got = sink.wait_for_messages(2, WAIT).await;
    assert!(got[0].header("Content-Type").unwrap().starts_with("text/plain"), "{}", got[0].text());
    // The body as sent; lettre ends DATA with CRLF "." CRLF after the message's own final CRLF,
    // so the server keeps one more CRLF.
    assert!(got[0].text().ends_with("\r\n\r\nHello Ann\r\n\r\n"), "{:?}", got[0].text());
    assert_eq!(got[0].header("List-Unsubscribe"), None);
    assert_eq!(got[0].header("Reply-To"), None);
    assert!(got[1].header("Content-Type").unwrap().starts_with("text/html"), "{}", got[1].text());
    assert_eq!(got[1].header("Message-ID").as_deref(), Some("<second@clm>"));
}

#[tokio::test]
async fn smtp_4xx_is_transient_and_5xx_permanent() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(sink.url());

    sink.fail_next(1, 451);
    let e = mailer.send(&email()).await.unwrap_err();
    assert!(!e.permanent && !e.relay && e.detail.contains("451"), "a 4xx to the message: {e}");

    sink.fail_next(1, 550);
    let e = mailer.send(&email()).await.unwrap_err();
    assert!(e.permanent && e.detail.contains("550"), "{e}");

    sink.fail_next_at(Stage::Data, 1, 452);
    let e = mailer.send(&email()).await.unwrap_err();
    assert!(!e.permanent && e.detail.contains("452"), "{e}");

    sink.fail_next_at(Stage::Data, 1, 554);
    let e = mailer.send(&email()).await.unwrap_err();
    assert!(e.permanent && e.detail.contains("554"), "{e}");

    // The failures were one each: the same email goes through now, once.
    mailer.send(&email()).await.expect("sent after the failures");
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn no_smtp_server_is_transient() {
    let port = clm_testkit::free_port();
    let e = mailer(format!("smtp://127.0.0.1:{port}")).send(&email()).await.unwrap_err();
    assert!(!e.permanent && e.relay && e.detail.contains("messaging.smtp_url"), "{e}");
}

/// Implicit TLS (`smtps://`), AUTH PLAIN; STARTTLS required (`?tls=required`), AUTH LOGIN (the
/// only mechanism that server offers): the message arrives encrypted, sent by the user of the
/// URL with its percent-encoded password, and no AUTH went in the clear.
#[tokio::test]
async fn email_goes_over_tls_with_auth() {
    let ca = TestCa::new("CLM test CA");
    let cert = ca.server_cert();
    for (sink, mechanism) in [
        (
            SmtpSink::builder().implicit_tls(&cert).auth(USER, PASSWORD).auth_mechanisms(&["PLAIN"]).start().await,
            "PLAIN",
        ),
        (SmtpSink::builder().starttls(&cert).auth(USER, PASSWORD).auth_mechanisms(&["LOGIN"]).start().await, "LOGIN"),
    ] {
        let url = sink.url_as(USERINFO);
        let reply = trusting(url.clone(), &ca).send(&email()).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(reply.starts_with("250 "), "{url}: {reply}");
        let got = sink.wait_for_messages(1, WAIT).await;
        let m = &got[0];
        assert!(m.tls.as_deref().is_some_and(|v| v.starts_with("TLSv1.")), "{url}: {m:?}");
        assert_eq!(m.auth, Some((mechanism.to_owned(), USER.to_owned())), "{url}");
        assert_eq!(m.rcpt_to, ["ann@example.test"]);
        assert_eq!(m.header("Message-ID").as_deref(), Some("<0193a5b2-7c1d-7e00-8000-000000000001@clm>"));
        let tries = sink.auth_attempts();
        assert_eq!(tries.len(), 1, "{url}: {tries:?}");
        assert!(tries[0].ok && tries[0].tls.is_some(), "{url}: {tries:?}");
    }
}

/// A wrong password (535), or none where the relay requires one (530), is the relay's
/// configuration, not the message: every email would fail alike until an operator fixes
/// `messaging.smtp_url`, so it is transient (retried with backoff, not dead-lettered), says
/// what to fix, and never shows the password. Fixed, the same email goes.
#[tokio::test]
async fn refused_credentials_are_transient_and_name_the_setting() {
    let ca = TestCa::new("CLM test CA");
    let cert = ca.server_cert();
    for sink in [
        SmtpSink::builder().implicit_tls(&cert).auth(USER, PASSWORD).start().await,
        SmtpSink::builder().starttls(&cert).auth(USER, PASSWORD).start().await,
    ] {
        let wrong = sink.url_as("clm-relay:hunter2");
        let e = trusting(wrong.clone(), &ca).send(&email()).await.unwrap_err();
        assert!(!e.permanent && e.relay, "{wrong}: {e}");
        assert!(e.detail.contains("535") && e.detail.contains("messaging.smtp_url"), "{wrong}: {e}");
        assert!(!e.detail.contains("hunter2"), "{e}");
        assert!(sink.auth_attempts().iter().all(|a| !a.ok && a.tls.is_some()), "{:?}", sink.auth_attempts());

        let anonymous = sink.url();
        let e = trusting(anonymous.clone(), &ca).send(&email()).await.unwrap_err();
        assert!(!e.permanent && e.relay && e.detail.contains("530"), "{anonymous}: {e}");
        assert!(sink.messages().is_empty());

        trusting(sink.url_as(USERINFO), &ca).send(&email()).await.expect("sent once the password is right");
        assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
    }
}

/// A server whose certificate does not verify — issued by a CA the mailer does not trust (not
/// in the system's roots, nor `smtp_ca_file`) — is refused, over implicit TLS and STARTTLS:
/// nothing is sent, no AUTH is tried, and the failure is transient (the relay's configuration).
#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let ca = TestCa::new("CLM test CA");
    let stranger = TestCa::new("Some other CA");
    let cert = stranger.server_cert();
    for sink in [
        SmtpSink::builder().implicit_tls(&cert).auth(USER, PASSWORD).start().await,
        SmtpSink::builder().starttls(&cert).auth(USER, PASSWORD).start().await,
    ] {
        let url = sink.url_as(USERINFO);
        for mailer in [trusting(url.clone(), &ca), mailer(url.clone())] {
            let e = mailer.send(&email()).await.unwrap_err();
            assert!(!e.permanent && e.relay && e.detail.contains("messaging.smtp_url"), "{url}: {e}");
            assert!(!e.detail.contains("s3cret"), "{e}");
        }
        // Trusting the right CA, the same server is fine: the refusal was the certificate's.
        trusting(url.clone(), &stranger).send(&email()).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let got = sink.wait_for_messages(1, WAIT).await;
        assert_eq!(got.len(), 1, "only the trusted attempt arrived");
        assert_eq!(sink.auth_attempts().len(), 1, "{:?}", sink.auth_attempts());
    }
}

/// `?tls=required` against a server that does not offer STARTTLS (and would take AUTH and mail
/// in the clear) fails: no credentials and no message go unencrypted. Likewise `smtps://`
/// against a plain server. Both transient (the relay's configuration).
#[tokio::test]
async fn required_tls_is_never_skipped() {
    let ca = TestCa::new("CLM test CA");
    let plain = SmtpSink::builder().auth(USER, PASSWORD).start().await;
    let port = plain.port;
    for url in
        [format!("smtp://{USERINFO}@127.0.0.1:{port}?tls=required"), format!("smtps://{USERINFO}@127.0.0.1:{port}")]
    {
        for mailer in [mailer(url.clone()), trusting(url.clone(), &ca)] {
            let e = mailer.send(&email()).await.unwrap_err();
            assert!(!e.permanent && e.relay && e.detail.contains("messaging.smtp_url"), "{url}: {e}");
        }
    }
    assert!(plain.auth_attempts().is_empty(), "credentials went in the clear: {:?}", plain.auth_attempts());
    assert!(plain.messages().is_empty(), "a message went in the clear");
    // The same server, asked for no TLS, takes the message (the sink works).
    mailer(plain.url_as(USERINFO)).send(&email()).await.expect("plain SMTP, as asked");
    assert_eq!(plain.wait_for_messages(1, WAIT).await[0].tls, None);
}

/// A relay that accepts the connection and never answers: the attempt ends at the timeout
/// (lettre bounds only the connect; the mailer bounds the whole attempt), as a transient
/// failure; the next attempt does not inherit a connection left mid-conversation.
#[tokio::test]
async fn a_silent_relay_is_a_transient_failure_at_the_timeout() {
    let relay = Unresponsive::start().await;
    let mailer = Mailer::new(&SmtpConfig { url: relay.url(), timeout: Duration::from_millis(1500), ca_file: None })
        .expect("mailer");
    for _ in 0..2 {
        let start = Instant::now();
        let e = mailer.send(&email()).await.unwrap_err();
        let took = start.elapsed();
        assert!(!e.permanent && e.relay && e.detail.contains("timed out"), "{e}");
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "{took:?}");
    }
    assert_eq!(relay.accepted(), 2);
}

fn hook(url: String, body: &str) -> Webhook {
    Webhook {
        url,
        body: body.into(),
        secret: "whsec_test".into(),
        delivery_id: "0193a5b2-7c1d-7e00-8000-0000000000aa".into(),
        attempt: 2,
        timestamp: chrono::Utc::now().timestamp(),
    }
}

fn local() -> Webhooks {
    Webhooks::new(WebhookConfig {
        timeout: Duration::from_secs(5),
        allow_private_hosts: true,
        max_response_bytes: 4096,
    })
}

#[tokio::test]
async fn a_webhook_arrives_signed_with_its_body_byte_for_byte() {
    let receiver = Receiver::start(&[]).await;
    let body = "{\"event\":\"stage_changed\",\"name\":\"Zoë ✓\",\"n\":[1, 2]}\n";
    let h = hook(format!("{}/hooks/clm?x=1", receiver.url()), body);
    assert_eq!(local().post(&h).await, Ok(200));

    let got = receiver.wait_for_requests(1, WAIT).await;
    let r = &got[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hooks/clm?x=1"));
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("user-agent"), Some(concat!("clm/", env!("CARGO_PKG_VERSION"))));
    assert_eq!(r.header("clm-delivery-id"), Some(h.delivery_id.as_str()));
    assert_eq!(r.header("idempotency-key"), Some(h.delivery_id.as_str()));
    assert_eq!(r.header("clm-attempt"), Some("2"));
    assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()));
    let sig = r.header("clm-signature").expect("signature");
    assert!(sig.starts_with(&format!("t={},v1=", h.timestamp)), "{sig}");
    let received = std::str::from_utf8(&r.body).unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(webhook::verify("whsec_test", sig, received, now, Duration::from_mins(5)));
    assert!(!webhook::verify("another", sig, received, now, Duration::from_mins(5)));
}

#[tokio::test]
async fn webhook_answers_are_classified() {
    let receiver = Receiver::start(&[503, 400, 429, 408, 301, 204]).await;
    let hooks = local();
    let h = hook(receiver.url(), "{}");
    for (want_permanent, code) in [(false, 503), (true, 400), (false, 429), (false, 408), (true, 301)] {
        let e = hooks.post(&h).await.unwrap_err();
        assert_eq!(e.permanent, want_permanent, "{code}: {e}");
        assert!(e.detail.contains(&code.to_string()), "{code}: {e}");
    }
    assert_eq!(hooks.post(&h).await, Ok(204));
    assert_eq!(hooks.post(&h).await, Ok(200));
    assert_eq!(receiver.requests().len(), 7);
}

#[tokio::test]
async fn no_webhook_receiver_is_transient() {
    let port = clm_testkit::free_port();
    let e = local().post(&hook(format!("http://127.0.0.1:{port}/"), "{}")).await.unwrap_err();
    assert!(!e.permanent && !e.relay, "a webhook endpoint is the destination, not a relay: {e}");
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let receiver = Receiver::start(&[]).await;
    let strict = Webhooks::new(WebhookConfig {
        timeout: Duration::from_secs(5),
        allow_private_hosts: false,
        max_response_bytes: 4096,
    });
    let port = receiver.addr.port();
    for url in [
        format!("https://127.0.0.1:{port}/"),
        format!("https://localhost:{port}/"),
        format!("https://[::1]:{port}/"),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://10.0.0.1/".to_owned(),
    ] {
        let e = strict.post(&hook(url.clone(), "{}")).await.unwrap_err();
        assert!(e.permanent && e.detail.contains("not a public address"), "{url}: {e}");
    }
    // http:// is refused as such.
    let e = strict.post(&hook(receiver.url(), "{}")).await.unwrap_err();
    assert!(e.permanent && e.detail.contains("https://"), "{e}");
    assert!(receiver.requests().is_empty(), "nothing reached the receiver");
    // Allowed (development, tests): the same receiver is reached.
    assert_eq!(local().post(&hook(receiver.url(), "{}")).await, Ok(200));
}

#[tokio::test]
async fn an_answer_over_the_size_limit_still_counts_by_its_status() {
    // The receiver answers "503 Service Unavailable", then "200 OK": both over 2 bytes.
    let receiver = Receiver::start(&[503]).await;
    let tiny = Webhooks::new(WebhookConfig {
        timeout: Duration::from_secs(5),
        allow_private_hosts: true,
        max_response_bytes: 2,
    });
    let h = hook(receiver.url(), "{}");
    let e = tiny.post(&h).await.unwrap_err();
    assert!(!e.permanent && e.detail.contains("503"), "{e}");
    assert_eq!(tiny.post(&h).await, Ok(200));
}
