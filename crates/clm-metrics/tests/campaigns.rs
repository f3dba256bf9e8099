//! Conversion by campaign (GetCampaignMetrics) over real gRPC, on SQLite and PostgreSQL: the
//! figures of two campaigns fed as lifecycle publishes them — enrolments in and out of the
//! range, an end before its beginning, redeliveries, converted and not, purchases before and
//! after conversion, a merge and an erasure — against a hand computation; and a real campaign
//! of lifecycle, enrolled and converted by stage transitions, read back from metrics.

use std::time::Duration;

use clm_contacts::ContactsService;
use clm_lifecycle::LifecycleService;
use clm_metrics::MetricsService;
use clm_platform::convert::timestamp;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::events::v1 as ev;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_proto::metrics::v1 as pb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use clm_testkit::{self as testing, Backend, BearerInterceptor, Services, TestDb, violated_fields};
use ev::event_envelope::Payload;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Ch = InterceptedService<Channel, BearerInterceptor>;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
const A: &str = "0193a5a0-0000-7000-8000-00000000000a";
const B: &str = "0193a5a0-0000-7000-8000-00000000000b";
const NONE: &str = "0193a5a0-0000-7000-8000-00000000000c";

/// The range of the fixture: 30 days from `S`.
const S: i64 = 20_000 * DAY;

#[allow(clippy::too_many_arguments)]
fn enrolment(
    campaign: &str,
    name: &str,
    id: &str,
    contact: &str,
    state: &str,
    converted: bool,
    enrol: i64,
    finish: Option<i64>,
) -> Payload {
    Payload::CampaignEnrolmentChanged(ev::CampaignEnrolmentChanged {
        campaign_id: campaign.into(),
        campaign_name: name.into(),
        enrolment_id: id.into(),
        contact_id: contact.into(),
        state: state.into(),
        converted,
        step_key: "s".into(),
        exit_reason: String::new(),
        enrol_time: Some(timestamp(enrol)),
        finish_time: finish.map(timestamp),
    })
}

fn contact(id: &str, channel: &str) -> Payload {
    Payload::ContactCreated(ev::ContactCreated {
        contact_id: id.into(),
        facts: Some(ev::ContactFacts { acquisition_channel: channel.into(), ..Default::default() }),
        create_time: Some(timestamp(S - 100 * DAY)),
    })
}

fn purchase(contact: &str, id: &str, at: i64, units: i64, currency: &str) -> Payload {
    Payload::JourneyEventRecorded(ev::JourneyEventRecorded {
        contact_id: contact.into(),
        journey_event_id: id.into(),
        kind: ev::JourneyEventKind::Purchase as i32,
        order_id: format!("order-{id}"),
        amount: Some(Money { currency_code: currency.into(), units, nanos: 0 }),
        occur_time: Some(timestamp(at)),
        ..Default::default()
    })
}

async fn publish(settings: &clm_platform::Settings, events: Vec<(&str, &str, Payload)>) {
    for (producer, about, p) in events {
        testing::publish_event(settings, producer, "acme", "test", about, p).await;
    }
}

fn scope(channel: &str) -> Option<pb::MetricsScope> {
    Some(pb::MetricsScope {
        start_time: Some(timestamp(S)),
        end_time: Some(timestamp(S + 30 * DAY)),
        channel: channel.into(),
        ..Default::default()
    })
}

