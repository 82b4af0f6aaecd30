//! Fan-out: concurrent candidate calls to the upstream, one per body, each with its own
//! deadline. This is the parallel path of `generation`, which decides how many calls to make.
//!
//! A failed candidate is recorded, not fatal; the caller decides what to do with however many
//! succeeded. Dropping the future returned by [`generate`] drops every call still in flight,
//! which closes their connections: a client that goes away stops spending tokens. An
//! [`EarlyStop`] does the same from inside, once the candidates finished so far decide the
//! answer: the calls still running are dropped and recorded as cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::HeaderMap;

use crate::body::SharedJson;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::openai::{Api, ChatCompletion};
use crate::upstream::{call_status, snippet, JsonReply, Upstream, UpstreamError};

/// One candidate call and how it went.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Position in generation order, 0-based.
    pub index: usize,
    pub latency: Duration,
    pub result: Result<Answer, Failure>,
}

/// A successful candidate: the parsed completion (for another API, its chat view) and the
/// upstream's response headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub completion: ChatCompletion,
    pub headers: HeaderMap,
    /// A Responses API answer as the upstream sent it; the view cannot be turned back into it.
    pub native: Option<Arc<Value>>,
}

/// Why a candidate produced no answer.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The upstream answered with an error status; kept whole to pass on verbatim.
    Status(JsonReply),
    Timeout(Duration),
    /// The call broke: no connection, or the answer was cut short.
    Transport(String),
    /// A 2xx answer that is not a usable chat completion.
    Invalid(String),
    /// Dropped unfinished because the candidates already in decided the answer (early stop).
    /// Not a failure: nothing went wrong, and it never counts against `min_candidates`.
    Cancelled,
}

impl Failure {
    /// A short description for messages and the debug object.
    pub fn describe(&self) -> String {
        match self {
            Failure::Status(reply) => format!(
                "upstream status {}: {}",
                reply.status.as_u16(),
                snippet(&reply.body)
            ),
            Failure::Timeout(d) => format!("timed out after {d:?}"),
            Failure::Transport(why) => format!("upstream {why}"),
            Failure::Invalid(why) => why.clone(),
            Failure::Cancelled => {
                "cancelled: the answers already in decided the pick (early stop)".to_string()
            }
        }
    }

    /// The outcome label: `timeout`, `cancelled` or `error`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Cancelled => "cancelled",
            _ => "error",
        }
    }
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Failure {
        match error {
            UpstreamError::Timeout(d) => Failure::Timeout(d),
            other => Failure::Transport(other.to_string()),
        }
    }
}

impl Candidate {
    pub fn answer(&self) -> Option<&Answer> {
        self.result.as_ref().ok()
    }

    /// True when the call was dropped by an early stop.
    pub fn cancelled(&self) -> bool {
        matches!(self.result, Err(Failure::Cancelled))
    }
}

/// Asked after each finished candidate, in finishing order: true once the candidates so far
/// decide the answer, so that the calls still running can be cancelled.
pub type EarlyStop = Box<dyn FnMut(&Candidate) -> bool + Send>;

/// Sends every body in `bodies` (one per candidate) concurrently to `path`, reads the answers
/// as `api` writes them, and waits for all of them, or, with `stop`, until it says the
/// finished ones decide. Candidates are numbered from 0 in the order of `bodies`.
pub async fn generate(
    upstream: &Upstream,
    metrics: &Metrics,
    (path, api): (&str, Api),
    client_headers: &HeaderMap,
    bodies: Vec<SharedJson>,
    timeout: Duration,
    stop: Option<EarlyStop>,
) -> Vec<Candidate> {
    let count = bodies.len();
    let calls = bodies
        .into_iter()
        .enumerate()
        .map(|(index, body)| async move {
            let started = Instant::now();
            let route = (path, api);
            let result =
                one_candidate(upstream, metrics, route, client_headers, body, timeout).await;
            let candidate = Candidate {
                index,
                latency: started.elapsed(),
                result,
            };
            record(metrics, &candidate);
            candidate
        });
    match stop {
        None => crate::concurrently::all(calls).await,
        Some(stop) => until_decided(calls, count, stop, metrics).await,
    }
}

/// Runs `calls` until all are done or `stop` says the finished ones decide. The calls still
/// running are then dropped, which closes their connections, so the upstream stops generating
/// (and billing) tokens nobody will read; they are recorded as cancelled.
async fn until_decided<F: Future<Output = Candidate>>(
    calls: impl Iterator<Item = F>,
    count: usize,
    mut stop: EarlyStop,
    metrics: &Metrics,
) -> Vec<Candidate> {
    let started = Instant::now();
    let mut running: FuturesUnordered<F> = calls.collect();
    let mut finished: Vec<Option<Candidate>> = (0..count).map(|_| None).collect();
    while let Some(candidate) = running.next().await {
        let decided = stop(&candidate);
        let index = candidate.index;
        finished[index] = Some(candidate);
        if decided {
            break;
        }
    }
    drop(running);
    let cancelled = |index: usize| {
        let candidate = Candidate {
            index,
            latency: started.elapsed(),
            result: Err(Failure::Cancelled),
        };
        record(metrics, &candidate);
        candidate
    };
    let all = finished.into_iter().enumerate();
    all.map(|(index, done)| done.unwrap_or_else(|| cancelled(index)))
        .collect()
}

/// Counts one candidate: its outcome, and the tokens its answer reports.
pub fn record(metrics: &Metrics, candidate: &Candidate) {
    metrics.candidate(match &candidate.result {
        Ok(_) => "ok",
        Err(failure) => failure.outcome(),
    });
    if let Some(usage) = candidate.answer().and_then(|a| a.completion.usage.as_ref()) {
        metrics.tokens("candidate", usage.prompt_tokens, usage.completion_tokens);
    }
}

async fn one_candidate(
    upstream: &Upstream,
    metrics: &Metrics,
    (path, api): (&str, Api),
    client_headers: &HeaderMap,
    body: SharedJson,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let started = Instant::now();
    let sent = upstream
        .post_json(path, client_headers, body, timeout)
        .await;
    metrics.upstream_call("candidate", &call_status(&sent), started.elapsed());
    let reply = sent.map_err(Failure::from)?;
    if !reply.status.is_success() {
        return Err(Failure::Status(reply));
    }
    // A parse error may quote the answer: it is upstream text like any other.
    let (completion, native) = api
        .read_answer(&reply.body)
        .map_err(|why| Failure::Invalid(upstream.redact(&why)))?;
    Ok(Answer {
        completion,
        headers: reply.headers,
        native: native.map(Arc::new),
    })
}
