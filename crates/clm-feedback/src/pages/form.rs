//! The survey form: a survey's questions as one HTML form (what was entered, and errors next to
//! their questions), and a posted form read back into answers. Only the shape is read here (a
//! rating is a number, empty is unanswered); the rules are SubmitResponse's
//! (`domain::survey::check_answers`, `domain::response::check_complete`).

use std::collections::HashMap;
use std::fmt::Write as _;

use clm_platform::FieldViolation;
use clm_platform::pages::escape;
use clm_proto::feedback::v1 as pb;
use pb::question::Kind;

use crate::domain::response::required_question;

/// What the form shows in each field: question id → the values entered (a rating's number, the
/// choices picked, the text).
pub type Values = HashMap<String, Vec<String>>;

/// Messages to show: question id → message; `""` for the form as a whole.
pub type Errors = Vec<(String, String)>;

/// The values of stored answers (a partial response continued on the page).
pub fn values_of(answers: &[pb::Answer]) -> Values {
    answers
        .iter()
        .filter_map(|a| {
            let v = match a.value.as_ref()? {
                pb::answer::Value::Rating(r) => vec![r.to_string()],
                pb::answer::Value::Choices(c) => c.choice_ids.clone(),
                pb::answer::Value::Text(t) => vec![t.clone()],
            };
            Some((a.question_id.clone(), v))
        })
        .collect()
}

/// `?score=N` (the email's one-click): pre-select N for the primary question when it is on
/// that question's scale; anything else is ignored.
pub fn preselect(survey: &pb::Survey, query: Option<&str>, values: &mut Values) {
    let Some(query) = query else { return };
    let Some(score) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "score")
        .and_then(|(_, v)| v.parse::<i32>().ok())
    else {
        return;
    };
    let Some(q) = survey.questions.iter().find(|q| q.primary) else { return };
    if let Some(Kind::Rating(r)) = &q.kind
        && (r.min..=r.max).contains(&score)
    {
        values.insert(q.id.clone(), vec![score.to_string()]);
    }
}

/// A posted form (`application/x-www-form-urlencoded`) as answers in question order, the form's
/// values (to show again) and what could not be read as an answer at all (a rating that is not a
/// number). Empty fields are unanswered; fields of no question are ignored.
pub fn read(survey: &pb::Survey, body: &[u8]) -> (Vec<pb::Answer>, Values, Errors) {
    let mut values = Values::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        values.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    let mut answers = Vec::new();
    let mut errors = Errors::new();
    for q in &survey.questions {
        let given: Vec<&String> = values.get(&q.id).into_iter().flatten().filter(|v| !v.trim().is_empty()).collect();
        if given.is_empty() {
            continue;
        }
        let value = match &q.kind {
            Some(Kind::Rating(_)) => match given[0].trim().parse::<i32>() {
                Ok(r) => pb::answer::Value::Rating(r),
                Err(_) => {
                    errors.push((q.id.clone(), "Choose one of the numbers.".into()));
                    continue;
                }
            },
            Some(Kind::Choice(_)) => {
                pb::answer::Value::Choices(pb::ChoiceAnswer { choice_ids: given.into_iter().cloned().collect() })
            }
            _ => pb::answer::Value::Text(given[0].clone()),
        };
        answers.push(pb::Answer { question_id: q.id.clone(), value: Some(value) });
    }
    (answers, values, errors)
}

/// SubmitResponse's field violations for `answers` (as [`read`] made them) placed next to their
/// questions.
pub fn place(violations: &[FieldViolation], answers: &[pb::Answer]) -> Errors {
    violations
        .iter()
        .map(|v| {
            if let Some(q) = required_question(v) {
                return (q.to_owned(), "Please answer this question.".to_owned());
            }
            let at = v
                .field
                .strip_prefix("answers[")
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(i, _)| i.parse::<usize>().ok())
                .and_then(|i| answers.get(i));
            let mut message = v.description.clone();
            if let Some(first) = message.get(..1) {
                message.replace_range(..1, &first.to_uppercase());
            }
            if !message.ends_with('.') {
                message.push('.');
            }
            (at.map(|a| a.question_id.clone()).unwrap_or_default(), message)
        })
        .collect()
}

/// The ends of a rating scale: its labels, or the standard ones of the survey's primary
/// question.
fn ends(survey: &pb::Survey, q: &pb::Question, r: &pb::RatingQuestion) -> (String, String) {
    if !r.min_label.is_empty() || !r.max_label.is_empty() {
        return (r.min_label.clone(), r.max_label.clone());
    }
    let standard = match pb::SurveyKind::try_from(survey.kind) {
        _ if !q.primary => ("", ""),
        Ok(pb::SurveyKind::Nps) => ("Not at all likely", "Extremely likely"),
        Ok(pb::SurveyKind::Csat) => ("Very unsatisfied", "Very satisfied"),
        Ok(pb::SurveyKind::Ces) => ("Very difficult", "Very easy"),
        _ => ("", ""),
    };
    (standard.0.to_owned(), standard.1.to_owned())
}

