//! The `reward_model` judge through the real server: a mock upstream answers the candidate
//! calls and a second mock plays the reward model, answering in each documented wire format
//! (text-embeddings-inference `/rerank`, Cohere `/v1/rerank`, vLLM `/pooling`). Checked: the
//! candidate the scores favour wins, the request bodies have each project's shape, the judge's
//! key goes only to its endpoint, unusable answers and failed calls fall back and say why, and
//! `n`, streaming, the cache and the metrics work as with any judge.
//!
//! The reward mock scores the candidate TEXT it is sent (never positions), so a test knows which
//! answer must win whatever order the candidates were generated in.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bon_proxy::config::JudgeConfig;
use bon_proxy::upstream::ApiKey;
use bon_proxy::{Config, Secrets};
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

/// Three candidate texts; the best is not first, so "return the first" cannot pass.
const THREE: &[&str] = &["answer-fair", "answer-poor", "answer-best"];

/// The raw reward a text earns from the mock reward model.
fn reward(text: &str) -> f64 {
    match text {
        t if t.contains("best") => 3.0,
        t if t.contains("fair") => 0.5,
        _ => -2.0,
    }
}

/// `(index, reward)` of `texts`, best first, as rerankers answer.
fn ranked(texts: &[Value]) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (i, reward(t.as_str().unwrap_or_default())))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}

fn body_of(call: &Call) -> Value {
    call.json.clone().unwrap_or(Value::Null)
}

/// text-embeddings-inference: `[{"index", "score"}]`, best first.
fn tei(call: &Call) -> Reply {
    let body = body_of(call);
    let texts = body["texts"].as_array().cloned().unwrap_or_default();
    let ranks: Vec<Value> = ranked(&texts)
        .into_iter()
        .map(|(index, score)| json!({"index": index, "score": score}))
        .collect();
    Reply::json(200, Value::Array(ranks))
}

/// Cohere: `{"id", "results": [{"index", "relevance_score"}], "meta"}`, best first.
fn cohere(call: &Call) -> Reply {
    let body = body_of(call);
    let documents = body["documents"].as_array().cloned().unwrap_or_default();
    let results: Vec<Value> = ranked(&documents)
        .into_iter()
        .map(|(index, score)| json!({"index": index, "relevance_score": (score + 2.0) / 5.0}))
        .collect();
    let meta = json!({"api_version": {"version": "1"}, "billed_units": {"search_units": 1}});
    Reply::json(200, json!({"id": "rr-1", "results": results, "meta": meta}))
}

/// vLLM: `{"data": [{"index": 0, "object": "pooling", "data": [reward]}], "usage"}` for the
/// last message.
fn vllm(call: &Call) -> Reply {
    let body = body_of(call);
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    let score = reward(last["content"].as_str().unwrap_or_default());
    Reply::json(
        200,
        json!({
            "id": "pool-1", "object": "list", "created": 1, "model": body["model"],
            "data": [{"index": 0, "object": "pooling", "data": [score]}],
            "usage": {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0},
        }),
    )
}

/// An upstream whose k-th candidate call answers `THREE[k % 3]`.
async fn upstream() -> MockUpstream {
    let next = AtomicUsize::new(0);
    MockUpstream::with_handler(move |_: &Call| {
        let k = next.fetch_add(1, Ordering::SeqCst);
        Reply::completion(THREE[k % THREE.len()])
    })
    .await
}

/// `http://ADDR` (a server root, as TEI and vLLM are configured).
fn root_of(mock: &MockUpstream) -> String {
    format!("http://{}", mock.addr())
}

fn table(format: &str, base_url: String) -> JudgeConfig {
    JudgeConfig {
        strategy: "reward_model".into(),
        format: format.into(),
        base_url,
        ..Default::default()
    }
}

/// A proxy in front of `upstream` with the judge `rm` from `table`.
async fn proxy_with(upstream: &MockUpstream, table: JudgeConfig) -> Proxy {
    let mut config: Config = config_for(upstream);
    config.judges.insert("rm".into(), table);
    start_proxy(config).await
}

/// A best-of-3 request for the judge `rm`, with the debug object.
async fn judged(proxy: &Proxy, body: String) -> Answer {
    let headers = [
        ("x-best-of-n", "3"),
        ("x-best-of-n-debug", "1"),
        ("x-best-of-n-judge", "rm"),
    ];
    let answer = post_chat(proxy, &headers, body).await;
    answer.expect_ok();
    answer
}

fn conversation() -> String {
    json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How do I brew tea?"}]})
    .to_string()
}

fn debug_of(answer: &Answer) -> Value {
    answer.json()["best_of_n"].clone()
}

