//! The tenant a row belongs to. Every row of every service carries one, taken from the caller's
//! authenticated identity (`crate::auth`), never from a request field; stores take it as this
//! type so a query cannot be written for "no tenant". Below `config` and `auth`, which both use it.

use std::fmt;

use crate::error::FieldViolation;

/// A tenant identifier: 1-64 chars of `[A-Za-z0-9_-]`. Valid by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldViolation::new("tenant", "must be 1-64 characters of letters, digits, '_' or '-'"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
