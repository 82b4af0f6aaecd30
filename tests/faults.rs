//! Faults, injected by a third-party mock upstream: llmock (tests/common/llmock.rs), installed
//! by scripts/test. Each test starts its own llmock and proxy, breaks the upstream one way (a
//! 429 storm with `retry-after`, 5xx bursts, slow answers, truncated, stalled, malformed and
//! cut streams, random chaos from llmock's own flags, the server killed and restarted), and
//! sends passthrough, best-of-N and streamed best-of-N requests through it.
//!
//! Under every fault the proxy must: answer within its configured deadlines (short ones here,
//! so a hang shows as a failure within seconds); answer with an OpenAI-shaped error, or a
//! degraded answer that says so (`-` scores for the candidates that failed); keep its
//! counters consistent (`bon_requests_total` moves by the requests sent, `bon_candidates_total`
//! by N per best-of-N request); and leak nothing (`bon_inflight_requests` back to 0).
//!
//! Judge calls go to the in-process mock (it always answers `<best>1</best>`), so that faults
//! hit candidate and fuser calls only and every judged answer is deterministic.

mod common;

use std::time::{Duration, Instant};

use bon_proxy::upstream::ApiKey;
use bon_proxy::{Config, Secrets};
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use common::llmock::Llmock;
use common::metrics::{scrape, value_of};
use common::mock::MockUpstream;
use common::{client, start_proxy_with, Proxy, UPSTREAM_KEY};

/// The candidates' model; behaviours that should hit only some candidates match on another
/// model, asked for through `x-best-of-n-models`.
const MODEL: &str = "gpt-test";

const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
const CANDIDATE_TIMEOUT: Duration = Duration::from_millis(1000);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const FUSER_TIMEOUT: Duration = Duration::from_millis(1500);
const KEEPALIVE: Duration = Duration::from_millis(600);

/// Longest any request may take before the test calls it a hang: every deadline above has
/// passed by then, with room for a loaded two-core machine.
const HANG_LIMIT: Duration = Duration::from_secs(6);

/// Slack over a deadline for an answer that the deadline cut.
const SLACK: Duration = Duration::from_millis(900);

const JUDGE_KEY_ENV: &str = "FAULTS_JUDGE_KEY";

/// A proxy in front of `llmock`, judged by `judge`, with short deadlines, retries on, and the
/// cache off (a cached answer would hide the fault).
async fn start_proxy(llmock: &Llmock, judge: &MockUpstream) -> Proxy {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.request_timeout = REQUEST_TIMEOUT;
    config.upstream.base_url = llmock.base_url();
    config.upstream.timeout = UPSTREAM_TIMEOUT;
    config.upstream.connect_timeout = Duration::from_millis(500);
    config.upstream.max_retries = 2;
    config.best_of_n.candidate_timeout = CANDIDATE_TIMEOUT;
    config.best_of_n.stream_keepalive = KEEPALIVE;
    config.judge.base_url = judge.base_url();
    config.judge.api_key_env = JUDGE_KEY_ENV.into();
    config.judge.timeout = Duration::from_secs(1);
    config.fuser.timeout = FUSER_TIMEOUT;
    config.cache.enabled = false;
    let mut secrets = Secrets {
        upstream_key: Some(ApiKey::new(UPSTREAM_KEY)),
        ..Default::default()
    };
    let judge_key = ApiKey::new("sk-faults-judge-0123456789");
    secrets.judge_keys.insert(JUDGE_KEY_ENV.into(), judge_key);
    start_proxy_with(config, secrets).await
}

/// Everything a test needs, started together.
struct Rig {
    llmock: Llmock,
    /// Kept alive for the proxy's judge calls.
    _judge: MockUpstream,
    proxy: Proxy,
    before: Counters,
    /// Requests sent through the proxy, and best-of-N candidates asked for.
    sent: u64,
    candidates: u64,
}

impl Rig {
    async fn start(llmock_flags: &[&str]) -> Rig {
        let llmock = Llmock::start(llmock_flags).await;
        let judge = MockUpstream::start().await;
        let proxy = start_proxy(&llmock, &judge).await;
        let before = Counters::scrape(&proxy).await;
        Rig {
            llmock,
            _judge: judge,
            proxy,
            before,
            sent: 0,
            candidates: 0,
        }
    }

