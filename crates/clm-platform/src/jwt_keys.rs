//! The keys bearer JWTs are verified with: where they come from, which one algorithm each
//! accepts, and keeping a JWKS fetched from a URL fresh.
//!
//! Sources (any combination, all trusted at once so keys can be rotated without downtime):
//! - `auth.jwt_hs256_secret`: HS256 only.
//! - `auth.jwt_public_key_pem` / `auth.jwt_public_key_file`: one or more PEM public keys; an RSA
//!   key verifies RS256, an EC P-256 key ES256, P-384 ES384, an Ed25519 key EdDSA.
//! - `auth.jwks_file` / `auth.jwks_url`: a JWKS document (RFC 7517). A key's algorithm is its
//!   `alg`, or follows from its type as above; `kid` picks the key. Symmetric (`oct`) and
//!   encryption (`use: enc`) keys are ignored. The URL is fetched when the server starts (a
//!   failure stops the start), then every `auth.jwks_refresh_secs`, and soon after a token
//!   names a `kid` it does not know (at most every [`MIN_ON_DEMAND_GAP`]); a failed refresh
//!   keeps the keys it had.
//!
//! A key never verifies a token whose header names another algorithm, and `alg: none` is not an
//! algorithm at all here.

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Soonest a token with an unknown `kid` may trigger another JWKS fetch.
pub const MIN_ON_DEMAND_GAP: Duration = Duration::from_secs(10);
/// How long one JWKS fetch may take, and how large the document may be.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// One key a token may be verified with, and the one algorithm it accepts.
#[derive(Clone)]
pub struct VerifyKey {
    /// The JWKS `kid`; `None` for PEM keys and the HS256 secret (tried for any `kid`).
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
    /// Where it came from (a settings key), for logs.
    pub source: &'static str,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The keys an `[auth]` section names, loaded and checked: fixed ones (secret, PEM, JWKS file)
/// and, with `auth.jwks_url`, the live set fetched from there.
/// The settings that name verification keys (the `auth.*` keys above), as
/// `config::AuthSettings::key_sources` lends them: this module reads no settings itself, so it
/// sits below `config` (which keeps the loaded [`KeySet`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct KeySources<'a> {
    pub jwt_hs256_secret: &'a str,
    pub jwt_public_key_pem: &'a str,
    pub jwt_public_key_file: &'a str,
    pub jwks_file: &'a str,
    pub jwks_url: &'a str,
    pub jwks_refresh_secs: u64,
}

#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub fixed: Arc<Vec<VerifyKey>>,
    pub remote: Option<Arc<RemoteJwks>>,
}

impl KeySet {
    /// Load every configured key and fetch `auth.jwks_url` once; an error names the key whose
    /// value cannot be used. This is what `serve` and `check-config` do.
    pub async fn load(s: &KeySources<'_>) -> anyhow::Result<Self> {
        let set = Self::load_local(s)?;
        if let Some(remote) = &set.remote {
            let n = remote.refresh().await.with_context(|| format!("key `auth.jwks_url`: {}", remote.url))?;
            tracing::debug!(url = %remote.url, keys = n, "JWKS fetched");
        }
        Ok(set)
    }

    /// Everything but the JWKS URL fetch (its set starts empty).
    pub fn load_local(s: &KeySources<'_>) -> anyhow::Result<Self> {
        let mut fixed = Vec::new();
        if !s.jwt_hs256_secret.is_empty() {
            fixed.push(VerifyKey {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(s.jwt_hs256_secret.as_bytes()),
                source: "auth.jwt_hs256_secret",
            });
        }
        if !s.jwt_public_key_pem.trim().is_empty() {
            fixed.extend(
                pem_keys(s.jwt_public_key_pem, "auth.jwt_public_key_pem")
                    .map_err(|e| anyhow!("key `auth.jwt_public_key_pem`: {e:#}"))?,
            );
        }
        if !s.jwt_public_key_file.trim().is_empty() {
            let path = &s.jwt_public_key_file;
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow!("key `auth.jwt_public_key_file`: cannot read {path}: {e}"))?;
            fixed.extend(
                pem_keys(&text, "auth.jwt_public_key_file")
                    .map_err(|e| anyhow!("key `auth.jwt_public_key_file`: {path}: {e:#}"))?,
            );
        }
        if !s.jwks_file.trim().is_empty() {
            let path = &s.jwks_file;
            let text =
                std::fs::read_to_string(path).map_err(|e| anyhow!("key `auth.jwks_file`: cannot read {path}: {e}"))?;
            fixed.extend(
                jwks_keys(&text, "auth.jwks_file").map_err(|e| anyhow!("key `auth.jwks_file`: {path}: {e:#}"))?,
            );
        }
        let remote = (!s.jwks_url.trim().is_empty())
            .then(|| Arc::new(RemoteJwks::new(s.jwks_url.trim().to_owned(), Duration::from_secs(s.jwks_refresh_secs))));
        Ok(Self { fixed: Arc::new(fixed), remote })
    }

    /// No key at all (fixed, and no URL to fetch from).
    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty() && self.remote.is_none()
    }

    /// "3 keys (auth.jwks_url: 2, auth.jwt_hs256_secret: 1)", for the start-up log.
    pub fn describe(&self) -> String {
        let remote = self.remote.as_ref().map(|r| r.keys()).unwrap_or_default();
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for k in self.fixed.iter().chain(remote.iter()) {
            match counts.iter_mut().find(|(s, _)| *s == k.source) {
                Some((_, n)) => *n += 1,
                None => counts.push((k.source, 1)),
            }
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        format!("{} keys ({})", self.fixed.len() + remote.len(), parts.join(", "))
    }
}

