//! Survey invitations delivered as messages, over real gRPC and a real SMTP server: contacts,
//! lifecycle and feedback in one process (one event bus), on SQLite and PostgreSQL. Feedback
//! invites and publishes SurveyRequested; lifecycle queues a delivery in its consumer and the
//! sender emails it (consent for FEEDBACK checked then), whose one-click score link opens the
//! survey page with the score chosen (feedback's pages); feedback's sweep reminds the
//! unanswered and invites recurring surveys' contacts again, within the throttle window.

use std::time::Duration;

use clm_contacts::ContactsService;
use clm_feedback::FeedbackService;
use clm_feedback::events::{Publisher, sweep};
use clm_lifecycle::LifecycleService;
use clm_platform::convert::micros;
use clm_platform::events::outbox::OutboxWriter;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::feedback::v1 as pb;
use clm_proto::feedback::v1::feedback_service_client::FeedbackServiceClient;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::smtp::{Received, SmtpSink};
use clm_testkit::{
    self as testing, Backend, BearerInterceptor, Services, TestDb, TestServer, violated_fields, wait_for,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Ch = InterceptedService<Channel, BearerInterceptor>;
type Fb = FeedbackServiceClient<Ch>;
type Ct = ContactsServiceClient<Ch>;
type Lc = LifecycleServiceClient<Ch>;

const PAGES: &str = "https://clm.example.com";
/// Lifecycle's built-in survey invitation (`messaging::SURVEY_INVITATION_TEMPLATE`).
const BUILT_IN: &str = "00000000-0000-0000-0000-00000000feed";

struct Env {
    server: TestServer,
    dbs: Vec<TestDb>,
    sink: SmtpSink,
}

struct Clients {
    f: Fb,
    c: Ct,
    l: Lc,
}

impl Env {
    async fn start(backend: Backend, label: &str) -> Option<Env> {
        let sink = SmtpSink::start().await;
        let c = TestDb::create(backend, &format!("{label}c")).await?;
        let l = TestDb::create(backend, &format!("{label}l")).await?;
        let f = TestDb::create(backend, &format!("{label}f")).await?;
        let smtp = sink.url();
        let settings = testing::settings(&[
            ("CLM_CONTACTS__DATABASE_URL", &c.url),
            ("CLM_LIFECYCLE__DATABASE_URL", &l.url),
            ("CLM_FEEDBACK__DATABASE_URL", &f.url),
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
            ("CLM_FEEDBACK__SCHEDULER_INTERVAL_MS", "50"),
            ("CLM_MESSAGING__SMTP_URL", &smtp),
            ("CLM_MESSAGING__FROM_ADDRESS", "survey@shop.example"),
            ("CLM_MESSAGING__PUBLIC_URL", PAGES),
            ("CLM_MESSAGING__LINK_SECRET", "a-link-secret-for-the-tests-0123456789"),
            ("CLM_MESSAGING__POLL_INTERVAL_MS", "50"),
        ]);
        let server = Services::new(settings)
            .await
            .with::<ContactsService>()
            .await
            .with::<LifecycleService>()
            .await
            .with::<FeedbackService>()
            .await
            .serve()
            .await;
        Some(Env { server, dbs: vec![c, l, f], sink })
    }

    async fn clients(&self, tenant: &str) -> Clients {
        let ch = self.server.authed(&testing::token(tenant, "clm.admin")).await;
        Clients {
            f: FeedbackServiceClient::new(ch.clone()),
            c: ContactsServiceClient::new(ch.clone()),
            l: LifecycleServiceClient::new(ch),
        }
    }

    /// The emails to `to` so far.
    fn mails_to(&self, to: &str) -> Vec<Received> {
        self.sink.messages().into_iter().filter(|m| m.rcpt_to == vec![to.to_owned()]).collect()
    }

    /// The emails to `to` once there are `n`.
    async fn wait_mails(&self, to: &str, n: usize) -> Vec<Received> {
        wait_for(&format!("{n} emails to {to}"), async || {
            let got = self.mails_to(to);
            (got.len() >= n).then_some(got)
        })
        .await
    }

    async fn done(self) {
        self.server.stop().await.unwrap();
        for db in self.dbs {
            db.cleanup().await;
        }
    }
}

fn consent(purpose: cpb::ConsentPurpose) -> cpb::Consent {
    cpb::Consent {
        channel: cpb::ConsentChannel::Email as i32,
        status: cpb::ConsentStatus::Granted as i32,
        purpose: purpose as i32,
        source: "signup-form".into(),
        ..Default::default()
    }
}

async fn new_contact(c: &mut Ct, email: &str, purpose: cpb::ConsentPurpose) -> String {
    c.create_contact(cpb::CreateContactRequest {
        contact: Some(cpb::Contact {
            email: email.into(),
            given_name: "Ana".into(),
            consents: vec![consent(purpose)],
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .contact
    .unwrap()
    .id
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn ms(n: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: n / 1000, nanos: i32::try_from(n % 1000).unwrap() * 1_000_000 }
}

async fn new_survey(f: &mut Fb, name: &str, stage: &str, tune: impl FnOnce(&mut pb::Survey)) -> pb::Survey {
    let mut s = pb::Survey {
        display_name: name.into(),
        kind: pb::SurveyKind::Nps as i32,
        status: pb::SurveyStatus::Active as i32,
        target_stage_key: stage.into(),
        ..Default::default()
    };
    tune(&mut s);
    f.create_survey(pb::CreateSurveyRequest { survey: Some(s), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
        .survey
        .unwrap()
}

async fn set_throttle(f: &mut Fb, window: prost_types::Duration) {
    f.update_feedback_settings(pb::UpdateFeedbackSettingsRequest {
        feedback_settings: Some(pb::FeedbackSettings { throttle_window: Some(window), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["throttle_window".into()] }),
    })
    .await
    .unwrap();
}

async fn invite(f: &mut Fb, survey: &str, contact: &str) -> pb::CreateInvitationResponse {
    f.create_invitation(pb::CreateInvitationRequest {
        survey_id: survey.into(),
        contact_id: contact.into(),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn invitations(f: &mut Fb, survey: &str, contact: &str) -> Vec<pb::Invitation> {
    f.list_invitations(pb::ListInvitationsRequest {
        survey_id: survey.into(),
        contact_id: contact.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .invitations
}

/// A message's text with quoted-printable undone (soft line breaks, `=XX`).
fn decoded(m: &Received) -> String {
    let raw = m.text().replace("=\r\n", "");
    let mut out = Vec::new();
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The survey token of the first `/s/<token>` link in `m`.
fn survey_token(m: &Received) -> String {
    let text = decoded(m);
    let start = text.find(&format!("{PAGES}/s/")).expect("a survey link") + PAGES.len() + 3;
    text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).collect()
}

fn answer(token: &str, score: i32) -> pb::SubmitResponseRequest {
    pb::SubmitResponseRequest {
        target: Some(pb::submit_response_request::Target::InvitationToken(token.into())),
        answers: vec![pb::Answer { question_id: "score".into(), value: Some(pb::answer::Value::Rating(score)) }],
        response_id: String::new(),
        complete: true,
    }
}

async fn deliveries(l: &mut Lc, contact: &str) -> Vec<lpb::Delivery> {
    l.list_deliveries(lpb::ListDeliveriesRequest { contact_id: contact.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

/// Enter `contact` into "conversion" (a purchase), once lifecycle knows them.
async fn purchase(l: &mut Lc, contact: &str, order: &str) {
    wait_for("lifecycle knows the contact", async || {
        l.get_journey(lpb::GetJourneyRequest { contact_id: contact.into(), model_id: String::new() }).await.ok()
    })
    .await;
    l.record_journey_event(lpb::RecordJourneyEventRequest {
        model_id: String::new(),
        event: Some(lpb::JourneyEvent {
            contact_id: contact.into(),
            detail: Some(lpb::journey_event::Detail::Purchase(lpb::Purchase {
                order_id: order.into(),
                amount: Some(Money { currency_code: "EUR".into(), units: 50, nanos: 0 }),
                items: 1,
            })),
            ..Default::default()
        }),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
}

async fn a_stage_entry_emails_the_invitation_with_one_click_scores(backend: Backend) {
    let Some(env) = Env::start(backend, "smstage").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    let nps = new_survey(&mut f, "Quarterly NPS", "conversion", |_| {}).await;
    let ana = new_contact(&mut c, "ana@example.com", cpb::ConsentPurpose::Feedback).await;
    purchase(&mut l, &ana, "o-1").await;

    let mail = env.wait_mails("ana@example.com", 1).await.remove(0);
    let inv = invitations(&mut f, &nps.id, &ana).await.remove(0);
    assert_eq!(inv.source, pb::InvitationSource::StageTrigger as i32);
    assert_eq!(mail.header("Subject").as_deref(), Some("Quarterly NPS: we would like your feedback"));
    assert!(mail.header("List-Unsubscribe").is_some_and(|u| u.starts_with(&format!("<{PAGES}/u/"))));
    let token = survey_token(&mail);
    assert!(token.starts_with(&inv.id.replace('-', "")), "the invitation's token: {token} for {}", inv.id);
    let text = decoded(&mail);
    for n in 0..=10 {
        assert!(text.contains(&format!("{PAGES}/s/{token}?score={n}")), "one-click score {n}: {text}");
    }
    assert!(text.contains("Hi Ana"), "{text}");
    // The delivery says what it carries.
    let d = deliveries(&mut l, &ana).await.remove(0);
    assert_eq!((d.source.as_str(), d.invitation_id.as_str(), d.reminder), ("survey", inv.id.as_str(), 0));
    assert_eq!(d.template_id, BUILT_IN);
    assert_eq!(d.state, lpb::DeliveryState::Sent as i32);
    // The email's one-click link, on the pages server: the survey page with 9 chosen (nothing
    // recorded yet); sending the form answers the invitation.
    let link = format!("{PAGES}/s/{token}?score=9");
    let path = link.strip_prefix(PAGES).unwrap();
    let page = clm_testkit::http::request("GET", &format!("{}{path}", env.server.pages_url()), &[], b"").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains(r#"value="9" checked required>"#), "{}", page.body);
    assert_eq!(invitations(&mut f, &nps.id, &ana).await[0].status, pb::InvitationStatus::Pending as i32);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let url = format!("{}/s/{token}", env.server.pages_url());
    let done = clm_testkit::http::request("POST", &url, &form, b"score=9").await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(invitations(&mut f, &nps.id, &ana).await[0].status, pb::InvitationStatus::Responded as i32);
    let err = f.submit_response(answer(&token, 9)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "the token is used");
    env.done().await;
}

async fn unanswered_invitations_are_reminded_once_answered_ones_never(backend: Backend) {
    let Some(env) = Env::start(backend, "smremind").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    set_throttle(&mut f, ms(0)).await;
    let csat = new_survey(&mut f, "After your order", "", |s| {
        s.kind = pb::SurveyKind::Csat as i32;
        s.reminder_after = Some(ms(1500));
        s.max_reminders = 1;
    })
    .await;
    assert_eq!((csat.reminder_after, csat.max_reminders), (Some(ms(1500)), 1));
    let quiet = new_contact(&mut c, "quiet@example.com", cpb::ConsentPurpose::Feedback).await;
    let eager = new_contact(&mut c, "eager@example.com", cpb::ConsentPurpose::Feedback).await;
    let inv = invite(&mut f, &csat.id, &quiet).await.invitation.unwrap();
    let eager_inv = invite(&mut f, &csat.id, &eager).await.invitation.unwrap();
    // The eager one answers at once (well before the reminder is due, however slow the mail).
    f.submit_response(answer(&eager_inv.token, 5)).await.unwrap();
    // Replicas: more sweeps of the same database, as fast as they can, beside the server's own.
    let db = clm_platform::db::connect(&env.dbs[2].url, &testing::settings(&[]).database).await.unwrap();
    let publisher = Publisher::new(OutboxWriter::new("feedback"));
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let (db, publisher) = (db.clone(), publisher.clone());
            tokio::spawn(async move {
                // Past the moment the reminder is due.
                for _ in 0..100 {
                    let _ = sweep::tick(&db, &publisher, micros_now()).await;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        })
        .collect();
    let first = env.wait_mails("eager@example.com", 1).await.remove(0);
    assert_eq!(survey_token(&first), eager_inv.token);

    let mails = env.wait_mails("quiet@example.com", 2).await;
    assert_eq!(survey_token(&mails[0]), inv.token);
    assert_eq!(survey_token(&mails[1]), inv.token, "a reminder carries the same link");
    let subject = mails[1].header("Subject").unwrap();
    assert_eq!(subject, "Reminder: After your order: we would like your feedback");
    let text = decoded(&mails[1]);
    assert!(text.contains(&format!("{PAGES}/s/{}?score=5", inv.token)), "CSAT one-click: {text}");
    assert!(!text.contains("?score=6"), "CSAT is 1-5: {text}");
    // One reminder and no more, whatever the number of sweeps; none for the one who answered.
    for r in replicas {
        r.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.mails_to("quiet@example.com").len(), 2);
    assert_eq!(env.mails_to("eager@example.com").len(), 1);
    let got = f.get_invitation(pb::GetInvitationRequest { id: inv.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.invitation.unwrap().reminders_sent, 1);
    let ds = deliveries(&mut l, &quiet).await;
    assert_eq!(ds.iter().map(|d| d.reminder).collect::<Vec<_>>(), vec![1, 0], "newest first");
    assert!(ds.iter().all(|d| d.invitation_id == inv.id));
    env.done().await;
}

async fn recurring_surveys_invite_again_after_the_interval(backend: Backend) {
    let Some(env) = Env::start(backend, "smrecur").await else { return };
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    set_throttle(&mut f, ms(0)).await;
    let nps = new_survey(&mut f, "Pulse", "", |s| s.recurrence = Some(ms(600))).await;
    let ana = new_contact(&mut c, "ana@example.com", cpb::ConsentPurpose::Feedback).await;
    let first = invite(&mut f, &nps.id, &ana).await.invitation.unwrap();
    let mails = env.wait_mails("ana@example.com", 2).await;
    let all = invitations(&mut f, &nps.id, &ana).await;
    let second = all.iter().find(|i| i.id != first.id).expect("a second invitation");
    assert_eq!(second.source, pb::InvitationSource::Recurrence as i32);
    let gap =
        micros(second.create_time.as_ref().unwrap()).unwrap() - micros(first.create_time.as_ref().unwrap()).unwrap();
    assert!(gap >= 600_000, "invited again after the interval, not before: {gap} µs");
    assert_ne!(survey_token(&mails[0]), survey_token(&mails[1]), "a new invitation, a new token");
    env.done().await;
}

async fn a_deleted_contact_gets_no_further_rounds(backend: Backend) {
    let Some(env) = Env::start(backend, "smrecdel").await else { return };
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    set_throttle(&mut f, ms(0)).await;
    let nps = new_survey(&mut f, "Pulse", "", |s| s.recurrence = Some(ms(1500))).await;
    let ana = new_contact(&mut c, "ana@example.com", cpb::ConsentPurpose::Feedback).await;
    let bob = new_contact(&mut c, "bob@example.com", cpb::ConsentPurpose::Feedback).await;
    invite(&mut f, &nps.id, &ana).await.invitation.unwrap();
    invite(&mut f, &nps.id, &bob).await.invitation.unwrap();
    c.delete_contact(cpb::DeleteContactRequest { id: bob.clone(), ..Default::default() }).await.unwrap();
    // Ana's rounds go on; by her third invitation Bob's second round is long past due.
    wait_for("ana's third round", async || (invitations(&mut f, &nps.id, &ana).await.len() >= 3).then_some(())).await;
    let bobs = invitations(&mut f, &nps.id, &bob).await;
    assert_eq!(bobs.len(), 1, "no round after the contact was deleted: {bobs:?}");
    env.done().await;
}

async fn the_throttle_window_caps_invitations_across_surveys(backend: Backend) {
    let Some(env) = Env::start(backend, "smthrottle").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    set_throttle(&mut f, ms(2000)).await;
    let first = new_survey(&mut f, "First", "", |_| {}).await;
    let staged = new_survey(&mut f, "On conversion", "conversion", |_| {}).await;
    let asked = new_contact(&mut c, "asked@example.com", cpb::ConsentPurpose::Feedback).await;
    let fresh = new_contact(&mut c, "fresh@example.com", cpb::ConsentPurpose::Feedback).await;
    invite(&mut f, &first.id, &asked).await.invitation.unwrap();
    // An automation asks for another survey on the same stage entry.
    let requested = new_survey(&mut f, "Requested", "", |_| {}).await;
    l.create_automation(lpb::CreateAutomationRequest {
        automation: Some(lpb::Automation {
            display_name: "ask on conversion".into(),
            enabled: true,
            trigger: Some(lpb::Trigger { kind: Some(lpb::trigger::Kind::StageEntered("conversion".into())) }),
            actions: vec![lpb::Action { kind: Some(lpb::action::Kind::RequestSurvey(requested.id.clone())) }],
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();

    // Stage-targeted and automation-requested: both contacts enter the stage; the one asked
    // lately gets neither survey, the other exactly one of the two (the second is throttled
    // by the first).
    purchase(&mut l, &asked, "o-1").await;
    purchase(&mut l, &fresh, "o-2").await;
    wait_for("the fresh contact is invited", async || invitations(&mut f, &staged.id, &fresh).await.pop()).await;
    wait_for("the automation's request is handled", async || {
        let runs = l
            .list_automation_runs(lpb::ListAutomationRunsRequest { contact_id: fresh.clone(), ..Default::default() })
            .await
            .ok()?
            .into_inner();
        runs.runs.into_iter().next()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(invitations(&mut f, &staged.id, &asked).await.is_empty(), "throttled on stage entry");
    assert!(invitations(&mut f, &requested.id, &asked).await.is_empty(), "throttled on an automation's request");
    assert!(invitations(&mut f, &requested.id, &fresh).await.is_empty(), "throttled by the stage's survey");
    // Batch and manual invitations are throttled too.
    let batch = f
        .batch_create_invitations(pb::BatchCreateInvitationsRequest {
            survey_id: staged.id.clone(),
            target: Some(pb::batch_create_invitations_request::Target::Contacts(pb::ContactIdList {
                contact_ids: vec![asked.clone()],
            })),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.skipped[0].reason, pb::SkipReason::Throttled as i32);
    let manual = invite(&mut f, &staged.id, &asked).await;
    assert_eq!(manual.skipped.unwrap().reason, pb::SkipReason::Throttled as i32);

    // A recurring survey's next round waits for the window too.
    let fresh_too = new_contact(&mut c, "later@example.com", cpb::ConsentPurpose::Feedback).await;
    let recurring = new_survey(&mut f, "Recurring", "", |s| s.recurrence = Some(ms(200))).await;
    let one = invite(&mut f, &recurring.id, &fresh_too).await.invitation.unwrap();
    let two = wait_for("the next round", async || {
        invitations(&mut f, &recurring.id, &fresh_too).await.into_iter().find(|i| i.id != one.id)
    })
    .await;
    let gap = micros(two.create_time.as_ref().unwrap()).unwrap() - micros(one.create_time.as_ref().unwrap()).unwrap();
    assert!(gap >= 2_000_000, "not before the throttle window allowed: {gap} µs");
    // Only one email per invitation reached the throttled contact.
    assert_eq!(env.wait_mails("asked@example.com", 1).await.len(), 1);
    env.done().await;
}

async fn without_feedback_consent_the_invitation_is_skipped(backend: Backend) {
    let Some(env) = Env::start(backend, "smconsent").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    set_throttle(&mut f, ms(0)).await;
    // A survey of the tenant's own FEEDBACK template.
    let t = l
        .create_message_template(lpb::CreateMessageTemplateRequest {
            message_template: Some(lpb::MessageTemplate {
                display_name: "Our survey email".into(),
                channel: lpb::MessageChannel::Email as i32,
                purpose: lpb::MessagePurpose::Feedback as i32,
                email: Some(lpb::EmailContent {
                    subject: "Tell us: {{ survey.name }}".into(),
                    text_body: "Go to {{ survey.url }} (until {{ survey.expire_time }})".into(),
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
        .unwrap();
    let s = new_survey(&mut f, "Ours", "", |s| s.message_template_id.clone_from(&t.id)).await;
    let marketing_only = new_contact(&mut c, "m@example.com", cpb::ConsentPurpose::Marketing).await;
    let ok = new_contact(&mut c, "ok@example.com", cpb::ConsentPurpose::Feedback).await;
    invite(&mut f, &s.id, &marketing_only).await.invitation.unwrap();
    let inv = invite(&mut f, &s.id, &ok).await.invitation.unwrap();
    let skipped = wait_for("the delivery is skipped", async || {
        deliveries(&mut l, &marketing_only).await.pop().filter(|d| d.state == lpb::DeliveryState::Skipped as i32)
    })
    .await;
    assert!(skipped.reason.contains("no email consent for feedback"), "{skipped:?}");
    assert_eq!(skipped.template_id, t.id);
    let mail = env.wait_mails("ok@example.com", 1).await.remove(0);
    assert_eq!(mail.header("Subject").as_deref(), Some("Tell us: Ours"));
    assert!(decoded(&mail).contains(&format!("Go to {PAGES}/s/{} (until", inv.token)), "{}", decoded(&mail));
    assert!(env.mails_to("m@example.com").is_empty());

    // A survey naming a template that is not for FEEDBACK gets the built-in invitation (the
    // contact's feedback consent is what counts).
    let mut news = lpb::MessageTemplate {
        display_name: "News".into(),
        channel: lpb::MessageChannel::Email as i32,
        purpose: lpb::MessagePurpose::Marketing as i32,
        email: Some(lpb::EmailContent { subject: "News".into(), text_body: "news".into(), ..Default::default() }),
        ..Default::default()
    };
    news = l
        .create_message_template(lpb::CreateMessageTemplateRequest {
            message_template: Some(news),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .message_template
        .unwrap();
    let other = new_survey(&mut f, "Other", "", |s| s.message_template_id.clone_from(&news.id)).await;
    invite(&mut f, &other.id, &ok).await.invitation.unwrap();
    let mails = env.wait_mails("ok@example.com", 2).await;
    assert_eq!(mails[1].header("Subject").as_deref(), Some("Other: we would like your feedback"));
    let ds = deliveries(&mut l, &ok).await;
    assert_eq!(ds[0].template_id, BUILT_IN, "{ds:?}");
    env.done().await;
}

async fn delivery_settings_are_validated(backend: Backend) {
    let Some(env) = Env::start(backend, "smvalid").await else { return };
    let Clients { mut f, .. } = env.clients("acme").await;
    let bad = pb::Survey {
        display_name: "Bad".into(),
        kind: pb::SurveyKind::Nps as i32,
        message_template_id: "not-a-uuid".into(),
        reminder_after: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
        max_reminders: 9,
        recurrence: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
        ..Default::default()
    };
    let err =
        f.create_survey(pb::CreateSurveyRequest { survey: Some(bad), request_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        ["survey.max_reminders", "survey.message_template_id", "survey.recurrence", "survey.reminder_after"]
    );
    // A count without a delay would never send.
    let s = new_survey(&mut f, "Fine", "", |_| {}).await;
    let err = f
        .update_survey(pb::UpdateSurveyRequest {
            survey: Some(pb::Survey { id: s.id.clone(), max_reminders: 2, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["max_reminders".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["survey.max_reminders"]);
    let ok = f
        .update_survey(pb::UpdateSurveyRequest {
            survey: Some(pb::Survey {
                id: s.id.clone(),
                reminder_after: Some(ms(3_600_000)),
                max_reminders: 2,
                recurrence: Some(ms(90 * 86_400_000)),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["reminder_after".into(), "max_reminders".into(), "recurrence".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .survey
        .unwrap();
    assert_eq!((ok.max_reminders, ok.recurrence), (2, Some(ms(90 * 86_400_000))));
    env.done().await;
}

clm_testkit::backend_tests!(
    a_stage_entry_emails_the_invitation_with_one_click_scores,
    unanswered_invitations_are_reminded_once_answered_ones_never,
    recurring_surveys_invite_again_after_the_interval,
    a_deleted_contact_gets_no_further_rounds,
    the_throttle_window_caps_invitations_across_surveys,
    without_feedback_consent_the_invitation_is_skipped,
    delivery_settings_are_validated,
);
