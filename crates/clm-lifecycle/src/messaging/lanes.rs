//! How the sender keeps a slow destination from holding up the rest: one **lane** per kind of
//! destination — email (the one SMTP relay) and webhooks (every other delivery) — each with its
//! own loop and its own `messaging.concurrency` slots. A lane starts a due delivery whenever a
//! slot is free and never waits for a batch: a send that hangs until its timeout holds one slot,
//! not the lane, and never the other lane. Within a lane one tenant holds at most all slots but
//! one (with two or more), so another tenant's delivery finds a slot while one tenant's
//! endpoint hangs (several tenants hanging at once can fill a lane until their timeouts).
//!
//! The tenant's per-minute budget (`messaging.tenant_messages_per_minute`) is shared by the
//! lanes: its attempts in the last minute (in the database, every replica's) plus what this
//! replica has in flight for it, in either lane. A delivery over it is still leased and put
//! back for a second later, saying why (`Sender::take`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clm_platform::{Error, TenantId};
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

use super::sender::Sender;
use crate::store::messaging::{self as q, DueFilter};
use crate::store::now_micros;

/// Rows a lane reads per look at the queue.
const SCAN: u64 = 100;

/// Deliveries this replica has taken and not yet recorded, per tenant, across lanes.
#[derive(Debug, Default)]
struct InFlight(Mutex<HashMap<TenantId, u64>>);

impl InFlight {
    fn of(&self, tenant: &TenantId) -> u64 {
        self.0.lock().expect("in-flight lock").get(tenant).copied().unwrap_or(0)
    }

    /// Count one for `tenant` until the guard is dropped (after the outcome was committed, so
    /// an attempt is never missed by both counts at once).
    fn enter(self: &Arc<Self>, tenant: &TenantId) -> Guard {
        *self.0.lock().expect("in-flight lock").entry(tenant.clone()).or_default() += 1;
        Guard { inflight: self.clone(), tenant: tenant.clone() }
    }
}

struct Guard {
    inflight: Arc<InFlight>,
    tenant: TenantId,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut map = self.inflight.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.tenant);
            }
        }
    }
}

/// Run the sender's lanes until `stop`; then wait for the sends in flight (they are leased:
/// left behind, they would only go again after the lease).
pub fn spawn(sender: Sender, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let sender = Arc::new(sender);
    let inflight = Arc::new(InFlight::default());
    tokio::spawn(async move {
        let email = Lane::new(true, sender.clone(), inflight.clone());
        let webhooks = Lane::new(false, sender, inflight);
        tokio::join!(email.run(stop.clone()), webhooks.run(stop));
    })
}

struct Lane {
    email: bool,
    sender: Arc<Sender>,
    inflight: Arc<InFlight>,
    slots: usize,
    /// The most slots of this lane one tenant may hold.
    per_tenant: usize,
    tasks: JoinSet<()>,
    /// What each running task sends: (delivery id, tenant).
    running: HashMap<Id, (String, String)>,
}

impl Lane {
    fn new(email: bool, sender: Arc<Sender>, inflight: Arc<InFlight>) -> Self {
        let slots = sender.config.concurrency.max(1);
        let per_tenant = if slots > 1 { slots - 1 } else { 1 };
        Self { email, sender, inflight, slots, per_tenant, tasks: JoinSet::new(), running: HashMap::new() }
    }

    fn name(&self) -> &'static str {
        if self.email { "email" } else { "webhook" }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let wake = self.sender.wake.clone();
        loop {
            // Listen for a wake-up before looking, so one that comes while we look is kept.
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            while let Some(done) = self.tasks.try_join_next_with_id() {
                self.finished(done);
            }
            let wait = if self.tasks.len() < self.slots {
                self.fill().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, lane = self.name(), "delivery queue unreadable");
                    self.sender.config.poll
                })
            } else {
                self.sender.config.poll
            };
            tokio::select! {
                Some(done) = self.tasks.join_next_with_id() => self.finished(done),
                () = tokio::time::sleep(wait) => {},
                () = &mut woken => {},
                _ = stop.changed() => break,
            }
        }
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.finished(done);
        }
    }

    fn finished(&mut self, done: Result<(Id, ()), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                tracing::error!(error = %e, lane = self.name(), "a delivery task failed; the delivery stays leased");
                e.id()
            }
        };
        self.running.remove(&id);
    }

    /// Start due deliveries in the free slots; how long to wait before looking again (unless a
    /// send ends or a delivery is queued first).
    async fn fill(&mut self) -> Result<Duration, Error> {
        let now = now_micros();
        let mut held: HashMap<String, usize> = HashMap::new();
        for (_, tenant) in self.running.values() {
            *held.entry(tenant.clone()).or_default() += 1;
        }
        let skip_ids: Vec<String> = self.running.values().map(|(id, _)| id.clone()).collect();
        let skip_tenants: Vec<String> =
            held.iter().filter(|(_, n)| **n >= self.per_tenant).map(|(t, _)| t.clone()).collect();
        let filter = DueFilter { email: self.email, skip_ids: &skip_ids, skip_tenants: &skip_tenants };
        let due = q::due(&self.sender.db, filter, now, SCAN).await?;
        let limit = self.sender.config.tenant_per_minute;
        // Each tenant's budget: its per-minute limit less its attempts in the last minute and
        // what this replica has in flight for it (the other lane and other replicas may together
        // overshoot by what they start at the same instant).
        let mut budgets: HashMap<String, u64> = HashMap::new();
        let mut capped = false;
        for d in due {
            if self.tasks.len() >= self.slots {
                break;
            }
            let Ok(tenant) = TenantId::parse(&d.tenant_id) else { continue };
            let holding = held.entry(d.tenant_id.clone()).or_default();
            if *holding >= self.per_tenant {
                capped = true;
                continue;
            }
            let allowed = if limit == 0 {
                true
            } else {
                if !budgets.contains_key(&d.tenant_id) {
                    let used = q::attempts_since(&self.sender.db, &tenant, now - 60_000_000).await?
                        + self.inflight.of(&tenant);
                    budgets.insert(d.tenant_id.clone(), limit.saturating_sub(used));
                }
                let budget = budgets.get_mut(&d.tenant_id).expect("just inserted");
                let ok = *budget > 0;
                *budget = budget.saturating_sub(1);
                ok
            };
            *holding += 1;
            let guard = self.inflight.enter(&tenant);
            let sender = self.sender.clone();
            let (id, tenant_id) = (d.id.clone(), d.tenant_id.clone());
            let task = self.tasks.spawn(async move {
                let id = d.id.clone();
                if let Err(e) = sender.take(d, allowed).await {
                    tracing::warn!(error = %e, delivery = %id, "delivery not processed; it stays queued");
                }
                drop(guard);
            });
            self.running.insert(task.id(), (id, tenant_id));
        }
        if self.tasks.len() >= self.slots {
            return Ok(self.sender.config.poll);
        }
        if capped {
            // A tenant reached its share of the slots: look again now, without its deliveries.
            return Ok(Duration::ZERO);
        }
        let next = q::next_due(&self.sender.db, filter, now_micros()).await?.map_or(self.sender.config.poll, |t| {
            Duration::from_micros(u64::try_from(t - now_micros()).unwrap_or(0)).min(self.sender.config.poll)
        });
        Ok(next)
    }
}
