//! Typed settings, layered with the `config` crate: the settings schema, its sources and its
//! validation; the larger sections (`auth`, `events`, `messaging`) in modules of their own.
//!
//! Order (later wins): built-in defaults (`defaults.toml`, compiled in) → the built-in profile of
//! the environment (`production.toml`, compiled in, for `env = "production"`) → `<dir>/default.toml`
//! → `<dir>/<env>.toml` → `CLM_*` environment variables. `<dir>` is `CLM_CONFIG_DIR` or `config`,
//! `<env>` is `CLM_ENV` or the `env` key. Unknown keys are rejected so a typo is an error, not
//! a silently ignored setting.
//!
//! What matters for security does not depend on a config directory being there: every
//! environment other than `development` and `test` is *deployed* and must authenticate callers
//! with JWTs checked for issuer and audience ([`Settings::load`] refuses anything else, whatever
//! the files say). [`Settings::prepare`] then loads the verification keys and the TLS files;
//! `serve` and `check-config` both go through [`Settings::load_for_serve`], so `check-config`
//! says ok exactly when `serve` would start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

mod auth;
mod events;
mod messaging;
pub use auth::{AuthMode, AuthSettings};
pub use events::{EventSettings, EventTransport};
pub use messaging::MessagingSettings;

const DEFAULTS: &str = include_str!("defaults.toml");

/// Built-in profiles, read right after the defaults when `env` names one: a container started
/// with `CLM_ENV=production` and no config directory gets them all the same.
const PROFILES: &[(&str, &str)] =
    &[("development", include_str!("development.toml")), ("production", include_str!("production.toml"))];

/// Environments where anything goes for a developer: dev auth allowed, issuer and audience
/// optional, pretty logs. Every other environment is deployed.
const LOCAL_ENVS: [&str; 2] = ["development", "test"];

/// Shortest accepted HS256 secret, in bytes (RFC 7518 § 3.2: at least the hash size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Bounds of `server.max_message_bytes`: below 16 KiB a page of contacts does not fit, above
/// 1 GiB one message could take the process's memory.
const MESSAGE_BYTES: std::ops::RangeInclusive<usize> = 16 * 1024..=1024 * 1024 * 1024;
/// Bounds of `server.max_header_bytes`: below 4 KiB a bearer token and a trace context may not
/// fit, above 1 MiB the HTTP/2 layer reads 4 MiB header blocks (`header_limit::http2_limit`).
const HEADER_BYTES: std::ops::RangeInclusive<usize> = 4 * 1024..=1024 * 1024;

/// Bounds of `pages.max_body_bytes`: a page's form is a few fields; a megabyte is plenty.
const PAGE_BODY_BYTES: std::ops::RangeInclusive<usize> = 1024..=1024 * 1024;

/// All settings of a CLM process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub env: String,
    pub server: ServerSettings,
    pub pages: PagesSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    pub database: DatabaseSettings,
    pub events: EventSettings,
    pub contacts: ServiceSettings,
    pub lifecycle: ServiceSettings,
    pub feedback: ServiceSettings,
    pub metrics: ServiceSettings,
    pub messaging: MessagingSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen_addr: std::net::SocketAddr,
    pub request_timeout_ms: u64,
    pub max_concurrent_requests: usize,
    pub max_message_bytes: usize,
    /// Largest request metadata (HTTP/2 header block: name + value + 32 bytes per field); a
    /// call over it gets RESOURCE_EXHAUSTED naming the limit (`crate::header_limit`).
    pub max_header_bytes: usize,
    pub shutdown_grace_ms: u64,
    pub health_check_interval_ms: u64,
    pub page_token_secret: String,
    /// Connections open at once (see `listener`).
    pub max_connections: usize,
    /// A new connection must send its first bytes (HTTP/2 preface, TLS hello) within this.
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing (not even a keepalive answer) this long is closed.
    pub idle_timeout_ms: u64,
    /// HTTP/2 keepalive: ping every connection this often; close it when a ping goes
    /// unanswered for `keepalive_timeout_ms`.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
}

/// `[pages]`: the hosted pages' HTTP server (`crate::pages`): the pages links in messages open
/// (unsubscribe, surveys), on a port of their own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagesSettings {
    pub listen_addr: std::net::SocketAddr,
    /// A request not answered within this gets 503.
    pub request_timeout_ms: u64,
    /// Largest request body (a form post); larger is 413.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[serde(alias = "")]
    Auto,
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub otlp_endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout_ms: u64,
    pub acquire_timeout_ms: u64,
    /// A pooled connection idle at least this long is pinged before it is handed out (one
    /// that a server, proxy or firewall dropped is replaced); 0 pings on every checkout.
    pub ping_idle_after_ms: u64,
    pub migrate_on_start: bool,
    /// SQLite: writes are refused (RESOURCE_EXHAUSTED) and readiness is NOT_SERVING while the
    /// file system holding a database has less than this many bytes free; 0 turns it off.
    pub min_free_bytes: u64,
}

