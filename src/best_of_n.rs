//! The best-of-N request path, top to bottom: read, fan out, judge, respond.
//!
//! Each step lives in its own module; this file only strings them together and decides what
//! happens when a step comes back empty-handed (no candidate succeeded, none is eligible, the
//! judge could not choose).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
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
use crate::respond::{self, Failed, Ready};
use crate::state::AppState;
use crate::streaming;

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
    /// Set when `judge.fallback` chose: `"<fallback> (<why>)"`.
    pub fallback: Option<String>,
    /// Successful candidates excluded before judging (content not valid JSON in JSON mode).
    pub disqualified: Vec<usize>,
    /// Seed of the presentation shuffle.
    pub seed: u64,
}

impl Selection {
    pub fn winner(&self) -> usize {
        self.ranking[0]
    }
}

/// Answers one best-of-N chat completion, as JSON or as an SSE stream.
pub async fn handle(
    state: Arc<AppState>,
    plan: BestOfN,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<Body> {
    let request = match read_request(&state, &plan, &parts.headers, body).await {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let stream = request.is_stream();
    let include_usage = request.include_usage();
    let keepalive = state.config.best_of_n.stream_keepalive;
    let work = answer(
        state,
        plan,
        parts.headers,
        parts.uri.path().to_string(),
        request,
    );
    if stream {
        streaming::respond(work, keepalive, include_usage).await
    } else {
        match work.await {
            Ok(ready) => ready.into_json_response(),
            Err(failed) => failed.into_response(),
        }
    }
}

/// Reads and checks the body: everything that can be refused before spending a token.
async fn read_request(
    state: &AppState,
    plan: &BestOfN,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<ChatRequest, ApiError> {
    let body = read_json_body(headers, body, state.config.server.max_body_bytes).await?;
    let request = ChatRequest::parse(&body)?;
    if request.choices_wanted() > plan.n {
        return Err(ApiError::invalid_request(
            "n",
            format!(
                "`n` is {} but x-best-of-n is {}: best-of-N can return at most N choices. \
                 Lower `n` or raise x-best-of-n.",
                request.choices_wanted(),
                plan.n
            ),
        ));
    }
    Ok(request)
}

/// The whole computation, owned, so a streaming response can hold it (and drop it, cancelling
/// every upstream call, when the client goes away). Bounded by `server.request_timeout`.
fn answer(
    state: Arc<AppState>,
    plan: BestOfN,
    headers: HeaderMap,
    path: String,
    request: ChatRequest,
) -> BoxFuture<'static, Result<Ready, Failed>> {
    let deadline = state.config.server.request_timeout;
    async move {
        let work = generate_and_select(&state, &plan, &headers, &path, &request);
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Failed::Proxy(ApiError::gateway_timeout(format!(
                "The best-of-{} request took longer than server.request_timeout ({deadline:?}).",
                plan.n
            )))),
        }
    }
    .boxed()
}

async fn generate_and_select(
    state: &AppState,
    plan: &BestOfN,
    headers: &HeaderMap,
    path: &str,
    request: &ChatRequest,
) -> Result<Ready, Failed> {
    let candidate_body = serde_json::to_vec(&request.candidate_body())
        .map_err(|e| ApiError::internal(format!("cannot encode the candidate request: {e}")))?;
    let candidates = fanout::generate(
        &state.upstream,
        path,
        headers,
        Bytes::from(candidate_body),
        plan.n as usize,
        state.config.best_of_n.candidate_timeout,
    )
    .await;
    check_enough(state, plan, request, &candidates)?;
    let selection = select(state, plan, request, &candidates, headers).await?;
    respond::build(
        plan,
        &candidates,
        &selection,
        request.choices_wanted() as usize,
    )
}

