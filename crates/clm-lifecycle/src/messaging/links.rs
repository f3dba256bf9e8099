//! Links in messages: the unsubscribe link of every email, signed so that only CLM can make one
//! and nobody can unsubscribe somebody else by editing it. A token is
//! `base64url(json) "." base64url(HMAC-SHA256(key, json))`; the key is
//! `messaging.link_secret` (a random one per process when empty, in development only: links
//! then stop working at a restart).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The unsubscribe "token" of a preview (RenderMessageTemplate): never a signed token.
pub const PREVIEW: &str = "preview";

/// What an unsubscribe link stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Tenant.
    pub t: String,
    /// Contact.
    pub c: String,
    /// Consent channel key ("email").
    pub ch: String,
    /// Consent purpose key ("marketing", "feedback", "transactional").
    pub p: String,
    /// The delivery that carried it.
    pub d: String,
}

/// Makes and checks link tokens, and the URLs around them.
#[derive(Clone)]
pub struct Links {
    key: Vec<u8>,
    /// Base URL of the hosted pages, without a trailing slash (`messaging.public_url`).
    base: String,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Links {
    pub fn new(secret: &str, public_url: &str) -> Self {
        let key = if secret.is_empty() { rand::random::<[u8; 32]>().to_vec() } else { secret.as_bytes().to_vec() };
        Self { key, base: public_url.trim_end_matches('/').to_owned() }
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(data);
        mac
    }

    pub fn token(&self, u: &Unsubscribe) -> String {
        let body = serde_json::to_vec(u).expect("serializes");
        let sig = self.mac(&body).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&body), URL_SAFE_NO_PAD.encode(sig))
    }

    /// The link's meaning, if CLM made it.
    pub fn open(&self, token: &str) -> Option<Unsubscribe> {
        let (body, sig) = token.split_once('.')?;
        let body = URL_SAFE_NO_PAD.decode(body).ok()?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(&body).verify_slice(&sig).ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// The survey page of invitation token `token` (feedback's token, already unguessable:
    /// an HMAC under the tenant's secret). Tokens are URL-safe (`[0-9a-f]`, `.`, base64url).
    pub fn survey_url(&self, token: &str) -> String {
        format!("{}/s/{}", self.base, token)
    }

    /// The unsubscribe page's URL for `u`.
    pub fn unsubscribe_url(&self, u: &Unsubscribe) -> String {
        format!("{}/u/{}", self.base, self.token(u))
    }

    /// What a preview links instead ([`PREVIEW`]): a page that says so and records nothing,
    /// so trying the link of a real contact's preview unsubscribes nobody.
    pub fn unsubscribe_preview_url(&self) -> String {
        format!("{}/u/{PREVIEW}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u() -> Unsubscribe {
        Unsubscribe { t: "acme".into(), c: "c1".into(), ch: "email".into(), p: "marketing".into(), d: "d1".into() }
    }

    #[test]
    fn a_token_opens_to_what_it_was_made_for() {
        let links = Links::new("0123456789abcdef0123456789abcdef", "https://clm.example.com/");
        let url = links.unsubscribe_url(&u());
        let token = url.strip_prefix("https://clm.example.com/u/").unwrap();
        assert_eq!(links.open(token), Some(u()));
    }

    #[test]
    fn an_edited_or_foreign_token_opens_to_nothing() {
        let links = Links::new("0123456789abcdef0123456789abcdef", "https://x");
        let token = links.token(&u());
        let (body, sig) = token.split_once('.').unwrap();
        let mut other = u();
        other.c = "c2".into();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        assert_eq!(links.open(&format!("{forged_body}.{sig}")), None);
        assert_eq!(links.open(body), None);
        assert_eq!(Links::new("another secret of enough length!", "https://x").open(&token), None);
    }
}
