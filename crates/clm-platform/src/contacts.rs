//! Synchronous questions other services ask the contacts service over gRPC (trace context
//! propagated, acting for the caller's tenant with a short-lived service token): does a contact
//! match a filter, who is in a segment, which contacts exist. Answered where the contact data
//! lives; no service reads the contacts tables.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use uuid::Uuid;

use crate::auth::{Claims, mint_hs256, mint_local};
use crate::client::TracedChannel;
use crate::config::{AuthMode, AuthSettings, Settings, TlsSettings};
use crate::{Error, TenantId};

/// Most members one segment read returns (bounds memory of a batch invitation).
pub const MAX_SEGMENT_MEMBERS: usize = 100_000;

#[derive(Clone)]
pub struct ContactsClient {
    caller: &'static str,
    url: String,
    local: Arc<OnceLock<SocketAddr>>,
    auth: AuthSettings,
    tls: TlsSettings,
    channel: Arc<OnceLock<TracedChannel>>,
}

impl std::fmt::Debug for ContactsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactsClient").field("caller", &self.caller).field("url", &self.url).finish_non_exhaustive()
    }
}

impl ContactsClient {
    /// `caller` names the calling service (the token subject). `url` empty: the contacts
    /// service in this process, at `local` once the server listens.
    pub fn new(caller: &'static str, url: String, local: Arc<OnceLock<SocketAddr>>, settings: &Settings) -> Self {
        Self {
            caller,
            url,
            local,
            auth: settings.auth.clone(),
            tls: settings.tls.clone(),
            channel: Arc::new(OnceLock::new()),
        }
    }

    fn channel(&self) -> Result<TracedChannel, Error> {
        if let Some(c) = self.channel.get() {
            return Ok(c.clone());
        }
        let (url, domain) = if self.url.is_empty() {
            let addr =
                self.local.get().ok_or_else(|| Error::Unavailable("the local server is not listening yet".into()))?;
            if crate::tls::enabled(&self.tls) {
                (format!("https://127.0.0.1:{}", addr.port()), Some("localhost"))
            } else {
                (format!("http://127.0.0.1:{}", addr.port()), None)
            }
        } else {
            (self.url.clone(), None)
        };
        let ch = crate::client::channel(&url, &self.tls, domain)
            .map_err(|e| Error::Unavailable(format!("contacts service: {e}")))?;
        Ok(self.channel.get_or_init(|| ch).clone())
    }