/// When a question with skip logic is asked, in words.
fn condition(survey: &pb::Survey, s: &pb::ShowIf) -> Option<String> {
    let (n, on) = survey.questions.iter().enumerate().find(|(_, q)| q.id == s.question_id)?;
    let n = n + 1;
    Some(match &on.kind {
        Some(Kind::Choice(c)) => {
            let texts: Vec<String> = s
                .choice_ids
                .iter()
                .map(|id| {
                    c.choices
                        .iter()
                        .find(|x| &x.id == id)
                        .map_or(id.clone(), |x| if x.text.is_empty() { x.id.clone() } else { x.text.clone() })
                })
                .collect();
            format!("Answer this if you chose {} in question {n}.", texts.join(" or "))
        }
        _ => format!("Answer this if your answer to question {n} was {} to {}.", s.rating_min, s.rating_max),
    })
}

/// The form page's body: the survey's questions in order, each a `<fieldset>` with its
/// `<legend>`, showing `values` and `errors`.
pub fn render(survey: &pb::Survey, values: &Values, errors: &Errors) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "<h1>{}</h1>", escape(&survey.display_name));
    if !errors.is_empty() {
        let _ = writeln!(
            out,
            "<div class=\"errors\" role=\"alert\" aria-labelledby=\"errors-title\">\n\
             <h2 id=\"errors-title\">Please check your answers</h2>\n<ul>"
        );
        for (q, message) in errors {
            let n = survey.questions.iter().position(|x| &x.id == q);
            match n {
                Some(n) => {
                    let _ = writeln!(
                        out,
                        "<li><a href=\"#q-{}\">Question {}: {}</a></li>",
                        escape(q),
                        n + 1,
                        escape(message)
                    );
                }
                None => {
                    let _ = writeln!(out, "<li>{}</li>", escape(message));
                }
            }
        }
        out.push_str("</ul>\n</div>\n");
    }
    out.push_str(
        "<p class=\"note\">Questions marked <span class=\"req\">(required)</span> need an answer.</p>\n\
         <form method=\"post\">\n",
    );
    for (i, q) in survey.questions.iter().enumerate() {
        question(&mut out, survey, i + 1, q, values.get(&q.id).map_or(&[][..], Vec::as_slice), errors);
    }
    out.push_str("<button type=\"submit\">Send my answers</button>\n</form>");
    out
}

