//! What happened to a contact that may fire automations and campaigns, and which of their
//! triggers it matches.

use clm_proto::lifecycle::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::store::entities::{automation, transition};

/// What happened that may fire automations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Trigger {
    Entered {
        stage: String,
        transition_id: String,
    },
    Exited {
        stage: String,
        transition_id: String,
    },
    JourneyEvent {
        kind: String,
        custom_name: String,
        event_id: String,
    },
    SurveyResponse {
        kind: String,
        score: i32,
        response_id: String,
    },
    /// No journey event for `idle_micros`, the last one at `since`.
    Inactive {
        idle_micros: i64,
        since: i64,
    },
}

impl Trigger {
    pub fn reference(&self) -> String {
        match self {
            Trigger::Entered { transition_id, .. } | Trigger::Exited { transition_id, .. } => transition_id.clone(),
            Trigger::JourneyEvent { event_id, .. } => event_id.clone(),
            Trigger::SurveyResponse { response_id, .. } => response_id.clone(),
            Trigger::Inactive { .. } => "inactivity".into(),
        }
    }

    pub fn matches(&self, t: &pb::Trigger) -> bool {
        use pb::trigger::Kind;
        match (&t.kind, self) {
            (Some(Kind::StageEntered(s)), Trigger::Entered { stage, .. })
            | (Some(Kind::StageExited(s)), Trigger::Exited { stage, .. }) => s == stage,
            (Some(Kind::JourneyEvent(k)), Trigger::JourneyEvent { kind, custom_name, .. }) => {
                k == kind || (kind == "custom" && k == custom_name)
            }
            (Some(Kind::SurveyResponse(r)), Trigger::SurveyResponse { kind, score, .. }) => {
                (r.survey_kind.is_empty() || &r.survey_kind == kind) && (r.min_score..=r.max_score).contains(score)
            }
            (Some(Kind::Inactivity(d)), Trigger::Inactive { idle_micros, .. }) => {
                clm_platform::convert::duration_micros(d).is_some_and(|need| *idle_micros >= need)
            }
            _ => false,
        }
    }

    /// Whether this trigger fires automation `a` (its stored body).
    pub fn fires(&self, a: &automation::Model) -> bool {
        pb::Automation::decode(a.body.as_slice()).is_ok_and(|b| b.trigger.as_ref().is_some_and(|t| self.matches(t)))
    }
}

/// Triggers implied by new transitions.
pub fn stage_triggers(new: &[transition::Model]) -> Vec<Trigger> {
    let mut out = Vec::new();
    for t in new {
        if let Some(from) = &t.from_stage {
            out.push(Trigger::Exited { stage: from.clone(), transition_id: t.id.clone() });
        }
        out.push(Trigger::Entered { stage: t.to_stage.clone(), transition_id: t.id.clone() });
    }
    out
}
