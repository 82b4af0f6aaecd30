//! The OpenAI Responses API (`POST /v1/responses`) seen through chat-completion eyes.
//!
//! The best-of-N pipeline thinks in chat completions: it briefs the judge with chat messages,
//! compares [`ChatCompletion`] choices and sums chat [`Usage`]. This module translates at the
//! edges, without I/O:
//! - [`conversation`]: `instructions` and `input` as chat messages for the judge;
//! - [`candidate_body`]: the body of one candidate call (not streamed; `store` as the client
//!   chose, see there);
//! - [`to_completion`]: a chat-completion *view* of a Responses object, for judging and usage;
//! - [`with_usage`]: a chat usage written back into a Responses object;
//! - [`events`] and [`error_events`]: a finished response replayed as the typed SSE stream.
//!
//! The Responses object itself is what goes back to the client; the view is never sent.
//!
//! **Conversation.** Message items (with or without `"type": "message"`) keep their role;
//! their parts become chat parts (`input_text`/`output_text` → `text`, `input_image` →
//! `image_url`, `input_file` → `file`, `refusal` → text marked `[refusal]`), so the judge's
//! text code names them as it does for chat. `function_call` and `custom_tool_call` items
//! become `tool_calls` on an assistant message (consecutive calls share one message, as in chat),
//! their `*_output` items `tool` messages. `reasoning` items are skipped: they are the model's
//! private (often encrypted) thinking, and the judge grades answers. Every other item type
//! (built-in tool calls, `item_reference`, MCP items…) becomes a short `[type]` note, from the
//! assistant, or from a `tool` for a `*_output` item, so the judge knows something happened
//! there that it cannot see. A request that continues an earlier one (`previous_response_id`)
//! is fine: the judge sees only what this request carries. (`conversation` is refused by the
//! caller: the upstream would add every candidate to it.) A stored prompt template is named
//! for the judge, who cannot see what the upstream expands it to.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{ChatCompletion, Choice, RequestMessage, Usage};
use crate::error::ApiError;
use crate::sse::split_text;

/// Item types left out of the judge's conversation (see the module doc).
const SKIPPED_ITEMS: &[&str] = &["reasoning"];

/// The conversation of a Responses request as chat messages: `instructions` as a system
/// message, then `input` (a string, or a list of items).
pub fn conversation(request: &Map<String, Value>) -> Result<Vec<RequestMessage>, ApiError> {
    if !matches!(request.get("model"), Some(Value::String(_))) {
        return Err(ApiError::invalid_request(
            "model",
            "`model` is missing or not a string; name the model to ask.",
        ));
    }
    let mut messages = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(message("system", json!(text))),
        Some(_) => {
            return Err(ApiError::invalid_request(
                "instructions",
                "`instructions` must be a string.",
            ))
        }
    }
    // A stored prompt template (`prompt: {id, variables}`) is expanded upstream, out of the
    // judge's sight: it is named, and the request may then carry no `input` of its own.
    let stored_prompt = request.get("prompt").filter(|p| p.is_object());
    if let Some(prompt) = stored_prompt {
        messages.push(message(
            "system",
            json!(format!("[stored prompt] {prompt}")),
        ));
    }
    match request.get("input") {
        None | Some(Value::Null) if stored_prompt.is_some() => {}
        input => push_input(&mut messages, input)?,
    }
    Ok(messages)
}

fn push_input(messages: &mut Vec<RequestMessage>, input: Option<&Value>) -> Result<(), ApiError> {
    let items = match input {
        Some(Value::String(text)) => {
            messages.push(message("user", json!(text)));
            return Ok(());
        }
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_request(
                "input",
                "`input` is empty; send a string or at least one input item.",
            ))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_request(
                "input",
                "`input` is missing; send a string or a list of input items.",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid_request(
                "input",
                "`input` must be a string or a list of input items.",
            ))
        }
    };
    for (index, item) in items.iter().enumerate() {
        push_item(messages, item).map_err(|reason| {
            let param = format!("input[{index}]");
            ApiError::invalid_request(param.clone(), format!("Invalid `{param}`: {reason}."))
        })?;
    }
    Ok(())
}

/// Adds one input item to the conversation; `Err` says what is wrong with it.
fn push_item(messages: &mut Vec<RequestMessage>, item: &Value) -> Result<(), String> {
    let Some(object) = item.as_object() else {
        return Err("expected an object: a message or an item with a `type`".into());
    };
    match object.get("type").and_then(Value::as_str) {
        None | Some("message") => messages.push(message_item(object)?),
        Some("function_call") => add_tool_call(messages, function_call(object)),
        Some("custom_tool_call") => add_tool_call(messages, custom_tool_call(object)),
        Some("function_call_output" | "custom_tool_call_output") => {
            messages.push(tool_output(object))
        }
        Some(kind) if SKIPPED_ITEMS.contains(&kind) => {}
        Some(kind) => messages.push(note(kind, object)),
    }
    Ok(())
}

