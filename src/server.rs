//! The HTTP server: listener, routing, health checks, request ids, the in-flight limit and
//! graceful shutdown.
//!
//! Routing is deliberately flat: health endpoints answer without touching anything else, then
//! every request gets a plan and goes either to passthrough or to the best-of-N path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::{self, Body};
use crate::cache::AnswerCache;
use crate::config::Config;
use crate::error::ApiError;
use crate::plan::{self, Plan};
use crate::state::{AppState, Secrets};
use crate::{best_of_n, metrics, passthrough, plain_cache};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// A bound, not yet running, proxy.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What the connection tasks share.
struct Shared {
    state: Arc<AppState>,
    inflight: Option<Arc<Semaphore>>,
    shutting_down: AtomicBool,
}

impl Server {
    /// Builds the upstream client and judges, then binds `server.listen`.
    pub async fn bind(config: Config, secrets: Secrets) -> Result<Server, String> {
        let addr = config.listen_addr();
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr}: {e}. Change server.listen or BON_LISTEN.")
        })?;
        Self::with_listener(listener, config, secrets)
    }

    /// Uses an already bound listener (tests bind port 0 and read the address back).
    pub fn with_listener(
        listener: TcpListener,
        config: Config,
        secrets: Secrets,
    ) -> Result<Server, String> {
        let max_inflight = config.server.max_inflight;
        let state = AppState::new(config, secrets)?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                state,
                inflight: (max_inflight > 0).then(|| Arc::new(Semaphore::new(max_inflight))),
                shutting_down: AtomicBool::new(false),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight finish
    /// for up to `server.shutdown_grace`, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // With a timer, hyper closes connections that dribble their headers (slowloris).
        builder.http1().timer(TokioTimer::new());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Usually out of file descriptors: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = self.shared.clone();
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        drop(self.listener);
        let grace = self.shared.state.config.server.shutdown_grace;
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace period over; closing connections in flight"),
        }
    }
}

async fn handle(shared: &Shared, mut request: Request<Incoming>) -> Response<Body> {
    let request_id = ensure_request_id(&mut request);
    let mut response = route(shared, request).await;
    let headers = response.headers_mut();
    // The upstream's own id (the one its support desk asks for) stays available beside ours.
    if let Some(upstream_id) = headers.remove(X_REQUEST_ID) {
        if upstream_id != request_id {
            headers.insert(X_UPSTREAM_REQUEST_ID, upstream_id);
        }
    }
    headers.insert(X_REQUEST_ID, request_id);
    response
}

/// The client's `x-request-id` when it is usable, otherwise a fresh one, set on the request so
/// the upstream sees the same id.
fn ensure_request_id(request: &mut Request<Incoming>) -> HeaderValue {
    if let Some(id) = request.headers().get(&X_REQUEST_ID) {
        if !id.is_empty() && id.len() <= 200 {
            return id.clone();
        }
    }
    let id = HeaderValue::from_str(&format!("req_{:016x}", rand::random::<u64>()))
        .unwrap_or(HeaderValue::from_static("req_unknown"));
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    id
}

async fn route(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let state = &shared.state;
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => return json_status(StatusCode::OK, "ok"),
        (&Method::GET | &Method::HEAD, "/readyz") => return readiness(shared),
        (&Method::GET, path)
            if state.config.metrics.enabled && path == state.config.metrics.path =>
        {
            return metrics_response(state).await
        }
        _ => {}
    }
    let permit = match &shared.inflight {
        None => None,
        Some(semaphore) => match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return overloaded(),
        },
    };
    let started = Instant::now();
    let inflight = state.metrics.inflight();
    let route = metrics::route_label(request.uri().path());
    let planned = plan::plan(
        request.method(),
        request.uri().path(),
        request.headers(),
        &state.config,
    );
    let (mode, response) = match planned {
        Err(error) => ("rejected", error.into_response()),
        Ok(Plan::Passthrough) => match plain_cache_for(state, &request) {
            Some(cache) => {
                let (parts, body) = request.into_parts();
                let response = plain_cache::handle(state.clone(), cache, parts, body).await;
                ("passthrough", response)
            }
            None => {
                let max_body = state.config.server.max_body_bytes;
                let response =
                    passthrough::forward(&state.upstream, &state.metrics, request, max_body).await;
                ("passthrough", response)
            }
        },
        Ok(Plan::BestOfN(plan)) => {
            let (parts, body) = request.into_parts();
            (
                "best_of_n",
                best_of_n::handle(state.clone(), plan, parts, body).await,
            )
        }
    };
    state
        .metrics
        .request_done(route, mode, response.status().as_u16(), started.elapsed());
    // The guards are released when the body has been sent, not when its head is ready, so a
    // long stream still counts as in flight.
    response.map(|body| body::with_guard(body, (permit, inflight)))
}

/// Plain chat completions go through the cache only when `cache.passthrough` says so.
fn plain_cache_for<'a>(
    state: &'a AppState,
    request: &Request<Incoming>,
) -> Option<&'a AnswerCache> {
    let cacheable = state.config.cache.passthrough
        && request.method() == Method::POST
        && plan::is_chat_completions(request.uri().path());
    state.cache.as_ref().filter(|_| cacheable)
}

async fn metrics_response(state: &AppState) -> Response<Body> {
    if let Some(cache) = &state.cache {
        cache.report_size().await;
    }
    let mut response = Response::new(body::full(state.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn readiness(shared: &Shared) -> Response<Body> {
    if shared.shutting_down.load(Ordering::SeqCst) {
        json_status(StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else {
        json_status(StatusCode::OK, "ready")
    }
}

fn overloaded() -> Response<Body> {
    let mut response = ApiError::overloaded(
        "The proxy is at its limit of requests in flight (server.max_inflight); retry shortly.",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn json_status(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(format!("{{\"status\":\"{text}\"}}")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