    /// Sends every request at once and returns the outcomes in order.
    async fn send_all(&mut self, asks: &[Ask]) -> Vec<Outcome> {
        for ask in asks {
            self.sent += 1;
            self.candidates += ask.candidates();
        }
        join_all(asks.iter().map(|ask| ask.send(&self.proxy))).await
    }

    async fn send(&mut self, ask: Ask) -> Outcome {
        self.send_all(&[ask]).await.remove(0)
    }

    /// Waits for the proxy to finish every request (the in-flight gauge at 0), then checks
    /// that its counters moved by what was sent.
    async fn check_counters(&self) {
        let after = settle(&self.proxy).await;
        assert_eq!(
            after.requests - self.before.requests,
            self.sent as f64,
            "bon_requests_total counts every request sent"
        );
        assert_eq!(
            after.candidates - self.before.candidates,
            self.candidates as f64,
            "bon_candidates_total counts N candidates per best-of-N request"
        );
        let outcomes: f64 = ["ok", "error", "timeout"]
            .iter()
            .map(|o| after.outcome(o) - self.before.outcome(o))
            .sum();
        assert_eq!(
            outcomes, self.candidates as f64,
            "every candidate has one outcome: ok, error or timeout"
        );
    }
}

/// One request to send: what kind, and a prompt that keeps it apart from the others.
#[derive(Clone)]
struct Ask {
    kind: Kind,
    prompt: String,
    /// `x-best-of-n-models`: lets a behaviour matched on a model hit chosen candidates.
    models: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Passthrough,
    PassthroughStream,
    BestOfN(u32),
    /// Best-of-N to a streaming client: candidates whole, the winner replayed as SSE.
    BestOfNStream(u32),
    /// Fuse mode to a streaming client: the fuser's own stream relayed.
    FuseStream(u32),
}

impl Ask {
    fn new(kind: Kind, prompt: &str) -> Ask {
        Ask {
            kind,
            prompt: prompt.to_string(),
            models: None,
        }
    }

    fn with_models(mut self, models: &'static str) -> Ask {
        self.models = Some(models);
        self
    }

    fn candidates(&self) -> u64 {
        match self.kind {
            Kind::BestOfN(n) | Kind::BestOfNStream(n) | Kind::FuseStream(n) => u64::from(n),
            Kind::Passthrough | Kind::PassthroughStream => 0,
        }
    }

    fn streamed(&self) -> bool {
        !matches!(self.kind, Kind::Passthrough | Kind::BestOfN(_))
    }

    fn request(&self, proxy: &Proxy) -> Request<Full<Bytes>> {
        let body = json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": self.prompt}],
            "stream": self.streamed(),
        });
        let mut builder = Request::post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json");
        match self.kind {
            Kind::Passthrough | Kind::PassthroughStream => {}
            Kind::BestOfN(n) | Kind::BestOfNStream(n) => {
                builder = builder.header("x-best-of-n", n.to_string());
            }
            Kind::FuseStream(n) => {
                builder = builder
                    .header("x-best-of-n", n.to_string())
                    .header("x-best-of-n-mode", "fuse");
            }
        }
        if let Some(models) = self.models {
            builder = builder.header("x-best-of-n-models", models);
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request")
    }

    /// Sends the request and reads the whole answer; an answer whose body breaks off is an
    /// outcome too (`broken`), and one not complete within [`HANG_LIMIT`] fails the test.
    async fn send(&self, proxy: &Proxy) -> Outcome {
        let started = Instant::now();
        let request = self.request(proxy);
        let exchange = async {
            let response = client()
                .request(request)
                .await
                .unwrap_or_else(|e| panic!("{:?}: no answer from the proxy: {e}", self.kind));
            let (parts, mut body) = response.into_parts();
            let mut bytes = BytesMut::new();
            let mut broken = None;
            loop {
                match body.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            bytes.extend_from_slice(&data);
                        }
                    }
                    Some(Err(e)) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            (parts, bytes.freeze(), broken)
        };
        let (parts, body, broken) = tokio::time::timeout(HANG_LIMIT, exchange)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{:?} ({}): the proxy hung, no whole answer within {HANG_LIMIT:?}",
                    self.kind, self.prompt
                )
            });
        Outcome {
            kind: self.kind,
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            broken,
            elapsed: started.elapsed(),
        }
    }
}

