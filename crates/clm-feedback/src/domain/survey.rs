//! Surveys: their kind and status (and the rules of changing them once answered), their
//! questions, answers validated against them (with skip logic), and the band of a score.

use std::collections::HashMap;

use clm_platform::{Error, FieldViolation};
use serde::{Deserialize, Serialize};

use super::follow_up::FollowUpReason;

/// Most questions in a survey, choices in a question, characters in texts.
pub const MAX_QUESTIONS: usize = 50;
pub const MAX_CHOICES: usize = 50;
pub const MAX_QUESTION_TEXT: usize = 1000;
pub const MAX_FREE_TEXT: usize = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nps,
    Csat,
    /// Customer effort on the common 7-point scale: 1 = very difficult … 7 = very easy (higher
    /// is better, like NPS and CSAT).
    Ces,
    Custom,
}

impl Kind {
    /// The primary rating scale of the kind.
    pub fn scale(self) -> Option<(i32, i32)> {
        match self {
            Kind::Nps => Some((0, 10)),
            Kind::Csat => Some((1, 5)),
            Kind::Ces => Some((1, 7)),
            Kind::Custom => None,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kind::Nps => "nps",
            Kind::Csat => "csat",
            Kind::Ces => "ces",
            Kind::Custom => "custom",
        }
    }

    pub fn from_key(k: &str) -> Option<Kind> {
        [Kind::Nps, Kind::Csat, Kind::Ces, Kind::Custom].into_iter().find(|c| c.key() == k)
    }
}

/// Where a survey is in its life: drafted, taking invitations and responses, or closed (its
/// results stay readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurveyStatus {
    Draft,
    Active,
    Closed,
}

impl SurveyStatus {
    pub const ALL: [SurveyStatus; 3] = [SurveyStatus::Draft, SurveyStatus::Active, SurveyStatus::Closed];

    pub fn key(self) -> &'static str {
        match self {
            SurveyStatus::Draft => "draft",
            SurveyStatus::Active => "active",
            SurveyStatus::Closed => "closed",
        }
    }

    pub fn from_key(k: &str) -> Option<SurveyStatus> {
        Self::ALL.into_iter().find(|s| s.key() == k)
    }

    /// The status of a new survey asked for `requested` (none: a draft). A new survey is not
    /// closed.
    pub fn for_new(field: &str, requested: Option<SurveyStatus>) -> Result<SurveyStatus, FieldViolation> {
        match requested {
            None | Some(SurveyStatus::Draft) => Ok(SurveyStatus::Draft),
            Some(SurveyStatus::Active) => Ok(SurveyStatus::Active),
            Some(SurveyStatus::Closed) => Err(FieldViolation::new(field, "a new survey is DRAFT or ACTIVE")),
        }
    }

    /// May survey `id` in this status be sent invitations? Only when active.
    pub fn check_invitable(self, id: impl std::fmt::Display) -> Result<(), Error> {
        match self {
            SurveyStatus::Active => Ok(()),
            SurveyStatus::Draft => Err(Error::FailedPrecondition(format!("survey {id} is a draft; activate it first"))),
            SurveyStatus::Closed => {
                Err(Error::FailedPrecondition(format!("survey {id} is closed; it accepts no invitations or responses")))
            }
        }
    }
}

/// May survey `id` (stored status `status`) take a response? Only when active.
pub fn check_answerable(id: impl std::fmt::Display, status: &str) -> Result<(), Error> {
    if SurveyStatus::from_key(status) == Some(SurveyStatus::Active) {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!("survey {id} is {status}; only active surveys accept responses")))
    }
}

/// May historical responses be imported into survey `id` (stored status `status`)? Into an
/// active or a closed one (answers given while it ran), not a draft: its questions may still
/// change, and imported answers would freeze them.
pub fn check_importable(id: impl std::fmt::Display, status: &str) -> Result<(), Error> {
    match SurveyStatus::from_key(status) {
        Some(SurveyStatus::Active | SurveyStatus::Closed) => Ok(()),
        _ => Err(Error::FailedPrecondition(format!(
            "survey {id} is {status}; responses are imported into active or closed surveys"
        ))),
    }
}

/// Survey `id`, in `old` status, set to `new`: once it has responses it cannot go back to draft.
pub fn check_status_change(
    id: impl std::fmt::Display,
    old: Option<SurveyStatus>,
    new: SurveyStatus,
    has_responses: bool,
) -> Result<(), Error> {
    if new == SurveyStatus::Draft && old != Some(SurveyStatus::Draft) && has_responses {
        return Err(Error::FailedPrecondition(format!("survey {id} has responses; it cannot go back to draft")));
    }
    Ok(())
}

