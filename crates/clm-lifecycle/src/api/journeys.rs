//! Journey handlers: record and import journey events, move contacts by hand, read journeys
//! and who is in a stage, watch stage changes. Every change goes through `journeys::advance`
//! in the request's transaction; the automations it owes run after commit
//! (`journeys::automations::run_owed`), before the answer.

use clm_platform::convert::{TimeBounds, duration, parse_time, timestamp, uuid};
use clm_platform::crud::CreateOnce;
use clm_platform::events::UnitOfWork;
use clm_platform::idempotency;
use clm_platform::pagination::page_size;
use clm_platform::{Error, TenantId, Violations};
use clm_proto::lifecycle::v1 as pb;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{LifecycleApi, ctx, model_uuid_or_default, text};
use crate::convert::{self, check_event, event_to_pb, kind_key, transition_to_pb};
use crate::domain::contact::ContactState;
use crate::domain::model::StageKey;
use crate::journeys::{Happened, advance, automations};
use crate::store::entities::{journey_event, manual_move};
use crate::store::{self, ModelRecord, now_micros};

/// How far in the future an event time may be (clock skew), µs: journey events and moves
/// are history, replayed in time order, so "not in the future" is stricter here than the
/// platform's day of tolerance for event times.
const MAX_FUTURE_SKEW: i64 = 5 * 60 * 1_000_000;
/// The bounds of a journey event's or a move's time.
const HISTORY: TimeBounds = TimeBounds::NotAfterNowPlus(MAX_FUTURE_SKEW);
/// How long to wait for a just-created contact's event to arrive before refusing, ms.
const CONTACT_WAIT_MS: u64 = 3000;

impl LifecycleApi {
    /// The contact must exist: known from contact events. A contact created a moment ago may
    /// not have been heard of yet, so wait briefly for its event.
    pub(super) async fn require_contact(&self, tenant: &TenantId, contact: Uuid) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(CONTACT_WAIT_MS);
        loop {
            match store::contact_state(&self.db, tenant, contact).await? {
                Some(ContactState::Active) => return Ok(()),
                Some(ContactState::Erased) => return Err(Error::not_found("contact", format!("{contact} (erased)"))),
                Some(ContactState::Merged) => {
                    return Err(Error::FailedPrecondition(format!(
                        "contact {contact} was merged; use the survivor's id"
                    )));
                }
                Some(other @ ContactState::Deleted) => {
                    return Err(Error::FailedPrecondition(format!("contact {contact} is {}", other.key())));
                }
                None if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::not_found("contact", contact.to_string()));
                }
                None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    pub(super) async fn journey_pb(
        &self,
        tenant: &TenantId,
        contact: Uuid,
        model: &ModelRecord,
    ) -> Result<pb::Journey, Error> {
        let j = store::get_journey(&self.db, tenant, contact, model.id).await?;
        let ts = store::transitions_of(&self.db, tenant, contact, model.id).await?;
        let mut prev = None;
        let transitions = ts
            .iter()
            .map(|t| {
                let p = transition_to_pb(t, prev);
                prev = Some(t.at);
                p
            })
            .collect();
        Ok(pb::Journey {
            contact_id: contact.to_string(),
            model_id: model.id.to_string(),
            current_stage: j.as_ref().and_then(|j| j.current_stage.clone()).unwrap_or_default(),
            stage_enter_time: j.as_ref().filter(|j| j.current_stage.is_some()).map(|j| timestamp(j.enter_time)),
            transitions,
            reactivation_count: j.as_ref().map_or(0, |j| i32::try_from(j.reactivations).unwrap_or(i32::MAX)),
            last_activity_time: j.as_ref().and_then(|j| j.last_activity).map(timestamp),
        })
    }

