//! The HTTP server: listener, connection limits, routing, health checks, request ids,
//! admission and graceful shutdown.
//!
//! Routing is deliberately flat: targets the proxy never forwards are refused first, health
//! endpoints answer without touching anything else, then every request gets a plan, its body
//! is read (under deadlines, before it holds anything), it is admitted, and it goes either to
//! passthrough or to the best-of-N path.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admission::{Admission, Held};
use crate::body::{self, Body};
use crate::body_deadline::BodyRules;
use crate::config::Config;
use crate::connections::{ConnectionLimits, ConnectionSlot};
use crate::cors::Cors;
use crate::dispatch::{self, Gate};
use crate::error::ApiError;
use crate::plan::{self, Head};
use crate::state::{AppState, Secrets};
use crate::telemetry::{self, AccessNote, RequestEnd};
use crate::{auth, conn, metrics, target};
use tracing::Instrument;

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
    gate: Gate,
    connections: Arc<ConnectionLimits>,
    cors: Cors,
    shutting_down: AtomicBool,
}

impl Server {
    /// Builds the upstream client and judges, then binds `server.listen`.
    pub async fn bind(config: Config, secrets: Secrets) -> Result<Server, String> {
        let addr = config.listen_addr();
        let listener = crate::listener::bind(addr).map_err(|e| {
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
        let admission = Admission::new(&config);
        let connections = ConnectionLimits::from_config(&config.server);
        tracing::info!(
            max_connections = connections.total(),
            "client connections are bounded (server.max_connections)"
        );
        let body_rules = BodyRules::from_config(&config.server);
        let cors = Cors::new(&config.server.cors_origins);
        let state = AppState::new(config, secrets)?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                gate: Gate {
                    state: state.clone(),
                    admission,
                    body_rules,
                },
                state,
                connections,
                cors,
                shutting_down: AtomicBool::new(false),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains: `/readyz` answers 503 while the proxy
    /// keeps accepting and serving for `server.drain_delay` (load balancers notice and stop
    /// sending), then it stops accepting, lets requests in flight finish for up to
    /// `server.shutdown_grace`, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let server = &self.shared.state.config.server;
        let patience = conn::Patience {
            idle: server.header_read_timeout,
            write: server.write_timeout,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // With a timer, hyper closes HTTP/1 connections that dribble their head (slowloris);
        // `conn` deals with the rest of what a connection can hold on to.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(patience.idle);
        let builder = Arc::new(builder);
        let (closing, closing_seen) = watch::channel(false);
        let drained = drain_after(self.shared.clone(), shutdown);
        tokio::pin!(drained);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Some((stream, slot)) = self.admit(accepted).await else { continue };
                    let shared = self.shared.clone();
                    // Boxed: hyper keeps a box the size of the service's future for as long as
                    // the connection lives, and the whole request path is large; this way an
                    // idle or streaming connection holds a pointer, not the request path.
                    let handler = move |request| {
                        let shared = shared.clone();
                        async move { Box::pin(handle(&shared, request)).await }
                    };
                    let served = conn::serve(stream, builder.clone(), handler, patience, closing_seen.clone());
                    tokio::spawn(async move {
                        // The connection's place in the limits is held until it closes, and
                        // it is counted for giving memory back after a burst of connections.
                        let _slot: ConnectionSlot = slot;
                        let _open = crate::allocator::connection_open();
                        served.await;
                    });
                }
                _ = &mut drained => break,
            }
        }
        drop(self.listener);
        drop(closing_seen);
        let _ = closing.send(true);
        if let Some(ui) = &self.shared.state.ui {
            ui.close(); // the inspector's live views would otherwise hold their connections
        }
        let grace = self.shared.state.config.server.shutdown_grace;
        tracing::info!(?grace, "no longer accepting connections; waiting for requests in flight (server.shutdown_grace)");
        // Every connection holds a receiver: all are gone once the last connection closed.
        tokio::select! {
            _ = closing.closed() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace period over; closing connections in flight"),
        }
    }

    /// A new connection and its place in the connection limits; None when it was refused
    /// (answered) or accepting failed.
    async fn admit(
        &self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
    ) -> Option<(TcpStream, ConnectionSlot)> {
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        };
        match self.shared.connections.admit(peer.ip()) {
            Ok(slot) => Some((stream, slot)),
            Err(refusal) => {
                tracing::debug!(%peer, ?refusal, "connection refused");
                self.shared
                    .state
                    .metrics
                    .connection_refused(refusal.label());
                refusal.answer(stream);
                None
            }
        }
    }
}