/// TLS of the gRPC port and of calls to other CLM services: kept with the code that reads it.
pub use crate::tls::TlsSettings;

/// Settings owned by one service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub database_url: String,
    /// How often time-based rules run (lifecycle: dormancy, inactivity automations), ms.
    #[serde(default = "default_scheduler_interval")]
    pub scheduler_interval_ms: u64,
    /// Where this service calls the contacts service (lifecycle: automation conditions).
    /// Empty: the contacts service in the same process.
    #[serde(default)]
    pub contacts_url: String,
}

fn default_scheduler_interval() -> u64 {
    60_000
}

/// Why settings could not be loaded. The message names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Where the layered sources come from; `Default` reads the real process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directory holding `default.toml` / `<env>.toml`; `None` → `CLM_CONFIG_DIR` or `./config`.
    pub dir: Option<PathBuf>,
    /// Environment variables to use instead of the process environment (tests).
    pub env: Option<HashMap<String, String>>,
}

impl Settings {
    /// Load from the process environment and `./config` (or `CLM_CONFIG_DIR`).
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(&Sources::default())
    }

    /// Load from explicit sources (used by tests to exercise the layering).
    pub fn load_from(sources: &Sources) -> Result<Self, ConfigError> {
        let env_vars: HashMap<String, String> = match &sources.env {
            Some(vars) => vars.clone(),
            None => std::env::vars().collect(),
        };
        let dir = sources
            .dir
            .clone()
            .or_else(|| env_vars.get("CLM_CONFIG_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"));

        // The environment name may itself come from a file or the env, so resolve it first.
        let base = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(optional_file(&dir.join("default.toml")))
            .add_source(env_source(&env_vars))
            .build()
            .map_err(|e| ConfigError(e.to_string()))?;
        let env_name: String = base.get("env").map_err(|e| ConfigError(e.to_string()))?;
        if env_name.is_empty() || !env_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError(format!(
                "key `env`: {env_name:?} is not a valid environment name (letters, digits, - and _)"
            )));
        }

        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some((_, profile)) = PROFILES.iter().find(|(name, _)| *name == env_name) {
            builder = builder.add_source(File::from_str(profile, FileFormat::Toml));
        }
        let built = builder
            .add_source(optional_file(&dir.join("default.toml")))
            .add_source(optional_file(&dir.join(format!("{env_name}.toml"))))
            .add_source(env_source(&env_vars))
            .build()
            .map_err(|e| ConfigError(e.to_string()))?;
        let settings: Settings = built.try_deserialize().map_err(|e| {
            let e = e.to_string();
            if e.contains("jwt_rs256_public_key_pem") {
                ConfigError(format!(
                    "{e} (auth.jwt_rs256_public_key_pem is now auth.jwt_public_key_pem, for any key type)"
                ))
            } else {
                ConfigError(e)
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Load, then [`Settings::prepare`]: everything `serve` checks before it binds. `serve` and
    /// `check-config` (of `clm` and of every service binary) call this and nothing else, so
    /// `check-config` accepts exactly what `serve` accepts.
    pub async fn load_for_serve() -> Result<Self, ConfigError> {
        Self::load_for_serve_from(&Sources::default()).await
    }

    /// [`Settings::load_for_serve`] from explicit sources.
    pub async fn load_for_serve_from(sources: &Sources) -> Result<Self, ConfigError> {
        let mut settings = Self::load_from(sources)?;
        settings.prepare().await?;
        Ok(settings)
    }

    /// What starting a server needs beyond valid values: the auth verification keys loaded and
    /// checked (PEM parsed, JWKS file parsed, `auth.jwks_url` fetched once; kept in
    /// `auth.keys` for the server) and the TLS files read and parsed. Errors name the key.
    pub async fn prepare(&mut self) -> Result<(), ConfigError> {
        if self.auth.mode == AuthMode::Jwt && self.auth.keys.is_none() {
            let keys = crate::jwt_keys::KeySet::load(&self.auth.key_sources())
                .await
                .map_err(|e| ConfigError(format!("{e:#}")))?;
            self.auth.keys = Some(keys);
        }
        crate::tls::check_files(&self.tls).map_err(|e| ConfigError(format!("{e:#}")))?;
        Ok(())
    }

    /// `development` and `test` are local; every other environment is deployed: real auth only.
    pub fn is_local_env(&self) -> bool {
        LOCAL_ENVS.contains(&self.env.as_str())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("key `{key}`: {why}")));
        if self.server.max_concurrent_requests == 0 {
            return bad("server.max_concurrent_requests", "must be at least 1");
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1");
        }
        for (key, v) in [
            ("server.handshake_timeout_ms", self.server.handshake_timeout_ms),
            ("server.keepalive_interval_ms", self.server.keepalive_interval_ms),
            ("server.keepalive_timeout_ms", self.server.keepalive_timeout_ms),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if self.server.idle_timeout_ms <= self.server.keepalive_interval_ms + self.server.keepalive_timeout_ms {
            return bad(
                "server.idle_timeout_ms",
                "must exceed keepalive_interval_ms + keepalive_timeout_ms (live clients are idle between pings)",
            );
        }
        if self.server.request_timeout_ms == 0 {
            return bad("server.request_timeout_ms", "must be at least 1");
        }
        if !MESSAGE_BYTES.contains(&self.server.max_message_bytes) {
            return bad("server.max_message_bytes", "must be between 16384 (16 KiB) and 1073741824 (1 GiB)");
        }
        if !HEADER_BYTES.contains(&self.server.max_header_bytes) {
            return bad("server.max_header_bytes", "must be between 4096 (4 KiB) and 1048576 (1 MiB)");
        }
        if self.pages.request_timeout_ms == 0 {
            return bad("pages.request_timeout_ms", "must be at least 1");
        }
        if !PAGE_BODY_BYTES.contains(&self.pages.max_body_bytes) {
            return bad("pages.max_body_bytes", "must be between 1024 (1 KiB) and 1048576 (1 MiB)");
        }
        if self.pages.listen_addr.port() != 0 && self.pages.listen_addr == self.server.listen_addr {
            return bad(
                "pages.listen_addr",
                "must differ from server.listen_addr (the pages have a port of their own)",
            );
        }
        if self.server.health_check_interval_ms < 100 {
            return bad("server.health_check_interval_ms", "must be at least 100 (ms)");
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return bad("telemetry.sample_ratio", "must be between 0 and 1");
        }
        self.validate_auth()?;
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return bad("tls.cert_file", "tls.cert_file and tls.key_file go together: set both or neither");
        }
        if !self.tls.client_ca_file.is_empty() && self.tls.cert_file.is_empty() {
            return bad("tls.client_ca_file", "mutual TLS needs the server's own tls.cert_file and tls.key_file");
        }
        if self.database.max_connections == 0 || self.database.min_connections > self.database.max_connections {
            return bad("database.max_connections", "must be ≥ 1 and ≥ database.min_connections");
        }
        if self.database.connect_timeout_ms == 0 {
            return bad("database.connect_timeout_ms", "must be at least 1");
        }
        if self.database.acquire_timeout_ms == 0 {
            return bad("database.acquire_timeout_ms", "must be at least 1");
        }
        if self.events.relay_batch == 0 {
            return bad("events.relay_batch", "must be at least 1");
        }
        if self.events.consumer_batch == 0 {
            return bad("events.consumer_batch", "must be at least 1");
        }
        if self.events.order_wait_ms < 15_000 {
            return bad(
                "events.order_wait_ms",
                "must be at least 15000 (ms): above the bus's 10 s redelivery of a killed replica's events",
            );
        }
        if self.events.relay_poll_ms < 10 {
            // The relay is woken by every commit; this is only how often an idle one looks.
            return bad("events.relay_poll_ms", "must be at least 10 (ms); lower only spins a core");
        }
        self.validate_retention()?;
        self.messaging.validate(self.is_local_env())?;
        if self.events.stream_prefix.is_empty()
            || !self.events.stream_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad("events.stream_prefix", "letters, digits and _ only");
        }
        if self.lifecycle.scheduler_interval_ms < 100 {
            return bad("lifecycle.scheduler_interval_ms", "must be at least 100 (ms)");
        }
        for (key, svc) in [
            ("contacts", &self.contacts),
            ("lifecycle", &self.lifecycle),
            ("feedback", &self.feedback),
            ("metrics", &self.metrics),
        ] {
            let url = &svc.database_url;
            if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError(format!(
                    "key `{key}.database_url`: must start with sqlite: or postgres:// (got a value of {} chars)",
                    url.len()
                )));
            }
            let contacts = &svc.contacts_url;
            if !(contacts.is_empty() || contacts.starts_with("http://") || contacts.starts_with("https://")) {
                return Err(ConfigError(format!(
                    "key `{key}.contacts_url`: must be an http:// or https:// URL (e.g. http://clm-contacts:50051), or empty"
                )));
            }
        }
        Ok(())
    }

    /// Retention: the inbox outlives what the bus can still deliver (else an event delivered
    /// again after its key was pruned would be applied twice); sane pruning and replicas.
    fn validate_retention(&self) -> Result<(), ConfigError> {
        let e = &self.events;
        let bad = |key: &str, why: String| Err(ConfigError(format!("key `{key}`: {why}")));
        let (bus_key, bus_hours) = match e.transport {
            EventTransport::Log => ("events.log_retention_hours", e.log_retention_hours),
            EventTransport::Nats => ("events.stream_max_age_hours", e.stream_max_age_hours),
        };
        // 0 is "forever": the longest of all.
        let forever = |h: u64| if h == 0 { u64::MAX } else { h };
        if forever(e.inbox_retention_hours) < forever(bus_hours) {
            let bus = if bus_hours == 0 { "forever (0)".to_owned() } else { format!("{bus_hours} h") };
            return bad(
                "events.inbox_retention_hours",
                format!(
                    "is {} h but `{bus_key}` keeps events {bus}: the inbox must remember every event the bus can \
                     still deliver (a consumer rewound or recreated would apply the others twice); set it to at \
                     least {bus_key}, or 0 (keep forever)",
                    e.inbox_retention_hours
                ),
            );
        }
        if !(1..=5).contains(&e.stream_replicas) {
            return bad("events.stream_replicas", "must be between 1 and 5 (JetStream's maximum)".into());
        }
        if e.prune_interval_ms < 1000 {
            return bad("events.prune_interval_ms", "must be at least 1000 (ms)".into());
        }
        Ok(())
    }

    /// The `[auth]` rules. Dev auth only in a local environment; a deployed one needs JWTs with
    /// issuer, audience and a key; an HS256 secret is ≥ 32 bytes wherever it is set.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let bad = |key: &str, why: String| Err(ConfigError(format!("key `{key}`: {why}")));
        match a.mode {
            AuthMode::Dev if !self.is_local_env() => {
                return bad(
                    "auth.mode",
                    format!(
                        "\"dev\" (every caller acts as tenant `{}` with every scope, no token) is only allowed when \
                         env is \"development\" or \"test\", and env is {:?}; set auth.mode = \"jwt\" with \
                         auth.jwt_issuer, auth.jwt_audience and a verification key (docs/operations.md)",
                        a.dev_tenant, self.env
                    ),
                );
            }
            AuthMode::Dev => {
                if crate::tenant::TenantId::parse(&a.dev_tenant).is_err() {
                    return bad("auth.dev_tenant", "must be 1-64 characters of letters, digits, '_' or '-'".into());
                }
            }
            AuthMode::Jwt => {}
        }
        if !a.jwt_hs256_secret.is_empty() && a.jwt_hs256_secret.len() < MIN_HS256_SECRET_BYTES {
            return bad(
                "auth.jwt_hs256_secret",
                format!(
                    "is {} bytes; an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} random bytes \
                     (e.g. `openssl rand -hex 32`)",
                    a.jwt_hs256_secret.len()
                ),
            );
        }
        if a.leeway_secs > 300 {
            return bad("auth.leeway_secs", "must be at most 300 (s): a larger skew keeps expired tokens valid".into());
        }
        if !(10..=86_400).contains(&a.jwks_refresh_secs) {
            return bad("auth.jwks_refresh_secs", "must be between 10 and 86400 (s)".into());
        }
        if !a.jwks_url.is_empty() {
            let ok = a.jwks_url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return bad("auth.jwks_url", "must be an https:// (or http://) URL of a JWKS document".into());
            }
        }
        if a.mode != AuthMode::Jwt {
            return Ok(());
        }
        let mut missing = Vec::new();
        if !self.is_local_env() {
            if a.jwt_issuer.trim().is_empty() {
                missing.push("key `auth.jwt_issuer` (CLM_AUTH__JWT_ISSUER): the `iss` every token must carry");
            }
            if a.jwt_audience.trim().is_empty() {
                missing.push("key `auth.jwt_audience` (CLM_AUTH__JWT_AUDIENCE): the `aud` every token must carry");
            }
        }
        if !a.has_key() {
            missing.push(
                "a verification key: `auth.jwks_url` (CLM_AUTH__JWKS_URL), `auth.jwks_file`, \
                 `auth.jwt_public_key_pem`, `auth.jwt_public_key_file` or `auth.jwt_hs256_secret`",
            );
        }
        if !missing.is_empty() {
            return Err(ConfigError(format!(
                "auth.mode is \"jwt\" (env {:?}) but its configuration is incomplete; set {}",
                self.env,
                missing.join("; ")
            )));
        }
        if a.jwt_hs256_secret.is_empty()
            && let Some(svc) = ["lifecycle", "feedback", "metrics"]
                .into_iter()
                .find(|name| self.service(name).is_some_and(|s| !s.contacts_url.is_empty()))
        {
            return bad(
                "auth.jwt_hs256_secret",
                format!(
                    "`{svc}.contacts_url` is set, and a service calls the contacts service there with a \
                     short-lived token signed with this secret; set the same secret on every service"
                ),
            );
        }
        Ok(())
    }

    /// Effective log format: `Auto` resolves to pretty in development, JSON elsewhere.
    pub fn log_format(&self) -> LogFormat {
        match self.telemetry.log_format {
            LogFormat::Auto if self.is_local_env() => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }

    /// The settings section of a service, by its short name.
    pub fn service(&self, name: &str) -> Option<&ServiceSettings> {
        match name {
            "contacts" => Some(&self.contacts),
            "lifecycle" => Some(&self.lifecycle),
            "feedback" => Some(&self.feedback),
            "metrics" => Some(&self.metrics),
            _ => None,
        }
    }
}

