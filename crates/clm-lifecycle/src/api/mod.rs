//! gRPC handlers of `clm.lifecycle.v1.LifecycleService`: validate, call the domain and the
//! store, map back. No SQL here. The service trait is a list of delegations; the bodies live
//! by resource: `models.rs`, `journeys.rs` (journey events, moves, journeys, watches; every
//! change through `journeys::advance`), `automations.rs`, `rules.rs`, `templates.rs` (message
//! templates and their preview), `deliveries.rs` (SendMessage and the delivery log),
//! `campaigns.rs` (campaigns, their statistics and enrolments).

pub mod automations;
mod campaigns;
mod deliveries;
mod journeys;
mod models;
mod rules;
mod templates;

use std::pin::Pin;

use clm_platform::pagination::PageTokens;
use clm_platform::{RequestContext, Violations};
use clm_proto::lifecycle::v1 as pb;
use clm_proto::lifecycle::v1::lifecycle_service_server::LifecycleService;
use sea_orm::DatabaseConnection;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::publish::Publisher;

#[derive(Clone, Debug)]
pub struct LifecycleApi {
    pub(crate) db: DatabaseConnection,
    pub(crate) tokens: PageTokens,
    pub(crate) events: Publisher,
    pub(crate) automator: crate::contacts_client::Automator,
    pub(crate) watch: crate::events::watch::Changes,
    pub(crate) links: crate::messaging::links::Links,
}

impl LifecycleApi {
    /// `watch`: the stage changes `WatchStageChanges` streams (fed by `events::watch`).
    pub fn new(
        db: DatabaseConnection,
        tokens: PageTokens,
        automator: crate::contacts_client::Automator,
        watch: crate::events::watch::Changes,
        links: crate::messaging::links::Links,
    ) -> Self {
        Self { db, tokens, events: automator.publisher.clone(), automator, watch, links }
    }
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

#[tonic::async_trait]
impl LifecycleService for LifecycleApi {
    type WatchStageChangesStream = BoxStream<pb::WatchStageChangesResponse>;

    async fn create_lifecycle_model(
        &self,
        req: Request<pb::CreateLifecycleModelRequest>,
    ) -> Result<Response<pb::CreateLifecycleModelResponse>, Status> {
        models::create_lifecycle_model(self, req).await
    }

    async fn get_lifecycle_model(
        &self,
        req: Request<pb::GetLifecycleModelRequest>,
    ) -> Result<Response<pb::GetLifecycleModelResponse>, Status> {
        models::get_lifecycle_model(self, req).await
    }

    async fn list_lifecycle_models(
        &self,
        req: Request<pb::ListLifecycleModelsRequest>,
    ) -> Result<Response<pb::ListLifecycleModelsResponse>, Status> {
        models::list_lifecycle_models(self, req).await
    }

    async fn update_lifecycle_model(
        &self,
        req: Request<pb::UpdateLifecycleModelRequest>,
    ) -> Result<Response<pb::UpdateLifecycleModelResponse>, Status> {
        models::update_lifecycle_model(self, req).await
    }

    async fn delete_lifecycle_model(
        &self,
        req: Request<pb::DeleteLifecycleModelRequest>,
    ) -> Result<Response<pb::DeleteLifecycleModelResponse>, Status> {
        models::delete_lifecycle_model(self, req).await
    }

    async fn record_journey_event(
        &self,
        req: Request<pb::RecordJourneyEventRequest>,
    ) -> Result<Response<pb::RecordJourneyEventResponse>, Status> {
        journeys::record_journey_event(self, req).await
    }

    async fn import_journey_events(
        &self,
        req: Request<Streaming<pb::ImportJourneyEventsRequest>>,
    ) -> Result<Response<pb::ImportJourneyEventsResponse>, Status> {
        journeys::import_journey_events(self, req).await
    }

    async fn transition_stage(
        &self,
        req: Request<pb::TransitionStageRequest>,
    ) -> Result<Response<pb::TransitionStageResponse>, Status> {
        journeys::transition_stage(self, req).await
    }

    async fn get_journey(
        &self,
        req: Request<pb::GetJourneyRequest>,
    ) -> Result<Response<pb::GetJourneyResponse>, Status> {
        journeys::get_journey(self, req).await
    }

