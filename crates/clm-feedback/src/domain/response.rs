//! Responses: the primary score a response carries (within its survey's scale: NPS 0-10, CSAT
//! 1-5, CES 1-7), when a response is complete, that a complete one is final, and which scores
//! open a follow-up.

use std::collections::HashMap;

use clm_platform::{Error, FieldViolation};

use super::follow_up::FollowUpReason;
use super::survey::{self, Band, Kind, QuestionKind, Questions, Value};
use super::values::CesThreshold;

/// The answer to a survey's primary question: a rating within that question's scale (for NPS,
/// CSAT and CES the kind's scale). Valid by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    kind: Kind,
    value: i32,
}

impl Score {
    /// The score of `answers` (checked against `qs` by `survey::check_answers`): the rating of
    /// the primary question, if it was answered.
    pub fn of(qs: &Questions, answers: &HashMap<String, Value>) -> Option<Score> {
        let p = qs.primary()?;
        let (QuestionKind::Rating { min, max }, Some(Value::Rating(r))) = (&p.kind, answers.get(&p.id)) else {
            return None;
        };
        (min..=max).contains(&r).then_some(Score { kind: qs.kind(), value: *r })
    }

    pub fn kind(self) -> Kind {
        self.kind
    }

    pub fn value(self) -> i32 {
        self.value
    }

    pub fn band(self) -> Option<Band> {
        Band::of(self.kind, self.value)
    }

    /// The reason this score opens a follow-up, if it does. CES counts from the difficult end
    /// (1 = very difficult … 7 = very easy): scores up to the tenant's threshold open one.
    pub fn follow_up(self, ces_threshold: CesThreshold) -> Option<FollowUpReason> {
        match self.kind {
            Kind::Ces if self.value <= ces_threshold.value() => Some(FollowUpReason::CesHighEffort),
            Kind::Ces => None,
            _ => self.band().and_then(Band::follow_up),
        }
    }
}

/// A response marked complete must answer every shown required question: those it leaves
/// unanswered, each a violation of `answers`.
pub fn check_complete(qs: &Questions, answers: &HashMap<String, Value>) -> Result<(), Vec<FieldViolation>> {
    let missing = survey::missing_required(qs, answers);
    if missing.is_empty() {
        return Ok(());
    }
    Err(missing.into_iter().map(|q| FieldViolation::new("answers", format!("question {q:?} is required"))).collect())
}

/// The question a violation of [`check_complete`] says is required (for the survey page, which
/// shows it next to that question).
pub fn required_question(v: &FieldViolation) -> Option<&str> {
    let quoted = v.description.strip_prefix("question \"")?.strip_suffix("\" is required")?;
    (v.field == "answers").then_some(quoted)
}

/// A complete response is final: response `id` may be continued only while partial.
pub fn check_open(id: &str, complete: bool) -> Result<(), Error> {
    if complete {
        return Err(Error::FailedPrecondition(format!("response {id} is complete; it cannot change")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::survey::{Question, ShowIf};

    fn questions(kind: Kind) -> Questions {
        let mut why = Question {
            id: "why".into(),
            text: "Why?".into(),
            required: true,
            kind: QuestionKind::FreeText { max_length: 100 },
            show_if: None,
            primary: false,
        };
        why.show_if = Some(ShowIf { question_id: "score".into(), choice_ids: vec![], rating: Some((0, 6)) });
        Questions::new(kind, vec![why], "").unwrap()
    }

    fn answers(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    fn score(kind: Kind, value: i32) -> Score {
        Score::of(&questions(kind), &answers(&[("score", Value::Rating(value))])).unwrap()
    }

    #[test]
    fn the_score_is_the_primary_rating() {
        let qs = questions(Kind::Nps);
        assert_eq!(Score::of(&qs, &answers(&[("score", Value::Rating(9))])).map(Score::value), Some(9));
        assert_eq!(Score::of(&qs, &answers(&[])), None, "not answered");
        assert_eq!(Score::of(&qs, &answers(&[("score", Value::Rating(11))])), None, "outside the scale");
        assert_eq!(score(Kind::Nps, 6).band(), Some(Band::Detractor));
    }

    #[test]
    fn follow_up_reasons() {
        let t = CesThreshold::DEFAULT;
        assert_eq!(score(Kind::Nps, 6).follow_up(t), Some(FollowUpReason::NpsDetractor));
        assert_eq!(score(Kind::Nps, 7).follow_up(t), None);
        assert_eq!(score(Kind::Csat, 2).follow_up(t), Some(FollowUpReason::CsatUnsatisfied));
        assert_eq!(score(Kind::Csat, 3).follow_up(t), None);
        assert_eq!(score(Kind::Ces, 2).follow_up(t), Some(FollowUpReason::CesHighEffort), "2 is difficult");
        assert_eq!(score(Kind::Ces, 3).follow_up(t), Some(FollowUpReason::CesHighEffort));
        assert_eq!(score(Kind::Ces, 4).follow_up(t), None);
        assert_eq!(score(Kind::Ces, 6).follow_up(t), None, "6 is easy");
        let four = CesThreshold::parse("t", 4).unwrap();
        assert_eq!(score(Kind::Ces, 4).follow_up(four), Some(FollowUpReason::CesHighEffort), "a setting");
        assert_eq!(score(Kind::Ces, 3).follow_up(CesThreshold::parse("t", 2).unwrap()), None);
        let custom = Questions::new(
            Kind::Custom,
            vec![Question {
                id: "stars".into(),
                text: "Stars?".into(),
                required: true,
                kind: QuestionKind::Rating { min: 1, max: 5 },
                show_if: None,
                primary: true,
            }],
            "",
        )
        .unwrap();
        let s = Score::of(&custom, &answers(&[("stars", Value::Rating(1))])).unwrap();
        assert_eq!(s.follow_up(t), None, "custom surveys open none");
    }

    #[test]
    fn complete_means_every_shown_required_question_answered() {
        let qs = questions(Kind::Nps);
        assert!(check_complete(&qs, &answers(&[("score", Value::Rating(10))])).is_ok(), "why is not shown");
        let err = check_complete(&qs, &answers(&[("score", Value::Rating(3))])).unwrap_err();
        assert_eq!(err, vec![FieldViolation::new("answers", "question \"why\" is required")]);
        assert_eq!(required_question(&err[0]), Some("why"), "read back by the survey page");
        assert_eq!(required_question(&FieldViolation::new("answers[0]", "question \"why\" is required")), None);
        assert_eq!(check_complete(&qs, &answers(&[])).unwrap_err().len(), 1, "the score itself");
        assert!(check_open("r", false).is_ok());
        assert!(matches!(check_open("r", true), Err(Error::FailedPrecondition(m)) if m.contains("complete")));
    }
}
