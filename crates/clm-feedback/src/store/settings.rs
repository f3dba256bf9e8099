//! A tenant's feedback settings, created with defaults on first use.

use clm_platform::{Error, Result, TenantId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter};

use super::entities::settings;
use super::{DEFAULT_CES_THRESHOLD, DEFAULT_THROTTLE, DEFAULT_TTL, now_micros, stale};

/// The tenant's settings, created with defaults (and a fresh token secret) on first use.
pub async fn settings(db: &impl ConnectionTrait, tenant: &TenantId) -> Result<settings::Model> {
    if let Some(s) = settings::Entity::find_by_id(tenant.as_str().to_owned()).one(db).await? {
        return Ok(s);
    }
    let secret: [u8; 32] = rand::random();
    let row = settings::Model {
        tenant_id: tenant.as_str().to_owned(),
        throttle_window: DEFAULT_THROTTLE,
        default_ttl: DEFAULT_TTL,
        ces_threshold: DEFAULT_CES_THRESHOLD,
        token_secret: base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret),
        version: 1,
        update_time: now_micros(),
    };
    settings::Entity::insert(row.into_active_model())
        .on_conflict(OnConflict::column(settings::Column::TenantId).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    settings::Entity::find_by_id(tenant.as_str().to_owned())
        .one(db)
        .await?
        .ok_or_else(|| Error::internal(anyhow::anyhow!("feedback settings vanished")))
}

pub async fn update_settings(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    mut row: settings::Model,
    expected: i64,
) -> Result<()> {
    tenant.as_str().clone_into(&mut row.tenant_id);
    let n = settings::Entity::update_many()
        .set(row.clone().into_active_model().reset_all())
        .filter(settings::Column::TenantId.eq(tenant.as_str()))
        .filter(settings::Column::Version.eq(expected))
        .exec(db)
        .await?
        .rows_affected;
    if n == 1 { Ok(()) } else { Err(stale("settings")) }
}
