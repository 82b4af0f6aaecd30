//! Response assembly for best-of-N: the winner as an ordinary `chat.completion`, the usage of
//! everything spent, the `x-best-of-n-*` headers, the optional debug breakdown, and the
//! answers for when every candidate failed.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use crate::answer::{copy_upstream_headers, Failed, Ready};
use crate::config::Mode;
use crate::error::ApiError;
use crate::fanout::{Candidate, Cut, Failure};
use crate::fusion::Fused;
use crate::openai::{Api, ChatCompletion, Usage};
use crate::plan::BestOfN;
use crate::selection::Selection;
use crate::upstream::JsonReply;

/// Every decision header a best-of-N answer may carry (DESIGN §4); CORS exposes them all.
pub const DECISION_HEADERS: [&str; 9] = [
    "x-best-of-n",
    "x-best-of-n-selected",
    "x-best-of-n-scores",
    "x-best-of-n-judge",
    "x-best-of-n-fallback",
    "x-best-of-n-disqualified",
    "x-best-of-n-mode",
    "x-best-of-n-judged",
    "x-best-of-n-models",
];

/// The answer: the winner's completion carrying the top `choices` candidates in rank order,
/// usage summed over everything spent, and the best-of-N headers. With `strip_logprobs`
/// (the proxy asked for them, the client did not), the choices carry `"logprobs": null`, as
/// they would have had the client's request gone upstream as it was; the cache stores that.
pub fn build(
    plan: &BestOfN,
    candidates: &[Candidate],
    selection: &Selection,
    choices: usize,
    strip_logprobs: bool,
) -> Result<Ready, Failed> {
    let answer_of = |index: usize| candidates.get(index).and_then(Candidate::answer);
    let winner = answer_of(selection.winner())
        .ok_or_else(|| ApiError::internal("the selected candidate has no answer"))?;
    let mut completion: ChatCompletion = winner.completion.clone();
    completion.choices = selection
        .ranking
        .iter()
        .take(choices)
        .filter_map(|&index| answer_of(index)?.completion.first_choice().cloned())
        .enumerate()
        .map(|(position, mut choice)| {
            choice.index = position as u32;
            if let Some(logprobs) = choice.extra.get_mut("logprobs").filter(|_| strip_logprobs) {
                *logprobs = Value::Null;
            }
            choice
        })
        .collect();
    let (candidate_usage, judge_usage) = spent(candidates, selection);
    let mut total = candidate_usage.clone();
    total.add(&judge_usage);
    completion.usage = Some(total);
    let debug = debug_object(plan, candidates, selection, &candidate_usage, &judge_usage);
    let mut headers = HeaderMap::new();
    copy_upstream_headers(&winner.headers, &mut headers);
    headers.remove(header::CONTENT_TYPE);
    insert_best_of_n_headers(&mut headers, plan, candidates, selection);
    Ok(Ready {
        completion,
        api: plan.api,
        native: winner.native.clone(),
        headers,
        debug: Some(Arc::new(debug)),
        // An early stop's answer is whole: the candidates it cancelled could not have changed
        // the pick, so it is as good as one made with all N. A quorum's is not: the stragglers
        // it cancelled might have won, so it is shared with identical requests in flight but
        // never stored as the answer of all N.
        cacheable: selection.fallback.is_none()
            && candidates
                .iter()
                .all(|c| c.answer().is_some() || c.cut() == Some(Cut::EarlyStop)),
    })
}

/// The fuser's answer as the response: its completion with usage summed over the candidates
/// and the fuser, the fuser's upstream headers, `x-best-of-n-mode: fuse`.
pub fn fused(plan: &BestOfN, candidates: &[Candidate], fused: Fused) -> Ready {
    let candidate_usage = candidate_usage(candidates);
    let mut completion = fused.completion;
    let fuser_usage = completion.usage.take().unwrap_or_default();
    let mut total = candidate_usage.clone();
    total.add(&fuser_usage);
    completion.usage = Some(total);
    let debug = json!({
        "n": plan.n,
        "mode": "fuse",
        "candidates": candidates.iter().map(|c| candidate_debug(plan, c, false, None)).collect::<Vec<_>>(),
        "fuser": {"latency_ms": millis(fused.latency), "usage": fuser_usage},
        "usage": {"candidates": candidate_usage, "fuser": fuser_usage},
    });
    Ready {
        completion,
        // The fuser writes chat completions: fuse mode serves chat only (see `best_of_n`).
        api: Api::Chat,
        native: None,
        headers: fused_headers(plan, candidates, &fused.headers),
        debug: Some(Arc::new(debug)),
        cacheable: candidates.iter().all(|c| c.answer().is_some()),
    }
}

