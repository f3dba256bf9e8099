//! Values with rules that travel through feedback, valid by construction: each is built only
//! through a `parse` that names the offending field, so code past the request edge never checks
//! them again. Durations are µs.

use clm_platform::FieldViolation;

pub const HOUR_MICROS: i64 = 3_600_000_000;
pub const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// Trimmed free text: at most `max` characters, no control characters but newline and tab,
/// not empty when `required`. Every rule it breaks is reported (the trimmed text comes back
/// with them, so a caller collecting violations can go on).
pub fn text(field: &str, raw: &str, max: usize, required: bool) -> Result<String, (String, Vec<FieldViolation>)> {
    let t = raw.trim();
    let mut v = Vec::new();
    if required && t.is_empty() {
        v.push(FieldViolation::new(field, "is required"));
    }
    if t.chars().count() > max {
        v.push(FieldViolation::new(field, format!("at most {max} characters")));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        v.push(FieldViolation::new(field, "must not contain control characters"));
    }
    if v.is_empty() { Ok(t.to_owned()) } else { Err((t.to_owned(), v)) }
}

/// A lifecycle stage key, `[a-z][a-z0-9_]{0,31}` (the lifecycle service's rule: a survey
/// targets a stage by key, a response remembers the stage its contact was in).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StageKey(String);