fn message_item(object: &Map<String, Value>) -> Result<RequestMessage, String> {
    let Some(role) = object.get("role").and_then(Value::as_str) else {
        return Err("a message needs a `role` (user, assistant, system or developer)".into());
    };
    let content = match object.get("content") {
        Some(Value::String(text)) => json!(text),
        Some(Value::Array(parts)) => parts.iter().map(chat_part).collect(),
        _ => return Err("`content` must be a string or a list of content parts".into()),
    };
    Ok(message(role, content))
}

/// A Responses content part as the chat part the judge's text code already names.
fn chat_part(part: &Value) -> Value {
    let text = |key: &str| part.get(key).cloned().unwrap_or_else(|| json!(""));
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => json!({"type": "text", "text": text("text")}),
        Some("refusal") => {
            let refusal = part.get("refusal").and_then(Value::as_str).unwrap_or("");
            json!({"type": "text", "text": format!("[refusal] {refusal}")})
        }
        Some("input_image") => match part.get("image_url") {
            Some(Value::String(url)) => json!({"type": "image_url", "image_url": {"url": url}}),
            // An image by `file_id`: the judge text names `input_image` as an image too.
            _ => part.clone(),
        },
        Some("input_file") => {
            let mut file = part.as_object().cloned().unwrap_or_default();
            file.shift_remove("type");
            json!({"type": "file", "file": file})
        }
        _ => part.clone(),
    }
}

/// A `function_call` item as a chat tool call.
fn function_call(object: &Map<String, Value>) -> Value {
    json!({"id": call_id(object), "type": "function", "function": {
        "name": string_field(object, "name"), "arguments": string_field(object, "arguments")}})
}

/// A `custom_tool_call` item as chat's custom tool call (free-form `input`).
fn custom_tool_call(object: &Map<String, Value>) -> Value {
    json!({"id": call_id(object), "type": "custom", "custom": {
        "name": string_field(object, "name"), "input": string_field(object, "input")}})
}

/// Appends `call` to the assistant message just before, as chat puts parallel calls (and text
/// followed by calls) in one message; otherwise starts a new assistant message.
fn add_tool_call(messages: &mut Vec<RequestMessage>, call: Value) {
    if let Some(last) = messages.last_mut().filter(|m| m.role == "assistant") {
        match last.extra.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                last.extra.insert("tool_calls".into(), json!([call]));
            }
        }
        return;
    }
    let mut assistant = message("assistant", Value::Null);
    assistant.extra.insert("tool_calls".into(), json!([call]));
    messages.push(assistant);
}

fn tool_output(object: &Map<String, Value>) -> RequestMessage {
    let content = match object.get("output") {
        Some(Value::String(text)) => json!(text),
        Some(Value::Array(parts)) => parts.iter().map(chat_part).collect(),
        Some(Value::Null) | None => json!(""),
        Some(other) => json!(other.to_string()),
    };
    let mut tool = message("tool", content);
    tool.extra
        .insert("tool_call_id".into(), json!(call_id(object)));
    tool
}

/// An item the judge cannot read, named so it knows something happened there.
fn note(kind: &str, object: &Map<String, Value>) -> RequestMessage {
    if !kind.ends_with("_output") {
        return message("assistant", json!(format!("[{kind}]")));
    }
    let mut tool = message("tool", json!(format!("[{kind}]")));
    if let Some(id) = object.get("call_id").and_then(Value::as_str) {
        tool.extra.insert("tool_call_id".into(), json!(id));
    }
    tool
}

fn message(role: &str, content: Value) -> RequestMessage {
    let mut extra = Map::new();
    extra.insert("content".into(), content);
    RequestMessage {
        role: role.to_string(),
        extra,
    }
}

fn call_id(object: &Map<String, Value>) -> &str {
    let id = object.get("call_id").or_else(|| object.get("id"));
    id.and_then(Value::as_str).unwrap_or_default()
}

fn string_field<'a>(object: &'a Map<String, Value>, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The body of one candidate call: the client's request, not streamed, `store` as the client
/// sent it. Which candidate wins is known only once all have answered, and the winner's `id`
/// must work as the next request's `previous_response_id`, which needs it stored; so every
/// candidate is stored as the client asked, and the losers are stored responses nobody
/// refers to (a client that sends `store: false` stores none). Everything
/// else (tools, `text.format`, `reasoning`, `metadata`, vendor fields) as the client sent it.
pub fn candidate_body(request: &Map<String, Value>) -> Map<String, Value> {
    let mut body = request.clone();
    if body.contains_key("stream") {
        body.insert("stream".into(), Value::Bool(false));
    }
    body.shift_remove("stream_options");
    body
}

