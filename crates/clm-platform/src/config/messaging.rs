//! `[messaging]`: how lifecycle sends messages, and the rules its values must keep.

use serde::Deserialize;

use super::{ConfigError, MIN_HS256_SECRET_BYTES};

/// `[messaging]`: how lifecycle sends messages (docs/messaging.md).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// SMTP relay, lettre's URL form: `smtps://user:pass@host:465`,
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS), or `smtp://host:25` (no TLS: local
    /// development only). Empty: email goes to `mailbox_dir`, or, with that empty too, email
    /// deliveries wait and are retried, saying so.
    pub smtp_url: String,
    /// With no `smtp_url`: write each email to this directory as `<delivery id>.eml` instead of
    /// sending it (the development profile sets `data/mailbox`: `make run` needs no mail
    /// server). Refused in a deployed environment without an `smtp_url` (mail would stay on
    /// one pod's disk).
    pub mailbox_dir: String,
    /// PEM file of CA certificates trusted for the relay's TLS besides the system's (a relay
    /// whose certificate a private CA issued). Empty: the system's roots only.
    pub smtp_ca_file: String,
    /// The sender address of every email (`From`); templates set the display name.
    pub from_address: String,
    pub smtp_timeout_ms: u64,
    pub webhook_timeout_ms: u64,
    /// Let webhooks go to loopback, private and link-local addresses, and over plain http
    /// (development and tests only: SSRF).
    pub allow_private_webhooks: bool,
    /// Attempts before a delivery is given up (dead).
    pub max_attempts: u32,
    /// Backoff: base·2^(attempt-1) with full jitter, at most `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts per tenant per minute across replicas (0: no limit).
    pub tenant_messages_per_minute: u64,
    /// How often an idle sender looks for due deliveries.
    pub poll_interval_ms: u64,
    /// How long a sender holds a delivery it took (longer than any send can take).
    pub lease_ms: u64,
    /// Deliveries one replica sends at once per lane (email, webhooks); one tenant at most all
    /// but one of them.
    pub concurrency: usize,
    /// Base URL of the hosted pages (unsubscribe), as contacts reach it, e.g.
    /// `https://clm.example.com`.
    pub public_url: String,
    /// Key that signs links in messages (≥ 32 bytes in deployed environments; empty in
    /// development: a random key per process).
    pub link_secret: String,
}

impl std::fmt::Debug for MessagingSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingSettings")
            .field("smtp_url", &redact_url(&self.smtp_url))
            .field("mailbox_dir", &self.mailbox_dir)
            .field("from_address", &self.from_address)
            .field("max_attempts", &self.max_attempts)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Whether an SMTP URL carries `user[:password]@`.
fn smtp_has_credentials(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())].contains('@')
}

/// Whether an SMTP URL never sends in the clear: implicit TLS, or STARTTLS required.
fn smtp_tls_required(url: &str) -> bool {
    url.starts_with("smtps://") || url.split_once('?').is_some_and(|(_, q)| q.split('&').any(|p| p == "tls=required"))
}

/// A URL without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

impl MessagingSettings {
    /// The `[messaging]` rules: sane numbers; in a deployed environment (`local` false) a
    /// signing key for links, an https public URL, no webhooks to private addresses, no local
    /// mailbox, and SMTP credentials only over TLS.
    pub(super) fn validate(&self, local: bool) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("key `messaging.{key}`: {why}")));
        let m = self;
        let url = &m.smtp_url;
        if !(url.is_empty() || url.starts_with("smtp://") || url.starts_with("smtps://")) {
            return bad("smtp_url", "must start with smtp:// or smtps://, or be empty");
        }
        if m.max_attempts == 0 || m.max_attempts > 50 {
            return bad("max_attempts", "must be 1 to 50");
        }
        if m.retry_base_ms == 0 || m.retry_max_ms < m.retry_base_ms {
            return bad("retry_base_ms", "must be at least 1 and at most retry_max_ms");
        }
        if m.poll_interval_ms < 10 || m.lease_ms < 1000 || m.concurrency == 0 {
            return bad("poll_interval_ms", "poll_interval_ms ≥ 10, lease_ms ≥ 1000, concurrency ≥ 1");
        }
        if m.lease_ms <= m.smtp_timeout_ms.max(m.webhook_timeout_ms) + 5_000 {
            return bad(
                "lease_ms",
                "must exceed the SMTP and webhook timeouts by 5 s (a send must end before its lease)",
            );
        }
        if !(m.public_url.is_empty() || m.public_url.starts_with("http://") || m.public_url.starts_with("https://")) {
            return bad("public_url", "must be an http:// or https:// URL");
        }
        if !local {
            if m.link_secret.len() < MIN_HS256_SECRET_BYTES {
                return bad("link_secret", "at least 32 bytes in a deployed environment (it signs unsubscribe links)");
            }
            if !m.public_url.starts_with("https://") {
                return bad("public_url", "an https:// URL in a deployed environment (links in messages open it)");
            }
            if m.allow_private_webhooks {
                return bad("allow_private_webhooks", "must be false in a deployed environment (SSRF)");
            }
            if m.smtp_url.is_empty() && !m.mailbox_dir.is_empty() {
                return bad(
                    "mailbox_dir",
                    "writes email to local files: development only; in a deployed environment set messaging.smtp_url (or leave mailbox_dir empty)",
                );
            }
            if smtp_has_credentials(url) && !smtp_tls_required(url) {
                return bad(
                    "smtp_url",
                    "credentials only over TLS in a deployed environment: smtps://… or smtp://…?tls=required (never plain smtp:// or tls=opportunistic)",
                );
            }
        }
        if !(m.smtp_ca_file.is_empty() || url.starts_with("smtps://") || url.contains("tls=")) {
            return bad("smtp_ca_file", "is for a TLS relay: smtp_url must be smtps://… or use ?tls=required");
        }
        Ok(())
    }
}
