//! The hosted pages over real HTTP (`clm_testkit::http::request`), with contacts and lifecycle in
//! one process sending through a real SMTP server, on SQLite and PostgreSQL: the unsubscribe
//! link of a received email opens a form that changes nothing; the one-click POST (RFC 8058)
//! withdraws exactly that consent in contacts and stops that purpose's messages at once; a second
//! POST changes nothing, a later message's link after a new grant records again; an edited link is the 404 page; every answer carries the headers that
//! keep tokens in URLs private.

use std::time::Duration;

use clm_contacts::ContactsService;
use clm_lifecycle::LifecycleService;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use clm_testkit::http::{Answer, request};
use clm_testkit::smtp::SmtpSink;
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb};
use sea_orm::ConnectionTrait;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Lc = LifecycleServiceClient<InterceptedService<Channel, BearerInterceptor>>;
type Ct = ContactsServiceClient<InterceptedService<Channel, BearerInterceptor>>;

const PUBLIC_URL: &str = "https://clm.example.com";
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

fn consent(purpose: cpb::ConsentPurpose) -> cpb::Consent {
    cpb::Consent {
        channel: cpb::ConsentChannel::Email as i32,
        status: cpb::ConsentStatus::Granted as i32,
        purpose: purpose as i32,
        source: "signup-form".into(),
        ..Default::default()
    }
}

