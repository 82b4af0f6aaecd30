//! Fusion (`x-best-of-n-mode: fuse`): a fuser model reads every candidate and writes the
//! answer. Through the real server against the mock upstream: what the fuser is asked, what the
//! client gets (the fuser's answer, usage of everything), the fallback when the fuser fails,
//! streaming, the cache, and the requests fuse mode refuses.

mod common;

use common::mock::{Call, MockUpstream, Reply, ReplyBody};
use common::*;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// The fuser's prompt asks for no verdict; the built-in one says this.
fn is_fuser(call: &Call) -> bool {
    call.is_judge() && call.prompt_text().contains("Write the single best reply")
}

/// True when the call asked for a streamed answer.
fn streamed(call: &Call) -> bool {
    call.json.as_ref().is_some_and(|b| b["stream"] == true)
}

/// Candidates answer `candidate K`, the fuser `FUSED ANSWER` (streamed when asked).
fn upstream(call: &Call) -> Reply {
    if is_fuser(call) && streamed(call) {
        return Reply::stream_completion(&["FUSED ", "ANSWER"], Duration::ZERO);
    }
    if is_fuser(call) {
        return Reply::completion("FUSED ANSWER");
    }
    if call.is_judge() {
        return Reply::judge_best("1", &[]);
    }
    Reply::completion(&format!("candidate {}", call.seq))
}

const FUSE: (&str, &str) = ("x-best-of-n-mode", "fuse");

async fn fused(proxy: &Proxy, extra: &[(&str, &str)], body: String) -> Answer {
    let mut headers = vec![("x-best-of-n", "3"), FUSE];
    headers.extend_from_slice(extra);
    post_chat(proxy, &headers, body).await
}

#[tokio::test]
async fn the_fuser_writes_the_answer_from_every_candidate() {
    let mock = MockUpstream::with_handler(upstream).await;
    let mut config = config_for(&mock);
    config.fuser.model = "fuser-model".into();
    let proxy = start_proxy(config).await;
    let body = json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "Plan a picnic"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "response_format": {"type": "text"},
        "vendor_field": 7,
    });
    let answer = fused(&proxy, &[("x-best-of-n-debug", "1")], body.to_string()).await;
    answer.expect_ok();
    assert_eq!(answer.content(), "FUSED ANSWER");
    assert_eq!(answer.header("x-best-of-n-mode"), Some("fuse"));
    assert!(
        answer.header("x-best-of-n-judge").is_none(),
        "no judge chose"
    );
    let usage = &answer.json()["usage"];
    assert_eq!(
        usage["total_tokens"],
        4 * 15,
        "three candidates and the fuser"
    );
    assert_eq!(
        answer.json()["best_of_n"]["usage"]["fuser"]["total_tokens"],
        15
    );

    let calls = mock.calls();
    let fuser: Vec<&Call> = calls.iter().filter(|c| is_fuser(c)).collect();
    assert_eq!(fuser.len(), 1, "one fuser call, no judge call");
    assert!(!calls.iter().any(|c| c.is_judge() && !is_fuser(c)));
    let request = fuser[0].json.as_ref().expect("JSON");
    assert_eq!(request["model"], "fuser-model");
    assert_eq!(request["tools"], body["tools"], "the client's tools travel");
    assert_eq!(request["response_format"], body["response_format"]);
    assert_eq!(request["vendor_field"], 7);
    assert_eq!(request["messages"].as_array().map(Vec::len), Some(1));
    let shown: Vec<String> = fuser[0]
        .judge_candidates()
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(shown.len(), 3, "every candidate is shown: {shown:?}");
    assert!(shown.iter().all(|t| t.starts_with("candidate ")));
    assert!(fuser[0].prompt_text().contains("Plan a picnic"));
}

#[tokio::test]
async fn a_failed_fuser_falls_back_to_a_candidate_and_says_why() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        if is_fuser(call) {
            return Reply::error(500, "fuser down", "server_error");
        }
        upstream(call)
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = fused(&proxy, &[("x-best-of-n-debug", "1")], chat_body("Q")).await;
    answer.expect_ok();
    assert_eq!(
        answer.header("x-best-of-n-fallback"),
        Some("first_ok (fuser_failed)")
    );
    assert!(
        answer.header("x-best-of-n-mode").is_none(),
        "nothing was fused"
    );
    let debug = answer.json()["best_of_n"].clone();
    let first = debug["candidates"][0]["content"].clone();
    assert_eq!(answer.json()["choices"][0]["message"]["content"], first);
    let failure = debug["judge"]["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("500"), "{failure}");
}

