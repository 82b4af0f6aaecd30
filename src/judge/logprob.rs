//! The logprob judge (self-certainty): the candidate the model was most sure of wins, with no
//! judge call.
//!
//! Candidates are asked for `"logprobs": true` (see [`Judge::wants_logprobs`]); a candidate's
//! confidence is the mean log-probability of its tokens, which the selection reads from the
//! answer (`JudgedCandidate::mean_logprob`). The highest mean wins, ties in generation order.
//! The score is `exp(mean)`, the geometric mean of the token probabilities, from 0 to 1. The
//! mean, not the sum, so that a long answer is not penalised for its length.
//!
//! A candidate without log-probabilities is unscored, never scored 0. When none has them (the
//! upstream ignores `logprobs`), the judge fails as a parse error and the fallback chooses.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};

use super::{
    Blueprint, Judge, JudgeOutcome, JudgeRequest, JudgedCandidate, Shape, Strategy, Verdict,
};
use crate::config::ConfigError;

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register("logprob", Shape::Local, Logprob::build);

/// Why the judge fails when no candidate came with log-probabilities.
const NO_LOGPROBS: &str = "the upstream returned no logprobs (does it support `logprobs`?)";

pub struct Logprob;

impl Logprob {
    fn build(_blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        Ok(Arc::new(Logprob))
    }
}

impl Judge for Logprob {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        let started = Instant::now();
        let mut verdict = decide(request.candidates);
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        futures_util::future::ready(verdict).boxed()
    }

    fn fingerprint(&self) -> String {
        json!([STRATEGY.name]).to_string()
    }

    fn describe(&self) -> String {
        "no judge call: the highest mean token log-probability wins".to_string()
    }

    fn wants_logprobs(&self) -> bool {
        true
    }
}

/// Ranks the candidates with log-probabilities, most confident first, ties in generation order.
fn decide(candidates: &[JudgedCandidate]) -> Verdict {
    let mut in_order: Vec<&JudgedCandidate> = candidates.iter().collect();
    in_order.sort_by_key(|c| c.index);
    let mut scored: Vec<(usize, f64)> = in_order
        .iter()
        .filter_map(|c| Some((c.index, c.mean_logprob?)))
        .collect();
    // Stable: equal means keep generation order.
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut verdict = if scored.is_empty() {
        Verdict::failed(JudgeOutcome::ParseError, NO_LOGPROBS.to_string())
    } else {
        let mut verdict = Verdict::empty(JudgeOutcome::Ok);
        verdict.ranking = scored.iter().map(|&(index, _)| index).collect();
        verdict.fully_ranked = scored.len() == candidates.len();
        verdict.scores = scored.iter().map(|&(i, mean)| (i, mean.exp())).collect();
        verdict
    };
    verdict.presentation = in_order.iter().map(|c| c.index).collect();
    let detail = in_order.iter().map(|c| {
        json!({
            "candidate": c.index,
            "mean_logprob": c.mean_logprob,
            "score": c.mean_logprob.map(f64::exp),
        })
    });
    verdict
        .detail
        .insert("logprobs".into(), Value::Array(detail.collect()));
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(index: usize, mean_logprob: Option<f64>) -> JudgedCandidate {
        JudgedCandidate {
            index,
            text: format!("answer {index}"),
            mean_logprob,
        }
    }

    #[test]
    fn the_most_confident_wins_and_ties_follow_generation_order() {
        let candidates = [
            candidate(2, Some(-0.1)),
            candidate(0, Some(-0.9)),
            candidate(1, Some(-0.1)),
        ];
        let verdict = decide(&candidates);
        assert_eq!(verdict.outcome, JudgeOutcome::Ok);
        assert_eq!(verdict.ranking, vec![1, 2, 0]);
        assert!(verdict.fully_ranked);
        assert_eq!(verdict.scores[0], (1, (-0.1f64).exp()));
        assert_eq!(verdict.presentation, vec![0, 1, 2]);
    }

    #[test]
    fn candidates_without_logprobs_are_unscored_and_none_at_all_fails() {
        let verdict = decide(&[candidate(0, None), candidate(1, Some(-2.0))]);
        assert_eq!(verdict.ranking, vec![1]);
        assert!(!verdict.fully_ranked);
        assert_eq!(verdict.scores, vec![(1, (-2.0f64).exp())]);
        assert_eq!(verdict.detail["logprobs"][0]["score"], Value::Null);
        let verdict = decide(&[candidate(0, None), candidate(1, None)]);
        assert_eq!(verdict.outcome, JudgeOutcome::ParseError);
        assert!(verdict.winner().is_none());
        assert_eq!(verdict.failure.as_deref(), Some(NO_LOGPROBS));
    }
}
