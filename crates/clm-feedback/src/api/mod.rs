//! gRPC handlers of `clm.feedback.v1.FeedbackService`, one module per resource: `surveys`,
//! `invitations`, `responses` (and `imports` of historical ones), `results`, `follow_ups`,
//! `reviews`, `settings`; `links`: what a survey link opens, for the hosted survey page. Each
//! handler parses its request into domain values (`request` for the common fields, `convert`
//! for proto ↔ domain and rows), applies the rules of `domain`, calls the store (in a
//! transaction when it writes, publishing through the outbox) and maps back. No SQL here. This
//! file only wires the tonic service to them.

pub mod convert;
mod follow_ups;
mod imports;
mod invitations;
mod links;
mod request;
mod responses;
mod results;
mod reviews;
mod settings;
mod surveys;

use clm_platform::RequestContext;
use clm_platform::contacts::ContactsClient;
use clm_platform::pagination::PageTokens;
use clm_proto::feedback::v1 as pb;
use clm_proto::feedback::v1::feedback_service_server::FeedbackService;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::events::Publisher;
pub use links::{LinkState, SurveyLink};

#[derive(Clone, Debug)]
pub struct FeedbackApi {
    db: DatabaseConnection,
    tokens: PageTokens,
    events: Publisher,
    contacts: ContactsClient,
}

impl FeedbackApi {
    pub fn new(db: DatabaseConnection, tokens: PageTokens, events: Publisher, contacts: ContactsClient) -> Self {
        Self { db, tokens, events, contacts }
    }
}

/// The caller's tenant and scopes, put on the request by the auth layer.
fn ctx<T>(req: &Request<T>) -> Result<RequestContext, Status> {
    clm_platform::auth::context(req)
}

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    async fn create_survey(
        &self,
        req: Request<pb::CreateSurveyRequest>,
    ) -> Result<Response<pb::CreateSurveyResponse>, Status> {
        surveys::create(self, req).await
    }

    async fn get_survey(&self, req: Request<pb::GetSurveyRequest>) -> Result<Response<pb::GetSurveyResponse>, Status> {
        surveys::get(self, req).await
    }

    async fn list_surveys(
        &self,
        req: Request<pb::ListSurveysRequest>,
    ) -> Result<Response<pb::ListSurveysResponse>, Status> {
        surveys::list(self, req).await
    }

    async fn update_survey(
        &self,
        req: Request<pb::UpdateSurveyRequest>,
    ) -> Result<Response<pb::UpdateSurveyResponse>, Status> {
        surveys::update(self, req).await
    }

    async fn delete_survey(
        &self,
        req: Request<pb::DeleteSurveyRequest>,
    ) -> Result<Response<pb::DeleteSurveyResponse>, Status> {
        surveys::delete(self, req).await
    }

    async fn create_invitation(
        &self,
        req: Request<pb::CreateInvitationRequest>,
    ) -> Result<Response<pb::CreateInvitationResponse>, Status> {
        invitations::create(self, req).await
    }

    async fn batch_create_invitations(
        &self,
        req: Request<pb::BatchCreateInvitationsRequest>,
    ) -> Result<Response<pb::BatchCreateInvitationsResponse>, Status> {
        invitations::batch_create(self, req).await
    }

    async fn get_invitation(
        &self,
        req: Request<pb::GetInvitationRequest>,
    ) -> Result<Response<pb::GetInvitationResponse>, Status> {
        invitations::get(self, req).await
    }

    async fn list_invitations(
        &self,
        req: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        invitations::list(self, req).await
    }

    async fn submit_response(
        &self,
        req: Request<pb::SubmitResponseRequest>,
    ) -> Result<Response<pb::SubmitResponseResponse>, Status> {
        responses::submit(self, req).await
    }

    async fn import_responses(
        &self,
        req: Request<pb::ImportResponsesRequest>,
    ) -> Result<Response<pb::ImportResponsesResponse>, Status> {
        imports::import(self, req).await
    }

    async fn get_response(
        &self,
        req: Request<pb::GetResponseRequest>,
    ) -> Result<Response<pb::GetResponseResponse>, Status> {
        responses::get(self, req).await
    }

    async fn list_responses(
        &self,
        req: Request<pb::ListResponsesRequest>,
    ) -> Result<Response<pb::ListResponsesResponse>, Status> {
        responses::list(self, req).await
    }

    async fn get_survey_results(
        &self,
        req: Request<pb::GetSurveyResultsRequest>,
    ) -> Result<Response<pb::GetSurveyResultsResponse>, Status> {
        results::get(self, req).await
    }

    async fn list_follow_ups(
        &self,
        req: Request<pb::ListFollowUpsRequest>,
    ) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
        follow_ups::list(self, req).await
    }

    async fn get_follow_up(
        &self,
        req: Request<pb::GetFollowUpRequest>,
    ) -> Result<Response<pb::GetFollowUpResponse>, Status> {
        follow_ups::get(self, req).await
    }

    async fn update_follow_up(
        &self,
        req: Request<pb::UpdateFollowUpRequest>,
    ) -> Result<Response<pb::UpdateFollowUpResponse>, Status> {
        follow_ups::update(self, req).await
    }

    async fn create_review(
        &self,
        req: Request<pb::CreateReviewRequest>,
    ) -> Result<Response<pb::CreateReviewResponse>, Status> {
        reviews::create(self, req).await
    }

    async fn list_reviews(
        &self,
        req: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        reviews::list(self, req).await
    }

    async fn get_feedback_settings(
        &self,
        req: Request<pb::GetFeedbackSettingsRequest>,
    ) -> Result<Response<pb::GetFeedbackSettingsResponse>, Status> {
        settings::get(self, req).await
    }

    async fn update_feedback_settings(
        &self,
        req: Request<pb::UpdateFeedbackSettingsRequest>,
    ) -> Result<Response<pb::UpdateFeedbackSettingsResponse>, Status> {
        settings::update(self, req).await
    }
}
