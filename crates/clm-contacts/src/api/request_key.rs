//! Request ids of contacts' creates and merges (AIP-155), kept by the platform's
//! `clm_platform::idempotency` like every other service's: a retry gets the first result, the
//! id reused for another request is INVALID_ARGUMENT.

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId, Violations, idempotency};
use sea_orm::ConnectionTrait;

/// A request id as served (AIP-155, kept by `clm_platform::idempotency`): the method, the id
/// and the request's fingerprint.
#[derive(Debug, Clone)]
pub(super) struct RequestKey {
    method: &'static str,
    request_id: String,
    fingerprint: String,
}

impl RequestKey {
    /// The request id of a `method` request, with the request's fingerprint: `None` when there
    /// is none (or it is not a UUID: then a violation).
    pub(super) fn of(
        v: &mut Violations,
        method: &'static str,
        raw: &str,
        request: &impl prost::Message,
    ) -> Option<Self> {
        let request_id = v.check(idempotency::check(raw)).flatten()?;
        let fingerprint = idempotency::fingerprint(&format!("clm.contacts.v1.{method}Request"), request);
        Some(Self { method, request_id, fingerprint })
    }

    /// What an earlier call with this id produced; INVALID_ARGUMENT on `request_id` when it was
    /// another request.
    pub(super) async fn find(&self, db: &impl ConnectionTrait, tenant: &TenantId) -> Result<Option<String>, Error> {
        idempotency::find(db, tenant, self.method, &self.request_id, &self.fingerprint).await
    }

    /// Remember what this id produced, in the transaction of the change.
    pub(super) async fn record(&self, txn: &UnitOfWork, tenant: &TenantId, resource_id: &str) -> Result<(), Error> {
        idempotency::record(txn, tenant, self.method, &self.request_id, &self.fingerprint, resource_id).await
    }

    /// [`Self::record`] as an insert, to write with the change in one statement.
    pub(super) fn insert(&self, tenant: &TenantId, resource_id: &str) -> sea_orm::sea_query::InsertStatement {
        idempotency::insert(tenant, self.method, &self.request_id, &self.fingerprint, resource_id)
    }
}
