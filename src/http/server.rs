//! The HTTP server's accept loop: HTTP/1.1 connections on hyper 1 with the limits `axum::serve`
//! does not expose (issue 14): a header read timeout, an idle keep-alive timeout, a request body
//! timeout and a maximum of open connections, plus the graceful stop on `stages.front_cancel`.
//!
//! The two connection timers follow Go's `net/http` (`ReadHeaderTimeout`, `IdleTimeout`): a
//! connection waiting for a request gets `idle_timeout` until the first byte of it arrives, and
//! from that byte `header_read_timeout` to complete the head. hyper's own `header_read_timeout`
//! cannot do this: in hyper 1.12 its timer starts as soon as the previous response is written
//! (`proto/h1/conn.rs`, `poll_read_head`), so it would also be the idle timeout. Each connection
//! therefore carries a [`Clock`] that its socket ([`Watched`]) and its requests ([`Handler`],
//! [`DeadlineBody`]) move between phases, and one timer per connection checks it.

use std::{
    convert::Infallible,
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::Request, response::Response};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    server::conn::http1,
};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Sleep,
};
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;
use tracing::{debug, error, info, warn};

use crate::{metrics::Metrics, settings::AppSettings};

/// The limits of [`run`], from `[app]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_settings(app: &AppSettings) -> Self {
        Self {
            header_read: app.header_read_timeout,
            idle: app.idle_timeout,
            body_read: app.body_read_timeout,
            max_connections: app.max_connections,
        }
    }
}

/// Accepts connections until `stop` fires, then lets the open ones finish their requests (idle
/// ones close at once) and returns once all are closed; the caller's stage bounds that wait.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // Our own clock times the head (see the module doc); hyper's timer would cut idle connections
    // after `header_read_timeout` instead of `idle_timeout`.
    builder.header_read_timeout(None).keep_alive(true);
    // Logged once per process: at the limit under sustained load, a line per episode would flood
    // the log; the counter has every episode.
    let mut warned = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics.http_connection_limit_reached_total.inc();
                if !std::mem::replace(&mut warned, true) {
                    warn!(
                        max_connections = limits.max_connections,
                        "HTTP connection limit reached; new clients wait in the accept backlog until one closes \
                         (logged once; see http_connection_limit_reached_total)."
                    );
                }
                // Not accepting leaves new clients in the kernel's backlog, where they wait for a
                // slot instead of being refused.
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    _ = stop.cancelled() => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Small JSON answers must not wait for Nagle's algorithm: it adds milliseconds per request.
        let _ = tcp.set_nodelay(true);
        let clock = Arc::new(Clock::new());
        let handler = Handler {
            router: router.clone(),
            clock: clock.clone(),
            body_read: limits.body_read,
        };
        let io = TokioIo::new(Watched {
            tcp,
            clock: clock.clone(),
        });
        let connection = graceful.watch(builder.serve_connection(io, handler));
        tokio::spawn(async move {
            if let Some(phase) = serve_connection(connection, &clock, limits).await {
                debug!(%peer, phase = phase.name(), "HTTP connection closed by its timeout.");
            }
            // The slot frees only once the socket is closed (dropped above).
            drop(permit);
        });
    }
    // New clients are refused from here on, not left waiting in a backlog nobody reads.
    drop(listener);
    info!(
        open = graceful.count(),
        "HTTP server stopped accepting; finishing open requests."
    );
    graceful.shutdown().await;
}

/// Drives one connection under its clock; `Some(phase)` when a timeout closed it.
///
/// The phase changes while the connection is polled (its socket, service and body are polled
/// inside it), so the deadline is looked at after each poll. The timer is moved only to an
/// earlier deadline; a later one is picked up when the timer fires. Under steady traffic this
/// is a comparison per poll and a wake-up per timeout period, not a timer reset per request.
async fn serve_connection<C>(connection: C, clock: &Clock, limits: Limits) -> Option<Phase>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut connection = pin!(connection);
    let mut timer = pin!(tokio::time::sleep(limits.idle));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            // Clients that reset or send garbage are routine; hyper already answered what it could.
            if let Err(err) = result {
                debug!(error = %err, "HTTP connection ended with an error.");
            }
            return Poll::Ready(None);
        }
        loop {
            let (phase, deadline) = clock.deadline(limits);
            if let Some(deadline) = deadline
                && deadline < timer.deadline().into_std()
            {
                timer.as_mut().reset(deadline.into());
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                // Dropping the connection closes the socket: nothing is in flight in these phases.
                return Poll::Ready(Some(phase));
            }
            // Fired early (the deadline moved later, or a request is in flight): look again then.
            let next = deadline.unwrap_or(now + limits.idle.max(limits.header_read));
            timer.as_mut().reset(next.into());
        }
    })
    .await
}