    /// Validate and store one journey event; returns the row (the existing one for a repeated
    /// key, or for a purchase whose order id was recorded: the same sale). `prefix` names the
    /// event's fields ("event." in RecordJourneyEvent, "" in an import), `key_field` its key.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        model: &ModelRecord,
        e: &pb::JourneyEvent,
        key: Option<String>,
        prefix: &str,
        key_field: &str,
    ) -> Result<(journey_event::Model, bool), Error> {
        let now = now_micros();
        let contact = Uuid::parse_str(&e.contact_id)
            .map_err(|_| Error::invalid(format!("{prefix}contact_id"), "must be a UUID"))?;
        let at = match &e.occur_time {
            None => now,
            Some(ts) => parse_time(&format!("{prefix}occur_time"), ts, HISTORY)?,
        };
        let mut body = e.clone();
        body.id.clear();
        body.record_time = None;
        if let Some(k) = &key
            && let Some(existing) = store::event_by_key(txn, tenant, k).await?
        {
            // The key names one event: the same one again is a retry, another is a mistake.
            let fingerprint = |b: &[u8]| idempotency::fingerprint_bytes("clm.lifecycle.v1.JourneyEvent", b, None);
            if fingerprint(&existing.body) != fingerprint(&prost::Message::encode_to_vec(&body)) {
                return Err(idempotency::reused(key_field));
            }
            return Ok((existing, false));
        }
        let order = match &e.detail {
            Some(pb::journey_event::Detail::Purchase(p)) => Some(p.order_id.clone()),
            _ => None,
        };
        if let Some(order) = &order
            && let Some(existing) = store::purchase_by_order(txn, tenant, order).await?
        {
            return same_sale(existing, e);
        }
        let row = journey_event::Model {
            id: Uuid::now_v7().to_string(),
            tenant_id: tenant.as_str().to_owned(),
            contact_id: contact.to_string(),
            model_id: model.id.to_string(),
            occur_time: at,
            record_time: now,
            idempotency_key: key,
            kind: kind_key(e).to_owned(),
            lead: matches!(convert::happening(e), crate::domain::journey::Happening::Touchpoint { lead: true }),
            score: match convert::happening(e) {
                crate::domain::journey::Happening::NpsScore(s) => Some(s),
                _ => None,
            },
            body: prost::Message::encode_to_vec(&body),
            order_id: order,
        };
        if !store::insert_event(txn, row.clone()).await? {
            return Err(Error::Aborted(
                "a concurrent request with the same idempotency_key is in progress; retry".into(),
            ));
        }
        self.events.event_recorded(txn, tenant, &row, e).await?;
        Ok((row, true))
    }
}

/// A purchase whose order id is already recorded (`existing`) is the same sale: the same
/// buyer, amount and items give the first event back (nothing recorded, nothing counted
/// twice); anything else is ALREADY_EXISTS, naming the order id and the event holding it.
fn same_sale(existing: journey_event::Model, e: &pb::JourneyEvent) -> Result<(journey_event::Model, bool), Error> {
    use pb::journey_event::Detail;
    let first = event_to_pb(&existing);
    let same = match (&first.detail, &e.detail) {
        (Some(Detail::Purchase(a)), Some(Detail::Purchase(b))) => {
            a == b && first.contact_id.eq_ignore_ascii_case(e.contact_id.trim())
        }
        _ => false,
    };
    if same {
        return Ok((existing, false));
    }
    Err(Error::AlreadyExists {
        message: format!(
            "order {:?} was already recorded as journey event {} (contact {}) with other details; \
             a purchase with a recorded order id is the same sale",
            existing.order_id.as_deref().unwrap_or_default(),
            existing.id,
            existing.contact_id
        ),
    })
}

pub(super) async fn record_journey_event(
    api: &LifecycleApi,
    req: Request<pb::RecordJourneyEventRequest>,
) -> Result<Response<pb::RecordJourneyEventResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let e = req.event.ok_or_else(|| Error::invalid("event", "is required"))?;
    let mut v = Violations::new();
    let contact = v.check(uuid("event.contact_id", &e.contact_id));
    check_event(&e, "event.", &mut v);
    if req.idempotency_key.chars().count() > 128 {
        v.add("idempotency_key", "at most 128 characters");
    }
    v.finish()?;
    let contact = contact.expect("checked");
    api.require_contact(&ctx.tenant, contact).await?;
    let key = (!req.idempotency_key.is_empty()).then(|| req.idempotency_key.clone());
    let txn = UnitOfWork::begin(&api.db).await?;
    let model = store::get_model(&txn, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
    let (row, fresh) = api.record(&txn, &ctx.tenant, &model, &e, key, "event.", "idempotency_key").await?;
    let (all, owed) = if fresh {
        let custom_name = match &e.detail {
            Some(pb::journey_event::Detail::Custom(c)) => c.name.clone(),
            _ => String::new(),
        };
        let happened = Happened::Recorded { event: row.clone(), custom_name, survey: None };
        let done = advance(&txn, &api.events, &ctx.tenant, contact, &model, now_micros(), happened).await?;
        (done.all, done.owed)
    } else {
        (store::transitions_of(&txn, &ctx.tenant, contact, model.id).await?, false)
    };
    txn.commit().await?;
    if owed {
        automations::run_owed(&api.db, &api.automator, &ctx.tenant, contact).await;
    }
    // The transitions this event caused (for a repeated key: the ones it caused then).
    let caused: Vec<pb::StageTransition> = all
        .iter()
        .enumerate()
        .filter(|(_, t)| t.cause_ref == row.id)
        .map(|(i, t)| transition_to_pb(t, i.checked_sub(1).map(|p| all[p].at)))
        .collect();
    Ok(Response::new(pb::RecordJourneyEventResponse { event: Some(event_to_pb(&row)), transitions: caused }))
}

