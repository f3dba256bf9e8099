//! Small conversions every API layer needs: protobuf times, UUIDs and etags.

use prost_types::{Duration, Timestamp};
use uuid::Uuid;

use crate::error::FieldViolation;

/// The largest amount of money a request may carry, in whole units of its currency (10^12:
/// a trillion euros, or about 60 million euros in the currency with the smallest unit).
/// Bounded so that one amount in µ-units (how amounts are stored and summed, at most 10^18)
/// always fits an i64 with room to spare; sums are computed with checked or wider arithmetic
/// (docs/metrics.md § Money).
pub const MAX_MONEY_UNITS: i64 = 1_000_000_000_000;

/// The earliest instant a protobuf `Timestamp` may hold, 0001-01-01T00:00:00Z, in µs.
pub const MIN_TIME_MICROS: i64 = MIN_TIME_SECONDS * 1_000_000;
/// The last µs a protobuf `Timestamp` may hold: 9999-12-31T23:59:59.999999Z.
pub const MAX_TIME_MICROS: i64 = MAX_TIME_SECONDS * 1_000_000 + 999_999;
const MIN_TIME_SECONDS: i64 = -62_135_596_800;
const MAX_TIME_SECONDS: i64 = 253_402_300_799;

/// How far in the future an event time (when something happened: a purchase, a consent, an
/// acquisition) may lie: 24 hours, for callers whose clocks or time zones are off. Anything
/// later is a mistake (a wrong unit, a typo in the year) and is refused.
pub const EVENT_FUTURE_TOLERANCE_MICROS: i64 = 24 * 3600 * 1_000_000;

/// What a request's timestamp may be, besides a valid protobuf `Timestamp`
/// (0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z, nanos 0 to 999,999,999), which
/// every one must be: JSON clients (grpcurl, buf curl) cannot read anything else back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBounds {
    /// Any valid timestamp: range filters, attribute values, "as of" times.
    Any,
    /// When something happened: at most [`EVENT_FUTURE_TOLERANCE_MICROS`] after now.
    Event,
    /// At most this many µs after now (a service with a stricter rule than [`Self::Event`]).
    NotAfterNowPlus(i64),
}

/// Parse a request's timestamp into µs since the Unix epoch, or a violation naming `field`.
/// The one way a `google.protobuf.Timestamp` enters a service.
pub fn parse_time(field: &str, ts: &Timestamp, bounds: TimeBounds) -> Result<i64, FieldViolation> {
    parse_time_at(field, ts, bounds, chrono::Utc::now().timestamp_micros())
}

/// [`parse_time`] with the current time given.
pub fn parse_time_at(field: &str, ts: &Timestamp, bounds: TimeBounds, now: i64) -> Result<i64, FieldViolation> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(FieldViolation::new(field, "is not a valid timestamp: nanos must be 0 to 999,999,999"));
    }
    if !(MIN_TIME_SECONDS..=MAX_TIME_SECONDS).contains(&ts.seconds) {
        return Err(FieldViolation::new(
            field,
            "is out of range: a timestamp must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z",
        ));
    }
    let at = ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000);
    let (limit, what) = match bounds {
        TimeBounds::Any => return Ok(at),
        TimeBounds::Event => (EVENT_FUTURE_TOLERANCE_MICROS, "24 hours"),
        TimeBounds::NotAfterNowPlus(skew) => (skew, ""),
    };
    if at > now.saturating_add(limit) {
        return Err(FieldViolation::new(
            field,
            if what.is_empty() {
                "must not be in the future".to_owned()
            } else {
                format!("must not be more than {what} in the future")
            },
        ));
    }
    Ok(at)
}

/// A protobuf timestamp as µs since the Unix epoch (`None` when it is not a valid protobuf
/// timestamp: nanos out of range, or outside years 1 to 9999). Requests use [`parse_time`].
pub fn micros(ts: &Timestamp) -> Option<i64> {
    parse_time_at("", ts, TimeBounds::Any, 0).ok()
}

/// µs since the Unix epoch as a protobuf timestamp. A stored time outside the protobuf range
/// (written before requests were checked) is clamped to it, so every response stays readable
/// by JSON clients.
pub fn timestamp(micros: i64) -> Timestamp {
    let micros = micros.clamp(MIN_TIME_MICROS, MAX_TIME_MICROS);
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
        assert_eq!(micros(&timestamp(i64::MAX)), Some(MAX_TIME_MICROS), "clamped into the protobuf range");
        assert_eq!(micros(&timestamp(i64::MIN)), Some(MIN_TIME_MICROS));
        assert_eq!(duration_micros(&duration(90_000_000)), Some(90_000_000));
        assert_eq!(duration_micros(&Duration { seconds: -1, nanos: 0 }), None);
        assert_eq!(etag_version("etag", &etag(7)).unwrap(), Some(7));
        assert_eq!(etag_version("etag", "").unwrap(), None);
        assert!(etag_version("etag", "7").is_err());
        assert!(uuid("id", "x").is_err() && uuid("id", "").unwrap_err().description.contains("required"));
    }

    #[test]
    fn request_times_stay_in_the_protobuf_range() {
        let now = 1_700_000_000_000_000;
        let ts = |seconds, nanos| Timestamp { seconds, nanos };
        let ok = |t: Timestamp, b| parse_time_at("t", &t, b, now);
        assert_eq!(ok(ts(MIN_TIME_SECONDS, 0), TimeBounds::Any), Ok(MIN_TIME_MICROS));
        assert_eq!(ok(ts(MAX_TIME_SECONDS, 999_999_999), TimeBounds::Any), Ok(MAX_TIME_MICROS));
        for bad in
            [ts(MAX_TIME_SECONDS + 1, 0), ts(MIN_TIME_SECONDS - 1, 999_999_999), ts(i64::MAX, 0), ts(i64::MIN, 0)]
        {
            let v = ok(bad, TimeBounds::Any).unwrap_err();
            assert_eq!(v.field, "t");
            assert!(v.description.contains("9999-12-31"), "{v:?}");
        }
        assert!(ok(ts(0, 1_000_000_000), TimeBounds::Any).unwrap_err().description.contains("nanos"));
        assert!(ok(ts(0, -1), TimeBounds::Any).is_err());
        // Event times: up to 24 hours ahead of now.
        let day = EVENT_FUTURE_TOLERANCE_MICROS / 1_000_000;
        let now_s = now / 1_000_000;
        assert!(ok(ts(now_s + day, 0), TimeBounds::Event).is_ok());
        assert!(ok(ts(now_s + day + 1, 0), TimeBounds::Event).unwrap_err().description.contains("24 hours"));
        assert!(ok(ts(now_s + 365 * day, 0), TimeBounds::Any).is_ok());
        assert!(ok(ts(now_s + 301, 0), TimeBounds::NotAfterNowPlus(300_000_000)).is_err());
        assert!(ok(ts(now_s + 299, 0), TimeBounds::NotAfterNowPlus(300_000_000)).is_ok());
    }
}