/// A chat-completion view of a finished Responses object: one choice whose message holds the
/// `output_text` parts of its `message` items (concatenated, as the SDKs' `output_text` does),
/// their `refusal` parts, and its function and custom tool calls as `tool_calls`. `Err` says
/// why the response cannot stand as a candidate (failed, unfinished, not a response).
pub fn to_completion(response: &Value) -> Result<ChatCompletion, String> {
    let object = response
        .as_object()
        .ok_or("the answer is not a JSON object")?;
    let output = object
        .get("output")
        .and_then(Value::as_array)
        .ok_or("the answer has no `output` array: it is not a Responses object")?;
    let view = OutputView::of(output);
    let finish_reason = finish_reason(object, !view.tool_calls.is_empty())?;
    let usage = match object.get("usage") {
        None | Some(Value::Null) => None,
        Some(usage) => Some(chat_usage(usage)?),
    };
    let created = object.get("created_at").and_then(Value::as_f64);
    Ok(ChatCompletion {
        id: string_field(object, "id").to_string(),
        object: "chat.completion".to_string(),
        created: created.map_or(0, |at| at.max(0.0) as u64),
        model: string_field(object, "model").to_string(),
        choices: vec![Choice {
            index: 0,
            message: view.into_message(),
            finish_reason: Some(finish_reason.to_string()),
            extra: Map::new(),
        }],
        usage,
        extra: Map::new(),
    })
}

/// What the judge reads of the `output` items.
#[derive(Default)]
struct OutputView {
    text: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<Value>,
}

impl OutputView {
    fn of(output: &[Value]) -> OutputView {
        let mut view = OutputView::default();
        for item in output.iter().filter_map(Value::as_object) {
            match item.get("type").and_then(Value::as_str) {
                Some("message") => view.add_message(item),
                Some("function_call") => view.tool_calls.push(function_call(item)),
                Some("custom_tool_call") => view.tool_calls.push(custom_tool_call(item)),
                // Reasoning and built-in tool calls are not part of the answer itself.
                _ => {}
            }
        }
        view
    }

    fn add_message(&mut self, item: &Map<String, Value>) {
        let parts = item.get("content").and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            let (slot, key) = match part.get("type").and_then(Value::as_str) {
                Some("output_text") => (&mut self.text, "text"),
                Some("refusal") => (&mut self.refusal, "refusal"),
                _ => continue,
            };
            let piece = part.get(key).and_then(Value::as_str).unwrap_or_default();
            slot.get_or_insert_with(String::new).push_str(piece);
        }
    }

    fn into_message(self) -> Map<String, Value> {
        let mut message = Map::new();
        message.insert("role".into(), json!("assistant"));
        message.insert("content".into(), json!(self.text));
        message.insert("refusal".into(), json!(self.refusal));
        if !self.tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(self.tool_calls));
        }
        message
    }
}

/// Chat's `finish_reason` for the response's `status`, or why it is no answer at all.
fn finish_reason(object: &Map<String, Value>, has_calls: bool) -> Result<&'static str, String> {
    if let Some(error) = object.get("error").filter(|e| !e.is_null()) {
        let message = error.get("message").and_then(Value::as_str);
        return Err(format!(
            "the response failed: {}",
            message.map_or_else(|| error.to_string(), str::to_string)
        ));
    }
    match object.get("status").and_then(Value::as_str) {
        None | Some("completed") if has_calls => Ok("tool_calls"),
        None | Some("completed") => Ok("stop"),
        Some("incomplete") => {
            let details = object.get("incomplete_details");
            match details
                .and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
            {
                Some("content_filter") => Ok("content_filter"),
                _ => Ok("length"),
            }
        }
        Some(status) => Err(format!("the response is `{status}`, not a finished answer")),
    }
}

/// Responses usage names → chat usage names; the details objects keep their fields, so
/// [`Usage::add`] sums cached and reasoning tokens, and unknown fields ride along in `extra`.
fn chat_usage(usage: &Value) -> Result<Usage, String> {
    let object = usage.as_object().ok_or("`usage` is not an object")?;
    let mut chat = Usage::default();
    for (key, value) in object {
        match key.as_str() {
            "input_tokens" => chat.prompt_tokens = token_count(key, value)?,
            "output_tokens" => chat.completion_tokens = token_count(key, value)?,
            "total_tokens" => chat.total_tokens = token_count(key, value)?,
            _ => {
                let name = chat_usage_name(key);
                chat.extra.insert(name.to_string(), value.clone());
            }
        }
    }
    Ok(chat)
}

