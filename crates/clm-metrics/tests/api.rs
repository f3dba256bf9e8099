//! Metrics end to end: contacts → lifecycle → feedback driven over real gRPC, every KPI read
//! back from the metrics service (fed only by their events), then the read model rebuilt by a
//! replay and compared; on SQLite and PostgreSQL.

use std::time::Duration;

use clm_contacts::ContactsService;
use clm_feedback::FeedbackService;
use clm_lifecycle::LifecycleService;
use clm_metrics::MetricsService;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::feedback::v1 as fpb;
use clm_proto::feedback::v1::feedback_service_client::FeedbackServiceClient;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_proto::metrics::v1 as pb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use clm_testkit::{self as testing, Backend, BearerInterceptor, Services, TestDb, TestServer, wait_for};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Ch = InterceptedService<Channel, BearerInterceptor>;

struct Env {
    server: Option<TestServer>,
    dbs: Vec<TestDb>,
    settings: clm_platform::Settings,
}

struct Clients {
    c: ContactsServiceClient<Ch>,
    l: LifecycleServiceClient<Ch>,
    f: FeedbackServiceClient<Ch>,
    m: MetricsServiceClient<Ch>,
}

async fn serve(settings: clm_platform::Settings) -> TestServer {
    Services::new(settings)
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
        .await
}

impl Env {
    async fn start(backend: Backend, label: &str) -> Option<Env> {
        let mut dbs = Vec::new();
        for s in ["c", "l", "f", "m"] {
            dbs.push(TestDb::create(backend, &format!("{label}{s}")).await?);
        }
        let settings = testing::settings(&[
            ("CLM_CONTACTS__DATABASE_URL", &dbs[0].url),
            ("CLM_LIFECYCLE__DATABASE_URL", &dbs[1].url),
            ("CLM_FEEDBACK__DATABASE_URL", &dbs[2].url),
            ("CLM_METRICS__DATABASE_URL", &dbs[3].url),
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
        ]);
        let server = serve(settings.clone()).await;
        Some(Env { server: Some(server), dbs, settings })
    }

    async fn clients(&self, tenant: &str) -> Clients {
        let ch = self.server.as_ref().unwrap().authed(&testing::token(tenant, "clm.admin")).await;
        Clients {
            c: ContactsServiceClient::new(ch.clone()),
            l: LifecycleServiceClient::new(ch.clone()),
            f: FeedbackServiceClient::new(ch.clone()),
            m: MetricsServiceClient::new(ch),
        }
    }

    async fn done(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
        for db in self.dbs {
            db.cleanup().await;
        }
    }
}

fn eur(units: i64) -> Money {
    Money { currency_code: "EUR".into(), units, nanos: 0 }
}

fn units(m: Option<&Money>) -> f64 {
    m.map_or(0.0, |m| m.units as f64 + f64::from(m.nanos) / 1e9)
}

