//! Authentication and tenancy.
//!
//! Every business RPC runs on behalf of a tenant taken from the caller's verified identity, never
//! from a request field. [`AuthLayer`] (a tower layer on the whole server) verifies the bearer
//! JWT, checks the scope the method needs and puts a [`RequestContext`] into the request
//! extensions; handlers read it with [`context`]. Health and reflection stay open so probes and
//! `grpcurl list` work without a token.
//!
//! Scopes are separate grants, not a ladder: `clm.read` reads, `clm.write` writes (and gets back
//! what it wrote) without reading anything else, `clm.admin` does everything including erasure
//! and tenant settings. Which scope a method needs follows from its verb ([`Scope::required_for`]);
//! a verb nobody classified needs `clm.admin`, so a new read-like method cannot slip to writers.
//! Keys, algorithms and JWKS: `crate::jwt_keys`. Operators: docs/operations.md.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::task::{Context as TaskContext, Poll};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, AuthSettings};
use crate::jwt_keys::{KeySet, VerifyKey};
pub use crate::tenant::TenantId;

/// What a caller may do: three separate grants. `Admin` allows everything; `Write` does not
/// imply `Read` (an ingestion client holding only `clm.write` cannot read contacts back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

/// Verbs of methods that only read (AIP standard methods and their batch forms).
const READ_VERBS: [&str; 7] = ["Get", "List", "BatchGet", "Count", "Export", "Watch", "Render"];
/// Verbs of methods that change data; each returns at most what it wrote.
const WRITE_VERBS: [&str; 11] = [
    "Create",
    "BatchCreate",
    "Update",
    "Delete",
    "Undelete",
    "Merge",
    "Import",
    "Record",
    "Submit",
    "Transition",
    "Send",
];

impl Scope {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "clm.read" => Some(Self::Read),
            "clm.write" => Some(Self::Write),
            "clm.admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "clm.read",
            Self::Write => "clm.write",
            Self::Admin => "clm.admin",
        }
    }

    /// The scope a gRPC method needs, judged from its name (AIP verbs): admin for `Erase*` and
    /// `Update*Settings`, read for Get/List/BatchGet/Count/Export/Watch, write for
    /// Create/BatchCreate/Update/Delete/Undelete/Merge/Import/Record/Submit/Transition, and
    /// admin for any other verb (fail closed: classify a new verb here).
    pub fn required_for(path: &str) -> Self {
        Self::classify(path).unwrap_or(Self::Admin)
    }

    /// The scope of a method whose verb is known; `None` for an unclassified verb.
    pub fn classify(path: &str) -> Option<Self> {
        let method = path.rsplit('/').next().unwrap_or_default();
        let has_verb = |verb: &&str| {
            method.strip_prefix(*verb).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        };
        if has_verb(&"Erase") || (has_verb(&"Update") && method.ends_with("Settings")) {
            Some(Self::Admin)
        } else if READ_VERBS.iter().any(has_verb) {
            Some(Self::Read)
        } else if WRITE_VERBS.iter().any(has_verb) {
            Some(Self::Write)
        } else {
            None
        }
    }
}

/// Who is calling, for which tenant, allowed to do what. In the request extensions of every
/// authenticated call.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub tenant: TenantId,
    pub subject: String,
    pub scopes: HashSet<Scope>,
}

impl RequestContext {
    /// `clm.admin` allows everything; otherwise the caller needs exactly the scope asked for.
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.contains(&needed) || self.scopes.contains(&Scope::Admin)
    }

    /// A context for internal work (event consumers, schedulers) acting for a tenant.
    pub fn system(tenant: TenantId) -> Self {
        Self { tenant, subject: "system".into(), scopes: [Scope::Admin].into_iter().collect() }
    }
}

/// The JWT claims CLM reads. `tenant` is required; `scope` is space-separated (a JSON list of
/// scopes is read too). `aud` may be a string or a list, as RFC 7519 allows; `iss` and `aud`
/// are checked by the verifier against `auth.jwt_issuer` / `auth.jwt_audience`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default, deserialize_with = "space_separated")]
    pub scope: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "optional_space_separated")]
    pub aud: Option<String>,
}

