//! Email without an SMTP relay (`messaging.mailbox_dir`, the embedded default): each message is
//! one `<delivery id>.eml` file, through the same queue, consent check and rendering as SMTP;
//! a full disk is a transient failure that is retried, and the message is written once there is
//! room again (a real tmpfs of a few KiB, filled up; needs root, skipped and said so without).

use std::path::{Path, PathBuf};
use std::process::Command;

use clm_contacts::ContactsService;
use clm_lifecycle::LifecycleService;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb, TestServer};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Lc = LifecycleServiceClient<InterceptedService<Channel, BearerInterceptor>>;
type Ct = ContactsServiceClient<InterceptedService<Channel, BearerInterceptor>>;

/// Contacts and lifecycle in one process, email into `mailbox`.
async fn start(backend: Backend, label: &str, mailbox: &Path) -> Option<(TestServer, Vec<TestDb>)> {
    let c = TestDb::create(backend, &format!("{label}c")).await?;
    let l = TestDb::create(backend, &format!("{label}l")).await?;
    let dir = mailbox.to_str().unwrap();
    let settings = testing::settings(&[
        ("CLM_CONTACTS__DATABASE_URL", c.url.as_str()),
        ("CLM_LIFECYCLE__DATABASE_URL", l.url.as_str()),
        ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
        ("CLM_MESSAGING__SMTP_URL", ""),
        ("CLM_MESSAGING__MAILBOX_DIR", dir),
        ("CLM_MESSAGING__PUBLIC_URL", "http://127.0.0.1:8080"),
        ("CLM_MESSAGING__RETRY_BASE_MS", "100"),
        ("CLM_MESSAGING__RETRY_MAX_MS", "300"),
        ("CLM_MESSAGING__MAX_ATTEMPTS", "2"),
        ("CLM_MESSAGING__POLL_INTERVAL_MS", "50"),
    ]);
    let server = testing::spawn_pair::<ContactsService, LifecycleService>(settings).await;
    Some((server, vec![c, l]))
}

async fn clients(server: &TestServer) -> (Ct, Lc) {
    let ch = server.authed(&testing::token("acme", "clm.admin")).await;
    (ContactsServiceClient::new(ch.clone()), LifecycleServiceClient::new(ch))
}

