//! Contacts over real gRPC on a real socket, against SQLite and PostgreSQL.

use clm_contacts::ContactsService;
use clm_proto::common::v1::Money;
use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb, TestServer, violated_fields};
use prost_types::FieldMask;
use sea_orm::{ConnectionTrait, Database};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = ContactsServiceClient<InterceptedService<Channel, BearerInterceptor>>;

const RW: &str = "clm.read clm.write";

async fn setup(backend: Backend, label: &str) -> Option<(TestServer, TestDb)> {
    let db = TestDb::create(backend, label).await?;
    let server = testing::spawn::<ContactsService>(testing::settings(&[("CLM_CONTACTS__DATABASE_URL", &db.url)])).await;
    Some((server, db))
}

async fn client(server: &TestServer, tenant: &str, scope: &str) -> Client {
    ContactsServiceClient::new(server.authed(&testing::token(tenant, scope)).await)
}

fn contact(email: &str, given: &str, family: &str) -> pb::Contact {
    pb::Contact { email: email.into(), given_name: given.into(), family_name: family.into(), ..Default::default() }
}

async fn create(c: &mut Client, contact: pb::Contact) -> pb::Contact {
    c.create_contact(pb::CreateContactRequest { contact: Some(contact), request_id: String::new() })
        .await
        .expect("create")
        .into_inner()
        .contact
        .expect("contact")
}

fn nf<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) {
    assert_eq!(r.expect_err("must not see tenant A").code(), Code::NotFound);
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| (*p).to_string()).collect() })
}

