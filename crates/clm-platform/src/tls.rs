//! TLS (rustls, through tonic) for the gRPC port and for calls between CLM services.
//!
//! - `tls.cert_file` + `tls.key_file`: the port speaks TLS only.
//! - `tls.client_ca_file`: mutual TLS — a client must present a certificate this CA signed.
//! - Calls to other services at `https://` URLs verify them against `tls.ca_file` (or the
//!   system's roots) and present this process's certificate, so one certificate per service,
//!   valid for server and client authentication, gives mutual TLS between services.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsSettings;

fn read(key: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {path} (key `{key}`): {e}"))
}

fn identity(tls: &TlsSettings) -> anyhow::Result<Identity> {
    Ok(Identity::from_pem(read("tls.cert_file", &tls.cert_file)?, read("tls.key_file", &tls.key_file)?))
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
