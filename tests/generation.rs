//! Candidate diversity and generation through the real server against the mock upstream:
//! instruction variations (seen by candidates only, never by the judge or the client) and the
//! default temperature.

mod common;

use std::time::Duration;

use bon_proxy::config::Diversity;
use bon_proxy::Config;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
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
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
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
