//! Opaque, tamper-evident page tokens.
//!
//! A token is `base64url(json) "." base64url(hmac_sha256(json))`. The JSON binds the cursor to
//! the tenant and to a fingerprint of the query (filter + order), so a token cannot be edited,
//! replayed by another tenant, or reused with a different filter: all are INVALID_ARGUMENT.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::TenantId;
use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;

/// Default and maximum `page_size` for List methods.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 1000;

#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    t: String,
    q: String,
    c: T,
}

impl PageTokens {
    /// Keyed by `secret`; an empty secret picks a random key for this process.
    pub fn new(secret: &str) -> Self {
        let key = if secret.is_empty() { rand::random::<[u8; 32]>().to_vec() } else { secret.as_bytes().to_vec() };
        Self { key }
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(data);
        mac
    }

    /// Issue a token for the page after `cursor`.
    pub fn encode<T: Serialize>(&self, tenant: &TenantId, query: &str, cursor: &T) -> String {
        let body = serde_json::to_vec(&Envelope { t: tenant.as_str().to_owned(), q: fingerprint(query), c: cursor })
            .expect("cursor serializes");
        let sig = self.mac(&body).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&body), URL_SAFE_NO_PAD.encode(sig))
    }

    /// Check and open a token. `None` for an empty token (first page).
    pub fn decode<T: DeserializeOwned>(&self, token: &str, tenant: &TenantId, query: &str) -> Result<Option<T>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = |why: &str| Error::invalid("page_token", why.to_owned());
        let (body_b64, sig_b64) = token.split_once('.').ok_or_else(|| invalid("malformed page token"))?;
        let body = URL_SAFE_NO_PAD.decode(body_b64).map_err(|_| invalid("malformed page token"))?;
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| invalid("malformed page token"))?;
        self.mac(&body).verify_slice(&sig).map_err(|_| invalid("page token was altered or is not from this server"))?;
        let env: Envelope<T> = serde_json::from_slice(&body).map_err(|_| invalid("malformed page token"))?;
        if env.t != tenant.as_str() {
            return Err(invalid("page token belongs to another caller"));
        }
        if env.q != fingerprint(query) {
            return Err(invalid("page token was issued for a different filter or order_by"));
        }
        Ok(Some(env.c))
    }
}

fn fingerprint(query: &str) -> String {
    let digest = Sha256::digest(query.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

/// Split rows fetched with `LIMIT limit + 1` into the page and the cursor of the next page
/// (present only when there was an extra row, i.e. more to come).
pub fn split_page<T, C>(mut rows: Vec<T>, limit: u64, cursor: impl Fn(&T) -> C) -> (Vec<T>, Option<C>) {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(cursor) } else { None };
    (rows, next)
}

/// Validate `page_size`: 0 → default, negative or over the max → INVALID_ARGUMENT.
pub fn page_size(requested: i32) -> Result<u64, Error> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n if n as u64 > MAX_PAGE_SIZE => Err(Error::invalid("page_size", format!("must be at most {MAX_PAGE_SIZE}"))),
        n => Ok(n as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn round_trip() {
        let p = PageTokens::new("k");
        let tok = p.encode(&tenant("a"), "filter=x", &(42_u64, "id-1".to_string()));
        let c: (u64, String) = p.decode(&tok, &tenant("a"), "filter=x").unwrap().unwrap();
        assert_eq!(c, (42, "id-1".into()));
        assert!(p.decode::<u64>("", &tenant("a"), "").unwrap().is_none());
    }

    #[test]
    fn other_tenant_other_query_other_key_are_refused() {
        let p = PageTokens::new("k");
        let tok = p.encode(&tenant("a"), "q", &1_u64);
        assert!(p.decode::<u64>(&tok, &tenant("b"), "q").is_err());
        assert!(p.decode::<u64>(&tok, &tenant("a"), "q2").is_err());
        assert!(PageTokens::new("other").decode::<u64>(&tok, &tenant("a"), "q").is_err());
    }

    proptest! {
        #[test]
        fn any_tampering_is_invalid_argument(pos in 0usize..200, byte in any::<u8>()) {
            let p = PageTokens::new("k");
            let tok = p.encode(&tenant("a"), "q", &123_456_u64);
            let mut bytes = tok.clone().into_bytes();
            let i = pos % bytes.len();
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let tampered = String::from_utf8_lossy(&bytes).into_owned();
            prop_assume!(tampered != tok);
            match p.decode::<u64>(&tampered, &tenant("a"), "q") {
                Err(Error::InvalidArgument(v)) => prop_assert_eq!(&v[0].field, "page_token"),
                // Some base64 characters carry padding bits that decode to the same bytes.
                Ok(Some(c)) => prop_assert_eq!(c, 123_456),
                other => prop_assert!(false, "unexpected {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn pages_split() {
        assert_eq!(split_page(vec![1, 2, 3], 2, |x| *x), (vec![1, 2], Some(2)));
        assert_eq!(split_page(vec![1, 2], 2, |x| *x), (vec![1, 2], None));
        assert_eq!(split_page(Vec::<i32>::new(), 2, |x| *x), (vec![], None));
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10).unwrap(), 10);
        assert!(page_size(-1).is_err());
        assert!(page_size(1001).is_err());
    }
}
