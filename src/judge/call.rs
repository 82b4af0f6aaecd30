//! One LLM judge call: build the chat completion, send it, read the text and the usage.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::JudgeConfig;
use crate::metrics::Metrics;
use crate::openai::Usage;
use crate::telemetry;
use crate::upstream::CallPlace;
use crate::upstream::{call_status, snippet, JsonReply, Upstream};
use tracing::Instrument;

/// The usage an answer reports, for its span; `None` when it reports none or is not JSON.
fn reply_usage(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Usage>,
    }
    if !crate::telemetry::tracing_on() {
        return None;
    }
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// A chat completion's first text, for a span's content; `None` when it has none.
fn answer_text(body: &[u8]) -> Option<String> {
    let answer: JudgeAnswer = serde_json::from_slice(body).ok()?;
    answer.choices.into_iter().next()?.message.content
}

/// How LLM judges reach their model.
pub struct JudgeCall {
    /// Judge models that refused `temperature`/`max_tokens` once; they get none from then on.
    no_sampling: Mutex<HashSet<String>>,
    endpoint: Upstream,
    metrics: Metrics,
    forward_client_headers: bool,
    model_override: String,
    temperature: f64,
    max_tokens: u32,
    timeout: Duration,
    /// The `kind` label of `bon_upstream_requests_total`: `judge`, or `reward_model`.
    kind: &'static str,
}

/// A judge call that produced no usable text; `usage` is what it cost anyway.
#[derive(Debug)]
pub struct CallFailure {
    pub why: String,
    pub usage: Usage,
}

impl JudgeCall {
    pub fn new(
        config: &JudgeConfig,
        endpoint: Upstream,
        forward_client_headers: bool,
        metrics: Metrics,
    ) -> JudgeCall {
        JudgeCall {
            no_sampling: Mutex::new(HashSet::new()),
            endpoint,
            metrics,
            forward_client_headers,
            model_override: config.model.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            timeout: config.timeout,
            kind: "judge",
        }
    }

    /// True when the call goes to the upstream with the client's headers; false for an
    /// endpoint of its own.
    pub fn forwards_client_headers(&self) -> bool {
        self.forward_client_headers
    }

    /// Counts `usage` in `bon_tokens_total` under this call's kind.
    pub fn count_tokens(&self, usage: &Usage) {
        self.metrics
            .tokens(self.kind, usage.prompt_tokens, usage.completion_tokens);
    }

    /// The same call, counted in metrics as `kind` (`reward_model` for model servers).
    pub fn counted_as(mut self, kind: &'static str) -> JudgeCall {
        self.kind = kind;
        self
    }

    /// POSTs `body` to `path` under the judge's endpoint and reads the whole answer, within
    /// the judge's timeout; for judges with their own wire format (reward models).
    pub async fn post(
        &self,
        path: &str,
        body: Bytes,
        client_headers: &HeaderMap,
    ) -> Result<JsonReply, CallFailure> {
        let empty = HeaderMap::new();
        let headers = if self.forward_client_headers {
            client_headers
        } else {
            &empty
        };
        self.send_to(path, body, headers, &self.model_override)
            .await
    }

    /// Every setting of the call that can change a verdict: where it goes, which model, how
    /// it samples.
    pub fn fingerprint(&self) -> serde_json::Value {
        json!([
            self.endpoint.redacted_base_url(),
            self.model_override,
            self.temperature,
            self.max_tokens,
        ])
    }

    /// The judge model for a request made with `request_model`.
    pub fn model<'a>(&'a self, request_model: &'a str) -> &'a str {
        if self.model_override.is_empty() {
            request_model
        } else {
            &self.model_override
        }
    }

