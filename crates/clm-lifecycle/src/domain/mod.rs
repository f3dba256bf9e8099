//! The lifecycle rules as plain Rust: models (stages, categories, allowed moves) and journeys
//! (built-in progression rules, dormancy, reactivation, history rebuilt from a timeline).
//! No I/O here; the service's `api/` and `store/` build on it.

pub mod contact;
pub mod journey;
pub mod message;
pub mod model;
