//! The survey page over real HTTP (`clm_testkit::http::request`), contacts and feedback in one
//! process, on SQLite and PostgreSQL: an invitation's link shows every question type as an
//! accessible form and records nothing, `?score=N` pre-selects the score, a POST records through
//! SubmitResponse's path (the response over gRPC, the invitation answered, ResponseSubmitted and
//! a follow-up), refused answers come back with 422 beside their questions, the token works
//! once, an expired one says so (410), a forged one is the 404 page. Once, in headless Chromium
//! (a screenshot kept as a test artifact).

use std::path::PathBuf;
use std::time::Duration;

use clm_contacts::ContactsService;
use clm_feedback::FeedbackService;
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::feedback::v1 as pb;
use clm_proto::feedback::v1::feedback_service_client::FeedbackServiceClient;
use clm_testkit::http::{Answer, request};
use clm_testkit::{self as testing, Backend, BearerInterceptor, TestDb, TestServer};
use sea_orm::ConnectionTrait;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Ch = InterceptedService<Channel, BearerInterceptor>;
type Fb = FeedbackServiceClient<Ch>;
type Ct = ContactsServiceClient<Ch>;

const FORM: [(&str, &str); 1] = [("content-type", "application/x-www-form-urlencoded")];

struct Env {
    server: TestServer,
    dbs: Vec<TestDb>,
    feedback_db: sea_orm::DatabaseConnection,
    f: Fb,
    c: Ct,
}

impl Env {
    async fn start(backend: Backend, label: &str) -> Option<Env> {
        let cdb = TestDb::create(backend, &format!("{label}c")).await?;
        let fdb = TestDb::create(backend, &format!("{label}f")).await?;
        let settings = testing::settings(&[
            ("CLM_CONTACTS__DATABASE_URL", cdb.url.as_str()),
            ("CLM_FEEDBACK__DATABASE_URL", fdb.url.as_str()),
            ("CLM_FEEDBACK__SCHEDULER_INTERVAL_MS", "3600000"),
        ]);
        let feedback_db = clm_platform::db::connect(&fdb.url, &settings.database).await.unwrap();
        let server = testing::spawn_pair::<ContactsService, FeedbackService>(settings).await;
        let ch = server.authed(&testing::token("acme", "clm.admin")).await;
        let (mut f, c) = (FeedbackServiceClient::new(ch.clone()), ContactsServiceClient::new(ch));
        // Several invitations per contact in a test.
        let mut s = f.get_feedback_settings(pb::GetFeedbackSettingsRequest {}).await.unwrap().into_inner();
        let mut s = s.feedback_settings.take().unwrap();
        s.throttle_window = Some(prost_types::Duration::default());
        f.update_feedback_settings(pb::UpdateFeedbackSettingsRequest {
            feedback_settings: Some(s),
            update_mask: Some(prost_types::FieldMask { paths: vec!["throttle_window".into()] }),
        })
        .await
        .unwrap();
        Some(Env { server, dbs: vec![cdb, fdb], feedback_db, f, c })
    }

    async fn contact(&mut self, email: &str) -> String {
        let contact = cpb::Contact { email: email.into(), ..Default::default() };
        let req = cpb::CreateContactRequest { contact: Some(contact), request_id: String::new() };
        self.c.create_contact(req).await.unwrap().into_inner().contact.unwrap().id
    }

    async fn survey(&mut self, kind: pb::SurveyKind, questions: Vec<pb::Question>) -> pb::Survey {
        let survey = pb::Survey {
            display_name: format!("{kind:?} survey"),
            kind: kind as i32,
            questions,
            status: pb::SurveyStatus::Active as i32,
            ..Default::default()
        };
        let req = pb::CreateSurveyRequest { survey: Some(survey), ..Default::default() };
        self.f.create_survey(req).await.unwrap().into_inner().survey.unwrap()
    }

    /// An invitation of `contact` to `survey` and its page's URL.
    async fn invite(&mut self, survey: &str, contact: &str) -> (pb::Invitation, String) {
        let req = pb::CreateInvitationRequest {
            survey_id: survey.into(),
            contact_id: contact.into(),
            request_id: String::new(),
        };
        let inv = self.f.create_invitation(req).await.unwrap().into_inner().invitation.expect("invited");
        let url = format!("{}/s/{}", self.server.pages_url(), inv.token);
        (inv, url)
    }

