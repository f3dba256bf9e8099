//! Proto ↔ domain and rows for feedback: surveys and questions, answers, invitations,
//! responses, follow-ups, reviews, settings. Wire enums become domain enums here (`None`: not
//! specified); rows' stored keys are read through the domain's `from_key`.

use std::collections::HashMap;

use clm_platform::convert::{duration, etag, timestamp};
use clm_platform::{Error, FieldViolation};
use clm_proto::feedback::v1 as pb;

use crate::domain::follow_up::FollowUpStatus;
use crate::domain::invitation::{self, Seen};
use crate::domain::survey::{
    self as survey_rules, Band, Kind, Question, QuestionKind, Questions, ShowIf, SurveyStatus, Value,
};
use crate::store::entities::{follow_up, invitation as invitation_row, response, review, settings, survey};

pub fn kind_from_pb(k: i32) -> Option<Kind> {
    match pb::SurveyKind::try_from(k).ok()? {
        pb::SurveyKind::Nps => Some(Kind::Nps),
        pb::SurveyKind::Csat => Some(Kind::Csat),
        pb::SurveyKind::Ces => Some(Kind::Ces),
        pb::SurveyKind::Custom => Some(Kind::Custom),
        pb::SurveyKind::Unspecified => None,
    }
}

pub fn kind_pb(k: &str) -> pb::SurveyKind {
    match Kind::from_key(k) {
        Some(Kind::Nps) => pb::SurveyKind::Nps,
        Some(Kind::Csat) => pb::SurveyKind::Csat,
        Some(Kind::Ces) => pb::SurveyKind::Ces,
        Some(Kind::Custom) => pb::SurveyKind::Custom,
        None => pb::SurveyKind::Unspecified,
    }
}

/// A survey status on the wire; `None` when unspecified or unknown.
pub fn status_from_pb(s: i32) -> Option<SurveyStatus> {
    match pb::SurveyStatus::try_from(s).ok()? {
        pb::SurveyStatus::Draft => Some(SurveyStatus::Draft),
        pb::SurveyStatus::Active => Some(SurveyStatus::Active),
        pb::SurveyStatus::Closed => Some(SurveyStatus::Closed),
        pb::SurveyStatus::Unspecified => None,
    }
}

fn status_pb(s: &str) -> pb::SurveyStatus {
    match SurveyStatus::from_key(s) {
        Some(SurveyStatus::Draft) => pb::SurveyStatus::Draft,
        Some(SurveyStatus::Active) => pb::SurveyStatus::Active,
        Some(SurveyStatus::Closed) => pb::SurveyStatus::Closed,
        None => pb::SurveyStatus::Unspecified,
    }
}

/// Proto questions to domain questions (shape only; `Questions::new` checks the rules).
pub fn questions_from_pb(qs: &[pb::Question], prefix: &str) -> Result<Vec<Question>, Vec<FieldViolation>> {
    let mut v = Vec::new();
    let mut out = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let kind = match &q.kind {
            Some(pb::question::Kind::Rating(r)) => QuestionKind::Rating { min: r.min, max: r.max },
            Some(pb::question::Kind::Choice(c)) => {
                QuestionKind::Choice { choices: c.choices.iter().map(|c| c.id.clone()).collect(), multiple: c.multiple }
            }
            Some(pb::question::Kind::FreeText(f)) => QuestionKind::FreeText {
                max_length: if f.max_length <= 0 {
                    survey_rules::MAX_FREE_TEXT
                } else {
                    usize::try_from(f.max_length).unwrap_or(usize::MAX)
                },
            },
            None => {
                v.push(FieldViolation::new(format!("{prefix}questions[{i}]"), "one of rating, choice, free_text"));
                continue;
            }
        };
        let show_if = q.show_if.as_ref().filter(|s| !s.question_id.is_empty()).map(|s| ShowIf {
            question_id: s.question_id.clone(),
            choice_ids: s.choice_ids.clone(),
            rating: (s.choice_ids.is_empty()).then_some((s.rating_min, s.rating_max)),
        });
        out.push(Question {
            id: q.id.clone(),
            text: q.text.clone(),
            required: q.required,
            kind,
            show_if,
            primary: q.primary,
        });
    }
    if v.is_empty() { Ok(out) } else { Err(v) }
}

/// The choice texts of a survey's questions, stored next to the checked questions.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct StoredQuestions {
    pub questions: Vec<Question>,
    /// question id → (choice id → text)
    #[serde(default)]
    pub choice_texts: HashMap<String, Vec<(String, String)>>,
    /// question id → (min label, max label)
    #[serde(default)]
    pub labels: HashMap<String, (String, String)>,
}

pub fn store_questions(qs: &Questions, raw: &[pb::Question]) -> String {
    let mut choice_texts = HashMap::new();
    let mut labels = HashMap::new();
    for q in raw {
        match &q.kind {
            Some(pb::question::Kind::Choice(c)) => {
                choice_texts
                    .insert(q.id.clone(), c.choices.iter().map(|c| (c.id.clone(), c.text.clone())).collect::<Vec<_>>());
            }
            Some(pb::question::Kind::Rating(r)) => {
                labels.insert(q.id.clone(), (r.min_label.clone(), r.max_label.clone()));
            }
            _ => {}
        }
    }
    serde_json::to_string(&StoredQuestions { questions: qs.questions().to_vec(), choice_texts, labels })
        .expect("questions serialize")
}

