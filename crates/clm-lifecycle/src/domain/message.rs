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
/// Top-level names: the objects above, and `unsubscribe_url` (emails only).
pub const ROOTS: &[&str] = &["contact", "stage", "delivery", "unsubscribe_url"];

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
    }
    .to_value()
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

    #[test]
    fn missing_attributes_render_empty() {
        let t = "[{{ contact.attributes.nothing }}][{{ contact.company }}]";
        assert_eq!(render(t, Escape::Text, &ctx(None)).unwrap(), "[][]");
    }
}