    async fn responses(&mut self, survey: &str) -> Vec<pb::Response> {
        let req = pb::ListResponsesRequest { filter: format!("survey_id = \"{survey}\""), ..Default::default() };
        self.f.list_responses(req).await.unwrap().into_inner().responses
    }

    async fn invitation(&mut self, id: &str) -> pb::Invitation {
        self.f
            .get_invitation(pb::GetInvitationRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .invitation
            .unwrap()
    }

    /// ResponseSubmitted events in feedback's outbox.
    async fn submitted(&self) -> usize {
        use clm_proto::events::v1::EventEnvelope;
        use clm_proto::events::v1::event_envelope::Payload;
        let stmt =
            sea_orm::Statement::from_string(self.feedback_db.get_database_backend(), "SELECT payload FROM outbox");
        let rows = self.feedback_db.query_all_raw(stmt).await.unwrap();
        rows.iter()
            .filter(|r| {
                let bytes: Vec<u8> = r.try_get("", "payload").unwrap();
                let e: EventEnvelope = prost::Message::decode(bytes.as_slice()).unwrap();
                matches!(e.payload, Some(Payload::ResponseSubmitted(_)))
            })
            .count()
    }

    async fn done(self) {
        self.server.stop().await.unwrap();
        for db in self.dbs {
            db.cleanup().await;
        }
    }
}

fn question(id: &str, text: &str, required: bool, kind: pb::question::Kind) -> pb::Question {
    pb::Question { id: id.into(), text: text.into(), required, kind: Some(kind), ..Default::default() }
}

fn choice(multiple: bool, choices: &[(&str, &str)]) -> pb::question::Kind {
    pb::question::Kind::Choice(pb::ChoiceQuestion {
        choices: choices.iter().map(|(id, text)| pb::Choice { id: (*id).into(), text: (*text).into() }).collect(),
        multiple,
    })
}

/// An NPS survey with every question type: the score (added by feedback), a free text asked of
/// detractors, several choices, one choice, a labelled rating.
fn nps_questions() -> Vec<pb::Question> {
    let mut why = question(
        "why",
        "What should we improve?",
        true,
        pb::question::Kind::FreeText(pb::FreeTextQuestion { max_length: 200 }),
    );
    why.show_if = Some(pb::ShowIf { question_id: "score".into(), rating_min: 0, rating_max: 6, ..Default::default() });
    vec![
        why,
        question(
            "topics",
            "Which topics matter to you?",
            false,
            choice(true, &[("speed", "Speed"), ("price", "Price")]),
        ),
        question(
            "channel",
            "How should we reach you?",
            true,
            choice(false, &[("email", "By email"), ("phone", "By phone")]),
        ),
        question(
            "effort",
            "How easy was checkout?",
            false,
            pb::question::Kind::Rating(pb::RatingQuestion {
                min: 1,
                max: 7,
                min_label: "Very hard".into(),
                max_label: "Very easy".into(),
            }),
        ),
    ]
}

/// Every answer keeps its URL's token private and loads nothing from anywhere.
fn assert_private(a: &Answer) {
    assert_eq!(a.header("cache-control"), Some("no-store"), "{a:?}");
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{a:?}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{a:?}");
    assert_eq!(a.header("x-frame-options"), Some("DENY"), "{a:?}");
    let csp = a.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'; style-src 'sha256-") && csp.contains("form-action 'self'"), "{csp}");
}

/// A whole page: private, in a language, readable on a phone, nothing external, no script.
fn assert_page(a: &Answer) {
    assert_private(a);
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"), "{a:?}");
    assert!(a.body.starts_with("<!DOCTYPE html>") && a.body.contains("<html lang=\"en\">"), "{}", a.body);
    assert!(a.body.contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#));
    assert!(!a.body.contains("<script") && !a.body.contains("http"), "nothing external: {}", a.body);
}

/// How many inputs of the page are checked.
fn checked(a: &Answer) -> usize {
    a.body.matches(" checked").count()
}

async fn the_survey_page_takes_one_answer(backend: Backend) {
    let Some(mut env) = Env::start(backend, "fbpage").await else { return };
    let ana = env.contact("ana@example.com").await;
    let survey = env.survey(pb::SurveyKind::Nps, nps_questions()).await;
    let (inv, url) = env.invite(&survey.id, &ana).await;

    // GET: every question in order, each a fieldset with its legend and labelled inputs.
    let got = request("GET", &url, &[], b"").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_page(&got);
    let html = &got.body;
    assert!(html.contains("<h1>Nps survey</h1>") && html.contains(r#"<form method="post">"#), "{html}");
    let legends: Vec<usize> =
        ["1. How likely", "2. What should we improve?", "3. Which topics", "4. How should we reach", "5. How easy"]
            .iter()
            .map(|l| html.find(&format!("-legend\">{l}")).unwrap_or_else(|| panic!("{l}: {html}")))
            .collect();
    assert!(legends.is_sorted(), "in the survey's order: {legends:?}");
    assert_eq!(html.matches("<fieldset").count(), 5);
    for n in 0..=10 {
        let radio = format!(r#"<label><input type="radio" name="score" value="{n}" required><span>{n}</span></label>"#);
        assert!(html.contains(&radio), "{radio}: {html}");
    }
    assert!(html.contains("0 = Not at all likely, 10 = Extremely likely"), "the scale's ends: {html}");
    assert!(html.contains("1 = Very hard, 7 = Very easy"), "a rating's own labels: {html}");
    assert!(
        html.contains(r#"<textarea name="why" rows="4" aria-labelledby="q-why-legend" maxlength="200">"#),
        "{html}"
    );
    assert!(html.contains("Answer this if your answer to question 1 was 0 to 6."), "skip logic in words: {html}");
    assert!(html.contains(r#"<input type="checkbox" name="topics" value="speed"> Speed</label>"#), "{html}");
    assert!(html.contains(r#"<input type="radio" name="channel" value="email" required> By email</label>"#), "{html}");
    assert!(html.contains(r#"<input type="radio" name="effort" value="7"><span>7</span>"#), "{html}");
    assert!(html.contains(
        "How likely are you to recommend us to a friend or colleague? <span class=\"req\">(required)</span>"
    ));
    assert_eq!(checked(&got), 0);

    // ?score=N (the email's one-click) pre-selects the score when on the scale; nothing is
    // recorded by any GET (mail scanners open links).
    let one_click = request("GET", &format!("{url}?score=9"), &[], b"").await;
    assert_eq!(one_click.status, 200);
    assert!(one_click.body.contains(r#"value="9" checked required><span>9</span>"#), "{}", one_click.body);
    assert_eq!(checked(&one_click), 1);
    for bad in ["11", "-1", "nine", ""] {
        let got = request("GET", &format!("{url}?score={bad}"), &[], b"").await;
        assert_eq!((got.status.as_u16(), checked(&got)), (200, 0), "score={bad} is ignored");
    }
    assert!(env.responses(&survey.id).await.is_empty(), "a GET records nothing");
    assert_eq!(env.invitation(&inv.id).await.status, pb::InvitationStatus::Pending as i32);

    // Answers SubmitResponse refuses: the form again (422), what was entered kept, each
    // message beside its question; nothing recorded.
    let missing = request("POST", &url, &FORM, b"score=3&channel=email&why=&topics=price").await;
    assert_eq!(missing.status, 422, "{missing:?}");
    assert_page(&missing);
    let body = &missing.body;
    assert!(body.contains(r#"<p class="error" id="q-why-error">Please answer this question.</p>"#), "{body}");
    assert!(body.contains(r##"<a href="#q-why">Question 2: Please answer this question.</a>"##), "{body}");
    assert!(body.contains(r#"aria-describedby="q-why-when q-why-error""#), "{body}");
    assert!(body.contains(r#"value="3" checked required>"#) && body.contains(r#"value="email" checked required>"#));
    assert!(body.contains(r#"value="price" checked>"#), "{body}");
    let long = format!("score=3&channel=email&why={}&topics=nope", "x".repeat(201));
    let refused = request("POST", &url, &FORM, long.as_bytes()).await;
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(refused.body.contains("At most 200 characters."), "{}", refused.body);
    assert!(refused.body.contains("Unknown choice &quot;nope&quot;."), "{}", refused.body);
    assert!(refused.body.contains(&format!(">{}</textarea>", "x".repeat(201))), "the text is kept");
    let unreadable = request("POST", &url, &FORM, b"score=ten&channel=email").await;
    assert_eq!(unreadable.status, 422);
    assert!(unreadable.body.contains("Choose one of the numbers."), "{}", unreadable.body);
    assert!(env.responses(&survey.id).await.is_empty());
    assert_eq!(env.submitted().await, 0);

    // A good POST: recorded through SubmitResponse's path.
    let body = "score=3&why=Checkout+is+slow+%26+fiddly&topics=speed&topics=price&channel=email&effort=2&stray=1";
    let done = request("POST", &url, &FORM, body.as_bytes()).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_page(&done);
    assert!(done.body.contains("Thank you for your answers"), "{}", done.body);
    let responses = env.responses(&survey.id).await;
    assert_eq!(responses.len(), 1);
    let r = &responses[0];
    assert!(r.complete && r.has_score && r.score == 3, "{r:?}");
    assert_eq!((r.invitation_id.as_str(), r.contact_id.as_str()), (inv.id.as_str(), ana.as_str()));
    assert_eq!(r.band, pb::ScoreBand::Detractor as i32);
    let answers: Vec<(String, pb::answer::Value)> =
        r.answers.iter().map(|a| (a.question_id.clone(), a.value.clone().unwrap())).collect();
    use pb::answer::Value as V;
    let choices = |c: &[&str]| V::Choices(pb::ChoiceAnswer { choice_ids: c.iter().map(|s| (*s).to_owned()).collect() });
    assert_eq!(
        answers,
        vec![
            ("score".into(), V::Rating(3)),
            ("why".into(), V::Text("Checkout is slow & fiddly".into())),
            ("topics".into(), choices(&["speed", "price"])),
            ("channel".into(), choices(&["email"])),
            ("effort".into(), V::Rating(2)),
        ]
    );
    let got = env.f.get_response(pb::GetResponseRequest { id: r.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.response.as_ref(), Some(r));
    assert_eq!(env.invitation(&inv.id).await.status, pb::InvitationStatus::Responded as i32, "the token is used");
    assert_eq!(env.submitted().await, 1, "ResponseSubmitted published");
    let follow_ups = env.f.list_follow_ups(pb::ListFollowUpsRequest::default()).await.unwrap().into_inner();
    assert_eq!(follow_ups.follow_ups.len(), 1, "a detractor's follow-up");
    assert_eq!(follow_ups.follow_ups[0].response_id, r.id);

    // Single use: the link again shows that we have the answer, and records nothing.
    for method in ["POST", "GET"] {
        let again = request(method, &url, &FORM, b"score=10&channel=phone").await;
        assert_eq!(again.status, 200, "{method}: {again:?}");
        assert_page(&again);
        assert!(again.body.contains("we already have your answer"), "{}", again.body);
    }
    assert_eq!(env.responses(&survey.id).await.len(), 1);
    assert_eq!(env.submitted().await, 1, "no second response");

    // An expired link says so (410), GET and POST, and records nothing.
    let bob = env.contact("bob@example.com").await;
    let (late, late_url) = env.invite(&survey.id, &bob).await;
    let sql = format!("UPDATE invitations SET expire_time = 1 WHERE id = '{}'", late.id);
    env.feedback_db.execute_unprepared(&sql).await.unwrap();
    for method in ["GET", "POST"] {
        let gone = request(method, &late_url, &FORM, b"score=9&channel=email").await;
        assert_eq!(gone.status, 410, "{method}: {gone:?}");
        assert_page(&gone);
        assert!(gone.body.contains("This survey link has expired"), "{}", gone.body);
    }
    assert_eq!(env.responses(&survey.id).await.len(), 1);

    // A forged or edited token is the same 404 page as an unknown path.
    let unknown = request("GET", &format!("{}/nothing-here", env.server.pages_url()), &[], b"").await;
    assert_eq!(unknown.status, 404);
    let (id, sig) = inv.token.split_once('.').unwrap();
    let flipped = if sig.ends_with('A') { 'B' } else { 'A' };
    let other_id = uuid::Uuid::now_v7().simple().to_string();
    let forged =
        [format!("{id}.{}{flipped}", &sig[..sig.len() - 1]), id.to_owned(), format!("{other_id}.{sig}"), "x.y".into()];
    for token in &forged {
        for method in ["GET", "POST"] {
            let got = request(method, &format!("{}/s/{token}", env.server.pages_url()), &FORM, b"score=9").await;
            assert_eq!(got.status, 404, "{method} {token}: {got:?}");
            assert_eq!(got.body, unknown.body, "nothing tells a forged link from an unknown path");
            assert_page(&got);
        }
    }

    // CSAT and CES: their scales, with their ends.
    let carol = env.contact("carol@example.com").await;
    for (kind, scale, ends) in [
        (pb::SurveyKind::Csat, 1..=5, "1 = Very unsatisfied, 5 = Very satisfied"),
        (pb::SurveyKind::Ces, 1..=7, "1 = Very difficult, 7 = Very easy"),
    ] {
        let s = env.survey(kind, vec![]).await;
        let (_, url) = env.invite(&s.id, &carol).await;
        let got = request("GET", &format!("{url}?score=2"), &[], b"").await;
        assert_eq!(got.status, 200);
        assert!(got.body.contains(ends), "{}", got.body);
        assert_eq!(got.body.matches(r#"type="radio" name="score""#).count(), scale.clone().count(), "{kind:?}");
        assert!(got.body.contains(r#"value="2" checked required><span>2</span>"#), "{}", got.body);
        let over = request("GET", &format!("{url}?score={}", scale.end() + 1), &[], b"").await;
        assert_eq!(checked(&over), 0, "off the {kind:?} scale");
    }
    env.done().await;
}

clm_testkit::backend_tests!(the_survey_page_takes_one_answer);

/// Where test artifacts are kept: `$CARGO_TARGET_DIR/test-artifacts` (or the target directory
/// this test binary was built in).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        // target/<profile>/deps/<test binary>
        || std::env::current_exe().unwrap().ancestors().nth(3).expect("the target directory").to_path_buf(),
        PathBuf::from,
    );
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run headless Chromium with `args` (a fresh profile), killed after a minute: its exit status,
/// stdout and stderr.
async fn chromium(args: &[&str], profile: &std::path::Path) -> (std::process::ExitStatus, String, String) {
    let out = profile.join("stdout");
    let err = profile.join("stderr");
    let mut child = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.join("profile").display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("chromium starts");
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within a minute: {args:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read = |p: &std::path::Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    (status, read(&out), read(&err))
}

/// The page as a phone shows it (390×844), in a real browser: a screenshot kept at
/// `$CARGO_TARGET_DIR/test-artifacts/survey-page.png`, and the DOM the browser built has the
/// score's radios.
#[tokio::test]
async fn the_survey_page_renders_in_headless_chromium() {
    if std::process::Command::new("chromium").arg("--version").output().is_err() {
        eprintln!("SKIPPED: `chromium` is not installed (apt-get install chromium; .ci/run installs it)");
        return;
    }
    let Some(mut env) = Env::start(Backend::Sqlite, "fbchrome").await else { return };
    let ana = env.contact("ana@example.com").await;
    let why = question(
        "why",
        "What is the main reason for your score?",
        false,
        pb::question::Kind::FreeText(pb::FreeTextQuestion { max_length: 1000 }),
    );
    let survey = env.survey(pb::SurveyKind::Nps, vec![why]).await;
    let (_, url) = env.invite(&survey.id, &ana).await;
    let url = format!("{url}?score=9");
    let profile = tempfile::tempdir().unwrap();
    let png = artifacts().join("survey-page.png");
    let _ = std::fs::remove_file(&png);

    let shot = format!("--screenshot={}", png.display());
    let (status, _, err) = chromium(&["--window-size=390,844", &shot, &url], profile.path()).await;
    assert!(status.success(), "chromium --screenshot: {err}");
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(bytes.len() > 10_000, "a page, not a blank: {} bytes", bytes.len());

    let (status, dom, err) = chromium(&["--dump-dom", &url], profile.path()).await;
    assert!(status.success(), "chromium --dump-dom: {err}");
    assert_eq!(dom.matches(r#"type="radio" name="score""#).count(), 11, "{dom}");
    assert!(dom.contains(r#"value="9" checked="#) || dom.contains(r#"value="9" checked"#), "{dom}");
    assert!(dom.contains("<textarea name=\"why\""), "{dom}");
    eprintln!("screenshot: {}", png.display());
    env.done().await;
}
