//! The ledger: what metrics has heard about each contact, as facts keyed by their id — its
//! stage transitions as lifecycle last published them (`ledger_transitions`; a retraction
//! deletes one) and its activity (`ledger_events`: purchases, referrals, reviews, survey
//! answers, other journey events) — plus `contact_facts`. A contact's contribution to the
//! aggregates is computed from these (`domain::contribution`), so it depends on the set of
//! facts, not on the order they arrived in.

use std::collections::HashMap;

use clm_platform::{Result, TenantId};
use sea_orm::ConnectionTrait;

use crate::domain::campaign::Enrolment;
use crate::domain::channel::Channel;
use crate::domain::contribution::{Activity, Category, Event, Facts, Money, Role, Survey, Transition};
use crate::store::sql::{Sql, exec, rows, v};

/// Most contact ids one statement binds.
pub const ID_CHUNK: usize = 2_000;

/// Everything known about one contact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Known {
    pub facts: Facts,
    pub transitions: Vec<Transition>,
    pub events: Vec<Event>,
}

/// What is known about each of `contacts` (every one of them gets an entry).
pub async fn load(db: &impl ConnectionTrait, tenant: &TenantId, contacts: &[String]) -> Result<HashMap<String, Known>> {
    let mut out: HashMap<String, Known> = contacts.iter().map(|c| (c.clone(), Known::default())).collect();
    for ids in contacts.chunks(ID_CHUNK) {
        let of = |cols: &str, table: &str| Sql::select(tenant, cols, table).and_in("contact_id", Some(ids));
        for r in rows(
            db,
            of(
                "contact_id, acquisition_channel, campaign, create_time, acquire_time, cost_currency, cost_micros",
                "contact_facts",
            ),
        )
        .await?
        {
            let id: String = r.try_get("", "contact_id")?;
            let cost = r
                .try_get::<Option<String>>("", "cost_currency")?
                .zip(r.try_get::<Option<i64>>("", "cost_micros")?)
                .map(|(currency, micros)| Money { currency, micros });
            if let Some(k) = out.get_mut(&id) {
                k.facts = Facts {
                    channel: Channel::from_key(&r.try_get::<String>("", "acquisition_channel")?),
                    campaign: r.try_get("", "campaign")?,
                    acquired: Some(
                        r.try_get::<Option<i64>>("", "acquire_time")?.unwrap_or(r.try_get::<i64>("", "create_time")?),
                    ),
                    cost,
                };
            }
        }
        for r in rows(
            db,
            of(
                "contact_id, transition_id, model_id, seq, at, from_stage, to_stage, to_category, to_role, position, \
                 reactivation",
                "ledger_transitions",
            ),
        )
        .await?
        {
            let id: String = r.try_get("", "contact_id")?;
            if let Some(k) = out.get_mut(&id) {
                k.transitions.push(Transition {
                    id: r.try_get("", "transition_id")?,
                    model: r.try_get("", "model_id")?,
                    seq: r.try_get("", "seq")?,
                    from_stage: r.try_get("", "from_stage")?,
                    at: r.try_get("", "at")?,
                    to_stage: r.try_get("", "to_stage")?,
                    to_category: Category::parse(&r.try_get::<String>("", "to_category")?),
                    to_role: Role::parse(&r.try_get::<String>("", "to_role")?),
                    position: r.try_get("", "position")?,
                    reactivation: r.try_get::<i64>("", "reactivation")? != 0,
                });
            }
        }
        for r in rows(db, of("contact_id, event_id, kind, at, amount, currency, score", "ledger_events")).await? {
            let id: String = r.try_get("", "contact_id")?;
            let kind: String = r.try_get("", "kind")?;
            let score = r.try_get::<Option<i64>>("", "score")?.unwrap_or(0);
            let what = match kind.as_str() {
                "purchase" => Activity::Purchase(Money {
                    currency: r.try_get("", "currency")?,
                    micros: r.try_get::<Option<i64>>("", "amount")?.unwrap_or(0),
                }),
                "referral" => Activity::Referral,
                "review" => Activity::Review,
                "nps" | "csat" | "ces" => {
                    Activity::Score { survey: Survey::parse(&kind), score: i32::try_from(score).unwrap_or(0) }
                }
                _ => Activity::Other,
            };
            if let Some(k) = out.get_mut(&id) {
                k.events.push(Event { id: r.try_get("", "event_id")?, at: r.try_get("", "at")?, what });
            }
        }
    }
    Ok(out)
}

/// Record a transition (again: its latest publication wins).
pub async fn put_transition(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str, t: &Transition) -> Result<()> {
    let cols = [
        "contact_id",
        "transition_id",
        "model_id",
        "seq",
        "at",
        "from_stage",
        "to_stage",
        "to_category",
        "to_role",
        "position",
        "reactivation",
    ];
    let q = Sql::insert(
        tenant,
        "ledger_transitions",
        &cols,
        [vec![
            v(contact),
            v(t.id.as_str()),
            v(t.model.as_str()),
            v(t.seq),
            v(t.at),
            v(t.from_stage.as_str()),
            v(t.to_stage.as_str()),
            v(t.to_category.key()),
            v(t.to_role.key()),
            v(t.position),
            v(i64::from(t.reactivation)),
        ]],
    )
    .then(
        " ON CONFLICT (tenant_id, contact_id, transition_id) DO UPDATE SET model_id = excluded.model_id, \
         seq = excluded.seq, at = excluded.at, from_stage = excluded.from_stage, to_stage = excluded.to_stage, \
         to_category = excluded.to_category, \
         to_role = excluded.to_role, position = excluded.position, reactivation = excluded.reactivation",
        [],
    );
    exec(db, q).await?;
    Ok(())
}