#[tokio::test]
async fn a_streaming_client_gets_the_fused_answer_as_sse() {
    // The fuser streams "FUSED " and "ANSWER"; the client reads them as they come.
    let mock = MockUpstream::with_handler(upstream).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "Q"}]});
    let answer = fused(&proxy, &[], body.to_string()).await;
    answer.expect_ok();
    let text: String = answer.streamed_content();
    assert_eq!(text, "FUSED ANSWER");
}

#[tokio::test]
async fn fused_answers_are_cached_apart_from_selected_ones() {
    let mock = MockUpstream::with_handler(upstream).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let selected = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Q")).await;
    assert_eq!(selected.header("x-cache"), Some("miss"));
    let first = fused(&proxy, &[], chat_body("Q")).await;
    assert_eq!(
        first.header("x-cache"),
        Some("miss"),
        "a fused answer is not a pick"
    );
    let calls = mock.calls().len();
    let again = fused(&proxy, &[], chat_body("Q")).await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    assert_eq!(again.content(), "FUSED ANSWER");
    assert_eq!(mock.calls().len(), calls, "a hit calls nothing");
}

#[tokio::test]
async fn fuse_mode_is_the_default_when_the_config_says_so_and_refuses_n() {
    let mock = MockUpstream::with_handler(upstream).await;
    let mut config = config_for(&mock);
    config.best_of_n.mode = bon_proxy::config::Mode::Fuse;
    let proxy = start_proxy(config).await;
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Q")).await;
    assert_eq!(answer.content(), "FUSED ANSWER");
    let select = [("x-best-of-n", "3"), ("x-best-of-n-mode", "select")];
    let answer = post_chat(&proxy, &select, chat_body("Q")).await;
    assert!(
        answer.content().starts_with("candidate "),
        "the header wins"
    );

    let two = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "Q"}]});
    let refused = post_chat(&proxy, &[("x-best-of-n", "3")], two.to_string()).await;
    let error = refused.expect_error(400);
    assert_eq!(error["param"], "n");
    let bad = [("x-best-of-n", "3"), ("x-best-of-n-mode", "blend")];
    let refused = post_chat(&proxy, &bad, chat_body("Q")).await;
    assert_eq!(refused.expect_error(400)["param"], "x-best-of-n-mode");
}

/// The fuser's stream: a role chunk, three content chunks `gap` apart, a usage chunk, `[DONE]`.
fn slow_fuser_stream(gap: Duration) -> Reply {
    let chunk = |delta: Value, usage: Value| {
        json!({"id": "chatcmpl-fuser", "object": "chat.completion.chunk", "created": 1,
            "model": "fuser", "choices": if usage.is_null() {
                json!([{"index": 0, "delta": delta, "finish_reason": null}]) } else { json!([]) },
            "usage": usage})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for part in ["one ", "two ", "three"] {
        events.push(chunk(json!({"content": part}), Value::Null));
    }
    let usage = json!({"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43});
    events.push(chunk(json!({}), usage));
    Reply::sse(events, gap)
}

/// Reads an SSE answer as it arrives: each data event with the time it came.
async fn read_live(proxy: &Proxy, body: Value) -> Vec<(Instant, String)> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-best-of-n", "3")
        .header("x-best-of-n-mode", "fuse")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = client().request(request).await.expect("answer");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut events = Vec::new();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("body").into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if let Some(data) = event.trim().strip_prefix("data: ") {
                events.push((Instant::now(), data.to_string()));
            }
        }
    }
    events
}