fn optional_file(path: &Path) -> File<config::FileSourceFile, FileFormat> {
    File::from(path).format(FileFormat::Toml).required(false)
}

fn env_source(vars: &HashMap<String, String>) -> Environment {
    Environment::with_prefix("CLM")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(vars.iter().filter(|(k, _)| is_setting_var(k)).map(|(k, v)| (k.clone(), v.clone())).collect()))
}

/// Only `CLM_ENV` and `CLM_<SECTION>__<KEY>` are settings. Anything else that happens to start
/// with `CLM_` (Kubernetes service links such as `CLM_CONTACTS_PORT`, the test suite's
/// `CLM_TEST_*`, `CLM_CONFIG_DIR`) is not, and must not trip the unknown-key check.
fn is_setting_var(name: &str) -> bool {
    name == "CLM_ENV" || name.strip_prefix("CLM_").is_some_and(|rest| rest.contains("__"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect())
    }

    #[test]
    fn defaults_load_without_files_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(&[]) }).unwrap();
        assert_eq!(s.messaging.mailbox_dir, "data/mailbox", "development writes email to files");
        let test = Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(&[("CLM_ENV", "test")]) });
        assert_eq!(test.unwrap().messaging.mailbox_dir, "", "only development does");
        assert_eq!(s.server.listen_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(s.pages.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.auth.mode, AuthMode::Dev);
        assert_eq!(s.log_format(), LogFormat::Pretty);
        assert!(s.contacts.database_url.starts_with("sqlite:"));
    }

    #[test]
    fn deployed_environments_need_messaging_secrets_and_refuse_private_webhooks() {
        let base = [
            ("CLM_ENV", "production"),
            ("CLM_AUTH__JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef"),
            ("CLM_AUTH__JWT_ISSUER", "https://idp.example.com/"),
            ("CLM_AUTH__JWT_AUDIENCE", "clm"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let load = |extra: &[(&str, &str)]| {
            let vars: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
            Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(&vars) })
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let secret = ("CLM_MESSAGING__LINK_SECRET", "0123456789abcdef0123456789abcdef");
        let url = ("CLM_MESSAGING__PUBLIC_URL", "https://clm.example.com");
        assert!(load(&[url]).unwrap_err().contains("messaging.link_secret"));
        assert!(
            load(&[secret, ("CLM_MESSAGING__LINK_SECRET", "short")]).unwrap_err().contains("messaging.link_secret")
        );
        assert!(load(&[secret]).unwrap_err().contains("messaging.public_url"));
        assert!(
            load(&[secret, ("CLM_MESSAGING__PUBLIC_URL", "http://clm.example.com")])
                .unwrap_err()
                .contains("public_url")
        );
        let private = ("CLM_MESSAGING__ALLOW_PRIVATE_WEBHOOKS", "true");
        assert!(load(&[secret, url, private]).unwrap_err().contains("messaging.allow_private_webhooks"));
        load(&[secret, url]).unwrap();
        let bad_smtp = ("CLM_MESSAGING__SMTP_URL", "mailto:x@y");
        assert!(load(&[secret, url, bad_smtp]).unwrap_err().contains("messaging.smtp_url"));
        // Credentials never in the clear when deployed; a relay without them may be plain.
        for clear in ["smtp://me:pw@relay:587", "smtp://me:pw@relay:587?tls=opportunistic"] {
            let err = load(&[secret, url, ("CLM_MESSAGING__SMTP_URL", clear)]).unwrap_err();
            assert!(err.contains("messaging.smtp_url") && err.contains("TLS"), "{clear}: {err}");
        }
        for fine in ["smtps://me:pw@relay:465", "smtp://me:pw@relay:587?tls=required", "smtp://mailpit:1025"] {
            load(&[secret, url, ("CLM_MESSAGING__SMTP_URL", fine)]).unwrap();
        }
        let ca = ("CLM_MESSAGING__SMTP_CA_FILE", "/etc/ssl/relay-ca.pem");
        let plain = ("CLM_MESSAGING__SMTP_URL", "smtp://mailpit:1025");
        assert!(load(&[secret, url, plain, ca]).unwrap_err().contains("messaging.smtp_ca_file"));
        // Email to local files is for development only (its profile sets the directory).
        let mailbox = ("CLM_MESSAGING__MAILBOX_DIR", "/tmp/mail");
        let err = load(&[secret, url, mailbox]).unwrap_err();
        assert!(err.contains("messaging.mailbox_dir"), "{err}");
        let staging = [
            secret,
            url,
            ("CLM_ENV", "staging"),
            ("CLM_AUTH__MODE", "jwt"),
            ("CLM_MESSAGING__ALLOW_PRIVATE_WEBHOOKS", "false"),
        ];
        load(&staging).unwrap();
        let with = |more: &[(&'static str, &'static str)]| [&staging[..], more].concat();
        assert!(load(&with(&[mailbox])).unwrap_err().contains("messaging.mailbox_dir"));
        load(&with(&[mailbox, ("CLM_MESSAGING__SMTP_URL", "smtps://relay.example.com:465")])).unwrap();
    }

    #[test]
    fn precedence_is_default_then_file_then_env_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "[server]\nmax_concurrent_requests = 7\nrequest_timeout_ms = 1111\n[database]\nmax_connections = 3\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("staging.toml"), "[server]\nrequest_timeout_ms = 2222\n").unwrap();
        let s = Settings::load_from(&Sources {
            dir: Some(dir.path().into()),
            env: env(&[
                ("CLM_ENV", "staging"),
                ("CLM_DATABASE__MAX_CONNECTIONS", "9"),
                // staging is a deployed environment: real auth only.
                ("CLM_AUTH__MODE", "jwt"),
                ("CLM_AUTH__JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef"),
                ("CLM_AUTH__JWT_ISSUER", "https://idp.example.com/"),
                ("CLM_AUTH__JWT_AUDIENCE", "clm"),
                ("CLM_MESSAGING__LINK_SECRET", "0123456789abcdef0123456789abcdef"),
                ("CLM_MESSAGING__PUBLIC_URL", "https://clm.example.com"),
                ("CLM_MESSAGING__ALLOW_PRIVATE_WEBHOOKS", "false"),
            ]),
        })
        .unwrap();
        assert_eq!(s.server.max_concurrent_requests, 7, "file overrides default");
        assert_eq!(s.server.request_timeout_ms, 2222, "env file overrides default file");
        assert_eq!(s.database.max_connections, 9, "env var overrides files");
        assert_eq!(s.server.shutdown_grace_ms, 20000, "untouched keys keep the built-in default");
        assert_eq!(s.log_format(), LogFormat::Json, "non-development env logs JSON");
    }

    #[test]
    fn bad_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = Settings::load_from(&Sources {
            dir: Some(dir.path().into()),
            env: env(&[("CLM_SERVER__MAX_MESSAGE_BYTES", "lots")]),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.max_message_bytes"), "{err}");

        let err =
            Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(&[("CLM_AUTH__MODE", "jwt")]) })
                .unwrap_err()
                .to_string();
        assert!(err.contains("auth.jwt_hs256_secret"), "{err}");

        let err = Settings::load_from(&Sources {
            dir: Some(dir.path().into()),
            env: env(&[("CLM_SERVER__LISTEN_ADDR", "not-an-address")]),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.listen_addr"), "{err}");

        for (vars, key) in [
            (&[("CLM_TLS__CERT_FILE", "/x.pem")][..], "tls.cert_file"),
            (&[("CLM_TLS__CLIENT_CA_FILE", "/ca.pem")][..], "tls.client_ca_file"),
        ] {
            let err =
                Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(vars) }).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn unrelated_clm_variables_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_from(&Sources {
            dir: Some(dir.path().into()),
            env: env(&[("CLM_CONTACTS_PORT", "tcp://10.0.0.1:50051"), ("CLM_TEST_DATABASE_URL", "postgres://x")]),
        });
        assert!(s.is_ok(), "{s:?}");
    }

    fn load_err(pairs: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        match Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(pairs) }) {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn production_without_auth_settings_refuses_naming_the_missing_keys() {
        // No config directory at all: the production profile is built in.
        let err = load_err(&[("CLM_ENV", "production")]);
        for key in ["auth.jwt_issuer", "auth.jwt_audience", "auth.jwks_url"] {
            assert!(err.contains(key), "{key} not named: {err}");
        }
    }

    #[test]
    fn production_refuses_dev_auth_whatever_the_files_say() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("production.toml"), "[auth]\nmode = \"dev\"\n").unwrap();
        let err =
            Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(&[("CLM_ENV", "production")]) })
                .unwrap_err()
                .to_string();
        assert!(err.contains("auth.mode"), "{err}");
        let err = load_err(&[("CLM_ENV", "staging"), ("CLM_AUTH__MODE", "dev")]);
        assert!(err.contains("auth.mode"), "any deployed environment: {err}");
    }

    #[test]
    fn production_needs_issuer_and_audience() {
        let secret = "0123456789abcdef0123456789abcdef";
        let err = load_err(&[("CLM_ENV", "production"), ("CLM_AUTH__JWT_HS256_SECRET", secret)]);
        assert!(err.contains("auth.jwt_issuer") && err.contains("auth.jwt_audience"), "{err}");
        let err = load_err(&[
            ("CLM_ENV", "production"),
            ("CLM_AUTH__JWT_HS256_SECRET", secret),
            ("CLM_AUTH__JWT_ISSUER", "https://idp.example.com/"),
        ]);
        assert!(err.contains("auth.jwt_audience") && !err.contains("auth.jwt_issuer"), "{err}");
    }

    #[test]
    fn weak_hs256_secret_is_refused_in_every_environment() {
        for env_name in ["development", "test", "production"] {
            let err = load_err(&[
                ("CLM_ENV", env_name),
                ("CLM_AUTH__MODE", "jwt"),
                ("CLM_AUTH__JWT_HS256_SECRET", "x"),
                ("CLM_AUTH__JWT_ISSUER", "https://idp.example.com/"),
                ("CLM_AUTH__JWT_AUDIENCE", "clm"),
            ]);
            assert!(err.contains("auth.jwt_hs256_secret") && err.contains("32"), "{env_name}: {err}");
        }
    }

    #[test]
    fn nonsensical_values_are_refused_naming_the_key() {
        for (var, value, key) in [
            ("CLM_EVENTS__RELAY_POLL_MS", "0", "events.relay_poll_ms"),
            ("CLM_EVENTS__RELAY_BATCH", "0", "events.relay_batch"),
            ("CLM_EVENTS__CONSUMER_BATCH", "0", "events.consumer_batch"),
            ("CLM_EVENTS__ORDER_WAIT_MS", "1000", "events.order_wait_ms"),
            ("CLM_SERVER__HEALTH_CHECK_INTERVAL_MS", "0", "server.health_check_interval_ms"),
            ("CLM_SERVER__MAX_CONCURRENT_REQUESTS", "0", "server.max_concurrent_requests"),
            ("CLM_SERVER__MAX_MESSAGE_BYTES", "2048", "server.max_message_bytes"),
            ("CLM_SERVER__MAX_HEADER_BYTES", "1024", "server.max_header_bytes"),
            ("CLM_SERVER__MAX_HEADER_BYTES", "2000000", "server.max_header_bytes"),
            ("CLM_PAGES__LISTEN_ADDR", "127.0.0.1:50051", "pages.listen_addr"),
            ("CLM_PAGES__LISTEN_ADDR", "not-an-address", "pages.listen_addr"),
            ("CLM_PAGES__REQUEST_TIMEOUT_MS", "0", "pages.request_timeout_ms"),
            ("CLM_PAGES__MAX_BODY_BYTES", "10", "pages.max_body_bytes"),
            ("CLM_DATABASE__CONNECT_TIMEOUT_MS", "0", "database.connect_timeout_ms"),
            ("CLM_DATABASE__ACQUIRE_TIMEOUT_MS", "0", "database.acquire_timeout_ms"),
            ("CLM_LIFECYCLE__SCHEDULER_INTERVAL_MS", "0", "lifecycle.scheduler_interval_ms"),
            ("CLM_AUTH__LEEWAY_SECS", "86400", "auth.leeway_secs"),
            ("CLM_LIFECYCLE__CONTACTS_URL", "clm-contacts:50051", "lifecycle.contacts_url"),
            ("CLM_AUTH__JWKS_REFRESH_SECS", "0", "auth.jwks_refresh_secs"),
            ("CLM_AUTH__JWKS_URL", "ftp://idp.example.com/jwks", "auth.jwks_url"),
            ("CLM_AUTH__JWT_RS256_PUBLIC_KEY_PEM", "x", "auth.jwt_public_key_pem"),
        ] {
            let err = load_err(&[(var, value)]);
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    /// Retention: whole hours (so an outbox row outlives NATS's 2-minute fsync window and an
    /// inbox key any redelivery), the inbox at least as long as the bus in use, sane replicas
    /// and pruning interval.
    #[test]
    fn retention_values_are_checked_naming_the_key() {
        for (pairs, key) in [
            (&[("CLM_EVENTS__OUTBOX_RETENTION_HOURS", "0.1")][..], "events.outbox_retention_hours"),
            (&[("CLM_EVENTS__INBOX_RETENTION_HOURS", "0.5")][..], "events.inbox_retention_hours"),
            (&[("CLM_EVENTS__LOG_RETENTION_HOURS", "-1")][..], "events.log_retention_hours"),
            (&[("CLM_EVENTS__STREAM_REPLICAS", "0")][..], "events.stream_replicas"),
            (&[("CLM_EVENTS__STREAM_REPLICAS", "7")][..], "events.stream_replicas"),
            (&[("CLM_EVENTS__PRUNE_INTERVAL_MS", "10")][..], "events.prune_interval_ms"),
            // The log keeps 720 h by default: an inbox forgetting sooner could apply twice what
            // a rewound consumer reads again.
            (&[("CLM_EVENTS__INBOX_RETENTION_HOURS", "24")][..], "events.inbox_retention_hours"),
            (&[("CLM_EVENTS__LOG_RETENTION_HOURS", "0")][..], "events.inbox_retention_hours"),
            (
                &[
                    ("CLM_EVENTS__TRANSPORT", "nats"),
                    ("CLM_EVENTS__STREAM_MAX_AGE_HOURS", "2000"),
                    ("CLM_EVENTS__INBOX_RETENTION_HOURS", "1000"),
                ][..],
                "events.inbox_retention_hours",
            ),
        ] {
            let err = load_err(pairs);
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
        let err = load_err(&[("CLM_EVENTS__TRANSPORT", "nats"), ("CLM_EVENTS__STREAM_MAX_AGE_HOURS", "0")]);
        assert!(err.contains("events.inbox_retention_hours") && err.contains("events.stream_max_age_hours"), "{err}");

        let ok = |pairs: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(pairs) })
                .unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
        };
        let s = ok(&[]);
        let r = crate::events::prune::Retention::from_settings(&s.events);
        let days = |d: u64| Some(std::time::Duration::from_secs(d * 86_400));
        assert_eq!((r.outbox, r.inbox, r.log), (days(7), days(30), days(30)), "the documented defaults");
        assert_eq!(r.interval, std::time::Duration::from_mins(5));
        // Keeping forever is always allowed; the transport not in use does not count.
        ok(&[("CLM_EVENTS__LOG_RETENTION_HOURS", "0"), ("CLM_EVENTS__INBOX_RETENTION_HOURS", "0")]);
        let s = ok(&[
            ("CLM_EVENTS__TRANSPORT", "nats"),
            ("CLM_EVENTS__STREAM_MAX_AGE_HOURS", "48"),
            ("CLM_EVENTS__INBOX_RETENTION_HOURS", "48"),
            ("CLM_EVENTS__OUTBOX_RETENTION_HOURS", "0"),
        ]);
        let r = crate::events::prune::Retention::from_settings(&s.events);
        assert_eq!((r.outbox, r.inbox), (None, days(2)));
    }

    async fn serve_err(pairs: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        match Settings::load_for_serve_from(&Sources { dir: Some(dir.path().into()), env: env(pairs) }).await {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// `check-config` and `serve` both call `load_for_serve`: it refuses what `load` refuses and
    /// what only starting would have found (keys that do not parse, files that are not there).
    #[tokio::test]
    async fn the_check_serve_and_check_config_share_refuses_bad_values_keys_and_files() {
        assert!(serve_err(&[("CLM_EVENTS__RELAY_POLL_MS", "0")]).await.contains("events.relay_poll_ms"));
        let jwt = [("CLM_AUTH__MODE", "jwt")];
        for (var, value, key) in [
            (
                "CLM_AUTH__JWT_PUBLIC_KEY_PEM",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "auth.jwt_public_key_pem",
            ),
            ("CLM_AUTH__JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem", "auth.jwt_public_key_file"),
            ("CLM_AUTH__JWKS_FILE", "/nonexistent/jwks.json", "auth.jwks_file"),
            ("CLM_AUTH__JWKS_URL", "http://127.0.0.1:9/jwks.json", "auth.jwks_url"),
        ] {
            let mut vars = jwt.to_vec();
            vars.push((var, value));
            let err = serve_err(&vars).await;
            assert!(err.contains(key), "{var}: {err}");
        }
        let err =
            serve_err(&[("CLM_TLS__CERT_FILE", "/nonexistent/c.pem"), ("CLM_TLS__KEY_FILE", "/nonexistent/k.pem")])
                .await;
        assert!(err.contains("tls.cert_file"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        std::fs::write(&pem, include_str!("../testdata/jwt/ec-public.pem")).unwrap();
        let ok = Settings::load_for_serve_from(&Sources {
            dir: Some(dir.path().into()),
            env: env(&[
                ("CLM_ENV", "production"),
                ("CLM_AUTH__JWT_ISSUER", "https://idp.example.com/"),
                ("CLM_AUTH__JWT_AUDIENCE", "clm"),
                ("CLM_AUTH__JWT_PUBLIC_KEY_FILE", pem.to_str().unwrap()),
                ("CLM_MESSAGING__LINK_SECRET", "0123456789abcdef0123456789abcdef"),
                ("CLM_MESSAGING__PUBLIC_URL", "https://clm.example.com"),
            ]),
        })
        .await
        .unwrap();
        assert_eq!(ok.auth.mode, AuthMode::Jwt, "the built-in production profile");
        assert!(!ok.messaging.allow_private_webhooks, "the production profile refuses private webhooks");
        assert_eq!(ok.server.listen_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(ok.pages.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(ok.auth.keys.as_ref().map(|k| k.fixed.len()), Some(1), "keys kept for the server");
    }

    #[test]
    fn unknown_key_in_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), "[server]\nlisten_adr = \"0.0.0.0:1\"\n").unwrap();
        let err =
            Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(&[]) }).unwrap_err().to_string();
        assert!(err.contains("listen_adr"), "{err}");
    }
}
