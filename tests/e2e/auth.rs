//! Production is closed by default, against the real binaries: `CLM_ENV=production` with no
//! config directory and no auth settings refuses to start, naming the keys to set, and
//! `check-config` refuses the same; with issuer, audience and a JWKS URL it starts, and then a
//! call needs a valid token (signed by a key of that JWKS, right issuer and audience) and the
//! scope of its method (`clm.write` alone does not read). The single binary's services call
//! each other with tokens of their own (metrics asks contacts for a segment's members).

mod support;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clm_platform::auth::{Claims, mint_hs256, mint_with_private_key_pem};
use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::metrics::v1 as mpb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use support::ClmProcess;
use tonic::Code;
use tonic::transport::Channel;

const ISSUER: &str = "https://idp.test.example/";
const AUDIENCE: &str = "clm";

/// Run `<bin> <args>` as the image would (env cleared, no config directory) and wait for it to
/// exit: (exit status, stderr + stdout).
fn run_to_exit(bin: &str, args: &[&str], env: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(support::binary(bin));
    cmd.current_dir(dir.path())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CLM_CONFIG_DIR", "/nonexistent")
        .env("CLM_SERVER__LISTEN_ADDR", "127.0.0.1:0")
        .env("CLM_PAGES__LISTEN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} {args:?} still running after 30 s: it started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    (status, out)
}

#[test]
fn production_without_auth_settings_refuses_to_start_and_check_config_agrees() {
    let env = [("CLM_ENV", "production".to_owned())];
    for (bin, args) in [("clm", &["serve"][..]), ("clm", &[][..]), ("clm-contacts", &["serve"][..])] {
        let (status, out) = run_to_exit(bin, args, &env);
        assert!(!status.success(), "{bin} {args:?} must refuse: {out}");
        for key in ["auth.jwt_issuer", "auth.jwt_audience", "auth.jwks_url"] {
            assert!(out.contains(key), "{bin} {args:?}: the message names {key}: {out}");
        }
    }
    for bin in ["clm", "clm-contacts", "clm-lifecycle", "clm-feedback", "clm-metrics"] {
        let (status, out) = run_to_exit(bin, &["check-config"], &env);
        assert!(!status.success(), "{bin} check-config must refuse what serve refuses: {out}");
        assert!(out.contains("auth.jwt_issuer"), "{bin}: {out}");
    }
    // Dev auth cannot be switched back on in production, and a one-character secret is no key.
    for (var, value, key) in
        [("CLM_AUTH__MODE", "dev", "auth.mode"), ("CLM_AUTH__JWT_HS256_SECRET", "x", "auth.jwt_hs256_secret")]
    {
        let env = [
            ("CLM_ENV", "production".to_owned()),
            ("CLM_AUTH__JWT_ISSUER", ISSUER.to_owned()),
            ("CLM_AUTH__JWT_AUDIENCE", AUDIENCE.to_owned()),
            (var, value.to_owned()),
        ];
        for args in [&["serve"][..], &["check-config"][..]] {
            let (status, out) = run_to_exit("clm", args, &env);
            assert!(!status.success() && out.contains(key), "{var}={value} {args:?}: {out}");
        }
    }
}

/// An EC P-256 key pair of the test's own: (private key PEM, its public JWK under `kid`).
fn key_pair(kid: &str) -> (String, Jwk) {
    let private = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let mut jwk =
        Jwk::from_encoding_key(&EncodingKey::from_ec_pem(private.as_bytes()).unwrap(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    (private, jwk)
}

/// Serve `doc` at http://127.0.0.1:<port>/jwks.json from a thread (HTTP/1.1, one answer per
/// connection), as an identity provider would.
fn jwks_server(doc: Arc<Mutex<String>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let body = doc.lock().unwrap().clone();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn claims(scope: &str) -> Claims {
    Claims {
        sub: "e2e".into(),
        tenant: "acme".into(),
        scope: scope.into(),
        exp: jsonwebtoken::get_current_timestamp() + 600,
        nbf: None,
        iss: Some(ISSUER.into()),
        aud: Some(AUDIENCE.into()),
    }
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn new_contact(email: &str) -> pb::CreateContactRequest {
    pb::CreateContactRequest {
        contact: Some(pb::Contact { email: email.into(), ..Default::default() }),
        request_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_with_a_jwks_serves_valid_tokens_only() {
    let (signing, jwk) = key_pair("2025-01");
    let (_, other_jwk) = key_pair("2024-12");
    let doc = Arc::new(Mutex::new(serde_json::to_string(&JwkSet { keys: vec![other_jwk, jwk] }).unwrap()));
    let jwks_url = jwks_server(doc);
    let env = [
        ("CLM_ENV", "production".to_owned()),
        ("CLM_AUTH__JWT_ISSUER", ISSUER.to_owned()),
        ("CLM_AUTH__JWT_AUDIENCE", AUDIENCE.to_owned()),
        ("CLM_AUTH__JWKS_URL", jwks_url.clone()),
        ("CLM_MESSAGING__LINK_SECRET", "link-secret-of-the-test-0123456789abcdef".to_owned()),
        ("CLM_MESSAGING__PUBLIC_URL", "https://clm.example.com".to_owned()),
    ];
    for bin in ["clm", "clm-contacts", "clm-metrics"] {
        let (status, out) = run_to_exit(bin, &["check-config"], &env);
        assert!(status.success(), "{bin} check-config: {out}");
    }
    let clm = ClmProcess::start(&env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<Vec<_>>());
    let ch = Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let mut contacts = ContactsServiceClient::new(ch.clone());
    let token = |scope: &str| mint_with_private_key_pem(signing.as_bytes(), Some("2025-01"), &claims(scope)).unwrap();

    // No token, a forged one, one for another audience, an HS256 one: UNAUTHENTICATED.
    let err = contacts.list_contacts(pb::ListContactsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let (stranger, _) = key_pair("2025-01");
    let forged = mint_with_private_key_pem(stranger.as_bytes(), Some("2025-01"), &claims("clm.admin")).unwrap();
    let other_aud = mint_with_private_key_pem(
        signing.as_bytes(),
        Some("2025-01"),
        &Claims { aud: Some("another-api".into()), ..claims("clm.admin") },
    )
    .unwrap();
    let hs256 = mint_hs256("0123456789abcdef0123456789abcdef", &claims("clm.admin")).unwrap();
    for (what, t) in [("forged", forged), ("other audience", other_aud), ("HS256", hs256)] {
        let err = contacts.list_contacts(with_token(pb::ListContactsRequest::default(), &t)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }

    // A valid token works; clm.write writes but does not read; clm.read reads but does not write.
    let writer = token("clm.write");
    let created = contacts
        .create_contact(with_token(new_contact("ada@example.com"), &writer))
        .await
        .expect("write with clm.write");
    assert!(created.into_inner().contact.is_some(), "a write returns what it wrote");
    let err = contacts.list_contacts(with_token(pb::ListContactsRequest::default(), &writer)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "clm.write alone does not read: {err:?}");
    let reader = token("clm.read");
    let list = contacts.list_contacts(with_token(pb::ListContactsRequest::default(), &reader)).await.unwrap();
    assert_eq!(list.into_inner().contacts.len(), 1);
    let err = contacts.create_contact(with_token(new_contact("bob@example.com"), &reader)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Metrics asks contacts (in this process) for a segment's members with a token of its own:
    // no shared secret is configured, only the JWKS.
    let mut metrics = MetricsServiceClient::new(ch);
    metrics
        .get_stage_metrics(with_token(
            mpb::GetStageMetricsRequest {
                scope: Some(mpb::MetricsScope {
                    segment_filter: "email = \"ada@example.com\"".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &reader,
        ))
        .await
        .expect("metrics → contacts inside the process");

    // Health stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(clm.url()).unwrap().connect().await.unwrap(),
    );
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health needs no token");
}
