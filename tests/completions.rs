//! Best-of-N on the legacy completions API (`POST /v1/completions`) through the real server
//! against the mock upstream: the switches, the API's own `best_of`, the `n` best choices,
//! summed usage, the legacy stream, and the official Python SDK reading it.

mod common;

use std::time::Duration;

use common::mock::{Call, MockUpstream, Reply};
use common::python::run_python;
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// Completion calls answer "answer K" (K the arrival order, so texts differ); the judge, a
/// chat call, ranks the candidates by the number in their text, highest first.
fn ranked_by_number(call: &Call) -> Reply {
    if call.path().ends_with("/chat/completions") {
        let mut shown = call.judge_candidates();
        let number = |text: &str| {
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            digits.parse::<u64>().unwrap_or(0)
        };
        shown.sort_by_key(|(_, text)| std::cmp::Reverse(number(text)));
        let ids: Vec<&str> = shown.iter().map(|(id, _)| id.as_str()).collect();
        return Reply::judge_best(ids[0], &ids);
    }
    Reply::json(
        200,
        json!({
            "id": format!("cmpl-{}", call.seq), "object": "text_completion", "created": 1,
            "model": "gpt-instruct-2026", "system_fingerprint": "fp_x",
            "choices": [{"text": format!(" answer {}", call.seq), "index": 0,
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
        }),
    )
}

async fn post_completions(proxy: &Proxy, headers: &[(&str, &str)], body: Value) -> Answer {
    post_to(proxy, "/v1/completions", headers, body.to_string()).await
}

fn candidate_calls(mock: &MockUpstream) -> Vec<Call> {
    let calls = mock.calls().into_iter();
    calls.filter(|c| c.path() == "/v1/completions").collect()
}

#[tokio::test]
async fn the_n_best_of_n_candidates_come_back_ranked_with_usage_summed() {
    let mock = MockUpstream::with_handler(ranked_by_number).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "gpt-instruct", "prompt": "Say something", "n": 2,
                      "max_tokens": 5, "echo": false});
    let answer = post_completions(&proxy, &[("x-best-of-n", "4")], body).await;
    answer.expect_ok();
    let reply = answer.json();
    assert_eq!(reply["object"], "text_completion");
    assert_eq!(reply["system_fingerprint"], "fp_x");
    let texts: Vec<&str> = reply["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, [" answer 3", " answer 2"]);
    assert_eq!(reply["choices"][1]["index"], 1);
    // Four candidates of 7 tokens and the judge's call.
    let usage = &reply["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 28, "{usage}");
    mock.wait_for_calls(5, WAIT).await;
    let calls = candidate_calls(&mock);
    assert_eq!(calls.len(), 4);
    for call in calls {
        let sent = call.json.unwrap();
        assert_eq!(
            (sent["n"].clone(), sent["max_tokens"].clone()),
            (json!(1), json!(5))
        );
    }
}

#[tokio::test]
async fn best_of_is_the_proxys_to_honour_only_when_asked() {
    let mock = MockUpstream::with_handler(ranked_by_number).await;
    // Off by default: `best_of` goes upstream as the client sent it.
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "gpt-instruct", "prompt": "Say something", "best_of": 3});
    let answer = post_completions(&proxy, &[], body.clone()).await;
    answer.expect_ok();
    assert!(answer.header("x-best-of-n").is_none());
    assert_eq!(mock.calls().len(), 1);
    assert_eq!(mock.calls()[0].json.as_ref().unwrap()["best_of"], 3);
    drop(proxy);

    let mock = MockUpstream::with_handler(ranked_by_number).await;
    let mut config = config_for(&mock);
    config.best_of_n.legacy_best_of = true;
    let proxy = start_proxy(config).await;
    let answer = post_completions(&proxy, &[], body.clone()).await;
    answer.expect_ok();
    assert_eq!(answer.header("x-best-of-n"), Some("3"));
    assert_eq!(answer.json()["choices"][0]["text"], " answer 2");
    mock.wait_for_calls(4, WAIT).await;
    let calls = candidate_calls(&mock);
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.json.as_ref().unwrap().get("best_of").is_none()));
    // A header N that disagrees with best_of is refused, naming both.
    let error = post_completions(&proxy, &[("x-best-of-n", "2")], body)
        .await
        .expect_error(400);
    assert!(error["message"].as_str().unwrap().contains("`best_of`"));
    let too_many = json!({"model": "m", "prompt": "x", "best_of": 99});
    let error = post_completions(&proxy, &[], too_many)
        .await
        .expect_error(400);
    assert_eq!(error["param"], "best_of");
    let several = json!({"model": "m", "prompt": ["a", "b"], "best_of": 3});
    let error = post_completions(&proxy, &[], several)
        .await
        .expect_error(400);
    assert_eq!(error["param"], "prompt");
}

#[tokio::test]
async fn streamed_the_choices_come_as_legacy_chunks_with_usage_and_done() {
    let mock = MockUpstream::with_handler(ranked_by_number).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "bon-3/gpt-instruct", "prompt": "Say something",
                      "stream": true, "stream_options": {"include_usage": true}});
    let answer = post_completions(&proxy, &[], body).await;
    answer.expect_ok();
    let text = String::from_utf8_lossy(&answer.body).to_string();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks = answer.sse_chunks();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, " answer 2");
    let usage = chunks.last().unwrap()["usage"].clone();
    assert!(usage["total_tokens"].as_u64().unwrap() > 21, "{usage}");
    for call in candidate_calls(&mock) {
        let sent = call.json.unwrap();
        assert_eq!(sent["stream"], false);
        assert!(sent.get("stream_options").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_a_best_of_answer() {
    let mock = MockUpstream::with_handler(ranked_by_number).await;
    let mut config = config_for(&mock);
    config.best_of_n.legacy_best_of = true;
    let proxy = start_proxy(config).await;
    let base_url = proxy.url("/v1");
    let script = r#"
import json, os
from openai import OpenAI

client = OpenAI(base_url=os.environ["BON_BASE_URL"], api_key="sk-client")
reply = client.completions.create(model="gpt-instruct", prompt="Say something", best_of=4, n=2)
print(json.dumps({"texts": [c.text for c in reply.choices], "total": reply.usage.total_tokens}))
"#;
    let output = tokio::task::spawn_blocking(move || {
        run_python(script, &[("BON_BASE_URL", base_url.as_str())])
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["texts"], json!([" answer 3", " answer 2"]));
    assert!(reply["total"].as_u64().unwrap() > 28, "{reply}");
}
