//! [`SmtpSink`]: a real SMTP server (Python's aiosmtpd, `tests/support/smtp_sink.py`) as a child
//! process on 127.0.0.1, keeping every message it accepts, and failing on demand.
//!
//! The interpreter is `CLM_TEST_PYTHON`, else `<workspace>/.venv-test/bin/python`, which
//! `make test-deps` creates (`make test` runs it first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One message as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The envelope's `MAIL FROM` address.
    pub mail_from: String,
    /// The envelope's accepted `RCPT TO` addresses.
    pub rcpt_to: Vec<String>,
    /// The DATA section exactly as sent (dot-unstuffed, without the final `.`).
    pub raw: Vec<u8>,
}

impl Received {
    /// `raw` as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The value of the first top-level header `name` (any case), unfolded, trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default().replace("\r\n ", " ").replace("\r\n\t", " ");
        head.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// A running SMTP sink; the server is killed when this is dropped.
pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink").field("port", &self.port).field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

/// Where a reply code is given instead of 250 ([`SmtpSink::fail_next_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `RCPT TO`: the recipient is refused.
    Rcpt,
    /// `DATA` (after the message was sent): the message is refused.
    Data,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The Python to run the sink with; panics naming `make test-deps` when there is none.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CLM_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv-test/bin/python");
    assert!(
        venv.exists(),
        "the SMTP sink needs Python with aiosmtpd: run `make test-deps` (creates {}) or set CLM_TEST_PYTHON",
        venv.display()
    );
    venv
}

impl SmtpSink {
    /// Start the server on a free port and wait until it accepts connections.
    pub async fn start() -> Self {
        let python = python();
        let script = workspace_root().join("tests/support/smtp_sink.py");
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = crate::free_port();
            let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
            let child = Command::new(&python)
                .arg(&script)
                .args(["--port", &port.to_string(), "--dir"])
                .arg(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {} (run `make test-deps`, or set CLM_TEST_PYTHON): {e}", python.display())
                });
            let mut sink = Self { port, dir, child };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if sink.dir.path().join("ready").exists() {
                    return sink;
                }
                if let Ok(Some(status)) = sink.child.try_wait() {
                    last = format!(
                        "{status}: {}",
                        std::fs::read_to_string(sink.dir.path().join("stderr")).unwrap_or_default()
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if last.is_empty() {
                last = "not ready in 15 s".into();
            }
            assert!(
                !last.contains("No module named"),
                "the SMTP sink needs aiosmtpd: run `make test-deps` ({}): {last}",
                python.display()
            );
        }
        panic!("the SMTP sink did not start: {last}");
    }

    /// `smtp://127.0.0.1:PORT` (plain SMTP).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        let mut metas: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("sink dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        metas.sort();
        metas
            .into_iter()
            .map(|meta| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&meta).expect("meta")).expect("meta JSON");
                Received {
                    mail_from: v["mail_from"].as_str().unwrap_or_default().to_owned(),
                    rcpt_to: v["rcpt_to"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default(),
                    raw: std::fs::read(meta.with_extension("eml")).expect("message"),
                }
            })
            .collect()
    }

    /// Wait until at least `n` messages arrived; panics after `timeout`.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{n} messages expected in {timeout:?}, {} arrived", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Answer the next `n` `RCPT TO` commands with `code` (e.g. 451, 550) instead of 250.
    pub fn fail_next(&self, n: u32, code: u16) {
        self.fail_next_at(Stage::Rcpt, n, code);
    }

    /// Answer the next `n` commands of `stage` with `code`.
    pub fn fail_next_at(&self, stage: Stage, n: u32, code: u16) {
        let name = match stage {
            Stage::Rcpt => "fail-rcpt",
            Stage::Data => "fail-data",
        };
        let tmp = self.dir.path().join(format!("{name}.new"));
        std::fs::write(&tmp, format!("{n} {code}")).expect("control file");
        std::fs::rename(&tmp, self.dir.path().join(name)).expect("control file");
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
