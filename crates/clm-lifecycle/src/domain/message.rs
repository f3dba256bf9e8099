//! Message templates: the variables a template may name, the checks a template passes when it
//! is saved, and rendering for one contact. Templates are MiniJinja (Jinja2 syntax): values are
//! HTML-escaped in HTML bodies and JSON-encoded in webhook bodies; a missing value is undefined,
//! so `{{ contact.first_name | default("there") }}` reads naturally.

use std::sync::OnceLock;

use clm_platform::FieldViolation;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Value, json};

/// Longest template text, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Longest rendered message, in bytes (a template looping over data could grow without bound).
const MAX_RENDERED_BYTES: usize = 512 * 1024;

/// Fields of `contact` a template may name (`contact.attributes.<key>` for custom attributes).
pub const CONTACT_FIELDS: &[&str] = &[
    "id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "full_name",
    "given_name",
    "family_name",
    "company",
    "job_title",
    "locale",
    "country_code",
    "region",
    "city",
    "tags",
    "lead_score",
    "acquisition_channel",
    "acquisition_campaign",
    "attributes",
];
/// Fields of `stage` (the contact's current stage in the default model).
pub const STAGE_FIELDS: &[&str] = &["key", "name"];
/// Fields of `delivery`.
pub const DELIVERY_FIELDS: &[&str] = &["id"];
/// Fields of `survey` (deliveries of feedback survey invitations and reminders; undefined in
/// other messages). `scores` is a list of `{value, url}`: one-click answers for NPS, CSAT and
/// CES (empty for custom surveys).
pub const SURVEY_FIELDS: &[&str] = &["id", "invitation_id", "name", "kind", "url", "expire_time", "scores", "reminder"];
/// Top-level names: the objects above, and `unsubscribe_url` (emails only).
pub const ROOTS: &[&str] = &["contact", "stage", "delivery", "survey", "unsubscribe_url"];

/// How a template's values are escaped, by where its output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Plain text (subjects, text bodies): no escaping.
    Text,
    /// An HTML body: values HTML-escaped.
    Html,
    /// A JSON document (webhook bodies): values JSON-encoded (`{{ contact.email }}` renders
    /// `"ana@example.com"`, quotes included); the result must be valid JSON.
    Json,
}

impl Escape {
    fn name(self) -> &'static str {
        match self {
            Escape::Text => "t.txt",
            Escape::Html => "t.html",
            Escape::Json => "t.json",
        }
    }
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            // The names are ours (`Escape::name`), never a file's.
            match name {
                "t.html" => AutoEscape::Html,
                "t.json" => AutoEscape::Json,
                _ => AutoEscape::None,
            }
        });
        // A missing attribute (`contact.attributes.plan` a contact lacks) is undefined, never
        // an error at send time: names were checked when the template was saved.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(100_000));
        env
    })
}

/// Whether `path` (as MiniJinja names it: `contact.first_name`) is a variable templates may use.
fn known(path: &str) -> bool {
    let mut parts = path.splitn(3, '.');
    let root = parts.next().unwrap_or_default();
    let field = parts.next();
    let rest = parts.next();
    let fields: &[&str] = match root {
        "contact" => CONTACT_FIELDS,
        "stage" => STAGE_FIELDS,
        "delivery" => DELIVERY_FIELDS,
        "survey" => SURVEY_FIELDS,
        "unsubscribe_url" => return field.is_none(),
        _ => return false,
    };
    match (field, rest) {
        (None, _) => true,
        (Some(f), None) => fields.contains(&f),
        (Some(f), Some(_)) => root == "contact" && f == "attributes",
    }
}

/// The names a template may use, for error messages.
fn known_list() -> String {
    let mut out: Vec<String> = CONTACT_FIELDS.iter().map(|f| format!("contact.{f}")).collect();
    out.extend(STAGE_FIELDS.iter().map(|f| format!("stage.{f}")));
    out.extend(DELIVERY_FIELDS.iter().map(|f| format!("delivery.{f}")));
    out.extend(SURVEY_FIELDS.iter().map(|f| format!("survey.{f}")));
    out.push("unsubscribe_url".into());
    out.join(", ")
}