/// The headers of a fused answer: the fuser's upstream ones, `x-best-of-n: N`,
/// `x-best-of-n-mode: fuse`, and `x-best-of-n-judged` when a quorum left the fuser fewer.
pub fn fused_headers(plan: &BestOfN, candidates: &[Candidate], fuser: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    copy_upstream_headers(fuser, &mut headers);
    headers.remove(header::CONTENT_TYPE);
    headers.insert("x-best-of-n", HeaderValue::from(plan.n));
    headers.insert("x-best-of-n-mode", HeaderValue::from_static("fuse"));
    if let Some(judged) = judged_header(plan, candidates).map(HeaderValue::try_from) {
        headers.extend(
            judged
                .ok()
                .map(|v| (header::HeaderName::from_static("x-best-of-n-judged"), v)),
        );
    }
    if let Some(models) = models_header(plan) {
        headers.insert("x-best-of-n-models", models);
    }
    headers
}

/// `x-best-of-n-models`: the model each candidate asked for, in generation order, when the
/// request mixed models.
fn models_header(plan: &BestOfN) -> Option<HeaderValue> {
    plan.listed_model(0)?;
    let models: Vec<&str> = (0..plan.n as usize)
        .filter_map(|k| plan.listed_model(k))
        .collect();
    HeaderValue::from_str(&models.join(",")).ok()
}

/// Tokens the candidates spent, all of them.
pub fn candidate_usage(candidates: &[Candidate]) -> Usage {
    let mut total = Usage::default();
    for usage in candidates
        .iter()
        .filter_map(|c| c.answer()?.completion.usage.as_ref())
    {
        total.add(usage);
    }
    total
}

/// Tokens spent: (all candidates, all judge calls).
fn spent(candidates: &[Candidate], selection: &Selection) -> (Usage, Usage) {
    let candidate_usage = candidate_usage(candidates);
    let judge_usage = selection
        .verdict
        .as_ref()
        .map(|v| v.usage.clone())
        .unwrap_or_default();
    (candidate_usage, judge_usage)
}

fn insert_best_of_n_headers(
    headers: &mut HeaderMap,
    plan: &BestOfN,
    candidates: &[Candidate],
    selection: &Selection,
) {
    if let Some(models) = models_header(plan) {
        headers.insert("x-best-of-n-models", models);
    }
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-best-of-n", plan.n.to_string());
    set("x-best-of-n-selected", selection.winner().to_string());
    set("x-best-of-n-scores", scores_header(candidates, selection));
    // A fuse-mode answer that fell back to a candidate was chosen by no judge.
    if plan.mode == Mode::Select {
        set("x-best-of-n-judge", plan.judge.clone());
    }
    if let Some(fallback) = &selection.fallback {
        set("x-best-of-n-fallback", fallback.clone());
    }
    if let Some(judged) = judged_header(plan, candidates) {
        set("x-best-of-n-judged", judged);
    }
    if !selection.disqualified.is_empty() {
        let list: Vec<String> = selection
            .disqualified
            .iter()
            .map(usize::to_string)
            .collect();
        set("x-best-of-n-disqualified", list.join(","));
    }
}

/// `x-best-of-n-judged: K/N` when the fan-out was cut (a quorum, an early stop): K candidates
/// finished, N were asked for.
fn judged_header(plan: &BestOfN, candidates: &[Candidate]) -> Option<String> {
    let cancelled = candidates.iter().filter(|c| c.cancelled()).count();
    let finished = candidates.len() - cancelled;
    (cancelled > 0).then(|| format!("{finished}/{}", plan.n))
}

