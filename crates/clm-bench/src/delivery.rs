//! Workload 8: delivery throughput, from SendMessage to the message accepted by a local SMTP
//! server. Contacts and lifecycle run in this process (as the single binary runs them) on a
//! fresh database, with `messaging.smtp_url` pointing at `clm_testkit::smtp::SmtpSink`
//! (aiosmtpd on 127.0.0.1, what the messaging tests use) and no tenant rate limit.
//!
//! `--deliveries` messages go to contacts with granted email marketing consent (imported up
//! front, one message for each, round robin when there are more messages than contacts), queued
//! by `--concurrency` clients calling SendMessage as fast as they are answered, while the
//! sender drains the queue. From the Delivery records afterwards: messages/s from the first
//! SendMessage to the last `finish_time` (the sender takes it right after the server's 250 to
//! the message), and queue → sent latency per delivery (`finish_time − create_time`).
//!
//! The references in the same run, on the same SMTP server, with as many connections as the
//! sender sends at once (`messaging.concurrency`), the same rendered message each time:
//! - *raw Mailer*: lifecycle's own `Mailer` (lettre's pooled transport), so `delivery ÷ raw
//!   Mailer` is what the queue, the contact lookup, consent, rendering and bookkeeping cost;
//! - *raw lettre, TCP_NODELAY*: the same SMTP conversation (lettre's connection: NOOP, MAIL,
//!   RCPT, DATA, as the pool sends it) on sockets with Nagle's algorithm off: the SMTP server's
//!   ceiling. lettre 0.11.23 leaves Nagle on and writes a message's body and its final
//!   `\r\n.\r\n` as two writes, so the second waits for the server's delayed ACK (~40 ms
//!   on Linux) on every message; the gap between the two references is that stall.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clm_contacts::ContactsService;
use clm_lifecycle::LifecycleService;
use clm_lifecycle::messaging::transport::smtp::{Email, Mailer, SmtpConfig, message};
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::smtp::SmtpSink;
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb};
use hdrhistogram::Histogram;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Figure;

type Lc = LifecycleServiceClient<InterceptedService<Channel, BearerInterceptor>>;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Messages queued (and sent).
    pub messages: usize,
    /// Contacts they go to (at most `messages`).
    pub contacts: usize,
    /// Clients calling SendMessage at once.
    pub clients: usize,
    /// `messaging.concurrency` for the run; `None`: the shipped default.
    pub sender_concurrency: Option<usize>,
}

/// One backend's figures.
#[derive(Debug, Serialize)]
pub struct Delivered {
    pub backend: String,
    pub messages: usize,
    pub sender_concurrency: usize,
    /// SendMessage calls a second while queueing (the sender draining at the same time).
    pub queue_per_s: f64,
    pub queue_s: f64,
    /// First SendMessage → last message accepted.
    pub drain_s: f64,
    /// `messages / drain_s`: the figure.
    pub per_s: f64,
    /// Messages a second sent after the last SendMessage returned (the sender alone), when
    /// a backlog was left then.
    pub backlog_per_s: Option<f64>,
    /// Queue → sent, per delivery (µs).
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Deliveries that ended other than SENT (should be 0).
    pub not_sent: usize,
    /// The reference: lettre through the same `Mailer`, `sender_concurrency` tasks.
    pub raw_per_s: f64,
    pub raw_p50_us: u64,
    /// Messages each reference sent.
    pub raw_messages: usize,
    /// lettre's connection with TCP_NODELAY, `sender_concurrency` connections: the SMTP
    /// server's ceiling.
    pub nodelay_per_s: f64,
    pub nodelay_p50_us: u64,
}