    /// A request carrying a short-lived read token for `tenant`: signed with this process's
    /// own key when contacts runs in this process, else with `auth.jwt_hs256_secret` (which
    /// `Settings::load` requires when a `contacts_url` is set).
    fn request<T>(&self, tenant: &TenantId, msg: T) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(msg);
        if self.auth.mode == AuthMode::Dev {
            return Ok(req);
        }
        let claims = Claims {
            sub: format!("service:{}", self.caller),
            tenant: tenant.as_str().to_owned(),
            scope: "clm.read".into(),
            exp: now_secs() + 300,
            nbf: None,
            iss: (!self.auth.jwt_issuer.is_empty()).then(|| self.auth.jwt_issuer.clone()),
            aud: (!self.auth.jwt_audience.is_empty()).then(|| self.auth.jwt_audience.clone()),
        };
        let token = if self.url.is_empty() {
            mint_local(&claims).map_err(Error::internal)?
        } else if !self.auth.jwt_hs256_secret.is_empty() {
            mint_hs256(&self.auth.jwt_hs256_secret, &claims).map_err(Error::internal)?
        } else {
            return Err(Error::FailedPrecondition(
                "calling the contacts service at a contacts_url needs auth.jwt_hs256_secret".into(),
            ));
        };
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().map_err(Error::internal)?);
        Ok(req)
    }

    fn client(&self) -> Result<ContactsServiceClient<TracedChannel>, Error> {
        Ok(ContactsServiceClient::new(self.channel()?))
    }

    fn unavailable(s: &tonic::Status) -> Error {
        Error::Unavailable(format!("contacts service: {}", s.message()))
    }

    async fn count(&self, tenant: &TenantId, filter: String) -> Result<i32, Error> {
        let req = self.request(tenant, cpb::ListContactsRequest { page_size: 1, filter, ..Default::default() })?;
        let resp = self.client()?.list_contacts(req).await.map_err(|s| match s.code() {
            tonic::Code::InvalidArgument => Error::invalid("contact_filter", s.message().to_owned()),
            _ => Self::unavailable(&s),
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
        let req = self.request(tenant, cpb::GetSegmentRequest { id: segment_id.to_owned() })?;
        let seg = self
            .client()?
            .get_segment(req)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => Error::FailedPrecondition(format!("segment {segment_id} does not exist")),
                _ => Self::unavailable(&s),
            })?
            .into_inner()
            .segment
            .unwrap_or_default();
        self.matches(tenant, contact, &seg.filter).await
    }

    /// The members of segment `segment_id` now (at most [`MAX_SEGMENT_MEMBERS`]).
    /// `field` names the request field for errors (a missing segment is the caller's mistake).
    pub async fn segment_members(&self, tenant: &TenantId, segment_id: &str, field: &str) -> Result<Vec<Uuid>, Error> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = self.request(
                tenant,
                cpb::ListSegmentMembersRequest {
                    segment_id: segment_id.to_owned(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    order_by: String::new(),
                },
            )?;
            let page = self
                .client()?
                .list_segment_members(req)
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::NotFound => Error::not_found("segment", segment_id.to_owned()),
                    tonic::Code::InvalidArgument => Error::invalid(field, s.message().to_owned()),
                    _ => Self::unavailable(&s),
                })?
                .into_inner();
            out.extend(page.contacts.iter().filter_map(|c| Uuid::parse_str(&c.id).ok()));
            if out.len() > MAX_SEGMENT_MEMBERS {
                return Err(Error::FailedPrecondition(format!(
                    "segment {segment_id} has more than {MAX_SEGMENT_MEMBERS} members; split it"
                )));
            }
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// The ids of the contacts matching `filter` (the contacts filter language) now, at most
    /// [`MAX_SEGMENT_MEMBERS`]. `field` names the request field for errors: a filter contacts
    /// refuses is the caller's mistake (INVALID_ARGUMENT on that field).
    pub async fn filter_members(&self, tenant: &TenantId, filter: &str, field: &str) -> Result<Vec<Uuid>, Error> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = self.request(
                tenant,
                cpb::ListContactsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    filter: filter.to_owned(),
                    ..Default::default()
                },
            )?;
            let page = self
                .client()?
                .list_contacts(req)
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::InvalidArgument => Error::invalid(field, s.message().to_owned()),
                    _ => Self::unavailable(&s),
                })?
                .into_inner();
            if usize::try_from(page.total_size).unwrap_or(0) > MAX_SEGMENT_MEMBERS {
                return Err(Error::invalid(
                    field,
                    format!("matches {} contacts; at most {MAX_SEGMENT_MEMBERS} (narrow the filter)", page.total_size),
                ));
            }
            out.extend(page.contacts.iter().filter_map(|c| Uuid::parse_str(&c.id).ok()));
            if page.next_page_token.is_empty() || out.len() > MAX_SEGMENT_MEMBERS {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// The contact `id` as the contacts service knows it now; `None` when it is deleted,
    /// erased or unknown (a merged id answers with its survivor).
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<cpb::Contact>, Error> {
        let req = self.request(tenant, cpb::GetContactRequest { id: id.to_string() })?;
        match self.client()?.get_contact(req).await {
            Ok(resp) => Ok(resp.into_inner().contact.filter(|c| c.state == cpb::ContactState::Active as i32)),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => Ok(None),
            Err(s) => Err(Self::unavailable(&s)),
        }
    }

    /// Which of `ids` are existing contacts (not deleted, erased or merged away).
    pub async fn existing(&self, tenant: &TenantId, ids: &[Uuid]) -> Result<HashSet<Uuid>, Error> {
        let mut out = HashSet::new();
        for chunk in ids.chunks(1000) {
            let req = self
                .request(tenant, cpb::BatchGetContactsRequest { ids: chunk.iter().map(Uuid::to_string).collect() })?;
            let resp = self.client()?.batch_get_contacts(req).await.map_err(|s| Self::unavailable(&s))?.into_inner();
            // Merged ids resolve to their survivor; only ids that are themselves contacts count.
            let found: HashSet<Uuid> = resp.contacts.iter().filter_map(|c| Uuid::parse_str(&c.id).ok()).collect();
            out.extend(chunk.iter().filter(|id| found.contains(id)));
        }
        Ok(out)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