/// What came back for one request.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    /// The body broke off (the connection was cut) after `body` had arrived.
    broken: Option<String>,
    elapsed: Duration,
}

impl Outcome {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn is_sse(&self) -> bool {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }

    /// The `data:` payloads of an SSE body, `[DONE]` included.
    fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|event| event.trim_start().strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    fn done(&self) -> bool {
        self.events().last().is_some_and(|e| e == "[DONE]")
    }

    /// A best-of-N decision header, from the head or, once a stream committed early, from
    /// its `: name: value` comment line.
    fn decision(&self, name: &str) -> Option<String> {
        if let Some(value) = self.headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(value.to_string());
        }
        let prefix = format!(": {name}: ");
        self.text()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_string))
    }

    /// Candidates that failed, from `x-best-of-n-scores` (`-` where there is no score).
    fn unscored(&self) -> usize {
        let scores = self
            .decision("x-best-of-n-scores")
            .unwrap_or_else(|| panic!("{:?}: no x-best-of-n-scores: {}", self.kind, self.text()));
        scores.split(',').filter(|s| s.trim() == "-").count()
    }

    /// Asserts a whole answer: a completion, or a stream of chunks ending in `[DONE]`.
    fn expect_answer(&self) {
        assert_eq!(self.status, 200, "{:?}: {}", self.kind, self.text());
        assert!(self.broken.is_none(), "{:?}: {:?}", self.kind, self.broken);
        if self.is_sse() {
            assert!(self.done(), "{:?}: no [DONE]: {}", self.kind, self.text());
            let content: String = self
                .events()
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(String::from)
                })
                .collect();
            assert!(!content.is_empty(), "{:?}: {}", self.kind, self.text());
        } else {
            let body: Value = serde_json::from_slice(&self.body).expect("JSON answer");
            let content = body["choices"][0]["message"]["content"].as_str();
            assert!(content.is_some_and(|c| !c.is_empty()), "{body}");
        }
    }

    /// Asserts an OpenAI-shaped error with `status`, returned as the response status or, for
    /// a stream that had committed to 200 before the failure, as an SSE error event followed
    /// by `[DONE]`; returns the error object.
    fn expect_error(&self, status: u16) -> Value {
        assert!(self.broken.is_none(), "{:?}: {:?}", self.kind, self.broken);
        let error = if self.status == 200 && self.is_sse() {
            assert!(
                self.done(),
                "{:?}: no [DONE] after the error: {}",
                self.kind,
                self.text()
            );
            let events = self.events();
            let error = events
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .find_map(|e| e.get("error").cloned());
            error.unwrap_or_else(|| panic!("{:?}: no error event: {}", self.kind, self.text()))
        } else {
            assert_eq!(self.status, status, "{:?}: {}", self.kind, self.text());
            let body: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!(
                    "{:?}: error body not JSON ({e}): {}",
                    self.kind,
                    self.text()
                )
            });
            body["error"].clone()
        };
        let message = error["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{:?}: {error}", self.kind);
        assert!(error["type"].is_string(), "{:?}: {error}", self.kind);
        assert!(error.get("param").is_some(), "{:?}: {error}", self.kind);
        assert!(error.get("code").is_some(), "{:?}: {error}", self.kind);
        error
    }

    fn message_of(error: &Value) -> String {
        error["message"].as_str().unwrap_or_default().to_string()
    }

    /// Asserts that the answer took no longer than `deadline` plus [`SLACK`].
    fn within(&self, deadline: Duration) -> &Self {
        assert!(
            self.elapsed <= deadline + SLACK,
            "{:?}: {:?}, past {deadline:?} + {SLACK:?}",
            self.kind,
            self.elapsed
        );
        self
    }
}

// --- metrics -------------------------------------------------------------------------------

/// The counters the tests add up.
#[derive(Debug)]
struct Counters {
    scrape: prometheus_parse::Scrape,
    requests: f64,
    candidates: f64,
    inflight: f64,
}

