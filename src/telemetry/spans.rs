//! The spans of a request, named and attributed after OpenTelemetry's conventions: a server
//! span per request (HTTP semantic conventions, plus the proxy's own `bon.*` attributes) and
//! a client span per upstream call (GenAI semantic conventions: `gen_ai.operation.name`,
//! `gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...).
//!
//! Every span is made with the target [`SPANS`], which only the OpenTelemetry layer listens
//! to: with tracing off no layer does, `tracing` hands back a disabled span at the cost of a
//! cached check, and recording into it does nothing. Spans never carry prompt or completion
//! text unless `telemetry.include_content` is on.

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{include_content, tracing_on};
use crate::openai::Usage;

/// The `tracing` target of the proxy's spans.
pub const SPANS: &str = "bon_proxy::span";

/// The span of one client request, a child of the caller's `traceparent` when it sent one.
pub fn request_span(method: &http::Method, path: &str, headers: &HeaderMap) -> Span {
    if !tracing_on() {
        return Span::none();
    }
    let route = crate::metrics::route_label(path);
    let span = tracing::info_span!(
        target: SPANS,
        "request",
        otel.name = %format!("{method} {path}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        url.path = %path,
        http.route = route,
        http.response.status_code = Empty,
        bon.mode = Empty,
        bon.n = Empty,
        bon.judge = Empty,
        bon.cache = Empty,
        bon.request_id = Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderReader(headers))
    });
    // A caller without a traceparent leaves the context empty: the span starts a new trace.
    let _ = span.set_parent(parent);
    span
}

/// How the request was served (`passthrough`, `best_of_n`, `rejected`), on the current
/// request's span.
pub fn record_mode(mode: &str) {
    if tracing_on() {
        Span::current().record("bon.mode", mode);
    }
}

/// What the answer says about the request, on its span.
pub fn record_response(span: &Span, status: u16, headers: &HeaderMap) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(n) = text("x-best-of-n").and_then(|n| n.parse::<u64>().ok()) {
        span.record("bon.n", n);
    }
    if let Some(judge) = text("x-best-of-n-judge") {
        span.record("bon.judge", judge);
    }
    if let Some(cache) = text("x-cache") {
        span.record("bon.cache", cache);
    }
    if let Some(id) = text("x-request-id") {
        span.record("bon.request_id", id);
    }
}

/// The span of one upstream call: `kind` is `candidate`, `judge`, `fuser`, `reward_model` or
/// `passthrough`, as `bon_upstream_requests_total` counts them.
pub fn call_span(kind: &'static str, model: &str, index: Option<usize>) -> Span {
    if !tracing_on() {
        return Span::none();
    }
    let passthrough = kind == "passthrough";
    let name = if passthrough {
        "passthrough".to_string()
    } else {
        format!("chat {model}")
    };
    let span = tracing::info_span!(
        target: SPANS,
        "call",
        otel.name = %name,
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = Empty,
        gen_ai.provider.name = "openai",
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.prompt = Empty,
        gen_ai.completion = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        bon.call.kind = kind,
        bon.candidate.index = Empty,
        bon.retries = Empty,
    );
    if !passthrough {
        span.record("gen_ai.operation.name", "chat");
    }
    if !model.is_empty() {
        span.record("gen_ai.request.model", model);
    }
    if let Some(index) = index {
        span.record("bon.candidate.index", index as u64);
    }
    span
}

/// How an upstream call ended: its status (an HTTP code, or `timeout` / `error`), the model
/// that answered and the tokens it reports.
pub fn record_call(span: &Span, status: &str, model: Option<&str>, usage: Option<&Usage>) {
    if span.is_disabled() {
        return;
    }
    match status.parse::<u16>() {
        Ok(code) => {
            span.record("http.response.status_code", code);
            if code >= 400 {
                span.record("error.type", status);
                span.record("otel.status_code", "error");
            }
        }
        Err(_) => {
            span.record("error.type", status);
            span.record("otel.status_code", "error");
        }
    }
    if let Some(model) = model.filter(|m| !m.is_empty()) {
        span.record("gen_ai.response.model", model);
    }
    if let Some(usage) = usage {
        span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
    }
}

/// Whether `span` takes the call's text (`telemetry.include_content`).
pub fn content_wanted(span: &Span) -> bool {
    !span.is_disabled() && include_content()
}

/// The call's text: what was sent, and the answer's text; only when [`content_wanted`].
pub fn record_content(span: &Span, prompt: &[u8], completion: Option<&str>) {
    if !content_wanted(span) {
        return;
    }
    span.record("gen_ai.prompt", String::from_utf8_lossy(prompt).as_ref());
    if let Some(completion) = completion {
        span.record("gen_ai.completion", completion);
    }
}

/// Retries an upstream call needed, on the call's span (the current one).
pub fn record_retries(retries: u32) {
    if tracing_on() && retries > 0 {
        Span::current().record("bon.retries", retries);
    }
}

/// Puts the current span's context in `headers` as `traceparent` (and `tracestate`), so the
/// upstream's spans join the trace; the caller's own `traceparent` is replaced by the
/// proxy's, whose parent it is.
pub fn inject(headers: &mut HeaderMap) {
    if !tracing_on() {
        return;
    }
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderWriter(headers));
    });
}

struct HeaderReader<'a>(&'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderWriter<'a>(&'a mut HeaderMap);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
