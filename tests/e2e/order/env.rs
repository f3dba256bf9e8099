//! The environment and the feeding: all four services started in one process over real gRPC
//! on fresh databases (`Env`), a tenant's clients (`Clients`), a call retried while a
//! just-created contact is not yet known (`call`), and a tenant fed with the plan step by step
//! (`feed`, `feed_step`), keeping its contact ids and the calls it was refused (`Fed`).

use std::collections::HashMap;
use std::time::Duration;

use clm_contacts::ContactsService;
use clm_feedback::FeedbackService;
use clm_lifecycle::LifecycleService;
use clm_metrics::MetricsService;
use clm_platform::convert::timestamp;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::feedback::v1 as fpb;
use clm_proto::feedback::v1::feedback_service_client::FeedbackServiceClient;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use clm_testkit::{self as testing, Backend, BearerInterceptor, Services, TestDb, TestServer};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::plan::{CAMPAIGNS, CHANNELS, Plan, Step, What, money};

type Ch = InterceptedService<Channel, BearerInterceptor>;

pub(super) struct Env {
    server: Option<TestServer>,
    dbs: Vec<TestDb>,
    /// The four services' databases and the event log, to see that nothing is pending.
    conns: Vec<DatabaseConnection>,
    log: DatabaseConnection,
}

#[derive(Clone)]
pub(super) struct Clients {
    pub(super) c: ContactsServiceClient<Ch>,
    pub(super) l: LifecycleServiceClient<Ch>,
    pub(super) f: FeedbackServiceClient<Ch>,
    pub(super) m: MetricsServiceClient<Ch>,
}

impl Env {
    pub(super) async fn start(backend: Backend, label: &str) -> Option<Env> {
        let mut dbs = Vec::new();
        for s in ["c", "l", "f", "m"] {
            dbs.push(TestDb::create(backend, &format!("{label}{s}")).await?);
        }
        let settings = testing::settings(&[
            ("CLM_CONTACTS__DATABASE_URL", &dbs[0].url),
            ("CLM_LIFECYCLE__DATABASE_URL", &dbs[1].url),
            ("CLM_FEEDBACK__DATABASE_URL", &dbs[2].url),
            ("CLM_METRICS__DATABASE_URL", &dbs[3].url),
            // The sweep that makes contacts dormant as time passes, often.
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "500"),
        ]);
        let server = Services::new(settings.clone())
            .await
            .with::<ContactsService>()
            .await
            .with::<LifecycleService>()
            .await
            .with::<FeedbackService>()
            .await
            .with::<MetricsService>()
            .await
            .serve()
            .await;
        let mut conns = Vec::new();
        for db in &dbs {
            conns.push(clm_platform::db::connect(&db.url, &settings.database).await.expect("connect"));
        }
        let log = clm_platform::db::connect(&settings.events.log_database_url, &settings.database).await.expect("log");
        Some(Env { server: Some(server), dbs, conns, log })
    }

    pub(super) async fn clients(&self, tenant: &str) -> Clients {
        let ch = self.server.as_ref().unwrap().authed(&testing::token(tenant, "clm.admin")).await;
        Clients {
            c: ContactsServiceClient::new(ch.clone()),
            l: LifecycleServiceClient::new(ch.clone()),
            f: FeedbackServiceClient::new(ch.clone()),
            m: MetricsServiceClient::new(ch),
        }
    }

    /// Events not yet through: unpublished outbox rows, and log entries a consumer has not
    /// acknowledged (held back ones included).
    pub(super) async fn pending(&self) -> u64 {
        let mut n = 0;
        // Contacts, lifecycle and feedback publish (metrics has no outbox).
        for c in &self.conns[..3] {
            n += clm_platform::events::outbox::pending(c).await.unwrap_or(1);
        }
        let lag = self
            .log
            .query_one_raw(Statement::from_string(
                self.log.get_database_backend(),
                "SELECT COUNT(*) AS n FROM bus_log l JOIN bus_offsets o \
                 ON l.subject LIKE o.prefix || '%' AND l.seq > o.position"
                    .to_owned(),
            ))
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<i64>("", "n").ok())
            .unwrap_or(1);
        n + lag as u64
    }

    pub(super) async fn done(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.ok();
        }
        for c in self.conns {
            c.close().await.ok();
        }
        self.log.close().await.ok();
        for db in self.dbs {
            db.cleanup().await;
        }
    }
}

