//! Helpers for the inspector's tests (`tests/ui.rs`, `tests/ui_access.rs`): a config whose
//! requests all compute their answer, best-of-2 requests with a chosen request id, the JSON
//! API read back, and the live view's event stream read until something shows up.

use std::time::Duration;

use bon_proxy::Config;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::mock::MockUpstream;
use super::{client, config_for, post_chat, send, Answer, Proxy};

/// Longest a step of an inspector test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config against `mock` where every request computes its answer (no cache hits).
pub fn ui_config(mock: &MockUpstream) -> Config {
    let mut config = config_for(mock);
    config.cache.enabled = false;
    config
}

pub async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::default()).unwrap()).await
}

/// A best-of-2 request for `model` with the request id `id`, answered with 200.
pub async fn ask(proxy: &Proxy, model: &str, id: &str, extra: &[(&str, &str)]) -> Answer {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("question {id}")}],
    });
    let mut headers = vec![("x-best-of-n", "2"), ("x-request-id", id)];
    headers.extend_from_slice(extra);
    let answer = post_chat(proxy, &headers, body.to_string()).await;
    answer.expect_ok();
    answer
}

pub async fn listing(proxy: &Proxy, query: &str) -> Value {
    let answer = get(proxy, &format!("/ui/api/decisions{query}"), &[]).await;
    answer.expect_ok();
    answer.json()
}

pub fn request_ids(listing: &Value) -> Vec<String> {
    let decisions = listing["decisions"].as_array().expect("a decisions list");
    decisions
        .iter()
        .map(|d| d["request_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The kept decision whose request id is `id`, everything kept of it.
pub async fn detail_of(proxy: &Proxy, id: &str) -> Value {
    let list = listing(proxy, "").await;
    let found = list["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["request_id"] == id)
        .unwrap_or_else(|| panic!("no decision for {id}: {list}"));
    let answer = get(proxy, &format!("/ui/api/decisions/{}", found["id"]), &[]).await;
    answer.expect_ok();
    answer.json()
}

/// Reads the event stream until `want` shows up in it, returning what was read.
pub async fn read_events_until(body: &mut hyper::body::Incoming, want: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(want) {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame.expect("an event stream frame").into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    seen
}

pub async fn open_events(proxy: &Proxy, headers: &[(&str, &str)]) -> hyper::body::Incoming {
    let mut request = Request::get(proxy.url("/ui/events"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::<Bytes>::default()).unwrap();
    let response = client().request(request).await.expect("the event stream");
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").unwrap();
    assert_eq!(content_type, "text/event-stream");
    response.into_body()
}