/// A JWKS at a URL: the keys last fetched, refreshed by [`RemoteJwks::keep_fresh`].
pub struct RemoteJwks {
    pub url: String,
    every: Duration,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    wake: tokio::sync::Notify,
    last_on_demand: Mutex<Option<Instant>>,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks").field("url", &self.url).field("keys", &self.keys().len()).finish_non_exhaustive()
    }
}

impl RemoteJwks {
    pub fn new(url: String, every: Duration) -> Self {
        Self {
            url,
            every,
            keys: RwLock::new(Arc::new(Vec::new())),
            wake: tokio::sync::Notify::new(),
            last_on_demand: Mutex::new(None),
        }
    }

    /// The keys of the last successful fetch.
    pub fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Fetch now; on success the fetched keys replace the old ones. Returns how many.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let body = http_get(&self.url).await?;
        let text = std::str::from_utf8(&body).map_err(|_| anyhow!("the document is not UTF-8"))?;
        let keys = jwks_keys(text, "auth.jwks_url")?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(n)
    }

    /// A token named a `kid` we do not know: the issuer may have rotated its keys. Wake the
    /// refresher, at most once per [`MIN_ON_DEMAND_GAP`] (unknown `kid`s cannot make us hammer
    /// the issuer).
    pub fn request_refresh(&self) {
        let mut last = self.last_on_demand.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= MIN_ON_DEMAND_GAP) {
            *last = Some(Instant::now());
            self.wake.notify_one();
        }
    }

    /// Refresh every `auth.jwks_refresh_secs` and when [`RemoteJwks::request_refresh`] asks;
    /// after a failure, retry sooner (the old keys stay in use meanwhile). `now`: fetch at once.
    pub async fn keep_fresh(self: Arc<Self>, now: bool) {
        let retry = self.every.min(Duration::from_secs(30));
        let mut wait = if now { Duration::ZERO } else { self.every };
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
            wait = match self.refresh().await {
                Ok(n) => {
                    tracing::debug!(url = %self.url, keys = n, "JWKS refreshed");
                    self.every
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %format!("{e:#}"), "cannot refresh the JWKS; keeping the keys it had");
                    retry
                }
            };
        }
    }
}

/// The public keys of a PEM text (one or more `-----BEGIN PUBLIC KEY-----` blocks).
pub fn pem_keys(text: &str, source: &'static str) -> anyhow::Result<Vec<VerifyKey>> {
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label = block["-----BEGIN ".len()..].split("-----").next().unwrap_or_default().to_owned();
        let end_marker = format!("-----END {label}-----");
        let end = block.find(&end_marker).ok_or_else(|| anyhow!("PEM block {label:?} has no END line"))?;
        let pem = &block[..end + end_marker.len()];
        rest = &block[end + end_marker.len()..];
        let n = keys.len() + 1;
        match label.as_str() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            l if l.contains("PRIVATE KEY") => bail!(
                "PEM block {n} is a private key; CLM needs only the public key (`openssl pkey -in key.pem -pubout`)"
            ),
            "CERTIFICATE" => {
                bail!(
                    "PEM block {n} is a certificate; give its public key (`openssl x509 -in cert.pem -pubkey -noout`)"
                )
            }
            other => bail!("PEM block {n} is a {other:?}, not a PUBLIC KEY"),
        }
        let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            check_rsa_size(&k).map_err(|e| anyhow!("PEM block {n}: {e}"))?;
            (Algorithm::RS256, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            (ec_algorithm(&k).map_err(|e| anyhow!("PEM block {n}: {e}"))?, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
            (Algorithm::EdDSA, k)
        } else {
            bail!("PEM block {n} is not an RSA, EC (P-256, P-384) or Ed25519 public key");
        };
        keys.push(VerifyKey { kid: None, alg, key, source });
    }
    if keys.is_empty() {
        bail!("no PEM public key (-----BEGIN PUBLIC KEY-----) found");
    }
    Ok(keys)
}

