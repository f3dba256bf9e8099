//! TLS (rustls, through tonic) for the gRPC port and for calls between CLM services.
//!
//! - `tls.cert_file` + `tls.key_file`: the port speaks TLS only.
//! - `tls.client_ca_file`: mutual TLS — a client must present a certificate this CA signed.
//! - Calls to other services at `https://` URLs verify them against `tls.ca_file` (or the
//!   system's roots) and present this process's certificate, so one certificate per service,
//!   valid for server and client authentication, gives mutual TLS between services.

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// TLS of the gRPC port and of calls to other CLM services (`[tls]` in the settings, `crate::config`).
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

fn read(key: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {path} (key `{key}`): {e}"))
}

fn identity(tls: &TlsSettings) -> anyhow::Result<Identity> {
    Ok(Identity::from_pem(read("tls.cert_file", &tls.cert_file)?, read("tls.key_file", &tls.key_file)?))
}

/// Read and parse every configured PEM file now, as part of the checks `serve` and
/// `check-config` share (`Settings::prepare`): a wrong path or a file without a certificate or
/// key is an error naming its key before anything listens.
pub fn check_files(tls: &TlsSettings) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certificates = |key: &str, path: &str| -> anyhow::Result<()> {
        let pem = read(key, path)?;
        let n = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("key `{key}`: {path}: not PEM certificates: {e}"))?
            .len();
        anyhow::ensure!(n > 0, "key `{key}`: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        Ok(())
    };
    if enabled(tls) {
        certificates("tls.cert_file", &tls.cert_file)?;
        PrivateKeyDer::from_pem_slice(&read("tls.key_file", &tls.key_file)?)
            .map_err(|e| anyhow::anyhow!("key `tls.key_file`: {}: no PEM private key: {e}", tls.key_file))?;
    }
    if !tls.client_ca_file.is_empty() {
        certificates("tls.client_ca_file", &tls.client_ca_file)?;
    }
    if !tls.ca_file.is_empty() {
        certificates("tls.ca_file", &tls.ca_file)?;
    }
    Ok(())
}

/// Whether the gRPC port speaks TLS.
pub fn enabled(tls: &TlsSettings) -> bool {
    !tls.cert_file.is_empty()
}

/// The server's TLS, or `None` for plaintext.
pub fn server_config(tls: &TlsSettings) -> anyhow::Result<Option<ServerTlsConfig>> {
    if !enabled(tls) {
        return Ok(None);
    }
    let mut config = ServerTlsConfig::new().identity(identity(tls)?);
    if !tls.client_ca_file.is_empty() {
        config = config.client_ca_root(Certificate::from_pem(read("tls.client_ca_file", &tls.client_ca_file)?));
    }
    Ok(Some(config))
}

/// TLS for a call to another service; `domain` overrides the name checked in its certificate.
pub fn client_config(tls: &TlsSettings, domain: Option<&str>) -> anyhow::Result<ClientTlsConfig> {
    let mut config = ClientTlsConfig::new();
    config = if tls.ca_file.is_empty() {
        config.with_native_roots()
    } else {
        config.ca_certificate(Certificate::from_pem(read("tls.ca_file", &tls.ca_file)?))
    };
    if enabled(tls) {
        config = config.identity(identity(tls)?);
    }
    if let Some(d) = domain {
        config = config.domain_name(d);
    }
    Ok(config)
}
