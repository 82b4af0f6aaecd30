//! Traces and logs of the real binary: spans exported over OTLP/HTTP to a receiver the test
//! runs (decoded with `opentelemetry-proto`), the caller's `traceparent` honoured and passed
//! on upstream, content kept out of spans unless asked for, a dead collector costing spans
//! and not requests, and JSON access-log lines.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mock::{MockUpstream, Reply};
use common::served::{Serve, Served};
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::Value;
use tokio::net::TcpListener;

const UPSTREAM_SECRET: &str = "sk-telemetry-UPSTREAM-SECRET-0123";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const QUESTION: &str = "What is the airspeed of an unladen swallow?";

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An OTLP/HTTP receiver on loopback that keeps every span it is sent.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                            let body = request.into_body().collect().await?.to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).expect("OTLP");
                            kept.lock().unwrap().extend(flatten(export));
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans received once `count` of them match `wanted`, within a few seconds.
    async fn wait_for(&self, count: usize, wanted: impl Fn(&Received) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.iter().filter(|s| wanted(s)).count() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} matching spans; received: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = attributes(
            resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Received {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(span.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
    out
}

fn attributes(list: Vec<KeyValue>) -> BTreeMap<String, String> {
    list.into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key, value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The binary serving `config` (TOML), with spans batched every 100 ms; killed when dropped.
async fn serve(config: &str) -> Served {
    Serve::plain()
        .config(config)
        .env("OPENAI_API_KEY", UPSTREAM_SECRET)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start_async()
        .await
}

fn traced(mock: &MockUpstream, collector: &str, extra: &str) -> String {
    format!(
        "[upstream]\nbase_url = \"{}\"\nmax_retries = 0\n\n[telemetry]\notlp_endpoint = \"{collector}\"\n\
         service_name = \"bon-test\"\nresource_attributes = {{ \"deployment.environment\" = \"ci\" }}\n{extra}",
        mock.base_url()
    )
}

async fn best_of_3(proxy: &Proxy, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("x-best-of-n", "3")];
    headers.extend_from_slice(extra);
    post_chat(proxy, &headers, chat_body(QUESTION)).await
}

#[tokio::test]
async fn a_best_of_n_request_is_one_trace_under_the_callers_traceparent() {
    let collector = Collector::start().await;
    let mock = MockUpstream::start().await;
    let served = serve(&traced(&mock, &collector.endpoint(), "")).await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let answer = best_of_3(&served.proxy(), &[("traceparent", &traceparent)]).await;
    answer.expect_ok();

    let spans = collector.wait_for(5, |s| s.trace_id == CALLER_TRACE).await;
    let spans: Vec<_> = spans
        .into_iter()
        .filter(|s| s.trace_id == CALLER_TRACE)
        .collect();
    let server = spans
        .iter()
        .find(|s| s.attr("http.route").is_some())
        .expect("a server span");
    assert_eq!(server.parent, CALLER_SPAN, "a child of the caller's span");
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("bon.mode"), Some("best_of_n"));
    assert_eq!(server.attr("bon.n"), Some("3"));
    assert_eq!(server.attr("bon.cache"), Some("miss"));
    assert_eq!(
        server.resource.get("service.name").map(String::as_str),
        Some("bon-test")
    );
    assert_eq!(
        server
            .resource
            .get("deployment.environment")
            .map(String::as_str),
        Some("ci")
    );

    let calls: Vec<_> = spans
        .iter()
        .filter(|s| s.parent == server.span_id)
        .collect();
    let candidates: Vec<_> = calls
        .iter()
        .filter(|s| s.attr("bon.call.kind") == Some("candidate"))
        .collect();
    let judges: Vec<_> = calls
        .iter()
        .filter(|s| s.attr("bon.call.kind") == Some("judge"))
        .collect();
    assert_eq!((candidates.len(), judges.len()), (3, 1), "{spans:#?}");
    for call in candidates.iter().chain(&judges) {
        assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(call.attr("gen_ai.operation.name"), Some("chat"));
        assert_eq!(call.attr("gen_ai.request.model"), Some("gpt-test"));
        assert_eq!(call.name, "chat gpt-test");
        assert_eq!(call.attr("http.response.status_code"), Some("200"));
        assert!(
            call.attr("gen_ai.usage.input_tokens").is_some(),
            "{call:#?}"
        );
        assert!(
            call.attr("gen_ai.usage.output_tokens").is_some(),
            "{call:#?}"
        );
    }
    let mut indices: Vec<_> = candidates
        .iter()
        .filter_map(|c| c.attr("bon.candidate.index"))
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, ["0", "1", "2"]);

    // Content is off by default: no attribute anywhere holds the question.
    for span in &spans {
        assert!(
            span.attributes.values().all(|v| !v.contains("unladen")),
            "prompt text in {span:#?}"
        );
    }

    // The upstream saw each call's own span as the parent, in the caller's trace.
    let call_ids: Vec<&str> = calls.iter().map(|c| c.span_id.as_str()).collect();
    for call in mock.calls() {
        let sent = call.headers["traceparent"].to_str().unwrap().to_string();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts[1], CALLER_TRACE, "{sent}");
        assert!(
            call_ids.contains(&parts[2]),
            "{sent} not one of {call_ids:?}"
        );
    }
}

