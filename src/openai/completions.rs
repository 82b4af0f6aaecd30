//! The legacy completions API (`POST /v1/completions`) seen through chat-completion eyes.
//!
//! Its `best_of` asks the server to generate several completions and return the best: what the
//! proxy does for chat, so the proxy honours it with its judge instead of log-probabilities.
//! This module translates at the edges, without I/O:
//! - [`conversation`]: the text prompt as one chat user message for the judge;
//! - [`best_of`] and [`n`]: the request's counts, checked as OpenAI checks them;
//! - [`candidate_body`]: the body of one candidate call (one completion, not streamed);
//! - [`to_completion`] and [`from_completion`]: a `text_completion` object as a chat view and
//!   back, losslessly, so the winner returns with every field it had;
//! - [`events`]: a finished `text_completion` replayed as the legacy SSE stream.
//!
//! Best-of-N takes one text prompt: several prompts in one request (one answer each) or token
//! arrays (which the judge cannot read) are refused with a 400 naming `prompt`.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{ChatCompletion, Choice, RequestMessage, Usage};
use crate::error::ApiError;
use crate::sse::{split_text, DONE};

/// Top-level fields that [`to_completion`] types; all others stay in `extra`.
const TYPED_FIELDS: &[&str] = &["id", "object", "created", "model", "choices", "usage"];

/// The request's prompt as one user message; a non-empty `suffix` (the text the completion
/// must lead into) is shown to the judge after it, marked as such.
pub fn conversation(request: &Map<String, Value>) -> Result<Vec<RequestMessage>, ApiError> {
    if !matches!(request.get("model"), Some(Value::String(_))) {
        return Err(ApiError::invalid_request(
            "model",
            "`model` is missing or not a string; name the model to ask.",
        ));
    }
    let mut text = prompt_text(request.get("prompt"))?.to_string();
    let suffix = request.get("suffix").and_then(Value::as_str);
    if let Some(suffix) = suffix.filter(|s| !s.is_empty()) {
        text.push_str("\n\n[text that must follow the completion] ");
        text.push_str(suffix);
    }
    let mut extra = Map::new();
    extra.insert("content".into(), Value::String(text));
    Ok(vec![RequestMessage {
        role: "user".into(),
        extra,
    }])
}

fn prompt_text(prompt: Option<&Value>) -> Result<&str, ApiError> {
    let invalid = |message: &str| Err(ApiError::invalid_request("prompt", message));
    match prompt {
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(list)) => match list.as_slice() {
            [Value::String(text)] => Ok(text),
            [] => invalid("`prompt` is empty; send one text prompt."),
            [Value::String(_), ..] => invalid(
                "best-of-N takes one text prompt per request; send each prompt as its own request.",
            ),
            _ => invalid(
                "best-of-N takes one text prompt, not token arrays: the judge reads text; send \
                 the prompt as a string.",
            ),
        },
        None | Some(Value::Null) => invalid("`prompt` is missing; send one text prompt."),
        Some(_) => invalid("`prompt` must be a string."),
    }
}

/// The legacy API's own best-of field.
pub const BEST_OF: &str = "best_of";

/// The request's `best_of` (`None` when absent), checked as OpenAI does: a positive integer at
/// least `n`. A malformed `n` is reported here too, under `n`.
pub fn best_of(request: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    let n = count(request, "n")?.unwrap_or(1);
    let Some(best_of) = count(request, BEST_OF)? else {
        return Ok(None);
    };
    if best_of < n {
        return Err(ApiError::invalid_request(
            BEST_OF,
            format!(
                "`best_of` ({best_of}) must be at least `n` ({n}): the best `n` are chosen \
                 among `best_of` candidates."
            ),
        ));
    }
    Ok(Some(best_of))
}

/// How many completions the client wants back (`n`, default 1). A malformed `n` counts as 1
/// here; [`best_of`] is where it is refused.
pub fn n(request: &Map<String, Value>) -> u32 {
    count(request, "n").ok().flatten().unwrap_or(1)
}

/// A positive integer field that fits in `u32`; `None` when absent or null.
fn count(request: &Map<String, Value>, field: &str) -> Result<Option<u32>, ApiError> {
    let value = match request.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    let number = value.as_u64().and_then(|n| u32::try_from(n).ok());
    match number.filter(|n| *n >= 1) {
        Some(number) => Ok(Some(number)),
        None => Err(ApiError::invalid_request(
            field,
            format!("`{field}` must be a positive integer, not {value}."),
        )),
    }
}

/// The body of one candidate call: the client's request without `best_of` (the proxy is the
/// one choosing), one completion, not streamed; `logprobs`, `echo`, `suffix` and vendor fields
/// as the client sent them.
pub fn candidate_body(request: &Map<String, Value>) -> Map<String, Value> {
    let mut body = request.clone();
    body.shift_remove(BEST_OF);
    body.shift_remove("stream_options");
    if body.contains_key("n") {
        body.insert("n".into(), json!(1));
    }
    if body.contains_key("stream") {
        body.insert("stream".into(), Value::Bool(false));
    }
    body
}

