//! Every way a client can switch best-of-N on, through the real server against the mock
//! upstream: `best_of_n*` body fields, the `bon-N/` model prefix, mixed-model candidates,
//! and what is refused (conflicts, duplicate headers) and counted as `rejected`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// Candidates answer with the model they were asked for, as the upstream's `model`, so the
/// tests can see which model made which answer.
fn echo_model(call: &Call) -> Reply {
    if call.is_judge() {
        return Reply::judge_best("1", &[]);
    }
    let asked = call
        .json
        .as_ref()
        .map_or("", |b| b["model"].as_str().unwrap_or(""));
    let mut reply = json!({
        "id": format!("chatcmpl-{}", call.seq), "object": "chat.completion", "created": 1,
        "model": format!("{asked}-2026-01-01"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("from {asked}")},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    });
    if asked.is_empty() {
        reply["model"] = json!("unknown");
    }
    Reply::json(200, reply)
}

fn candidate_calls(mock: &MockUpstream) -> Vec<Call> {
    mock.calls().into_iter().filter(|c| !c.is_judge()).collect()
}

/// No upstream body carries a switch: they are the proxy's, not the model's.
fn assert_no_switch_reached_upstream(mock: &MockUpstream) {
    for call in mock.calls() {
        let body = String::from_utf8_lossy(&call.body);
        assert!(
            !body.contains("best_of_n"),
            "a switch went upstream: {body}"
        );
        assert!(
            !body.contains("bon-"),
            "the model prefix went upstream: {body}"
        );
    }
}

#[tokio::test]
async fn body_fields_switch_best_of_n_on_and_never_go_upstream() {
    let mock = MockUpstream::with_handler(echo_model).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({
        "model": "gpt-test", "messages": [{"role": "user", "content": "Why?"}],
        "best_of_n": 3, "best_of_n_judge": "listwise", "best_of_n_rubric": "code",
        "best_of_n_debug": true, "temperature": 0.3
    });
    let answer = post_chat(&proxy, &[], body.to_string()).await;
    answer.expect_ok();
    assert_eq!(answer.header("x-best-of-n"), Some("3"));
    assert_eq!(answer.header("x-best-of-n-judge"), Some("listwise"));
    let json = answer.json();
    assert_eq!(json["best_of_n"]["rubric"], "code");
    assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 45);
    mock.wait_for_calls(4, WAIT).await;
    let candidates = candidate_calls(&mock);
    assert_eq!(candidates.len(), 3);
    assert!(candidates
        .iter()
        .all(|c| c.json.as_ref().unwrap()["temperature"] == 0.3));
    assert_no_switch_reached_upstream(&mock);
}

#[tokio::test]
async fn the_model_prefix_asks_for_best_of_n_and_the_upstream_names_the_model() {
    let mock = MockUpstream::with_handler(echo_model).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = post_chat(&proxy, &[], chat_body_for("bon-4/gpt-4o-mini")).await;
    answer.expect_ok();
    assert_eq!(answer.header("x-best-of-n"), Some("4"));
    // The model is what the upstream answered, not the prefixed name the client sent.
    assert_eq!(answer.json()["model"], "gpt-4o-mini-2026-01-01");
    mock.wait_for_calls(5, WAIT).await;
    let asked: Vec<Value> = candidate_calls(&mock)
        .iter()
        .map(|c| c.json.as_ref().unwrap()["model"].clone())
        .collect();
    assert_eq!(asked, vec![json!("gpt-4o-mini"); 4]);
    assert_no_switch_reached_upstream(&mock);
}

