//! A planned request's way in: its body read under the limits its plan allows, a work slot and
//! (for best-of-N) a share of the memory budget taken, then the hand-off to passthrough or
//! best-of-N.
//!
//! Nothing is read before the plan says how: passthrough uploads stream as they arrive when a
//! place is free; requests on the routes best-of-N serves are read whole first, since their
//! bodies may switch best-of-N on (see `plan`). A slow or oversized body is refused before it
//! holds anything other clients need (see `intake`), and such refusals count as `rejected`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::admission::{Admission, Held, MemoryShare, Refused};
use crate::auth::ClientKey;
use crate::body::{self, Body};
use crate::body_deadline::BodyRules;
use crate::cache::AnswerCache;
use crate::config::Config;
use crate::error::ApiError;
use crate::intake::{self, Limit, Received, Refused as BodyRefused};
use crate::openai::Api;
use crate::plan::{self, Plan, Switches};
use crate::state::AppState;
use crate::{best_of_n, passthrough, plain_cache};

/// What the way in holds for every request: the process state, the admission limits and the
/// body deadlines.
pub(crate) struct Gate {
    pub state: Arc<AppState>,
    pub admission: Admission,
    pub body_rules: BodyRules,
}

const X_REQUEST_ID: &str = "x-request-id";

/// Reads the body (whole, or its head for uploads), takes a work slot, and forwards, through
/// the plain-completion cache when it applies. `Err` is a refusal, sent before any work.
pub(crate) async fn passthrough(
    gate: &Gate,
    request: Request<Incoming>,
    arrived: tokio::time::Instant,
) -> Result<(Response<Body>, Held), Response<Body>> {
    let state = &gate.state;
    let server = &state.config.server;
    let (parts, incoming) = request.into_parts();
    let limit = passthrough_body_limit(&state.config);
    let rules = gate.body_rules;
    let cache = plain_cache_for(state, &parts);
    // A key limited to some models has its request's `model` read: the body is read first.
    let checks_model = client(&parts).is_some_and(|k| k.limits_models());
    // Forwarded while it arrives when a streaming place is free (the common, cheapest way);
    // otherwise, and for the plain-completion cache, read first so it holds no slot meanwhile.
    let place = (cache.is_none() && !checks_model)
        .then(|| gate.admission.streaming_place())
        .flatten();
    let received = match place {
        Some(place) => intake::stream(&parts.headers, incoming, limit, rules, arrived, place).await,
        None => {
            let buffer = server.body_buffer_bytes;
            intake::read_head(&parts.headers, incoming, limit, buffer, rules, arrived).await
        }
    }
    .map_err(BodyRefused::into_response)?;
    if checks_model {
        let model = received_model(&received, server.body_buffer_bytes);
        model
            .and_then(|model| within_key(gate, &parts, None, &model))
            .map_err(ApiError::into_response)?;
    }
    let held = gate.admission.work().map_err(Refused::into_response)?;
    let response = match (cache, received) {
        (Some(cache), Received::Whole(bytes)) => {
            Box::pin(plain_cache::handle(state.clone(), cache, parts, bytes)).await
        }
        (_, received) => {
            let body = match received {
                Received::Whole(bytes) => body::full(bytes),
                Received::Streaming(body) => body,
            };
            forward(state, parts, body).await
        }
    };
    Ok((response, held))
}

/// A request best-of-N may serve. Its body is read whole, as best-of-N reads bodies when the
/// headers or the config already ask for it, and otherwise as passthrough reads them; then the
/// body's own switches settle the plan. `Err` is a refusal before any work (mode `rejected`).
pub(crate) async fn open(
    gate: &Gate,
    (api, switches): (Api, Switches),
    request: Request<Incoming>,
    arrived: tokio::time::Instant,
) -> Result<(&'static str, Response<Body>, Held), Response<Body>> {
    let state = &gate.state;
    let config = &state.config;
    let as_best_of_n = plan::expects_best_of_n(&switches, config);
    let (mut parts, incoming) = request.into_parts();
    let mut share = gate.admission.memory_share();
    let read = read_open_body(
        gate,
        as_best_of_n,
        &parts.headers,
        incoming,
        arrived,
        &mut share,
    );
    let bytes = match read.await? {
        OpenBody::Whole(bytes) => bytes,
        // Switches are read from bodies up to `server.body_buffer_bytes`; a larger upload is
        // forwarded as it arrives.
        OpenBody::Upload(body) => {
            if client(&parts).is_some_and(|k| k.limits_models()) {
                return Err(unreadable_model(config.server.body_buffer_bytes).into_response());
            }
            let Ok(held) = gate.admission.work() else {
                return Ok((
                    "passthrough",
                    Refused::Busy.into_response(),
                    Held::default(),
                ));
            };
            return Ok(("passthrough", forward(state, parts, body).await, held));
        }
    };
    let opened = (api, switches);
    let planned = plan::with_body(opened, &parts.headers, bytes, config, &state.judges);
    let (plan, bytes) = planned.map_err(ApiError::into_response)?;
    // Switches taken out of the body shortened it; the whole body is here, so its length is
    // known either way.
    let length = HeaderValue::from(bytes.len());
    parts.headers.insert(header::CONTENT_LENGTH, length);
    if let (Plan::Passthrough, Some(key)) = (&plan, client(&parts)) {
        if key.limits_models() {
            within_key(gate, &parts, None, &model_of(&bytes)).map_err(ApiError::into_response)?;
        }
    }
    match plan {
        Plan::Passthrough => {
            // A full proxy is still a planned passthrough, counted as one.
            let Ok(held) = gate.admission.work() else {
                return Ok((
                    "passthrough",
                    Refused::Busy.into_response(),
                    Held::default(),
                ));
            };
            let response = match plain_cache_for(state, &parts) {
                Some(cache) => {
                    Box::pin(plain_cache::handle(state.clone(), cache, parts, bytes)).await
                }
                None => forward(state, parts, body::full(bytes)).await,
            };
            Ok(("passthrough", response, held))
        }
        Plan::BestOfN(plan) => {
            let (response, held) = Box::pin(best_of_n(gate, plan, parts, bytes, share)).await?;
            Ok(("best_of_n", response, held))
        }
    }
}

