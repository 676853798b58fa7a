//! The listener: accepting connections, bounding them, and closing the ones
//! that only hold resources.
//!
//! `axum::serve` has no connection limit and no timeouts, so a few thousand
//! idle sockets (or slowloris clients) exhaust the fd table and lock every
//! client out. This accept loop keeps the process able to accept and answer:
//!
//! - **Connection cap.** At most `max_connections` connections are served;
//!   the loop does not call `accept` beyond that, so further clients wait in
//!   the kernel's listen backlog ([`BACKLOG`]) instead of failing. The cap is
//!   kept below the file-descriptor budget ([`connection_budget`]) after the
//!   soft `RLIMIT_NOFILE` was raised to the hard limit.
//! - **Header read timeout.** A request's headers must arrive within
//!   `header_read_timeout`, counted from the connection's first byte (or
//!   from the accept, for the first request), so slowloris clients are cut.
//! - **Idle timeout.** A keep-alive connection with no request in progress
//!   and no bytes moving for `idle_timeout` is closed; so is a connection
//!   whose client has not taken a single byte of its response for that long
//!   (nginx's `send_timeout`). A request waiting on upstream is never cut by
//!   either: upstream has its own deadlines.
//! - **Malformed requests** that hyper answers itself (bad request line,
//!   oversized headers) get the spec JSON body: see `http::rejection`.
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS…) are logged, rate-limited,
//!   and the loop pauses briefly rather than spinning.
//! - **TLS** (`[tls]`): the handshake runs in the connection's task, never
//!   in the accept loop (one slow client must not hold up the others), and
//!   counts against the first request's header deadline, so a client that
//!   opens a connection and never finishes its handshake is cut like a
//!   slowloris one. The socket wrapper then sits on the decrypted stream, so
//!   the timers and the rejection rewrite see requests and responses, not
//!   records. The wrapper is generic over the stream: plain connections
//!   pay nothing for TLS being possible.
//! - **Graceful drain.** When `shutdown` completes the listener is closed
//!   at once (new connections are refused, not queued), every connection
//!   finishes the request it is serving and closes (keep-alive ones right
//!   after their current response), and `serve` returns when all are gone,
//!   or when `shutdown_grace` has passed: then the remaining connections
//!   are cut.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a
//! keep-alive connection is idle, which would make `idle_timeout` moot. The
//! timers here live in the connection's own task (one `sleep`, re-armed to
//! the nearest deadline), so they cost no extra task per connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::ServerConfig;
use crate::tls::ServerTls;

/// Listen backlog requested from the kernel (it caps this at
/// `net.core.somaxconn`, 4096 on current kernels). Bursts of hundreds of
/// nodes booting at once must queue, not be refused or delayed by SYN
/// retries.
pub const BACKLOG: u32 = 4096;
/// Largest buffer hyper keeps per connection. hyper keeps asking a body for
/// chunks while less than this is queued, so a client that stops reading
/// pins about this much plus one read buffer (see `storage::blob_file`);
/// hyper's default (~400 KiB) made that 100 KiB per stalled reader even
/// with 16 KiB reads at 64 KiB here. Request headers must fit in it too
/// (nginx allows 4 × 8 KiB), and request bodies are read in pieces of at
/// most this size.
const MAX_BUF: usize = 32 * 1024;
/// Descriptors kept back from the connection budget: the listener, logs,
/// the store, upstream connection pools, and the spool file and upstream
/// socket of every fill (`proxy::fill::MAX_FILLS`).
const FD_RESERVE: u64 = 64 + 2 * crate::proxy::fill::MAX_FILLS as u64;
/// Each client connection may hold its socket and an open blob file.
const FDS_PER_CONNECTION: u64 = 2;
/// Pause after an accept error, so a full fd table is not a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long cut connections get to close their sockets once the shutdown
/// grace is over.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// The runtime the server runs on. Blob reads and the short write/hash jobs
/// of fills run on the blocking pool; a bounded pool keeps thread stacks and
/// per-thread allocator state from growing with the number of concurrent
/// downloads. No job holds a thread for longer than one read or one batch
/// (see `proxy::fill`), so 32 threads serve any number of streams.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().max_blocking_threads(32).enable_all().build()
}