/// A `text_completion` object as a chat-completion view: each choice's `text` becomes an
/// assistant message, its `logprobs` and unknown fields stay in the choice's `extra`, unknown
/// top-level fields in the completion's. [`from_completion`] undoes it.
pub fn to_completion(response: &Value) -> Result<ChatCompletion, String> {
    let object = response
        .as_object()
        .ok_or("the answer is not a JSON object")?;
    if let Some(error) = object.get("error").filter(|e| !e.is_null()) {
        return Err(format!("the answer is an error: {error}"));
    }
    let choices = object
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("the answer has no `choices` array: it is not a text completion")?;
    if choices.is_empty() {
        return Err("the answer has no choices".to_string());
    }
    let choices = choices
        .iter()
        .enumerate()
        .map(|(at, choice)| chat_choice(at, choice))
        .collect::<Result<Vec<_>, _>>()?;
    let usage = match object.get("usage") {
        None | Some(Value::Null) => None,
        Some(usage) => Some(
            serde_json::from_value::<Usage>(usage.clone())
                .map_err(|e| format!("the answer's `usage` is malformed: {e}"))?,
        ),
    };
    let extra = object
        .iter()
        .filter(|(key, _)| !TYPED_FIELDS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Ok(ChatCompletion {
        id: string_field(object, "id").to_string(),
        object: object
            .get("object")
            .and_then(Value::as_str)
            .unwrap_or("text_completion")
            .to_string(),
        created: object.get("created").and_then(Value::as_u64).unwrap_or(0),
        model: string_field(object, "model").to_string(),
        choices,
        usage,
        extra,
    })
}

fn chat_choice(at: usize, choice: &Value) -> Result<Choice, String> {
    let object = choice
        .as_object()
        .ok_or_else(|| format!("choice {at} is not an object"))?;
    let text = match object.get("text") {
        Some(Value::String(text)) => text.as_str(),
        None | Some(Value::Null) => "",
        Some(_) => return Err(format!("choice {at}: `text` is not a string")),
    };
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), json!(text));
    let index = object.get("index").and_then(Value::as_u64);
    let finish_reason = object.get("finish_reason").and_then(Value::as_str);
    Ok(Choice {
        index: index
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(at as u32),
        message,
        finish_reason: finish_reason.map(str::to_string),
        extra: object
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "text" | "index" | "finish_reason"))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    })
}

/// A chat view (from [`to_completion`], or a chat completion the pipeline chose) as the
/// `text_completion` object the client asked for.
pub fn from_completion(completion: &ChatCompletion) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(completion.id));
    out.insert("object".into(), json!("text_completion"));
    out.insert("created".into(), json!(completion.created));
    out.insert("model".into(), json!(completion.model));
    let choices = completion.choices.iter().map(text_choice).collect();
    out.insert("choices".into(), Value::Array(choices));
    if let Some(usage) = &completion.usage {
        // Serialising a Usage (numbers and JSON values) cannot fail.
        out.insert(
            "usage".into(),
            serde_json::to_value(usage).unwrap_or_default(),
        );
    }
    for (key, value) in &completion.extra {
        out.insert(key.clone(), value.clone());
    }
    Value::Object(out)
}

fn text_choice(choice: &Choice) -> Value {
    let mut out = Map::new();
    out.insert("text".into(), json!(choice.content().unwrap_or_default()));
    out.insert("index".into(), json!(choice.index));
    let logprobs = choice.extra.get("logprobs").cloned();
    out.insert("logprobs".into(), logprobs.unwrap_or(Value::Null));
    out.insert("finish_reason".into(), json!(choice.finish_reason));
    for (key, value) in &choice.extra {
        out.insert(key.clone(), value.clone());
    }
    Value::Object(out)
}

/// A finished `text_completion` replayed as the legacy stream: per choice, its text in pieces
/// (about two dozen characters, cut after whitespace) with `finish_reason: null`, then an empty
/// piece with the `finish_reason`; with `include_usage`, every chunk carries `"usage": null` and
/// a last chunk with no choices carries the usage; then `[DONE]`. A choice's `logprobs` and
/// unknown fields ride on its first chunk: cutting log-probabilities to the pieces would need
/// the tokens.
pub fn events(completion: &Value, include_usage: bool) -> Vec<Bytes> {
    let template = chunk_template(completion, include_usage);
    let empty = Vec::new();
    let choices = completion
        .get("choices")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut events = Vec::new();
    for (at, choice) in choices.iter().enumerate() {
        for entry in choice_entries(at, choice) {
            events.push(chunk(&template, json!([entry])));
        }
    }
    if include_usage {
        let usage = completion.get("usage").cloned();
        let mut last = template;
        last.insert("choices".into(), json!([]));
        last.insert(
            "usage".into(),
            usage.unwrap_or_else(|| json!(Usage::default())),
        );
        events.push(data(&Value::Object(last)));
    }
    events.push(Bytes::from_static(DONE));
    events
}

