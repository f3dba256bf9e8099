//! How a message leaves CLM: email over SMTP ([`smtp`]) or, in development without a relay,
//! into a local directory ([`mailbox`]), signed webhooks over HTTPS ([`webhook`]), and the delays between attempts ([`backoff`]). Each transport takes a plain
//! config struct (no settings) and answers one attempt with `Ok` or a [`SendError`] that says
//! whether trying again may help: the delivery worker retries transient failures with
//! [`backoff::jittered`] and gives up at once on permanent ones.

pub mod backoff;
pub mod mailbox;
pub mod smtp;
pub mod webhook;

use std::fmt;

pub use mailbox::MailboxDir;
pub use smtp::{Email, Mailer, SmtpConfig};
pub use webhook::{Webhook, WebhookConfig, Webhooks};

/// One attempt failed. `permanent`: the same message will fail again (a 5xx SMTP reply, a 4xx
/// webhook answer, a refused destination), so it is not retried; otherwise (a 4xx SMTP reply,
/// a 5xx/408/429 answer, no connection, a timeout) a later attempt may succeed. `relay`: the
/// fault is CLM's own way out for every email — the relay unreachable, silent or refusing the
/// credentials, TLS failing, no relay configured, the local mailbox unwritable — not this
/// message's: it is retried until that is fixed and never dead-letters (as an MTA's queue keeps
/// mail while its next hop is down), so a misconfigured or failing relay loses nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendError {
    pub permanent: bool,
    pub relay: bool,
    /// What happened, for the delivery's record and the log (never secrets).
    pub detail: String,
}

impl SendError {
    pub fn permanent(detail: impl Into<String>) -> Self {
        Self { permanent: true, relay: false, detail: detail.into() }
    }

    pub fn transient(detail: impl Into<String>) -> Self {
        Self { permanent: false, relay: false, detail: detail.into() }
    }

    /// The way out is at fault, not the message (above).
    pub fn relay(detail: impl Into<String>) -> Self {
        Self { permanent: false, relay: true, detail: detail.into() }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.permanent, self.relay) {
            (true, _) => "permanent",
            (false, true) => "relay",
            (false, false) => "transient",
        };
        write!(f, "{kind} failure: {}", self.detail)
    }
}

impl std::error::Error for SendError {}

/// `url` without the password of its `user:password@`, for messages and logs.
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{}", &rest[end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_left_out_of_urls() {
        use super::without_credentials as w;
        assert_eq!(w("smtps://me:s3cret@mail.test:465"), "smtps://me@mail.test:465");
        assert_eq!(w("smtp://me@mail.test:587?tls=required"), "smtp://me@mail.test:587?tls=required");
        assert_eq!(w("smtp://mail.test/x@y"), "smtp://mail.test/x@y");
        assert_eq!(w("not a url"), "not a url");
    }
}
