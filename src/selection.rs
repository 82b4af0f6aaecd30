//! The selection policy: which candidates the judge may see, what it decided, and what happens
//! when it cannot decide.
//!
//! Successful candidates are split into eligible and disqualified (JSON mode), the only
//! eligible one wins without a judge, otherwise the judge named by the plan ranks them, and
//! when it cannot, that judge's `fallback` picks and the selection says so. Disqualified answers rank
//! last: they only fill `n` choices when nothing better is left.

use http::HeaderMap;

use crate::answer::Failed;
use crate::config::Fallback;
use crate::error::ApiError;
use crate::fanout::{Candidate, EarlyStop};
use crate::judge::{
    is_json_mode, JudgeOutcome, JudgeRequest, JudgedCandidate, NamedJudge, Verdict,
};
use crate::openai::{ChatRequest, Choice};
use crate::plan::BestOfN;
use crate::state::AppState;

/// How the candidates were ordered for the answer.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Candidate indices (generation order), best first; never empty. The first is the winner;
    /// `n: k` answers take the first k.
    pub ranking: Vec<usize>,
    /// True when the judge ordered every eligible candidate; otherwise only the first place
    /// was decided and the rest follow in generation order.
    pub fully_ranked: bool,
    /// The judge's verdict; `None` when no judge was asked (a single eligible candidate).
    pub verdict: Option<Verdict>,
    /// Set when the judge's `fallback` chose: `"<fallback> (<why>)"`.
    pub fallback: Option<String>,
    /// Successful candidates excluded before judging (content not valid JSON in JSON mode).
    pub disqualified: Vec<usize>,
    /// The strategy of the judge the request named.
    pub strategy: &'static str,
}

impl Selection {
    pub fn winner(&self) -> usize {
        self.ranking[0]
    }
}

/// Orders the candidates: the only eligible one, the judge's ranking, or the fallback's pick.
/// Disqualified answers rank last: they only fill `n` choices when nothing better is left.
pub async fn select(
    state: &AppState,
    plan: &BestOfN,
    request: &ChatRequest,
    candidates: &[Candidate],
    client_headers: &HeaderMap,
) -> Result<Selection, Failed> {
    let judge = judge_of(state, plan)?;
    let (eligible, disqualified) = eligible_candidates(request, candidates);
    let mut selection = if eligible.is_empty() {
        // JSON mode and no candidate produced JSON: the fallback picks among all successes.
        state.metrics.judged(judge.strategy, "fallback");
        let succeeded = succeeded_candidates(candidates);
        fall_back(judge, &succeeded, None, "no_valid_json")?
    } else {
        let ask = Ask {
            judge,
            rubrics: plan.rubric.as_deref().and_then(|r| state.judges.rubric(r)),
            request,
            client_headers,
        };
        choose(state, &ask, &eligible).await?
    };
    let unranked: Vec<usize> = disqualified
        .iter()
        .copied()
        .filter(|i| !selection.ranking.contains(i))
        .collect();
    selection.ranking.extend(unranked);
    selection.disqualified = disqualified;
    Ok(selection)
}

/// The judge the plan names.
pub fn judge_of<'a>(state: &'a AppState, plan: &BestOfN) -> Result<&'a NamedJudge, Failed> {
    let judge = state.judges.get(&plan.judge);
    let missing = || ApiError::internal(format!("judge `{}` is not configured", plan.judge));
    Ok(judge.ok_or_else(missing)?)
}

/// The judge's early stop (see [`crate::judge::Judge::early_stop`]) as the fan-out asks it.
/// Its checker sees only the answers it will judge (JSON-mode answers that are not JSON are
/// not shown), and the fan-out stops only once `needed` candidates succeeded as well, so a
/// stop never fails `best_of_n.min_candidates` or `n`. A checker that said "decided" stays
/// decided: later answers only add to a settled pick.
pub fn early_stop(
    judge: &NamedJudge,
    request: &ChatRequest,
    n: u32,
    needed: usize,
) -> Option<EarlyStop> {
    let format = request.response_format_type();
    let mut checker = judge.judge.early_stop(n as usize, format)?;
    let json_mode = is_json_mode(format);
    let (mut succeeded, mut decided) = (0, false);
    Some(Box::new(move |candidate: &Candidate| {
        if candidate.answer().is_some() {
            succeeded += 1;
        }
        let eligible = !json_mode || is_json_answer(candidate);
        if let Some(judged) = judged(candidate).filter(|_| eligible) {
            decided |= checker(&judged);
        }
        decided && succeeded >= needed
    }))
}

