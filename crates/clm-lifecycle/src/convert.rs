//! Proto ↔ domain for lifecycle: models, stages, journey events and transitions — checked
//! into domain values on the way in, mapped back on the way out. Shared by `api` (requests and
//! responses), `publish` (event payloads) and `events` (the watch feed), so it sits below them,
//! over `store` and `domain`.

use clm_platform::convert::{duration, duration_micros, etag, timestamp};
use clm_platform::{FieldViolation, Violations};
use clm_proto::lifecycle::v1 as pb;

use crate::domain::journey::Happening;
use crate::domain::model::{Allowed, Category, Model, Role, Stage, StageKey};
use crate::store::ModelRecord;
use crate::store::entities::{journey_event, transition};

pub fn category(c: Category) -> pb::StageCategory {
    match c {
        Category::Prospect => pb::StageCategory::Prospect,
        Category::Customer => pb::StageCategory::Customer,
        Category::Lost => pb::StageCategory::Lost,
    }
}

fn role(r: Role) -> pb::StageRole {
    match r {
        Role::Normal => pb::StageRole::Unspecified,
        Role::Dormant => pb::StageRole::Dormant,
        Role::Churned => pb::StageRole::Churned,
        Role::Reactivated => pb::StageRole::Reactivated,
    }
}

/// Validate stages and allowed moves of a proto model into a domain model.
pub fn model_from_pb(
    stages: &[pb::Stage],
    allowed: &[pb::AllowedTransition],
    prefix: &str,
) -> Result<Model, Vec<FieldViolation>> {
    let mut v = Violations::new();
    let mut out = Vec::new();
    for (i, s) in stages.iter().enumerate() {
        let f = |name: &str| format!("{prefix}stages[{i}].{name}");
        let key = v.check(StageKey::parse(&f("key"), &s.key));
        let cat = match pb::StageCategory::try_from(s.category) {
            Ok(pb::StageCategory::Prospect) => Some(Category::Prospect),
            Ok(pb::StageCategory::Customer) => Some(Category::Customer),
            Ok(pb::StageCategory::Lost) => Some(Category::Lost),
            _ => {
                v.add(f("category"), "must be PROSPECT, CUSTOMER or LOST");
                None
            }
        };
        let r = match pb::StageRole::try_from(s.role) {
            Ok(pb::StageRole::Unspecified) => Some(Role::Normal),
            Ok(pb::StageRole::Dormant) => Some(Role::Dormant),
            Ok(pb::StageRole::Churned) => Some(Role::Churned),
            Ok(pb::StageRole::Reactivated) => Some(Role::Reactivated),
            Err(_) => {
                v.add(f("role"), "unknown role");
                None
            }
        };
        let dormancy = match &s.dormancy_threshold {
            None => Some(None),
            Some(d) => match duration_micros(d) {
                Some(m) if m > 0 => Some(Some(m)),
                _ => {
                    v.add(f("dormancy_threshold"), "must be a positive duration");
                    None
                }
            },
        };
        let name = if s.display_name.trim().is_empty() { s.key.clone() } else { s.display_name.trim().to_owned() };
        if let (Some(key), Some(category), Some(role), Some(dormancy_micros)) = (key, cat, r, dormancy) {
            out.push(Stage { key, display_name: name, category, role, dormancy_micros });
        }
    }
    let mut moves = Vec::new();
    for (i, a) in allowed.iter().enumerate() {
        let from = if a.from_stage == "*" || a.from_stage.is_empty() {
            Some(None)
        } else {
            v.check(StageKey::parse(&format!("{prefix}allowed_transitions[{i}].from_stage"), &a.from_stage)).map(Some)
        };
        let to = v.check(StageKey::parse(&format!("{prefix}allowed_transitions[{i}].to_stage"), &a.to_stage));
        if let (Some(from), Some(to)) = (from, to) {
            moves.push(Allowed { from, to });
        }
    }
    if let Err(clm_platform::Error::InvalidArgument(list)) = v.finish() {
        return Err(list);
    }
    Model::new(out, moves).map_err(|list| {
        list.into_iter().map(|x| FieldViolation::new(format!("{prefix}{}", x.field), x.description)).collect()
    })
}