/// Check a template text when it is saved: size, syntax, every variable known, and a render
/// with sample data (unknown filters, invalid JSON). `field` names it in the violation.
pub fn check(field: &str, source: &str, escape: Escape) -> Result<(), FieldViolation> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(FieldViolation::new(field, format!("at most {MAX_TEMPLATE_BYTES} bytes")));
    }
    let template = env()
        .template_from_named_str(escape.name(), source)
        .map_err(|e| FieldViolation::new(field, format!("template syntax error: {}", describe(&e))))?;
    let mut unknown: Vec<String> = template.undeclared_variables(true).into_iter().filter(|v| !known(v)).collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(FieldViolation::new(
            field,
            format!("unknown variable {}; templates may use {}", unknown.join(", "), known_list()),
        ));
    }
    render(source, escape, &sample()).map_err(|e| FieldViolation::new(field, e))?;
    Ok(())
}

/// Render `source` over `context` (see [`context`]). `Err` says why, in words.
pub fn render(source: &str, escape: Escape, context: &Value) -> Result<String, String> {
    let template = env()
        .template_from_named_str(escape.name(), source)
        .map_err(|e| format!("template syntax error: {}", describe(&e)))?;
    let out = template.render(context).map_err(|e| format!("template error: {}", describe(&e)))?;
    if out.len() > MAX_RENDERED_BYTES {
        return Err(format!("the rendered message is over {MAX_RENDERED_BYTES} bytes"));
    }
    if escape == Escape::Json && !out.trim().is_empty() {
        serde_json::from_str::<Value>(&out).map_err(|e| format!("renders to invalid JSON: {e}"))?;
    }
    Ok(out)
}

/// A one-line subject: line breaks (which could smuggle a header) become spaces.
pub fn one_line(s: &str) -> String {
    s.split(['\r', '\n']).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ").trim().to_owned()
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(detail) = e.detail() {
        s = format!("{s}: {detail}");
    }
    if let Some(line) = e.line() {
        s = format!("{s} (line {line})");
    }
    s
}

/// What fills a template for one contact and one delivery.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The contact's fields, named as in [`CONTACT_FIELDS`]; empty values left out (undefined).
    pub contact: serde_json::Map<String, Value>,
    /// The contact's current stage: key and display name.
    pub stage: Option<(String, String)>,
    pub delivery_id: String,
    /// Emails only.
    pub unsubscribe_url: Option<String>,
    /// A survey invitation's variables ([`SurveyInvite::variables`]).
    pub survey: Option<Value>,
}

impl Context {
    pub fn to_value(&self) -> Value {
        let mut root = serde_json::Map::new();
        root.insert("contact".into(), Value::Object(self.contact.clone()));
        if let Some((key, name)) = &self.stage {
            root.insert("stage".into(), json!({ "key": key, "name": name }));
        }
        root.insert("delivery".into(), json!({ "id": self.delivery_id }));
        if let Some(url) = &self.unsubscribe_url {
            root.insert("unsubscribe_url".into(), Value::String(url.clone()));
        }
        if let Some(survey) = &self.survey {
            root.insert("survey".into(), survey.clone());
        }
        Value::Object(root)
    }

    /// The body of a webhook template without a body of its own.
    pub fn default_webhook_body(&self, template_id: &str) -> String {
        let mut doc = json!({
            "delivery_id": self.delivery_id,
            "template_id": template_id,
            "contact": self.contact,
        });
        if let Some((key, name)) = &self.stage {
            doc["stage"] = json!({ "key": key, "name": name });
        }
        if let Some(survey) = &self.survey {
            doc["survey"] = survey.clone();
        }
        doc.to_string()
    }
}

/// Every variable filled, for the check at save time.
fn sample() -> Value {
    let mut contact = serde_json::Map::new();
    for f in CONTACT_FIELDS {
        let v = match *f {
            "tags" => json!(["vip"]),
            "lead_score" => json!(50),
            "attributes" => json!({ "plan": "pro" }),
            _ => json!("sample"),
        };
        contact.insert((*f).to_owned(), v);
    }
    Context {
        contact,
        stage: Some(("retention".into(), "Retention".into())),
        delivery_id: "00000000-0000-0000-0000-000000000000".into(),
        unsubscribe_url: Some("https://example.com/u/sample".into()),
        survey: Some(
            SurveyInvite {
                invitation_id: "00000000-0000-0000-0000-000000000001".into(),
                survey_id: "00000000-0000-0000-0000-000000000002".into(),
                name: "Sample survey".into(),
                kind: "nps".into(),
                token: "sample".into(),
                expire_time: 0,
                reminder: 1,
            }
            .variables("https://example.com/s/sample"),
        ),
    }
    .to_value()
}

