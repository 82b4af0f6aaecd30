//! Fusion (mixture of N): instead of returning one candidate, a fuser model reads all of them
//! and writes the final answer (`x-best-of-n-mode: fuse`, `[fuser]`).
//!
//! The fuser's request is the client's own (its `tools`, `response_format` and every other
//! field travel with it, so the fused answer obeys the same contract), with the conversation
//! replaced by one prompt that shows the conversation and the numbered candidates. Its answer
//! comes back as an ordinary completion with usage summed over the candidates and the fuser.
//! When the fuser fails, the caller falls back to a candidate and says so.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::config::{ConfigError, FuserConfig, JudgeConfig};
use crate::fanout::Candidate;
use crate::judge::call::JudgeCall;
use crate::judge::llm::conversation_for_judge;
use crate::judge::protocol::{self, PromptTemplate, TemplateCandidate};
use crate::openai::{ChatCompletion, ChatRequest};
use crate::upstream::CallPlace;

/// The built-in fuser prompt: the conversation, what a good answer is, the candidates.
const TEMPLATE: &str = crate::judge::protocol::judge_template!(
    "You are an expert editor. Several assistants answered the same conversation. Write the \
     single best reply to the conversation, using what is right and useful in the answers and \
     leaving out what is wrong.",
    "the answers",
    "The {{ candidates | length }} candidate answers:",
    "Reply to the conversation directly, as the assistant, in the format and language the \
     conversation asks for. Do not mention the candidates, this task, or that several answers \
     existed."
);

/// The fuser: its model, endpoint and prompt.
pub struct Fuser {
    call: JudgeCall,
    template: PromptTemplate,
    template_source: String,
    temperature: Option<f64>,
    max_tokens: u32,
    timeout: Duration,
}

/// The fuser's answer, and what asking cost.
pub struct Fused {
    pub completion: ChatCompletion,
    /// The fuser's upstream response headers (rate limits, request id).
    pub headers: HeaderMap,
    pub latency: Duration,
}

/// What a streamed fuser call gave: its stream, or (an upstream that ignores `stream`) one
/// whole answer.
pub enum FuserStream {
    /// The fuser's stream, and its place under `upstream.max_connections`, held while it is
    /// relayed.
    Live(Response<Incoming>, CallPlace),
    Whole(Box<Fused>),
}

/// Largest non-streamed fuser answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Why the fuser wrote nothing.
#[derive(Debug)]
pub struct FuserFailed(pub String);

impl Fuser {
    /// Builds the fuser from `[fuser]`; `connect` reaches its model (the upstream, or its own
    /// endpoint and key). The template is test-rendered here, so a mistake stops the start.
    pub fn new(
        config: &FuserConfig,
        connect: impl FnOnce(&str, &JudgeConfig) -> Result<JudgeCall, ConfigError>,
    ) -> Result<Fuser, ConfigError> {
        let template = protocol::check_template(&config.template, TEMPLATE, &["1", "2", "3"])
            .map_err(|why| ConfigError(format!("`fuser.template`: {why}")))?;
        let settings = JudgeConfig {
            model: config.model.clone(),
            base_url: config.base_url.clone(),
            api_key_env: config.api_key_env.clone(),
            timeout: config.timeout,
            ..JudgeConfig::default()
        }
        .with_transport_keys(config.transport_keys());
        Ok(Fuser {
            call: connect("fuser", &settings)?.counted_as("fuser"),
            template,
            template_source: config.template.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            timeout: config.timeout,
        })
    }

    /// The fuser's response headers a client may see: those of the upstream (rate limits,
    /// request id), none from a fuser endpoint of its own, which is another service's business.
    pub fn client_headers(&self, fuser: &HeaderMap) -> HeaderMap {
        if self.call.forwards_client_headers() {
            fuser.clone()
        } else {
            HeaderMap::new()
        }
    }

    /// One line for `check-config`: model, endpoint (key masked), template.
    pub fn describe(&self) -> String {
        let template = match self.template_source.is_empty() {
            true => "built in",
            false => "inline",
        };
        format!("{}; template {template}", self.call.describe())
    }

    /// Everything that changes what the fuser writes: part of the cache key in fuse mode.
    pub fn fingerprint(&self) -> String {
        json!([
            self.call.fingerprint(),
            self.template_source,
            self.temperature,
            self.max_tokens
        ])
        .to_string()
    }