pub fn model_to_pb(r: &ModelRecord) -> pb::LifecycleModel {
    pb::LifecycleModel {
        id: r.id.to_string(),
        display_name: r.display_name.clone(),
        description: r.description.clone(),
        stages: r
            .model
            .stages()
            .iter()
            .map(|s| pb::Stage {
                key: s.key.as_str().to_owned(),
                display_name: s.display_name.clone(),
                category: category(s.category) as i32,
                role: role(s.role) as i32,
                dormancy_threshold: s.dormancy_micros.map(duration),
            })
            .collect(),
        allowed_transitions: r
            .model
            .allowed()
            .iter()
            .map(|a| pb::AllowedTransition {
                from_stage: a.from.as_ref().map_or_else(|| "*".to_owned(), |f| f.as_str().to_owned()),
                to_stage: a.to.as_str().to_owned(),
            })
            .collect(),
        is_default: r.is_default,
        version: i32::try_from(r.version).unwrap_or(i32::MAX),
        create_time: Some(timestamp(r.create_time)),
        update_time: Some(timestamp(r.update_time)),
        etag: etag(r.version),
        churn_excludes_dormancy: r.churn_excludes_dormancy,
    }
}

/// The stored kind key of a journey event.
pub fn kind_key(e: &pb::JourneyEvent) -> &'static str {
    match e.detail {
        Some(pb::journey_event::Detail::Touchpoint(_)) => "touchpoint",
        Some(pb::journey_event::Detail::Purchase(_)) => "purchase",
        Some(pb::journey_event::Detail::Referral(_)) => "referral",
        Some(pb::journey_event::Detail::Review(_)) => "review",
        Some(pb::journey_event::Detail::Custom(_)) | None => "custom",
    }
}

/// The custom event name survey responses are recorded under (from feedback's events).
pub const SURVEY_RESPONSE: &str = "survey_response";

/// What the rules see of a journey event.
pub fn happening(e: &pb::JourneyEvent) -> Happening {
    use pb::journey_event::Detail;
    match &e.detail {
        Some(Detail::Touchpoint(t)) => Happening::Touchpoint {
            lead: matches!(
                pb::TouchpointKind::try_from(t.kind),
                Ok(pb::TouchpointKind::FormSubmitted
                    | pb::TouchpointKind::LeadCaptured
                    | pb::TouchpointKind::Demo
                    | pb::TouchpointKind::Meeting)
            ),
        },
        Some(Detail::Purchase(_)) => Happening::Purchase,
        Some(Detail::Referral(_)) => Happening::Referral,
        Some(Detail::Review(_)) => Happening::Review,
        Some(Detail::Custom(c))
            if c.name == SURVEY_RESPONSE && c.properties.get("kind").map(String::as_str) == Some("nps") =>
        {
            Happening::NpsScore(c.properties.get("score").and_then(|s| s.parse().ok()).unwrap_or(-1))
        }
        Some(Detail::Custom(_)) | None => Happening::Custom,
    }
}

