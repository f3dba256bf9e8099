//! Lifecycle's hosted pages (`clm_platform::pages`): the unsubscribe link of every email,
//! `{messaging.public_url}/u/<token>`.
//!
//! - `GET /u/{token}` shows what the link unsubscribes from and a form to confirm it. It changes
//!   nothing: mail scanners and link previews open links by themselves.
//! - `POST /u/{token}` records the unsubscribe (`messaging::unsubscribe::record`) and answers the
//!   confirmation page. Mail clients send it themselves for the `List-Unsubscribe` header (RFC
//!   8058 one-click: body `List-Unsubscribe=One-Click`, form-urlencoded or multipart), and the
//!   page's form posts the same field. The signed token is the authority: the body is not
//!   needed, and not read. Using the link again shows the same page and records nothing new.
//!
//! A token that does not verify (edited, forged, another key's) is the platform's 404 page, the
//! same as an unknown path; nothing here says whether a contact exists.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use clm_platform::TenantId;
use clm_platform::pages::{escape, not_found, page, unavailable};
use http::StatusCode;
use sea_orm::DatabaseConnection;

use crate::messaging::links::{Links, Unsubscribe};
use crate::publish::Publisher;

/// What the pages need: the database, the key that checks links, the publisher.
#[derive(Clone, Debug)]
struct Pages {
    db: DatabaseConnection,
    links: Links,
    publisher: Publisher,
}

/// The routes lifecycle adds to the process's hosted pages (`Shared::add_pages`).
pub fn router(db: DatabaseConnection, links: Links, publisher: Publisher) -> Router {
    Router::new()
        .route(&format!("/u/{}", crate::messaging::links::PREVIEW), get(preview).post(preview))
        .route("/u/{token}", get(show).post(confirm))
        .with_state(Pages { db, links, publisher })
}

/// The link of a preview (RenderMessageTemplate): says what the real link does, records nothing.
async fn preview() -> Response {
    page(
        StatusCode::OK,
        "Unsubscribe (preview)",
        "<h1>Unsubscribe</h1>\n\
         <p>This is a preview. In a message that was sent, this link lets its recipient stop \
         receiving messages of its purpose, with one click or from this page.</p>\n\
         <p class=\"note\">Nothing was changed.</p>",
    )
}

/// A link's meaning and tenant when CLM made it for a channel and purpose it knows.
fn open(links: &Links, token: &str) -> Option<(TenantId, Unsubscribe, &'static str)> {
    let link = links.open(token)?;
    let tenant = TenantId::parse(&link.t).ok()?;
    let what = match (link.ch.as_str(), link.p.as_str()) {
        ("email", "marketing") => "marketing emails (news and offers)",
        ("email", "feedback") => "feedback emails (surveys and requests for your opinion)",
        ("email", "transactional") => "service emails about your account and orders",
        _ => return None,
    };
    Some((tenant, link, what))
}

/// The confirmation form; nothing is recorded.
async fn show(State(p): State<Pages>, Path(token): Path<String>) -> Response {
    let Some((_, _, what)) = open(&p.links, &token) else { return not_found() };
    let what = escape(what);
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<h1>Unsubscribe</h1>\n\
             <p id=\"what\">Stop receiving {what} at this address?</p>\n\
             <form method=\"post\">\n\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
             <button type=\"submit\" aria-describedby=\"what\">Unsubscribe</button>\n\
             </form>\n\
             <p class=\"note\">Nothing changes until you press the button.</p>"
        ),
    )
}

/// Record the unsubscribe (once) and confirm it.
async fn confirm(State(p): State<Pages>, Path(token): Path<String>) -> Response {
    let Some((tenant, link, what)) = open(&p.links, &token) else { return not_found() };
    match crate::messaging::unsubscribe::record(&p.db, &p.publisher, &tenant, &link).await {
        Ok(news) => {
            tracing::info!(tenant = %tenant, delivery_id = %link.d, purpose = %link.p, news, "unsubscribe recorded");
            let what = escape(what);
            page(
                StatusCode::OK,
                "You are unsubscribed",
                &format!(
                    "<h1>You are unsubscribed</h1>\n\
                     <p>You will no longer receive {what} at this address.</p>\n\
                     <p class=\"note\">You can close this page.</p>"
                ),
            )
        }
        Err(e) => {
            tracing::error!(tenant = %tenant, delivery_id = %link.d, error = %e, "unsubscribe not recorded");
            unavailable()
        }
    }
}
