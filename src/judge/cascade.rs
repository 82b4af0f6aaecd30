//! The cascade: a cheap judge ranks every candidate, and only its best `keep` go on to an
//! expensive one, so the costly judge reads a few answers instead of all N.
//!
//! Typical pairs: a reward model or `consensus` first, then a pairwise or listwise LLM judge.
//! When the first judge cannot decide, the second judges every candidate (the cascade costs
//! more, but still decides); when the second cannot, the first judge's ranking stands. Only
//! when both fail does the cascade fail and the fallback choose. Both verdicts are in the
//! debug object, and the usage of both is counted.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};

use super::{
    Blueprint, Judge, JudgeOutcome, JudgeRequest, JudgedCandidate, NamedJudge, Shape, Strategy,
    Verdict,
};
use crate::config::ConfigError;

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register("cascade", Shape::Composite, Cascade::build);

pub struct Cascade {
    first: Arc<NamedJudge>,
    then: Arc<NamedJudge>,
    keep: usize,
}

impl Cascade {
    fn build(blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        let config = blueprint.config;
        let stage = |field: &str, name: &str| {
            let judge = blueprint.built.get(name).filter(|j| !j.composite);
            judge.cloned().ok_or_else(|| {
                let known: Vec<&str> = blueprint.built.keys().map(String::as_str).collect();
                ConfigError(format!(
                    "`{}.{field}`: there is no judge `{name}` a cascade can use; judges: {}. \
                     (A cascade's stages are plain judges, not panels or cascades.)",
                    blueprint.key,
                    known.join(", ")
                ))
            })
        };
        Ok(Arc::new(Cascade {
            first: stage("first", &config.first)?,
            then: stage("then", &config.then)?,
            keep: config.keep,
        }))
    }

    async fn decide(&self, request: JudgeRequest<'_>) -> Verdict {
        let started = Instant::now();
        // Nothing to cut: the first judge would only cost.
        let first = if request.candidates.len() > self.keep {
            Some(self.first.judge.judge(request.reseeded(request.seed)).await)
        } else {
            None
        };
        let kept = self.kept(&request, first.as_ref());
        let then = if kept.len() > 1 {
            let then_request = JudgeRequest {
                candidates: &kept,
                ..request.reseeded(request.seed.wrapping_add(1))
            };
            Some(self.then.judge.judge(then_request).await)
        } else {
            None
        };
        let mut verdict = combine(first.as_ref(), then.as_ref(), &kept, &request);
        verdict.detail = self.detail(first.as_ref(), then.as_ref(), &kept);
        verdict.usage =
            [&first, &then]
                .into_iter()
                .flatten()
                .fold(Default::default(), |mut usage, v| {
                    usage.add(&v.usage);
                    usage
                });
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        verdict
    }

    /// The candidates the second judge sees: the first judge's best `keep`, or all of them
    /// when the first was skipped or could not decide.
    fn kept(&self, request: &JudgeRequest<'_>, first: Option<&Verdict>) -> Vec<JudgedCandidate> {
        let Some(ranking) = first.filter(|v| v.winner().is_some()).map(|v| &v.ranking) else {
            return request.candidates.to_vec();
        };
        let ranked = ranking
            .iter()
            .filter_map(|&i| request.candidates.iter().find(|c| c.index == i));
        // A partial ranking (a winner only) is completed in generation order.
        let rest = request
            .candidates
            .iter()
            .filter(|c| !ranking.contains(&c.index));
        ranked.chain(rest).take(self.keep).cloned().collect()
    }

    fn detail(
        &self,
        first: Option<&Verdict>,
        then: Option<&Verdict>,
        kept: &[JudgedCandidate],
    ) -> serde_json::Map<String, Value> {
        let stage = |judge: &NamedJudge, verdict: Option<&Verdict>| match verdict {
            Some(verdict) => Value::Object(verdict.reported_by(judge)),
            None => json!({"name": judge.name, "strategy": judge.strategy, "skipped": true}),
        };
        let mut detail = serde_json::Map::new();
        detail.insert("first".into(), stage(&self.first, first));
        detail.insert("then".into(), stage(&self.then, then));
        let kept: Vec<usize> = kept.iter().map(|c| c.index).collect();
        detail.insert("kept".into(), json!(kept));
        detail
    }
}