async fn campaigns(m: &mut MetricsServiceClient<Ch>, channel: &str, ids: &[&str]) -> Vec<pb::CampaignMetrics> {
    m.get_campaign_metrics(pb::GetCampaignMetricsRequest {
        scope: scope(channel),
        campaign_ids: ids.iter().map(|&s| s.to_owned()).collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .campaigns
}

fn money(units: i64, currency: &str) -> Money {
    Money { currency_code: currency.into(), units, nanos: 0 }
}

fn days(d: i64) -> Option<prost_types::Duration> {
    Some(clm_platform::convert::duration(d))
}

fn row(
    id: &str,
    name: &str,
    (enrolled, converted, completed, exited, active): (i64, i64, i64, i64, i64),
    median: Option<i64>,
    revenue: Vec<Money>,
) -> pb::CampaignMetrics {
    pb::CampaignMetrics {
        campaign_id: id.into(),
        campaign_name: name.into(),
        enrolled,
        converted,
        conversion_rate: if enrolled == 0 { 0.0 } else { converted as f64 / enrolled as f64 },
        completed,
        exited,
        active,
        median_time_to_convert: median.and_then(days),
        revenue_after_conversion: revenue,
    }
}

/// Wait until GetCampaignMetrics answers `want` (events arrive asynchronously); then compare.
async fn expect(m: &mut MetricsServiceClient<Ch>, channel: &str, ids: &[&str], want: &[pb::CampaignMetrics]) {
    let mut got = Vec::new();
    for _ in 0..300 {
        got = campaigns(m, channel, ids).await;
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, want, "channel {channel:?}, campaigns {ids:?}");
}

async fn campaign_figures_equal_their_hand_computation(backend: Backend) {
    let Some(db) = TestDb::create(backend, "mcamp").await else { return };
    let settings = testing::settings(&[("CLM_METRICS__DATABASE_URL", &db.url)]);
    let server = Services::new(settings.clone()).await.with::<MetricsService>().await.serve().await;
    let mut m = MetricsServiceClient::new(server.authed(&testing::token("acme", "clm.admin")).await);
    let d = |n: i64| S + n * DAY;
    let l = "lifecycle";
    let mut setup = vec![
        ("contacts", "p1", contact("p1", "web")),
        ("contacts", "p2", contact("p2", "web")),
        ("contacts", "p3", contact("p3", "web")),
        ("contacts", "p4", contact("p4", "paid_search")),
        ("contacts", "p5", contact("p5", "paid_search")),
        ("contacts", "p6", contact("p6", "")),
        ("contacts", "p7", contact("p7", "web")),
    ];
    // Ends first: e1 (converted after 2 days, delivered twice), e8 (converted after 6 hours;
    // its beginning never comes), e6 (exited after the range, unconverted; the campaign's
    // latest name).
    let e1_end = enrolment(A, "Welcome", "e1", "p1", "exited", true, d(1), Some(d(3)));
    setup.extend([
        (l, "p1", e1_end.clone()),
        (l, "p1", e1_end.clone()),
        (l, "p4", enrolment(B, "Winback", "e8", "p4", "exited", true, d(10), Some(d(10) + 6 * HOUR))),
        (l, "p6", enrolment(A, "Welcome v2", "e6", "p6", "exited", false, d(29), Some(d(40)))),
    ]);
    publish(&settings, setup).await;
    expect(
        &mut m,
        "",
        &[],
        &[
            row(A, "Welcome v2", (2, 1, 0, 2, 0), Some(2 * DAY), vec![]),
            row(B, "Winback", (1, 1, 0, 1, 0), Some(6 * HOUR), vec![]),
        ],
    )
    .await;
    // Then the beginnings (late: they change nothing of an ended enrolment), the rest, the
    // purchases, a merge (p2 into p7: p7's purchases count for p2's conversion) and an erasure
    // (p3's enrolment still counts).
    publish(
        &settings,
        vec![
            (l, "p1", enrolment(A, "Welcome", "e1", "p1", "active", false, d(1), None)),
            (l, "p6", enrolment(A, "Welcome", "e6", "p6", "active", false, d(29), None)),
            (l, "p2", enrolment(A, "Welcome", "e2", "p2", "active", false, d(2), None)),
            (l, "p2", enrolment(A, "Welcome", "e2", "p2", "exited", true, d(2), Some(d(12)))),
            (l, "p3", enrolment(A, "Welcome", "e3", "p3", "active", false, d(5), None)),
            (l, "p3", enrolment(A, "Welcome", "e3", "p3", "completed", false, d(5), Some(d(9)))),
            (l, "p4", enrolment(A, "Welcome", "e4", "p4", "active", false, d(6), None)),
            (l, "p4", enrolment(A, "Welcome", "e4", "p4", "active", false, d(6), None)),
            // Enrolled before the range (converted in it) and after it: not counted.
            (l, "p5", enrolment(A, "Welcome", "e5", "p5", "active", false, d(-5), None)),
            (l, "p5", enrolment(A, "Welcome", "e5", "p5", "exited", true, d(-5), Some(d(1)))),
            (l, "p1", enrolment(A, "Welcome", "e7", "p1", "active", false, d(31), None)),
            (l, "p5", enrolment(B, "Winback", "e9", "p5", "active", false, d(11), None)),
            // p1 converted in A at day 3: 10 EUR before, 20 EUR and 7 USD after.
            (l, "p1", purchase("p1", "q1", d(2), 10, "EUR")),
            (l, "p1", purchase("p1", "q2", d(4), 20, "EUR")),
            (l, "p1", purchase("p1", "q3", d(5), 7, "USD")),
            // p2 converted in A at day 12: 1 EUR before, 40 EUR after, 100 EUR after the range.
            (l, "p2", purchase("p2", "q4", d(11), 1, "EUR")),
            (l, "p2", purchase("p2", "q5", d(13), 40, "EUR")),
            (l, "p2", purchase("p2", "q6", d(35), 100, "EUR")),
            // p3 did not convert; p5 converted in an enrolment of before the range.
            (l, "p3", purchase("p3", "q7", d(10), 50, "EUR")),
            (l, "p5", purchase("p5", "q8", d(2), 9, "EUR")),
            // p4 converted in B at day 10 + 6 h.
            (l, "p4", purchase("p4", "q9", d(10) + 12 * HOUR, 30, "EUR")),
            (
                "contacts",
                "p7",
                Payload::ContactMerged(ev::ContactMerged {
                    survivor_id: "p7".into(),
                    merged_ids: vec!["p2".into()],
                    facts: Some(ev::ContactFacts { acquisition_channel: "web".into(), ..Default::default() }),
                }),
            ),
            (l, "p7", purchase("p7", "q10", d(14), 5, "EUR")),
            ("contacts", "p3", Payload::ContactErased(ev::ContactErased { contact_id: "p3".into(), erase_time: None })),
            // Redelivered end of e2, after all.
            (l, "p2", enrolment(A, "Welcome", "e2", "p2", "exited", true, d(2), Some(d(12)))),
        ],
    )
    .await;
    // A: e1, e2, e3, e4, e6 began in the range; e1 and e2 converted (2 and 10 days: median 6),
    // e3 completed, e1, e2 and e6 exited, e4 active; revenue 20 + 40 + 5 EUR, 7 USD.
    // B: e8 (converted, 6 h) and e9 (active); revenue 30 EUR.
    let a = row(A, "Welcome v2", (5, 2, 1, 3, 1), Some(6 * DAY), vec![money(65, "EUR"), money(7, "USD")]);
    let b = row(B, "Winback", (2, 1, 0, 1, 1), Some(6 * HOUR), vec![money(30, "EUR")]);
    expect(&mut m, "", &[], &[a.clone(), b.clone()]).await;
    for r in campaigns(&mut m, "", &[]).await {
        assert!((0.0..=1.0).contains(&r.conversion_rate), "{r:?}");
    }
    assert!((a.conversion_rate - 0.4).abs() < 1e-12 && (b.conversion_rate - 0.5).abs() < 1e-12);
    // The acquisition channel of the enrolled contacts: paid_search is p4 and p5.
    let paid = [
        row(A, "Welcome v2", (1, 0, 0, 0, 1), None, vec![]),
        row(B, "Winback", (2, 1, 0, 1, 1), Some(6 * HOUR), vec![money(30, "EUR")]),
    ];
    expect(&mut m, "Paid_Search", &[], &paid).await;
    // Campaigns asked for by id; one without enrolments gets zeros.
    expect(&mut m, "", &[B, NONE], &[row(NONE, "", (0, 0, 0, 0, 0), None, vec![]), b.clone()]).await;

    // Bad input names its field.
    let err = m
        .get_campaign_metrics(pb::GetCampaignMetricsRequest {
            scope: Some(pb::MetricsScope {
                start_time: Some(timestamp(S)),
                end_time: Some(timestamp(S - DAY)),
                ..Default::default()
            }),
            campaign_ids: vec![A.into(), "nope".into(), String::new()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["scope.end_time", "campaign_ids[1]", "campaign_ids[2]"]);
    let err = m
        .get_campaign_metrics(pb::GetCampaignMetricsRequest {
            scope: None,
            campaign_ids: (0..101).map(|_| A.to_owned()).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["campaign_ids"]);
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// Lifecycle, contacts and metrics in one process: a campaign enrols a contact entering
/// acquisition and ends, converted, when it enters conversion; metrics shows it.
async fn a_real_campaign_shows_its_conversion(backend: Backend) {
    let mut dbs = Vec::new();
    for s in ["c", "l", "m"] {
        let Some(db) = TestDb::create(backend, &format!("mcampe2e{s}")).await else { return };
        dbs.push(db);
    }
    let settings = testing::settings(&[
        ("CLM_CONTACTS__DATABASE_URL", &dbs[0].url),
        ("CLM_LIFECYCLE__DATABASE_URL", &dbs[1].url),
        ("CLM_METRICS__DATABASE_URL", &dbs[2].url),
        ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
    ]);
    let server = Services::new(settings)
        .await
        .with::<ContactsService>()
        .await
        .with::<LifecycleService>()
        .await
        .with::<MetricsService>()
        .await
        .serve()
        .await;
    let ch = server.authed(&testing::token("acme", "clm.admin")).await;
    let mut c = ContactsServiceClient::new(ch.clone());
    let mut l = LifecycleServiceClient::new(ch.clone());
    let mut m = MetricsServiceClient::new(ch);
    use lpb::campaign_step::Kind;
    let campaign = l
        .create_campaign(lpb::CreateCampaignRequest {
            campaign: Some(lpb::Campaign {
                display_name: "Onboarding".into(),
                status: lpb::CampaignStatus::Active as i32,
                trigger: Some(lpb::Trigger { kind: Some(lpb::trigger::Kind::StageEntered("acquisition".into())) }),
                steps: vec![lpb::CampaignStep {
                    key: "wait".into(),
                    kind: Some(Kind::Wait(lpb::WaitStep {
                        duration: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
                        ..Default::default()
                    })),
                    next: String::new(),
                }],
                exit_rules: vec![lpb::ExitRule {
                    kind: Some(lpb::exit_rule::Kind::EnteredStage("conversion".into())),
                    converted: true,
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    let id = c
        .create_contact(cpb::CreateContactRequest {
            contact: Some(cpb::Contact {
                email: "ana@example.com".into(),
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
    let enter = async |l: &mut LifecycleServiceClient<Ch>, stage: &str| {
        // Lifecycle hears of a contact just created through its events.
        testing::wait_for(&format!("{id} into {stage}"), async || {
            l.transition_stage(lpb::TransitionStageRequest {
                contact_id: id.clone(),
                to_stage: stage.into(),
                reason: "test".into(),
                ..Default::default()
            })
            .await
            .ok()
        })
        .await;
    };
    let get = async |m: &mut MetricsServiceClient<Ch>| {
        m.get_campaign_metrics(pb::GetCampaignMetricsRequest::default()).await.unwrap().into_inner().campaigns
    };
    enter(&mut l, "acquisition").await;
    let enrolled = testing::wait_for("the enrolment in metrics", async || {
        get(&mut m).await.into_iter().find(|r| r.campaign_id == campaign.id && r.active == 1)
    })
    .await;
    assert_eq!((enrolled.campaign_name.as_str(), enrolled.enrolled, enrolled.converted), ("Onboarding", 1, 0));
    enter(&mut l, "conversion").await;
    let done = testing::wait_for("the conversion in metrics", async || {
        get(&mut m).await.into_iter().find(|r| r.campaign_id == campaign.id && r.converted == 1)
    })
    .await;
    assert_eq!((done.enrolled, done.converted, done.exited, done.active, done.completed), (1, 1, 1, 0, 0), "{done:?}");
    assert!((done.conversion_rate - 1.0).abs() < 1e-12);
    assert!(done.median_time_to_convert.is_some());
    // A purchase after the conversion is its revenue.
    l.record_journey_event(lpb::RecordJourneyEventRequest {
        event: Some(lpb::JourneyEvent {
            contact_id: id.clone(),
            detail: Some(lpb::journey_event::Detail::Purchase(lpb::Purchase {
                order_id: "o-1".into(),
                amount: Some(money(40, "EUR")),
                items: 1,
            })),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    testing::wait_for("the revenue after conversion", async || {
        let rows = get(&mut m).await;
        rows.iter().any(|r| r.revenue_after_conversion == [money(40, "EUR")]).then_some(())
    })
    .await;
    // A segment: the contacts service answers its members.
    let of_segment = async |m: &mut MetricsServiceClient<Ch>, filter: &str| {
        let scope = pb::MetricsScope { segment_filter: filter.into(), ..Default::default() };
        let req = pb::GetCampaignMetricsRequest { scope: Some(scope), campaign_ids: vec![] };
        m.get_campaign_metrics(req).await.unwrap().into_inner().campaigns
    };
    let vip = of_segment(&mut m, r#"tags:"vip""#).await;
    assert_eq!(vip.iter().map(|r| (r.enrolled, r.converted)).collect::<Vec<_>>(), [(1, 1)]);
    assert!(of_segment(&mut m, r#"tags:"nobody""#).await.is_empty());
    server.stop().await.unwrap();
    for db in dbs {
        db.cleanup().await;
    }
}

clm_testkit::backend_tests!(campaign_figures_equal_their_hand_computation, a_real_campaign_shows_its_conversion);
