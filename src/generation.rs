//! Candidate generation: how the N candidates of one best-of-N request are asked for
//! (`best_of_n.generation`).
//!
//! `parallel` (the default) sends N calls at once, one choice each (see `fanout`). `n_param`
//! sends one call with `"n": N` and splits its N choices into N candidates: vLLM and TGI share
//! the prompt's prefill across the samples of one call, and OpenAI bills its prompt tokens once,
//! so N answers cost less than N calls.
//!
//! Not every upstream takes `n`. When the call is refused for `n`, or comes back with fewer
//! choices than asked, the missing candidates are made by parallel calls. A model that refused
//! `n` (or answered with one choice, ignoring it) is remembered, so that its later requests go
//! straight to parallel calls instead of paying a wasted round trip each time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::answer::Failed;
use crate::config::{BestOfNConfig, Diversity, Generation};
use crate::diversity;
use crate::fanout::{self, Answer, Candidate, Failure, Until};
use crate::metrics::Metrics;
use crate::openai::{Api, ChatCompletion, ChatRequest};
use crate::telemetry;
use crate::upstream::{call_status, JsonReply, Upstream, UpstreamError};
use tracing::Instrument;

/// Most model names remembered as refusing `n`: names come from clients, so what they can make
/// the proxy keep is capped.
const MAX_REMEMBERED_MODELS: usize = 1024;

/// How long a model is remembered as refusing `n`: an upstream may be upgraded, or a
/// misread error may have put the model here, so it is asked again now and then.
const REMEMBER_FOR: Duration = Duration::from_secs(3600);

/// Models whose upstream refused (or ignored) `n`, with when to forget it; their candidates
/// use parallel calls.
#[derive(Default)]
pub struct ModelsWithoutN(Mutex<HashMap<String, Instant>>);

impl ModelsWithoutN {
    pub fn contains(&self, model: &str) -> bool {
        self.0
            .lock()
            .map(|models| {
                models
                    .get(model)
                    .is_some_and(|&forget_at| Instant::now() < forget_at)
            })
            .unwrap_or(false)
    }

    fn remember(&self, model: &str) {
        if let Ok(mut models) = self.0.lock() {
            let now = Instant::now();
            models.retain(|_, forget_at| now < *forget_at);
            if models.len() < MAX_REMEMBERED_MODELS
                && models
                    .insert(model.to_string(), now + REMEMBER_FOR)
                    .is_none()
            {
                tracing::info!(%model, "the upstream does not take `n` for this model; its candidates use parallel calls for the next hour");
            }
        }
    }
}

/// What generating candidates needs from the process: where they go, what is counted, the
/// settings and what was learnt about models.
pub struct Generator<'a> {
    pub upstream: &'a Upstream,
    pub metrics: &'a Metrics,
    pub config: &'a BestOfNConfig,
    pub models_without_n: &'a ModelsWithoutN,
    /// Ask candidates for `"logprobs": true` (the judge reads them).
    pub logprobs: bool,
    /// Each candidate call's deadline: `best_of_n.candidate_timeout`, or the request's own
    /// deadline when that is sooner.
    pub candidate_timeout: Duration,
}

/// What the candidates are asked: a chat request, or the body of a request of another API.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    pub api: Api,
    /// The request as chat: the whole of it for chat completions, the judge's view otherwise.
    pub request: &'a ChatRequest,
    /// The client's own body, for the APIs other than chat.
    pub native: Option<&'a Map<String, Value>>,
}

