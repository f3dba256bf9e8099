//! ImportResponses: complete historical responses (from another survey tool, or demo data)
//! stored at the times they were given. Each is checked by the same rules as SubmitResponse's
//! answers (`domain::survey::check_answers`, `domain::response::check_complete`, `Score`), but
//! it answers no invitation, is not throttled and opens no follow-up (closing the loop on an
//! old answer makes no sense). It is published as ResponseSubmitted occurring at its submit
//! time, so metrics' trends and lifecycle's activity place it in its period.
//!
//! A batch is all or nothing: every bad item is reported at once as an INVALID_ARGUMENT field
//! violation `responses[i].<field>` and nothing is written. An `external_id` already imported
//! into the survey is skipped and reported, so sending a batch again is safe.

use std::collections::{HashMap, HashSet};

use clm_platform::convert::{TimeBounds, parse_time, uuid};
use clm_platform::{Error, FieldViolation, Violations};
use clm_proto::feedback::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{answer_from_pb, load_questions};
use super::{FeedbackApi, ctx};
use crate::domain::response::{self, Score};
use crate::domain::survey::{self, Questions, Value};
use crate::store;
use crate::store::entities::response as response_row;

/// Most responses one ImportResponses call takes (as the other imports' batches).
pub const MAX_IMPORT_BATCH: usize = 1000;
/// Longest external id, in characters.
const MAX_EXTERNAL_ID: usize = 256;
/// How far after now a submit time may be (clock skew), µs: imported answers are history.
const MAX_FUTURE_SKEW: i64 = 5 * 60 * 1_000_000;

/// One imported response, parsed and checked.
struct Item {
    contact: Uuid,
    answers: HashMap<String, Value>,
    at: i64,
    external_id: String,
}

/// Parse item `i`, or every violation of it, each named `responses[i].<field>`.
fn parse_item(i: usize, r: &pb::ImportedResponse, qs: &Questions) -> Result<Item, Vec<FieldViolation>> {
    let p = format!("responses[{i}].");
    let mut v = Violations::new();
    let contact = v.check(uuid(&format!("{p}contact_id"), &r.contact_id));
    let at = match &r.submit_time {
        None => {
            v.add(format!("{p}submit_time"), "is required: when the response was given");
            None
        }
        Some(ts) => v.check(parse_time(&format!("{p}submit_time"), ts, TimeBounds::NotAfterNowPlus(MAX_FUTURE_SKEW))),
    };
    if r.external_id.trim().is_empty() {
        v.add(format!("{p}external_id"), "is required: the source system's id of the response");
    } else if r.external_id.chars().count() > MAX_EXTERNAL_ID {
        v.add(format!("{p}external_id"), format!("at most {MAX_EXTERNAL_ID} characters"));
    }
    let mut answers = Vec::with_capacity(r.answers.len());
    let mut unreadable = false;
    for (j, a) in r.answers.iter().enumerate() {
        match answer_from_pb(a) {
            Some(val) => answers.push((a.question_id.clone(), val)),
            None => {
                unreadable = true;
                v.add(format!("{p}answers[{j}]"), "set one of rating, choices, text");
            }
        }
    }
    let mut all = None;
    if !unreadable {
        match survey::check_answers(qs, &HashMap::new(), &answers, &p) {
            Ok((given, _)) => match response::check_complete(qs, &given) {
                Ok(()) => all = Some(given),
                Err(list) => {
                    for fv in list {
                        v.add(format!("{p}{}", fv.field), fv.description);
                    }
                }
            },
            Err(list) => {
                for fv in list {
                    v.add(fv.field, fv.description);
                }
            }
        }
    }
    match (v.finish(), contact, all, at) {
        (Ok(()), Some(contact), Some(answers), Some(at)) => {
            Ok(Item { contact, answers, at, external_id: r.external_id.clone() })
        }
        (Err(Error::InvalidArgument(list)), ..) => Err(list),
        _ => Err(vec![FieldViolation::new(p.trim_end_matches('.'), "is invalid")]),
    }
}

