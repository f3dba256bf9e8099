//! Authentication and tenancy.
//!
//! Every business RPC runs on behalf of a tenant taken from the caller's verified identity, never
//! from a request field. [`AuthLayer`] (a tower layer on the whole server) verifies the bearer
//! JWT, checks the scope the method needs and puts a [`RequestContext`] into the request
//! extensions; handlers read it with [`context`]. Health and reflection stay open so probes and
//! `grpcurl list` work without a token.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, AuthSettings};
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

/// What a caller may do. `Admin` implies `Write`, which implies `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

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

    /// The scope a gRPC method needs, judged from its name (AIP verbs): reads for
    /// Get/List/BatchGet/Count/Export/Watch, admin for Erase and settings, write otherwise.
    pub fn required_for(path: &str) -> Self {
        let method = path.rsplit('/').next().unwrap_or_default();
        const READ: [&str; 6] = ["Get", "List", "BatchGet", "Count", "Export", "Watch"];
        if method.starts_with("Erase") || (method.starts_with("Update") && method.ends_with("Settings")) {
            Self::Admin
        } else if READ.iter().any(|p| method.starts_with(p)) {
            Self::Read
        } else {
            Self::Write
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
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= needed)
    }

    /// A context for internal work (event consumers, schedulers) acting for a tenant.
    pub fn system(tenant: TenantId) -> Self {
        Self { tenant, subject: "system".into(), scopes: [Scope::Admin].into_iter().collect() }
    }
}

/// The JWT claims CLM reads. `tenant` is required; `scope` is space-separated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub scope: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
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
    keys: Vec<(DecodingKey, Validation)>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn from_settings(s: &AuthSettings) -> anyhow::Result<Self> {
        let dev_tenant = if s.mode == AuthMode::Dev {
            TenantId::parse(&s.dev_tenant).map_err(|v| anyhow::anyhow!("key `auth.dev_tenant`: {}", v.description))?
        } else {
            TenantId("unused".into())
        };
        let validation = |alg| {
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
        };
        let mut keys = Vec::new();
        if !s.jwt_hs256_secret.is_empty() {
            keys.push((DecodingKey::from_secret(s.jwt_hs256_secret.as_bytes()), validation(Algorithm::HS256)));
        }
        if !s.jwt_rs256_public_key_pem.is_empty() {
            let key = DecodingKey::from_rsa_pem(s.jwt_rs256_public_key_pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("key `auth.jwt_rs256_public_key_pem`: {e}"))?;
            keys.push((key, validation(Algorithm::RS256)));
        }
        if s.mode == AuthMode::Jwt && keys.is_empty() {
            anyhow::bail!("key `auth.jwt_hs256_secret`: jwt mode needs a verification key");
        }
        Ok(Self {
            mode: s.mode,
            dev: RequestContext {
                tenant: dev_tenant,
                subject: "dev".into(),
                scopes: [Scope::Admin].into_iter().collect(),
            },
            keys,
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
        let mut last_err = None;
        for (key, validation) in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return Self::context_from_claims(data.claims),
                Err(e) => last_err = Some(e),
            }
        }
        let reason = last_err.map_or_else(|| "no key".to_string(), |e| describe_jwt_error(&e));
        Err(AuthError::Unauthenticated(format!("invalid token: {reason}")))
    }

    fn context_from_claims(claims: Claims) -> Result<RequestContext, AuthError> {
        let tenant = TenantId::parse(&claims.tenant)
            .map_err(|_| AuthError::Unauthenticated("invalid token: `tenant` claim is missing or malformed".into()))?;
        let scopes = claims.scope.split_whitespace().filter_map(Scope::parse).collect();
        Ok(RequestContext { tenant, subject: claims.sub, scopes })
    }
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
    use super::*;

    fn settings(mode: AuthMode) -> AuthSettings {
        AuthSettings {
            mode,
            dev_tenant: "dev".into(),
            jwt_hs256_secret: "s3cret".into(),
            jwt_rs256_public_key_pem: String::new(),
            jwt_issuer: "clm-test".into(),
            jwt_audience: "clm".into(),
            leeway_secs: 0,
        }
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

    #[test]
    fn valid_token_yields_tenant_and_scopes() {
        let a = Authenticator::from_settings(&settings(AuthMode::Jwt)).unwrap();
        let tok = mint_hs256("s3cret", &claims()).unwrap();
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
        let wrong_sig = mint_hs256("other", &claims()).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&wrong_sig)))).contains("signature"));
        let expired = mint_hs256("s3cret", &Claims { exp: now() - 100, ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&expired)))).contains("expired"));
        let early = mint_hs256("s3cret", &Claims { nbf: Some(now() + 300), ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&early)))).contains("nbf"));
        let wrong_aud = mint_hs256("s3cret", &Claims { aud: Some("other".into()), ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&wrong_aud)))).contains("audience"));
        let no_aud = mint_hs256("s3cret", &Claims { aud: None, ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&no_aud)))).contains("aud"));
        let bad_tenant = mint_hs256("s3cret", &Claims { tenant: "a b".into(), ..claims() }).unwrap();
        assert!(unauth(a.authenticate(Some(&bearer(&bad_tenant)))).contains("tenant"));
        assert!(unauth(a.authenticate(Some("Basic abc"))).contains("Bearer"));
        assert!(unauth(a.authenticate(Some("Bearer not.a.jwt"))).contains("malformed"));
    }

    #[test]
    fn dev_mode_needs_no_token() {
        let a = Authenticator::from_settings(&settings(AuthMode::Dev)).unwrap();
        let ctx = a.authenticate(None).unwrap();
        assert_eq!(ctx.tenant.as_str(), "dev");
        assert!(ctx.allows(Scope::Admin));
    }

    #[test]
    fn method_scopes() {
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/GetContact"), Scope::Read);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/ListContacts"), Scope::Read);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/CreateContact"), Scope::Write);
        assert_eq!(Scope::required_for("/clm.contacts.v1.ContactsService/EraseContact"), Scope::Admin);
        assert_eq!(Scope::required_for("/clm.lifecycle.v1.LifecycleService/UpdateRuleSettings"), Scope::Admin);
    }

    #[test]
    fn tenant_ids() {
        assert!(TenantId::parse("acme-01_x").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65), "a/b"] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
