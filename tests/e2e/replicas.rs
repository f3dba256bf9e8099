//! Replicas as deployed: the distributed mode (a process per service, PostgreSQL per service,
//! NATS JetStream) with three replicas each of lifecycle and metrics sharing their durable
//! consumers, fed 200 contacts' journeys, purchases and survey answers by concurrent clients
//! spread over the replicas, one replica of each killed with kill -9 and restarted midway,
//! ends in exactly the state one replica of each reaches from the same input: every journey,
//! every contact's orders and revenue, the funnel, stage and channel metrics. A watcher on one
//! lifecycle replica sees every stage change, whichever replica (or consumed survey answer)
//! made it.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::feedback::v1 as fpb;
use clm_proto::feedback::v1::feedback_service_client::FeedbackServiceClient;
use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_proto::metrics::v1 as mpb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use support::{ClmProcess, NatsServer, PrivatePostgres};
use tonic::transport::Channel;

const DAY: i64 = 86_400_000_000;

fn contacts_count() -> usize {
    std::env::var("CLM_TEST_REPLICA_CONTACTS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

fn ts(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn eur(units: i64) -> Money {
    Money { currency_code: "EUR".into(), units, nanos: 0 }
}

/// One environment: its own databases, its own subjects and streams on the shared NATS.
struct Cluster {
    env: Vec<(String, String)>,
    ports: BTreeMap<(&'static str, usize), u16>,
}

impl Cluster {
    fn new(pg: &PrivatePostgres, nats: &NatsServer, tag: &str, replicas: usize) -> Self {
        let mut ports = BTreeMap::new();
        for svc in ["contacts", "feedback"] {
            ports.insert((svc, 0), clm_testkit::free_port());
        }
        for svc in ["lifecycle", "metrics"] {
            for r in 0..replicas {
                ports.insert((svc, r), clm_testkit::free_port());
            }
        }
        let mut env: Vec<(String, String)> = vec![
            ("CLM_TELEMETRY__LOG_FILTER".into(), "info".into()),
            ("CLM_EVENTS__TRANSPORT".into(), "nats".into()),
            ("CLM_EVENTS__NATS_URL".into(), nats.url()),
            ("CLM_EVENTS__NATS_NAMESPACE".into(), tag.into()),
            ("CLM_EVENTS__STREAM_PREFIX".into(), tag.to_uppercase()),
        ];
        for svc in ["contacts", "lifecycle", "feedback", "metrics"] {
            let db = format!("{tag}_{svc}");
            pg.create_database(&db);
            env.push((format!("CLM_{}__DATABASE_URL", svc.to_uppercase()), pg.database_url(&db)));
            if svc != "contacts" {
                env.push((
                    format!("CLM_{}__CONTACTS_URL", svc.to_uppercase()),
                    format!("http://127.0.0.1:{}", ports[&("contacts", 0)]),
                ));
            }
        }
        Self { env, ports }
    }

    fn start(&self, svc: &'static str, replica: usize) -> ClmProcess {
        let mut env = self.env.clone();
        env.push(("CLM_SERVER__LISTEN_ADDR".into(), format!("127.0.0.1:{}", self.ports[&(svc, replica)])));
        ClmProcess::start_bin(&format!("clm-{svc}"), &env)
    }

    fn channel(&self, svc: &'static str, replica: usize) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.ports[&(svc, replica)])).unwrap().connect_lazy()
    }
}

/// Clients of every replica of a service; each call goes to the next (as a Service spreads
/// them), and a call that fails for want of a replica goes to the next one.
#[derive(Clone)]
struct Spread {
    channels: Vec<Channel>,
    next: Arc<AtomicUsize>,
}

impl Spread {
    fn pick(&self) -> Channel {
        self.channels[self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len()].clone()
    }
}

/// Retry `call` on the next replica until it succeeds (a killed replica refuses connections,
/// a call it had in flight fails); every retried write is idempotent.
async fn retry<T, F, Fut>(spread: &Spread, what: &str, call: F) -> T
where
    F: Fn(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), call(spread.pick())).await {
            Ok(Ok(v)) => return v,
            Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => panic!("{what}: {s:?}"),
            Ok(Err(s)) => {
                assert!(start.elapsed() < Duration::from_secs(90), "{what} kept failing: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                assert!(start.elapsed() < Duration::from_secs(90), "{what} kept timing out");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn event(contact: &str, at: i64, detail: lpb::journey_event::Detail) -> lpb::JourneyEvent {
    lpb::JourneyEvent {
        contact_id: contact.into(),
        occur_time: Some(ts(at)),
        detail: Some(detail),
        ..Default::default()
    }
}

fn touch(kind: lpb::TouchpointKind) -> lpb::journey_event::Detail {
    lpb::journey_event::Detail::Touchpoint(lpb::Touchpoint {
        channel: lpb::TouchpointChannel::Web as i32,
        kind: kind as i32,
        detail: String::new(),
    })
}

const CHANNELS: [(cpb::AcquisitionChannel, &str); 3] = [
    (cpb::AcquisitionChannel::PaidSearch, "paid_search"),
    (cpb::AcquisitionChannel::Social, "social"),
    (cpb::AcquisitionChannel::Referral, "referral"),
];

/// What the workload makes of each (channel, campaign): contacts, leads (every contact signs
/// up), customers and revenue.
fn expected_channels(n: usize) -> BTreeMap<(String, String), (i64, i64, i64, i64)> {
    let mut out: BTreeMap<(String, String), (i64, i64, i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let e = out.entry((CHANNELS[i % 3].1.to_owned(), format!("camp-{}", i % 2))).or_default();
        e.0 += 1;
        e.1 += 1;
        e.2 += i64::from(orders_of(i) > 0);
        e.3 += (0..orders_of(i)).map(|k| 100 + i as i64 + 50 * k as i64).sum::<i64>();
    }
    out
}

/// How many purchases contact `i` makes.
fn orders_of(i: usize) -> usize {
    i % 4
}

/// One contact's life, in order: created, a visit, a sign-up, its purchases (backdated, in time
/// order), a referral now and then, and for every third contact an NPS answer.
async fn live(i: usize, base: i64, contacts: &Spread, lifecycle: &Spread, feedback: &Spread, survey: &str) -> String {
    let channels =
        [cpb::AcquisitionChannel::PaidSearch, cpb::AcquisitionChannel::Social, cpb::AcquisitionChannel::Referral];
    let contact = cpb::Contact {
        email: format!("c{i}@replicas.test"),
        acquisition: Some(cpb::Acquisition {
            channel: channels[i % 3] as i32,
            campaign: format!("camp-{}", i % 2),
            cost: Some(eur(10 + (i % 5) as i64)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let id = retry(contacts, "CreateContact", |ch| {
        let (contact, request_id) = (contact.clone(), request_id.clone());
        async move {
            let req = cpb::CreateContactRequest { contact: Some(contact), request_id };
            Ok(ContactsServiceClient::new(ch).create_contact(req).await?.into_inner().contact.unwrap().id)
        }
    })
    .await;
    let t0 = base + i as i64 * 60_000_000;
    let mut events = vec![
        event(&id, t0, touch(lpb::TouchpointKind::Visit)),
        event(&id, t0 + DAY / 2, touch(lpb::TouchpointKind::FormSubmitted)),
    ];
    for k in 0..orders_of(i) {
        events.push(event(
            &id,
            t0 + (2 + 3 * k as i64) * DAY,
            lpb::journey_event::Detail::Purchase(lpb::Purchase {
                order_id: format!("o-{i}-{k}"),
                amount: Some(eur(100 + i as i64 + 50 * k as i64)),
                items: 1 + k as i32,
            }),
        ));
    }
    if orders_of(i) > 0 && i.is_multiple_of(7) {
        events.push(event(&id, t0 + 12 * DAY, lpb::journey_event::Detail::Referral(lpb::Referral::default())));
    }
    for (n, e) in events.into_iter().enumerate() {
        retry(lifecycle, "RecordJourneyEvent", |ch| {
            let req = lpb::RecordJourneyEventRequest {
                model_id: String::new(),
                event: Some(e.clone()),
                idempotency_key: format!("e-{i}-{n}"),
            };
            async move { LifecycleServiceClient::new(ch).record_journey_event(req).await.map(|_| ()) }
        })
        .await;
    }
    if i.is_multiple_of(3) {
        retry(feedback, "SubmitResponse", |ch| {
            let req = fpb::SubmitResponseRequest {
                target: Some(fpb::submit_response_request::Target::InApp(fpb::InAppTarget {
                    survey_id: survey.into(),
                    contact_id: id.clone(),
                })),
                answers: vec![fpb::Answer {
                    question_id: "score".into(),
                    value: Some(fpb::answer::Value::Rating((i % 11) as i32)),
                }],
                response_id: String::new(),
                complete: true,
            };
            async move {
                match FeedbackServiceClient::new(ch).submit_response(req).await {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(s) => Err(s),
                }
            }
        })
        .await;
    }
    id
}

/// What a run ends with, free of ids and of what depends on when the run happened: contact and
/// model ids, the time of transitions the survey answers caused (answered "now"), predicted
/// value (it grows with tenure) and the time into loyalty.
#[derive(Debug, PartialEq)]
struct Outcome {
    journeys: Vec<String>,
    values: Vec<mpb::CustomerValue>,
    funnel: Option<mpb::Funnel>,
    stage: mpb::GetStageMetricsResponse,
    channels: mpb::GetChannelMetricsResponse,
}

async fn read_outcome(
    ids: &[String],
    lifecycle: Channel,
    metrics: Channel,
    scope: &mpb::MetricsScope,
    run_start: i64,
) -> Outcome {
    let mut l = LifecycleServiceClient::new(lifecycle);
    let mut m = MetricsServiceClient::new(metrics);
    let mut journeys = Vec::new();
    let mut values = Vec::new();
    for id in ids {
        let j = l
            .get_journey(lpb::GetJourneyRequest { contact_id: id.clone(), model_id: String::new() })
            .await
            .unwrap()
            .into_inner()
            .journey
            .unwrap();
        let steps: Vec<String> = j
            .transitions
            .iter()
            .map(|t| {
                let at = t.transition_time.as_ref().map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
                let at = if at >= run_start { "during the run".to_owned() } else { at.to_string() };
                format!("{}→{} {:?} at {at} re={}", t.from_stage, t.to_stage, t.cause, t.reactivation)
            })
            .collect();
        journeys.push(format!("{} [{}]", j.current_stage, steps.join(", ")));
        // Not heard of yet: not counted yet.
        let mut v = match m.get_customer_value(mpb::GetCustomerValueRequest { contact_id: id.clone() }).await {
            Ok(r) => r.into_inner().customer_value.unwrap(),
            Err(s) if s.code() == tonic::Code::NotFound => mpb::CustomerValue { orders: -1, ..Default::default() },
            Err(s) => panic!("GetCustomerValue: {s:?}"),
        };
        v.contact_id.clear();
        v.predicted_clv = None;
        values.push(v);
    }
    let s = Some(scope.clone());
    let mut funnel = m
        .get_funnel(mpb::GetFunnelRequest { scope: s.clone(), conversion_window: None })
        .await
        .unwrap()
        .into_inner()
        .funnel;
    for st in funnel.iter_mut().flat_map(|f| f.stages.iter_mut()).filter(|st| st.stage_key == "loyalty") {
        st.median_time_from_previous = None;
        st.p90_time_from_previous = None;
    }
    let mut stage = m
        .get_stage_metrics(mpb::GetStageMetricsRequest { scope: s.clone(), lead_quality_threshold: 0 })
        .await
        .unwrap()
        .into_inner();
    if let Some(l) = stage.loyalty.as_mut() {
        l.predicted_clv = None;
        l.clv_to_cac_ratio = 0.0;
    }
    let channels = m
        .get_channel_metrics(mpb::GetChannelMetricsRequest { scope: s, by_campaign: true })
        .await
        .unwrap()
        .into_inner();
    Outcome { journeys, values, funnel, stage, channels }
}

/// Run the workload on a cluster with `replicas` of lifecycle and metrics; with `kill`, one
/// replica of each is killed with kill -9 a third of the way in and restarted.
async fn run(pg: &PrivatePostgres, nats: &NatsServer, tag: &str, replicas: usize, kill: bool, base: i64) -> Outcome {
    let run_start = chrono::Utc::now().timestamp_micros();
    let cluster = Cluster::new(pg, nats, tag, replicas);
    let _contacts = cluster.start("contacts", 0);
    let _feedback = cluster.start("feedback", 0);
    let mut lifecycles: Vec<ClmProcess> = (0..replicas).map(|r| cluster.start("lifecycle", r)).collect();
    let mut metricses: Vec<ClmProcess> = (0..replicas).map(|r| cluster.start("metrics", r)).collect();
    let spread = |svc: &'static str, n: usize| Spread {
        channels: (0..n).map(|r| cluster.channel(svc, r)).collect(),
        next: Arc::default(),
    };
    let (contacts, feedback, lifecycle, metrics) =
        (spread("contacts", 1), spread("feedback", 1), spread("lifecycle", replicas), spread("metrics", replicas));
    let request_id = uuid::Uuid::new_v4().to_string();
    let survey = retry(&feedback, "CreateSurvey", |ch| {
        let request_id = request_id.clone();
        async move {
            let req = fpb::CreateSurveyRequest {
                survey: Some(fpb::Survey {
                    display_name: "Relationship NPS".into(),
                    kind: fpb::SurveyKind::Nps as i32,
                    status: fpb::SurveyStatus::Active as i32,
                    ..Default::default()
                }),
                request_id,
            };
            Ok(FeedbackServiceClient::new(ch).create_survey(req).await?.into_inner().survey.unwrap().id)
        }
    })
    .await;

    // A watcher on the first lifecycle replica (never killed), from before the first change.
    let watched = Arc::new(AtomicUsize::new(0));
    let mut watch = retry(&spread("lifecycle", 1), "WatchStageChanges", |ch| async move {
        Ok(LifecycleServiceClient::new(ch)
            .watch_stage_changes(lpb::WatchStageChangesRequest { model_id: String::new(), to_stages: vec![] })
            .await?
            .into_inner())
    })
    .await;
    let counter = watched.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(_)) = watch.message().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    // Contacts in a shuffled order, eight at a time; each contact's own steps in order.
    let n = contacts_count();
    let mut order: Vec<usize> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
    let queue = Arc::new(std::sync::Mutex::new(order));
    let done = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); n]));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (queue, done, ids) = (queue.clone(), done.clone(), ids.clone());
        let (contacts, lifecycle, feedback, survey) =
            (contacts.clone(), lifecycle.clone(), feedback.clone(), survey.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(i) = queue.lock().unwrap().pop() else { return };
                let id = live(i, base, &contacts, &lifecycle, &feedback, &survey).await;
                ids.lock().unwrap()[i] = id;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    if kill {
        while done.load(Ordering::SeqCst) < n / 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for p in [&mut lifecycles[1], &mut metricses[1]] {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(10));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        lifecycles[1] = cluster.start("lifecycle", 1);
        metricses[1] = cluster.start("metrics", 1);
    }
    for w in workers {
        w.await.unwrap();
    }
    let ids = ids.lock().unwrap().clone();

    // Wait for the read models: every contact's orders counted, then nothing moving.
    let scope = mpb::MetricsScope {
        start_time: Some(ts(base - DAY)),
        end_time: Some(ts(base + 60 * DAY)),
        ..Default::default()
    };
    let started = Instant::now();
    let mut last = read_outcome(&ids, cluster.channel("lifecycle", 0), metrics.pick(), &scope, run_start).await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = read_outcome(&ids, cluster.channel("lifecycle", 0), metrics.pick(), &scope, run_start).await;
        let counted = now.values.iter().enumerate().all(|(i, v)| v.orders == orders_of(i) as i64);
        if counted && now == last {
            last = now;
            break;
        }
        if started.elapsed() > Duration::from_mins(2) {
            let uncounted: Vec<_> =
                now.values.iter().enumerate().filter(|(i, v)| v.orders != orders_of(*i) as i64).take(3).collect();
            let moving: Vec<_> = now.values.iter().zip(&last.values).filter(|(a, b)| a != b).take(2).collect();
            let funnel = (now.funnel != last.funnel).then_some((&now.funnel, &last.funnel));
            let stage = (now.stage != last.stage).then_some((&now.stage, &last.stage));
            let channels = (now.channels != last.channels).then_some((&now.channels, &last.channels));
            panic!(
                "{tag}: the read models never settled: uncounted {uncounted:#?} moving {moving:#?} {funnel:#?} {stage:#?} {channels:#?}"
            );
        }
        last = now;
    }
    let transitions: usize = last.journeys.iter().map(|j| j.matches('→').count()).sum();
    let seen = watched.load(Ordering::SeqCst);
    watcher.abort();
    eprintln!(
        "{tag}: {n} contacts, {transitions} transitions, {seen} seen by one watcher, settled in {:?}",
        started.elapsed()
    );
    assert_eq!(seen, transitions, "{tag}: the watcher on one replica sees every replica's stage changes");
    // Against the workload itself, not only the other run: each contact's channel and campaign
    // known when its lead and purchases were counted.
    let got: BTreeMap<(String, String), (i64, i64, i64, i64)> = last
        .channels
        .channels
        .iter()
        .map(|c| {
            let revenue = c.revenue.as_ref().map_or(0, |m| m.units);
            ((c.channel.clone(), c.campaign.clone()), (c.new_contacts, c.leads, c.customers, revenue))
        })
        .collect();
    assert_eq!(got, expected_channels(n), "{tag}: contacts, leads, customers and revenue per channel and campaign");
    drop(lifecycles);
    drop(metricses);
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_end_where_one_does() {
    if std::env::var("CLM_TEST_DATABASE_URL").is_err() {
        eprintln!("skipped: CLM_TEST_DATABASE_URL is not set (PostgreSQL tests off)");
        return;
    }
    let pg = PrivatePostgres::init().expect("PostgreSQL's binaries (pg_config --bindir) for a private server");
    let nats = NatsServer::start().expect("nats-server for a private NATS");
    let base = chrono::Utc::now().timestamp_micros() - 40 * DAY;
    let one = run(&pg, &nats, "one", 1, false, base).await;
    let three = run(&pg, &nats, "three", 3, true, base).await;
    for (i, (a, b)) in one.journeys.iter().zip(&three.journeys).enumerate() {
        assert_eq!(a, b, "contact {i}'s journey with three replicas");
    }
    for (i, (a, b)) in one.values.iter().zip(&three.values).enumerate() {
        assert_eq!(a, b, "contact {i}'s orders, revenue and value with three replicas");
    }
    assert_eq!(one.funnel, three.funnel, "the funnel with three replicas");
    assert_eq!(one.stage, three.stage, "stage metrics with three replicas");
    assert_eq!(one.channels, three.channels, "channel metrics with three replicas");
}