/// What a survey invitation's delivery carries beyond the contact (stored with the delivery,
/// from feedback's SurveyRequested).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SurveyInvite {
    pub invitation_id: String,
    pub survey_id: String,
    pub name: String,
    /// "nps", "csat", "ces" or "custom".
    pub kind: String,
    /// The invitation's single-use response token.
    pub token: String,
    /// When the invitation expires, µs.
    pub expire_time: i64,
    /// 0: the invitation; n: its n-th reminder.
    pub reminder: i32,
}

impl SurveyInvite {
    /// The score scale of a one-click answer, by kind (custom surveys have none).
    pub fn scale(&self) -> Option<std::ops::RangeInclusive<i32>> {
        match self.kind.as_str() {
            "nps" => Some(0..=10),
            "csat" => Some(1..=5),
            "ces" => Some(1..=7),
            _ => None,
        }
    }

    /// The `survey.*` variables, the survey page being at `url`; a score link is
    /// `<url>?score=N`.
    pub fn variables(&self, url: &str) -> Value {
        let scores: Vec<Value> = self
            .scale()
            .into_iter()
            .flatten()
            .map(|n| json!({ "value": n, "url": format!("{url}?score={n}") }))
            .collect();
        let expire = chrono::DateTime::from_timestamp_micros(self.expire_time)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        json!({
            "id": self.survey_id,
            "invitation_id": self.invitation_id,
            "name": self.name,
            "kind": self.kind,
            "url": url,
            "expire_time": expire,
            "scores": scores,
            "reminder": self.reminder,
        })
    }
}

/// Lifecycle's own survey invitation, used when a survey names no message template: an email
/// (purpose FEEDBACK) rendered by the same engine as every template. Plain, accessible HTML
/// (a language, a title, real links with labels, no images) and a text part with the same
/// links.
pub mod survey_invitation {
    /// The subject.
    pub const SUBJECT: &str =
        "{% if survey.reminder %}Reminder: {% endif %}{{ survey.name }}: we would like your feedback";

    /// The HTML body.
    pub const HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ survey.name }}</title>
</head>
<body style="margin:0;padding:24px;background:#f4f4f4;color:#1a1a1a;font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5;">
<div role="article" aria-label="{{ survey.name }}" style="max-width:560px;margin:0 auto;background:#ffffff;padding:24px;border-radius:8px;">
<p>Hi {{ contact.first_name | default("there") }},</p>
{% if survey.reminder %}<p>A quick reminder: we would still love to hear from you.</p>
{% endif %}<h1 style="font-size:20px;margin:16px 0;">{{ survey.name }}</h1>
{% if survey.scores %}<p id="question">{% if survey.kind == "nps" %}How likely are you to recommend us to a friend or colleague?{% elif survey.kind == "csat" %}How satisfied are you with us?{% else %}How easy was it to get what you needed?{% endif %} Choose a number to answer:</p>
<table role="presentation" aria-describedby="question" style="border-collapse:separate;border-spacing:4px;">
<tr>
{% for s in survey.scores %}<td><a href="{{ s.url }}" aria-label="{{ s.value }} out of {{ (survey.scores | last).value }}" style="display:inline-block;min-width:36px;padding:10px 0;text-align:center;border:1px solid #5a5a5a;border-radius:4px;color:#1a1a1a;text-decoration:none;font-weight:bold;">{{ s.value }}</a></td>
{% endfor %}</tr>
</table>
<p style="font-size:14px;color:#4a4a4a;">{% if survey.kind == "nps" %}0 = not at all likely, 10 = extremely likely.{% elif survey.kind == "csat" %}1 = very unsatisfied, 5 = very satisfied.{% else %}1 = very difficult, 7 = very easy.{% endif %}</p>
{% endif %}<p><a href="{{ survey.url }}" style="display:inline-block;padding:12px 20px;background:#1a56db;color:#ffffff;text-decoration:none;border-radius:4px;font-weight:bold;">{% if survey.scores %}Open the survey{% else %}Answer the survey{% endif %}</a></p>
<p style="font-size:14px;color:#4a4a4a;">This link is yours alone{% if survey.expire_time %} and works until {{ survey.expire_time[:10] }}{% endif %}. Thank you for your time.</p>
<hr style="border:none;border-top:1px solid #dddddd;margin:24px 0;">
<p style="font-size:13px;color:#4a4a4a;">You receive this because you agreed to be asked for feedback. <a href="{{ unsubscribe_url }}" style="color:#1a56db;">Unsubscribe from feedback emails</a>.</p>
</div>
</body>
</html>
"#;

    /// The text body.
    pub const TEXT: &str = r#"Hi {{ contact.first_name | default("there") }},
{% if survey.reminder %}
A quick reminder: we would still love to hear from you.
{% endif %}
{{ survey.name }}
{% if survey.scores %}
{% if survey.kind == "nps" %}How likely are you to recommend us to a friend or colleague? (0 = not at all likely, 10 = extremely likely){% elif survey.kind == "csat" %}How satisfied are you with us? (1 = very unsatisfied, 5 = very satisfied){% else %}How easy was it to get what you needed? (1 = very difficult, 7 = very easy){% endif %}
Open the link of your answer:
{% for s in survey.scores %}  {{ s.value }}: {{ s.url }}
{% endfor %}{% endif %}
Answer the survey: {{ survey.url }}
{% if survey.expire_time %}The link is yours alone and works until {{ survey.expire_time[:10] }}.
{% endif %}
Thank you for your time.

