//! `GET /v1/models` and `POST /v1/embeddings`: fixed models and deterministic vectors.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::generate::*;
use super::wire::*;

pub(super) const MAX_EMBEDDING_INPUTS: usize = 2048;
pub(super) const MAX_DIMENSIONS: u64 = 8192;

pub(super) fn models() -> Value {
    let model = |id| {
        json!({"id": id, "object": "model", "created": 1_700_000_000_u64,
        "owned_by": "bon-proxy-demo"})
    };
    json!({"object": "list", "data": [model("demo"), model("demo-judge")]})
}

pub(super) fn embeddings(request: &Value) -> Response<Body> {
    let dimensions = match request.get("dimensions").filter(|d| !d.is_null()) {
        None => 16,
        Some(value) => match value.as_u64() {
            Some(d @ 1..=MAX_DIMENSIONS) => d as usize,
            _ => return bad_request("'dimensions' must be an integer between 1 and 8192."),
        },
    };
    let inputs = embedding_inputs(request.get("input"));
    if !(1..=MAX_EMBEDDING_INPUTS).contains(&inputs.len()) {
        return bad_request("'input' must be a string or an array of 1 to 2048 inputs.");
    }
    let item = |(index, text): (usize, &String)| {
        json!({"object": "embedding", "index": index,
        "embedding": embedding(text, dimensions)})
    };
    let data: Vec<Value> = inputs.iter().enumerate().map(item).collect();
    let tokens: u64 = inputs.iter().map(|text| approx_tokens(text)).sum();
    let model = str_at(request, "/model").unwrap_or("demo");
    let body = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    json_response(StatusCode::OK, &body)
}

/// The texts to embed; anything that is not a string is embedded by its JSON text.
pub(super) fn embedding_inputs(input: Option<&Value>) -> Vec<String> {
    let text = |item: &Value| match item {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match input {
        Some(Value::Array(items)) if items.is_empty() => Vec::new(),
        // A flat array of numbers is one pre-tokenised input, not many inputs.
        Some(Value::Array(items)) if !items.iter().all(Value::is_number) => {
            items.iter().map(text).collect()
        }
        Some(one @ (Value::String(_) | Value::Array(_))) => vec![text(one)],
        _ => Vec::new(),
    }
}

pub(super) fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut rng = Rng(fnv1a(text.as_bytes()));
    let mut vector: Vec<f32> = (0..dimensions).map(|_| rng.signed_unit()).collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}