/// The N candidates of `ask`, in generation order; with `models`, candidate k asks for
/// model `k % len`. `until` may cut parallel calls short (an early stop, a quorum: see
/// [`fanout::Until`]); the `n` call makes all of its candidates at once, so it has no
/// stragglers to cut.
pub async fn generate(
    generator: &Generator<'_>,
    target: &str,
    headers: &HeaderMap,
    ask: Ask<'_>,
    (n, models): (u32, &[String]),
    until: Until,
) -> Result<Vec<Candidate>, Failed> {
    let config = &generator.config;
    let request = ask.request;
    generator.metrics.fan_out(n as usize);
    // One call asks one model: candidates of several models are made by parallel calls, and
    // so are those of the APIs other than chat.
    let one_call = config.generation == Generation::NParam
        && n > 1
        && models.is_empty()
        && ask.native.is_none()
        && !generator.models_without_n.contains(&request.model);
    let mut candidates = if one_call {
        n_param(generator, target, headers, request, n).await?
    } else {
        Vec::new()
    };
    // Whatever the `n` call did not make (all of it on the parallel path) is made by N - k
    // parallel calls, numbered after the k candidates already there.
    let made = candidates.len();
    if made < n as usize {
        let bodies = match ask.native {
            None => diversity::candidate_bodies(request, n, models, config, generator.logprobs)?,
            Some(native) => diversity::native_bodies(ask.api, native, n, models, config)?,
        }
        .split_off(made);
        let timeout = generator.candidate_timeout;
        // Choices an `n` call made are not shown to the early stop or counted by the quorum:
        // after a partial `n` call the rest are waited for.
        let until = if made == 0 { until } else { Until::default() };
        // Candidate k asks model k mod len, or the request's own.
        let model_of = |k: usize| match models {
            [] => request.model.as_str(),
            models => models[k % models.len()].as_str(),
        };
        let bodies = bodies
            .into_iter()
            .enumerate()
            .map(|(k, body)| (body, model_of(made + k)))
            .collect();
        let more = fanout::generate(
            generator.upstream,
            generator.metrics,
            (target, ask.api),
            headers,
            bodies,
            timeout,
            until,
        )
        .await;
        candidates.extend(more.into_iter().map(|mut c| {
            c.index += made;
            c
        }));
    }
    Ok(candidates)
}

/// A short fingerprint of every setting that changes what candidates are made, for the cache
/// key: the same request under other settings is a different answer.
pub fn fingerprint(config: &BestOfNConfig) -> String {
    let variations = match config.diversity {
        Diversity::Variations => {
            let list = serde_json::to_vec(&config.variations).unwrap_or_default();
            blake3::hash(&list).to_hex()[..16].to_string()
        }
        Diversity::Seed | Diversity::None => String::new(),
    };
    let temperature = config
        .temperature
        .map_or_else(|| "-".to_string(), |t| t.to_string());
    format!(
        "{}:{variations}|t={temperature}|{}",
        config.diversity.as_str(),
        config.generation.as_str()
    )
}

/// What the one `n` call gave.
enum NReply {
    /// A completion with its choices (possibly fewer than N, even none).
    Choices(Box<ChatCompletion>, HeaderMap),
    /// A 4xx naming `n`: this model does not take it.
    RefusesN,
    /// A 400 that names no parameter and no `n`: maybe `n`, maybe the request. Parallel
    /// calls will tell (and pass the error on if the request itself is wrong).
    Unclear,
    /// Anything else (a 4xx naming another parameter, 401, 429, 5xx, a timeout): the request
    /// would fail the same way N times, so every candidate carries this failure.
    Failed(Failure),
}

/// One call with `"n": N`. Returns the candidates it made: up to N, none when `n` was refused,
/// or N failed ones when the call failed for another reason.
async fn n_param(
    generator: &Generator<'_>,
    target: &str,
    headers: &HeaderMap,
    request: &ChatRequest,
    n: u32,
) -> Result<Vec<Candidate>, Failed> {
    let body = diversity::n_param_body(request, n, generator.config, generator.logprobs)?;
    let started = Instant::now();
    let timeout = generator.candidate_timeout;
    let span = telemetry::call_span("candidate", &request.model, None);
    let sent = generator
        .upstream
        .post_json(target, headers, body, timeout)
        .instrument(span.clone())
        .await;
    let latency = started.elapsed();
    let status = call_status(&sent);
    generator
        .metrics
        .upstream_call("candidate", &status, latency);
    telemetry::record_call(&span, &status, None, None);
    let candidates = match read_reply(sent, |why| generator.upstream.redact(why)) {
        NReply::Choices(completion, headers) => {
            // One choice for N > 1: the upstream ignores `n`.
            if completion.choices.len() == 1 {
                generator.models_without_n.remember(&request.model);
            }
            split(*completion, headers, latency, n)
        }
        NReply::RefusesN => {
            generator.models_without_n.remember(&request.model);
            Vec::new()
        }
        NReply::Unclear => Vec::new(),
        NReply::Failed(failure) => (0..n as usize)
            .map(|index| Candidate {
                index,
                latency,
                result: Err(failure.clone()),
            })
            .collect(),
    };
    for candidate in &candidates {
        fanout::record(generator.metrics, candidate);
    }
    Ok(candidates)
}

