//! Every Prometheus metric the proxy exports, defined in one place on one registry.
//!
//! Labels stay low-cardinality: routes are a fixed set, statuses are HTTP codes or a few
//! words, and nothing carries a request id, a prompt or a user. Other modules record through
//! the small methods here and never touch the metric objects themselves.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The proxy's own time per request: sub-millisecond resolution is the point.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Model calls take from tens of milliseconds to minutes.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Whole requests: from a cache hit (well under a millisecond) to a slow best-of-16.
const REQUEST_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every metric, cheap to clone (the prometheus types are handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    overhead: HistogramVec,
    candidates: IntCounterVec,
    candidates_per_request: Histogram,
    judge: IntCounterVec,
    selected_position: Histogram,
    cache_requests: IntCounterVec,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    cache_redis_errors: IntCounterVec,
    coalesced: IntCounter,
    tokens: IntCounterVec,
    inflight: IntGauge,
    connections_refused: IntCounterVec,
    decisions_dropped: IntCounter,
    spans_dropped: IntCounter,
    auth_rejections: IntCounterVec,
    key_requests: IntCounterVec,
    key_tokens: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // The `expect`s below can only fail on a malformed metric definition in this file, which
    // the unit tests exercise; no runtime input reaches them.
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(process));
        }
        let coalesced = IntCounter::new(
            "bon_coalesced_requests_total",
            "Requests answered by waiting on an identical request in flight",
        )
        .expect("valid metric");
        r.register(Box::new(coalesced.clone()))
            .expect("unique metric");
        let decisions_dropped = IntCounter::new(
            "bon_decisions_dropped_total",
            "Decision log lines dropped because the writer could not keep up or could not write",
        )
        .expect("valid metric");
        r.register(Box::new(decisions_dropped.clone()))
            .expect("unique metric");
        let spans_dropped = IntCounter::new(
            "bon_telemetry_spans_dropped_total",
            "Trace spans that could not be exported (the collector down, slow or refusing)",
        )
        .expect("valid metric");
        r.register(Box::new(spans_dropped.clone()))
            .expect("unique metric");
        let positions = HistogramOpts::new(
            "bon_selected_position",
            "Presentation position (0-based) of the judge's winner; a skew shows position bias",
        )
        .buckets((0..16).map(f64::from).collect());
        let selected_position = Histogram::with_opts(positions).expect("valid metric");
        r.register(Box::new(selected_position.clone()))
            .expect("unique metric");
        let per_request =
            HistogramOpts::new("bon_candidates_per_request", "N of best-of-N requests").buckets(
                vec![
                    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 32.0, 64.0, 128.0,
                ],
            );
        let candidates_per_request = Histogram::with_opts(per_request).expect("valid metric");
        r.register(Box::new(candidates_per_request.clone()))
            .expect("unique metric");
        let metrics = Metrics {
            requests: counter(
                &r,
                "bon_requests_total",
                "Requests answered",
                &["route", "mode", "status"],
            ),
            request_duration: histogram(
                &r,
                "bon_request_duration_seconds",
                "Time to the response head",
                &["route", "mode"],
                REQUEST_BUCKETS,
            ),
            upstream_requests: counter(
                &r,
                "bon_upstream_requests_total",
                "Calls to the upstream",
                &["kind", "status"],
            ),
            upstream_duration: histogram(
                &r,
                "bon_upstream_duration_seconds",
                "Upstream call latency",
                &["kind"],
                UPSTREAM_BUCKETS,
            ),
            overhead: histogram(
                &r,
                "bon_overhead_seconds",
                "Time spent in the proxy itself, outside upstream calls on the critical path",
                &["mode"],
                OVERHEAD_BUCKETS,
            ),
            candidates: counter(
                &r,
                "bon_candidates_total",
                "Candidates by outcome (one n_param call makes several)",
                &["outcome"],
            ),
            candidates_per_request,
            judge: counter(
                &r,
                "bon_judge_total",
                "Judge decisions by outcome",
                &["strategy", "outcome"],
            ),
            selected_position,
            cache_requests: counter(
                &r,
                "bon_cache_requests_total",
                "Cache lookups by result",
                &["result"],
            ),
            cache_entries: gauge(&r, "bon_cache_entries", "Answers in the cache"),
            cache_bytes: gauge(&r, "bon_cache_bytes", "Approximate bytes held by the cache"),
            cache_redis_errors: counter(
                &r,
                "bon_cache_redis_errors_total",
                "Redis tier operations that failed or timed out (get, set, lock, unlock); \
                 each was answered as if Redis were off",
                &["op"],
            ),
            coalesced,
            tokens: counter(
                &r,
                "bon_tokens_total",
                "Tokens spent upstream by best-of-N",
                &["kind", "direction"],
            ),
            inflight: gauge(&r, "bon_inflight_requests", "Requests being handled"),
            connections_refused: counter(
                &r,
                "bon_connections_refused_total",
                "Client connections turned away at accept, by the limit that refused them",
                &["reason"],
            ),
            decisions_dropped,
            spans_dropped,
            auth_rejections: counter(
                &r,
                "bon_auth_rejections_total",
                "Requests refused at the door: missing_key, unknown_key, rate_limited, \
                 token_budget, model_not_allowed, n_too_large, metrics_token",
                &["reason"],
            ),
            key_requests: counter(
                &r,
                "bon_key_requests_total",
                "Requests admitted per client key (its name, or `unnamed`)",
                &["key"],
            ),
            key_tokens: counter(
                &r,
                "bon_key_tokens_total",
                "Tokens spent per client key, candidates and judge included",
                &["key"],
            ),
            registry: r,
        };
        // Known label values start at zero, so dashboards and alerts see a series (and a
        // rate of 0) before the first event rather than no data.
        for result in ["hit", "hit_redis", "miss", "bypass"] {
            metrics.cache_requests.with_label_values(&[result]);
        }
        for op in ["get", "set", "lock", "unlock"] {
            metrics.cache_redis_errors.with_label_values(&[op]);
        }
        metrics
    }

    pub fn request_done(&self, route: &str, mode: &str, status: u16, elapsed: Duration) {
        // Spelled by StatusCode from its table rather than formatted: this runs per request.
        let code = http::StatusCode::from_u16(status);
        let code = code.as_ref().map_or("invalid", |c| c.as_str());
        self.requests.with_label_values(&[route, mode, code]).inc();
        self.request_duration
            .with_label_values(&[route, mode])
            .observe(elapsed.as_secs_f64());
    }

    /// `status` is the HTTP status, or `timeout` / `error` when there was none.
    pub fn upstream_call(&self, kind: &str, status: &str, elapsed: Duration) {
        self.upstream_requests
            .with_label_values(&[kind, status])
            .inc();
        self.upstream_duration
            .with_label_values(&[kind])
            .observe(elapsed.as_secs_f64());
    }

    pub fn overhead(&self, mode: &str, overhead: Duration) {
        self.overhead
            .with_label_values(&[mode])
            .observe(overhead.as_secs_f64());
    }

    pub fn candidate(&self, outcome: &str) {
        self.candidates.with_label_values(&[outcome]).inc();
    }

    pub fn fan_out(&self, n: usize) {
        self.candidates_per_request.observe(n as f64);
    }

    pub fn judged(&self, strategy: &str, outcome: &str) {
        self.judge.with_label_values(&[strategy, outcome]).inc();
    }

    pub fn selected_position(&self, position: usize) {
        self.selected_position.observe(position as f64);
    }

    pub fn cache_lookup(&self, result: &str) {
        self.cache_requests.with_label_values(&[result]).inc();
    }

    /// Brings `bon_telemetry_spans_dropped_total` up to `total`, the exporter's own count
    /// (it runs outside any one server's registry).
    pub fn spans_dropped(&self, total: u64) {
        let counted = self.spans_dropped.get();
        if total > counted {
            self.spans_dropped.inc_by(total - counted);
        }
    }

    pub fn redis_error(&self, op: &str) {
        self.cache_redis_errors.with_label_values(&[op]).inc();
    }

    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    pub fn cache_size(&self, entries: u64, bytes: u64) {
        self.cache_entries.set(entries as i64);
        self.cache_bytes.set(bytes as i64);
    }

    pub fn tokens(&self, kind: &str, prompt: u64, completion: u64) {
        self.tokens
            .with_label_values(&[kind, "prompt"])
            .inc_by(prompt);
        self.tokens
            .with_label_values(&[kind, "completion"])
            .inc_by(completion);
    }

    /// A request refused by `[auth]` or the metrics token, by why.
    pub fn auth_rejection(&self, reason: &str) {
        self.auth_rejections.with_label_values(&[reason]).inc();
    }

    /// A request admitted under client key `key` (its name, or `unnamed`).
    pub fn key_request(&self, key: &str) {
        self.key_requests.with_label_values(&[key]).inc();
    }

    /// Tokens spent under client key `key`.
    pub fn key_tokens(&self, key: &str, tokens: u64) {
        self.key_tokens.with_label_values(&[key]).inc_by(tokens);
    }

    /// `reason` is `per_ip` or `total`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// A decision log line that was not written (see `decisions`).
    pub fn decision_dropped(&self) {
        self.decisions_dropped.inc();
    }

    /// Lines the decision log dropped so far.
    pub fn decisions_dropped(&self) -> u64 {
        self.decisions_dropped.get()
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn inflight(&self) -> InflightGuard {
        self.inflight.inc();
        InflightGuard(self.inflight.clone())
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

pub struct InflightGuard(IntGauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The route label: a fixed set, so that arbitrary paths cannot explode the series count.
pub fn route_label(path: &str) -> &'static str {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    match path {
        "/chat/completions" => "chat_completions",
        "/completions" => "completions",
        "/embeddings" => "embeddings",
        "/models" => "models",
        "/responses" => "responses",
        _ if path.starts_with("/models/") => "models",
        _ if path.starts_with("/responses/") => "responses",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_its_name() {
        let metrics = Metrics::new();
        metrics.request_done(
            "chat_completions",
            "best_of_n",
            200,
            Duration::from_millis(3),
        );
        metrics.upstream_call("candidate", "200", Duration::from_millis(40));
        metrics.overhead("best_of_n", Duration::from_micros(120));
        metrics.candidate("ok");
        metrics.fan_out(5);
        metrics.judged("listwise", "ok");
        metrics.selected_position(2);
        metrics.cache_lookup("miss");
        metrics.coalesced();
        metrics.cache_size(3, 4096);
        metrics.tokens("candidate", 10, 5);
        metrics.decision_dropped();
        let _guard = metrics.inflight();
        let text = String::from_utf8(metrics.render()).unwrap();
        for name in [
            "bon_requests_total",
            "bon_request_duration_seconds",
            "bon_upstream_requests_total",
            "bon_upstream_duration_seconds",
            "bon_overhead_seconds",
            "bon_candidates_total",
            "bon_candidates_per_request",
            "bon_judge_total",
            "bon_selected_position",
            "bon_cache_requests_total",
            "bon_cache_entries",
            "bon_cache_bytes",
            "bon_coalesced_requests_total",
            "bon_tokens_total",
            "bon_inflight_requests",
            "bon_decisions_dropped_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains("bon_inflight_requests 1"));
    }

    #[test]
    fn routes_are_a_fixed_set() {
        assert_eq!(route_label("/v1/chat/completions"), "chat_completions");
        assert_eq!(route_label("/chat/completions"), "chat_completions");
        assert_eq!(route_label("/v1/models/gpt-4o"), "models");
        assert_eq!(route_label("/v1/anything/else/123"), "other");
    }
}
