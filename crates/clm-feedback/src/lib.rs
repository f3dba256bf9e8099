//! CLM feedback service. Owns its own database schema (see `store`); talks to other services only
//! through gRPC and events.
//!
//! Status: the service is wired into the server (database, migrations, health), its contract
//! is in `proto/clm/feedback/v1`, and its rules are in `domain` (questions and skip logic,
//! answer validation, bands, NPS/CSAT/CES maths, throttling); store and handlers are next.

pub mod domain;
pub mod store;

use clm_platform::server::Shared;
use sea_orm::DatabaseConnection;
use tonic::service::RoutesBuilder;

/// The feedback service as the process runtime sees it.
#[derive(Debug)]
pub struct FeedbackService;

impl clm_platform::runtime::Service for FeedbackService {
    const NAME: &'static str = "feedback";
    type Migrator = store::migrations::Migrator;

    async fn register(
        _shared: &Shared,
        _db: DatabaseConnection,
        _routes: &mut RoutesBuilder,
    ) -> anyhow::Result<Vec<&'static str>> {
        Ok(vec!["clm.feedback.v1.FeedbackService"])
    }
}
