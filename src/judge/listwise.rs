//! The listwise judge: one LLM call sees every candidate and names the best (and a ranking).
//!
//! This is the seed idea from RM-Gallery's best-of-N tutorial: a helpfulness judge reading all
//! answers side by side. Candidates are shuffled before they are shown, against position bias,
//! and the verdict is mapped back to generation order.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::llm::LlmPrompt;
use super::protocol::{self, TemplateCandidate};
use super::{Blueprint, Judge, JudgeOutcome, JudgeRequest, Shape, Strategy, Verdict};
use crate::config::ConfigError;

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register(
    "listwise",
    Shape::Prompt { template: TEMPLATE },
    Listwise::build,
);

/// The built-in listwise prompt. Users replace it with `template`; the context holds
/// `conversation` (list of `{role, text}`), `rubrics` (list of strings) and `candidates`
/// (list of `{id, text}`, already shuffled).
const TEMPLATE: &str = protocol::judge_template!(
    "You are an impartial judge. Several assistants answered the same conversation; decide \
     which answer serves the user best.",
    "the answers",
    "The {{ candidates | length }} candidate answers:",
    "The order in which the candidates are shown means nothing, and neither does length on its \
     own. Think briefly, then give the id of the best candidate as <best>ID</best>, and rank all \
     candidates from best to worst as <ranking>ID,ID,...</ranking>."
);

pub struct Listwise {
    prompt: LlmPrompt,
    shuffle: bool,
}

impl Listwise {
    fn build(blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        let shuffle = blueprint.config.shuffle;
        Ok(Arc::new(Listwise {
            prompt: LlmPrompt::new(blueprint, TEMPLATE, &["1", "2", "3"])?,
            shuffle,
        }))
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
        let shown: Vec<TemplateCandidate> = order
            .iter()
            .enumerate()
            .map(|(k, &p)| TemplateCandidate {
                id: (k + 1).to_string(),
                text: request.candidates[p].text.clone(),
            })
            .collect();
        let decision = self.prompt.decision(request);
        let (text, usage) = match self.prompt.ask(&decision, shown).await {
            Ok(answer) => answer,
            Err(failure) => {
                let mut verdict = Verdict::failed(JudgeOutcome::Error, failure.why);
                verdict.usage = failure.usage;
                return verdict;
            }
        };
        let mut verdict = match protocol::parse_listwise(&text, order.len()) {
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

impl Judge for Listwise {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        self.decide(request).boxed()
    }

    fn fingerprint(&self) -> String {
        serde_json::json!([STRATEGY.name, self.prompt.fingerprint(), self.shuffle]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::protocol::{PromptTemplate, TemplateMessage};

    #[test]
    fn default_template_renders_candidates_in_the_protocol_format() {
        let template = PromptTemplate::new("", TEMPLATE).unwrap();
        let text = template
            .render(
                &[TemplateMessage {
                    role: "user".into(),
                    text: "Why?".into(),
                }],
                &["Be right.".to_string()],
                &[
                    TemplateCandidate {
                        id: "1".into(),
                        text: "Because.".into(),
                    },
                    TemplateCandidate {
                        id: "2".into(),
                        text: "- a\n- b".into(),
                    },
                ],
            )
            .unwrap();
        assert!(
            text.contains("<candidate id=\"2\">\n- a\n- b\n</candidate>"),
            "{text}"
        );
        assert!(text.contains("1. Be right."));
        assert!(text.contains("[user]\nWhy?"));
        assert!(text.contains("<best>"));
    }
}