/// Forget a transition lifecycle retracted.
pub async fn retract_transition(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str, id: &str) -> Result<()> {
    exec(
        db,
        Sql::delete(tenant, "ledger_transitions").and("contact_id = ? AND transition_id = ?", [v(contact), v(id)]),
    )
    .await?;
    Ok(())
}

/// Record an activity (once per id).
pub async fn put_event(db: &impl ConnectionTrait, tenant: &TenantId, contact: &str, e: &Event) -> Result<()> {
    let (amount, currency, score) = match &e.what {
        Activity::Purchase(m) => (Some(m.micros), m.currency.as_str(), None),
        Activity::Score { score, .. } => (None, "", Some(i64::from(*score))),
        _ => (None, "", None),
    };
    let row = vec![v(contact), v(e.id.as_str()), v(e.what.kind()), v(e.at), v(amount), v(currency), v(score)];
    let cols = ["contact_id", "event_id", "kind", "at", "amount", "currency", "score"];
    let q = Sql::insert(tenant, "ledger_events", &cols, [row])
        .then(" ON CONFLICT (tenant_id, contact_id, event_id) DO NOTHING", []);
    exec(db, q).await?;
    Ok(())
}

/// Record that a purchase with this order id was counted; false when it was already (the same
/// sale: count it once).
pub async fn claim_order(db: &impl ConnectionTrait, tenant: &TenantId, order_id: &str) -> Result<bool> {
    let q = Sql::insert(tenant, "purchase_orders", &["order_id"], [vec![v(order_id)]])
        .then(" ON CONFLICT (tenant_id, order_id) DO NOTHING", []);
    let n = exec(db, q).await?;
    Ok(n == 1)
}

/// Remember a model's churn basis (`contribution::SPELL_BASES`) as of the model's `revision`
/// (lifecycle's; 0 when the event carried none): it replaces the stored one only when of the
/// same or a newer revision, so an older event consumed late (events about different contacts
/// and the model's own arrive in no set order) cannot restore an older setting.
pub async fn put_basis(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    model: &str,
    basis: &str,
    revision: i64,
) -> Result<()> {
    let cols = ["model_id", "spell_basis", "basis_revision"];
    let q = Sql::insert(tenant, "model_settings", &cols, [vec![v(model), v(basis), v(revision)]]).then(
        " ON CONFLICT (tenant_id, model_id) DO UPDATE SET spell_basis = excluded.spell_basis, \
         basis_revision = excluded.basis_revision WHERE model_settings.basis_revision <= excluded.basis_revision",
        [],
    );
    exec(db, q).await?;
    Ok(())
}

/// Remember a model's stage as events show it (position, category, role), for the funnel.
pub async fn put_stage(
    db: &impl ConnectionTrait,
    tenant: &TenantId,
    model: &str,
    stage: &str,
    position: i64,
    category: &str,
    role: &str,
) -> Result<()> {
    let cols = ["model_id", "stage_key", "position", "category", "role"];
    let q = Sql::insert(tenant, "model_stages", &cols, [vec![v(model), v(stage), v(position), v(category), v(role)]])
        .then(
            " ON CONFLICT (tenant_id, model_id, stage_key) DO UPDATE SET position = excluded.position, \
             category = excluded.category, role = excluded.role",
            [],
        );
    exec(db, q).await?;
    Ok(())
}

/// Record an enrolment as an event states it: the first statement of it inserts the row, an end
/// replaces the beginning, a beginning never replaces an end, and of two ends the later one
/// stays (`Enrolment::supersedes`), so any arrival order and any redelivery leave the same row.
/// The campaign's name is the one of its latest event (then the greatest, for a tie).
pub async fn put_enrolment(db: &impl ConnectionTrait, tenant: &TenantId, e: &Enrolment) -> Result<()> {
    let cols = ["enrolment_id", "contact_id", "campaign_id", "state", "converted", "enrol_time", "finish_time"];
    let row = vec![
        v(e.id.as_str()),
        v(e.contact.as_str()),
        v(e.campaign.as_str()),
        v(e.state.key()),
        v(i64::from(e.converted)),
        v(e.enrol_time),
        v(e.finish_time),
    ];
    let q = Sql::insert(tenant, "ledger_enrolments", &cols, [row]).then(
        " ON CONFLICT (tenant_id, enrolment_id) DO UPDATE SET contact_id = excluded.contact_id, \
         campaign_id = excluded.campaign_id, state = excluded.state, converted = excluded.converted, \
         enrol_time = excluded.enrol_time, finish_time = excluded.finish_time \
         WHERE excluded.state <> 'active' AND (ledger_enrolments.state = 'active' \
         OR (COALESCE(excluded.finish_time, 0), excluded.state, excluded.converted) \
         > (COALESCE(ledger_enrolments.finish_time, 0), ledger_enrolments.state, ledger_enrolments.converted))",
        [],
    );
    exec(db, q).await?;
    let at = e.finish_time.unwrap_or(e.enrol_time);
    let q = Sql::insert(
        tenant,
        "campaign_names",
        &["campaign_id", "display_name", "name_time"],
        [vec![v(e.campaign.as_str()), v(e.campaign_name.as_str()), v(at)]],
    )
    .then(
        " ON CONFLICT (tenant_id, campaign_id) DO UPDATE SET display_name = excluded.display_name, \
         name_time = excluded.name_time WHERE excluded.name_time > campaign_names.name_time \
         OR (excluded.name_time = campaign_names.name_time AND excluded.display_name > campaign_names.display_name)",
        [],
    );
    exec(db, q).await?;
    Ok(())
}
