//! Health under load, against the real binary: liveness (the process answers) and readiness
//! (stores usable) stay SERVING while many heavy calls run below the concurrency limit, and
//! calls that cannot be served in time are shed with RESOURCE_EXHAUSTED, never UNAVAILABLE:
//! a busy pod is neither dead nor gone, and Kubernetes must neither restart it nor take it out
//! of its Service for being busy.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use support::ClmProcess;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn sqlite_env(dir: &std::path::Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["contacts", "lifecycle", "feedback", "metrics"]
        .iter()
        .map(|s| {
            (format!("CLM_{}__DATABASE_URL", s.to_uppercase()), format!("sqlite://{}/{s}.db?mode=rwc", dir.display()))
        })
        .collect();
    env.push(("CLM_EVENTS__LOG_DATABASE_URL".into(), format!("sqlite://{}/events.db?mode=rwc", dir.display())));
    env.push(("CLM_TELEMETRY__LOG_FILTER".into(), "info".into()));
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_holds_and_overload_sheds_under_heavy_load() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped limits (512 calls in flight, a pool of 10 connections waiting up to 5 s),
    // except a faster health check so a flip could not hide between two of them.
    let clm = ClmProcess::start(&sqlite_env(dir.path(), &[("CLM_SERVER__HEALTH_CHECK_INTERVAL_MS", "200")]));
    let ch = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let mut c = ContactsServiceClient::new(ch.clone());
    let rows: Vec<pb::Contact> = (0..2000)
        .map(|i| pb::Contact {
            email: format!("heavy{i}@example.com"),
            tags: (0..5).map(|t| format!("tag{t}")).collect(),
            ..Default::default()
        })
        .collect();
    let mut out = c
        .import_contacts(tokio_stream::iter(
            rows.chunks(500).map(|r| pb::ImportContactsRequest { contacts: r.to_vec() }).collect::<Vec<_>>(),
        ))
        .await
        .unwrap()
        .into_inner();
    while out.message().await.unwrap().is_some() {}

    // Probe liveness and readiness every 50 ms on a connection of their own.
    let probing = Arc::new(AtomicBool::new(true));
    let health_ch = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let prober = {
        let probing = probing.clone();
        tokio::spawn(async move {
            let mut h = HealthClient::new(health_ch);
            let (mut checks, mut bad) = (0, Vec::new());
            while probing.load(Ordering::Relaxed) {
                for service in ["liveness", "readiness", ""] {
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        h.check(HealthCheckRequest { service: service.into() }),
                    )
                    .await;
                    checks += 1;
                    match r {
                        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => {}
                        other => bad.push(format!("{service:?}: {other:?}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (checks, bad)
        })
    };

    // 200 heavy reads at once (pages of 1,000 contacts with their tags), below the limit of 512.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let filter = if i % 2 == 0 { r#"tags:"tag3""#.to_owned() } else { String::new() };
            c.list_contacts(pb::ListContactsRequest { page_size: 1000, filter, ..Default::default() }).await.map(|_| ())
        }));
    }
    let (mut ok, mut shed, mut other) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => shed += 1,
            Err(e) => other.push(format!("{:?}: {}", e.code(), e.message())),
        }
    }
    let took = start.elapsed();
    probing.store(false, Ordering::Relaxed);
    let (checks, bad) = prober.await.unwrap();
    eprintln!("heavy load: {ok} served, {shed} shed in {took:?}; {checks} health checks, {} not SERVING", bad.len());
    assert!(bad.is_empty(), "health stayed SERVING under load: {bad:?}");
    assert!(other.is_empty(), "a call under load either succeeds or is shed with RESOURCE_EXHAUSTED: {other:?}");
    assert!(ok > 0, "calls were served");
}