fn read_reply(sent: Result<JsonReply, UpstreamError>, redact: impl Fn(&str) -> String) -> NReply {
    let reply = match sent {
        Ok(reply) => reply,
        Err(error) => return NReply::Failed(Failure::from(error)),
    };
    if !reply.status.is_success() {
        return match refusal(&reply) {
            Refusal::NamesN => NReply::RefusesN,
            Refusal::Unclear => NReply::Unclear,
            Refusal::Other => NReply::Failed(Failure::Status(reply)),
        };
    }
    // Not `ChatCompletion::parse`: no choices is not a failure here but N missing candidates.
    match serde_json::from_slice::<ChatCompletion>(&reply.body) {
        Ok(completion) => NReply::Choices(Box::new(completion), reply.headers),
        Err(e) => NReply::Failed(Failure::Invalid(redact(&format!(
            "the upstream answer is not a chat completion: {e}"
        )))),
    }
}

/// What an error answer to the `n` call says about `n`.
#[derive(Debug, PartialEq)]
enum Refusal {
    NamesN,
    Unclear,
    Other,
}

/// A 400 or 422 whose error `param` is `n`, or which names no parameter but has the word `n` in its
/// message (`'n'`, `` `n` ``, "n must be…"), refuses `n`. A 400 naming no parameter and no `n`
/// is unclear. Anything else (another `param`, another status) has nothing to do with `n`. Error shapes read: OpenAI's `{"error": {"param", "message"}}`,
/// TGI's `{"error": "text"}` and vLLM's older top-level `{"message"}`.
fn refusal(reply: &JsonReply) -> Refusal {
    // 401, 403, 404, 429…: about the key, the model or the rate, never about `n`.
    let invalid = [
        http::StatusCode::BAD_REQUEST,
        http::StatusCode::UNPROCESSABLE_ENTITY,
    ];
    if !invalid.contains(&reply.status) {
        return Refusal::Other;
    }
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let error = body.get("error").unwrap_or(&body);
    let (param, message) = match error {
        Value::String(message) => (None, Some(message.as_str())),
        other => (
            other.get("param").and_then(Value::as_str),
            other.get("message").and_then(Value::as_str),
        ),
    };
    // A named parameter is precise; a message is read only when there is none.
    match param.filter(|p| !p.is_empty()) {
        Some("n") => Refusal::NamesN,
        Some(_) => Refusal::Other,
        None if message.is_some_and(mentions_n) => Refusal::NamesN,
        None if reply.status == http::StatusCode::BAD_REQUEST => Refusal::Unclear,
        None => Refusal::Other,
    }
}

/// True when `message` has `n` as a word of its own (not inside `an` or `n_choices`).
fn mentions_n(message: &str) -> bool {
    message
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|word| word == "n")
}