/// What every chunk repeats: id, object, created, model and other top-level fields
/// (`system_fingerprint`, vendor fields).
fn chunk_template(completion: &Value, include_usage: bool) -> Map<String, Value> {
    let mut template = Map::new();
    template.insert(
        "id".into(),
        completion.get("id").cloned().unwrap_or(json!("")),
    );
    template.insert("object".into(), json!("text_completion"));
    template.insert(
        "created".into(),
        completion.get("created").cloned().unwrap_or(json!(0)),
    );
    template.insert(
        "model".into(),
        completion.get("model").cloned().unwrap_or(json!("")),
    );
    let others = completion.as_object().into_iter().flatten();
    for (key, value) in others.filter(|(key, _)| !TYPED_FIELDS.contains(&key.as_str())) {
        template.insert(key.clone(), value.clone());
    }
    if include_usage {
        template.insert("usage".into(), Value::Null);
    }
    template
}

/// The streamed entries of one choice: text pieces, then the finish.
fn choice_entries(at: usize, choice: &Value) -> Vec<Value> {
    let index = choice.get("index").cloned().unwrap_or(json!(at));
    let text = choice
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let entry = |piece: &str, finish_reason: Value| {
        let mut entry = Map::new();
        entry.insert("text".into(), json!(piece));
        entry.insert("index".into(), index.clone());
        entry.insert("logprobs".into(), Value::Null);
        entry.insert("finish_reason".into(), finish_reason);
        entry
    };
    let mut entries: Vec<Map<String, Value>> = split_text(text)
        .into_iter()
        .map(|piece| entry(piece, Value::Null))
        .collect();
    let finish_reason = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
    entries.push(entry("", finish_reason));
    let kept = choice.as_object().into_iter().flatten();
    for (key, value) in
        kept.filter(|(k, _)| !matches!(k.as_str(), "text" | "index" | "finish_reason"))
    {
        entries[0].insert(key.clone(), value.clone());
    }
    entries.into_iter().map(Value::Object).collect()
}

fn chunk(template: &Map<String, Value>, choices: Value) -> Bytes {
    let mut chunk = template.clone();
    chunk.insert("choices".into(), choices);
    data(&Value::Object(chunk))
}

fn data(value: &Value) -> Bytes {
    let mut frame = b"data: ".to_vec();
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut frame, value);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

