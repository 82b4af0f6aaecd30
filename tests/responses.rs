//! Best-of-N on the Responses API (`POST /v1/responses`) through the real server against the
//! mock upstream: what goes upstream, what comes back (the winner as the upstream sent it,
//! usage summed), the typed event stream, and the official Python SDK's `responses.create`
//! and `responses.stream` reading it all.

mod common;

use std::time::Duration;

use common::mock::{Call, MockUpstream, Reply};
use common::python::run_python;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// A finished Responses object whose one message says `text`.
fn response_object(seq: usize, text: &str) -> Value {
    json!({
        "id": format!("resp_{seq}"), "object": "response", "created_at": 1_700_000_000,
        "status": "completed", "error": null, "incomplete_details": null, "model": "gpt-test-2026",
        "output": [{"type": "message", "id": format!("msg_{seq}"), "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": true, "store": true, "tools": [], "vendor_extra": {"seq": seq},
        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 2},
                  "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 1},
                  "total_tokens": 15}
    })
}

/// Responses calls answer "plain answer K", the second to arrive (of each best-of-3 request:
/// three candidates and a judge call) "the WINNER answer"; the judge (a chat call) names
/// whichever candidate holds the winner.
fn winner_second(call: &Call) -> Reply {
    if call.path().ends_with("/chat/completions") {
        let id = call
            .judge_candidates()
            .into_iter()
            .find(|(_, text)| text.contains("WINNER"))
            .map(|(id, _)| id)
            .unwrap_or_else(|| "1".into());
        return Reply::judge_best(&id, &[]);
    }
    if call.path().ends_with("/responses") {
        let text = match call.seq % 4 {
            1 => "the WINNER answer".to_string(),
            k => format!("plain answer {k}"),
        };
        return Reply::json(200, response_object(call.seq, &text));
    }
    Reply::error(404, "no route", "not_found")
}

async fn post_responses(proxy: &Proxy, headers: &[(&str, &str)], body: Value) -> Answer {
    post_to(proxy, "/v1/responses", headers, body.to_string()).await
}

fn candidate_calls(mock: &MockUpstream) -> Vec<Call> {
    let calls = mock.calls().into_iter();
    calls.filter(|c| c.path().ends_with("/responses")).collect()
}

#[tokio::test]
async fn the_winner_comes_back_as_the_upstream_sent_it_with_usage_summed() {
    let mock = MockUpstream::with_handler(winner_second).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "gpt-test", "instructions": "Be brief.", "input": "Why?",
                      "tools": [{"type": "function", "name": "lookup", "parameters": {}}],
                      "metadata": {"app": "x"}, "best_of_n_debug": true});
    let answer = post_responses(&proxy, &[("x-best-of-n", "3")], body).await;
    answer.expect_ok();
    let reply = answer.json();
    assert_eq!(reply["object"], "response");
    assert_eq!(
        reply["output"][0]["content"][0]["text"],
        "the WINNER answer"
    );
    // The winner's own fields, unknown ones included, as the upstream sent them.
    assert_eq!(reply["id"], "resp_1");
    assert_eq!(reply["vendor_extra"]["seq"], 1);
    let usage = &reply["usage"];
    // Three candidates (10 in, 5 out, 2 cached, 1 reasoning each) and the judge's chat call.
    assert!(usage["input_tokens"].as_u64().unwrap() > 30, "{usage}");
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 6);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 3);
    let total = usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"], total);
    assert_eq!(reply["best_of_n"]["n"], 3);
    assert_eq!(answer.header("x-best-of-n-selected"), Some("1"));
    mock.wait_for_calls(4, WAIT).await;
    let calls = candidate_calls(&mock);
    assert_eq!(calls.len(), 3);
    for call in calls {
        let sent = call.json.unwrap();
        assert_eq!(sent["input"], "Why?");
        assert_eq!(sent["tools"][0]["name"], "lookup");
        assert_eq!(sent["metadata"]["app"], "x");
        assert!(sent.get("best_of_n_debug").is_none() && sent.get("stream").is_none());
        // `store` is the client's choice: candidates are stored as the client asked (see the
        // README), so the winner's id works as the next request's previous_response_id.
        assert!(sent.get("store").is_none());
    }
    // The judge read the conversation: the instructions and the input.
    let judge = mock
        .calls()
        .into_iter()
        .find(|c| c.path().ends_with("/chat/completions"))
        .unwrap();
    let prompt = judge.prompt_text();
    assert!(
        prompt.contains("Be brief.") && prompt.contains("Why?"),
        "{prompt}"
    );
}

#[tokio::test]
async fn streamed_the_winner_is_replayed_as_typed_events() {
    let mock = MockUpstream::with_handler(winner_second).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "bon-3/gpt-test", "input": "Why?", "stream": true});
    let answer = post_responses(&proxy, &[], body).await;
    answer.expect_ok();
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let text = String::from_utf8_lossy(&answer.body).to_string();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    for kind in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "the WINNER answer");
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let completed = &events[events.len() - 1]["response"];
    assert!(completed["usage"]["total_tokens"].as_u64().unwrap() > 45);
    // Every candidate call was made whole, not streamed.
    for call in candidate_calls(&mock) {
        assert_eq!(call.json.unwrap()["stream"], false);
    }
}

