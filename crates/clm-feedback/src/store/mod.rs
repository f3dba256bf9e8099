//! The feedback service's own schema (`entities`, `migrations`) and queries, one module per
//! resource. Every query function takes the `TenantId` and touches only that tenant's rows
//! (writes of a row take it too: the row is written under it); the one exception,
//! `invitation_tenant`, finds whose invitation a survey link names, so its token can be checked.
//! The functions are re-exported here, so callers say `store::get_survey`.

pub mod entities;
pub mod migrations;

mod contacts;
mod follow_ups;
mod invitations;
mod responses;
mod reviews;
mod settings;
mod surveys;

use clm_platform::filter_sql::Field;
use clm_platform::{Error, FieldViolation};
use sea_orm::ColumnTrait;
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};

pub use crate::domain::values::DAY_MICROS;
pub use contacts::{erase_contact, reassign_contact, set_stage, stage_of, stop_asking, unset_stage};
pub use follow_ups::{FOLLOW_UP_FILTER, get_follow_up, insert_follow_up, list_follow_ups, update_follow_up};
pub use invitations::{
    claim_ask, claim_recurrence, claim_reminder, clear_reminder, count_invitations, due_recurrences, due_reminders,
    get_invitation, insert_invitation, invitation_tenant, invitations_by_ids, latest_invitation, list_invitations,
    mark_responded, pending_invitation, set_recurrence, supersede_invitation,
};
pub use responses::{
    RESPONSE_FILTER, ResultRow, get_response, imported_responses, insert_response, list_responses, response_count,
    response_of_invitation, result_rows, update_response,
};
pub use reviews::{get_review, insert_review, list_reviews};
pub use settings::{settings, update_settings};
pub use surveys::{
    SURVEY_FILTER, delete_survey, get_survey, insert_survey, list_surveys, surveys_for_stage, update_survey,
};

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Defaults of a tenant's settings.
pub const DEFAULT_THROTTLE: i64 = 30 * DAY_MICROS;
pub const DEFAULT_TTL: i64 = 14 * DAY_MICROS;
/// CES scores up to this open a follow-up: 1-3, the difficult end (1 = very difficult … 7 = very
/// easy).
pub const DEFAULT_CES_THRESHOLD: i32 = crate::domain::values::CesThreshold::DEFAULT.value();

/// A list's `filter` (AIP-160), compiled to a condition over the columns the list declares
/// (`SURVEY_FILTER`, `RESPONSE_FILTER`, `FOLLOW_UP_FILTER`); empty: every row.
#[derive(Debug, Default)]
pub struct Filter(Option<SimpleExpr>);

impl Filter {
    pub fn parse(field: &str, raw: &str, columns: &[Field]) -> Result<Self, FieldViolation> {
        clm_platform::filter_sql::parse_and_compile(raw, columns).map(Self).map_err(|e| FieldViolation::new(field, e))
    }
}

/// A page cursor: (time, id).
pub type Cursor = (i64, String);

/// Keyset condition for rows after `after` in (time, id) order.
fn after_cond<C: ColumnTrait>(time: C, id: C, after: Option<&Cursor>, desc: bool) -> Option<SimpleExpr> {
    let (t, i) = after?;
    Some(if desc {
        Expr::col(time).lt(*t).or(Expr::col(time).eq(*t).and(Expr::col(id).lt(i.clone())))
    } else {
        Expr::col(time).gt(*t).or(Expr::col(time).eq(*t).and(Expr::col(id).gt(i.clone())))
    })
}

fn stale(what: &str) -> Error {
    Error::Aborted(format!("the {what} changed concurrently; read it again and retry with its new etag"))
}