/// The body of an open request, as far as planning reads it.
enum OpenBody {
    Whole(Bytes),
    /// Larger than `server.body_buffer_bytes` with nothing asking for best-of-N: forwarded as
    /// it arrives, its switches (if any) unread.
    Upload(Body),
}

/// Reads an open request's body: as best-of-N reads bodies (its limit, charged to the memory
/// budget, JSON only) when the headers or config already ask for it, else as passthrough does.
async fn read_open_body(
    gate: &Gate,
    as_best_of_n: bool,
    headers: &http::HeaderMap,
    incoming: Incoming,
    arrived: tokio::time::Instant,
    share: &mut MemoryShare,
) -> Result<OpenBody, Response<Body>> {
    let config = &gate.state.config;
    let rules = gate.body_rules;
    if as_best_of_n {
        if let Err(error) = best_of_n::check_content_type(headers) {
            let refused = intake::refuse(error, incoming, rules, arrived).await;
            return Err(refused.into_response());
        }
        let limit = best_of_n_body_limit(config);
        let read = intake::read_whole(headers, incoming, limit, rules, arrived, share).await;
        return read
            .map(OpenBody::Whole)
            .map_err(BodyRefused::into_response);
    }
    let limit = passthrough_body_limit(config);
    let buffer = config.server.body_buffer_bytes;
    match intake::read_head(headers, incoming, limit, buffer, rules, arrived).await {
        Ok(Received::Whole(bytes)) => Ok(OpenBody::Whole(bytes)),
        Ok(Received::Streaming(body)) => Ok(OpenBody::Upload(body)),
        Err(refused) => Err(refused.into_response()),
    }
}

/// Checks a best-of-N request, takes a work slot and its share of the memory budget, and
/// answers. `Err` is a refusal, sent before any work, and logged (an answer's own failure is
/// logged where it is known, in `best_of_n::handle`, streams too).
async fn best_of_n(
    gate: &Gate,
    plan: plan::BestOfN,
    parts: http::request::Parts,
    bytes: Bytes,
    share: MemoryShare,
) -> Result<(Response<Body>, Held), Response<Body>> {
    let state = &gate.state;
    let size = bytes.len();
    within_key(gate, &parts, Some(plan.n), &[]).map_err(ApiError::into_response)?;
    let key = client(&parts).cloned();
    let prepared = checked(state, plan, parts, bytes).map_err(|(error, request_id)| {
        let error_text = state.upstream.redact(&error.to_string());
        let status = error.status.as_u16();
        tracing::warn!(request_id, status, error = %error_text, "best-of-N request failed");
        error.into_response()
    })?;
    if let Some(key) = key.filter(|k| k.limits_models()) {
        for model in prepared.models_asked() {
            let allowed =
                refuse_for_key(gate, key.check_model(model, "model"), "model_not_allowed");
            allowed.map_err(ApiError::into_response)?;
        }
    }
    // Past this point the request is a planned best-of-N one: a full proxy is counted as such.
    let held = match gate.admission.work() {
        Ok(held) => held,
        Err(refused) => return Ok((refused.into_response(), Held::default())),
    };
    let held = (gate.admission)
        .best_of_n_memory(held, share, size, prepared.n())
        .await;
    let mut held = match held {
        Ok(held) => held,
        Err(refused) => return Ok((refused.into_response(), Held::default())),
    };
    let response = best_of_n::handle(state.clone(), prepared).await;
    // A whole answer in memory (not a stream still being computed) no longer needs its share,
    // however slowly the client reads it.
    if http_body::Body::size_hint(response.body())
        .exact()
        .is_some()
    {
        held.release_memory();
    }
    Ok((response, held))
}

