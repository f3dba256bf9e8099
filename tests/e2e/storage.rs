//! Storage faults under the real binary: the SQLite data directory on a small file system of its
//! own (an ext4 loop device this test mounts, so it needs root; skipped, and said so, without it), filled up
//! and then made read-only, with writes going on all the while.
//!
//! The promise: a write is acknowledged only once it is durable. When storage cannot take
//! writes the call fails (RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE otherwise) naming why,
//! nothing is half-applied, readiness turns NOT_SERVING while writes cannot succeed (liveness
//! stays SERVING) and comes back by itself when space or permission returns; after a restart
//! every acknowledged write is there and metrics counted each committed contact exactly once.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clm_proto::contacts::v1 as pb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use support::ClmProcess;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// An ext4 file system of `size` on a loop device, mounted on a fresh directory (needs root),
/// unmounted on drop. ext4 rather than tmpfs: it is what a volume is, and `chattr +i` makes its
/// files read-only even to root and to descriptors already open.
struct SmallDisk {
    dir: tempfile::TempDir,
    _image: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let image = tempfile::tempdir().ok()?;
        let file = image.path().join("disk.img");
        let quiet = || std::process::Stdio::null();
        let ok = |c: &mut Command| c.stdout(quiet()).stderr(quiet()).status().is_ok_and(|s| s.success());
        if !ok(Command::new("truncate").args(["-s", size]).arg(&file))
            || !ok(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&file))
        {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        ok(Command::new("mount").args(["-o", "loop"]).arg(&file).arg(dir.path()))
            .then_some(SmallDisk { dir, _image: image })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Make the database files on it (`*.db`, `*.db-wal`) read-only, or writable again. The
    /// `-shm` files stay writable: SQLite maps them into memory, and a mapped page that cannot
    /// be written kills the process with SIGBUS, which is a crash test, not this one.
    fn read_only(&self, on: bool) {
        let flag = if on { "+i" } else { "-i" };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.path()).unwrap().map(|e| e.unwrap().path()).collect();
        paths.retain(|p| p.to_string_lossy().ends_with(".db") || p.to_string_lossy().ends_with(".db-wal"));
        let ok = Command::new("chattr").arg(flag).args(&paths).status().unwrap();
        assert!(ok.success(), "chattr {flag}");
    }

    /// Fill the file system up with a file of its own (removed by the caller), leaving
    /// about `leave` bytes.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let avail = free_bytes(self.path());
        let size = avail.saturating_sub(leave);
        let data = vec![0x5a_u8; 64 * 1024];
        let mut f = std::fs::File::create(&filler).unwrap();
        let mut written = 0;
        while written < size {
            let n = (size - written).min(data.len() as u64) as usize;
            match std::io::Write::write(&mut f, &data[..n]) {
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        f.sync_all().unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-R").arg("-i").arg(self.dir.path()).status();
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

fn env_on(dir: &Path, reserve: u64) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["contacts", "lifecycle", "feedback", "metrics", "events"]
        .iter()
        .map(|s| {
            let key = if *s == "events" {
                "CLM_EVENTS__LOG_DATABASE_URL".to_owned()
            } else {
                format!("CLM_{}__DATABASE_URL", s.to_uppercase())
            };
            (key, format!("sqlite://{}/{s}.db?mode=rwc", dir.display()))
        })
        .collect();
    env.push(("CLM_TELEMETRY__LOG_FILTER".into(), "info".into()));
    env.push(("CLM_SERVER__HEALTH_CHECK_INTERVAL_MS".into(), "200".into()));
    env.push(("CLM_DATABASE__MIN_FREE_BYTES".into(), reserve.to_string()));
    env
}

async fn status(ch: &tonic::transport::Channel, service: &str) -> i32 {
    HealthClient::new(ch.clone())
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map_or(-1, |r| r.into_inner().status)
}

async fn wait_status(ch: &tonic::transport::Channel, service: &str, want: ServingStatus, within: Duration) {
    let start = Instant::now();
    while status(ch, service).await != want as i32 {
        assert!(start.elapsed() < within, "health of {service:?} did not turn {want:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn contact(i: usize) -> pb::CreateContactRequest {
    pb::CreateContactRequest {
        contact: Some(pb::Contact {
            email: format!("disk-{i}@example.com"),
            // Some bulk, so the disk fills in a few hundred writes.
            tags: (0..20).map(|t| format!("tag-{t}-{i}-{}", "x".repeat(40))).collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// Asserts every acknowledged contact can be read; returns how many contacts are committed.
async fn all_there(c: &mut ContactsServiceClient<tonic::transport::Channel>, acked: &[String]) -> i32 {
    let mut lost = Vec::new();
    for id in acked {
        if c.get_contact(pb::GetContactRequest { id: id.clone() }).await.is_err() {
            lost.push(id.clone());
        }
    }
    assert!(lost.is_empty(), "{} of {} acknowledged contacts lost: {lost:?}", lost.len(), acked.len());
    c.list_contacts(pb::ListContactsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .total_size
}

/// Write until `failures` calls in a row failed; returns the acknowledged ids and the failures.
async fn write_until_refused(
    c: &mut ContactsServiceClient<tonic::transport::Channel>,
    next: &mut usize,
    failures: usize,
) -> (Vec<String>, Vec<tonic::Status>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while refused.len() < failures {
        assert!(start.elapsed() < Duration::from_mins(2), "writes kept succeeding on a full disk");
        *next += 1;
        match c.create_contact(contact(*next)).await {
            Ok(r) => {
                refused.clear();
                acked.push(r.into_inner().contact.unwrap().id);
            }
            Err(e) => refused.push(e),
        }
    }
    (acked, refused)
}

/// With the free-space reserve: writes are refused before they start once the disk is below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_with_a_reserve_then_read_only_files_lose_no_acknowledged_write() {
    full_then_read_only(1024 * 1024).await;
}

/// Without a reserve: SQLite itself runs out of space mid-write (SQLITE_FULL) and rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_without_a_reserve_then_read_only_files_lose_no_acknowledged_write() {
    full_then_read_only(0).await;
}

async fn full_then_read_only(reserve: u64) {
    let Some(disk) = SmallDisk::mount("64M") else {
        eprintln!("skipped: cannot mount a loop-device file system (needs root, mkfs.ext4)");
        return;
    };
    let env = env_on(disk.path(), reserve);
    let mut clm = ClmProcess::start(&env);
    let ch = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let mut c = ContactsServiceClient::new(ch.clone());
    wait_status(&ch, "readiness", ServingStatus::Serving, Duration::from_secs(10)).await;

    // A first batch with room to spare, then the disk fills up under further writes.
    let mut next = 0;
    let mut acked = Vec::new();
    for _ in 0..20 {
        next += 1;
        acked.push(c.create_contact(contact(next)).await.unwrap().into_inner().contact.unwrap().id);
    }
    let filler = disk.fill(reserve + 3 * 1024 * 1024);
    let (more, refused) = write_until_refused(&mut c, &mut next, 10).await;
    acked.extend(more);
    for e in &refused {
        assert_eq!(e.code(), Code::ResourceExhausted, "a write on a full disk: {e:?}");
        assert!(e.message().contains("disk") || e.message().contains("space"), "the message says why: {e:?}");
    }
    wait_status(&ch, "readiness", ServingStatus::NotServing, Duration::from_secs(5)).await;
    wait_status(&ch, "clm.contacts.v1.ContactsService", ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert_eq!(status(&ch, "liveness").await, ServingStatus::Serving as i32, "a full disk is not a dead process");
    // Reads still work.
    c.get_contact(pb::GetContactRequest { id: acked[0].clone() }).await.unwrap();

    // Space comes back: readiness and writes come back by themselves.
    std::fs::remove_file(&filler).unwrap();
    wait_status(&ch, "readiness", ServingStatus::Serving, Duration::from_secs(10)).await;
    next += 1;
    acked.push(
        c.create_contact(contact(next))
            .await
            .expect("writes resume once space is back")
            .into_inner()
            .contact
            .unwrap()
            .id,
    );

    // Read-only storage: UNAVAILABLE, readiness off, and back after.
    disk.read_only(true);
    let (more, refused) = write_until_refused(&mut c, &mut next, 5).await;
    acked.extend(more);
    for e in &refused {
        assert_eq!(e.code(), Code::Unavailable, "a write on read-only storage: {e:?}");
    }
    wait_status(&ch, "readiness", ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert_eq!(status(&ch, "liveness").await, ServingStatus::Serving as i32);
    disk.read_only(false);
    wait_status(&ch, "readiness", ServingStatus::Serving, Duration::from_secs(10)).await;
    next += 1;
    acked.push(
        c.create_contact(contact(next))
            .await
            .expect("writes resume once storage is writable")
            .into_inner()
            .contact
            .unwrap()
            .id,
    );

    // After a restart every acknowledged write is there, and metrics counted each exactly once.
    clm.signal("TERM");
    clm.wait_exit(Duration::from_secs(30));
    drop(clm);
    let clm = ClmProcess::start(&env);
    let ch = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let mut c = ContactsServiceClient::new(ch.clone());
    let committed = all_there(&mut c, &acked).await;
    eprintln!("full disk (reserve {reserve}): {} acknowledged, {committed} committed", acked.len());
    assert_eq!(i64::from(committed), acked.len() as i64, "nothing refused was half-applied");
    let mut m = clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient::new(ch);
    let mut seen = 0;
    for _ in 0..300 {
        seen = m
            .get_stage_metrics(clm_proto::metrics::v1::GetStageMetricsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .acquisition
            .unwrap()
            .new_contacts;
        if seen == i64::from(committed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, i64::from(committed), "metrics count every committed contact exactly once");
}

/// PostgreSQL: the contacts database's data files on a small volume of their own (a tablespace
/// on the loop device; the WAL stays on the server's disk, as with a separate data volume),
/// filled under writes — `53100 disk_full` — then the database made read-only, as after a
/// failover to a standby — `25006`. The same promises as on SQLite. Needs root and
/// `CLM_TEST_DATABASE_URL` (a superuser, for the tablespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_full_volume_then_read_only_database_lose_no_acknowledged_write() {
    use sea_orm::ConnectionTrait as _;
    let Ok(admin_url) = std::env::var("CLM_TEST_DATABASE_URL") else {
        eprintln!("skipped: CLM_TEST_DATABASE_URL is not set (PostgreSQL tests off)");
        return;
    };
    let Some(disk) = SmallDisk::mount("64M") else {
        eprintln!("skipped: cannot mount a loop-device file system (needs root, mkfs.ext4)");
        return;
    };
    assert!(Command::new("chown").arg("postgres").arg(disk.path()).status().unwrap().success());
    let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (space, name) = (format!("clm_small_{tag}"), format!("clm_full_{tag}"));
    admin.execute_unprepared(&format!("CREATE TABLESPACE {space} LOCATION '{}'", disk.path().display())).await.unwrap();
    admin.execute_unprepared(&format!("CREATE DATABASE {name} TABLESPACE {space}")).await.unwrap();
    let base = admin_url.rsplit_once('/').unwrap().0;
    let sqlite = tempfile::tempdir().unwrap();
    let mut env = env_on(sqlite.path(), 0);
    env.retain(|(k, _)| k != "CLM_CONTACTS__DATABASE_URL");
    env.push(("CLM_CONTACTS__DATABASE_URL".into(), format!("{base}/{name}")));
    let read_only = |on: bool| {
        let (admin, name) = (admin.clone(), name.clone());
        async move {
            admin
                .execute_unprepared(&format!("ALTER DATABASE {name} SET default_transaction_read_only = {on}"))
                .await
                .unwrap();
            // Sessions take the setting when they start: end the open ones (the pools reconnect).
            admin
                .execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .await
                .unwrap();
        }
    };

    let mut clm = ClmProcess::start(&env);
    let ch = tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap();
    let mut c = ContactsServiceClient::new(ch.clone());
    let svc = "clm.contacts.v1.ContactsService";
    wait_status(&ch, svc, ServingStatus::Serving, Duration::from_secs(10)).await;
    let mut next = 0;
    let mut acked = Vec::new();
    for _ in 0..20 {
        next += 1;
        acked.push(c.create_contact(contact(next)).await.unwrap().into_inner().contact.unwrap().id);
    }

    // The volume fills up under writes: RESOURCE_EXHAUSTED naming why, readiness off.
    let filler = disk.fill(2 * 1024 * 1024);
    let (more, refused) = write_until_refused(&mut c, &mut next, 10).await;
    acked.extend(more);
    for e in &refused {
        assert_eq!(e.code(), Code::ResourceExhausted, "a write on a full volume: {e:?}");
        assert!(e.message().contains("disk") || e.message().contains("space"), "the message says why: {e:?}");
    }
    wait_status(&ch, svc, ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert_eq!(status(&ch, "liveness").await, ServingStatus::Serving as i32, "a full disk is not a dead process");
    c.get_contact(pb::GetContactRequest { id: acked[0].clone() }).await.expect("reads still work");
    std::fs::remove_file(&filler).unwrap();
    wait_status(&ch, svc, ServingStatus::Serving, Duration::from_secs(10)).await;
    next += 1;
    acked.push(c.create_contact(contact(next)).await.expect("writes resume").into_inner().contact.unwrap().id);

    // The database turns read-only: UNAVAILABLE, readiness off, and back after.
    read_only(true).await;
    let (more, refused) = write_until_refused(&mut c, &mut next, 5).await;
    acked.extend(more);
    let last = refused.last().unwrap();
    assert_eq!(last.code(), Code::Unavailable, "a write to a read-only database: {last:?}");
    wait_status(&ch, svc, ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert_eq!(status(&ch, "liveness").await, ServingStatus::Serving as i32);
    read_only(false).await;
    wait_status(&ch, svc, ServingStatus::Serving, Duration::from_secs(10)).await;
    let start = Instant::now();
    loop {
        next += 1;
        match c.create_contact(contact(next)).await {
            Ok(r) => {
                acked.push(r.into_inner().contact.unwrap().id);
                break;
            }
            // A pooled session still from before the switch back: the next one is new.
            Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "writes resume: {e:?}"),
        }
    }

    // Every acknowledged write is there, and nothing refused was half-applied.
    let committed = all_there(&mut c, &acked).await;
    eprintln!("postgres full volume and read-only: {} acknowledged, {committed} committed", acked.len());
    assert!(i64::from(committed) >= acked.len() as i64);
    clm.signal("TERM");
    clm.wait_exit(Duration::from_secs(30));
    drop(clm);
    admin.execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
    admin.execute_unprepared(&format!("DROP TABLESPACE {space}")).await.unwrap();
}