#[tokio::test]
async fn an_sdk_that_can_only_set_the_model_gets_best_of_n() {
    let mock = MockUpstream::with_handler(echo_model).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(proxy.url("/v1"))
            .with_api_key("sk-client-key"),
    );
    let request = CreateChatCompletionRequestArgs::default()
        .model("bon-3/gpt-test")
        .messages(vec![ChatCompletionRequestUserMessageArgs::default()
            .content("Why?")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let response = client.chat().create(request).await.expect("SDK call");
    assert_eq!(response.model, "gpt-test-2026-01-01");
    let usage = response.usage.expect("usage");
    // Three candidates and the judge.
    assert!(usage.total_tokens >= 3 * 15, "{usage:?}");
    assert_eq!(candidate_calls(&mock).len(), 3);
}

#[tokio::test]
async fn plain_bodies_pass_through_byte_for_byte_and_off_switches_are_removed() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    // Odd spacing and key order: a body without switches is not re-encoded.
    let plain =
        "{ \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],  \"model\":\"gpt-test\" }";
    post_chat(&proxy, &[], plain).await.expect_ok();
    assert_eq!(mock.calls()[0].body, plain.as_bytes());
    // Switched off in the body: one plain call, without the fields.
    let off = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
                     "best_of_n": 0, "best_of_n_judge": "pairwise", "vendor_field": [1]});
    post_chat(&proxy, &[], off.to_string()).await.expect_ok();
    let calls = mock.calls();
    assert_eq!(calls.len(), 2);
    let sent = calls[1].json.clone().unwrap();
    assert_eq!(
        sent,
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
               "vendor_field": [1]})
    );
    // A model that merely starts like the prefix is a model name.
    post_chat(&proxy, &[], chat_body_for("bon-large"))
        .await
        .expect_ok();
    assert_eq!(mock.calls()[2].json.as_ref().unwrap()["model"], "bon-large");
}

#[tokio::test]
async fn conflicts_and_duplicate_headers_are_refused_naming_both() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
                      "best_of_n": 5});
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], body.to_string()).await;
    let error = answer.expect_error(400);
    assert_eq!(error["param"], "x-best-of-n");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("`best_of_n`") && message.contains("(3 and 5)"),
        "{message}"
    );
    // The same value in both is fine.
    let answer = post_chat(&proxy, &[("x-best-of-n", "5")], body.to_string()).await;
    answer.expect_ok();
    let answer = post_chat(&proxy, &[], chat_body_for("bon-2/gpt-test")).await;
    answer.expect_ok();
    let prefixed = json!({"model": "bon-2/gpt-test", "messages": [{"role": "user", "content": "hi"}],
                          "best_of_n": 3});
    let error = post_chat(&proxy, &[], prefixed.to_string())
        .await
        .expect_error(400);
    assert!(error["message"].as_str().unwrap().contains("`model`"));
    let error = post_chat(&proxy, &[], chat_body_for("bon-99/gpt-test"))
        .await
        .expect_error(400);
    assert_eq!(error["param"], "model");
    let error = post_chat(
        &proxy,
        &[("x-best-of-n", "2"), ("x-best-of-n", "4")],
        chat_body("hi"),
    )
    .await
    .expect_error(400);
    assert_eq!(error["param"], "x-best-of-n");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("more than once"));
    let bad_judge = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
                           "best_of_n": 2, "best_of_n_judge": "coin"});
    let error = post_chat(&proxy, &[], bad_judge.to_string())
        .await
        .expect_error(400);
    assert_eq!(error["param"], "best_of_n_judge");
}

