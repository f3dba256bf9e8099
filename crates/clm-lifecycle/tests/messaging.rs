//! Messages over real gRPC, to a real SMTP server (aiosmtpd, `clm_testkit::smtp`) and a real
//! HTTP receiver, with the contacts service in the same process, on SQLite and PostgreSQL:
//! templates checked when saved, previews, consent at send time, unsubscribe headers, signed
//! webhooks, retries with backoff then the dead letter, automations that send, and a hung relay
//! or endpoint holding up nobody else.

use std::time::Duration;

use clm_contacts::ContactsService;
use clm_lifecycle::LifecycleService;
use clm_lifecycle::messaging::transport::webhook::verify;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::http::Receiver;
use clm_testkit::smtp::{SmtpSink, Unresponsive};
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb, TestServer, violated_fields};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Lc = LifecycleServiceClient<InterceptedService<Channel, BearerInterceptor>>;
type Ct = ContactsServiceClient<InterceptedService<Channel, BearerInterceptor>>;

struct Env {
    server: TestServer,
    _dbs: Vec<TestDb>,
}

impl Env {
    /// Contacts and lifecycle in one process, sending through `smtp_url`, retrying fast.
    async fn start(backend: Backend, label: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Option<Env> {
        let c = TestDb::create(backend, &format!("{label}c")).await?;
        let l = TestDb::create(backend, &format!("{label}l")).await?;
        let mut vars = vec![
            ("CLM_CONTACTS__DATABASE_URL", c.url.as_str()),
            ("CLM_LIFECYCLE__DATABASE_URL", l.url.as_str()),
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
            ("CLM_MESSAGING__SMTP_URL", smtp_url),
            ("CLM_MESSAGING__FROM_ADDRESS", "news@shop.example"),
            ("CLM_MESSAGING__PUBLIC_URL", "https://clm.example.com"),
            ("CLM_MESSAGING__LINK_SECRET", "a-link-secret-for-the-tests-0123456789"),
            ("CLM_MESSAGING__RETRY_BASE_MS", "100"),
            ("CLM_MESSAGING__RETRY_MAX_MS", "400"),
            ("CLM_MESSAGING__MAX_ATTEMPTS", "3"),
            ("CLM_MESSAGING__POLL_INTERVAL_MS", "50"),
        ];
        vars.extend_from_slice(extra);
        let settings = testing::settings(&vars);
        let server = testing::spawn_pair::<ContactsService, LifecycleService>(settings).await;
        Some(Env { server, _dbs: vec![c, l] })
    }

    async fn clients(&self, tenant: &str) -> (Ct, Lc) {
        let ch = self.server.authed(&testing::token(tenant, "clm.admin")).await;
        (ContactsServiceClient::new(ch.clone()), LifecycleServiceClient::new(ch))
    }
}

fn consent(purpose: cpb::ConsentPurpose, status: cpb::ConsentStatus) -> cpb::Consent {
    cpb::Consent {
        channel: cpb::ConsentChannel::Email as i32,
        status: status as i32,
        purpose: purpose as i32,
        source: "signup-form".into(),
        ..Default::default()
    }
}

async fn contact(ct: &mut Ct, email: &str, given: &str, consents: Vec<cpb::Consent>) -> String {
    ct.create_contact(cpb::CreateContactRequest {
        contact: Some(cpb::Contact { email: email.into(), given_name: given.into(), consents, ..Default::default() }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .contact
    .unwrap()
    .id
}

fn email_template(subject: &str, html: &str, text: &str) -> pb::MessageTemplate {
    pb::MessageTemplate {
        display_name: "Welcome".into(),
        channel: pb::MessageChannel::Email as i32,
        purpose: pb::MessagePurpose::Marketing as i32,
        email: Some(pb::EmailContent {
            subject: subject.into(),
            html_body: html.into(),
            text_body: text.into(),
            from_name: "Shop".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_template(lc: &mut Lc, t: pb::MessageTemplate) -> pb::CreateMessageTemplateResponse {
    lc.create_message_template(pb::CreateMessageTemplateRequest {
        message_template: Some(t),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn send(lc: &mut Lc, template: &str, contact: &str) -> pb::Delivery {
    lc.send_message(pb::SendMessageRequest {
        template_id: template.into(),
        contact_id: contact.into(),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .delivery
    .unwrap()
}

/// The delivery once it is in `state`.
async fn settled(lc: &mut Lc, id: &str, state: pb::DeliveryState) -> pb::Delivery {
    testing::wait_for(&format!("delivery {id} {state:?}"), async || {
        let d = lc.get_delivery(pb::GetDeliveryRequest { id: id.into() }).await.unwrap().into_inner().delivery.unwrap();
        (d.state == state as i32).then_some(d)
    })
    .await
}

async fn templates_are_checked_when_saved(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "msgcheck", &sink.url(), &[]).await else { return };
    let (_, mut lc) = env.clients("acme").await;
    let bad = email_template("Hi {{ contact.frist_name }}", "<p>{{ contact.first_name", "");
    let err = lc
        .create_message_template(pb::CreateMessageTemplateRequest {
            message_template: Some(bad),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violated_fields(&err);
    assert!(fields.contains(&"message_template.email.subject".to_string()), "{fields:?}");
    assert!(fields.contains(&"message_template.email.html_body".to_string()), "{fields:?}");
    assert!(err.message().contains("contact.frist_name"), "{}", err.message());

    let mut no_purpose = email_template("Hi", "<p>x</p>", "");
    no_purpose.purpose = 0;
    let mut hook = pb::MessageTemplate {
        display_name: "Hook".into(),
        channel: pb::MessageChannel::Webhook as i32,
        purpose: pb::MessagePurpose::Transactional as i32,
        webhook: Some(pb::WebhookContent { url: "not a url".into(), body: "{\"a\": ".into(), ..Default::default() }),
        ..Default::default()
    };
    for (t, field) in [
        (no_purpose, "message_template.purpose"),
        (hook.clone(), "message_template.webhook.url"),
        (hook.clone(), "message_template.webhook.body"),
    ] {
        let err = lc
            .create_message_template(pb::CreateMessageTemplateRequest {
                message_template: Some(t),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert!(violated_fields(&err).contains(&field.to_string()), "{field}: {err:?}");
    }
    // A webhook template saved without a secret gets one, returned once and never again.
    hook.webhook = Some(pb::WebhookContent { url: "https://hooks.example.com/clm".into(), ..Default::default() });
    let made = create_template(&mut lc, hook).await;
    assert!(made.signing_secret.len() >= 32, "{made:?}");
    let id = made.message_template.unwrap().id;
    let got = lc.get_message_template(pb::GetMessageTemplateRequest { id }).await.unwrap().into_inner();
    assert_eq!(got.message_template.unwrap().webhook.unwrap().signing_secret, "");

    // An automation cannot send a template that does not exist.
    let err = lc
        .create_automation(pb::CreateAutomationRequest {
            automation: Some(pb::Automation {
                display_name: "welcome".into(),
                enabled: true,
                trigger: Some(pb::Trigger { kind: Some(pb::trigger::Kind::StageEntered("acquisition".into())) }),
                actions: vec![pb::Action {
                    kind: Some(pb::action::Kind::SendMessage("0190b5a4-0000-7000-8000-000000000000".into())),
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["automation.actions[0].send_message".to_string()], "{err:?}");
}

async fn an_email_arrives_personalised_with_an_unsubscribe_header(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "msgmail", &sink.url(), &[]).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let granted = vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)];
    let ana = contact(&mut ct, "ana@example.com", "Ana <3", granted.clone()).await;
    let anon = contact(&mut ct, "anon@example.com", "", granted).await;
    let t = create_template(
        &mut lc,
        email_template(
            r#"Welcome, {{ contact.first_name | default("there") }}!"#,
            r#"<p>Hi {{ contact.first_name | default("there") }}</p><a href="{{ unsubscribe_url }}">unsubscribe</a>"#,
            r#"Hi {{ contact.first_name | default("there") }}"#,
        ),
    )
    .await
    .message_template
    .unwrap();

    // The preview renders for the contact and sends nothing.
    let preview = lc
        .render_message_template(pb::RenderMessageTemplateRequest {
            id: t.id.clone(),
            contact_id: ana.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.subject, "Welcome, Ana <3!");
    assert!(preview.html_body.starts_with("<p>Hi Ana &lt;3</p>"), "{}", preview.html_body);
    assert_eq!(preview.text_body, "Hi Ana <3", "plain text is not escaped");
    assert_eq!(preview.recipient, "ana@example.com");
    assert_eq!(preview.suppressed_reason, "");

    let d1 = send(&mut lc, &t.id, &ana).await;
    assert_eq!(d1.state, pb::DeliveryState::Queued as i32);
    let d2 = send(&mut lc, &t.id, &anon).await;
    let sent = settled(&mut lc, &d1.id, pb::DeliveryState::Sent).await;
    settled(&mut lc, &d2.id, pb::DeliveryState::Sent).await;
    assert_eq!(sent.recipient, "ana@example.com");
    assert_eq!(sent.subject, "Welcome, Ana <3!");
    assert_eq!(sent.attempt_count, 1);
    assert!(sent.attempts[0].accepted, "{sent:?}");

    let got = sink.wait_for_messages(2, Duration::from_secs(10)).await;
    let mail = got.iter().find(|m| m.rcpt_to == vec!["ana@example.com".to_string()]).expect("ana's email");
    assert_eq!(mail.mail_from, "news@shop.example");
    assert_eq!(mail.header("Message-ID").as_deref(), Some(format!("<{}@clm>", d1.id).as_str()));
    assert_eq!(mail.header("List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    let unsubscribe = mail.header("List-Unsubscribe").expect("List-Unsubscribe");
    assert!(unsubscribe.starts_with("<https://clm.example.com/u/") && unsubscribe.ends_with('>'), "{unsubscribe}");
    let text = mail.text();
    assert!(text.contains("Hi Ana &lt;3"), "the HTML part escapes the name: {text}");
    assert!(text.contains(&unsubscribe[1..unsubscribe.len() - 1]), "the body links the same page: {text}");
    let anon_mail = got.iter().find(|m| m.rcpt_to == vec!["anon@example.com".to_string()]).unwrap();
    assert!(anon_mail.text().contains("Hi there"), "{}", anon_mail.text());

    // Listed per contact.
    let listed = lc
        .list_deliveries(pb::ListDeliveriesRequest { contact_id: ana.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec![d1.id.as_str()]);
}

async fn consent_is_checked_at_send_time(backend: Backend) {
    let sink = SmtpSink::start().await;
    // Many attempts: a delivery keeps retrying until the contact changes (below).
    let Some(env) = Env::start(backend, "msgconsent", &sink.url(), &[("CLM_MESSAGING__MAX_ATTEMPTS", "50")]).await
    else {
        return;
    };
    let (mut ct, mut lc) = env.clients("acme").await;
    let t = create_template(&mut lc, email_template("News", "<p>news</p>", "news")).await.message_template.unwrap();
    let none = contact(&mut ct, "none@example.com", "N", vec![]).await;
    let feedback_only = contact(
        &mut ct,
        "fb@example.com",
        "F",
        vec![consent(cpb::ConsentPurpose::Feedback, cpb::ConsentStatus::Granted)],
    )
    .await;
    let withdrawn = contact(
        &mut ct,
        "w@example.com",
        "W",
        vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Withdrawn)],
    )
    .await;
    let deleted = contact(
        &mut ct,
        "gone@example.com",
        "G",
        vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)],
    )
    .await;
    ct.delete_contact(cpb::DeleteContactRequest { id: deleted.clone(), ..Default::default() }).await.unwrap();
    for (who, why) in [
        (&none, "no email consent for marketing"),
        (&feedback_only, "no email consent for marketing"),
        (&withdrawn, "withdrew"),
    ] {
        let d = send(&mut lc, &t.id, who).await;
        let d = settled(&mut lc, &d.id, pb::DeliveryState::Skipped).await;
        assert!(d.reason.contains(why), "{who}: {}", d.reason);
        assert_eq!(d.attempt_count, 0);
    }
    // A deleted contact cannot be sent to at all.
    let err = lc
        .send_message(pb::SendMessageRequest {
            template_id: t.id.clone(),
            contact_id: deleted,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Nothing reached the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.messages().is_empty(), "{:?}", sink.messages().len());

    // Consent is read when the message goes, not when it was queued: a contact who withdraws
    // (or is deleted) while a delivery waits for a retry gets nothing.
    let later = contact(
        &mut ct,
        "later@example.com",
        "L",
        vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)],
    )
    .await;
    let gone_later = contact(
        &mut ct,
        "gone-later@example.com",
        "G",
        vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)],
    )
    .await;
    let erased_later = contact(
        &mut ct,
        "erased-later@example.com",
        "E",
        vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)],
    )
    .await;
    sink.fail_next(10_000, 451);
    let d1 = send(&mut lc, &t.id, &later).await;
    let d2 = send(&mut lc, &t.id, &gone_later).await;
    let d3 = send(&mut lc, &t.id, &erased_later).await;
    settled(&mut lc, &d1.id, pb::DeliveryState::Retrying).await;
    settled(&mut lc, &d2.id, pb::DeliveryState::Retrying).await;
    settled(&mut lc, &d3.id, pb::DeliveryState::Retrying).await;
    let mut withdrawn_now = consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Withdrawn);
    withdrawn_now.source = "preference-center".into();
    ct.update_contact(cpb::UpdateContactRequest {
        contact: Some(cpb::Contact { id: later.clone(), consents: vec![withdrawn_now], ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["consents".into()] }),
    })
    .await
    .unwrap();
    ct.delete_contact(cpb::DeleteContactRequest { id: gone_later.clone(), ..Default::default() }).await.unwrap();
    ct.erase_contact(cpb::EraseContactRequest { id: erased_later.clone(), reason: "request".into() }).await.unwrap();
    let d1 = settled(&mut lc, &d1.id, pb::DeliveryState::Skipped).await;
    assert!(d1.reason.contains("withdrew"), "{}", d1.reason);
    let d2 = settled(&mut lc, &d2.id, pb::DeliveryState::Skipped).await;
    assert!(d2.reason.contains("deleted"), "{}", d2.reason);
    assert!(d2.attempt_count >= 1 && !d2.attempts.iter().any(|a| a.accepted), "{d2:?}");
    // An erased contact's deliveries are erased with it (lifecycle consumes ContactErased), or,
    // if the sender gets there first, skipped: either way nothing is sent.
    testing::wait_for("the erased contact's delivery to be gone or skipped", async || {
        match lc.get_delivery(pb::GetDeliveryRequest { id: d3.id.clone() }).await {
            Err(e) if e.code() == Code::NotFound => Some(()),
            Ok(r) if r.get_ref().delivery.as_ref().is_some_and(|d| d.state == pb::DeliveryState::Skipped as i32) => {
                Some(())
            }
            _ => None,
        }
    })
    .await;
    assert!(sink.messages().is_empty());
}

/// A relay outage (here: nothing listens) fails every email alike: retried past max_attempts
/// for as long as it lasts, each attempt recorded, never dead-lettered.
async fn a_relay_outage_never_dead_letters(backend: Backend) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay = format!("smtp://127.0.0.1:{port}");
    let Some(env) = Env::start(backend, "msgoutage", &relay, &[("CLM_MESSAGING__MAX_ATTEMPTS", "2")]).await else {
        return;
    };
    let (mut ct, mut lc) = env.clients("acme").await;
    let granted = vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)];
    let ana = contact(&mut ct, "ana@example.com", "Ana", granted).await;
    let t = create_template(&mut lc, email_template("Hi", "<p>hi</p>", "hi")).await.message_template.unwrap();
    let d = send(&mut lc, &t.id, &ana).await;
    let d = testing::wait_for("four attempts", async || {
        let d = lc.get_delivery(pb::GetDeliveryRequest { id: d.id.clone() }).await.unwrap().into_inner().delivery?;
        (d.attempt_count >= 4 || d.state == pb::DeliveryState::Dead as i32).then_some(d)
    })
    .await;
    assert_eq!(d.state, pb::DeliveryState::Retrying as i32, "twice max_attempts and still queued: {d:?}");
    assert!(d.reason.contains("messaging.smtp_url"), "the reason says what to fix: {}", d.reason);
    assert!(d.attempts.iter().all(|a| !a.accepted), "{d:?}");
}

async fn failures_are_retried_then_dead_lettered(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "msgretry", &sink.url(), &[]).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let granted = vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)];
    let ana = contact(&mut ct, "ana@example.com", "Ana", granted).await;
    let t = create_template(&mut lc, email_template("Hi", "<p>hi</p>", "hi")).await.message_template.unwrap();

    // Two temporary refusals, then accepted: three attempts, one message.
    sink.fail_next(2, 451);
    let d = send(&mut lc, &t.id, &ana).await;
    let d = settled(&mut lc, &d.id, pb::DeliveryState::Sent).await;
    assert_eq!(d.attempt_count, 3, "{d:?}");
    assert_eq!(d.attempts.iter().map(|a| a.accepted).collect::<Vec<_>>(), vec![false, false, true]);
    assert!(d.attempts[0].detail.contains("451"), "{:?}", d.attempts[0]);
    assert_eq!(sink.wait_for_messages(1, Duration::from_secs(5)).await.len(), 1);

    // A permanent refusal is dead at once.
    sink.fail_next(1, 550);
    let d = send(&mut lc, &t.id, &ana).await;
    let d = settled(&mut lc, &d.id, pb::DeliveryState::Dead).await;
    assert_eq!(d.attempt_count, 1);
    assert!(d.reason.contains("permanent"), "{}", d.reason);

    // Temporary failures past max_attempts (3): dead, every attempt kept.
    sink.fail_next(3, 451);
    let d = send(&mut lc, &t.id, &ana).await;
    let d = settled(&mut lc, &d.id, pb::DeliveryState::Dead).await;
    assert_eq!(d.attempt_count, 3);
    assert!(d.reason.contains("gave up after 3 attempts"), "{}", d.reason);
    let dead = lc
        .list_deliveries(pb::ListDeliveriesRequest { state: pb::DeliveryState::Dead as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(dead.len(), 2);
}

async fn webhooks_are_signed_and_retried(backend: Backend) {
    let receiver = Receiver::start(&[503, 200]).await;
    let Some(env) = Env::start(backend, "msghook", "", &[]).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let ana = contact(&mut ct, "ana@example.com", "Ana", vec![]).await;
    let made = create_template(
        &mut lc,
        pb::MessageTemplate {
            display_name: "CRM".into(),
            channel: pb::MessageChannel::Webhook as i32,
            purpose: pb::MessagePurpose::Transactional as i32,
            webhook: Some(pb::WebhookContent {
                url: format!("{}/hooks/clm", receiver.url()),
                body: r#"{"email": {{ contact.email }}, "name": {{ contact.first_name }}, "d": {{ delivery.id }}}"#
                    .into(),
                signing_secret: "whsec-0123456789abcdef".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(made.signing_secret, "", "a secret given is not echoed");
    let t = made.message_template.unwrap();
    let d = send(&mut lc, &t.id, &ana).await;
    let d = settled(&mut lc, &d.id, pb::DeliveryState::Sent).await;
    assert_eq!(d.attempt_count, 2);
    let got = receiver.wait_for_requests(2, Duration::from_secs(5)).await;
    assert_eq!(got[0].path, "/hooks/clm");
    assert_eq!(got[0].body, got[1].body, "a retry sends the same body");
    let body = String::from_utf8(got[1].body.clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({ "email": "ana@example.com", "name": "Ana", "d": d.id }));
    assert_eq!(got[1].header("idempotency-key"), Some(d.id.as_str()));
    let signature = got[1].header("clm-signature").expect("signed");
    let now = chrono::Utc::now().timestamp();
    assert!(verify("whsec-0123456789abcdef", signature, &body, now, Duration::from_mins(5)), "{signature}");
    assert!(!verify("another-secret-0123456789", signature, &body, now, Duration::from_mins(5)));
}

async fn automations_send_messages(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "msgauto", &sink.url(), &[]).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let t = create_template(&mut lc, email_template("Welcome {{ stage.name }}", "<p>{{ stage.key }}</p>", ""))
        .await
        .message_template
        .unwrap();
    let auto = lc
        .create_automation(pb::CreateAutomationRequest {
            automation: Some(pb::Automation {
                display_name: "welcome".into(),
                enabled: true,
                trigger: Some(pb::Trigger { kind: Some(pb::trigger::Kind::StageEntered("conversion".into())) }),
                actions: vec![pb::Action { kind: Some(pb::action::Kind::SendMessage(t.id.clone())) }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .automation
        .unwrap();
    let granted = vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)];
    let ana = contact(&mut ct, "ana@example.com", "Ana", granted).await;
    lc.transition_stage(pb::TransitionStageRequest {
        contact_id: ana.clone(),
        to_stage: "conversion".into(),
        reason: "signed".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let d = testing::wait_for("the automation's delivery", async || {
        let l = lc
            .list_deliveries(pb::ListDeliveriesRequest { automation_id: auto.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        l.deliveries.into_iter().next()
    })
    .await;
    assert_eq!(d.source, "automation");
    assert_eq!(d.contact_id, ana);
    let d = settled(&mut lc, &d.id, pb::DeliveryState::Sent).await;
    assert_eq!(d.subject, "Welcome Conversion");
    let mail = sink.wait_for_messages(1, Duration::from_secs(5)).await;
    assert!(mail[0].text().contains("<p>conversion</p>"), "{}", mail[0].text());
}

async fn each_tenant_is_held_to_its_rate(backend: Backend) {
    let sink = SmtpSink::start().await;
    let limit = [("CLM_MESSAGING__TENANT_MESSAGES_PER_MINUTE", "3")];
    let Some(env) = Env::start(backend, "msgrate", &sink.url(), &limit).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let (mut ct2, mut lc2) = env.clients("globex").await;
    let granted = vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)];
    let t = create_template(&mut lc, email_template("Hi", "<p>hi</p>", "hi")).await.message_template.unwrap();
    let t2 = create_template(&mut lc2, email_template("Hi", "<p>hi</p>", "hi")).await.message_template.unwrap();
    let mut queued = Vec::new();
    for i in 0..5 {
        let c = contact(&mut ct, &format!("a{i}@example.com"), "A", granted.clone()).await;
        queued.push(send(&mut lc, &t.id, &c).await.id);
    }
    let other = contact(&mut ct2, "g@example.com", "G", granted).await;
    let theirs = send(&mut lc2, &t2.id, &other).await;
    // Three of acme's five go within the minute; the rest wait, saying why, with no attempt
    // counted. Another tenant is not held up by acme's limit.
    settled(&mut lc2, &theirs.id, pb::DeliveryState::Sent).await;
    testing::wait_for("three of acme's messages sent", async || {
        let l = lc
            .list_deliveries(pb::ListDeliveriesRequest { state: pb::DeliveryState::Sent as i32, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        (l.deliveries.len() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = lc
        .list_deliveries(pb::ListDeliveriesRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let sent = all.iter().filter(|d| d.state == pb::DeliveryState::Sent as i32).count();
    let waiting: Vec<&pb::Delivery> = all.iter().filter(|d| d.state == pb::DeliveryState::Queued as i32).collect();
    assert_eq!((sent, waiting.len()), (3, 2), "{all:?}");
    for d in waiting {
        assert!(d.reason.contains("rate limited"), "{d:?}");
        assert_eq!(d.attempt_count, 0);
    }
    assert_eq!(sink.messages().len(), 4);
}

fn webhook_template(url: &str) -> pb::MessageTemplate {
    pb::MessageTemplate {
        display_name: "CRM".into(),
        channel: pb::MessageChannel::Webhook as i32,
        purpose: pb::MessagePurpose::Transactional as i32,
        webhook: Some(pb::WebhookContent { url: url.into(), ..Default::default() }),
        ..Default::default()
    }
}

/// How long `id` took to be SENT, counted from `since`.
async fn time_to_sent(lc: &mut Lc, id: &str, since: std::time::Instant) -> Duration {
    settled(lc, id, pb::DeliveryState::Sent).await;
    since.elapsed()
}

/// The issue's "a failing SMTP server never blocks other tenants or other channels": the relay
/// accepts connections and never answers, each email attempt takes the whole SMTP timeout (5 s
/// here), and more emails are queued than the sender sends at once. Webhooks queued meanwhile,
/// another tenant's and the same tenant's, arrive at once, not after the timeouts; the emails
/// end as transient failures (RETRYING), nothing lost.
async fn a_hung_smtp_relay_holds_up_no_webhook(backend: Backend) {
    let relay = Unresponsive::start().await;
    let receiver = Receiver::start(&[]).await;
    let slow = [("CLM_MESSAGING__SMTP_TIMEOUT_MS", "5000"), ("CLM_MESSAGING__CONCURRENCY", "4")];
    let Some(env) = Env::start(backend, "msghung", &relay.url(), &slow).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let (mut ct2, mut lc2) = env.clients("globex").await;
    let granted = vec![consent(cpb::ConsentPurpose::Marketing, cpb::ConsentStatus::Granted)];
    let t = create_template(&mut lc, email_template("Hi", "<p>hi</p>", "hi")).await.message_template.unwrap();
    let t2 = create_template(&mut lc2, email_template("Hi", "<p>hi</p>", "hi")).await.message_template.unwrap();
    let mut emails = Vec::new();
    for i in 0..6 {
        let c = contact(&mut ct, &format!("a{i}@example.com"), "A", granted.clone()).await;
        emails.push(send(&mut lc, &t.id, &c).await.id);
    }
    for i in 0..2 {
        let c = contact(&mut ct2, &format!("g{i}@example.com"), "G", granted.clone()).await;
        send(&mut lc2, &t2.id, &c).await;
    }
    // The sender is busy with the relay: every slot it has for email (4) holds a silent
    // connection, both tenants' emails.
    testing::wait_for("the emails to reach the silent relay", async || (relay.accepted() >= 4).then_some(())).await;

    let hook = format!("{}/hooks", receiver.url());
    let theirs = create_template(&mut lc2, webhook_template(&hook)).await.message_template.unwrap();
    let ours = create_template(&mut lc, webhook_template(&hook)).await.message_template.unwrap();
    let g = contact(&mut ct2, "g@example.com", "G", vec![]).await;
    let a = contact(&mut ct, "hook@example.com", "H", vec![]).await;
    let start = std::time::Instant::now();
    let other_tenant = send(&mut lc2, &theirs.id, &g).await;
    let same_tenant = send(&mut lc, &ours.id, &a).await;
    let took = time_to_sent(&mut lc2, &other_tenant.id, start).await;
    assert!(took < Duration::from_millis(2500), "another tenant's webhook took {took:?} behind the hung relay");
    let took = time_to_sent(&mut lc, &same_tenant.id, start).await;
    assert!(took < Duration::from_millis(2500), "the same tenant's webhook took {took:?} behind the hung relay");
    assert_eq!(receiver.requests().len(), 2);

    // The emails were not sent and are not lost: each attempt timed out, a transient failure.
    let d = settled(&mut lc, &emails[0], pb::DeliveryState::Retrying).await;
    assert!(!d.attempts[0].accepted && d.attempts[0].detail.contains("127.0.0.1"), "{d:?}");
    assert!(d.reason.contains("timed out") || d.reason.contains("timeout"), "{}", d.reason);
}

/// A webhook endpoint that accepts connections and never answers (webhook timeout 5 s) takes at
/// most all but one of the sender's webhook slots (3 of 4): another tenant's webhook goes at once.
async fn a_hung_webhook_endpoint_holds_up_no_other_tenant(backend: Backend) {
    let hung = Unresponsive::start().await;
    let receiver = Receiver::start(&[]).await;
    let slow = [("CLM_MESSAGING__WEBHOOK_TIMEOUT_MS", "5000"), ("CLM_MESSAGING__CONCURRENCY", "4")];
    let Some(env) = Env::start(backend, "msghunghook", "", &slow).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let (mut ct2, mut lc2) = env.clients("globex").await;
    let stuck = create_template(&mut lc, webhook_template(&format!("http://127.0.0.1:{}/hooks", hung.port)))
        .await
        .message_template
        .unwrap();
    for i in 0..6 {
        let c = contact(&mut ct, &format!("a{i}@example.com"), "A", vec![]).await;
        send(&mut lc, &stuck.id, &c).await;
    }
    testing::wait_for("acme's webhooks to reach the silent endpoint", async || (hung.accepted() >= 3).then_some(()))
        .await;
    let theirs = create_template(&mut lc2, webhook_template(&format!("{}/hooks", receiver.url())))
        .await
        .message_template
        .unwrap();
    let g = contact(&mut ct2, "g@example.com", "G", vec![]).await;
    let start = std::time::Instant::now();
    let d = send(&mut lc2, &theirs.id, &g).await;
    let took = time_to_sent(&mut lc2, &d.id, start).await;
    assert!(took < Duration::from_millis(2500), "globex's webhook took {took:?} behind acme's hung endpoint");
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(hung.accepted(), 3, "acme's three webhooks still hang, holding three of the four slots");
}

clm_testkit::backend_tests!(
    a_hung_smtp_relay_holds_up_no_webhook,
    a_hung_webhook_endpoint_holds_up_no_other_tenant,
    each_tenant_is_held_to_its_rate,
    templates_are_checked_when_saved,
    an_email_arrives_personalised_with_an_unsubscribe_header,
    consent_is_checked_at_send_time,
    failures_are_retried_then_dead_lettered,
    webhooks_are_signed_and_retried,
    automations_send_messages,
    a_relay_outage_never_dead_letters,
);