fn template(purpose: pb::MessagePurpose) -> pb::MessageTemplate {
    pb::MessageTemplate {
        display_name: format!("{purpose:?}"),
        channel: pb::MessageChannel::Email as i32,
        purpose: purpose as i32,
        email: Some(pb::EmailContent {
            subject: "Hello".into(),
            html_body: r#"<p>Hi</p><a href="{{ unsubscribe_url }}">unsubscribe</a>"#.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_template(lc: &mut Lc, purpose: pb::MessagePurpose) -> String {
    lc.create_message_template(pb::CreateMessageTemplateRequest {
        message_template: Some(template(purpose)),
        request_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .message_template
    .unwrap()
    .id
}

/// Send `template` to `contact` and wait until the delivery is in `state`.
async fn send(lc: &mut Lc, template: &str, contact: &str, state: pb::DeliveryState) -> pb::Delivery {
    let d = lc
        .send_message(pb::SendMessageRequest {
            template_id: template.into(),
            contact_id: contact.into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    testing::wait_for(&format!("delivery {} {state:?}", d.id), async || {
        let d = lc.get_delivery(pb::GetDeliveryRequest { id: d.id.clone() }).await.unwrap().into_inner().delivery?;
        (d.state == state as i32).then_some(d)
    })
    .await
}

fn email_consent(c: &cpb::Contact, purpose: cpb::ConsentPurpose) -> cpb::Consent {
    c.consents
        .iter()
        .find(|x| x.channel == cpb::ConsentChannel::Email as i32 && x.purpose == purpose as i32)
        .cloned()
        .unwrap_or_else(|| panic!("an email {purpose:?} consent: {c:?}"))
}

/// Every answer of the hosted pages, whatever its status, keeps its URL's token private and
/// loads nothing from anywhere.
fn assert_private(a: &Answer) {
    assert_eq!(a.header("cache-control"), Some("no-store"), "{a:?}");
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{a:?}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{a:?}");
    assert_eq!(a.header("x-frame-options"), Some("DENY"), "{a:?}");
    let csp = a.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-")
            && csp.contains("frame-ancestors 'none'")
            && csp.contains("form-action 'self'"),
        "{csp}"
    );
}

/// A page: private (above), a whole accessible HTML document, nothing external, no script.
fn assert_page(a: &Answer) {
    assert_private(a);
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"), "{a:?}");
    assert!(a.body.starts_with("<!DOCTYPE html>") && a.body.contains("<html lang=\"en\">"), "{}", a.body);
    assert!(a.body.contains(r#"name="viewport""#) && a.body.contains("<title>"), "{}", a.body);
    assert!(!a.body.contains("<script") && !a.body.contains("http"), "nothing external: {}", a.body);
}

/// The UnsubscribeRecorded events lifecycle has written to its outbox.
async fn unsubscribe_events(db: &sea_orm::DatabaseConnection) -> usize {
    let sql = "SELECT event_id FROM outbox WHERE subject = 'clm.lifecycle.delivery.UnsubscribeRecorded'";
    let stmt = sea_orm::Statement::from_string(db.get_database_backend(), sql);
    db.query_all_raw(stmt).await.unwrap().len()
}

async fn one_click_unsubscribe_withdraws_that_consent(backend: Backend) {
    let Some(cdb) = TestDb::create(backend, "pagesc").await else { return };
    let Some(ldb) = TestDb::create(backend, "pagesl").await else { return };
    let sink = SmtpSink::start().await;
    let settings = testing::settings(&[
        ("CLM_CONTACTS__DATABASE_URL", cdb.url.as_str()),
        ("CLM_LIFECYCLE__DATABASE_URL", ldb.url.as_str()),
        ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
        ("CLM_MESSAGING__SMTP_URL", sink.url().as_str()),
        ("CLM_MESSAGING__PUBLIC_URL", PUBLIC_URL),
        ("CLM_MESSAGING__LINK_SECRET", "a-link-secret-for-the-tests-0123456789"),
        ("CLM_MESSAGING__POLL_INTERVAL_MS", "50"),
    ]);
    let lifecycle_db = clm_platform::db::connect(&ldb.url, &settings.database).await.unwrap();
    let server = testing::spawn_pair::<ContactsService, LifecycleService>(settings).await;
    let pages = server.pages_url();
    let ch = server.authed(&testing::token("acme", "clm.admin")).await;
    let (mut ct, mut lc): (Ct, Lc) = (ContactsServiceClient::new(ch.clone()), LifecycleServiceClient::new(ch));

    let ana = ct
        .create_contact(cpb::CreateContactRequest {
            contact: Some(cpb::Contact {
                email: "ana@example.com".into(),
                given_name: "Ana".into(),
                consents: vec![consent(cpb::ConsentPurpose::Marketing), consent(cpb::ConsentPurpose::Feedback)],
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
    let news = create_template(&mut lc, pb::MessagePurpose::Marketing).await;
    let survey = create_template(&mut lc, pb::MessagePurpose::Feedback).await;
    let preview = async |lc: &mut Lc, template: &str| {
        let r = pb::RenderMessageTemplateRequest { id: template.into(), contact_id: ana.clone(), ..Default::default() };
        lc.render_message_template(r).await.unwrap().into_inner().suppressed_reason
    };

    // The email's List-Unsubscribe link, opened on the test's pages server.
    send(&mut lc, &news, &ana, pb::DeliveryState::Sent).await;
    let mail = sink.wait_for_messages(1, Duration::from_secs(10)).await;
    let header = mail[0].header("List-Unsubscribe").expect("List-Unsubscribe");
    let link = header.trim_start_matches('<').trim_end_matches('>');
    let path = link.strip_prefix(PUBLIC_URL).expect("the public URL");
    assert!(path.starts_with("/u/"), "{link}");
    assert!(mail[0].text().contains(link), "the body links the same page");
    let url = format!("{pages}{path}");

    // GET shows the form and changes nothing (mail scanners open links by themselves).
    for _ in 0..2 {
        let got = request("GET", &url, &[], b"").await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_page(&got);
        assert!(got.body.contains(r#"<form method="post">"#) && got.body.contains("<button"), "{}", got.body);
        assert!(got.body.contains("marketing emails"), "{}", got.body);
        let head = request("HEAD", &url, &[], b"").await;
        assert_eq!(head.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(preview(&mut lc, &news).await, "", "a GET does not unsubscribe");
    assert_eq!(unsubscribe_events(&lifecycle_db).await, 0);

    // The one-click POST a mail client sends: recorded, confirmed.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let done = request("POST", &url, &form, ONE_CLICK.as_bytes()).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_page(&done);
    assert!(done.body.contains("You are unsubscribed"), "{}", done.body);
    // Lifecycle stops at once, before contacts has applied it.
    let why = preview(&mut lc, &news).await;
    assert!(why.contains("unsubscribed") || why.contains("withdrew"), "{why}");
    // Contacts withdraws exactly that consent, from the link.
    let withdrawn = testing::wait_for("the marketing consent withdrawn", async || {
        let got = ct.get_contact(cpb::GetContactRequest { id: ana.clone() }).await.unwrap().into_inner();
        let c = got.contact.unwrap();
        let m = email_consent(&c, cpb::ConsentPurpose::Marketing);
        (m.status == cpb::ConsentStatus::Withdrawn as i32).then_some(c)
    })
    .await;
    assert_eq!(email_consent(&withdrawn, cpb::ConsentPurpose::Marketing).source, "unsubscribe-link");
    let feedback = email_consent(&withdrawn, cpb::ConsentPurpose::Feedback);
    assert_eq!(feedback.status, cpb::ConsentStatus::Granted as i32, "other purposes stay");
    assert_eq!(unsubscribe_events(&lifecycle_db).await, 1);

    // The same link again (the page's form, multipart as some clients send it): the same
    // page, nothing new recorded.
    let multipart = "--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b--\r\n";
    let again =
        request("POST", &url, &[("content-type", "multipart/form-data; boundary=b")], multipart.as_bytes()).await;
    assert_eq!((again.status, again.body.as_str()), (done.status, done.body.as_str()));
    assert_eq!(unsubscribe_events(&lifecycle_db).await, 1, "no second event");

    // Marketing is skipped now; feedback still goes.
    let skipped = send(&mut lc, &news, &ana, pb::DeliveryState::Skipped).await;
    assert!(skipped.reason.contains("unsubscribed") || skipped.reason.contains("withdrew"), "{}", skipped.reason);
    send(&mut lc, &survey, &ana, pb::DeliveryState::Sent).await;

    // Subscribed again, then unsubscribed through a later message's link: a new decision,
    // recorded and published again (it wins over the grant in between).
    ct.update_contact(cpb::UpdateContactRequest {
        contact: Some(cpb::Contact {
            id: ana.clone(),
            consents: vec![consent(cpb::ConsentPurpose::Marketing), consent(cpb::ConsentPurpose::Feedback)],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["consents".into()] }),
    })
    .await
    .unwrap();
    assert_eq!(preview(&mut lc, &news).await, "", "granted after the unsubscribe");
    let later = send(&mut lc, &news, &ana, pb::DeliveryState::Sent).await;
    let mails = sink.wait_for_messages(3, Duration::from_secs(10)).await;
    let message_id = format!("<{}@clm>", later.id);
    let later_mail = mails.iter().find(|m| m.header("Message-ID").as_deref() == Some(&message_id)).expect("mail");
    let later_link = later_mail.header("List-Unsubscribe").expect("List-Unsubscribe");
    let later_path = later_link.trim_start_matches('<').trim_end_matches('>').strip_prefix(PUBLIC_URL).unwrap();
    assert_ne!(later_path, path, "a link per delivery");
    let done = request("POST", &format!("{pages}{later_path}"), &form, ONE_CLICK.as_bytes()).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(unsubscribe_events(&lifecycle_db).await, 2, "a new decision is published");
    testing::wait_for("the marketing consent withdrawn again", async || {
        let got = ct.get_contact(cpb::GetContactRequest { id: ana.clone() }).await.unwrap().into_inner();
        let m = email_consent(&got.contact.unwrap(), cpb::ConsentPurpose::Marketing);
        (m.status == cpb::ConsentStatus::Withdrawn as i32).then_some(())
    })
    .await;
    let why = preview(&mut lc, &news).await;
    assert!(why.contains("unsubscribed") || why.contains("withdrew"), "{why}");

    // An edited or forged link is the same 404 as any unknown path, and records nothing.
    let token = path.strip_prefix("/u/").unwrap();
    let (body, sig) = token.split_once('.').unwrap();
    let flipped = if sig.ends_with('A') { 'B' } else { 'A' };
    let edited = format!("{body}.{}{flipped}", &sig[..sig.len() - 1]);
    let unknown = request("GET", &format!("{pages}/nothing-here"), &[], b"").await;
    assert_eq!(unknown.status, 404);
    assert_page(&unknown);
    for (method, token) in [("GET", edited.as_str()), ("POST", edited.as_str()), ("POST", body), ("POST", "x.y")] {
        let got = request(method, &format!("{pages}/u/{token}"), &form, ONE_CLICK.as_bytes()).await;
        assert_eq!(got.status, 404, "{method} {token}: {got:?}");
        assert_eq!(got.body, unknown.body, "nothing tells a forged link from an unknown path");
        assert_page(&got);
    }
    assert_eq!(unsubscribe_events(&lifecycle_db).await, 2);

    // A body over pages.max_body_bytes is refused before the page runs.
    let big = vec![b'a'; 64 * 1024];
    let refused = request("POST", &url, &form, &big).await;
    assert_eq!(refused.status, 413, "{refused:?}");
    assert_private(&refused);
}

/// A preview (RenderMessageTemplate) links a page that says it is a preview: whoever tries the
/// link from a preview of a real contact unsubscribes nobody.
async fn a_previews_unsubscribe_link_unsubscribes_nobody(backend: Backend) {
    let Some(cdb) = TestDb::create(backend, "pvc").await else { return };
    let Some(ldb) = TestDb::create(backend, "pvl").await else { return };
    let settings = testing::settings(&[
        ("CLM_CONTACTS__DATABASE_URL", cdb.url.as_str()),
        ("CLM_LIFECYCLE__DATABASE_URL", ldb.url.as_str()),
        ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "3600000"),
        ("CLM_MESSAGING__PUBLIC_URL", PUBLIC_URL),
        ("CLM_MESSAGING__LINK_SECRET", "a-link-secret-for-the-tests-0123456789"),
    ]);
    let lifecycle_db = clm_platform::db::connect(&ldb.url, &settings.database).await.unwrap();
    let server = testing::spawn_pair::<ContactsService, LifecycleService>(settings).await;
    let ch = server.authed(&testing::token("acme", "clm.admin")).await;
    let (mut ct, mut lc): (Ct, Lc) = (ContactsServiceClient::new(ch.clone()), LifecycleServiceClient::new(ch));
    let contact = cpb::Contact {
        email: "ana@example.com".into(),
        consents: vec![consent(cpb::ConsentPurpose::Marketing)],
        ..Default::default()
    };
    let req = cpb::CreateContactRequest { contact: Some(contact), ..Default::default() };
    let ana = ct.create_contact(req).await.unwrap().into_inner().contact.unwrap().id;
    let news = create_template(&mut lc, pb::MessagePurpose::Marketing).await;
    let r = pb::RenderMessageTemplateRequest { id: news, contact_id: ana.clone(), ..Default::default() };
    let shown = lc.render_message_template(r.clone()).await.unwrap().into_inner();
    let link = shown.html_body.split("href=\"").nth(1).and_then(|l| l.split('"').next()).expect("a link");
    assert_eq!(link.replace("&#x2f;", "/"), format!("{PUBLIC_URL}/u/preview"), "{}", shown.html_body);

    let url = format!("{}/u/preview", server.pages_url());
    let form = [("content-type", "application/x-www-form-urlencoded")];
    for (method, body) in [("GET", &b""[..]), ("POST", ONE_CLICK.as_bytes())] {
        let got = request(method, &url, &form, body).await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_page(&got);
        assert!(got.body.contains("preview"), "{}", got.body);
        assert!(!got.body.contains("<form"), "nothing to press: {}", got.body);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(unsubscribe_events(&lifecycle_db).await, 0);
    let again = lc.render_message_template(r).await.unwrap().into_inner();
    assert_eq!(again.suppressed_reason, "", "still subscribed");
}

clm_testkit::backend_tests!(
    one_click_unsubscribe_withdraws_that_consent,
    a_previews_unsubscribe_link_unsubscribes_nobody
);
