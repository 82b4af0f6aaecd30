//! The demo's reward-model server: `POST /rerank` in text-embeddings-inference's shape
//! (`texts`) or Cohere's (`documents`), and vLLM's `POST /pooling` (`messages`), so that a
//! `reward_model` judge of any `format` can be tried offline.
//!
//! Every text gets the judge rubric's verdict as a raw reward, `rubric / 3 − 2` (0 points
//! −2, 6 points 0, 12 points +2), so structured answers win here as they do with the LLM
//! judges. TEI answers the raw reward with `raw_scores: true` and its logistic otherwise, as
//! TEI itself does; Cohere's `relevance_score` is the logistic; `/pooling` answers `[reward]`,
//! a one-label classifier's output.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::embeddings::MAX_EMBEDDING_INPUTS;
use super::generate::{approx_tokens, unix_now};
use super::judge::rubric;
use super::wire::*;

/// `POST /rerank`: TEI's shape when the request has `texts`, Cohere's when `documents`.
pub(super) fn rerank(request: &Value) -> Response<Body> {
    let Some(query) = str_at(request, "/query") else {
        return bad_request("'query' must be a string.");
    };
    let (texts, cohere) = match (request.get("texts"), request.get("documents")) {
        (Some(texts), None) => (texts, false),
        (None, Some(documents)) => (documents, true),
        _ => return bad_request(
            "Send 'texts' (text-embeddings-inference) or 'documents' (Cohere): a list of strings.",
        ),
    };
    let Some(texts) = document_texts(texts) else {
        return bad_request("The texts to rank must be a list of 1 to 2048 strings.");
    };
    let ranked = ranked(&texts);
    if cohere {
        return json_response(StatusCode::OK, &cohere_answer(&ranked, query));
    }
    let raw = request.get("raw_scores").and_then(Value::as_bool) == Some(true);
    let rank = |&(index, reward): &(usize, f64)| {
        let score = if raw { reward } else { logistic(reward) };
        json!({"index": index, "score": score})
    };
    json_response(StatusCode::OK, &ranked.iter().map(rank).collect())
}

/// `POST /pooling` with `messages`: the reward of the last message, the answer being scored.
pub(super) fn pooling(request: &Value) -> Response<Body> {
    let messages = request.get("messages").and_then(Value::as_array);
    let Some(last) = messages.and_then(|m| m.last()) else {
        return bad_request("'messages' must be a non-empty list of chat messages.");
    };
    let mut text = String::new();
    super::chat::append_text(last.get("content"), &mut text);
    let all: String = messages
        .into_iter()
        .flatten()
        .map(Value::to_string)
        .collect();
    let tokens = approx_tokens(&all);
    let model = str_at(request, "/model").unwrap_or("demo-reward");
    let body = json!({
        "id": format!("pool-demo-{:016x}", super::generate::fnv1a(all.as_bytes())),
        "object": "list",
        "created": unix_now(),
        "model": model,
        "data": [{"index": 0, "object": "pooling", "data": [reward(&text)]}],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    });
    json_response(StatusCode::OK, &body)
}

/// The texts of a rerank request: strings, or Cohere's `{"text": …}` objects.
fn document_texts(list: &Value) -> Option<Vec<&str>> {
    let items = list.as_array()?;
    if !(1..=MAX_EMBEDDING_INPUTS).contains(&items.len()) {
        return None;
    }
    items.iter().map(document_text).collect()
}

fn document_text(item: &Value) -> Option<&str> {
    item.as_str().or_else(|| str_at(item, "/text"))
}

/// `(index, raw reward)`, best first; equal rewards keep request order.
fn ranked(texts: &[&str]) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (i, reward(t)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}

fn cohere_answer(ranked: &[(usize, f64)], query: &str) -> Value {
    let results: Vec<Value> = ranked
        .iter()
        .map(|&(index, reward)| json!({"index": index, "relevance_score": logistic(reward)}))
        .collect();
    json!({
        "id": format!("rerank-demo-{:016x}", super::generate::fnv1a(query.as_bytes())),
        "results": results,
        "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
    })
}

pub(super) fn reward(text: &str) -> f64 {
    rubric(text) as f64 / 3.0 - 2.0
}

pub(super) fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