/// Binds a listening socket with a deep backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The connection cap that still leaves the process descriptors to accept,
/// answer and fill with, given the fd limit.
pub fn connection_budget(configured: usize, fd_limit: u64) -> usize {
    let budget = fd_limit.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION;
    (configured as u64).min(budget).max(1) as usize
}

/// Where the server is in its life, as connection tasks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Finish the request in progress, then close.
    Draining,
    /// The grace is over: close now.
    Cut,
}

/// Serves `app` on `listener` (HTTPS only when `tls` is set) until
/// `shutdown` completes, then lets the connections in progress finish their
/// requests, for at most `cfg.shutdown_grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: ServerConfig,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let fd_limit = raise_fd_limit();
    let max = connection_budget(cfg.max_connections, fd_limit);
    if max < cfg.max_connections {
        tracing::warn!(
            configured = cfg.max_connections,
            effective = max,
            fd_limit,
            "server.max_connections lowered to fit the file-descriptor limit"
        );
    }
    let limits =
        Arc::new(Limits { header_read: cfg.header_read_timeout, idle: cfg.idle_timeout, epoch: Instant::now() });
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_BUF).header_read_timeout(None).keep_alive(true);
    let (stop_tx, stop_rx) = watch::channel(Phase::Serving);
    let mut errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        // A slot first: beyond the cap, clients wait in the backlog.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    errors.log(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses (manifests, errors) must not wait on Nagle's
        // algorithm for the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let conn = Conn { app: app.clone(), builder: builder.clone(), limits: limits.clone(), stop: stop_rx.clone() };
        let tls = tls.as_ref().map(ServerTls::acceptor);
        tokio::spawn(async move {
            conn.run(tcp, peer, tls).await;
            drop(slot);
        });
    }
    // Closed now, not when the drain ends: clients are refused at once
    // and retry elsewhere, rather than wait in the backlog of a process
    // that will never accept them.
    drop(listener);
    let open = max - slots.available_permits();
    tracing::info!(connections = open, grace = ?cfg.shutdown_grace, "listener closed; draining connections");
    // Every connection finishes its request in progress, then closes.
    let _ = stop_tx.send(Phase::Draining);
    let all = max as u32;
    if tokio::time::timeout(cfg.shutdown_grace, slots.acquire_many(all)).await.is_err() {
        let open = max - slots.available_permits();
        tracing::warn!(connections = open, "shutdown grace over; cutting the connections still open");
        let _ = stop_tx.send(Phase::Cut);
        // Each task sees the cut at its next poll; a moment is enough.
        let _ = tokio::time::timeout(CUT_WAIT, slots.acquire_many(all)).await;
    }
    Ok(())
}

/// The timeouts, as the connection tasks see them.
struct Limits {
    header_read: Duration,
    idle: Duration,
    /// Clock origin for the millisecond timestamps in [`Activity`].
    epoch: Instant,
}

