//! [`SmtpSink`]: a real SMTP server (Python's aiosmtpd, `tests/support/smtp_sink.py`) as a child
//! process on 127.0.0.1, keeping every message it accepts, and failing on demand; with TLS
//! (implicit, or STARTTLS required) and AUTH when built so ([`SmtpSink::builder`]). And
//! [`Unresponsive`]: a server that accepts connections and never says a word.
//!
//! The interpreter is `CLM_TEST_PYTHON`, else `<workspace>/.venv-test/bin/python`, which
//! `make test-deps` creates (`make test` runs it first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::certs::ServerCert;

/// One message as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The envelope's `MAIL FROM` address.
    pub mail_from: String,
    /// The envelope's accepted `RCPT TO` addresses.
    pub rcpt_to: Vec<String>,
    /// The DATA section exactly as sent (dot-unstuffed, without the final `.`).
    pub raw: Vec<u8>,
    /// The TLS protocol the message came over (`"TLSv1.3"`), `None` in the clear.
    pub tls: Option<String>,
    /// The AUTH mechanism and user the client authenticated with, if it did.
    pub auth: Option<(String, String)>,
}

/// One AUTH command as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthAttempt {
    pub mechanism: String,
    pub user: String,
    /// The user and password were right.
    pub ok: bool,
    /// The TLS protocol of the connection, `None` in the clear.
    pub tls: Option<String>,
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
    tls: Tls,
}

/// How a sink speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    None,
    /// TLS from the first byte (port 465, `smtps://`).
    Implicit,
    /// Plain, offering STARTTLS and refusing mail before it (port 587, `?tls=required`).
    Starttls,
}

/// How to start an [`SmtpSink`]: plain and open to all by default.
#[derive(Clone, Debug)]
pub struct SmtpSinkBuilder {
    tls: Tls,
    cert: Option<ServerCert>,
    auth: Option<(String, String)>,
    mechanisms: Vec<String>,
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
    /// Start a plain server (no TLS, no AUTH) on a free port and wait until it accepts
    /// connections.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// A sink with TLS or AUTH.
    pub fn builder() -> SmtpSinkBuilder {
        SmtpSinkBuilder { tls: Tls::None, cert: None, auth: None, mechanisms: vec!["PLAIN".into(), "LOGIN".into()] }
    }
}

impl SmtpSinkBuilder {
    /// Speak TLS from the first byte with `cert` (`smtps://`).
    pub fn implicit_tls(mut self, cert: &ServerCert) -> Self {
        self.tls = Tls::Implicit;
        self.cert = Some(cert.clone());
        self
    }

    /// Offer STARTTLS with `cert` and refuse mail until the client used it (`?tls=required`).
    pub fn starttls(mut self, cert: &ServerCert) -> Self {
        self.tls = Tls::Starttls;
        self.cert = Some(cert.clone());
        self
    }

    /// Require AUTH as `user` with `password` before mail (over TLS when the sink has TLS; in
    /// the clear otherwise).
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Offer only these AUTH mechanisms (of `PLAIN`, `LOGIN`; both by default).
    pub fn auth_mechanisms(mut self, mechanisms: &[&str]) -> Self {
        self.mechanisms = mechanisms.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cert) = &self.cert {
            args.extend([
                "--tls-cert".into(),
                cert.cert_file.clone().into(),
                "--tls-key".into(),
                cert.key_file.clone().into(),
            ]);
        }
        if self.tls == Tls::Starttls {
            args.push("--starttls".into());
        }
        if let Some((user, password)) = &self.auth {
            args.extend(["--auth-user".into(), user.into(), "--auth-pass".into(), password.into()]);
            args.extend(["--auth-mechanisms".into(), self.mechanisms.join(",").into()]);
        }
        args
    }

    /// Start the server on a free port and wait until it accepts connections.
    pub async fn start(self) -> SmtpSink {
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
                .args(self.args())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {} (run `make test-deps`, or set CLM_TEST_PYTHON): {e}", python.display())
                });
            let mut sink = SmtpSink { port, dir, child, tls: self.tls };
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
}

impl SmtpSink {
    /// The URL that reaches it the way it speaks: `smtp://127.0.0.1:PORT` (plain),
    /// `smtps://127.0.0.1:PORT` (implicit TLS), `smtp://127.0.0.1:PORT?tls=required` (STARTTLS).
    pub fn url(&self) -> String {
        self.url_as("")
    }

    /// [`Self::url`] with `userinfo` (`"user:password"`, percent-encoded as needed) before the host.
    pub fn url_as(&self, userinfo: &str) -> String {
        let at = if userinfo.is_empty() { String::new() } else { format!("{userinfo}@") };
        let port = self.port;
        match self.tls {
            Tls::None => format!("smtp://{at}127.0.0.1:{port}"),
            Tls::Implicit => format!("smtps://{at}127.0.0.1:{port}"),
            Tls::Starttls => format!("smtp://{at}127.0.0.1:{port}?tls=required"),
        }
    }

    /// Every AUTH command so far, in order.
    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        let log = std::fs::read_to_string(self.dir.path().join("auth.log")).unwrap_or_default();
        log.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("auth.log JSON");
                AuthAttempt {
                    mechanism: v["mechanism"].as_str().unwrap_or_default().to_owned(),
                    user: v["user"].as_str().unwrap_or_default().to_owned(),
                    ok: v["ok"].as_bool().unwrap_or_default(),
                    tls: v["tls"].as_str().map(str::to_owned),
                }
            })
            .collect()
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
                    tls: v["tls"].as_str().map(str::to_owned),
                    auth: v["auth"].as_object().map(|a| {
                        let field = |k: &str| a.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
                        (field("mechanism"), field("user"))
                    }),
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

/// A server that accepts TCP connections and never answers — a hung SMTP relay, or (by its
/// port) a hung webhook endpoint: every connection is held open, unread, until this is dropped.
pub struct Unresponsive {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Unresponsive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unresponsive").field("port", &self.port).field("accepted", &self.accepted()).finish()
    }
}

impl Unresponsive {
    /// Listen on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        Self { port, accepted, task }
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Unresponsive {
    fn drop(&mut self) {
        self.task.abort();
    }
}
