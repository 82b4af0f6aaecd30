//! `POST /v1/chat/completions`: the request as the demo reads it, its answers (generated, or a
//! judge's verdict), and the completion or stream they become.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::generate::*;
use super::judge::*;
use super::sse::*;
use super::tools;
use super::wire::*;

/// Options for the demo upstream.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Delay added before every answer (and before the first chunk of a stream), like a real model's latency.
    pub latency: Duration,
    /// Seed for the generated answers; equal seeds give equal sequences of answers.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            seed: 42,
        }
    }
}

pub(super) struct State {
    pub(super) options: DemoOptions,
    pub(super) counter: AtomicU64,
}

pub(super) struct Chat<'a> {
    model: &'a str,
    n: usize,
    stream: bool,
    include_usage: bool,
    /// All message text, one message per line: the judge looks for candidates anywhere in it.
    prompt: String,
    last_user: std::ops::Range<usize>,
    last_is_user: bool,
    tool_name: Option<&'a str>,
    /// The first tool, whose schema names the argument the demo fills in.
    tool: Option<&'a Value>,
    json_mode: bool,
    /// `"logprobs": true`: plain answers carry token log-probabilities.
    logprobs: bool,
}

pub(super) fn parse_chat(request: &Value) -> Option<Chat<'_>> {
    let messages = request.get("messages")?.as_array()?;
    let mut prompt = String::new();
    let (mut last_user, mut last_is_user) = (0..0, false);
    for message in messages {
        let start = prompt.len();
        append_text(message.get("content"), &mut prompt);
        last_is_user = str_at(message, "/role") == Some("user");
        if last_is_user {
            last_user = start..prompt.len();
        }
        prompt.push('\n');
    }
    let first_tool = request.pointer("/tools/0");
    let flag = |pointer| request.pointer(pointer).and_then(Value::as_bool) == Some(true);
    let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
    let format = str_at(request, "/response_format/type");
    Some(Chat {
        model: str_at(request, "/model").unwrap_or("demo"),
        n: n.clamp(1, 128) as usize,
        stream: flag("/stream"),
        include_usage: flag("/stream_options/include_usage"),
        prompt,
        last_user,
        last_is_user,
        tool_name: first_tool.map(|tool| str_at(tool, "/function/name").unwrap_or("get_weather")),
        tool: first_tool,
        json_mode: matches!(format, Some("json_object" | "json_schema")),
        logprobs: flag("/logprobs"),
    })
}

/// Appends the text of a message's content, a plain string or an array of parts.
pub(super) fn append_text(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(text)) => out.push_str(text),
        Some(Value::Array(parts)) => {
            for text in parts.iter().filter_map(|part| str_at(part, "/text")) {
                out.push_str(text);
                out.push('\n');
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
pub(super) enum Answer {
    Text(String),
    ToolCall {
        id: String,
        name: String,
        /// JSON, for the place the question asks about.
        arguments: String,
    },
}

impl Answer {
    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "stop",
            Answer::ToolCall { .. } => "tool_calls",
        }
    }

    fn tokens(&self) -> u64 {
        match self {
            Answer::Text(text) => approx_tokens(text),
            Answer::ToolCall {
                name, arguments, ..
            } => approx_tokens(name) + approx_tokens(arguments),
        }
    }
}

