//! Best-of-N for streaming clients and full OpenAI fidelity: SSE answers read by a real SDK,
//! keep-alive while judging, errors after the stream began, cancellation when the client goes
//! away, `n` ranking, tool calls, JSON mode and multimodal requests.

mod common;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::CreateChatCompletionRequest;
use async_openai::Client;
use bytes::Bytes;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use futures_util::StreamExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

const WINNER_TEXT: &str = "A balanced diet matters because your body needs protein, fats, \
carbohydrates, vitamins and minerals in the right amounts; missing any of them shows up as low \
energy, weaker immunity and, over years, chronic disease.";

fn sdk(proxy: &Proxy, n: &str) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(proxy.url("/v1"))
        .with_api_key("sk-client")
        .with_header("x-best-of-n", n.to_string())
        .unwrap();
    Client::with_config(config)
}

fn request(body: Value) -> CreateChatCompletionRequest {
    serde_json::from_value(body).expect("a valid SDK request")
}

/// Candidates answer differently; the one with `marker` in its text is the winner.
fn judge_picks(marker: &'static str, winner: Reply) -> impl Fn(&Call) -> Reply + Send + Sync {
    move |call: &Call| {
        if call.is_judge() {
            let id = call
                .judge_candidates()
                .into_iter()
                .find(|(_, text)| text.contains(marker))
                .map(|(id, _)| id)
                .unwrap_or_else(|| "1".into());
            return Reply::judge_best(&id, &[]);
        }
        if call.seq == 1 {
            winner.clone()
        } else {
            Reply::completion(&format!("short answer {}", call.seq))
        }
    }
}

#[tokio::test]
async fn sdk_streams_the_winner_with_usage() {
    let mock = MockUpstream::with_handler(judge_picks(
        "balanced diet matters",
        Reply::completion(WINNER_TEXT),
    ))
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let mut stream = sdk(&proxy, "3")
        .chat()
        .create_stream(request(json!({
            "model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Why is a balanced diet important?"}]
        })))
        .await
        .unwrap();
    let mut text = String::new();
    let mut content_chunks = 0;
    let mut ids = Vec::new();
    let mut usage = None;
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        ids.push(chunk.id.clone());
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            usage = Some(u);
        }
        for choice in chunk.choices {
            if let Some(piece) = choice.delta.content.filter(|p| !p.is_empty()) {
                text.push_str(&piece);
                content_chunks += 1;
            }
            finish = finish.or(choice.finish_reason);
        }
    }
    assert_eq!(text, WINNER_TEXT);
    assert!(
        content_chunks > 3,
        "content came in {content_chunks} deltas"
    );
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id throughout");
    assert!(finish.is_some());
    assert_eq!(usage.expect("usage chunk").total_tokens, 60);
    let candidates: Vec<Call> = mock.calls().into_iter().filter(|c| !c.is_judge()).collect();
    assert_eq!(candidates.len(), 3);
    assert!(
        candidates
            .iter()
            .all(|c| c.json.as_ref().unwrap()["stream"] == false),
        "candidates are not streamed"
    );
    assert!(candidates
        .iter()
        .all(|c| c.json.as_ref().unwrap().get("stream_options").is_none()));
}

#[tokio::test]
async fn raw_stream_is_spec_shaped_without_usage_unless_asked() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.header("x-best-of-n"), Some("2"));
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks = answer.sse_chunks();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c.get("usage").is_none()));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn tool_calls_stream_and_reassemble_in_the_sdk() {
    let tool_reply = Reply::json(
        200,
        json!({
            "id": "chatcmpl-tool", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
                "role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                    "id": "call_abc", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris, France\",\"unit\":\"celsius\"}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }),
    );
    let mock = MockUpstream::with_handler(judge_picks("get_weather", tool_reply)).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let mut stream = sdk(&proxy, "3")
        .chat()
        .create_stream(request(json!({
            "model": "m", "stream": true,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
        })))
        .await
        .unwrap();
    let (mut id, mut name, mut arguments, mut finish) = (None, None, String::new(), None);
    while let Some(chunk) = stream.next().await {
        for choice in chunk.unwrap().choices {
            for call in choice.delta.tool_calls.unwrap_or_default() {
                assert_eq!(call.index, 0);
                id = id.or(call.id);
                if let Some(function) = call.function {
                    name = name.or(function.name);
                    arguments.push_str(&function.arguments.unwrap_or_default());
                }
            }
            finish = finish.or(choice.finish_reason);
        }
    }
    assert_eq!(id.as_deref(), Some("call_abc"));
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert_eq!(
        arguments,
        "{\"location\":\"Paris, France\",\"unit\":\"celsius\"}"
    );
    assert_eq!(format!("{:?}", finish.unwrap()), "ToolCalls");
    let judge = mock.calls().into_iter().find(Call::is_judge).unwrap();
    assert!(
        judge.prompt_text().contains("[tool calls]"),
        "the judge sees tool calls as JSON"
    );
    assert!(judge.prompt_text().contains("get_weather"));
}

#[tokio::test]
async fn tool_results_in_the_conversation_reach_candidates_and_judge() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}
    ]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    let calls = mock.wait_for_calls(3, WAIT).await;
    for call in calls.iter().filter(|c| !c.is_judge()) {
        assert_eq!(call.json.as_ref().unwrap()["messages"], body["messages"]);
    }
    let judge = calls.iter().find(|c| c.is_judge()).unwrap().prompt_text();
    assert!(
        judge.contains("tool (result of call_1)") && judge.contains("18C and sunny"),
        "{judge}"
    );
    assert!(judge.contains("get_weather"), "{judge}");
}