fn token_count(key: &str, value: &Value) -> Result<u64, String> {
    match value {
        Value::Null => Ok(0),
        _ => value
            .as_u64()
            .ok_or_else(|| format!("`usage.{key}` is not a token count: {value}")),
    }
}

fn chat_usage_name(responses_name: &str) -> &str {
    match responses_name {
        "input_tokens_details" => "prompt_tokens_details",
        "output_tokens_details" => "completion_tokens_details",
        other => other,
    }
}

/// Writes `usage` (chat-shaped, e.g. summed over candidates and judge) into `response` as its
/// Responses `usage` object. Fields of the old usage that `usage` does not name are kept; the
/// details objects always carry `cached_tokens` and `reasoning_tokens`, as the SDKs expect.
pub fn with_usage(response: &mut Value, usage: &Usage) {
    let Some(object) = response.as_object_mut() else {
        return;
    };
    let slot = object.entry("usage").or_insert(Value::Null);
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    let Some(out) = slot.as_object_mut() else {
        return;
    };
    out.insert("input_tokens".into(), json!(usage.prompt_tokens));
    out.insert(
        "input_tokens_details".into(),
        details(usage, "prompt_tokens_details", "cached_tokens"),
    );
    out.insert("output_tokens".into(), json!(usage.completion_tokens));
    out.insert(
        "output_tokens_details".into(),
        details(usage, "completion_tokens_details", "reasoning_tokens"),
    );
    out.insert("total_tokens".into(), json!(usage.total_tokens));
    // Unknown usage fields (kept by `to_completion`, or summed in by `Usage::add`).
    let written = ["prompt_tokens_details", "completion_tokens_details"];
    for (key, value) in usage
        .extra
        .iter()
        .filter(|(k, _)| !written.contains(&k.as_str()))
    {
        out.insert(key.clone(), value.clone());
    }
}

/// The chat details object `name` of `usage`, with `required` present (0 when not counted).
fn details(usage: &Usage, name: &str, required: &str) -> Value {
    let mut details = match usage.extra.get(name) {
        Some(Value::Object(details)) => details.clone(),
        _ => Map::new(),
    };
    details.entry(required).or_insert(json!(0));
    Value::Object(details)
}

/// A finished Responses object replayed as the typed event stream a live `stream: true` call
/// sends: `response.created` and `response.in_progress` (the response still empty), then per
/// output item `response.output_item.added`, its content parts' or arguments' events, and
/// `response.output_item.done`; finally `response.completed` (`response.incomplete` or
/// `response.failed` when that is the status) with the whole response. Text and arguments come
/// in pieces of about two dozen characters cut after whitespace (as chat streams are split),
/// and `sequence_number` counts every event from 0. No `[DONE]`: the Responses stream has none.
pub fn events(response: &Value) -> Vec<Bytes> {
    let mut stream = EventStream::default();
    let empty = Vec::new();
    let output = response
        .get("output")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let started = in_progress(response);
    stream.emit("response.created", json!({"response": started}));
    stream.emit("response.in_progress", json!({"response": started}));
    for (output_index, item) in output.iter().enumerate() {
        item_events(&mut stream, output_index, item);
    }
    stream.emit(terminal_event(response), json!({"response": response}));
    stream.events
}

/// A failure after the stream has begun, as the Responses `error` event (`type`, `code`,
/// `message`, `param`, `sequence_number`). The proxy replays a response only once it is
/// finished, so before a failure it has sent nothing but keep-alive comments: the error is the
/// stream's first event, hence `sequence_number` 0.
///
/// The event also carries the usual `error` object: openai-python raises `APIError` with its
/// message for any event whose data has one, both in `create(stream=True)` and in the
/// `responses.stream()` helper, which without it fails with an unrelated "expected
/// `response.created`" error because no response was created before the failure.
pub fn error_events(error: &ApiError) -> Vec<Bytes> {
    let mut stream = EventStream::default();
    let fields = json!({"code": error.code, "message": error.message, "param": error.param,
        "error": error.to_object()});
    stream.emit("error", fields);
    stream.events
}

/// Frames events as `event: <type>` and `data: <json>` and numbers them.
#[derive(Default)]
struct EventStream {
    events: Vec<Bytes>,
    next_sequence: u64,
}

impl EventStream {
    /// One event: `type` first, then `fields`, then `sequence_number`, as OpenAI sends them.
    fn emit(&mut self, kind: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), json!(kind));
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        data.insert("sequence_number".into(), json!(self.next_sequence));
        self.next_sequence += 1;
        let mut frame = format!("event: {kind}\ndata: ").into_bytes();
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut frame, &data);
        frame.extend_from_slice(b"\n\n");
        self.events.push(Bytes::from(frame));
    }
}

