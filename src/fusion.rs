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
use http::HeaderMap;
use serde_json::{json, Value};

use crate::config::{ConfigError, FuserConfig, JudgeConfig};
use crate::fanout::Candidate;
use crate::judge::call::JudgeCall;
use crate::judge::llm::conversation_for_judge;
use crate::judge::protocol::{self, PromptTemplate, TemplateCandidate};
use crate::openai::{ChatCompletion, ChatRequest};

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
}

/// The fuser's answer, and what asking cost.
pub struct Fused {
    pub completion: ChatCompletion,
    /// The fuser's upstream response headers (rate limits, request id).
    pub headers: HeaderMap,
    pub latency: Duration,
}

/// Why the fuser wrote nothing.
#[derive(Debug)]
pub struct FuserFailed(pub String);

impl Fuser {
    /// Builds the fuser from `[fuser]`; `connect` reaches its model (the upstream, or its own
    /// endpoint and key). The template is test-rendered here, so a mistake stops the start.
    pub fn new(
        config: &FuserConfig,
        connect: impl FnOnce(&JudgeConfig) -> Result<JudgeCall, ConfigError>,
    ) -> Result<Fuser, ConfigError> {
        let template = protocol::check_template(&config.template, TEMPLATE, &["1", "2", "3"])
            .map_err(|why| ConfigError(format!("`fuser.template`: {why}")))?;
        let settings = JudgeConfig {
            model: config.model.clone(),
            base_url: config.base_url.clone(),
            api_key_env: config.api_key_env.clone(),
            timeout: config.timeout,
            ..JudgeConfig::default()
        };
        Ok(Fuser {
            call: connect(&settings)?.counted_as("fuser"),
            template,
            template_source: config.template.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
        })
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
        let completion = ChatCompletion::parse(&reply.body)
            .map_err(|why| FuserFailed(self.call.redact(&why)))?;
        Ok(Fused {
            completion,
            headers: reply.headers,
            latency: started.elapsed(),
        })
    }

    /// The client's request with its conversation replaced by the fuser prompt.
    fn body(
        &self,
        request: &ChatRequest,
        candidates: &[Candidate],
        rubrics: &[String],
    ) -> Result<Bytes, FuserFailed> {
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
        let encoded = serde_json::to_vec(&body)
            .map_err(|e| FuserFailed(format!("cannot encode the fuser request: {e}")))?;
        Ok(Bytes::from(encoded))
    }
}