/// One score per candidate in generation order; `-` where there is none (a failed candidate,
/// or every candidate when the judge failed).
fn scores_header(candidates: &[Candidate], selection: &Selection) -> String {
    candidates
        .iter()
        .map(|c| match score_of(c, selection) {
            Some(score) => format_score(score),
            None => "-".to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The score the selection gave a candidate; `None` for a failed or disqualified one, or when
/// a fallback chose.
pub fn score_of(candidate: &Candidate, selection: &Selection) -> Option<f64> {
    candidate.answer()?;
    if selection.disqualified.contains(&candidate.index) {
        return None;
    }
    match &selection.verdict {
        // Nobody judged: the only eligible candidate wins by default.
        None if selection.fallback.is_none() => Some(if candidate.index == selection.winner() {
            1.0
        } else {
            0.0
        }),
        None => None,
        Some(verdict) => verdict
            .scores
            .iter()
            .find(|(index, _)| *index == candidate.index)
            .map(|(_, score)| *score),
    }
}

pub fn format_score(score: f64) -> String {
    let text = format!("{score:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// The `best_of_n` object added to the body on `x-best-of-n-debug: 1`.
fn debug_object(
    plan: &BestOfN,
    candidates: &[Candidate],
    selection: &Selection,
    candidate_usage: &Usage,
    judge_usage: &Usage,
) -> Value {
    let judge = match &selection.verdict {
        None => json!({"skipped": "fewer than two eligible candidates"}),
        Some(v) => {
            let mut judge = json!({
            "outcome": v.outcome.as_str(),
            "presentation_order": v.presentation,
            "ranking": v.ranking,
            "fully_ranked": v.fully_ranked,
            "raw": v.raw,
            "failure": v.failure,
            "latency_ms": millis(v.latency),
            "usage": v.usage,
            });
            if let Value::Object(map) = &mut judge {
                map.extend(v.detail.clone());
            }
            judge
        }
    };
    json!({
        "n": plan.n,
        "judge_name": plan.judge,
        "strategy": selection.strategy,
        "rubric": plan.rubric,
        "selected": selection.winner(),
        "ranking": selection.ranking,
        "ranking_source": if selection.fully_ranked { "judge" } else { "best_then_generation_order" },
        "disqualified": selection.disqualified,
        "fallback": selection.fallback,
        "seed": selection.verdict.as_ref().map(|v| v.seed),
        "candidates": candidates.iter().map(|c| {
            let disqualified = selection.disqualified.contains(&c.index);
            candidate_debug(plan, c, disqualified, score_of(c, selection))
        }).collect::<Vec<_>>(),
        "judge": judge,
        "usage": {"candidates": candidate_usage, "judge": judge_usage},
    })
}

fn candidate_debug(
    plan: &BestOfN,
    candidate: &Candidate,
    disqualified: bool,
    score: Option<f64>,
) -> Value {
    let mut entry = Map::new();
    entry.insert("index".into(), json!(candidate.index));
    if let Some(model) = plan.listed_model(candidate.index) {
        entry.insert("model".into(), json!(model));
    }
    entry.insert("latency_ms".into(), json!(millis(candidate.latency)));
    match &candidate.result {
        Ok(answer) => {
            let choice = answer.completion.first_choice();
            entry.insert(
                "status".into(),
                json!(if disqualified { "disqualified" } else { "ok" }),
            );
            if disqualified {
                entry.insert(
                    "error".into(),
                    json!("content is not valid JSON, as response_format requires"),
                );
            }
            entry.insert("content".into(), json!(choice.and_then(|c| c.content())));
            if let Some(calls) = choice.and_then(|c| c.tool_calls()) {
                entry.insert("tool_calls".into(), Value::Array(calls.clone()));
            }
            entry.insert(
                "finish_reason".into(),
                json!(choice.and_then(|c| c.finish_reason.clone())),
            );
            entry.insert("score".into(), json!(score));
            entry.insert("usage".into(), json!(answer.completion.usage));
        }
        Err(failure) => {
            entry.insert("status".into(), json!(failure.outcome()));
            entry.insert("error".into(), json!(failure.describe()));
        }
    }
    Value::Object(entry)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// When no candidate succeeded: 429 with the longest `retry-after` if every candidate was
/// rate-limited, the upstream's own error if every candidate got the same 4xx (the request
/// itself is wrong, and the client should see exactly why), otherwise 504 when all timed out,
/// else 502, saying how many failed and why.
pub fn all_failed(candidates: &[Candidate]) -> Failed {
    // A cancelled call did not fail; only the calls that ran say what went wrong.
    let ran: Vec<&Candidate> = candidates.iter().filter(|c| !c.cancelled()).collect();
    if let Some(failed) = rate_limited(&ran, std::time::SystemTime::now()) {
        return failed;
    }
    if let Some(failed) = common_client_error(&ran) {
        return failed;
    }
    let summary = failure_summary(candidates);
    // None was even sent: the proxy is at its bound of upstream calls, a 503 to retry.
    if ran
        .iter()
        .all(|c| matches!(c.result, Err(Failure::Overloaded(_))))
    {
        return Failed::Proxy(ApiError::overloaded(format!(
            "No candidate could be sent: upstream.max_connections calls stayed in flight for \
             upstream.max_connections_wait; retry shortly. {summary}"
        )));
    }
    let all_timed_out = ran
        .iter()
        .all(|c| matches!(c.result, Err(Failure::Timeout(_))));
    Failed::Proxy(if all_timed_out {
        ApiError::gateway_timeout(format!("All candidates failed. {summary}"))
    } else {
        ApiError::bad_gateway(
            "all_candidates_failed",
            format!("All candidates failed. {summary}"),
        )
    })
}

/// Every candidate got 429: the upstream's own 429 that asked for the longest wait, its
/// `retry-after` written as seconds (an HTTP-date becomes the seconds left at `now`), so that
/// a client retrying after it does not land inside another candidate's window. Without any
/// readable `retry-after` the header is left out and the client's own backoff decides.
fn rate_limited(candidates: &[&Candidate], now: std::time::SystemTime) -> Option<Failed> {
    let mut longest: Option<(&JsonReply, Option<u64>)> = None;
    for candidate in candidates {
        let Err(Failure::Status(reply)) = &candidate.result else {
            return None;
        };
        if reply.status != http::StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let wait = crate::retry_after::seconds(&reply.headers, now);
        // `None` (no readable header) is the shortest wait of all.
        let longer = match longest {
            Some((_, most)) => wait > most,
            None => true,
        };
        if longer {
            longest = Some((reply, wait));
        }
    }
    let (reply, wait) = longest?;
    let mut reply = reply.clone();
    match wait {
        Some(seconds) => {
            reply
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        None => {
            reply.headers.remove(header::RETRY_AFTER);
        }
    }
    Some(Failed::Upstream(Box::new(reply)))
}

fn common_client_error(candidates: &[&Candidate]) -> Option<Failed> {
    let mut first: Option<&JsonReply> = None;
    for candidate in candidates {
        let Err(Failure::Status(reply)) = &candidate.result else {
            return None;
        };
        if !reply.status.is_client_error() || first.is_some_and(|f| f.status != reply.status) {
            return None;
        }
        first.get_or_insert(reply);
    }
    Some(Failed::Upstream(Box::new(first?.clone())))
}

/// "3 of 5 candidates failed: #0 timed out after 2s; #3 upstream status 500: …".
pub fn failure_summary(candidates: &[Candidate]) -> String {
    let failures: Vec<String> = candidates
        .iter()
        .filter_map(|c| match &c.result {
            Err(Failure::Cancelled(_)) | Ok(_) => None,
            Err(failure) => Some(format!("#{} {}", c.index, failure.describe())),
        })
        .collect();
    format!(
        "{} of {} candidates failed: {}",
        failures.len(),
        candidates.len(),
        failures.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_short() {
        assert_eq!(format_score(1.0), "1");
        assert_eq!(format_score(0.8), "0.8");
        assert_eq!(format_score(1.0 / 3.0), "0.333");
        assert_eq!(format_score(0.0), "0");
    }
}