    /// Sends `prompt` as one user message and returns the answer's text and usage.
    pub async fn complete(
        &self,
        request_model: &str,
        prompt: String,
        client_headers: &HeaderMap,
    ) -> Result<(String, Usage), CallFailure> {
        let empty = HeaderMap::new();
        let headers = if self.forward_client_headers {
            client_headers
        } else {
            &empty
        };
        let model = self.model(request_model).to_string();
        let sampling = if self.takes_no_sampling(&model) {
            Sampling::ModelDefaults
        } else {
            Sampling::Configured
        };
        let mut reply = self
            .send(self.body(&model, &prompt, sampling), headers, &model)
            .await?;
        if matches!(sampling, Sampling::Configured) && rejects_sampling(&reply) {
            // Reasoning models refuse `temperature` and `max_tokens`: ask again with the
            // model's own defaults, and remember, rather than let every verdict fall back.
            tracing::info!(%model, "judge model takes no sampling parameters; sending none from now on");
            self.remember_no_sampling(model.clone());
            let body = self.body(&model, &prompt, Sampling::ModelDefaults);
            reply = self.send(body, headers, &model).await?;
        }
        if !reply.status.is_success() {
            return Err(fail(format!(
                "the judge call got status {}: {}",
                reply.status.as_u16(),
                snippet(&reply.body)
            )));
        }
        let answer: JudgeAnswer = serde_json::from_slice(&reply.body).map_err(|e| {
            fail(
                self.endpoint
                    .redact(&format!("the judge's answer is not a chat completion: {e}")),
            )
        })?;
        let usage = answer.usage.unwrap_or_default();
        self.metrics
            .tokens("judge", usage.prompt_tokens, usage.completion_tokens);
        let text = answer
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content);
        match text {
            Some(text) => Ok((text, usage)),
            None => Err(CallFailure {
                why: "the judge's answer has no text content".into(),
                usage,
            }),
        }
    }

    async fn send(
        &self,
        body: Bytes,
        headers: &HeaderMap,
        model: &str,
    ) -> Result<JsonReply, CallFailure> {
        self.send_to("/chat/completions", body, headers, model)
            .await
    }

    async fn send_to(
        &self,
        path: &str,
        body: Bytes,
        headers: &HeaderMap,
        model: &str,
    ) -> Result<JsonReply, CallFailure> {
        let started = Instant::now();
        let span = telemetry::call_span(self.kind, model, None);
        let sent_text = telemetry::content_wanted(&span).then(|| body.clone());
        let sent = self
            .endpoint
            .post_json(path, headers, body.into(), self.timeout)
            .instrument(span.clone())
            .await;
        if let Some(sent_text) = sent_text {
            let verdict = sent.as_ref().ok().and_then(|r| answer_text(&r.body));
            telemetry::record_content(&span, &sent_text, verdict.as_deref());
        }
        let status = call_status(&sent);
        self.metrics
            .upstream_call(self.kind, &status, started.elapsed());
        let usage = sent
            .as_ref()
            .ok()
            .and_then(|reply| reply_usage(&reply.body));
        telemetry::record_call(&span, &status, None, usage.as_ref());
        sent.map_err(|e| fail(format!("the {} call failed: {e}", self.kind)))
    }

    /// POSTs `body` asking for a streamed answer, and returns the response as soon as its head
    /// is in with a success status; its SSE body is the caller's to read. An error status is a
    /// failure quoting the (redacted) error body.
    pub async fn post_streaming(
        &self,
        path: &str,
        body: Bytes,
        client_headers: &HeaderMap,
    ) -> Result<(Response<Incoming>, CallPlace), CallFailure> {
        let mut headers = if self.forward_client_headers {
            client_headers.clone()
        } else {
            HeaderMap::new()
        };
        let json = HeaderValue::from_static("application/json");
        headers.insert(header::CONTENT_TYPE, json);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        // The proxy reads the events to count usage: they must not arrive compressed.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        headers.remove(header::CONTENT_LENGTH);
        let started = Instant::now();
        let span = telemetry::call_span(self.kind, &self.model_override, None);
        let sent = self
            .endpoint
            .forward(Method::POST, path, &headers, crate::body::full(body))
            .instrument(span.clone());
        let sent = tokio::time::timeout(self.timeout, sent).await;
        let label = match &sent {
            Ok(Ok((response, _))) => response.status().as_str().to_string(),
            Ok(Err(error)) => error.metric_label().to_string(),
            Err(_) => "timeout".to_string(),
        };
        self.metrics
            .upstream_call(self.kind, &label, started.elapsed());
        telemetry::record_call(&span, &label, None, None);
        let (response, place) = match sent {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(fail(format!("the {} call failed: {e}", self.kind))),
            Err(_) => {
                let why = format!(
                    "the {} call got no answer within {:?}",
                    self.kind, self.timeout
                );
                return Err(fail(why));
            }
        };
        if response.status().is_success() {
            return Ok((response, place));
        }
        let status = response.status().as_u16();
        let error_body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        let error_body = error_body.map(|b| b.to_bytes()).unwrap_or_default();
        let quoted = self.redact(&snippet(&error_body));
        Err(fail(format!(
            "the {} call got status {status}: {quoted}",
            self.kind
        )))
    }

    /// The model and the endpoint, for `check-config` (keys are never part of it).
    pub fn describe(&self) -> String {
        let model = match self.model_override.as_str() {
            "" => "the request's model",
            model => model,
        };
        format!(
            "model {model}; endpoint {}",
            self.endpoint.redacted_base_url()
        )
    }

    /// Hides every known key in `text` (an error body quoted in a failure).
    pub fn redact(&self, text: &str) -> String {
        self.endpoint.redact(text)
    }

    fn takes_no_sampling(&self, model: &str) -> bool {
        self.no_sampling
            .lock()
            .map(|models| models.contains(model))
            .unwrap_or(false)
    }

    fn remember_no_sampling(&self, model: String) {
        if let Ok(mut models) = self.no_sampling.lock() {
            // Bounded: model names come from clients, so cap what they can make us keep.
            if models.len() < 1024 {
                models.insert(model);
            }
        }
    }

    fn body(&self, model: &str, prompt: &str, sampling: Sampling) -> Bytes {
        let limit = (self.max_tokens > 0).then_some(self.max_tokens);
        let mut body = JudgeBody {
            model,
            messages: [JudgeMessage {
                role: "user",
                content: prompt,
            }],
            temperature: None,
            max_tokens: None,
            max_completion_tokens: None,
        };
        match sampling {
            Sampling::Configured => {
                body.temperature = Some(self.temperature);
                body.max_tokens = limit;
            }
            Sampling::ModelDefaults => body.max_completion_tokens = limit,
        }
        // Plain strings and numbers: serialising cannot fail.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// A judge call's request body, written straight from borrowed text: judges with many calls
/// per request (pairwise, panels) should not copy each prompt into a JSON tree first.
#[derive(Serialize)]
struct JudgeBody<'a> {
    model: &'a str,
    messages: [JudgeMessage<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
}

#[derive(Serialize)]
struct JudgeMessage<'a> {
    role: &'a str,
    content: &'a str,
}

/// The parts of a judge's chat completion the proxy reads; everything else is skipped
/// unparsed.
#[derive(Deserialize)]
struct JudgeAnswer {
    #[serde(default)]
    choices: Vec<AnswerChoice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct AnswerChoice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<String>,
}

/// Which sampling parameters a judge call carries.
#[derive(Clone, Copy)]
enum Sampling {
    /// `judge.temperature` and `judge.max_tokens`.
    Configured,
    /// None but a length bound as `max_completion_tokens`, for models that take no others.
    ModelDefaults,
}

/// A 400 whose `error.param` is `temperature` or `max_tokens`: the model does not take them.
fn rejects_sampling(reply: &JsonReply) -> bool {
    if reply.status != http::StatusCode::BAD_REQUEST {
        return false;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&reply.body) else {
        return false;
    };
    let error = &body["error"];
    let named = |field: &str| {
        error["param"].as_str() == Some(field)
            || error["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("'{field}'")))
    };
    named("temperature") || named("max_tokens")
}

fn fail(why: String) -> CallFailure {
    CallFailure {
        why,
        usage: Usage::default(),
    }
}
