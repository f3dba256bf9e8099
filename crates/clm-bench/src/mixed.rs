//! Workload 5: RecordJourneyEvent + SubmitResponse mixed load on the single binary (release),
//! paced at a target rate, and the time from a write's acknowledgement to the KPI changing in
//! metrics (event → metric latency). Twice: on SQLite with the in-process event log (the
//! embedded default), and on PostgreSQL (a database per service) with NATS JetStream carrying
//! the events (the distributed settings, in one process).
//!
//! The probe: every 100 ms a purchase for a dedicated contact; its latency is the time from
//! RecordJourneyEvent returning to GetCustomerValue (polled every 5 ms) showing one
//! more order. It crosses lifecycle's outbox, the relay, the event log and the metrics
//! consumer's transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use clm_testkit::free_port;
use clm_testkit::{Backend, TestDb};
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::Figure;
use crate::resources::{binary, start_with};

/// Where the mixed workload's services keep their data and send their events.
pub enum Setup {
    /// SQLite files and the event log (the embedded default).
    Sqlite,
    /// A PostgreSQL database per service (made on the server of `CLM_TEST_DATABASE_URL`) and
    /// NATS JetStream at this URL.
    PostgresNats { nats_url: String },
}

fn purchase(contact: &str, order: String, units: i64) -> lpb::RecordJourneyEventRequest {
    lpb::RecordJourneyEventRequest {
        event: Some(lpb::JourneyEvent {
            contact_id: contact.into(),
            detail: Some(lpb::journey_event::Detail::Purchase(lpb::Purchase {
                order_id: order,
                amount: Some(Money { currency_code: "EUR".into(), units, nanos: 0 }),
                items: 1,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn touch(contact: &str) -> lpb::RecordJourneyEventRequest {
    lpb::RecordJourneyEventRequest {
        event: Some(lpb::JourneyEvent {
            contact_id: contact.into(),
            detail: Some(lpb::journey_event::Detail::Touchpoint(lpb::Touchpoint {
                channel: lpb::TouchpointChannel::Web as i32,
                kind: lpb::TouchpointKind::Visit as i32,
                detail: "/pricing".into(),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn orders(m: &mut MetricsServiceClient<Channel>, contact: &str) -> i64 {
    m.get_customer_value(mpb::GetCustomerValueRequest { contact_id: contact.into() })
        .await
        .ok()
        .and_then(|r| r.into_inner().customer_value)
        .map_or(-1, |v| v.orders)
}

pub async fn run(setup: Setup, rates: &[u64], secs: u64, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let bin = binary("clm");
    if !bin.exists() {
        eprintln!("clm: not built in release (make bench builds it); mixed workload skipped");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut env = Vec::new();
    let mut dbs = Vec::new();
    let mut streams = None;
    let backend = match &setup {
        Setup::Sqlite => "sqlite (single binary)",
        Setup::PostgresNats { nats_url } => {
            let nats = match async_nats::connect(nats_url.as_str()).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("NATS at {nats_url} is not reachable ({e}); mixed workload on PostgreSQL skipped");
                    return Ok(());
                }
            };
            for svc in ["contacts", "lifecycle", "feedback", "metrics"] {
                let Some(db) = TestDb::create(Backend::Postgres, &format!("mixed_{svc}")).await else { return Ok(()) };
                env.push((format!("CLM_{}__DATABASE_URL", svc.to_uppercase()), db.url.clone()));
                dbs.push(db);
            }
            // Streams and subjects of this run only, deleted at the end.
            let prefix = format!("BENCH{}", uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase());
            env.extend([
                ("CLM_EVENTS__TRANSPORT".to_owned(), "nats".to_owned()),
                ("CLM_EVENTS__NATS_URL".to_owned(), nats_url.clone()),
                ("CLM_EVENTS__STREAM_PREFIX".to_owned(), prefix.clone()),
                ("CLM_EVENTS__NATS_NAMESPACE".to_owned(), prefix.to_lowercase()),
            ]);
            streams = Some((async_nats::jetstream::new(nats), prefix));
            "postgres + nats (single binary)"
        }
    };
    let (proc, _) = start_with(&bin, dir.path(), port, &env).await?;
    let result = measure(backend, port, rates, secs, figures).await;
    drop(proc);
    for db in dbs {
        db.cleanup().await;
    }
    if let Some((js, prefix)) = streams {
        for svc in ["CONTACTS", "LIFECYCLE", "FEEDBACK", "METRICS"] {
            let _ = js.delete_stream(format!("{prefix}_{svc}")).await;
        }
    }
    result
}

async fn measure(backend: &str, port: u16, rates: &[u64], secs: u64, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?;
    let mut contacts = ContactsServiceClient::new(ch.clone());
    let mut lifecycle = LifecycleServiceClient::new(ch.clone());
    let mut feedback = FeedbackServiceClient::new(ch.clone());
    let mut metrics = MetricsServiceClient::new(ch.clone());

    // Contacts to act on: enough that each answers the survey once; the last is the probe's.
    let n = (rates.iter().sum::<u64>() * secs / 2 + 1000) as usize;
    let rows: Vec<cpb::Contact> =
        (0..n).map(|i| cpb::Contact { email: format!("m{i}@example.com"), ..Default::default() }).collect();
    let batches: Vec<cpb::ImportContactsRequest> =
        rows.chunks(1000).map(|c| cpb::ImportContactsRequest { contacts: c.to_vec() }).collect();
    let mut out = contacts.import_contacts(tokio_stream::iter(batches)).await?.into_inner();
    let mut ids = Vec::with_capacity(n);
    while let Some(r) = out.message().await? {
        if let Some(cpb::import_contacts_response::Result::Rows(rows)) = r.result {
            ids.extend(rows.results.into_iter().map(|x| x.contact_id));
        }
    }
    anyhow::ensure!(ids.len() == n, "imported {} of {n} contacts", ids.len());
    let survey = feedback
        .create_survey(fpb::CreateSurveyRequest {
            survey: Some(fpb::Survey {
                display_name: "Bench NPS".into(),
                kind: fpb::SurveyKind::Nps as i32,
                status: fpb::SurveyStatus::Active as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .survey
        .ok_or_else(|| anyhow::anyhow!("no survey"))?;
    // Wait until every service has heard of the last contact.
    let probe = ids.pop().ok_or_else(|| anyhow::anyhow!("no contacts"))?;
    let t = Instant::now();
    while lifecycle.record_journey_event(touch(&probe)).await.is_err() || orders(&mut metrics, &probe).await < 0 {
        anyhow::ensure!(t.elapsed() < Duration::from_mins(5), "the contacts did not reach every service");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("mixed: {n} contacts known to every service after {:.1} s", t.elapsed().as_secs_f64());

    let ids = Arc::new(ids);
    let next_responder = Arc::new(AtomicUsize::new(0));
    let mut probes = 0;
    for &rate in rates {
        // Start from a drained pipeline: the probe's last purchase is visible.
        let t = Instant::now();
        while orders(&mut metrics, &probe).await < probes {
            anyhow::ensure!(t.elapsed() < Duration::from_mins(5), "metrics did not catch up between phases");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (load, lag) = phase(&ch, &ids, &next_responder, &survey.id, &probe, probes, rate, secs).await?;
        probes += lag.len() as i64;
        let f = Figure {
            workload: format!("RecordJourneyEvent + SubmitResponse at {rate}/s"),
            backend: backend.into(),
            calls: load.0.len(),
            errors: load.1,
            throughput_per_s: load.0.len() as f64 / secs as f64,
            p50_us: load.0.value_at_quantile(0.5),
            p90_us: load.0.value_at_quantile(0.9),
            p99_us: load.0.value_at_quantile(0.99),
            max_us: load.0.max(),
        };
        eprintln!(
            "mixed {backend} at {rate}/s: {:>6.0}/s achieved  p50 {:>6}µs  p99 {:>7}µs  errors {}",
            f.throughput_per_s, f.p50_us, f.p99_us, f.errors
        );
        figures.push(f);
        let f = Figure {
            workload: format!("event → metric (purchase → GetCustomerValue) at {rate}/s"),
            backend: backend.into(),
            calls: lag.len(),
            errors: 0,
            throughput_per_s: 0.0,
            p50_us: lag.value_at_quantile(0.5),
            p90_us: lag.value_at_quantile(0.9),
            p99_us: lag.value_at_quantile(0.99),
            max_us: lag.max(),
        };
        eprintln!("event → metric at {rate}/s: p50 {}µs  p99 {}µs  ({} probes)", f.p50_us, f.p99_us, f.calls);
        figures.push(f);
    }
    Ok(())
}

/// One phase: 16 paced clients at `rate` writes/s for `secs`, and a probe purchase every
/// 100 ms for `probe`, each timed from its acknowledgement until GetCustomerValue (polled
/// every 5 ms) counts it. Returns (the writes' latencies, errors) and the probes' lags.
#[allow(clippy::too_many_arguments)]
async fn phase(
    ch: &Channel,
    ids: &Arc<Vec<String>>,
    next: &Arc<AtomicUsize>,
    survey_id: &str,
    probe: &str,
    probes_before: i64,
    rate: u64,
    secs: u64,
) -> anyhow::Result<((Histogram<u64>, u64), Histogram<u64>)> {
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let workers = 16u64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (ids, next, errors, ch, survey_id) =
            (ids.clone(), next.clone(), errors.clone(), ch.clone(), survey_id.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut l = LifecycleServiceClient::new(ch.clone());
            let mut f = FeedbackServiceClient::new(ch);
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut tick = tokio::time::interval(Duration::from_secs_f64(workers as f64 / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            while Instant::now() < stop {
                tick.tick().await;
                i += 1;
                let t = Instant::now();
                let ok = if i.is_multiple_of(2) {
                    let who = &ids[(w * 7919 + i * 104_729) as usize % ids.len()];
                    let req = if i.is_multiple_of(6) { purchase(who, format!("o-{w}-{i}"), 40) } else { touch(who) };
                    l.record_journey_event(req).await.is_ok()
                } else {
                    let who = ids[next.fetch_add(1, Ordering::Relaxed) % ids.len()].clone();
                    f.submit_response(fpb::SubmitResponseRequest {
                        target: Some(fpb::submit_response_request::Target::InApp(fpb::InAppTarget {
                            survey_id: survey_id.clone(),
                            contact_id: who,
                        })),
                        answers: vec![fpb::Answer {
                            question_id: "score".into(),
                            value: Some(fpb::answer::Value::Rating((i % 11) as i32)),
                        }],
                        response_id: String::new(),
                        complete: true,
                    })
                    .await
                    .is_ok()
                };
                h.saturating_record((t.elapsed().as_micros() as u64).max(1));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            h
        }));
    }
    // The probe: purchases every 100 ms, acknowledged times kept in order; metrics applies
    // one contact's journey events in order, so `orders` = k means probes 1..=k are visible.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let sender = {
        let (acked, mut l, probe) = (acked.clone(), LifecycleServiceClient::new(ch.clone()), probe.to_owned());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut k = probes_before;
            while Instant::now() + Duration::from_millis(100) < stop {
                tick.tick().await;
                k += 1;
                l.record_journey_event(purchase(&probe, format!("probe-{k}"), 10)).await?;
                acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(Instant::now());
            }
            anyhow::Ok(())
        })
    };
    let mut m = MetricsServiceClient::new(ch.clone());
    let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut counted = 0usize;
    loop {
        let visible = usize::try_from(orders(&mut m, probe).await - probes_before).unwrap_or(0);
        let now = Instant::now();
        let sent = {
            let acked = acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            for at in acked.iter().take(visible).skip(counted) {
                lag.saturating_record((now.duration_since(*at).as_micros() as u64).max(1));
            }
            counted = counted.max(visible.min(acked.len()));
            acked.len()
        };
        if sender.is_finished() && counted == sent {
            break;
        }
        anyhow::ensure!(now < stop + Duration::from_mins(2), "probe purchases never reached metrics");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sender.await??;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await?)?;
    }
    Ok(((all, errors.load(Ordering::Relaxed)), lag))
}
