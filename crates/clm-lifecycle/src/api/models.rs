//! Lifecycle model handlers: create, read, list, update (stages in use cannot be removed),
//! delete (not the default, not one in use). Create and update publish LifecycleModelChanged
//! in their transaction.

use clm_platform::convert::{etag_version, uuid};
use clm_platform::events::UnitOfWork;
use clm_platform::idempotency;
use clm_platform::pagination::page_size;
use clm_platform::{Error, Violations};
use clm_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{LifecycleApi, ctx, model_uuid_or_default, text};
use crate::convert::{model_from_pb, model_to_pb};
use crate::domain::model::StageKey;
use crate::store::{self, ModelRecord, now_micros};

pub(super) async fn create_lifecycle_model(
    api: &LifecycleApi,
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
    let txn = UnitOfWork::begin(&api.db).await?;
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
        churn_excludes_dormancy: m.churn_excludes_dormancy,
    };
    store::insert_model(&txn, &ctx.tenant, &rec).await?;
    if let Some(r) = rid.filter(|_| !known) {
        idempotency::record(&txn, &ctx.tenant, METHOD, &r.to_string(), &fingerprint, &id.to_string()).await?;
    }
    if rec.is_default {
        store::set_default(&txn, &ctx.tenant, rec.id).await?;
    }
    api.events.model_changed(&txn, &ctx.tenant, &rec).await?;
    txn.commit().await?;
    rec.is_default = m.is_default;
    Ok(Response::new(pb::CreateLifecycleModelResponse { lifecycle_model: Some(model_to_pb(&rec)) }))
}

pub(super) async fn get_lifecycle_model(
    api: &LifecycleApi,
    req: Request<pb::GetLifecycleModelRequest>,
) -> Result<Response<pb::GetLifecycleModelResponse>, Status> {
    let ctx = ctx(&req)?;
    let m = store::get_model(&api.db, &ctx.tenant, model_uuid_or_default(&req.get_ref().id)).await?;
    Ok(Response::new(pb::GetLifecycleModelResponse { lifecycle_model: Some(model_to_pb(&m)) }))
}

pub(super) async fn list_lifecycle_models(
    api: &LifecycleApi,
    req: Request<pb::ListLifecycleModelsRequest>,
) -> Result<Response<pb::ListLifecycleModelsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let limit = page_size(req.page_size)?;
    store::default_model(&api.db, &ctx.tenant).await?;
    let after: Option<(i64, String)> = api.tokens.decode(&req.page_token, &ctx.tenant, "models")?;
    let (models, next) = store::list_models(&api.db, &ctx.tenant, after.as_ref(), limit).await?;
    Ok(Response::new(pb::ListLifecycleModelsResponse {
        lifecycle_models: models.iter().map(model_to_pb).collect(),
        next_page_token: next.map(|n| api.tokens.encode(&ctx.tenant, "models", &n)).unwrap_or_default(),
    }))
}

pub(super) async fn update_lifecycle_model(
    api: &LifecycleApi,
    req: Request<pb::UpdateLifecycleModelRequest>,
) -> Result<Response<pb::UpdateLifecycleModelResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let m = req.lifecycle_model.ok_or_else(|| Error::invalid("lifecycle_model", "is required"))?;
    let mut v = Violations::new();
    let expected = v.check(etag_version("lifecycle_model.etag", &m.etag)).flatten();
    let paths: Vec<String> = req.update_mask.map(|x| x.paths).unwrap_or_default();
    const PATHS: [&str; 6] =
        ["display_name", "description", "stages", "allowed_transitions", "is_default", "churn_excludes_dormancy"];
    for p in &paths {
        if !PATHS.contains(&p.as_str()) {
            v.add("update_mask", format!("unknown path {p:?}; one of {}", PATHS.join(", ")));
        }
    }
    v.finish()?;
    let has = |p: &str| paths.is_empty() || paths.iter().any(|x| x == p);
    let txn = UnitOfWork::begin(&api.db).await?;
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
    if has("churn_excludes_dormancy") && (!paths.is_empty() || m.churn_excludes_dormancy) {
        next.churn_excludes_dormancy = m.churn_excludes_dormancy;
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
    // The new revision's settings reach consumers now, not at the model's next StageChanged.
    api.events.model_changed(&txn, &ctx.tenant, &next).await?;
    txn.commit().await?;
    Ok(Response::new(pb::UpdateLifecycleModelResponse { lifecycle_model: Some(model_to_pb(&next)) }))
}

pub(super) async fn delete_lifecycle_model(
    api: &LifecycleApi,
    req: Request<pb::DeleteLifecycleModelRequest>,
) -> Result<Response<pb::DeleteLifecycleModelResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let mut v = Violations::new();
    let id = v.check(uuid("id", &req.id));
    let expected = v.check(etag_version("etag", &req.etag)).flatten();
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
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