fn string_field<'a>(object: &'a Map<String, Value>, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn one_text_prompt_is_one_user_message() {
        let request = object(json!({"model": "m", "prompt": "Once upon a time"}));
        let messages = conversation(&request).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].role, "user");
        assert_eq!(messages[0].text_for_judge(), "Once upon a time");
        let request = object(json!({"model": "m", "prompt": ["def f():"], "suffix": "return x"}));
        let text = conversation(&request).unwrap()[0].text_for_judge();
        assert!(
            text.starts_with("def f():\n\n[text that must follow"),
            "{text}"
        );
        assert!(text.ends_with("return x"));
    }

    #[test]
    fn prompts_the_judge_cannot_read_are_refused() {
        for prompt in [
            json!(["a", "b"]),
            json!([1, 2]),
            json!([[1, 2]]),
            json!([]),
            json!(3),
        ] {
            let request = object(json!({"model": "m", "prompt": prompt}));
            let error = conversation(&request).unwrap_err();
            assert_eq!(error.param.as_deref(), Some("prompt"), "{prompt}");
        }
        let error = conversation(&object(json!({"model": "m"}))).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("prompt"));
        assert!(conversation(&object(json!({"prompt": "x"})))
            .unwrap_err()
            .message
            .contains("model"));
        let several = conversation(&object(json!({"model": "m", "prompt": ["a", "b"]})));
        assert!(several.unwrap_err().message.contains("one text prompt"));
    }

    #[test]
    fn best_of_is_at_least_n() {
        let check = |request: Value| best_of(&object(request));
        assert_eq!(check(json!({})), Ok(None));
        assert_eq!(check(json!({"best_of": 4, "n": 2})), Ok(Some(4)));
        assert_eq!(check(json!({"best_of": null})), Ok(None));
        for bad in [
            json!({"best_of": 2, "n": 3}),
            json!({"best_of": 0}),
            json!({"best_of": "3"}),
            json!({"best_of": 2.5}),
            json!({"best_of": -1}),
        ] {
            assert_eq!(
                check(bad.clone()).unwrap_err().param.as_deref(),
                Some("best_of"),
                "{bad}"
            );
        }
        assert_eq!(
            check(json!({"best_of": 3, "n": 0}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("n")
        );
        assert_eq!(n(&object(json!({"n": 3}))), 3);
        assert_eq!(
            (n(&object(json!({}))), n(&object(json!({"n": "x"})))),
            (1, 1)
        );
    }

    #[test]
    fn candidate_body_asks_for_one_unstreamed_completion() {
        let request = object(json!({"model": "m", "prompt": "x", "best_of": 5, "n": 2,
            "stream": true, "stream_options": {"include_usage": true}, "logprobs": 3,
            "echo": true, "suffix": "s", "vendor": {"a": 1}}));
        let body = Value::Object(candidate_body(&request));
        assert!(body.get("best_of").is_none() && body.get("stream_options").is_none());
        assert_eq!((&body["n"], &body["stream"]), (&json!(1), &json!(false)));
        for key in ["logprobs", "echo", "suffix", "vendor", "prompt", "model"] {
            assert_eq!(body[key], request[key], "{key}");
        }
        let plain = candidate_body(&object(json!({"model": "m", "prompt": "x", "best_of": 2})));
        assert_eq!(Value::Object(plain), json!({"model": "m", "prompt": "x"}));
    }

    fn text_completion() -> Value {
        json!({"id": "cmpl-1", "object": "text_completion", "created": 1700000000,
            "model": "gpt-3.5-turbo-instruct", "system_fingerprint": "fp", "choices": [
                {"text": " there was a cat who liked to nap in warm places all day long.",
                 "index": 0, "logprobs": {"tokens": [" there"], "token_logprobs": [-0.1],
                    "top_logprobs": null, "text_offset": [16]},
                 "finish_reason": "length", "x_score": 0.5},
                {"text": "!", "index": 1, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20}})
    }

    #[test]
    fn text_completion_round_trips_through_the_chat_view() {
        let original = text_completion();
        let view = to_completion(&original).unwrap();
        assert_eq!(view.choices.len(), 2);
        let choice = &view.choices[0];
        assert_eq!(choice.message["role"], "assistant");
        assert!(choice.content().unwrap().starts_with(" there was a cat"));
        assert_eq!(choice.finish_reason.as_deref(), Some("length"));
        assert_eq!(choice.extra["logprobs"]["token_logprobs"][0], -0.1);
        assert_eq!(choice.extra["x_score"], 0.5);
        assert_eq!(view.usage.as_ref().unwrap().total_tokens, 20);
        assert_eq!(view.extra["system_fingerprint"], "fp");
        assert_eq!(from_completion(&view), original);
        assert!(to_completion(&json!({"choices": []})).is_err());
        assert!(to_completion(&json!({"error": {"message": "x"}})).is_err());
        assert!(to_completion(&json!({"choices": [{"text": 1}]})).is_err());
        assert!(to_completion(&json!("text")).is_err());
    }

    fn parse(events: &[Bytes]) -> Vec<Value> {
        let (done, chunks) = events.split_last().unwrap();
        assert_eq!(done.as_ref(), DONE);
        let data = |e: &Bytes| {
            let text = std::str::from_utf8(e).unwrap();
            let json = text
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap();
            serde_json::from_str(json).unwrap()
        };
        chunks.iter().map(data).collect()
    }

    #[test]
    fn stream_pieces_reassemble_each_choice() {
        let completion = text_completion();
        let chunks = parse(&events(&completion, true));
        let (usage, chunks) = chunks.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], completion["usage"]);
        for chunk in chunks {
            assert_eq!(chunk["object"], "text_completion");
            assert_eq!(
                (&chunk["id"], &chunk["system_fingerprint"]),
                (&json!("cmpl-1"), &json!("fp"))
            );
            assert!(chunk["usage"].is_null() && chunk.get("usage").is_some());
        }
        for index in 0..2 {
            let mine: Vec<&Value> = chunks
                .iter()
                .map(|c| &c["choices"][0])
                .filter(|c| c["index"] == index)
                .collect();
            let text: String = mine.iter().map(|c| c["text"].as_str().unwrap()).collect();
            assert_eq!(text, completion["choices"][index]["text"].as_str().unwrap());
            let (last, pieces) = mine.split_last().unwrap();
            assert_eq!(
                last["finish_reason"],
                completion["choices"][index]["finish_reason"]
            );
            assert!(pieces.iter().all(|c| c["finish_reason"].is_null()));
        }
        assert!(chunks.len() >= 5, "{}", chunks.len());
        assert_eq!(
            chunks[0]["choices"][0]["logprobs"],
            completion["choices"][0]["logprobs"]
        );
        assert_eq!(chunks[0]["choices"][0]["x_score"], 0.5);
        let plain = parse(&events(&completion, false));
        assert!(plain.iter().all(|c| c.get("usage").is_none()));
    }
}
