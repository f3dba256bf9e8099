//! TLS on the gRPC port and mutual TLS, against the real binary with certificates made per
//! test: plaintext is refused on a TLS port, a client that trusts the CA gets through, with
//! `tls.client_ca_file` only clients with a certificate from that CA do, and the services'
//! own calls to each other (metrics asking contacts for a segment's members) go over TLS too.

mod support;

use std::path::{Path, PathBuf};

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::metrics::v1 as mpb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use support::ClmProcess;
use tonic::transport::{Certificate as TonicCert, Channel, ClientTlsConfig, Identity};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ca { cert: params.self_signed(&key).unwrap(), key }
}

/// A certificate for `names`, valid for server and client authentication: (cert PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    (params.signed_by(&key, &ca.cert, &ca.key).unwrap().pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.display().to_string()
}

fn env(dir: &Path, tls: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["contacts", "lifecycle", "feedback", "metrics"]
        .iter()
        .map(|s| {
            (format!("CLM_{}__DATABASE_URL", s.to_uppercase()), format!("sqlite://{}/{s}.db?mode=rwc", dir.display()))
        })
        .collect();
    env.push(("CLM_TELEMETRY__LOG_FILTER".into(), "info".into()));
    env.extend(tls.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

async fn tls_channel(clm: &ClmProcess, ca_pem: &str, identity: Option<&(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(TonicCert::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", clm.addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// A write, and a metrics query whose segment makes metrics call contacts (over TLS in-process).
async fn works(ch: Channel, email: &str) -> Result<(), tonic::Status> {
    let mut c = ContactsServiceClient::new(ch.clone());
    c.create_contact(pb::CreateContactRequest {
        contact: Some(pb::Contact { email: email.into(), ..Default::default() }),
        request_id: String::new(),
    })
    .await?;
    let mut m = MetricsServiceClient::new(ch);
    m.get_stage_metrics(mpb::GetStageMetricsRequest {
        scope: Some(mpb::MetricsScope { segment_filter: format!("email = \"{email}\""), ..Default::default() }),
        ..Default::default()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_grpc_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("CLM test CA");
    let (cert, key) = leaf(&ca, &["localhost", "127.0.0.1"]);
    let clm = ClmProcess::start(&env(
        dir.path(),
        &[
            ("CLM_TLS__CERT_FILE", write(dir.path(), "server.pem", &cert)),
            ("CLM_TLS__KEY_FILE", write(dir.path(), "server.key", &key)),
            ("CLM_TLS__CA_FILE", write(dir.path(), "ca.pem", &ca.cert.pem())),
        ],
    ));
    // Plaintext on a TLS port gets nowhere.
    let plain = match Channel::from_shared(clm.url()).unwrap().connect().await {
        Ok(ch) => works(ch, "plain@example.com").await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain, "a plaintext client is refused on a TLS port");
    // A client that trusts some other CA refuses the server.
    let other = new_ca("someone else");
    assert!(tls_channel(&clm, &other.cert.pem(), None).await.is_err(), "the server's certificate is checked");
    let ch = tls_channel(&clm, &ca.cert.pem(), None).await.expect("TLS handshake");
    works(ch, "tls@example.com").await.expect("calls over TLS, and metrics → contacts inside the process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("CLM test CA");
    let (cert, key) = leaf(&ca, &["localhost", "127.0.0.1"]);
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let clm = ClmProcess::start(&env(
        dir.path(),
        &[
            ("CLM_TLS__CERT_FILE", write(dir.path(), "server.pem", &cert)),
            ("CLM_TLS__KEY_FILE", write(dir.path(), "server.key", &key)),
            ("CLM_TLS__CLIENT_CA_FILE", ca_file.clone()),
            ("CLM_TLS__CA_FILE", ca_file),
        ],
    ));
    let refused = |r: Result<Channel, String>| async move {
        match r {
            Err(_) => true,
            Ok(ch) => works(ch, "nobody@example.com").await.is_err(),
        }
    };
    assert!(refused(tls_channel(&clm, &ca.cert.pem(), None).await).await, "no client certificate: refused");
    let stranger = new_ca("someone else");
    let forged = leaf(&stranger, &["client.example.com"]);
    assert!(
        refused(tls_channel(&clm, &ca.cert.pem(), Some(&forged)).await).await,
        "a client certificate from another CA: refused"
    );
    let client = leaf(&ca, &["billing.clm.internal"]);
    let ch = tls_channel(&clm, &ca.cert.pem(), Some(&client)).await.expect("mutual TLS handshake");
    works(ch, "mtls@example.com").await.expect("calls with a client certificate, and service to service");
}