/// The response as it looks when it has just started: in progress, no output, no usage.
fn in_progress(response: &Value) -> Value {
    let mut started = response.clone();
    if let Some(object) = started.as_object_mut() {
        object.insert("status".into(), json!("in_progress"));
        object.insert("output".into(), json!([]));
        object.insert("usage".into(), Value::Null);
        for key in ["completed_at", "error", "incomplete_details"] {
            if object.contains_key(key) {
                object.insert(key.into(), Value::Null);
            }
        }
    }
    started
}

fn terminal_event(response: &Value) -> &'static str {
    match response.get("status").and_then(Value::as_str) {
        Some("incomplete") => "response.incomplete",
        Some("failed") => "response.failed",
        _ => "response.completed",
    }
}

/// Where a content event belongs: the item's id and index, and the part's index.
struct Position<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
}

impl Position<'_> {
    /// The event's fields: the position, then `fields`.
    fn with(&self, fields: Value) -> Value {
        let mut out = json!({"item_id": self.item_id, "output_index": self.output_index,
            "content_index": self.content_index});
        if let (Some(out), Value::Object(fields)) = (out.as_object_mut(), fields) {
            out.extend(fields);
        }
        out
    }
}

fn item_events(stream: &mut EventStream, output_index: usize, item: &Value) {
    let fallback_id = format!("item_{output_index}");
    let item_id = item
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(&fallback_id);
    let added = json!({"output_index": output_index, "item": item_started(item)});
    stream.emit("response.output_item.added", added);
    match item.get("type").and_then(Value::as_str) {
        Some("message") => {
            let parts = item.get("content").and_then(Value::as_array);
            for (content_index, part) in parts.into_iter().flatten().enumerate() {
                let at = Position {
                    item_id,
                    output_index,
                    content_index,
                };
                part_events(stream, &at, part);
            }
        }
        Some("function_call") => arguments_events(stream, item_id, output_index, item),
        _ => {}
    }
    let done = json!({"output_index": output_index, "item": item});
    stream.emit("response.output_item.done", done);
}

/// The item as `response.output_item.added` shows it: in progress, before any content (the
/// SDKs append each added part to `content` and each delta to `arguments`).
fn item_started(item: &Value) -> Value {
    let mut started = item.clone();
    let Some(object) = started.as_object_mut() else {
        return started;
    };
    let emptied = match item.get("type").and_then(Value::as_str) {
        Some("message") => Some(("content", json!([]))),
        Some("function_call") => Some(("arguments", json!(""))),
        _ => None,
    };
    if object.contains_key("status") || emptied.is_some() {
        object.insert("status".into(), json!("in_progress"));
    }
    if let Some((key, empty)) = emptied {
        object.insert(key.into(), empty);
    }
    started
}

fn part_events(stream: &mut EventStream, at: &Position<'_>, part: &Value) {
    let kind = part.get("type").and_then(Value::as_str);
    let empty_part = match kind {
        Some("output_text") => json!({"type": "output_text", "annotations": [], "logprobs": [],
            "text": ""}),
        Some("refusal") => json!({"type": "refusal", "refusal": ""}),
        _ => part.clone(),
    };
    stream.emit(
        "response.content_part.added",
        at.with(json!({"part": empty_part})),
    );
    match kind {
        Some("output_text") => text_events(stream, at, part),
        Some("refusal") => refusal_events(stream, at, part),
        _ => {}
    }
    stream.emit("response.content_part.done", at.with(json!({"part": part})));
}

/// `response.output_text.delta` pieces, then `.done`. The part's log-probabilities ride on the
/// first delta (and on `.done`): cutting them to match the pieces would need the tokens.
fn text_events(stream: &mut EventStream, at: &Position<'_>, part: &Value) {
    let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
    let logprobs = match part.get("logprobs") {
        Some(Value::Array(logprobs)) => Value::Array(logprobs.clone()),
        _ => json!([]),
    };
    let mut first = logprobs.clone();
    for piece in split_text(text) {
        let delta_logprobs = std::mem::replace(&mut first, json!([]));
        let fields = json!({"delta": piece, "logprobs": delta_logprobs});
        stream.emit("response.output_text.delta", at.with(fields));
    }
    let done = json!({"text": text, "logprobs": logprobs});
    stream.emit("response.output_text.done", at.with(done));
}

fn refusal_events(stream: &mut EventStream, at: &Position<'_>, part: &Value) {
    let refusal = part
        .get("refusal")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for piece in split_text(refusal) {
        stream.emit("response.refusal.delta", at.with(json!({"delta": piece})));
    }
    stream.emit(
        "response.refusal.done",
        at.with(json!({"refusal": refusal})),
    );
}

