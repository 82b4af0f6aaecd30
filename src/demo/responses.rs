//! `POST /v1/responses`: the Responses API, answered by the chat endpoint's generator.
//!
//! The request's conversation (as [`crate::openai::responses::conversation`] reads it for the
//! judge) is put to the chat generator as a one-choice chat request, so answers, judge verdicts
//! and tool calls follow the same rules as `/v1/chat/completions`: the first `function` tool
//! is called when the last user message mentions "weather", and `text.format` `json_object` or
//! `json_schema` gets a small JSON object. The one answer becomes a `message` item, or a
//! `function_call` item per tool call; `usage` is filled (approximate, as for chat).
//! `stream: true` replays the finished response with [`crate::openai::responses::events`].

use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::chat::{answers, completion, parse_chat, State};
use super::generate::{approx_tokens, unix_now};
use super::sse::sse_response;
use super::wire::*;
use crate::error::ApiError;
use crate::openai::{responses as api, RequestMessage};

pub(super) async fn responses(state: &State, request: &Value) -> Response<Body> {
    let Some(request) = request.as_object() else {
        return bad_request("The request body must be a JSON object.");
    };
    let messages = match api::conversation(request) {
        Ok(messages) => messages,
        Err(error) => return api_error(&error),
    };
    let chat_request = chat_request(request, &messages);
    let Some(chat) = parse_chat(&chat_request) else {
        return bad_request("'input' could not be read as a conversation.");
    };
    let call = state.counter.fetch_add(1, Ordering::Relaxed);
    // The chat endpoint's own completion, so tool-call ids and arguments are the same as there.
    let answer = completion(json!({}), &answers(state, &chat, call), Value::Null, None);
    let message = &answer["choices"][0]["message"];
    let usage = usage(&messages, message);
    let response = response_object(request, call, output_items(message, call), usage);
    let latency = state.options.latency;
    if request.get("stream") == Some(&Value::Bool(true)) {
        return sse_response(api::events(&response), latency);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    json_response(StatusCode::OK, &response)
}

/// The proxy's error type in OpenAI's shape, `param` included.
pub(super) fn api_error(error: &ApiError) -> Response<Body> {
    json_response(error.status, &json!({"error": error.to_object()}))
}

/// The chat request the generator reads: the conversation, the first function tool in chat's
/// shape (Responses tools are flat: `{"type": "function", "name": …}`), the JSON mode.
fn chat_request(request: &Map<String, Value>, messages: &[RequestMessage]) -> Value {
    let mut chat = json!({"model": request.get("model"), "messages": messages, "n": 1});
    let tools = request.get("tools").and_then(Value::as_array);
    let function = |tool: &&Value| tool.get("type").and_then(Value::as_str) == Some("function");
    if let Some(tool) = tools.into_iter().flatten().find(function) {
        let name = tool.get("name").cloned().unwrap_or(Value::Null);
        chat["tools"] = json!([{"type": "function", "function": {"name": name}}]);
    }
    let format = request.get("text").and_then(|text| text.get("format"));
    if let Some(kind) = format.and_then(|f| f.get("type")) {
        chat["response_format"] = json!({"type": kind});
    }
    chat
}

/// The chat message as Responses output items: its tool calls, or one text message.
fn output_items(message: &Value, call: u64) -> Vec<Value> {
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        let item = |(at, tool_call): (usize, &Value)| {
            let function = &tool_call["function"];
            json!({"type": "function_call", "id": format!("fc_demo_{call:x}_{at}"),
                "call_id": tool_call["id"], "name": function["name"],
                "arguments": function["arguments"], "status": "completed"})
        };
        return calls.iter().enumerate().map(item).collect();
    }
    let text = json!({"type": "output_text", "text": message["content"], "annotations": [],
        "logprobs": []});
    vec![
        json!({"type": "message", "id": format!("msg_demo_{call:x}"), "status": "completed",
        "role": "assistant", "content": [text]}),
    ]
}

/// Approximate usage, counted as the chat endpoint counts: a quarter of the text's bytes.
fn usage(messages: &[RequestMessage], message: &Value) -> Value {
    let prompt: String = messages
        .iter()
        .map(RequestMessage::text_for_judge)
        .collect();
    let input = approx_tokens(&prompt);
    let output = match message.get("tool_calls").and_then(Value::as_array) {
        Some(calls) => calls
            .iter()
            .map(|c| approx_tokens(&c["function"].to_string()))
            .sum(),
        None => approx_tokens(message["content"].as_str().unwrap_or_default()),
    };
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output})
}

