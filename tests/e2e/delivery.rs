//! Messages survive a crash of the real binary: kill -9 while a batch is being sent, start
//! again, and every queued message reaches the SMTP server (aiosmtpd); a message the crash
//! caught between the server's answer and CLM's record of it is sent again under the same
//! Message-ID (the delivery id), so the receiver can recognise it.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::smtp::SmtpSink;
use support::ClmProcess;
use tonic::transport::Channel;

const MESSAGES: usize = 30;

fn env(dir: &std::path::Path, smtp: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["contacts", "lifecycle", "feedback", "metrics"]
        .iter()
        .map(|s| {
            (format!("CLM_{}__DATABASE_URL", s.to_uppercase()), format!("sqlite://{}/{s}.db?mode=rwc", dir.display()))
        })
        .collect();
    for (k, v) in [
        ("CLM_EVENTS__LOG_DATABASE_URL", format!("sqlite://{}/events.db?mode=rwc", dir.display())),
        ("CLM_MESSAGING__SMTP_URL", smtp.to_owned()),
        ("CLM_MESSAGING__FROM_ADDRESS", "news@shop.example".to_owned()),
        ("CLM_MESSAGING__LINK_SECRET", "a-link-secret-for-the-tests-0123456789".to_owned()),
        ("CLM_MESSAGING__POLL_INTERVAL_MS", "50".to_owned()),
        // A lease a crashed sender leaves behind expires soon (it must outlast the timeouts).
        ("CLM_MESSAGING__SMTP_TIMEOUT_MS", "2000".to_owned()),
        ("CLM_MESSAGING__WEBHOOK_TIMEOUT_MS", "2000".to_owned()),
        ("CLM_MESSAGING__LEASE_MS", "8000".to_owned()),
        ("CLM_MESSAGING__TENANT_MESSAGES_PER_MINUTE", "0".to_owned()),
    ] {
        env.push((k.to_owned(), v));
    }
    env
}

async fn channel(clm: &ClmProcess) -> Channel {
    Channel::from_shared(clm.url()).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_sending_loses_no_message_and_a_resend_keeps_its_message_id() {
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &sink.url());
    let clm = ClmProcess::start(&env);
    let ch = channel(&clm).await;
    let (mut ct, mut lc) = (ContactsServiceClient::new(ch.clone()), LifecycleServiceClient::new(ch));
    let template = lc
        .create_message_template(pb::CreateMessageTemplateRequest {
            message_template: Some(pb::MessageTemplate {
                display_name: "News".into(),
                channel: pb::MessageChannel::Email as i32,
                purpose: pb::MessagePurpose::Marketing as i32,
                email: Some(pb::EmailContent {
                    subject: "News for {{ contact.first_name }}".into(),
                    text_body: "Hello {{ contact.first_name }}".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .message_template
        .unwrap()
        .id;
    let mut contacts = Vec::new();
    for i in 0..MESSAGES {
        let c = ct
            .create_contact(cpb::CreateContactRequest {
                contact: Some(cpb::Contact {
                    email: format!("reader{i}@example.com"),
                    given_name: format!("Reader {i}"),
                    consents: vec![cpb::Consent {
                        channel: cpb::ConsentChannel::Email as i32,
                        status: cpb::ConsentStatus::Granted as i32,
                        purpose: cpb::ConsentPurpose::Marketing as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .contact
            .unwrap()
            .id;
        contacts.push(c);
    }
    // Queue them all, then kill the process while the sender is at work.
    let mut queued = Vec::new();
    for c in &contacts {
        let d = lc
            .send_message(pb::SendMessageRequest {
                template_id: template.clone(),
                contact_id: c.clone(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .delivery
            .unwrap();
        queued.push(d.id);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    clm.signal("KILL");
    drop(clm);
    let before = sink.messages().len();

    let clm = ClmProcess::start(&env);
    let mut lc = LifecycleServiceClient::new(channel(&clm).await);
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    loop {
        let sent = lc
            .list_deliveries(pb::ListDeliveriesRequest {
                state: pb::DeliveryState::Sent as i32,
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries
            .len();
        if sent == MESSAGES {
            break;
        }
        if std::time::Instant::now() > deadline {
            let all = lc
                .list_deliveries(pb::ListDeliveriesRequest { page_size: 1000, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .deliveries;
            let states: Vec<(i32, String)> = all.iter().map(|d| (d.state, d.reason.clone())).take(5).collect();
            panic!(
                "only {sent} of {MESSAGES} sent after the restart: {states:?}; logs: {:?}",
                clm.logs.lock().unwrap().iter().rev().take(10).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = sink.wait_for_messages(MESSAGES, Duration::from_secs(10)).await;
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for m in &got {
        let id = m.header("Message-ID").expect("every message has a Message-ID");
        *by_id.entry(id.trim_matches(|c| c == '<' || c == '>').trim_end_matches("@clm").to_owned()).or_default() += 1;
    }
    let expected: HashSet<String> = queued.iter().cloned().collect();
    let arrived: HashSet<String> = by_id.keys().cloned().collect();
    assert_eq!(arrived, expected, "every queued message arrived, under its delivery id");
    let resent: usize = by_id.values().map(|n| n - 1).sum();
    eprintln!("kill -9 while sending: {before} messages before the kill, {} in all, {resent} sent again", got.len());
    assert_eq!(got.len(), MESSAGES + resent, "nothing arrived but the queued messages and recognisable resends");
}