/// The Python that runs the sink (`CLM_TEST_PYTHON`, else the workspace's `.venv-test`, as
/// `clm_testkit::smtp::python` picks it) when it can import aiosmtpd.
fn sink_python() -> Option<PathBuf> {
    let python = std::env::var_os("CLM_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-test/bin/python"), PathBuf::from);
    let ok = std::process::Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn us(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// Messages each reference sends (enough for a rate; the Mailer's takes ~4 s at 4 connections).
const REFERENCE_MESSAGES: usize = 300;

const SUBJECT: &str = r#"{{ contact.first_name | default("Hello") }}, our spring collection is here"#;
const HTML: &str = r#"<!doctype html>
<html><body style="font-family:sans-serif;color:#1f2328;">
<p>Hi {{ contact.first_name | default("there") }},</p>
<p>Spring is here, and so is our new collection: light jackets, linen shirts and the trainers
you asked for. As one of our customers you get 15% off everything until Sunday.</p>
<p><a href="https://shop.example/spring?utm_source=clm&amp;utm_medium=email" style="background:#1a56db;color:#fff;padding:10px 16px;border-radius:6px;text-decoration:none;">See the collection</a></p>
<table role="presentation" width="100%"><tr>
<td><img src="https://shop.example/img/jacket.jpg" alt="Light jacket" width="180"></td>
<td><img src="https://shop.example/img/shirt.jpg" alt="Linen shirt" width="180"></td>
<td><img src="https://shop.example/img/trainers.jpg" alt="Trainers" width="180"></td>
</tr></table>
<p>Free delivery over 50 EUR, free returns within 30 days.</p>
<p style="font-size:12px;color:#57606a;">You receive this because you agreed to hear from us.
<a href="{{ unsubscribe_url }}">Unsubscribe</a>.</p>
</body></html>"#;
const TEXT: &str = r#"Hi {{ contact.first_name | default("there") }},

Spring is here, and so is our new collection: light jackets, linen shirts and the trainers you
asked for. As one of our customers you get 15% off everything until Sunday.

See the collection: https://shop.example/spring?utm_source=clm&utm_medium=email

Free delivery over 50 EUR, free returns within 30 days.

Unsubscribe: {{ unsubscribe_url }}"#;

/// The workload on `backend`; `None` when the backend or the SMTP sink is not available.
pub async fn run(backend: Backend, label: &str, opts: Options) -> anyhow::Result<Option<Delivered>> {
    if sink_python().is_none() {
        eprintln!("delivery: no Python with aiosmtpd (run `make test-deps`); delivery workload skipped");
        return Ok(None);
    }
    let sink = SmtpSink::start().await;
    let Some(cdb) = TestDb::create(backend, "benchdc").await else { return Ok(None) };
    let Some(ldb) = TestDb::create(backend, "benchdl").await else { return Ok(None) };
    let smtp_url = sink.url();
    let concurrency = opts.sender_concurrency.map(|c| c.to_string());
    let mut vars = vec![
        ("CLM_CONTACTS__DATABASE_URL", cdb.url.as_str()),
        ("CLM_LIFECYCLE__DATABASE_URL", ldb.url.as_str()),
        ("CLM_DATABASE__MAX_CONNECTIONS", "16"),
        ("CLM_TELEMETRY__LOG_FILTER", "warn"),
        ("CLM_MESSAGING__SMTP_URL", smtp_url.as_str()),
        ("CLM_MESSAGING__FROM_ADDRESS", "news@shop.example"),
        ("CLM_MESSAGING__PUBLIC_URL", "https://clm.example.com"),
        ("CLM_MESSAGING__LINK_SECRET", "a-link-secret-for-the-bench-0123456789"),
        ("CLM_MESSAGING__TENANT_MESSAGES_PER_MINUTE", "0"),
    ];
    if let Some(c) = &concurrency {
        vars.push(("CLM_MESSAGING__CONCURRENCY", c.as_str()));
    }
    let settings = testing::settings(&vars);
    let sender_concurrency = settings.messaging.concurrency.max(1);
    let server = testing::spawn_pair::<ContactsService, LifecycleService>(settings).await;
    let ch = server.authed(&testing::token("bench", "clm.admin")).await;
    let result = measure(label, opts, sender_concurrency, &sink, ch).await;
    server.stop().await?;
    cdb.cleanup().await;
    ldb.cleanup().await;
    result.map(Some)
}

async fn measure(
    label: &str,
    opts: Options,
    sender_concurrency: usize,
    sink: &SmtpSink,
    ch: InterceptedService<Channel, BearerInterceptor>,
) -> anyhow::Result<Delivered> {
    let mut ct = ContactsServiceClient::new(ch.clone());
    let mut lc = LifecycleServiceClient::new(ch);
    let ids = import(&mut ct, opts.contacts.clamp(1, opts.messages.max(1))).await?;
    let template = lc
        .create_message_template(lpb::CreateMessageTemplateRequest {
            message_template: Some(lpb::MessageTemplate {
                display_name: "Spring collection".into(),
                channel: lpb::MessageChannel::Email as i32,
                purpose: lpb::MessagePurpose::Marketing as i32,
                email: Some(lpb::EmailContent {
                    subject: SUBJECT.into(),
                    html_body: HTML.into(),
                    text_body: TEXT.into(),
                    from_name: "Shop".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .message_template
        .ok_or_else(|| anyhow::anyhow!("no template"))?
        .id;
    // The message as the sender renders it, for the raw reference.
    let preview = lc
        .render_message_template(lpb::RenderMessageTemplateRequest {
            id: template.clone(),
            contact_id: ids[0].clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(preview.suppressed_reason.is_empty(), "the bench contact may not be sent to: {preview:?}");
    let email = Email {
        message_id: String::new(),
        from: "\"Shop\" <news@shop.example>".into(),
        to: preview.recipient,
        reply_to: None,
        subject: preview.subject,
        html: Some(preview.html_body),
        text: Some(preview.text_body),
        list_unsubscribe: Some("https://clm.example.com/u/raw-reference-token".into()),
        extra_headers: vec![("X-CLM-Delivery-Id".into(), "raw".into())],
    };
    let refs = opts.messages.min(REFERENCE_MESSAGES);
    let (raw_per_s, raw) = raw_smtp(&sink.url(), &email, refs, sender_concurrency, false).await?;
    let (nodelay_per_s, nodelay) = raw_smtp(&sink.url(), &email, refs, sender_concurrency, true).await?;
    let raw_sent = 2 * refs;
    eprintln!(
        "raw SMTP       {label:<9} {raw_per_s:>9.0}/s  p50 {:>6}µs  (Mailer, {sender_concurrency} connections)",
        raw.value_at_quantile(0.5),
    );
    eprintln!(
        "raw SMTP       {label:<9} {nodelay_per_s:>9.0}/s  p50 {:>6}µs  (lettre, TCP_NODELAY, {sender_concurrency} connections)",
        nodelay.value_at_quantile(0.5),
    );

    // Queue every message while the sender drains.
    let t0 = now_us();
    let started = Instant::now();
    let (calls, errors) = queue(&lc, &template, &ids, opts.messages, opts.clients).await;
    let queue_s = started.elapsed().as_secs_f64();
    let queued_at = now_us();
    anyhow::ensure!(errors == 0, "{errors} SendMessage calls failed");
    let deadline = Instant::now() + Duration::from_secs(60 + opts.messages as u64 / 10);
    while pending(&mut lc).await? {
        anyhow::ensure!(Instant::now() < deadline, "the deliveries were not all sent in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // What the records say.
    let mut lat = histogram();
    let (mut last, mut after, mut not_sent, mut seen) = (t0, 0usize, 0usize, 0usize);
    let mut page_token = String::new();
    loop {
        let page = lc
            .list_deliveries(lpb::ListDeliveriesRequest {
                template_id: template.clone(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        for d in &page.deliveries {
            seen += 1;
            if d.state != lpb::DeliveryState::Sent as i32 {
                not_sent += 1;
                continue;
            }
            let (created, finished) = (us(d.create_time.as_ref()), us(d.finish_time.as_ref()));
            lat.saturating_record(u64::try_from(finished - created).unwrap_or(0).max(1));
            last = last.max(finished);
            after += usize::from(finished > queued_at);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    anyhow::ensure!(seen == opts.messages, "{seen} deliveries listed, {} queued", opts.messages);
    let arrived = sink.messages().len();
    anyhow::ensure!(
        arrived == raw_sent + opts.messages - not_sent,
        "the SMTP server has {arrived} messages, {raw_sent} raw + {} sent expected",
        opts.messages - not_sent
    );
    let secs = |a: i64, b: i64| (b - a) as f64 / 1e6;
    let drain_s = secs(t0, last).max(1e-6);
    let d = Delivered {
        backend: label.into(),
        messages: opts.messages,
        sender_concurrency,
        queue_per_s: calls as f64 / queue_s.max(1e-6),
        queue_s,
        drain_s,
        per_s: (opts.messages - not_sent) as f64 / drain_s,
        backlog_per_s: (last > queued_at && after > 0).then(|| after as f64 / secs(queued_at, last).max(1e-6)),
        p50_us: lat.value_at_quantile(0.5),
        p90_us: lat.value_at_quantile(0.9),
        p99_us: lat.value_at_quantile(0.99),
        max_us: lat.max(),
        not_sent,
        raw_per_s,
        raw_p50_us: raw.value_at_quantile(0.5),
        raw_messages: refs,
        nodelay_per_s,
        nodelay_p50_us: nodelay.value_at_quantile(0.5),
    };
    eprintln!(
        "delivery       {label:<9} {:>9.0}/s  ({} in {:.2} s; queued at {:.0}/s in {:.2} s; sender alone {}/s)  \
         queue → sent p50 {}µs  p99 {}µs  not sent {}",
        d.per_s,
        d.messages,
        d.drain_s,
        d.queue_per_s,
        d.queue_s,
        d.backlog_per_s.map_or_else(|| "-".into(), |v| format!("{v:.0}")),
        d.p50_us,
        d.p99_us,
        d.not_sent
    );
    Ok(d)
}

/// Import `n` contacts with granted email marketing consent; their ids.
async fn import(
    ct: &mut ContactsServiceClient<InterceptedService<Channel, BearerInterceptor>>,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let consent = cpb::Consent {
        channel: cpb::ConsentChannel::Email as i32,
        status: cpb::ConsentStatus::Granted as i32,
        purpose: cpb::ConsentPurpose::Marketing as i32,
        source: "signup-form".into(),
        ..Default::default()
    };
    let rows: Vec<cpb::Contact> = (0..n)
        .map(|i| cpb::Contact {
            email: format!("d{i}@example.com"),
            given_name: format!("Reader{i}"),
            consents: vec![consent.clone()],
            ..Default::default()
        })
        .collect();
    let batches: Vec<cpb::ImportContactsRequest> =
        rows.chunks(1000).map(|c| cpb::ImportContactsRequest { contacts: c.to_vec() }).collect();
    let mut out = ct.import_contacts(tokio_stream::iter(batches)).await?.into_inner();
    let mut ids = Vec::with_capacity(n);
    while let Some(r) = out.message().await? {
        if let Some(cpb::import_contacts_response::Result::Rows(rows)) = r.result {
            ids.extend(rows.results.into_iter().map(|x| x.contact_id));
        }
    }
    anyhow::ensure!(ids.len() == n && ids.iter().all(|i| !i.is_empty()), "imported {} of {n} contacts", ids.len());
    Ok(ids)
}

/// SendMessage `messages` times from `clients` tasks; (calls, errors).
async fn queue(lc: &Lc, template: &str, ids: &[String], messages: usize, clients: usize) -> (u64, u64) {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(ids.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (mut lc, next, errors, ids, template) =
            (lc.clone(), next.clone(), errors.clone(), ids.clone(), template.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    return calls;
                }
                let req = lpb::SendMessageRequest {
                    template_id: template.clone(),
                    contact_id: ids[i % ids.len()].clone(),
                    request_id: String::new(),
                };
                if lc.send_message(req).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                calls += 1;
            }
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap_or(0);
    }
    (calls, errors.load(Ordering::Relaxed))
}

/// Whether any delivery is still queued or retrying.
async fn pending(lc: &mut Lc) -> anyhow::Result<bool> {
    for state in [lpb::DeliveryState::Queued, lpb::DeliveryState::Retrying] {
        let page = lc
            .list_deliveries(lpb::ListDeliveriesRequest { state: state as i32, page_size: 1, ..Default::default() })
            .await?
            .into_inner();
        if !page.deliveries.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `messages` copies of `email` (each its own Message-ID and recipient) from `tasks` tasks:
/// through one `Mailer` (`nodelay` false), or each task on a lettre connection of its own with
/// TCP_NODELAY. Messages a second and the latency of each send.
async fn raw_smtp(
    url: &str,
    email: &Email,
    messages: usize,
    tasks: usize,
    nodelay: bool,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let mailer =
        Arc::new(Mailer::new(&SmtpConfig { url: url.into(), timeout: Duration::from_secs(15), ca_file: None })?);
    let addr = url.trim_start_matches("smtp://").to_owned();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks.max(1) {
        let (mailer, next, email, run, addr) = (mailer.clone(), next.clone(), email.clone(), run.clone(), addr.clone());
        handles.push(tokio::spawn(async move {
            let mut conn = if nodelay {
                let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
                tcp.set_nodelay(true)?;
                Some(AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &ClientId::default()).await?)
            } else {
                None
            };
            let mut h = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    if let Some(mut c) = conn {
                        c.quit().await?;
                    }
                    return anyhow::Ok(h);
                }
                let e = Email {
                    message_id: format!("raw-{i}-{run}@clm"),
                    to: format!("raw{i}@example.com"),
                    ..email.clone()
                };
                let t = Instant::now();
                if let Some(c) = conn.as_mut() {
                    // What the pool does per message: NOOP (is it alive?), then the transaction.
                    let m = message(&e).map_err(|e| anyhow::anyhow!("raw SMTP: {e}"))?;
                    anyhow::ensure!(c.test_connected().await, "raw SMTP: the connection broke");
                    c.send(m.envelope(), &m.formatted()).await?;
                } else {
                    mailer.send(&e).await.map_err(|e| anyhow::anyhow!("raw SMTP send: {e}"))?;
                }
                h.saturating_record((t.elapsed().as_micros() as u64).max(1));
            }
        }));
    }
    let mut all = histogram();
    for h in handles {
        all.add(h.await??)?;
    }
    Ok((messages as f64 / started.elapsed().as_secs_f64().max(1e-6), all))
}

/// The workload's rows for the main table.
pub fn figures(d: &Delivered) -> Vec<Figure> {
    vec![
        Figure {
            workload: format!("delivery: SendMessage → accepted by SMTP ({} messages)", d.messages),
            backend: d.backend.clone(),
            calls: d.messages as u64,
            errors: d.not_sent as u64,
            throughput_per_s: d.per_s,
            p50_us: d.p50_us,
            p90_us: d.p90_us,
            p99_us: d.p99_us,
            max_us: d.max_us,
        },
        Figure {
            workload: format!("raw SMTP: lifecycle's Mailer, same message ({} connections)", d.sender_concurrency),
            backend: d.backend.clone(),
            calls: d.raw_messages as u64,
            errors: 0,
            throughput_per_s: d.raw_per_s,
            p50_us: d.raw_p50_us,
            p90_us: 0,
            p99_us: 0,
            max_us: 0,
        },
        Figure {
            workload: format!("raw SMTP: lettre with TCP_NODELAY, same message ({} connections)", d.sender_concurrency),
            backend: d.backend.clone(),
            calls: d.raw_messages as u64,
            errors: 0,
            throughput_per_s: d.nodelay_per_s,
            p50_us: d.nodelay_p50_us,
            p90_us: 0,
            p99_us: 0,
            max_us: 0,
        },
    ]
}

/// The workload's own table (Markdown).
pub fn table(all: &[Delivered]) -> String {
    let mut md = String::from(
        "\n| delivery | backend | messages | sender concurrency | queued/s (SendMessage) | sent/s, queue → SMTP | sender alone/s | queue → sent p50 / p90 / p99 ms | raw Mailer/s | raw lettre, TCP_NODELAY/s | delivery ÷ raw Mailer | delivery ÷ TCP_NODELAY | not sent |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for d in all {
        let _ = writeln!(
            md,
            "| SendMessage → SMTP | {} | {} | {} | {:.0} | {:.0} | {} | {:.0} / {:.0} / {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
            d.backend,
            d.messages,
            d.sender_concurrency,
            d.queue_per_s,
            d.per_s,
            d.backlog_per_s.map_or_else(|| "—".into(), |v| format!("{v:.0}")),
            d.p50_us as f64 / 1000.0,
            d.p90_us as f64 / 1000.0,
            d.p99_us as f64 / 1000.0,
            d.raw_per_s,
            d.nodelay_per_s,
            d.per_s / d.raw_per_s.max(f64::MIN_POSITIVE),
            d.per_s / d.nodelay_per_s.max(f64::MIN_POSITIVE),
            d.not_sent
        );
    }
    md
}