pub(super) async fn chat(state: &State, request: &Value) -> Response<Body> {
    let Some(chat) = parse_chat(request) else {
        return bad_request("'messages' must be an array of messages.");
    };
    let call = state.counter.fetch_add(1, Ordering::Relaxed);
    let answers = answers(state, &chat, call);
    let head = json!({"id": format!("chatcmpl-demo-{call:x}"), "object": "chat.completion",
        "created": unix_now(), "model": chat.model, "system_fingerprint": "fp_demo"});
    let prompt_tokens = approx_tokens(&chat.prompt);
    let completion_tokens: u64 = answers.iter().map(Answer::tokens).sum();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    let latency = state.options.latency;
    if chat.stream {
        let usage = chat.include_usage.then_some(usage);
        return sse_response(stream_frames(head, &answers, usage), latency);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let logprobs = chat.logprobs.then_some(state.options.seed);
    json_response(StatusCode::OK, &completion(head, &answers, usage, logprobs))
}

pub(super) fn answers(state: &State, chat: &Chat<'_>, call: u64) -> Vec<Answer> {
    if let Some(verdict) = judge_reply(&chat.prompt) {
        return vec![Answer::Text(verdict); chat.n];
    }
    let question = chat.prompt.get(chat.last_user.clone()).unwrap_or("");
    let asks_weather = chat.last_is_user && contains_ignore_case(question, b"weather");
    let tool = chat.tool_name.filter(|_| asks_weather);
    let arguments = tool.map(|_| tools::arguments(question, chat.tool));
    let topic = topic(question);
    let sum = arithmetic(question);
    let base = state.options.seed ^ fnv1a(chat.prompt.as_bytes()) ^ call.wrapping_mul(GOLDEN);
    let answer = |index: u64| {
        let mut rng = Rng(base ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        match (tool, &arguments) {
            // Unique without touching the counter, because `n` is at most 128.
            (Some(name), Some(arguments)) => Answer::ToolCall {
                id: format!("call_demo_{}", call.wrapping_mul(128).wrapping_add(index)),
                name: name.to_owned(),
                arguments: arguments.clone(),
            },
            _ if chat.json_mode => Answer::Text(json_answer(&mut rng, &topic)),
            _ => match &sum {
                Some(sum) => Answer::Text(math_answer(&mut rng, sum)),
                None => Answer::Text(generate(&mut rng, &topic)),
            },
        }
    };
    (0..chat.n as u64).map(answer).collect()
}

/// The completion of `answers`; with `logprobs` (the demo's seed), each text answer carries
/// token log-probabilities.
pub(super) fn completion(
    mut head: Value,
    answers: &[Answer],
    usage: Value,
    logprobs: Option<u64>,
) -> Value {
    let choice = |(index, answer): (usize, &Answer)| {
        let message = match answer {
            Answer::Text(text) => json!({"role": "assistant", "content": text, "refusal": null}),
            Answer::ToolCall {
                id,
                name,
                arguments,
            } => json!({"role": "assistant", "content": null,
                "tool_calls": [{"id": id, "type": "function",
                    "function": {"name": name, "arguments": arguments}}],
                "refusal": null}),
        };
        let logprobs = match (logprobs, answer) {
            (Some(seed), Answer::Text(text)) => token_logprobs(text, seed),
            (Some(_), Answer::ToolCall { .. }) => json!({"content": null, "refusal": null}),
            (None, _) => Value::Null,
        };
        json!({"index": index, "message": message, "logprobs": logprobs,
            "finish_reason": answer.finish_reason()})
    };
    head["choices"] = answers.iter().enumerate().map(choice).collect();
    head["usage"] = usage;
    head
}

/// All SSE events of a streamed completion, choice after choice, ending with `[DONE]`.
pub(super) fn stream_frames(
    mut head: Value,
    answers: &[Answer],
    usage: Option<Value>,
) -> Vec<Bytes> {
    head["object"] = json!("chat.completion.chunk");
    let chunk = |index: usize, delta: Value, reason: Option<&str>| {
        let mut chunk = head.clone();
        chunk["choices"] = json!([{"index": index, "delta": delta, "logprobs": null,
            "finish_reason": reason}]);
        if usage.is_some() {
            chunk["usage"] = Value::Null;
        }
        sse(&chunk)
    };
    let mut frames = Vec::new();
    for (index, answer) in answers.iter().enumerate() {
        for delta in deltas(answer) {
            frames.push(chunk(index, delta, None));
        }
        frames.push(chunk(index, json!({}), Some(answer.finish_reason())));
    }
    if let Some(usage) = &usage {
        head["choices"] = json!([]);
        head["usage"] = usage.clone();
        frames.push(sse(&head));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

pub(super) fn deltas(answer: &Answer) -> Vec<Value> {
    let mut deltas = Vec::new();
    match answer {
        Answer::Text(text) => {
            deltas.push(json!({"role": "assistant", "content": ""}));
            for piece in word_pieces(text, 2) {
                deltas.push(json!({"content": piece}));
            }
        }
        Answer::ToolCall {
            id,
            name,
            arguments,
        } => {
            let call = json!({"index": 0, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}});
            deltas.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            // Real models stream the arguments in pieces too; clients must concatenate them.
            let cut = arguments.len() / 2;
            let cut = (0..=cut)
                .rev()
                .find(|&i| arguments.is_char_boundary(i))
                .unwrap_or(0);
            let (head, tail) = arguments.split_at(cut);
            for piece in [head, tail] {
                let call = json!({"index": 0, "function": {"arguments": piece}});
                deltas.push(json!({"tool_calls": [call]}));
            }
        }
    }
    deltas
}
