//! One error type for every service, mapped to gRPC status codes in exactly one place.
//!
//! Domain and store code return [`Error`]; handlers turn it into a [`tonic::Status`] with `?`.
//! Internal details (SQL text, paths) are logged with the current trace id and never sent to
//! the client.

use std::fmt::Write as _;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A bad field in a request: `field` is the proto path (`contact.email`), `description` why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("{message}")]
    AlreadyExists { message: String },
    #[error("invalid argument: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound { resource, id: id.into() }
    }

    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

/// Collects field violations while validating a request, so a caller learns about every bad
/// field at once rather than one per round trip.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Record the error of a `parse`, returning its value when it succeeded.
    pub fn check<T>(&mut self, result: std::result::Result<T, FieldViolation>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(v) => {
                self.0.push(v);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations recorded (to re-file them under another field path).
    pub fn into_violations(self) -> Vec<FieldViolation> {
        self.0
    }

    /// `Ok(())` when nothing was recorded, else `InvalidArgument` with every violation.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(self.0)) }
    }
}

impl From<FieldViolation> for Error {
    fn from(v: FieldViolation) -> Self {
        Self::InvalidArgument(vec![v])
    }
}

/// A storage fault a write hit (the storage is marked suspect, so readiness checks it).
impl From<crate::storage::Fault> for Error {
    fn from(fault: crate::storage::Fault) -> Self {
        use crate::storage::Fault;
        crate::storage::mark_suspect();
        match fault {
            Fault::Full => Self::ResourceExhausted(fault.message().into()),
            Fault::Unwritable => Self::Unavailable(fault.message().into()),
        }
    }
}

/// A write refused for want of the free-space reserve.
impl From<crate::storage::Refusal> for Error {
    fn from(refusal: crate::storage::Refusal) -> Self {
        Self::ResourceExhausted(refusal.0)
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        if let Some(refusal) = crate::storage::reserve_refusal(&err) {
            return refusal.into();
        }
        if let Some(fault) = crate::storage::classify(&err) {
            tracing::warn!(error = %err, "the database's storage refused a write");
            return fault.into();
        }
        match &err {
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout)
                if crate::storage::databases_reachable() =>
            {
                // The database answers its health pings: every connection is busy (overload).
                tracing::warn!(error = %err, "no database connection came free in time");
                Self::ResourceExhausted(
                    "the service is at capacity: no database connection came free within \
                     database.acquire_timeout_ms; retry with backoff"
                        .into(),
                )
            }
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                crate::storage::connection_failed();
                tracing::warn!(error = %err, "database unavailable");
                Self::Unavailable("the database is unavailable; retry with backoff".into())
            }
            _ if is_connection_failure(&err) => {
                crate::storage::connection_failed();
                tracing::warn!(error = %err, "database unavailable");
                Self::Unavailable("the database is unavailable; retry with backoff".into())
            }
            _ => Self::Internal(anyhow::Error::new(err)),
        }
    }
}

/// sqlx reports a dropped connection or refused connect as an I/O error inside `Exec`/`Query`.
fn is_connection_failure(err: &sea_orm::DbErr) -> bool {
    let text = err.to_string();
    [
        "Connection refused",
        "connection reset",
        "broken pipe",
        "PoolTimedOut",
        "pool timed out",
        "Io(",
        "terminating connection",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                // Statuses travel in HTTP/2 headers: keep them small whatever the input was
                // (a description may quote it), or the client sees a protocol error instead.
                let total = violations.len();
                let shown: Vec<(String, String)> = violations
                    .into_iter()
                    .take(MAX_VIOLATIONS)
                    .map(|v| (clip(&v.field, 200), clip(&v.description, 300)))
                    .collect();
                let mut message = format!(
                    "invalid argument: {}",
                    shown.iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; ")
                );
                if total > shown.len() {
                    let _ = write!(message, " (and {} more)", total - shown.len());
                }
                let mut details = ErrorDetails::new();
                for (field, description) in shown {
                    details.add_bad_request_violation(field, description);
                }
                Status::with_error_details(Code::InvalidArgument, clip(&message, MAX_MESSAGE), details)
            }
            Error::Internal(source) => {
                // The current span's trace id (as `telemetry::current_trace_id`; inlined so
                // errors, below telemetry, depend on no settings).
                let trace_id = {
                    use opentelemetry::trace::TraceContextExt as _;
                    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
                    tracing::Span::current().context().span().span_context().trace_id().to_string()
                };
                tracing::error!(error = ?source, trace_id = %trace_id, "internal error");
                Status::internal(format!("internal error (trace id {trace_id})"))
            }
            other => Status::new(other.code(), clip(&other.to_string(), MAX_MESSAGE)),
        }
    }
}

/// Most field violations a status lists; most characters of a status message.
const MAX_VIOLATIONS: usize = 20;
const MAX_MESSAGE: usize = 2000;

/// `s` cut to at most `max` characters (on a character boundary), marked with "…" when cut.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// Read the field violations back out of a status (for clients and tests).
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|br| {
            br.field_violations
                .into_iter()
                .map(|v| FieldViolation { field: v.field, description: v.description })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_stay_small_whatever_the_input() {
        assert_eq!(clip("héllo", 10), "héllo");
        assert_eq!(clip("héllo", 2), "hé…");
        let long = "x".repeat(100_000);
        let violations: Vec<FieldViolation> =
            (0..100).map(|i| FieldViolation { field: format!("f{i}.{long}"), description: long.clone() }).collect();
        let status = Status::from(Error::InvalidArgument(violations));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().chars().count() <= MAX_MESSAGE + 1, "{}", status.message().len());
        assert!(status.details().len() < 16_000, "details fit a header: {}", status.details().len());
        assert_eq!(field_violations(&status).len(), MAX_VIOLATIONS);
        let other = Status::from(Error::not_found("contact", long));
        assert!(other.message().len() <= 4 * (MAX_MESSAGE + 1));
    }
}