/// Validate the detail of a journey event (the caller checks contact, times and keys).
pub fn check_event(e: &pb::JourneyEvent, prefix: &str, v: &mut Violations) {
    use pb::journey_event::Detail;
    match &e.detail {
        None => v.add(format!("{prefix}detail"), "one of touchpoint, purchase, referral, review, custom is required"),
        Some(Detail::Touchpoint(t)) => {
            if pb::TouchpointChannel::try_from(t.channel).is_err() {
                v.add(format!("{prefix}touchpoint.channel"), "unknown channel");
            }
            if pb::TouchpointKind::try_from(t.kind).is_err() {
                v.add(format!("{prefix}touchpoint.kind"), "unknown kind");
            }
            if t.detail.chars().count() > 256 {
                v.add(format!("{prefix}touchpoint.detail"), "at most 256 characters");
            }
        }
        Some(Detail::Purchase(p)) => {
            if p.order_id.trim().is_empty() || p.order_id.chars().count() > 128 {
                v.add(format!("{prefix}purchase.order_id"), "1 to 128 characters");
            }
            match &p.amount {
                None => v.add(format!("{prefix}purchase.amount"), "is required"),
                Some(m) => {
                    if iso_currency_ok(&m.currency_code).is_none() {
                        v.add(
                            format!("{prefix}purchase.amount.currency_code"),
                            "must be an ISO 4217 code such as \"EUR\"",
                        );
                    }
                    if m.units < 0 || m.nanos < 0 || m.nanos >= 1_000_000_000 {
                        v.add(format!("{prefix}purchase.amount"), "must not be negative (nanos 0-999999999)");
                    } else if m.units > clm_platform::convert::MAX_MONEY_UNITS {
                        v.add(format!("{prefix}purchase.amount.units"), "must be at most 1,000,000,000,000 (10^12)");
                    }
                }
            }
            if p.items < 0 {
                v.add(format!("{prefix}purchase.items"), "must not be negative");
            }
        }
        Some(Detail::Referral(r)) => {
            if !r.referred_contact_id.is_empty() && uuid::Uuid::parse_str(&r.referred_contact_id).is_err() {
                v.add(format!("{prefix}referral.referred_contact_id"), "must be a UUID");
            }
        }
        Some(Detail::Review(r)) => {
            if !(1..=5).contains(&r.rating) {
                v.add(format!("{prefix}review.rating"), "must be 1 to 5");
            }
        }
        Some(Detail::Custom(c)) => {
            let ok = c.name.len() <= 64
                && c.name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && c.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
            if !ok {
                v.add(format!("{prefix}custom.name"), "must match [a-z][a-z0-9_.]{0,63}");
            }
            if c.properties.len() > 20 {
                v.add(format!("{prefix}custom.properties"), "at most 20 entries");
            }
        }
    }
    if e.metadata.len() > 20 {
        v.add(format!("{prefix}metadata"), "at most 20 entries");
    }
}

fn iso_currency_ok(code: &str) -> Option<()> {
    (code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic())).then_some(())
}

pub fn event_to_pb(row: &journey_event::Model) -> pb::JourneyEvent {
    use prost::Message;
    let mut e = pb::JourneyEvent::decode(row.body.as_slice()).unwrap_or_default();
    e.id.clone_from(&row.id);
    e.contact_id.clone_from(&row.contact_id);
    e.occur_time = Some(timestamp(row.occur_time));
    e.record_time = Some(timestamp(row.record_time));
    e
}

pub fn cause_pb(cause: &str) -> pb::TransitionCause {
    match cause {
        "manual" => pb::TransitionCause::Manual,
        "rule:reactivation" | "rule:dormancy" => pb::TransitionCause::Rule,
        c if c.starts_with("rule:") => pb::TransitionCause::Rule,
        c if c.starts_with("automation") => pb::TransitionCause::Automation,
        _ => pb::TransitionCause::Event,
    }
}

pub fn transition_to_pb(t: &transition::Model, previous_enter: Option<i64>) -> pb::StageTransition {
    pb::StageTransition {
        id: t.id.clone(),
        from_stage: t.from_stage.clone().unwrap_or_default(),
        to_stage: t.to_stage.clone(),
        transition_time: Some(timestamp(t.at)),
        cause: cause_pb(&t.cause) as i32,
        cause_ref: if t.cause.starts_with("rule:") && t.cause_ref.is_empty() {
            t.cause.trim_start_matches("rule:").to_owned()
        } else {
            t.cause_ref.clone()
        },
        actor: t.actor.clone(),
        reason: t.reason.clone(),
        reactivation: t.reactivation,
        time_in_previous_stage: previous_enter.map(|p| duration((t.at - p).max(0))),
    }
}
