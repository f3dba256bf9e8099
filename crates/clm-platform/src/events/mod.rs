//! Events between services: built as `clm.events.v1.EventEnvelope`, written to the producer's
//! **outbox** in the same transaction as the change, moved to a **bus** by the relay, and
//! applied by consumers through their **inbox** exactly once in effect.
//!
//! ```text
//! request ─▶ handler ─┬─ UPDATE contacts …         ┐ one transaction (a UnitOfWork)
//!                     └─ INSERT outbox (envelope)  ┘ commit → wake the relay
//!            relay ──▶ bus (JetStream | durable log) ──▶ consumer ─┬─ INSERT inbox (event id) ┐ one
//!                                                                  └─ apply to read model     ┘ txn
//! ```
//! Delivery is at-least-once end to end; the inbox makes it exactly-once in effect. The
//! envelope carries the W3C trace context it was written in; the relay's PRODUCER span and the
//! consumer's CONSUMER span (which also links to it) are its children (`telemetry::semconv`).
//!
//! No module here imports one that imports it: `bus` (the trait, deliveries, acks) imports no
//! sibling; the buses `log_bus` and `nats` implement it, and `transport`, above both, picks one
//! from the settings; `outbox`, `consumer` and `prune` use the trait, never a bus.

pub mod bus;
pub mod consumer;
pub mod envelope;
pub mod inbox;
pub mod log_bus;
pub mod nats;
pub mod ordering;
pub mod outbox;
pub mod prune;
pub mod transport;
pub mod work;

pub use bus::{Delivery, EventBus};
pub use envelope::{SCHEMA_VERSION, envelope, payload_name, service_subjects, subject};
pub use work::UnitOfWork;
