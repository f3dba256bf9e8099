//! Accepted connections, guarded: a cap on how many are open at once, a handshake timeout and
//! an idle timeout, so connections that never say anything cannot use up the server.
//!
//! - **Handshake timeout** (`server.handshake_timeout_ms`): a connection must send the first
//!   [`HANDSHAKE_BYTES`] bytes (an HTTP/2 connection preface is 24; a TLS ClientHello more) within
//!   it, or it is closed.
//! - **Idle timeout** (`server.idle_timeout_ms`): a connection that sends nothing for this long
//!   is closed. Live clients always send something: the server pings every HTTP/2 connection
//!   (`server.keepalive_interval_ms`) and a live peer answers.
//! - **Connection cap** (`server.max_connections`): at the cap, a new connection takes the place
//!   of the oldest one still in its handshake (a flood of silent connections cannot keep a real
//!   client out); when every open connection is past its handshake, the new one is refused
//!   (closed at once, so it does not wait in the kernel's backlog).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a connection must send before its handshake timeout (an HTTP/2 client preface).
pub const HANDSHAKE_BYTES: usize = 24;

/// The limits, from `server.*`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Tells a connection still in its handshake to close (it was evicted).
#[derive(Debug, Default)]
struct KillSwitch {
    killed: AtomicBool,
    waker: AtomicWaker,
}

impl KillSwitch {
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Open connections, and those still in their handshake (oldest first).
#[derive(Debug)]
pub struct Guard {
    limits: Limits,
    open: AtomicUsize,
    next_id: AtomicU64,
    pending: Mutex<VecDeque<(u64, Arc<KillSwitch>)>>,
}

impl Guard {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, open: AtomicUsize::new(0), next_id: AtomicU64::new(0), pending: Mutex::default() })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<KillSwitch>)>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admit an accepted connection, or `None` when it must be closed (the cap is reached and
    /// no connection is left to evict).
    pub fn admit(self: &Arc<Self>, stream: TcpStream) -> Option<Guarded> {
        let mut pending = self.pending();
        if self.open.load(Ordering::Acquire) >= self.limits.max_connections {
            let Some((_, oldest)) = pending.pop_front() else {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    "connection refused: at the connection cap"
                );
                return None;
            };
            tracing::debug!("connection cap reached: closing the oldest connection still in its handshake");
            oldest.kill();
            // Its slot is handed over now; it gives up its count when it closes.
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(KillSwitch::default());
        pending.push_back((id, kill.clone()));
        drop(pending);
        Some(Guarded {
            stream,
            guard: self.clone(),
            id,
            kill,
            received: 0,
            counted: true,
            deadline: Box::pin(tokio::time::sleep(self.limits.handshake_timeout)),
        })
    }

    fn handshake_done(&self, id: u64) {
        self.pending().retain(|(i, _)| *i != id);
    }

    /// Connections open now (for tests and logs).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A connection under the [`Guard`]'s timeouts.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    guard: Arc<Guard>,
    id: u64,
    kill: Arc<KillSwitch>,
    received: usize,
    /// Still counted in `open` (an evicted connection's slot was handed over already).
    counted: bool,
    /// The handshake deadline until the handshake is done, then the idle deadline.
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn in_handshake(&self) -> bool {
        self.received < HANDSHAKE_BYTES
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.in_handshake() {
            self.guard.handshake_done(self.id);
        }
        if self.counted && !self.kill.killed.load(Ordering::Acquire) {
            self.guard.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.kill.waker.register(cx.waker());
        if this.kill.killed.load(Ordering::Acquire) {
            this.counted = false;
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "evicted at the connection cap")));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    let was_handshaking = this.in_handshake();
                    this.received = this.received.saturating_add(n);
                    if was_handshaking && !this.in_handshake() {
                        this.guard.handshake_done(this.id);
                    }
                    if !this.in_handshake() {
                        this.deadline.as_mut().reset(Instant::now() + this.guard.limits.idle_timeout);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let what = if this.in_handshake() { "handshake" } else { "idle" };
                    tracing::debug!(what, "closing a connection that sent nothing in time");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("{what} timeout"))));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
