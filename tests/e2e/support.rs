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
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let bin = dir.join(format!("clm{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin clm` (make test does) before these tests",
        bin.display()
    );
    bin
}

/// A `clm serve` child process and the address it listens on.
pub struct ClmProcess {
    pub child: Child,
    /// Working directory of the child (relative paths such as the event log land here).
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ClmProcess {
    /// Start `clm serve` with `env` on a random port; waits until it logs its address.
    pub fn start(env: &[(String, String)]) -> ClmProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(clm_binary());
        cmd.current_dir(dir.path())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLM_SERVER__LISTEN_ADDR", "127.0.0.1:0")
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
        ClmProcess { child, _dir: dir, addr, logs }
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
