//! The best-of-N request path, top to bottom: read, fan out, judge, respond.
//!
//! Each step lives in its own module; this file only strings them together and decides what
//! happens when a step comes back empty-handed (no candidate succeeded, the judge could not
//! choose).

use bytes::Bytes;
use http::{header, HeaderMap, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::Fallback;
use crate::error::ApiError;
use crate::fanout::{self, Candidate};
use crate::judge::{JudgeRequest, JudgedCandidate, Verdict};
use crate::openai::ChatRequest;
use crate::plan::BestOfN;
use crate::respond;
use crate::state::AppState;

/// How the winner was chosen.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Generation index of the winning candidate.
    pub winner: usize,
    /// The judge's verdict; `None` when only one candidate succeeded and no judge was asked.
    pub verdict: Option<Verdict>,
    /// Set when the judge failed and `judge.fallback` chose: `"<fallback> (<judge outcome>)"`.
    pub fallback: Option<String>,
    /// Seed of the presentation shuffle.
    pub seed: u64,
}

/// Answers one best-of-N chat completion, within `server.request_timeout`.
pub async fn handle(
    state: &AppState,
    plan: BestOfN,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<Body> {
    let deadline = state.config.server.request_timeout;
    match tokio::time::timeout(deadline, run(state, &plan, &parts, body)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error.into_response(),
        Err(_) => ApiError::gateway_timeout(format!(
            "The best-of-{} request took longer than server.request_timeout ({deadline:?}).",
            plan.n
        ))
        .into_response(),
    }
}

async fn run(
    state: &AppState,
    plan: &BestOfN,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let body = read_json_body(&parts.headers, body, state.config.server.max_body_bytes).await?;
    let request = ChatRequest::parse(&body)?;
    check_supported(&request)?;
    let candidate_body = serde_json::to_vec(&request.candidate_body())
        .map_err(|e| ApiError::internal(format!("cannot encode the candidate request: {e}")))?;
    let candidates = fanout::generate(
        &state.upstream,
        parts.uri.path(),
        &parts.headers,
        Bytes::from(candidate_body),
        plan.n as usize,
        state.config.best_of_n.candidate_timeout,
    )
    .await;
    let succeeded = candidates.iter().filter(|c| c.answer().is_some()).count();
    if succeeded == 0 {
        return Ok(respond::all_failed(&candidates));
    }
    let min = state.config.best_of_n.min_candidates as usize;
    if succeeded < min {
        return Err(ApiError::bad_gateway(
            "too_few_candidates",
            format!(
                "Only {succeeded} of {} candidates succeeded; best_of_n.min_candidates is {min}. {}",
                plan.n,
                respond::failure_summary(&candidates)
            ),
        ));
    }
    let selection = select(state, plan, &request, &candidates, &parts.headers).await?;
    Ok(respond::completion(plan, &candidates, &selection))
}

/// Reads the whole body, insisting on JSON and on `server.max_body_bytes`.
async fn read_json_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        let essence = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::unsupported_media_type(text));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::invalid_request(
            "body",
            format!("The request body could not be read: {e}."),
        )),
    }
}

/// Parameters best-of-N cannot honour yet get a clear 400 instead of a wrong answer.
fn check_supported(request: &ChatRequest) -> Result<(), ApiError> {
    if request.is_stream() {
        return Err(ApiError::invalid_request(
            "stream",
            "`stream: true` is not supported with x-best-of-n yet; send `stream: false`, \
             or `x-best-of-n: off` to pass the request through.",
        ));
    }
    if request.n.is_some_and(|n| n > 1) {
        return Err(ApiError::invalid_request(
            "n",
            "`n` greater than 1 is not supported with x-best-of-n yet; leave `n` out.",
        ));
    }
    Ok(())
}

/// Picks the winner: the only success, the judge's choice, or the fallback's.
async fn select(
    state: &AppState,
    plan: &BestOfN,
    request: &ChatRequest,
    candidates: &[Candidate],
    client_headers: &HeaderMap,
) -> Result<Selection, ApiError> {
    let judged: Vec<JudgedCandidate> = candidates
        .iter()
        .filter_map(|c| {
            let choice = c.answer()?.completion.first_choice()?;
            Some(JudgedCandidate {
                index: c.index,
                text: choice.text_for_judge(),
            })
        })
        .collect();
    let seed: u64 = rand::random();
    if let [only] = judged.as_slice() {
        return Ok(Selection {
            winner: only.index,
            verdict: None,
            fallback: None,
            seed,
        });
    }
    let judge = state.judges.get(&plan.strategy).ok_or_else(|| {
        ApiError::internal(format!(
            "judge strategy `{}` is not configured",
            plan.strategy
        ))
    })?;
    let verdict = judge
        .judge(JudgeRequest {
            conversation: &request.messages,
            candidates: &judged,
            request_model: &request.model,
            client_headers,
            seed,
        })
        .await;
    if let Some(winner) = verdict.winner() {
        return Ok(Selection {
            winner,
            verdict: Some(verdict),
            fallback: None,
            seed,
        });
    }
    fall_back(state.config.judge.fallback, &judged, verdict, seed)
}

fn fall_back(
    fallback: Fallback,
    judged: &[JudgedCandidate],
    verdict: Verdict,
    seed: u64,
) -> Result<Selection, ApiError> {
    let why = verdict.failure.clone().unwrap_or_default();
    tracing::warn!(outcome = verdict.outcome.as_str(), %why, "judge failed; falling back");
    let winner = match fallback {
        Fallback::FirstOk => judged[0].index,
        Fallback::Random => judged[(seed % judged.len() as u64) as usize].index,
        Fallback::Error => {
            return Err(ApiError::bad_gateway(
                "judge_failed",
                format!(
                    "The judge could not choose between the candidates ({why}), and \
                     judge.fallback is `error`. Set judge.fallback to `first_ok` or `random` \
                     to answer anyway."
                ),
            ))
        }
    };
    Ok(Selection {
        winner,
        fallback: Some(format!(
            "{} ({})",
            fallback.as_str(),
            verdict.outcome.as_str()
        )),
        verdict: Some(verdict),
        seed,
    })
}
