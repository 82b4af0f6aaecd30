//! The panel: several named judges (other models, strategies or rubrics) decide at once and
//! their rankings are combined by Borda count, so one model's quirks are outvoted.
//!
//! Each member's ranking is a ballot: with m candidates, first place earns m-1 points, the
//! last 0; candidates a ballot leaves unranked (a winner-only verdict) share its remaining
//! points equally. The highest total wins; ties go to more first places, then to the seeded
//! presentation order. A member that fails is left out and the debug object says so; the panel
//! fails only when every member failed.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};

use super::{Blueprint, Judge, JudgeOutcome, JudgeRequest, NamedJudge, Shape, Strategy, Verdict};
use crate::config::ConfigError;
use crate::openai::Usage;

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register("panel", Shape::Composite, Panel::build);

pub struct Panel {
    members: Vec<Arc<NamedJudge>>,
    shuffle: bool,
}

impl Panel {
    fn build(blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        let key = blueprint.key;
        if blueprint.config.members.is_empty() {
            return Err(ConfigError(format!(
                "`{key}.members`: a panel needs at least one member, e.g. \
                 [\"listwise\", \"pointwise\", \"pairwise\"]"
            )));
        }
        let mut members = Vec::new();
        for name in &blueprint.config.members {
            let member = blueprint.built.get(name).filter(|m| !m.composite);
            let Some(member) = member else {
                let known: Vec<&str> = blueprint.built.keys().map(String::as_str).collect();
                return Err(ConfigError(format!(
                    "`{key}.members`: there is no judge `{name}` a panel can use; judges: {}. \
                     (A panel cannot sit on another panel.)",
                    known.join(", ")
                )));
            };
            members.push(member.clone());
        }
        Ok(Arc::new(Panel {
            members,
            shuffle: blueprint.config.shuffle,
        }))
    }

    async fn decide(&self, request: JudgeRequest<'_>) -> Verdict {
        let started = Instant::now();
        let count = request.candidates.len();
        let order = super::protocol::presentation_order(count, request.seed, self.shuffle);
        let presentation: Vec<usize> = order.iter().map(|&p| request.candidates[p].index).collect();
        // Each member gets its own shuffle, so members do not share one position bias.
        let asks = self.members.iter().enumerate().map(|(k, member)| {
            let seed = request.seed.wrapping_add(k as u64 + 1);
            member.judge.judge(request.reseeded(seed))
        });
        let verdicts = crate::concurrently::all(asks).await;
        let mut verdict = combine(&self.members, &verdicts, &presentation);
        verdict.presentation = presentation;
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        verdict
    }
}

/// Borda count over the members that decided.
fn combine(members: &[Arc<NamedJudge>], verdicts: &[Verdict], presentation: &[usize]) -> Verdict {
    let mut usage = Usage::default();
    verdicts.iter().for_each(|v| usage.add(&v.usage));
    let ballots: Vec<&Verdict> = verdicts.iter().filter(|v| v.winner().is_some()).collect();
    let mut verdict = if ballots.is_empty() {
        let reasons: Vec<String> = members
            .iter()
            .zip(verdicts)
            .map(|(m, v)| {
                format!(
                    "{}: {}",
                    m.name,
                    v.failure.as_deref().unwrap_or("no verdict")
                )
            })
            .collect();
        // Reported as the members failed: unreadable verdicts, or calls that broke.
        let outcome = verdicts
            .iter()
            .map(|v| v.outcome)
            .find(|o| *o != JudgeOutcome::Error)
            .unwrap_or(JudgeOutcome::Error);
        Verdict::failed(
            outcome,
            format!("every panel member failed ({})", reasons.join("; ")),
        )
    } else {
        borda(&ballots, presentation)
    };
    verdict.usage = usage;
    let detail = members.iter().zip(verdicts).map(|(member, verdict)| {
        let mut report = verdict.reported_by(member);
        report.insert("counted".into(), json!(verdict.winner().is_some()));
        Value::Object(report)
    });
    verdict.detail.insert("members".into(), detail.collect());
    verdict
}

fn borda(ballots: &[&Verdict], presentation: &[usize]) -> Verdict {
    let m = presentation.len();
    // (candidate index, points, first places), in presentation order.
    let mut totals: Vec<(usize, f64, usize)> = presentation.iter().map(|&i| (i, 0.0, 0)).collect();
    for ballot in ballots {
        let ranked = ballot.ranking.len().min(m);
        // Points m-1 .. m-ranked go to the ranked; the unranked share what is left.
        let left: f64 = (0..m - ranked).map(|p| p as f64).sum();
        let share = if m > ranked {
            left / (m - ranked) as f64
        } else {
            0.0
        };
        for total in &mut totals {
            match ballot.ranking.iter().position(|&i| i == total.0) {
                Some(place) => total.1 += (m - 1).saturating_sub(place) as f64,
                None => total.1 += share,
            }
        }
        if let Some(first) = totals.iter_mut().find(|t| Some(t.0) == ballot.winner()) {
            first.2 += 1;
        }
    }
    // Stable: equal totals and first places keep presentation order.
    totals.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)));
    let most = (ballots.len() * m.saturating_sub(1)).max(1) as f64;
    let mut verdict = Verdict::empty(JudgeOutcome::Ok);
    verdict.ranking = totals.iter().map(|t| t.0).collect();
    verdict.scores = totals.iter().map(|t| (t.0, t.1 / most)).collect();
    verdict.fully_ranked = true;
    verdict
}

impl Judge for Panel {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        self.decide(request).boxed()
    }

    /// A member that reads log-probabilities needs them asked for, whoever else sits with it.
    fn wants_logprobs(&self) -> bool {
        self.members.iter().any(|m| m.judge.wants_logprobs())
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        format!("members {}", names.join(", "))
    }

    fn fingerprint(&self) -> String {
        let members: Vec<&str> = self
            .members
            .iter()
            .map(|m| m.fingerprint.as_str())
            .collect();
        json!([STRATEGY.name, members, self.shuffle]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballot(ranking: &[usize]) -> Verdict {
        let mut verdict = Verdict::empty(JudgeOutcome::Ok);
        verdict.ranking = ranking.to_vec();
        verdict
    }

    #[test]
    fn borda_adds_ranks_and_shares_what_a_partial_ballot_leaves() {
        let full = ballot(&[2, 0, 1]);
        let winner_only = ballot(&[0]);
        let verdict = borda(&[&full, &winner_only], &[0, 1, 2]);
        // 0: 1 + 2 = 3; 2: 2 + 0.5 = 2.5; 1: 0 + 0.5 = 0.5.
        assert_eq!(verdict.ranking, vec![0, 2, 1]);
        assert!(verdict.scores.contains(&(0, 0.75)));
    }

    #[test]
    fn ties_go_to_more_first_places_then_presentation_order() {
        let one = ballot(&[0, 1, 2]);
        let two = ballot(&[1, 2, 0]);
        // 0: 2 + 0 = 2; 1: 1 + 2 = 3; 2: 0 + 1 = 1. No tie.
        assert_eq!(borda(&[&one, &two], &[0, 1, 2]).ranking, vec![1, 0, 2]);
        let a = ballot(&[0, 1]);
        let b = ballot(&[1, 0]);
        assert_eq!(borda(&[&a, &b], &[1, 0]).ranking, vec![1, 0]);
        assert_eq!(borda(&[&a, &b], &[0, 1]).ranking, vec![0, 1]);
    }
}