pub fn load_questions(row: &survey::Model) -> Result<(Questions, StoredQuestions), Error> {
    let stored: StoredQuestions = serde_json::from_str(&row.questions)
        .map_err(|_| Error::internal(anyhow::anyhow!("stored questions of survey {} are unreadable", row.id)))?;
    let kind = Kind::from_key(&row.kind).ok_or_else(|| Error::internal(anyhow::anyhow!("stored survey kind")))?;
    let qs = Questions::new(kind, stored.questions.clone(), "")
        .map_err(|_| Error::internal(anyhow::anyhow!("stored questions of survey {} are invalid", row.id)))?;
    Ok((qs, stored))
}

fn question_pb(q: &Question, stored: &StoredQuestions) -> pb::Question {
    let kind = match &q.kind {
        QuestionKind::Rating { min, max } => {
            let (min_label, max_label) = stored.labels.get(&q.id).cloned().unwrap_or_default();
            pb::question::Kind::Rating(pb::RatingQuestion { min: *min, max: *max, min_label, max_label })
        }
        QuestionKind::Choice { choices, multiple } => {
            let texts = stored.choice_texts.get(&q.id);
            pb::question::Kind::Choice(pb::ChoiceQuestion {
                choices: choices
                    .iter()
                    .map(|c| pb::Choice {
                        id: c.clone(),
                        text: texts
                            .and_then(|t| t.iter().find(|(id, _)| id == c).map(|(_, t)| t.clone()))
                            .unwrap_or_default(),
                    })
                    .collect(),
                multiple: *multiple,
            })
        }
        QuestionKind::FreeText { max_length } => pb::question::Kind::FreeText(pb::FreeTextQuestion {
            max_length: i32::try_from(*max_length).unwrap_or(i32::MAX),
        }),
    };
    pb::Question {
        id: q.id.clone(),
        text: q.text.clone(),
        required: q.required,
        kind: Some(kind),
        show_if: q.show_if.as_ref().map(|s| pb::ShowIf {
            question_id: s.question_id.clone(),
            choice_ids: s.choice_ids.clone(),
            rating_min: s.rating.map_or(0, |r| r.0),
            rating_max: s.rating.map_or(0, |r| r.1),
        }),
        primary: q.primary,
    }
}

pub fn survey_pb(row: &survey::Model) -> Result<pb::Survey, Error> {
    let (qs, stored) = load_questions(row)?;
    Ok(pb::Survey {
        id: row.id.clone(),
        display_name: row.display_name.clone(),
        kind: kind_pb(&row.kind) as i32,
        questions: qs.questions().iter().map(|q| question_pb(q, &stored)).collect(),
        status: status_pb(&row.status) as i32,
        target_stage_key: row.target_stage_key.clone(),
        target_model_id: row.target_model_id.clone(),
        invitation_ttl: (row.invitation_ttl > 0).then(|| duration(row.invitation_ttl)),
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
        etag: etag(row.version),
        message_template_id: row.message_template_id.clone(),
        reminder_after: (row.reminder_after > 0).then(|| duration(row.reminder_after)),
        max_reminders: i32::try_from(row.max_reminders).unwrap_or_default(),
        recurrence: (row.recurrence > 0).then(|| duration(row.recurrence)),
    })
}

fn source_pb(s: &str) -> pb::InvitationSource {
    match s {
        "manual" => pb::InvitationSource::Manual,
        "batch" => pb::InvitationSource::Batch,
        "stage_trigger" => pb::InvitationSource::StageTrigger,
        "automation" => pb::InvitationSource::Automation,
        "recurrence" => pb::InvitationSource::Recurrence,
        _ => pb::InvitationSource::Unspecified,
    }
}

/// An invitation as clients see it at `now` (a pending one past its expiry is EXPIRED).
pub fn invitation_pb(row: &invitation_row::Model, token: Option<String>, now: i64) -> pb::Invitation {
    let status = match invitation::seen_at(&row.status, row.expire_time, now) {
        Some(Seen::Expired) => pb::InvitationStatus::Expired,
        Some(Seen::Pending) => pb::InvitationStatus::Pending,
        Some(Seen::Responded) => pb::InvitationStatus::Responded,
        Some(Seen::Cancelled) => pb::InvitationStatus::Cancelled,
        None => pb::InvitationStatus::Unspecified,
    };
    pb::Invitation {
        id: row.id.clone(),
        survey_id: row.survey_id.clone(),
        contact_id: row.contact_id.clone(),
        token: token.unwrap_or_default(),
        status: status as i32,
        create_time: Some(timestamp(row.create_time)),
        expire_time: Some(timestamp(row.expire_time)),
        source: source_pb(&row.source) as i32,
        reminders_sent: i32::try_from(row.reminders_sent).unwrap_or_default(),
    }
}

