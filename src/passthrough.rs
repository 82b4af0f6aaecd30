//! Passthrough: everything that is not best-of-N goes to the upstream as it is.
//!
//! Response bodies stream without buffering, so an SSE answer reaches the client chunk by
//! chunk as the upstream produces it. Only hop-by-hop headers are dropped, and error answers
//! have any configured secret the upstream echoed in them replaced (see `redact`).

use std::time::Instant;

use bytes::BytesMut;
use http::{header, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::telemetry;
use crate::upstream::{self, Upstream, UpstreamError};
use tracing::Instrument;

/// How long the proxy waits for an error answer's body to look for echoed secrets; what has
/// not arrived by then streams on unread.
const ERROR_SCAN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How much of an error answer is read to look for echoed secrets. Error bodies are small;
/// past this the rest streams on unread.
const ERROR_SCAN_BYTES: usize = 256 * 1024;

/// Forwards a request whose body is ready (read, or a timed stream); `started` is when the
/// proxy began its own work on it.
pub async fn forward(
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
    let is_head = parts.method == http::Method::HEAD;
    let sent = Instant::now();
    let span = telemetry::call_span("passthrough", "", None);
    let result = upstream
        .forward(parts.method, path_and_query, &parts.headers, body)
        .instrument(span.clone())
        .await;
    let waited = sent.elapsed();
    if !span.is_disabled() {
        let status = match &result {
            Ok((response, _)) => response.status().as_u16().to_string(),
            Err(error) => error.metric_label().to_string(),
        };
        telemetry::record_call(&span, &status, None, None);
    }
    let response = match result {
        Ok((response, place)) => {
            metrics.upstream_call("passthrough", response.status().as_str(), waited);
            let (mut head, incoming) = response.into_parts();
            upstream::strip_hop_by_hop(&mut head.headers);
            let failed = head.status.is_client_error() || head.status.is_server_error();
            let body = if failed && !is_head {
                redacted_error_body(upstream, &mut head, incoming).await
            } else {
                body::boxed(incoming)
            };
            // The call keeps its place until its answer has been sent on.
            Response::from_parts(head, body::with_guard(body, place))
        }
        Err(error) => {
            metrics.upstream_call("passthrough", error.metric_label(), waited);
            upstream_error(upstream, &error).into_response()
        }
    };
    metrics.overhead("passthrough", started.elapsed().saturating_sub(waited));
    response
}

/// An upstream error answer with echoed secrets replaced. Only plain (not compressed) bodies
/// can be read; the length changes, so `Content-Length` is left to the new body.
async fn redacted_error_body(
    upstream: &Upstream,
    head: &mut http::response::Parts,
    mut incoming: Incoming,
) -> Body {
    let encoded = head
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded || !upstream.has_secrets() {
        return body::boxed(incoming);
    }
    let mut scanned = BytesMut::new();
    // An upstream that stalls mid-answer must not hold the answer's head back for long.
    let give_up = tokio::time::Instant::now() + ERROR_SCAN_PATIENCE;
    let rest = loop {
        if scanned.len() >= ERROR_SCAN_BYTES {
            break body::boxed(incoming);
        }
        let Ok(frame) = tokio::time::timeout_at(give_up, incoming.frame()).await else {
            break body::boxed(incoming);
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    scanned.extend_from_slice(&data);
                }
            }
            // The answer broke off: the client sees it break off too.
            Some(Err(e)) => break body::failing(e.into()),
            None => break body::empty(),
        }
    };
    head.headers.remove(header::CONTENT_LENGTH);
    body::prefixed(upstream.redact_bytes(scanned.freeze()), rest)
}

/// The client hears what went wrong; the upstream's address goes only to the log.
fn upstream_error(upstream: &Upstream, error: &UpstreamError) -> ApiError {
    tracing::warn!(upstream = upstream.redacted_base_url(), %error, "passthrough failed");
    error.to_api_error()
}