/// Forwards a request upstream as it is.
async fn forward(state: &Arc<AppState>, parts: http::request::Parts, body: Body) -> Response<Body> {
    passthrough::forward(&state.upstream, &state.metrics, parts, body, Instant::now()).await
}

/// The body limit of requests forwarded as they are.
fn passthrough_body_limit(config: &Config) -> Limit {
    Limit {
        bytes: config.server.max_body_bytes,
        setting: "server.max_body_bytes",
    }
}

/// The client key `[auth]` admitted the request with, when it is on.
fn client(parts: &http::request::Parts) -> Option<&Arc<ClientKey>> {
    parts.extensions.get::<Arc<ClientKey>>()
}

/// The client key's limits on what the request asks for: N (400) and its models (403), each
/// refusal counted in `bon_auth_rejections_total`.
fn within_key(
    gate: &Gate,
    parts: &http::request::Parts,
    n: Option<u32>,
    models: &[String],
) -> Result<(), ApiError> {
    let Some(key) = client(parts) else {
        return Ok(());
    };
    if let Some(n) = n {
        refuse_for_key(gate, key.check_n(n), "n_too_large")?;
    }
    for model in models {
        refuse_for_key(gate, key.check_model(model, "model"), "model_not_allowed")?;
    }
    Ok(())
}

fn refuse_for_key(
    gate: &Gate,
    checked: Result<(), ApiError>,
    reason: &'static str,
) -> Result<(), ApiError> {
    checked.inspect_err(|_| gate.state.metrics.auth_rejection(reason))
}

/// The `model` of a JSON request body; none when it has no such field (or is not JSON).
fn model_of(bytes: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Model {
        model: Option<String>,
    }
    let model = serde_json::from_slice::<Model>(bytes)
        .ok()
        .and_then(|m| m.model);
    model.into_iter().collect()
}

/// [`model_of`] a body read for forwarding; one too large to have been read whole is refused.
fn received_model(received: &Received, buffer: usize) -> Result<Vec<String>, ApiError> {
    match received {
        Received::Whole(bytes) => Ok(model_of(bytes)),
        Received::Streaming(_) => Err(unreadable_model(buffer)),
    }
}

/// 413 for a body too large to read for its `model`, from a key limited to some models.
fn unreadable_model(buffer: usize) -> ApiError {
    let mut error = ApiError::payload_too_large(buffer, "server.body_buffer_bytes");
    error.message = format!(
        "This key may use only some models, so the proxy reads each request's `model`, and \
         this body is larger than it reads ({buffer} bytes, server.body_buffer_bytes). Send a \
         smaller body, or ask the operator to raise server.body_buffer_bytes."
    );
    error
}

/// A body switched on by its own fields was read as passthrough reads bodies: the checks
/// best-of-N makes before reading are made now, then the request's own (see `prepare`).
/// `Err` carries the request id, for the log.
fn checked(
    state: &AppState,
    plan: plan::BestOfN,
    parts: http::request::Parts,
    bytes: Bytes,
) -> Result<best_of_n::Prepared, (ApiError, String)> {
    let request_id = parts
        .headers
        .get(X_REQUEST_ID)
        .and_then(|id| id.to_str().ok());
    let request_id = request_id.unwrap_or("-").to_string();
    let fail = |error: ApiError| (error, request_id.clone());
    best_of_n::check_content_type(&parts.headers).map_err(fail)?;
    let limit = best_of_n_body_limit(&state.config);
    if bytes.len() > limit.bytes {
        return Err(fail(ApiError::payload_too_large(
            limit.bytes,
            limit.setting,
        )));
    }
    best_of_n::prepare(state, plan, parts, bytes).map_err(fail)
}

/// The smaller of the two body limits that apply to best-of-N, and the setting behind it.
fn best_of_n_body_limit(config: &Config) -> Limit {
    let (own, server) = (
        config.best_of_n.max_body_bytes,
        config.server.max_body_bytes,
    );
    if own <= server {
        Limit {
            bytes: own,
            setting: "best_of_n.max_body_bytes",
        }
    } else {
        Limit {
            bytes: server,
            setting: "server.max_body_bytes",
        }
    }
}

/// Plain chat completions go through the cache only when `cache.passthrough` says so.
pub(crate) fn plain_cache_for<'a>(
    state: &'a AppState,
    request: &http::request::Parts,
) -> Option<&'a AnswerCache> {
    let cacheable = state.config.cache.passthrough
        && request.method == Method::POST
        && plan::is_chat_completions(request.uri.path());
    state.cache.as_ref().filter(|_| cacheable)
}
