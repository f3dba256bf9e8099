//! Small conversions every API layer needs: protobuf times, UUIDs and etags.

use prost_types::{Duration, Timestamp};
use uuid::Uuid;

use crate::error::FieldViolation;

/// A protobuf timestamp as µs since the Unix epoch (`None` when out of range).
pub fn micros(ts: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds.checked_mul(1_000_000)?.checked_add(i64::from(ts.nanos / 1000))
}

/// µs since the Unix epoch as a protobuf timestamp.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp { seconds: micros.div_euclid(1_000_000), nanos: (micros.rem_euclid(1_000_000) * 1000) as i32 }
}

/// A protobuf duration in µs (`None` when negative or malformed).
pub fn duration_micros(d: &Duration) -> Option<i64> {
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return None;
    }
    d.seconds.checked_mul(1_000_000)?.checked_add(i64::from(d.nanos / 1000))
}

/// µs as a protobuf duration.
pub fn duration(micros: i64) -> Duration {
    Duration { seconds: micros.div_euclid(1_000_000), nanos: (micros.rem_euclid(1_000_000) * 1000) as i32 }
}

/// Parse a required UUID field.
pub fn uuid(field: &str, raw: &str) -> Result<Uuid, FieldViolation> {
    Uuid::parse_str(raw.trim())
        .map_err(|_| FieldViolation::new(field, if raw.is_empty() { "is required (a UUID)" } else { "must be a UUID" }))
}

/// The etag of a record at `version` (opaque to clients).
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// The version an etag names; empty → `None` (no check).
pub fn etag_version(field: &str, raw: &str) -> Result<Option<i64>, FieldViolation> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.strip_prefix("W/\"")
        .and_then(|r| r.strip_suffix('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| FieldViolation::new(field, "is not an etag this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for m in [0, 1, -1, 1_700_000_000_123_456, -1_500_000] {
            assert_eq!(micros(&timestamp(m)), Some(m));
        }
        assert_eq!(micros(&Timestamp { seconds: 0, nanos: -1 }), None);
        assert_eq!(duration_micros(&duration(90_000_000)), Some(90_000_000));
        assert_eq!(duration_micros(&Duration { seconds: -1, nanos: 0 }), None);
        assert_eq!(etag_version("etag", &etag(7)).unwrap(), Some(7));
        assert_eq!(etag_version("etag", "").unwrap(), None);
        assert!(etag_version("etag", "7").is_err());
        assert!(uuid("id", "x").is_err() && uuid("id", "").unwrap_err().description.contains("required"));
    }
}
