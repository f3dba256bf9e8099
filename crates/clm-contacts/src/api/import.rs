//! `ImportContacts`: upsert by email, batch by batch, each batch in one transaction.
//!
//! Every row gets a result. Invalid rows are skipped with the field and reason and never abort
//! the rest. If a batch's transaction fails as a whole (say a concurrent writer took an email),
//! the batch is retried row by row so only the offending rows are skipped.
//!
//! A message the server cannot take (over `server.max_message_bytes`, or not decodable) ends
//! the call with an error naming why (RESOURCE_EXHAUSTED with the limit for a message too
//! large): never an OK end with its rows silently dropped. The messages acknowledged before it
//! (their row results were sent) are imported; nothing of that message or after it is.

use std::collections::HashMap;

use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId, Violations};
use clm_proto::contacts::v1 as pb;
use sea_orm::DatabaseConnection;
use tokio_stream::Stream;
use tonic::{Status, Streaming};
use uuid::Uuid;

use super::apply_fields;
use super::convert::expand_mask;
use crate::domain::model::{Contact, ContactData, ContactState};
use crate::events::Publisher;
use crate::store::{self, now_micros};

/// Most rows in one request message.
pub const MAX_ROWS_PER_MESSAGE: usize = 1000;

type Row = pb::ImportRowResult;

fn skipped(row: i64, field: &str, reason: impl Into<String>) -> Row {
    Row {
        row,
        outcome: pb::ImportOutcome::Skipped as i32,
        contact_id: String::new(),
        reason: reason.into(),
        field: field.into(),
    }
}

fn done(row: i64, outcome: pb::ImportOutcome, id: Uuid) -> Row {
    Row { row, outcome: outcome as i32, contact_id: id.to_string(), reason: String::new(), field: String::new() }
}

/// Validate one row: the fields it sets, as a patch over `base`.
fn validate(c: &pb::Contact, base: &ContactData) -> Result<ContactData, (String, String)> {
    let paths = expand_mask(&[], c, "").map_err(|v| (v.field, v.description))?;
    let mut v = Violations::new();
    let data = apply_fields(base, c, &paths, "", &mut v);
    match v.finish() {
        Ok(()) => Ok(data),
        Err(Error::InvalidArgument(mut list)) => {
            let first = list.remove(0);
            Err((first.field, first.description))
        }
        Err(e) => Err((String::new(), e.to_string())),
    }
}

/// Import one batch in one transaction. `Err` means the transaction failed as a whole.
async fn batch_in_one_txn(
    db: &DatabaseConnection,
    events: &Publisher,
    tenant: &TenantId,
    first_row: i64,
    rows: &[pb::Contact],
) -> Result<Vec<Row>, Error> {
    let txn = UnitOfWork::begin(db).await?;
    let emails: Vec<String> =
        rows.iter().filter(|c| !c.email.trim().is_empty()).map(|c| c.email.trim().to_lowercase()).collect();
    let mut existing: HashMap<String, Contact> = store::find_by_emails(&txn, tenant, &emails).await?;
    let mut results = Vec::with_capacity(rows.len());
    // New contacts are written together at the end (multi-row inserts), or earlier when a
    // later row of the batch updates one of them.
    let mut pending: Vec<Contact> = Vec::new();
    for (i, c) in rows.iter().enumerate() {
        let row = first_row + i as i64;
        let email_key = c.email.trim().to_lowercase();
        let current = if email_key.is_empty() { None } else { existing.get(&email_key).cloned() };
        if let Some(cur) = &current
            && pending.iter().any(|p| p.id == cur.id)
        {
            flush(&txn, events, tenant, &mut pending).await?;
        }
        if let Some(cur) = &current
            && cur.state != ContactState::Active
        {
            results.push(skipped(row, "email", format!("contact {} with this email is {}", cur.id, cur.state.key())));
            continue;
        }
        let base = current.as_ref().map(|c| c.data.clone()).unwrap_or_default();
        let data = match validate(c, &base) {
            Ok(d) => d,
            Err((field, reason)) => {
                results.push(skipped(row, &field, reason));
                continue;
            }
        };
        if let Some(r) = data.acquisition.referred_by
            && !matches!(store::find_contact(&txn, tenant, r).await?, Some(ref x) if x.state != ContactState::Merged)
        {
            results.push(skipped(row, "acquisition.referred_by_contact_id", "no such contact"));
            continue;
        }
        let now = now_micros();
        let saved = match current {
            Some(cur) => {
                let updated =
                    Contact { data, update_time: now.max(cur.update_time), version: cur.version + 1, ..cur.clone() };
                store::update_contact(&txn, tenant, &updated, cur.version).await?;
                let paths = expand_mask(&[], c, "").unwrap_or_default();
                events.updated(&txn, tenant, &updated, &paths).await?;
                results.push(done(row, pb::ImportOutcome::Updated, updated.id));
                updated
            }
            None => {
                let mut data = data;
                data.acquisition.acquired_at.get_or_insert(now);
                let created = Contact {
                    id: Uuid::now_v7(),
                    data,
                    state: ContactState::Active,
                    merged_into: None,
                    create_time: now,
                    update_time: now,
                    delete_time: None,
                    version: 1,
                };
                results.push(done(row, pb::ImportOutcome::Created, created.id));
                pending.push(created.clone());
                created
            }
        };
        if let Some(e) = &saved.data.email {
            existing.insert(e.as_str().to_owned(), saved);
        }
    }
    flush(&txn, events, tenant, &mut pending).await?;
    txn.commit().await?;
    Ok(results)
}