async fn contact(
    c: &mut ContactsServiceClient<Ch>,
    email: &str,
    channel: cpb::AcquisitionChannel,
    cost: Option<i64>,
) -> String {
    c.create_contact(cpb::CreateContactRequest {
        contact: Some(cpb::Contact {
            email: email.into(),
            acquisition: Some(cpb::Acquisition {
                channel: channel as i32,
                campaign: "spring".into(),
                cost: cost.map(eur),
                ..Default::default()
            }),
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

async fn record(l: &mut LifecycleServiceClient<Ch>, contact: &str, detail: lpb::journey_event::Detail) {
    record_event(l, lpb::JourneyEvent { contact_id: contact.into(), detail: Some(detail), ..Default::default() }).await;
}

/// Record `e`, waiting for lifecycle to hear of a just-created contact.
async fn record_event(l: &mut LifecycleServiceClient<Ch>, e: lpb::JourneyEvent) {
    let contact = e.contact_id.clone();
    for _ in 0..100 {
        match l
            .record_journey_event(lpb::RecordJourneyEventRequest {
                model_id: String::new(),
                event: Some(e.clone()),
                idempotency_key: String::new(),
            })
            .await
        {
            Ok(_) => return,
            Err(s) if s.code() == Code::NotFound => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => panic!("{s:?}"),
        }
    }
    panic!("lifecycle never heard of {contact}");
}

fn touch(kind: lpb::TouchpointKind) -> lpb::journey_event::Detail {
    lpb::journey_event::Detail::Touchpoint(lpb::Touchpoint {
        channel: lpb::TouchpointChannel::Web as i32,
        kind: kind as i32,
        detail: String::new(),
    })
}

fn purchase(order: &str, amount: i64) -> lpb::journey_event::Detail {
    lpb::journey_event::Detail::Purchase(lpb::Purchase { order_id: order.into(), amount: Some(eur(amount)), items: 1 })
}

/// The figures a test compares before and after a replay.
async fn figures(
    m: &mut MetricsServiceClient<Ch>,
) -> (pb::GetStageMetricsResponse, pb::Funnel, pb::GetCohortRetentionResponse) {
    let stage = m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.unwrap().into_inner();
    let funnel = m.get_funnel(pb::GetFunnelRequest::default()).await.unwrap().into_inner().funnel.unwrap();
    let cohorts = m.get_cohort_retention(pb::GetCohortRetentionRequest::default()).await.unwrap().into_inner();
    (stage, funnel, cohorts)
}

#[allow(clippy::too_many_lines, clippy::float_cmp)]
async fn every_kpi_from_the_event_stream_and_a_replay_agrees(backend: Backend) {
    let Some(mut env) = Env::start(backend, "mtall").await else { return };
    let Clients { mut c, mut l, mut f, mut m } = env.clients("acme").await;
    use cpb::AcquisitionChannel as A;
    let c1 = contact(&mut c, "c1@example.com", A::PaidSearch, Some(100)).await;
    let c2 = contact(&mut c, "c2@example.com", A::PaidSearch, Some(100)).await;
    let c3 = contact(&mut c, "c3@example.com", A::Referral, None).await;
    let c4 = contact(&mut c, "c4@example.com", A::OrganicSearch, None).await;
    for id in [&c1, &c2, &c3, &c4] {
        record(&mut l, id, touch(lpb::TouchpointKind::Visit)).await;
    }
    for id in [&c1, &c2, &c3] {
        record(&mut l, id, touch(lpb::TouchpointKind::FormSubmitted)).await;
    }
    record(&mut l, &c1, purchase("o1", 100)).await;
    record(&mut l, &c3, purchase("o2", 50)).await;
    record(&mut l, &c1, purchase("o3", 100)).await;
    let survey = f
        .create_survey(fpb::CreateSurveyRequest {
            survey: Some(fpb::Survey {
                display_name: "NPS".into(),
                kind: fpb::SurveyKind::Nps as i32,
                status: fpb::SurveyStatus::Active as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .survey
        .unwrap();
    // The detractor first: the promoter's response comes after it on feedback's stream, so
    // once the promoter is counted, both are.
    for (who, score) in [(&c3, 3), (&c1, 10)] {
        f.submit_response(fpb::SubmitResponseRequest {
            target: Some(fpb::submit_response_request::Target::InApp(fpb::InAppTarget {
                survey_id: survey.id.clone(),
                contact_id: who.clone(),
            })),
            answers: vec![fpb::Answer { question_id: "score".into(), value: Some(fpb::answer::Value::Rating(score)) }],
            response_id: String::new(),
            complete: true,
        })
        .await
        .unwrap();
    }
    f.create_review(fpb::CreateReviewRequest {
        review: Some(fpb::Review { contact_id: c1.clone(), rating: 5, platform: "g2".into(), ..Default::default() }),
        request_id: String::new(),
    })
    .await
    .unwrap();

    // Wait until the last facts have arrived, then read every KPI.
    let stage = wait_for("metrics catch up", async || {
        let s = m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.ok()?.into_inner();
        let done = s.loyalty.as_ref()?.promoters == 1;
        // The last stage changes (retention, then loyalty for c1) may trail the facts.
        let f = m.get_funnel(pb::GetFunnelRequest::default()).await.ok()?.into_inner().funnel?;
        let loyal = f.stages.iter().any(|st| st.stage_key == "loyalty" && st.reached == 1);
        let conv = s.conversion.as_ref()?;
        let settled = conv.new_customers == 2 && s.acquisition.as_ref()?.leads == 3;
        (done
            && loyal
            && settled
            && s.loyalty.as_ref()?.reviewers == 1
            && units(s.conversion.as_ref()?.revenue.as_ref()) == 250.0)
            .then_some(s)
    })
    .await;
    let acq = stage.acquisition.unwrap();
    assert_eq!((acq.new_contacts, acq.leads), (4, 3));
    assert_eq!(units(acq.acquisition_cost.as_ref()), 200.0);
    assert!((units(acq.cost_per_lead.as_ref()) - 200.0 / 3.0).abs() < 0.01);
    assert_eq!(acq.new_contacts_by_channel.get("paid_search"), Some(&2));
    let conv = stage.conversion.unwrap();
    assert_eq!(conv.new_customers, 2);
    assert!((conv.close_rate - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(units(conv.average_deal_size.as_ref()), 75.0, "first purchases: 100 and 50");
    assert_eq!(units(conv.cac.as_ref()), 100.0);
    assert!(conv.median_time_to_close.is_some());
    let ret = stage.retention.unwrap();
    assert_eq!(ret.nps, 0.0, "one promoter, one detractor");
    assert_eq!(ret.repeat_purchase_rate, 0.5, "c1 bought twice, c3 once");
    assert_eq!(ret.purchase_frequency, 1.5, "3 orders by 2 buyers");
    assert!((units(ret.average_order_value.as_ref()) - 250.0 / 3.0).abs() < 0.01);
    let loy = stage.loyalty.unwrap();
    assert_eq!((loy.promoters, loy.reviewers), (1, 1));
    assert_eq!(units(loy.historical_clv.as_ref()), 125.0, "250 EUR over 2 buyers");

    let funnel = m.get_funnel(pb::GetFunnelRequest::default()).await.unwrap().into_inner().funnel.unwrap();
    let reached: Vec<(String, i64)> = funnel.stages.iter().map(|s| (s.stage_key.clone(), s.reached)).collect();
    assert_eq!(
        reached[..4],
        [("awareness".into(), 4), ("acquisition".into(), 3), ("conversion".into(), 2), ("retention".into(), 1)],
        "{reached:?}"
    );
    assert!((funnel.stages[1].conversion_rate_from_previous - 0.75).abs() < 1e-9);
    let windowed = m
        .get_funnel(pb::GetFunnelRequest {
            scope: None,
            conversion_window: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        })
        .await
        .unwrap()
        .into_inner()
        .funnel
        .unwrap();
    assert_eq!(windowed.stages[2].reached, 2, "both conversions happened within the hour");

    let channels = m.get_channel_metrics(pb::GetChannelMetricsRequest::default()).await.unwrap().into_inner().channels;
    let paid = channels.iter().find(|ch| ch.channel == "paid_search").unwrap();
    assert_eq!((paid.new_contacts, paid.leads, paid.customers), (2, 2, 1));
    assert_eq!(units(paid.cac.as_ref()), 200.0, "one channel's leads convert worse");
    let referral = channels.iter().find(|ch| ch.channel == "referral").unwrap();
    assert_eq!((referral.customers, units(referral.revenue.as_ref())), (1, 50.0));

    let cohorts = m.get_cohort_retention(pb::GetCohortRetentionRequest::default()).await.unwrap().into_inner();
    let row = cohorts.rows.last().unwrap();
    assert_eq!(row.cohort_size, 2);
    assert_eq!((row.cells[0].count, row.cells[0].value), (2, 1.0));

    let breakdown = m
        .get_lifecycle_breakdown(pb::GetLifecycleBreakdownRequest {
            scope: None,
            granularity: pb::Granularity::Month as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(breakdown.periods.iter().map(|p| p.new).sum::<i64>(), 4);

    // The review moves c1 to loyalty in lifecycle; that StageChanged may come a moment later.
    let value = wait_for("c1 reaches loyalty", async || {
        let v = m
            .get_customer_value(pb::GetCustomerValueRequest { contact_id: c1.clone() })
            .await
            .ok()?
            .into_inner()
            .customer_value?;
        (v.current_stage == "loyalty").then_some(v)
    })
    .await;
    assert_eq!((value.orders, units(value.historical_revenue.as_ref())), (2, 200.0));
    assert_eq!(units(value.acquisition_cost.as_ref()), 100.0);
    assert!(units(value.predicted_clv.as_ref()) > 200.0);

    let series = m
        .list_kpi_series(pb::ListKpiSeriesRequest {
            kpi: pb::Kpi::Revenue as i32,
            scope: None,
            granularity: pb::Granularity::Month as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(series.points.iter().map(|p| p.value).sum::<f64>(), 250.0);

    // Goals: 3 new contacts a month (on track), CAC at most 50 (off track at 100).
    for (kpi, target, direction) in
        [(pb::Kpi::NewContacts, 3.0, pb::GoalDirection::AtLeast), (pb::Kpi::Cac, 50.0, pb::GoalDirection::AtMost)]
    {
        m.create_goal(pb::CreateGoalRequest {
            goal: Some(pb::Goal {
                display_name: format!("{kpi:?}"),
                kpi: kpi as i32,
                target,
                direction: direction as i32,
                period: pb::Granularity::Month as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    let card = m.get_scorecard(pb::GetScorecardRequest::default()).await.unwrap().into_inner().goals;
    let health: Vec<(f64, i32)> = card.iter().map(|g| (g.actual, g.health)).collect();
    assert_eq!(health, vec![(4.0, pb::GoalHealth::OnTrack as i32), (100.0, pb::GoalHealth::OffTrack as i32)]);

    // Goals are listed, updated with their etag (a stale one is refused) and deleted.
    let listed =
        m.list_goals(pb::ListGoalsRequest { page_size: 1, page_token: String::new() }).await.unwrap().into_inner();
    assert_eq!(listed.goals.len(), 1);
    let second = m
        .list_goals(pb::ListGoalsRequest { page_size: 1, page_token: listed.next_page_token })
        .await
        .unwrap()
        .into_inner();
    let mut cac_goal = second.goals[0].clone();
    assert_eq!(cac_goal.kpi, pb::Kpi::Cac as i32);
    cac_goal.target = 150.0;
    let updated = m
        .update_goal(pb::UpdateGoalRequest {
            goal: Some(cac_goal.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["target".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .goal
        .unwrap();
    assert_eq!(updated.target, 150.0);
    let card = m.get_scorecard(pb::GetScorecardRequest::default()).await.unwrap().into_inner().goals;
    assert_eq!(card[1].health, pb::GoalHealth::OnTrack as i32, "CAC 100 ≤ 150");
    let err =
        m.delete_goal(pb::DeleteGoalRequest { id: updated.id.clone(), etag: cac_goal.etag.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "stale etag");
    m.delete_goal(pb::DeleteGoalRequest { id: updated.id.clone(), etag: updated.etag.clone() }).await.unwrap();
    assert_eq!(m.get_goal(pb::GetGoalRequest { id: updated.id }).await.unwrap_err().code(), Code::NotFound);

    // Bad input.
    let err = m
        .get_funnel(pb::GetFunnelRequest {
            scope: Some(pb::MetricsScope { model_id: "nope".into(), ..Default::default() }),
            conversion_window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = m
        .create_goal(pb::CreateGoalRequest { goal: Some(pb::Goal::default()), request_id: String::new() })
        .await
        .unwrap_err();
    let fields = testing::violated_fields(&err);
    assert!(fields.contains(&"goal.kpi".to_owned()) && fields.contains(&"goal.direction".to_owned()), "{fields:?}");

    // Another tenant sees nothing of it.
    let Clients { m: mut other, .. } = env.clients("globex").await;
    let theirs = other.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.unwrap().into_inner();
    assert_eq!(theirs.acquisition.unwrap().new_contacts, 0);
    assert!(other.get_scorecard(pb::GetScorecardRequest::default()).await.unwrap().into_inner().goals.is_empty());
    let err = other.get_customer_value(pb::GetCustomerValueRequest { contact_id: c1.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A goal without a direction takes its KPI's: CES is better higher (7 = very easy), CAC lower.
    for (kpi, want) in [(pb::Kpi::Ces, pb::GoalDirection::AtLeast), (pb::Kpi::Cac, pb::GoalDirection::AtMost)] {
        let goal = pb::Goal {
            display_name: format!("{kpi:?}"),
            kpi: kpi as i32,
            target: 5.0,
            period: pb::Granularity::Month as i32,
            ..Default::default()
        };
        let g = other
            .create_goal(pb::CreateGoalRequest { goal: Some(goal), request_id: String::new() })
            .await
            .unwrap()
            .into_inner()
            .goal
            .unwrap();
        assert_eq!(g.direction, want as i32, "{kpi:?}");
    }

    // Replay from the first event: exactly the same numbers.
    let before = figures(&mut m).await;
    env.server.take().unwrap().stop().await.unwrap();
    let settings = env.settings.clone();
    let bus = clm_platform::events::transport::from_settings(&settings.events, &settings.database).await.unwrap();
    let db = clm_platform::db::connect(&env.dbs[3].url, &settings.database).await.unwrap();
    clm_platform::events::consumer::replay(
        bus.as_ref(),
        &db,
        &clm_metrics::events::consumer_spec(&settings.events),
        &clm_metrics::events::MetricsHandler,
    )
    .await
    .unwrap();
    let zero = sea_orm::ConnectionTrait::query_one_raw(
        &db,
        sea_orm::Statement::from_string(db.get_database_backend(), "SELECT COUNT(*) AS n FROM kpi_daily".to_owned()),
    )
    .await
    .unwrap()
    .unwrap()
    .try_get::<i64>("", "n")
    .unwrap();
    assert_eq!(zero, 0, "the read model was cleared");
    env.server = Some(serve(settings).await);
    let Clients { mut m, .. } = env.clients("acme").await;
    let after = wait_for("replay catches up", async || {
        let now = figures(&mut m).await;
        (now.0 == before.0 && now.1 == before.1).then_some(now)
    })
    .await;
    assert_eq!(after.2, before.2, "cohorts");
    let _ = (c2, c4);
    env.done().await;
}

async fn score(f: &mut FeedbackServiceClient<Ch>, survey: &str, contact: &str, score: i32) {
    f.submit_response(fpb::SubmitResponseRequest {
        target: Some(fpb::submit_response_request::Target::InApp(fpb::InAppTarget {
            survey_id: survey.into(),
            contact_id: contact.into(),
        })),
        answers: vec![fpb::Answer { question_id: "score".into(), value: Some(fpb::answer::Value::Rating(score)) }],
        response_id: String::new(),
        complete: true,
    })
    .await
    .unwrap();
}

async fn survey(f: &mut FeedbackServiceClient<Ch>, kind: fpb::SurveyKind) -> String {
    f.create_survey(fpb::CreateSurveyRequest {
        survey: Some(fpb::Survey {
            display_name: format!("{kind:?}"),
            kind: kind as i32,
            status: fpb::SurveyStatus::Active as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .survey
    .unwrap()
    .id
}

/// Churn, retention, dormancy, reactivation, referral rate, CSAT and CES on hand-computed data.
#[allow(clippy::float_cmp)]
async fn retention_and_loyalty_kpis_follow_the_journeys(backend: Backend) {
    let Some(env) = Env::start(backend, "mtret").await else { return };
    let Clients { mut c, mut l, mut f, mut m } = env.clients("acme").await;
    let now = chrono::Utc::now().timestamp_micros();
    let c1 = contact(&mut c, "r1@example.com", cpb::AcquisitionChannel::Email, None).await;
    let c2 = contact(&mut c, "r2@example.com", cpb::AcquisitionChannel::Email, None).await;
    // Both became customers 40 days ago: two customers when the 30-day range starts.
    for (id, order) in [(&c1, "r-1"), (&c2, "r-2")] {
        let e = lpb::JourneyEvent {
            contact_id: id.clone(),
            occur_time: Some(clm_platform::convert::timestamp(now - 40 * 86_400_000_000)),
            detail: Some(purchase(order, 30)),
            ..Default::default()
        };
        record_event(&mut l, e).await;
    }
    // c2 goes dormant (by hand), then comes back (any activity reactivates); c1 refers a friend.
    l.transition_stage(lpb::TransitionStageRequest {
        contact_id: c2.clone(),
        to_stage: "dormant".into(),
        reason: "no reply for months".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    record(&mut l, &c2, touch(lpb::TouchpointKind::Visit)).await;
    record(&mut l, &c1, lpb::journey_event::Detail::Referral(lpb::Referral::default())).await;
    let csat = survey(&mut f, fpb::SurveyKind::Csat).await;
    let ces = survey(&mut f, fpb::SurveyKind::Ces).await;
    score(&mut f, &csat, &c1, 5).await;
    score(&mut f, &csat, &c2, 2).await;
    score(&mut f, &ces, &c1, 3).await;
    score(&mut f, &ces, &c2, 6).await;
    let ret = wait_for("retention figures", async || {
        let s = m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.ok()?.into_inner();
        let r = s.retention?;
        // Every response in (feedback's and lifecycle's events are applied as they come, so
        // wait for the last of them, not the first): a wrong average never settles here.
        (r.reactivated == 1 && r.ces == 4.5 && r.csat == 50.0 && s.loyalty?.referral_rate > 0.0).then_some(r)
    })
    .await;
    assert_eq!(ret.customers_at_start, 2);
    assert_eq!((ret.dormant, ret.reactivated), (1, 1));
    assert_eq!(ret.churn_rate, 0.5, "one of two customers left in the range");
    assert_eq!(ret.retention_rate, 0.5, "(2 at end − 1 regained) ÷ 2 at start");
    assert_eq!(ret.csat, 50.0);
    assert_eq!(ret.ces, 4.5);
    let loyalty =
        m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.unwrap().into_inner().loyalty.unwrap();
    assert_eq!(loyalty.referral_rate, 0.5, "one referrer among two customers");
    let breakdown = m.get_lifecycle_breakdown(pb::GetLifecycleBreakdownRequest::default()).await.unwrap().into_inner();
    assert_eq!(breakdown.periods.iter().map(|p| p.dormant).sum::<i64>(), 1);
    assert_eq!(breakdown.periods.iter().map(|p| p.reactivated).sum::<i64>(), 1);
    env.done().await;
}

/// Set the default model's `churn_excludes_dormancy` alone (an update with only that path).
async fn set_churn_excludes_dormancy(l: &mut LifecycleServiceClient<Ch>, on: bool) {
    l.update_lifecycle_model(lpb::UpdateLifecycleModelRequest {
        lifecycle_model: Some(lpb::LifecycleModel { churn_excludes_dormancy: on, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["churn_excludes_dormancy".into()] }),
    })
    .await
    .unwrap();
}

/// Lifecycle's `churn_excludes_dormancy` reaches metrics when the setting alone changes, with
/// no stage change after it (docs/metrics.md § Customer spells), both ways.
#[allow(clippy::float_cmp)]
async fn a_models_churn_setting_reaches_metrics_by_itself(backend: Backend) {
    let Some(env) = Env::start(backend, "mtbasis").await else { return };
    let Clients { mut c, mut l, m: mut mc, .. } = env.clients("acme").await;
    let now = chrono::Utc::now().timestamp_micros();
    let c1 = contact(&mut c, "b1@example.com", cpb::AcquisitionChannel::Email, None).await;
    let c2 = contact(&mut c, "b2@example.com", cpb::AcquisitionChannel::Email, None).await;
    // Both customers 40 days ago; c2 goes dormant in the range.
    for (id, order) in [(&c1, "b-1"), (&c2, "b-2")] {
        let e = lpb::JourneyEvent {
            contact_id: id.clone(),
            occur_time: Some(clm_platform::convert::timestamp(now - 40 * 86_400_000_000)),
            detail: Some(purchase(order, 30)),
            ..Default::default()
        };
        record_event(&mut l, e).await;
    }
    l.transition_stage(lpb::TransitionStageRequest {
        contact_id: c2.clone(),
        to_stage: "dormant".into(),
        reason: "no reply for months".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut churn = async || {
        let r = mc.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.ok()?.into_inner().retention?;
        (r.customers_at_start == 2 && r.dormant == 1).then_some(r.churn_rate)
    };
    assert_eq!(wait_for("dormancy counted", &mut churn).await, 0.5, "dormancy is churn by default");
    // The setting alone, no StageChanged after it: c2, dormant, no longer left.
    set_churn_excludes_dormancy(&mut l, true).await;
    wait_for("dormancy left out of churn", async || (churn().await? == 0.0).then_some(())).await;
    // And back.
    set_churn_excludes_dormancy(&mut l, false).await;
    wait_for("dormancy is churn again", async || (churn().await? == 0.5).then_some(())).await;
    env.done().await;
}

#[allow(clippy::float_cmp)]
async fn watch_streams_changes_and_bad_input_is_named(backend: Backend) {
    let Some(env) = Env::start(backend, "mtwatch").await else { return };
    let Clients { mut c, mut m, .. } = env.clients("acme").await;
    let mut stream = m
        .watch_kpis(pb::WatchKpisRequest { kpis: vec![pb::Kpi::NewContacts as i32], scope: None })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!((first.kpi, first.value), (pb::Kpi::NewContacts as i32, 0.0));
    contact(&mut c, "watched@example.com", cpb::AcquisitionChannel::Email, None).await;
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.value, 1.0, "the new contact streams in");

    let field = |s: tonic::Status| -> Vec<String> {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        testing::violated_fields(&s)
    };
    let bad_range = pb::MetricsScope {
        start_time: Some(prost_types::Timestamp { seconds: 2_000_000_000, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: 1_000_000_000, nanos: 0 }),
        ..Default::default()
    };
    let err = m
        .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(bad_range), lead_quality_threshold: 101 })
        .await
        .unwrap_err();
    assert_eq!(field(err), vec!["scope.end_time", "lead_quality_threshold"]);
    let err = m
        .get_cohort_retention(pb::GetCohortRetentionRequest {
            periods: 61,
            granularity: pb::Granularity::Day as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field(err), vec!["granularity", "periods"]);
    let err = m.list_kpi_series(pb::ListKpiSeriesRequest::default()).await.unwrap_err();
    assert_eq!(field(err), vec!["kpi"]);
    let err = m
        .get_funnel(pb::GetFunnelRequest {
            scope: Some(pb::MetricsScope { segment_filter: "x".repeat(5000), ..Default::default() }),
            conversion_window: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
        })
        .await
        .unwrap_err();
    assert_eq!(field(err), vec!["scope.segment_filter", "conversion_window"]);
    // A filter the contacts service cannot parse is named as the caller's field.
    let err = m
        .get_funnel(pb::GetFunnelRequest {
            scope: Some(pb::MetricsScope { segment_filter: "tags ~ (".into(), ..Default::default() }),
            conversion_window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(field(err), vec!["scope.segment_filter"]);
    let err = m.get_customer_value(pb::GetCustomerValueRequest { contact_id: "x".into() }).await.unwrap_err();
    assert_eq!(field(err), vec!["contact_id"]);
    let err = m.watch_kpis(pb::WatchKpisRequest { kpis: vec![], scope: None }).await.unwrap_err();
    assert_eq!(field(err), vec!["kpis"]);
    drop(stream);
    env.done().await;
}

/// A scope's segment filter (asked of the contacts service) narrows every KPI to its members.
#[allow(clippy::float_cmp, clippy::too_many_lines)]
async fn a_segment_filter_narrows_every_kpi(backend: Backend) {
    let Some(env) = Env::start(backend, "mtseg").await else { return };
    let Clients { mut c, mut l, mut m, .. } = env.clients("acme").await;
    let mut ids = Vec::new();
    for (i, vip) in [true, false, true].into_iter().enumerate() {
        let id = contact(&mut c, &format!("s{i}@example.com"), cpb::AcquisitionChannel::Email, Some(10)).await;
        if vip {
            c.update_contact(cpb::UpdateContactRequest {
                contact: Some(cpb::Contact { id: id.clone(), tags: vec!["vip".into()], ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["tags".into()] }),
            })
            .await
            .unwrap();
        }
        record(&mut l, &id, purchase(&format!("s-{i}"), 100 * (i64::try_from(i).unwrap() + 1))).await;
        ids.push(id);
    }
    record(&mut l, &ids[2], purchase("s-2b", 50)).await;
    let vip = pb::MetricsScope { segment_filter: r#"tags:"vip""#.into(), ..Default::default() };
    let everyone = wait_for("all three purchases counted", async || {
        let s = m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.ok()?.into_inner();
        (units(s.conversion.as_ref()?.revenue.as_ref()) == 650.0).then_some(s)
    })
    .await;
    assert_eq!(everyone.conversion.unwrap().new_customers, 3);
    let s = m
        .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(vip.clone()), lead_quality_threshold: 0 })
        .await
        .unwrap()
        .into_inner();
    let conv = s.conversion.unwrap();
    assert_eq!(conv.new_customers, 2);
    assert_eq!(units(conv.revenue.as_ref()), 100.0 + 300.0 + 50.0);
    assert_eq!(s.acquisition.as_ref().unwrap().new_contacts, 2);
    assert_eq!(units(s.acquisition.unwrap().acquisition_cost.as_ref()), 20.0);
    assert_eq!(units(conv.cac.as_ref()), 10.0);
    assert_eq!(s.retention.unwrap().repeat_purchase_rate, 0.5, "one of the two VIPs bought twice");
    let funnel = m
        .get_funnel(pb::GetFunnelRequest { scope: Some(vip.clone()), conversion_window: None })
        .await
        .unwrap()
        .into_inner()
        .funnel
        .unwrap();
    let reached: i64 = funnel.stages.iter().find(|st| st.stage_key == "conversion").map_or(0, |st| st.reached);
    assert_eq!(reached, 2);
    let cohorts = m
        .get_cohort_retention(pb::GetCohortRetentionRequest { scope: Some(vip.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cohorts.rows.iter().map(|r| r.cohort_size).sum::<i64>(), 2);
    let breakdown = m
        .get_lifecycle_breakdown(pb::GetLifecycleBreakdownRequest { scope: Some(vip.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(breakdown.periods.iter().map(|p| p.new).sum::<i64>(), 2);
    let channels = m
        .get_channel_metrics(pb::GetChannelMetricsRequest { scope: Some(vip.clone()), by_campaign: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(channels.channels.iter().map(|ch| ch.customers).sum::<i64>(), 2);
    let series = m
        .list_kpi_series(pb::ListKpiSeriesRequest {
            scope: Some(vip.clone()),
            kpi: pb::Kpi::NewCustomers as i32,
            granularity: pb::Granularity::Month as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(series.points.iter().map(|p| p.value).sum::<f64>(), 2.0);
    // A goal scoped to the segment is graded on its members only.
    m.create_goal(pb::CreateGoalRequest {
        goal: Some(pb::Goal {
            display_name: "VIP customers".into(),
            kpi: pb::Kpi::NewCustomers as i32,
            scope: Some(vip.clone()),
            target: 2.0,
            direction: pb::GoalDirection::AtLeast as i32,
            period: pb::Granularity::Month as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .unwrap();
    let card = m.get_scorecard(pb::GetScorecardRequest::default()).await.unwrap().into_inner();
    assert_eq!(card.goals.len(), 1);
    assert_eq!(card.goals[0].actual, 2.0);
    let err = m
        .create_goal(pb::CreateGoalRequest {
            goal: Some(pb::Goal {
                display_name: "bad".into(),
                kpi: pb::Kpi::NewCustomers as i32,
                scope: Some(pb::MetricsScope { segment_filter: "nope ==".into(), ..Default::default() }),
                target: 2.0,
                direction: pb::GoalDirection::AtLeast as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(clm_platform::error::field_violations(&err)[0].field, "goal.scope.segment_filter");
    // The same filter in another tenant selects none of acme's contacts.
    let Clients { m: mut other, .. } = env.clients("globex").await;
    let s = other
        .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(vip), lead_quality_threshold: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.conversion.unwrap().new_customers, 0);
    env.done().await;
}

/// A late, backdated purchase moves a contact's dormancy later: lifecycle retracts the old
/// dormant transition and metrics takes back what it counted for it.
async fn a_retracted_transition_is_uncounted(backend: Backend) {
    let Some(env) = Env::start(backend, "mtretract").await else { return };
    let Clients { mut c, mut l, mut m, .. } = env.clients("acme").await;
    let now = chrono::Utc::now().timestamp_micros();
    let day = 86_400_000_000;
    let id = contact(&mut c, "late@example.com", cpb::AcquisitionChannel::Email, None).await;
    let bought = |order: &str, days_ago: i64| lpb::JourneyEvent {
        contact_id: id.clone(),
        occur_time: Some(clm_platform::convert::timestamp(now - days_ago * day)),
        detail: Some(purchase(order, 10)),
        ..Default::default()
    };
    record_event(&mut l, bought("o-1", 200)).await;
    record_event(&mut l, bought("o-2", 199)).await;
    let year =
        pb::MetricsScope { start_time: Some(clm_platform::convert::timestamp(now - 365 * day)), ..Default::default() };
    let breakdown = async |m: &mut MetricsServiceClient<Ch>| {
        m.get_lifecycle_breakdown(pb::GetLifecycleBreakdownRequest {
            scope: Some(year.clone()),
            granularity: pb::Granularity::Day as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .periods
        .into_iter()
        .filter(|p| p.dormant != 0)
        .map(|p| (p.period_start_time.unwrap().seconds * 1_000_000, p.dormant))
        .collect::<Vec<_>>()
    };
    // Dormant 90 days after the last purchase.
    let first = wait_for("dormant after 90 idle days", async || {
        let d = breakdown(&mut m).await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(first.len(), 1);
    assert!((first[0].0 - (now - 109 * day)).abs() <= 2 * day, "{first:?}");
    // A purchase 150 days ago, recorded late: dormant from 60 days ago instead, counted once.
    record_event(&mut l, bought("o-3", 150)).await;
    let moved = wait_for("the dormancy moved", async || {
        let d = breakdown(&mut m).await;
        d.iter().any(|(t, _)| (t - (now - 60 * day)).abs() <= 2 * day).then_some(d)
    })
    .await;
    assert_eq!(moved.len(), 1, "the old dormancy is retracted: {moved:?}");
    assert_eq!(moved[0].1, 1);
    let s = m
        .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(year.clone()), lead_quality_threshold: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.retention.unwrap().dormant, 1);
    env.done().await;
}

/// Money as exact (units, nanos).
fn exact(m: Option<&Money>) -> (i64, i32) {
    m.map_or((0, 0), |m| (m.units, m.nanos))
}

async fn money_never_wraps_and_an_order_counts_once(backend: Backend) {
    let Some(env) = Env::start(backend, "mtmoney").await else { return };
    let Clients { mut c, mut l, mut m, .. } = env.clients("acme").await;
    use cpb::AcquisitionChannel as A;
    let a = contact(&mut c, "big-a@example.com", A::Direct, None).await;
    let b = contact(&mut c, "big-b@example.com", A::Direct, None).await;
    let max = Money { currency_code: "EUR".into(), units: 1_000_000_000_000, nanos: 999_999_000 };
    let sale = |who: &str, order: &str, days_ago: i64| lpb::JourneyEvent {
        contact_id: who.into(),
        occur_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() - days_ago * 86_400,
            nanos: 0,
        }),
        detail: Some(lpb::journey_event::Detail::Purchase(lpb::Purchase {
            order_id: order.into(),
            amount: Some(max.clone()),
            items: 1,
        })),
        ..Default::default()
    };
    // Two maximal purchases on one day: the exact sum.
    record_event(&mut l, sale(&a, "max-1", 1)).await;
    record_event(&mut l, sale(&b, "max-2", 1)).await;
    // The same order recorded again (a retry without a key, another record time) is the same
    // sale: lifecycle returns the first event and metrics counts it once.
    record_event(&mut l, sale(&a, "max-1", 1)).await;
    let revenue = wait_for("both purchases counted", async || {
        let s = m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.ok()?.into_inner();
        let conv = s.conversion?;
        (conv.new_customers == 2).then_some(conv)
    })
    .await;
    assert_eq!(exact(revenue.revenue.as_ref()), (2_000_000_000_001, 999_998_000), "{revenue:?}");
    assert_eq!(exact(revenue.average_deal_size.as_ref()), (1_000_000_000_000, 999_999_000));
    let retention = m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.unwrap().into_inner();
    let frequency = retention.retention.unwrap().purchase_frequency;
    assert!((frequency - 1.0).abs() < 1e-9, "one order each, not a repeat: {frequency}");
    // Eight more, on other days: 10^13 units in all, past what i64 µ-units can hold (9.2 ×
    // 10^12 units); read exactly, never wrapped, never an INTERNAL.
    for i in 0..8 {
        record_event(&mut l, sale(if i % 2 == 0 { &a } else { &b }, &format!("max-{}", i + 3), 2 + i)).await;
    }
    let revenue = wait_for("ten purchases counted", async || {
        let s = m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.ok()?.into_inner();
        let r = s.conversion?.revenue?;
        (r.units >= 10_000_000_000_000).then_some(r)
    })
    .await;
    assert_eq!(exact(Some(&revenue)), (10_000_000_000_009, 999_990_000));
    let value = m
        .get_customer_value(pb::GetCustomerValueRequest { contact_id: a.clone() })
        .await
        .unwrap()
        .into_inner()
        .customer_value
        .unwrap();
    assert_eq!(value.orders, 5);
    assert_eq!(exact(value.historical_revenue.as_ref()), (5_000_000_000_004, 999_995_000));
    let channels = m.get_channel_metrics(pb::GetChannelMetricsRequest::default()).await.unwrap().into_inner();
    let direct = channels.channels.iter().find(|ch| ch.channel == "direct").unwrap();
    assert_eq!(exact(direct.revenue.as_ref()), exact(Some(&revenue)));
    env.done().await;
}

async fn bad_times_and_reused_request_ids_are_refused(backend: Backend) {
    let Some(env) = Env::start(backend, "mtbad").await else { return };
    let Clients { mut m, .. } = env.clients("acme").await;
    let year_10000 = prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 };
    let year_0 = prost_types::Timestamp { seconds: -62_135_596_801, nanos: 0 };
    let fields = |s: tonic::Status| -> Vec<String> {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        testing::violated_fields(&s)
    };
    for (scope, field) in [
        (pb::MetricsScope { end_time: Some(year_10000), ..Default::default() }, "scope.end_time"),
        (pb::MetricsScope { start_time: Some(year_0), ..Default::default() }, "scope.start_time"),
        (
            pb::MetricsScope { start_time: Some(year_0), end_time: Some(year_10000), ..Default::default() },
            "scope.end_time",
        ),
    ] {
        let err = m
            .get_stage_metrics(pb::GetStageMetricsRequest { scope: Some(scope.clone()), lead_quality_threshold: 0 })
            .await
            .unwrap_err();
        assert_eq!(fields(err)[0], field);
        let err = m
            .list_kpi_series(pb::ListKpiSeriesRequest {
                kpi: pb::Kpi::Revenue as i32,
                scope: Some(scope),
                granularity: pb::Granularity::Month as i32,
            })
            .await
            .unwrap_err();
        assert_eq!(fields(err)[0], field);
    }
    let err = m.get_scorecard(pb::GetScorecardRequest { as_of_time: Some(year_10000) }).await.unwrap_err();
    assert_eq!(fields(err), vec!["as_of_time"]);
    m.get_stage_metrics(pb::GetStageMetricsRequest::default()).await.unwrap();

    let rid = uuid::Uuid::new_v4().to_string();
    let goal = |target: f64| pb::CreateGoalRequest {
        goal: Some(pb::Goal {
            display_name: "Customers".into(),
            kpi: pb::Kpi::NewCustomers as i32,
            target,
            direction: pb::GoalDirection::AtLeast as i32,
            period: pb::Granularity::Month as i32,
            ..Default::default()
        }),
        request_id: rid.clone(),
    };
    let g1 = m.create_goal(goal(10.0)).await.unwrap().into_inner().goal.unwrap();
    assert_eq!(m.create_goal(goal(10.0)).await.unwrap().into_inner().goal.unwrap().id, g1.id);
    let err = m.create_goal(goal(20.0)).await.unwrap_err();
    assert!(err.message().contains("different request"), "{err:?}");
    assert_eq!(fields(err), vec!["request_id"]);
    assert_eq!(m.list_goals(pb::ListGoalsRequest::default()).await.unwrap().into_inner().goals.len(), 1);
    env.done().await;
}

/// A contact acquired on no channel counts under "unknown" — with the contacts not heard of
/// yet, in the channel table and under a scope's channel filter alike (any case).
async fn a_contact_without_a_channel_counts_under_unknown(backend: Backend) {
    let Some(env) = Env::start(backend, "mtunk").await else { return };
    let Clients { mut c, mut l, mut m, .. } = env.clients("acme").await;
    use cpb::AcquisitionChannel as A;
    let none = contact(&mut c, "none@example.com", A::Unspecified, None).await;
    let paid = contact(&mut c, "paid@example.com", A::PaidSearch, None).await;
    for id in [&none, &paid] {
        record(&mut l, id, touch(lpb::TouchpointKind::FormSubmitted)).await;
    }
    let channels = wait_for("both leads counted", async || {
        let ch = m.get_channel_metrics(pb::GetChannelMetricsRequest::default()).await.ok()?.into_inner().channels;
        (ch.iter().map(|c| c.leads).sum::<i64>() == 2).then_some(ch)
    })
    .await;
    let mut names: Vec<(&str, i64, i64)> =
        channels.iter().map(|c| (c.channel.as_str(), c.new_contacts, c.leads)).collect();
    names.sort_unstable();
    assert_eq!(names, [("paid_search", 1, 1), ("unknown", 1, 1)], "no channel of its own for \"\"");
    for filter in ["unknown", " Unknown "] {
        let scoped = m
            .get_stage_metrics(pb::GetStageMetricsRequest {
                scope: Some(pb::MetricsScope { channel: filter.into(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let acq = scoped.acquisition.unwrap();
        assert_eq!((acq.new_contacts, acq.leads), (1, 1), "scope.channel {filter:?}");
    }
    env.done().await;
}

clm_testkit::backend_tests!(
    a_contact_without_a_channel_counts_under_unknown,
    a_models_churn_setting_reaches_metrics_by_itself,
    a_retracted_transition_is_uncounted,
    a_segment_filter_narrows_every_kpi,
    every_kpi_from_the_event_stream_and_a_replay_agrees,
    retention_and_loyalty_kpis_follow_the_journeys,
    watch_streams_changes_and_bad_input_is_named,
    money_never_wraps_and_an_order_counts_once,
    bad_times_and_reused_request_ids_are_refused,
);
