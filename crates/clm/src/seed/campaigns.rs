//! The demo's campaign set, created before any contact so the seeded year enrols its contacts
//! as it is loaded: a welcome series on acquisition, a win-back on dormancy and a thank-you for
//! promoters. Each is the shape a marketer would build first (docs/campaigns.md): messages with
//! the contact's name and an unsubscribe link, a wait that ends early on the event it hopes
//! for, conversion counted where the campaign reached its goal.

use clm_proto::lifecycle::v1 as lpb;
use clm_proto::lifecycle::v1::campaign_step::Kind as Step;
use clm_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

use crate::client::Authed;

const DAY_SECONDS: i64 = 86_400;

/// Names of what was created, for the summary line.
pub const CAMPAIGNS: [&str; 3] = ["Welcome series", "Win-back", "Promoter thank-you"];

fn email(name: &str, subject: &str, paragraphs: &[&str]) -> lpb::MessageTemplate {
    let html = paragraphs.iter().fold(String::new(), |mut html, p| {
        html.push_str("<p>");
        html.push_str(p);
        html.push_str("</p>\n");
        html
    });
    let text = paragraphs.join("\n\n");
    lpb::MessageTemplate {
        display_name: name.into(),
        channel: lpb::MessageChannel::Email as i32,
        purpose: lpb::MessagePurpose::Marketing as i32,
        email: Some(lpb::EmailContent {
            subject: subject.into(),
            html_body: format!(
                "{html}<p style=\"font-size:12px;color:#666\">You get this because you signed up at Demo Shop. \
                 <a href=\"{{{{ unsubscribe_url }}}}\">Unsubscribe</a></p>\n"
            ),
            text_body: format!("{text}\n\n--\nUnsubscribe: {{{{ unsubscribe_url }}}}\n"),
            from_name: "Demo Shop".into(),
            reply_to: String::new(),
        }),
        ..Default::default()
    }
}

/// The same request id for the same demo resource on every run: a seed that failed half way
/// and runs again finds what it made (CLM replays the first answer) instead of making twice.
fn request_id(kind: &str, name: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("urn:clm:seed:{kind}:{name}").as_bytes()).to_string()
}

async fn template(l: &mut LifecycleServiceClient<Authed>, t: lpb::MessageTemplate) -> anyhow::Result<String> {
    let request_id = request_id("template", &t.display_name);
    let req = lpb::CreateMessageTemplateRequest { message_template: Some(t), request_id };
    let created = l.create_message_template(req).await?.into_inner().message_template;
    created.map(|t| t.id).ok_or_else(|| anyhow::anyhow!("CreateMessageTemplate answered no template"))
}

fn step(key: &str, kind: Step, next: &str) -> lpb::CampaignStep {
    lpb::CampaignStep { key: key.into(), kind: Some(kind), next: next.into() }
}

fn wait_for_purchase(days: i64, timeout_next: &str) -> Step {
    Step::Wait(lpb::WaitStep {
        duration: Some(prost_types::Duration { seconds: days * DAY_SECONDS, nanos: 0 }),
        until_event: "purchase".into(),
        timeout_next: timeout_next.into(),
    })
}

fn exit(converted: bool) -> Step {
    Step::Exit(lpb::ExitStep { converted })
}

/// Create campaign `name` unless the tenant has one by that name; whether it was created.
async fn campaign(
    l: &mut LifecycleServiceClient<Authed>,
    existing: &[String],
    name: &str,
    trigger: lpb::trigger::Kind,
    steps: Vec<lpb::CampaignStep>,
    exit_rules: Vec<lpb::ExitRule>,
) -> anyhow::Result<usize> {
    if existing.iter().any(|e| e == name) {
        return Ok(0);
    }
    let campaign = lpb::Campaign {
        display_name: name.into(),
        status: lpb::CampaignStatus::Active as i32,
        trigger: Some(lpb::Trigger { kind: Some(trigger) }),
        steps,
        exit_rules,
        ..Default::default()
    };
    let request_id = request_id("campaign", name);
    l.create_campaign(lpb::CreateCampaignRequest { campaign: Some(campaign), request_id }).await?;
    Ok(1)
}