/// The final ranking: the second judge's order of the kept candidates, then the first judge's
/// order of the rest; or the first judge's alone when the second did not decide.
fn combine(
    first: Option<&Verdict>,
    then: Option<&Verdict>,
    kept: &[JudgedCandidate],
    request: &JudgeRequest<'_>,
) -> Verdict {
    let decided = |v: Option<&Verdict>| v.filter(|v| v.winner().is_some()).cloned();
    let first_order: Vec<usize> = match decided(first) {
        Some(v) => v.ranking,
        None => kept.iter().map(|c| c.index).collect(),
    };
    let mut verdict = match (decided(then), decided(first)) {
        (Some(then), _) => then,
        // The second judge was not needed (one kept) or could not decide: the first stands.
        (None, Some(first)) => first,
        (None, None) => return failed(first, then),
    };
    let mut ranking = std::mem::take(&mut verdict.ranking);
    let all = request.candidates.iter().map(|c| c.index);
    let rest: Vec<usize> = first_order.into_iter().chain(all).collect();
    for index in rest {
        if !ranking.contains(&index) {
            ranking.push(index);
        }
    }
    verdict.ranking = ranking;
    verdict.fully_ranked = true;
    verdict.raw = Vec::new();
    verdict
}

/// Both stages failed: the cascade fails the way its judges did.
fn failed(first: Option<&Verdict>, then: Option<&Verdict>) -> Verdict {
    let stages = [("first", first), ("then", then)];
    let reasons: Vec<String> = stages
        .iter()
        .filter_map(|(stage, v)| Some(format!("{stage}: {}", v.as_ref()?.failure.as_deref()?)))
        .collect();
    let outcome = stages
        .iter()
        .filter_map(|(_, v)| v.map(|v| v.outcome))
        .find(|o| *o != JudgeOutcome::Error)
        .unwrap_or(JudgeOutcome::Error);
    Verdict::failed(
        outcome,
        format!("neither stage decided ({})", reasons.join("; ")),
    )
}

impl Judge for Cascade {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        self.decide(request).boxed()
    }

    fn fingerprint(&self) -> String {
        json!([
            STRATEGY.name,
            self.first.fingerprint,
            self.then.fingerprint,
            self.keep
        ])
        .to_string()
    }

    fn wants_logprobs(&self) -> bool {
        self.first.judge.wants_logprobs() || self.then.judge.wants_logprobs()
    }

    fn describe(&self) -> String {
        format!(
            "first {}, then {} on its best {}",
            self.first.name, self.then.name, self.keep
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(ranking: &[usize]) -> Verdict {
        let mut verdict = Verdict::empty(JudgeOutcome::Ok);
        verdict.ranking = ranking.to_vec();
        verdict
    }

    fn candidates(indices: &[usize]) -> Vec<JudgedCandidate> {
        let text = |i: usize| format!("answer {i}");
        indices
            .iter()
            .map(|&index| JudgedCandidate {
                index,
                text: text(index),
                mean_logprob: None,
            })
            .collect()
    }

    #[test]
    fn the_second_judge_orders_the_kept_and_the_first_the_rest() {
        let all = candidates(&[0, 1, 2, 3]);
        let request = JudgeRequest {
            conversation: &[],
            candidates: &all,
            request_model: "m",
            client_headers: &http::HeaderMap::new(),
            seed: 1,
            rubrics: None,
            response_format: None,
        };
        let first = ranked(&[2, 0, 3, 1]);
        let kept = candidates(&[2, 0]);
        let then = ranked(&[0, 2]);
        let verdict = combine(Some(&first), Some(&then), &kept, &request);
        assert_eq!(verdict.ranking, vec![0, 2, 3, 1]);
        let failed_then = Verdict::failed(JudgeOutcome::Error, "down".into());
        let verdict = combine(Some(&first), Some(&failed_then), &kept, &request);
        assert_eq!(verdict.ranking, vec![2, 0, 3, 1], "the first judge stands");
        let failed_first = Verdict::failed(JudgeOutcome::ParseError, "garbled".into());
        let verdict = combine(Some(&failed_first), Some(&failed_then), &all, &request);
        assert_eq!(verdict.outcome, JudgeOutcome::ParseError);
        assert!(verdict.failure.unwrap().contains("first: garbled"));
    }
}