async fn lifecycle_of_a_record(backend: Backend) {
    let Some((server, db)) = setup(backend, "crud").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let full = pb::Contact {
        email: "Ada@Example.com".into(),
        phone: "+44 20 7946 0958".into(),
        given_name: "Ada".into(),
        family_name: "Lovelace".into(),
        company: "Analytical Engines".into(),
        job_title: "Programmer".into(),
        demographics: Some(pb::Demographics {
            birth_year: 1990,
            gender: pb::Gender::Female as i32,
            locale: "en-GB".into(),
            country_code: "gb".into(),
            region: "London".into(),
            city: "London".into(),
            ..Default::default()
        }),
        psychographics: Some(pb::Psychographics { interests: vec!["maths".into()], values: vec!["curiosity".into()] }),
        tags: vec!["vip".into(), "b2b".into()],
        attributes: [
            (
                "plan".to_string(),
                pb::AttributeValue { kind: Some(pb::attribute_value::Kind::StringValue("pro".into())) },
            ),
            ("seats".to_string(), pb::AttributeValue { kind: Some(pb::attribute_value::Kind::NumberValue(12.0)) }),
        ]
        .into(),
        consents: vec![pb::Consent {
            channel: pb::ConsentChannel::Email as i32,
            status: pb::ConsentStatus::Granted as i32,
            update_time: None,
            source: "signup".into(),
            purpose: pb::ConsentPurpose::Unspecified as i32,
        }],
        acquisition: Some(pb::Acquisition {
            channel: pb::AcquisitionChannel::PaidSearch as i32,
            campaign: "spring".into(),
            cost: Some(Money { currency_code: "eur".into(), units: 12, nanos: 500_000_000 }),
            ..Default::default()
        }),
        lead_score: 70,
        ..Default::default()
    };
    let created = create(&mut c, full).await;
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.phone, "+442079460958");
    assert_eq!(created.demographics.as_ref().unwrap().country_code, "GB");
    assert_eq!(created.acquisition.as_ref().unwrap().cost.as_ref().unwrap().currency_code, "EUR");
    assert_eq!(created.state, pb::ContactState::Active as i32);
    assert!(!created.etag.is_empty());

    let got =
        c.get_contact(pb::GetContactRequest { id: created.id.clone() }).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(got, created);

    // Update two fields with the current etag.
    let upd = c
        .update_contact(pb::UpdateContactRequest {
            contact: Some(pb::Contact {
                id: created.id.clone(),
                etag: created.etag.clone(),
                job_title: "Countess".into(),
                tags: vec!["vip".into()],
                ..Default::default()
            }),
            update_mask: mask(&["job_title", "tags"]),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(upd.job_title, "Countess");
    assert_eq!(upd.tags, vec!["vip"]);
    assert_eq!(upd.company, "Analytical Engines", "fields outside the mask are kept");
    assert_ne!(upd.etag, created.etag);

    // A stale etag is ABORTED and nothing is overwritten.
    let err = c
        .update_contact(pb::UpdateContactRequest {
            contact: Some(pb::Contact {
                id: created.id.clone(),
                etag: created.etag.clone(),
                job_title: "X".into(),
                ..Default::default()
            }),
            update_mask: mask(&["job_title"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let now =
        c.get_contact(pb::GetContactRequest { id: created.id.clone() }).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(now.job_title, "Countess");

    // Unknown mask path.
    let err = c
        .update_contact(pb::UpdateContactRequest {
            contact: Some(pb::Contact { id: created.id.clone(), ..Default::default() }),
            update_mask: mask(&["create_time"]),
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["update_mask".to_string()]));

    // Soft delete hides it from lists; undelete brings it back.
    let del = c
        .delete_contact(pb::DeleteContactRequest { id: created.id.clone(), etag: now.etag.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.contact.unwrap().state, pb::ContactState::Deleted as i32);
    let list = c.list_contacts(pb::ListContactsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.total_size, 0);
    let list = c
        .list_contacts(pb::ListContactsRequest { show_deleted: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total_size, 1);
    let back = c.undelete_contact(pb::UndeleteContactRequest { id: created.id.clone() }).await.unwrap().into_inner();
    assert_eq!(back.contact.unwrap().state, pb::ContactState::Active as i32);

    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn idempotent_create_and_duplicate_email(backend: Backend) {
    let Some((server, db)) = setup(backend, "idem").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let rid = uuid::Uuid::new_v4().to_string();
    let req = || pb::CreateContactRequest {
        contact: Some(contact("grace@navy.mil", "Grace", "Hopper")),
        request_id: rid.clone(),
    };
    let first = c.create_contact(req()).await.unwrap().into_inner().contact.unwrap();
    let retry = c.create_contact(req()).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(first.id, retry.id, "a retry returns the same contact");
    let list = c.list_contacts(pb::ListContactsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.total_size, 1, "never a duplicate");

    let err = c
        .create_contact(pb::CreateContactRequest {
            contact: Some(contact("GRACE@navy.mil", "G", "H")),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&first.id), "names the existing id: {}", err.message());

    // Eight concurrent calls with one new request id: one contact, and every caller gets it
    // (or ABORTED while the winner is still in flight), never a duplicate or another error.
    let rid = uuid::Uuid::new_v4().to_string();
    let calls = (0..8).map(|_| {
        let mut c = c.clone();
        let rid = rid.clone();
        async move {
            c.create_contact(pb::CreateContactRequest {
                contact: Some(contact("ada@example.com", "Ada", "Lovelace")),
                request_id: rid,
            })
            .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .filter_map(|a| match a {
            Ok(r) => Some(r.get_ref().contact.as_ref().unwrap().id.clone()),
            Err(s) => {
                assert_eq!(s.code(), Code::Aborted, "{s:?}");
                None
            }
        })
        .collect();
    assert_eq!(ids.len(), 1, "one contact for one request id: {answers:?}");
    let list = c.list_contacts(pb::ListContactsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.total_size, 2);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn bad_input_is_invalid_argument_with_the_field(backend: Backend) {
    let Some((server, db)) = setup(backend, "bad").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let base = || contact("ok@example.com", "A", "B");
    let attr = |k: &str| {
        let mut x = base();
        x.attributes.insert(k.into(), pb::AttributeValue { kind: Some(pb::attribute_value::Kind::BoolValue(true)) });
        x
    };
    let cases: Vec<(pb::Contact, &str)> = vec![
        (pb::Contact { email: "not-an-email".into(), ..base() }, "contact.email"),
        (pb::Contact { email: "zoë@@x.com".into(), ..base() }, "contact.email"),
        (pb::Contact { phone: "12345".into(), ..base() }, "contact.phone"),
        (
            pb::Contact {
                demographics: Some(pb::Demographics { country_code: "XX".into(), ..Default::default() }),
                ..base()
            },
            "contact.demographics.country_code",
        ),
        (
            pb::Contact { demographics: Some(pb::Demographics { birth_year: 1700, ..Default::default() }), ..base() },
            "contact.demographics.birth_year",
        ),
        (
            pb::Contact {
                acquisition: Some(pb::Acquisition {
                    cost: Some(Money { currency_code: "EUR".into(), units: -5, nanos: 0 }),
                    ..Default::default()
                }),
                ..base()
            },
            "contact.acquisition.cost",
        ),
        (
            pb::Contact {
                acquisition: Some(pb::Acquisition {
                    cost: Some(Money { currency_code: "XYZ".into(), units: 5, nanos: 0 }),
                    ..Default::default()
                }),
                ..base()
            },
            "contact.acquisition.cost.currency_code",
        ),
        (
            pb::Contact {
                acquisition: Some(pb::Acquisition { referred_by_contact_id: "nope".into(), ..Default::default() }),
                ..base()
            },
            "contact.acquisition.referred_by_contact_id",
        ),
        (
            pb::Contact {
                acquisition: Some(pb::Acquisition {
                    referred_by_contact_id: uuid::Uuid::new_v4().to_string(),
                    ..Default::default()
                }),
                ..base()
            },
            "contact.acquisition.referred_by_contact_id",
        ),
        (attr("Not-An-Identifier"), "contact.attributes.Not-An-Identifier"),
        (pb::Contact { tags: (0..51).map(|i| format!("t{i}")).collect(), ..base() }, "contact.tags"),
        (pb::Contact { given_name: "x".repeat(257), ..base() }, "contact.given_name"),
        (pb::Contact { lead_score: 101, ..base() }, "contact.lead_score"),
        (
            pb::Contact { demographics: Some(pb::Demographics { gender: 99, ..Default::default() }), ..base() },
            "contact.demographics.gender",
        ),
    ];
    for (bad, field) in cases {
        let err = c
            .create_contact(pb::CreateContactRequest { contact: Some(bad), request_id: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violated_fields(&err), vec![field.to_string()], "{field}: {}", err.message());
    }
    // Several bad fields at once are all reported.
    let err = c
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact { email: "x".into(), phone: "y".into(), ..base() }),
            request_id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(fields, vec!["contact.email", "contact.phone", "request_id"]);

    let err = c.get_contact(pb::GetContactRequest { id: "123".into() }).await.unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["id".to_string()]));
    let err = c.list_contacts(pb::ListContactsRequest { page_size: 1001, ..Default::default() }).await.unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["page_size".to_string()]));
    let err =
        c.list_contacts(pb::ListContactsRequest { order_by: "email".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(violated_fields(&err), vec!["order_by".to_string()]);
    let err = c
        .batch_get_contacts(pb::BatchGetContactsRequest { ids: vec![uuid::Uuid::nil().to_string(); 1001] })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["ids".to_string()]);
    let err =
        c.create_contact(pb::CreateContactRequest { contact: None, request_id: String::new() }).await.unwrap_err();
    assert_eq!(violated_fields(&err), vec!["contact".to_string()]);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn list_filters_orders_and_pages(backend: Backend) {
    let Some((server, db)) = setup(backend, "list").await else { return };
    let mut c = client(&server, "acme", RW).await;
    for i in 0..30 {
        let mut x = contact(&format!("p{i:02}@example.com"), &format!("Person{i:02}"), &format!("Family{:02}", 29 - i));
        x.lead_score = i * 3 + 1;
        x.company = if i % 2 == 0 { "Acme Corp".into() } else { "Globex".into() };
        if i % 3 == 0 {
            x.tags = vec!["VIP".into()];
        }
        if i % 5 == 0 {
            x.attributes.insert(
                "plan".into(),
                pb::AttributeValue { kind: Some(pb::attribute_value::Kind::StringValue("pro".into())) },
            );
        }
        x.acquisition = Some(pb::Acquisition {
            channel: if i < 10 {
                pb::AcquisitionChannel::Referral as i32
            } else {
                pb::AcquisitionChannel::Social as i32
            },
            ..Default::default()
        });
        create(&mut c, x).await;
    }
    let count = |filter: &str| {
        let mut c = c.clone();
        let filter = filter.to_string();
        async move {
            c.list_contacts(pb::ListContactsRequest { filter: filter.clone(), page_size: 1000, ..Default::default() })
                .await
                .unwrap_or_else(|e| panic!("{filter}: {e:?}"))
                .into_inner()
                .total_size
        }
    };
    assert_eq!(count(r#"tags:"vip""#).await, 10);
    assert_eq!(count(r#"tags:"vip" AND lead_score >= 45"#).await, 5);
    assert_eq!(count(r#"attributes.plan = "pro""#).await, 6);
    assert_eq!(count(r#"attributes.plan != "pro""#).await, 24);
    assert_eq!(count("attributes.plan:*").await, 6);
    assert_eq!(count(r#"company:"acme""#).await, 15);
    assert_eq!(count(r#"NOT company:"acme" OR tags:"vip""#).await, 20);
    assert_eq!(count(r#"(lead_score < 9 OR lead_score > 80) AND acquisition.channel = "referral""#).await, 3);
    assert_eq!(count(r#"email = "P07@EXAMPLE.COM""#).await, 1);
    assert_eq!(count(r#"create_time > "2000-01-01T00:00:00Z""#).await, 30);
    assert_eq!(count(r#"given_name = "x'; DROP TABLE contacts; --""#).await, 0, "values are parameters");
    assert_eq!(count("").await, 30);

    // A bad filter says where.
    let err = c
        .list_contacts(pb::ListContactsRequest { filter: "lead_score >>".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("column"), "{}", err.message());
    let err = c
        .list_contacts(pb::ListContactsRequest { filter: "shoe_size = 9".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("unknown field `shoe_size`"), "{}", err.message());

    // Paging by family_name desc visits every row once, in order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_contacts(pb::ListContactsRequest {
                page_size: 7,
                page_token: token.clone(),
                order_by: "family_name desc".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.contacts.iter().map(|x| x.family_name.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected = seen.clone();
    expected.sort();
    expected.reverse();
    assert_eq!(seen.len(), 30);
    assert_eq!(seen, expected);

    // Lead-score order, then a tampered token and a token reused with another filter.
    let page = c
        .list_contacts(pb::ListContactsRequest {
            page_size: 5,
            order_by: "lead_score desc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.contacts[0].lead_score, 88);
    let mut bad = page.next_page_token.clone().into_bytes();
    bad[3] = if bad[3] == b'A' { b'B' } else { b'A' };
    let err = c
        .list_contacts(pb::ListContactsRequest {
            page_size: 5,
            order_by: "lead_score desc".into(),
            page_token: String::from_utf8(bad).unwrap(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), violated_fields(&err)), (Code::InvalidArgument, vec!["page_token".to_string()]));
    let err = c
        .list_contacts(pb::ListContactsRequest { page_size: 5, page_token: page.next_page_token, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn tenants_are_isolated(backend: Backend) {
    let Some((server, db)) = setup(backend, "tenants").await else { return };
    let mut a = client(&server, "tenant-a", "clm.admin").await;
    let mut b = client(&server, "tenant-b", "clm.admin").await;
    let mut x = contact("shared@example.com", "Alice", "A");
    x.tags = vec!["secret".into()];
    let alice = create(&mut a, x).await;
    let referred = create(
        &mut a,
        pb::Contact {
            acquisition: Some(pb::Acquisition { referred_by_contact_id: alice.id.clone(), ..Default::default() }),
            ..contact("r@example.com", "R", "R")
        },
    )
    .await;
    let seg_a = a
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: "secret".into(),
                filter: r#"tags:"secret""#.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let page_a =
        a.list_contacts(pb::ListContactsRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert!(!page_a.next_page_token.is_empty());

    nf(b.get_contact(pb::GetContactRequest { id: alice.id.clone() }).await);
    nf(b.update_contact(pb::UpdateContactRequest {
        contact: Some(pb::Contact { id: alice.id.clone(), given_name: "Mallory".into(), ..Default::default() }),
        update_mask: mask(&["given_name"]),
    })
    .await);
    nf(b.delete_contact(pb::DeleteContactRequest { id: alice.id.clone(), etag: String::new() }).await);
    nf(b.undelete_contact(pb::UndeleteContactRequest { id: alice.id.clone() }).await);
    nf(b.erase_contact(pb::EraseContactRequest { id: alice.id.clone(), reason: String::new() }).await);
    nf(b.get_segment(pb::GetSegmentRequest { id: seg_a.id.clone() }).await);
    nf(b.count_segment(pb::CountSegmentRequest { segment_id: seg_a.id.clone() }).await);
    nf(b.list_segment_members(pb::ListSegmentMembersRequest { segment_id: seg_a.id.clone(), ..Default::default() })
        .await);
    nf(b.delete_segment(pb::DeleteSegmentRequest { id: seg_a.id.clone(), etag: String::new() }).await);
    nf(b.list_referrals(pb::ListReferralsRequest { contact_id: alice.id.clone(), ..Default::default() }).await);
    nf(b.update_segment(pb::UpdateSegmentRequest {
        segment: Some(pb::Segment { id: seg_a.id.clone(), display_name: "mine".into(), ..Default::default() }),
        update_mask: mask(&["display_name"]),
    })
    .await);
    nf(b.merge_contacts(pb::MergeContactsRequest {
        survivor_id: alice.id.clone(),
        merged_ids: vec![referred.id.clone()],
        ..Default::default()
    })
    .await);
    let batch =
        b.batch_get_contacts(pb::BatchGetContactsRequest { ids: vec![alice.id.clone()] }).await.unwrap().into_inner();
    assert!(batch.contacts.is_empty() && batch.missing_ids == vec![alice.id.clone()]);
    for filter in [r#"email = "shared@example.com""#, r#"tags:"secret""#, ""] {
        let l = b
            .list_contacts(pb::ListContactsRequest { filter: filter.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(l.total_size, 0, "{filter}");
    }
    let segs = b.list_segments(pb::ListSegmentsRequest::default()).await.unwrap().into_inner();
    assert!(segs.segments.is_empty());
    let err = b
        .list_contacts(pb::ListContactsRequest {
            page_size: 1,
            page_token: page_a.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "a page token from another tenant is refused");
    let mut export = b.export_contacts(pb::ExportContactsRequest::default()).await.unwrap().into_inner();
    assert!(export.message().await.unwrap().is_none());
    // Importing tenant A's email in tenant B creates B's own contact; A's is untouched.
    let mut out = b
        .import_contacts(tokio_stream::iter(vec![pb::ImportContactsRequest {
            contacts: vec![pb::Contact { given_name: "Imported".into(), ..contact("shared@example.com", "", "") }],
        }]))
        .await
        .unwrap()
        .into_inner();
    let first = out.message().await.unwrap().unwrap();
    let Some(pb::import_contacts_response::Result::Rows(rows)) = first.result else { panic!("rows first") };
    assert_eq!(rows.results[0].outcome, pb::ImportOutcome::Created as i32);
    assert_ne!(rows.results[0].contact_id, alice.id);
    while out.message().await.unwrap().is_some() {}
    // Referring across tenants is refused as "no such contact".
    let err = b
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                acquisition: Some(pb::Acquisition { referred_by_contact_id: alice.id.clone(), ..Default::default() }),
                ..contact("x@example.com", "X", "X")
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Tenant A is untouched.
    let still =
        a.get_contact(pb::GetContactRequest { id: alice.id.clone() }).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(still.given_name, "Alice");
    let n = a.count_segment(pb::CountSegmentRequest { segment_id: seg_a.id }).await.unwrap().into_inner().count;
    assert_eq!(n, 1);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn scopes_and_tokens_are_enforced(backend: Backend) {
    let Some((server, db)) = setup(backend, "auth").await else { return };
    let mut anon = ContactsServiceClient::new(server.channel().await);
    let err = anon.list_contacts(pb::ListContactsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut reader = client(&server, "acme", "clm.read").await;
    reader.list_contacts(pb::ListContactsRequest::default()).await.unwrap();
    let err = reader
        .create_contact(pb::CreateContactRequest {
            contact: Some(contact("a@b.co", "A", "B")),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut writer = client(&server, "acme", RW).await;
    let c = create(&mut writer, contact("a@b.co", "A", "B")).await;
    let err =
        writer.erase_contact(pb::EraseContactRequest { id: c.id.clone(), reason: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "erase needs clm.admin");
    let forged = ContactsServiceClient::new(server.authed(&format!("{}x", testing::token("acme", RW))).await)
        .list_contacts(pb::ListContactsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn import_upserts_and_reports_every_row(backend: Backend) {
    let Some((server, db)) = setup(backend, "import").await else { return };
    let mut c = client(&server, "acme", RW).await;
    create(&mut c, contact("existing@example.com", "Old", "Name")).await;
    const ROWS: usize = 10_000;
    let rows: Vec<pb::Contact> = (0..ROWS)
        .map(|i| match i {
            7 => contact("broken-email", "B", "B"),
            8 => pb::Contact { phone: "555".into(), ..contact("p8@example.com", "P", "P") },
            9 => contact("existing@example.com", "New", ""),
            // The same email twice in the stream: the second updates the first.
            10 | 11 => contact("twice@example.com", &format!("T{i}"), "T"),
            _ => contact(&format!("row{i}@example.com"), "Row", &format!("{i}")),
        })
        .collect();
    let batches: Vec<pb::ImportContactsRequest> =
        rows.chunks(500).map(|ch| pb::ImportContactsRequest { contacts: ch.to_vec() }).collect();
    let mut out = c.import_contacts(tokio_stream::iter(batches)).await.unwrap().into_inner();
    let mut results = Vec::new();
    let mut summary = None;
    while let Some(msg) = out.message().await.unwrap() {
        match msg.result.unwrap() {
            pb::import_contacts_response::Result::Rows(r) => results.extend(r.results),
            pb::import_contacts_response::Result::Summary(s) => summary = Some(s),
        }
    }
    let summary = summary.expect("a summary at the end");
    assert_eq!(results.len(), ROWS);
    assert_eq!(summary.received, ROWS as i64);
    assert_eq!(summary.skipped, 2);
    assert_eq!(summary.updated, 2, "existing@ and the second twice@");
    assert_eq!(summary.created, ROWS as i64 - 4);
    assert_eq!(results[7].outcome, pb::ImportOutcome::Skipped as i32);
    assert_eq!(results[7].field, "email");
    assert_eq!(results[8].field, "phone");
    assert_eq!(results[9].outcome, pb::ImportOutcome::Updated as i32);
    assert_eq!(results[11].outcome, pb::ImportOutcome::Updated as i32);
    assert_eq!(results[10].contact_id, results[11].contact_id);
    assert!(results.iter().enumerate().all(|(i, r)| r.row == i as i64));
    let total = c.list_contacts(pb::ListContactsRequest::default()).await.unwrap().into_inner().total_size;
    assert_eq!(total as usize, 1 + ROWS - 4);
    let existing = c
        .list_contacts(pb::ListContactsRequest {
            filter: r#"email = "existing@example.com""#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(existing.contacts[0].given_name, "New");
    assert_eq!(existing.contacts[0].family_name, "Name", "an upsert only overwrites the fields the row sets");

    // Export streams every row, in pages.
    let mut export = c.export_contacts(pb::ExportContactsRequest::default()).await.unwrap().into_inner();
    let mut exported = 0;
    let mut pages = 0;
    while let Some(page) = export.message().await.unwrap() {
        exported += page.contacts.len();
        pages += 1;
    }
    assert_eq!(exported, 1 + ROWS - 4);
    assert!(pages > 1);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn merge_folds_duplicates(backend: Backend) {
    let Some((server, db)) = setup(backend, "merge").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let survivor =
        create(&mut c, pb::Contact { tags: vec!["vip".into()], ..contact("ada@example.com", "Ada", "") }).await;
    let dup1 = create(
        &mut c,
        pb::Contact {
            tags: vec!["beta".into()],
            company: "Acme".into(),
            ..contact("ada.l@example.com", "A.", "Lovelace")
        },
    )
    .await;
    let dup2 = create(&mut c, pb::Contact { phone: "+14155550123".into(), ..contact("", "Augusta", "") }).await;
    let referred = create(
        &mut c,
        pb::Contact {
            acquisition: Some(pb::Acquisition { referred_by_contact_id: dup1.id.clone(), ..Default::default() }),
            ..contact("kid@example.com", "K", "K")
        },
    )
    .await;
    let merged = c
        .merge_contacts(pb::MergeContactsRequest {
            survivor_id: survivor.id.clone(),
            merged_ids: vec![dup1.id.clone(), dup2.id.clone()],
            prefer_merged_fields: None,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(merged.given_name, "Ada", "the survivor keeps what it has");
    assert_eq!(merged.family_name, "Lovelace", "gaps are filled");
    assert_eq!(merged.company, "Acme");
    assert_eq!(merged.phone, "+14155550123");
    assert_eq!(merged.email, "ada@example.com");
    let mut tags = merged.tags.clone();
    tags.sort();
    assert_eq!(tags, vec!["beta", "vip"]);
    let via_old =
        c.get_contact(pb::GetContactRequest { id: dup1.id.clone() }).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(via_old.id, survivor.id, "a merged id resolves to the survivor");
    let all = c.list_contacts(pb::ListContactsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.total_size, 2);
    let refs = c
        .list_referrals(pb::ListReferralsRequest { contact_id: survivor.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refs.total_count, 1);
    assert_eq!(refs.referred_contacts[0].id, referred.id);
    // The merged contact's email is free again.
    create(&mut c, contact("ada.l@example.com", "New", "Person")).await;
    let err = c
        .merge_contacts(pb::MergeContactsRequest {
            survivor_id: survivor.id.clone(),
            merged_ids: vec![survivor.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["merged_ids[0]".to_string()]);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn erase_removes_personal_data(backend: Backend) {
    let Some((server, db)) = setup(backend, "erase").await else { return };
    let mut c = client(&server, "acme", "clm.admin").await;
    let mut x = contact("erase.me@example.com", "Erin", "Erased");
    x.tags = vec!["t".into()];
    x.attributes
        .insert("k".into(), pb::AttributeValue { kind: Some(pb::attribute_value::Kind::StringValue("v".into())) });
    let victim = create(&mut c, x).await;
    let erased = c
        .erase_contact(pb::EraseContactRequest { id: victim.id.clone(), reason: "gdpr request 42".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.id, victim.id);
    let err = c.get_contact(pb::GetContactRequest { id: victim.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("erased"));
    let again = c
        .erase_contact(pb::EraseContactRequest { id: victim.id.clone(), reason: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.erase_time, erased.erase_time, "erasing twice is harmless");

    // Nothing personal is left in any table of the contacts database.
    let conn = Database::connect(&db.url).await.unwrap();
    for table in ["contacts", "contact_labels", "contact_attributes"] {
        let col = if table == "contacts" { "id" } else { "contact_id" };
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table} WHERE {col} = '{}'", victim.id),
            ))
            .await
            .unwrap()
            .unwrap();
        let n: i64 = row.try_get("", "n").unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT reason FROM erasures WHERE contact_id = '{}'", victim.id),
        ))
        .await
        .unwrap()
        .unwrap();
    let reason: String = row.try_get("", "reason").unwrap();
    assert_eq!(reason, "gdpr request 42");
    conn.close().await.ok();
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn segments_are_live(backend: Backend) {
    let Some((server, db)) = setup(backend, "segments").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let seg = c
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: "VIPs".into(),
                filter: r#"tags:"vip""#.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let count = |c: &mut Client| {
        let mut c = c.clone();
        let id = seg.id.clone();
        async move { c.count_segment(pb::CountSegmentRequest { segment_id: id }).await.unwrap().into_inner().count }
    };
    assert_eq!(count(&mut c).await, 0);
    let a = create(&mut c, pb::Contact { tags: vec!["vip".into()], ..contact("a@x.co", "A", "A") }).await;
    create(&mut c, contact("b@x.co", "B", "B")).await;
    assert_eq!(count(&mut c).await, 1, "membership follows the data");
    let members = c
        .list_segment_members(pb::ListSegmentMembersRequest { segment_id: seg.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.contacts.len(), 1);
    assert_eq!(members.contacts[0].id, a.id);
    // Update the filter (with etag), then a stale etag is refused.
    let upd = c
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                id: seg.id.clone(),
                etag: seg.etag.clone(),
                filter: r#"email:"x.co""#.into(),
                ..Default::default()
            }),
            update_mask: mask(&["filter"]),
        })
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(upd.display_name, "VIPs");
    assert_eq!(count(&mut c).await, 2);
    let err = c
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                id: seg.id.clone(),
                etag: seg.etag.clone(),
                display_name: "x".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let stale = pb::DeleteSegmentRequest { id: seg.id.clone(), etag: seg.etag.clone() };
    assert_eq!(c.delete_segment(stale).await.unwrap_err().code(), Code::Aborted);
    let err = c
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment { id: seg.id.clone(), ..Default::default() }),
            update_mask: mask(&["owner"]),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["update_mask"], "{err:?}");
    assert!(err.message().contains("unknown path \"owner\"; one of display_name, description, filter"), "{err:?}");
    let err = c
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: "bad".into(),
                filter: "tags = 1 AND".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["segment.filter".to_string()]);
    let listed = c.list_segments(pb::ListSegmentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.segments.len(), 1);
    c.delete_segment(pb::DeleteSegmentRequest { id: seg.id.clone(), etag: String::new() }).await.unwrap();
    let err = c.get_segment(pb::GetSegmentRequest { id: seg.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn concurrent_updates_one_wins(backend: Backend) {
    let Some((server, db)) = setup(backend, "race").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let x = create(&mut c, contact("race@example.com", "R", "R")).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let mut c = c.clone();
        let (id, etag) = (x.id.clone(), x.etag.clone());
        handles.push(tokio::spawn(async move {
            c.update_contact(pb::UpdateContactRequest {
                contact: Some(pb::Contact { id, etag, job_title: format!("writer {i}"), ..Default::default() }),
                update_mask: mask(&["job_title"]),
            })
            .await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            // SQLite may report a busy writer as UNAVAILABLE under contention; never a lost update.
            Err(e) => assert!(matches!(e.code(), Code::Aborted | Code::Unavailable), "{e:?}"),
        }
    }
    assert_eq!(ok, 1, "exactly one writer with the same etag wins");
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn batch_get_resolves_and_reports_missing(backend: Backend) {
    let Some((server, db)) = setup(backend, "batch").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let a = create(&mut c, contact("a@x.co", "A", "A")).await;
    let b = create(&mut c, contact("b@x.co", "B", "B")).await;
    let missing = uuid::Uuid::new_v4().to_string();
    let r = c
        .batch_get_contacts(pb::BatchGetContactsRequest { ids: vec![b.id.clone(), missing.clone(), a.id.clone()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.contacts.iter().map(|x| x.id.clone()).collect::<Vec<_>>(), vec![b.id, a.id]);
    assert_eq!(r.missing_ids, vec![missing]);
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// A timestamp in year 10000 (one second past the protobuf range).
fn year_10000() -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 }
}

/// A time 30 days from now.
fn next_month() -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 30 * 86_400, nanos: 0 }
}

async fn bad_times_and_amounts_are_refused_by_field(backend: Backend) {
    let Some((server, db)) = setup(backend, "badvalues").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let attr = |ts| {
        [("renewal".to_string(), pb::AttributeValue { kind: Some(pb::attribute_value::Kind::TimestampValue(ts)) })]
            .into()
    };
    let consent = |ts| pb::Consent {
        channel: pb::ConsentChannel::Email as i32,
        status: pb::ConsentStatus::Granted as i32,
        update_time: Some(ts),
        source: "web".into(),
        purpose: pb::ConsentPurpose::Marketing as i32,
    };
    let acquired = |ts| pb::Acquisition { acquire_time: Some(ts), ..Default::default() };
    let cost = |units| pb::Acquisition {
        cost: Some(Money { currency_code: "EUR".into(), units, nanos: 0 }),
        ..Default::default()
    };
    let base = || contact("t@example.com", "T", "T");
    let target = create(&mut c, contact("target@example.com", "T", "T")).await;
    let cases: Vec<(pb::Contact, &str)> = vec![
        (pb::Contact { acquisition: Some(acquired(year_10000())), ..base() }, "contact.acquisition.acquire_time"),
        (pb::Contact { acquisition: Some(acquired(next_month())), ..base() }, "contact.acquisition.acquire_time"),
        (
            pb::Contact {
                acquisition: Some(acquired(prost_types::Timestamp { seconds: -62_135_596_801, nanos: 0 })),
                ..base()
            },
            "contact.acquisition.acquire_time",
        ),
        (pb::Contact { consents: vec![consent(year_10000())], ..base() }, "contact.consents[0].update_time"),
        (pb::Contact { consents: vec![consent(next_month())], ..base() }, "contact.consents[0].update_time"),
        (pb::Contact { attributes: attr(year_10000()), ..base() }, "contact.attributes.renewal"),
        (pb::Contact { acquisition: Some(cost(1_000_000_000_001)), ..base() }, "contact.acquisition.cost.units"),
        (pb::Contact { acquisition: Some(cost(i64::MAX)), ..base() }, "contact.acquisition.cost.units"),
    ];
    for (bad, field) in cases {
        let err = c
            .create_contact(pb::CreateContactRequest { contact: Some(bad.clone()), request_id: String::new() })
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violated_fields(&err), vec![field.to_string()], "{err:?}");
        // Updates and imports refuse the same values the same way.
        let err = c
            .update_contact(pb::UpdateContactRequest {
                contact: Some(pb::Contact { id: target.id.clone(), ..bad.clone() }),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        let mut out = c
            .import_contacts(tokio_stream::iter(vec![pb::ImportContactsRequest { contacts: vec![bad] }]))
            .await
            .unwrap();
        let Some(pb::import_contacts_response::Result::Rows(rows)) =
            out.get_mut().message().await.unwrap().unwrap().result
        else {
            panic!("rows first")
        };
        assert_eq!(rows.results[0].outcome, pb::ImportOutcome::Skipped as i32, "{field}");
        assert_eq!(format!("contact.{}", rows.results[0].field), field);
        while out.get_mut().message().await.unwrap().is_some() {}
    }
    // Far-past-but-valid and future attribute values (a renewal date) are fine; so is the
    // largest amount and a time within the day's tolerance.
    let ok = create(
        &mut c,
        pb::Contact {
            attributes: attr(prost_types::Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 }),
            acquisition: Some(pb::Acquisition {
                cost: Some(Money { currency_code: "EUR".into(), units: 1_000_000_000_000, nanos: 0 }),
                acquire_time: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 3600, nanos: 0 }),
                ..Default::default()
            }),
            ..base()
        },
    )
    .await;
    assert_eq!(ok.acquisition.unwrap().cost.unwrap().units, 1_000_000_000_000);
    // Lists and exports stay readable.
    let list = c.list_contacts(pb::ListContactsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.total_size, 2);
    let mut export = c.export_contacts(pb::ExportContactsRequest::default()).await.unwrap().into_inner();
    assert_eq!(export.message().await.unwrap().unwrap().contacts.len(), 2);
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn import_message_over_the_size_limit_fails_the_call(backend: Backend) {
    let Some(db) = TestDb::create(backend, "importlimit").await else { return };
    let server = testing::spawn::<ContactsService>(testing::settings(&[
        ("CLM_CONTACTS__DATABASE_URL", &db.url),
        ("CLM_SERVER__MAX_MESSAGE_BYTES", "16384"),
    ]))
    .await;
    let mut c = client(&server, "acme", RW).await;
    let good = pb::ImportContactsRequest {
        contacts: (0..5).map(|i| contact(&format!("ok{i}@example.com"), "Ok", "Row")).collect(),
    };
    let big = pb::ImportContactsRequest {
        contacts: (0..300).map(|i| contact(&format!("big{i}@example.com"), &"x".repeat(60), "Row")).collect(),
    };
    assert!(prost::Message::encoded_len(&big) > 16384);
    let mut out = c.import_contacts(tokio_stream::iter(vec![good, big])).await.unwrap().into_inner();
    let mut rows = Vec::new();
    let err = loop {
        match out.message().await {
            Ok(Some(pb::ImportContactsResponse { result: Some(pb::import_contacts_response::Result::Rows(r)) })) => {
                rows.extend(r.results);
            }
            Ok(Some(other)) => panic!("no summary after a lost message: {other:?}"),
            Ok(None) => panic!("the stream ended OK although a message was dropped"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("16384") && err.message().contains("server.max_message_bytes"), "{err:?}");
    // What was acknowledged before is committed (each message is its own transaction).
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.outcome == pb::ImportOutcome::Created as i32));
    let list = c.list_contacts(pb::ListContactsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.total_size, 5, "the acknowledged rows, none of the refused message");
    server.stop().await.unwrap();
    db.cleanup().await;
}

async fn request_id_reused_for_another_request_fails(backend: Backend) {
    let Some((server, db)) = setup(backend, "ridreuse").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let is_reuse = |err: tonic::Status| {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_fields(&err), vec!["request_id".to_string()], "{err:?}");
        assert!(err.message().contains("different request"), "{err:?}");
    };
    // CreateContact: the same payload (its map built afresh, so in another order) is a retry.
    let rid = uuid::Uuid::new_v4().to_string();
    let attrs = || {
        (0..16)
            .map(|i| {
                (
                    format!("a{i}"),
                    pb::AttributeValue { kind: Some(pb::attribute_value::Kind::NumberValue(f64::from(i))) },
                )
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    let req = |email: &str| pb::CreateContactRequest {
        contact: Some(pb::Contact { attributes: attrs(), ..contact(email, "Grace", "Hopper") }),
        request_id: rid.clone(),
    };
    let first = c.create_contact(req("grace@navy.mil")).await.unwrap().into_inner().contact.unwrap();
    let retry = c.create_contact(req("grace@navy.mil")).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(first.id, retry.id);
    is_reuse(c.create_contact(req("someone.else@navy.mil")).await.unwrap_err());
    // The id is not used up by the refusal; the first result still comes back.
    assert_eq!(c.create_contact(req("grace@navy.mil")).await.unwrap().into_inner().contact.unwrap().id, first.id);
    // The same request id for another method is another key.
    let seg = |name: &str| pb::CreateSegmentRequest {
        segment: Some(pb::Segment { display_name: name.into(), filter: r#"tags:"vip""#.into(), ..Default::default() }),
        request_id: rid.clone(),
    };
    let s1 = c.create_segment(seg("VIPs")).await.unwrap().into_inner().segment.unwrap();
    assert_eq!(c.create_segment(seg("VIPs")).await.unwrap().into_inner().segment.unwrap().id, s1.id);
    is_reuse(c.create_segment(seg("Others")).await.unwrap_err());
    // MergeContacts.
    let dup = create(&mut c, contact("g.hopper@navy.mil", "G", "Hopper")).await;
    let other = create(&mut c, contact("other@navy.mil", "O", "Ther")).await;
    let mrid = uuid::Uuid::new_v4().to_string();
    let merge = |ids: Vec<String>| pb::MergeContactsRequest {
        survivor_id: first.id.clone(),
        merged_ids: ids,
        prefer_merged_fields: None,
        request_id: mrid.clone(),
    };
    c.merge_contacts(merge(vec![dup.id.clone()])).await.unwrap();
    c.merge_contacts(merge(vec![dup.id.clone()])).await.unwrap();
    is_reuse(c.merge_contacts(merge(vec![other.id.clone()])).await.unwrap_err());
    let still = c.get_contact(pb::GetContactRequest { id: other.id.clone() }).await.unwrap().into_inner();
    assert_eq!(still.contact.unwrap().state, pb::ContactState::Active as i32, "the other contact was not merged");
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// An event a consumer appends goes out when its batch commits, not at the relay's next poll:
/// with the poll at a minute, the ContactUpdated an automation's tag request makes is published
/// (the contacts outbox empty) well within `wait_for`'s 15 s.
async fn events_a_consumer_appends_are_published_at_once(backend: Backend) {
    let Some(db) = TestDb::create(backend, "consumerwake").await else { return };
    let settings =
        testing::settings(&[("CLM_CONTACTS__DATABASE_URL", &db.url), ("CLM_EVENTS__RELAY_POLL_MS", "60000")]);
    let server = testing::spawn::<ContactsService>(settings.clone()).await;
    let mut c = client(&server, "acme", RW).await;
    let ada = create(&mut c, contact("ada@example.com", "Ada", "Lovelace")).await;
    let conn = clm_platform::db::connect(&db.url, &settings.database).await.unwrap();
    let unsent = || async { clm_platform::events::outbox::pending(&conn).await.unwrap() };
    testing::wait_for("ContactCreated published", async || (unsent().await == 0).then_some(())).await;

    // Lifecycle asks, by event, for a tag: contacts' consumer applies it and appends ContactUpdated.
    let ask = clm_proto::events::v1::event_envelope::Payload::AutomationTriggered(
        clm_proto::events::v1::AutomationTriggered {
            automation_id: uuid::Uuid::new_v4().to_string(),
            contact_id: ada.id.clone(),
            topic: "contacts.add_tag".into(),
            payload: [("tag".to_string(), "vip".to_string())].into(),
        },
    );
    testing::publish_event(&settings, "lifecycle", "acme", "journey", &ada.id, ask).await;
    testing::wait_for("the tag applied", async || {
        let got = c.get_contact(pb::GetContactRequest { id: ada.id.clone() }).await.unwrap().into_inner();
        got.contact.unwrap().tags.contains(&"vip".to_string()).then_some(())
    })
    .await;
    testing::wait_for("the consumer's ContactUpdated published before the relay's poll", async || {
        (unsent().await == 0).then_some(())
    })
    .await;
    conn.close().await.ok();
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// Request ids live in the platform's `idempotency_keys` (one implementation for every
/// service); ids a database recorded in contacts' own table before are moved there and still
/// answer retries, and still refuse another request.
async fn request_ids_are_the_platforms_and_old_ones_still_answer(backend: Backend) {
    use sea_orm_migration::MigratorTrait as _;
    let Some(db) = TestDb::create(backend, "ridmove").await else { return };
    // A database as the release before left it: its first seven migrations, a segment created
    // with a request id recorded in `request_ids`.
    let conn = clm_platform::db::connect(&db.url, &testing::settings(&[]).database).await.unwrap();
    clm_contacts::store::migrations::Migrator::up(&conn, Some(7)).await.unwrap();
    let tenant = clm_platform::TenantId::parse("acme").unwrap();
    let seg_id = uuid::Uuid::now_v7();
    let segment = clm_contacts::store::Segment {
        id: seg_id,
        display_name: "VIPs".into(),
        description: String::new(),
        filter: r#"tags:"vip""#.into(),
        create_time: 1_700_000_000_000_000,
        update_time: 1_700_000_000_000_000,
        version: 1,
    };
    clm_contacts::store::insert_segment(&conn, &tenant, &segment).await.unwrap();
    let rid = uuid::Uuid::new_v4().to_string();
    let request = |name: &str| pb::CreateSegmentRequest {
        segment: Some(pb::Segment { display_name: name.into(), filter: r#"tags:"vip""#.into(), ..Default::default() }),
        request_id: rid.clone(),
    };
    let hash = clm_platform::idempotency::fingerprint("clm.contacts.v1.CreateSegmentRequest", &request("VIPs"));
    let placeholder = |n: usize| match backend {
        Backend::Postgres => format!("${n}"),
        Backend::Sqlite => "?".into(),
    };
    conn.execute_raw(sea_orm::Statement::from_sql_and_values(
        conn.get_database_backend(),
        format!(
            "INSERT INTO request_ids (tenant_id, method, request_id, resource_id, create_time, request_hash) \
             VALUES ({}, {}, {}, {}, {}, {})",
            placeholder(1),
            placeholder(2),
            placeholder(3),
            placeholder(4),
            placeholder(5),
            placeholder(6)
        ),
        [
            "acme".into(),
            "CreateSegment".into(),
            rid.clone().into(),
            seg_id.to_string().into(),
            1_700_000_000_000_000_i64.into(),
            hash.into(),
        ],
    ))
    .await
    .unwrap();

    // The upgraded service: the old id answers its retry and refuses another request.
    let server = testing::spawn::<ContactsService>(testing::settings(&[("CLM_CONTACTS__DATABASE_URL", &db.url)])).await;
    let mut c = client(&server, "acme", RW).await;
    let again = c.create_segment(request("VIPs")).await.unwrap().into_inner().segment.unwrap();
    assert_eq!(again.id, seg_id.to_string(), "the retry gets the segment the id made before the upgrade");
    let err = c.create_segment(request("Others")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), vec!["request_id".to_string()]);

    // New ids are kept in the platform's table, and the old one was moved there.
    let crid = uuid::Uuid::new_v4().to_string();
    let ada = c
        .create_contact(pb::CreateContactRequest {
            contact: Some(contact("ada@example.com", "Ada", "Lovelace")),
            request_id: crid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    let kept = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT method, request_id, resource_id, request_hash FROM idempotency_keys ORDER BY method",
        ))
        .await
        .expect("the platform's idempotency_keys table");
    let kept: Vec<(String, String, String, bool)> = kept
        .iter()
        .map(|r| {
            (
                r.try_get("", "method").unwrap(),
                r.try_get("", "request_id").unwrap(),
                r.try_get("", "resource_id").unwrap(),
                r.try_get::<Option<String>>("", "request_hash").unwrap().is_some(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            ("CreateContact".to_string(), crid, ada.id.clone(), true),
            ("CreateSegment".to_string(), rid.clone(), seg_id.to_string(), true),
        ]
    );
    let old_table = conn
        .query_all_raw(sea_orm::Statement::from_string(conn.get_database_backend(), "SELECT * FROM request_ids"))
        .await;
    assert!(old_table.is_err(), "contacts' own request_ids table is gone");
    conn.close().await.ok();
    server.stop().await.unwrap();
    db.cleanup().await;
}

fn consent(channel: pb::ConsentChannel, purpose: pb::ConsentPurpose, status: pb::ConsentStatus) -> pb::Consent {
    pb::Consent {
        channel: channel as i32,
        purpose: purpose as i32,
        status: status as i32,
        update_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
        source: "signup-form".into(),
    }
}

/// (channel, purpose, status, source) of each consent, sorted, to compare without times.
fn consents_of(c: &pb::Contact) -> Vec<(i32, i32, i32, String)> {
    let mut out: Vec<_> = c.consents.iter().map(|x| (x.channel, x.purpose, x.status, x.source.clone())).collect();
    out.sort();
    out
}

fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Postgres => format!("${n}"),
        Backend::Sqlite => "?".into(),
    }
}

/// Consents per channel and purpose: purposes round-trip (create, get, update, import, export),
/// an unspecified purpose is marketing, a second entry for the same channel and purpose is
/// refused naming it, and consents stored before purposes existed read as marketing.
async fn consent_purposes(backend: Backend) {
    use pb::{ConsentChannel as Ch, ConsentPurpose as Pu, ConsentStatus as St};
    let Some((server, db)) = setup(backend, "purposes").await else { return };
    let mut c = client(&server, "acme", RW).await;
    let ada = create(
        &mut c,
        pb::Contact {
            consents: vec![
                consent(Ch::Email, Pu::Unspecified, St::Granted),
                consent(Ch::Email, Pu::Feedback, St::Withdrawn),
                consent(Ch::Sms, Pu::Transactional, St::Granted),
            ],
            ..contact("ada@example.com", "Ada", "Lovelace")
        },
    )
    .await;
    let expected = vec![
        (Ch::Email as i32, Pu::Marketing as i32, St::Granted as i32, "signup-form".to_string()),
        (Ch::Email as i32, Pu::Feedback as i32, St::Withdrawn as i32, "signup-form".to_string()),
        (Ch::Sms as i32, Pu::Transactional as i32, St::Granted as i32, "signup-form".to_string()),
    ];
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(consents_of(&ada), sorted, "unspecified is stored and returned as MARKETING");
    let got = c.get_contact(pb::GetContactRequest { id: ada.id.clone() }).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(got, ada);

    // At most one entry per channel and purpose, on create, update and import.
    let dup = vec![
        consent(Ch::Email, Pu::Feedback, St::Granted),
        consent(Ch::Email, Pu::Marketing, St::Granted),
        consent(Ch::Email, Pu::Unspecified, St::Withdrawn),
    ];
    let err = c
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact { consents: dup.clone(), ..contact("bob@example.com", "Bob", "") }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), vec!["contact.consents[2]".to_string()], "{err:?}");
    let err = c
        .update_contact(pb::UpdateContactRequest {
            contact: Some(pb::Contact { id: ada.id.clone(), consents: dup.clone(), ..Default::default() }),
            update_mask: mask(&["consents"]),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["contact.consents[2]".to_string()], "{err:?}");
    let err = c
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                consents: vec![pb::Consent { purpose: 9, ..consent(Ch::Email, Pu::Marketing, St::Granted) }],
                ..contact("bob@example.com", "Bob", "")
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["contact.consents[0].purpose".to_string()], "{err:?}");
    let batch = pb::ImportContactsRequest {
        contacts: vec![
            pb::Contact { consents: dup, ..contact("bob@example.com", "Bob", "") },
            pb::Contact {
                consents: vec![consent(Ch::Phone, Pu::Feedback, St::Granted)],
                ..contact("cy@example.com", "Cy", "")
            },
        ],
    };
    let mut out = c.import_contacts(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
    let mut rows = Vec::new();
    while let Some(msg) = out.message().await.unwrap() {
        if let Some(pb::import_contacts_response::Result::Rows(r)) = msg.result {
            rows.extend(r.results);
        }
    }
    assert_eq!(rows[0].outcome, pb::ImportOutcome::Skipped as i32, "{rows:?}");
    assert_eq!(rows[0].field, "consents[2]", "{rows:?}");
    assert_eq!(rows[1].outcome, pb::ImportOutcome::Created as i32, "{rows:?}");

    // Export returns purposes as stored.
    let mut export = c.export_contacts(pb::ExportContactsRequest::default()).await.unwrap().into_inner();
    let mut exported = Vec::new();
    while let Some(m) = export.message().await.unwrap() {
        exported.extend(m.contacts);
    }
    let cy = exported.iter().find(|x| x.email == "cy@example.com").expect("cy exported");
    assert_eq!(
        consents_of(cy),
        vec![(Ch::Phone as i32, Pu::Feedback as i32, St::Granted as i32, "signup-form".into())]
    );
    assert_eq!(exported.iter().find(|x| x.id == ada.id).map(consents_of), Some(sorted));

    // A consent stored before purposes (no "purpose" in its JSON) is a marketing one.
    let conn = clm_platform::db::connect(&db.url, &testing::settings(&[]).database).await.unwrap();
    let old = r#"[{"channel":"email","status":"granted","at":1700000000000000,"source":"old-form"}]"#;
    conn.execute_raw(sea_orm::Statement::from_sql_and_values(
        conn.get_database_backend(),
        format!("UPDATE contacts SET consents = {} WHERE id = {}", placeholder(backend, 1), placeholder(backend, 2)),
        [old.into(), ada.id.clone().into()],
    ))
    .await
    .unwrap();
    let got = c.get_contact(pb::GetContactRequest { id: ada.id.clone() }).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(
        consents_of(&got),
        vec![(Ch::Email as i32, Pu::Marketing as i32, St::Granted as i32, "old-form".into())]
    );
    conn.close().await.ok();
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// `consents.<channel>[.<purpose>]` filters ListContacts by decision (no purpose: marketing),
/// for contacts written now and for contacts stored before purposes and consent filters
/// existed (migration m0004 indexes their consents as marketing ones).
async fn consent_filters(backend: Backend) {
    use clm_contacts::domain::model::{Contact, ContactData, ContactState};
    use pb::{ConsentChannel as Ch, ConsentPurpose as Pu, ConsentStatus as St};
    use sea_orm_migration::MigratorTrait as _;
    let Some(db) = TestDb::create(backend, "consentfilter").await else { return };
    // A contact as the release before stored it: its consent JSON without a purpose, no
    // consent label rows.
    let conn = clm_platform::db::connect(&db.url, &testing::settings(&[]).database).await.unwrap();
    clm_contacts::store::migrations::Migrator::up(&conn, Some(10)).await.unwrap();
    let tenant = clm_platform::TenantId::parse("acme").unwrap();
    let old_id = uuid::Uuid::now_v7();
    let old = Contact {
        id: old_id,
        data: ContactData {
            email: Some(clm_contacts::domain::values::Email::parse("email", "old@example.com").unwrap()),
            ..Default::default()
        },
        state: ContactState::Active,
        merged_into: None,
        create_time: 1_700_000_000_000_000,
        update_time: 1_700_000_000_000_000,
        delete_time: None,
        version: 1,
    };
    clm_contacts::store::insert_contacts(&conn, &tenant, &[old]).await.unwrap();
    let json = r#"[{"channel":"email","status":"granted","at":1700000000000000,"source":"old-form"},{"channel":"sms","status":"withdrawn","at":1700000000000000,"source":"old-form"}]"#;
    conn.execute_raw(sea_orm::Statement::from_sql_and_values(
        conn.get_database_backend(),
        format!("UPDATE contacts SET consents = {} WHERE id = {}", placeholder(backend, 1), placeholder(backend, 2)),
        [json.into(), old_id.to_string().into()],
    ))
    .await
    .unwrap();

    let server = testing::spawn::<ContactsService>(testing::settings(&[("CLM_CONTACTS__DATABASE_URL", &db.url)])).await;
    let mut c = client(&server, "acme", RW).await;
    let ada = create(
        &mut c,
        pb::Contact {
            consents: vec![
                consent(Ch::Email, Pu::Marketing, St::Withdrawn),
                consent(Ch::Email, Pu::Feedback, St::Granted),
            ],
            ..contact("ada@example.com", "Ada", "")
        },
    )
    .await;
    let bob = create(
        &mut c,
        pb::Contact {
            consents: vec![consent(Ch::Sms, Pu::Transactional, St::Granted)],
            ..contact("bob@example.com", "Bob", "")
        },
    )
    .await;
    let old_id = old_id.to_string();
    let got = c.get_contact(pb::GetContactRequest { id: old_id.clone() }).await.unwrap().into_inner().contact.unwrap();
    assert_eq!(
        consents_of(&got),
        vec![
            (Ch::Email as i32, Pu::Marketing as i32, St::Granted as i32, "old-form".into()),
            (Ch::Sms as i32, Pu::Marketing as i32, St::Withdrawn as i32, "old-form".into()),
        ],
        "consents stored before purposes are marketing ones"
    );
    let lister = c.clone();
    let ids = async |filter: &str| {
        let r =
            lister.clone().list_contacts(pb::ListContactsRequest { filter: filter.into(), ..Default::default() }).await;
        let mut out: Vec<String> = r.unwrap().into_inner().contacts.into_iter().map(|x| x.id).collect();
        out.sort();
        out
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    assert_eq!(ids(r#"consents.email = "granted""#).await, vec![old_id.clone()]);
    assert_eq!(ids(r#"consents.email.marketing = "granted""#).await, vec![old_id.clone()]);
    assert_eq!(ids(r#"consents.email = "withdrawn""#).await, vec![ada.id.clone()]);
    assert_eq!(ids(r#"consents.email.feedback = "granted""#).await, vec![ada.id.clone()]);
    assert_eq!(ids(r#"consents.sms = "withdrawn""#).await, vec![old_id.clone()]);
    assert_eq!(ids(r#"consents.sms.transactional = "granted""#).await, vec![bob.id.clone()]);
    assert_eq!(ids(r#"consents.email != "granted""#).await, sorted(vec![&ada.id, &bob.id]));
    assert_eq!(
        ids(r#"consents.email.feedback = "granted" OR consents.sms.transactional = "granted""#).await,
        sorted(vec![&ada.id, &bob.id])
    );
    let err = c
        .list_contacts(pb::ListContactsRequest { filter: r#"consents.fax = "granted""#.into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["filter".to_string()]);

    // A write keeps the rows in step: a withdrawn feedback consent no longer matches.
    c.update_contact(pb::UpdateContactRequest {
        contact: Some(pb::Contact {
            id: ada.id.clone(),
            consents: vec![consent(Ch::Email, Pu::Feedback, St::Withdrawn)],
            ..Default::default()
        }),
        update_mask: mask(&["consents"]),
    })
    .await
    .unwrap();
    assert!(ids(r#"consents.email.feedback = "granted""#).await.is_empty());
    assert_eq!(ids(r#"consents.email.feedback = "withdrawn""#).await, vec![ada.id.clone()]);
    conn.close().await.ok();
    server.stop().await.unwrap();
    db.cleanup().await;
}

/// The ContactUpdated events in contacts' outbox: (contact id, changed paths), oldest first.
async fn contact_updates(conn: &sea_orm::DatabaseConnection) -> Vec<(String, Vec<String>)> {
    use clm_proto::events::v1::event_envelope::Payload;
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT payload FROM outbox ORDER BY seq",
        ))
        .await
        .unwrap();
    rows.iter()
        .filter_map(|r| {
            let bytes: Vec<u8> = r.try_get("", "payload").unwrap();
            match <clm_proto::events::v1::EventEnvelope as prost::Message>::decode(bytes.as_slice()).unwrap().payload {
                Some(Payload::ContactUpdated(u)) => Some((u.contact_id, u.changed_paths)),
                _ => None,
            }
        })
        .collect()
}

/// Lifecycle's UnsubscribeRecorded withdraws exactly the consent it names (source
/// "unsubscribe-link", at the unsubscribe time) and publishes ContactUpdated; a grant made
/// after the unsubscribe stands; the same unsubscribe again, and one for an unknown or deleted
/// contact, change nothing.
async fn unsubscribes_withdraw_one_consent(backend: Backend) {
    use clm_proto::events::v1::{UnsubscribeRecorded, event_envelope::Payload};
    use pb::{ConsentChannel as Ch, ConsentPurpose as Pu, ConsentStatus as St};
    let Some(db) = TestDb::create(backend, "unsubscribe").await else { return };
    let settings = testing::settings(&[("CLM_CONTACTS__DATABASE_URL", &db.url)]);
    let server = testing::spawn::<ContactsService>(settings.clone()).await;
    let conn = clm_platform::db::connect(&db.url, &settings.database).await.unwrap();
    let mut c = client(&server, "acme", RW).await;
    let granted = |ch, pu| consent(ch, pu, St::Granted);
    let ada = create(
        &mut c,
        pb::Contact {
            consents: vec![
                granted(Ch::Email, Pu::Marketing),
                granted(Ch::Email, Pu::Feedback),
                granted(Ch::Sms, Pu::Marketing),
            ],
            ..contact("ada@example.com", "Ada", "Lovelace")
        },
    )
    .await;
    let get = |c: &mut Client, id: &str| {
        let mut c = c.clone();
        let id = id.to_owned();
        async move { c.get_contact(pb::GetContactRequest { id }).await.unwrap().into_inner().contact.unwrap() }
    };
    let unsubscribe_time = prost_types::Timestamp { seconds: 1_750_000_000, nanos: 0 };
    let unsubscribe = |contact_id: &str, channel: &str, purpose: &str, at: &prost_types::Timestamp| {
        Payload::UnsubscribeRecorded(UnsubscribeRecorded {
            contact_id: contact_id.into(),
            channel: channel.into(),
            purpose: purpose.into(),
            delivery_id: uuid::Uuid::new_v4().to_string(),
            unsubscribe_time: Some(*at),
        })
    };
    let consumed = async |event_id: &str| {
        let sql = format!(
            "SELECT event_id FROM inbox WHERE consumer = 'contacts' AND event_id = {}",
            placeholder(backend, 1)
        );
        let stmt = sea_orm::Statement::from_sql_and_values(conn.get_database_backend(), sql, [event_id.into()]);
        testing::wait_for("the event consumed", async || {
            (!conn.query_all_raw(stmt.clone()).await.unwrap().is_empty()).then_some(())
        })
        .await;
    };
    let publish = async |p: Payload, id: &str| {
        let env = testing::publish_event(&settings, "lifecycle", "acme", "delivery", id, p).await;
        consumed(&env.event_id).await;
    };

    // Unsubscribing from email feedback withdraws that consent alone.
    publish(unsubscribe(&ada.id, "email", "feedback", &unsubscribe_time), &ada.id).await;
    let after = get(&mut c, &ada.id).await;
    let feedback = after
        .consents
        .iter()
        .find(|x| x.channel == Ch::Email as i32 && x.purpose == Pu::Feedback as i32)
        .expect("email feedback consent");
    assert_eq!(
        (feedback.status, feedback.source.as_str(), feedback.update_time),
        (St::Withdrawn as i32, "unsubscribe-link", Some(unsubscribe_time))
    );
    assert_eq!(
        consents_of(&after),
        {
            let mut v = vec![
                (Ch::Email as i32, Pu::Marketing as i32, St::Granted as i32, "signup-form".to_string()),
                (Ch::Email as i32, Pu::Feedback as i32, St::Withdrawn as i32, "unsubscribe-link".to_string()),
                (Ch::Sms as i32, Pu::Marketing as i32, St::Granted as i32, "signup-form".to_string()),
            ];
            v.sort();
            v
        },
        "the other purposes and channels are untouched"
    );
    assert_ne!(after.etag, ada.etag);
    assert_eq!(contact_updates(&conn).await, vec![(ada.id.clone(), vec!["consents".to_string()])]);

    // The same unsubscribe again (another event, same facts) changes nothing.
    publish(unsubscribe(&ada.id, "email", "feedback", &unsubscribe_time), &ada.id).await;
    assert_eq!(get(&mut c, &ada.id).await, after);

    // A grant made after the unsubscribe wins over it (a late or replayed unsubscribe).
    let regranted = c
        .update_contact(pb::UpdateContactRequest {
            contact: Some(pb::Contact {
                id: ada.id.clone(),
                consents: vec![
                    pb::Consent {
                        update_time: Some(prost_types::Timestamp { seconds: 1_760_000_000, nanos: 0 }),
                        ..granted(Ch::Email, Pu::Marketing)
                    },
                    granted(Ch::Email, Pu::Feedback),
                ],
                ..Default::default()
            }),
            update_mask: mask(&["consents"]),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    publish(unsubscribe(&ada.id, "email", "marketing", &unsubscribe_time), &ada.id).await;
    assert_eq!(get(&mut c, &ada.id).await, regranted, "the later grant stands");

    // Unknown and deleted contacts, and keys that are no channel or purpose, are no-ops.
    let bob = create(&mut c, contact("bob@example.com", "Bob", "")).await;
    c.delete_contact(pb::DeleteContactRequest { id: bob.id.clone(), etag: String::new() }).await.unwrap();
    let updates = contact_updates(&conn).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    publish(unsubscribe(&unknown, "email", "marketing", &unsubscribe_time), &unknown).await;
    publish(unsubscribe(&bob.id, "email", "marketing", &unsubscribe_time), &bob.id).await;
    publish(unsubscribe(&ada.id, "fax", "marketing", &unsubscribe_time), &ada.id).await;
    publish(unsubscribe(&ada.id, "sms", "spam", &unsubscribe_time), &ada.id).await;
    assert_eq!(get(&mut c, &ada.id).await, regranted);
    assert_eq!(contact_updates(&conn).await, updates, "no ContactUpdated for a no-op");
    conn.close().await.ok();
    server.stop().await.unwrap();
    db.cleanup().await;
}

clm_testkit::backend_tests!(
    lifecycle_of_a_record,
    idempotent_create_and_duplicate_email,
    bad_input_is_invalid_argument_with_the_field,
    list_filters_orders_and_pages,
    tenants_are_isolated,
    scopes_and_tokens_are_enforced,
    import_upserts_and_reports_every_row,
    merge_folds_duplicates,
    erase_removes_personal_data,
    segments_are_live,
    concurrent_updates_one_wins,
    batch_get_resolves_and_reports_missing,
    bad_times_and_amounts_are_refused_by_field,
    import_message_over_the_size_limit_fails_the_call,
    request_id_reused_for_another_request_fails,
    events_a_consumer_appends_are_published_at_once,
    request_ids_are_the_platforms_and_old_ones_still_answer,
    consent_purposes,
    consent_filters,
    unsubscribes_withdraw_one_consent,
);
