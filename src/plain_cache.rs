//! Caching plain chat completions, when `cache.passthrough = true`.
//!
//! A plain (not best-of-N) chat completion is read whole, answered from the cache when it can
//! be, and stored when the upstream answered it with a chat completion. A streamed request is
//! served from the cache on a hit, as SSE; on a miss it passes through as a live stream and is
//! not stored, since storing it would mean holding the stream back.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response};
use serde_json::Value;

use crate::answer::{self, Failed, Ready};
use crate::auth::ClientKey;
use crate::body::{self, Body};
use crate::cache::{self, AnswerCache, KeyBuilder, Outcome, Policy};
use crate::openai::Api;
use crate::openai::ChatCompletion;
use crate::state::AppState;
use crate::{passthrough, streaming};

/// Answers a plain chat completion whose body (`bytes`) has been read whole.
pub async fn handle(
    state: Arc<AppState>,
    cache: &AnswerCache,
    parts: http::request::Parts,
    bytes: Bytes,
) -> Response<Body> {
    let started = Instant::now();
    // Not a JSON object: the upstream's business, not the cache's.
    let Ok(request @ Value::Object(_)) = serde_json::from_slice::<Value>(&bytes) else {
        return forward(&state, parts, bytes, started).await;
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let key = KeyBuilder::new(format!("plain|{target}").as_bytes())
        .request(&request)
        .tenant(
            &parts.headers,
            parts.extensions.get::<Arc<ClientKey>>().map(|k| &**k),
        )
        .finish();
    let policy = Policy::from_headers(&parts.headers);
    if request.get("stream") == Some(&Value::Bool(true)) {
        let include_usage =
            request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
        if let Some((hit, outcome)) = cache.lookup(key, policy, false).await {
            let mut response =
                streaming::events_response(hit.headers.clone(), hit.sse_events(include_usage));
            cache::set_outcome_header(response.headers_mut(), outcome);
            return response;
        }
        let outcome = if policy == Policy::Use {
            Outcome::Miss
        } else {
            Outcome::Bypass
        };
        let mut response = forward(&state, parts, bytes, started).await;
        cache::set_outcome_header(response.headers_mut(), outcome);
        return response;
    }
    let compute = fetch(state.clone(), target, parts.headers, bytes);
    let (result, outcome) = cache.get_or_compute(key, policy, false, compute).await;
    match result {
        Ok(mut ready) => {
            cache::set_outcome_header(&mut ready.headers, outcome);
            ready.into_json_response()
        }
        Err(failed) => failed.into_response(),
    }
}

/// Passes the already read request on, as passthrough would have.
async fn forward(
    state: &AppState,
    parts: http::request::Parts,
    bytes: Bytes,
    started: Instant,
) -> Response<Body> {
    passthrough::forward(
        &state.upstream,
        &state.metrics,
        parts,
        body::full(bytes),
        started,
    )
    .await
}

/// One upstream call; anything but a chat completion goes back to the client as it came.
async fn fetch(
    state: Arc<AppState>,
    target: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Ready, Failed> {
    let started = Instant::now();
    let sent = state
        .upstream
        .post_json(
            &target,
            &headers,
            body.into(),
            state.config.upstream.timeout,
        )
        .await;
    state.metrics.upstream_call(
        "passthrough",
        &crate::upstream::call_status(&sent),
        started.elapsed(),
    );
    let reply = sent.map_err(|error| Failed::Proxy(error.to_api_error()))?;
    let completion = match reply.status.is_success() {
        true => ChatCompletion::parse(&reply.body).ok(),
        false => None,
    };
    let Some(completion) = completion else {
        return Err(Failed::Upstream(Box::new(reply)));
    };
    let mut ready_headers = HeaderMap::new();
    answer::copy_upstream_headers(&reply.headers, &mut ready_headers);
    ready_headers.remove(http::header::CONTENT_TYPE);
    Ok(Ready {
        completion,
        api: Api::Chat,
        native: None,
        headers: ready_headers,
        debug: None,
        cacheable: true,
    })
}
