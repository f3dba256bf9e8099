//! Change notifications for `WatchKpis`: the event handler says which tenant's read model just
//! changed; watchers of that tenant recompute. In-process (each replica's watchers hear the
//! events that replica's consumer applies); watchers also recompute on a timer, so nothing is
//! missed when another replica applied the change.

use std::sync::OnceLock;

use clm_platform::TenantId;
use tokio::sync::broadcast;

fn channel() -> &'static broadcast::Sender<TenantId> {
    static TX: OnceLock<broadcast::Sender<TenantId>> = OnceLock::new();
    TX.get_or_init(|| broadcast::channel(1024).0)
}

/// The read model of `tenant` changed (called by the event handler).
pub fn touched(tenant: &TenantId) {
    let _ = channel().send(tenant.clone());
}

/// Hear about changes.
pub fn subscribe() -> broadcast::Receiver<TenantId> {
    channel().subscribe()
}
