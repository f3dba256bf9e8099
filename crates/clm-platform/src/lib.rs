//! What every CLM service shares: configuration, telemetry, the gRPC server (health,
//! reflection, limits, shutdown), authentication and tenancy, errors, page tokens and
//! database connections. Services depend on this crate and on `clm-proto`, never on each other.

pub mod auth;
pub mod client;
pub mod config;
pub mod contacts;
pub mod convert;
pub mod db;
pub mod deadline;
pub mod error;
pub mod events;
pub mod filter;
pub mod filter_sql;
pub mod idempotency;
pub mod pagination;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod shed;
pub mod telemetry;
pub mod tls;

pub use auth::{RequestContext, Scope, TenantId};
pub use config::Settings;
pub use error::{Error, FieldViolation, Result, Violations};
#[cfg(feature = "testing")]
pub mod testing;