fn content_of(event: &str) -> Option<String> {
    let chunk: Value = serde_json::from_str(event).ok()?;
    chunk["choices"][0]["delta"]["content"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn a_streaming_client_reads_the_fusers_tokens_as_they_are_written() {
    let gap = Duration::from_millis(150);
    let mock = MockUpstream::with_handler(move |call: &Call| {
        if is_fuser(call) && streamed(call) {
            return slow_fuser_stream(gap);
        }
        upstream(call)
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Q"}]});
    let events = read_live(&proxy, body).await;
    let contents: Vec<(Instant, String)> = events
        .iter()
        .filter_map(|(at, e)| Some((*at, content_of(e)?)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let text: String = contents.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(text, "one two three");
    let (first, last) = (contents[0].0, contents[contents.len() - 1].0);
    assert!(
        last.duration_since(first) >= gap,
        "the first token came before the fuser finished, not with everything at the end"
    );
    // The usage chunk counts the three candidates (15 each) and the fuser (43).
    let usage: Value = events
        .iter()
        .filter_map(|(_, e)| serde_json::from_str::<Value>(e).ok())
        .find(|c| !c["usage"].is_null())
        .expect("a usage chunk")["usage"]
        .clone();
    assert_eq!(usage["total_tokens"], 3 * 15 + 43);
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    // The fuser was asked to stream, with usage, even though the candidates were not.
    let fuser = mock
        .calls()
        .into_iter()
        .find(is_fuser)
        .expect("a fuser call");
    let asked = fuser.json.expect("JSON");
    assert_eq!(asked["stream"], true);
    assert_eq!(asked["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_client_that_did_not_ask_for_usage_gets_none_from_the_fused_stream() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        if is_fuser(call) && streamed(call) {
            return slow_fuser_stream(Duration::ZERO);
        }
        upstream(call)
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Q"}]});
    let events = read_live(&proxy, body).await;
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|(_, e)| serde_json::from_str(e).ok())
        .collect();
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage key at all, as from any stream that did not ask for usage"
    );
    assert!(chunks
        .iter()
        .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())));
}

#[tokio::test]
async fn a_fuser_stream_that_breaks_off_ends_with_an_error_event() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        if is_fuser(call) && streamed(call) {
            let delay = Duration::from_secs(5);
            return Reply::stream_completion(&["partial"], delay);
        }
        upstream(call)
    })
    .await;
    let mut config = config_for(&mock);
    config.fuser.timeout = Duration::from_millis(300);
    let proxy = start_proxy(config).await;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Q"}]});
    let started = Instant::now();
    let events = read_live(&proxy, body).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the fuser's deadline held"
    );
    let error = events
        .iter()
        .filter_map(|(_, e)| serde_json::from_str::<Value>(e).ok())
        .find(|c| c.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "fuser_failed");
}

/// A fuser stream of `parts` as content chunks, events ended by `end`, with or without `[DONE]`
/// and without a usage chunk.
fn raw_stream(parts: &[&str], end: &str, done: bool) -> Reply {
    let mut events: Vec<String> = parts
        .iter()
        .map(|part| {
            let chunk = json!({"id": "f", "object": "chat.completion.chunk", "created": 1,
                "model": "fuser", "choices": [{"index": 0, "delta": {"content": part},
                "finish_reason": null}]});
            format!("data: {chunk}{end}{end}")
        })
        .collect();
    if done {
        events.push(format!("data: [DONE]{end}{end}"));
    }
    let mut reply = Reply::sse(Vec::new(), Duration::ZERO);
    let chunks = events.into_iter().map(|e| (Duration::ZERO, Bytes::from(e)));
    reply.body = ReplyBody::Chunks(chunks.collect());
    reply
}

async fn fused_stream_with(fuser: Reply, include_usage: bool) -> Vec<Value> {
    let mock = MockUpstream::with_handler(move |call: &Call| {
        if is_fuser(call) && streamed(call) {
            return fuser.clone();
        }
        upstream(call)
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "stream": true,
        "stream_options": {"include_usage": include_usage},
        "messages": [{"role": "user", "content": "Q"}]});
    read_live(&proxy, body)
        .await
        .into_iter()
        .map(|(_, e)| serde_json::from_str(&e).unwrap_or(Value::String(e)))
        .collect()
}

#[tokio::test]
async fn a_fuser_writing_crlf_events_is_relayed_whole() {
    let events = fused_stream_with(raw_stream(&["one ", "two"], "\r\n", true), false).await;
    let text: String = events
        .iter()
        .filter_map(|e| content_of(&e.to_string()))
        .collect();
    assert_eq!(text, "one two");
    assert_eq!(events.last(), Some(&Value::String("[DONE]".into())));
}

#[tokio::test]
async fn a_fuser_stream_without_done_is_reported_as_cut_short() {
    let events = fused_stream_with(raw_stream(&["partial"], "\n", false), false).await;
    let error = events
        .iter()
        .find(|e| e.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "fuser_failed");
}

#[tokio::test]
async fn the_candidates_usage_is_reported_even_when_the_fuser_sends_none() {
    let events = fused_stream_with(raw_stream(&["answer"], "\n", true), true).await;
    let usage = events
        .iter()
        .find(|e| e.get("usage").is_some_and(|u| !u.is_null()))
        .expect("a usage chunk");
    assert_eq!(usage["usage"]["total_tokens"], 3 * 15);
}