/// Candidate contents in generation order, from the debug object.
fn generated(answer: &Answer) -> Vec<Value> {
    let debug = debug_of(answer);
    let candidates = debug["candidates"].as_array().cloned().unwrap_or_default();
    candidates.iter().map(|c| c["content"].clone()).collect()
}

fn scores(answer: &Answer) -> Vec<String> {
    let header = answer.header("x-best-of-n-scores").expect("scores header");
    header.split(',').map(str::to_string).collect()
}

/// The best answer won by the judge's verdict, not a fallback, and every score is reported.
fn assert_best_won(answer: &Answer) {
    assert_eq!(answer.content(), "answer-best");
    assert_eq!(answer.header("x-best-of-n-judge"), Some("rm"));
    assert_eq!(answer.header("x-best-of-n-fallback"), None);
    let judge = &debug_of(answer)["judge"];
    assert_eq!(judge["outcome"], "ok", "{judge}");
    assert_eq!(judge["fully_ranked"], true);
    assert!(!judge["raw"].as_array().unwrap().is_empty(), "{judge}");
    let rewards = judge["reward_scores"].as_array().expect("reward_scores");
    assert_eq!(rewards.len(), 3, "{judge}");
    assert!(scores(answer).iter().all(|s| s != "-"));
}

/// The score reported for the candidate that answered `text`.
fn score_of(answer: &Answer, text: &str) -> String {
    let at = generated(answer)
        .iter()
        .position(|t| t == text)
        .expect(text);
    scores(answer)[at].clone()
}

// ---------------------------------------------------------------- the three formats

#[tokio::test]
async fn tei_rerank_sends_the_conversation_and_every_candidate_and_the_best_wins() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(tei).await;
    let proxy = proxy_with(&upstream, table("tei_rerank", root_of(&rm))).await;
    let answer = judged(&proxy, conversation()).await;
    assert_best_won(&answer);
    // The logistic of the raw reward: 1 / (1 + e^-3) = 0.953.
    assert_eq!(score_of(&answer, "answer-best"), "0.953");
    assert_eq!(score_of(&answer, "answer-poor"), "0.119");
    let calls = rm.calls();
    assert_eq!(calls.len(), 1, "one call scores every candidate");
    assert_eq!(calls[0].path(), "/rerank");
    let body = body_of(&calls[0]);
    assert_eq!(body["query"], "system: Be brief.\nuser: How do I brew tea?");
    assert_eq!(body["texts"], Value::Array(generated(&answer)));
    assert_eq!(body["raw_scores"], true);
    assert!(body.get("model").is_none(), "TEI's request has no model");
    let rewards = &debug_of(&answer)["judge"]["reward_scores"];
    assert!(rewards
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["reward"] == 3.0));
}

#[tokio::test]
async fn cohere_rerank_sends_model_query_and_documents_under_v1() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(cohere).await;
    let table = JudgeConfig {
        model: "rerank-v3.5".into(),
        ..table("cohere_rerank", rm.base_url())
    };
    let proxy = proxy_with(&upstream, table).await;
    let answer = judged(&proxy, conversation()).await;
    assert_best_won(&answer);
    assert_eq!(
        score_of(&answer, "answer-best"),
        "1",
        "relevance_score as sent"
    );
    assert_eq!(score_of(&answer, "answer-fair"), "0.5");
    let calls = rm.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path(), "/v1/rerank", "base_url holds the /v1");
    let body = body_of(&calls[0]);
    assert_eq!(body["model"], "rerank-v3.5");
    assert_eq!(body["query"], "system: Be brief.\nuser: How do I brew tea?");
    assert_eq!(body["documents"], Value::Array(generated(&answer)));
}

#[tokio::test]
async fn vllm_reward_scores_each_candidate_in_its_own_call() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(vllm).await;
    let proxy = proxy_with(&upstream, table("vllm_reward", root_of(&rm))).await;
    let answer = judged(&proxy, conversation()).await;
    assert_best_won(&answer);
    let calls = rm.calls();
    assert_eq!(calls.len(), 3, "one call per candidate");
    let mut last_turns = Vec::new();
    for call in &calls {
        assert_eq!(call.path(), "/pooling");
        let body = body_of(call);
        assert_eq!(body["model"], "gpt-test", "empty model: the request's");
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{body}");
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages[2]["role"], "assistant");
        last_turns.push(messages[2]["content"].clone());
    }
    let mut expected = generated(&answer);
    let key = |v: &Value| v.to_string();
    last_turns.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(last_turns, expected, "every candidate scored once");
    let judge_usage = &debug_of(&answer)["usage"]["judge"];
    assert_eq!(judge_usage["prompt_tokens"], 21, "vLLM's usage, summed");
}