    async fn list_journey_events(
        &self,
        req: Request<pb::ListJourneyEventsRequest>,
    ) -> Result<Response<pb::ListJourneyEventsResponse>, Status> {
        journeys::list_journey_events(self, req).await
    }

    async fn list_contacts_in_stage(
        &self,
        req: Request<pb::ListContactsInStageRequest>,
    ) -> Result<Response<pb::ListContactsInStageResponse>, Status> {
        journeys::list_contacts_in_stage(self, req).await
    }

    async fn watch_stage_changes(
        &self,
        req: Request<pb::WatchStageChangesRequest>,
    ) -> Result<Response<Self::WatchStageChangesStream>, Status> {
        journeys::watch_stage_changes(self, req).await
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

    async fn create_message_template(
        &self,
        req: Request<pb::CreateMessageTemplateRequest>,
    ) -> Result<Response<pb::CreateMessageTemplateResponse>, Status> {
        templates::create(self, req).await
    }

    async fn get_message_template(
        &self,
        req: Request<pb::GetMessageTemplateRequest>,
    ) -> Result<Response<pb::GetMessageTemplateResponse>, Status> {
        templates::get(self, req).await
    }

    async fn list_message_templates(
        &self,
        req: Request<pb::ListMessageTemplatesRequest>,
    ) -> Result<Response<pb::ListMessageTemplatesResponse>, Status> {
        templates::list(self, req).await
    }

    async fn update_message_template(
        &self,
        req: Request<pb::UpdateMessageTemplateRequest>,
    ) -> Result<Response<pb::UpdateMessageTemplateResponse>, Status> {
        templates::update(self, req).await
    }

    async fn delete_message_template(
        &self,
        req: Request<pb::DeleteMessageTemplateRequest>,
    ) -> Result<Response<pb::DeleteMessageTemplateResponse>, Status> {
        templates::delete(self, req).await
    }

    async fn render_message_template(
        &self,
        req: Request<pb::RenderMessageTemplateRequest>,
    ) -> Result<Response<pb::RenderMessageTemplateResponse>, Status> {
        templates::render(self, req).await
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        deliveries::send(self, req).await
    }

    async fn get_delivery(
        &self,
        req: Request<pb::GetDeliveryRequest>,
    ) -> Result<Response<pb::GetDeliveryResponse>, Status> {
        deliveries::get(self, req).await
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        deliveries::list(self, req).await
    }

    async fn create_campaign(
        &self,
        req: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::CreateCampaignResponse>, Status> {
        campaigns::create(self, req).await
    }

    async fn get_campaign(
        &self,
        req: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::GetCampaignResponse>, Status> {
        campaigns::get(self, req).await
    }

    async fn list_campaigns(
        &self,
        req: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        campaigns::list(self, req).await
    }

    async fn update_campaign(
        &self,
        req: Request<pb::UpdateCampaignRequest>,
    ) -> Result<Response<pb::UpdateCampaignResponse>, Status> {
        campaigns::update(self, req).await
    }

    async fn delete_campaign(
        &self,
        req: Request<pb::DeleteCampaignRequest>,
    ) -> Result<Response<pb::DeleteCampaignResponse>, Status> {
        campaigns::delete(self, req).await
    }

    async fn get_campaign_stats(
        &self,
        req: Request<pb::GetCampaignStatsRequest>,
    ) -> Result<Response<pb::GetCampaignStatsResponse>, Status> {
        campaigns::stats(self, req).await
    }

    async fn list_enrolments(
        &self,
        req: Request<pb::ListEnrolmentsRequest>,
    ) -> Result<Response<pb::ListEnrolmentsResponse>, Status> {
        campaigns::list_enrolments(self, req).await
    }

    async fn get_rule_settings(
        &self,
        req: Request<pb::GetRuleSettingsRequest>,
    ) -> Result<Response<pb::GetRuleSettingsResponse>, Status> {
        rules::get_rule_settings(self, req).await
    }

    async fn update_rule_settings(
        &self,
        req: Request<pb::UpdateRuleSettingsRequest>,
    ) -> Result<Response<pb::UpdateRuleSettingsResponse>, Status> {
        rules::update_rule_settings(self, req).await
    }
}