async fn accept_failed(err: io::Error) {
    // A client that gave up during the handshake is routine.
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // Usually EMFILE: connections or files will close; retrying at once would spin.
    error!(error = %err, "Accepting an HTTP connection failed; retrying in a second.");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// The connection's clock.

/// Where a connection is between requests, as far as the timeouts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight and none begun: `idle_timeout` runs (also right after accept).
    Idle = 0,
    /// The first bytes of a request arrived, its head is not complete: `header_read_timeout` runs.
    Head = 1,
    /// A request is being handled: no connection timer (the body has its own).
    Busy = 2,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Head => "reading headers",
            Self::Busy => "busy",
        }
    }
}

/// A connection's phase and when it began, in one atomic so that the timer never reads a phase
/// with another phase's start. Written by the connection's own task (socket, service, body),
/// read by its timer in the same task; the atomic is for `Send`, not for contention.
struct Clock {
    accepted: Instant,
    /// `(milliseconds since accepted) << 2 | phase`.
    state: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            state: AtomicU64::new(Phase::Idle as u64),
        }
    }

    fn phase(&self) -> Phase {
        Self::phase_of(self.state.load(Ordering::Relaxed))
    }

    fn phase_of(state: u64) -> Phase {
        match state & 0b11 {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        }
    }

    /// Enters `phase` now. The time is read only for the phases that expire: twice per request.
    fn enter(&self, phase: Phase) {
        let millis = match phase {
            Phase::Busy => 0,
            Phase::Idle | Phase::Head => self.accepted.elapsed().as_millis() as u64,
        };
        self.state.store(millis << 2 | phase as u64, Ordering::Relaxed);
    }

    /// The current phase and when it expires; `None` while a request is in flight.
    fn deadline(&self, limits: Limits) -> (Phase, Option<Instant>) {
        let state = self.state.load(Ordering::Relaxed);
        let since = self.accepted + Duration::from_millis(state >> 2);
        let phase = Self::phase_of(state);
        let limit = match phase {
            Phase::Idle => Some(limits.idle),
            Phase::Head => Some(limits.header_read),
            Phase::Busy => None,
        };
        (phase, limit.map(|limit| since + limit))
    }
}

/// The connection's socket: its first read after an idle spell starts the head's timer, its
/// first write after a request (the response) starts the idle timer.
struct Watched {
    tcp: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before && self.clock.phase() == Phase::Idle {
            self.clock.enter(Phase::Head);
        }
        Poll::Ready(Ok(()))
    }
}

impl Watched {
    fn wrote(&self) {
        if self.clock.phase() == Phase::Busy {
            self.clock.enter(Phase::Idle);
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, buf));
        self.wrote();
        Poll::Ready(written)
    }

    // hyper writes heads and bodies as one vectored write when the socket supports it.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs));
        self.wrote();
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// The router as one connection's hyper service: marks the connection busy and puts the body
/// under its deadline.
#[derive(Clone)]
struct Handler {
    router: Router,
    clock: Arc<Clock>,
    body_read: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Handler {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as tower_service::Service<Request<DeadlineBody<Incoming>>>>::Future;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.clock.enter(Phase::Busy);
        let request = request.map(|body| DeadlineBody::new(body, self.body_read, self.clock.clone()));
        // A Router is always ready (axum documents `poll_ready` as such), so no `poll_ready`
        // dance; the clone is one reference count, as `TowerToHyperService` does per request.
        self.router.clone().call(request)
    }
}

/// The whole request body must arrive within `limit` of the first time it kept the handler
/// waiting: a client trickling its body cannot hold a handler (tower-http's
/// `RequestBodyTimeoutLayer` restarts its timer at every frame, so a trickle would pass).
/// A body that was already read with the head never starts a timer.
pub struct DeadlineBody<B> {
    inner: B,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    clock: Arc<Clock>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, limit: Duration, clock: Arc<Clock>) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
            clock,
        }
    }
}

/// The error a [`DeadlineBody`] ends with; `body.rs` answers it with 408 `request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
pub struct BodyTimedOut(pub Duration);

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_some() && this.clock.phase() != Phase::Busy {
                // After a `100 Continue` (a write) the body is still this request's.
                this.clock.enter(Phase::Busy);
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let limit = this.limit;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl BodyTimedOut {
    /// The timeout somewhere in an error's chain of sources (axum wraps a body's error twice).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut current = Some(err);
        while let Some(err) = current {
            if let Some(timed_out) = err.downcast_ref::<Self>() {
                return Some(timed_out);
            }
            current = err.source();
        }
        None
    }
}