/// Who judges a request, and with what.
struct Ask<'a> {
    judge: &'a NamedJudge,
    /// The rubric preset the request chose, if any.
    rubrics: Option<&'a std::sync::Arc<[String]>>,
    request: &'a ChatRequest,
    client_headers: &'a HeaderMap,
}

/// Picks among eligible candidates: the only one, or the judge's verdict, or the fallback.
async fn choose(
    state: &AppState,
    ask: &Ask<'_>,
    eligible: &[JudgedCandidate],
) -> Result<Selection, Failed> {
    if let [only] = eligible {
        return Ok(Selection {
            ranking: vec![only.index],
            fully_ranked: true,
            verdict: None,
            fallback: None,
            disqualified: Vec::new(),
            strategy: ask.judge.strategy,
        });
    }
    let strategy = ask.judge.strategy;
    let verdict = ask
        .judge
        .judge
        .judge(JudgeRequest {
            conversation: &ask.request.messages,
            candidates: eligible,
            request_model: &ask.request.model,
            client_headers: ask.client_headers,
            seed: rand::random(),
            rubrics: ask.rubrics.map(|r| &r[..]),
            response_format: ask.request.response_format_type(),
        })
        .await;
    state.metrics.judged(strategy, verdict.outcome.as_str());
    match verdict.winner() {
        Some(winner) => {
            if let Some(position) = verdict.presentation.iter().position(|&i| i == winner) {
                state.metrics.selected_position(position);
            }
            Ok(ranked_by(verdict, eligible, strategy))
        }
        None => {
            state.metrics.judged(strategy, "fallback");
            let why = verdict.outcome.as_str();
            fall_back(ask.judge, eligible, Some(verdict), why)
        }
    }
}

/// The answer when the fuser wrote nothing: the first successful candidate, saying why.
pub fn without_fuser(candidates: &[Candidate], why: String) -> Selection {
    let ranking: Vec<usize> = succeeded_candidates(candidates)
        .iter()
        .map(|c| c.index)
        .collect();
    Selection {
        ranking,
        fully_ranked: false,
        verdict: Some(Verdict::failed(JudgeOutcome::Error, why)),
        fallback: Some(format!("{} (fuser_failed)", Fallback::FirstOk.as_str())),
        disqualified: Vec::new(),
        strategy: "fuse",
    }
}

/// Successful candidates split into those the judge may see and those disqualified before
/// judging: in JSON mode (`response_format` `json_object` or `json_schema`), a text answer
/// that does not parse as JSON cannot be what the client asked for.
fn eligible_candidates(
    request: &ChatRequest,
    candidates: &[Candidate],
) -> (Vec<JudgedCandidate>, Vec<usize>) {
    let succeeded = succeeded_candidates(candidates);
    if !is_json_mode(request.response_format_type()) {
        return (succeeded, Vec::new());
    }
    let is_json = |index: usize| is_json_answer(&candidates[index]);
    let (eligible, rejected): (Vec<_>, Vec<_>) =
        succeeded.into_iter().partition(|c| is_json(c.index));
    (eligible, rejected.into_iter().map(|c| c.index).collect())
}

/// True unless the answer's content is text that does not parse as JSON.
fn is_json_answer(candidate: &Candidate) -> bool {
    let choice = candidate.answer().and_then(|a| a.completion.first_choice());
    match choice.and_then(|c| c.content()) {
        Some(text) => serde_json::from_str::<serde_json::Value>(text).is_ok(),
        // A tool call or a refusal has no content to check.
        None => true,
    }
}

/// Every candidate with an answer, as the judge would see it.
fn succeeded_candidates(candidates: &[Candidate]) -> Vec<JudgedCandidate> {
    candidates.iter().filter_map(judged).collect()
}

