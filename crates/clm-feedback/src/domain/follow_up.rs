//! Closed-loop follow-ups: why one is opened, the statuses it moves through, and what a status
//! change does to its resolve time and whether it closes the loop (FollowUpClosed). Stored as
//! the keys below.

/// Why a follow-up was opened: an unhappy customer by the survey's measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUpReason {
    NpsDetractor,
    CsatUnsatisfied,
    CesHighEffort,
}

impl FollowUpReason {
    pub fn key(self) -> &'static str {
        match self {
            FollowUpReason::NpsDetractor => "nps_detractor",
            FollowUpReason::CsatUnsatisfied => "csat_unsatisfied",
            FollowUpReason::CesHighEffort => "ces_high_effort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUpStatus {
    Open,
    InProgress,
    Resolved,
}

impl FollowUpStatus {
    pub const ALL: [FollowUpStatus; 3] = [FollowUpStatus::Open, FollowUpStatus::InProgress, FollowUpStatus::Resolved];

    pub fn key(self) -> &'static str {
        match self {
            FollowUpStatus::Open => "open",
            FollowUpStatus::InProgress => "in_progress",
            FollowUpStatus::Resolved => "resolved",
        }
    }

    pub fn from_key(k: &str) -> Option<FollowUpStatus> {
        Self::ALL.into_iter().find(|s| s.key() == k)
    }
}

/// A follow-up's status after a change, with its resolve time and whether the change resolved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    pub status: FollowUpStatus,
    pub resolve_time: Option<i64>,
    /// It was not resolved and now is: the loop closes (FollowUpClosed is published).
    pub closes: bool,
}

/// Move a follow-up from `old` (resolved at `old_resolve_time`, if) to `new` at `now`: resolving
/// stamps the time (once: resolving a resolved follow-up keeps it), reopening clears it.
/// `old` is `None` when the stored status is unreadable (then it was not resolved).
pub fn change_status(
    old: Option<FollowUpStatus>,
    old_resolve_time: Option<i64>,
    new: FollowUpStatus,
    now: i64,
) -> StatusChange {
    let was_resolved = old == Some(FollowUpStatus::Resolved);
    let resolve_time = match new {
        FollowUpStatus::Resolved if was_resolved => old_resolve_time,
        FollowUpStatus::Resolved => Some(now),
        _ => None,
    };
    StatusChange { status: new, resolve_time, closes: new == FollowUpStatus::Resolved && !was_resolved }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for s in FollowUpStatus::ALL {
            assert_eq!(FollowUpStatus::from_key(s.key()), Some(s));
        }
        assert_eq!(FollowUpStatus::from_key("closed"), None);
        assert_eq!(FollowUpReason::CesHighEffort.key(), "ces_high_effort");
    }

    #[test]
    fn resolving_stamps_once_and_reopening_clears() {
        use FollowUpStatus::{InProgress, Open, Resolved};
        let r = change_status(Some(Open), None, Resolved, 50);
        assert_eq!(r, StatusChange { status: Resolved, resolve_time: Some(50), closes: true });
        let again = change_status(Some(Resolved), Some(50), Resolved, 90);
        assert_eq!(again, StatusChange { status: Resolved, resolve_time: Some(50), closes: false });
        let reopened = change_status(Some(Resolved), Some(50), InProgress, 90);
        assert_eq!(reopened, StatusChange { status: InProgress, resolve_time: None, closes: false });
        assert!(change_status(None, None, Resolved, 1).closes, "an unreadable status was not resolved");
    }
}
