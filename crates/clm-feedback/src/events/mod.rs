//! What feedback publishes (SurveyRequested, ResponseSubmitted, FollowUpOpened/Closed,
//! ReviewRecorded) and consumes: StageChanged (remember stages; invite to surveys targeting the
//! entered stage), lifecycle automations asking for a survey (`feedback.request_survey`), and
//! contact merges and erasures. `sweep`: reminders and recurring surveys, by the clock.

pub mod sweep;

use async_trait::async_trait;
use clm_platform::convert::timestamp;
use clm_platform::events::UnitOfWork;
use clm_platform::events::inbox::EventHandler;
use clm_platform::events::outbox::OutboxWriter;
use clm_platform::{Result, TenantId};
use clm_proto::events::v1 as ev;
use clm_proto::events::v1::event_envelope::Payload;
use sea_orm::{ConnectionTrait as _, DatabaseTransaction};
use uuid::Uuid;

use crate::domain::survey::Kind;
use crate::domain::token;
use crate::domain::values::Reminders;
use crate::store::entities::{follow_up, invitation, response, review, settings, survey};
use crate::store::{self, now_micros};

/// Topic of the lifecycle automation action that asks feedback to send a survey; its payload
/// carries `survey_id`.
pub const REQUEST_SURVEY_TOPIC: &str = "feedback.request_survey";

fn kind_ev(kind: &str) -> ev::SurveyKind {
    match Kind::from_key(kind) {
        Some(Kind::Nps) => ev::SurveyKind::Nps,
        Some(Kind::Csat) => ev::SurveyKind::Csat,
        Some(Kind::Ces) => ev::SurveyKind::Ces,
        _ => ev::SurveyKind::Custom,
    }
}

/// Appends feedback events to the outbox.
#[derive(Clone, Debug)]
pub struct Publisher {
    outbox: OutboxWriter,
}

impl Publisher {
    pub fn new(outbox: OutboxWriter) -> Self {
        Self { outbox }
    }

    /// The invitation `inv` to `survey` (`reminder` 0), or its `reminder`-th reminder (same
    /// invitation, same token), at `at`: lifecycle delivers it as a message.
    #[allow(clippy::too_many_arguments)]
    pub async fn survey_requested(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        inv: &invitation::Model,
        token: &str,
        survey: &survey::Model,
        reminder: i32,
        at: i64,
    ) -> Result<()> {
        let p = Payload::SurveyRequested(ev::SurveyRequested {
            invitation_id: inv.id.clone(),
            survey_id: inv.survey_id.clone(),
            contact_id: inv.contact_id.clone(),
            token: token.to_owned(),
            expire_time: Some(timestamp(inv.expire_time)),
            kind: kind_ev(&survey.kind) as i32,
            survey_name: survey.display_name.clone(),
            message_template_id: survey.message_template_id.clone(),
            reminder,
        });
        self.outbox.append(txn, tenant, "invitation", &inv.id, at, p).await?;
        Ok(())
    }

    pub async fn response_submitted(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        r: &response::Model,
        kind: &str,
    ) -> Result<()> {
        let at = r.complete_time.unwrap_or(r.update_time);
        let p = Payload::ResponseSubmitted(ev::ResponseSubmitted {
            response_id: r.id.clone(),
            survey_id: r.survey_id.clone(),
            contact_id: r.contact_id.clone(),
            kind: kind_ev(kind) as i32,
            score: r.score.unwrap_or_default(),
            has_score: r.score.is_some(),
            complete: r.complete,
            submit_time: Some(timestamp(at)),
            stage_key: r.stage_key.clone(),
        });
        self.outbox.append(txn, tenant, "response", &r.id, at, p).await?;
        Ok(())
    }

    pub async fn follow_up_opened(&self, txn: &UnitOfWork, tenant: &TenantId, f: &follow_up::Model) -> Result<()> {
        let p = Payload::FollowUpOpened(ev::FollowUpOpened {
            follow_up_id: f.id.clone(),
            response_id: f.response_id.clone(),
            contact_id: f.contact_id.clone(),
            reason: f.reason.clone(),
            open_time: Some(timestamp(f.open_time)),
        });
        self.outbox.append(txn, tenant, "follow_up", &f.id, f.open_time, p).await?;
        Ok(())
    }

    pub async fn follow_up_closed(&self, txn: &UnitOfWork, tenant: &TenantId, f: &follow_up::Model) -> Result<()> {
        let at = f.resolve_time.unwrap_or_else(now_micros);
        let p = Payload::FollowUpClosed(ev::FollowUpClosed {
            follow_up_id: f.id.clone(),
            contact_id: f.contact_id.clone(),
            close_time: Some(timestamp(at)),
            seconds_to_resolve: (at - f.open_time).max(0) / 1_000_000,
        });
        self.outbox.append(txn, tenant, "follow_up", &f.id, at, p).await?;
        Ok(())
    }