pub(super) async fn import_journey_events(
    api: &LifecycleApi,
    req: Request<Streaming<pb::ImportJourneyEventsRequest>>,
) -> Result<Response<pb::ImportJourneyEventsResponse>, Status> {
    let ctx = ctx(&req)?;
    let mut input = req.into_inner();
    let mut out = pb::ImportJourneyEventsResponse::default();
    let mut touched: std::collections::BTreeSet<(String, Uuid)> = std::collections::BTreeSet::new();
    let mut model_id: Option<String> = None;
    let mut known: std::collections::HashMap<Uuid, bool> = std::collections::HashMap::new();
    while let Some(msg) = input.message().await? {
        if msg.events.len() > 1000 {
            return Err(Error::invalid("events", "at most 1000 events per message").into());
        }
        let mid = model_uuid_or_default(&msg.model_id).to_owned();
        if model_id.get_or_insert_with(|| mid.clone()) != &mid {
            return Err(Error::invalid("model_id", "must be the same in every message of the stream").into());
        }
        // Contacts must exist (known from contact events; wait briefly for new ones).
        for e in &msg.events {
            if let Ok(c) = Uuid::parse_str(&e.contact_id)
                && !known.contains_key(&c)
            {
                known.insert(c, api.require_contact(&ctx.tenant, c).await.is_ok());
            }
        }
        let txn = UnitOfWork::begin(&api.db).await?;
        let model = store::get_model(&txn, &ctx.tenant, &mid).await?;
        for e in &msg.events {
            let index = out.received;
            out.received += 1;
            let mut v = Violations::new();
            let contact = v.check(uuid("contact_id", &e.contact_id));
            check_event(e, "", &mut v);
            if let Err(Error::InvalidArgument(list)) = v.finish() {
                let first = &list[0];
                out.errors.push(pb::ImportError {
                    index,
                    field: first.field.clone(),
                    reason: first.description.clone(),
                });
                continue;
            }
            let contact = contact.expect("checked");
            if !known.get(&contact).copied().unwrap_or(false) {
                out.errors.push(pb::ImportError {
                    index,
                    field: "contact_id".into(),
                    reason: "no such contact".into(),
                });
                continue;
            }
            let key = e.metadata.get("idempotency_key").cloned();
            match api.record(&txn, &ctx.tenant, &model, e, key, "", "metadata.idempotency_key").await {
                Ok((_, true)) => {
                    out.recorded += 1;
                    touched.insert((model.id.to_string(), contact));
                }
                Ok((_, false)) => out.duplicates += 1,
                Err(Error::InvalidArgument(list)) => {
                    out.errors.push(pb::ImportError {
                        index,
                        field: list[0].field.clone(),
                        reason: list[0].description.clone(),
                    });
                }
                Err(Error::AlreadyExists { message }) => {
                    out.errors.push(pb::ImportError { index, field: "purchase.order_id".into(), reason: message });
                }
                Err(other) => return Err(other.into()),
            }
        }
        txn.commit().await?;
    }
    // Advance each touched journey once, after everything is in (history in time order); the
    // automations its new transitions fire run after its commit (`journeys` header: an import
    // fires stage triggers, not each imported event's own).
    for (mid, contact) in &touched {
        let txn = UnitOfWork::begin(&api.db).await?;
        let model = store::get_model(&txn, &ctx.tenant, mid).await?;
        let done = advance(&txn, &api.events, &ctx.tenant, *contact, &model, now_micros(), Happened::Imported).await?;
        txn.commit().await?;
        out.journeys_rebuilt += 1;
        if done.owed {
            automations::run_owed(&api.db, &api.automator, &ctx.tenant, *contact).await;
        }
    }
    tracing::info!(
        received = out.received,
        recorded = out.recorded,
        rebuilt = out.journeys_rebuilt,
        "journey import finished"
    );
    Ok(Response::new(out))
}

