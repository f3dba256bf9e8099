//! The single `clm` binary, as a real child process: all four services up, health per
//! service, reflection listing every service, the hosted pages on their own port, migrations on SQLite and PostgreSQL, and a
//! graceful drain on SIGTERM.

mod support;

use std::time::Duration;

use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_testkit::{Backend, TestDb};
use support::ClmProcess;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICES: [&str; 4] = [
    "clm.contacts.v1.ContactsService",
    "clm.lifecycle.v1.LifecycleService",
    "clm.feedback.v1.FeedbackService",
    "clm.metrics.v1.MetricsService",
];

async fn databases(backend: Backend) -> Option<Vec<TestDb>> {
    let mut dbs = Vec::new();
    for name in ["contacts", "lifecycle", "feedback", "metrics"] {
        dbs.push(TestDb::create(backend, name).await?);
    }
    Some(dbs)
}

fn env_for(dbs: &[TestDb]) -> Vec<(String, String)> {
    ["CONTACTS", "LIFECYCLE", "FEEDBACK", "METRICS"]
        .iter()
        .zip(dbs)
        .map(|(s, db)| (format!("CLM_{s}__DATABASE_URL"), db.url.clone()))
        .collect()
}

async fn serves_health_and_reflection(backend: Backend) {
    let Some(dbs) = databases(backend).await else { return };
    let clm = ClmProcess::start(&env_for(&dbs));
    let channel = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    for svc in SERVICES.iter().chain(&[""]) {
        let resp = health.check(HealthCheckRequest { service: (*svc).to_string() }).await.unwrap().into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{svc}");
    }
    let err = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Reflection, asked over the wire with both protocol versions grpcurl speaks.
    let v1 = list_services_v1(channel.clone()).await;
    let v1alpha = list_services_v1alpha(channel.clone()).await;
    for svc in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(v1.iter().any(|s| s == svc), "v1 reflection lacks {svc}: {v1:?}");
        assert!(v1alpha.iter().any(|s| s == svc), "v1alpha reflection lacks {svc}: {v1alpha:?}");
    }

    // Dev mode: the embedded default answers without a token.
    let mut contacts = ContactsServiceClient::new(channel.clone());
    let created = contacts
        .create_contact(cpb::CreateContactRequest {
            contact: Some(cpb::Contact { email: "first@example.com".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.contact.unwrap().email, "first@example.com");

    // The hosted pages, on a port of their own: a link that does not verify is the 404 page,
    // with the headers that keep tokens private.
    let pages = clm.pages_addr();
    assert_ne!(pages, clm.addr);
    let got = clm_testkit::http::request("GET", &format!("http://{pages}/u/not-a-token"), &[], b"").await;
    assert_eq!(got.status, 404, "{got:?}");
    assert_eq!(got.header("cache-control"), Some("no-store"));
    assert_eq!(got.header("referrer-policy"), Some("no-referrer"));
    drop(clm);
    for db in dbs {
        db.cleanup().await;
    }
}

async fn list_services_v1(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    match stream.message().await.unwrap().unwrap().message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn list_services_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    match stream.message().await.unwrap().unwrap().message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// SIGTERM: an in-flight streaming call completes, new connections are refused, exit code 0.
async fn sigterm_drains(backend: Backend) {
    let Some(dbs) = databases(backend).await else { return };
    let mut clm = ClmProcess::start(&env_for(&dbs));
    let channel = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let mut contacts = ContactsServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<cpb::ImportContactsRequest>(4);
    let row = |i: usize| cpb::Contact { email: format!("drain{i}@example.com"), ..Default::default() };
    tx.send(cpb::ImportContactsRequest { contacts: vec![row(0), row(1)] }).await.unwrap();
    let mut results =
        contacts.import_contacts(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = results.message().await.unwrap().expect("first batch result");
    assert!(matches!(first.result, Some(cpb::import_contacts_response::Result::Rows(_))));

    clm.signal("TERM");
    // The listener closes: a new connection is refused.
    let mut refused = false;
    for _ in 0..100 {
        if tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "new connections must be refused while draining");

    // The in-flight call still completes.
    tx.send(cpb::ImportContactsRequest { contacts: vec![row(2)] }).await.unwrap();
    drop(tx);
    let mut summary = None;
    while let Some(msg) = results.message().await.unwrap() {
        if let Some(cpb::import_contacts_response::Result::Summary(s)) = msg.result {
            summary = Some(s);
        }
    }
    let summary = summary.expect("summary after drain");
    assert_eq!((summary.received, summary.created), (3, 3));
    let status = clm.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    let logs = clm.logs.lock().unwrap().join("\n");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    for db in dbs {
        db.cleanup().await;
    }
}

clm_testkit::backend_tests!(serves_health_and_reflection, sigterm_drains);