#[tokio::test]
async fn mixed_models_cycle_over_the_candidates_and_are_reported() {
    let mock = MockUpstream::with_handler(echo_model).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let headers = [
        ("x-best-of-n", "3"),
        ("x-best-of-n-models", "model-a,model-b"),
        ("x-best-of-n-debug", "1"),
    ];
    let answer = post_chat(&proxy, &headers, chat_body("Why?")).await;
    answer.expect_ok();
    assert_eq!(
        answer.header("x-best-of-n-models"),
        Some("model-a,model-b,model-a")
    );
    let debug = &answer.json()["best_of_n"];
    let listed: Vec<&str> = debug["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["model"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["model-a", "model-b", "model-a"]);
    // Each candidate's answer came from the model the debug object names.
    for candidate in debug["candidates"].as_array().unwrap() {
        let model = candidate["model"].as_str().unwrap();
        assert_eq!(candidate["content"], format!("from {model}"));
    }
    let mut asked: BTreeMap<String, usize> = BTreeMap::new();
    for call in candidate_calls(&mock) {
        let model = call.json.unwrap()["model"].as_str().unwrap().to_string();
        *asked.entry(model).or_default() += 1;
    }
    assert_eq!(
        asked,
        BTreeMap::from([("model-a".to_string(), 2), ("model-b".to_string(), 1)])
    );
}

#[tokio::test]
async fn the_models_list_is_part_of_the_cache_key() {
    let mock = MockUpstream::with_handler(echo_model).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let ask = |models: &'static str| {
        let proxy = proxy.handle();
        async move {
            let body = json!({"model": "gpt-test", "best_of_n": 2, "best_of_n_models": models,
                              "messages": [{"role": "user", "content": "cache me"}]});
            post_chat(&proxy, &[], body.to_string()).await
        }
    };
    assert_eq!(ask("m1,m2").await.header("x-cache"), Some("miss"));
    assert_eq!(ask("m1,m2").await.header("x-cache"), Some("hit"));
    assert_eq!(ask("m2,m1").await.header("x-cache"), Some("miss"));
}

#[tokio::test]
async fn configured_models_apply_without_asking() {
    let mock = MockUpstream::with_handler(echo_model).await;
    let mut config = config_for(&mock);
    config.best_of_n.models = vec!["cfg-a".into(), "cfg-b".into()];
    let proxy = start_proxy(config).await;
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], chat_body("Why?")).await;
    answer.expect_ok();
    assert_eq!(answer.header("x-best-of-n-models"), Some("cfg-a,cfg-b"));
}

#[tokio::test]
async fn refusals_before_planning_count_as_rejected() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.best_of_n.max_body_bytes = 200;
    let proxy = start_proxy(config).await;
    // Switched on by the body, too large for best-of-N: 413 naming the best-of-N limit.
    let big = json!({"model": "gpt-test", "best_of_n": 2,
                     "messages": [{"role": "user", "content": "x".repeat(300)}]});
    let error = post_chat(&proxy, &[], big.to_string())
        .await
        .expect_error(413);
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("best_of_n.max_body_bytes"));
    // Switched on by the body, declared as text: 415.
    let request = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body(Full::new(
            json!({"model": "m", "best_of_n": 2, "messages": []})
                .to_string()
                .into(),
        ))
        .unwrap();
    send(request).await.expect_error(415);
    // A body that is not JSON under the header: 400.
    post_chat(&proxy, &[("x-best-of-n", "2")], "{not json")
        .await
        .expect_error(400);
    assert!(mock.calls().is_empty(), "nothing refused went upstream");
    let metrics = send(
        Request::get(proxy.url("/metrics"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    for status in ["413", "415", "400"] {
        let counted = text.lines().any(|line| {
            line.starts_with("bon_requests_total{")
                && line.contains("mode=\"rejected\"")
                && line.contains(&format!("status=\"{status}\""))
        });
        assert!(counted, "no rejected {status} in:\n{text}");
    }
}

#[tokio::test]
async fn with_body_switches_off_bodies_go_upstream_as_sent() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.best_of_n.body_switches = false;
    config.best_of_n.model_prefix = String::new();
    let proxy = start_proxy(config).await;
    let body = json!({"model": "bon-3/gpt-test", "best_of_n": 3,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let answer = post_chat(&proxy, &[], body.clone()).await;
    answer.expect_ok();
    assert!(answer.header("x-best-of-n").is_none());
    assert_eq!(mock.calls().len(), 1);
    assert_eq!(mock.calls()[0].body, body.as_bytes());
    // The header still switches best-of-N on.
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], chat_body("hi")).await;
    assert_eq!(answer.header("x-best-of-n"), Some("2"));
}

fn chat_body_for(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "Why?"}]}).to_string()
}