/// A candidate with an answer, as the judge sees it.
fn judged(candidate: &Candidate) -> Option<JudgedCandidate> {
    let choice = candidate.answer()?.completion.first_choice()?;
    Some(JudgedCandidate {
        index: candidate.index,
        text: choice.text_for_judge(),
        mean_logprob: mean_logprob(choice),
    })
}

/// The mean log-probability of a choice's tokens: its content tokens (`logprobs.content`), or
/// for a refusal its refusal tokens (`logprobs.refusal`); `None` when the upstream sent none
/// (no `logprobs`, `null`, or empty lists).
fn mean_logprob(choice: &Choice) -> Option<f64> {
    let logprobs = choice.extra.get("logprobs")?;
    let tokens = ["content", "refusal"].iter().find_map(|part| {
        let tokens = logprobs.get(part)?.as_array()?;
        let values: Vec<f64> = tokens
            .iter()
            .filter_map(|token| token.get("logprob")?.as_f64())
            .collect();
        (!values.is_empty()).then_some(values)
    })?;
    Some(tokens.iter().sum::<f64>() / tokens.len() as f64)
}

/// The judge's ranking, completed with the unranked eligible candidates in generation order.
fn ranked_by(verdict: Verdict, eligible: &[JudgedCandidate], strategy: &'static str) -> Selection {
    let mut ranking = verdict.ranking.clone();
    ranking.extend(
        eligible
            .iter()
            .map(|c| c.index)
            .filter(|i| !verdict.ranking.contains(i)),
    );
    Selection {
        fully_ranked: verdict.fully_ranked,
        ranking,
        verdict: Some(verdict),
        fallback: None,
        disqualified: Vec::new(),
        strategy,
    }
}

/// The judge's `fallback` picks from `pool`, and the selection says why.
fn fall_back(
    judge: &NamedJudge,
    pool: &[JudgedCandidate],
    verdict: Option<Verdict>,
    why: &str,
) -> Result<Selection, Failed> {
    let detail = verdict
        .as_ref()
        .and_then(|v| v.failure.clone())
        .unwrap_or_else(|| why.to_string());
    tracing::warn!(%why, %detail, "judge could not choose; falling back");
    let fallback = judge.fallback;
    let first = match fallback {
        Fallback::FirstOk => 0,
        Fallback::Random => rand::random_range(0..pool.len()),
        Fallback::Error => {
            return Err(Failed::Proxy(ApiError::bad_gateway(
                "judge_failed",
                format!(
                    "No candidate could be chosen ({detail}), and the judge's fallback is \
                     `error`. Set its `fallback` to `first_ok` or `random` to answer anyway."
                ),
            )))
        }
    };
    let mut ranking = vec![pool[first].index];
    ranking.extend(
        pool.iter()
            .map(|c| c.index)
            .filter(|&i| i != pool[first].index),
    );
    Ok(Selection {
        ranking,
        fully_ranked: false,
        verdict,
        fallback: Some(format!("{} ({why})", fallback.as_str())),
        disqualified: Vec::new(),
        strategy: judge.strategy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn choice(logprobs: serde_json::Value) -> Choice {
        let choice = json!({"index": 0, "message": {"content": "a b"}, "logprobs": logprobs});
        serde_json::from_value(choice).unwrap()
    }

    #[test]
    fn mean_logprob_averages_content_tokens_or_else_refusal_tokens() {
        let tokens = |values: &[f64]| {
            let list: Vec<_> = values
                .iter()
                .map(|v| json!({"token": "t", "logprob": v}))
                .collect();
            json!(list)
        };
        let both = json!({"content": tokens(&[-0.5, -1.5]), "refusal": tokens(&[-9.0])});
        assert_eq!(mean_logprob(&choice(both)), Some(-1.0));
        let refusal = json!({"content": null, "refusal": tokens(&[-0.25])});
        assert_eq!(mean_logprob(&choice(refusal)), Some(-0.25));
        let empty = json!({"content": [], "refusal": []});
        assert_eq!(mean_logprob(&choice(empty)), None);
        assert_eq!(mean_logprob(&choice(json!({"content": []}))), None);
        assert_eq!(mean_logprob(&choice(json!(null))), None);
        let unreadable = json!({"content": [{"token": "t", "logprob": "high"}]});
        assert_eq!(mean_logprob(&choice(unreadable)), None);
    }
}