    pub async fn review_recorded(&self, txn: &UnitOfWork, tenant: &TenantId, r: &review::Model) -> Result<()> {
        let p = Payload::ReviewRecorded(ev::ReviewRecorded {
            review_id: r.id.clone(),
            contact_id: r.contact_id.clone(),
            rating: r.rating,
            platform: r.platform.clone(),
            create_time: Some(timestamp(r.create_time)),
        });
        self.outbox.append(txn, tenant, "review", &r.id, r.create_time, p).await?;
        Ok(())
    }
}

/// Why a contact was not invited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Asked too recently; may be asked from this time (µs).
    Throttled(i64),
    /// A pending invitation to this survey exists.
    AlreadyInvited,
    /// Not a contact of the tenant.
    UnknownContact,
}

/// Where an invitation comes from (stored key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Manual,
    Batch,
    StageTrigger,
    Automation,
    /// A recurring survey's next round (the sweep).
    Recurrence,
}

impl Source {
    pub fn key(self) -> &'static str {
        match self {
            Source::Manual => "manual",
            Source::Batch => "batch",
            Source::StageTrigger => "stage_trigger",
            Source::Automation => "automation",
            Source::Recurrence => "recurrence",
        }
    }
}

/// Invite `contact` to `survey` (ACTIVE, checked by the caller) in `txn`: not twice while an
/// invitation is pending, not more than once per throttling window across surveys (the
/// tenant's fatigue cap: every way of inviting comes through here — CreateInvitation, batches,
/// stage entries, automations, recurring surveys; reminders are not invitations and do not).
/// Publishes SurveyRequested, and schedules the survey's first reminder and next round. `id`
/// fixes the invitation id (derived from its cause, `InvitationKey`, so a redelivered or
/// replayed event does not invite twice); an existing invitation with that id is returned as
/// is. Returns the invitation and its token.
#[allow(clippy::too_many_arguments)]
pub async fn invite(
    txn: &UnitOfWork,
    publisher: &Publisher,
    tenant: &TenantId,
    settings: &settings::Model,
    survey: &survey::Model,
    contact: Uuid,
    source: Source,
    stage_key: Option<String>,
    id: Option<Uuid>,
    now: i64,
) -> Result<std::result::Result<(invitation::Model, String), Skip>> {
    let id = id.unwrap_or_else(Uuid::now_v7);
    if let Some(existing) = store::invitations_by_ids(txn, tenant, &[id.to_string()]).await?.pop() {
        let t = token::issue(&settings.token_secret, tenant.as_str(), id);
        return Ok(Ok((existing, t)));
    }
    let survey_id = Uuid::parse_str(&survey.id).map_err(clm_platform::Error::internal)?;
    if store::pending_invitation(txn, tenant, survey_id, contact, now).await?.is_some() {
        return Ok(Err(Skip::AlreadyInvited));
    }
    if let Err(until) = store::claim_ask(txn, tenant, contact, now, settings.throttle_window).await? {
        return Ok(Err(Skip::Throttled(until)));
    }
    let stage_key = match stage_key {
        Some(s) => s,
        None => store::stage_of(txn, tenant, contact).await?,
    };
    let ttl = if survey.invitation_ttl > 0 { survey.invitation_ttl } else { settings.default_ttl };
    let expire_time = now.saturating_add(ttl);
    let reminders = Reminders::from_stored(survey.reminder_after, survey.max_reminders);
    let row = invitation::Model {
        id: id.to_string(),
        tenant_id: tenant.as_str().to_owned(),
        survey_id: survey.id.clone(),
        contact_id: contact.to_string(),
        status: "pending".into(),
        source: source.key().into(),
        stage_key,
        create_time: now,
        expire_time,
        respond_time: None,
        reminders_sent: 0,
        next_reminder_time: reminders.next_due(0, now, expire_time),
        next_recurrence_time: (survey.recurrence > 0).then(|| now.saturating_add(survey.recurrence)),
    };
    store::insert_invitation(txn, tenant, row.clone()).await?;
    let t = token::issue(&settings.token_secret, tenant.as_str(), id);
    publisher.survey_requested(txn, tenant, &row, &t, survey, 0, now).await?;
    Ok(Ok((row, t)))
}

/// What an invitation sent on an event is the invitation *of*: its id is derived from this (and
/// the survey), so the same cause seen again finds the invitation it already made.
#[derive(Debug, Clone, Copy)]
enum InvitationKey<'a> {
    /// A stage entry: the lifecycle transition, not the event that carried it. Lifecycle
    /// republishes a transition whose content changed (a backdated event): a retraction, then
    /// the transition again under a new event id but the same transition id. It is still the
    /// same entry into the stage, so it is still the same invitation.
    Transition(&'a str),
    /// An automation's request (`feedback.request_survey`): each run is a request of its own.
    Event(&'a str),
}

impl InvitationKey<'_> {
    fn invitation_id(self, survey_id: &str) -> Uuid {
        let name = match self {
            InvitationKey::Transition(t) => format!("invite/transition/{t}/{survey_id}"),
            InvitationKey::Event(e) => format!("invite/{e}/{survey_id}"),
        };
        Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
    }
}

