//! The pointwise judge: every candidate is scored on its own, all calls at once, and the
//! highest score wins.
//!
//! One prompt shows one candidate as `<candidate id="1">` and asks for `<score>X</score>`, X
//! from 0 to 10. Scores are reported divided by 10. A candidate whose call failed or whose
//! answer had no readable score is unscored, never scored 0: a judge outage must not look like
//! a bad answer. Equal scores are ordered by the seeded presentation order (generation order
//! when `shuffle = false`), so a tie favours no fixed position and can be reproduced.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};

use super::llm::{Decision, LlmPrompt};
use super::protocol::{self, TemplateCandidate};
use super::{
    Blueprint, Judge, JudgeOutcome, JudgeRequest, JudgedCandidate, Shape, Strategy, Verdict,
};
use crate::config::ConfigError;
use crate::openai::Usage;

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register(
    "pointwise",
    Shape::Prompt { template: TEMPLATE },
    Pointwise::build,
);

/// The built-in pointwise prompt; `candidates` holds the one candidate, id `1`.
const TEMPLATE: &str = protocol::judge_template!(
    "You are an impartial judge. Rate how well one assistant answer serves the user in the \
     conversation below.",
    "the answer",
    "The answer:",
    "Length on its own is neither good nor bad. Think briefly, then give a score from 0 \
     (useless or harmful) to 10 (could not be better), decimals allowed, as <score>X</score>."
);

pub struct Pointwise {
    prompt: LlmPrompt,
    shuffle: bool,
}

/// How one candidate's call went.
struct Scored {
    index: usize,
    /// 0..10 as the judge gave it.
    score: Result<f64, (JudgeOutcome, String)>,
    raw: Option<String>,
    usage: Usage,
}

impl Pointwise {
    fn build(blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        let shuffle = blueprint.config.shuffle;
        Ok(Arc::new(Pointwise {
            prompt: LlmPrompt::new(blueprint, TEMPLATE, &["1"])?,
            shuffle,
        }))
    }

    async fn decide(&self, request: JudgeRequest<'_>) -> Verdict {
        let started = Instant::now();
        let order =
            protocol::presentation_order(request.candidates.len(), request.seed, self.shuffle);
        let presentation: Vec<usize> = order.iter().map(|&p| request.candidates[p].index).collect();
        let decision = self.prompt.decision(&request);
        let calls = request.candidates.iter().map(|c| self.score(&decision, c));
        let scored = crate::concurrently::all(calls).await;
        let mut verdict = verdict_from(&scored, &presentation);
        verdict.presentation = presentation;
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        verdict
    }

    async fn score(&self, decision: &Decision<'_>, candidate: &JudgedCandidate) -> Scored {
        let shown = vec![TemplateCandidate {
            id: "1".into(),
            text: candidate.text.clone(),
        }];
        let (score, raw, usage) = match self.prompt.ask(decision, shown).await {
            Ok((text, usage)) => {
                let score =
                    protocol::parse_score(&text).map_err(|why| (JudgeOutcome::ParseError, why));
                (score, Some(text), usage)
            }
            Err(failure) => (Err((JudgeOutcome::Error, failure.why)), None, failure.usage),
        };
        Scored {
            index: candidate.index,
            score,
            raw,
            usage,
        }
    }
}

/// Ranks the scored candidates, best first, ties in presentation order.
fn verdict_from(scored: &[Scored], presentation: &[usize]) -> Verdict {
    let mut usage = Usage::default();
    for call in scored {
        usage.add(&call.usage);
    }
    let mut ranked: Vec<(usize, f64)> = scored
        .iter()
        .filter_map(|call| Some((call.index, *call.score.as_ref().ok()?)))
        .collect();
    let place = |index: usize| presentation.iter().position(|&i| i == index);
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(place(a.0).cmp(&place(b.0))));
    let mut verdict = if ranked.is_empty() {
        nobody_scored(scored)
    } else {
        let mut verdict = Verdict::empty(JudgeOutcome::Ok);
        verdict.fully_ranked = ranked.len() == scored.len();
        verdict.ranking = ranked.iter().map(|&(index, _)| index).collect();
        verdict.scores = ranked.iter().map(|&(i, score)| (i, score / 10.0)).collect();
        verdict
    };
    verdict.usage = usage;
    verdict.raw = scored.iter().filter_map(|c| c.raw.clone()).collect();
    verdict
        .detail
        .insert("calls".into(), scored.iter().map(call_detail).collect());
    verdict
}

/// No call gave a score: a parse error when any judge answered, else a call error.
fn nobody_scored(scored: &[Scored]) -> Verdict {
    let outcome = JudgeOutcome::of_failure(scored.iter().any(|c| c.raw.is_some()));
    let reasons: Vec<String> = scored
        .iter()
        .filter_map(|c| Some(format!("#{}: {}", c.index, c.score.as_ref().err()?.1)))
        .collect();
    Verdict::failed(
        outcome,
        format!("no candidate could be scored ({})", reasons.join("; ")),
    )
}

fn call_detail(call: &Scored) -> Value {
    match &call.score {
        Ok(score) => json!({"candidate": call.index, "score": score / 10.0, "judge_score": score}),
        Err((outcome, why)) => json!({
            "candidate": call.index, "score": null, "outcome": outcome.as_str(), "failure": why
        }),
    }
}

impl Judge for Pointwise {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        self.decide(request).boxed()
    }

    fn fingerprint(&self) -> String {
        json!([STRATEGY.name, self.prompt.fingerprint(), self.shuffle]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(index: usize, score: Result<f64, &str>) -> Scored {
        Scored {
            index,
            raw: Some("answer".into()),
            score: score.map_err(|why| (JudgeOutcome::ParseError, why.to_string())),
            usage: Usage::default(),
        }
    }

    #[test]
    fn highest_score_wins_and_ties_follow_presentation_order() {
        let calls = [scored(0, Ok(7.0)), scored(1, Ok(9.0)), scored(2, Ok(7.0))];
        let verdict = verdict_from(&calls, &[2, 1, 0]);
        assert_eq!(verdict.ranking, vec![1, 2, 0]);
        assert!(verdict.fully_ranked);
        assert!(verdict.scores.contains(&(1, 0.9)));
        let verdict = verdict_from(&calls, &[0, 1, 2]);
        assert_eq!(verdict.ranking, vec![1, 0, 2]);
    }

    #[test]
    fn unscored_candidates_are_left_out_not_zeroed() {
        let calls = [scored(0, Err("no score")), scored(1, Ok(0.0))];
        let verdict = verdict_from(&calls, &[0, 1]);
        assert_eq!(verdict.ranking, vec![1]);
        assert!(!verdict.fully_ranked);
        assert_eq!(verdict.scores, vec![(1, 0.0)]);
        let verdict = verdict_from(&[scored(0, Err("x")), scored(1, Err("y"))], &[0, 1]);
        assert_eq!(verdict.outcome, JudgeOutcome::ParseError);
        assert!(verdict.winner().is_none());
        assert!(verdict.failure.unwrap().contains("#1: y"));
    }
}