/// Completes `server.drain_delay` after `shutdown`, with `/readyz` answering 503 meanwhile;
/// the accept loop runs on until then.
async fn drain_after(shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    shutdown.await;
    shared.shutting_down.store(true, Ordering::SeqCst);
    let delay = shared.state.config.server.drain_delay;
    tracing::info!(
        ?delay,
        "draining: /readyz answers 503, new requests are still served for server.drain_delay"
    );
    tokio::time::sleep(delay).await;
}

async fn handle(shared: &Shared, mut request: Request<Incoming>) -> Response<Body> {
    let arrived = tokio::time::Instant::now();
    let request_id = ensure_request_id(&mut request);
    // Traces' and the access log's one seam: the request's span, and a note the steps after
    // routing fill in; both end with the response body.
    let span = telemetry::request_span(request.method(), request.uri().path(), request.headers());
    let access =
        (telemetry::access_log_on() && !is_probe(shared, request.uri().path())).then(|| {
            let note = Arc::new(AccessNote::default());
            request.extensions_mut().insert(note.clone());
            let what = (request.method().clone(), request.uri().path().to_string());
            (note, what, Instant::now())
        });
    // CORS's one seam: a preflight is answered without routing; other answers get its headers.
    let mut cors = shared.cors.check(&request);
    let mut response = match cors.take_preflight() {
        Some(preflight) => preflight,
        None => {
            route(shared, request, arrived)
                .instrument(span.clone())
                .await
        }
    };
    let headers = response.headers_mut();
    cors.decorate(headers);
    // The upstream's own id (the one its support desk asks for) stays available beside ours.
    if let Some(upstream_id) = headers.remove(X_REQUEST_ID) {
        if upstream_id != request_id {
            headers.insert(X_UPSTREAM_REQUEST_ID, upstream_id);
        }
    }
    headers.insert(X_REQUEST_ID, request_id);
    let status = response.status().as_u16();
    telemetry::record_response(&span, status, response.headers());
    let end = RequestEnd::new(access, status, response.headers(), span);
    response.map(|body| body::with_guard(body, end))
}

/// Health checks and scrapes: every few seconds from every prober, they would drown the
/// access log, and their own tools already record them.
fn is_probe(shared: &Shared, path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || path == shared.state.config.metrics.path
}

/// The client's `x-request-id` when it is usable, otherwise a fresh one, set on the request so
/// the upstream sees the same id.
fn ensure_request_id(request: &mut Request<Incoming>) -> HeaderValue {
    if let Some(id) = request.headers().get(&X_REQUEST_ID) {
        if !id.is_empty() && id.len() <= 200 {
            return id.clone();
        }
    }
    let id = fresh_request_id(rand::random());
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    id
}