/// A string, or a list of strings joined with spaces.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn joined(self) -> String {
        match self {
            Self::One(s) => s,
            Self::Many(v) => v.join(" "),
        }
    }
}

fn space_separated<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    OneOrMany::deserialize(d).map(OneOrMany::joined)
}

fn optional_space_separated<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<OneOrMany>::deserialize(d).map(|v| v.map(OneOrMany::joined))
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            AuthError::PermissionDenied(m) => tonic::Status::permission_denied(m),
        }
    }
}

/// Verifies bearer tokens according to the `[auth]` settings.
pub struct Authenticator {
    mode: AuthMode,
    dev: RequestContext,
    keys: KeySet,
    /// Signs and verifies the tokens this process's services send each other (see [`mint_local`]).
    local: VerifyKey,
    /// One [`Validation`] per accepted algorithm: issuer, audience, leeway, required claims.
    validations: HashMap<Algorithm, Validation>,
    /// The JWKS refresher, stopped with the authenticator.
    refresher: Option<tokio::task::AbortHandle>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

/// Every algorithm a key can be pinned to (a token's own `alg` is never trusted on its own).
const ALGORITHMS: [Algorithm; 10] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `kid` of the tokens a process signs for its own services ([`mint_local`]).
const LOCAL_KID: &str = "clm-process-local";

/// A random HS256 key that never leaves this process: the contacts service hosted in the same
/// process accepts the tokens other services sign with it, so the single binary needs no
/// shared secret when callers' tokens are verified with public keys.
static LOCAL_SECRET: LazyLock<[u8; 32]> = LazyLock::new(rand::random);

impl Authenticator {
    /// Build from the `[auth]` settings: the keys `Settings::prepare` loaded (`s.keys`), or
    /// loaded here. With `auth.jwks_url`, refreshing the fetched keys starts in the background
    /// (inside a Tokio runtime).
    pub fn from_settings(s: &AuthSettings) -> anyhow::Result<Self> {
        let dev_tenant = if s.mode == AuthMode::Dev {
            TenantId::parse(&s.dev_tenant).map_err(|v| anyhow::anyhow!("key `auth.dev_tenant`: {}", v.description))?
        } else {
            // Never read: jwt mode takes the tenant from each token.
            TenantId::parse("unused").map_err(|v| anyhow::anyhow!("{}", v.description))?
        };
        let keys = match (s.mode, &s.keys) {
            (AuthMode::Dev, _) => KeySet::default(),
            (AuthMode::Jwt, Some(keys)) => keys.clone(),
            (AuthMode::Jwt, None) => KeySet::load_local(&s.key_sources())?,
        };
        if s.mode == AuthMode::Jwt && keys.is_empty() {
            anyhow::bail!(
                "key `auth.jwt_hs256_secret`: jwt mode needs a verification key (auth.jwks_url, auth.jwks_file, \
                 auth.jwt_public_key_pem, auth.jwt_public_key_file or auth.jwt_hs256_secret)"
            );
        }
        let refresher = match &keys.remote {
            Some(remote) => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|_| anyhow::anyhow!("key `auth.jwks_url`: refreshing the JWKS needs a Tokio runtime"))?;
                let fetch_now = remote.keys().is_empty();
                Some(runtime.spawn(remote.clone().keep_fresh(fetch_now)).abort_handle())
            }
            None => None,
        };
        match s.mode {
            AuthMode::Dev => tracing::warn!(
                tenant = %dev_tenant,
                "auth.mode = dev: every caller acts as this tenant with every scope, no token needed; local use only"
            ),
            AuthMode::Jwt => tracing::info!(
                keys = %keys.describe(),
                issuer = %s.jwt_issuer,
                audience = %s.jwt_audience,
                "authentication: bearer JWT"
            ),
        }
        let validations = ALGORITHMS.iter().map(|alg| (*alg, validation(s, *alg))).collect();
        Ok(Self {
            mode: s.mode,
            dev: RequestContext {
                tenant: dev_tenant,
                subject: "dev".into(),
                scopes: [Scope::Admin].into_iter().collect(),
            },
            keys,
            local: VerifyKey {
                kid: Some(LOCAL_KID.into()),
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(LOCAL_SECRET.as_slice()),
                source: "process-local",
            },
            validations,
            refresher,
        })
    }

    /// Verify the `authorization` header value (if any) and return the caller's context.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<RequestContext, AuthError> {
        if self.mode == AuthMode::Dev {
            return Ok(self.dev.clone());
        }
        let header = authorization.ok_or_else(|| {
            AuthError::Unauthenticated("missing bearer token: send `authorization: Bearer <jwt>`".into())
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Unauthenticated("authorization must be `Bearer <jwt>`".into()))?
            .trim();
        Self::context_from_claims(self.verify(token)?)
    }

    /// Check the signature with the keys pinned to the token's algorithm (and its `kid`, when
    /// both name one), then the claims.
    fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let refused = |why: String| AuthError::Unauthenticated(format!("invalid token: {why}"));
        // Also refuses `alg: none` and any algorithm jsonwebtoken does not know.
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed".into()))?;
        let remote = self.keys.remote.as_ref().map(|r| r.keys()).unwrap_or_default();
        let local = std::slice::from_ref(&self.local);
        let keys: Box<dyn Iterator<Item = &VerifyKey>> = if header.kid.as_deref() == Some(LOCAL_KID) {
            Box::new(local.iter())
        } else {
            Box::new(self.keys.fixed.iter().chain(remote.iter()))
        };
        let (mut same_alg, mut tried, mut kid_known) = (false, false, false);
        let mut error: Option<jsonwebtoken::errors::Error> = None;
        for key in keys {
            if key.alg != header.alg {
                continue;
            }
            same_alg = true;
            if let (Some(want), Some(have)) = (header.kid.as_deref(), key.kid.as_deref()) {
                if want != have {
                    continue;
                }
                kid_known = true;
            }
            tried = true;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validations[&key.alg]) {
                Ok(data) => return Ok(data.claims),
                // Report what the key that did sign it found wrong (expired, wrong audience…)
                // rather than the other keys' "bad signature".
                Err(e) if error.is_none() || !is_bad_signature(&e) => error = Some(e),
                Err(_) => {}
            }
        }
        let last_err = error;
        if !kid_known && let (Some(kid), Some(remote)) = (header.kid.as_deref(), &self.keys.remote) {
            // Perhaps the issuer rotated to a key we have not fetched yet.
            remote.request_refresh();
            if !tried {
                return Err(refused(format!("unknown key id `{kid}`")));
            }
        }
        Err(refused(match (same_alg, last_err) {
            (false, _) => format!("algorithm {:?} not accepted", header.alg),
            (true, None) => format!("unknown key id `{}`", header.kid.unwrap_or_default()),
            (true, Some(e)) => describe_jwt_error(&e),
        }))
    }

    fn context_from_claims(claims: Claims) -> Result<RequestContext, AuthError> {
        let tenant = TenantId::parse(&claims.tenant)
            .map_err(|_| AuthError::Unauthenticated("invalid token: `tenant` claim is missing or malformed".into()))?;
        let scopes = claims.scope.split_whitespace().filter_map(Scope::parse).collect();
        Ok(RequestContext { tenant, subject: claims.sub, scopes })
    }
}

