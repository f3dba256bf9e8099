//! Change notifications for `WatchKpis`: the event handler says which tenant's read model just
//! changed; watchers of that tenant recompute. In-process (each replica's watchers hear the
//! events that replica's consumer applies); watchers also recompute on a timer, so nothing is
//! missed when another replica applied the change.

use std::sync::OnceLock;

use tokio::sync::broadcast;

fn channel() -> &'static broadcast::Sender<String> {
    static TX: OnceLock<broadcast::Sender<String>> = OnceLock::new();
    TX.get_or_init(|| broadcast::channel(1024).0)
}

/// The read model of `tenant` changed (called by the event handler).
pub fn touched(tenant: &str) {
    let _ = channel().send(tenant.to_owned());
}

/// Hear about changes.
pub fn subscribe() -> broadcast::Receiver<String> {
    channel().subscribe()
}
