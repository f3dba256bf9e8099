//! Consent decisions per channel and purpose, and what an unsubscribe does to them.

use super::model::{Consent, ConsentChannel, ConsentPurpose, ConsentStatus};

/// The source of a consent withdrawn through a message's unsubscribe link.
pub const UNSUBSCRIBE_SOURCE: &str = "unsubscribe-link";

/// Record that the contact unsubscribed from `channel` for `purpose` at `at` (µs): the consent
/// becomes withdrawn then, with source [`UNSUBSCRIBE_SOURCE`]. Returns whether `consents`
/// changed. Nothing changes when the decision was made after `at` (a later grant wins over an
/// older link) or when it is already withdrawn (the first withdrawal, its time and source, is
/// kept), so applying the same unsubscribe twice changes nothing.
pub fn unsubscribe(consents: &mut Vec<Consent>, channel: ConsentChannel, purpose: ConsentPurpose, at: i64) -> bool {
    let withdrawn = Consent {
        channel,
        purpose,
        status: ConsentStatus::Withdrawn,
        updated_at: at,
        source: UNSUBSCRIBE_SOURCE.into(),
    };
    match consents.iter_mut().find(|c| c.same_subject(&withdrawn)) {
        Some(c) if c.updated_at > at || c.status == ConsentStatus::Withdrawn => false,
        Some(c) => {
            *c = withdrawn;
            true
        }
        None => {
            consents.push(withdrawn);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(purpose: ConsentPurpose, status: ConsentStatus, at: i64) -> Consent {
        Consent { channel: ConsentChannel::Email, purpose, status, updated_at: at, source: "form".into() }
    }

    #[test]
    fn unsubscribe_withdraws_only_its_purpose() {
        let mut list = vec![
            consent(ConsentPurpose::Marketing, ConsentStatus::Granted, 10),
            consent(ConsentPurpose::Feedback, ConsentStatus::Granted, 10),
        ];
        assert!(unsubscribe(&mut list, ConsentChannel::Email, ConsentPurpose::Feedback, 20));
        assert_eq!(list[0], consent(ConsentPurpose::Marketing, ConsentStatus::Granted, 10));
        assert_eq!(
            list[1],
            Consent {
                channel: ConsentChannel::Email,
                purpose: ConsentPurpose::Feedback,
                status: ConsentStatus::Withdrawn,
                updated_at: 20,
                source: UNSUBSCRIBE_SOURCE.into()
            }
        );
        let before = list.clone();
        assert!(!unsubscribe(&mut list, ConsentChannel::Email, ConsentPurpose::Feedback, 20), "idempotent");
        assert_eq!(list, before);
    }

    #[test]
    fn a_later_grant_wins_and_an_unknown_pair_is_recorded() {
        let mut list = vec![consent(ConsentPurpose::Marketing, ConsentStatus::Granted, 30)];
        assert!(!unsubscribe(&mut list, ConsentChannel::Email, ConsentPurpose::Marketing, 20));
        assert_eq!(list, vec![consent(ConsentPurpose::Marketing, ConsentStatus::Granted, 30)]);
        assert!(unsubscribe(&mut list, ConsentChannel::Sms, ConsentPurpose::Marketing, 20));
        assert_eq!((list.len(), list[1].channel, list[1].status), (2, ConsentChannel::Sms, ConsentStatus::Withdrawn));
    }

    #[test]
    fn an_earlier_withdrawal_is_kept() {
        let mut list = vec![consent(ConsentPurpose::Marketing, ConsentStatus::Withdrawn, 5)];
        assert!(!unsubscribe(&mut list, ConsentChannel::Email, ConsentPurpose::Marketing, 20));
        assert_eq!(list, vec![consent(ConsentPurpose::Marketing, ConsentStatus::Withdrawn, 5)]);
    }
}
