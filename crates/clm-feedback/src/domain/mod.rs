//! The feedback rules as plain Rust, no I/O. Values with rules (`values`: stage keys, text,
//! durations, the CES threshold) are parsed once at the api edge; past it they are valid by
//! construction.
//!
//! - `values`: shared values with rules
//! - `follow_up`: follow-up reasons and statuses, what a status change does
//! - `survey`: kinds, statuses (and what responses freeze), questions, answers, score bands
//! - `invitation`: invitation statuses, expiry, when one may be answered
//! - `token`: invitation tokens (HMAC under a tenant's secret)
//! - `response`: a response's score, completeness, which scores open a follow-up
//! - `review`: review rating, platform and link
//! - `scores`: NPS, CSAT and CES maths; throttling
//! - `results`: a survey's results over its responses
//!
//! Each module uses only modules listed above it.

pub mod follow_up;
pub mod invitation;
pub mod response;
pub mod results;
pub mod review;
pub mod scores;
pub mod survey;
pub mod token;
pub mod values;