pub fn answer_from_pb(a: &pb::Answer) -> Option<Value> {
    match a.value.as_ref()? {
        pb::answer::Value::Rating(r) => Some(Value::Rating(*r)),
        pb::answer::Value::Choices(c) => Some(Value::Choices(c.choice_ids.clone())),
        pb::answer::Value::Text(t) => Some(Value::Text(t.clone())),
    }
}

pub fn load_answers(row: &response::Model) -> HashMap<String, Value> {
    serde_json::from_str(&row.answers).unwrap_or_default()
}

pub fn band_pb(b: Option<&str>) -> pb::ScoreBand {
    match b.and_then(Band::from_key) {
        Some(Band::Promoter) => pb::ScoreBand::Promoter,
        Some(Band::Passive) => pb::ScoreBand::Passive,
        Some(Band::Detractor) => pb::ScoreBand::Detractor,
        Some(Band::Satisfied) => pb::ScoreBand::Satisfied,
        Some(Band::Neutral) => pb::ScoreBand::Neutral,
        Some(Band::Unsatisfied) => pb::ScoreBand::Unsatisfied,
        Some(Band::LowEffort) => pb::ScoreBand::LowEffort,
        Some(Band::MediumEffort) => pb::ScoreBand::MediumEffort,
        Some(Band::HighEffort) => pb::ScoreBand::HighEffort,
        None => pb::ScoreBand::Unspecified,
    }
}

/// A response; answers in the survey's question order when `order` is given.
pub fn response_pb(row: &response::Model, order: Option<&Questions>) -> pb::Response {
    let answers = load_answers(row);
    let mut keys: Vec<&String> = answers.keys().collect();
    match order {
        Some(qs) => keys.sort_by_key(|k| qs.questions().iter().position(|q| &q.id == *k).unwrap_or(usize::MAX)),
        None => keys.sort(),
    }
    pb::Response {
        id: row.id.clone(),
        survey_id: row.survey_id.clone(),
        invitation_id: row.invitation_id.clone().unwrap_or_default(),
        contact_id: row.contact_id.clone(),
        answers: keys
            .into_iter()
            .map(|k| pb::Answer {
                question_id: k.clone(),
                value: Some(match &answers[k] {
                    Value::Rating(r) => pb::answer::Value::Rating(*r),
                    Value::Choices(c) => pb::answer::Value::Choices(pb::ChoiceAnswer { choice_ids: c.clone() }),
                    Value::Text(t) => pb::answer::Value::Text(t.clone()),
                }),
            })
            .collect(),
        complete: row.complete,
        score: row.score.unwrap_or_default(),
        has_score: row.score.is_some(),
        band: band_pb(row.band.as_deref()) as i32,
        stage_key: row.stage_key.clone(),
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
        complete_time: row.complete_time.map(timestamp),
        etag: etag(row.version),
    }
}

/// A follow-up status on the wire; `None` when unspecified or unknown.
pub fn follow_up_status_from_pb(s: i32) -> Option<FollowUpStatus> {
    match pb::FollowUpStatus::try_from(s).ok()? {
        pb::FollowUpStatus::Open => Some(FollowUpStatus::Open),
        pb::FollowUpStatus::InProgress => Some(FollowUpStatus::InProgress),
        pb::FollowUpStatus::Resolved => Some(FollowUpStatus::Resolved),
        pb::FollowUpStatus::Unspecified => None,
    }
}

pub fn follow_up_pb(row: &follow_up::Model) -> pb::FollowUp {
    let status = match FollowUpStatus::from_key(&row.status) {
        Some(FollowUpStatus::Open) => pb::FollowUpStatus::Open,
        Some(FollowUpStatus::InProgress) => pb::FollowUpStatus::InProgress,
        Some(FollowUpStatus::Resolved) => pb::FollowUpStatus::Resolved,
        None => pb::FollowUpStatus::Unspecified,
    };
    pb::FollowUp {
        id: row.id.clone(),
        response_id: row.response_id.clone(),
        survey_id: row.survey_id.clone(),
        contact_id: row.contact_id.clone(),
        reason: row.reason.clone(),
        status: status as i32,
        owner: row.owner.clone(),
        note: row.note.clone(),
        open_time: Some(timestamp(row.open_time)),
        resolve_time: row.resolve_time.map(timestamp),
        time_to_resolve: row.resolve_time.map(|r| duration((r - row.open_time).max(0))),
        etag: etag(row.version),
    }
}

pub fn review_pb(row: &review::Model) -> pb::Review {
    pb::Review {
        id: row.id.clone(),
        contact_id: row.contact_id.clone(),
        rating: row.rating,
        text: row.text.clone(),
        platform: row.platform.clone(),
        url: row.url.clone(),
        create_time: Some(timestamp(row.create_time)),
    }
}

pub fn settings_pb(row: &settings::Model) -> pb::FeedbackSettings {
    pb::FeedbackSettings {
        throttle_window: Some(duration(row.throttle_window)),
        default_invitation_ttl: Some(duration(row.default_ttl)),
        ces_follow_up_threshold: row.ces_threshold,
        etag: etag(row.version),
    }
}