pub(super) async fn transition_stage(
    api: &LifecycleApi,
    req: Request<pb::TransitionStageRequest>,
) -> Result<Response<pb::TransitionStageResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let fingerprint = idempotency::fingerprint("clm.lifecycle.v1.TransitionStageRequest", &req);
    let mut v = Violations::new();
    let contact = v.check(uuid("contact_id", &req.contact_id));
    let to = v.check(StageKey::parse("to_stage", &req.to_stage));
    let reason = text("reason", &req.reason, 256, &mut v);
    if reason.is_empty() {
        v.add("reason", "is required for a manual move");
    }
    let mut once = CreateOnce::new(&mut v, &ctx.tenant, "TransitionStage", "move", &req.request_id, fingerprint);
    let now = now_micros();
    let at = match &req.transition_time {
        None => Some(now),
        Some(t) => v.check(parse_time("transition_time", t, HISTORY)),
    };
    v.finish()?;
    let (contact, to, at) = (contact.expect("checked"), to.expect("checked"), at.expect("checked"));
    api.require_contact(&ctx.tenant, contact).await?;
    let txn = UnitOfWork::begin(&api.db).await?;
    let model = store::get_model(&txn, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
    if model.model.stage(&to).is_none() {
        return Err(Error::invalid("to_stage", "no such stage in the model").into());
    }
    let move_id = once.id();
    let made = async {
        let moves = store::moves_of(&txn, &ctx.tenant, contact, model.id).await?;
        moves
            .into_iter()
            .find(|m| m.id == move_id.to_string())
            .ok_or_else(|| Error::not_found("move", move_id.to_string()))
    };
    // A retry of a move already made changes nothing.
    let already = once.replay(&txn, &ctx.tenant, made).await?.is_some();
    let mut owed = false;
    if !already {
        // Kept before the move is made: a concurrent call with the same id waits on this row,
        // then is ABORTED before doing any work.
        once.record(&txn, &ctx.tenant, &move_id.to_string()).await?;
        // The stage the contact was in at the move's time (a backdated move is checked against
        // the history then, not against where later events took the contact since).
        let history = store::transitions_of(&txn, &ctx.tenant, contact, model.id).await?;
        let current = history.iter().rfind(|t| t.at <= at).map(|t| t.to_stage.clone());
        let from = current.as_deref().and_then(|c| StageKey::parse("from", c).ok());
        if from.as_ref() == Some(&to) {
            return Err(Error::FailedPrecondition(format!("the contact is already in {}", to.as_str())).into());
        }
        if !model.model.can_move(from.as_ref(), &to) {
            return Err(Error::FailedPrecondition(format!(
                "the model does not allow {} → {}",
                from.as_ref().map_or("(none)", StageKey::as_str),
                to.as_str()
            ))
            .into());
        }
        let happened = Happened::Moved {
            row: manual_move::Model {
                id: move_id.to_string(),
                tenant_id: ctx.tenant.as_str().to_owned(),
                contact_id: contact.to_string(),
                model_id: model.id.to_string(),
                to_stage: to.as_str().to_owned(),
                at,
                reason,
                actor: ctx.subject.clone(),
            },
        };
        owed = advance(&txn, &api.events, &ctx.tenant, contact, &model, now, happened).await?.owed;
    }
    txn.commit().await?;
    if owed {
        automations::run_owed(&api.db, &api.automator, &ctx.tenant, contact).await;
    }
    let journey = api.journey_pb(&ctx.tenant, contact, &model).await?;
    Ok(Response::new(pb::TransitionStageResponse { journey: Some(journey) }))
}

pub(super) async fn get_journey(
    api: &LifecycleApi,
    req: Request<pb::GetJourneyRequest>,
) -> Result<Response<pb::GetJourneyResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let contact = uuid("contact_id", &req.contact_id).map_err(Error::from)?;
    let model = store::get_model(&api.db, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
    if store::get_journey(&api.db, &ctx.tenant, contact, model.id).await?.is_none()
        && store::contact_state(&api.db, &ctx.tenant, contact).await? != Some(ContactState::Active)
    {
        return Err(Error::not_found("journey", contact.to_string()).into());
    }
    let journey = api.journey_pb(&ctx.tenant, contact, &model).await?;
    Ok(Response::new(pb::GetJourneyResponse { journey: Some(journey) }))
}

