//! gRPC handlers of `clm.lifecycle.v1.LifecycleService`: validate, call the store and the
//! domain in a transaction, publish through the outbox, map back. No SQL here.

pub mod automations;
pub mod convert;

use std::pin::Pin;

use clm_platform::convert::{TimeBounds, duration, duration_micros, etag, etag_version, parse_time, timestamp, uuid};
use clm_platform::idempotency;
use clm_platform::pagination::{PageTokens, page_size};
use clm_platform::{Error, RequestContext, TenantId, Violations};
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_server::LifecycleService;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::domain::model::StageKey;
use crate::events::Publisher;
use crate::store::entities::{journey_event, manual_move};
use crate::store::{self, ModelRecord, StoredRules, now_micros};
use convert::{check_event, event_to_pb, kind_key, model_from_pb, model_to_pb, transition_to_pb};

/// How far in the future an event time may be (clock skew), µs: journey events and moves
/// are history, replayed in time order, so "not in the future" is stricter here than the
/// platform's day of tolerance for event times.
const MAX_FUTURE_SKEW: i64 = 5 * 60 * 1_000_000;
/// The bounds of a journey event's or a move's time.
const HISTORY: TimeBounds = TimeBounds::NotAfterNowPlus(MAX_FUTURE_SKEW);
/// How long to wait for a just-created contact's event to arrive before refusing, ms.
const CONTACT_WAIT_MS: u64 = 3000;

#[derive(Clone, Debug)]
pub struct LifecycleApi {
    pub(crate) db: DatabaseConnection,
    pub(crate) tokens: PageTokens,
    pub(crate) events: Publisher,
    pub(crate) automator: crate::contacts_client::Automator,
    pub(crate) watch: crate::events::watch::Changes,
}

impl LifecycleApi {
    /// `watch`: the stage changes `WatchStageChanges` streams (fed by `events::watch`).
    pub fn new(
        db: DatabaseConnection,
        tokens: PageTokens,
        automator: crate::contacts_client::Automator,
        watch: crate::events::watch::Changes,
    ) -> Self {
        Self { db, tokens, events: automator.publisher.clone(), automator, watch }
    }

    /// The contact must exist: known from contact events. A contact created a moment ago may
    /// not have been heard of yet, so wait briefly for its event.
    async fn require_contact(&self, tenant: &TenantId, contact: Uuid) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(CONTACT_WAIT_MS);
        loop {
            match store::contact_state(&self.db, tenant, contact).await?.as_deref() {
                Some("active") => return Ok(()),
                Some("erased") => return Err(Error::not_found("contact", format!("{contact} (erased)"))),
                Some("merged") => {
                    return Err(Error::FailedPrecondition(format!(
                        "contact {contact} was merged; use the survivor's id"
                    )));
                }
                Some(other) => return Err(Error::FailedPrecondition(format!("contact {contact} is {other}"))),
                None if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::not_found("contact", contact.to_string()));
                }
                None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Rebuild one journey in `txn` and publish its new transitions.
    async fn rebuild(
        &self,
        txn: &impl ConnectionTrait,
        tenant: &TenantId,
        contact: Uuid,
        model: &ModelRecord,
    ) -> Result<(Vec<crate::store::entities::transition::Model>, Vec<crate::store::entities::transition::Model>), Error>
    {
        let (rules, _) = store::rules(txn, tenant).await?;
        let (_, new, dropped) =
            store::rebuild_journey(txn, tenant, contact, model, &rules.to_domain(), now_micros()).await?;
        let all = store::transitions_of(txn, tenant, contact, model.id).await?;
        self.events.stage_changes(txn, tenant, model, &all, &new, &dropped).await?;
        Ok((all, new))
    }

