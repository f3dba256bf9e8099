//! Lifecycle over real gRPC, with the contacts service in the same process (contacts' events
//! tell lifecycle which contacts exist), on SQLite and PostgreSQL.

use std::time::Duration;

use clm_contacts::ContactsService;
use clm_lifecycle::LifecycleService;
use clm_platform::convert::timestamp;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::events::v1 as ev;
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb, TestServer, violated_fields};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Lc = LifecycleServiceClient<InterceptedService<Channel, BearerInterceptor>>;
type Ct = ContactsServiceClient<InterceptedService<Channel, BearerInterceptor>>;

const DAY: i64 = 24 * 3600 * 1_000_000;

struct Env {
    server: TestServer,
    dbs: Vec<TestDb>,
    settings: clm_platform::Settings,
}

impl Env {
    async fn start(backend: Backend, label: &str) -> Option<Env> {
        Self::start_with(backend, label, &[]).await
    }

    /// `extra`: more `CLM_*` settings.
    async fn start_with(backend: Backend, label: &str, extra: &[(&str, &str)]) -> Option<Env> {
        let c = TestDb::create(backend, &format!("{label}c")).await?;
        let l = TestDb::create(backend, &format!("{label}l")).await?;
        let mut vars = vec![
            ("CLM_CONTACTS__DATABASE_URL", c.url.as_str()),
            ("CLM_LIFECYCLE__DATABASE_URL", l.url.as_str()),
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
        ];
        vars.extend_from_slice(extra);
        let settings = testing::settings(&vars);
        let server = testing::spawn_pair::<ContactsService, LifecycleService>(settings.clone()).await;
        Some(Env { server, dbs: vec![c, l], settings })
    }

    async fn clients(&self, tenant: &str) -> (Ct, Lc) {
        let ch = self.server.authed(&testing::token(tenant, "clm.admin")).await;
        (ContactsServiceClient::new(ch.clone()), LifecycleServiceClient::new(ch))
    }

    fn lifecycle_url(&self) -> &str {
        &self.dbs[1].url
    }

    /// Publish `payload` on the bus as `producer` would (a consumed event).
    async fn publish(&self, producer: &str, tenant: &str, about: &str, payload: ev::event_envelope::Payload) {
        testing::publish_event(&self.settings, producer, tenant, "test", about, payload).await;
    }

    /// The StageChanged events lifecycle wrote to its outbox, in order.
    async fn stage_changes(&self, contact: &str) -> Vec<ev::StageChanged> {
        self.outbox()
            .await
            .into_iter()
            .filter_map(|p| match p {
                ev::event_envelope::Payload::StageChanged(c) if c.contact_id == contact => Some(c),
                _ => None,
            })
            .collect()
    }