--
You receive this because you agreed to be asked for feedback.
Unsubscribe from feedback emails: {{ unsubscribe_url }}
"#;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(first: Option<&str>) -> Value {
        let mut contact = serde_json::Map::new();
        if let Some(f) = first {
            contact.insert("first_name".into(), json!(f));
        }
        contact.insert("email".into(), json!("ana@example.com"));
        contact.insert("attributes".into(), json!({ "plan": "pro" }));
        Context {
            contact,
            stage: Some(("conversion".into(), "Conversion".into())),
            delivery_id: "d1".into(),
            unsubscribe_url: Some("https://x/u/t".into()),
            survey: None,
        }
        .to_value()
    }

    #[test]
    fn default_fills_a_missing_name() {
        let t = r#"Hi {{ contact.first_name | default("there") }}"#;
        assert_eq!(render(t, Escape::Text, &ctx(None)).unwrap(), "Hi there");
        assert_eq!(render(t, Escape::Text, &ctx(Some("Ana"))).unwrap(), "Hi Ana");
    }

    #[test]
    fn html_bodies_escape_values_and_json_bodies_encode_them() {
        let c = ctx(Some("<b>Ana</b> & \"co\""));
        let html = render("<p>{{ contact.first_name }}</p>", Escape::Html, &c).unwrap();
        assert_eq!(html, "<p>&lt;b&gt;Ana&lt;&#x2f;b&gt; &amp; &quot;co&quot;</p>");
        let body = render(r#"{"name": {{ contact.first_name }}}"#, Escape::Json, &c).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["name"], "<b>Ana</b> & \"co\"");
        assert_eq!(render("{{ contact.first_name }}", Escape::Text, &c).unwrap(), "<b>Ana</b> & \"co\"");
    }

    #[test]
    fn unknown_variables_are_refused_naming_the_field() {
        let e = check("message_template.email.subject", "Hi {{ contact.frist_name }}", Escape::Text).unwrap_err();
        assert_eq!(e.field, "message_template.email.subject");
        assert!(e.description.contains("contact.frist_name"), "{}", e.description);
        assert!(check("f", "{{ customer.name }}", Escape::Text).is_err());
        assert!(check("f", "{{ stage.colour }}", Escape::Text).is_err());
        assert!(check("f", "{{ unsubscribe_url.x }}", Escape::Text).is_err());
    }

    #[test]
    fn known_variables_attributes_loops_and_sets_pass() {
        let t = "{% set n = contact.first_name | default('you') %}{{ n }} {{ contact.attributes.plan }} \
                 {% for t in contact.tags %}{{ t }}{% endfor %} {{ stage.name }} {{ delivery.id }} {{ unsubscribe_url }}";
        check("f", t, Escape::Html).unwrap();
    }

    #[test]
    fn syntax_errors_unknown_filters_and_bad_json_are_refused() {
        assert!(check("f", "Hi {{ contact.first_name ", Escape::Text).unwrap_err().description.contains("syntax"));
        assert!(check("f", "{{ contact.first_name | shout }}", Escape::Text).is_err());
        let e = check("f", r#"{"a": {{ contact.email }}"#, Escape::Json).unwrap_err();
        assert!(e.description.contains("JSON"), "{}", e.description);
        check("f", r#"{"a": {{ contact.email }}, "tags": {{ contact.tags }}}"#, Escape::Json).unwrap();
    }

    #[test]
    fn subjects_are_one_line() {
        assert_eq!(one_line("Hi\r\nBcc: x@y.z"), "Hi Bcc: x@y.z");
    }

    fn invite(kind: &str, reminder: i32) -> SurveyInvite {
        SurveyInvite {
            invitation_id: "i1".into(),
            survey_id: "s1".into(),
            name: "Quarterly <NPS>".into(),
            kind: kind.into(),
            token: "tok.en".into(),
            expire_time: 1_800_000_000_000_000,
            reminder,
        }
    }

    fn with_survey(s: &SurveyInvite) -> Value {
        let mut c = ctx(Some("Ana"));
        c["survey"] = s.variables("https://clm.example.com/s/tok.en");
        c
    }

    #[test]
    fn the_built_in_invitation_passes_the_save_checks() {
        check("subject", survey_invitation::SUBJECT, Escape::Text).unwrap();
        check("html", survey_invitation::HTML, Escape::Html).unwrap();
        check("text", survey_invitation::TEXT, Escape::Text).unwrap();
    }

    #[test]
    fn the_built_in_invitation_links_the_survey_and_each_score() {
        let c = with_survey(&invite("nps", 0));
        let html = render(survey_invitation::HTML, Escape::Html, &c).unwrap();
        assert!(html.contains("Quarterly &lt;NPS&gt;"), "{html}");
        for n in 0..=10 {
            assert!(
                html.contains(&format!("href=\"https:&#x2f;&#x2f;clm.example.com&#x2f;s&#x2f;tok.en?score={n}\"")),
                "{n}: {html}"
            );
        }
        assert!(html.contains("aria-label=\"10 out of 10\""), "{html}");
        assert!(html.contains("https:&#x2f;&#x2f;x&#x2f;u&#x2f;t"), "the unsubscribe link: {html}");
        assert!(html.contains("2027-01-15"), "the expiry date: {html}");
        assert!(!html.contains("Reminder"), "{html}");
        let text = render(survey_invitation::TEXT, Escape::Text, &c).unwrap();
        assert!(text.contains("  7: https://clm.example.com/s/tok.en?score=7\n"), "{text}");
        assert!(text.contains("Answer the survey: https://clm.example.com/s/tok.en\n"), "{text}");
        assert!(text.contains("Unsubscribe from feedback emails: https://x/u/t"), "{text}");
        let subject = render(survey_invitation::SUBJECT, Escape::Text, &c).unwrap();
        assert_eq!(subject, "Quarterly <NPS>: we would like your feedback");
    }

    #[test]
    fn scales_follow_the_kind_and_reminders_say_so() {
        let csat = invite("csat", 0).variables("u");
        assert_eq!(csat["scores"].as_array().unwrap().len(), 5);
        assert_eq!(csat["scores"][0], json!({ "value": 1, "url": "u?score=1" }));
        assert_eq!(invite("ces", 0).variables("u")["scores"].as_array().unwrap().len(), 7);
        let custom = with_survey(&invite("custom", 0));
        let html = render(survey_invitation::HTML, Escape::Html, &custom).unwrap();
        assert!(!html.contains("?score="), "{html}");
        assert!(html.contains("Answer the survey"), "{html}");
        let reminder = with_survey(&invite("nps", 1));
        let subject = render(survey_invitation::SUBJECT, Escape::Text, &reminder).unwrap();
        assert!(subject.starts_with("Reminder: "), "{subject}");
        assert!(render(survey_invitation::TEXT, Escape::Text, &reminder).unwrap().contains("A quick reminder"));
    }

    #[test]
    fn survey_variables_are_known() {
        check(
            "f",
            "{{ survey.name }} {{ survey.url }} {% for s in survey.scores %}{{ s.url }}{% endfor %}",
            Escape::Html,
        )
        .unwrap();
        assert!(check("f", "{{ survey.token }}", Escape::Text).is_err());
    }

    #[test]
    fn missing_attributes_render_empty() {
        let t = "[{{ contact.attributes.nothing }}][{{ contact.company }}]";
        assert_eq!(render(t, Escape::Text, &ctx(None)).unwrap(), "[][]");
    }
}
