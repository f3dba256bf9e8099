//! Campaigns over real gRPC, sending through a real SMTP server, with the contacts service in
//! the same process, on SQLite and PostgreSQL: checks when saved, a welcome series that waits for
//! a purchase and nudges those who do not buy, exit rules and conversion, per-step statistics,
//! and timers that survive a restart and fire once with two runners on one database.

use std::time::Duration;

use clm_contacts::ContactsService;
use clm_lifecycle::LifecycleService;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::smtp::SmtpSink;
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb, TestServer, violated_fields};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Lc = LifecycleServiceClient<InterceptedService<Channel, BearerInterceptor>>;
type Ct = ContactsServiceClient<InterceptedService<Channel, BearerInterceptor>>;

struct Env {
    server: Option<TestServer>,
    settings: clm_platform::Settings,
    _dbs: Vec<TestDb>,
}

impl Env {
    async fn start(backend: Backend, label: &str, smtp_url: &str) -> Option<Env> {
        let c = TestDb::create(backend, &format!("{label}c")).await?;
        let l = TestDb::create(backend, &format!("{label}l")).await?;
        let vars = vec![
            ("CLM_CONTACTS__DATABASE_URL", c.url.as_str()),
            ("CLM_LIFECYCLE__DATABASE_URL", l.url.as_str()),
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
            ("CLM_MESSAGING__SMTP_URL", smtp_url),
            ("CLM_MESSAGING__POLL_INTERVAL_MS", "50"),
            ("CLM_MESSAGING__PUBLIC_URL", "https://clm.example.com"),
            ("CLM_MESSAGING__LINK_SECRET", "a-link-secret-for-the-tests-0123456789"),
        ];
        let settings = testing::settings(&vars);
        let server = testing::spawn_pair::<ContactsService, LifecycleService>(settings.clone()).await;
        Some(Env { server: Some(server), settings, _dbs: vec![c, l] })
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("running")
    }

    async fn clients(&self, tenant: &str) -> (Ct, Lc) {
        let ch = self.server().authed(&testing::token(tenant, "clm.admin")).await;
        (ContactsServiceClient::new(ch.clone()), LifecycleServiceClient::new(ch))
    }

    /// Stop the process's services and start them again on the same databases.
    async fn restart(&mut self) {
        self.server.take().expect("running").stop().await.unwrap();
        self.server = Some(testing::spawn_pair::<ContactsService, LifecycleService>(self.settings.clone()).await);
    }
}

fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: s, nanos: 0 }
}

