//! `POST /v1/completions`: the legacy completions API, answered by the chat endpoint's
//! generator.
//!
//! The prompt (one text, as [`crate::openai::completions::conversation`] accepts it) is put to
//! the chat generator as a user message with the request's `n`, so answers and judge verdicts
//! follow the chat endpoint's rules. Each answer becomes a choice's `text` (after the prompt
//! with `echo`); `best_of` is checked against `n` as OpenAI does but not acted on. `usage` is
//! approximate, as for chat. `stream: true` replays the finished object with
//! [`crate::openai::completions::events`], with a usage chunk on
//! `stream_options.include_usage`.

use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::chat::{answers, completion, parse_chat, State};
use super::generate::{approx_tokens, unix_now};
use super::responses::api_error;
use super::sse::sse_response;
use super::wire::*;
use crate::openai::completions as api;

pub(super) async fn completions(state: &State, request: &Value) -> Response<Body> {
    let Some(request) = request.as_object() else {
        return bad_request("The request body must be a JSON object.");
    };
    let checked = api::conversation(request).and_then(|m| api::best_of(request).map(|_| m));
    let messages = match checked {
        Ok(messages) => messages,
        Err(error) => return api_error(&error),
    };
    let chat_request = json!({"model": request.get("model"), "messages": messages,
        "n": api::n(request)});
    let Some(chat) = parse_chat(&chat_request) else {
        return bad_request("'prompt' could not be read.");
    };
    let call = state.counter.fetch_add(1, Ordering::Relaxed);
    let answer = completion(json!({}), &answers(state, &chat, call), Value::Null, None);
    let object = text_completion(request, call, &answer);
    let latency = state.options.latency;
    if request.get("stream") == Some(&Value::Bool(true)) {
        let include_usage = request
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            == Some(&Value::Bool(true));
        return sse_response(api::events(&object, include_usage), latency);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    json_response(StatusCode::OK, &object)
}

/// The chat completion's choices as a `text_completion` object.
fn text_completion(request: &Map<String, Value>, call: u64, answer: &Value) -> Value {
    let prompt = prompt(request);
    let echo = request.get("echo") == Some(&Value::Bool(true));
    let empty = Vec::new();
    let chat_choices = answer["choices"].as_array().unwrap_or(&empty);
    let mut completion_tokens = 0;
    let mut choices = Vec::with_capacity(chat_choices.len());
    for choice in chat_choices {
        let text = choice["message"]["content"].as_str().unwrap_or_default();
        completion_tokens += approx_tokens(text);
        let text = if echo {
            format!("{prompt}{text}")
        } else {
            text.to_owned()
        };
        choices.push(
            json!({"text": text, "index": choice["index"], "logprobs": null,
            "finish_reason": choice["finish_reason"]}),
        );
    }
    let prompt_tokens = approx_tokens(prompt);
    json!({"id": format!("cmpl-demo-{call:x}"), "object": "text_completion",
        "created": unix_now(), "model": request.get("model"), "system_fingerprint": "fp_demo",
        "choices": choices, "usage": {"prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}})
}

/// The prompt text as sent (`conversation` has checked it is one string).
fn prompt(request: &Map<String, Value>) -> &str {
    let prompt = request.get("prompt");
    let single = prompt.and_then(|p| p.get(0)).unwrap_or(&Value::Null);
    prompt
        .and_then(Value::as_str)
        .or(single.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::DemoOptions;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicU64;

    async fn send(request: Value) -> (u16, String) {
        let state = State {
            options: DemoOptions::default(),
            counter: AtomicU64::new(0),
        };
        let response = completions(&state, &request).await;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_n_text_completions() {
        let request = json!({"model": "instruct", "prompt": "How do I speed up my build?",
            "n": 3, "best_of": 4});
        let (status, body) = send(request).await;
        assert_eq!(status, 200, "{body}");
        let object: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(object["object"], "text_completion");
        assert!(object["id"].as_str().unwrap().starts_with("cmpl-demo-"));
        let choices = object["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        for (index, choice) in choices.iter().enumerate() {
            assert_eq!(choice["index"], index);
            assert!(choice["text"]
                .as_str()
                .unwrap()
                .contains("speed up my build"));
            assert_eq!(choice["finish_reason"], "stop");
        }
        let usage = &object["usage"];
        let sum =
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
        assert_eq!(usage["total_tokens"], sum);
        let view = api::to_completion(&object).unwrap();
        assert_eq!(api::from_completion(&view), object);
    }

    #[tokio::test]
    async fn echo_puts_the_prompt_first() {
        let request = json!({"model": "m", "prompt": ["Explain caching."], "echo": true});
        let (_, body) = send(request).await;
        let object: Value = serde_json::from_str(&body).unwrap();
        let text = object["choices"][0]["text"].as_str().unwrap();
        assert!(
            text.starts_with("Explain caching.") && text.len() > 20,
            "{text}"
        );
    }

    #[tokio::test]
    async fn streams_pieces_usage_and_done() {
        let request = json!({"model": "m", "prompt": "Explain caching", "n": 2, "stream": true,
            "stream_options": {"include_usage": true}});
        let (status, body) = send(request).await;
        assert_eq!(status, 200);
        let mut frames: Vec<&str> = body.split_terminator("\n\n").collect();
        assert_eq!(frames.pop(), Some("data: [DONE]"));
        let chunks: Vec<Value> = frames
            .iter()
            .map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        let (usage, chunks) = chunks.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
        for index in 0..2 {
            let mine = chunks
                .iter()
                .map(|c| &c["choices"][0])
                .filter(|c| c["index"] == index);
            let text: String = mine.map(|c| c["text"].as_str().unwrap()).collect();
            assert!(text.contains("Explain caching"), "{text}");
        }
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "text_completion" && c["usage"].is_null()));
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        for (request, param) in [
            (
                json!({"model": "m", "prompt": "x", "best_of": 1, "n": 2}),
                "best_of",
            ),
            (json!({"model": "m", "prompt": ["a", "b"]}), "prompt"),
            (json!({"model": "m", "prompt": [1, 2, 3]}), "prompt"),
        ] {
            let (status, body) = send(request).await;
            let error: Value = serde_json::from_str(&body).unwrap();
            assert_eq!((status, &error["error"]["param"]), (400, &json!(param)));
        }
    }
}
