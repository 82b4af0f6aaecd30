//! The access log: one line per request, written when its response has been sent (a stream's
//! last byte), with what the steps after routing learned about it.
//!
//! The line goes out as an event with the target [`ACCESS`] at INFO, through the same
//! subscriber as every other log line (`log.format` text or JSON, written off the request
//! path). It holds the request id, route, mode, status, N, judge, cache result, latency, the
//! proxy's own overhead, tokens, the upstream's request id and the client key's name; never a
//! credential, never prompt or completion text, never the query string (some clients put
//! keys there). Filter it like any target: `RUST_LOG=info,bon_proxy::access=off`, or set
//! `log.access = false`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};
use tracing::Span;

use crate::openai::Usage;

/// The `tracing` target of access-log lines.
pub const ACCESS: &str = "bon_proxy::access";

/// What the steps after routing learn about a request, for its line. Shared through the
/// request's extensions.
#[derive(Debug, Default)]
pub struct AccessNote(Mutex<Noted>);

#[derive(Debug, Default)]
struct Noted {
    mode: Option<&'static str>,
    key: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    overhead: Option<Duration>,
}

impl AccessNote {
    pub fn mode(&self, mode: &'static str) {
        self.with(|noted| noted.mode = Some(mode));
    }

    /// The name of the client key `[auth]` admitted the request with.
    pub fn key(&self, label: &str) {
        self.with(|noted| noted.key = Some(label.to_string()));
    }

    /// Tokens an answer spent upstream (all its calls).
    pub fn tokens(&self, usage: &Usage) {
        self.with(|noted| {
            noted.prompt_tokens += usage.prompt_tokens;
            noted.completion_tokens += usage.completion_tokens;
        });
    }

    /// The proxy's own share of the request's time.
    pub fn overhead(&self, overhead: Duration) {
        self.with(|noted| noted.overhead = Some(overhead));
    }

    fn with(&self, change: impl FnOnce(&mut Noted)) {
        let mut noted = self.0.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut noted);
    }
}

/// The end of a request: dropped with its response body, it writes the access-log line and
/// ends the request's span, so both cover a stream to its last byte.
pub struct RequestEnd {
    line: Option<AccessLine>,
    _span: Span,
}

struct AccessLine {
    note: Arc<AccessNote>,
    started: Instant,
    method: Method,
    path: String,
    status: u16,
    headers: HeaderMap,
}

impl RequestEnd {
    /// `access` is `None` when the access log is off: the request's note, its method and
    /// path, and when it arrived.
    pub fn new(
        access: Option<(Arc<AccessNote>, (Method, String), Instant)>,
        status: u16,
        response_headers: &HeaderMap,
        span: Span,
    ) -> RequestEnd {
        let line = access.map(|(note, (method, path), started)| AccessLine {
            note,
            started,
            method,
            path,
            status,
            headers: logged_headers(response_headers),
        });
        RequestEnd { line, _span: span }
    }
}

/// Whether access-log lines would be written: decides if a request carries a note at all.
pub fn enabled() -> bool {
    tracing::enabled!(target: ACCESS, tracing::Level::INFO)
}

/// The response headers the line quotes, copied at the head (the body outlives the map).
fn logged_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [
        "x-request-id",
        "x-upstream-request-id",
        "x-best-of-n",
        "x-best-of-n-judge",
        "x-cache",
    ] {
        if let Some(value) = headers.get(name) {
            kept.insert(name, value.clone());
        }
    }
    kept
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        let Some(line) = self.line.take() else {
            return;
        };
        let noted = line.note.0.lock().unwrap_or_else(|p| p.into_inner());
        let header = |name: &str| {
            line.headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let millis = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: ACCESS,
            request_id = header("x-request-id"),
            method = %line.method,
            path = %line.path,
            route = crate::metrics::route_label(&line.path),
            mode = noted.mode,
            status = line.status,
            n = header("x-best-of-n"),
            judge = header("x-best-of-n-judge"),
            cache = header("x-cache"),
            latency_ms = millis(line.started.elapsed()),
            overhead_ms = noted.overhead.map(millis),
            prompt_tokens = noted.prompt_tokens,
            completion_tokens = noted.completion_tokens,
            upstream_request_id = header("x-upstream-request-id"),
            key = noted.key.as_deref(),
            "request"
        );
    }
}
