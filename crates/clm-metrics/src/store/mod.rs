//! The metrics service's own schema and queries. Every query takes the tenant.

pub mod migrations;
