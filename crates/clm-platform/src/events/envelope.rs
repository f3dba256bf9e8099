//! The envelope every event travels in (`clm.events.v1.EventEnvelope`): how one is made (id,
//! time, schema version, the writer's W3C trace context) and the subject it is published under.

use clm_proto::events::v1::EventEnvelope;
use clm_proto::events::v1::event_envelope::Payload;

use crate::auth::TenantId;

/// Current payload schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// The payload's message name, e.g. `ContactCreated`.
pub fn payload_name(p: &Payload) -> &'static str {
    match p {
        Payload::ContactCreated(_) => "ContactCreated",
        Payload::ContactUpdated(_) => "ContactUpdated",
        Payload::ContactMerged(_) => "ContactMerged",
        Payload::ContactErased(_) => "ContactErased",
        Payload::ContactDeleted(_) => "ContactDeleted",
        Payload::StageChanged(_) => "StageChanged",
        Payload::JourneyEventRecorded(_) => "JourneyEventRecorded",
        Payload::AutomationTriggered(_) => "AutomationTriggered",
        Payload::UnsubscribeRecorded(_) => "UnsubscribeRecorded",
        Payload::CampaignEnrolmentChanged(_) => "CampaignEnrolmentChanged",
        Payload::LifecycleModelChanged(_) => "LifecycleModelChanged",
        Payload::SurveyRequested(_) => "SurveyRequested",
        Payload::ResponseSubmitted(_) => "ResponseSubmitted",
        Payload::FollowUpOpened(_) => "FollowUpOpened",
        Payload::FollowUpClosed(_) => "FollowUpClosed",
        Payload::ReviewRecorded(_) => "ReviewRecorded",
    }
}

/// Subject of an event: `clm.<service>.<aggregate_type>.<PayloadName>`. Consumers subscribe
/// to a service's space with the prefix `clm.<service>.`.
pub fn subject(env: &EventEnvelope) -> String {
    let name = env.payload.as_ref().map_or("Unknown", payload_name);
    format!("clm.{}.{}.{}", env.source_service, env.aggregate_type, name)
}

/// The subject prefix of everything a service publishes.
pub fn service_subjects(service: &str) -> String {
    format!("clm.{service}.")
}

/// A new envelope for `payload`, stamped with a UUID v7, the time, and the current trace context.
pub fn envelope(
    service: &str,
    tenant: &TenantId,
    aggregate_type: &str,
    aggregate_id: &str,
    occur_time_micros: i64,
    payload: Payload,
) -> EventEnvelope {
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: format!("clm.events.v1.{}", payload_name(&payload)),
        tenant_id: tenant.as_str().to_owned(),
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        occur_time: Some(prost_types::Timestamp {
            seconds: occur_time_micros.div_euclid(1_000_000),
            nanos: (occur_time_micros.rem_euclid(1_000_000) * 1000) as i32,
        }),
        schema_version: SCHEMA_VERSION,
        trace_context: crate::telemetry::current_context_map(),
        source_service: service.to_owned(),
        sequence: 0,
        ordering: Vec::new(),
        after: Vec::new(),
        payload: Some(payload),
    }
}
