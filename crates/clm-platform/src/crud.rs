//! What the create, update and delete handlers of every service share, so that each handler
//! states only its resource: a create's request id ([`CreateOnce`], AIP-155), the etag an
//! update or delete expects ([`ExpectedVersion`], AIP-154) and an update's field mask
//! ([`UpdateMask`], AIP-134).

use std::future::Future;

use prost_types::FieldMask;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use crate::convert::{etag_version, uuid};
use crate::{Error, Result, TenantId, Violations, idempotency};

/// An update's `update_mask`, its paths checked against those the resource lets a client
/// change. An empty mask means "the fields the request gives" ([`Self::sets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateMask {
    paths: Vec<String>,
}

impl UpdateMask {
    /// The mask of a request (`None`: no mask); every path not in `allowed` is a violation on
    /// `update_mask` that lists the allowed ones.
    pub fn parse(v: &mut Violations, mask: Option<FieldMask>, allowed: &[&str]) -> Self {
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        for p in &paths {
            if !allowed.contains(&p.as_str()) {
                v.add("update_mask", format!("unknown path {p:?}; one of {}", allowed.join(", ")));
            }
        }
        Self { paths }
    }

    /// No paths were named.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// `path` is named, or no path is (an empty mask covers every field).
    pub fn has(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| p == path)
    }

    /// The update sets `path`: it is named (then even to its default value, which clears the
    /// field), or no path is and the request gives the field (`given`: a value other than the
    /// default).
    pub fn sets(&self, path: &str, given: bool) -> bool {
        if self.paths.is_empty() { given } else { self.paths.iter().any(|p| p == path) }
    }
}

/// The version a request's etag names; an empty etag names none and checks nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedVersion(Option<i64>);

impl ExpectedVersion {
    /// The etag at `field` (`raw`); one this service did not issue is a violation on `field`.
    pub fn parse(v: &mut Violations, field: &str, raw: &str) -> Self {
        Self(v.check(etag_version(field, raw)).flatten())
    }

    /// `Ok` when the request named no version or the `current` one; else ABORTED, naming the
    /// resource (`what`: "campaign"): someone changed it since the client read it.
    pub fn check(self, current: i64, what: &str) -> Result<()> {
        match self.0 {
            Some(expected) if expected != current => {
                Err(Error::Aborted(format!("etag mismatch: the {what} changed; re-read and retry")))
            }
            _ => Ok(()),
        }
    }
}

/// A create that may carry a request id (AIP-155). With one, the new resource's id is derived
/// from it, so a retry of the same request finds what the first call made ([`Self::replay`])
/// instead of creating twice; the same id sent with another request is refused. In the
/// create's transaction: [`Self::replay`], then the insert and [`Self::record`] (recorded
/// first, a concurrent call with the same id waits on its row and is then ABORTED before it
/// does any work).
#[derive(Debug)]
pub struct CreateOnce {
    method: &'static str,
    id: Uuid,
    /// The request id and the request's fingerprint, when the request has an id.
    key: Option<(String, String)>,
    /// The request id is kept already ([`Self::replay`] found it).
    kept: bool,
}

impl CreateOnce {
    /// A create of a `kind` of resource ("campaign", part of the derived id) by `method`
    /// ("CreateCampaign", under which its request ids are kept). `raw` is the request's
    /// `request_id`: empty, or a UUID (else a violation on `request_id`); `fingerprint` is
    /// the request's [`idempotency::fingerprint`].
    pub fn new(
        v: &mut Violations,
        tenant: &TenantId,
        method: &'static str,
        kind: &str,
        raw: &str,
        fingerprint: String,
    ) -> Self {
        let request_id = if raw.is_empty() { None } else { v.check(uuid("request_id", raw)) };
        let id = request_id.map_or_else(Uuid::now_v7, |r| {
            Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{tenant}/{kind}/{r}").as_bytes())
        });
        Self { method, id, key: request_id.map(|r| (r.to_string(), fingerprint)), kept: false }
    }

