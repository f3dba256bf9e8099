//! Survey links (`{messaging.public_url}/s/<token>`) for the hosted survey page (`crate::pages`):
//! what a token opens, and its answer submitted through SubmitResponse's own path
//! (`responses::submit_as`), so a response from the page is validated, stored, published and
//! followed up exactly as one from the API.

use clm_platform::{Error, TenantId};
use clm_proto::feedback::v1 as pb;

use super::FeedbackApi;
use super::convert::{load_answers, response_pb, survey_pb};
use crate::domain::invitation::{Seen, seen_at};
use crate::domain::survey::SurveyStatus;
use crate::domain::token;
use crate::store::{self, now_micros};

/// Whether a link's survey may be answered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Pending, before its expiry, its survey active.
    Open,
    /// A complete response used the token.
    Answered,
    /// Not answered before its expiry.
    Expired,
    /// The invitation was cancelled or the survey is no longer active.
    Closed,
}

/// What a genuine survey link opens.
#[derive(Debug, Clone)]
pub struct SurveyLink {
    pub tenant: TenantId,
    pub invitation_id: String,
    pub survey: pb::Survey,
    /// The answers of a partial response to this invitation (the page starts from them).
    pub answers: Vec<pb::Answer>,
    pub state: LinkState,
}

impl FeedbackApi {
    /// The survey link `token` opens; `None` when it does not verify (unknown invitation,
    /// edited or forged token): the page cannot tell those apart, and does not say.
    pub async fn open_link(&self, token: &str) -> Result<Option<SurveyLink>, Error> {
        let Some(id) = token::claimed_id(token) else { return Ok(None) };
        let Some(tenant) = store::invitation_tenant(&self.db, id).await? else { return Ok(None) };
        let Ok(tenant) = TenantId::parse(&tenant) else { return Ok(None) };
        let settings = store::settings(&self.db, &tenant).await?;
        if token::verify(&settings.token_secret, tenant.as_str(), token) != Some(id) {
            return Ok(None);
        }
        let inv = store::get_invitation(&self.db, &tenant, id).await?;
        let survey =
            store::get_survey(&self.db, &tenant, uuid::Uuid::parse_str(&inv.survey_id).map_err(Error::internal)?)
                .await?;
        let response = store::response_of_invitation(&self.db, &tenant, &inv.id).await?;
        let state = match seen_at(&inv.status, inv.expire_time, now_micros()) {
            _ if response.as_ref().is_some_and(|r| r.complete) => LinkState::Answered,
            Some(Seen::Responded) => LinkState::Answered,
            Some(Seen::Expired) => LinkState::Expired,
            Some(Seen::Cancelled) | None => LinkState::Closed,
            Some(Seen::Pending) if SurveyStatus::from_key(&survey.status) != Some(SurveyStatus::Active) => {
                LinkState::Closed
            }
            Some(Seen::Pending) => LinkState::Open,
        };
        let answers = response
            .filter(|r| !r.complete && !load_answers(r).is_empty())
            .map(|r| response_pb(&r, None).answers)
            .unwrap_or_default();
        Ok(Some(SurveyLink { tenant, invitation_id: inv.id, survey: survey_pb(&survey)?, answers, state }))
    }

    /// Answer the survey of link `token` (of `tenant`, from [`open_link`](Self::open_link)) with
    /// `answers`, complete: SubmitResponse by invitation token.
    pub async fn submit_link(
        &self,
        tenant: &TenantId,
        token: &str,
        answers: Vec<pb::Answer>,
    ) -> Result<pb::SubmitResponseResponse, Error> {
        let req = pb::SubmitResponseRequest {
            target: Some(pb::submit_response_request::Target::InvitationToken(token.to_owned())),
            answers,
            response_id: String::new(),
            complete: true,
        };
        super::responses::submit_as(self, tenant, req).await
    }
}