/// The signature keys of a JWKS document CLM can use; an error when there are none.
pub fn jwks_keys(text: &str, source: &'static str) -> anyhow::Result<Vec<VerifyKey>> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| anyhow!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        let kid = raw.get("kid").and_then(|v| v.as_str()).map(str::to_owned);
        let name = kid.clone().unwrap_or_else(|| format!("#{i}"));
        let key = serde_json::from_value::<Jwk>(raw).map_err(|e| anyhow!("{e}")).and_then(|jwk| {
            jwk_key(&jwk).map(|k| k.map(|(alg, key)| VerifyKey { kid: kid.clone(), alg, key, source }))
        });
        match key {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => {}
            Err(e) => tracing::warn!(key = %name, error = %e, "{source}: ignoring a JWKS key CLM cannot use"),
        }
    }
    if keys.is_empty() {
        bail!("the JWKS holds no signature key CLM can use (RSA, EC P-256/P-384 or Ed25519)");
    }
    Ok(keys)
}

/// A JWK's algorithm and key; `None` for keys that are not for signatures.
fn jwk_key(jwk: &Jwk) -> anyhow::Result<Option<(Algorithm, DecodingKey)>> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => bail!("unsupported `alg`"),
        Some(a) => Some(Algorithm::try_from(a).map_err(|_| anyhow!("`alg` {a} is not a signature algorithm"))?),
    };
    let (family_default, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            let key = DecodingKey::from_jwk(jwk)?;
            check_rsa_size(&key)?;
            (Algorithm::RS256, key)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let alg = match &p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                other => bail!("curve {other:?} is not supported"),
            };
            (alg, DecodingKey::from_jwk(jwk)?)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, DecodingKey::from_jwk(jwk)?)
        }
        AlgorithmParameters::OctetKey(_) => bail!("symmetric (`oct`) keys do not belong in a JWKS"),
        _ => bail!("unsupported key type"),
    };
    let alg = match declared {
        None => family_default,
        Some(a) if key.family() == jsonwebtoken::AlgorithmFamily::Rsa && rsa_algorithm(a) => a,
        Some(a) if a == family_default => a,
        Some(a) => bail!("`alg` {a:?} does not match the key type"),
    };
    Ok(Some((alg, key)))
}

fn rsa_algorithm(a: Algorithm) -> bool {
    matches!(
        a,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512
    )
}

/// ES256 for a P-256 point (65 bytes uncompressed), ES384 for P-384 (97).
fn ec_algorithm(key: &DecodingKey) -> anyhow::Result<Algorithm> {
    match key.try_get_as_bytes().map(<[u8]>::len) {
        Ok(65) => Ok(Algorithm::ES256),
        Ok(97) => Ok(Algorithm::ES384),
        _ => bail!("only P-256 and P-384 EC keys are supported"),
    }
}

fn check_rsa_size(key: &DecodingKey) -> anyhow::Result<()> {
    let jwk = Jwk::from_decoding_key(key, None)?;
    let AlgorithmParameters::RSA(p) = &jwk.algorithm else { bail!("not an RSA key") };
    use base64::Engine as _;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p.n.trim_end_matches('='))
        .map_err(|_| anyhow!("bad RSA modulus"))?;
    let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
    let bits = n.first().map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        bail!("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required");
    }
    Ok(())
}

/// GET `url` (http or https, HTTP/1.1; https verified against the system's roots, which
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` can replace) and return the body of a 200 answer.
async fn http_get(url: &str) -> anyhow::Result<Bytes> {
    use crate::http_client::{Client, Request};
    let request = Request::get(url)
        .header(http::header::ACCEPT, http::HeaderValue::from_static("application/jwk-set+json, application/json"))
        .header(http::header::USER_AGENT, http::HeaderValue::from_static(concat!("clm/", env!("CARGO_PKG_VERSION"))))
        .timeout(FETCH_TIMEOUT)
        .max_response_bytes(MAX_JWKS_BYTES);
    let response = Client::new().send(request).await?;
    if response.status != http::StatusCode::OK {
        bail!("HTTP {}", response.status);
    }
    Ok(response.body)
}
