//! What every LLM judge strategy shares: the prompt template, the rubrics, the prompt budget and
//! the call to the judge model.
//!
//! A strategy decides which candidates one prompt shows and how to read the answer; this file
//! turns "show these candidates" into a rendered prompt and the judge model's text.

use serde_json::{json, Value};

use super::budget;
use super::call::{CallFailure, JudgeCall};
use super::protocol::{self, PromptTemplate, TemplateCandidate, TemplateMessage};
use super::{Blueprint, JudgeRequest};
use crate::config::ConfigError;
use crate::openai::{RequestMessage, Usage};

/// A judge model with its prompt.
pub struct LlmPrompt {
    call: JudgeCall,
    template: PromptTemplate,
    /// The template's source as configured (empty: the built-in one), for the fingerprint.
    template_source: String,
    rubrics: Vec<String>,
    max_prompt_bytes: usize,
}

impl LlmPrompt {
    /// Takes the LLM settings out of `blueprint`; `built_in` is the strategy's own template and
    /// `ids` the candidate ids one of its prompts shows. The template is compiled and
    /// test-rendered here, so a mistake stops the start.
    pub fn new(
        blueprint: Blueprint<'_>,
        built_in: &str,
        ids: &[&str],
    ) -> Result<LlmPrompt, ConfigError> {
        let checked = protocol::check_template(&blueprint.template, built_in, ids);
        let template = checked.map_err(|why| {
            let key = blueprint.key;
            let setting = match blueprint.config.template_file.as_str() {
                "" => format!("`{key}.template`"),
                file => format!("`{key}.template_file` ({file})"),
            };
            ConfigError(format!("{setting}: {why}"))
        })?;
        let call = blueprint.call.ok_or_else(|| {
            ConfigError(format!(
                "`{}`: this judge has no model to call",
                blueprint.key
            ))
        })?;
        Ok(LlmPrompt {
            call,
            template,
            template_source: blueprint.template,
            rubrics: blueprint.rubrics,
            max_prompt_bytes: blueprint.config.max_prompt_bytes,
        })
    }

    /// Starts one decision: the conversation is read, and cut to the prompt budget, once for
    /// all of its calls, so that a judge making many calls (pairwise, twenty at N = 5) neither
    /// redoes that work nor holds a copy of a long request per call.
    pub fn decision<'a>(&self, request: &'a JudgeRequest<'a>) -> Decision<'a> {
        let mut conversation = conversation_for_judge(request.conversation);
        budget::fit_prompt(&mut conversation, &mut [], self.max_prompt_bytes);
        Decision {
            request,
            conversation,
        }
    }

    /// Shows `shown` (ids already assigned) to the judge model and returns its text.
    pub async fn ask(
        &self,
        decision: &Decision<'_>,
        mut shown: Vec<TemplateCandidate>,
    ) -> Result<(String, Usage), CallFailure> {
        let request = decision.request;
        for candidate in &mut shown {
            candidate.text = protocol::neutralize_tags(&candidate.text);
        }
        // Cut again with this prompt's candidates in: they get at least half of the budget.
        let mut conversation = decision.conversation.clone();
        budget::fit_prompt(&mut conversation, &mut shown, self.max_prompt_bytes);
        let rubrics = request.rubrics.unwrap_or(&self.rubrics);
        let prompt = self
            .template
            .render(&conversation, rubrics, &shown)
            .map_err(|why| CallFailure {
                why,
                usage: Usage::default(),
            })?;
        self.call
            .complete(request.request_model, prompt, request.client_headers)
            .await
    }

    /// Every prompt setting that can change a verdict.
    pub fn fingerprint(&self) -> Value {
        json!([
            self.call.fingerprint(),
            self.rubrics,
            self.template_source,
            self.max_prompt_bytes
        ])
    }
}

/// One decision of an LLM judge: the request, and its conversation as every prompt shows it.
pub struct Decision<'a> {
    pub request: &'a JudgeRequest<'a>,
    conversation: Vec<TemplateMessage>,
}

/// The conversation as the judge reads it; tool results say which call they answer. Reward
/// models and the fuser read it too.
pub(crate) fn conversation_for_judge(messages: &[RequestMessage]) -> Vec<TemplateMessage> {
    messages
        .iter()
        .map(|m| {
            let role = match m.tool_call_id() {
                Some(id) => format!("{} (result of {id})", m.role),
                None => m.role.clone(),
            };
            TemplateMessage {
                role,
                text: m.text_for_judge(),
            }
        })
        .collect()
}
