//! Passthrough: everything that is not best-of-N goes to the upstream as it is.
//!
//! Bodies stream in both directions without buffering, so an SSE answer reaches the client
//! chunk by chunk as the upstream produces it. Only hop-by-hop headers are dropped.

use std::time::Instant;

use http::{header, Request, Response};
use http_body_util::Limited;
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::upstream::{self, Upstream, UpstreamError};

pub async fn forward(
    upstream: &Upstream,
    metrics: &Metrics,
    request: Request<Incoming>,
    max_body: usize,
) -> Response<Body> {
    let started = Instant::now();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return ApiError::payload_too_large(max_body).into_response();
    }
    let (parts, incoming) = request.into_parts();
    let body = body::boxed(Limited::new(incoming, max_body));
    forward_parts(upstream, metrics, parts, body, started).await
}

/// Forwards a request whose body is already prepared; `started` is when it arrived.
pub async fn forward_parts(
    upstream: &Upstream,
    metrics: &Metrics,
    parts: http::request::Parts,
    body: Body,
    started: Instant,
) -> Response<Body> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let sent = Instant::now();
    let result = upstream
        .forward(parts.method, path_and_query, &parts.headers, body)
        .await;
    let waited = sent.elapsed();
    let response = match result {
        Ok(response) => {
            metrics.upstream_call("passthrough", response.status().as_str(), waited);
            let (mut head, incoming) = response.into_parts();
            upstream::strip_hop_by_hop(&mut head.headers);
            Response::from_parts(head, body::boxed(incoming))
        }
        Err(error) => {
            metrics.upstream_call("passthrough", error.metric_label(), waited);
            upstream_error(upstream, &error).into_response()
        }
    };
    metrics.overhead("passthrough", started.elapsed().saturating_sub(waited));
    response
}

/// The client hears what went wrong; the upstream's address goes only to the log.
fn upstream_error(upstream: &Upstream, error: &UpstreamError) -> ApiError {
    tracing::warn!(upstream = upstream.redacted_base_url(), %error, "passthrough failed");
    error.to_api_error()
}
