//! Invitation tokens: `<invitation id, 32 hex>.<HMAC-SHA256 of tenant and id, 22 chars>`,
//! keyed by a per-tenant secret kept in the tenant's settings. Nothing usable is stored: the
//! token is re-derived when needed (an idempotent retry returns the same token), forged or
//! altered tokens fail verification, and a token of one tenant is worthless in another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

fn mac(secret: &str, tenant: &str, id: Uuid) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    m.update(tenant.as_bytes());
    m.update(b"/");
    m.update(id.as_bytes());
    m
}

/// The token of invitation `id`.
pub fn issue(secret: &str, tenant: &str, id: Uuid) -> String {
    let tag = mac(secret, tenant, id).finalize().into_bytes();
    format!("{}.{}", id.simple(), URL_SAFE_NO_PAD.encode(&tag[..16]))
}

/// The invitation id a token names, if the token is genuine (constant-time check).
pub fn verify(secret: &str, tenant: &str, token: &str) -> Option<Uuid> {
    let (id, tag) = token.split_once('.')?;
    if id.len() != 32 {
        return None;
    }
    let id = Uuid::try_parse(id).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if tag.len() != 16 {
        return None;
    }
    mac(secret, tenant, id).verify_truncated_left(&tag).ok()?;
    Some(id)
}

/// The invitation id a token claims, unverified (to find the tenant's invitation first).
pub fn claimed_id(token: &str) -> Option<Uuid> {
    let (id, _) = token.split_once('.')?;
    if id.len() == 32 { Uuid::try_parse(id).ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_tampering() {
        let id = Uuid::now_v7();
        let t = issue("s3cret", "acme", id);
        assert_eq!(verify("s3cret", "acme", &t), Some(id));
        assert_eq!(claimed_id(&t), Some(id));
        assert_eq!(verify("s3cret", "other", &t), None, "another tenant");
        assert_eq!(verify("rotated", "acme", &t), None, "another secret");
        let other = Uuid::now_v7();
        let swapped = format!("{}{}", other.simple(), &t[32..]);
        assert_eq!(verify("s3cret", "acme", &swapped), None, "id swapped");
        assert_eq!(verify("s3cret", "acme", ""), None);
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_verify_or_panic(s in "\\PC{0,80}") {
            prop_assert!(verify("s3cret", "acme", &s).is_none());
        }
    }
}