/// The claim checks for tokens of `alg`: `exp` and `sub` always, `nbf` when present, `iss` and
/// `aud` when configured (required in deployed environments), with `auth.leeway_secs` of skew.
fn validation(s: &AuthSettings, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = s.leeway_secs;
    v.validate_nbf = true;
    let mut required: Vec<&str> = vec!["exp", "sub"];
    if s.jwt_audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&[&s.jwt_audience]);
        required.push("aud");
    }
    if !s.jwt_issuer.is_empty() {
        v.set_issuer(&[&s.jwt_issuer]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn is_bad_signature(e: &jsonwebtoken::errors::Error) -> bool {
    matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature)
}

fn describe_jwt_error(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim `{c}`"),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".into(),
        _ => "malformed".into(),
    }
}

/// Sign an HS256 token (for `clm token` and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))?)
}

/// Sign a token for a service hosted in this same process (the contacts service called by
/// lifecycle, feedback or metrics in the single binary), with a key no other process has.
pub fn mint_local(claims: &Claims) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(LOCAL_KID.into());
    Ok(jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(LOCAL_SECRET.as_slice()))?)
}

/// Sign a token with a PEM private key (RSA → RS256, EC P-256 → ES256, P-384 → ES384,
/// Ed25519 → EdDSA), naming `kid` in its header: `clm token --private-key-file`, and tests of
/// asymmetric verification.
pub fn mint_with_private_key_pem(pem: &[u8], kid: Option<&str>, claims: &Claims) -> anyhow::Result<String> {
    let mut attempts: Vec<(Algorithm, EncodingKey)> = Vec::new();
    if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        attempts.push((Algorithm::RS256, k));
    }
    if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        attempts.push((Algorithm::ES256, k.clone()));
        attempts.push((Algorithm::ES384, k));
    }
    if let Ok(k) = EncodingKey::from_ed_pem(pem) {
        attempts.push((Algorithm::EdDSA, k));
    }
    anyhow::ensure!(!attempts.is_empty(), "not a PEM private key (RSA, EC P-256/P-384 or Ed25519, PKCS#8)");
    let mut last = None;
    for (alg, key) in attempts {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        match jsonwebtoken::encode(&header, claims, &key) {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("cannot sign"), anyhow::Error::from))
}

