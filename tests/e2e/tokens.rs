//! `clm token` against a running `clm serve` in jwt mode, as README § Tokens and tenants has it:
//! tokens minted after the server started work at once (the server keeps no list of tokens, it
//! checks each one's signature), the tenant is the token's, a token signed with another secret
//! is refused, and without a secret `clm token` says which key to set.

mod support;

use std::process::Command;

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use support::ClmProcess;

const SECRET: &str = "tokens-test-secret-0123456789abcdef0123456789";

/// `clm token <args>` with only `env` set: (exit success, stdout, stderr).
fn clm_token(env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(support::clm_binary())
        .arg("token")
        .args(args)
        .env_clear()
        .env("CLM_CONFIG_DIR", "/nonexistent")
        .envs(env.iter().copied())
        .output()
        .expect("run clm token");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mint(secret: &str, tenant: &str) -> String {
    let (ok, token, note) =
        clm_token(&[("CLM_AUTH__JWT_HS256_SECRET", secret)], &["--tenant", tenant, "--scope", "clm.read clm.write"]);
    assert!(ok, "clm token failed: {note}");
    assert_eq!(token.split('.').count(), 3, "stdout is the token alone: {token:?}");
    assert!(note.contains("no restart") && note.contains(tenant), "stderr says who accepts it: {note}");
    token
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

async fn emails(client: &mut ContactsServiceClient<tonic::transport::Channel>, token: &str) -> Vec<String> {
    let list = client.list_contacts(bearer(pb::ListContactsRequest::default(), token)).await.unwrap().into_inner();
    list.contacts.into_iter().map(|c| c.email).collect()
}

#[tokio::test]
async fn tokens_minted_after_start_work_without_a_restart() {
    let clm = ClmProcess::start(&[
        ("CLM_AUTH__MODE".into(), "jwt".into()),
        ("CLM_AUTH__JWT_HS256_SECRET".into(), SECRET.into()),
    ]);
    // Minted only now, after the server started.
    let acme = mint(SECRET, "acme");
    let other = mint(SECRET, "globex");
    let channel = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let mut contacts = ContactsServiceClient::new(channel);

    let create = pb::CreateContactRequest {
        contact: Some(pb::Contact { email: "ada@acme.example".into(), ..Default::default() }),
        request_id: String::new(),
    };
    contacts.create_contact(bearer(create, &acme)).await.unwrap();
    assert_eq!(emails(&mut contacts, &acme).await, ["ada@acme.example"]);
    assert!(emails(&mut contacts, &other).await.is_empty(), "the tenant is the token's");

    let forged = mint("another-secret-0123456789abcdef0123456789ab", "acme");
    let err = contacts.list_contacts(bearer(pb::ListContactsRequest::default(), &forged)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = contacts.list_contacts(pb::ListContactsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
}

#[test]
fn without_a_key_clm_token_names_the_setting() {
    let (ok, out, err) = clm_token(&[], &["--tenant", "acme"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("CLM_AUTH__JWT_HS256_SECRET"), "{err}");
}
