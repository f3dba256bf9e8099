//! `clm`: the single binary. `clm serve` runs all four services in one process on one port,
//! each on its own database (SQLite files under `./data/` by default).

mod client;
mod report;
mod seed;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clm_platform::Settings;
use clm_platform::runtime::{Service, open_database, start};
use clm_platform::server::{Shared, serve, shutdown_signal};
use tonic::service::RoutesBuilder;

#[derive(Debug, Parser)]
#[command(
    name = "clm",
    version,
    about = "CLM — customer lifecycle management: contacts, lifecycle stages, feedback and metrics over gRPC.",
    long_about = "CLM — customer lifecycle management.\n\n\
        `clm serve` (the default) runs the contacts, lifecycle, feedback and metrics services in one \
        process on one port (127.0.0.1:50051), each with its own SQLite database under ./data/. \
        gRPC health and reflection are always on, so `grpcurl -plaintext 127.0.0.1:50051 list` works.\n\n\
        Settings come from built-in defaults, then config/default.toml, then config/<env>.toml, then \
        CLM_* environment variables (CLM_SERVER__LISTEN_ADDR=0.0.0.0:50051, CLM_AUTH__MODE=jwt, …)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all four services in this process (the default).
    Serve,
    /// Apply every service's schema migrations and exit.
    Migrate,
    /// Run every check `serve` runs before it listens (values, auth keys, TLS files) and exit:
    /// non-zero exactly when `serve` would refuse to start.
    CheckConfig,
    /// Rebuild a consumer's read model by replaying every event from the first (stop the
    /// service that runs the consumer first; it resumes from the first event when it starts).
    Replay {
        /// The consumer to replay: `metrics`.
        #[arg(long)]
        consumer: String,
    },
    /// Fill a tenant of a running CLM with realistic demo data through its gRPC API: contacts
    /// across channels over the last year, journeys, purchases, surveys and goals.
    Seed {
        /// CLM address (default: this configuration's server.listen_addr).
        #[arg(long)]
        addr: Option<String>,
        /// Tenant (in jwt mode the CLI signs an admin token for it; dev mode: `dev`).
        #[arg(long, default_value = "dev")]
        tenant: String,
        /// How many contacts.
        #[arg(long, default_value_t = 2000)]
        contacts: usize,
        /// Random seed (the same seed gives the same data).
        #[arg(long, default_value_t = 42)]
        seed_value: u64,
    },
    /// Write a self-contained HTML page with the tenant's funnel, cohort heatmap, NPS trend,
    /// CAC by channel, headline KPIs and goals, read from a running CLM.
    Report {
        /// CLM address (default: this configuration's server.listen_addr).
        #[arg(long)]
        addr: Option<String>,
        /// Tenant (in jwt mode the CLI signs a token for it; dev mode: `dev`).
        #[arg(long, default_value = "dev")]
        tenant: String,
        /// Days before now the report covers.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write the page.
        #[arg(long, short = 'o', default_value = "clm-report.html")]
        out: std::path::PathBuf,
    },
    /// Mint a bearer token for development and tests: signed with `auth.jwt_hs256_secret`, or
    /// with a PEM private key whose public key (or JWKS entry) the server trusts. `iss` and
    /// `aud` are this configuration's `auth.jwt_issuer` and `auth.jwt_audience`. The token goes
    /// to stdout, a note on who accepts it to stderr. A server started in jwt mode with that
    /// key accepts new tokens at once (no restart); a server in dev mode ignores tokens.
    Token {
        /// Tenant the token acts for.
        #[arg(long)]
        tenant: String,
        /// Space-separated scopes: clm.read (reads), clm.write (writes, no reads), clm.admin
        /// (everything, including erasure and settings).
        #[arg(long, default_value = "clm.read clm.write")]
        scope: String,
        /// Subject (who the caller is).
        #[arg(long, default_value = "cli")]
        subject: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Sign with this PEM private key (RSA → RS256, EC P-256 → ES256, P-384 → ES384,
        /// Ed25519 → EdDSA) instead of the HS256 secret.
        #[arg(long)]
        private_key_file: Option<std::path::PathBuf>,
        /// `kid` to put in the token's header (the key's id in the server's JWKS).
        #[arg(long)]
        kid: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clm: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `serve` and `check-config` run the same checks (keys and TLS files included), so
    // check-config says ok exactly when serve would start.
    let loaded = match command {
        Command::Serve | Command::CheckConfig => runtime.block_on(Settings::load_for_serve()),
        _ => Settings::load(),
    };
    let settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("clm: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig => {
            println!(
                "configuration ok; listen_addr={} pages_addr={}",
                settings.server.listen_addr, settings.pages.listen_addr
            );
            Ok(())
        }
        Command::Token { tenant, scope, subject, ttl_secs, private_key_file, kid } => {
            anyhow::ensure!(
                private_key_file.is_some() || !settings.auth.jwt_hs256_secret.is_empty(),
                "set auth.jwt_hs256_secret (CLM_AUTH__JWT_HS256_SECRET) or pass --private-key-file to mint tokens"
            );
            if let Some(bad) = scope.split_whitespace().find(|s| clm_platform::Scope::parse(s).is_none()) {
                anyhow::bail!("unknown scope {bad:?}: the scopes are clm.read, clm.write and clm.admin");
            }
            let note = format!(
                "clm token: tenant {tenant}, scopes \"{scope}\", valid {ttl_secs} s. A server accepts it when it runs \
                 with auth.mode = jwt and {key}: servers read their keys when they start and keep no list of \
                 tokens, so a new token needs no restart (a server in dev mode ignores tokens; every call there is \
                 tenant `{dev}`).",
                key = if private_key_file.is_some() {
                    "trusts this key's public key"
                } else {
                    "this auth.jwt_hs256_secret"
                },
                dev = settings.auth.dev_tenant,
            );
            let claims = clm_platform::auth::Claims {
                sub: subject,
                tenant,
                scope,
                exp: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + ttl_secs,
                nbf: None,
                iss: (!settings.auth.jwt_issuer.is_empty()).then(|| settings.auth.jwt_issuer.clone()),
                aud: (!settings.auth.jwt_audience.is_empty()).then(|| settings.auth.jwt_audience.clone()),
            };
            let token = match private_key_file {
                Some(path) => {
                    let pem =
                        std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    clm_platform::auth::mint_with_private_key_pem(&pem, kid.as_deref(), &claims)?
                }
                None => clm_platform::auth::mint_hs256(&settings.auth.jwt_hs256_secret, &claims)?,
            };
            println!("{token}");
            eprintln!("{note}");
            Ok(())
        }
        Command::Seed { addr, tenant, contacts, seed_value } => {
            anyhow::ensure!((1..=1_000_000).contains(&contacts), "--contacts must be 1 to 1000000");
            let ch = client::connect(&settings, addr.as_deref(), &tenant).await?;
            let started = std::time::Instant::now();
            let s = seed::seed(ch, contacts, seed_value).await?;
            println!(
                "seeded tenant {tenant}: {} contacts, {} journey events, {} customers, {} survey responses, 4 goals, {} in {:.1} s",
                s.contacts,
                s.events,
                s.customers,
                s.responses,
                match s.campaigns {
                    0 => "its demo campaigns kept".to_owned(),
                    1 => "1 campaign".to_owned(),
                    n => format!("{n} campaigns"),
                },
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Report { addr, tenant, days, out } => {
            anyhow::ensure!((1..=3660).contains(&days), "--days must be 1 to 3660");
            let ch = client::connect(&settings, addr.as_deref(), &tenant).await?;
            let data = report::fetch(ch, &tenant, days).await?;
            std::fs::write(&out, report::render(&data))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Replay { consumer } => {
            let _telemetry = clm_platform::telemetry::init(&settings)?;
            anyhow::ensure!(consumer == "metrics", "unknown consumer {consumer:?}; consumers: metrics");
            let db = open_database::<clm_metrics::MetricsService>(&settings, true).await?;
            let bus = clm_platform::events::transport::from_settings(&settings.events, &settings.database).await?;
            let spec = clm_metrics::events::consumer_spec(&settings.events);
            clm_platform::events::consumer::replay(bus.as_ref(), &db, &spec, &clm_metrics::events::MetricsHandler)
                .await?;
            println!("consumer {} reset: its read model is empty and it re-reads every event on next start", spec.name);
            Ok(())
        }
        Command::Migrate => {
            let _telemetry = clm_platform::telemetry::init(&settings)?;
            migrate::<clm_contacts::ContactsService>(&settings).await?;
            migrate::<clm_lifecycle::LifecycleService>(&settings).await?;
            migrate::<clm_feedback::FeedbackService>(&settings).await?;
            migrate::<clm_metrics::MetricsService>(&settings).await?;
            Ok(())
        }
        Command::Serve => {
            let _telemetry = clm_platform::telemetry::init(&settings)?;
            let listener = tokio::net::TcpListener::bind(settings.server.listen_addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (key `server.listen_addr`): {e}", settings.server.listen_addr)
            })?;
            let shared = Shared::new(settings).await?;
            let mut routes = RoutesBuilder::default();
            let modules = vec![
                start::<clm_contacts::ContactsService>(&shared, &mut routes).await?,
                start::<clm_lifecycle::LifecycleService>(&shared, &mut routes).await?,
                start::<clm_feedback::FeedbackService>(&shared, &mut routes).await?,
                start::<clm_metrics::MetricsService>(&shared, &mut routes).await?,
            ];
            serve(&shared, listener, routes, modules, shutdown_signal()).await
        }
    }
}

async fn migrate<S: Service>(settings: &Settings) -> anyhow::Result<()> {
    open_database::<S>(settings, true).await.map(|_| ())
}