    /// The new resource's id: derived from the request id (each retry gets the same), else a
    /// new UUIDv7.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// What the first call with this request id made, when this is a retry of it: `existing`
    /// reads the resource by [`Self::id`] (NOT_FOUND: there is none) and is awaited only when
    /// the request has an id. INVALID_ARGUMENT on `request_id` ([`idempotency::reused`]) when
    /// the id was used for another request.
    pub async fn replay<T>(
        &mut self,
        db: &impl ConnectionTrait,
        tenant: &TenantId,
        existing: impl Future<Output = Result<T>>,
    ) -> Result<Option<T>> {
        let Some((request_id, fingerprint)) = &self.key else { return Ok(None) };
        self.kept = idempotency::find(db, tenant, self.method, request_id, fingerprint).await?.is_some();
        // Looked up even when the id is not kept: resources made before request ids were kept
        // are found by their id alone.
        match existing.await {
            Ok(found) => Ok(Some(found)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keep the request id with what it made (`resource_id`), in the create's transaction.
    /// Nothing to keep when the request has no id, or when [`Self::replay`] found it kept (the
    /// resource it made was deleted since, and this retry makes it again).
    pub async fn record(&self, txn: &impl ConnectionTrait, tenant: &TenantId, resource_id: &str) -> Result<()> {
        match &self.key {
            Some((request_id, fingerprint)) if !self.kept => {
                idempotency::record(txn, tenant, self.method, request_id, fingerprint, resource_id).await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clm_testkit::{Backend, TestDb};
    use sea_orm::{DatabaseConnection, DbBackend, Statement};
    use sea_orm_migration::{MigrationTrait, MigratorTrait};

    use super::*;

    fn violations(v: Violations) -> Vec<(String, String)> {
        v.into_violations().into_iter().map(|f| (f.field, f.description)).collect()
    }

    #[test]
    fn a_mask_names_allowed_paths_and_empty_means_given() {
        const PATHS: [&str; 3] = ["display_name", "enabled", "steps"];
        let mut v = Violations::new();
        let mask = UpdateMask::parse(&mut v, Some(FieldMask { paths: vec!["enabled".into()] }), &PATHS);
        assert!(v.is_empty() && !mask.is_empty());
        assert!(mask.has("enabled") && !mask.has("display_name"));
        assert!(mask.sets("enabled", false), "named: set, even to the default");
        assert!(!mask.sets("display_name", true), "not named: kept, even when given");

        let mut v = Violations::new();
        let none = UpdateMask::parse(&mut v, None, &PATHS);
        assert!(v.is_empty() && none.is_empty());
        assert!(none.has("steps") && none.has("anything"));
        assert!(none.sets("display_name", true) && !none.sets("enabled", false), "no mask: what is given");
        assert_eq!(UpdateMask::parse(&mut v, Some(FieldMask::default()), &PATHS), none);

        let mut v = Violations::new();
        let bad = FieldMask { paths: vec!["steps".into(), "id".into(), "etag".into()] };
        UpdateMask::parse(&mut v, Some(bad), &PATHS);
        assert_eq!(
            violations(v),
            [
                ("update_mask".into(), "unknown path \"id\"; one of display_name, enabled, steps".into()),
                ("update_mask".into(), "unknown path \"etag\"; one of display_name, enabled, steps".into()),
            ]
        );
    }

    #[test]
    fn an_etag_names_a_version_and_another_is_aborted() {
        let mut v = Violations::new();
        let expected = ExpectedVersion::parse(&mut v, "campaign.etag", &crate::convert::etag(4));
        assert!(v.is_empty());
        assert!(expected.check(4, "campaign").is_ok());
        let err = expected.check(5, "campaign").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert_eq!(err.to_string(), "etag mismatch: the campaign changed; re-read and retry");

        let none = ExpectedVersion::parse(&mut v, "etag", "");
        assert!(v.is_empty() && none.check(1, "x").is_ok() && none.check(99, "x").is_ok(), "no etag: no check");

        let forged = ExpectedVersion::parse(&mut v, "campaign.etag", "4");
        assert!(forged.check(5, "campaign").is_ok(), "refused by its violation, not by the check");
        assert_eq!(violations(v), [("campaign.etag".into(), "is not an etag this service issued".into())]);
    }

    #[test]
    fn a_request_id_is_a_uuid_and_derives_the_id() {
        let tenant = TenantId::parse("acme").unwrap();
        let rid = Uuid::new_v4().to_string();
        let mut v = Violations::new();
        let a = CreateOnce::new(&mut v, &tenant, "CreateThing", "thing", &rid, "f".into());
        let b = CreateOnce::new(&mut v, &tenant, "CreateThing", "thing", &rid, "g".into());
        assert_eq!(a.id(), b.id(), "a retry gets the same id");
        assert_eq!(a.id(), Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("acme/thing/{rid}").as_bytes()));
        let other =
            CreateOnce::new(&mut v, &TenantId::parse("other").unwrap(), "CreateThing", "thing", &rid, "f".into());
        assert_ne!(a.id(), other.id(), "per tenant");
        let fresh = CreateOnce::new(&mut v, &tenant, "CreateThing", "thing", "", "f".into());
        assert_ne!(fresh.id(), CreateOnce::new(&mut v, &tenant, "CreateThing", "thing", "", "f".into()).id());
        assert_eq!(fresh.id().get_version_num(), 7);
        assert!(v.is_empty());
        CreateOnce::new(&mut v, &tenant, "CreateThing", "thing", "not-a-uuid", "f".into());
        assert_eq!(violations(v), [("request_id".into(), "must be a UUID".into())]);
    }

    struct Migrator;

    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(idempotency::IdempotencyMigration), Box::new(idempotency::IdempotencyHashMigration)]
        }
    }

    async fn names(db: &impl ConnectionTrait) -> Vec<String> {
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), "SELECT name FROM things ORDER BY name"))
            .await
            .unwrap();
        rows.iter().map(|r| r.try_get::<String>("", "name").unwrap()).collect()
    }

    async fn find_thing(db: &impl ConnectionTrait, id: Uuid) -> Result<String> {
        let backend = db.get_database_backend();
        let sql = if backend == DbBackend::Postgres {
            "SELECT name FROM things WHERE id = $1"
        } else {
            "SELECT name FROM things WHERE id = ?"
        };
        let row = db.query_one_raw(Statement::from_sql_and_values(backend, sql, [id.to_string().into()])).await?;
        row.map(|r| r.try_get::<String>("", "name").unwrap()).ok_or_else(|| Error::not_found("thing", id.to_string()))
    }

    /// A create handler's transaction, as the services write it: replay, else insert and record.
    async fn create(db: &DatabaseConnection, tenant: &TenantId, request_id: &str, name: &str) -> Result<String> {
        let request = clm_proto::contacts::v1::CreateContactRequest {
            contact: Some(clm_proto::contacts::v1::Contact { given_name: name.into(), ..Default::default() }),
            request_id: request_id.into(),
        };
        let fingerprint = idempotency::fingerprint("clm.contacts.v1.CreateContactRequest", &request);
        let mut v = Violations::new();
        let mut once = CreateOnce::new(&mut v, tenant, "CreateThing", "thing", request_id, fingerprint);
        v.finish()?;
        let txn = crate::db::begin_write(db).await?;
        if let Some(first) = once.replay(&txn, tenant, find_thing(&txn, once.id())).await? {
            return Ok(first);
        }
        let backend = txn.get_database_backend();
        let sql = if backend == DbBackend::Postgres {
            "INSERT INTO things (id, name) VALUES ($1, $2)"
        } else {
            "INSERT INTO things (id, name) VALUES (?, ?)"
        };
        txn.execute_raw(Statement::from_sql_and_values(backend, sql, [once.id().to_string().into(), name.into()]))
            .await?;
        once.record(&txn, tenant, &once.id().to_string()).await?;
        txn.commit().await?;
        Ok(name.to_owned())
    }

    async fn a_retry_replays_and_a_reused_id_is_refused(backend: Backend) {
        let Some(tdb) = TestDb::create(backend, "crudonce").await else { return };
        let db = sea_orm::Database::connect(&tdb.url).await.unwrap();
        crate::db::migrate::<Migrator>(&db).await.unwrap();
        db.execute_unprepared("CREATE TABLE things (id VARCHAR(36) PRIMARY KEY, name TEXT NOT NULL)").await.unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let rid = Uuid::new_v4().to_string();

        assert_eq!(create(&db, &acme, &rid, "one").await.unwrap(), "one");
        assert_eq!(create(&db, &acme, &rid, "one").await.unwrap(), "one", "a retry: the first result");
        let err = create(&db, &acme, &rid, "two").await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(v) if v.len() == 1 && v[0].field == "request_id"
                && v[0].description.contains("different request")),
            "{err:?}"
        );
        assert_eq!(names(&db).await, ["one"], "neither the retry nor the reuse made another");

        // Another tenant's same id is another request; no id: a new one every time.
        let other = TenantId::parse("other").unwrap();
        assert_eq!(create(&db, &other, &rid, "two").await.unwrap(), "two");
        create(&db, &acme, "", "three").await.unwrap();
        create(&db, &acme, "", "three").await.unwrap();
        assert_eq!(names(&db).await, ["one", "three", "three", "two"]);

        // The resource deleted since: the retry makes it again (its id kept already).
        let made = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("acme/thing/{rid}").as_bytes());
        db.execute_unprepared(&format!("DELETE FROM things WHERE id = '{made}'")).await.unwrap();
        assert_eq!(create(&db, &acme, &rid, "one").await.unwrap(), "one");
        assert_eq!(find_thing(&db, made).await.unwrap(), "one");
        drop(db);
        tdb.cleanup().await;
    }

    clm_testkit::backend_tests!(a_retry_replays_and_a_reused_id_is_refused);
}