impl StageKey {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let mut b = raw.bytes();
        let ok = raw.len() <= 32
            && b.next().is_some_and(|c| c.is_ascii_lowercase())
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if ok { Ok(Self(raw.to_owned())) } else { Err(FieldViolation::new(field, "a stage key: [a-z][a-z0-9_]{0,31}")) }
    }

    /// An optional stage key: empty means none.
    pub fn parse_optional(field: &str, raw: &str) -> Result<Option<Self>, FieldViolation> {
        if raw.is_empty() { Ok(None) } else { Self::parse(field, raw).map(Some) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A duration within `[min, max]` µs; `micros` is `None` when the wire value was no duration.
fn bounded(field: &str, micros: Option<i64>, min: i64, max: i64, what: &str) -> Result<i64, FieldViolation> {
    match micros {
        Some(us) if (min..=max).contains(&us) => Ok(us),
        _ => Err(FieldViolation::new(field, format!("must be {what}"))),
    }
}

/// How long an invitation stays answerable: 1 hour to 365 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationTtl(i64);

impl InvitationTtl {
    pub fn parse(field: &str, micros: Option<i64>) -> Result<Self, FieldViolation> {
        bounded(field, micros, HOUR_MICROS, 365 * DAY_MICROS, "1 hour to 365 days").map(Self)
    }

    pub fn micros(self) -> i64 {
        self.0
    }
}

/// How long after one invitation a contact may be asked again (any survey): 0 (no
/// throttling) to 365 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleWindow(i64);

impl ThrottleWindow {
    pub fn parse(field: &str, micros: Option<i64>) -> Result<Self, FieldViolation> {
        bounded(field, micros, 0, 365 * DAY_MICROS, "0 (no throttling) to 365 days").map(Self)
    }

    pub fn micros(self) -> i64 {
        self.0
    }
}

/// Most reminders a survey may send per invitation.
pub const MAX_REMINDERS: i32 = 5;

/// A survey's reminders: an unanswered invitation is reminded `after` µs after it was sent
/// (then after each reminder), at most `max` times. `after` 0 = no reminders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reminders {
    after: i64,
    max: i32,
}

impl Reminders {
    /// `after`: 0 to 365 days (`None`: no duration on the wire, a violation); `max`: 0 to
    /// [`MAX_REMINDERS`], 0 with a delay meaning 1; a count without a delay is refused (it
    /// would never send).
    pub fn parse(
        after_field: &str,
        after: Option<i64>,
        max_field: &str,
        max: i32,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut v = Vec::new();
        let after = bounded(after_field, after, 0, 365 * DAY_MICROS, "0 (no reminders) to 365 days")
            .map_err(|e| v.push(e))
            .unwrap_or_default();
        if !(0..=MAX_REMINDERS).contains(&max) {
            v.push(FieldViolation::new(max_field, format!("must be 0 to {MAX_REMINDERS}")));
        } else if max > 0 && after == 0 && v.is_empty() {
            v.push(FieldViolation::new(max_field, format!("reminders need a delay: set {after_field}")));
        }
        if !v.is_empty() {
            return Err(v);
        }
        Ok(Self { after, max: if after > 0 { max.max(1) } else { 0 } })
    }

    /// As stored (checked when set).
    pub fn from_stored(after: i64, max: i64) -> Self {
        let max = i32::try_from(max.clamp(0, i64::from(MAX_REMINDERS))).unwrap_or_default();
        if after > 0 { Self { after, max: max.max(1) } } else { Self::default() }
    }

    pub fn after(self) -> i64 {
        self.after
    }

    pub fn max(self) -> i32 {
        self.max
    }

    /// When the reminder after `sent` reminders is due, for an invitation sent (or last
    /// reminded) at `last` and expiring at `expire`: `None` when no more are owed, or the
    /// invitation would have expired by then.
    pub fn next_due(self, sent: i64, last: i64, expire: i64) -> Option<i64> {
        let due = last.saturating_add(self.after);
        (self.after > 0 && sent < i64::from(self.max) && due < expire).then_some(due)
    }
}

/// How long after a contact's last invitation to a recurring survey they are invited again:
/// 0 (one-off) to 5 years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recurrence(i64);

impl Recurrence {
    pub fn parse(field: &str, micros: Option<i64>) -> Result<Self, FieldViolation> {
        bounded(field, micros, 0, 5 * 365 * DAY_MICROS, "0 (one-off) to 5 years").map(Self)
    }

    pub fn micros(self) -> i64 {
        self.0
    }
}

/// CES scores up to this open a follow-up (1 = very difficult … 7 = very easy): 1 (only
/// "very difficult") to 6 (all but "very easy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CesThreshold(i32);

impl CesThreshold {
    /// 1-3, the difficult end of the scale.
    pub const DEFAULT: CesThreshold = CesThreshold(3);

    pub fn parse(field: &str, raw: i32) -> Result<Self, FieldViolation> {
        if (1..=6).contains(&raw) { Ok(Self(raw)) } else { Err(FieldViolation::new(field, "must be 1 to 6")) }
    }

    /// A stored threshold (checked when it was set); out-of-range values are clamped.
    pub fn from_stored(raw: i32) -> Self {
        Self(raw.clamp(1, 6))
    }

    pub const fn value(self) -> i32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn text_reports_every_broken_rule() {
        assert_eq!(text("f", "  hi \n", 10, true), Ok("hi".to_owned()));
        let (t, v) = text("f", " \u{7}abcdef ", 3, true).unwrap_err();
        assert_eq!(t, "\u{7}abcdef");
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|f| f.field == "f"));
        assert_eq!(text("f", "   ", 3, true).unwrap_err().1[0].description, "is required");
        assert_eq!(text("f", "", 3, false), Ok(String::new()));
        assert_eq!(text("f", "a\tb", 3, false), Ok("a\tb".to_owned()));
    }

    #[test]
    fn durations_and_thresholds() {
        assert_eq!(InvitationTtl::parse("t", Some(HOUR_MICROS)).map(InvitationTtl::micros), Ok(HOUR_MICROS));
        assert_eq!(InvitationTtl::parse("t", Some(HOUR_MICROS - 1)).unwrap_err().field, "t");
        assert!(InvitationTtl::parse("t", Some(366 * DAY_MICROS)).is_err());
        assert!(InvitationTtl::parse("t", None).is_err());
        assert_eq!(ThrottleWindow::parse("w", Some(0)).map(ThrottleWindow::micros), Ok(0));
        assert!(ThrottleWindow::parse("w", Some(-1)).is_err());
        assert_eq!(
            ThrottleWindow::parse("w", Some(366 * DAY_MICROS)).unwrap_err().description,
            "must be 0 (no throttling) to 365 days"
        );
        assert_eq!(CesThreshold::parse("c", 1).map(CesThreshold::value), Ok(1));
        assert_eq!(CesThreshold::parse("c", 6).map(CesThreshold::value), Ok(6));
        assert_eq!(CesThreshold::parse("c", 7).unwrap_err().field, "c");
        assert!(CesThreshold::parse("c", 0).is_err());
        assert_eq!(CesThreshold::from_stored(9).value(), 6);
    }

    #[test]
    fn reminders_need_a_delay_and_stop_at_the_count_or_the_expiry() {
        let r = Reminders::parse("a", Some(HOUR_MICROS), "m", 0).unwrap();
        assert_eq!((r.after(), r.max()), (HOUR_MICROS, 1), "a delay alone is one reminder");
        assert_eq!(Reminders::parse("a", Some(0), "m", 0).unwrap(), Reminders::default());
        let e = Reminders::parse("a", Some(0), "m", 2).unwrap_err();
        assert_eq!(e[0].field, "m");
        let e = Reminders::parse("a", Some(-1), "m", 6).unwrap_err();
        assert_eq!(e.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(), ["a", "m"]);
        assert!(Reminders::parse("a", None, "m", 1).is_err());
        let r = Reminders::parse("a", Some(10), "m", 2).unwrap();
        assert_eq!(r.next_due(0, 100, 1000), Some(110));
        assert_eq!(r.next_due(1, 110, 1000), Some(120));
        assert_eq!(r.next_due(2, 120, 1000), None, "the count is reached");
        assert_eq!(r.next_due(0, 100, 110), None, "expired by then");
        assert_eq!(Reminders::default().next_due(0, 0, i64::MAX), None);
        assert_eq!(Recurrence::parse("r", Some(90 * DAY_MICROS)).map(Recurrence::micros), Ok(90 * DAY_MICROS));
        assert_eq!(Recurrence::parse("r", Some(-1)).unwrap_err().field, "r");
    }

    proptest! {
        #[test]
        fn stage_keys_parse_exactly_the_pattern(s in "[a-z][a-z0-9_]{0,31}") {
            prop_assert_eq!(StageKey::parse("k", &s).map(|k| k.as_str().to_owned()), Ok(s));
        }

        #[test]
        fn other_strings_are_not_stage_keys(s in "\\PC{0,40}") {
            let valid = s.len() <= 32
                && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            let parsed = StageKey::parse("survey.target_stage_key", &s);
            prop_assert_eq!(parsed.is_ok(), valid);
            if let Err(v) = parsed {
                prop_assert_eq!(v.field, "survey.target_stage_key");
            }
        }

        #[test]
        fn ces_thresholds(raw in any::<i32>()) {
            prop_assert_eq!(CesThreshold::parse("c", raw).is_ok(), (1..=6).contains(&raw));
        }
    }
}