#[tokio::test]
async fn n_returns_the_best_candidates_in_rank_order() {
    let mock = MockUpstream::with_handler(|call| {
        if call.is_judge() {
            // Rank shown ids by the number in each candidate's text, highest first.
            let mut shown = call.judge_candidates();
            shown.sort_by_key(|(_, text)| {
                std::cmp::Reverse(text.trim().parse::<u32>().unwrap_or(0))
            });
            let ids: Vec<&str> = shown.iter().map(|(id, _)| id.as_str()).collect();
            return Reply::judge_best(ids[0], &ids);
        }
        Reply::completion(&(call.seq * 10).to_string())
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]});
    let answer = post_chat(
        &proxy,
        &[("x-best-of-n", "4"), ("x-best-of-n-debug", "1")],
        body.to_string(),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let json = answer.json();
    let choices = json["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[0]["message"]["content"], "30");
    assert_eq!(choices[1]["message"]["content"], "20");
    assert_eq!(json["best_of_n"]["ranking_source"], "judge");
    for call in mock.calls().iter().filter(|c| !c.is_judge()) {
        assert_eq!(
            call.json.as_ref().unwrap()["n"],
            1,
            "each candidate asks for one choice"
        );
    }
}

#[tokio::test]
async fn n_with_only_a_best_verdict_fills_in_generation_order_and_says_so() {
    let mock = MockUpstream::with_handler(|call| {
        if call.is_judge() {
            return Reply::judge_best("1", &[]);
        }
        Reply::completion(&format!("answer {}", call.seq))
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "n": 3, "messages": [{"role": "user", "content": "x"}]});
    let answer = post_chat(
        &proxy,
        &[("x-best-of-n", "3"), ("x-best-of-n-debug", "1")],
        body.to_string(),
    )
    .await;
    let json = answer.json();
    assert_eq!(json["choices"].as_array().unwrap().len(), 3);
    assert_eq!(
        json["best_of_n"]["ranking_source"],
        "best_then_generation_order"
    );
    let ranking: Vec<u64> = json["best_of_n"]["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let winner = ranking[0];
    let rest: Vec<u64> = (0..3).filter(|i| *i != winner).collect();
    assert_eq!(ranking[1..], rest[..]);
}

#[tokio::test]
async fn n_larger_than_best_of_n_is_a_400() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "n": 4, "messages": [{"role": "user", "content": "x"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], body.to_string()).await;
    assert_eq!(answer.expect_error(400)["param"], "n");
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn json_mode_disqualifies_candidates_that_are_not_json() {
    let mock = MockUpstream::with_handler(|call| {
        if call.is_judge() {
            return Reply::judge_best("1", &[]);
        }
        match call.seq {
            0 | 2 => Reply::completion("Sure! Here is your JSON: {\"a\": 1}"),
            _ => Reply::completion(&format!("{{\"answer\": {}}}", call.seq)),
        }
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "JSON please"}]});
    let answer = post_chat(
        &proxy,
        &[("x-best-of-n", "4"), ("x-best-of-n-debug", "1")],
        body.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let content = answer.content();
    assert!(
        serde_json::from_str::<Value>(&content).is_ok(),
        "the answer is JSON: {content}"
    );
    let disqualified = answer.header("x-best-of-n-disqualified").unwrap();
    assert_eq!(disqualified.split(',').count(), 2);
    let scores = answer.header("x-best-of-n-scores").unwrap();
    assert_eq!(scores.matches('-').count(), 2, "{scores}");
    let judge = mock.calls().into_iter().find(Call::is_judge).unwrap();
    assert_eq!(
        judge.judge_candidates().len(),
        2,
        "only valid JSON is judged"
    );
    let statuses = answer.json()["best_of_n"]["candidates"].to_string();
    assert_eq!(statuses.matches("\"disqualified\"").count(), 2);
}

#[tokio::test]
async fn json_mode_with_no_valid_candidate_falls_back() {
    let mock = MockUpstream::with_handler(|_| Reply::completion("not json at all")).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "messages": [{"role": "user", "content": "JSON please"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("x-best-of-n-fallback"),
        Some("first_ok (no_valid_json)")
    );
    assert!(
        mock.calls().iter().all(|c| !c.is_judge()),
        "nothing valid to judge"
    );
}

#[tokio::test]
async fn slow_answers_get_keepalive_comments_then_the_answer() {
    let mock = MockUpstream::with_handler(|call| {
        if call.is_judge() {
            Reply::judge_best("1", &[])
        } else {
            Reply::completion("worth the wait").with_delay(Duration::from_millis(450))
        }
    })
    .await;
    let mut config = config_for(&mock);
    config.best_of_n.stream_keepalive = Duration::from_millis(100);
    let proxy = start_proxy(config).await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    let keepalives = text.matches(": keep-alive\n\n").count();
    assert!(
        keepalives >= 3,
        "{keepalives} keep-alive comments in: {text}"
    );
    let first_data = text.find("data: ").unwrap();
    assert!(
        text[..first_data].contains(": keep-alive"),
        "keep-alives come before the answer"
    );
    assert!(
        text.contains(": x-best-of-n-selected: "),
        "selection reported as a comment"
    );
    assert!(text.contains("worth the wait") || text.contains("worth"));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn failure_after_commit_is_an_sse_error_event() {
    let mock = MockUpstream::with_handler(|_| {
        Reply::error(500, "the model crashed", "server_error")
            .with_delay(Duration::from_millis(300))
    })
    .await;
    let mut config = config_for(&mock);
    config.best_of_n.stream_keepalive = Duration::from_millis(100);
    let proxy = start_proxy(config).await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], body.to_string()).await;
    assert_eq!(answer.status, 200, "the stream was already committed");
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    let event = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .find(|e| e.contains("\"error\""))
        .unwrap_or_else(|| panic!("no error event in {text}"));
    let error: Value = serde_json::from_str(event).unwrap();
    assert_eq!(error["error"]["code"], "all_candidates_failed");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the model crashed"));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn failure_before_commit_keeps_its_status() {
    let mock =
        MockUpstream::with_handler(|_| Reply::error(404, "no such model", "model_not_found")).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body =
        json!({"model": "nope", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], body.to_string()).await;
    assert_eq!(answer.expect_error(404)["code"], "model_not_found");
}

/// Sends a best-of-N request, reads nothing, and hangs up after `after`.
async fn hang_up_after(proxy: &Proxy, body: Value, after: Duration) {
    let request = Request::post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-best-of-n", "3")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let pending = client().request(request);
    let _ = tokio::time::timeout(after, async {
        if let Ok(response) = pending.await {
            // Streaming: the head arrives; keep reading until the timeout drops everything.
            let mut body = response.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        }
    })
    .await;
}

#[tokio::test]
async fn client_disconnect_cancels_every_upstream_call() {
    for stream in [false, true] {
        let mock = MockUpstream::with_handler(|_| {
            Reply::completion("slow").with_delay(Duration::from_secs(10))
        })
        .await;
        let mut config = config_for(&mock);
        config.best_of_n.stream_keepalive = Duration::from_millis(100);
        let proxy = start_proxy(config).await;
        let body =
            json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}]});
        hang_up_after(&proxy, body, Duration::from_millis(400)).await;
        let calls = mock.wait_for_calls(3, WAIT).await;
        assert_eq!(calls.len(), 3);
        assert!(
            calls.iter().all(|c| c.aborted),
            "stream={stream}: every candidate call was cancelled"
        );
        let started = calls.iter().map(|c| c.started).max().unwrap();
        let ended = calls.iter().filter_map(|c| c.finished).max().unwrap();
        assert!(
            ended - started < Duration::from_secs(5),
            "cancelled long before the 10 s answer"
        );
    }
}

#[tokio::test]
async fn multimodal_parts_pass_to_candidates_and_the_judge_sees_a_placeholder() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let content = json!([
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    ]);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    let calls = mock.wait_for_calls(3, WAIT).await;
    for call in calls.iter().filter(|c| !c.is_judge()) {
        assert_eq!(
            call.json.as_ref().unwrap()["messages"][0]["content"],
            content
        );
    }
    let judge = calls.iter().find(|c| c.is_judge()).unwrap().prompt_text();
    assert!(
        judge.contains("What is in this picture?\n[image]"),
        "{judge}"
    );
    assert!(
        !judge.contains("iVBORw0KGgo"),
        "image data is not sent to the judge"
    );
}
