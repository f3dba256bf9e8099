//! Invitations: the statuses they are stored with, the status a client sees at a moment (a
//! pending invitation past its expiry is expired), and when one may be answered. Tokens are in
//! `token`, throttling in `scores::may_invite` and the store's `claim_ask`.

use clm_platform::Error;

/// How an invitation is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationStatus {
    Pending,
    Responded,
    Cancelled,
}

impl InvitationStatus {
    pub const ALL: [InvitationStatus; 3] =
        [InvitationStatus::Pending, InvitationStatus::Responded, InvitationStatus::Cancelled];

    pub fn key(self) -> &'static str {
        match self {
            InvitationStatus::Pending => "pending",
            InvitationStatus::Responded => "responded",
            InvitationStatus::Cancelled => "cancelled",
        }
    }

    pub fn from_key(k: &str) -> Option<InvitationStatus> {
        Self::ALL.into_iter().find(|s| s.key() == k)
    }
}

/// An invitation as a client sees it at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Pending,
    Expired,
    Responded,
    Cancelled,
}

/// What a stored invitation (status key, expiry µs) is at `now`; `None` for an unknown status.
pub fn seen_at(status: &str, expire_time: i64, now: i64) -> Option<Seen> {
    Some(match InvitationStatus::from_key(status)? {
        InvitationStatus::Pending if expire_time <= now => Seen::Expired,
        InvitationStatus::Pending => Seen::Pending,
        InvitationStatus::Responded => Seen::Responded,
        InvitationStatus::Cancelled => Seen::Cancelled,
    })
}

/// May invitation `id` (stored `status`, expiring at `expire_time`) be answered at `now`? A
/// token is used once (`response_id`: the response that used it), a cancelled invitation is
/// not answered, nor one past its expiry.
pub fn check_answerable(
    id: &str,
    status: &str,
    expire_time: i64,
    now: i64,
    response_id: Option<&str>,
) -> Result<(), Error> {
    match InvitationStatus::from_key(status) {
        Some(InvitationStatus::Responded) => Err(Error::AlreadyExists {
            message: format!(
                "invitation {id} was already answered (response {}); a token is used once",
                response_id.unwrap_or_default()
            ),
        }),
        Some(InvitationStatus::Cancelled) => Err(Error::FailedPrecondition(format!("invitation {id} was cancelled"))),
        _ if expire_time <= now => Err(Error::FailedPrecondition(format!(
            "invitation {id} expired at {}",
            chrono::DateTime::from_timestamp_micros(expire_time).map(|t| t.to_rfc3339()).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_past_expiry_is_expired() {
        assert_eq!(seen_at("pending", 10, 9), Some(Seen::Pending));
        assert_eq!(seen_at("pending", 10, 10), Some(Seen::Expired), "expiry is exclusive");
        assert_eq!(seen_at("responded", 10, 99), Some(Seen::Responded));
        assert_eq!(seen_at("cancelled", 10, 0), Some(Seen::Cancelled));
        assert_eq!(seen_at("sent", 10, 0), None);
        for s in InvitationStatus::ALL {
            assert_eq!(InvitationStatus::from_key(s.key()), Some(s));
        }
    }

    #[test]
    fn answerable_once_until_expiry_unless_cancelled() {
        assert!(check_answerable("i", "pending", 10, 9, None).is_ok());
        assert!(matches!(
            check_answerable("i", "responded", 10, 9, Some("r")),
            Err(Error::AlreadyExists { message }) if message.contains("response r")
        ));
        assert!(matches!(
            check_answerable("i", "cancelled", 10, 9, None),
            Err(Error::FailedPrecondition(m)) if m.contains("cancelled")
        ));
        assert!(matches!(
            check_answerable("i", "pending", 0, 0, None),
            Err(Error::FailedPrecondition(m)) if m == "invitation i expired at 1970-01-01T00:00:00+00:00"
        ));
        assert!(
            matches!(check_answerable("i", "responded", 0, 5, None), Err(Error::AlreadyExists { .. })),
            "answered beats expired"
        );
    }
}
