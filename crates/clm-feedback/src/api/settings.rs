//! A tenant's feedback settings: GetFeedbackSettings, UpdateFeedbackSettings (throttling
//! window, default invitation TTL, CES follow-up threshold; values of `domain::values`).

use clm_platform::convert::duration_micros;
use clm_platform::{Error, Violations};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::settings_pb;
use super::request::{check_etag, mask_paths, set_fields};
use super::{FeedbackApi, ctx};
use crate::domain::values::{CesThreshold, InvitationTtl, ThrottleWindow};
use crate::store::{self, now_micros};

pub async fn get(
    api: &FeedbackApi,
    req: Request<pb::GetFeedbackSettingsRequest>,
) -> Result<Response<pb::GetFeedbackSettingsResponse>, Status> {
    let ctx = ctx(&req)?;
    let row = store::settings(&api.db, &ctx.tenant).await?;
    Ok(Response::new(pb::GetFeedbackSettingsResponse { feedback_settings: Some(settings_pb(&row)) }))
}

pub async fn update(
    api: &FeedbackApi,
    req: Request<pb::UpdateFeedbackSettingsRequest>,
) -> Result<Response<pb::UpdateFeedbackSettingsResponse>, Status> {
    let ctx = ctx(&req)?;
    let req = req.into_inner();
    let s = req.feedback_settings.unwrap_or_default();
    let set = set_fields(&[
        ("throttle_window", s.throttle_window.is_some()),
        ("default_invitation_ttl", s.default_invitation_ttl.is_some()),
        ("ces_follow_up_threshold", s.ces_follow_up_threshold != 0),
    ]);
    let paths = mask_paths(
        req.update_mask.as_ref(),
        &["throttle_window", "default_invitation_ttl", "ces_follow_up_threshold"],
        &set,
    )?;
    let txn = clm_platform::db::begin_write(&api.db).await?;
    let old = store::settings(&txn, &ctx.tenant).await?;
    check_etag("feedback_settings.etag", &s.etag, old.version)?;
    let mut row = old.clone();
    let mut v = Violations::new();
    for p in &paths {
        match p.as_str() {
            "throttle_window" => {
                let d = duration_micros(&s.throttle_window.unwrap_or_default());
                if let Some(w) = v.check(ThrottleWindow::parse("feedback_settings.throttle_window", d)) {
                    row.throttle_window = w.micros();
                }
            }
            "default_invitation_ttl" => {
                let d = duration_micros(&s.default_invitation_ttl.unwrap_or_default());
                if let Some(t) = v.check(InvitationTtl::parse("feedback_settings.default_invitation_ttl", d)) {
                    row.default_ttl = t.micros();
                }
            }
            "ces_follow_up_threshold" => {
                let field = "feedback_settings.ces_follow_up_threshold";
                if let Some(t) = v.check(CesThreshold::parse(field, s.ces_follow_up_threshold)) {
                    row.ces_threshold = t.value();
                }
            }
            _ => {}
        }
    }
    v.finish()?;
    row.version += 1;
    row.update_time = now_micros();
    store::update_settings(&txn, &ctx.tenant, row.clone(), old.version).await?;
    txn.commit().await.map_err(Error::from)?;
    Ok(Response::new(pb::UpdateFeedbackSettingsResponse { feedback_settings: Some(settings_pb(&row)) }))
}