/// A contact who agreed to marketing email, and a welcome template; their ids.
async fn contact_and_template(ct: &mut Ct, lc: &mut Lc) -> (String, String) {
    let consent = cpb::Consent {
        channel: cpb::ConsentChannel::Email as i32,
        status: cpb::ConsentStatus::Granted as i32,
        purpose: cpb::ConsentPurpose::Marketing as i32,
        source: "signup-form".into(),
        ..Default::default()
    };
    let contact = ct
        .create_contact(cpb::CreateContactRequest {
            contact: Some(cpb::Contact {
                email: "ada@example.com".into(),
                given_name: "Ada".into(),
                consents: vec![consent],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap()
        .id;
    let template = pb::MessageTemplate {
        display_name: "Welcome".into(),
        channel: pb::MessageChannel::Email as i32,
        purpose: pb::MessagePurpose::Marketing as i32,
        email: Some(pb::EmailContent {
            subject: "Welcome, {{ contact.first_name }}".into(),
            text_body: "Hello {{ contact.first_name }}. Unsubscribe: {{ unsubscribe_url }}".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let template = lc
        .create_message_template(pb::CreateMessageTemplateRequest {
            message_template: Some(template),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .message_template
        .unwrap()
        .id;
    (contact, template)
}

async fn send(lc: &mut Lc, template: &str, contact: &str) -> pb::Delivery {
    let req =
        pb::SendMessageRequest { template_id: template.into(), contact_id: contact.into(), request_id: String::new() };
    lc.send_message(req).await.unwrap().into_inner().delivery.unwrap()
}

/// The delivery once `done` holds for it.
async fn delivery_when(lc: &mut Lc, id: &str, what: &str, done: impl Fn(&pb::Delivery) -> bool) -> pb::Delivery {
    testing::wait_for(&format!("delivery {id}: {what}"), async || {
        let d = lc.get_delivery(pb::GetDeliveryRequest { id: id.into() }).await.unwrap().into_inner().delivery.unwrap();
        done(&d).then_some(d)
    })
    .await
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|entries| entries.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")));
    files
}

async fn each_email_is_one_file(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let mailbox = tmp.path().join("mailbox");
    let Some((server, _dbs)) = start(backend, "mbox", &mailbox).await else { return };
    let (mut ct, mut lc) = clients(&server).await;
    let (ada, template) = contact_and_template(&mut ct, &mut lc).await;

    let d = send(&mut lc, &template, &ada).await;
    let sent = delivery_when(&mut lc, &d.id, "sent", |d| d.state == pb::DeliveryState::Sent as i32).await;
    let file = mailbox.join(format!("{}.eml", d.id));
    assert_eq!(eml_files(&mailbox), vec![file.clone()], "one file per message, named by the delivery");
    assert!(sent.attempts[0].detail.contains(&format!("{}.eml", d.id)), "{sent:?}");
    let eml = std::fs::read_to_string(&file).unwrap();
    assert!(eml.contains("Subject: Welcome, Ada\r\n"), "{eml}");
    assert!(eml.contains("To: ada@example.com\r\n"), "{eml}");
    assert!(eml.contains(&format!("Message-ID: <{}@clm>\r\n", d.id)), "{eml}");
    assert!(eml.contains("List-Unsubscribe: <http://127.0.0.1:8080/u/"), "the local unsubscribe page: {eml}");
    assert!(eml.contains("Hello Ada. Unsubscribe: http://127.0.0.1:8080/u/"), "{eml}");
    server.stop().await.unwrap();
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop. `None` without root.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

async fn a_full_disk_delays_the_email_and_loses_nothing(backend: Backend) {
    let Some(disk) = SmallDisk::mount("64k") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let mailbox = disk.dir.path().join("mailbox");
    let Some((server, _dbs)) = start(backend, "mboxfull", &mailbox).await else { return };
    let (mut ct, mut lc) = clients(&server).await;
    let (ada, template) = contact_and_template(&mut ct, &mut lc).await;
    std::fs::create_dir_all(&mailbox).unwrap();
    // Fill the disk to the last byte.
    let filler = disk.dir.path().join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 1024]).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
    }

    let d = send(&mut lc, &template, &ada).await;
    // Past max_attempts (2): the mailbox is the way out, not the message; never given up.
    let failing = delivery_when(&mut lc, &d.id, "retrying for lack of space", |d| {
        d.attempt_count >= 4 || d.state == pb::DeliveryState::Dead as i32
    })
    .await;
    assert_eq!(failing.state, pb::DeliveryState::Retrying as i32, "{failing:?}");
    assert!(failing.reason.contains("No space left on device"), "{failing:?}");
    let left: Vec<_> = std::fs::read_dir(&mailbox).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "no message and no half-written temporary file is left: {left:?}");

    std::fs::remove_file(&filler).unwrap();
    delivery_when(&mut lc, &d.id, "sent", |d| d.state == pb::DeliveryState::Sent as i32).await;
    let eml = std::fs::read_to_string(mailbox.join(format!("{}.eml", d.id))).unwrap();
    assert!(eml.contains("Subject: Welcome, Ada\r\n"), "{eml}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn each_email_is_one_file_sqlite() {
    each_email_is_one_file(Backend::Sqlite).await;
}

#[tokio::test]
async fn each_email_is_one_file_postgres() {
    each_email_is_one_file(Backend::Postgres).await;
}

#[tokio::test]
async fn a_full_disk_delays_the_email_and_loses_nothing_sqlite() {
    a_full_disk_delays_the_email_and_loses_nothing(Backend::Sqlite).await;
}
