//! The metrics service's own read model, built only from events, and goals. Every function
//! takes the `TenantId`, and every statement is a `sql::Sql`, scoped to it by construction.
//!
//! Layers, each using only those below it: `write` (applying events: ledger → contributions →
//! `counters` and per-contact rows) and `read` (the queries the API asks) and `goals`; then
//! `migrations` (the schema; the aggregate tables' shapes from `counters`), `counters`, and
//! `sql` at the bottom.

pub mod counters;
pub mod goals;
pub mod migrations;
pub mod read;
pub mod sql;
pub mod write;