/// The caller's context, put there by [`AuthLayer`].
pub fn context<T>(request: &tonic::Request<T>) -> Result<RequestContext, tonic::Status> {
    request
        .extensions()
        .get::<RequestContext>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no authenticated caller"))
}

/// Paths anyone may call: health checks and reflection.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Tower layer that authenticates every non-public call and enforces the method's scope.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<futures::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if is_public(path) {
            return futures::future::Either::Right(self.inner.call(req));
        }
        let needed = Scope::required_for(path);
        let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let result = self.auth.authenticate(header).and_then(|ctx| {
            if ctx.allows(needed) {
                Ok(ctx)
            } else {
                Err(AuthError::PermissionDenied(format!("this method needs the `{}` scope", needed.as_str())))
            }
        });
        match result {
            Ok(ctx) => {
                tracing::Span::current().record("tenant", ctx.tenant.as_str());
                req.extensions_mut().insert(ctx);
                futures::future::Either::Right(self.inner.call(req))
            }
            Err(e) => {
                tracing::debug!(error = %e, "call refused");
                let status: tonic::Status = e.into();
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::{Jwk, JwkSet};

    use super::*;

    const SECRET: &str = "an-hs256-secret-of-32-bytes-0001";
    const RSA_PRIVATE: &str = include_str!("../testdata/jwt/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../testdata/jwt/rsa-public.pem");
    const EC_PRIVATE: &str = include_str!("../testdata/jwt/ec-private.pem");
    const EC_PUBLIC: &str = include_str!("../testdata/jwt/ec-public.pem");
    const EC2_PRIVATE: &str = include_str!("../testdata/jwt/ec2-private.pem");
    const ED_PRIVATE: &str = include_str!("../testdata/jwt/ed-private.pem");
    const ED_PUBLIC: &str = include_str!("../testdata/jwt/ed-public.pem");

    fn settings(mode: AuthMode) -> AuthSettings {
        AuthSettings {
            mode,
            dev_tenant: "dev".into(),
            jwt_issuer: "clm-test".into(),
            jwt_audience: "clm".into(),
            jwt_hs256_secret: SECRET.into(),
            jwt_public_key_pem: String::new(),
            jwt_public_key_file: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            leeway_secs: 0,
            keys: None,
        }
    }

    /// jwt mode with only public keys / a JWKS (no shared secret).
    fn asymmetric(f: impl FnOnce(&mut AuthSettings)) -> AuthSettings {
        let mut s = AuthSettings { jwt_hs256_secret: String::new(), ..settings(AuthMode::Jwt) };
        f(&mut s);
        s
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> Claims {
        Claims {
            sub: "svc-a".into(),
            tenant: "acme".into(),
            scope: "clm.read clm.write".into(),
            exp: now() + 600,
            nbf: None,
            iss: Some("clm-test".into()),
            aud: Some("clm".into()),
        }
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn signed(private_pem: &str, kid: Option<&str>) -> String {
        mint_with_private_key_pem(private_pem.as_bytes(), kid, &claims()).unwrap()
    }

    fn refused(a: &Authenticator, token: &str) -> String {
        match a.authenticate(Some(&bearer(token))) {
            Err(AuthError::Unauthenticated(m)) => m,
            other => panic!("expected unauthenticated, got {other:?}"),
        }
    }

    /// A JWKS document with each (private key PEM, algorithm, kid)'s public key.
    fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
        let keys = keys
            .iter()
            .map(|(pem, alg, kid)| {
                let enc = match alg {
                    Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
                    Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
                    _ => EncodingKey::from_ec_pem(pem.as_bytes()),
                }
                .unwrap();
                let mut jwk = Jwk::from_encoding_key(&enc, *alg).unwrap();
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).unwrap()
    }

    #[test]
    fn valid_token_yields_tenant_and_scopes() {
        let a = Authenticator::from_settings(&settings(AuthMode::Jwt)).unwrap();
        let tok = mint_hs256(SECRET, &claims()).unwrap();
        let ctx = a.authenticate(Some(&bearer(&tok))).unwrap();
        assert_eq!(ctx.tenant.as_str(), "acme");
        assert!(ctx.allows(Scope::Write) && ctx.allows(Scope::Read) && !ctx.allows(Scope::Admin));
    }

    #[test]
    fn refusals() {
        let a = Authenticator::from_settings(&settings(AuthMode::Jwt)).unwrap();
        let unauth = |r: Result<RequestContext, AuthError>| match r {
            Err(AuthError::Unauthenticated(m)) => m,
            other => panic!("expected unauthenticated, got {other:?}"),
        };
        assert!(unauth(a.authenticate(None)).contains("missing"));
        let wrong_sig = mint_hs256("another-secret-of-32-bytes-00002", &claims()).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&wrong_sig)))).contains("signature"));
        let expired = mint_hs256(SECRET, &Claims { exp: now() - 100, ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&expired)))).contains("expired"));
        let early = mint_hs256(SECRET, &Claims { nbf: Some(now() + 300), ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&early)))).contains("nbf"));
        let wrong_aud = mint_hs256(SECRET, &Claims { aud: Some("other".into()), ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&wrong_aud)))).contains("audience"));
        let no_aud = mint_hs256(SECRET, &Claims { aud: None, ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&no_aud)))).contains("aud"));
        let wrong_iss = mint_hs256(SECRET, &Claims { iss: Some("someone-else".into()), ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&wrong_iss)))).contains("issuer"));
        let bad_tenant = mint_hs256(SECRET, &Claims { tenant: "a b".into(), ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&bad_tenant)))).contains("tenant"));
        assert!(unauth(a.authenticate(Some("Basic abc"))).contains("Bearer"));
        assert!(unauth(a.authenticate(Some("Bearer not.a.jwt"))).contains("malformed"));
    }

    #[test]
    fn audience_and_scope_may_be_lists() {
        let a = Authenticator::from_settings(&settings(AuthMode::Jwt)).unwrap();
        let raw = serde_json::json!({
            "sub": "u", "tenant": "acme", "exp": now() + 600, "iss": "clm-test",
            "aud": ["account", "clm"], "scope": ["clm.read", "clm.admin"],
        });
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &raw, &EncodingKey::from_secret(SECRET.as_bytes()))
                .unwrap();
        let ctx = a.authenticate(Some(&bearer(&token))).unwrap();
        assert!(ctx.allows(Scope::Admin));
        let raw =
            serde_json::json!({"sub": "u", "tenant": "acme", "exp": now() + 600, "iss": "clm-test", "aud": ["x", "y"]});
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &raw, &EncodingKey::from_secret(SECRET.as_bytes()))
                .unwrap();
        assert!(refused(&a, &token).contains("audience"));
    }

    #[test]
    fn dev_mode_needs_no_token() {
        let a = Authenticator::from_settings(&settings(AuthMode::Dev)).unwrap();
        let ctx = a.authenticate(None).unwrap();
        assert_eq!(ctx.tenant.as_str(), "dev");
        assert!(ctx.allows(Scope::Admin));
    }

    #[test]
    fn pem_public_keys_verify_rs256_es256_and_eddsa() {
        // Several keys in one PEM text: all trusted at once (rotation), each for its algorithm.
        let pem = format!("{RSA_PUBLIC}\n{EC_PUBLIC}\n{ED_PUBLIC}");
        let a = Authenticator::from_settings(&asymmetric(|s| s.jwt_public_key_pem = pem)).unwrap();
        for (private, what) in [(RSA_PRIVATE, "RS256"), (EC_PRIVATE, "ES256"), (ED_PRIVATE, "EdDSA")] {
            let ctx = a.authenticate(Some(&bearer(&signed(private, None)))).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(ctx.tenant.as_str(), "acme", "{what}");
        }
        // A kid in the header does not matter to PEM keys.
        a.authenticate(Some(&bearer(&signed(EC_PRIVATE, Some("whatever"))))).unwrap();
        // Not one of the configured keys.
        assert!(refused(&a, &signed(EC2_PRIVATE, None)).contains("bad signature"));
        // No HS256 secret configured: HS256 tokens are not accepted at all.
        assert!(refused(&a, &mint_hs256(SECRET, &claims()).unwrap()).contains("algorithm HS256 not accepted"));
    }

    #[test]
    fn algorithm_confusion_and_alg_none_are_refused() {
        let a = Authenticator::from_settings(&asymmetric(|s| s.jwt_public_key_pem = RSA_PUBLIC.into())).unwrap();
        // The classic attack: HS256 "signed" with the public key as the secret.
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(refused(&a, &confused).contains("not accepted"));
        // An RSA key verifies RS256 only, not the other RSA algorithms.
        let rs = signed(RSA_PRIVATE, None);
        let ps = jsonwebtoken::encode(
            &Header::new(Algorithm::PS256),
            &claims(),
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        a.authenticate(Some(&bearer(&rs))).unwrap();
        assert!(refused(&a, &ps).contains("algorithm PS256 not accepted"));
        // alg none, unsigned, with either empty or copied signature.
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let body = b64(&serde_json::to_value(claims()).unwrap());
        for alg in ["none", "None", "NONE"] {
            let head = b64(&serde_json::json!({"alg": alg, "typ": "JWT"}));
            let signature = rs.rsplit('.').next().unwrap();
            for token in [format!("{head}.{body}."), format!("{head}.{body}.{signature}")] {
                assert!(refused(&a, &token).contains("malformed"), "{alg}");
            }
        }
    }

    #[test]
    fn jwks_file_keys_are_chosen_by_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            jwks(&[(EC_PRIVATE, Algorithm::ES256, "ec-1"), (RSA_PRIVATE, Algorithm::RS256, "rsa-1")]),
        )
        .unwrap();
        let a = Authenticator::from_settings(&asymmetric(|s| s.jwks_file = path.display().to_string())).unwrap();
        a.authenticate(Some(&bearer(&signed(EC_PRIVATE, Some("ec-1"))))).unwrap();
        a.authenticate(Some(&bearer(&signed(RSA_PRIVATE, Some("rsa-1"))))).unwrap();
        // Without a kid, the keys of the token's algorithm are tried.
        a.authenticate(Some(&bearer(&signed(EC_PRIVATE, None)))).unwrap();
        assert!(refused(&a, &signed(EC_PRIVATE, Some("nope"))).contains("unknown key id `nope`"));
        // Right kid, wrong key.
        assert!(refused(&a, &signed(EC2_PRIVATE, Some("ec-1"))).contains("bad signature"));
        // The kid of an RSA key on an ES256 token: that key only verifies RS256.
        assert!(refused(&a, &signed(EC_PRIVATE, Some("rsa-1"))).contains("unknown key id"));
        assert!(refused(&a, &signed(ED_PRIVATE, Some("ec-1"))).contains("algorithm EdDSA not accepted"));
    }

    #[test]
    fn unusable_keys_are_refused_naming_the_key() {
        let err = |s: AuthSettings| KeySet::load_local(&s.key_sources()).unwrap_err().to_string();
        let e = err(asymmetric(|s| s.jwt_public_key_pem = EC_PRIVATE.into()));
        assert!(e.contains("auth.jwt_public_key_pem") && e.contains("private key"), "{e}");
        let e = err(asymmetric(|s| s.jwt_public_key_pem = "not a key".into()));
        assert!(e.contains("auth.jwt_public_key_pem") && e.contains("no PEM public key"), "{e}");
        let e = err(asymmetric(|s| s.jwt_public_key_file = "/nonexistent/key.pem".into()));
        assert!(e.contains("auth.jwt_public_key_file") && e.contains("/nonexistent/key.pem"), "{e}");
        let e = err(asymmetric(|s| s.jwks_file = "/nonexistent/jwks.json".into()));
        assert!(e.contains("auth.jwks_file"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let file = || path.display().to_string();
        std::fs::write(&path, "{\"keys\": []}").unwrap();
        let e = err(asymmetric(|s| s.jwks_file = file()));
        assert!(e.contains("auth.jwks_file") && e.contains("no signature key"), "{e}");
        // Symmetric keys, encryption keys and keys whose alg contradicts their type are skipped.
        std::fs::write(
            &path,
            r#"{"keys": [
                {"kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg"},
                {"kty": "OKP", "crv": "Ed25519", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
                {"kty": "OKP", "crv": "Ed25519", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
            ]}"#,
        )
        .unwrap();
        let e = err(asymmetric(|s| s.jwks_file = file()));
        assert!(e.contains("no signature key"), "{e}");
        std::fs::write(&path, "[]").unwrap();
        assert!(err(asymmetric(|s| s.jwks_file = file())).contains("not a JWKS document"));
    }

    /// A tiny HTTP server answering every GET with the current `doc`; counts the requests.
    async fn jwks_server(doc: Arc<std::sync::Mutex<String>>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let Ok(n) = conn.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, hits)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jwks_url_is_fetched_at_start_and_again_for_an_unknown_kid() {
        let doc = Arc::new(std::sync::Mutex::new(jwks(&[(EC_PRIVATE, Algorithm::ES256, "2024")])));
        let (url, hits) = jwks_server(doc.clone()).await;
        let mut s = asymmetric(|s| s.jwks_url = url);
        s.keys = Some(KeySet::load(&s.key_sources()).await.unwrap());
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "fetched once at start");
        let a = Authenticator::from_settings(&s).unwrap();
        a.authenticate(Some(&bearer(&signed(EC_PRIVATE, Some("2024"))))).unwrap();

        // The issuer rotates: it publishes a new key (keeping the old one for a while).
        *doc.lock().unwrap() = jwks(&[(EC_PRIVATE, Algorithm::ES256, "2024"), (ED_PRIVATE, Algorithm::EdDSA, "2025")]);
        let new_token = signed(ED_PRIVATE, Some("2025"));
        assert!(refused(&a, &new_token).contains("unknown key id `2025`"), "not fetched yet");
        let mut accepted = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if a.authenticate(Some(&bearer(&new_token))).is_ok() {
                accepted = true;
                break;
            }
        }
        assert!(accepted, "the unknown kid triggered a refresh");
        a.authenticate(Some(&bearer(&signed(EC_PRIVATE, Some("2024"))))).unwrap();
        // Unknown kids cannot make CLM hammer the issuer.
        let before = hits.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..20 {
            refused(&a, &signed(ED_PRIVATE, Some("bogus")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before, "rate-limited");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_jwks_url_fails_the_start_naming_the_key() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = asymmetric(|s| s.jwks_url = format!("http://127.0.0.1:{port}/jwks.json"));
        let e = format!("{:#}", KeySet::load(&s.key_sources()).await.unwrap_err());
        assert!(e.contains("auth.jwks_url") && e.contains("cannot connect"), "{e}");
    }

    #[test]
    fn local_tokens_are_accepted_only_by_this_process() {
        let a = Authenticator::from_settings(&asymmetric(|s| s.jwt_public_key_pem = EC_PUBLIC.into())).unwrap();
        let local = mint_local(&Claims { scope: "clm.read".into(), ..claims() }).unwrap();
        let ctx = a.authenticate(Some(&bearer(&local))).unwrap();
        assert!(ctx.allows(Scope::Read) && !ctx.allows(Scope::Write));
        // The same header and claims under any other key are refused.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(LOCAL_KID.into());
        let forged =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"guessed-guessed-guessed-guessed!"))
                .unwrap();
        assert!(refused(&a, &forged).contains("bad signature"));
    }

    #[test]
    fn method_scopes() {
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/GetContact"), Scope::Read);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/ListContacts"), Scope::Read);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/BatchGetContacts"), Scope::Read);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/CreateContact"), Scope::Write);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/EraseContact"), Scope::Admin);
        assert_eq!(Scope::required_for("/clm.lifecycle.v1.LifecycleService/UpdateRuleSettings"), Scope::Admin);
        assert_eq!(Scope::required_for("/clm.lifecycle.v1.LifecycleService/GetRuleSettings"), Scope::Read);
        // Unknown verbs fail closed, and a verb must be a whole word.
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/SearchContacts"), Scope::Admin);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/Getaway"), Scope::Admin);
    }

    #[test]
    fn every_rpc_has_a_classified_verb() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(clm_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut n = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(Scope::classify(&path).is_some(), "{path}: add its verb to auth.rs READ_/WRITE_VERBS");
                    n += 1;
                }
            }
        }
        assert!(n > 50, "only {n} methods found");
    }

    #[test]
    fn a_write_only_scope_does_not_read() {
        let ctx = |scopes: &[Scope]| RequestContext {
            tenant: TenantId::parse("acme").unwrap(),
            subject: "ingest".into(),
            scopes: scopes.iter().copied().collect(),
        };
        let writer = ctx(&[Scope::Write]);
        assert!(writer.allows(Scope::Write));
        assert!(!writer.allows(Scope::Read), "clm.write alone must not read");
        assert!(!writer.allows(Scope::Admin));
        let reader = ctx(&[Scope::Read]);
        assert!(reader.allows(Scope::Read) && !reader.allows(Scope::Write));
        let admin = ctx(&[Scope::Admin]);
        assert!(admin.allows(Scope::Read) && admin.allows(Scope::Write) && admin.allows(Scope::Admin));
    }

    #[tokio::test]
    async fn the_layer_refuses_a_read_to_a_write_only_token() {
        use tower::{Layer as _, ServiceExt as _};
        let auth = Arc::new(Authenticator::from_settings(&settings(AuthMode::Jwt)).unwrap());
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let svc = AuthLayer::new(auth).layer(inner);
        let call = |path: &str, scope: &str| {
            let token = mint_hs256(SECRET, &Claims { scope: scope.into(), ..claims() }).unwrap();
            http::Request::builder().uri(path).header("authorization", bearer(&token)).body(()).unwrap()
        };
        let status = |r: http::Response<tonic::body::Body>| {
            tonic::Status::from_header_map(r.headers()).map_or(tonic::Code::Ok, |s| s.code())
        };
        let list = "/clm.contacts.v1.ContactsService/ListContacts";
        let create = "/clm.contacts.v1.ContactsService/CreateContact";
        let r = svc.clone().oneshot(call(list, "clm.write")).await.unwrap();
        assert_eq!(status(r), tonic::Code::PermissionDenied);
        let r = svc.clone().oneshot(call(create, "clm.write")).await.unwrap();
        assert_eq!(status(r), tonic::Code::Ok);
        let r = svc.clone().oneshot(call(list, "clm.read")).await.unwrap();
        assert_eq!(status(r), tonic::Code::Ok);
        let r = svc.clone().oneshot(call(create, "clm.read")).await.unwrap();
        assert_eq!(status(r), tonic::Code::PermissionDenied);
    }

    #[test]
    fn tenant_ids() {
        assert!(TenantId::parse("acme-01_x").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65), "a/b"] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