    /// Asks the fuser to write one answer from the successful `candidates`.
    pub async fn fuse(
        &self,
        request: &ChatRequest,
        candidates: &[Candidate],
        rubrics: &[String],
        client_headers: &HeaderMap,
    ) -> Result<Fused, FuserFailed> {
        let started = Instant::now();
        let body = self.body(request, candidates, rubrics)?;
        let reply = self
            .call
            .post("/chat/completions", body, client_headers)
            .await
            .map_err(|failure| FuserFailed(failure.why))?;
        if !reply.status.is_success() {
            return Err(FuserFailed(format!(
                "the fuser call got status {}: {}",
                reply.status.as_u16(),
                crate::upstream::snippet(&reply.body)
            )));
        }
        self.read_whole(&reply.body, &reply.headers, started)
    }

    /// A whole fuser answer: parsed, its tokens counted, its headers filtered for the client.
    fn read_whole(
        &self,
        body: &[u8],
        headers: &HeaderMap,
        started: Instant,
    ) -> Result<Fused, FuserFailed> {
        let completion =
            ChatCompletion::parse(body).map_err(|why| FuserFailed(self.call.redact(&why)))?;
        if let Some(usage) = &completion.usage {
            self.call.count_tokens(usage);
        }
        Ok(Fused {
            completion,
            headers: self.client_headers(headers),
            latency: started.elapsed(),
        })
    }

    /// Asks the fuser for a streamed answer and returns its response once the head is in; the
    /// caller relays the SSE body (see `relay`). Always asks for a final usage chunk, so the
    /// fuser's tokens can be counted.
    pub async fn stream(
        &self,
        request: &ChatRequest,
        candidates: &[Candidate],
        rubrics: &[String],
        client_headers: &HeaderMap,
    ) -> Result<FuserStream, FuserFailed> {
        let started = Instant::now();
        let mut body = self.body_value(request, candidates, rubrics)?;
        body["stream"] = Value::Bool(true);
        body["stream_options"] = json!({"include_usage": true});
        let body = encode(&body)?;
        let (response, place) = self
            .call
            .post_streaming("/chat/completions", body, client_headers)
            .await
            .map_err(|failure| FuserFailed(failure.why))?;
        let is_sse = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            return Ok(FuserStream::Live(response, place));
        }
        // An upstream that ignores `stream` answers with one JSON completion.
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| FuserFailed(format!("the fuser's answer was cut short: {e}")))?
            .to_bytes();
        let fused = self.read_whole(&body, &parts.headers, started)?;
        Ok(FuserStream::Whole(Box::new(fused)))
    }

    /// How long the fuser may take, its stream included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The client's request with its conversation replaced by the fuser prompt.
    fn body(
        &self,
        request: &ChatRequest,
        candidates: &[Candidate],
        rubrics: &[String],
    ) -> Result<Bytes, FuserFailed> {
        encode(&self.body_value(request, candidates, rubrics)?)
    }

    fn body_value(
        &self,
        request: &ChatRequest,
        candidates: &[Candidate],
        rubrics: &[String],
    ) -> Result<Value, FuserFailed> {
        let shown: Vec<TemplateCandidate> = candidates
            .iter()
            .filter_map(|c| c.answer()?.completion.first_choice())
            .enumerate()
            .map(|(k, choice)| TemplateCandidate {
                id: (k + 1).to_string(),
                text: protocol::neutralize_tags(&choice.text_for_judge()),
            })
            .collect();
        let conversation = conversation_for_judge(&request.messages);
        let prompt = self
            .template
            .render(&conversation, rubrics, &shown)
            .map_err(FuserFailed)?;
        let mut body = serde_json::to_value(request.candidate_body())
            .map_err(|e| FuserFailed(format!("cannot encode the fuser request: {e}")))?;
        body["model"] = Value::from(self.call.model(&request.model));
        body["messages"] = json!([{"role": "user", "content": prompt}]);
        if let Some(temperature) = self.temperature {
            body["temperature"] = Value::from(temperature);
        }
        if self.max_tokens > 0 {
            body["max_tokens"] = Value::from(self.max_tokens);
        }
        Ok(body)
    }
}

fn encode(body: &Value) -> Result<Bytes, FuserFailed> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| FuserFailed(format!("cannot encode the fuser request: {e}")))
}
