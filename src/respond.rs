//! Response assembly for best-of-N: the winner as an ordinary `chat.completion`, the usage of
//! everything spent, the `x-best-of-n-*` headers, the optional debug breakdown, and the
//! answers for when every candidate failed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response};
use serde_json::{json, Map, Value};

use crate::best_of_n::Selection;
use crate::body::{self, Body};
use crate::error::ApiError;
use crate::fanout::{Candidate, Failure};
use crate::openai::{ChatCompletion, Usage};
use crate::plan::BestOfN;
use crate::sse;
use crate::upstream::{self, JsonReply};

/// A finished best-of-N answer: the completion to send and the headers that go with it
/// (the winner's upstream headers and the `x-best-of-n-*` ones). It can go out as JSON or as
/// an SSE stream, whichever the client asked for.
#[derive(Debug, Clone)]
pub struct Ready {
    pub completion: ChatCompletion,
    pub headers: HeaderMap,
    /// The `best_of_n` breakdown, kept aside so a cached answer can serve clients that ask
    /// for it and clients that do not.
    pub debug: Option<Arc<Value>>,
    /// False for a degraded answer (a fallback chose, or candidates failed): it is shared
    /// with identical requests in flight, but not stored for later ones.
    pub cacheable: bool,
}

impl Ready {
    /// Puts the debug object into the body when `wanted`, drops it otherwise.
    pub fn with_debug(mut self, wanted: bool) -> Ready {
        if let Some(debug) = self.debug.take().filter(|_| wanted) {
            let debug = Arc::try_unwrap(debug).unwrap_or_else(|shared| shared.as_ref().clone());
            self.completion.extra.insert("best_of_n".into(), debug);
        }
        self
    }

    pub fn into_json_response(self) -> Response<Body> {
        let body = match serde_json::to_vec(&self.completion) {
            Ok(bytes) => bytes,
            Err(e) => {
                return ApiError::internal(format!("cannot encode the answer: {e}")).into_response()
            }
        };
        let mut response = Response::new(body::full(body));
        *response.headers_mut() = self.headers;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// The answer as SSE events, `[DONE]` included.
    pub fn sse_events(&self, include_usage: bool) -> Vec<Bytes> {
        sse::encode(&self.completion, include_usage)
    }
}

/// Why a best-of-N request produced no answer.
#[derive(Debug, Clone)]
pub enum Failed {
    /// The proxy's own error.
    Proxy(ApiError),
    /// An upstream error passed on unchanged (every candidate got this same 4xx).
    Upstream(Box<JsonReply>),
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Failed::Proxy(error)
    }
}

impl Failed {
    pub fn into_response(self) -> Response<Body> {
        match self {
            Failed::Proxy(error) => error.into_response(),
            Failed::Upstream(reply) => {
                let mut response = Response::new(body::full(reply.body));
                *response.status_mut() = reply.status;
                copy_upstream_headers(&reply.headers, response.headers_mut());
                response
            }
        }
    }

    /// The error as SSE events, for a stream that has already answered 200.
    pub fn sse_events(&self) -> Vec<Bytes> {
        match self {
            Failed::Proxy(error) => sse::error_events(error),
            Failed::Upstream(reply) => {
                let (status, body) = (reply.status, &reply.body);
                let upstream_error = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("error").cloned());
                match upstream_error {
                    Some(error) => sse::error_object_events(&error),
                    None => sse::error_events(&ApiError::bad_gateway(
                        "upstream_error",
                        format!(
                            "The upstream answered {}: {}",
                            status.as_u16(),
                            upstream::snippet(body)
                        ),
                    )),
                }
            }
        }
    }
}

/// The answer: the winner's completion carrying the top `choices` candidates in rank order,
/// usage summed over everything spent, and the best-of-N headers.
pub fn build(
    plan: &BestOfN,
    candidates: &[Candidate],
    selection: &Selection,
    choices: usize,
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
        headers,
        debug: Some(Arc::new(debug)),
        cacheable: selection.fallback.is_none() && candidates.iter().all(|c| c.answer().is_some()),
    })
}

/// Tokens spent: (all candidates, all judge calls).
fn spent(candidates: &[Candidate], selection: &Selection) -> (Usage, Usage) {
    let mut candidate_usage = Usage::default();
    for usage in candidates
        .iter()
        .filter_map(|c| c.answer()?.completion.usage.as_ref())
    {
        candidate_usage.add(usage);
    }
    let judge_usage = selection
        .verdict
        .as_ref()
        .map(|v| v.usage.clone())
        .unwrap_or_default();
    (candidate_usage, judge_usage)
}

/// The winner's upstream headers (rate limits, processing time…) that still describe the
/// new body; length and encoding do not.
pub fn copy_upstream_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in upstream::end_to_end_headers(from).iter() {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_ENCODING {
            to.append(name.clone(), value.clone());
        }
    }
}

fn insert_best_of_n_headers(
    headers: &mut HeaderMap,
    plan: &BestOfN,
    candidates: &[Candidate],
    selection: &Selection,
) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-best-of-n", plan.n.to_string());
    set("x-best-of-n-selected", selection.winner().to_string());
    set("x-best-of-n-scores", scores_header(candidates, selection));
    set("x-best-of-n-judge", plan.strategy.clone());
    if let Some(fallback) = &selection.fallback {
        set("x-best-of-n-fallback", fallback.clone());
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

fn score_of(candidate: &Candidate, selection: &Selection) -> Option<f64> {
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

fn format_score(score: f64) -> String {
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
        Some(v) => json!({
            "outcome": v.outcome.as_str(),
            "presentation_order": v.presentation,
            "ranking": v.ranking,
            "fully_ranked": v.fully_ranked,
            "raw": v.raw,
            "failure": v.failure,
            "latency_ms": millis(v.latency),
            "usage": v.usage,
        }),
    };
    json!({
        "n": plan.n,
        "strategy": plan.strategy,
        "selected": selection.winner(),
        "ranking": selection.ranking,
        "ranking_source": if selection.fully_ranked { "judge" } else { "best_then_generation_order" },
        "disqualified": selection.disqualified,
        "fallback": selection.fallback,
        "seed": selection.verdict.as_ref().map(|v| v.seed),
        "candidates": candidates.iter().map(|c| candidate_debug(c, selection)).collect::<Vec<_>>(),
        "judge": judge,
        "usage": {"candidates": candidate_usage, "judge": judge_usage},
    })
}

fn candidate_debug(candidate: &Candidate, selection: &Selection) -> Value {
    let mut entry = Map::new();
    entry.insert("index".into(), json!(candidate.index));
    entry.insert("latency_ms".into(), json!(millis(candidate.latency)));
    match &candidate.result {
        Ok(answer) => {
            let choice = answer.completion.first_choice();
            let disqualified = selection.disqualified.contains(&candidate.index);
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
            entry.insert("score".into(), json!(score_of(candidate, selection)));
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

/// When no candidate succeeded: the upstream's own error if every candidate got the same 4xx
/// (the request itself is wrong, and the client should see exactly why), otherwise 504 when
/// all timed out, else 502, saying how many failed and why.
pub fn all_failed(candidates: &[Candidate]) -> Failed {
    if let Some(failed) = common_client_error(candidates) {
        return failed;
    }
    let summary = failure_summary(candidates);
    let all_timed_out = candidates
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

fn common_client_error(candidates: &[Candidate]) -> Option<Failed> {
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
            Err(failure) => Some(format!("#{} {}", c.index, failure.describe())),
            Ok(_) => None,
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
