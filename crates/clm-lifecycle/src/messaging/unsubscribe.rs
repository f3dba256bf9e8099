//! Unsubscribes: a contact used a message's unsubscribe link (the hosted page's form, or a mail
//! client's RFC 8058 one-click POST). [`record`] is the one path that suppresses: the
//! suppression (the sender skips the contact at once, before contacts has heard of it) and the
//! `UnsubscribeRecorded` event (contacts withdraws the consent) in one unit of work.

use clm_platform::convert::timestamp;
use clm_platform::events::UnitOfWork;
use clm_platform::{Error, TenantId};
use clm_proto::events::v1 as ev;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::links::Unsubscribe;
use crate::publish::Publisher;
use crate::store::entities::suppression;
use crate::store::{self, now_micros};

/// Record what `link` stands for, for `tenant` (the link's, already checked). `true` when it
/// is news: the first unsubscribe of that contact from that channel and purpose, or one through
/// another delivery's link than the one recorded (a new decision: its time replaces the old
/// one, so it wins over a consent granted in between). The same link used again (a mail
/// client's one-click and then the page, a double click) changes nothing and publishes nothing.
pub async fn record(
    db: &DatabaseConnection,
    publisher: &Publisher,
    tenant: &TenantId,
    link: &Unsubscribe,
) -> Result<bool, Error> {
    let now = now_micros();
    let row = suppression::Model {
        id: Uuid::now_v7().to_string(),
        tenant_id: tenant.as_str().to_owned(),
        contact_id: link.c.clone(),
        channel: link.ch.clone(),
        purpose: link.p.clone(),
        delivery_id: link.d.clone(),
        create_time: now,
    };
    let work = UnitOfWork::begin(db).await?;
    let news = store::messaging::suppress(&work, row.clone()).await?
        || store::messaging::resuppress(&work, tenant, &row).await?;
    if news {
        let event = ev::UnsubscribeRecorded {
            contact_id: link.c.clone(),
            channel: link.ch.clone(),
            purpose: link.p.clone(),
            delivery_id: link.d.clone(),
            unsubscribe_time: Some(timestamp(now)),
        };
        publisher.unsubscribed(&work, tenant, event, now).await?;
    }
    work.commit().await?;
    Ok(news)
}
