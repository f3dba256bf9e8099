//! Running the real `clm` binary as a child process (shared by several test binaries, each
//! using part of it).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `clm` binary next to this test executable (`make test` builds it first).
pub fn clm_binary() -> PathBuf {
    binary("clm")
}

/// Path of a workspace binary (`clm`, `clm-contacts`, …) next to this test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does) before these tests",
        bin.display()
    );
    bin
}

/// A `clm serve` child process and the address it listens on.
pub struct ClmProcess {
    pub child: Child,
    /// Working directory of the child (relative paths such as the event log land here).
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ClmProcess {
    /// The child's working directory (`data/` of the development profile lands here).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Start `clm serve` with `env` on a random port; waits until it logs its address.
    pub fn start(env: &[(String, String)]) -> ClmProcess {
        Self::start_bin("clm", env)
    }

    /// Start `<bin> serve` (the single binary or one service's) with `env`.
    pub fn start_bin(bin: &str, env: &[(String, String)]) -> ClmProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(binary(bin));
        cmd.current_dir(dir.path())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLM_SERVER__LISTEN_ADDR", "127.0.0.1:0")
            .env("CLM_PAGES__LISTEN_ADDR", "127.0.0.1:0")
            .env("CLM_TELEMETRY__LOG_FORMAT", "json")
            .env("CLM_CONFIG_DIR", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn clm");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v.get("message").and_then(|m| m.as_str()) == Some("serving gRPC")
                    && let Some(addr) = v.get("addr").and_then(|a| a.as_str())
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("addr"));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let start = Instant::now();
        let addr = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
                break a;
            }
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("clm exited early ({status}); logs:\n{}", logs.lock().unwrap().join("\n"));
            }
            assert!(start.elapsed() < Duration::from_mins(1), "clm did not start in a minute");
        };
        ClmProcess { child, dir, addr, logs }
    }

    /// Where the process serves its hosted pages: the address its log gives just after
    /// "serving gRPC" (a process whose services have pages: `clm`, `clm-lifecycle`).
    pub fn pages_addr(&self) -> SocketAddr {
        for _ in 0..200 {
            let found = self.logs.lock().unwrap().iter().find_map(|line| {
                let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
                if v.get("message")?.as_str()? != "serving the hosted pages (HTTP)" {
                    return None;
                }
                v.get("addr")?.as_str()?.parse::<SocketAddr>().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no \"serving the hosted pages\" line in the log")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Send a signal (e.g. "TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(ok.success());
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(start.elapsed() < timeout, "clm did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ClmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL server of the test's own (initdb in a temp dir, a free port), so a test can stop
/// and start it without disturbing anything else. `None` when PostgreSQL's binaries are absent.
pub struct PrivatePostgres {
    bindir: PathBuf,
    data: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    pub fn init() -> Option<PrivatePostgres> {
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bindir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !bindir.join("initdb").exists() {
            return None;
        }
        // initdb refuses to run as root: run PostgreSQL as the `postgres` user then.
        let uid = Command::new("id").arg("-u").output().ok()?;
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let data = tempfile::tempdir().expect("temp dir");
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres"]).arg(data.path()).status().expect("chown");
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = PrivatePostgres { bindir, data, port, as_postgres };
        let ok = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(pg.data.path().join("db"))
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(ok.success(), "initdb failed");
        pg.start();
        Some(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bindir.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn create_database(&self, name: &str) {
        let ok = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .status()
            .expect("createdb");
        assert!(ok.success(), "createdb {name} failed");
    }

    pub fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.data.path().display()
        );
        let ok = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-o", &opts, "-l"])
            .arg(self.data.path().join("log"))
            .arg("-D")
            .arg(self.data.path().join("db"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(ok.success(), "pg_ctl start failed");
    }

    /// Stop it the way an operator's restart does (`-m fast`: sessions are terminated).
    pub fn stop(&self) {
        let ok = self
            .command("pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.data.path().join("db"))
            .arg("stop")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl stop");
        assert!(ok.success(), "pg_ctl stop failed");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data.path().join("db"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A NATS server (JetStream on, its store in a temp dir) of the test's own on a free port, to
/// kill and restart at will. `None` when `nats-server` is not installed.
pub struct NatsServer {
    bin: PathBuf,
    store: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Option<NatsServer> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut n = NatsServer { bin, store: tempfile::tempdir().expect("temp dir"), port, child: None };
        n.up();
        Some(n)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Start it again (same port, same store) and wait until it accepts connections.
    pub fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