#[tokio::test]
async fn function_calls_are_judged_as_json_and_returned_as_items() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        if call.path().ends_with("/chat/completions") {
            let id = call
                .judge_candidates()
                .into_iter()
                .find(|(_, text)| text.contains("get_weather") && text.contains("Paris"))
                .map(|(id, _)| id)
                .unwrap_or_else(|| "1".into());
            return Reply::judge_best(&id, &[]);
        }
        let mut object = response_object(call.seq, "I am not sure.");
        if call.seq == 0 {
            object["output"] = json!([{"type": "function_call", "id": "fc_1", "call_id": "call_1",
                "name": "get_weather", "arguments": "{\"city\":\"Paris\"}", "status": "completed"}]);
        }
        Reply::json(200, object)
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "gpt-test", "input": "Weather in Paris?",
                      "tools": [{"type": "function", "name": "get_weather", "parameters": {}}]});
    let answer = post_responses(&proxy, &[("x-best-of-n", "2")], body).await;
    answer.expect_ok();
    let reply = answer.json();
    assert_eq!(reply["output"][0]["type"], "function_call");
    assert_eq!(reply["output"][0]["arguments"], "{\"city\":\"Paris\"}");
}

#[tokio::test]
async fn what_only_chat_can_do_and_bad_input_are_refused_clearly() {
    let mock = MockUpstream::with_handler(winner_second).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let on = [("x-best-of-n", "2")];
    let error = post_responses(&proxy, &on, json!({"model": "m", "input": []}))
        .await
        .expect_error(400);
    assert_eq!(error["param"], "input");
    let error = post_responses(&proxy, &on, json!({"input": "hi"}))
        .await
        .expect_error(400);
    assert_eq!(error["param"], "model");
    let fuse = [("x-best-of-n", "2"), ("x-best-of-n-mode", "fuse")];
    let error = post_responses(&proxy, &fuse, json!({"model": "m", "input": "hi"}))
        .await
        .expect_error(400);
    assert_eq!(error["param"], "x-best-of-n-mode");
    let background = json!({"model": "m", "input": "hi", "background": true});
    let error = post_responses(&proxy, &on, background)
        .await
        .expect_error(400);
    assert_eq!(error["param"], "background");
    assert!(mock.calls().is_empty(), "nothing refused went upstream");
}

#[tokio::test]
async fn an_upstream_refusal_of_every_candidate_comes_back_as_it_was() {
    let mock = MockUpstream::with_handler(|_: &Call| {
        Reply::error(404, "The model `nope` does not exist", "model_not_found")
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = post_responses(
        &proxy,
        &[("x-best-of-n", "2")],
        json!({"model": "nope", "input": "hi"}),
    )
    .await;
    let error = answer.expect_error(404);
    assert_eq!(error["code"], "model_not_found");
}

#[tokio::test]
async fn without_a_switch_a_responses_call_passes_through_untouched() {
    let mock = MockUpstream::with_handler(winner_second).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = "{\"model\":\"gpt-test\",  \"input\":\"hi\", \"store\":false}";
    let request = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/v1/responses"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    let answer = send(request).await;
    answer.expect_ok();
    assert_eq!(mock.calls().len(), 1);
    assert_eq!(mock.calls()[0].body, body.as_bytes());
    assert!(answer.header("x-best-of-n").is_none());
}

/// Runs a Python SDK script against `proxy` off the async runtime.
async fn sdk_script(proxy: &Proxy, script: &str) -> String {
    let base_url = proxy.url("/v1");
    let script = script.to_string();
    let output = tokio::task::spawn_blocking(move || {
        run_python(&script, &[("BON_BASE_URL", base_url.as_str())])
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "script failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_creates_and_streams_responses_through_best_of_n() {
    let mock = MockUpstream::with_handler(winner_second).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let out = sdk_script(
        &proxy,
        r#"
import json, os
from openai import OpenAI

client = OpenAI(base_url=os.environ["BON_BASE_URL"], api_key="sk-client")
reply = client.responses.create(model="bon-3/gpt-test", input="Why?")
print(json.dumps({"text": reply.output_text, "total": reply.usage.total_tokens,
                  "cached": reply.usage.input_tokens_details.cached_tokens}))
"#,
    )
    .await;
    let created: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(created["text"], "the WINNER answer");
    assert!(created["total"].as_u64().unwrap() > 45, "{created}");
    assert_eq!(created["cached"], 6);

    let out = sdk_script(
        &proxy,
        r#"
import json, os
from openai import OpenAI

client = OpenAI(base_url=os.environ["BON_BASE_URL"], api_key="sk-client")
deltas = []
with client.responses.stream(model="gpt-test", input="Why not?",
                             extra_headers={"x-best-of-n": "3"}) as stream:
    for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
    final = stream.get_final_response()
print(json.dumps({"deltas": "".join(deltas), "text": final.output_text,
                  "total": final.usage.total_tokens}))
"#,
    )
    .await;
    let streamed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(streamed["deltas"], "the WINNER answer");
    assert_eq!(streamed["text"], "the WINNER answer");
    assert!(streamed["total"].as_u64().unwrap() > 45, "{streamed}");
}