/// A completed Responses object, echoing the request's settings as OpenAI does.
fn response_object(
    request: &Map<String, Value>,
    call: u64,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let echo = |key: &str, default: Value| request.get(key).cloned().unwrap_or(default);
    let now = unix_now();
    json!({"id": format!("resp_demo_{call:x}"), "object": "response", "created_at": now,
        "status": "completed", "completed_at": now, "error": null, "incomplete_details": null,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "model": echo("model", json!("demo")), "output": output,
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": echo("previous_response_id", Value::Null),
        "reasoning": echo("reasoning", json!({"effort": null, "summary": null})),
        "store": echo("store", json!(true)), "temperature": echo("temperature", json!(1.0)),
        "text": echo("text", json!({"format": {"type": "text"}})),
        "tool_choice": echo("tool_choice", json!("auto")), "tools": echo("tools", json!([])),
        "top_p": echo("top_p", json!(1.0)), "truncation": echo("truncation", json!("disabled")),
        "usage": usage, "user": echo("user", Value::Null),
        "metadata": echo("metadata", json!({}))})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::DemoOptions;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicU64;

    fn state() -> State {
        State {
            options: DemoOptions::default(),
            counter: AtomicU64::new(0),
        }
    }

    /// Status, content type and body text of an answer.
    async fn send(request: Value) -> (u16, String, String) {
        let response = responses(&state(), &request).await;
        let status = response.status().as_u16();
        let kind = response.headers()[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, kind, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn post(request: Value) -> Value {
        let (status, _, body) = send(request).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    #[tokio::test]
    async fn answers_with_a_message_and_usage() {
        let request = json!({"model": "m1", "instructions": "Be brief.",
            "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "How do I speed up my build?"}]}]});
        let response = post(request).await;
        assert_eq!(
            (&response["object"], &response["status"]),
            (&json!("response"), &json!("completed"))
        );
        assert_eq!(response["model"], "m1");
        assert!(response["id"].as_str().unwrap().starts_with("resp_demo_"));
        let item = &response["output"][0];
        assert_eq!(
            (&item["type"], &item["role"]),
            (&json!("message"), &json!("assistant"))
        );
        let text = item["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("speed up my build"), "{text}");
        let usage = &response["usage"];
        let sum =
            usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap();
        assert_eq!(usage["total_tokens"], sum);
        let view = api::to_completion(&response).unwrap();
        assert_eq!(view.choices[0].content(), Some(text));
    }

    #[tokio::test]
    async fn a_weather_question_with_tools_gets_a_function_call() {
        let tools = json!([{"type": "web_search"}, {"type": "function", "name": "lookup",
            "parameters": {}}]);
        let request = json!({"model": "demo", "tools": tools, "input": "What's the WEATHER like?"});
        let response = post(request.clone()).await;
        let item = &response["output"][0];
        assert_eq!(
            (&item["type"], &item["name"]),
            (&json!("function_call"), &json!("lookup"))
        );
        assert!(item["call_id"].as_str().unwrap().starts_with("call_demo_"));
        let arguments = item["arguments"].as_str().unwrap();
        assert!(!arguments.is_empty());
        let view = api::to_completion(&response).unwrap();
        assert_eq!(view.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let mut streamed = request;
        streamed["stream"] = json!(true);
        let (_, _, body) = send(streamed).await;
        let events = events(&body);
        let deltas = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta");
        let joined: String = deltas.map(|e| e["delta"].as_str().unwrap()).collect();
        assert_eq!(joined, arguments);
    }

    /// The `data` of every event of a Responses stream, checking the `event:` lines.
    fn events(body: &str) -> Vec<Value> {
        let frames = body.split_terminator("\n\n");
        let parse = |frame: &str| {
            let (event, data) = frame.split_once('\n').unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(event.strip_prefix("event: ").unwrap(), data["type"]);
            data
        };
        frames.map(parse).collect()
    }

    #[tokio::test]
    async fn streams_typed_events_that_reassemble() {
        let request = json!({"model": "demo", "stream": true, "input": "Explain caching"});
        let (status, kind, body) = send(request).await;
        assert_eq!((status, kind.as_str()), (200, "text/event-stream"));
        let events = events(&body);
        assert_eq!(events[0]["type"], "response.created");
        assert_eq!(events[0]["response"]["status"], "in_progress");
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        for (number, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], number);
        }
        let deltas = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta");
        let text: String = deltas.map(|e| e["delta"].as_str().unwrap()).collect();
        assert_eq!(
            text,
            last["response"]["output"][0]["content"][0]["text"]
                .as_str()
                .unwrap()
        );
        assert!(text.contains("Explain caching"));
        assert!(last["response"]["usage"]["total_tokens"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        for (request, param) in [
            (json!({"model": "demo"}), "input"),
            (json!({"input": "hi"}), "model"),
            (json!({"model": "demo", "input": [7]}), "input[0]"),
        ] {
            let (status, _, body) = send(request).await;
            let error: Value = serde_json::from_str(&body).unwrap();
            assert_eq!((status, &error["error"]["param"]), (400, &json!(param)));
        }
    }
}