#[tokio::test]
async fn prompts_and_completions_go_on_spans_only_when_asked() {
    let collector = Collector::start().await;
    let mock = MockUpstream::start().await;
    let config = traced(&mock, &collector.endpoint(), "include_content = true\n");
    let served = serve(&config).await;
    best_of_3(&served.proxy(), &[]).await.expect_ok();
    let spans = collector
        .wait_for(3, |s| s.attr("bon.call.kind") == Some("candidate"))
        .await;
    let candidate = spans
        .iter()
        .find(|s| s.attr("bon.call.kind") == Some("candidate"))
        .unwrap();
    assert!(candidate.attr("gen_ai.prompt").unwrap().contains("unladen"));
    assert!(candidate
        .attr("gen_ai.completion")
        .unwrap()
        .starts_with("candidate answer"));
    let judge = spans
        .iter()
        .find(|s| s.attr("bon.call.kind") == Some("judge"))
        .unwrap();
    assert!(judge.attr("gen_ai.prompt").unwrap().contains("unladen"));
}

#[tokio::test]
async fn without_a_traceparent_sampling_follows_sample_ratio() {
    let collector = Collector::start().await;
    let mock = MockUpstream::start().await;
    let config = traced(&mock, &collector.endpoint(), "sample_ratio = 0.0\n");
    let served = serve(&config).await;
    for _ in 0..3 {
        best_of_3(&served.proxy(), &[("cache-control", "no-store")])
            .await
            .expect_ok();
    }
    // A sampled caller is followed even at ratio 0.
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    best_of_3(&served.proxy(), &[("traceparent", &traceparent)])
        .await
        .expect_ok();
    let spans = collector.wait_for(5, |s| s.trace_id == CALLER_TRACE).await;
    assert!(
        spans.iter().all(|s| s.trace_id == CALLER_TRACE),
        "only the sampled caller's trace: {spans:#?}"
    );
}

#[tokio::test]
async fn a_dead_collector_costs_spans_never_requests() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mock = MockUpstream::start().await;
    let served = serve(&traced(&mock, &dead, "")).await;
    let proxy = served.proxy();
    let started = Instant::now();
    for _ in 0..5 {
        best_of_3(&proxy, &[("cache-control", "no-store")])
            .await
            .expect_ok();
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = common::metrics::scrape(&proxy).await;
        let dropped = common::metrics::value_of(&scrape, "bon_telemetry_spans_dropped_total", &[]);
        if dropped > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "dropped spans never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn json_logs_write_one_access_line_per_request_without_secrets_or_text() {
    let mock = MockUpstream::with_handler(|_call| {
        Reply::completion("an answer").with_header("x-request-id", "upstream-req-42")
    })
    .await;
    let config = format!(
        "[upstream]\nbase_url = \"{}\"\nmax_retries = 0\n\n[log]\nformat = \"json\"\n",
        mock.base_url()
    );
    let served = serve(&config).await;
    let proxy = served.proxy();
    let plain = post_chat(
        &proxy,
        &[("x-request-id", "req-plain-1")],
        chat_body(QUESTION),
    )
    .await;
    plain.expect_ok();
    let bon = best_of_3(&proxy, &[("x-request-id", "req-bon-1")]).await;
    bon.expect_ok();

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let stderr = served.log();
        let lines: Vec<Value> = stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let logged = |id: &str| {
            lines
                .iter()
                .any(|l| l["target"] == "bon_proxy::access" && l["request_id"] == id)
        };
        if logged("req-plain-1") && logged("req-bon-1") {
            break lines;
        }
        assert!(Instant::now() < deadline, "no access lines:\n{stderr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["target"] == "bon_proxy::access" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {lines:#?}"))
            .clone()
    };
    let plain = access("req-plain-1");
    assert_eq!(plain["level"], "INFO");
    assert_eq!(plain["mode"], "passthrough");
    assert_eq!(plain["status"], 200);
    assert_eq!(plain["route"], "chat_completions");
    assert_eq!(plain["upstream_request_id"], "upstream-req-42");
    assert!(plain["latency_ms"].as_f64().unwrap() > 0.0);

    let bon = access("req-bon-1");
    assert_eq!(bon["mode"], "best_of_n");
    assert_eq!(bon["n"], "3");
    assert_eq!(bon["cache"], "miss");
    assert!(bon["judge"].is_string(), "{bon}");
    assert!(bon["overhead_ms"].as_f64().unwrap() >= 0.0);
    assert!(bon["prompt_tokens"].as_u64().unwrap() > 0, "{bon}");

    assert!(
        !lines.iter().any(|l| l["path"] == "/healthz"),
        "health checks stay out of the access log"
    );
    let everything = served.log();
    assert!(!everything.contains(UPSTREAM_SECRET));
    assert!(!everything.contains("unladen"), "no prompt text in logs");
}

/// A collector reached through the environment's forward proxy (an `http://` endpoint that only
/// the proxy can resolve) gets the spans, and the proxy gets its credentials with each export.
#[tokio::test]
async fn spans_reach_a_collector_behind_a_forward_proxy_with_its_credentials() {
    use common::connect_proxy::{basic, ConnectProxy, Mode};
    let collector = Collector::start().await;
    let proxy = ConnectProxy::start(
        Mode::require_auth("otel", "collector-pass"),
        &[("collector.test", collector.addr.ip())],
    )
    .await;
    let mock = MockUpstream::start().await;
    let endpoint = format!("http://collector.test:{}", collector.addr.port());
    let served = Serve::plain()
        .config(&traced(&mock, &endpoint, ""))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("HTTP_PROXY", &proxy.url_with("otel", "collector-pass"))
        .start_async()
        .await;
    best_of_3(&served.proxy(), &[]).await.expect_ok();

    collector
        .wait_for(1, |s| s.attr("http.route").is_some())
        .await;
    let seen = proxy.authorizations();
    let expected = Some(basic("otel", "collector-pass"));
    assert!(
        !seen.is_empty() && seen.iter().all(|a| *a == expected),
        "{seen:?}"
    );
    assert_eq!(mock.calls().len(), 4, "the loopback upstream went direct");
}