    /// The LifecycleModelChanged events lifecycle wrote to its outbox, in order.
    async fn model_changes(&self) -> Vec<ev::LifecycleModelChanged> {
        self.outbox()
            .await
            .into_iter()
            .filter_map(|p| match p {
                ev::event_envelope::Payload::LifecycleModelChanged(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Every payload lifecycle wrote to its outbox, in order.
    async fn outbox(&self) -> Vec<ev::event_envelope::Payload> {
        use sea_orm::ConnectionTrait;
        let db = clm_platform::db::connect(self.lifecycle_url(), &self.settings.database).await.unwrap();
        let rows = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT payload FROM outbox ORDER BY seq",
            ))
            .await
            .unwrap();
        db.close().await.ok();
        rows.iter()
            .filter_map(|r| {
                let bytes: Vec<u8> = r.try_get("", "payload").unwrap();
                prost::Message::decode(bytes.as_slice()).ok().and_then(|e: ev::EventEnvelope| e.payload)
            })
            .collect()
    }

    async fn done(self) {
        self.server.stop().await.unwrap();
        for db in self.dbs {
            db.cleanup().await;
        }
    }
}

async fn new_contact(c: &mut Ct, email: &str) -> String {
    c.create_contact(cpb::CreateContactRequest {
        contact: Some(cpb::Contact { email: email.into(), ..Default::default() }),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .contact
    .unwrap()
    .id
}

fn touch(contact: &str, kind: pb::TouchpointKind, at: Option<i64>) -> pb::JourneyEvent {
    pb::JourneyEvent {
        contact_id: contact.into(),
        occur_time: at.map(timestamp),
        detail: Some(pb::journey_event::Detail::Touchpoint(pb::Touchpoint {
            channel: pb::TouchpointChannel::Web as i32,
            kind: kind as i32,
            detail: String::new(),
        })),
        ..Default::default()
    }
}

/// A purchase of 99 EUR. Order ids are unique per tenant: `order` is made the contact's own.
fn purchase(contact: &str, order: &str, at: Option<i64>) -> pb::JourneyEvent {
    pb::JourneyEvent {
        contact_id: contact.into(),
        occur_time: at.map(timestamp),
        detail: Some(pb::journey_event::Detail::Purchase(pb::Purchase {
            order_id: format!("{order}/{contact}"),
            amount: Some(Money { currency_code: "EUR".into(), units: 99, nanos: 0 }),
            items: 1,
        })),
        ..Default::default()
    }
}

async fn record(l: &mut Lc, e: pb::JourneyEvent) -> pb::RecordJourneyEventResponse {
    l.record_journey_event(pb::RecordJourneyEventRequest {
        model_id: String::new(),
        event: Some(e),
        idempotency_key: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn journey(l: &mut Lc, contact: &str) -> pb::Journey {
    l.get_journey(pb::GetJourneyRequest { contact_id: contact.into(), model_id: String::new() })
        .await
        .unwrap()
        .into_inner()
        .journey
        .unwrap()
}

fn stages(j: &pb::Journey) -> Vec<String> {
    j.transitions.iter().map(|t| t.to_stage.clone()).collect()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

async fn walk_the_whole_lifecycle(backend: Backend) {
    let Some(env) = Env::start(backend, "walk").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let id = new_contact(&mut c, "walker@example.com").await;
    let r = record(&mut l, touch(&id, pb::TouchpointKind::Visit, None)).await;
    assert_eq!(r.transitions.len(), 1);
    assert_eq!(r.transitions[0].to_stage, "awareness");
    assert_eq!(r.transitions[0].cause, pb::TransitionCause::Rule as i32);
    record(&mut l, touch(&id, pb::TouchpointKind::FormSubmitted, None)).await;
    let r = record(&mut l, purchase(&id, "o-1", None)).await;
    assert_eq!(r.transitions[0].to_stage, "conversion", "first purchase → conversion");
    record(&mut l, purchase(&id, "o-2", None)).await;
    let r = record(
        &mut l,
        pb::JourneyEvent {
            contact_id: id.clone(),
            detail: Some(pb::journey_event::Detail::Referral(pb::Referral {
                referred_contact_id: String::new(),
                note: "told a friend".into(),
            })),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.transitions[0].to_stage, "loyalty");
    let j = journey(&mut l, &id).await;
    assert_eq!(stages(&j), vec!["awareness", "acquisition", "conversion", "retention", "loyalty"]);
    assert_eq!(j.current_stage, "loyalty");
    assert!(j.transitions[1].time_in_previous_stage.is_some());

    let in_stage = l
        .list_contacts_in_stage(pb::ListContactsInStageRequest {
            model_id: String::new(),
            stage_key: "loyalty".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(in_stage.total_size, 1);
    assert_eq!(in_stage.contacts[0].contact_id, id);
    let purchases = l
        .list_journey_events(pb::ListJourneyEventsRequest {
            contact_id: id.clone(),
            filter: r#"kind = "purchase""#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purchases.events.len(), 2);

    // By hand: back to acquisition, with a reason; without one it is refused.
    let err = l
        .transition_stage(pb::TransitionStageRequest {
            contact_id: id.clone(),
            to_stage: "acquisition".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let j = l
        .transition_stage(pb::TransitionStageRequest {
            contact_id: id.clone(),
            to_stage: "acquisition".into(),
            reason: "contract paused".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .journey
        .unwrap();
    assert_eq!(j.current_stage, "acquisition");
    let last = j.transitions.last().unwrap();
    assert_eq!(
        (last.cause, last.reason.as_str(), last.actor.as_str()),
        (pb::TransitionCause::Manual as i32, "contract paused", "test-acme")
    );
    let err = l
        .transition_stage(pb::TransitionStageRequest {
            contact_id: id.clone(),
            to_stage: "nowhere".into(),
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    env.done().await;
}

async fn backdated_events_rewrite_history_and_keys_dedupe(backend: Backend) {
    let Some(env) = Env::start(backend, "back").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let id = new_contact(&mut c, "late@example.com").await;
    record(&mut l, purchase(&id, "o-1", Some(now() - 10 * DAY))).await;
    // Arrives later, happened earlier: history is rebuilt in time order.
    record(&mut l, touch(&id, pb::TouchpointKind::LeadCaptured, Some(now() - 20 * DAY))).await;
    let j = journey(&mut l, &id).await;
    assert_eq!(stages(&j), vec!["acquisition", "conversion"]);
    // The same idempotency key twice records once.
    for _ in 0..2 {
        l.record_journey_event(pb::RecordJourneyEventRequest {
            model_id: String::new(),
            event: Some(purchase(&id, "o-2", None)),
            idempotency_key: "order-o-2".into(),
        })
        .await
        .unwrap();
    }
    let all = l
        .list_journey_events(pb::ListJourneyEventsRequest { contact_id: id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.events.len(), 3);
    assert_eq!(stages(&journey(&mut l, &id).await), vec!["acquisition", "conversion", "retention"]);
    // Bad input.
    let err = l
        .record_journey_event(pb::RecordJourneyEventRequest {
            model_id: String::new(),
            event: Some(pb::JourneyEvent { contact_id: id.clone(), ..Default::default() }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(clm_platform::error::field_violations(&err)[0].field, "event.detail");
    let err = l
        .record_journey_event(pb::RecordJourneyEventRequest {
            event: Some(purchase(&id, "o-3", Some(now() + 2 * DAY))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(clm_platform::error::field_violations(&err)[0].field, "event.occur_time");
    let unknown = uuid::Uuid::new_v4().to_string();
    let err = l
        .record_journey_event(pb::RecordJourneyEventRequest {
            event: Some(purchase(&unknown, "o", None)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Import: historical events for two contacts, one bad row, one duplicate.
    let other = new_contact(&mut c, "imported@example.com").await;
    let mut dup = purchase(&other, "h-1", Some(now() - 50 * DAY));
    dup.metadata.insert("idempotency_key".into(), "hist-1".into());
    let msgs = vec![pb::ImportJourneyEventsRequest {
        model_id: String::new(),
        events: vec![
            dup.clone(),
            touch(&other, pb::TouchpointKind::Visit, Some(now() - 60 * DAY)),
            pb::JourneyEvent { contact_id: "nope".into(), ..Default::default() },
            dup,
        ],
    }];
    let summary = l.import_journey_events(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    assert_eq!((summary.received, summary.recorded, summary.duplicates, summary.errors.len()), (4, 2, 1, 1));
    assert_eq!(summary.errors[0].index, 2);
    assert_eq!(stages(&journey(&mut l, &other).await), vec!["awareness", "conversion"]);
    env.done().await;
}

async fn models_are_validated_and_protected(backend: Backend) {
    let Some(env) = Env::start(backend, "models").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let default = l
        .get_lifecycle_model(pb::GetLifecycleModelRequest { id: "default".into() })
        .await
        .unwrap()
        .into_inner()
        .lifecycle_model
        .unwrap();
    assert_eq!(default.stages.len(), 7);
    assert!(default.is_default);
    let st = |k: &str, c: pb::StageCategory| pb::Stage {
        key: k.into(),
        display_name: k.into(),
        category: c as i32,
        ..Default::default()
    };
    let saas = l
        .create_lifecycle_model(pb::CreateLifecycleModelRequest {
            lifecycle_model: Some(pb::LifecycleModel {
                display_name: "SaaS".into(),
                stages: vec![
                    st("awareness", pb::StageCategory::Prospect),
                    st("acquisition", pb::StageCategory::Prospect),
                    st("onboarding", pb::StageCategory::Customer),
                    st("engagement", pb::StageCategory::Customer),
                    st("advocacy", pb::StageCategory::Customer),
                ],
                allowed_transitions: vec![
                    pb::AllowedTransition { from_stage: "*".into(), to_stage: "awareness".into() },
                    pb::AllowedTransition { from_stage: "awareness".into(), to_stage: "acquisition".into() },
                    pb::AllowedTransition { from_stage: "acquisition".into(), to_stage: "onboarding".into() },
                ],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .lifecycle_model
        .unwrap();
    let id = new_contact(&mut c, "saas@example.com").await;
    let move_to = |to: &str| pb::TransitionStageRequest {
        contact_id: id.clone(),
        model_id: saas.id.clone(),
        to_stage: to.into(),
        reason: "test".into(),
        ..Default::default()
    };
    l.transition_stage(move_to("awareness")).await.unwrap();
    let err = l.transition_stage(move_to("advocacy")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "the model's moves are enforced");
    l.transition_stage(move_to("acquisition")).await.unwrap();

    // Removing a stage someone is in is refused; deleting a model in use too.
    let mut fewer = saas.clone();
    fewer.stages.retain(|s| s.key != "acquisition");
    fewer.allowed_transitions.clear();
    let err = l
        .update_lifecycle_model(pb::UpdateLifecycleModelRequest {
            lifecycle_model: Some(fewer),
            update_mask: Some(prost_types::FieldMask { paths: vec!["stages".into(), "allowed_transitions".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = l
        .delete_lifecycle_model(pb::DeleteLifecycleModelRequest { id: saas.id.clone(), etag: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = l
        .delete_lifecycle_model(pb::DeleteLifecycleModelRequest { id: default.id.clone(), etag: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Renaming with a stale etag is ABORTED; with the current one it works.
    let renamed = l
        .update_lifecycle_model(pb::UpdateLifecycleModelRequest {
            lifecycle_model: Some(pb::LifecycleModel {
                id: saas.id.clone(),
                etag: saas.etag.clone(),
                display_name: "SaaS v2".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .lifecycle_model
        .unwrap();
    assert_eq!(renamed.display_name, "SaaS v2");
    // Whether dormancy is churn is the model's setting (metrics reads it from StageChanged).
    assert!(!renamed.churn_excludes_dormancy, "dormancy counts as churn by default");
    let set = l
        .update_lifecycle_model(pb::UpdateLifecycleModelRequest {
            lifecycle_model: Some(pb::LifecycleModel {
                id: saas.id.clone(),
                churn_excludes_dormancy: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["churn_excludes_dormancy".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .lifecycle_model
        .unwrap();
    assert!(set.churn_excludes_dormancy && set.display_name == "SaaS v2");
    let got = l
        .get_lifecycle_model(pb::GetLifecycleModelRequest { id: saas.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .lifecycle_model
        .unwrap();
    assert!(got.churn_excludes_dormancy);
    // Each create and update publishes the model's settings with its revision (the etag's
    // version), so metrics learns a change before the model's next StageChanged.
    let revision = |etag: &str| clm_platform::convert::etag_version("etag", etag).unwrap().unwrap();
    let changes = env.model_changes().await;
    let of_saas: Vec<(i64, bool)> =
        changes.iter().filter(|m| m.model_id == saas.id).map(|m| (m.revision, m.churn_excludes_dormancy)).collect();
    assert_eq!(
        of_saas,
        [(revision(&saas.etag), false), (revision(&renamed.etag), false), (revision(&set.etag), true)],
        "created, renamed, the setting changed"
    );
    assert!(changes.iter().all(|m| m.update_time.is_some()));
    l.transition_stage(move_to("onboarding")).await.unwrap();
    let published = env.stage_changes(&id).await;
    let last = published.last().expect("a StageChanged");
    assert!(last.to_stage == "onboarding" && last.churn_excludes_dormancy, "{last:?}");
    assert_eq!(last.model_revision, revision(&set.etag), "the setting's revision travels with it");
    assert!(!published[0].churn_excludes_dormancy, "published before the setting changed");
    assert!(published[0].model_revision < last.model_revision);
    let err = l
        .update_lifecycle_model(pb::UpdateLifecycleModelRequest {
            lifecycle_model: Some(pb::LifecycleModel {
                id: saas.id.clone(),
                etag: saas.etag.clone(),
                display_name: "x".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    // Invalid models name the field.
    let err = l
        .create_lifecycle_model(pb::CreateLifecycleModelRequest {
            lifecycle_model: Some(pb::LifecycleModel {
                display_name: "bad".into(),
                stages: vec![st("Bad Key", pb::StageCategory::Prospect), st("b", pb::StageCategory::Unspecified)],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = clm_platform::error::field_violations(&err).into_iter().map(|v| v.field).collect();
    assert!(fields.contains(&"lifecycle_model.stages[0].key".to_string()), "{fields:?}");
    assert!(fields.contains(&"lifecycle_model.stages[1].category".to_string()), "{fields:?}");
    let list = l.list_lifecycle_models(pb::ListLifecycleModelsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.lifecycle_models.len(), 2);
    env.done().await;
}

async fn automations_run_are_logged_and_loops_are_bounded(backend: Backend) {
    let Some(env) = Env::start(backend, "auto").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let auto = |name: &str, trigger: pb::trigger::Kind, actions: Vec<pb::action::Kind>| pb::CreateAutomationRequest {
        automation: Some(pb::Automation {
            display_name: name.into(),
            enabled: true,
            trigger: Some(pb::Trigger { kind: Some(trigger) }),
            actions: actions.into_iter().map(|k| pb::Action { kind: Some(k) }).collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    // Converted customers get tagged (through contacts) …
    l.create_automation(auto(
        "tag customers",
        pb::trigger::Kind::StageEntered("conversion".into()),
        vec![pb::action::Kind::AddTag("customer".into())],
    ))
    .await
    .unwrap();
    // … and two automations that would bounce a contact forever.
    let ping = l
        .create_automation(auto(
            "ping",
            pb::trigger::Kind::StageEntered("retention".into()),
            vec![pb::action::Kind::MoveToStage("loyalty".into())],
        ))
        .await
        .unwrap()
        .into_inner()
        .automation
        .unwrap();
    l.create_automation(auto(
        "pong",
        pb::trigger::Kind::StageEntered("loyalty".into()),
        vec![pb::action::Kind::MoveToStage("retention".into())],
    ))
    .await
    .unwrap();
    let id = new_contact(&mut c, "auto@example.com").await;
    record(&mut l, purchase(&id, "o-1", None)).await;
    // The tag arrives in contacts through the bus.
    let mut tagged = false;
    for _ in 0..100 {
        let ct = c.get_contact(cpb::GetContactRequest { id: id.clone() }).await.unwrap().into_inner().contact.unwrap();
        if ct.tags.contains(&"customer".to_string()) {
            tagged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tagged, "the automation's tag reached the contact");

    // The loop: a repeat purchase moves to retention, then ping/pong bounce until the bound.
    record(&mut l, purchase(&id, "o-2", None)).await;
    let runs = l
        .list_automation_runs(pb::ListAutomationRunsRequest {
            contact_id: id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(runs.iter().any(|r| r.outcome == pb::RunOutcome::LoopLimited as i32), "{runs:?}");
    assert!(runs.iter().any(|r| r.automation_id == ping.id && r.outcome == pb::RunOutcome::Succeeded as i32));
    // Disabled automations do not run.
    let upd = l
        .update_automation(pb::UpdateAutomationRequest {
            automation: Some(pb::Automation {
                id: ping.id.clone(),
                etag: ping.etag.clone(),
                enabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .automation
        .unwrap();
    assert!(!upd.enabled);
    let err = l
        .create_automation(auto("bad", pb::trigger::Kind::StageEntered("Not A Key".into()), vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    env.done().await;
}

async fn tenants_are_isolated(backend: Backend) {
    let Some(env) = Env::start(backend, "tenants").await else { return };
    let (mut ca, mut la) = env.clients("tenant-a").await;
    let (_, mut lb) = env.clients("tenant-b").await;
    let id = new_contact(&mut ca, "a@example.com").await;
    record(&mut la, purchase(&id, "o-1", None)).await;
    let err =
        lb.get_journey(pb::GetJourneyRequest { contact_id: id.clone(), model_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = lb
        .record_journey_event(pb::RecordJourneyEventRequest {
            event: Some(purchase(&id, "o-2", None)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = lb
        .transition_stage(pb::TransitionStageRequest {
            contact_id: id.clone(),
            to_stage: "loyalty".into(),
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let a_model = la
        .get_lifecycle_model(pb::GetLifecycleModelRequest { id: "default".into() })
        .await
        .unwrap()
        .into_inner()
        .lifecycle_model
        .unwrap();
    let err = lb.get_lifecycle_model(pb::GetLifecycleModelRequest { id: a_model.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let in_stage = lb
        .list_contacts_in_stage(pb::ListContactsInStageRequest { stage_key: "conversion".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(in_stage.total_size, 0);
    let events = lb
        .list_journey_events(pb::ListJourneyEventsRequest { contact_id: id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(events.events.is_empty());
    let runs = lb.list_automation_runs(pb::ListAutomationRunsRequest::default()).await.unwrap().into_inner();
    assert!(runs.runs.is_empty());
    env.done().await;
}

async fn erasure_upstream_erases_the_journey_and_dormancy_runs_on_the_clock(backend: Backend) {
    let Some(env) = Env::start(backend, "erase").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let gone = new_contact(&mut c, "gone@example.com").await;
    let stays = new_contact(&mut c, "stays@example.com").await;
    record(&mut l, purchase(&gone, "o-1", None)).await;
    record(&mut l, purchase(&stays, "o-1", Some(now() - 80 * DAY))).await;
    record(&mut l, purchase(&stays, "o-2", Some(now() - 79 * DAY))).await;
    let sleeper = new_contact(&mut c, "sleeper@example.com").await;
    record(&mut l, purchase(&sleeper, "o-1", Some(now() - 200 * DAY))).await;
    record(&mut l, purchase(&sleeper, "o-2", Some(now() - 199 * DAY))).await;
    assert_eq!(journey(&mut l, &sleeper).await.current_stage, "dormant", "inactive past the threshold when recorded");
    assert_eq!(journey(&mut l, &stays).await.current_stage, "retention");

    // Watch stage changes while the scheduler runs with a clock 100 days ahead.
    let mut watch = l
        .watch_stage_changes(pb::WatchStageChangesRequest { model_id: String::new(), to_stages: vec![] })
        .await
        .unwrap()
        .into_inner();

    c.erase_contact(cpb::EraseContactRequest { id: gone.clone(), reason: "gdpr".into() }).await.unwrap();
    let mut erased = false;
    for _ in 0..100 {
        if l.get_journey(pb::GetJourneyRequest { contact_id: gone.clone(), model_id: String::new() }).await.is_err() {
            erased = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(erased, "the journey of an erased contact is erased");

    let db = clm_platform::db::connect(env.lifecycle_url(), &testing::settings(&[]).database).await.unwrap();
    let automator = clm_lifecycle::contacts_client::Automator {
        publisher: clm_lifecycle::publish::Publisher::new(clm_platform::events::outbox::OutboxWriter::new("lifecycle")),
        contacts: clm_lifecycle::contacts_client::ContactsProbe::new(
            "lifecycle",
            env.server.url(),
            std::sync::Arc::default(),
            &env.settings,
        ),
    };
    // The scheduler, with a clock 20 days ahead: `stays` crosses the 90-day threshold.
    let changed = clm_lifecycle::events::scheduler::tick(&db, &automator, now() + 20 * DAY).await.unwrap();
    assert_eq!(changed, 1);
    assert_eq!(
        clm_lifecycle::events::scheduler::tick(&db, &automator, now() + 20 * DAY).await.unwrap(),
        0,
        "nothing is due twice"
    );
    let j = journey(&mut l, &stays).await;
    assert_eq!(j.current_stage, "dormant");
    let dormant = j.transitions.last().unwrap();
    assert_eq!(dormant.cause_ref, "dormancy");
    // The journey event rows of the erased contact are gone too.
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM journey_events WHERE contact_id = '{gone}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0);
    db.close().await.ok();
    // A new event brings a dormant contact back (reactivation, into the stage it left);
    // watchers see it, after the change the dormancy sweep made (not a request's: it reaches
    // watchers all the same).
    let r = record(&mut l, touch(&sleeper, pb::TouchpointKind::Visit, None)).await;
    assert!(r.transitions.iter().any(|t| t.reactivation && t.to_stage == "retention"), "{r:?}");
    // (Changes committed before the watch began may still be on their way to the bus: skipped.)
    let mut sweep_seen = false;
    loop {
        let seen = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        let t = seen.transition.unwrap();
        if seen.contact_id == stays && t.to_stage == "dormant" {
            sweep_seen = true;
        }
        if seen.contact_id == sleeper && t.reactivation {
            break;
        }
    }
    assert!(sweep_seen, "the sweep's change is streamed, before the later reactivation");
    assert_eq!(journey(&mut l, &sleeper).await.reactivation_count, 1);
    env.done().await;
}

/// Conditions on a contact filter and a segment are answered by the contacts service.
async fn conditions_on_filters_and_segments(backend: Backend) {
    let Some(env) = Env::start(backend, "cond").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let seg = c
        .create_segment(cpb::CreateSegmentRequest {
            segment: Some(cpb::Segment {
                display_name: "VIP".into(),
                filter: r#"tags:"vip""#.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let with = |name: &str, cond: pb::condition::Kind| pb::CreateAutomationRequest {
        automation: Some(pb::Automation {
            display_name: name.into(),
            enabled: true,
            trigger: Some(pb::Trigger { kind: Some(pb::trigger::Kind::StageEntered("conversion".into())) }),
            conditions: vec![pb::Condition { kind: Some(cond) }],
            actions: vec![pb::Action {
                kind: Some(pb::action::Kind::PublishWebhook(pb::WebhookAction {
                    topic: format!("test.{name}"),
                    payload: std::collections::HashMap::default(),
                })),
            }],
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let by_segment = l
        .create_automation(with("segment", pb::condition::Kind::SegmentId(seg.id.clone())))
        .await
        .unwrap()
        .into_inner()
        .automation
        .unwrap();
    let by_filter = l
        .create_automation(with("filter", pb::condition::Kind::ContactFilter(r#"email:"vip""#.into())))
        .await
        .unwrap()
        .into_inner()
        .automation
        .unwrap();
    let vip = c
        .create_contact(cpb::CreateContactRequest {
            contact: Some(cpb::Contact {
                email: "vip@example.com".into(),
                tags: vec!["vip".into()],
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
    let plain = new_contact(&mut c, "plain@example.com").await;
    for id in [&vip, &plain] {
        record(&mut l, purchase(id, "o-1", None)).await;
    }
    let outcome = |runs: &[pb::AutomationRun], auto: &str, contact: &str| {
        runs.iter().find(|r| r.automation_id == auto && r.contact_id == contact).map(|r| r.outcome)
    };
    let runs = l
        .list_automation_runs(pb::ListAutomationRunsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(outcome(&runs, &by_segment.id, &vip), Some(pb::RunOutcome::Succeeded as i32), "{runs:?}");
    assert_eq!(outcome(&runs, &by_filter.id, &vip), Some(pb::RunOutcome::Succeeded as i32), "{runs:?}");
    assert_eq!(outcome(&runs, &by_segment.id, &plain), Some(pb::RunOutcome::Skipped as i32), "{runs:?}");
    assert_eq!(outcome(&runs, &by_filter.id, &plain), Some(pb::RunOutcome::Skipped as i32), "{runs:?}");
    let err = l.create_automation(with("bad", pb::condition::Kind::ContactFilter("tags = ".into()))).await.unwrap_err();
    assert_eq!(clm_platform::error::field_violations(&err)[0].field, "automation.conditions[0].contact_filter");
    env.done().await;
}

/// Survey responses (as feedback publishes them) move promoters to loyalty and flag detractors.
async fn survey_responses_drive_the_journey(backend: Backend) {
    use clm_proto::events::v1 as ev;
    let Some(env) = Env::start(backend, "nps").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let promoter = new_contact(&mut c, "fan@example.com").await;
    let detractor = new_contact(&mut c, "grumpy@example.com").await;
    for id in [&promoter, &detractor] {
        record(&mut l, purchase(id, "o-1", None)).await;
    }
    for (id, score) in [(&promoter, 10), (&detractor, 2)] {
        let response = ev::event_envelope::Payload::ResponseSubmitted(ev::ResponseSubmitted {
            response_id: uuid::Uuid::new_v4().to_string(),
            survey_id: uuid::Uuid::new_v4().to_string(),
            contact_id: (*id).clone(),
            kind: ev::SurveyKind::Nps as i32,
            score,
            has_score: true,
            complete: true,
            submit_time: Some(timestamp(now())),
            stage_key: String::new(),
        });
        testing::publish_event(&env.settings, "feedback", "acme", "response", id, response).await;
    }
    let mut ok = (false, false);
    for _ in 0..100 {
        let j = journey(&mut l, &promoter).await;
        let tags = c
            .get_contact(cpb::GetContactRequest { id: detractor.clone() })
            .await
            .unwrap()
            .into_inner()
            .contact
            .unwrap()
            .tags;
        ok = (j.current_stage == "loyalty", tags.contains(&"at_risk".to_string()));
        if ok == (true, true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok, (true, true), "promoter → loyalty, detractor tagged at_risk");
    assert_eq!(journey(&mut l, &detractor).await.current_stage, "conversion");
    env.done().await;
}

/// An inactivity automation fires once per idle period, from the scheduler.
async fn inactivity_automations_fire_once(backend: Backend) {
    let Some(env) = Env::start(backend, "idle").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let auto = l
        .create_automation(pb::CreateAutomationRequest {
            automation: Some(pb::Automation {
                display_name: "win back".into(),
                enabled: true,
                trigger: Some(pb::Trigger {
                    kind: Some(pb::trigger::Kind::Inactivity(clm_platform::convert::duration(30 * DAY))),
                }),
                actions: vec![pb::Action { kind: Some(pb::action::Kind::AddTag("lapsed".into())) }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .automation
        .unwrap();
    let idle = new_contact(&mut c, "idle@example.com").await;
    let active = new_contact(&mut c, "active@example.com").await;
    record(&mut l, purchase(&idle, "o-1", Some(now() - 40 * DAY))).await;
    record(&mut l, purchase(&active, "o-1", None)).await;
    let db = clm_platform::db::connect(env.lifecycle_url(), &env.settings.database).await.unwrap();
    let automator = clm_lifecycle::contacts_client::Automator {
        publisher: clm_lifecycle::publish::Publisher::new(clm_platform::events::outbox::OutboxWriter::new("lifecycle")),
        contacts: clm_lifecycle::contacts_client::ContactsProbe::new(
            "lifecycle",
            env.server.url(),
            std::sync::Arc::default(),
            &env.settings,
        ),
    };
    for _ in 0..3 {
        clm_lifecycle::events::scheduler::tick(&db, &automator, now()).await.unwrap();
    }
    db.close().await.ok();
    let runs = l
        .list_automation_runs(pb::ListAutomationRunsRequest {
            automation_id: auto.id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1, "once per idle period: {runs:?}");
    assert_eq!((runs[0].contact_id.as_str(), runs[0].outcome), (idle.as_str(), pb::RunOutcome::Succeeded as i32));
    env.done().await;
}

/// What the scheduler needs when a test runs its rounds by hand (`events::scheduler::tick`).
fn automator(env: &Env) -> clm_lifecycle::contacts_client::Automator {
    clm_lifecycle::contacts_client::Automator {
        publisher: clm_lifecycle::publish::Publisher::new(clm_platform::events::outbox::OutboxWriter::new("lifecycle")),
        contacts: clm_lifecycle::contacts_client::ContactsProbe::new(
            "lifecycle",
            env.server.url(),
            std::sync::Arc::default(),
            &env.settings,
        ),
    }
}

async fn move_to(l: &mut Lc, contact: &str, stage: &str) -> Result<pb::Journey, tonic::Status> {
    Ok(l.transition_stage(pb::TransitionStageRequest {
        contact_id: contact.into(),
        to_stage: stage.into(),
        reason: "by hand".into(),
        ..Default::default()
    })
    .await?
    .into_inner()
    .journey
    .unwrap())
}

/// Win-back (#21): a dormant customer moved back by hand into a customer stage comes back
/// (a reactivation), and the dormancy clock restarts at the move: the contact is not dormant
/// again at once, and when it is, that is a transition of its own.
async fn a_dormant_customer_is_won_back_by_hand(backend: Backend) {
    let Some(env) = Env::start(backend, "winback").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let id = new_contact(&mut c, "back@example.com").await;
    record(&mut l, purchase(&id, "o-1", Some(now() - 200 * DAY))).await;
    assert_eq!(journey(&mut l, &id).await.current_stage, "dormant", "no activity for 200 days");
    let j = move_to(&mut l, &id, "retention").await.expect("a win-back is a valid move");
    assert_eq!(stages(&j), vec!["conversion", "dormant", "retention"]);
    assert_eq!(j.current_stage, "retention");
    let back = j.transitions.last().unwrap();
    assert_eq!(back.from_stage, "dormant");
    assert_eq!(back.cause, pb::TransitionCause::Manual as i32);
    assert!(back.reactivation, "out of a lost stage: a reactivation");
    assert_eq!(j.reactivation_count, 1);
    assert_eq!(journey(&mut l, &id).await, j, "what the move answered is what is stored");

    // The sweep: nothing due the next day; 91 days after the move, dormant again.
    let db = clm_platform::db::connect(env.lifecycle_url(), &env.settings.database).await.unwrap();
    let automator = automator(&env);
    assert_eq!(clm_lifecycle::events::scheduler::tick(&db, &automator, now() + DAY).await.unwrap(), 0);
    assert_eq!(journey(&mut l, &id).await.current_stage, "retention");
    assert_eq!(clm_lifecycle::events::scheduler::tick(&db, &automator, now() + 91 * DAY).await.unwrap(), 1);
    db.close().await.ok();
    let j = journey(&mut l, &id).await;
    assert_eq!(stages(&j), vec!["conversion", "dormant", "retention", "dormant"]);
    let ids: std::collections::HashSet<&str> = j.transitions.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "every transition has its own id");
    env.done().await;
}

/// What a transition is, without the ids that differ between contacts.
fn shape(t: &pb::StageTransition) -> (String, String, Option<prost_types::Timestamp>, i32, bool) {
    (t.from_stage.clone(), t.to_stage.clone(), t.transition_time, t.cause, t.reactivation)
}

/// Backdated events (#21 point 3): the history is the one the same events give in time order,
/// and the StageChanged events published — retractions of what changed, then the new
/// versions — leave consumers exactly that history.
async fn backdated_events_republish_what_changed(backend: Backend) {
    let Some(env) = Env::start(backend, "redo").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let base = now() - 30 * DAY;
    let day = |n: i64| Some(base + n * DAY);
    let late = new_contact(&mut c, "late@example.com").await;
    let in_order = new_contact(&mut c, "in-order@example.com").await;
    // Arrival order: the purchase of day 10, a lead captured on day 3, a visit on day 1.
    record(&mut l, purchase(&late, "o-1", day(10))).await;
    record(&mut l, touch(&late, pb::TouchpointKind::LeadCaptured, day(3))).await;
    record(&mut l, touch(&late, pb::TouchpointKind::Visit, day(1))).await;
    for e in [
        touch(&in_order, pb::TouchpointKind::Visit, day(1)),
        touch(&in_order, pb::TouchpointKind::LeadCaptured, day(3)),
        purchase(&in_order, "o-1", day(10)),
    ] {
        record(&mut l, e).await;
    }
    let j = journey(&mut l, &late).await;
    let expected = journey(&mut l, &in_order).await;
    assert_eq!(stages(&j), vec!["awareness", "acquisition", "conversion"]);
    assert_eq!(
        j.transitions.iter().map(shape).collect::<Vec<_>>(),
        expected.transitions.iter().map(shape).collect::<Vec<_>>()
    );
    assert_eq!(j.transitions[2].from_stage, "acquisition", "the purchase now converts an acquired lead");

    // A consumer that keeps transitions by id and undoes retracted ones (metrics), and one
    // that keeps the current stage and unwinds a retraction to the stage left (feedback).
    let changes = env.stage_changes(&late).await;
    assert!(changes.iter().any(|c| c.retracted), "the changed conversion was retracted: {changes:#?}");
    let mut kept = std::collections::BTreeMap::new();
    let mut current: Option<(String, Option<prost_types::Timestamp>)> = None;
    for ch in &changes {
        let what = (ch.from_stage.clone(), ch.to_stage.clone(), ch.transition_time, ch.reactivation);
        if ch.retracted {
            assert_eq!(kept.remove(&ch.transition_id), Some(what), "a retraction repeats what was published");
            if current.as_ref() == Some(&(ch.to_stage.clone(), ch.transition_time)) {
                current = (!ch.from_stage.is_empty()).then(|| (ch.from_stage.clone(), ch.from_stage_enter_time));
            }
        } else {
            assert!(kept.insert(ch.transition_id.clone(), what).is_none(), "published twice without a retraction");
            if current.as_ref().is_none_or(|(_, at)| at.map(|t| t.seconds) <= ch.transition_time.map(|t| t.seconds)) {
                current = Some((ch.to_stage.clone(), ch.transition_time));
            }
        }
    }
    let mut seen: Vec<_> = kept.into_iter().collect();
    seen.sort_by_key(|(_, (_, _, at, _))| at.map(|t| (t.seconds, t.nanos)));
    let stored: Vec<_> = j
        .transitions
        .iter()
        .map(|t| (t.id.clone(), (t.from_stage.clone(), t.to_stage.clone(), t.transition_time, t.reactivation)))
        .collect();
    assert_eq!(seen, stored, "what consumers keep is the journey");
    assert_eq!(current.map(|(s, _)| s), Some(j.current_stage.clone()));
    env.done().await;
}

/// A survey response (#21 point 4) is activity like any journey event: it keeps a contact
/// from going dormant, brings a dormant one back, with or without a score.
async fn survey_responses_are_activity(backend: Backend) {
    let Some(env) = Env::start(backend, "answer").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let sleeper = new_contact(&mut c, "sleeper@example.com").await;
    let busy = new_contact(&mut c, "busy@example.com").await;
    record(&mut l, purchase(&sleeper, "o-1", Some(now() - 200 * DAY))).await;
    record(&mut l, purchase(&busy, "o-1", Some(now() - 80 * DAY))).await;
    assert_eq!(journey(&mut l, &sleeper).await.current_stage, "dormant");
    let answered = now() - 10 * DAY;
    for (id, at, has_score) in [(&sleeper, now(), true), (&busy, answered, false)] {
        let response = ev::ResponseSubmitted {
            response_id: uuid::Uuid::new_v4().to_string(),
            survey_id: uuid::Uuid::new_v4().to_string(),
            contact_id: (*id).clone(),
            kind: ev::SurveyKind::Csat as i32,
            score: if has_score { 4 } else { 0 },
            has_score,
            complete: true,
            submit_time: Some(timestamp(at)),
            stage_key: String::new(),
        };
        env.publish("feedback", "acme", id, ev::event_envelope::Payload::ResponseSubmitted(response)).await;
    }
    let j = testing::wait_for("the dormant contact answers", async || {
        let j = journey(&mut l, &sleeper).await;
        (j.current_stage != "dormant").then_some(j)
    })
    .await;
    assert_eq!(stages(&j), vec!["conversion", "dormant", "conversion"]);
    let back = j.transitions.last().unwrap();
    assert!(back.reactivation);
    assert_eq!(back.cause, pb::TransitionCause::Rule as i32);
    assert_eq!(j.reactivation_count, 1);
    let j = testing::wait_for("the answer without a score is activity", async || {
        let j = journey(&mut l, &busy).await;
        (j.last_activity_time == Some(timestamp(answered))).then_some(j)
    })
    .await;
    assert_eq!(j.current_stage, "conversion");
    // 20 days on, the purchase is 100 days old but the answer 30: not dormant; 81 days on, it is.
    let db = clm_platform::db::connect(env.lifecycle_url(), &env.settings.database).await.unwrap();
    let automator = automator(&env);
    clm_lifecycle::events::scheduler::tick(&db, &automator, now() + 20 * DAY).await.unwrap();
    assert_eq!(journey(&mut l, &busy).await.current_stage, "conversion");
    clm_lifecycle::events::scheduler::tick(&db, &automator, now() + 81 * DAY).await.unwrap();
    db.close().await.ok();
    let j = journey(&mut l, &busy).await;
    assert_eq!(j.current_stage, "dormant");
    assert_eq!(j.transitions.last().unwrap().transition_time, Some(timestamp(answered + 90 * DAY)));
    env.done().await;
}

fn webhook_on(
    name: &str,
    trigger: pb::trigger::Kind,
    conditions: Vec<pb::condition::Kind>,
) -> pb::CreateAutomationRequest {
    pb::CreateAutomationRequest {
        automation: Some(pb::Automation {
            display_name: name.into(),
            enabled: true,
            trigger: Some(pb::Trigger { kind: Some(trigger) }),
            conditions: conditions.into_iter().map(|k| pb::Condition { kind: Some(k) }).collect(),
            actions: vec![pb::Action {
                kind: Some(pb::action::Kind::PublishWebhook(pb::WebhookAction {
                    topic: format!("test.{name}"),
                    payload: std::collections::HashMap::default(),
                })),
            }],
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn create(l: &mut Lc, req: pb::CreateAutomationRequest) -> String {
    l.create_automation(req).await.unwrap().into_inner().automation.unwrap().id
}

async fn runs_of(l: &mut Lc, automation: &str) -> Vec<pb::AutomationRun> {
    l.list_automation_runs(pb::ListAutomationRunsRequest {
        automation_id: automation.into(),
        page_size: 100,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .runs
}

/// Every path that changes a journey runs the automations it fires (#21 point 1): a request
/// (the runs are there when it answers), an import, a consumed event, the sweep, and an
/// automation's own move (which goes through the same path and fires the next one).
async fn every_path_runs_automations(backend: Backend) {
    let Some(env) = Env::start(backend, "paths").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let converted =
        create(&mut l, webhook_on("converted", pb::trigger::Kind::StageEntered("conversion".into()), vec![])).await;
    let reviewed =
        create(&mut l, webhook_on("reviewed", pb::trigger::Kind::JourneyEvent("review".into()), vec![])).await;
    let churned =
        create(&mut l, webhook_on("churned", pb::trigger::Kind::StageEntered("churned".into()), vec![])).await;
    l.create_automation(pb::CreateAutomationRequest {
        automation: Some(pb::Automation {
            display_name: "dormant means churned".into(),
            enabled: true,
            trigger: Some(pb::Trigger { kind: Some(pb::trigger::Kind::StageEntered("dormant".into())) }),
            actions: vec![pb::Action { kind: Some(pb::action::Kind::MoveToStage("churned".into())) }],
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let [moved, imported, reviewer, sleeper] = [
        new_contact(&mut c, "moved@example.com").await,
        new_contact(&mut c, "imported@example.com").await,
        new_contact(&mut c, "reviewer@example.com").await,
        new_contact(&mut c, "sleeper@example.com").await,
    ];
    let ran = |runs: &[pb::AutomationRun], contact: &str| {
        runs.iter().any(|r| r.contact_id == contact && r.outcome == pb::RunOutcome::Succeeded as i32)
    };
    // A move by hand.
    move_to(&mut l, &moved, "conversion").await.unwrap();
    assert!(ran(&runs_of(&mut l, &converted).await, &moved), "TransitionStage");
    // An import: its journeys' new transitions fire, once the import is in.
    let summary = l
        .import_journey_events(tokio_stream::iter(vec![pb::ImportJourneyEventsRequest {
            model_id: String::new(),
            events: vec![purchase(&imported, "h-1", Some(now() - 5 * DAY))],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.journeys_rebuilt, 1);
    assert!(ran(&runs_of(&mut l, &converted).await, &imported), "ImportJourneyEvents");
    // A consumed review (feedback's event): its journey_event trigger fires, from the runner.
    let review = ev::ReviewRecorded {
        review_id: uuid::Uuid::new_v4().to_string(),
        contact_id: reviewer.clone(),
        rating: 5,
        platform: "g2".into(),
        create_time: Some(timestamp(now())),
    };
    env.publish("feedback", "acme", &reviewer, ev::event_envelope::Payload::ReviewRecorded(review)).await;
    testing::wait_for("the consumed review's automation", async || {
        ran(&runs_of(&mut l, &reviewed).await, &reviewer).then_some(())
    })
    .await;
    // The sweep, on the real clock (conversion made dormant after a second without activity):
    // dormant → (automation) churned → (automation on churned) the webhook.
    let mut model = l
        .get_lifecycle_model(pb::GetLifecycleModelRequest { id: "default".into() })
        .await
        .unwrap()
        .into_inner()
        .lifecycle_model
        .unwrap();
    for s in model.stages.iter_mut().filter(|s| s.key == "conversion") {
        s.dormancy_threshold = Some(clm_platform::convert::duration(1_000_000));
    }
    l.update_lifecycle_model(pb::UpdateLifecycleModelRequest {
        lifecycle_model: Some(model),
        update_mask: Some(prost_types::FieldMask { paths: vec!["stages".into()] }),
    })
    .await
    .unwrap();
    record(&mut l, purchase(&sleeper, "o-1", None)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let db = clm_platform::db::connect(env.lifecycle_url(), &env.settings.database).await.unwrap();
    assert_eq!(clm_lifecycle::events::scheduler::tick(&db, &automator(&env), now()).await.unwrap(), 1);
    db.close().await.ok();
    let j = journey(&mut l, &sleeper).await;
    assert_eq!(stages(&j), vec!["conversion", "dormant", "churned"]);
    assert_eq!(j.transitions[2].cause, pb::TransitionCause::Automation as i32);
    assert!(ran(&runs_of(&mut l, &churned).await, &sleeper), "the automation's move fired the next automation");
    env.done().await;
}

/// No call to the contacts service while a write transaction is open (#21 point 5): with
/// contacts answering slowly, another write to the same database goes through meanwhile, and
/// the conditions still work end to end (a missing segment: the run is FAILED, saying why).
async fn automations_ask_contacts_outside_the_transaction(backend: Backend) {
    const SLOW: Duration = Duration::from_secs(2);
    // Lifecycle reaches contacts through a proxy that holds each new connection for SLOW.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", proxy.local_addr().unwrap());
    let Some(env) = Env::start_with(backend, "slow", &[("CLM_LIFECYCLE__CONTACTS_URL", &url)]).await else { return };
    let target = env.server.addr;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = proxy.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(SLOW).await;
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let (mut c, mut l) = env.clients("acme").await;
    let conversion = || pb::trigger::Kind::StageEntered("conversion".into());
    let by_filter = create(
        &mut l,
        webhook_on("filter", conversion(), vec![pb::condition::Kind::ContactFilter(r#"email:"vip""#.into())]),
    )
    .await;
    let by_segment = create(
        &mut l,
        webhook_on("segment", conversion(), vec![pb::condition::Kind::SegmentId(uuid::Uuid::new_v4().to_string())]),
    )
    .await;
    let vip = new_contact(&mut c, "vip@example.com").await;
    let other = new_contact(&mut c, "other@example.com").await;
    let started = tokio::time::Instant::now();
    let mut l2 = l.clone();
    let slow = tokio::spawn(async move { record(&mut l2, purchase(&vip, "o-1", None)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = tokio::time::Instant::now();
    tokio::time::timeout(SLOW * 3, record(&mut l, touch(&other, pb::TouchpointKind::Visit, None)))
        .await
        .expect("a write while contacts is slow");
    assert!(t.elapsed() < SLOW / 2, "the other write waited {:?}: a transaction was open across the call", t.elapsed());
    let r = slow.await.unwrap();
    assert!(started.elapsed() >= SLOW, "the automations ran before the answer");
    let vip = r.event.unwrap().contact_id;
    let runs = runs_of(&mut l, &by_filter).await;
    assert_eq!(
        runs.iter().map(|r| (r.contact_id.as_str(), r.outcome)).collect::<Vec<_>>(),
        vec![(vip.as_str(), pb::RunOutcome::Succeeded as i32)]
    );
    let runs = runs_of(&mut l, &by_segment).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, pb::RunOutcome::Failed as i32);
    assert!(
        runs[0].message.starts_with("condition not evaluated") && runs[0].message.contains("does not exist"),
        "{:?}",
        runs[0].message
    );
    env.done().await;
}

async fn bad_times_and_amounts_are_refused_by_field(backend: Backend) {
    let Some(env) = Env::start(backend, "badvalues").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let id = new_contact(&mut c, "times@example.com").await;
    let year_10000 = prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 };
    let year_0 = prost_types::Timestamp { seconds: -62_135_596_801, nanos: 0 };
    let next_month = timestamp(now() + 30 * DAY);
    for (at, why) in [(year_10000, "year 10000"), (year_0, "year 0"), (next_month, "a month ahead")] {
        let e = pb::JourneyEvent { occur_time: Some(at), ..touch(&id, pb::TouchpointKind::Visit, None) };
        let err = l
            .record_journey_event(pb::RecordJourneyEventRequest { event: Some(e.clone()), ..Default::default() })
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert_eq!(violated_fields(&err), vec!["event.occur_time"], "{why}: {err:?}");
        let summary = l
            .import_journey_events(tokio_stream::iter(vec![pb::ImportJourneyEventsRequest {
                model_id: String::new(),
                events: vec![e],
            }]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((summary.recorded, summary.errors.len()), (0, 1), "{why}");
        assert_eq!(summary.errors[0].field, "occur_time", "{why}");
        let err = l
            .transition_stage(pb::TransitionStageRequest {
                contact_id: id.clone(),
                to_stage: "awareness".into(),
                reason: "by hand".into(),
                transition_time: Some(at),
                ..Default::default()
            })
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert_eq!(violated_fields(&err), vec!["transition_time"], "{why}: {err:?}");
    }
    // Amounts: at most 10^12 units.
    let mut huge = purchase(&id, "huge", None);
    if let Some(pb::journey_event::Detail::Purchase(p)) = &mut huge.detail {
        p.amount = Some(Money { currency_code: "EUR".into(), units: 1_000_000_000_001, nanos: 0 });
    }
    let err = l
        .record_journey_event(pb::RecordJourneyEventRequest { event: Some(huge.clone()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["event.purchase.amount.units"], "{err:?}");
    if let Some(pb::journey_event::Detail::Purchase(p)) = &mut huge.detail {
        p.amount = Some(Money { currency_code: "EUR".into(), units: 1_000_000_000_000, nanos: 999_999_999 });
    }
    record(&mut l, huge).await;
    // Reads stay readable.
    let events = l
        .list_journey_events(pb::ListJourneyEventsRequest { contact_id: id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    env.done().await;
}

async fn a_purchase_is_recorded_once_per_order_id(backend: Backend) {
    let Some(env) = Env::start(backend, "orders").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let buyer = new_contact(&mut c, "buyer@example.com").await;
    let other = new_contact(&mut c, "other@example.com").await;
    let sale = |contact: &str, units: i64| pb::JourneyEvent {
        contact_id: contact.into(),
        detail: Some(pb::journey_event::Detail::Purchase(pb::Purchase {
            order_id: "SO-1001".into(),
            amount: Some(Money { currency_code: "EUR".into(), units, nanos: 0 }),
            items: 2,
        })),
        ..Default::default()
    };
    let first = record(&mut l, sale(&buyer, 120)).await;
    // The same sale again (no idempotency key, another record time): the first event back.
    let again = record(&mut l, sale(&buyer, 120)).await;
    assert_eq!(again.event.as_ref().unwrap().id, first.event.as_ref().unwrap().id);
    assert!(again.transitions.iter().all(|t| first.transitions.contains(t)), "no second conversion");
    // The same order id with another amount or buyer is refused, naming the order id.
    for bad in [sale(&buyer, 121), sale(&other, 120)] {
        let err = l
            .record_journey_event(pb::RecordJourneyEventRequest { event: Some(bad), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        assert!(err.message().contains("SO-1001"), "{err:?}");
    }
    // An import carrying the sale again counts it as a duplicate.
    let summary = l
        .import_journey_events(tokio_stream::iter(vec![pb::ImportJourneyEventsRequest {
            model_id: String::new(),
            events: vec![sale(&buyer, 120), sale(&other, 120)],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.recorded, summary.duplicates, summary.errors.len()), (0, 1, 1), "{summary:?}");
    assert_eq!(summary.errors[0].field, "purchase.order_id");
    for who in [&buyer, &other] {
        let purchases = l
            .list_journey_events(pb::ListJourneyEventsRequest {
                contact_id: who.clone(),
                filter: r#"kind = "purchase""#.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(purchases.len(), usize::from(who == &buyer), "one sale, recorded once");
    }
    assert_eq!(stages(&journey(&mut l, &buyer).await), vec!["conversion"], "not a repeat purchase");
    env.done().await;
}

async fn request_id_reused_for_another_request_fails(backend: Backend) {
    let Some(env) = Env::start(backend, "ridreuse").await else { return };
    let (mut c, mut l) = env.clients("acme").await;
    let is_reuse = |err: tonic::Status, field: &str| {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err), vec![field.to_string()], "{err:?}");
        assert!(err.message().contains("different"), "{err:?}");
    };
    let rid = uuid::Uuid::new_v4().to_string();
    let model = |name: &str| pb::CreateLifecycleModelRequest {
        lifecycle_model: Some(pb::LifecycleModel {
            display_name: name.into(),
            stages: vec![
                pb::Stage {
                    key: "lead".into(),
                    display_name: "Lead".into(),
                    category: pb::StageCategory::Prospect as i32,
                    ..Default::default()
                },
                pb::Stage {
                    key: "customer".into(),
                    display_name: "Customer".into(),
                    category: pb::StageCategory::Customer as i32,
                    ..Default::default()
                },
            ],
            allowed_transitions: vec![pb::AllowedTransition { from_stage: "*".into(), to_stage: "lead".into() }],
            ..Default::default()
        }),
        request_id: rid.clone(),
    };
    let m1 = l.create_lifecycle_model(model("One")).await.unwrap().into_inner().lifecycle_model.unwrap();
    let m2 = l.create_lifecycle_model(model("One")).await.unwrap().into_inner().lifecycle_model.unwrap();
    assert_eq!(m1.id, m2.id);
    is_reuse(l.create_lifecycle_model(model("Two")).await.unwrap_err(), "request_id");

    let auto = |name: &str| pb::CreateAutomationRequest {
        automation: Some(pb::Automation {
            display_name: name.into(),
            enabled: true,
            trigger: Some(pb::Trigger { kind: Some(pb::trigger::Kind::StageEntered("conversion".into())) }),
            actions: vec![pb::Action { kind: Some(pb::action::Kind::AddTag("customer".into())) }],
            ..Default::default()
        }),
        request_id: rid.clone(),
    };
    let a1 = l.create_automation(auto("tag")).await.unwrap().into_inner().automation.unwrap();
    assert_eq!(l.create_automation(auto("tag")).await.unwrap().into_inner().automation.unwrap().id, a1.id);
    is_reuse(l.create_automation(auto("tag twice")).await.unwrap_err(), "request_id");

    let id = new_contact(&mut c, "mover@example.com").await;
    record(&mut l, touch(&id, pb::TouchpointKind::Visit, None)).await;
    let mv = |to: &str| pb::TransitionStageRequest {
        contact_id: id.clone(),
        to_stage: to.into(),
        reason: "by hand".into(),
        request_id: rid.clone(),
        ..Default::default()
    };
    l.transition_stage(mv("acquisition")).await.unwrap();
    l.transition_stage(mv("acquisition")).await.unwrap();
    is_reuse(l.transition_stage(mv("conversion")).await.unwrap_err(), "request_id");
    assert_eq!(journey(&mut l, &id).await.current_stage, "acquisition");

    // A journey event's idempotency key is the same promise.
    let keyed = |kind| pb::RecordJourneyEventRequest {
        model_id: String::new(),
        event: Some(touch(&id, kind, None)),
        idempotency_key: "visit-1".into(),
    };
    let e1 = l.record_journey_event(keyed(pb::TouchpointKind::Demo)).await.unwrap().into_inner();
    let e2 = l.record_journey_event(keyed(pb::TouchpointKind::Demo)).await.unwrap().into_inner();
    assert_eq!(e1.event.unwrap().id, e2.event.unwrap().id);
    is_reuse(l.record_journey_event(keyed(pb::TouchpointKind::Meeting)).await.unwrap_err(), "idempotency_key");
    env.done().await;
}

clm_testkit::backend_tests!(
    backdated_events_republish_what_changed,
    survey_responses_are_activity,
    every_path_runs_automations,
    automations_ask_contacts_outside_the_transaction,
    a_dormant_customer_is_won_back_by_hand,
    inactivity_automations_fire_once,
    conditions_on_filters_and_segments,
    survey_responses_drive_the_journey,
    walk_the_whole_lifecycle,
    backdated_events_rewrite_history_and_keys_dedupe,
    models_are_validated_and_protected,
    automations_run_are_logged_and_loops_are_bounded,
    tenants_are_isolated,
    erasure_upstream_erases_the_journey_and_dormancy_runs_on_the_clock,
    bad_times_and_amounts_are_refused_by_field,
    a_purchase_is_recorded_once_per_order_id,
    request_id_reused_for_another_request_fails,
);
