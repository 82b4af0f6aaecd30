//! Serving one accepted client connection: deciding which protocol it speaks within
//! `server.header_read_timeout`, closing it once it has been idle that long, and letting it
//! finish its requests when the server shuts down.
//!
//! hyper closes an HTTP/1 connection that dribbles its head or idles between requests, but
//! only once it knows the connection is HTTP/1, and it has no idle timeout for HTTP/2 at all.
//! A client could otherwise hold a connection (and its place in the connection limits)
//! forever by sending nothing, a few bytes of the HTTP/2 preface, or an HTTP/2 handshake and
//! then nothing. So the protocol is decided here under the header deadline, and every
//! connection with no request open for that long is shut down gracefully. A client that stops
//! reading its answers would hold its requests (and their work slots) for as long as it liked:
//! a write that makes no progress for `server.write_timeout` ends the connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::body::{self, Body};

/// What every client connection opens with when it speaks HTTP/2 without negotiation.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a connection that has sent part of the HTTP/2 preface is looked at again.
const PREFACE_POLL: Duration = Duration::from_millis(10);

/// How long a connection may keep the proxy waiting.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// To say which protocol it speaks, and to stay open with no request (`header_read_timeout`).
    pub idle: Duration,
    /// For a write to it to make progress (`write_timeout`).
    pub write: Duration,
}

/// Serves `stream` with `handle` for each request until the client closes it, it has been idle
/// too long, or `shutdown` turns true (then requests in flight are finished first).
pub async fn serve<H, F>(
    stream: TcpStream,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handle: H,
    patience: Patience,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    if !protocol_is_known(&stream, patience.idle).await {
        return;
    }
    let activity = Arc::new(Activity::default());
    let requests = activity.clone();
    let handle = Arc::new(handle);
    let service = service_fn(move |request| {
        let busy = Busy::begin(&requests);
        let handle = handle.clone();
        // The answer's future is made inside: hyper keeps one box the size of this future for
        // the connection's whole life, and a future captured from outside would be stored twice.
        async move {
            let response = handle(request).await;
            Ok::<_, Infallible>(response.map(|b| body::with_guard(b, busy)))
        }
    });
    let io = TokioIo::new(WriteStall::new(stream, patience.write));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = idle_for(&activity, patience.idle), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Waits until the client's first bytes say which protocol it speaks: all 24 bytes of the
/// HTTP/2 preface, or anything that is not its start (HTTP/1). False when the client closes
/// or does not say within `patience`.
async fn protocol_is_known(stream: &TcpStream, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    let mut first = [0u8; HTTP2_PREFACE.len()];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if n == HTTP2_PREFACE.len() || first[..n] != HTTP2_PREFACE[..n] {
            return true;
        }
        // Part of the preface: peeking again would return at once, so wait a little first.
        if Instant::now() + PREFACE_POLL >= deadline {
            return false;
        }
        tokio::time::sleep(PREFACE_POLL).await;
    }
}

/// Resolves once a whole `patience` period has passed with no request open on the connection
/// and none beginning or ending, so between one and two periods after the last activity.
/// One timer a period, whatever the traffic: requests only touch two counters.
async fn idle_for(activity: &Activity, patience: Duration) {
    let mut periods = tokio::time::interval_at(Instant::now() + patience, patience);
    let mut seen = activity.events.load(Ordering::Relaxed);
    loop {
        periods.tick().await;
        let events = activity.events.load(Ordering::Relaxed);
        if events == seen && activity.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        seen = events;
    }
}

/// What the requests on one connection are doing.
#[derive(Debug, Default)]
struct Activity {
    open: AtomicUsize,
    /// Requests begun plus requests ended: unchanged over a period means nothing happened.
    events: AtomicU64,
}

/// One request open on a connection, from its head until its response body is sent.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Busy {
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.events.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client socket whose writes fail once they have made no progress for `limit`: a client
/// that stops reading cannot keep a response, and what its request holds, forever.
struct WriteStall {
    stream: TcpStream,
    limit: Duration,
    /// Armed while a write is waiting for room in the socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteStall {
    fn new(stream: TcpStream, limit: Duration) -> WriteStall {
        WriteStall {
            stream,
            limit,
            stalled: None,
        }
    }

    /// Passes `result` on, arming the stall timer while it is pending and failing the write
    /// once the timer runs out.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for server.write_timeout",
            ))),
        }
    }
}

impl AsyncRead for WriteStall {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStall {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