pub(super) async fn list_journey_events(
    api: &LifecycleApi,
    req: Request<pb::ListJourneyEventsRequest>,
) -> Result<Response<pb::ListJourneyEventsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let contact = v.check(uuid("contact_id", &req.contact_id));
    let limit = page_size(req.page_size).ok();
    if limit.is_none() {
        v.add("page_size", "must be 0 to 1000");
    }
    // Filter: `kind = "purchase"` (the only field for now).
    let kind = match clm_platform::filter::parse(&req.filter) {
        Ok(None) => None,
        Ok(Some(clm_platform::filter::Expr::Compare {
            field,
            op: clm_platform::filter::Op::Eq,
            value: clm_platform::filter::Value::Text(k),
            ..
        })) if field == ["kind"]
            && ["touchpoint", "purchase", "referral", "review", "custom"].contains(&k.as_str()) =>
        {
            Some(k)
        }
        Ok(Some(_)) => {
            v.add("filter", "supported: kind = \"touchpoint\" | \"purchase\" | \"referral\" | \"review\" | \"custom\"");
            None
        }
        Err(e) => {
            v.add("filter", e.to_string());
            None
        }
    };
    v.finish()?;
    let contact = contact.expect("checked");
    let fp = format!("events|{contact}|{}", req.filter);
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next) =
        store::list_events(&api.db, &ctx.tenant, contact, kind.as_deref(), after.as_ref(), limit.expect("checked"))
            .await?;
    Ok(Response::new(pb::ListJourneyEventsResponse {
        events: rows.iter().map(event_to_pb).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, &fp, &n)).unwrap_or_default(),
    }))
}

pub(super) async fn list_contacts_in_stage(
    api: &LifecycleApi,
    req: Request<pb::ListContactsInStageRequest>,
) -> Result<Response<pb::ListContactsInStageResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let stage = v.check(StageKey::parse("stage_key", &req.stage_key));
    let limit = page_size(req.page_size).ok();
    if limit.is_none() {
        v.add("page_size", "must be 0 to 1000");
    }
    v.finish()?;
    let stage = stage.expect("checked");
    let model = store::get_model(&api.db, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
    if model.model.stage(&stage).is_none() {
        return Err(Error::invalid("stage_key", "no such stage in the model").into());
    }
    let fp = format!("in_stage|{}|{}", model.id, stage.as_str());
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
    let (rows, next, total) =
        store::in_stage(&api.db, &ctx.tenant, model.id, &stage, after.as_ref(), limit.expect("checked")).await?;
    let now = now_micros();
    Ok(Response::new(pb::ListContactsInStageResponse {
        contacts: rows
            .iter()
            .map(|j| pb::ContactInStage {
                contact_id: j.contact_id.clone(),
                stage_enter_time: Some(timestamp(j.enter_time)),
                time_in_stage: Some(duration((now - j.enter_time).max(0))),
            })
            .collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, &fp, &n)).unwrap_or_default(),
        total_size: i64::try_from(total).unwrap_or(i64::MAX),
    }))
}

pub(super) async fn watch_stage_changes(
    api: &LifecycleApi,
    req: Request<pb::WatchStageChangesRequest>,
) -> Result<Response<super::BoxStream<pb::WatchStageChangesResponse>>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let stages: Vec<String> = req
        .to_stages
        .iter()
        .enumerate()
        .filter_map(|(i, s)| v.check(StageKey::parse(&format!("to_stages[{i}]"), s)).map(|k| k.as_str().to_owned()))
        .collect();
    v.finish()?;
    let model_filter = if req.model_id.is_empty() {
        None
    } else {
        Some(store::get_model(&api.db, &ctx.tenant, &req.model_id).await?.id.to_string())
    };
    let mut rx = api.watch.subscribe();
    let tenant = ctx.tenant.as_str().to_owned();
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok((t, change)) => {
                    let to = change.transition.as_ref().map(|x| x.to_stage.clone()).unwrap_or_default();
                    if t != tenant
                        || model_filter.as_ref().is_some_and(|m| m != &change.model_id)
                        || (!stages.is_empty() && !stages.contains(&to))
                    {
                        continue;
                    }
                    if tx.send(Ok(change)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let _ = tx
                        .send(Err(Status::data_loss(format!(
                            "watcher fell {n} changes behind; re-read and watch again"
                        ))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
}