    async fn journey_pb(&self, tenant: &TenantId, contact: Uuid, model: &ModelRecord) -> Result<pb::Journey, Error> {
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
    async fn record(
        &self,
        txn: &impl ConnectionTrait,
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

fn ctx<T>(req: &Request<T>) -> Result<RequestContext, Status> {
    clm_platform::auth::context(req)
}

fn model_uuid_or_default(raw: &str) -> &str {
    if raw.is_empty() { "default" } else { raw }
}

fn text(field: &str, raw: &str, max: usize, v: &mut Violations) -> String {
    let t = raw.trim();
    if t.chars().count() > max {
        v.add(field, format!("at most {max} characters"));
    }
    if t.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
    t.to_owned()
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn rules_pb(r: &StoredRules, version: i64) -> pb::RuleSettings {
    pb::RuleSettings {
        first_touchpoint_awareness: r.first_touchpoint_awareness,
        lead_captured_acquisition: r.lead_captured_acquisition,
        first_purchase_conversion: r.first_purchase_conversion,
        repeat_purchase_retention: r.repeat_purchase_retention,
        customer_tenure_retention: r.customer_tenure_retention_micros.map(duration),
        advocacy_loyalty: r.advocacy_loyalty,
        dormancy: r.dormancy,
        reactivation: r.reactivation,
        detractor_at_risk: r.detractor_at_risk,
        etag: etag(version),
    }
}

#[tonic::async_trait]
impl LifecycleService for LifecycleApi {
    async fn create_lifecycle_model(
        &self,
        req: Request<pb::CreateLifecycleModelRequest>,
    ) -> Result<Response<pb::CreateLifecycleModelResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let fingerprint = idempotency::fingerprint("clm.lifecycle.v1.CreateLifecycleModelRequest", &req);
        let m = req.lifecycle_model.ok_or_else(|| Error::invalid("lifecycle_model", "is required"))?;
        let mut v = Violations::new();
        let name = text("lifecycle_model.display_name", &m.display_name, 128, &mut v);
        if name.is_empty() {
            v.add("lifecycle_model.display_name", "is required");
        }
        let description = text("lifecycle_model.description", &m.description, 2048, &mut v);
        let rid = if req.request_id.is_empty() { None } else { v.check(uuid("request_id", &req.request_id)) };
        let model = match model_from_pb(&m.stages, &m.allowed_transitions, "lifecycle_model.") {
            Ok(model) => Some(model),
            Err(list) => {
                for x in list {
                    v.add(x.field, x.description);
                }
                None
            }
        };
        v.finish()?;
        // A retry with the same request id maps to the same model id.
        let id = rid.map_or_else(Uuid::now_v7, |r| {
            Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{}/model/{r}", ctx.tenant).as_bytes())
        });
        const METHOD: &str = "CreateLifecycleModel";
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let mut known = false;
        if let Some(r) = rid {
            // Refused when the id served another request; else the model it made (for ids
            // served before fingerprints were kept, the model is found by its id alone).
            known = idempotency::find(&txn, &ctx.tenant, METHOD, &r.to_string(), &fingerprint).await?.is_some();
            if let Ok(existing) = store::get_model(&txn, &ctx.tenant, &id.to_string()).await {
                return Ok(Response::new(pb::CreateLifecycleModelResponse {
                    lifecycle_model: Some(model_to_pb(&existing)),
                }));
            }
        }
        store::default_model(&txn, &ctx.tenant).await?;
        let now = now_micros();
        let mut rec = ModelRecord {
            id,
            display_name: name,
            description,
            model: model.expect("validated"),
            is_default: m.is_default,
            version: 1,
            create_time: now,
            update_time: now,
        };
        store::insert_model(&txn, &ctx.tenant, &rec).await?;
        if let Some(r) = rid.filter(|_| !known) {
            idempotency::record(&txn, &ctx.tenant, METHOD, &r.to_string(), &fingerprint, &id.to_string()).await?;
        }
        if rec.is_default {
            store::set_default(&txn, &ctx.tenant, rec.id).await?;
        }
        txn.commit().await.map_err(Error::from)?;
        rec.is_default = m.is_default;
        Ok(Response::new(pb::CreateLifecycleModelResponse { lifecycle_model: Some(model_to_pb(&rec)) }))
    }

    async fn get_lifecycle_model(
        &self,
        req: Request<pb::GetLifecycleModelRequest>,
    ) -> Result<Response<pb::GetLifecycleModelResponse>, Status> {
        let ctx = ctx(&req)?;
        let m = store::get_model(&self.db, &ctx.tenant, model_uuid_or_default(&req.get_ref().id)).await?;
        Ok(Response::new(pb::GetLifecycleModelResponse { lifecycle_model: Some(model_to_pb(&m)) }))
    }

    async fn list_lifecycle_models(
        &self,
        req: Request<pb::ListLifecycleModelsRequest>,
    ) -> Result<Response<pb::ListLifecycleModelsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let limit = page_size(req.page_size)?;
        store::default_model(&self.db, &ctx.tenant).await?;
        let after: Option<(i64, String)> = self.tokens.decode(&req.page_token, &ctx.tenant, "models")?;
        let (models, next) = store::list_models(&self.db, &ctx.tenant, after.as_ref(), limit).await?;
        Ok(Response::new(pb::ListLifecycleModelsResponse {
            lifecycle_models: models.iter().map(model_to_pb).collect(),
            next_page_token: next.map(|n| self.tokens.encode(&ctx.tenant, "models", &n)).unwrap_or_default(),
        }))
    }

    async fn update_lifecycle_model(
        &self,
        req: Request<pb::UpdateLifecycleModelRequest>,
    ) -> Result<Response<pb::UpdateLifecycleModelResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let m = req.lifecycle_model.ok_or_else(|| Error::invalid("lifecycle_model", "is required"))?;
        let mut v = Violations::new();
        let expected = v.check(etag_version("lifecycle_model.etag", &m.etag)).flatten();
        let paths: Vec<String> = req.update_mask.map(|x| x.paths).unwrap_or_default();
        const PATHS: [&str; 5] = ["display_name", "description", "stages", "allowed_transitions", "is_default"];
        for p in &paths {
            if !PATHS.contains(&p.as_str()) {
                v.add("update_mask", format!("unknown path {p:?}; one of {}", PATHS.join(", ")));
            }
        }
        v.finish()?;
        let has = |p: &str| paths.is_empty() || paths.iter().any(|x| x == p);
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let current = store::get_model(&txn, &ctx.tenant, model_uuid_or_default(&m.id)).await?;
        if expected.is_some_and(|e| e != current.version) {
            return Err(Error::Aborted("etag mismatch: the model changed; re-read and retry".into()).into());
        }
        let mut next = current.clone();
        let mut v = Violations::new();
        if has("display_name") && (!paths.is_empty() || !m.display_name.is_empty()) {
            next.display_name = text("lifecycle_model.display_name", &m.display_name, 128, &mut v);
            if next.display_name.is_empty() {
                v.add("lifecycle_model.display_name", "is required");
            }
        }
        if has("description") && (!paths.is_empty() || !m.description.is_empty()) {
            next.description = text("lifecycle_model.description", &m.description, 2048, &mut v);
        }
        let stages_given = !paths.is_empty() && (has("stages") || has("allowed_transitions"))
            || (paths.is_empty() && !m.stages.is_empty());
        if stages_given {
            let stages =
                if has("stages") && !m.stages.is_empty() { m.stages.clone() } else { model_to_pb(&current).stages };
            let moves = if has("allowed_transitions") {
                m.allowed_transitions.clone()
            } else {
                model_to_pb(&current).allowed_transitions
            };
            match model_from_pb(&stages, &moves, "lifecycle_model.") {
                Ok(model) => next.model = model,
                Err(list) => {
                    for x in list {
                        v.add(x.field, x.description);
                    }
                }
            }
        }
        if has("is_default") && !paths.is_empty() {
            next.is_default = m.is_default;
        }
        v.finish()?;
        let removed = current.model.removed_in(&next.model);
        let in_use = store::contacts_in_stages(&txn, &ctx.tenant, current.id, &removed).await?;
        if in_use > 0 {
            return Err(Error::FailedPrecondition(format!(
                "{in_use} contacts are in stages this change removes ({}); move them first or create a new model",
                removed.iter().map(StageKey::as_str).collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
        if current.is_default && !next.is_default {
            return Err(Error::FailedPrecondition("make another model the default instead".into()).into());
        }
        next.version = current.version + 1;
        next.update_time = now_micros();
        store::update_model(&txn, &ctx.tenant, &next, current.version).await?;
        if next.is_default && !current.is_default {
            store::set_default(&txn, &ctx.tenant, next.id).await?;
        }
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UpdateLifecycleModelResponse { lifecycle_model: Some(model_to_pb(&next)) }))
    }

    async fn delete_lifecycle_model(
        &self,
        req: Request<pb::DeleteLifecycleModelRequest>,
    ) -> Result<Response<pb::DeleteLifecycleModelResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        let id = v.check(uuid("id", &req.id));
        let expected = v.check(etag_version("etag", &req.etag)).flatten();
        v.finish()?;
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let current = store::get_model(&txn, &ctx.tenant, &id.expect("checked").to_string()).await?;
        if expected.is_some_and(|e| e != current.version) {
            return Err(Error::Aborted("etag mismatch: the model changed; re-read and retry".into()).into());
        }
        if current.is_default {
            return Err(Error::FailedPrecondition(
                "the default model cannot be deleted; make another model the default first".into(),
            )
            .into());
        }
        if store::model_in_use(&txn, &ctx.tenant, current.id).await? {
            return Err(Error::FailedPrecondition("contacts have journeys in this model".into()).into());
        }
        store::delete_model(&txn, &ctx.tenant, current.id).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::DeleteLifecycleModelResponse {}))
    }