pub async fn import(
    api: &FeedbackApi,
    req: Request<pb::ImportResponsesRequest>,
) -> Result<Response<pb::ImportResponsesResponse>, Status> {
    let ctx = ctx(&req)?;
    let tenant = ctx.tenant.clone();
    let req = req.into_inner();
    let mut v = Violations::new();
    let survey_id = v.check(uuid("survey_id", &req.survey_id));
    if req.responses.is_empty() {
        v.add("responses", "at least one response");
    } else if req.responses.len() > MAX_IMPORT_BATCH {
        v.add("responses", format!("at most {MAX_IMPORT_BATCH} responses per request"));
    }
    v.finish()?;
    let survey_id = survey_id.expect("checked");
    let survey = store::get_survey(&api.db, &tenant, survey_id).await?;
    survey::check_importable(survey_id, &survey.status)?;
    let (qs, _) = load_questions(&survey)?;

    let mut v = Violations::new();
    let mut items = Vec::with_capacity(req.responses.len());
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, r) in req.responses.iter().enumerate() {
        let first = *first_of.entry(&r.external_id).or_insert(i);
        if first != i && !r.external_id.trim().is_empty() {
            v.add(format!("responses[{i}].external_id"), format!("repeats responses[{first}].external_id"));
        }
        match parse_item(i, r, &qs) {
            Ok(it) => items.push(Some(it)),
            Err(list) => {
                for fv in list {
                    v.add(fv.field, fv.description);
                }
                items.push(None);
            }
        }
    }
    // The respondents must be contacts (asked where contacts live, before any write).
    let wanted: Vec<Uuid> = items.iter().flatten().map(|it| it.contact).collect::<HashSet<_>>().into_iter().collect();
    let known = api.contacts.existing(&tenant, &wanted).await?;
    for (i, it) in items.iter().enumerate() {
        if let Some(it) = it
            && !known.contains(&it.contact)
        {
            v.add(format!("responses[{i}].contact_id"), format!("no contact {}", it.contact));
        }
    }
    v.finish()?;
    let items: Vec<Item> = items.into_iter().flatten().collect();

    let mut out = pb::ImportResponsesResponse { received: items.len() as i64, ..Default::default() };
    let txn = clm_platform::events::UnitOfWork::begin(&api.db).await?;
    let ext: Vec<String> = items.iter().map(|it| it.external_id.clone()).collect();
    let already = store::imported_responses(&txn, &tenant, survey_id, &ext).await?;
    for (i, it) in items.into_iter().enumerate() {
        if let Some(id) = already.get(&it.external_id) {
            out.skipped += 1;
            out.skipped_responses.push(pb::SkippedImport {
                index: i as i64,
                external_id: it.external_id,
                response_id: id.clone(),
                reason: "already imported into this survey".into(),
            });
            continue;
        }
        let score = Score::of(&qs, &it.answers);
        let row = response_row::Model {
            id: Uuid::now_v7().to_string(),
            tenant_id: tenant.as_str().to_owned(),
            survey_id: survey.id.clone(),
            invitation_id: None,
            contact_id: it.contact.to_string(),
            answers: serde_json::to_string(&it.answers).map_err(Error::internal)?,
            complete: true,
            score: score.map(Score::value),
            band: score.and_then(Score::band).map(|b| b.key().to_owned()),
            // The respondent's stage back then is not known.
            stage_key: String::new(),
            create_time: it.at,
            update_time: it.at,
            complete_time: Some(it.at),
            version: 1,
            external_id: Some(it.external_id),
        };
        store::insert_response(&txn, &tenant, row.clone()).await?;
        // Occurs at the submit time (`Publisher::response_submitted` dates it by complete_time).
        api.events.response_submitted(&txn, &tenant, &row, &survey.kind).await?;
        out.imported += 1;
        out.response_ids.push(row.id);
    }
    txn.commit().await?;
    tracing::info!(received = out.received, imported = out.imported, skipped = out.skipped, "responses imported");
    Ok(Response::new(out))
}
