//! Workload 7: resource figures of the release binaries, each started as its own process on
//! fresh SQLite files: time from `exec` to health SERVING (first start, which creates the
//! schema, and a restart), resident memory idle and under load, binary sizes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_testkit::free_port;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Serialize)]
pub struct Resources {
    pub binary: String,
    pub size_bytes: u64,
    pub first_start_ms: f64,
    pub restart_ms: f64,
    pub rss_idle_kib: u64,
    pub rss_load_kib: u64,
}

pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    exe.parent().expect("dir").join(name)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `bin` on `port` with its data in `dir`; returns the process and ms until SERVING.
pub async fn start(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<(Proc, f64)> {
    start_with(bin, dir, port, &[]).await
}

/// [`start`] with settings of its own (`CLM_…` variables) over the SQLite defaults.
pub async fn start_with(bin: &Path, dir: &Path, port: u16, env: &[(String, String)]) -> anyhow::Result<(Proc, f64)> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CLM_CONFIG_DIR", "/nonexistent")
        .env("CLM_SERVER__LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("CLM_PAGES__LISTEN_ADDR", "127.0.0.1:0")
        .env("CLM_TELEMETRY__LOG_FILTER", "warn")
        .env("CLM_SERVER__HEALTH_CHECK_INTERVAL_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for s in ["contacts", "lifecycle", "feedback", "metrics"] {
        cmd.env(
            format!("CLM_{}__DATABASE_URL", s.to_uppercase()),
            format!("sqlite://{}/{s}.db?mode=rwc", dir.display()),
        );
    }
    cmd.env("CLM_EVENTS__LOG_DATABASE_URL", format!("sqlite://{}/events.db?mode=rwc", dir.display()));
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let t = Instant::now();
    let child = Proc(cmd.spawn()?);
    let url = format!("http://127.0.0.1:{port}");
    loop {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "{} did not serve within 30 s", bin.display());
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await {
            let mut h = HealthClient::new(ch);
            if let Ok(r) = h.check(HealthCheckRequest { service: String::new() }).await
                && r.into_inner().status == ServingStatus::Serving as i32
            {
                return Ok((child, t.elapsed().as_secs_f64() * 1000.0));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Load on a process for `secs`: 16 clients, creates and reads for contacts (and the single
/// binary), health checks for the other services (their reads need data of their own).
async fn load(port: u16, contacts: bool, secs: u64, pid: u32) -> anyhow::Result<u64> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?;
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop {
                i += 1;
                if contacts {
                    let mut c = ContactsServiceClient::new(ch.clone());
                    let _ = c
                        .create_contact(pb::CreateContactRequest {
                            contact: Some(pb::Contact { email: format!("r{w}-{i}@example.com"), ..Default::default() }),
                            request_id: String::new(),
                        })
                        .await;
                    let _ = c.list_contacts(pb::ListContactsRequest { page_size: 50, ..Default::default() }).await;
                } else {
                    let mut h = HealthClient::new(ch.clone());
                    let _ = h.check(HealthCheckRequest { service: String::new() }).await;
                }
            }
        }));
    }
    let mut peak = 0;
    while Instant::now() < stop {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await?;
    }
    Ok(peak.max(rss_kib(pid)))
}

pub async fn run(load_secs: u64) -> anyhow::Result<Vec<Resources>> {
    let mut out = Vec::new();
    for name in ["clm", "clm-contacts", "clm-lifecycle", "clm-feedback", "clm-metrics"] {
        let bin = binary(name);
        if !bin.exists() {
            eprintln!("{name}: not built in release (make bench builds it); skipped");
            continue;
        }
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let (first, first_ms) = start(&bin, dir.path(), port).await?;
        drop(first);
        let (proc, restart_ms) = start(&bin, dir.path(), port).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = proc.0.id();
        let idle = rss_kib(pid);
        let loaded = load(port, matches!(name, "clm" | "clm-contacts"), load_secs, pid).await?;
        let r = Resources {
            binary: name.into(),
            size_bytes: std::fs::metadata(&bin)?.len(),
            first_start_ms: first_ms,
            restart_ms,
            rss_idle_kib: idle,
            rss_load_kib: loaded,
        };
        eprintln!(
            "{name:<14} {:>5.1} MB  start {:>6.1} ms (restart {:>6.1} ms)  RSS idle {:>6} KiB, load {:>6} KiB",
            r.size_bytes as f64 / 1e6,
            r.first_start_ms,
            r.restart_ms,
            r.rss_idle_kib,
            r.rss_load_kib
        );
        out.push(r);
    }
    Ok(out)
}