/// Consumes lifecycle and contact events.
#[derive(Debug)]
pub struct FeedbackHandler {
    pub publisher: Publisher,
}

impl FeedbackHandler {
    #[allow(clippy::too_many_arguments)]
    async fn invite_for_event(
        &self,
        txn: &UnitOfWork,
        tenant: &TenantId,
        key: InvitationKey<'_>,
        survey: &survey::Model,
        contact: Uuid,
        source: Source,
        stage: Option<String>,
    ) -> Result<()> {
        let settings = store::settings(txn, tenant).await?;
        let id = key.invitation_id(&survey.id);
        match invite(txn, &self.publisher, tenant, &settings, survey, contact, source, stage, Some(id), now_micros())
            .await?
        {
            Ok((inv, _)) => tracing::info!(invitation = %inv.id, survey = %survey.id, source = source.key(), "invited"),
            Err(skip) => tracing::info!(survey = %survey.id, ?skip, source = source.key(), "not invited"),
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for FeedbackHandler {
    async fn handle(&self, txn: &UnitOfWork, e: &ev::EventEnvelope) -> Result<()> {
        let tenant_str = e.tenant_id.as_str();
        let Ok(tenant) = TenantId::parse(tenant_str) else { return Ok(()) };
        match &e.payload {
            Some(Payload::StageChanged(s)) => {
                let at = s.transition_time.as_ref().and_then(clm_platform::convert::micros).unwrap_or_else(now_micros);
                if s.retracted {
                    // An invitation already sent for this transition stays as it is, even if the
                    // transition is not published again: it went out (SurveyRequested was
                    // published, the contact may have answered), which no retraction unsends;
                    // it is history like the answer. If lifecycle publishes the transition
                    // again, that finds this invitation (same transition id): no second one.
                    let from_enter = s.from_stage_enter_time.as_ref().and_then(clm_platform::convert::micros);
                    let (contact, model) = (&s.contact_id, &s.model_id);
                    return store::unset_stage(
                        txn,
                        &tenant,
                        contact,
                        model,
                        &s.to_stage,
                        at,
                        &s.from_stage,
                        from_enter,
                    )
                    .await;
                }
                store::set_stage(txn, &tenant, &s.contact_id, &s.model_id, &s.to_stage, at).await?;
                let Ok(contact) = Uuid::parse_str(&s.contact_id) else { return Ok(()) };
                // Only a current entry triggers a survey: an old transition rebuilt from a
                // backdated event does not ask someone about a stage they left long ago.
                if now_micros() - at > store::DAY_MICROS {
                    return Ok(());
                }
                // Keyed by the transition: its republication is the same invitation. (Lifecycle
                // always sets transition_id; without one, the event is all there is to go by.)
                let key = if s.transition_id.is_empty() {
                    InvitationKey::Event(&e.event_id)
                } else {
                    InvitationKey::Transition(&s.transition_id)
                };
                for survey in store::surveys_for_stage(txn, &tenant, &s.to_stage, &s.model_id).await? {
                    self.invite_for_event(
                        txn,
                        &tenant,
                        key,
                        &survey,
                        contact,
                        Source::StageTrigger,
                        Some(s.to_stage.clone()),
                    )
                    .await?;
                }
            }
            Some(Payload::AutomationTriggered(a)) if a.topic == REQUEST_SURVEY_TOPIC => {
                let (Ok(contact), Some(Ok(survey_id))) =
                    (Uuid::parse_str(&a.contact_id), a.payload.get("survey_id").map(|s| Uuid::parse_str(s)))
                else {
                    tracing::warn!(automation = %a.automation_id, "survey request without a valid survey_id; ignored");
                    return Ok(());
                };
                match store::get_survey(txn, &tenant, survey_id).await {
                    Ok(survey) if survey.status == "active" => {
                        let key = InvitationKey::Event(&e.event_id);
                        self.invite_for_event(txn, &tenant, key, &survey, contact, Source::Automation, None).await?;
                    }
                    Ok(_) => tracing::info!(survey = %survey_id, "survey requested by automation is not active"),
                    Err(clm_platform::Error::NotFound { .. }) => {
                        tracing::warn!(survey = %survey_id, "survey requested by automation does not exist");
                    }
                    Err(err) => return Err(err),
                }
            }
            Some(Payload::ContactErased(x)) => store::erase_contact(txn, &tenant, &x.contact_id).await?,
            Some(Payload::ContactDeleted(x)) if !x.restored => store::stop_asking(txn, &tenant, &x.contact_id).await?,
            Some(Payload::ContactMerged(m)) => {
                for merged in &m.merged_ids {
                    store::reassign_contact(txn, &tenant, merged, &m.survivor_id).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, txn: &DatabaseTransaction) -> Result<()> {
        // Only the stage directory is derived from events; invitations are feedback's own data
        // and their ids are derived from their cause (transition or automation event), so a
        // replay does not invite twice.
        txn.execute_unprepared("DELETE FROM contact_stages").await?;
        Ok(())
    }
}
