//! `[auth]`: how callers prove who they are.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Dev,
    Jwt,
}

/// `[auth]`: how callers prove who they are (see `crate::auth` and docs/operations.md).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub dev_tenant: String,
    /// Expected `iss` and `aud` claims; required in deployed environments.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// HS256 shared secret (≥ [`super::MIN_HS256_SECRET_BYTES`]); also signs the short-lived tokens a
    /// service sends to the contacts service at a `contacts_url`, and `clm token`'s.
    pub jwt_hs256_secret: String,
    /// Public keys in PEM (RSA → RS256, EC P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA):
    /// inline, or in a file. Several keys may follow each other (key rotation).
    pub jwt_public_key_pem: String,
    pub jwt_public_key_file: String,
    /// A JWKS document (RFC 7517) in a file, or at a URL fetched at start and every
    /// `jwks_refresh_secs` (and soon after a token names an unknown `kid`).
    pub jwks_file: String,
    pub jwks_url: String,
    pub jwks_refresh_secs: u64,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// The verification keys, loaded and checked by [`Settings::prepare`] (not a setting).
    #[serde(skip)]
    pub keys: Option<crate::jwt_keys::KeySet>,
}

impl AuthSettings {
    /// The keys' settings, for `crate::jwt_keys` (which reads no settings itself).
    pub fn key_sources(&self) -> crate::jwt_keys::KeySources<'_> {
        crate::jwt_keys::KeySources {
            jwt_hs256_secret: &self.jwt_hs256_secret,
            jwt_public_key_pem: &self.jwt_public_key_pem,
            jwt_public_key_file: &self.jwt_public_key_file,
            jwks_file: &self.jwks_file,
            jwks_url: &self.jwks_url,
            jwks_refresh_secs: self.jwks_refresh_secs,
        }
    }

    /// Whether any verification key is configured (not whether it loads: see `prepare`).
    pub fn has_key(&self) -> bool {
        [&self.jwt_hs256_secret, &self.jwt_public_key_pem, &self.jwt_public_key_file, &self.jwks_file, &self.jwks_url]
            .iter()
            .any(|v| !v.trim().is_empty())
    }
}

/// Secrets stay out of logs and panic messages.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.jwt_hs256_secret.is_empty() { "" } else { "[redacted]" };
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("dev_tenant", &self.dev_tenant)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_hs256_secret", &secret)
            .field("jwt_public_key_pem", &format_args!("{} bytes", self.jwt_public_key_pem.len()))
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}
