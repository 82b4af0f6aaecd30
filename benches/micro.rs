//! Micro-benchmarks of the per-request hot spots: parsing and re-serialising a chat request,
//! the cache key, verdict parsing, and SSE encoding of a 4 kB answer.
//!
//! `cargo bench --bench micro`. These find regressions in one function; what a user feels is
//! measured end to end by `cargo bench --bench proxy`.

use std::hint::black_box;

use bon_proxy::cache::KeyBuilder;
use bon_proxy::judge::protocol;
use bon_proxy::openai::chat_events;
use bon_proxy::openai::{ChatCompletion, ChatRequest};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

fn request_body() -> Vec<u8> {
    json!({
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant who answers concisely."},
            {"role": "user", "content": "Why is a balanced diet important? Give three reasons."},
            {"role": "assistant", "content": "Energy, immunity, and long-term health."},
            {"role": "user", "content": "Expand on the second one, with an example."}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "response_format": {"type": "text"},
        "vendor_field": {"nested": [1, 2, 3]}
    })
    .to_string()
    .into_bytes()
}

fn answer_4kb() -> ChatCompletion {
    let sentence =
        "A balanced diet supplies the protein, fats, vitamins and minerals the body needs. ";
    let content = sentence.repeat(4096 / sentence.len());
    serde_json::from_value(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "system_fingerprint": "fp",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 900, "total_tokens": 1000}
    }))
    .expect("a valid completion")
}

fn benches(c: &mut Criterion) {
    let body = request_body();
    c.bench_function("request: parse and re-serialise", |b| {
        b.iter(|| {
            let request = ChatRequest::parse(black_box(&body)).expect("valid");
            serde_json::to_vec(&request.candidate_body()).expect("serialisable")
        })
    });

    let value: Value = serde_json::from_slice(&body).expect("valid");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-client"),
    );
    c.bench_function("cache key", |b| {
        b.iter(|| {
            KeyBuilder::new(b"best_of_n|5|listwise|fingerprint|/v1/chat/completions")
                .request(black_box(&value))
                .tenant(&headers, None)
                .finish()
        })
    });

    let verdict = "<think>Candidate 2 is clearer, candidate 4 misses the point.</think>\
        Candidate 2 answers every part. <best>2</best>\n<ranking>2,5,1,3,4</ranking>";
    c.bench_function("verdict: listwise parse", |b| {
        b.iter(|| protocol::parse_listwise(black_box(verdict), 5).expect("valid verdict"))
    });

    let answer = answer_4kb();
    c.bench_function("sse: encode a 4 kB answer", |b| {
        b.iter(|| chat_events::encode(black_box(&answer), true))
    });
}

criterion_group!(micro, benches);
criterion_main!(micro);
