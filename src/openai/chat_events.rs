//! A finished `chat.completion` re-encoded as the stream of `chat.completion.chunk` events
//! OpenAI would have sent, so streaming clients cannot tell a best-of-N answer (or a cache hit)
//! from a live one. The framing (`data:` lines, `[DONE]`, comments) is [`crate::sse`]'s.
//!
//! Per choice: a first delta with the role, the content split into several deltas, a refusal
//! and tool calls as their own deltas (tool call head first, arguments in pieces), then a
//! delta-less chunk with `finish_reason`. With `include_usage`, every chunk carries
//! `"usage": null` and one last chunk with no choices carries the usage. Then `[DONE]`.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{ChatCompletion, Choice};
use crate::sse::{event, split_text, DONE};

/// Encodes `completion` as the SSE events of a streamed answer, `[DONE]` included.
pub fn encode(completion: &ChatCompletion, include_usage: bool) -> Vec<Bytes> {
    let template = chunk_template(completion, include_usage);
    let frame = ChunkFrame::new(&template);
    let mut events = Vec::new();
    for choice in &completion.choices {
        for (position, (delta, finish_reason, logprobs)) in
            choice_deltas(choice).into_iter().enumerate()
        {
            if position > 0 && logprobs.is_null() && finish_reason.is_null() {
                if let Some(Value::String(piece)) =
                    delta.get("content").filter(|_| delta.len() == 1)
                {
                    events.push(frame.content_chunk(choice.index, piece));
                    continue;
                }
            }
            let mut entry = Map::new();
            entry.insert("index".into(), json!(choice.index));
            if position == 0 {
                // Choice-level fields the proxy does not know (e.g. content filter results)
                // ride on the choice's first chunk.
                for (key, value) in choice.extra.iter().filter(|(k, _)| *k != "logprobs") {
                    entry.insert(key.clone(), value.clone());
                }
            }
            entry.insert("delta".into(), Value::Object(delta));
            entry.insert("logprobs".into(), logprobs);
            entry.insert("finish_reason".into(), finish_reason);
            events.push(frame.chunk(&Value::Object(entry)));
        }
    }
    if include_usage {
        let mut chunk = template;
        chunk.insert("choices".into(), json!([]));
        chunk.insert(
            "usage".into(),
            json!(completion.usage.clone().unwrap_or_default()),
        );
        events.push(event(&Value::Object(chunk)));
    }
    events.push(Bytes::from_static(DONE));
    events
}

/// The fixed part of every chunk of one answer, serialised once: a 4 kB answer is some
/// 170 chunks, and re-encoding id, model and extras for each was most of the cost.
struct ChunkFrame {
    /// `data: {"id":…,"object":"chat.completion.chunk",…,` up to where `choices` goes.
    head: Vec<u8>,
}

impl ChunkFrame {
    fn new(template: &Map<String, Value>) -> ChunkFrame {
        let mut head = b"data: ".to_vec();
        let object = serde_json::to_vec(template).unwrap_or_else(|_| b"{}".to_vec());
        head.extend_from_slice(&object[..object.len().saturating_sub(1)]);
        if template.is_empty() {
            head.push(b'{');
        } else {
            head.push(b',');
        }
        ChunkFrame { head }
    }