impl Limits {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// What one connection is doing, updated by its socket wrapper and its
/// service, read by its timer. Timestamps are milliseconds since
/// `Limits::epoch`, 0 meaning "not set".
#[derive(Default)]
struct Activity {
    /// Requests being handled or whose response is still being sent.
    active: AtomicU32,
    /// Last time bytes moved either way, or a response ended.
    last_io: AtomicU64,
    /// When the bytes of a request that has not reached the service began
    /// arriving (the header clock).
    pending_since: AtomicU64,
    /// Since when a write has been refused by the socket (client not
    /// reading); 0 while writes go through.
    write_blocked_since: AtomicU64,
}

/// Why a connection was closed by its timer.
#[derive(Debug, Clone, Copy)]
enum Expiry {
    HeaderTimeout,
    Idle,
    ClientNotReading,
}

impl Activity {
    /// The nearest moment something may expire, or the reason it has.
    fn check(&self, limits: &Limits, now: u64) -> Result<u64, Expiry> {
        let header = limits.header_read.as_millis() as u64;
        let idle = limits.idle.as_millis() as u64;
        if self.active.load(Ordering::Acquire) > 0 {
            let blocked = self.write_blocked_since.load(Ordering::Acquire);
            if blocked != 0 {
                let due = blocked + idle;
                return if now >= due { Err(Expiry::ClientNotReading) } else { Ok(due) };
            }
            // A handler may be waiting on upstream: nothing to enforce, but
            // look again before a newly blocked write could overstay much.
            return Ok(now + idle.min(header).max(100) / 2);
        }
        let pending = self.pending_since.load(Ordering::Acquire);
        if pending != 0 {
            let due = pending + header;
            return if now >= due { Err(Expiry::HeaderTimeout) } else { Ok(due) };
        }
        let due = self.last_io.load(Ordering::Acquire) + idle;
        if now >= due {
            Err(Expiry::Idle)
        } else {
            Ok(due)
        }
    }
}

/// Everything a connection task needs.
struct Conn {
    app: Router,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    limits: Arc<Limits>,
    stop: watch::Receiver<Phase>,
}

impl Conn {
    async fn run(mut self, tcp: TcpStream, peer: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) {
        let accepted = self.limits.now_ms();
        let Some(acceptor) = tls else {
            return self.serve(tcp, peer, accepted).await;
        };
        let deadline = tokio::time::Instant::now() + self.limits.header_read;
        let stream = tokio::select! {
            r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, reason = ?Expiry::HeaderTimeout, "closing connection during TLS handshake");
                    return;
                }
            },
            _ = self.stop.changed() => return,
        };
        self.serve(stream, peer, accepted).await
    }

    /// Serves HTTP on `stream` (a socket, or the TLS session over one)
    /// until the client or a timer ends it. `accepted` starts the first
    /// request's header clock.
    async fn serve<S>(mut self, stream: S, peer: SocketAddr, accepted: u64)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        activity.last_io.store(accepted, Ordering::Relaxed);
        // The first request's header clock starts at the accept.
        activity.pending_since.store(accepted, Ordering::Relaxed);
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            limits: self.limits.clone(),
            rewrite: None,
        });
        let service = Service { app: self.app.clone(), activity: activity.clone(), limits: self.limits.clone() };
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        loop {
            let timer = expiry(&activity, &self.limits);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                why = timer => {
                    tracing::debug!(%peer, reason = ?why, "closing connection");
                    return; // dropping the connection closes the socket
                }
                changed = self.stop.changed() => {
                    // A dropped sender means `serve` is gone: nothing waits
                    // for this connection any more.
                    let phase = if changed.is_ok() { *self.stop.borrow_and_update() } else { Phase::Cut };
                    match phase {
                        Phase::Serving => {}
                        Phase::Draining => conn.as_mut().graceful_shutdown(),
                        Phase::Cut => {
                            tracing::debug!(%peer, "cutting connection at the end of the shutdown grace");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Resolves when the connection has expired.
async fn expiry(activity: &Activity, limits: &Limits) -> Expiry {
    loop {
        let now = limits.now_ms();
        match activity.check(limits, now) {
            Err(why) => return why,
            Ok(due) => tokio::time::sleep(Duration::from_millis(due.saturating_sub(now).max(1))).await,
        }
    }
}

/// The router as a hyper service that tells [`Activity`] when a request
/// starts and when its response has been sent (or abandoned).
#[derive(Clone)]
struct Service {
    app: Router,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.activity.active.fetch_add(1, Ordering::AcqRel);
        self.activity.pending_since.store(0, Ordering::Release);
        let guard = InFlight { activity: self.activity.clone(), limits: self.limits.clone() };
        let mut app = self.app.clone();
        Box::pin(async move {
            let resp = tower_service::Service::call(&mut app, req.map(Body::new)).await?;
            Ok(resp.map(|body| Body::new(Guarded { body, _guard: guard })))
        })
    }
}

/// Held by a response body: the request counts as in progress until the
/// body is dropped (sent in full, or the client went away).
struct InFlight {
    activity: Arc<Activity>,
    limits: Arc<Limits>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.last_io.store(self.limits.now_ms(), Ordering::Release);
        self.activity.write_blocked_since.store(0, Ordering::Release);
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Guarded {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The client stream (a socket, or the decrypted side of a TLS session),
/// noting every byte that moves in [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    /// hyper's own rejection of a malformed request, being replaced by a
    /// spec JSON answer (see `http::rejection`).
    rewrite: Option<Rewrite>,
}

struct Rewrite {
    bytes: Vec<u8>,
    sent: usize,
    /// Length of hyper's write that this answer stands for.
    replaces: usize,
}

impl<S: AsyncWrite + Unpin> Tracked<S> {
    /// Writes `head` through the rejection rewrite when it is hyper's own
    /// answer to a malformed request; `None` for every other write.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if self.rewrite.is_none() {
            if self.activity.active.load(Ordering::Acquire) != 0 {
                return None;
            }
            let bytes = crate::http::rejection::rewrite(head)?;
            self.rewrite = Some(Rewrite { bytes, sent: 0, replaces: head.len() });
        }
        let rw = self.rewrite.as_mut()?;
        while rw.sent < rw.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &rw.bytes[rw.sent..]) {
                Poll::Ready(Ok(0)) => return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => rw.sent += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let replaced = rw.replaces;
        self.rewrite = None;
        Some(Poll::Ready(Ok(replaced)))
    }

    fn wrote(&self) {
        self.activity.last_io.store(self.limits.now_ms(), Ordering::Relaxed);
        if self.activity.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.activity.write_blocked_since.store(0, Ordering::Release);
        }
    }

    fn write_blocked(&self) {
        if self.activity.write_blocked_since.load(Ordering::Relaxed) == 0 {
            self.activity.write_blocked_since.store(self.limits.now_ms(), Ordering::Release);
        }
    }

    fn note_write(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.wrote(),
            Poll::Pending => self.write_blocked(),
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.limits.now_ms();
            let a = &self.activity;
            a.last_io.store(now, Ordering::Relaxed);
            // Bytes between requests start the next request's header clock.
            if a.active.load(Ordering::Acquire) == 0 && a.pending_since.load(Ordering::Acquire) == 0 {
                a.pending_since.store(now, Ordering::Release);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(r) = self.poll_rewrite(cx, buf) {
            return r;
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's rejection is a lone head: one slice, nothing after it.
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (parts.next(), parts.next()) {
            if let Some(r) = self.poll_rewrite(cx, head) {
                return r;
            }
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept errors, logged at most once a second with a count of the ones
/// in between, so a full fd table cannot flood the log.
#[derive(Default)]
struct AcceptErrors {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    fn log(&mut self, e: &io::Error) {
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.suppressed += 1;
            return;
        }
        tracing::error!(error = %e, suppressed = self.suppressed, "cannot accept connections");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { header_read: Duration::from_secs(10), idle: Duration::from_secs(60), epoch: Instant::now() }
    }

    #[test]
    fn the_budget_keeps_descriptors_for_everything_else() {
        assert_eq!(connection_budget(4096, 1_048_576), 4096);
        let b = connection_budget(4096, 1024);
        assert!(b < 1024 / 2, "{b}");
        assert!(b as u64 * FDS_PER_CONNECTION + FD_RESERVE <= 1024);
        assert_eq!(connection_budget(4096, 10), 1, "never zero");
    }

    #[test]
    fn header_clock_then_idle_clock() {
        let l = limits();
        let a = Activity::default();
        // Fresh connection: headers due 10 s after the accept.
        a.last_io.store(1000, Ordering::Relaxed);
        a.pending_since.store(1000, Ordering::Relaxed);
        assert_eq!(a.check(&l, 2000).unwrap(), 11_000);
        assert!(matches!(a.check(&l, 11_000), Err(Expiry::HeaderTimeout)));
        // A request in progress is never cut while its writes go through.
        a.active.store(1, Ordering::Relaxed);
        a.pending_since.store(0, Ordering::Relaxed);
        assert!(a.check(&l, 500_000).is_ok());
        // ...but a client that takes no byte for the idle timeout is.
        a.write_blocked_since.store(500_000, Ordering::Relaxed);
        assert_eq!(a.check(&l, 501_000).unwrap(), 560_000);
        assert!(matches!(a.check(&l, 560_000), Err(Expiry::ClientNotReading)));
        // Between requests: the idle clock.
        a.active.store(0, Ordering::Relaxed);
        a.write_blocked_since.store(0, Ordering::Relaxed);
        a.last_io.store(600_000, Ordering::Relaxed);
        assert_eq!(a.check(&l, 601_000).unwrap(), 660_000);
        assert!(matches!(a.check(&l, 660_000), Err(Expiry::Idle)));
    }
}
