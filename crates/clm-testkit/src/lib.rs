//! What CLM's tests share (a dev-dependency of every crate's tests, and of the load generator):
//! start real services on 127.0.0.1:0 against fresh SQLite/PostgreSQL databases ([`spawn`],
//! [`spawn_pair`], [`Services`], [`TestDb`]), mint the tokens they trust ([`token`]), wait for
//! asynchronous effects ([`wait_for`]), publish an event as another service would
//! ([`publish_event`]), and run a test on both backends ([`backend_tests!`]). For what CLM sends
//! out: a real SMTP server keeping every message ([`smtp::SmtpSink`], Python's aiosmtpd from
//! `make test-deps`; with TLS from [`certs::TestCa`] and AUTH on demand) and a real HTTP server
//! recording every request ([`http::Receiver`]).
//!
//! PostgreSQL tests run when `CLM_TEST_DATABASE_URL` points at a server where the role may
//! create databases; without it they print that they were skipped.

pub mod arch;
pub mod certs;
mod db;
pub mod http;
mod server;
pub mod smtp;

use std::time::Duration;

pub use db::{Backend, TestDb};
pub use server::{BearerInterceptor, Services, TEST_SECRET, TestServer, settings, spawn, spawn_pair, token};

/// Poll `f` every 50 ms until it gives a value (events arrive asynchronously); panics naming
/// `what` after 15 s.
pub async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached in 15 s");
}

/// A port on 127.0.0.1 free a moment ago (for a process the test starts itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

/// The fields an INVALID_ARGUMENT status names (its `google.rpc.BadRequest` violations), in order.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    clm_platform::error::field_violations(status).into_iter().map(|v| v.field).collect()
}

/// Publish `payload` on the durable log bus of `settings` (`events.log_database_url`) as the
/// service `producer` would, about `aggregate_id` of `aggregate_type`, now: an event for the
/// services under test to consume.
pub async fn publish_event(
    settings: &clm_platform::Settings,
    producer: &str,
    tenant: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    payload: clm_proto::events::v1::event_envelope::Payload,
) -> clm_proto::events::v1::EventEnvelope {
    use clm_platform::events::EventBus as _;
    let bus = clm_platform::events::log_bus::LogBus::connect(&settings.events.log_database_url, &settings.database)
        .await
        .expect("connect to the log bus");
    let tenant = clm_platform::TenantId::parse(tenant).expect("tenant");
    let now = chrono::Utc::now().timestamp_micros();
    let env = clm_platform::events::envelope(producer, &tenant, aggregate_type, aggregate_id, now, payload);
    bus.publish(&clm_platform::events::subject(&env), &env.event_id, prost::Message::encode_to_vec(&env).into())
        .await
        .expect("publish");
    env
}

/// Run `test` against SQLite and, when available, PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await;
                }
            )+
        }
    };
}
