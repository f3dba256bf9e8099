//! The rules of contacts as plain Rust: validated values, the record, patches, merge and
//! filters. No I/O here.

pub mod consent;
pub mod filter;
pub mod merge;
pub mod model;
pub mod values;
