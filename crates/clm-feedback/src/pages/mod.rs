//! Feedback's hosted page (`clm_platform::pages`): the survey of an invitation,
//! `{messaging.public_url}/s/<token>` (docs/messaging.md § The survey page).
//!
//! - `GET /s/{token}` shows the survey as one form. **It records nothing**, not even with
//!   `?score=N` (the email's one-click answer): mail scanners and link previews open links by
//!   themselves, so the score is pre-selected (when on the primary question's scale) and the
//!   respondent sends it with the form, adding a comment if they like.
//! - `POST /s/{token}` (a form, `application/x-www-form-urlencoded`) answers through
//!   SubmitResponse's own path (`FeedbackApi::submit_link`): the same checks, the response
//!   stored complete, the invitation answered (the token is used up), ResponseSubmitted published
//!   and a follow-up opened for an unhappy score. Answers SubmitResponse refuses come back as the
//!   form again (422), what was entered kept and each message next to its question.
//!
//! A token used up shows "we already have your answer" (and records nothing more); one past
//! its expiry, or of a cancelled invitation or a survey no longer active, a page saying so
//! (410). A token that does not verify is the platform's 404 page, the same as an unknown path.

mod form;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use clm_platform::Error;
use clm_platform::pages::{not_found, page, unavailable};
use http::{StatusCode, Uri};

use crate::api::{FeedbackApi, LinkState, SurveyLink};

/// The routes feedback adds to the process's hosted pages (`Shared::add_pages`).
pub fn router(api: FeedbackApi) -> Router {
    Router::new().route("/s/{token}", get(show).post(answer)).with_state(api)
}

/// The link's survey, or the page to answer instead.
async fn open(api: &FeedbackApi, token: &str) -> Result<SurveyLink, Response> {
    match api.open_link(token).await {
        Ok(Some(link)) if link.state == LinkState::Open => Ok(link),
        Ok(Some(link)) => Err(closed(link.state)),
        Ok(None) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "survey link not opened");
            Err(unavailable())
        }
    }
}

/// The page of a link that takes no answer now.
fn closed(state: LinkState) -> Response {
    match state {
        LinkState::Answered => page(
            StatusCode::OK,
            "Thank you",
            "<h1>Thank you, we already have your answer</h1>\n\
             <p>This survey was answered with this link, which works once. Nothing more was recorded.</p>\n\
             <p class=\"note\">You can close this page.</p>",
        ),
        LinkState::Expired => page(
            StatusCode::GONE,
            "Survey link expired",
            "<h1>This survey link has expired</h1>\n\
             <p>The survey could be answered until a date that has passed. Thank you for your time.</p>",
        ),
        LinkState::Closed | LinkState::Open => page(
            StatusCode::GONE,
            "Survey closed",
            "<h1>This survey is closed</h1>\n<p>It no longer takes answers. Thank you for your time.</p>",
        ),
    }
}

fn form_page(status: StatusCode, link: &SurveyLink, values: &form::Values, errors: &form::Errors) -> Response {
    page(status, &link.survey.display_name, &form::render(&link.survey, values, errors))
}

/// The survey form; nothing is recorded.
async fn show(State(api): State<FeedbackApi>, Path(token): Path<String>, uri: Uri) -> Response {
    let link = match open(&api, &token).await {
        Ok(link) => link,
        Err(page) => return page,
    };
    let mut values = form::values_of(&link.answers);
    form::preselect(&link.survey, uri.query(), &mut values);
    form_page(StatusCode::OK, &link, &values, &form::Errors::new())
}

/// Record the answers (once) and thank, or show the form again with what to fix.
async fn answer(State(api): State<FeedbackApi>, Path(token): Path<String>, body: Bytes) -> Response {
    let link = match open(&api, &token).await {
        Ok(link) => link,
        Err(page) => return page,
    };
    let (answers, values, unreadable) = form::read(&link.survey, &body);
    if !unreadable.is_empty() {
        return form_page(StatusCode::UNPROCESSABLE_ENTITY, &link, &values, &unreadable);
    }
    match api.submit_link(&link.tenant, &token, answers.clone()).await {
        Ok(done) => {
            let response = done.response.unwrap_or_default();
            tracing::info!(
                tenant = %link.tenant, invitation_id = %link.invitation_id, response_id = %response.id,
                "survey answered on its page"
            );
            page(
                StatusCode::OK,
                "Thank you",
                "<h1>Thank you for your answers</h1>\n<p>They have been recorded.</p>\n\
                 <p class=\"note\">You can close this page.</p>",
            )
        }
        Err(Error::InvalidArgument(violations)) => {
            form_page(StatusCode::UNPROCESSABLE_ENTITY, &link, &values, &form::place(&violations, &answers))
        }
        // Answered, expired or closed in the meantime (a double submit): say which.
        Err(e) => match api.open_link(&token).await {
            Ok(Some(now)) if now.state != LinkState::Open => closed(now.state),
            _ => {
                tracing::error!(tenant = %link.tenant, invitation_id = %link.invitation_id, error = %e, "survey answer not recorded");
                unavailable()
            }
        },
    }
}
