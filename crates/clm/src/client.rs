//! Talking to a running CLM from the command line (`clm seed`, `clm report`): the channel and
//! the credentials for a tenant (a minted admin token in jwt mode; none in dev mode).

use clm_platform::Settings;
use clm_platform::config::AuthMode;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer …` when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A channel to `addr` (default: this configuration's listen address) acting for `tenant`.
pub async fn connect(settings: &Settings, addr: Option<&str>, tenant: &str) -> anyhow::Result<Authed> {
    let url = match addr {
        Some(a) if a.starts_with("http") => a.to_owned(),
        Some(a) => format!("http://{a}"),
        None => format!("http://{}", settings.server.listen_addr),
    };
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach CLM at {url} (start it with `make run`): {e}"))?;
    let token = match settings.auth.mode {
        AuthMode::Dev => None,
        AuthMode::Jwt => {
            anyhow::ensure!(
                !settings.auth.jwt_hs256_secret.is_empty(),
                "jwt mode: set auth.jwt_hs256_secret (CLM_AUTH__JWT_HS256_SECRET) so the CLI can sign its token"
            );
            let claims = clm_platform::auth::Claims {
                sub: "cli".into(),
                tenant: tenant.to_owned(),
                scope: "clm.read clm.write clm.admin".into(),
                exp: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600,
                nbf: None,
                iss: (!settings.auth.jwt_issuer.is_empty()).then(|| settings.auth.jwt_issuer.clone()),
                aud: (!settings.auth.jwt_audience.is_empty()).then(|| settings.auth.jwt_audience.clone()),
            };
            let t = clm_platform::auth::mint_hs256(&settings.auth.jwt_hs256_secret, &claims)?;
            Some(format!("Bearer {t}").parse()?)
        }
    };
    Ok(InterceptedService::new(channel, Bearer(token)))
}