/// One question as a `<fieldset>`.
fn question(out: &mut String, survey: &pb::Survey, n: usize, q: &pb::Question, values: &[String], errors: &Errors) {
    let id = escape(&q.id);
    let conditional = q.show_if.as_ref().filter(|s| !s.question_id.is_empty());
    // A question behind skip logic is shown always and required only when it applies, which
    // the browser cannot know: the server says so (422) if it was needed.
    let required_attr = if q.required && conditional.is_none() { " required" } else { "" };
    let mut described = Vec::new();
    let mut notes = String::new();
    if let Some(s) = conditional.and_then(|s| condition(survey, s)) {
        let _ = writeln!(notes, "<p class=\"hint\" id=\"q-{id}-when\">{}</p>", escape(&s));
        described.push(format!("q-{id}-when"));
    }
    if let Some(Kind::Rating(r)) = &q.kind {
        let (lo, hi) = ends(survey, q, r);
        if !lo.is_empty() || !hi.is_empty() {
            let _ = writeln!(
                notes,
                "<p class=\"hint\" id=\"q-{id}-scale\">{} = {}, {} = {}</p>",
                r.min,
                escape(&lo),
                r.max,
                escape(&hi)
            );
            described.push(format!("q-{id}-scale"));
        }
    }
    for (_, message) in errors.iter().filter(|(e, _)| e == &q.id) {
        let _ = writeln!(notes, "<p class=\"error\" id=\"q-{id}-error\">{}</p>", escape(message));
        described.push(format!("q-{id}-error"));
    }
    let describedby =
        if described.is_empty() { String::new() } else { format!(" aria-describedby=\"{}\"", described.join(" ")) };
    let required = if q.required { " <span class=\"req\">(required)</span>" } else { "" };
    let _ = writeln!(
        out,
        "<fieldset id=\"q-{id}\"{describedby}>\n<legend id=\"q-{id}-legend\">{n}. {}{required}</legend>\n{notes}",
        escape(&q.text)
    );
    let checked = |v: &str| if values.iter().any(|x| x == v) { " checked" } else { "" };
    match &q.kind {
        Some(Kind::Rating(r)) => {
            out.push_str("<div class=\"scale\">\n");
            for v in r.min..=r.max {
                let v = v.to_string();
                let _ = writeln!(
                    out,
                    "<label><input type=\"radio\" name=\"{id}\" value=\"{v}\"{}{required_attr}><span>{v}</span></label>",
                    checked(&v)
                );
            }
            out.push_str("</div>\n");
        }
        Some(Kind::Choice(c)) => {
            let (kind, required_attr) = if c.multiple { ("checkbox", "") } else { ("radio", required_attr) };
            out.push_str("<div class=\"choices\">\n");
            for choice in &c.choices {
                let text = if choice.text.is_empty() { &choice.id } else { &choice.text };
                let _ = writeln!(
                    out,
                    "<label><input type=\"{kind}\" name=\"{id}\" value=\"{}\"{}{required_attr}> {}</label>",
                    escape(&choice.id),
                    checked(&choice.id),
                    escape(text)
                );
            }
            out.push_str("</div>\n");
        }
        Some(Kind::FreeText(f)) => {
            let max = if f.max_length > 0 { format!(" maxlength=\"{}\"", f.max_length) } else { String::new() };
            let _ = writeln!(
                out,
                "<textarea name=\"{id}\" rows=\"4\" aria-labelledby=\"q-{id}-legend\"{max}{required_attr}>{}</textarea>",
                escape(values.first().map_or("", String::as_str))
            );
        }
        None => {}
    }
    out.push_str("</fieldset>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survey() -> pb::Survey {
        let rating = pb::RatingQuestion { min: 0, max: 10, ..Default::default() };
        let why = pb::FreeTextQuestion { max_length: 20 };
        pb::Survey {
            display_name: "Pulse & <co>".into(),
            kind: pb::SurveyKind::Nps as i32,
            questions: vec![
                pb::Question {
                    id: "score".into(),
                    text: "Recommend?".into(),
                    required: true,
                    kind: Some(Kind::Rating(rating)),
                    primary: true,
                    ..Default::default()
                },
                pb::Question {
                    id: "why".into(),
                    text: "Why?".into(),
                    kind: Some(Kind::FreeText(why)),
                    show_if: Some(pb::ShowIf {
                        question_id: "score".into(),
                        rating_min: 0,
                        rating_max: 6,
                        ..Default::default()
                    }),
                    required: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_score_of_a_link_is_preselected_when_on_the_scale() {
        let s = survey();
        for (query, want) in
            [(Some("score=7"), Some("7")), (Some("score=11"), None), (Some("score=x"), None), (None, None)]
        {
            let mut v = Values::new();
            preselect(&s, query, &mut v);
            assert_eq!(v.get("score").map(|x| x[0].as_str()), want, "{query:?}");
        }
    }

    #[test]
    fn a_posted_form_reads_back_in_question_order() {
        let s = survey();
        let (answers, values, errors) = read(&s, b"why=too+slow&score=3&other=1");
        assert!(errors.is_empty());
        assert_eq!(answers.iter().map(|a| a.question_id.as_str()).collect::<Vec<_>>(), ["score", "why"]);
        assert_eq!(values["why"], ["too slow"]);
        let (answers, _, errors) = read(&s, b"score=ten&why=");
        assert!(answers.is_empty(), "nothing readable, and an empty text is no answer");
        assert_eq!(errors[0].0, "score");
    }

    #[test]
    fn violations_land_next_to_their_question() {
        let s = survey();
        let (answers, _, _) = read(&s, b"score=3&why=xxxxxxxxxxxxxxxxxxxxxxxxxx");
        let placed = place(
            &[
                FieldViolation::new("answers[1].text", "at most 20 characters"),
                FieldViolation::new("answers", "question \"why\" is required"),
            ],
            &answers,
        );
        assert_eq!(placed[0], ("why".to_owned(), "At most 20 characters.".to_owned()));
        assert_eq!(placed[1], ("why".to_owned(), "Please answer this question.".to_owned()));
    }

    #[test]
    fn the_form_is_labelled_and_escaped() {
        let s = survey();
        let mut v = Values::new();
        v.insert("score".into(), vec!["9".into()]);
        v.insert("why".into(), vec!["</textarea><b>".into()]);
        let html = render(&s, &v, &vec![("why".into(), "Please answer this question.".into())]);
        assert!(html.contains("<h1>Pulse &amp; &lt;co&gt;</h1>"), "{html}");
        assert!(
            html.contains("<legend id=\"q-score-legend\">1. Recommend? <span class=\"req\">(required)</span></legend>")
        );
        assert!(html.contains("0 = Not at all likely, 10 = Extremely likely"), "{html}");
        assert!(html.contains("value=\"9\" checked required><span>9</span>"), "{html}");
        assert!(html.contains("&lt;/textarea&gt;&lt;b&gt;</textarea>"), "{html}");
        assert!(html.contains("Answer this if your answer to question 1 was 0 to 6."), "{html}");
        assert!(html.contains("<p class=\"error\" id=\"q-why-error\">Please answer this question.</p>"), "{html}");
        assert!(html.contains("<a href=\"#q-why\">Question 2: Please answer this question.</a>"), "{html}");
        assert!(!html.contains("maxlength=\"20\" required"), "required only when shown: {html}");
    }
}
