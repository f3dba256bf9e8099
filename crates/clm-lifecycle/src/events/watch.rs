//! What `WatchStageChanges` streams: every StageChanged lifecycle published — whichever
//! replica, request, consumed event (a survey answer) or dormancy sweep caused it — followed
//! on the bus ([`EventBus::tail`]), so a watcher on any replica sees all of them, after commit.

use std::sync::Arc;

use clm_platform::events::EventBus;
use clm_proto::events::v1::EventEnvelope;
use clm_proto::events::v1::event_envelope::Payload;
use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use tokio::sync::{broadcast, watch};

use crate::convert::transition_to_pb;
use crate::store::entities::transition;

/// Stage changes as watchers hear them: (tenant, change).
pub type Changes = broadcast::Sender<(String, pb::WatchStageChangesResponse)>;

/// A channel for [`spawn_feed`] to fill and watchers to subscribe to.
pub fn changes() -> Changes {
    broadcast::channel(1024).0
}

/// Follow lifecycle's StageChanged events on the bus into `changes` until `stop`.
pub fn spawn_feed(
    bus: Arc<dyn EventBus>,
    db: DatabaseConnection,
    changes: Changes,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = bus.tail("clm.lifecycle.journey.StageChanged");
        loop {
            let payload = tokio::select! {
                p = rx.recv() => p,
                _ = stop.changed() => return,
            };
            let Some(payload) = payload else { return };
            if changes.receiver_count() == 0 {
                continue;
            }
            let Ok(env) = EventEnvelope::decode(payload) else { continue };
            let Some(Payload::StageChanged(c)) = env.payload else { continue };
            if c.retracted {
                continue;
            }
            let prev = c.from_stage_enter_time.as_ref().map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
            // The stored transition has what the event leaves out (actor, reason).
            let stored = transition::Entity::find_by_id(c.transition_id.clone())
                .filter(transition::Column::TenantId.eq(env.tenant_id.as_str()))
                .one(&db)
                .await
                .ok()
                .flatten();
            let t = match stored {
                Some(t) => transition_to_pb(&t, prev),
                None => from_event(&c, prev),
            };
            let _ = changes.send((
                env.tenant_id.clone(),
                pb::WatchStageChangesResponse {
                    contact_id: c.contact_id.clone(),
                    model_id: c.model_id.clone(),
                    transition: Some(t),
                },
            ));
        }
    })
}

/// A transition from its event alone (rebuilt away since it was published).
fn from_event(c: &clm_proto::events::v1::StageChanged, prev: Option<i64>) -> pb::StageTransition {
    let at = c.transition_time.as_ref().map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
    pb::StageTransition {
        id: c.transition_id.clone(),
        from_stage: c.from_stage.clone(),
        to_stage: c.to_stage.clone(),
        transition_time: c.transition_time,
        cause: match clm_proto::events::v1::TransitionCause::try_from(c.cause).unwrap_or_default() {
            clm_proto::events::v1::TransitionCause::Manual => pb::TransitionCause::Manual,
            clm_proto::events::v1::TransitionCause::Automation => pb::TransitionCause::Automation,
            _ => pb::TransitionCause::Rule,
        } as i32,
        cause_ref: c.cause_ref.clone(),
        actor: String::new(),
        reason: String::new(),
        reactivation: c.reactivation,
        time_in_previous_stage: prev.map(|p| clm_platform::convert::duration((at - p).max(0))),
    }
}