fn arguments_events(stream: &mut EventStream, item_id: &str, output_index: usize, item: &Value) {
    let arguments = item
        .get("arguments")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for piece in split_text(arguments) {
        let delta = json!({"item_id": item_id, "output_index": output_index, "delta": piece});
        stream.emit("response.function_call_arguments.delta", delta);
    }
    let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
    let done = json!({"item_id": item_id, "output_index": output_index, "name": name,
        "arguments": arguments});
    stream.emit("response.function_call_arguments.done", done);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn judge_lines(messages: &[RequestMessage]) -> Vec<String> {
        let line = |m: &RequestMessage| format!("{}: {}", m.role, m.text_for_judge());
        messages.iter().map(line).collect()
    }

    #[test]
    fn items_become_chat_messages() {
        let request = object(json!({"model": "m", "instructions": "Be brief.", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:x", "detail": "auto"},
                {"type": "input_file", "file_id": "file-1"}]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Let me look.", "annotations": []}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"role": "developer", "content": "Answer in French."}]}));
        let messages = conversation(&request).unwrap();
        let lines = judge_lines(&messages);
        assert_eq!(lines[0], "system: Be brief.");
        assert_eq!(lines[1], "user: What is this?\n[image]\n[file]");
        assert!(lines[2].starts_with("assistant: Let me look.\n[tool calls] "));
        let calls = messages[2].extra["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "parallel calls share one message");
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(messages[3].role, "tool");
        assert_eq!(messages[3].tool_call_id(), Some("call_1"));
        assert_eq!(lines[3], "tool: sunny");
        assert_eq!(lines[4], "assistant: [web_search_call]");
        assert_eq!(lines[5], "developer: Answer in French.");
        assert_eq!(messages.len(), 6, "the reasoning item is skipped");
    }

    #[test]
    fn a_string_input_is_one_user_message_even_when_continuing() {
        let request = object(json!({"model": "m", "previous_response_id": "resp_1",
            "input": "And in Paris?"}));
        let lines = judge_lines(&conversation(&request).unwrap());
        assert_eq!(lines, ["user: And in Paris?"]);
    }

    #[test]
    fn a_stored_prompt_is_named_and_needs_no_input() {
        let request = object(json!({"model": "m",
            "prompt": {"id": "pmpt_1", "variables": {"city": "Paris"}}}));
        let lines = judge_lines(&conversation(&request).unwrap());
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("pmpt_1") && lines[0].contains("Paris"),
            "{lines:?}"
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let param = |request: Value| conversation(&object(request)).unwrap_err().param;
        let param = |request| param(request).unwrap_or_default();
        assert_eq!(param(json!({"input": "hi"})), "model");
        assert_eq!(param(json!({"model": "m"})), "input");
        assert_eq!(param(json!({"model": "m", "input": 3})), "input");
        assert_eq!(param(json!({"model": "m", "input": []})), "input");
        assert_eq!(
            param(json!({"model": "m", "input": "x", "instructions": 1})),
            "instructions"
        );
        let items = json!([{"role": "user", "content": "x"}, "loose"]);
        assert_eq!(param(json!({"model": "m", "input": items})), "input[1]");
        let items = json!([{"type": "message", "content": "no role"}]);
        assert_eq!(param(json!({"model": "m", "input": items})), "input[0]");
    }

    #[test]
    fn candidates_are_not_streamed_and_stored_as_the_client_chose() {
        let request = object(json!({"model": "m", "input": "x", "stream": true,
            "stream_options": {"include_obfuscation": false}, "store": true,
            "tools": [{"type": "function", "name": "f"}],
            "text": {"format": {"type": "json_object"}}, "reasoning": {"effort": "low"},
            "metadata": {"k": "v"}, "vendor": 1}));
        let body = Value::Object(candidate_body(&request));
        assert_eq!(body["stream"], false);
        assert_eq!(body["store"], true);
        assert!(body.get("stream_options").is_none());
        for key in [
            "tools",
            "text",
            "reasoning",
            "metadata",
            "vendor",
            "input",
            "model",
        ] {
            assert_eq!(body[key], request[key], "{key}");
        }
        let plain = object(json!({"model": "m", "input": "x"}));
        let body = candidate_body(&plain);
        assert!(body.get("stream").is_none());
        assert!(body.get("store").is_none());
    }

    fn message_response() -> Value {
        json!({"id": "resp_1", "object": "response", "created_at": 1700000000,
            "status": "completed", "completed_at": 1700000001, "error": null,
            "incomplete_details": null, "model": "gpt-x", "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                    "text": "Caching helps because repeated work is skipped, so builds get \
                        faster."},
                    {"type": "refusal", "refusal": "I won't share secrets."}]}],
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 5},
                "total_tokens": 30, "x_cost": 0.5}})
    }

    fn call_response() -> Value {
        json!({"id": "resp_2", "object": "response", "created_at": 1700000000,
            "status": "completed", "model": "gpt-x", "output": [
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
                 "arguments": "{\"location\": \"Paris, France\", \"unit\": \"celsius\"}",
                 "status": "completed"}],
            "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}})
    }

    #[test]
    fn completion_view_of_text_refusal_and_calls() {
        let view = to_completion(&message_response()).unwrap();
        let choice = &view.choices[0];
        assert_eq!(view.id, "resp_1");
        assert_eq!(view.created, 1700000000);
        assert_eq!(view.model, "gpt-x");
        assert!(choice.content().unwrap().starts_with("Caching helps"));
        assert_eq!(choice.refusal(), Some("I won't share secrets."));
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        let usage = view.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 20));
        assert_eq!(usage.extra["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            usage.extra["completion_tokens_details"]["reasoning_tokens"],
            5
        );

        let view = to_completion(&call_response()).unwrap();
        let choice = &view.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert!(choice.message["content"].is_null());
        let call = &choice.tool_calls().unwrap()[0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["name"], "get_weather");
        assert!(call["function"]["arguments"]
            .as_str()
            .unwrap()
            .contains("Paris"));
    }

    #[test]
    fn unfinished_or_failed_responses_are_no_candidates() {
        let mut incomplete = message_response();
        incomplete["status"] = json!("incomplete");
        incomplete["incomplete_details"] = json!({"reason": "max_output_tokens"});
        let view = to_completion(&incomplete).unwrap();
        assert_eq!(view.choices[0].finish_reason.as_deref(), Some("length"));
        let mut failed = message_response();
        failed["status"] = json!("failed");
        failed["error"] = json!({"code": "server_error", "message": "boom"});
        assert!(to_completion(&failed).unwrap_err().contains("boom"));
        let mut failed = message_response();
        failed["status"] = json!("failed");
        assert!(to_completion(&failed).unwrap_err().contains("failed"));
        let mut queued = message_response();
        queued["status"] = json!("queued");
        assert!(to_completion(&queued).is_err());
        assert!(to_completion(&json!([1])).is_err());
        assert!(to_completion(&json!({"choices": []}))
            .unwrap_err()
            .contains("output"));
    }

    #[test]
    fn usage_round_trips_and_sums() {
        let original = message_response();
        let mut usage = to_completion(&original).unwrap().usage.unwrap();
        let mut response = original.clone();
        response["usage"] = json!({"stale": true});
        with_usage(&mut response, &usage);
        let mut expected = original["usage"].clone();
        expected["stale"] = json!(true);
        assert_eq!(response["usage"], expected);
        usage.add(&to_completion(&call_response()).unwrap().usage.unwrap());
        with_usage(&mut response, &usage);
        assert_eq!(response["usage"]["input_tokens"], 13);
        assert_eq!(response["usage"]["total_tokens"], 37);
        assert_eq!(
            response["usage"]["input_tokens_details"]["cached_tokens"],
            4
        );
        let mut bare = json!({"output": []});
        with_usage(&mut bare, &Usage::default());
        assert_eq!(
            bare["usage"]["input_tokens_details"],
            json!({"cached_tokens": 0})
        );
        assert_eq!(
            bare["usage"]["output_tokens_details"],
            json!({"reasoning_tokens": 0})
        );
    }

    /// The events as (event line, data) pairs, checking the framing.
    fn parse(events: &[Bytes]) -> Vec<Value> {
        events
            .iter()
            .map(|frame| {
                let text = std::str::from_utf8(frame).unwrap();
                let (event, data) = text.strip_suffix("\n\n").unwrap().split_once('\n').unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(event.strip_prefix("event: ").unwrap(), data["type"]);
                data
            })
            .collect()
    }

    /// Rebuilds the response from its events as the SDKs' stream helpers do: the created
    /// response, added items and parts, then deltas appended.
    fn reassemble(events: &[Value]) -> Value {
        let mut snapshot = events[0]["response"].clone();
        for event in &events[1..] {
            let output = |s: &mut Value| {
                s["output"][event["output_index"].as_u64().unwrap() as usize].take()
            };
            match event["type"].as_str().unwrap() {
                "response.output_item.added" => snapshot["output"]
                    .as_array_mut()
                    .unwrap()
                    .push(event["item"].clone()),
                "response.content_part.added" => {
                    let mut item = output(&mut snapshot);
                    item["content"]
                        .as_array_mut()
                        .unwrap()
                        .push(event["part"].clone());
                    snapshot["output"][event["output_index"].as_u64().unwrap() as usize] = item;
                }
                "response.output_text.delta" | "response.refusal.delta" => {
                    let index = event["output_index"].as_u64().unwrap() as usize;
                    let part = &mut snapshot["output"][index]["content"]
                        [event["content_index"].as_u64().unwrap() as usize];
                    let key = if part["type"] == "refusal" {
                        "refusal"
                    } else {
                        "text"
                    };
                    let text = part[key].as_str().unwrap().to_owned();
                    part[key] = json!(text + event["delta"].as_str().unwrap());
                }
                "response.function_call_arguments.delta" => {
                    let index = event["output_index"].as_u64().unwrap() as usize;
                    let item = &mut snapshot["output"][index];
                    let text = item["arguments"].as_str().unwrap().to_owned();
                    item["arguments"] = json!(text + event["delta"].as_str().unwrap());
                }
                _ => {}
            }
        }
        snapshot
    }

    #[test]
    fn message_response_replays_and_reassembles() {
        let response = message_response();
        let events = parse(&events(&response));
        for (number, event) in events.iter().enumerate() {
            assert_eq!(event["sequence_number"], number);
        }
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types[..3],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added"
            ]
        );
        assert_eq!(types.last(), Some(&"response.completed"));
        assert_eq!(events[0]["response"]["status"], "in_progress");
        assert_eq!(events[0]["response"]["output"], json!([]));
        assert!(events[0]["response"]["usage"].is_null());
        assert_eq!(events.last().unwrap()["response"], response);
        let deltas: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .collect();
        assert!(deltas.len() >= 3, "{}", deltas.len());
        for delta in &deltas {
            assert_eq!(
                (&delta["item_id"], &delta["output_index"]),
                (&json!("msg_1"), &json!(1))
            );
            assert_eq!(
                (&delta["content_index"], &delta["logprobs"]),
                (&json!(0), &json!([]))
            );
        }
        let text: String = deltas
            .iter()
            .map(|d| d["delta"].as_str().unwrap())
            .collect();
        let full = &response["output"][1]["content"][0]["text"];
        assert_eq!(text, full.as_str().unwrap());
        let done = events
            .iter()
            .find(|e| e["type"] == "response.output_text.done")
            .unwrap();
        assert_eq!(&done["text"], full);
        let refusal = events
            .iter()
            .find(|e| e["type"] == "response.refusal.done")
            .unwrap();
        assert_eq!(
            (&refusal["content_index"], &refusal["refusal"]),
            (&json!(1), &json!("I won't share secrets."))
        );
        let added = events
            .iter()
            .find(|e| e["type"] == "response.output_item.added" && e["output_index"] == 1);
        assert_eq!(added.unwrap()["item"]["status"], "in_progress");
        let rebuilt = reassemble(&events);
        assert_eq!(
            rebuilt["output"][1]["content"],
            response["output"][1]["content"]
        );
    }

    #[test]
    fn function_call_response_replays_and_reassembles() {
        let response = call_response();
        let events = parse(&events(&response));
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let arguments = "response.function_call_arguments.delta";
        assert!(types.iter().filter(|t| **t == arguments).count() >= 2);
        assert_eq!(events[2]["item"]["arguments"], "");
        let done = events
            .iter()
            .find(|e| e["type"] == "response.function_call_arguments.done");
        let done = done.unwrap();
        assert_eq!(
            (&done["item_id"], &done["name"]),
            (&json!("fc_1"), &json!("get_weather"))
        );
        assert_eq!(done["arguments"], response["output"][0]["arguments"]);
        let rebuilt = reassemble(&events);
        assert_eq!(
            rebuilt["output"][0]["arguments"],
            response["output"][0]["arguments"]
        );
        let item_done = &events[events.len() - 2];
        assert_eq!(item_done["type"], "response.output_item.done");
        assert_eq!(item_done["item"], response["output"][0]);
        let mut incomplete = response;
        incomplete["status"] = json!("incomplete");
        let last = parse(&super::events(&incomplete)).pop().unwrap();
        assert_eq!(last["type"], "response.incomplete");
    }

    #[test]
    fn errors_are_the_responses_error_event() {
        let error = ApiError::bad_gateway("no_candidates", "every candidate failed");
        let events = parse(&error_events(&error));
        let expected = json!({"type": "error", "code": "no_candidates",
            "message": "every candidate failed", "param": null, "error": error.to_object(),
            "sequence_number": 0});
        assert_eq!(events, [expected]);
    }
}
