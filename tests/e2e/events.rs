//! Contacts and metrics in one process: a gRPC write in contacts reaches metrics' read model
//! through the outbox, the bus and the inbox — on the durable log bus and on NATS JetStream.

use std::time::Duration;

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_testkit::{self as testing, Backend, TestDb};
use sea_orm::{ConnectionTrait, Database, Statement};

#[derive(Clone, Copy)]
enum Transport {
    Log,
    Nats,
}

fn nats_available() -> bool {
    std::net::TcpStream::connect_timeout(&"127.0.0.1:4222".parse().unwrap(), Duration::from_millis(300)).is_ok()
}

async fn facts(url: &str, contact_id: &str) -> Option<(String, String, Option<i64>)> {
    let db = Database::connect(url).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT state, acquisition_channel, cost_micros FROM contact_facts WHERE contact_id = '{contact_id}'"
            ),
        ))
        .await
        .unwrap();
    db.close().await.ok();
    row.map(|r| {
        (
            r.try_get("", "state").unwrap(),
            r.try_get("", "acquisition_channel").unwrap(),
            r.try_get("", "cost_micros").unwrap(),
        )
    })
}

async fn contact_events_reach_metrics(backend: Backend, transport: Transport) {
    if matches!(transport, Transport::Nats) && !nats_available() {
        eprintln!("skipped: NATS e2e (no server at 127.0.0.1:4222)");
        return;
    }
    let Some(contacts_db) = TestDb::create(backend, "e2econtacts").await else { return };
    let Some(metrics_db) = TestDb::create(backend, "e2emetrics").await else { return };
    let ns = format!("t{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("E{}", &ns[1..9]).to_uppercase();
    let mut env = vec![
        ("CLM_CONTACTS__DATABASE_URL", contacts_db.url.as_str()),
        ("CLM_METRICS__DATABASE_URL", metrics_db.url.as_str()),
    ];
    if matches!(transport, Transport::Nats) {
        env.extend([
            ("CLM_EVENTS__TRANSPORT", "nats"),
            ("CLM_EVENTS__NATS_NAMESPACE", ns.as_str()),
            ("CLM_EVENTS__STREAM_PREFIX", prefix.as_str()),
        ]);
    }
    let server =
        testing::spawn_pair::<clm_contacts::ContactsService, clm_metrics::MetricsService>(testing::settings(&env))
            .await;
    let mut c = ContactsServiceClient::new(server.authed(&testing::token("acme", "clm.admin")).await);
    let created = c
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                email: "flow@example.com".into(),
                acquisition: Some(pb::Acquisition {
                    channel: pb::AcquisitionChannel::PaidSearch as i32,
                    cost: Some(clm_proto::common::v1::Money { currency_code: "EUR".into(), units: 40, nanos: 0 }),
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
        .unwrap();
    let (state, channel, cost) =
        testing::wait_for("the contact's facts in metrics", async || facts(&metrics_db.url, &created.id).await).await;
    assert_eq!((state.as_str(), channel.as_str(), cost), ("active", "paid_search", Some(40_000_000)));

    // An update and an erase follow, in order.
    c.update_contact(pb::UpdateContactRequest {
        contact: Some(pb::Contact {
            id: created.id.clone(),
            acquisition: Some(pb::Acquisition { channel: pb::AcquisitionChannel::Social as i32, ..Default::default() }),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["acquisition.channel".into()] }),
    })
    .await
    .unwrap();
    c.erase_contact(pb::EraseContactRequest { id: created.id.clone(), reason: "test".into() }).await.unwrap();
    let (state, channel, _) = testing::wait_for("the erasure in metrics", async || {
        facts(&metrics_db.url, &created.id).await.filter(|f| f.0 == "erased")
    })
    .await;
    assert_eq!((state.as_str(), channel.as_str()), ("erased", "social"));

    server.stop().await.unwrap();
    if matches!(transport, Transport::Nats) {
        let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.delete_stream(format!("{prefix}_CONTACTS")).await.unwrap();
    }
    contacts_db.cleanup().await;
    metrics_db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bus_sqlite() {
    contact_events_reach_metrics(Backend::Sqlite, Transport::Log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bus_postgres() {
    contact_events_reach_metrics(Backend::Postgres, Transport::Log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sqlite() {
    contact_events_reach_metrics(Backend::Sqlite, Transport::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres() {
    contact_events_reach_metrics(Backend::Postgres, Transport::Nats).await;
}
