//! Synchronous questions lifecycle asks the contacts service over gRPC (trace context
//! propagated): does a contact match a filter, is it in a segment? Used by automation
//! conditions, answered where the contact data lives.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use clm_platform::auth::{Claims, mint_hs256};
use clm_platform::client::TracedChannel;
use clm_platform::config::{AuthMode, AuthSettings};
use clm_platform::{Error, TenantId};
use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use uuid::Uuid;

#[derive(Clone)]
pub struct ContactsProbe {
    url: String,
    local: Arc<OnceLock<SocketAddr>>,
    auth: AuthSettings,
    channel: Arc<OnceLock<TracedChannel>>,
}

impl std::fmt::Debug for ContactsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactsProbe").field("url", &self.url).finish_non_exhaustive()
    }
}

impl ContactsProbe {
    /// `url` empty: the contacts service in this process, at `local` once the server listens.
    pub fn new(url: String, local: Arc<OnceLock<SocketAddr>>, auth: &AuthSettings) -> Self {
        Self { url, local, auth: auth.clone(), channel: Arc::new(OnceLock::new()) }
    }

    fn channel(&self) -> Result<TracedChannel, Error> {
        if let Some(c) = self.channel.get() {
            return Ok(c.clone());
        }
        let url = if self.url.is_empty() {
            let addr =
                self.local.get().ok_or_else(|| Error::Unavailable("the local server is not listening yet".into()))?;
            format!("http://127.0.0.1:{}", addr.port())
        } else {
            self.url.clone()
        };
        let ch =
            clm_platform::client::channel(&url).map_err(|e| Error::Unavailable(format!("contacts service: {e}")))?;
        Ok(self.channel.get_or_init(|| ch).clone())
    }

    /// A short-lived read token for `tenant` (the service acting for the tenant).
    fn token(&self, tenant: &TenantId) -> Result<Option<String>, Error> {
        match self.auth.mode {
            AuthMode::Dev => Ok(None),
            AuthMode::Jwt if !self.auth.jwt_hs256_secret.is_empty() => {
                let claims = Claims {
                    sub: "service:lifecycle".into(),
                    tenant: tenant.as_str().to_owned(),
                    scope: "clm.read".into(),
                    exp: jsonwebtoken_now() + 300,
                    nbf: None,
                    iss: (!self.auth.jwt_issuer.is_empty()).then(|| self.auth.jwt_issuer.clone()),
                    aud: (!self.auth.jwt_audience.is_empty()).then(|| self.auth.jwt_audience.clone()),
                };
                mint_hs256(&self.auth.jwt_hs256_secret, &claims).map(Some).map_err(Error::internal)
            }
            AuthMode::Jwt => Err(Error::FailedPrecondition(
                "contact conditions need auth.jwt_hs256_secret to call the contacts service".into(),
            )),
        }
    }

    async fn count(&self, tenant: &TenantId, filter: String) -> Result<i32, Error> {
        let mut req = tonic::Request::new(cpb::ListContactsRequest { page_size: 1, filter, ..Default::default() });
        if let Some(t) = self.token(tenant)? {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().map_err(Error::internal)?);
        }
        let mut client = ContactsServiceClient::new(self.channel()?);
        let resp = client.list_contacts(req).await.map_err(|s| match s.code() {
            tonic::Code::InvalidArgument => Error::invalid("contact_filter", s.message().to_owned()),
            _ => Error::Unavailable(format!("contacts service: {}", s.message())),
        })?;
        Ok(resp.into_inner().total_size)
    }

    /// Whether `contact` matches `filter` (the contacts filter language).
    pub async fn matches(&self, tenant: &TenantId, contact: Uuid, filter: &str) -> Result<bool, Error> {
        let f = if filter.trim().is_empty() {
            format!("id = \"{contact}\"")
        } else {
            format!("({filter}) AND id = \"{contact}\"")
        };
        Ok(self.count(tenant, f).await? > 0)
    }

    /// Whether `contact` is a member of segment `segment_id` now.
    pub async fn in_segment(&self, tenant: &TenantId, contact: Uuid, segment_id: &str) -> Result<bool, Error> {
        let mut req = tonic::Request::new(cpb::GetSegmentRequest { id: segment_id.to_owned() });
        if let Some(t) = self.token(tenant)? {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().map_err(Error::internal)?);
        }
        let mut client = ContactsServiceClient::new(self.channel()?);
        let seg = client
            .get_segment(req)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => Error::FailedPrecondition(format!("segment {segment_id} does not exist")),
                _ => Error::Unavailable(format!("contacts service: {}", s.message())),
            })?
            .into_inner()
            .segment
            .unwrap_or_default();
        self.matches(tenant, contact, &seg.filter).await
    }
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What automations need to run: the outbox publisher and the contacts service.
#[derive(Clone, Debug)]
pub struct Automator {
    pub publisher: crate::events::Publisher,
    pub contacts: ContactsProbe,
}
