//! Typed settings, layered with the `config` crate.
//!
//! Order (later wins): built-in defaults (`defaults.toml`, compiled in) → `<dir>/default.toml`
//! → `<dir>/<env>.toml` → `CLM_*` environment variables. `<dir>` is `CLM_CONFIG_DIR` or `config`,
//! `<env>` is `CLM_ENV` or the `env` key. Unknown keys are rejected so a typo is an error, not
//! a silently ignored setting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("defaults.toml");

/// All settings of a CLM process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub env: String,
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    pub database: DatabaseSettings,
    pub events: EventSettings,
    pub contacts: ServiceSettings,
    pub lifecycle: ServiceSettings,
    pub feedback: ServiceSettings,
    pub metrics: ServiceSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen_addr: std::net::SocketAddr,
    pub request_timeout_ms: u64,
    pub max_concurrent_requests: usize,
    pub max_message_bytes: usize,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Dev,
    Jwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub dev_tenant: String,
    pub jwt_hs256_secret: String,
    pub jwt_rs256_public_key_pem: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub leeway_secs: u64,
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

/// Which bus carries events between services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventTransport {
    /// A durable log in a database (the single binary).
    Log,
    /// NATS JetStream (the distributed mode).
    Nats,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    pub transport: EventTransport,
    pub log_database_url: String,
    pub nats_url: String,
    pub nats_namespace: String,
    pub stream_prefix: String,
    pub consumer_prefix: String,
    pub relay_batch: u64,
    pub relay_poll_ms: u64,
    pub relay_linger_ms: u64,
    pub consumer_batch: usize,
}

/// TLS of the gRPC port and of calls to other CLM services (see `crate::tls`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of this process. With `key_file`: the port speaks TLS only.
    pub cert_file: String,
    pub key_file: String,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca_file: String,
    /// PEM CA bundle that signs the other services' certificates, for `https://` service URLs.
    /// Empty: the system's roots.
    pub ca_file: String,
}

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

        let built = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(optional_file(&dir.join("default.toml")))
            .add_source(optional_file(&dir.join(format!("{env_name}.toml"))))
            .add_source(env_source(&env_vars))
            .build()
            .map_err(|e| ConfigError(e.to_string()))?;
        let settings: Settings = built.try_deserialize().map_err(|e| ConfigError(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
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
        if self.server.max_message_bytes < 1024 {
            return bad("server.max_message_bytes", "must be at least 1024");
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return bad("telemetry.sample_ratio", "must be between 0 and 1");
        }
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt_hs256_secret.is_empty()
            && self.auth.jwt_rs256_public_key_pem.is_empty()
        {
            return bad(
                "auth.jwt_hs256_secret",
                "auth.mode is \"jwt\" but neither jwt_hs256_secret nor jwt_rs256_public_key_pem is set",
            );
        }
        if self.auth.mode == AuthMode::Dev && self.auth.dev_tenant.is_empty() {
            return bad("auth.dev_tenant", "must not be empty in dev mode");
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return bad("tls.cert_file", "tls.cert_file and tls.key_file go together: set both or neither");
        }
        if !self.tls.client_ca_file.is_empty() && self.tls.cert_file.is_empty() {
            return bad("tls.client_ca_file", "mutual TLS needs the server's own tls.cert_file and tls.key_file");
        }
        if self.database.max_connections == 0 || self.database.min_connections > self.database.max_connections {
            return bad("database.max_connections", "must be ≥ 1 and ≥ database.min_connections");
        }
        if self.events.relay_batch == 0 || self.events.consumer_batch == 0 {
            return bad("events.relay_batch", "relay_batch and consumer_batch must be at least 1");
        }
        if self.events.stream_prefix.is_empty()
            || !self.events.stream_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad("events.stream_prefix", "letters, digits and _ only");
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
        }
        Ok(())
    }

    /// Effective log format: `Auto` resolves to pretty in development, JSON elsewhere.
    pub fn log_format(&self) -> LogFormat {
        match self.telemetry.log_format {
            LogFormat::Auto if self.env == "development" || self.env == "test" => LogFormat::Pretty,
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
        assert_eq!(s.server.listen_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(s.auth.mode, AuthMode::Dev);
        assert_eq!(s.log_format(), LogFormat::Pretty);
        assert!(s.contacts.database_url.starts_with("sqlite:"));
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
            env: env(&[("CLM_ENV", "staging"), ("CLM_DATABASE__MAX_CONNECTIONS", "9")]),
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

    #[test]
    fn unknown_key_in_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), "[server]\nlisten_adr = \"0.0.0.0:1\"\n").unwrap();
        let err =
            Settings::load_from(&Sources { dir: Some(dir.path().into()), env: env(&[]) }).unwrap_err().to_string();
        assert!(err.contains("listen_adr"), "{err}");
    }
}