/// `req_` and 16 hex digits, written without the formatting machinery: one per request.
fn fresh_request_id(random: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = *b"req_0000000000000000";
    for (i, digit) in text[4..].iter_mut().enumerate() {
        *digit = HEX[(random >> (60 - 4 * i) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("req_unknown"))
}

async fn route(
    shared: &Shared,
    request: Request<Incoming>,
    arrived: tokio::time::Instant,
) -> Response<Body> {
    let state = &shared.state;
    let note = request.extensions().get::<Arc<AccessNote>>().cloned();
    let done = |route, mode, status: StatusCode, elapsed| {
        state
            .metrics
            .request_done(route, mode, status.as_u16(), elapsed);
        telemetry::record_mode(mode);
        if let Some(note) = &note {
            note.mode(mode);
        }
    };
    if let Err(bad) = target::check(request.method(), request.uri().path()) {
        let route = metrics::route_label(request.uri().path());
        done(route, "rejected", bad.status(), arrived.elapsed());
        return bad.into_response();
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => return json_status(StatusCode::OK, "ok"),
        (&Method::GET | &Method::HEAD, "/readyz") => return readiness(shared),
        (&Method::GET, path)
            if state.config.metrics.enabled && path == state.config.metrics.path =>
        {
            return metrics_response(state, request.headers()).await
        }
        (_, path) if state.ui.is_some() && crate::ui::is_ui_path(path) => {
            return crate::ui::serve(state, &request)
        }
        _ => {}
    }
    let mut request = request;
    if let Err(rejection) = admit_client(state, &mut request).await {
        let refusal = rejection.into_response();
        let route = metrics::route_label(request.uri().path());
        done(route, "rejected", refusal.status(), arrived.elapsed());
        return refusal;
    }
    let started = Instant::now();
    let inflight = (state.metrics.inflight(), crate::allocator::in_flight());
    let route = metrics::route_label(request.uri().path());
    let head = plan::read_head(
        request.method(),
        request.uri().path(),
        request.headers(),
        &state.config,
    );
    let (mode, response, held) = match head {
        Err(error) => ("rejected", error.into_response(), Held::default()),
        Ok(Head::Forward) => {
            let (response, held) = dispatch::passthrough(&shared.gate, request, arrived)
                .await
                .unwrap_or_else(|refusal| (refusal, Held::default()));
            ("passthrough", response, held)
        }
        Ok(Head::Open(api, switches)) => {
            match dispatch::open(&shared.gate, (api, switches), request, arrived).await {
                Ok(answered) => answered,
                Err(refusal) => ("rejected", refusal, Held::default()),
            }
        }
    };
    done(route, mode, response.status(), started.elapsed());
    // What the request holds is released when the body has been sent, not when its head is
    // ready, so a long stream still counts as in flight.
    response.map(|body| body::with_guard(body, (held, inflight)))
}

/// `[auth]`'s one seam: the client's key checked and one request taken from its limits, its
/// credentials taken off the request (the proxy's own keys go upstream), and the key left in
/// the request's extensions for the steps after (N and model limits, cache tenant, tokens).
async fn admit_client(
    state: &AppState,
    request: &mut Request<Incoming>,
) -> Result<(), auth::Rejection> {
    let Some(keys) = &state.keys else {
        return Ok(());
    };
    let admitted = match keys.authenticate(request.headers()) {
        Ok(key) => key.admit().await.map(|()| key),
        Err(rejection) => Err(rejection),
    };
    match admitted {
        Ok(key) => {
            state.metrics.key_request(key.label());
            if let Some(note) = request.extensions().get::<Arc<AccessNote>>() {
                note.key(key.label());
            }
            auth::strip_credentials(request.headers_mut());
            request.extensions_mut().insert(key);
            Ok(())
        }
        Err(rejection) => {
            state.metrics.auth_rejection(rejection.reason);
            tracing::debug!(reason = rejection.reason, "request refused by [auth]");
            Err(rejection)
        }
    }
}

/// True when `/metrics` needs no token, or the request carries it (compared in constant time).
fn metrics_allowed(state: &AppState, headers: &http::HeaderMap) -> bool {
    let Some(token) = &state.metrics_token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(presented.as_bytes().ct_eq(token.secret().as_bytes()))
}

async fn metrics_response(state: &AppState, headers: &http::HeaderMap) -> Response<Body> {
    if !metrics_allowed(state, headers) {
        state.metrics.auth_rejection("metrics_token");
        let error = ApiError::refused(
            StatusCode::UNAUTHORIZED,
            "invalid_metrics_token",
            "/metrics needs `Authorization: Bearer <token>`, the token in the variable \
             metrics.bearer_token_env names."
                .to_string(),
        );
        return error.into_response();
    }
    if let Some(cache) = &state.cache {
        cache.report_size().await;
    }
    state.metrics.spans_dropped(telemetry::dropped_spans());
    let mut response = Response::new(body::full(state.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn readiness(shared: &Shared) -> Response<Body> {
    if shared.shutting_down.load(Ordering::SeqCst) {
        json_status(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        json_status(StatusCode::OK, "ready")
    }
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

#[cfg(test)]
mod tests {
    use super::fresh_request_id;

    #[test]
    fn fresh_request_ids_spell_all_sixteen_digits_in_order() {
        assert_eq!(
            fresh_request_id(0x0123_4567_89ab_cdef),
            "req_0123456789abcdef"
        );
        assert_eq!(fresh_request_id(u64::MAX), "req_ffffffffffffffff");
        assert_eq!(fresh_request_id(0), "req_0000000000000000");
    }
}