/// Survey `id`'s stored questions `old` replaced by `new`: not once it has responses (they
/// answer the questions as they were).
pub fn check_questions_change(
    id: impl std::fmt::Display,
    old: &str,
    new: &str,
    has_responses: bool,
) -> Result<(), Error> {
    if has_responses && new != old {
        return Err(Error::FailedPrecondition(format!(
            "survey {id} has responses; its questions cannot change (create a new survey)"
        )));
    }
    Ok(())
}

/// Survey `id` deleted: not once it has responses (close it instead).
pub fn check_delete(id: impl std::fmt::Display, has_responses: bool) -> Result<(), Error> {
    if has_responses {
        return Err(Error::FailedPrecondition(format!(
            "survey {id} has responses; close it instead (its results stay readable)"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuestionKind {
    Rating { min: i32, max: i32 },
    Choice { choices: Vec<String>, multiple: bool },
    FreeText { max_length: usize },
}

/// Show a question only when an earlier answer matches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShowIf {
    pub question_id: String,
    pub choice_ids: Vec<String>,
    pub rating: Option<(i32, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub text: String,
    pub required: bool,
    pub kind: QuestionKind,
    pub show_if: Option<ShowIf>,
    pub primary: bool,
}

/// A valid set of questions for a survey kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Questions {
    kind: Kind,
    questions: Vec<Question>,
}

fn key_ok(k: &str) -> bool {
    let mut b = k.bytes();
    k.len() <= 32
        && b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

impl Questions {
    /// Check the questions of a survey of `kind`. An NPS/CSAT/CES survey without a primary
    /// question gets the standard one first (`score`).
    pub fn new(kind: Kind, mut questions: Vec<Question>, prefix: &str) -> Result<Self, Vec<FieldViolation>> {
        let mut v = Vec::new();
        let f = |i: usize, name: &str| format!("{prefix}questions[{i}].{name}");
        if let Some((min, max)) = kind.scale()
            && !questions.iter().any(|q| q.primary)
        {
            let text = match kind {
                Kind::Nps => "How likely are you to recommend us to a friend or colleague?",
                Kind::Csat => "How satisfied are you?",
                _ => "How easy was it to get what you needed?",
            };
            questions.insert(
                0,
                Question {
                    id: "score".into(),
                    text: text.into(),
                    required: true,
                    kind: QuestionKind::Rating { min, max },
                    show_if: None,
                    primary: true,
                },
            );
        }
        if questions.is_empty() || questions.len() > MAX_QUESTIONS {
            v.push(FieldViolation::new(format!("{prefix}questions"), format!("1 to {MAX_QUESTIONS} questions")));
        }
        let mut primaries = 0;
        for (i, q) in questions.iter().enumerate() {
            if !key_ok(&q.id) {
                v.push(FieldViolation::new(f(i, "id"), "must match [a-z][a-z0-9_]{0,31}"));
            }
            if questions[..i].iter().any(|o| o.id == q.id) {
                v.push(FieldViolation::new(f(i, "id"), "appears twice"));
            }
            if q.text.trim().is_empty() || q.text.chars().count() > MAX_QUESTION_TEXT {
                v.push(FieldViolation::new(f(i, "text"), format!("1 to {MAX_QUESTION_TEXT} characters")));
            }
            match &q.kind {
                QuestionKind::Rating { min, max } => {
                    if min >= max || *min < -100 || *max > 100 {
                        v.push(FieldViolation::new(f(i, "rating"), "min must be below max, both within -100..100"));
                    }
                }
                QuestionKind::Choice { choices, .. } => {
                    if choices.len() < 2 || choices.len() > MAX_CHOICES {
                        v.push(FieldViolation::new(f(i, "choice.choices"), format!("2 to {MAX_CHOICES} choices")));
                    }
                    for (j, c) in choices.iter().enumerate() {
                        if !key_ok(c) || choices[..j].contains(c) {
                            v.push(FieldViolation::new(
                                format!("{}[{j}].id", f(i, "choice.choices")),
                                "unique keys matching [a-z][a-z0-9_]{0,31}",
                            ));
                        }
                    }
                }
                QuestionKind::FreeText { max_length } => {
                    if *max_length == 0 || *max_length > MAX_FREE_TEXT {
                        v.push(FieldViolation::new(f(i, "free_text.max_length"), format!("1 to {MAX_FREE_TEXT}")));
                    }
                }
            }
            if q.primary {
                primaries += 1;
                match (kind.scale(), &q.kind) {
                    (Some((min, max)), QuestionKind::Rating { min: a, max: b }) if (*a, *b) == (min, max) => {}
                    (Some((min, max)), _) => {
                        v.push(FieldViolation::new(
                            f(i, "primary"),
                            format!("the primary question of this survey is a rating {min}..{max}"),
                        ));
                    }
                    (None, QuestionKind::Rating { .. }) => {}
                    (None, _) => v.push(FieldViolation::new(f(i, "primary"), "a primary question is a rating")),
                }
            }
            if let Some(s) = &q.show_if {
                match questions[..i].iter().find(|o| o.id == s.question_id) {
                    None => v.push(FieldViolation::new(f(i, "show_if.question_id"), "must name an earlier question")),
                    Some(o) => match &o.kind {
                        QuestionKind::Choice { choices, .. } if !s.choice_ids.is_empty() => {
                            if s.choice_ids.iter().any(|c| !choices.contains(c)) {
                                v.push(FieldViolation::new(
                                    f(i, "show_if.choice_ids"),
                                    "unknown choice of that question",
                                ));
                            }
                        }
                        QuestionKind::Rating { .. } if s.rating.is_some() => {}
                        _ => v.push(FieldViolation::new(
                            f(i, "show_if"),
                            "choice_ids for a choice question, a rating range for a rating question",
                        )),
                    },
                }
            }
        }
        if primaries > 1 {
            v.push(FieldViolation::new(format!("{prefix}questions"), "at most one primary question"));
        }
        if v.is_empty() { Ok(Self { kind, questions }) } else { Err(v) }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn questions(&self) -> &[Question] {
        &self.questions
    }

    pub fn primary(&self) -> Option<&Question> {
        self.questions.iter().find(|q| q.primary)
    }
}

/// One answer value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Rating(i32),
    Choices(Vec<String>),
    Text(String),
}

fn shown(q: &Question, answers: &HashMap<String, Value>) -> bool {
    let Some(s) = &q.show_if else { return true };
    match answers.get(&s.question_id) {
        Some(Value::Choices(picked)) => s.choice_ids.iter().any(|c| picked.contains(c)),
        Some(Value::Rating(r)) => s.rating.is_some_and(|(lo, hi)| (lo..=hi).contains(r)),
        _ => false,
    }
}

/// Check `new` answers against the questions, merged over `previous` ones (a partial response
/// being continued). Returns all answers and whether every shown required question is answered.
pub fn check_answers(
    qs: &Questions,
    previous: &HashMap<String, Value>,
    new: &[(String, Value)],
    prefix: &str,
) -> Result<(HashMap<String, Value>, bool), Vec<FieldViolation>> {
    let mut v = Vec::new();
    let mut all = previous.clone();
    for (i, (qid, value)) in new.iter().enumerate() {
        let f = format!("{prefix}answers[{i}]");
        let Some(q) = qs.questions.iter().find(|q| &q.id == qid) else {
            v.push(FieldViolation::new(format!("{f}.question_id"), format!("no question {qid:?} in this survey")));
            continue;
        };
        match (&q.kind, value) {
            (QuestionKind::Rating { min, max }, Value::Rating(r)) => {
                if !(min..=max).contains(&r) {
                    v.push(FieldViolation::new(format!("{f}.rating"), format!("must be {min} to {max}")));
                    continue;
                }
            }
            (QuestionKind::Choice { choices, multiple }, Value::Choices(picked)) => {
                if picked.is_empty() || (!multiple && picked.len() > 1) {
                    v.push(FieldViolation::new(
                        format!("{f}.choices"),
                        if *multiple { "pick at least one" } else { "pick exactly one" },
                    ));
                    continue;
                }
                if let Some(bad) = picked.iter().find(|c| !choices.contains(c)) {
                    v.push(FieldViolation::new(format!("{f}.choices"), format!("unknown choice {bad:?}")));
                    continue;
                }
            }
            (QuestionKind::FreeText { max_length }, Value::Text(t)) => {
                if t.chars().count() > *max_length {
                    v.push(FieldViolation::new(format!("{f}.text"), format!("at most {max_length} characters")));
                    continue;
                }
            }
            _ => {
                v.push(FieldViolation::new(f.clone(), "the answer's type does not match the question"));
                continue;
            }
        }
        all.insert(qid.clone(), value.clone());
    }
    if !v.is_empty() {
        return Err(v);
    }
    // Answers to questions hidden by skip logic are dropped.
    let visible: Vec<&Question> = qs.questions.iter().filter(|q| shown(q, &all)).collect();
    all.retain(|k, _| visible.iter().any(|q| &q.id == k));
    let complete = visible.iter().filter(|q| q.required).all(|q| all.contains_key(&q.id));
    Ok((all, complete))
}

/// The shown, required questions `answers` leave unanswered (skip logic applied).
pub fn missing_required(qs: &Questions, answers: &HashMap<String, Value>) -> Vec<String> {
    qs.questions
        .iter()
        .filter(|q| q.required && shown(q, answers) && !answers.contains_key(&q.id))
        .map(|q| q.id.clone())
        .collect()
}

/// Bands of a primary score. CES: 1-3 high effort (difficult), 4 medium, 5-7 low effort (easy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    Promoter,
    Passive,
    Detractor,
    Satisfied,
    Neutral,
    Unsatisfied,
    LowEffort,
    MediumEffort,
    HighEffort,
}

impl Band {
    pub const ALL: [Band; 9] = [
        Band::Promoter,
        Band::Passive,
        Band::Detractor,
        Band::Satisfied,
        Band::Neutral,
        Band::Unsatisfied,
        Band::LowEffort,
        Band::MediumEffort,
        Band::HighEffort,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Band::Promoter => "promoter",
            Band::Passive => "passive",
            Band::Detractor => "detractor",
            Band::Satisfied => "satisfied",
            Band::Neutral => "neutral",
            Band::Unsatisfied => "unsatisfied",
            Band::LowEffort => "low_effort",
            Band::MediumEffort => "medium_effort",
            Band::HighEffort => "high_effort",
        }
    }

    pub fn from_key(k: &str) -> Option<Band> {
        Band::ALL.into_iter().find(|b| b.key() == k)
    }

    pub fn of(kind: Kind, score: i32) -> Option<Band> {
        Some(match kind {
            Kind::Nps if score >= 9 => Band::Promoter,
            Kind::Nps if score >= 7 => Band::Passive,
            Kind::Nps => Band::Detractor,
            Kind::Csat if score >= 4 => Band::Satisfied,
            Kind::Csat if score == 3 => Band::Neutral,
            Kind::Csat => Band::Unsatisfied,
            Kind::Ces if score <= 3 => Band::HighEffort,
            Kind::Ces if score == 4 => Band::MediumEffort,
            Kind::Ces => Band::LowEffort,
            Kind::Custom => return None,
        })
    }

    /// The follow-up reason when this band means an unhappy customer.
    pub fn follow_up(self) -> Option<FollowUpReason> {
        match self {
            Band::Detractor => Some(FollowUpReason::NpsDetractor),
            Band::Unsatisfied => Some(FollowUpReason::CsatUnsatisfied),
            Band::HighEffort => Some(FollowUpReason::CesHighEffort),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: &str, kind: QuestionKind) -> Question {
        Question { id: id.into(), text: id.into(), required: false, kind, show_if: None, primary: false }
    }

    #[test]
    fn drafts_take_no_imports() {
        assert!(check_importable("s", "active").is_ok());
        assert!(check_importable("s", "closed").is_ok());
        assert!(matches!(check_importable("s", "draft"), Err(Error::FailedPrecondition(_))));
        assert!(matches!(check_answerable("s", "closed"), Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn nps_gets_its_primary_question() {
        let qs = Questions::new(Kind::Nps, vec![q("why", QuestionKind::FreeText { max_length: 500 })], "").unwrap();
        assert_eq!(qs.primary().unwrap().kind, QuestionKind::Rating { min: 0, max: 10 });
        assert_eq!(qs.questions().len(), 2);
    }

    #[test]
    fn invalid_questions_name_the_field() {
        let mut bad = q("Score", QuestionKind::Rating { min: 5, max: 1 });
        bad.primary = true;
        let err = Questions::new(Kind::Custom, vec![bad], "survey.").unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert!(
            fields.contains(&"survey.questions[0].id") && fields.contains(&"survey.questions[0].rating"),
            "{fields:?}"
        );
        let mut wrong_scale = q("score", QuestionKind::Rating { min: 1, max: 5 });
        wrong_scale.primary = true;
        assert!(Questions::new(Kind::Nps, vec![wrong_scale], "").is_err());
        let mut later = q("b", QuestionKind::FreeText { max_length: 10 });
        later.show_if = Some(ShowIf { question_id: "zz".into(), ..ShowIf::default() });
        assert_eq!(
            Questions::new(Kind::Custom, vec![later], "").unwrap_err()[0].field,
            "questions[0].show_if.question_id"
        );
    }

    #[test]
    fn answers_are_checked_and_skip_logic_applies() {
        let mut why = q("why", QuestionKind::FreeText { max_length: 20 });
        why.required = true;
        why.show_if = Some(ShowIf { question_id: "score".into(), choice_ids: vec![], rating: Some((0, 6)) });
        let qs = Questions::new(Kind::Nps, vec![why], "").unwrap();
        // A promoter is not asked why.
        let (all, complete) = check_answers(&qs, &HashMap::new(), &[("score".into(), Value::Rating(10))], "").unwrap();
        assert!(complete);
        assert_eq!(all.len(), 1);
        // A detractor must say why; partial until then.
        let (all, complete) = check_answers(&qs, &HashMap::new(), &[("score".into(), Value::Rating(3))], "").unwrap();
        assert!(!complete);
        let (_, complete) = check_answers(&qs, &all, &[("why".into(), Value::Text("slow".into()))], "").unwrap();
        assert!(complete);
        // Bad answers.
        let err = check_answers(&qs, &HashMap::new(), &[("score".into(), Value::Rating(11))], "").unwrap_err();
        assert_eq!(err[0].field, "answers[0].rating");
        let err = check_answers(&qs, &HashMap::new(), &[("nope".into(), Value::Rating(1))], "").unwrap_err();
        assert_eq!(err[0].field, "answers[0].question_id");
        let err = check_answers(&qs, &HashMap::new(), &[("why".into(), Value::Text("x".repeat(21)))], "").unwrap_err();
        assert_eq!(err[0].field, "answers[0].text");
        let err = check_answers(&qs, &HashMap::new(), &[("score".into(), Value::Text("ten".into()))], "").unwrap_err();
        assert_eq!(err[0].field, "answers[0]");
    }

    #[test]
    fn bands_and_follow_ups() {
        assert_eq!(Band::of(Kind::Nps, 6), Some(Band::Detractor));
        assert_eq!(Band::of(Kind::Nps, 7), Some(Band::Passive));
        assert_eq!(Band::of(Kind::Nps, 9), Some(Band::Promoter));
        assert_eq!(Band::of(Kind::Csat, 2).and_then(Band::follow_up), Some(FollowUpReason::CsatUnsatisfied));
        assert_eq!(Band::of(Kind::Csat, 3).and_then(Band::follow_up), None);
        assert_eq!(Band::of(Kind::Custom, 5), None);
    }

    #[test]
    fn statuses_and_what_responses_freeze() {
        use SurveyStatus::{Active, Closed, Draft};
        for s in SurveyStatus::ALL {
            assert_eq!(SurveyStatus::from_key(s.key()), Some(s));
        }
        assert_eq!(SurveyStatus::for_new("f", None), Ok(Draft));
        assert_eq!(SurveyStatus::for_new("f", Some(Active)), Ok(Active));
        assert_eq!(SurveyStatus::for_new("survey.status", Some(Closed)).unwrap_err().field, "survey.status");
        assert!(Active.check_invitable("s").is_ok());
        assert!(matches!(Draft.check_invitable("s"), Err(Error::FailedPrecondition(m)) if m.contains("draft")));
        assert!(matches!(Closed.check_invitable("s"), Err(Error::FailedPrecondition(m)) if m.contains("closed")));
        assert!(check_answerable("s", "active").is_ok());
        assert!(matches!(check_answerable("s", "closed"), Err(Error::FailedPrecondition(m)) if m.contains("closed")));
        assert!(check_status_change("s", Some(Active), Draft, true).is_err(), "answered: no way back to draft");
        assert!(check_status_change("s", Some(Active), Draft, false).is_ok());
        assert!(check_status_change("s", Some(Draft), Draft, true).is_ok());
        assert!(check_status_change("s", Some(Active), Closed, true).is_ok());
        assert!(check_questions_change("s", "a", "b", true).is_err());
        assert!(check_questions_change("s", "a", "a", true).is_ok(), "the same questions again");
        assert!(check_questions_change("s", "a", "b", false).is_ok());
        assert!(check_delete("s", true).is_err());
        assert!(check_delete("s", false).is_ok());
    }

    /// CES is 1 = very difficult … 7 = very easy: the low scores are the high effort.
    #[test]
    fn ces_low_scores_are_high_effort() {
        let band = |s| Band::of(Kind::Ces, s).unwrap();
        assert_eq!([1, 2, 3].map(band), [Band::HighEffort; 3]);
        assert_eq!(band(4), Band::MediumEffort);
        assert_eq!([5, 6, 7].map(band), [Band::LowEffort; 3]);
        assert_eq!(band(2).follow_up(), Some(FollowUpReason::CesHighEffort));
        assert_eq!(band(4).follow_up(), None);
        assert_eq!(band(6).follow_up(), None);
    }
}
