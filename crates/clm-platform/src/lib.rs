//! What every CLM service shares: configuration, telemetry, the gRPC server (health,
//! reflection, limits, shutdown) and the hosted pages' HTTP server, authentication and tenancy, errors, page tokens and
//! database connections. Services depend on this crate and on `clm-proto`, never on each other.

pub mod auth;
pub mod client;
pub mod config;
pub mod contacts;
pub mod convert;
pub mod crud;
pub mod db;
pub mod deadline;
pub mod error;
pub mod events;
pub mod filter;
pub mod filter_sql;
pub mod header_limit;
pub mod http_client;
pub mod idempotency;
pub mod jwt_keys;
pub mod listener;
pub mod pages;
pub mod pagination;
pub mod reflection;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod shed;
pub mod storage;
pub mod telemetry;
pub mod tenant;
pub mod tls;

pub use auth::{RequestContext, Scope, TenantId};
pub use config::Settings;
pub use error::{Error, FieldViolation, Result, Violations};

/// Every CLM binary allocates with mimalloc. A gRPC call makes many small, short-lived
/// allocations (HTTP/2 frames, protobuf messages, SQL text, rows) across threads, and glibc's
/// malloc spent ~13 % of a GetContact load in malloc/free and arena consolidation; with
/// mimalloc the same load ran 30–40 % more calls a second (BENCHMARKS.md).
///
/// Not in this crate's own unit-test build: its tests link the library a second time (through
/// the dev-dependency `clm-testkit`), and that copy brings the allocator; two would conflict.
#[cfg(not(test))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
