//! The listwise judge: one LLM call sees every candidate and names the best (and a ranking).
//!
//! This is the seed idea from RM-Gallery's best-of-N tutorial: a helpfulness judge reading all
//! answers side by side. Candidates are shuffled before they are shown, against position bias,
//! and the verdict is mapped back to generation order.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::budget;
use super::call::JudgeCall;
use super::protocol::{self, PromptTemplate, TemplateCandidate, TemplateMessage};
use super::{Judge, JudgeOutcome, JudgeRequest, Verdict};
use crate::config::JudgeConfig;
use crate::openai::RequestMessage;

pub struct Listwise {
    call: JudgeCall,
    template: PromptTemplate,
    /// The template's source as configured (empty: the built-in one), for the fingerprint.
    template_source: String,
    rubrics: Vec<String>,
    shuffle: bool,
    max_prompt_bytes: usize,
}

impl Listwise {
    /// The registry's constructor (see `judge::STRATEGIES`).
    pub fn build(config: &JudgeConfig, call: JudgeCall) -> Result<Arc<dyn Judge>, String> {
        Ok(Arc::new(Listwise::new(config, call)?))
    }

    pub fn new(config: &JudgeConfig, call: JudgeCall) -> Result<Listwise, String> {
        Ok(Listwise {
            call,
            template: PromptTemplate::new(&config.template)?,
            template_source: config.template.clone(),
            rubrics: config.rubrics.clone(),
            shuffle: config.shuffle,
            max_prompt_bytes: config.max_prompt_bytes,
        })
    }

    async fn decide(&self, request: JudgeRequest<'_>) -> Verdict {
        let started = Instant::now();
        let count = request.candidates.len();
        let order = protocol::presentation_order(count, request.seed, self.shuffle);
        let presentation: Vec<usize> = order.iter().map(|&p| request.candidates[p].index).collect();
        let mut verdict = self.ask(&request, &order).await;
        verdict.presentation = presentation;
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        verdict
    }

    async fn ask(&self, request: &JudgeRequest<'_>, order: &[usize]) -> Verdict {
        let mut shown: Vec<TemplateCandidate> = order
            .iter()
            .enumerate()
            .map(|(k, &p)| TemplateCandidate {
                id: (k + 1).to_string(),
                text: protocol::neutralize_tags(&request.candidates[p].text),
            })
            .collect();
        let mut conversation = conversation_for_judge(request.conversation);
        budget::fit_prompt(&mut conversation, &mut shown, self.max_prompt_bytes);
        let prompt = match self.template.render(&conversation, &self.rubrics, &shown) {
            Ok(prompt) => prompt,
            Err(why) => return Verdict::failed(JudgeOutcome::Error, why),
        };
        let (text, usage) = match self
            .call
            .complete(request.request_model, prompt, request.client_headers)
            .await
        {
            Ok(answer) => answer,
            Err(failure) => {
                let mut verdict = Verdict::failed(JudgeOutcome::Error, failure.why);
                verdict.usage = failure.usage;
                return verdict;
            }
        };
        let mut verdict = match protocol::parse_listwise(&text, shown.len()) {
            Ok(parsed) => rank(request, order, parsed),
            Err(why) => Verdict::failed(JudgeOutcome::ParseError, why),
        };
        verdict.usage = usage;
        verdict.raw = vec![text];
        verdict
    }
}

/// Maps a verdict in presentation ids back to candidate indices, with Borda scores: the best
/// of m ranked candidates scores 1, the last 1/m; with only `<best>`, the winner 1, others 0.
fn rank(request: &JudgeRequest<'_>, order: &[usize], parsed: protocol::ListwiseVerdict) -> Verdict {
    let to_index = |id: usize| request.candidates[order[id - 1]].index;
    let fully_ranked = parsed.ranking.is_some();
    let ids = parsed.ranking.unwrap_or_else(|| vec![parsed.best]);
    let ranking: Vec<usize> = ids.iter().map(|&id| to_index(id)).collect();
    let m = order.len() as f64;
    let scores = request
        .candidates
        .iter()
        .map(|c| {
            let score = match ranking.iter().position(|&i| i == c.index) {
                Some(pos) if fully_ranked => (m - pos as f64) / m,
                Some(_) => 1.0,
                None => 0.0,
            };
            (c.index, score)
        })
        .collect();
    let mut verdict = Verdict::empty(JudgeOutcome::Ok);
    verdict.ranking = ranking;
    verdict.fully_ranked = fully_ranked;
    verdict.scores = scores;
    verdict
}

/// The conversation as the judge reads it; tool results say which call they answer.
fn conversation_for_judge(messages: &[RequestMessage]) -> Vec<TemplateMessage> {
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

impl Judge for Listwise {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        self.decide(request).boxed()
    }

    fn fingerprint(&self) -> String {
        serde_json::json!([
            "listwise",
            self.call.fingerprint(),
            self.rubrics,
            self.template_source,
            self.shuffle,
            self.max_prompt_bytes,
        ])
        .to_string()
    }
}