impl Counters {
    async fn scrape(proxy: &Proxy) -> Counters {
        let scrape = scrape(proxy).await;
        let requests = value_of(&scrape, "bon_requests_total", &[]);
        let candidates = value_of(&scrape, "bon_candidates_total", &[]);
        let inflight = value_of(&scrape, "bon_inflight_requests", &[]);
        Counters {
            scrape,
            requests,
            candidates,
            inflight,
        }
    }

    fn outcome(&self, outcome: &str) -> f64 {
        value_of(
            &self.scrape,
            "bon_candidates_total",
            &[("outcome", outcome)],
        )
    }

    fn upstream(&self, kind: &str, status: &str) -> f64 {
        let labels = [("kind", kind), ("status", status)];
        value_of(&self.scrape, "bon_upstream_requests_total", &labels)
    }
}

/// The counters once no request is in flight; a gauge still above 0 after 3 s is a leak. (A
/// request's guard drops when its body is done, a moment after the client read the end.)
async fn settle(proxy: &Proxy) -> Counters {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let counters = Counters::scrape(proxy).await;
        if counters.inflight == 0.0 {
            return counters;
        }
        assert!(
            Instant::now() < deadline,
            "bon_inflight_requests stays at {} after every answer: a request leaked",
            counters.inflight
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// llmock's journal entries for chat completions (its control calls are not journaled).
async fn chat_calls(llmock: &Llmock) -> Vec<Value> {
    let calls = llmock.requests().await;
    calls
        .into_iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect()
}

fn statuses(calls: &[Value]) -> Vec<u64> {
    let mut statuses: Vec<u64> = calls.iter().filter_map(|c| c["status"].as_u64()).collect();
    statuses.sort_unstable();
    statuses
}

// --- the faults ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_is_ridden_out_then_passed_on() {
    let mut rig = Rig::start(&[]).await;

    // A short storm: the first three calls are refused with `retry-after-ms: 200` (and
    // `retry-after: 1`, whole seconds). The candidates wait the 200 ms and try again.
    let storm = json!({"type": "fail", "status": 429, "retry_after": 0.2, "times": 3});
    rig.llmock.script(json!([storm])).await;
    let answer = rig.send(Ask::new(Kind::BestOfN(3), "short storm")).await;
    answer.expect_answer();
    assert_eq!(
        answer.unscored(),
        0,
        "every candidate made it after its retry"
    );
    assert!(
        answer.elapsed >= Duration::from_millis(200) && answer.elapsed < CANDIDATE_TIMEOUT,
        "retry-after-ms honoured, within the candidate deadline: {:?}",
        answer.elapsed
    );
    let calls = chat_calls(&rig.llmock).await;
    assert_eq!(statuses(&calls), [200, 200, 200, 429, 429, 429]);

    // A storm that does not end: passthrough hands the 429 and its retry-after on at once;
    // best-of-N retries twice per candidate, then passes the common 429 on unchanged.
    rig.llmock.reset().await;
    let storm = json!({"type": "fail", "status": 429, "retry_after": 0.2, "times": null});
    rig.llmock.script(json!([storm])).await;
    let outcomes = rig
        .send_all(&[
            Ask::new(Kind::Passthrough, "storm passthrough"),
            Ask::new(Kind::PassthroughStream, "storm passthrough stream"),
            Ask::new(Kind::BestOfN(3), "storm best-of-n"),
            Ask::new(Kind::BestOfNStream(3), "storm best-of-n stream"),
        ])
        .await;
    for outcome in &outcomes {
        let error = outcome.expect_error(429);
        assert_eq!(
            error["code"], "rate_limit_exceeded",
            "llmock's own error, unchanged"
        );
        outcome.within(Duration::from_millis(600));
    }
    for passthrough in &outcomes[..2] {
        assert_eq!(passthrough.headers.get("retry-after").unwrap(), "1");
        assert_eq!(passthrough.headers.get("retry-after-ms").unwrap(), "200");
    }
    let calls = chat_calls(&rig.llmock).await;
    assert_eq!(
        calls.len(),
        2 + 2 * 3 * 3,
        "passthrough once, candidates 3 times each"
    );
    assert!(calls.iter().all(|c| c["status"] == 429));

    rig.check_counters().await;
    let after = Counters::scrape(&rig.proxy).await;
    assert_eq!(after.outcome("error") - rig.before.outcome("error"), 6.0);
    assert_eq!(
        after.upstream("candidate", "429"),
        6.0,
        "one count per candidate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_bursts_degrade_best_of_n_then_fail_it_cleanly() {
    let mut rig = Rig::start(&[]).await;

    // A burst shorter than the retries: nobody notices.
    let burst = json!({"type": "fail", "status": 500, "times": 3});
    rig.llmock.script(json!([burst])).await;
    let answer = rig.send(Ask::new(Kind::BestOfN(3), "short burst")).await;
    answer.expect_answer();
    assert_eq!(answer.unscored(), 0);

    // One candidate's model fails on every try: the others are judged, and the answer says
    // that one failed (`-` in its score).
    rig.llmock.reset().await;
    let broken_model = json!({"type": "fail", "status": 502, "times": null,
                              "match": {"model": "gpt-broken"}});
    rig.llmock.script(json!([broken_model])).await;
    let models = "gpt-test,gpt-broken,gpt-test";
    let outcomes = rig
        .send_all(&[
            Ask::new(Kind::BestOfN(3), "one broken").with_models(models),
            Ask::new(Kind::BestOfNStream(3), "one broken, streamed").with_models(models),
        ])
        .await;
    for outcome in &outcomes {
        outcome.expect_answer();
        assert_eq!(outcome.unscored(), 1, "{}", outcome.text());
        outcome.within(CANDIDATE_TIMEOUT);
    }

    // Every call fails: passthrough passes the 503 on, best-of-N says all candidates failed.
    rig.llmock.reset().await;
    let down = json!({"type": "fail", "status": 503, "retry_after": 0.05, "times": null});
    rig.llmock.script(json!([down])).await;
    let outcomes = rig
        .send_all(&[
            Ask::new(Kind::Passthrough, "down passthrough"),
            Ask::new(Kind::PassthroughStream, "down passthrough stream"),
            Ask::new(Kind::BestOfN(3), "down best-of-n"),
            Ask::new(Kind::BestOfNStream(2), "down best-of-n stream"),
        ])
        .await;
    for outcome in &outcomes[..2] {
        outcome.expect_error(503);
    }
    for outcome in &outcomes[2..] {
        let error = outcome.expect_error(502);
        assert_eq!(error["code"], "all_candidates_failed", "{error}");
        let message = Outcome::message_of(&error);
        assert!(message.contains("upstream status 503"), "{message}");
    }
    for outcome in &outcomes {
        outcome.within(Duration::from_millis(600));
    }
    rig.check_counters().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstreams_are_cut_at_the_configured_deadlines() {
    let mut rig = Rig::start(&[]).await;

    // Everything is held for 4 s, past every deadline.
    let slow = json!({"type": "delay", "seconds": 4, "times": null, "match": {"model": MODEL}});
    rig.llmock.script(json!([slow])).await;
    let outcomes = rig
        .send_all(&[
            Ask::new(Kind::Passthrough, "slow passthrough"),
            Ask::new(Kind::PassthroughStream, "slow passthrough stream"),
            Ask::new(Kind::BestOfN(3), "slow best-of-n"),
            Ask::new(Kind::BestOfNStream(3), "slow best-of-n stream"),
        ])
        .await;
    for outcome in &outcomes[..2] {
        let error = outcome.expect_error(504);
        assert!(
            Outcome::message_of(&error).contains("upstream.timeout"),
            "{error}"
        );
        outcome.within(UPSTREAM_TIMEOUT);
        assert!(outcome.elapsed >= UPSTREAM_TIMEOUT, "{:?}", outcome.elapsed);
    }
    for outcome in &outcomes[2..] {
        let error = outcome.expect_error(504);
        assert!(Outcome::message_of(&error).contains("timed out"), "{error}");
        outcome.within(CANDIDATE_TIMEOUT);
    }
    let streamed = &outcomes[3];
    assert_eq!(
        streamed.status, 200,
        "committed to a stream after the keep-alive"
    );
    assert!(
        streamed.text().starts_with(": keep-alive"),
        "{}",
        streamed.text()
    );

    // One slow candidate: the others answer at its deadline, and the answer says it failed.
    rig.llmock.reset().await;
    let models = "gpt-test,gpt-slow,gpt-test";
    let one_slow = json!({"type": "delay", "seconds": 4, "times": null,
                          "match": {"model": "gpt-slow"}});
    rig.llmock.script(json!([one_slow])).await;
    let outcomes = rig
        .send_all(&[
            Ask::new(Kind::BestOfN(3), "one slow").with_models(models),
            Ask::new(Kind::BestOfNStream(3), "one slow, streamed").with_models(models),
        ])
        .await;
    for outcome in &outcomes {
        outcome.expect_answer();
        assert_eq!(outcome.unscored(), 1, "{}", outcome.text());
        outcome.within(CANDIDATE_TIMEOUT);
    }
    rig.check_counters().await;
    let after = Counters::scrape(&rig.proxy).await;
    assert_eq!(after.outcome("timeout"), 3.0 + 3.0 + 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_are_relayed_as_they_break_or_reported() {
    let mut rig = Rig::start(&[]).await;
    let fault = |kind: &str, after: u32| {
        json!({"type": "stream_fault", "kind": kind, "after_chunks": after,
               "stall_seconds": 3, "times": 1})
    };

    // Passthrough relays a broken stream as it broke: a clean early end stays one (no
    // [DONE]), a corrupt event is passed on, and a cut connection cuts the client's too, so
    // that no client takes a broken stream for a whole one.
    rig.llmock.script(json!([fault("truncate", 3)])).await;
    let truncated = rig
        .send(Ask::new(Kind::PassthroughStream, "truncate"))
        .await;
    assert_eq!(truncated.status, 200);
    assert!(
        truncated.broken.is_none() && !truncated.done(),
        "{}",
        truncated.text()
    );
    assert_eq!(truncated.events().len(), 3, "{}", truncated.text());

    rig.llmock.script(json!([fault("malformed", 2)])).await;
    let malformed = rig
        .send(Ask::new(Kind::PassthroughStream, "malformed"))
        .await;
    assert_eq!(malformed.status, 200);
    assert!(malformed.done(), "{}", malformed.text());
    let unreadable = malformed.events();
    let unreadable: Vec<_> = unreadable
        .iter()
        .filter(|e| *e != "[DONE]" && serde_json::from_str::<Value>(e).is_err())
        .collect();
    assert_eq!(unreadable.len(), 1, "{}", malformed.text());

    rig.llmock.script(json!([fault("disconnect", 2)])).await;
    let cut = rig
        .send(Ask::new(Kind::PassthroughStream, "disconnect"))
        .await;
    assert_eq!(cut.status, 200);
    assert!(
        cut.broken.is_some(),
        "the client's stream must break too: {}",
        cut.text()
    );

    // A stall has no deadline in passthrough (a model may think for minutes before its next
    // token), but a client that gives up takes the proxy's upstream call down with it.
    rig.llmock.script(json!([fault("stall", 2)])).await;
    rig.sent += 1;
    let ask = Ask::new(Kind::PassthroughStream, "stall, the client leaves");
    let response = client()
        .request(ask.request(&rig.proxy))
        .await
        .expect("head");
    let mut body = response.into_body();
    let read_all = async { while let Some(Ok(_)) = body.frame().await {} };
    let read = tokio::time::timeout(Duration::from_millis(500), read_all).await;
    assert!(read.is_err(), "the stream stalls");
    drop(body);
    settle(&rig.proxy).await;
    let calls = chat_calls(&rig.llmock).await;
    let stalled = calls.iter().find(|c| c["fault"] == "stream:stall@2");
    let waited = stalled.and_then(|c| c["stall_waited"].as_f64());
    assert!(
        waited.is_some_and(|w| w < 1.5),
        "the upstream stream outlived its client by more than 1 s: {calls:?}"
    );

    // Selected best-of-N streams a whole winner: its candidates are not streamed upstream,
    // so a stream fault never reaches them (it stays queued).
    let forever = json!({"type": "stream_fault", "kind": "truncate", "after_chunks": 1,
                         "times": null});
    rig.llmock.reset().await;
    rig.llmock.script(json!([forever])).await;
    let selected = rig.send(Ask::new(Kind::BestOfNStream(3), "select")).await;
    selected.expect_answer();
    let calls = chat_calls(&rig.llmock).await;
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c["stream"] == false), "{calls:?}");
    assert_eq!(rig.llmock.pending().await.len(), 1);

    // Fuse mode relays the fuser's live stream, the one streamed call: each way it breaks
    // ends in an SSE error event and [DONE], never in a silently short answer.
    rig.llmock.reset().await;
    let mut fused = Vec::new();
    for (kind, why) in [
        ("truncate", "ended without [DONE]"),
        ("disconnect", "stream broke"),
        ("stall", "did not finish in time"),
    ] {
        rig.llmock.script(json!([fault(kind, 2)])).await;
        let outcome = rig.send(Ask::new(Kind::FuseStream(2), kind)).await;
        let error = outcome.expect_error(502);
        assert_eq!(error["code"], "fuser_failed", "{kind}: {error}");
        assert!(Outcome::message_of(&error).contains(why), "{kind}: {error}");
        fused.push(outcome);
    }
    fused[2].within(FUSER_TIMEOUT + CANDIDATE_TIMEOUT);
    rig.check_counters().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_chaos_from_llmock_flags_leaves_consistent_counters() {
    // llmock's own random faults, set on its command line: 35% error statuses, and half of
    // the streams broken one way or another. Which request gets what is chance; the checks
    // hold for any draw.
    let flags = [
        "--error-rate",
        "429=0.1",
        "--error-rate",
        "500=0.15",
        "--error-rate",
        "503=0.1",
        "--stream-fault",
        "truncate=0.15",
        "--stream-fault",
        "disconnect=0.15",
        "--stream-fault",
        "malformed=0.1",
        "--stream-fault",
        "stall=0.1",
        "--stream-stall-seconds",
        "0.5",
    ];
    let mut rig = Rig::start(&flags).await;
    let kinds = [
        Kind::Passthrough,
        Kind::PassthroughStream,
        Kind::BestOfN(3),
        Kind::BestOfNStream(3),
        Kind::FuseStream(2),
    ];
    for round in 0..4 {
        let asks: Vec<Ask> = kinds
            .iter()
            .map(|&kind| Ask::new(kind, &format!("chaos {round} {kind:?}")))
            .collect();
        for outcome in rig.send_all(&asks).await {
            outcome.within(REQUEST_TIMEOUT);
            let whole = outcome.status == 200 && outcome.broken.is_none();
            match outcome.kind {
                // Passthrough shows the upstream's answer as it came, broken or not.
                Kind::Passthrough | Kind::PassthroughStream => {
                    if outcome.status != 200 {
                        outcome.expect_error(outcome.status);
                    }
                }
                // Best-of-N answers whole, or says why not.
                _ if whole && !outcome.text().contains("\"error\"") => outcome.expect_answer(),
                _ => {
                    assert!(
                        outcome.status == 200 || outcome.status >= 400,
                        "{outcome:?}"
                    );
                    outcome.expect_error(outcome.status);
                }
            }
        }
    }
    rig.check_counters().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_run_is_a_quick_502_and_recovers_on_restart() {
    let mut rig = Rig::start(&[]).await;
    let all = |tag: &str| {
        [
            Ask::new(Kind::Passthrough, &format!("{tag} passthrough")),
            Ask::new(
                Kind::PassthroughStream,
                &format!("{tag} passthrough stream"),
            ),
            Ask::new(Kind::BestOfN(3), &format!("{tag} best-of-n")),
            Ask::new(Kind::BestOfNStream(3), &format!("{tag} best-of-n stream")),
        ]
    };
    // Warm: the proxy holds pooled connections to llmock when it dies.
    for outcome in rig.send_all(&all("before")).await {
        outcome.expect_answer();
    }

    rig.llmock.kill();
    let outcomes = rig.send_all(&all("killed")).await;
    for outcome in &outcomes {
        let error = outcome.expect_error(502);
        let message = Outcome::message_of(&error);
        assert!(
            message.contains("could not be reached") || message.contains("unreachable"),
            "{:?}: {message}",
            outcome.kind
        );
        // Connection refused is immediate; best-of-N spends only its jittered retries.
        outcome.within(Duration::from_millis(500));
    }

    rig.llmock.restart().await;
    for outcome in rig.send_all(&all("restarted")).await {
        outcome.expect_answer();
    }
    rig.check_counters().await;
}
