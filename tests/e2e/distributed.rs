//! The distributed mode under faults: each service its own process, PostgreSQL per service
//! (a private server), NATS JetStream (a private server). NATS goes away for a minute while
//! contacts are written, and during the outage the contacts and metrics services are killed
//! with kill -9 and restarted; afterwards every acknowledged write is there and metrics count
//! each committed contact exactly once.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::metrics::v1 as mpb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use support::{ClmProcess, NatsServer, PrivatePostgres};

const SERVICES: [&str; 4] = ["contacts", "lifecycle", "feedback", "metrics"];

/// How long NATS stays down: a minute unless `CLM_TEST_NATS_OUTAGE_SECS` says otherwise.
fn outage() -> Duration {
    Duration::from_secs(std::env::var("CLM_TEST_NATS_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60))
}

struct Cluster {
    env: Vec<(String, String)>,
    ports: Vec<u16>,
}

impl Cluster {
    fn start(&self, svc: &str) -> ClmProcess {
        let i = SERVICES.iter().position(|s| *s == svc).unwrap();
        let mut env = self.env.clone();
        env.push(("CLM_SERVER__LISTEN_ADDR".into(), format!("127.0.0.1:{}", self.ports[i])));
        ClmProcess::start_bin(&format!("clm-{svc}"), &env)
    }
}

async fn channel(p: &ClmProcess) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(p.url()).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_and_kill_9_lose_nothing() {
    if std::env::var("CLM_TEST_DATABASE_URL").is_err() {
        eprintln!("skipped: CLM_TEST_DATABASE_URL is not set (PostgreSQL tests off)");
        return;
    }
    let pg = PrivatePostgres::init().expect("PostgreSQL's binaries (pg_config --bindir) for a private server");
    let mut nats = NatsServer::start().expect("nats-server for a private NATS");
    let ports: Vec<u16> = SERVICES.iter().map(|_| clm_testkit::free_port()).collect();
    let mut env: Vec<(String, String)> = vec![
        ("CLM_TELEMETRY__LOG_FILTER".into(), "info".into()),
        ("CLM_EVENTS__TRANSPORT".into(), "nats".into()),
        ("CLM_EVENTS__NATS_URL".into(), nats.url()),
        ("CLM_SERVER__HEALTH_CHECK_INTERVAL_MS".into(), "200".into()),
    ];
    for (svc, port) in SERVICES.iter().zip(&ports) {
        pg.create_database(svc);
        env.push((format!("CLM_{}__DATABASE_URL", svc.to_uppercase()), pg.database_url(svc)));
        if *svc != "contacts" {
            env.push((format!("CLM_{}__CONTACTS_URL", svc.to_uppercase()), format!("http://127.0.0.1:{}", ports[0])));
        }
        let _ = port;
    }
    let cluster = Cluster { env, ports };
    let mut contacts = cluster.start("contacts");
    let _lifecycle = cluster.start("lifecycle");
    let _feedback = cluster.start("feedback");
    let mut metrics = cluster.start("metrics");
    let contacts_ch = channel(&contacts).await;

    // Phases: 0 NATS up, 1 NATS down, 2 contacts being killed and restarted, 3 NATS still down.
    let phase = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = ContactsServiceClient::new(contacts_ch.clone());
        let (phase, acked, failures, stop) = (phase.clone(), acked.clone(), failures.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let req = pb::CreateContactRequest {
                    contact: Some(pb::Contact { email: format!("d-{w}-{i}@example.com"), ..Default::default() }),
                    request_id: String::new(),
                };
                let p = phase.load(Ordering::SeqCst);
                match tokio::time::timeout(Duration::from_secs(5), c.create_contact(req)).await {
                    Ok(Ok(r)) => acked.lock().unwrap().push(r.into_inner().contact.unwrap().id),
                    other => {
                        // A call in flight when contacts is killed belongs to the restart
                        // phase, whenever it started.
                        let end = phase.load(Ordering::SeqCst);
                        let p = if p <= 2 && end >= 2 { 2 } else { p };
                        failures.lock().unwrap().push((p, format!("{other:?}")));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                // A steady stream, not a flood: the outage is about time, not volume.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let outage = outage();
    nats.kill();
    phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(outage / 2).await;

    // kill -9 both ends of the event flow while their events sit in outboxes.
    phase.store(2, Ordering::SeqCst);
    contacts.signal("KILL");
    metrics.signal("KILL");
    contacts.wait_exit(Duration::from_secs(10));
    metrics.wait_exit(Duration::from_secs(10));
    drop(contacts);
    drop(metrics);
    let contacts = cluster.start("contacts");
    let metrics = cluster.start("metrics");
    // Writers reconnect by themselves; from the first success on, failures count again.
    let seen = acked.lock().unwrap().len();
    let start = Instant::now();
    while acked.lock().unwrap().len() == seen {
        assert!(start.elapsed() < Duration::from_secs(30), "writes resume after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    phase.store(3, Ordering::SeqCst);
    tokio::time::sleep(outage / 2).await;

    nats.up();
    let nats_back = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    let outside_restart: Vec<_> = failures.iter().filter(|(p, _)| *p != 2).collect();
    assert!(outside_restart.is_empty(), "writes succeed while NATS is down: {outside_restart:?}");

    let mut c = ContactsServiceClient::new(channel(&contacts).await);
    let committed = i64::from(
        c.list_contacts(pb::ListContactsRequest { page_size: 1, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .total_size,
    );
    assert!(committed >= acked.len() as i64);

    let mut m = MetricsServiceClient::new(channel(&metrics).await);
    let new_contacts = |m: &mut MetricsServiceClient<tonic::transport::Channel>| {
        let mut m = m.clone();
        async move {
            m.get_stage_metrics(mpb::GetStageMetricsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .acquisition
                .unwrap()
                .new_contacts
        }
    };
    let mut seen = new_contacts(&mut m).await;
    while seen != committed && nats_back.elapsed() < Duration::from_mins(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = new_contacts(&mut m).await;
    }
    eprintln!(
        "NATS down {outage:?}: {} acknowledged, {committed} committed, {} refused during the kill, \
         metrics caught up within {:?} of NATS returning",
        acked.len(),
        failures.len(),
        nats_back.elapsed()
    );
    assert_eq!(seen, committed, "metrics count every committed contact once the events flow again");
    for id in &acked {
        c.get_contact(pb::GetContactRequest { id: id.clone() }).await.expect("an acknowledged write survives");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(new_contacts(&mut m).await, committed, "and nothing arrives twice later");
}
