//! CLM lifecycle service. Owns its own database schema (see `store`); talks to other services only
//! through gRPC and events.
//!
//! Status: the service is wired into the server (database, migrations, health), its contract
//! is in `proto/clm/lifecycle/v1`, and its rules are in `domain` (models, progression rules,
//! dormancy, reactivation, history replay); its store and handlers land with its issue.

pub mod domain;
pub mod store;

use clm_platform::server::Shared;
use sea_orm::DatabaseConnection;
use tonic::service::RoutesBuilder;

/// The lifecycle service as the process runtime sees it.
#[derive(Debug)]
pub struct LifecycleService;

impl clm_platform::runtime::Service for LifecycleService {
    const NAME: &'static str = "lifecycle";
    type Migrator = store::migrations::Migrator;

    async fn register(
        _shared: &Shared,
        _db: DatabaseConnection,
        _routes: &mut RoutesBuilder,
    ) -> anyhow::Result<Vec<&'static str>> {
        Ok(vec!["clm.lifecycle.v1.LifecycleService"])
    }
}
