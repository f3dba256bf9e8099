//! `clm-bench`: measure CLM against its own parts, in one run, as ratios.
//!
//! Each workload runs `--concurrency` client tasks for `--duration` seconds against a real
//! server on 127.0.0.1 (real sockets, real database) and records every call's latency in an
//! HDR histogram. References run in the same process on the same machine: the gRPC health
//! check is "hello-world tonic" (same server stack and layers, no database, no auth), so
//! `GetContact ÷ health` is the cost of our layers and the database read. Results go to
//! `bench/results/latest.json` and `latest.md`. Benchmarks never fail a test run.

mod delivery;
mod metrics_bench;
mod mixed;
mod resources;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_testkit::{self as testing, Backend, TestDb};
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
#[command(about = "CLM load generator")]
struct Args {
    /// Seconds per workload.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent client tasks (each with its own HTTP/2 stream).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Where to write results.
    #[arg(long, default_value = "bench/results")]
    out: std::path::PathBuf,
    /// Also run against PostgreSQL (admin URL; a fresh database is created). Default:
    /// CLM_TEST_DATABASE_URL when set.
    #[arg(long, env = "CLM_TEST_DATABASE_URL")]
    postgres: Option<String>,
    /// Contacts for the metrics-at-scale workload (ten transitions each; PostgreSQL only;
    /// 0 skips it).
    #[arg(long, env = "BENCH_METRICS_CONTACTS", default_value_t = 1_000_000)]
    metrics_contacts: u64,
    /// Rows streamed by the ImportContacts workload (0 skips it).
    #[arg(long, env = "BENCH_IMPORT_ROWS", default_value_t = 100_000)]
    import_rows: usize,
    /// Target writes a second of the mixed RecordJourneyEvent + SubmitResponse workload, one
    /// phase per rate in this order (0 skips it).
    #[arg(long, env = "BENCH_MIXED_RATE", value_delimiter = ',', default_value = "100,300,1000")]
    mixed_rate: Vec<u64>,
    /// NATS JetStream for the mixed workload on PostgreSQL (skipped when unreachable).
    #[arg(long, env = "CLM_TEST_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Only the PostgreSQL workloads.
    #[arg(long)]
    skip_sqlite: bool,
    /// Without the contacts workloads (CreateContact, GetContact, health, import, pgbench).
    #[arg(long)]
    skip_contacts: bool,
    /// Messages of the delivery workload: queued with SendMessage and sent to a local SMTP
    /// server (aiosmtpd, `make test-deps`) (0 skips it).
    #[arg(long, env = "BENCH_DELIVERIES", default_value_t = 600)]
    deliveries: usize,
    /// Contacts the delivery workload's messages go to (round robin).
    #[arg(long, env = "BENCH_DELIVERY_CONTACTS", default_value_t = 300)]
    delivery_contacts: usize,
    /// The sender's `messaging.concurrency` in the delivery workload (default: the shipped
    /// default).
    #[arg(long, env = "BENCH_DELIVERY_CONCURRENCY")]
    delivery_concurrency: Option<usize>,
    /// Seconds of load for the resource figures (0 skips them).
    #[arg(long, env = "BENCH_RESOURCE_SECONDS", default_value_t = 5)]
    resource_seconds: u64,
}

#[derive(Debug, Serialize)]
struct Figure {
    workload: String,
    backend: String,
    calls: u64,
    errors: u64,
    throughput_per_s: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

async fn run<F, Fut>(name: &str, backend: &str, args: &Args, make: F) -> Figure
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let make = Arc::new(make);
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let make = make.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut i = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = make(worker * 1_000_000 + i).await;
                let us = t.elapsed().as_micros() as u64;
                h.saturating_record(us.max(1));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            h
        }));
    }
    let started = Instant::now();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for t in tasks {
        all.add(t.await.expect("worker")).expect("merge");
    }
    let secs = started.elapsed().as_secs_f64().max(args.duration as f64);
    let f = Figure {
        workload: name.into(),
        backend: backend.into(),
        calls: all.len(),
        errors: errors.load(Ordering::Relaxed),
        throughput_per_s: all.len() as f64 / secs,
        p50_us: all.value_at_quantile(0.50),
        p90_us: all.value_at_quantile(0.90),
        p99_us: all.value_at_quantile(0.99),
        max_us: all.max(),
    };
    eprintln!(
        "{:<14} {:<9} {:>9.0}/s  p50 {:>6}µs  p99 {:>7}µs  errors {}",
        f.workload, f.backend, f.throughput_per_s, f.p50_us, f.p99_us, f.errors
    );
    f
}