#[tokio::test]
async fn the_built_in_reward_model_judge_asks_the_upstream() {
    let next = AtomicUsize::new(0);
    let upstream = MockUpstream::with_handler(move |call: &Call| {
        if call.path() == "/v1/rerank" {
            return tei(call);
        }
        let k = next.fetch_add(1, Ordering::SeqCst);
        Reply::completion(THREE[k % THREE.len()])
    })
    .await;
    let proxy = start_proxy(config_for(&upstream)).await;
    let headers = [("x-best-of-n", "3"), ("x-best-of-n-judge", "reward_model")];
    let answer = post_chat(&proxy, &headers, conversation()).await;
    answer.expect_ok();
    assert_eq!(answer.content(), "answer-best");
    let reranks = upstream
        .calls()
        .iter()
        .filter(|c| c.path() == "/v1/rerank")
        .count();
    assert_eq!(reranks, 1, "tei_rerank at the upstream's base_url");
}

// ---------------------------------------------------------------- keys

const RM_KEY: &str = "sk-reward-MODEL-SECRET-0123456789";

fn secrets_with_rm_key() -> Secrets {
    let mut secrets = Secrets {
        upstream_key: Some(ApiKey::new(UPSTREAM_KEY)),
        ..Default::default()
    };
    secrets
        .judge_keys
        .insert("RM_KEY".into(), ApiKey::new(RM_KEY));
    secrets
}

fn bearer(call: &Call) -> Option<String> {
    let auth = call.headers.get("authorization");
    auth.and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[tokio::test]
async fn a_reward_models_key_goes_only_to_its_endpoint() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(tei).await;
    let mut config = config_for(&upstream);
    let table = JudgeConfig {
        api_key_env: "RM_KEY".into(),
        ..table("tei_rerank", root_of(&rm))
    };
    config.judges.insert("rm".into(), table);
    let proxy = start_proxy_with(config, secrets_with_rm_key()).await;
    let answer = judged(&proxy, conversation()).await;
    assert_best_won(&answer);
    let rm_calls = rm.calls();
    assert_eq!(rm_calls.len(), 1);
    assert_eq!(bearer(&rm_calls[0]), Some(format!("Bearer {RM_KEY}")));
    for call in upstream.calls() {
        assert_eq!(call.path(), "/v1/chat/completions", "no rerank call here");
        assert_eq!(bearer(&call), Some(format!("Bearer {UPSTREAM_KEY}")));
    }
}

// ---------------------------------------------------------------- failures

/// The answer came from the fallback, which says why, and the judge's failure names `what`.
fn assert_fell_back(answer: &Answer, outcome: &str, what: &[&str]) {
    let fallback = answer
        .header("x-best-of-n-fallback")
        .expect("fallback header");
    assert_eq!(fallback, format!("first_ok ({outcome})"));
    assert_eq!(
        answer.content(),
        generated(answer)[0],
        "first_ok: generation order"
    );
    assert_eq!(scores(answer), ["-", "-", "-"], "nobody was scored");
    let judge = &debug_of(answer)["judge"];
    assert_eq!(judge["outcome"], outcome, "{judge}");
    let failure = judge["failure"].as_str().expect("a failure");
    for part in what {
        assert!(failure.contains(part), "{failure} lacks {part}");
    }
}

/// A best-of-3 request to a proxy whose judge `rm` is `table` at a mock answering `reply`.
async fn failing(
    table: impl FnOnce(String) -> JudgeConfig,
    reply: impl Fn(&Call) -> Reply + Send + Sync + 'static,
) -> (MockUpstream, Answer) {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(reply).await;
    let mut config = config_for(&upstream);
    config.judges.insert("rm".into(), table(root_of(&rm)));
    let proxy = start_proxy_with(config, secrets_with_rm_key()).await;
    let answer = judged(&proxy, conversation()).await;
    (rm, answer)
}

#[tokio::test]
async fn a_rerank_answer_missing_a_candidate_falls_back() {
    let short = |call: &Call| {
        let body = body_of(call);
        let texts = body["texts"].as_array().cloned().unwrap_or_default();
        let two: Vec<Value> = ranked(&texts)
            .into_iter()
            .take(2)
            .map(|(index, score)| json!({"index": index, "score": score}))
            .collect();
        Reply::json(200, Value::Array(two))
    };
    let (_rm, answer) = failing(|base| table("tei_rerank", base), short).await;
    assert_fell_back(
        &answer,
        "parse_error",
        &["reward model (tei_rerank)", "2 of 3 texts were scored"],
    );
    let raw = &debug_of(&answer)["judge"]["raw"];
    assert!(raw[0].as_str().unwrap().contains("\"index\""), "{raw}");
}

