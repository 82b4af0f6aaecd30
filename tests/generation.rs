//! Candidate diversity and generation through the real server against the mock upstream:
//! instruction variations (seen by candidates only, never by the judge or the client), the
//! default temperature, and one `n` call in place of N calls, with its fallbacks.

mod common;

use std::time::Duration;

use bon_proxy::config::{Diversity, Generation};
use bon_proxy::Config;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

const VARIATIONS: [&str; 3] = [
    "VARIATION-ZERO: answer in one line.",
    "VARIATION-ONE: answer with bullet points.",
    "VARIATION-TWO: answer with an example.",
];

fn variations_config(mock: &MockUpstream) -> Config {
    let mut config = config_for(mock);
    config.best_of_n.diversity = Diversity::Variations;
    config.best_of_n.variations = VARIATIONS.iter().map(|v| v.to_string()).collect();
    config
}

fn n_param_config(mock: &MockUpstream) -> Config {
    let mut config = config_for(mock);
    config.best_of_n.generation = Generation::NParam;
    config
}

/// The last message with role `user` in a call's body.
fn last_user_message(call: &Call) -> Value {
    let messages = call.json.as_ref().unwrap()["messages"].as_array().unwrap();
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .cloned()
        .unwrap()
}

/// Which of [`VARIATIONS`] a candidate call's last user message ends with (text or last part).
fn variation_of(call: &Call) -> Option<usize> {
    let content = &last_user_message(call)["content"];
    let text = match content {
        Value::String(text) => text.as_str(),
        Value::Array(parts) => parts.last()?["text"].as_str()?,
        _ => return None,
    };
    VARIATIONS.iter().position(|v| text.ends_with(v))
}

/// Candidates answer with the variation they saw, so the debug object shows which candidate got
/// which instruction; the judge picks the first shown.
fn echo_variation(call: &Call) -> Reply {
    if call.is_judge() {
        return Reply::judge_best("1", &[]);
    }
    match variation_of(call) {
        Some(k) => Reply::completion(&format!("answer under variation {k}")),
        None => Reply::completion("answer under no variation"),
    }
}

fn assert_no_instruction_in(text: &str, what: &str) {
    for variation in VARIATIONS {
        assert!(!text.contains(variation), "{what} shows `{variation}`");
    }
}

/// Asks for best-of-3 with the debug object and checks what every party saw: candidate k got
/// instruction k, the judge and the client none.
async fn check_variations(messages: Value) -> Vec<Call> {
    let mock = MockUpstream::with_handler(echo_variation).await;
    let proxy = start_proxy(variations_config(&mock)).await;
    let body = json!({"model": "gpt-test", "messages": messages});
    let answer = post_chat(
        &proxy,
        &[("x-best-of-n", "3"), ("x-best-of-n-debug", "1")],
        body.to_string(),
    )
    .await;
    answer.expect_ok();
    let debug = &answer.json()["best_of_n"]["candidates"];
    for k in 0..3 {
        let expected = format!("answer under variation {k}");
        assert_eq!(debug[k]["content"], expected, "candidate {k}");
    }
    assert_no_instruction_in(&String::from_utf8_lossy(&answer.body), "the answer");
    for (name, value) in &answer.headers {
        assert_no_instruction_in(value.to_str().unwrap_or(""), name.as_str());
    }
    let calls = mock.wait_for_calls(4, WAIT).await;
    let judge = calls.iter().find(|c| c.is_judge()).expect("a judge call");
    assert_no_instruction_in(&judge.prompt_text(), "the judge's prompt");
    calls.into_iter().filter(|c| !c.is_judge()).collect()
}