async fn contacts_workloads(
    args: &Args,
    backend: Backend,
    label: &str,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let Some(db) = TestDb::create(backend, "bench").await else { return Ok(()) };
    let server = testing::spawn::<clm_contacts::ContactsService>(testing::settings(&[
        ("CLM_CONTACTS__DATABASE_URL", &db.url),
        ("CLM_DATABASE__MAX_CONNECTIONS", "16"),
        ("CLM_TELEMETRY__LOG_FILTER", "warn"),
    ]))
    .await;
    let client = ContactsServiceClient::new(server.authed(&testing::token("bench", "clm.read clm.write")).await);
    let run_id = uuid::Uuid::new_v4().simple().to_string();

    let c = client.clone();
    let rid = run_id.clone();
    figures.push(
        run("CreateContact", label, args, move |n| {
            let mut c = c.clone();
            let email = format!("b{n}-{rid}@example.com");
            async move {
                c.create_contact(pb::CreateContactRequest {
                    contact: Some(pb::Contact {
                        email,
                        given_name: "Bench".into(),
                        family_name: "Mark".into(),
                        tags: vec!["bench".into()],
                        lead_score: 50,
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await
                .is_ok()
            }
        })
        .await,
    );

    // Ids to read: one page of what was just created.
    let mut c = client.clone();
    let ids: Arc<Vec<String>> = Arc::new(
        c.list_contacts(pb::ListContactsRequest { page_size: 1000, ..Default::default() })
            .await?
            .into_inner()
            .contacts
            .into_iter()
            .map(|x| x.id)
            .collect(),
    );
    anyhow::ensure!(!ids.is_empty(), "nothing was created");
    let c = client.clone();
    figures.push(
        run("GetContact", label, args, move |n| {
            let mut c = c.clone();
            let id = ids[n % ids.len()].clone();
            async move { c.get_contact(pb::GetContactRequest { id }).await.is_ok() }
        })
        .await,
    );

    let health = HealthClient::new(server.channel().await);
    figures.push(
        run("HealthCheck", label, args, move |_| {
            let mut h = health.clone();
            async move { h.check(HealthCheckRequest { service: String::new() }).await.is_ok() }
        })
        .await,
    );
    if args.import_rows > 0 {
        figures.push(import(client.clone(), label, args.import_rows, &run_id).await?);
    }
    server.stop().await?;
    if args.import_rows > 0 {
        figures.push(bulk_reference(backend, &db.url, args.import_rows)?);
    }
    if backend == Backend::Postgres {
        pgbench_references(args, &db.url, figures)?;
    }
    db.cleanup().await;
    Ok(())
}

/// Rows a second as a figure (one "call" per row; no latency distribution).
fn rows_figure(workload: &str, backend: &str, rows: usize, took: Duration) -> Figure {
    let per_s = rows as f64 / took.as_secs_f64().max(1e-9);
    eprintln!("{workload:<14} {backend:<9} {per_s:>9.0} rows/s  ({rows} rows in {:.2} s)", took.as_secs_f64());
    Figure {
        workload: workload.into(),
        backend: backend.into(),
        calls: rows as u64,
        errors: 0,
        throughput_per_s: per_s,
        p50_us: 0,
        p90_us: 0,
        p99_us: 0,
        max_us: took.as_micros() as u64,
    }
}

/// Workload 4: ImportContacts streaming `rows` contacts in messages of 1,000.
async fn import(
    mut client: ContactsServiceClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, testing::BearerInterceptor>,
    >,
    label: &str,
    rows: usize,
    run_id: &str,
) -> anyhow::Result<Figure> {
    let messages: Vec<pb::ImportContactsRequest> = (0..rows)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| pb::ImportContactsRequest {
            contacts: chunk
                .iter()
                .map(|i| pb::Contact {
                    email: format!("imp{i}-{run_id}@example.com"),
                    given_name: "Bench".into(),
                    family_name: "Mark".into(),
                    tags: vec!["bench".into()],
                    lead_score: 50,
                    ..Default::default()
                })
                .collect(),
        })
        .collect();
    let t = Instant::now();
    let mut out = client.import_contacts(tokio_stream::iter(messages)).await?.into_inner();
    let mut failed = 0usize;
    while let Some(r) = out.message().await? {
        if let Some(pb::import_contacts_response::Result::Rows(rows)) = r.result {
            failed += rows.results.iter().filter(|x| x.outcome != pb::ImportOutcome::Created as i32).count();
        }
    }
    let took = t.elapsed();
    anyhow::ensure!(failed == 0, "{failed} imported rows failed");
    Ok(rows_figure("ImportContacts", label, rows, took))
}

/// The database's own bulk load of the same rows: `COPY … FROM STDIN` (PostgreSQL, via psql)
/// or one transaction of INSERTs (SQLite, via the sqlite3 shell), into the same table.
fn bulk_reference(backend: Backend, url: &str, rows: usize) -> anyhow::Result<Figure> {
    let dir = tempfile::tempdir()?;
    let cols = "id, tenant_id, email, given_name, family_name, company, job_title, locale, region, city, labels, \
                attributes, consents, acq_campaign, acq_source_detail, lead_score, state, create_time, update_time, version";
    let labels = r#"{"tags":["bench"],"interests":[],"values":[]}"#;
    let (name, took) = if backend == Backend::Postgres {
        let csv = dir.path().join("rows.csv");
        let mut text = String::with_capacity(rows * 160);
        for i in 0..rows {
            let _ = writeln!(
                text,
                "{},copy,copy{i}@example.com,Bench,Mark,\"\",\"\",\"\",\"\",\"\",\"{}\",{{}},[],\"\",\"\",50,active,0,0,1",
                uuid::Uuid::new_v4(),
                labels.replace('"', "\"\"")
            );
        }
        std::fs::write(&csv, text)?;
        let t = Instant::now();
        let out = std::process::Command::new("psql")
            .arg(url)
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("\\copy contacts ({cols}) FROM '{}' WITH (FORMAT csv)", csv.display()))
            .output()?;
        anyhow::ensure!(out.status.success(), "psql copy: {}", String::from_utf8_lossy(&out.stderr));
        ("COPY (psql)", t.elapsed())
    } else {
        let path = url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default().to_owned();
        let sql = dir.path().join("rows.sql");
        let mut text = String::with_capacity(rows * 220);
        text.push_str("BEGIN;\n");
        for i in 0..rows {
            let _ = writeln!(
                text,
                "INSERT INTO contacts ({cols}) VALUES ('{}', 'copy', 'copy{i}@example.com', 'Bench', 'Mark', '', '', '', '', '', '{labels}', '{{}}', '[]', '', '', 50, 'active', 0, 0, 1);",
                uuid::Uuid::new_v4()
            );
        }
        text.push_str("COMMIT;\n");
        std::fs::write(&sql, text)?;
        let t = Instant::now();
        let out = std::process::Command::new("sqlite3").arg(&path).arg(format!(".read {}", sql.display())).output()?;
        anyhow::ensure!(
            out.status.success() && out.stderr.is_empty(),
            "sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ("INSERT ×N, one transaction (sqlite3)", t.elapsed())
    };
    Ok(rows_figure(name, if backend == Backend::Postgres { "postgres" } else { "sqlite" }, rows, took))
}

/// The database's own speed on the same rows, measured by `pgbench` at the same concurrency:
/// a single-row INSERT of the contacts row shape, and a primary-key SELECT of a stored contact
/// (through a small id table, since pgbench draws numbers, not UUIDs).
fn pgbench_references(args: &Args, url: &str, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let psql = |sql: &str| -> anyhow::Result<()> {
        let out =
            std::process::Command::new("psql").arg(url).args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).output()?;
        anyhow::ensure!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    psql(
        "CREATE TABLE bench_ids AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM contacts WHERE tenant_id = 'bench'",
    )?;
    psql("CREATE UNIQUE INDEX ON bench_ids (n)")?;
    let dir = tempfile::tempdir()?;
    let insert = dir.path().join("insert.sql");
    std::fs::write(
        &insert,
        "INSERT INTO contacts (id, tenant_id, email, phone, given_name, family_name, company, job_title, locale, region, city, \
         labels, attributes, consents, acq_campaign, acq_source_detail, lead_score, state, create_time, update_time, version) \
         VALUES (md5(random()::text || clock_timestamp()::text), 'pgbench', md5(random()::text) || '@example.com', NULL, 'Bench', 'Mark', '', '', '', '', '', \
         '{\"tags\":[\"bench\"],\"interests\":[],\"values\":[]}', '{}', '[]', '', '', 50, 'active', 0, 0, 1);\n",
    )?;
    let select = dir.path().join("select.sql");
    let rows: i64 = 1000
        .min(
            figures
                .iter()
                .find(|f| f.workload == "CreateContact" && f.backend == "postgres")
                .map_or(1, |f| f.calls as i64),
        )
        .max(1);
    std::fs::write(
        &select,
        format!(
            "\\set n random(1, {rows})\nSELECT c.* FROM contacts c JOIN bench_ids b ON b.id = c.id WHERE b.n = :n AND c.tenant_id = 'bench';\n"
        ),
    )?;
    for (name, script) in [("pgbench INSERT", &insert), ("pgbench SELECT", &select)] {
        let out = std::process::Command::new("pgbench")
            .args(["-n", "-c", &args.concurrency.to_string(), "-j", "2", "-T", &args.duration.to_string(), "-f"])
            .arg(script)
            .arg(url)
            .output()?;
        anyhow::ensure!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))?;
        let latency_ms = text
            .lines()
            .find(|l| l.starts_with("latency average = "))
            .and_then(|l| l.trim_start_matches("latency average = ").split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        eprintln!("{name:<14} postgres  {tps:>9.0}/s  avg {:>6.0}µs", latency_ms * 1000.0);
        figures.push(Figure {
            workload: name.into(),
            backend: "postgres".into(),
            calls: (tps * args.duration as f64) as u64,
            errors: 0,
            throughput_per_s: tps,
            p50_us: (latency_ms * 1000.0) as u64,
            p90_us: 0,
            p99_us: 0,
            max_us: 0,
        });
    }
    Ok(())
}

fn ratio(figures: &[Figure], a: &str, b: &str, backend: &str) -> Option<f64> {
    let get = |w: &str| figures.iter().find(|f| f.workload == w && f.backend == backend).map(|f| f.throughput_per_s);
    Some(get(a)? / get(b)?.max(f64::MIN_POSITIVE))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut figures = Vec::new();
    if !args.skip_sqlite && !args.skip_contacts {
        contacts_workloads(&args, Backend::Sqlite, "sqlite", &mut figures).await?;
    }
    if args.postgres.is_some() && !args.skip_contacts {
        contacts_workloads(&args, Backend::Postgres, "postgres", &mut figures).await?;
    }
    let rates: Vec<u64> = args.mixed_rate.iter().copied().filter(|r| *r > 0).collect();
    if !rates.is_empty() {
        if !args.skip_sqlite {
            mixed::run(mixed::Setup::Sqlite, &rates, args.duration, &mut figures).await?;
        }
        if args.postgres.is_some() {
            let nats_url = args.nats.clone();
            mixed::run(mixed::Setup::PostgresNats { nats_url }, &rates, args.duration, &mut figures).await?;
        }
    }
    let mut deliveries = Vec::new();
    if args.deliveries > 0 {
        let opts = delivery::Options {
            messages: args.deliveries,
            contacts: args.delivery_contacts,
            clients: args.concurrency,
            sender_concurrency: args.delivery_concurrency,
        };
        let mut backends = Vec::new();
        if !args.skip_sqlite {
            backends.push((Backend::Sqlite, "sqlite"));
        }
        if args.postgres.is_some() {
            backends.push((Backend::Postgres, "postgres"));
        }
        for (backend, label) in backends {
            // A failure here is reported, and the other workloads' figures are still written.
            match delivery::run(backend, label, opts).await {
                Ok(Some(d)) => {
                    figures.extend(delivery::figures(&d));
                    deliveries.push(d);
                }
                Ok(None) => {}
                Err(e) => eprintln!("delivery workload on {label} failed: {e:#}"),
            }
        }
    }
    // Before the metrics-at-scale workload: its gigabytes of writes and their clean-up would
    // slow the processes timed here.
    let resources = if args.resource_seconds > 0 { resources::run(args.resource_seconds).await? } else { Vec::new() };
    let mut ratios = Vec::new();
    if args.postgres.is_some() && args.metrics_contacts > 0 {
        metrics_bench::run(args.metrics_contacts, &mut figures, &mut ratios).await?;
    }
    for backend in ["sqlite", "postgres"] {
        if let Some(r) = ratio(&figures, "GetContact", "HealthCheck", backend) {
            ratios.push((format!("GetContact ÷ HealthCheck ({backend}); target ≥ 0.5"), r));
        }
    }
    if let Some(r) = ratio(&figures, "CreateContact", "pgbench INSERT", "postgres") {
        ratios.push(("CreateContact ÷ pgbench INSERT (postgres); target ≥ 0.6".into(), r));
    }
    if let Some(r) = ratio(&figures, "GetContact", "pgbench SELECT", "postgres") {
        ratios.push(("GetContact ÷ pgbench SELECT (postgres); target ≥ 0.5".into(), r));
    }
    for d in &deliveries {
        let r = d.per_s / d.raw_per_s.max(f64::MIN_POSITIVE);
        ratios.push((format!("delivery ÷ raw SMTP through the same Mailer ({})", d.backend), r));
        let r = d.per_s / d.nodelay_per_s.max(f64::MIN_POSITIVE);
        ratios.push((format!("delivery ÷ raw SMTP, TCP_NODELAY: the server's ceiling ({})", d.backend), r));
    }
    if let Some(r) = ratio(&figures, "ImportContacts", "COPY (psql)", "postgres") {
        ratios.push(("ImportContacts ÷ COPY (postgres)".into(), r));
    }
    if let Some(r) = ratio(&figures, "ImportContacts", "INSERT ×N, one transaction (sqlite3)", "sqlite") {
        ratios.push(("ImportContacts ÷ one-transaction INSERT (sqlite)".into(), r));
    }
    std::fs::create_dir_all(&args.out)?;
    let when = chrono::Utc::now().to_rfc3339();
    let json = serde_json::json!({
        "time": when,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "cores": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "figures": figures,
        "ratios": ratios.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "resources": resources,
        "deliveries": deliveries,
    });
    std::fs::write(args.out.join("latest.json"), serde_json::to_string_pretty(&json)?)?;
    let mut md = format!(
        "# CLM benchmark — {when}\n\n{} s per workload, {} concurrent clients, {} cores.\n\n| workload | backend | calls/s | p50 µs | p90 µs | p99 µs | max µs | errors |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
        args.duration, args.concurrency, json["cores"]
    );
    for f in &figures {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            f.workload, f.backend, f.throughput_per_s, f.p50_us, f.p90_us, f.p99_us, f.max_us, f.errors
        );
    }
    md.push_str("\npgbench rows report pgbench's mean latency in the p50 column (it reports no percentiles).\n");
    md.push_str("\n| ratio | value |\n|---|---:|\n");
    for (k, v) in &ratios {
        let _ = writeln!(md, "| {k} | {v:.2} |");
    }
    if !deliveries.is_empty() {
        md.push_str(&delivery::table(&deliveries));
    }
    if !resources.is_empty() {
        md.push_str(
            "\n| binary | size MB | start → SERVING ms (fresh schema) | restart → SERVING ms | RSS idle MiB | RSS under load MiB |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for r in &resources {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} |",
                r.binary,
                r.size_bytes as f64 / 1e6,
                r.first_start_ms,
                r.restart_ms,
                r.rss_idle_kib as f64 / 1024.0,
                r.rss_load_kib as f64 / 1024.0
            );
        }
    }
    std::fs::write(args.out.join("latest.md"), &md)?;
    println!("{md}");
    Ok(())
}
