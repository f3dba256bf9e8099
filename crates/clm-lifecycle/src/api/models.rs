//! Lifecycle model handlers: create, read, list, update (stages in use cannot be removed),
//! delete (not the default, not one in use). Create and update publish LifecycleModelChanged
//! in their transaction.

use clm_platform::convert::uuid;
use clm_platform::crud::{CreateOnce, ExpectedVersion, UpdateMask};
use clm_platform::events::UnitOfWork;
use clm_platform::idempotency;
use clm_platform::pagination::page_size;
use clm_platform::{Error, Violations};
use clm_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

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
    let mut once = CreateOnce::new(&mut v, &ctx.tenant, "CreateLifecycleModel", "model", &req.request_id, fingerprint);
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
    let id = once.id();
    let txn = UnitOfWork::begin(&api.db).await?;
    if let Some(existing) = once.replay(&txn, &ctx.tenant, store::get_model(&txn, &ctx.tenant, &id.to_string())).await?
    {
        return Ok(Response::new(pb::CreateLifecycleModelResponse { lifecycle_model: Some(model_to_pb(&existing)) }));
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
    once.record(&txn, &ctx.tenant, &id.to_string()).await?;
    store::insert_model(&txn, &ctx.tenant, &rec).await?;
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
    let expected = ExpectedVersion::parse(&mut v, "lifecycle_model.etag", &m.etag);
    const PATHS: [&str; 6] =
        ["display_name", "description", "stages", "allowed_transitions", "is_default", "churn_excludes_dormancy"];
    let mask = UpdateMask::parse(&mut v, req.update_mask, &PATHS);
    v.finish()?;
    let txn = UnitOfWork::begin(&api.db).await?;
    let current = store::get_model(&txn, &ctx.tenant, model_uuid_or_default(&m.id)).await?;
    expected.check(current.version, "model")?;
    let mut next = current.clone();
    let mut v = Violations::new();
    if mask.sets("display_name", !m.display_name.is_empty()) {
        next.display_name = text("lifecycle_model.display_name", &m.display_name, 128, &mut v);
        if next.display_name.is_empty() {
            v.add("lifecycle_model.display_name", "is required");
        }
    }
    if mask.sets("description", !m.description.is_empty()) {
        next.description = text("lifecycle_model.description", &m.description, 2048, &mut v);
    }
    let stages_given = mask.sets("stages", !m.stages.is_empty()) || mask.sets("allowed_transitions", false);
    if stages_given {
        let stages =
            if mask.has("stages") && !m.stages.is_empty() { m.stages.clone() } else { model_to_pb(&current).stages };
        let moves = if mask.has("allowed_transitions") {
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
    if mask.sets("churn_excludes_dormancy", m.churn_excludes_dormancy) {
        next.churn_excludes_dormancy = m.churn_excludes_dormancy;
    }
    if mask.sets("is_default", false) {
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
    let expected = ExpectedVersion::parse(&mut v, "etag", &req.etag);
    v.finish()?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let current = store::get_model(&txn, &ctx.tenant, &id.expect("checked").to_string()).await?;
    expected.check(current.version, "model")?;
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
