//! `[events]`: the bus, the outbox and inbox, and how long each keeps what it holds.

use serde::Deserialize;

/// Which bus carries events between services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventTransport {
    /// A durable log in a database (the single binary).
    Log,
    /// NATS JetStream (the distributed mode).
    Nats,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    pub transport: EventTransport,
    pub log_database_url: String,
    pub nats_url: String,
    pub nats_namespace: String,
    pub stream_prefix: String,
    pub consumer_prefix: String,
    /// Retention in whole hours, 0 = keep forever (see `crate::events::prune`): published
    /// outbox rows, inbox keys, the durable log's entries, and JetStream's `max_age`.
    #[serde(deserialize_with = "whole_hours")]
    pub outbox_retention_hours: u64,
    #[serde(deserialize_with = "whole_hours")]
    pub inbox_retention_hours: u64,
    #[serde(deserialize_with = "whole_hours")]
    pub log_retention_hours: u64,
    #[serde(deserialize_with = "whole_hours")]
    pub stream_max_age_hours: u64,
    /// JetStream replicas of each stream (1 to 5; 3 on a clustered NATS).
    pub stream_replicas: usize,
    /// How often the pruner runs (its first pass one interval after start).
    pub prune_interval_ms: u64,
    pub relay_batch: u64,
    pub relay_poll_ms: u64,
    pub relay_linger_ms: u64,
    pub consumer_batch: usize,
    pub order_wait_ms: u64,
}

/// A whole number of hours. The `config` crate rounds a float given for an integer, which
/// would turn `0.25` (meant: 15 minutes) into 0, "keep forever": refuse fractions instead.
fn whole_hours<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Hours;
    impl serde::de::Visitor<'_> for Hours {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number of hours (0: keep forever)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            v.trim().parse().map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(Hours)
}
