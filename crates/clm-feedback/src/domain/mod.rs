//! The feedback rules as plain Rust: survey questions and skip logic, answer validation,
//! score bands and follow-up reasons, NPS/CSAT/CES maths, invitation throttling. No I/O.

pub mod scores;
pub mod survey;
pub mod token;
