//! Feedback over real gRPC, with contacts and lifecycle in the same process (one port, one
//! event bus, as the single binary runs them), on SQLite and PostgreSQL.

use clm_contacts::ContactsService;
use clm_feedback::FeedbackService;
use clm_lifecycle::LifecycleService;
use clm_platform::convert::micros;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::feedback::v1 as pb;
use clm_proto::feedback::v1::feedback_service_client::FeedbackServiceClient;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
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

const DAY: i64 = 86_400_000_000;

struct Env {
    server: TestServer,
    dbs: Vec<TestDb>,
}

struct Clients {
    f: Fb,
    c: Ct,
    l: Lc,
}

impl Env {
    async fn start(backend: Backend, label: &str) -> Option<Env> {
        let c = TestDb::create(backend, &format!("{label}c")).await?;
        let l = TestDb::create(backend, &format!("{label}l")).await?;
        let f = TestDb::create(backend, &format!("{label}f")).await?;
        let settings = testing::settings(&[
            ("CLM_CONTACTS__DATABASE_URL", &c.url),
            ("CLM_LIFECYCLE__DATABASE_URL", &l.url),
            ("CLM_FEEDBACK__DATABASE_URL", &f.url),
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
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
        Some(Env { server, dbs: vec![c, l, f] })
    }

    async fn clients(&self, tenant: &str) -> Clients {
        let ch = self.server.authed(&testing::token(tenant, "clm.admin")).await;
        Clients {
            f: FeedbackServiceClient::new(ch.clone()),
            c: ContactsServiceClient::new(ch.clone()),
            l: LifecycleServiceClient::new(ch),
        }
    }

    fn feedback_url(&self) -> &str {
        &self.dbs[2].url
    }

    async fn done(self) {
        self.server.stop().await.unwrap();
        for db in self.dbs {
            db.cleanup().await;
        }
    }
}

async fn new_contact(c: &mut Ct, email: &str, tags: &[&str]) -> String {
    c.create_contact(cpb::CreateContactRequest {
        contact: Some(cpb::Contact {
            email: email.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
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

fn why_question() -> pb::Question {
    pb::Question {
        id: "why".into(),
        text: "What should we improve?".into(),
        required: true,
        kind: Some(pb::question::Kind::FreeText(pb::FreeTextQuestion { max_length: 200 })),
        show_if: Some(pb::ShowIf { question_id: "score".into(), choice_ids: vec![], rating_min: 0, rating_max: 6 }),
        primary: false,
    }
}

async fn new_survey(f: &mut Fb, kind: pb::SurveyKind, extra: Vec<pb::Question>, stage: &str) -> pb::Survey {
    f.create_survey(pb::CreateSurveyRequest {
        survey: Some(pb::Survey {
            display_name: "Quarterly pulse".into(),
            kind: kind as i32,
            questions: extra,
            status: pb::SurveyStatus::Active as i32,
            target_stage_key: stage.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .survey
    .unwrap()
}

fn rating(q: &str, r: i32) -> pb::Answer {
    pb::Answer { question_id: q.into(), value: Some(pb::answer::Value::Rating(r)) }
}

fn free(q: &str, t: &str) -> pb::Answer {
    pb::Answer { question_id: q.into(), value: Some(pb::answer::Value::Text(t.into())) }
}

fn by_token(token: &str, answers: Vec<pb::Answer>, complete: bool) -> pb::SubmitResponseRequest {
    pb::SubmitResponseRequest {
        target: Some(pb::submit_response_request::Target::InvitationToken(token.into())),
        answers,
        response_id: String::new(),
        complete,
    }
}

fn in_app(survey: &str, contact: &str, answers: Vec<pb::Answer>, complete: bool) -> pb::SubmitResponseRequest {
    pb::SubmitResponseRequest {
        target: Some(pb::submit_response_request::Target::InApp(pb::InAppTarget {
            survey_id: survey.into(),
            contact_id: contact.into(),
        })),
        answers,
        response_id: String::new(),
        complete,
    }
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

async fn surveys_are_validated_and_versioned(backend: Backend) {
    let Some(env) = Env::start(backend, "fbsurv").await else { return };
    let Clients { mut f, .. } = env.clients("acme").await;
    // Bad input names the fields.
    let err = f
        .create_survey(pb::CreateSurveyRequest {
            survey: Some(pb::Survey {
                display_name: String::new(),
                kind: 0,
                questions: vec![pb::Question {
                    id: "Bad Id".into(),
                    text: "x".into(),
                    kind: Some(pb::question::Kind::Rating(pb::RatingQuestion { min: 5, max: 1, ..Default::default() })),
                    ..Default::default()
                }],
                target_stage_key: "Not A Key".into(),
                status: pb::SurveyStatus::Closed as i32,
                ..Default::default()
            }),
            request_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let got = violated_fields(&err);
    for want in ["survey.display_name", "survey.kind", "survey.target_stage_key", "survey.status", "request_id"] {
        assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
    }
    let err = f
        .create_survey(pb::CreateSurveyRequest {
            survey: Some(pb::Survey {
                display_name: "wrong scale".into(),
                kind: pb::SurveyKind::Nps as i32,
                questions: vec![pb::Question {
                    id: "score".into(),
                    text: "1-5?".into(),
                    primary: true,
                    kind: Some(pb::question::Kind::Rating(pb::RatingQuestion { min: 1, max: 5, ..Default::default() })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["survey.questions[0].primary"]);

    // An NPS survey gets its 0-10 question; created twice with one request id, it exists once.
    let rid = uuid::Uuid::new_v4().to_string();
    let req = pb::CreateSurveyRequest {
        survey: Some(pb::Survey {
            display_name: "NPS".into(),
            kind: pb::SurveyKind::Nps as i32,
            questions: vec![why_question()],
            ..Default::default()
        }),
        request_id: rid,
    };
    let s = f.create_survey(req.clone()).await.unwrap().into_inner().survey.unwrap();
    let again = f.create_survey(req).await.unwrap().into_inner().survey.unwrap();
    assert_eq!(s.id, again.id);
    assert_eq!(s.status, pb::SurveyStatus::Draft as i32);
    assert_eq!(s.questions[0].id, "score");
    assert!(matches!(&s.questions[0].kind, Some(pb::question::Kind::Rating(r)) if (r.min, r.max) == (0, 10)));

    // Draft surveys accept no invitations.
    let Clients { mut c, .. } = env.clients("acme").await;
    let who = new_contact(&mut c, "draft@example.com", &[]).await;
    let err = f
        .create_invitation(pb::CreateInvitationRequest {
            survey_id: s.id.clone(),
            contact_id: who,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Update with a stale etag is refused; with the right one it applies.
    let mut upd = s.clone();
    upd.status = pb::SurveyStatus::Active as i32;
    upd.etag = "W/\"999\"".into();
    let err = f
        .update_survey(pb::UpdateSurveyRequest {
            survey: Some(upd.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["status".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    upd.etag = s.etag.clone();
    let active = f
        .update_survey(pb::UpdateSurveyRequest {
            survey: Some(upd),
            update_mask: Some(prost_types::FieldMask { paths: vec!["status".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .survey
        .unwrap();
    assert_eq!(active.status, pb::SurveyStatus::Active as i32);
    assert_ne!(active.etag, s.etag);
    let err = f
        .update_survey(pb::UpdateSurveyRequest {
            survey: Some(active.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["kind".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["update_mask"]);

    // Filters.
    let listed = f
        .list_surveys(pb::ListSurveysRequest {
            filter: r#"status = "active" AND kind = "nps""#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.surveys.len(), 1);
    let err = f
        .list_surveys(pb::ListSurveysRequest { filter: r#"colour = "red""#.into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["filter"]);

    // A survey with responses keeps its questions and cannot be deleted.
    let who = new_contact(&mut c, "answered@example.com", &[]).await;
    f.submit_response(in_app(&active.id, &who, vec![rating("score", 9)], true)).await.unwrap();
    let mut q = active.clone();
    q.questions = vec![];
    q.questions.push(pb::Question {
        id: "other".into(),
        text: "Other?".into(),
        kind: Some(pb::question::Kind::FreeText(pb::FreeTextQuestion { max_length: 10 })),
        ..Default::default()
    });
    let fresh =
        f.get_survey(pb::GetSurveyRequest { id: active.id.clone() }).await.unwrap().into_inner().survey.unwrap();
    q.etag = fresh.etag.clone();
    let err = f
        .update_survey(pb::UpdateSurveyRequest {
            survey: Some(q),
            update_mask: Some(prost_types::FieldMask { paths: vec!["questions".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err =
        f.delete_survey(pb::DeleteSurveyRequest { id: active.id.clone(), etag: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A draft without responses goes.
    let d = new_survey(&mut f, pb::SurveyKind::Csat, vec![], "").await;
    f.delete_survey(pb::DeleteSurveyRequest { id: d.id.clone(), etag: d.etag.clone() }).await.unwrap();
    let err = f.get_survey(pb::GetSurveyRequest { id: d.id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    env.done().await;
}

#[allow(clippy::too_many_lines)]
async fn segment_invited_answered_nps_read_back_and_follow_up(backend: Backend) {
    let Some(env) = Env::start(backend, "fbloop").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    let a = new_contact(&mut c, "a@example.com", &["vip"]).await;
    let b = new_contact(&mut c, "b@example.com", &["vip"]).await;
    let d = new_contact(&mut c, "d@example.com", &["vip"]).await;
    let _other = new_contact(&mut c, "o@example.com", &[]).await;
    let seg = c
        .create_segment(cpb::CreateSegmentRequest {
            segment: Some(cpb::Segment {
                display_name: "VIPs".into(),
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
    let survey = new_survey(&mut f, pb::SurveyKind::Nps, vec![why_question()], "").await;
    let batch = f
        .batch_create_invitations(pb::BatchCreateInvitationsRequest {
            survey_id: survey.id.clone(),
            target: Some(pb::batch_create_invitations_request::Target::SegmentId(seg.id.clone())),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.invitations.len(), 3, "{batch:?}");
    assert!(batch.skipped.is_empty());
    let token_of = |who: &str| batch.invitations.iter().find(|i| i.contact_id == who).unwrap().token.clone();
    // Each invitation is published (SurveyRequested, with its token) for a notifier to deliver.
    let db = clm_platform::db::connect(env.feedback_url(), &testing::settings(&[]).database).await.unwrap();
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &db,
        sea_orm::Statement::from_string(db.get_database_backend(), "SELECT payload FROM outbox".to_owned()),
    )
    .await
    .unwrap();
    let mut requested: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let bytes: Vec<u8> = r.try_get("", "payload").ok()?;
            match prost::Message::decode(bytes.as_slice()).ok().map(|e: clm_proto::events::v1::EventEnvelope| e.payload)
            {
                Some(Some(clm_proto::events::v1::event_envelope::Payload::SurveyRequested(r))) => Some(r.token),
                _ => None,
            }
        })
        .collect();
    requested.sort();
    let mut issued: Vec<String> = batch.invitations.iter().map(|i| i.token.clone()).collect();
    issued.sort();
    assert_eq!(requested, issued);
    // Asked again: nobody is invited twice, and each is reported.
    let again = f
        .batch_create_invitations(pb::BatchCreateInvitationsRequest {
            survey_id: survey.id.clone(),
            target: Some(pb::batch_create_invitations_request::Target::Contacts(pb::ContactIdList {
                contact_ids: vec![a.clone(), uuid::Uuid::now_v7().to_string()],
            })),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.invitations.is_empty());
    let mut reasons: Vec<i32> = again.skipped.iter().map(|s| s.reason).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, vec![pb::SkipReason::AlreadyInvited as i32, pb::SkipReason::UnknownContact as i32]);

    // Answers: two promoters and a detractor (who must say why before completing).
    for (who, score) in [(&a, 10), (&b, 9)] {
        let r =
            f.submit_response(by_token(&token_of(who), vec![rating("score", score)], true)).await.unwrap().into_inner();
        assert!(r.response.unwrap().complete);
        assert!(r.follow_up.is_none());
    }
    let partial = f
        .submit_response(by_token(&token_of(&d), vec![rating("score", 3)], false))
        .await
        .unwrap()
        .into_inner()
        .response
        .unwrap();
    assert!(!partial.complete);
    assert_eq!(partial.band, pb::ScoreBand::Detractor as i32);
    let err = f.submit_response(by_token(&token_of(&d), vec![], true)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("why"), "{}", err.message());
    let done = f
        .submit_response(by_token(&token_of(&d), vec![free("why", "Support took a week")], true))
        .await
        .unwrap()
        .into_inner();
    let response = done.response.unwrap();
    assert_eq!(response.id, partial.id, "the partial response was completed");
    assert_eq!(response.answers.len(), 2);
    let follow = done.follow_up.expect("a detractor opens a follow-up");
    assert_eq!(follow.reason, "nps_detractor");
    assert_eq!(follow.status, pb::FollowUpStatus::Open as i32);
    // A used token is refused, explained.
    let err = f.submit_response(by_token(&token_of(&a), vec![rating("score", 0)], true)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("used once"), "{}", err.message());

    // NPS read back: 2 promoters, 0 passives, 1 detractor of 3 → 33.3.
    let res = f
        .get_survey_results(pb::GetSurveyResultsRequest { survey_id: survey.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results
        .unwrap();
    let nps = res.nps.unwrap();
    assert_eq!((nps.promoters, nps.passives, nps.detractors), (2, 0, 1));
    assert!((nps.score - 100.0 / 3.0).abs() < 1e-9, "{}", nps.score);
    assert_eq!((res.response_count, res.invitation_count), (3, 3));
    assert!((res.response_rate - 1.0).abs() < 1e-9);
    assert_eq!(res.distribution.iter().map(|b| b.count).sum::<i64>(), 3);
    assert_eq!(res.trend.len(), 1);
    let grouped = f
        .get_survey_results(pb::GetSurveyResultsRequest {
            survey_id: survey.id.clone(),
            group_by: pb::GroupBy::Segment as i32,
            segment_ids: vec![seg.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .unwrap();
    assert_eq!(grouped.groups.len(), 1);
    assert_eq!(grouped.groups[0].count, 3);

    // Listing by band.
    let detractors = f
        .list_responses(pb::ListResponsesRequest {
            filter: format!(r#"band = "detractor" AND survey_id = "{}""#, survey.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detractors.responses.len(), 1);
    assert_eq!(detractors.responses[0].contact_id, d);

    // Closing the loop: open → in progress (owner) → resolved, with time to resolve.
    let open = f
        .list_follow_ups(pb::ListFollowUpsRequest { filter: r#"status = "open""#.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.follow_ups.len(), 1);
    let mut fu = open.follow_ups[0].clone();
    fu.status = pb::FollowUpStatus::InProgress as i32;
    fu.owner = "kim@support".into();
    let fu = f
        .update_follow_up(pb::UpdateFollowUpRequest {
            follow_up: Some(fu),
            update_mask: Some(prost_types::FieldMask { paths: vec!["status".into(), "owner".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .follow_up
        .unwrap();
    assert_eq!(fu.owner, "kim@support");
    assert!(fu.resolve_time.is_none());
    let mut res_fu = fu.clone();
    res_fu.status = pb::FollowUpStatus::Resolved as i32;
    res_fu.note = "Called, refunded".into();
    let resolved = f
        .update_follow_up(pb::UpdateFollowUpRequest { follow_up: Some(res_fu), update_mask: None })
        .await
        .unwrap()
        .into_inner()
        .follow_up
        .unwrap();
    assert_eq!(resolved.status, pb::FollowUpStatus::Resolved as i32);
    assert!(resolved.time_to_resolve.is_some() && resolved.resolve_time.is_some());

    // Lifecycle hears the responses: each becomes a journey event, the detractor is tagged at risk.
    let events = wait_for("lifecycle records the response", async || {
        let e = l
            .list_journey_events(lpb::ListJourneyEventsRequest { contact_id: a.clone(), ..Default::default() })
            .await
            .ok()?
            .into_inner();
        e.events.iter().any(|e| matches!(&e.detail, Some(lpb::journey_event::Detail::Custom(c)) if c.properties.get("score").map(String::as_str) == Some("10"))).then_some(e)
    })
    .await;
    assert!(!events.events.is_empty());
    wait_for("detractor tagged at risk", async || {
        let got = c.get_contact(cpb::GetContactRequest { id: d.clone() }).await.ok()?.into_inner().contact?;
        got.tags.iter().any(|t| t == "at_risk").then_some(())
    })
    .await;
    env.done().await;
}

async fn bad_responses_are_refused_with_reasons(backend: Backend) {
    let Some(env) = Env::start(backend, "fbbad").await else { return };
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    let who = new_contact(&mut c, "bad@example.com", &[]).await;
    let survey = new_survey(&mut f, pb::SurveyKind::Nps, vec![why_question()], "").await;
    let cases = [
        (vec![rating("score", 11)], "answers[0].rating"),
        (vec![rating("nope", 1)], "answers[0].question_id"),
        (vec![free("score", "ten")], "answers[0]"),
        (vec![rating("score", 2), free("why", &"x".repeat(201))], "answers[1].text"),
    ];
    for (answers, field) in cases {
        let err = f.submit_response(in_app(&survey.id, &who, answers, false)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&err), vec![field]);
    }
    let err = f
        .submit_response(by_token("0192f0c0a0b07c3d8e9f000000000000.AAAAAAAAAAAAAAAAAAAAAA", vec![], true))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["invitation_token"], "a forged token");
    let err =
        f.submit_response(in_app(&survey.id, &uuid::Uuid::now_v7().to_string(), vec![], false)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "unknown contact");

    // A partial in-app response is kept and completed later by its id.
    let p = f
        .submit_response(in_app(&survey.id, &who, vec![rating("score", 8)], false))
        .await
        .unwrap()
        .into_inner()
        .response
        .unwrap();
    let mut cont = in_app(&survey.id, &who, vec![], true);
    cont.response_id = p.id.clone();
    let done = f.submit_response(cont.clone()).await.unwrap().into_inner().response.unwrap();
    assert!(done.complete && done.score == 8 && done.band == pb::ScoreBand::Passive as i32);
    let err = f.submit_response(cont).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "a complete response does not change");

    // Expired invitations (time moved on in the database) and closed surveys take nothing.
    let inv = invite(&mut f, &survey.id, &who).await.invitation.unwrap();
    let db = clm_platform::db::connect(env.feedback_url(), &testing::settings(&[]).database).await.unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        &format!("UPDATE invitations SET expire_time = 1 WHERE id = '{}'", inv.id),
    )
    .await
    .unwrap();
    let err = f.submit_response(by_token(&inv.token, vec![rating("score", 9)], true)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("expired"), "{}", err.message());
    let got = f.get_invitation(pb::GetInvitationRequest { id: inv.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.invitation.unwrap().status, pb::InvitationStatus::Expired as i32);
    let mut closed = survey.clone();
    closed.status = pb::SurveyStatus::Closed as i32;
    f.update_survey(pb::UpdateSurveyRequest {
        survey: Some(closed),
        update_mask: Some(prost_types::FieldMask { paths: vec!["status".into()] }),
    })
    .await
    .unwrap();
    let err = f.submit_response(in_app(&survey.id, &who, vec![rating("score", 9)], true)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("closed"), "{}", err.message());
    env.done().await;
}

async fn throttling_follows_the_clock(backend: Backend) {
    let Some(env) = Env::start(backend, "fbthr").await else { return };
    // The store with an injected clock: asked at t, not again before t + window.
    let db = clm_platform::db::connect(env.feedback_url(), &testing::settings(&[]).database).await.unwrap();
    let tenant = clm_platform::TenantId::parse("clock").unwrap();
    let who = uuid::Uuid::now_v7();
    let t0 = 1_000 * DAY;
    let claim = async |now: i64| clm_feedback::store::claim_ask(&db, &tenant, who, now, 30 * DAY).await.unwrap();
    assert_eq!(claim(t0).await, Ok(()));
    assert_eq!(claim(t0 + DAY).await, Err(t0 + 30 * DAY));
    assert_eq!(claim(t0 + 29 * DAY).await, Err(t0 + 30 * DAY));
    assert_eq!(claim(t0 + 30 * DAY).await, Ok(()));
    assert_eq!(claim(t0 + 31 * DAY).await, Err(t0 + 60 * DAY));

    // Over the API: one ask per window across surveys, the skip says until when.
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    let who = new_contact(&mut c, "thr@example.com", &[]).await;
    let s1 = new_survey(&mut f, pb::SurveyKind::Nps, vec![], "").await;
    let s2 = new_survey(&mut f, pb::SurveyKind::Csat, vec![], "").await;
    let first = invite(&mut f, &s1.id, &who).await.invitation.unwrap();
    let skipped = invite(&mut f, &s2.id, &who).await.skipped.expect("throttled");
    assert_eq!(skipped.reason, pb::SkipReason::Throttled as i32);
    let retry = micros(skipped.retry_after_time.as_ref().unwrap()).unwrap();
    assert_eq!(retry, micros(first.create_time.as_ref().unwrap()).unwrap() + 30 * DAY);
    // Throttling off: the second survey goes out.
    let settings = f.get_feedback_settings(pb::GetFeedbackSettingsRequest {}).await.unwrap().into_inner();
    let mut s = settings.feedback_settings.unwrap();
    s.throttle_window = Some(prost_types::Duration { seconds: 0, nanos: 0 });
    f.update_feedback_settings(pb::UpdateFeedbackSettingsRequest {
        feedback_settings: Some(s.clone()),
        update_mask: Some(prost_types::FieldMask { paths: vec!["throttle_window".into()] }),
    })
    .await
    .unwrap();
    assert!(invite(&mut f, &s2.id, &who).await.invitation.is_some());
    // Bad settings.
    s.ces_follow_up_threshold = 9;
    let err = f
        .update_feedback_settings(pb::UpdateFeedbackSettingsRequest {
            feedback_settings: Some(s),
            update_mask: Some(prost_types::FieldMask { paths: vec!["ces_follow_up_threshold".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "stale etag first");
    env.done().await;
}

async fn stage_entry_and_automations_send_surveys(backend: Backend) {
    let Some(env) = Env::start(backend, "fbstage").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    let csat = new_survey(&mut f, pb::SurveyKind::Csat, vec![], "conversion").await;
    let who = new_contact(&mut c, "buyer@example.com", &[]).await;
    // Lifecycle must know the contact first (from the contact's event).
    wait_for("lifecycle knows the contact", async || {
        l.get_journey(lpb::GetJourneyRequest { contact_id: who.clone(), model_id: String::new() }).await.ok()
    })
    .await;
    l.record_journey_event(lpb::RecordJourneyEventRequest {
        model_id: String::new(),
        event: Some(lpb::JourneyEvent {
            contact_id: who.clone(),
            detail: Some(lpb::journey_event::Detail::Purchase(lpb::Purchase {
                order_id: "o-1".into(),
                amount: Some(Money { currency_code: "EUR".into(), units: 50, nanos: 0 }),
                items: 1,
            })),
            ..Default::default()
        }),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
    let inv = wait_for("stage entry invites", async || {
        let page = f
            .list_invitations(pb::ListInvitationsRequest { contact_id: who.clone(), ..Default::default() })
            .await
            .ok()?
            .into_inner();
        page.invitations.into_iter().next()
    })
    .await;
    assert_eq!(inv.survey_id, csat.id);
    assert_eq!(inv.source, pb::InvitationSource::StageTrigger as i32);
    assert!(inv.token.is_empty(), "tokens are not listed");

    // An automation asks for a survey on entering loyalty (throttling off to see it).
    let nps = new_survey(&mut f, pb::SurveyKind::Nps, vec![], "").await;
    let s = f.get_feedback_settings(pb::GetFeedbackSettingsRequest {}).await.unwrap().into_inner().feedback_settings;
    f.update_feedback_settings(pb::UpdateFeedbackSettingsRequest {
        feedback_settings: Some(pb::FeedbackSettings {
            throttle_window: Some(prost_types::Duration::default()),
            ..s.unwrap()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["throttle_window".into()] }),
    })
    .await
    .unwrap();
    l.create_automation(lpb::CreateAutomationRequest {
        automation: Some(lpb::Automation {
            display_name: "ask promoters-to-be".into(),
            enabled: true,
            trigger: Some(lpb::Trigger { kind: Some(lpb::trigger::Kind::StageEntered("retention".into())) }),
            actions: vec![lpb::Action { kind: Some(lpb::action::Kind::RequestSurvey(nps.id.clone())) }],
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    l.record_journey_event(lpb::RecordJourneyEventRequest {
        model_id: String::new(),
        event: Some(lpb::JourneyEvent {
            contact_id: who.clone(),
            detail: Some(lpb::journey_event::Detail::Purchase(lpb::Purchase {
                order_id: "o-2".into(),
                amount: Some(Money { currency_code: "EUR".into(), units: 70, nanos: 0 }),
                items: 1,
            })),
            ..Default::default()
        }),
        idempotency_key: String::new(),
    })
    .await
    .unwrap();
    let auto = wait_for("automation invites", async || {
        let page = f
            .list_invitations(pb::ListInvitationsRequest { survey_id: nps.id.clone(), ..Default::default() })
            .await
            .ok()?
            .into_inner();
        page.invitations.into_iter().next()
    })
    .await;
    assert_eq!(auto.contact_id, who);
    assert_eq!(auto.source, pb::InvitationSource::Automation as i32);
    env.done().await;
}

/// CES is 1 = very difficult … 7 = very easy: a 2 is high effort and opens a follow-up, a 6 is
/// low effort and does not; the threshold setting counts from the difficult end.
async fn difficult_ces_answers_are_followed_up(backend: Backend) {
    let Some(env) = Env::start(backend, "fbces").await else { return };
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    let survey = new_survey(&mut f, pb::SurveyKind::Ces, vec![], "").await;
    let hard = new_contact(&mut c, "hard@example.com", &[]).await;
    let easy = new_contact(&mut c, "easy@example.com", &[]).await;
    let r = wait_for("contacts know the respondent", async || {
        f.submit_response(in_app(&survey.id, &hard, vec![rating("score", 2)], true)).await.ok()
    })
    .await
    .into_inner();
    assert_eq!(r.response.unwrap().band, pb::ScoreBand::HighEffort as i32);
    assert_eq!(r.follow_up.expect("a difficult experience is followed up").reason, "ces_high_effort");
    let r = f.submit_response(in_app(&survey.id, &easy, vec![rating("score", 6)], true)).await.unwrap().into_inner();
    assert_eq!(r.response.unwrap().band, pb::ScoreBand::LowEffort as i32);
    assert!(r.follow_up.is_none(), "an easy experience is not followed up");
    let high = f
        .list_responses(pb::ListResponsesRequest { filter: r#"band = "high_effort""#.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert_eq!(high.iter().map(|r| r.contact_id.as_str()).collect::<Vec<_>>(), [hard.as_str()]);

    // The threshold: scores up to it open a follow-up (default 3); 1 to 6.
    let settings = f.get_feedback_settings(pb::GetFeedbackSettingsRequest {}).await.unwrap().into_inner();
    let s = settings.feedback_settings.unwrap();
    assert_eq!(s.ces_follow_up_threshold, 3);
    let update = |threshold: i32, etag: &str| pb::UpdateFeedbackSettingsRequest {
        feedback_settings: Some(pb::FeedbackSettings {
            ces_follow_up_threshold: threshold,
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["ces_follow_up_threshold".into()] }),
    };
    let err = f.update_feedback_settings(update(7, &s.etag)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["feedback_settings.ces_follow_up_threshold"]);
    f.update_feedback_settings(update(4, &s.etag)).await.unwrap();
    let medium = new_contact(&mut c, "medium@example.com", &[]).await;
    let r = wait_for("contacts know the respondent", async || {
        f.submit_response(in_app(&survey.id, &medium, vec![rating("score", 4)], true)).await.ok()
    })
    .await
    .into_inner();
    assert_eq!(r.response.unwrap().band, pb::ScoreBand::MediumEffort as i32);
    assert!(r.follow_up.is_some(), "4 is at the threshold");
    env.done().await;
}

/// Feedback once read CES backwards (7 = most effort): its stored readings are turned round by a
/// migration — each tenant's threshold mirrored (5, "5-7 open a follow-up", becomes 3, "1-3
/// do"), each CES response's band recomputed from its score; other kinds untouched.
async fn stored_ces_readings_are_migrated_to_the_common_scale(backend: Backend) {
    use clm_feedback::store::entities::{response, settings};
    use clm_feedback::store::migrations::Migrator;
    use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel};
    use sea_orm_migration::MigratorTrait;

    let Some(test_db) = TestDb::create(backend, "fbcesmig").await else { return };
    let db = clm_platform::db::connect(&test_db.url, &testing::settings(&[]).database).await.unwrap();
    let ces = Migrator::migrations().iter().position(|m| m.name() == "m0002_ces_scale").unwrap();
    let before = u32::try_from(ces).unwrap();
    Migrator::up(&db, Some(before)).await.unwrap();
    for (tenant, ces_threshold) in [("acme", 5), ("beta", 7), ("gamma", 2)] {
        let row = settings::Model {
            tenant_id: tenant.into(),
            throttle_window: DAY,
            default_ttl: DAY,
            ces_threshold,
            token_secret: "secret".into(),
            version: 1,
            update_time: 0,
        };
        row.into_active_model().insert(&db).await.unwrap();
    }
    let old = [("c2", 2, "low_effort"), ("c4", 4, "medium_effort"), ("c6", 6, "high_effort"), ("n2", 2, "detractor")];
    for (id, score, band) in old {
        let row = response::Model {
            id: id.into(),
            tenant_id: "acme".into(),
            survey_id: "s".into(),
            invitation_id: None,
            contact_id: "c".into(),
            answers: "{}".into(),
            complete: true,
            score: Some(score),
            band: Some(band.into()),
            stage_key: String::new(),
            create_time: 0,
            update_time: 0,
            complete_time: Some(0),
            version: 1,
            external_id: None,
        };
        // Without external_id: that column comes with a later migration.
        let mut row = row.into_active_model();
        row.external_id = sea_orm::ActiveValue::NotSet;
        response::Entity::insert(row).exec_without_returning(&db).await.unwrap();
    }
    Migrator::up(&db, None).await.unwrap();
    let mut thresholds: Vec<(String, i32)> =
        settings::Entity::find().all(&db).await.unwrap().into_iter().map(|s| (s.tenant_id, s.ces_threshold)).collect();
    thresholds.sort();
    assert_eq!(thresholds, [("acme".into(), 3), ("beta".into(), 1), ("gamma".into(), 6)]);
    let mut bands: Vec<(String, Option<String>)> =
        response::Entity::find().all(&db).await.unwrap().into_iter().map(|r| (r.id, r.band)).collect();
    bands.sort();
    let band = |id: &str, b: &str| (id.to_owned(), Some(b.to_owned()));
    assert_eq!(
        bands,
        [band("c2", "high_effort"), band("c4", "medium_effort"), band("c6", "low_effort"), band("n2", "detractor")]
    );
    db.close().await.unwrap();
    test_db.cleanup().await;
}

/// Lifecycle republishes a transition whose content changed (a backdated event): a retraction of
/// the old version, then the transition again (same transition id, new event id). Its survey
/// invitation is the transition's: sent once, even when the first one was answered and
/// throttling is off. An automation's request is its own invitation.
async fn a_republished_transition_invites_once(backend: Backend) {
    use clm_feedback::events::{FeedbackHandler, Publisher, REQUEST_SURVEY_TOPIC};
    use clm_platform::events::inbox::EventHandler;
    use clm_proto::events::v1 as ev;

    let Some(env) = Env::start(backend, "fbrepub").await else { return };
    let Clients { mut f, .. } = env.clients("acme").await;
    let survey = new_survey(&mut f, pb::SurveyKind::Csat, vec![], "conversion").await;
    let s = f.get_feedback_settings(pb::GetFeedbackSettingsRequest {}).await.unwrap().into_inner().feedback_settings;
    f.update_feedback_settings(pb::UpdateFeedbackSettingsRequest {
        feedback_settings: Some(pb::FeedbackSettings {
            throttle_window: Some(prost_types::Duration::default()),
            ..s.unwrap()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["throttle_window".into()] }),
    })
    .await
    .unwrap();

    let db = clm_platform::db::connect(env.feedback_url(), &testing::settings(&[]).database).await.unwrap();
    let handler =
        FeedbackHandler { publisher: Publisher::new(clm_platform::events::outbox::OutboxWriter::new("feedback")) };
    let apply = async |payload: ev::event_envelope::Payload| {
        let e = ev::EventEnvelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: "acme".into(),
            payload: Some(payload),
            ..Default::default()
        };
        let txn = clm_platform::events::UnitOfWork::begin(&db).await.unwrap();
        handler.handle(&txn, &e).await.unwrap();
        txn.commit().await.unwrap();
    };
    let who = uuid::Uuid::now_v7().to_string();
    let entered = ev::StageChanged {
        contact_id: who.clone(),
        model_id: uuid::Uuid::now_v7().to_string(),
        from_stage: "lead".into(),
        to_stage: "conversion".into(),
        transition_id: uuid::Uuid::now_v7().to_string(),
        transition_time: Some(clm_platform::convert::timestamp(clm_feedback::store::now_micros())),
        ..Default::default()
    };
    let invitations = async |f: &mut Fb| {
        f.list_invitations(pb::ListInvitationsRequest { contact_id: who.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .invitations
    };
    apply(ev::event_envelope::Payload::StageChanged(entered.clone())).await;
    let first = invitations(&mut f).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].source, pb::InvitationSource::StageTrigger as i32);
    // The contact answers: no invitation is pending any more.
    let tenant = clm_platform::TenantId::parse("acme").unwrap();
    let secret = clm_feedback::store::settings(&db, &tenant).await.unwrap().token_secret;
    let token = clm_feedback::domain::token::issue(&secret, "acme", first[0].id.parse().unwrap());
    f.submit_response(by_token(&token, vec![rating("score", 5)], true)).await.unwrap();

    // The retraction, the republished transition (its content changed), and a redelivery.
    let retracted = ev::StageChanged { retracted: true, ..entered.clone() };
    apply(ev::event_envelope::Payload::StageChanged(retracted)).await;
    let republished = ev::StageChanged { from_stage: "visitor".into(), ..entered.clone() };
    apply(ev::event_envelope::Payload::StageChanged(republished.clone())).await;
    apply(ev::event_envelope::Payload::StageChanged(republished)).await;
    let after = invitations(&mut f).await;
    assert_eq!(after.len(), 1, "one transition, one invitation: {after:?}");
    assert_eq!(after[0].id, first[0].id);
    assert_eq!(after[0].status, pb::InvitationStatus::Responded as i32, "the answered invitation stays answered");

    // An automation asking for the same survey is keyed by its own event: a new invitation.
    apply(ev::event_envelope::Payload::AutomationTriggered(ev::AutomationTriggered {
        contact_id: who.clone(),
        topic: REQUEST_SURVEY_TOPIC.into(),
        payload: [("survey_id".to_owned(), survey.id.clone())].into(),
        ..Default::default()
    }))
    .await;
    let all = invitations(&mut f).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().any(|i| i.source == pb::InvitationSource::Automation as i32));
    env.done().await;
}

async fn reviews_count_as_advocacy(backend: Backend) {
    let Some(env) = Env::start(backend, "fbrev").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    let who = new_contact(&mut c, "fan@example.com", &[]).await;
    let err = f
        .create_review(pb::CreateReviewRequest {
            review: Some(pb::Review {
                contact_id: who.clone(),
                rating: 6,
                url: "ftp://x".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["review.rating", "review.url"]);
    let r = f
        .create_review(pb::CreateReviewRequest {
            review: Some(pb::Review {
                contact_id: who.clone(),
                rating: 5,
                text: "Changed how we work".into(),
                platform: "G2".into(),
                url: "https://g2.example/r/1".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .review
        .unwrap();
    assert_eq!(r.platform, "g2");
    let listed =
        f.list_reviews(pb::ListReviewsRequest { contact_id: who.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(listed.into_inner().reviews.len(), 1);
    wait_for("lifecycle records the review", async || {
        let e = l
            .list_journey_events(lpb::ListJourneyEventsRequest {
                contact_id: who.clone(),
                filter: r#"kind = "review""#.into(),
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        (!e.events.is_empty()).then_some(())
    })
    .await;
    env.done().await;
}

async fn erasure_removes_what_people_wrote(backend: Backend) {
    let Some(env) = Env::start(backend, "fberase").await else { return };
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    let who = new_contact(&mut c, "gone@example.com", &[]).await;
    let survey = new_survey(&mut f, pb::SurveyKind::Nps, vec![why_question()], "").await;
    let r = f
        .submit_response(in_app(
            &survey.id,
            &who,
            vec![rating("score", 2), free("why", "I am Jane, call 555-0100")],
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    let response_id = r.response.unwrap().id;
    c.erase_contact(cpb::EraseContactRequest { id: who.clone(), reason: "GDPR request".into() }).await.unwrap();
    let kept = wait_for("free text erased", async || {
        let got =
            f.get_response(pb::GetResponseRequest { id: response_id.clone() }).await.ok()?.into_inner().response?;
        (got.answers.len() == 1).then_some(got)
    })
    .await;
    assert_eq!(kept.score, 2, "the score still counts");
    let db = clm_platform::db::connect(env.feedback_url(), &testing::settings(&[]).database).await.unwrap();
    for table in ["responses", "follow_ups", "reviews", "invitations"] {
        let rows = sea_orm::ConnectionTrait::query_all_raw(
            &db,
            sea_orm::Statement::from_string(db.get_database_backend(), format!("SELECT * FROM {table}")),
        )
        .await
        .unwrap();
        let dump = format!("{rows:?}");
        assert!(!dump.contains("Jane") && !dump.contains("555-0100"), "{table} still holds it");
    }
    env.done().await;
}

async fn tenants_are_isolated(backend: Backend) {
    let Some(env) = Env::start(backend, "fbten").await else { return };
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    let Clients { f: mut other, .. } = env.clients("globex").await;
    let who = new_contact(&mut c, "iso@example.com", &[]).await;
    let survey = new_survey(&mut f, pb::SurveyKind::Nps, vec![], "").await;
    let inv = invite(&mut f, &survey.id, &who).await.invitation.unwrap();
    let resp = f.submit_response(in_app(&survey.id, &who, vec![rating("score", 1)], true)).await.unwrap().into_inner();
    let follow = resp.follow_up.unwrap();
    assert_eq!(
        other.get_survey(pb::GetSurveyRequest { id: survey.id.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        other.get_invitation(pb::GetInvitationRequest { id: inv.id.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        other.get_response(pb::GetResponseRequest { id: resp.response.unwrap().id }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        other.get_follow_up(pb::GetFollowUpRequest { id: follow.id.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        other
            .get_survey_results(pb::GetSurveyResultsRequest { survey_id: survey.id.clone(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = other.submit_response(by_token(&inv.token, vec![rating("score", 10)], true)).await.unwrap_err();
    assert_eq!(violated_fields(&err), vec!["invitation_token"], "a token is worthless in another tenant");
    let err = other
        .create_invitation(pb::CreateInvitationRequest {
            survey_id: survey.id.clone(),
            contact_id: who.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(other.list_surveys(pb::ListSurveysRequest::default()).await.unwrap().into_inner().surveys.is_empty());
    assert!(
        other
            .list_invitations(pb::ListInvitationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .invitations
            .is_empty()
    );
    assert!(other.list_responses(pb::ListResponsesRequest::default()).await.unwrap().into_inner().responses.is_empty());
    assert!(
        other.list_follow_ups(pb::ListFollowUpsRequest::default()).await.unwrap().into_inner().follow_ups.is_empty()
    );
    assert!(other.list_reviews(pb::ListReviewsRequest::default()).await.unwrap().into_inner().reviews.is_empty());
    // A page token of one tenant is refused in the other.
    f.create_survey(pb::CreateSurveyRequest {
        survey: Some(pb::Survey { display_name: "2".into(), kind: pb::SurveyKind::Ces as i32, ..Default::default() }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let page =
        f.list_surveys(pb::ListSurveysRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert!(!page.next_page_token.is_empty());
    let err = other
        .list_surveys(pb::ListSurveysRequest { page_size: 1, page_token: page.next_page_token, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Updating another tenant's follow-up is not found, not forbidden (nothing to infer).
    let err = other
        .update_follow_up(pb::UpdateFollowUpRequest {
            follow_up: Some(pb::FollowUp { id: follow.id, note: "x".into(), ..Default::default() }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    env.done().await;
}

async fn bad_times_and_reused_request_ids_are_refused(backend: Backend) {
    let Some(env) = Env::start(backend, "fbbad").await else { return };
    let Clients { mut f, mut c, .. } = env.clients("acme").await;
    let survey = new_survey(&mut f, pb::SurveyKind::Nps, vec![], "").await;
    let year_10000 = prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 };
    let year_0 = prost_types::Timestamp { seconds: -62_135_596_801, nanos: 0 };
    for (start, end, field) in [
        (Some(year_10000), None, "start_time"),
        (Some(year_0), None, "start_time"),
        (None, Some(year_10000), "end_time"),
        (Some(year_0), Some(year_10000), "start_time"),
    ] {
        let err = f
            .get_survey_results(pb::GetSurveyResultsRequest {
                survey_id: survey.id.clone(),
                start_time: start,
                end_time: end,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err)[0], field, "{err:?}");
    }
    f.get_survey_results(pb::GetSurveyResultsRequest { survey_id: survey.id.clone(), ..Default::default() })
        .await
        .unwrap();

    let is_reuse = |err: tonic::Status| {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err), vec!["request_id".to_string()], "{err:?}");
        assert!(err.message().contains("different request"), "{err:?}");
    };
    let rid = uuid::Uuid::new_v4().to_string();
    let create = |name: &str| pb::CreateSurveyRequest {
        survey: Some(pb::Survey {
            display_name: name.into(),
            kind: pb::SurveyKind::Csat as i32,
            status: pb::SurveyStatus::Active as i32,
            ..Default::default()
        }),
        request_id: rid.clone(),
    };
    let s1 = f.create_survey(create("Pulse")).await.unwrap().into_inner().survey.unwrap();
    assert_eq!(f.create_survey(create("Pulse")).await.unwrap().into_inner().survey.unwrap().id, s1.id);
    is_reuse(f.create_survey(create("Another pulse")).await.unwrap_err());

    let who = new_contact(&mut c, "fan@example.com", &[]).await;
    let other = new_contact(&mut c, "other@example.com", &[]).await;
    let review = |rating: i32| pb::CreateReviewRequest {
        review: Some(pb::Review { contact_id: who.clone(), rating, platform: "g2".into(), ..Default::default() }),
        request_id: rid.clone(),
    };
    let r1 = wait_for("contacts know the reviewer", async || f.create_review(review(5)).await.ok()).await;
    let r1 = r1.into_inner().review.unwrap();
    assert_eq!(f.create_review(review(5)).await.unwrap().into_inner().review.unwrap().id, r1.id);
    is_reuse(f.create_review(review(1)).await.unwrap_err());

    let invitation = |contact: &str| pb::CreateInvitationRequest {
        survey_id: survey.id.clone(),
        contact_id: contact.into(),
        request_id: rid.clone(),
    };
    let i1 = f.create_invitation(invitation(&who)).await.unwrap().into_inner();
    let i2 = f.create_invitation(invitation(&who)).await.unwrap().into_inner();
    assert_eq!(i1.invitation.unwrap().id, i2.invitation.unwrap().id);
    is_reuse(f.create_invitation(invitation(&other)).await.unwrap_err());

    let batch = |ids: Vec<String>| pb::BatchCreateInvitationsRequest {
        survey_id: s1.id.clone(),
        target: Some(pb::batch_create_invitations_request::Target::Contacts(pb::ContactIdList { contact_ids: ids })),
        request_id: rid.clone(),
    };
    f.batch_create_invitations(batch(vec![other.clone()])).await.unwrap();
    f.batch_create_invitations(batch(vec![other.clone()])).await.unwrap();
    is_reuse(f.batch_create_invitations(batch(vec![who.clone(), other.clone()])).await.unwrap_err());
    env.done().await;
}

fn imported(contact: &str, answers: Vec<pb::Answer>, at: i64, external_id: &str) -> pb::ImportedResponse {
    pb::ImportedResponse {
        contact_id: contact.into(),
        answers,
        submit_time: Some(clm_platform::convert::timestamp(at)),
        external_id: external_id.into(),
    }
}

/// The ResponseSubmitted events in feedback's outbox: response id → (occur time, submit time).
async fn submitted_events(url: &str) -> std::collections::HashMap<String, (i64, i64)> {
    use clm_proto::events::v1::EventEnvelope;
    use clm_proto::events::v1::event_envelope::Payload;
    let db = clm_platform::db::connect(url, &testing::settings(&[]).database).await.unwrap();
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &db,
        sea_orm::Statement::from_string(db.get_database_backend(), "SELECT payload FROM outbox".to_owned()),
    )
    .await
    .unwrap();
    rows.iter()
        .filter_map(|r| {
            let bytes: Vec<u8> = r.try_get("", "payload").ok()?;
            let e: EventEnvelope = prost::Message::decode(bytes.as_slice()).ok()?;
            let occur = micros(e.occur_time.as_ref()?)?;
            match e.payload {
                Some(Payload::ResponseSubmitted(r)) => Some((r.response_id, (occur, micros(r.submit_time.as_ref()?)?))),
                _ => None,
            }
        })
        .collect()
}

/// Answers from another survey tool come in with their own dates: stored complete at them,
/// counted in their months by results, published as occurring then, never followed up, and
/// not duplicated when imported again; bad items fail the batch, each named.
async fn historical_responses_are_imported_at_their_times(backend: Backend) {
    let Some(env) = Env::start(backend, "fbimp").await else { return };
    let Clients { mut f, mut c, mut l } = env.clients("acme").await;
    let a = new_contact(&mut c, "a@example.com", &[]).await;
    let b = new_contact(&mut c, "b@example.com", &[]).await;
    let survey = new_survey(&mut f, pb::SurveyKind::Nps, vec![why_question()], "").await;
    let now = chrono::Utc::now().timestamp_micros();
    // Mid-month dates in three distinct past months.
    let month_start = |back: u32| {
        use chrono::Datelike;
        let d = chrono::Utc::now().date_naive().with_day(1).unwrap() - chrono::Months::new(back);
        d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
    };
    let (m5, m3, m1) = (month_start(5) + 10 * DAY, month_start(3) + 10 * DAY, month_start(1) + 10 * DAY);
    let batch = vec![
        imported(&a, vec![rating("score", 10)], m5, "hs-1"),
        imported(&b, vec![rating("score", 2), free("why", "Slow support")], m3, "hs-2"),
        imported(&a, vec![rating("score", 9)], m1, "hs-3"),
    ];
    let req =
        |responses: Vec<pb::ImportedResponse>| pb::ImportResponsesRequest { survey_id: survey.id.clone(), responses };
    let out = f.import_responses(req(batch.clone())).await.unwrap().into_inner();
    assert_eq!((out.received, out.imported, out.skipped), (3, 3, 0), "{out:?}");
    assert_eq!(out.response_ids.len(), 3);

    // Read back at their times, complete, with their scores and bands.
    let list = f
        .list_responses(pb::ListResponsesRequest {
            filter: format!(r#"survey_id = "{}""#, survey.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    let mut got: Vec<(i64, i32, bool, String)> = list
        .iter()
        .map(|r| (micros(r.complete_time.as_ref().unwrap()).unwrap(), r.score, r.complete, r.contact_id.clone()))
        .collect();
    got.sort();
    assert_eq!(got, vec![(m5, 10, true, a.clone()), (m3, 2, true, b.clone()), (m1, 9, true, a.clone())]);
    assert!(list.iter().all(|r| micros(r.create_time.as_ref().unwrap()) == micros(r.complete_time.as_ref().unwrap())));
    assert!(list.iter().all(|r| r.invitation_id.is_empty()));
    // Results place each in its month; a range holds only what was answered in it.
    let results = |start: Option<i64>, end: Option<i64>| pb::GetSurveyResultsRequest {
        survey_id: survey.id.clone(),
        start_time: start.map(clm_platform::convert::timestamp),
        end_time: end.map(clm_platform::convert::timestamp),
        granularity: pb::Granularity::Month as i32,
        ..Default::default()
    };
    let res = f.get_survey_results(results(None, None)).await.unwrap().into_inner().results.unwrap();
    assert_eq!(res.response_count, 3);
    let trend: Vec<(i64, i64)> = res
        .trend
        .iter()
        .filter(|t| t.count > 0)
        .map(|t| (micros(t.period_start_time.as_ref().unwrap()).unwrap(), t.count))
        .collect();
    assert_eq!(trend, vec![(month_start(5), 1), (month_start(3), 1), (month_start(1), 1)]);
    let res = f.get_survey_results(results(Some(month_start(4)), Some(month_start(2)))).await.unwrap().into_inner();
    let nps = res.results.unwrap().nps.unwrap();
    assert_eq!((nps.promoters, nps.passives, nps.detractors), (0, 0, 1));

    // History opens no follow-up, even for a detractor.
    let follow_ups = f.list_follow_ups(pb::ListFollowUpsRequest::default()).await.unwrap().into_inner().follow_ups;
    assert!(follow_ups.is_empty(), "{follow_ups:?}");

    // Each is published as occurring when it was given.
    let events = submitted_events(env.feedback_url()).await;
    for (id, at) in out.response_ids.iter().zip([m5, m3, m1]) {
        assert_eq!(events.get(id), Some(&(at, at)), "{id}");
    }
    // Lifecycle hears it as the contact's activity back then.
    let heard = wait_for("lifecycle records the imported response", async || {
        let e = l
            .list_journey_events(lpb::ListJourneyEventsRequest { contact_id: b.clone(), ..Default::default() })
            .await
            .ok()?
            .into_inner();
        e.events
            .iter()
            .find(|e| matches!(&e.detail, Some(lpb::journey_event::Detail::Custom(c)) if c.properties.get("response_id") == Some(&out.response_ids[1])))
            .and_then(|e| micros(e.occur_time.as_ref()?))
    })
    .await;
    assert_eq!(heard, m3);

    // Imported again (with one new answer): the known ones are skipped and reported.
    let mut again = batch.clone();
    again.push(imported(&b, vec![rating("score", 8)], m1, "hs-4"));
    let out2 = f.import_responses(req(again)).await.unwrap().into_inner();
    assert_eq!((out2.received, out2.imported, out2.skipped), (4, 1, 3), "{out2:?}");
    let skipped: Vec<(i64, &str, &str)> =
        out2.skipped_responses.iter().map(|s| (s.index, s.external_id.as_str(), s.response_id.as_str())).collect();
    assert_eq!(
        skipped,
        vec![
            (0, "hs-1", out.response_ids[0].as_str()),
            (1, "hs-2", out.response_ids[1].as_str()),
            (2, "hs-3", out.response_ids[2].as_str())
        ]
    );
    let count = f.get_survey_results(results(None, None)).await.unwrap().into_inner().results.unwrap().response_count;
    assert_eq!(count, 4);

    // Bad items fail the whole batch, every one named; nothing is written.
    let future = now + DAY;
    let mut no_time = imported(&a, vec![rating("score", 7)], m1, "x-1");
    no_time.submit_time = None;
    let bad = vec![
        imported(&a, vec![rating("score", 7)], m1, "ok-1"),
        no_time,
        imported(&a, vec![rating("score", 7)], future, "x-2"),
        imported(&a, vec![rating("score", 11)], m1, "x-3"),
        imported(&b, vec![rating("score", 3)], m1, "x-4"),
        imported("not-a-uuid", vec![rating("score", 7)], m1, "x-5"),
        imported(&uuid::Uuid::now_v7().to_string(), vec![rating("score", 7)], m1, "x-6"),
        imported(&a, vec![rating("score", 7)], m1, ""),
        imported(&a, vec![rating("score", 7)], m1, "ok-1"),
        imported(&a, vec![], m1, "x-7"),
    ];
    let err = f.import_responses(req(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut named = violated_fields(&err);
    named.sort();
    let mut want = vec![
        "responses[1].submit_time",
        "responses[2].submit_time",
        "responses[3].answers[0].rating",
        "responses[4].answers",
        "responses[5].contact_id",
        "responses[6].contact_id",
        "responses[7].external_id",
        "responses[8].external_id",
        "responses[9].answers",
    ];
    want.sort_unstable();
    assert_eq!(named, want, "{err:?}");
    let count = f.get_survey_results(results(None, None)).await.unwrap().into_inner().results.unwrap().response_count;
    assert_eq!(count, 4, "a refused batch writes nothing");
    // A future time alone is refused too.
    let err = f.import_responses(req(vec![imported(&a, vec![rating("score", 7)], future, "f-1")])).await.unwrap_err();
    assert_eq!(
        (err.code(), violated_fields(&err)),
        (Code::InvalidArgument, vec!["responses[0].submit_time".to_owned()])
    );
    // Request-level limits.
    let err = f.import_responses(req(vec![])).await.unwrap_err();
    assert_eq!(violated_fields(&err), vec!["responses".to_owned()]);
    let many = (0..1001).map(|i| imported(&a, vec![rating("score", 7)], m1, &format!("m-{i}"))).collect();
    let err = f.import_responses(req(many)).await.unwrap_err();
    assert_eq!(violated_fields(&err), vec!["responses".to_owned()]);
    // A draft's questions may still change: no imports into it.
    let draft = f
        .create_survey(pb::CreateSurveyRequest {
            survey: Some(pb::Survey {
                display_name: "Draft".into(),
                kind: pb::SurveyKind::Nps as i32,
                status: pb::SurveyStatus::Draft as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .survey
        .unwrap();
    let err = f
        .import_responses(pb::ImportResponsesRequest {
            survey_id: draft.id,
            responses: vec![imported(&a, vec![rating("score", 7)], m1, "d-1")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    env.done().await;
}

clm_testkit::backend_tests!(
    surveys_are_validated_and_versioned,
    segment_invited_answered_nps_read_back_and_follow_up,
    bad_responses_are_refused_with_reasons,
    throttling_follows_the_clock,
    stage_entry_and_automations_send_surveys,
    difficult_ces_answers_are_followed_up,
    stored_ces_readings_are_migrated_to_the_common_scale,
    a_republished_transition_invites_once,
    reviews_count_as_advocacy,
    erasure_removes_what_people_wrote,
    tenants_are_isolated,
    bad_times_and_reused_request_ids_are_refused,
    historical_responses_are_imported_at_their_times,
);