async fn contact(ct: &mut Ct, email: &str) -> String {
    ct.create_contact(cpb::CreateContactRequest {
        contact: Some(cpb::Contact {
            email: email.into(),
            given_name: "Ana".into(),
            consents: vec![cpb::Consent {
                channel: cpb::ConsentChannel::Email as i32,
                status: cpb::ConsentStatus::Granted as i32,
                purpose: cpb::ConsentPurpose::Marketing as i32,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .contact
    .unwrap()
    .id
}

async fn template(lc: &mut Lc, subject: &str) -> String {
    lc.create_message_template(pb::CreateMessageTemplateRequest {
        message_template: Some(pb::MessageTemplate {
            display_name: subject.into(),
            channel: pb::MessageChannel::Email as i32,
            purpose: pb::MessagePurpose::Marketing as i32,
            email: Some(pb::EmailContent {
                subject: subject.into(),
                text_body: format!("{subject}, {{{{ contact.first_name }}}}"),
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
    .id
}

fn step(key: &str, kind: pb::campaign_step::Kind, next: &str) -> pb::CampaignStep {
    pb::CampaignStep { key: key.into(), kind: Some(kind), next: next.into() }
}

fn on_entering(stage: &str) -> Option<pb::Trigger> {
    Some(pb::Trigger { kind: Some(pb::trigger::Kind::StageEntered(stage.into())) })
}

async fn create(lc: &mut Lc, c: pb::Campaign) -> Result<pb::Campaign, tonic::Status> {
    lc.create_campaign(pb::CreateCampaignRequest { campaign: Some(c), request_id: String::new() })
        .await
        .map(|r| r.into_inner().campaign.unwrap())
}

async fn enter(lc: &mut Lc, contact: &str, stage: &str) {
    lc.transition_stage(pb::TransitionStageRequest {
        contact_id: contact.into(),
        to_stage: stage.into(),
        reason: "test".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn enrolment(lc: &mut Lc, campaign: &str, contact: &str) -> Option<pb::Enrolment> {
    lc.list_enrolments(pb::ListEnrolmentsRequest {
        campaign_id: campaign.into(),
        contact_id: contact.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .enrolments
    .into_iter()
    .next()
}

async fn finished(lc: &mut Lc, campaign: &str, contact: &str) -> pb::Enrolment {
    testing::wait_for(&format!("{contact} to finish {campaign}"), async || {
        enrolment(lc, campaign, contact).await.filter(|e| e.state != pb::EnrolmentState::Active as i32)
    })
    .await
}

fn subjects(sink: &SmtpSink, to: &str) -> Vec<String> {
    let mut s: Vec<String> = sink
        .messages()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == to))
        .filter_map(|m| m.header("Subject"))
        .collect();
    s.sort();
    s
}

async fn campaigns_are_checked_when_saved(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "cmpcheck", &sink.url()).await else { return };
    let (_, mut lc) = env.clients("acme").await;
    let hello = template(&mut lc, "Hello").await;
    use pb::campaign_step::Kind;
    let base =
        pb::Campaign { display_name: "Welcome".into(), trigger: on_entering("acquisition"), ..Default::default() };
    let cases: Vec<(Vec<pb::CampaignStep>, &str)> = vec![
        (
            vec![step("a", Kind::SendMessage("0190b5a4-0000-7000-8000-000000000000".into()), "")],
            "campaign.steps[0].send_message",
        ),
        (vec![step("a", Kind::SendMessage(hello.clone()), "b")], "campaign.steps[0].next"),
        (
            vec![step("a", Kind::SendMessage(hello.clone()), ""), step("b", Kind::AddTag("x".into()), "")],
            "campaign.steps[1]",
        ),
        (vec![step("a", Kind::AddTag("x".into()), "b"), step("b", Kind::RemoveTag("x".into()), "a")], "campaign.steps"),
        (
            vec![step(
                "a",
                Kind::Branch(pb::BranchStep {
                    condition: Some(pb::CampaignCondition {
                        kind: Some(pb::campaign_condition::Kind::MessageSent("nope".into())),
                    }),
                    ..Default::default()
                }),
                "",
            )],
            "campaign.steps[0].branch.condition.message_sent",
        ),
        (vec![step("a", Kind::MoveToStage("nowhere".into()), "")], "campaign.steps[0].move_to_stage"),
        (
            vec![step("a", Kind::Wait(pb::WaitStep { duration: Some(secs(0)), ..Default::default() }), "")],
            "campaign.steps[0].wait.duration",
        ),
    ];
    for (steps, field) in cases {
        let err = create(&mut lc, pb::Campaign { steps, ..base.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            violated_fields(&err).contains(&field.to_string()),
            "{field}: {:?} {}",
            violated_fields(&err),
            err.message()
        );
    }
    // A loop with a wait in it is fine (a reminder every day until something changes).
    let ok = create(
        &mut lc,
        pb::Campaign {
            steps: vec![
                step("a", Kind::SendMessage(hello.clone()), "b"),
                step("b", Kind::Wait(pb::WaitStep { duration: Some(secs(86_400)), ..Default::default() }), "a"),
            ],
            ..base.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(ok.status, pb::CampaignStatus::Draft as i32);
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    (!paths.is_empty()).then(|| prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

/// The CRUD every resource shares, on templates, campaigns and automations: a create retried
/// with its request id returns the first result, the id reused for another request is refused;
/// an update mask names known paths only; a stale etag is ABORTED.
/// Retries of one create racing each other (a client that timed out and retried at once): each
/// gets the one template or ABORTED ("in progress; retry"), never INTERNAL, and one is made.
async fn concurrent_retries_of_a_create_make_one(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "cmprace", &sink.url()).await else { return };
    let (_, lc) = env.clients("acme").await;
    let rid = uuid::Uuid::new_v4().to_string();
    let req = pb::CreateMessageTemplateRequest {
        message_template: Some(pb::MessageTemplate {
            display_name: "Raced".into(),
            channel: pb::MessageChannel::Email as i32,
            purpose: pb::MessagePurpose::Marketing as i32,
            email: Some(pb::EmailContent { subject: "Hi".into(), text_body: "hi".into(), ..Default::default() }),
            ..Default::default()
        }),
        request_id: rid,
    };
    let calls = (0..8).map(|_| {
        let (mut lc, req) = (lc.clone(), req.clone());
        tokio::spawn(async move { lc.create_message_template(req).await })
    });
    let mut made = std::collections::HashSet::new();
    for call in futures::future::join_all(calls).await {
        match call.unwrap() {
            Ok(r) => {
                made.insert(r.into_inner().message_template.unwrap().id);
            }
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{e:?}"),
        }
    }
    assert_eq!(made.len(), 1, "one template: {made:?}");
    let mut lc = lc;
    let listed = lc.list_message_templates(pb::ListMessageTemplatesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.message_templates.len(), 1, "{listed:?}");
}

async fn creates_retry_and_writes_check_etags_and_masks(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "cmpcrud", &sink.url()).await else { return };
    let (_, mut lc) = env.clients("acme").await;
    let is_reuse = |err: tonic::Status| {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err), ["request_id"], "{err:?}");
        assert!(err.message().contains("different request"), "{err:?}");
    };
    let is_stale = |err: tonic::Status, what: &str| {
        assert_eq!(err.code(), Code::Aborted, "{err:?}");
        assert!(err.message().contains(&format!("the {what} changed")), "{err:?}");
    };
    let rid = uuid::Uuid::new_v4().to_string();

    // Templates: a retry gets the first template, without the generated secret again.
    let hook = |url: &str| pb::CreateMessageTemplateRequest {
        message_template: Some(pb::MessageTemplate {
            display_name: "Hook".into(),
            channel: pb::MessageChannel::Webhook as i32,
            purpose: pb::MessagePurpose::Transactional as i32,
            webhook: Some(pb::WebhookContent { url: url.into(), body: "{}".into(), ..Default::default() }),
            ..Default::default()
        }),
        request_id: rid.clone(),
    };
    let first = lc.create_message_template(hook("https://a.example.com/")).await.unwrap().into_inner();
    assert!(!first.signing_secret.is_empty(), "a generated secret, returned once");
    let again = lc.create_message_template(hook("https://a.example.com/")).await.unwrap().into_inner();
    assert_eq!(again.message_template, first.message_template, "the retry gets the first template");
    assert_eq!(again.signing_secret, "", "and not the secret again");
    is_reuse(lc.create_message_template(hook("https://b.example.com/")).await.unwrap_err());
    let all = lc.list_message_templates(pb::ListMessageTemplatesRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.message_templates.len(), 1);
    let t = first.message_template.unwrap();
    let renamed = pb::MessageTemplate { display_name: "Hook 2".into(), ..t.clone() };
    let update = |paths: &[&str]| pb::UpdateMessageTemplateRequest {
        message_template: Some(renamed.clone()),
        update_mask: mask(paths),
    };
    let err = lc.update_message_template(update(&["channel"])).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["update_mask"], "{err:?}");
    assert!(err.message().contains("one of display_name, purpose, email, webhook"), "{err:?}");
    let t2 = lc.update_message_template(update(&[])).await.unwrap().into_inner().message_template.unwrap();
    assert_eq!(t2.display_name, "Hook 2");
    is_stale(lc.update_message_template(update(&[])).await.unwrap_err(), "message template");
    let stale = pb::DeleteMessageTemplateRequest { id: t.id.clone(), etag: t.etag.clone() };
    is_stale(lc.delete_message_template(stale).await.unwrap_err(), "message template");

    // Campaigns.
    let hello = template(&mut lc, "Hello").await;
    let campaign = |name: &str| pb::CreateCampaignRequest {
        campaign: Some(pb::Campaign {
            display_name: name.into(),
            trigger: on_entering("acquisition"),
            steps: vec![step("a", pb::campaign_step::Kind::SendMessage(hello.clone()), "")],
            ..Default::default()
        }),
        request_id: rid.clone(),
    };
    let c1 = lc.create_campaign(campaign("Once")).await.unwrap().into_inner().campaign.unwrap();
    let c2 = lc.create_campaign(campaign("Once")).await.unwrap().into_inner().campaign.unwrap();
    assert_eq!((c2.id.as_str(), c2.etag.as_str()), (c1.id.as_str(), c1.etag.as_str()));
    is_reuse(lc.create_campaign(campaign("Twice")).await.unwrap_err());
    let update = |paths: &[&str], c: &pb::Campaign| pb::UpdateCampaignRequest {
        campaign: Some(c.clone()),
        update_mask: mask(paths),
    };
    let err = lc.update_campaign(update(&["allow_reentry", "model_id"], &c1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["update_mask"], "{err:?}");
    assert!(err.message().contains("unknown path \"model_id\""), "{err:?}");
    // A named bool is set, and only what is named changes.
    let reenter = pb::Campaign { allow_reentry: true, display_name: String::new(), ..c1.clone() };
    let c3 = lc.update_campaign(update(&["allow_reentry"], &reenter)).await.unwrap().into_inner().campaign.unwrap();
    assert!(c3.allow_reentry && c3.display_name == "Once" && c3.etag != c1.etag, "{c3:?}");
    is_stale(lc.update_campaign(update(&["display_name"], &c1)).await.unwrap_err(), "campaign");
    let delete = |etag: &str| pb::DeleteCampaignRequest { id: c1.id.clone(), etag: etag.into() };
    is_stale(lc.delete_campaign(delete(&c1.etag)).await.unwrap_err(), "campaign");
    lc.delete_campaign(delete(&c3.etag)).await.unwrap();

    // Automations: with no mask a bool is left as it is.
    let tag = pb::Automation {
        display_name: "Tag".into(),
        enabled: true,
        trigger: on_entering("acquisition"),
        actions: vec![pb::Action { kind: Some(pb::action::Kind::AddTag("new".into())) }],
        ..Default::default()
    };
    let created =
        lc.create_automation(pb::CreateAutomationRequest { automation: Some(tag), request_id: String::new() });
    let a = created.await.unwrap().into_inner().automation.unwrap();
    let off = pb::Automation { enabled: false, ..a.clone() };
    let update =
        |paths: &[&str]| pb::UpdateAutomationRequest { automation: Some(off.clone()), update_mask: mask(paths) };
    let unmasked = lc.update_automation(update(&[])).await.unwrap().into_inner().automation.unwrap();
    assert!(unmasked.enabled, "a bool changes only when the mask names it");
    is_stale(lc.update_automation(update(&["enabled"])).await.unwrap_err(), "automation");
    let delete = |etag: &str| pb::DeleteAutomationRequest { id: a.id.clone(), etag: etag.into() };
    let err = lc.delete_automation(delete("7")).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["etag"], "{err:?}");
    lc.delete_automation(delete(&unmasked.etag)).await.unwrap();
}

async fn a_welcome_series_waits_for_a_purchase_and_nudges_the_rest(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(env) = Env::start(backend, "cmpwelcome", &sink.url()).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let welcome = template(&mut lc, "Welcome").await;
    let nudge = template(&mut lc, "Still thinking").await;
    use pb::campaign_step::Kind;
    let c = create(
        &mut lc,
        pb::Campaign {
            display_name: "Welcome series".into(),
            status: pb::CampaignStatus::Active as i32,
            trigger: on_entering("acquisition"),
            steps: vec![
                step("welcome", Kind::SendMessage(welcome), "wait"),
                step(
                    "wait",
                    Kind::Wait(pb::WaitStep {
                        duration: Some(secs(2)),
                        until_event: "purchase".into(),
                        timeout_next: "sent_welcome".into(),
                    }),
                    "",
                ),
                step(
                    "sent_welcome",
                    Kind::Branch(pb::BranchStep {
                        condition: Some(pb::CampaignCondition {
                            kind: Some(pb::campaign_condition::Kind::MessageSent("welcome".into())),
                        }),
                        then_next: "nudge".into(),
                        else_next: String::new(),
                    }),
                    "",
                ),
                step("nudge", Kind::SendMessage(nudge), ""),
            ],
            exit_rules: vec![pb::ExitRule {
                kind: Some(pb::exit_rule::Kind::EnteredStage("conversion".into())),
                converted: true,
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let buyer = contact(&mut ct, "buyer@example.com").await;
    let browser = contact(&mut ct, "browser@example.com").await;
    enter(&mut lc, &buyer, "acquisition").await;
    enter(&mut lc, &browser, "acquisition").await;
    testing::wait_for("both welcomes", async || (sink.messages().len() >= 2).then_some(())).await;
    // The buyer buys: the first-purchase rule moves them to conversion, the exit rule ends
    // their enrolment as converted.
    lc.record_journey_event(pb::RecordJourneyEventRequest {
        event: Some(pb::JourneyEvent {
            contact_id: buyer.clone(),
            detail: Some(pb::journey_event::Detail::Purchase(pb::Purchase {
                order_id: "o-1".into(),
                amount: Some(Money { currency_code: "EUR".into(), units: 40, nanos: 0 }),
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let b = finished(&mut lc, &c.id, &buyer).await;
    assert_eq!(b.state, pb::EnrolmentState::Exited as i32, "{b:?}");
    assert!(b.converted, "{b:?}");
    assert_eq!(b.exit_reason, "entered conversion");
    let w = finished(&mut lc, &c.id, &browser).await;
    assert_eq!(w.state, pb::EnrolmentState::Completed as i32, "{w:?}");
    testing::wait_for("the nudge", async || (sink.messages().len() >= 3).then_some(())).await;
    assert_eq!(subjects(&sink, "buyer@example.com"), vec!["Welcome"]);
    assert_eq!(subjects(&sink, "browser@example.com"), vec!["Still thinking", "Welcome"]);

    // Once only: entering acquisition again does not enrol again (no re-entry).
    enter(&mut lc, &browser, "awareness").await;
    enter(&mut lc, &browser, "acquisition").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = lc
        .list_enrolments(pb::ListEnrolmentsRequest { campaign_id: c.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .enrolments;
    assert_eq!(all.len(), 2);

    let stats = lc.get_campaign_stats(pb::GetCampaignStatsRequest { id: c.id.clone() }).await.unwrap().into_inner();
    let stats = stats.stats.unwrap();
    assert_eq!((stats.enrolled, stats.active, stats.completed, stats.exited, stats.converted), (2, 0, 1, 1, 1));
    let by_key = |k: &str| stats.steps.iter().find(|s| s.step_key == k).unwrap().clone();
    let s = by_key("welcome");
    assert_eq!((s.entered, s.completed, s.exited, s.waiting), (2, 2, 0, 0));
    let s = by_key("wait");
    assert_eq!((s.entered, s.completed, s.exited, s.converted), (2, 1, 1, 1));
    let s = by_key("nudge");
    assert_eq!((s.entered, s.completed), (1, 1));
    let sent = lc
        .list_deliveries(pb::ListDeliveriesRequest { campaign_id: c.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|d| d.source == "campaign" && d.campaign_id == c.id), "{sent:?}");
}

async fn timers_survive_a_restart_and_fire_once_with_two_runners(backend: Backend) {
    let sink = SmtpSink::start().await;
    let Some(mut env) = Env::start(backend, "cmptimer", &sink.url()).await else { return };
    let (mut ct, mut lc) = env.clients("acme").await;
    let later = template(&mut lc, "Later").await;
    use pb::campaign_step::Kind;
    let c = create(
        &mut lc,
        pb::Campaign {
            display_name: "Later".into(),
            status: pb::CampaignStatus::Active as i32,
            trigger: on_entering("acquisition"),
            steps: vec![
                step("wait", Kind::Wait(pb::WaitStep { duration: Some(secs(3)), ..Default::default() }), "send"),
                step("send", Kind::SendMessage(later), ""),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut people = Vec::new();
    for i in 0..4 {
        let id = contact(&mut ct, &format!("p{i}@example.com")).await;
        enter(&mut lc, &id, "acquisition").await;
        people.push(id);
    }
    for p in &people {
        testing::wait_for("the wait to start", async || {
            enrolment(&mut lc, &c.id, p).await.filter(|e| e.wake_time.is_some())
        })
        .await;
    }
    // The timers are rows: a restart keeps them.
    env.restart().await;
    // A second runner on the same database (another replica's lifecycle, asking contacts at
    // the first server).
    let mut replica_settings = env.settings.clone();
    replica_settings.lifecycle.contacts_url = env.server().url();
    let replica = testing::spawn::<LifecycleService>(replica_settings).await;
    let (_, mut lc) = env.clients("acme").await;
    for p in &people {
        let e = finished(&mut lc, &c.id, p).await;
        assert_eq!(e.state, pb::EnrolmentState::Completed as i32, "{e:?}");
    }
    testing::wait_for("four emails", async || (sink.messages().len() >= 4).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.messages().len(), 4, "each timer fired once");
    let sent = lc
        .list_deliveries(pb::ListDeliveriesRequest { campaign_id: c.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(sent.len(), 4);
    replica.stop().await.unwrap();
}

clm_testkit::backend_tests!(
    campaigns_are_checked_when_saved,
    creates_retry_and_writes_check_etags_and_masks,
    concurrent_retries_of_a_create_make_one,
    a_welcome_series_waits_for_a_purchase_and_nudges_the_rest,
    timers_survive_a_restart_and_fire_once_with_two_runners,
);