/// Write the batch's new contacts and their ContactCreated events.
async fn flush(
    txn: &UnitOfWork,
    events: &Publisher,
    tenant: &TenantId,
    pending: &mut Vec<Contact>,
) -> Result<(), Error> {
    if pending.is_empty() {
        return Ok(());
    }
    store::insert_contacts(txn, tenant, pending).await?;
    txn.insert(events.created_inserts(tenant, pending)).await?;
    pending.clear();
    Ok(())
}

/// Import one batch: all at once, or row by row when the batch cannot commit as a whole.
async fn import_batch(
    db: &DatabaseConnection,
    events: &Publisher,
    tenant: &TenantId,
    first_row: i64,
    rows: &[pb::Contact],
) -> Result<Vec<Row>, Status> {
    match batch_in_one_txn(db, events, tenant, first_row, rows).await {
        Ok(r) => Ok(r),
        Err(Error::Unavailable(m)) => Err(Status::unavailable(m)),
        Err(batch_err) => {
            tracing::warn!(error = %batch_err, first_row, "import batch failed as a whole; retrying row by row");
            let mut out = Vec::with_capacity(rows.len());
            for (i, c) in rows.iter().enumerate() {
                let row = first_row + i as i64;
                match batch_in_one_txn(db, events, tenant, row, std::slice::from_ref(c)).await {
                    Ok(mut r) => out.append(&mut r),
                    Err(Error::Unavailable(m)) => return Err(Status::unavailable(m)),
                    Err(Error::AlreadyExists { message }) => out.push(skipped(row, "email", message)),
                    Err(e) => {
                        let status: Status = e.into();
                        out.push(skipped(row, "", status.message().to_owned()));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// What the caller is told when reading its stream failed: a message over the size limit
/// names the limit and the setting; anything else is passed on as it came.
fn inbound_error(status: Status, max_message_bytes: usize, received: i64) -> Status {
    let too_large = (status.code() == tonic::Code::OutOfRange && status.message().contains("too large"))
        || (status.code() == tonic::Code::ResourceExhausted && status.message().contains("size limit"));
    if too_large {
        Status::resource_exhausted(format!(
            "an ImportContacts message exceeds the server's limit of {max_message_bytes} bytes \
             (server.max_message_bytes): send fewer rows per message; the {received} rows acknowledged \
             before it were imported, none of that message or after it ({})",
            status.message()
        ))
    } else {
        status
    }
}

/// Drive an import stream: results per message, then the summary.
pub fn run(
    db: DatabaseConnection,
    events: Publisher,
    tenant: TenantId,
    max_message_bytes: usize,
    mut input: Streaming<pb::ImportContactsRequest>,
) -> impl Stream<Item = Result<pb::ImportContactsResponse, Status>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut summary = pb::ImportSummary::default();
        loop {
            let msg = match input.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(%status, received = summary.received, "import stream ended with an error");
                    let _ = tx.send(Err(inbound_error(status, max_message_bytes, summary.received))).await;
                    return;
                }
            };
            if msg.contacts.len() > MAX_ROWS_PER_MESSAGE {
                let _ = tx
                    .send(Err(Status::from(Error::invalid(
                        "contacts",
                        format!("at most {MAX_ROWS_PER_MESSAGE} rows per message"),
                    ))))
                    .await;
                return;
            }
            let results = match import_batch(&db, &events, &tenant, summary.received, &msg.contacts).await {
                Ok(r) => r,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let before = summary.received;
            summary.received += msg.contacts.len() as i64;
            for r in &results {
                match pb::ImportOutcome::try_from(r.outcome) {
                    Ok(pb::ImportOutcome::Created) => summary.created += 1,
                    Ok(pb::ImportOutcome::Updated) => summary.updated += 1,
                    _ => summary.skipped += 1,
                }
            }
            if before / 10_000 != summary.received / 10_000 {
                tracing::info!(
                    received = summary.received,
                    created = summary.created,
                    updated = summary.updated,
                    skipped = summary.skipped,
                    "import progress"
                );
            }
            let msg = pb::ImportContactsResponse {
                result: Some(pb::import_contacts_response::Result::Rows(pb::ImportRowResults { results })),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        tracing::info!(
            received = summary.received,
            created = summary.created,
            updated = summary.updated,
            skipped = summary.skipped,
            "import finished"
        );
        let _ = tx
            .send(Ok(pb::ImportContactsResponse {
                result: Some(pb::import_contacts_response::Result::Summary(summary)),
            }))
            .await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