    async fn record_journey_event(
        &self,
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
        self.require_contact(&ctx.tenant, contact).await?;
        let key = (!req.idempotency_key.is_empty()).then(|| req.idempotency_key.clone());
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let model = store::get_model(&txn, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
        let (row, fresh) = self.record(&txn, &ctx.tenant, &model, &e, key, "event.", "idempotency_key").await?;
        let all = if fresh {
            let (_, new) = self.rebuild(&txn, &ctx.tenant, contact, &model).await?;
            let custom_name = match &e.detail {
                Some(pb::journey_event::Detail::Custom(c)) => c.name.clone(),
                _ => String::new(),
            };
            let mut triggers = crate::events::automations::stage_triggers(&new);
            triggers.push(crate::events::automations::Trigger::JourneyEvent {
                kind: row.kind.clone(),
                custom_name,
                event_id: row.id.clone(),
            });
            crate::events::automations::run(&txn, &ctx.tenant, &self.automator, &model, contact, triggers).await?;
            store::transitions_of(&txn, &ctx.tenant, contact, model.id).await?
        } else {
            store::transitions_of(&txn, &ctx.tenant, contact, model.id).await?
        };
        txn.commit().await.map_err(Error::from)?;
        self.events.committed();
        // The transitions this event caused (for a repeated key: the ones it caused then).
        let caused: Vec<pb::StageTransition> = all
            .iter()
            .enumerate()
            .filter(|(_, t)| t.cause_ref == row.id)
            .map(|(i, t)| transition_to_pb(t, i.checked_sub(1).map(|p| all[p].at)))
            .collect();
        Ok(Response::new(pb::RecordJourneyEventResponse { event: Some(event_to_pb(&row)), transitions: caused }))
    }

    async fn import_journey_events(
        &self,
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
                    known.insert(c, self.require_contact(&ctx.tenant, c).await.is_ok());
                }
            }
            let txn = clm_platform::db::begin_write(&self.db).await?;
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
                match self.record(&txn, &ctx.tenant, &model, e, key, "", "metadata.idempotency_key").await {
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
            txn.commit().await.map_err(Error::from)?;
        }
        // Rebuild each touched journey once, after everything is in (history in time order).
        for (mid, contact) in &touched {
            let txn = clm_platform::db::begin_write(&self.db).await?;
            let model = store::get_model(&txn, &ctx.tenant, mid).await?;
            self.rebuild(&txn, &ctx.tenant, *contact, &model).await?;
            txn.commit().await.map_err(Error::from)?;
            out.journeys_rebuilt += 1;
        }
        self.events.committed();
        tracing::info!(
            received = out.received,
            recorded = out.recorded,
            rebuilt = out.journeys_rebuilt,
            "journey import finished"
        );
        Ok(Response::new(out))
    }

    async fn transition_stage(
        &self,
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
        let rid = if req.request_id.is_empty() { None } else { v.check(uuid("request_id", &req.request_id)) };
        let now = now_micros();
        let at = match &req.transition_time {
            None => Some(now),
            Some(t) => v.check(parse_time("transition_time", t, HISTORY)),
        };
        v.finish()?;
        let (contact, to, at) = (contact.expect("checked"), to.expect("checked"), at.expect("checked"));
        self.require_contact(&ctx.tenant, contact).await?;
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let model = store::get_model(&txn, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
        if model.model.stage(&to).is_none() {
            return Err(Error::invalid("to_stage", "no such stage in the model").into());
        }
        let move_id = rid.map_or_else(Uuid::now_v7, |r| {
            Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{}/move/{r}", ctx.tenant).as_bytes())
        });
        const METHOD: &str = "TransitionStage";
        let known = match rid {
            Some(r) => idempotency::find(&txn, &ctx.tenant, METHOD, &r.to_string(), &fingerprint).await?.is_some(),
            None => false,
        };
        let already =
            store::moves_of(&txn, &ctx.tenant, contact, model.id).await?.iter().any(|m| m.id == move_id.to_string());
        if let Some(r) = rid.filter(|_| !known && !already) {
            idempotency::record(&txn, &ctx.tenant, METHOD, &r.to_string(), &fingerprint, &move_id.to_string()).await?;
        }
        if !already {
            let current = store::get_journey(&txn, &ctx.tenant, contact, model.id).await?.and_then(|j| j.current_stage);
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
            store::insert_move(
                &txn,
                manual_move::Model {
                    id: move_id.to_string(),
                    tenant_id: ctx.tenant.as_str().to_owned(),
                    contact_id: contact.to_string(),
                    model_id: model.id.to_string(),
                    to_stage: to.as_str().to_owned(),
                    at,
                    reason,
                    actor: ctx.subject.clone(),
                },
            )
            .await?;
        }
        let (_, mut new) = self.rebuild(&txn, &ctx.tenant, contact, &model).await?;
        new.extend(
            crate::events::automations::run(
                &txn,
                &ctx.tenant,
                &self.automator,
                &model,
                contact,
                crate::events::automations::stage_triggers(&new),
            )
            .await?,
        );
        txn.commit().await.map_err(Error::from)?;
        self.events.committed();
        let journey = self.journey_pb(&ctx.tenant, contact, &model).await?;
        Ok(Response::new(pb::TransitionStageResponse { journey: Some(journey) }))
    }

    async fn get_journey(
        &self,
        req: Request<pb::GetJourneyRequest>,
    ) -> Result<Response<pb::GetJourneyResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let contact = uuid("contact_id", &req.contact_id).map_err(Error::from)?;
        let model = store::get_model(&self.db, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
        if store::get_journey(&self.db, &ctx.tenant, contact, model.id).await?.is_none()
            && store::contact_state(&self.db, &ctx.tenant, contact).await?.as_deref() != Some("active")
        {
            return Err(Error::not_found("journey", contact.to_string()).into());
        }
        let journey = self.journey_pb(&ctx.tenant, contact, &model).await?;
        Ok(Response::new(pb::GetJourneyResponse { journey: Some(journey) }))
    }

    async fn list_journey_events(
        &self,
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
                v.add(
                    "filter",
                    "supported: kind = \"touchpoint\" | \"purchase\" | \"referral\" | \"review\" | \"custom\"",
                );
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
        let after: Option<(i64, String)> = self.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
        let (rows, next) = store::list_events(
            &self.db,
            &ctx.tenant,
            contact,
            kind.as_deref(),
            after.as_ref(),
            limit.expect("checked"),
        )
        .await?;
        Ok(Response::new(pb::ListJourneyEventsResponse {
            events: rows.iter().map(event_to_pb).collect(),
            next_page_token: next.map(|n| self.tokens.encode(&ctx.tenant, &fp, &n)).unwrap_or_default(),
        }))
    }

    async fn list_contacts_in_stage(
        &self,
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
        let model = store::get_model(&self.db, &ctx.tenant, model_uuid_or_default(&req.model_id)).await?;
        if model.model.stage(&stage).is_none() {
            return Err(Error::invalid("stage_key", "no such stage in the model").into());
        }
        let fp = format!("in_stage|{}|{}", model.id, stage.as_str());
        let after: Option<(i64, String)> = self.tokens.decode(&req.page_token, &ctx.tenant, &fp)?;
        let (rows, next, total) =
            store::in_stage(&self.db, &ctx.tenant, model.id, &stage, after.as_ref(), limit.expect("checked")).await?;
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
            next_page_token: next.map(|n| self.tokens.encode(&ctx.tenant, &fp, &n)).unwrap_or_default(),
            total_size: i64::try_from(total).unwrap_or(i64::MAX),
        }))
    }

    type WatchStageChangesStream = BoxStream<pb::WatchStageChangesResponse>;

    async fn watch_stage_changes(
        &self,
        req: Request<pb::WatchStageChangesRequest>,
    ) -> Result<Response<Self::WatchStageChangesStream>, Status> {
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
            Some(store::get_model(&self.db, &ctx.tenant, &req.model_id).await?.id.to_string())
        };
        let mut rx = self.watch.subscribe();
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

    async fn create_automation(
        &self,
        req: Request<pb::CreateAutomationRequest>,
    ) -> Result<Response<pb::CreateAutomationResponse>, Status> {
        automations::create(self, req).await
    }

    async fn get_automation(
        &self,
        req: Request<pb::GetAutomationRequest>,
    ) -> Result<Response<pb::GetAutomationResponse>, Status> {
        automations::get(self, req).await
    }

    async fn list_automations(
        &self,
        req: Request<pb::ListAutomationsRequest>,
    ) -> Result<Response<pb::ListAutomationsResponse>, Status> {
        automations::list(self, req).await
    }

    async fn update_automation(
        &self,
        req: Request<pb::UpdateAutomationRequest>,
    ) -> Result<Response<pb::UpdateAutomationResponse>, Status> {
        automations::update(self, req).await
    }

    async fn delete_automation(
        &self,
        req: Request<pb::DeleteAutomationRequest>,
    ) -> Result<Response<pb::DeleteAutomationResponse>, Status> {
        automations::delete(self, req).await
    }

    async fn list_automation_runs(
        &self,
        req: Request<pb::ListAutomationRunsRequest>,
    ) -> Result<Response<pb::ListAutomationRunsResponse>, Status> {
        automations::list_runs(self, req).await
    }

    async fn get_rule_settings(
        &self,
        req: Request<pb::GetRuleSettingsRequest>,
    ) -> Result<Response<pb::GetRuleSettingsResponse>, Status> {
        let ctx = ctx(&req)?;
        let (r, version) = store::rules(&self.db, &ctx.tenant).await?;
        Ok(Response::new(pb::GetRuleSettingsResponse { rule_settings: Some(rules_pb(&r, version)) }))
    }

    async fn update_rule_settings(
        &self,
        req: Request<pb::UpdateRuleSettingsRequest>,
    ) -> Result<Response<pb::UpdateRuleSettingsResponse>, Status> {
        let ctx = ctx(&req)?;
        let req = req.into_inner();
        let s = req.rule_settings.ok_or_else(|| Error::invalid("rule_settings", "is required"))?;
        let mut v = Violations::new();
        let expected = v.check(etag_version("rule_settings.etag", &s.etag)).flatten();
        let paths: Vec<String> = req.update_mask.map(|m| m.paths).unwrap_or_default();
        const PATHS: [&str; 9] = [
            "first_touchpoint_awareness",
            "lead_captured_acquisition",
            "first_purchase_conversion",
            "repeat_purchase_retention",
            "customer_tenure_retention",
            "advocacy_loyalty",
            "dormancy",
            "reactivation",
            "detractor_at_risk",
        ];
        for p in &paths {
            if !PATHS.contains(&p.as_str()) {
                v.add("update_mask", format!("unknown path {p:?}"));
            }
        }
        let tenure = match &s.customer_tenure_retention {
            None => None,
            Some(d) => match duration_micros(d) {
                Some(m) if m > 0 => Some(m),
                _ => {
                    v.add("rule_settings.customer_tenure_retention", "must be a positive duration");
                    None
                }
            },
        };
        v.finish()?;
        let all = paths.is_empty();
        let has = |p: &str| all || paths.iter().any(|x| x == p);
        let txn = clm_platform::db::begin_write(&self.db).await?;
        let (mut r, version) = store::rules(&txn, &ctx.tenant).await?;
        if expected.is_some_and(|e| e != version) {
            return Err(Error::Aborted("etag mismatch: the settings changed; re-read and retry".into()).into());
        }
        macro_rules! set {
            ($($f:ident),+) => { $( if has(stringify!($f)) { r.$f = s.$f; } )+ };
        }
        set!(
            first_touchpoint_awareness,
            lead_captured_acquisition,
            first_purchase_conversion,
            repeat_purchase_retention,
            advocacy_loyalty,
            dormancy,
            reactivation,
            detractor_at_risk
        );
        if has("customer_tenure_retention") {
            r.customer_tenure_retention_micros = tenure;
        }
        let new_version = store::save_rules(&txn, &ctx.tenant, &r, version).await?;
        txn.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UpdateRuleSettingsResponse { rule_settings: Some(rules_pb(&r, new_version)) }))
    }
}