/// A call, retried while the service has not heard of a just-created contact yet (NOT_FOUND)
/// or a concurrent request holds the key (ABORTED).
async fn call<T>(mut f: impl AsyncFnMut() -> Result<tonic::Response<T>, tonic::Status>) -> Result<T, tonic::Status> {
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if attempt < 20 && matches!(s.code(), Code::NotFound | Code::Aborted | Code::Unavailable) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// One tenant fed with the plan: its contact ids by index, its survey ids, and what its calls
/// were refused with.
pub(super) struct Fed {
    pub(super) name: &'static str,
    pub(super) cl: Clients,
    pub(super) ids: Vec<String>,
    surveys: HashMap<i32, String>,
    pub(super) refused: Vec<String>,
}

fn journey_event(plan: &Plan, ids: &[String], i: usize) -> lpb::JourneyEvent {
    let a = &plan.acts[i];
    let What::Journey(d) = &a.what else { unreachable!("a journey event") };
    lpb::JourneyEvent {
        contact_id: ids[a.contact].clone(),
        occur_time: Some(timestamp(a.at)),
        detail: Some(d.clone()),
        // The key travels in the event too, so an import (which reads it there) and a
        // RecordJourneyEvent of the same event carry the same body.
        metadata: [("idempotency_key".to_owned(), a.key.clone())].into(),
        ..Default::default()
    }
}

pub(super) async fn feed(plan: &Plan, name: &'static str, cl: Clients, steps: &[Step]) -> Fed {
    let mut fed =
        Fed { name, cl, ids: vec![String::new(); plan.contacts.len()], surveys: HashMap::new(), refused: vec![] };
    for kind in [fpb::SurveyKind::Nps, fpb::SurveyKind::Csat, fpb::SurveyKind::Ces] {
        let survey = fpb::Survey {
            display_name: format!("{kind:?}"),
            kind: kind as i32,
            status: fpb::SurveyStatus::Active as i32,
            ..Default::default()
        };
        let mut f = fed.cl.f.clone();
        let s = f
            .create_survey(fpb::CreateSurveyRequest { survey: Some(survey), request_id: String::new() })
            .await
            .expect("create survey")
            .into_inner();
        fed.surveys.insert(kind as i32, s.survey.unwrap().id);
    }
    for step in steps {
        if let Err(e) = feed_step(plan, &mut fed, step).await {
            fed.refused.push(e);
        }
    }
    fed
}

async fn feed_step(plan: &Plan, fed: &mut Fed, step: &Step) -> Result<(), String> {
    let Clients { mut c, mut l, mut f, .. } = fed.cl.clone();
    match step {
        Step::Create(i) | Step::CreateAgain(i) => {
            let spec = &plan.contacts[*i];
            let req = cpb::CreateContactRequest {
                contact: Some(cpb::Contact {
                    email: format!("c{i}-{}@example.com", plan.seed),
                    acquisition: Some(cpb::Acquisition {
                        channel: CHANNELS[spec.channel].0 as i32,
                        campaign: CAMPAIGNS[spec.campaign].into(),
                        cost: spec.cost.map(|(cur, m)| money(cur, m)),
                        acquire_time: Some(timestamp(spec.acquire)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                request_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{}/{i}", plan.seed).as_bytes())
                    .to_string(),
            };
            let r = call(async || c.create_contact(req.clone()).await)
                .await
                .map_err(|s| format!("CreateContact c{i}: {:?} {}", s.code(), s.message()))?;
            let id = r.contact.unwrap().id;
            if matches!(step, Step::CreateAgain(_)) && id != fed.ids[*i] {
                return Err(format!("CreateContact c{i} again with its request id: another contact {id}"));
            }
            fed.ids[*i] = id;
        }
        Step::Act(i) | Step::Again(i) | Step::SameOrder(i) => {
            let a = &plan.acts[*i];
            let contact = fed.ids[a.contact].clone();
            let res = match &a.what {
                What::Journey(_) => {
                    let req = lpb::RecordJourneyEventRequest {
                        model_id: String::new(),
                        event: Some(journey_event(plan, &fed.ids, *i)),
                        idempotency_key: if matches!(step, Step::SameOrder(_)) { String::new() } else { a.key.clone() },
                    };
                    call(async || l.record_journey_event(req.clone()).await).await.map(|_| ())
                }
                What::Move { to, reason } => {
                    let req = lpb::TransitionStageRequest {
                        contact_id: contact,
                        model_id: String::new(),
                        to_stage: (*to).into(),
                        reason: (*reason).into(),
                        transition_time: Some(timestamp(a.at)),
                        request_id: a.key.clone(),
                    };
                    call(async || l.transition_stage(req.clone()).await).await.map(|_| ())
                }
                What::Survey { kind, score, invite } => {
                    let survey = fed.surveys[&(*kind as i32)].clone();
                    let target = if *invite {
                        let req = fpb::CreateInvitationRequest {
                            survey_id: survey.clone(),
                            contact_id: contact.clone(),
                            request_id: String::new(),
                        };
                        let inv = call(async || f.create_invitation(req.clone()).await).await.map_err(|s| {
                            format!("CreateInvitation for {}: {:?} {}", plan.describe(*i), s.code(), s.message())
                        })?;
                        match inv.invitation {
                            Some(inv) => fpb::submit_response_request::Target::InvitationToken(inv.token),
                            None => {
                                return Err(format!(
                                    "CreateInvitation for {}: skipped {:?}",
                                    plan.describe(*i),
                                    inv.skipped
                                ));
                            }
                        }
                    } else {
                        fpb::submit_response_request::Target::InApp(fpb::InAppTarget {
                            survey_id: survey,
                            contact_id: contact,
                        })
                    };
                    let req = fpb::SubmitResponseRequest {
                        target: Some(target),
                        answers: vec![fpb::Answer {
                            question_id: "score".into(),
                            value: Some(fpb::answer::Value::Rating(*score)),
                        }],
                        response_id: String::new(),
                        complete: true,
                    };
                    call(async || f.submit_response(req.clone()).await).await.map(|_| ())
                }
            };
            res.map_err(|s| {
                let how = match step {
                    Step::Again(_) => "again (same key) ",
                    Step::SameOrder(_) => "again (same order id, no key) ",
                    _ => "",
                };
                format!("{how}{}: {:?} {}", plan.describe(*i), s.code(), s.message())
            })?;
        }
        Step::Import(batch) => {
            let events: Vec<lpb::JourneyEvent> = batch.iter().map(|i| journey_event(plan, &fed.ids, *i)).collect();
            let req = lpb::ImportJourneyEventsRequest { model_id: String::new(), events };
            let r = l
                .import_journey_events(tokio_stream::iter(vec![req]))
                .await
                .map_err(|s| format!("ImportJourneyEvents: {:?} {}", s.code(), s.message()))?
                .into_inner();
            if !r.errors.is_empty() || r.recorded + r.duplicates != batch.len() as i64 {
                let errs: Vec<String> = r
                    .errors
                    .iter()
                    .map(|e| format!("{} ({}: {})", plan.describe(batch[e.index as usize]), e.field, e.reason))
                    .collect();
                return Err(format!(
                    "ImportJourneyEvents of {}: recorded {}, duplicates {}, errors {errs:?}",
                    batch.len(),
                    r.recorded,
                    r.duplicates
                ));
            }
        }
    }
    Ok(())
}
