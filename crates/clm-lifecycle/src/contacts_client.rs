//! What lifecycle's automations need: the outbox publisher and the contacts service (for
//! conditions on contact filters and segments, answered where the contact data lives; asked
//! only by `journeys::automations::ask`, with no transaction open).

pub use clm_platform::contacts::ContactsClient as ContactsProbe;

/// What automations need to run: the outbox publisher and the contacts service.
#[derive(Clone, Debug)]
pub struct Automator {
    pub publisher: crate::publish::Publisher,
    pub contacts: ContactsProbe,
}