#[tokio::test]
async fn a_score_that_is_not_a_finite_number_falls_back() {
    // What TEI (serde) writes for a NaN score.
    let nan = |_: &Call| {
        let ranks = json!([{"index": 0, "score": null}, {"index": 1, "score": 1.0},
            {"index": 2, "score": 0.5}]);
        Reply::json(200, ranks)
    };
    let (_rm, answer) = failing(|base| table("tei_rerank", base), nan).await;
    assert_fell_back(
        &answer,
        "parse_error",
        &["tei_rerank", "index 0 has no finite score"],
    );
}

#[tokio::test]
async fn an_error_status_falls_back_and_the_echoed_key_stays_hidden() {
    let refuse = |_: &Call| {
        let message = format!("reranker overloaded for key {RM_KEY}");
        Reply::error(500, &message, "overloaded")
    };
    let cohere_table = |base: String| JudgeConfig {
        api_key_env: "RM_KEY".into(),
        model: "rerank-v3.5".into(),
        ..table("cohere_rerank", format!("{base}/v1"))
    };
    let (rm, answer) = failing(cohere_table, refuse).await;
    assert_fell_back(
        &answer,
        "error",
        &["cohere_rerank", "status 500", "overloaded"],
    );
    let shown = String::from_utf8_lossy(&answer.body).to_string();
    assert!(!shown.contains("MODEL-SECRET"), "key echoed: {shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert_eq!(rm.calls().len(), 1, "config_for: no retries");
}

#[tokio::test]
async fn a_reward_model_that_does_not_answer_in_time_falls_back() {
    let slow = |call: &Call| vllm(call).with_delay(Duration::from_secs(3));
    let vllm_table = |base: String| JudgeConfig {
        timeout: Duration::from_millis(300),
        ..table("vllm_reward", base)
    };
    let (_rm, answer) = failing(vllm_table, slow).await;
    assert_fell_back(
        &answer,
        "error",
        &["vllm_reward", "candidate #", "no answer within"],
    );
}

// ---------------------------------------------------------------- n, streaming, cache, metrics

#[tokio::test]
async fn n_returns_the_best_rewarded_first() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(tei).await;
    let proxy = proxy_with(&upstream, table("tei_rerank", root_of(&rm))).await;
    let body = json!({"model": "gpt-test", "n": 2, "messages": [{"role": "user", "content": "Q"}]});
    let answer = judged(&proxy, body.to_string()).await;
    let choices = answer.json()["choices"].clone();
    let texts: Vec<&str> = choices
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["answer-best", "answer-fair"]);
}

#[tokio::test]
async fn a_stream_carries_the_best_rewarded_answer() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(vllm).await;
    let proxy = proxy_with(&upstream, table("vllm_reward", root_of(&rm))).await;
    let body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": "Q"}]});
    let answer = judged(&proxy, body.to_string()).await;
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let content: String = answer.streamed_content();
    assert_eq!(content, "answer-best");
}

#[tokio::test]
async fn a_repeated_request_is_served_from_the_cache_without_asking_the_model() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(cohere).await;
    let proxy = proxy_with(&upstream, table("cohere_rerank", rm.base_url())).await;
    let first = judged(&proxy, conversation()).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    let (candidates, reranks) = (upstream.calls().len(), rm.calls().len());
    let again = judged(&proxy, conversation()).await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    assert_eq!(again.content(), "answer-best");
    assert_eq!(
        upstream.calls().len(),
        candidates,
        "a hit generates nothing"
    );
    assert_eq!(rm.calls().len(), reranks, "a hit asks no reward model");
}

#[tokio::test]
async fn reward_model_calls_are_counted_by_their_own_kind() {
    let upstream = upstream().await;
    let rm = MockUpstream::with_handler(tei).await;
    let proxy = proxy_with(&upstream, table("tei_rerank", root_of(&rm))).await;
    judged(&proxy, conversation()).await;
    let request = Request::get(proxy.url("/metrics")).body(Full::default());
    let metrics = send(request.expect("request")).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let counted = |prefix: &str, labels: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(prefix) && labels.iter().all(|label| l.contains(label)))
    };
    assert!(
        counted(
            "bon_upstream_requests_total{",
            &["kind=\"reward_model\"", "status=\"200\""]
        ),
        "{text}"
    );
    assert!(
        counted(
            "bon_judge_total{",
            &["strategy=\"reward_model\"", "outcome=\"ok\""]
        ),
        "{text}"
    );
}