/// Create the templates and those of the three active campaigns the tenant has not got (by
/// name: a second seed of the same tenant adds contacts, not a second set); how many were made.
pub async fn create(l: &mut LifecycleServiceClient<Authed>) -> anyhow::Result<usize> {
    let mut existing = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = l.list_campaigns(lpb::ListCampaignsRequest { page_size: 100, page_token }).await?.into_inner();
        existing.extend(page.campaigns.into_iter().map(|c| c.display_name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if CAMPAIGNS.iter().all(|name| existing.iter().any(|e| e == name)) {
        return Ok(0);
    }
    let hello = r#"Hi {{ contact.first_name | default("there") }},"#;
    let welcome = template(
        l,
        email(
            "Welcome",
            r#"Welcome to Demo Shop, {{ contact.first_name | default("friend") }}"#,
            &[hello, "thanks for joining us. Here is 10% off your first order: WELCOME10."],
        ),
    )
    .await?;
    let tips = template(
        l,
        email(
            "Getting started",
            "Three things our customers love",
            &[hello, "free returns for 60 days, delivery in two days, and a real person on the phone."],
        ),
    )
    .await?;
    let miss_you = template(
        l,
        email(
            "We miss you",
            r#"{{ contact.first_name | default("Hello") }}, it has been a while"#,
            &[hello, "we have not seen you for some time. Come back this week for 15% off: BACK15."],
        ),
    )
    .await?;
    let thanks = template(
        l,
        email(
            "Thank you, promoter",
            "Thank you for recommending us",
            &[hello, "thank you for your score. Share your link and you and a friend both get 20 EUR."],
        ),
    )
    .await?;

    let mut made = 0;
    // Welcome: the offer; three days for a first purchase, else the tips; done when they buy.
    made += campaign(
        l,
        &existing,
        CAMPAIGNS[0],
        lpb::trigger::Kind::StageEntered("acquisition".into()),
        vec![
            step("welcome", Step::SendMessage(welcome), "wait"),
            step("wait", wait_for_purchase(3, "tips"), "bought"),
            step("tips", Step::SendMessage(tips), ""),
            step("bought", exit(true), ""),
        ],
        vec![lpb::ExitRule { kind: Some(lpb::exit_rule::Kind::EnteredStage("conversion".into())), converted: true }],
    )
    .await?;
    // Win-back: an offer on going dormant; two weeks to come back; tagged if they do not.
    made += campaign(
        l,
        &existing,
        CAMPAIGNS[1],
        lpb::trigger::Kind::StageEntered("dormant".into()),
        vec![
            step("miss_you", Step::SendMessage(miss_you), "wait"),
            step("wait", wait_for_purchase(14, "unanswered"), "won_back"),
            step("unanswered", Step::AddTag("win-back-unanswered".into()), ""),
            step("won_back", exit(true), ""),
        ],
        // Back in any live stage (a reactivation) is a win; churned is not.
        ["acquisition", "conversion", "retention", "loyalty"]
            .into_iter()
            .map(|s| lpb::ExitRule { kind: Some(lpb::exit_rule::Kind::EnteredStage(s.into())), converted: true })
            .chain([lpb::ExitRule {
                kind: Some(lpb::exit_rule::Kind::EnteredStage("churned".into())),
                converted: false,
            }])
            .collect(),
    )
    .await?;
    // Promoters (NPS 9-10): a thank-you and the referral offer, once per contact.
    made += campaign(
        l,
        &existing,
        CAMPAIGNS[2],
        lpb::trigger::Kind::SurveyResponse(lpb::SurveyResponseTrigger {
            survey_kind: "nps".into(),
            min_score: 9,
            max_score: 10,
        }),
        vec![step("thanks", Step::SendMessage(thanks), "tag"), step("tag", Step::AddTag("promoter".into()), "")],
        Vec::new(),
    )
    .await?;
    Ok(made)
}