#[tokio::test]
async fn each_candidate_gets_its_instruction_on_a_text_message() {
    let candidates = check_variations(json!([{"role": "user", "content": "Explain DNS."}])).await;
    let mut seen: Vec<String> = candidates
        .iter()
        .map(|c| {
            last_user_message(c)["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    seen.sort();
    let mut expected: Vec<String> = VARIATIONS
        .iter()
        .map(|v| format!("Explain DNS.\n\n{v}"))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn each_candidate_gets_its_instruction_as_one_more_text_part() {
    let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}});
    let parts = json!([{"type": "text", "text": "What is shown?"}, image]);
    let candidates = check_variations(json!([{"role": "user", "content": parts}])).await;
    for call in &candidates {
        let content = last_user_message(call)["content"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(content.len(), 3);
        assert_eq!(content[..2], parts.as_array().unwrap()[..]);
        let k = variation_of(call).unwrap();
        assert_eq!(content[2], json!({"type": "text", "text": VARIATIONS[k]}));
    }
}

#[tokio::test]
async fn the_instruction_goes_to_the_last_user_message_even_after_a_tool_result() {
    let candidates = check_variations(json!([
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
    ]))
    .await;
    for call in &candidates {
        let messages = call.json.as_ref().unwrap()["messages"].as_array().unwrap();
        assert_eq!(
            messages[0]["content"], "Hello",
            "an earlier user message is untouched"
        );
        let user = messages[2]["content"].as_str().unwrap();
        assert!(
            user.starts_with("Weather in Paris?\n\nVARIATION-"),
            "{user}"
        );
        assert!(messages[3]["content"].is_null());
        assert_eq!(
            messages[4]["content"], "18C, sunny",
            "the tool result is untouched"
        );
    }
}

#[tokio::test]
async fn the_default_temperature_applies_only_when_the_client_sent_none() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.best_of_n.temperature = Some(0.8);
    config.cache.enabled = false;
    let proxy = start_proxy(config).await;
    let without = chat_body("Hi");
    let with = json!({"model": "gpt-test", "temperature": 0.3,
        "messages": [{"role": "user", "content": "Hi"}]});
    for (body, expected) in [(without, 0.8), (with.to_string(), 0.3)] {
        let before = mock.calls().len();
        let answer = post_chat(&proxy, &[("x-best-of-n", "3")], body).await;
        assert_eq!(answer.status, 200);
        let calls = mock.wait_for_calls(before + 4, WAIT).await;
        for call in &calls[before..] {
            let temperature = &call.json.as_ref().unwrap()["temperature"];
            if call.is_judge() {
                assert_eq!(temperature, 0.0, "the judge keeps judge.temperature");
            } else {
                assert_eq!(temperature, expected);
            }
        }
    }
}

/// Answers a call asking for `n` choices with `n` choices (content `choice K`) and usage of
/// 10 prompt + 8 completion tokens per choice, single-choice calls with one (10 + 5 tokens);
/// the judge ranks every candidate it is shown.
fn honours_n(call: &Call) -> Reply {
    if call.is_judge() {
        // Shown candidate 2 first, then the others in the order shown.
        let shown = call.judge_candidates().len();
        let rest = (1..=shown).filter(|&id| id != 2).map(|id| id.to_string());
        let ranking: Vec<String> = std::iter::once("2".to_string()).chain(rest).collect();
        let ranking: Vec<&str> = ranking.iter().map(String::as_str).collect();
        return Reply::judge_best("2", &ranking);
    }
    let n = call
        .json
        .as_ref()
        .and_then(|b| b["n"].as_u64())
        .unwrap_or(1);
    if n == 1 {
        return Reply::completion(&format!("parallel answer {}", call.seq));
    }
    choices_reply(n)
}

fn choices_reply(n: u64) -> Reply {
    let choices: Vec<Value> = (0..n)
        .map(|k| {
            json!({"index": k, "message": {"role": "assistant", "content": format!("choice {k}")},
                "logprobs": null, "finish_reason": "stop"})
        })
        .collect();
    Reply::json(
        200,
        json!({"id": "chatcmpl-n", "object": "chat.completion", "created": 1, "model": "m",
            "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 8 * n, "total_tokens": 10 + 8 * n}}),
    )
}

fn candidate_calls(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| !c.is_judge()).collect()
}

#[tokio::test]
async fn n_param_makes_one_call_and_counts_its_usage_once() {
    let mock = MockUpstream::with_handler(honours_n).await;
    let proxy = start_proxy(n_param_config(&mock)).await;
    let answer = post_chat(
        &proxy,
        &[("x-best-of-n", "4"), ("x-best-of-n-debug", "1")],
        chat_body("Hi"),
    )
    .await;
    answer.expect_ok();
    let calls = mock.wait_for_calls(2, WAIT).await;
    let candidates = candidate_calls(&calls);
    assert_eq!(candidates.len(), 1, "one upstream call for all candidates");
    assert_eq!(candidates[0].json.as_ref().unwrap()["n"], 4);
    let judge = calls.iter().find(|c| c.is_judge()).unwrap();
    assert_eq!(judge.judge_candidates().len(), 4);
    let body = answer.json();
    // The n call (10 + 32) and the judge (10 + 5), each once.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 20, "completion_tokens": 37, "total_tokens": 57})
    );
    assert_eq!(body["choices"].as_array().unwrap().len(), 1);
    assert_eq!(body["choices"][0]["index"], 0);
    let debug = body["best_of_n"]["candidates"].as_array().unwrap().clone();
    let contents: Vec<&str> = debug
        .iter()
        .map(|c| c["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["choice 0", "choice 1", "choice 2", "choice 3"]);
    assert!(debug
        .iter()
        .all(|c| c["latency_ms"] == debug[0]["latency_ms"]));
    let metrics = scrape(&proxy).await;
    assert_eq!(
        metric(
            &metrics,
            "bon_upstream_requests_total",
            "kind=\"candidate\""
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "bon_candidates_total", "outcome=\"ok\""),
        4.0
    );
}

/// Refuses any call asking for more than one choice, the way OpenAI names a bad parameter.
fn refuses_n(call: &Call) -> Reply {
    if call.is_judge() {
        return Reply::judge_best("1", &[]);
    }
    if call
        .json
        .as_ref()
        .and_then(|b| b["n"].as_u64())
        .unwrap_or(1)
        > 1
    {
        let error = json!({"message": "This model does not support n > 1.",
            "type": "invalid_request_error", "param": "n", "code": "unsupported_value"});
        return Reply::json(400, json!({ "error": error }));
    }
    Reply::completion(&format!("parallel answer {}", call.seq))
}

#[tokio::test]
async fn a_refused_n_falls_back_to_parallel_calls_and_is_remembered() {
    let mock = MockUpstream::with_handler(refuses_n).await;
    let proxy = start_proxy(n_param_config(&mock)).await;
    let first = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("First")).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let calls = mock.wait_for_calls(5, WAIT).await;
    let asked_n: Vec<u64> = candidate_calls(&calls)
        .iter()
        .map(|c| c.json.as_ref().unwrap()["n"].as_u64().unwrap_or(1))
        .collect();
    assert_eq!(
        asked_n,
        [3, 1, 1, 1],
        "the n call, then three parallel calls"
    );
    let second = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Second")).await;
    assert_eq!(second.status, 200);
    let calls = mock.wait_for_calls(9, WAIT).await;
    let later = candidate_calls(&calls[5..]);
    assert_eq!(later.len(), 3, "straight to parallel calls");
    assert!(later
        .iter()
        .all(|c| c.json.as_ref().unwrap().get("n").is_none()));
}

#[tokio::test]
async fn fewer_choices_than_asked_are_made_up_by_parallel_calls() {
    let mock = MockUpstream::with_handler(|call| {
        let n = call
            .json
            .as_ref()
            .and_then(|b| b["n"].as_u64())
            .unwrap_or(1);
        match n {
            4 => choices_reply(2),
            _ => honours_n(call),
        }
    })
    .await;
    let proxy = start_proxy(n_param_config(&mock)).await;
    let answer = post_chat(
        &proxy,
        &[("x-best-of-n", "4"), ("x-best-of-n-debug", "1")],
        chat_body("Hi"),
    )
    .await;
    answer.expect_ok();
    let calls = mock.wait_for_calls(4, WAIT).await;
    assert_eq!(candidate_calls(&calls).len(), 3, "the n call and two more");
    let judge = calls.iter().find(|c| c.is_judge()).unwrap();
    assert_eq!(judge.judge_candidates().len(), 4);
    let body = answer.json();
    let debug = body["best_of_n"]["candidates"].as_array().unwrap();
    let statuses: Vec<&str> = debug
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok"; 4]);
    assert!(debug[2]["content"]
        .as_str()
        .unwrap()
        .starts_with("parallel answer"));
    // n call 10 + 16, two parallel calls and the judge 10 + 5 each.
    assert_eq!(body["usage"]["total_tokens"], 26 + 3 * 15);
}

#[tokio::test]
async fn a_client_asking_for_two_choices_gets_two_under_n_param() {
    let mock = MockUpstream::with_handler(honours_n).await;
    let proxy = start_proxy(n_param_config(&mock)).await;
    let body =
        json!({"model": "gpt-test", "n": 2, "messages": [{"role": "user", "content": "Hi"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "4")], body.to_string()).await;
    answer.expect_ok();
    let calls = mock.wait_for_calls(2, WAIT).await;
    let candidates = candidate_calls(&calls);
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].json.as_ref().unwrap()["n"], 4);
    let choices = answer.json()["choices"].as_array().unwrap().clone();
    let contents: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    // Shown ids map back through the shuffle, so only the shape is certain: two distinct
    // choices of the n call, numbered 0 and 1.
    assert_eq!(contents.len(), 2);
    assert_ne!(contents[0], contents[1]);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
}

#[tokio::test]
async fn a_streaming_client_is_answered_under_n_param() {
    let mock = MockUpstream::with_handler(honours_n).await;
    let proxy = start_proxy(n_param_config(&mock)).await;
    let body = json!({"model": "gpt-test", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Hi"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert!(String::from_utf8_lossy(&answer.body).ends_with("data: [DONE]\n\n"));
    let chunks = answer.sse_chunks();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.starts_with("choice "), "{text}");
    let usage = chunks
        .iter()
        .rev()
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()));
    // The n call (10 + 24) and the judge (10 + 5).
    assert_eq!(usage.unwrap()["total_tokens"], 49);
    let calls = mock.wait_for_calls(2, WAIT).await;
    let candidates = candidate_calls(&calls);
    assert_eq!(candidates.len(), 1);
    let sent = candidates[0].json.as_ref().unwrap();
    assert_eq!(sent["n"], 3);
    assert_eq!(sent["stream"], false);
    assert!(sent.get("stream_options").is_none());
}

async fn scrape(proxy: &Proxy) -> String {
    let request = Request::get(proxy.url("/metrics")).body(Full::default());
    let answer = send(request.unwrap()).await;
    assert_eq!(answer.status, 200);
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// The sum of the samples of `name` whose labels contain `label` (e.g. `kind="candidate"`).
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