/// The choices of one completion as one-choice candidates (index 0 each), in the upstream's
/// `index` order, at most `n`. The call's usage goes on the first candidate only, so that the
/// answer's summed usage counts the one call exactly once.
fn split(
    mut completion: ChatCompletion,
    headers: HeaderMap,
    latency: Duration,
    n: u32,
) -> Vec<Candidate> {
    let mut choices = std::mem::take(&mut completion.choices);
    choices.sort_by_key(|choice| choice.index);
    choices.truncate(n as usize);
    let mut usage = completion.usage.take();
    choices
        .into_iter()
        .enumerate()
        .map(|(index, mut choice)| {
            choice.index = 0;
            let mut one = completion.clone();
            one.choices = vec![choice];
            one.usage = usage.take();
            Candidate {
                index,
                latency,
                result: Ok(Answer {
                    native: None,
                    completion: one,
                    headers: headers.clone(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use serde_json::json;

    fn reply(status: u16, body: Value) -> JsonReply {
        JsonReply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn a_remembered_model_is_asked_with_n_again_after_an_hour() {
        let models = ModelsWithoutN::default();
        models.remember("m");
        assert!(models.contains("m"));
        if let Some(forget_at) = models.0.lock().unwrap().get_mut("m") {
            *forget_at = Instant::now();
        }
        assert!(!models.contains("m"), "forgotten after REMEMBER_FOR");
    }

    #[test]
    fn a_refusal_of_n_is_told_from_other_errors() {
        let openai = |param: Value, message: &str| {
            json!({"error": {"message": message, "type": "invalid_request_error",
                "param": param, "code": null}})
        };
        for (status, body, expected) in [
            (400, openai(json!("n"), "Unsupported"), Refusal::NamesN),
            (400, openai(Value::Null, "'n' must be 1"), Refusal::NamesN),
            (
                422,
                json!({"error": "Input validation error: `n` > 1"}),
                Refusal::NamesN,
            ),
            (
                400,
                json!({"object": "error", "message": "n must be at most 4"}),
                Refusal::NamesN,
            ),
            (
                400,
                openai(json!("messages"), "an n-sized prompt"),
                Refusal::Other,
            ),
            (
                400,
                openai(Value::Null, "Context too long"),
                Refusal::Unclear,
            ),
            (400, json!("<html>"), Refusal::Unclear),
            (401, openai(Value::Null, "bad key"), Refusal::Other),
            // About the key or the model, even when the message happens to say `n`.
            (401, openai(Value::Null, "key n is revoked"), Refusal::Other),
            (404, openai(json!("n"), "no such model"), Refusal::Other),
            (500, openai(json!("n"), "n"), Refusal::Other),
        ] {
            assert_eq!(refusal(&reply(status, body.clone())), expected, "{body}");
        }
    }

    #[test]
    fn mentions_n_only_as_a_word() {
        assert!(mentions_n("Invalid value for 'n': must be 1."));
        assert!(!mentions_n("an unknown n_choices value"));
    }

    #[test]
    fn split_puts_the_usage_on_the_first_candidate_only() {
        let completion: ChatCompletion = serde_json::from_value(json!({
            "id": "c", "model": "m", "choices": [
                {"index": 1, "message": {"content": "b"}, "finish_reason": "stop"},
                {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}}))
        .unwrap();
        let latency = Duration::from_millis(5);
        let candidates = split(completion, HeaderMap::new(), latency, 4);
        let answers: Vec<&ChatCompletion> = candidates
            .iter()
            .map(|c| &c.answer().unwrap().completion)
            .collect();
        assert_eq!(answers[0].choices[0].content(), Some("a"));
        assert_eq!(answers[1].choices[0].content(), Some("b"));
        assert_eq!(answers[1].choices[0].index, 0);
        assert_eq!(answers[0].usage.as_ref().unwrap().total_tokens, 18);
        assert!(answers[1].usage.is_none());
        assert!(candidates.iter().all(|c| c.latency == latency));
    }

    #[test]
    fn the_fingerprint_changes_with_every_candidate_setting() {
        let base = BestOfNConfig::default();
        let variations = BestOfNConfig {
            diversity: Diversity::Variations,
            ..base.clone()
        };
        let other_list = BestOfNConfig {
            variations: vec!["x".into()],
            ..variations.clone()
        };
        let warm = BestOfNConfig {
            temperature: Some(1.0),
            ..base.clone()
        };
        let one_call = BestOfNConfig {
            generation: Generation::NParam,
            ..base.clone()
        };
        let prints: std::collections::HashSet<String> =
            [&base, &variations, &other_list, &warm, &one_call]
                .into_iter()
                .map(fingerprint)
                .collect();
        assert_eq!(prints.len(), 5);
    }
}