    /// The most common event, a piece of content, written without building a JSON tree.
    fn content_chunk(&self, index: u32, piece: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.head.len() + piece.len() + 96);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[{\"index\":");
        out.extend_from_slice(index.to_string().as_bytes());
        out.extend_from_slice(b",\"delta\":{\"content\":");
        if serde_json::to_writer(&mut out, piece).is_err() {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
        Bytes::from(out)
    }

    /// One event: the head, then `"choices":[entry]}` and the blank line.
    fn chunk(&self, entry: &Value) -> Bytes {
        let mut out = Vec::with_capacity(self.head.len() + 128);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[");
        if serde_json::to_writer(&mut out, entry).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"]}\n\n");
        Bytes::from(out)
    }
}

/// The fields every chunk repeats: id, object, created, model, and whatever else the
/// completion carried at top level (system_fingerprint, service_tier, vendor fields).
fn chunk_template(completion: &ChatCompletion, include_usage: bool) -> Map<String, Value> {
    let mut chunk = Map::new();
    chunk.insert("id".into(), json!(completion.id));
    chunk.insert("object".into(), json!("chat.completion.chunk"));
    chunk.insert("created".into(), json!(completion.created));
    chunk.insert("model".into(), json!(completion.model));
    for (key, value) in &completion.extra {
        chunk.insert(key.clone(), value.clone());
    }
    if include_usage {
        chunk.insert("usage".into(), Value::Null);
    }
    chunk
}

type Delta = (Map<String, Value>, Value, Value);

/// The deltas of one choice: (delta, finish_reason, logprobs).
fn choice_deltas(choice: &Choice) -> Vec<Delta> {
    let message = &choice.message;
    let content = choice.content();
    let mut deltas = Vec::new();
    let mut first = Map::new();
    first.insert(
        "role".into(),
        message.get("role").cloned().unwrap_or(json!("assistant")),
    );
    first.insert(
        "content".into(),
        if content.is_some() {
            json!("")
        } else {
            Value::Null
        },
    );
    // Fields the proxy does not know (audio, annotations, vendor data) travel in the first delta.
    for (key, value) in message {
        if !matches!(key.as_str(), "role" | "content" | "refusal" | "tool_calls") {
            first.insert(key.clone(), value.clone());
        }
    }
    first.insert("refusal".into(), Value::Null);
    deltas.push((first, Value::Null, Value::Null));
    let mut logprobs = choice.extra.get("logprobs").cloned().unwrap_or(Value::Null);
    for piece in split_text(content.unwrap_or_default()) {
        let delta = Map::from_iter([("content".to_string(), json!(piece))]);
        deltas.push((delta, Value::Null, std::mem::take(&mut logprobs)));
    }
    for piece in split_text(choice.refusal().unwrap_or_default()) {
        let delta = Map::from_iter([("refusal".to_string(), json!(piece))]);
        deltas.push((delta, Value::Null, Value::Null));
    }
    for (index, call) in choice.tool_calls().into_iter().flatten().enumerate() {
        deltas.extend(tool_call_deltas(index, call));
    }
    let finish = json!(choice.finish_reason);
    deltas.push((Map::new(), finish, Value::Null));
    deltas
}

/// A tool call as OpenAI streams it: index, id, type and name with empty arguments first,
/// then the arguments in pieces.
fn tool_call_deltas(index: usize, call: &Value) -> Vec<Delta> {
    let function = call.get("function").cloned().unwrap_or(json!({}));
    let arguments = function
        .get("arguments")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut head_function = function.as_object().cloned().unwrap_or_default();
    head_function.insert("arguments".into(), json!(""));
    let mut head = call.as_object().cloned().unwrap_or_default();
    head.insert("index".into(), json!(index));
    head.insert("function".into(), Value::Object(head_function));
    let wrap = |tool_call: Value| {
        let delta = Map::from_iter([("tool_calls".to_string(), json!([tool_call]))]);
        (delta, Value::Null, Value::Null)
    };
    let mut deltas = vec![wrap(Value::Object(head))];
    for piece in split_text(arguments) {
        deltas.push(wrap(
            json!({"index": index, "function": {"arguments": piece}}),
        ));
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(message: Value, finish: &str) -> ChatCompletion {
        serde_json::from_value(json!({
            "id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "system_fingerprint": "fp", "choices": [{"index": 0, "message": message,
            "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        }))
        .unwrap()
    }

    fn parse(events: &[Bytes]) -> Vec<Value> {
        events
            .iter()
            .map(|e| std::str::from_utf8(e).unwrap())
            .filter(|e| *e != "data: [DONE]\n\n")
            .map(|e| serde_json::from_str(e.trim_start_matches("data: ").trim()).unwrap())
            .collect()
    }

    #[test]
    fn content_streams_in_several_deltas_and_reassembles() {
        let text =
            "Balanced diets matter because the body needs many different nutrients to work well.";
        let events = encode(
            &completion(json!({"role": "assistant", "content": text}), "stop"),
            true,
        );
        assert_eq!(events.last().unwrap().as_ref(), DONE);
        let chunks = parse(&events);
        assert!(chunks
            .iter()
            .all(|c| c["id"] == "c1" && c["created"] == 7 && c["system_fingerprint"] == "fp"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, text);
        let content_chunks = chunks
            .iter()
            .filter(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
            .count();
        assert!(content_chunks >= 3, "{content_chunks}");
        let last_choice = &chunks[chunks.len() - 2]["choices"][0];
        assert_eq!(last_choice["finish_reason"], "stop");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 3);
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null()));
    }

    #[test]
    fn tool_calls_stream_head_then_arguments() {
        let message = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
             "arguments": "{\"location\": \"Paris, France\", \"unit\": \"celsius\", \"days\": 3}"}}]});
        let chunks = parse(&encode(&completion(message, "tool_calls"), false));
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(calls[0][0]["id"], "call_1");
        assert_eq!(calls[0][0]["index"], 0);
        assert_eq!(calls[0][0]["function"]["name"], "get_weather");
        let args: String = calls
            .iter()
            .filter_map(|c| c[0]["function"]["arguments"].as_str())
            .collect();
        assert!(calls.len() > 2);
        assert_eq!(
            args,
            "{\"location\": \"Paris, France\", \"unit\": \"celsius\", \"days\": 3}"
        );
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn refusal_is_streamed_as_refusal_deltas() {
        let message =
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."});
        let chunks = parse(&encode(&completion(message, "stop"), false));
        let refusal: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["refusal"].as_str())
            .collect();
        assert_eq!(refusal, "I can't help with that.");
    }
}