/// Enough candidates succeeded: at least one, `best_of_n.min_candidates`, and `n`.
fn check_enough(
    state: &AppState,
    plan: &BestOfN,
    request: &ChatRequest,
    candidates: &[Candidate],
) -> Result<(), Failed> {
    let succeeded = candidates.iter().filter(|c| c.answer().is_some()).count();
    if succeeded == 0 {
        return Err(respond::all_failed(candidates));
    }
    let needed = (state.config.best_of_n.min_candidates).max(request.choices_wanted()) as usize;
    if succeeded < needed {
        return Err(Failed::Proxy(ApiError::bad_gateway(
            "too_few_candidates",
            format!(
                "Only {succeeded} of {} candidates succeeded, and this request needs {needed} \
                 (best_of_n.min_candidates, or `n`). {}",
                plan.n,
                respond::failure_summary(candidates)
            ),
        )));
    }
    Ok(())
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

/// Orders the candidates: the only eligible one, the judge's ranking, or the fallback's pick.
async fn select(
    state: &AppState,
    plan: &BestOfN,
    request: &ChatRequest,
    candidates: &[Candidate],
    client_headers: &HeaderMap,
) -> Result<Selection, Failed> {
    let (eligible, disqualified) = eligible_candidates(request, candidates);
    let seed: u64 = rand::random();
    let fallback = state.config.judge.fallback;
    if eligible.is_empty() {
        // JSON mode and no candidate produced JSON: the fallback picks among all successes.
        let succeeded = succeeded_candidates(candidates);
        let mut selection = fall_back(fallback, &succeeded, None, "no_valid_json", seed)?;
        selection.disqualified = disqualified;
        return Ok(selection);
    }
    if let [only] = eligible.as_slice() {
        return Ok(Selection {
            ranking: vec![only.index],
            fully_ranked: true,
            verdict: None,
            fallback: None,
            disqualified,
            seed,
        });
    }
    let verdict = judge(state, plan, request, &eligible, client_headers, seed).await?;
    let mut selection = match verdict.winner() {
        Some(_) => ranked_by(verdict, &eligible, seed),
        None => {
            let why = verdict.outcome.as_str();
            fall_back(fallback, &eligible, Some(verdict), why, seed)?
        }
    };
    selection.disqualified = disqualified;
    Ok(selection)
}

async fn judge(
    state: &AppState,
    plan: &BestOfN,
    request: &ChatRequest,
    eligible: &[JudgedCandidate],
    client_headers: &HeaderMap,
    seed: u64,
) -> Result<Verdict, Failed> {
    let judge = state.judges.get(&plan.strategy).ok_or_else(|| {
        ApiError::internal(format!(
            "judge strategy `{}` is not configured",
            plan.strategy
        ))
    })?;
    Ok(judge
        .judge(JudgeRequest {
            conversation: &request.messages,
            candidates: eligible,
            request_model: &request.model,
            client_headers,
            seed,
        })
        .await)
}

/// Successful candidates split into those the judge may see and those disqualified before
/// judging: in JSON mode (`response_format` `json_object` or `json_schema`), a text answer
/// that does not parse as JSON cannot be what the client asked for.
fn eligible_candidates(
    request: &ChatRequest,
    candidates: &[Candidate],
) -> (Vec<JudgedCandidate>, Vec<usize>) {
    let succeeded = succeeded_candidates(candidates);
    if !matches!(
        request.response_format_type(),
        Some("json_object") | Some("json_schema")
    ) {
        return (succeeded, Vec::new());
    }
    let is_json = |index: usize| {
        let choice = candidates[index]
            .answer()
            .and_then(|a| a.completion.first_choice());
        match choice.and_then(|c| c.content()) {
            Some(text) => serde_json::from_str::<serde_json::Value>(text).is_ok(),
            // A tool call or a refusal has no content to check.
            None => true,
        }
    };
    let (eligible, rejected): (Vec<_>, Vec<_>) =
        succeeded.into_iter().partition(|c| is_json(c.index));
    (eligible, rejected.into_iter().map(|c| c.index).collect())
}

/// Every candidate with an answer, as the judge would see it.
fn succeeded_candidates(candidates: &[Candidate]) -> Vec<JudgedCandidate> {
    candidates
        .iter()
        .filter_map(|c| {
            let choice = c.answer()?.completion.first_choice()?;
            Some(JudgedCandidate {
                index: c.index,
                text: choice.text_for_judge(),
            })
        })
        .collect()
}

/// The judge's ranking, completed with the unranked eligible candidates in generation order.
fn ranked_by(verdict: Verdict, eligible: &[JudgedCandidate], seed: u64) -> Selection {
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
        seed,
    }
}

fn fall_back(
    fallback: Fallback,
    pool: &[JudgedCandidate],
    verdict: Option<Verdict>,
    why: &str,
    seed: u64,
) -> Result<Selection, Failed> {
    let detail = verdict
        .as_ref()
        .and_then(|v| v.failure.clone())
        .unwrap_or_else(|| why.to_string());
    tracing::warn!(%why, %detail, "judge could not choose; falling back");
    let first = match fallback {
        Fallback::FirstOk => 0,
        Fallback::Random => (seed % pool.len() as u64) as usize,
        Fallback::Error => {
            return Err(Failed::Proxy(ApiError::bad_gateway(
                "judge_failed",
                format!(
                    "No candidate could be chosen ({detail}), and judge.fallback is `error`. \
                     Set judge.fallback to `first_ok` or `random` to answer anyway."
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
        seed,
    })
}
