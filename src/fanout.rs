//! Fan-out: concurrent candidate calls to the upstream, one per body, each with its own
//! deadline. This is the parallel path of `generation`, which decides how many calls to make.
//!
//! A failed candidate is recorded, not fatal; the caller decides what to do with however many
//! succeeded. Dropping the future returned by [`generate`] drops every call still in flight,
//! which closes their connections: a client that goes away stops spending tokens. An
//! [`EarlyStop`] does the same from inside, once the candidates finished so far decide the
//! answer, and so does a [`Quorum`], once enough candidates succeeded and the grace after
//! them ran out: the calls still running are dropped and recorded as cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::HeaderMap;

use crate::body::SharedJson;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::openai::{Api, ChatCompletion};
use crate::telemetry;
use crate::upstream::{call_status, snippet, JsonReply, Upstream, UpstreamError};
use tracing::Instrument;

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
    /// Never sent: `upstream.max_connections` calls stayed in flight for its whole wait.
    Overloaded(String),
    /// Dropped unfinished because the fan-out ended without it (see [`Cut`]). Not a failure:
    /// nothing went wrong, and it never counts against `min_candidates`.
    Cancelled(Cut),
}

/// What ended a fan-out before every call was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The candidates already in decided the pick: the rest could not change it.
    EarlyStop,
    /// The quorum succeeded and the grace after it ran out: the rest were too slow to wait
    /// for, and might have changed the pick.
    Quorum,
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
            Failure::Overloaded(why) => format!("upstream {why}"),
            Failure::Cancelled(Cut::EarlyStop) => {
                "cancelled: the answers already in decided the pick (early stop)".to_string()
            }
            Failure::Cancelled(Cut::Quorum) => {
                "cancelled: still running when the quorum was in and the grace had passed \
                 (quorum)"
                    .to_string()
            }
        }
    }

    /// The outcome label: `timeout`, `cancelled` or `error`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Cancelled(_) => "cancelled",
            _ => "error",
        }
    }
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Failure {
        match error {
            UpstreamError::Timeout(d) => Failure::Timeout(d),
            overloaded @ UpstreamError::Overloaded { .. } => {
                Failure::Overloaded(overloaded.to_string())
            }
            other => Failure::Transport(other.to_string()),
        }
    }
}

impl Candidate {
    pub fn answer(&self) -> Option<&Answer> {
        self.result.as_ref().ok()
    }

    /// True when the call was dropped unfinished (early stop or quorum).
    pub fn cancelled(&self) -> bool {
        self.cut().is_some()
    }

    /// What dropped the call unfinished, if something did.
    pub fn cut(&self) -> Option<Cut> {
        match self.result {
            Err(Failure::Cancelled(cut)) => Some(cut),
            _ => None,
        }
    }
}

/// Asked after each finished candidate, in finishing order: true once the candidates so far
/// decide the answer, so that the calls still running can be cancelled.
pub type EarlyStop = Box<dyn FnMut(&Candidate) -> bool + Send>;

/// Enough is enough: once `succeeded` candidates have an answer, the others get `grace` more
/// to finish, then are cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    pub succeeded: usize,
    pub grace: Duration,
}

/// What may end a fan-out before every call is done; whichever comes first does. The default
/// waits for every call.
#[derive(Default)]
pub struct Until {
    pub stop: Option<EarlyStop>,
    pub quorum: Option<Quorum>,
}

impl Until {
    /// True when nothing can end the fan-out early.
    fn waits_for_all(&self) -> bool {
        self.stop.is_none() && self.quorum.is_none()
    }
}

/// Sends every body in `bodies` (one per candidate, with the model it asks) concurrently to
/// `path`, reads the answers
/// as `api` writes them, and waits for all of them, or, with `until`, until its early stop
/// says the finished ones decide or its quorum is in and the grace has passed. Candidates are
/// numbered from 0 in the order of `bodies`.
pub async fn generate(
    upstream: &Upstream,
    metrics: &Metrics,
    (path, api): (&str, Api),
    client_headers: &HeaderMap,
    bodies: Vec<(SharedJson, &str)>,
    timeout: Duration,
    until: Until,
) -> Vec<Candidate> {
    let count = bodies.len();
    let calls = bodies
        .into_iter()
        .enumerate()
        .map(|(index, (body, model))| async move {
            let started = Instant::now();
            let route = (path, api);
            let span = telemetry::call_span("candidate", model, Some(index));
            let sent_text = telemetry::content_wanted(&span).then(|| body.to_vec());
            let result = one_candidate(upstream, metrics, route, client_headers, body, timeout)
                .instrument(span.clone())
                .await;
            let answer = result.as_ref().ok().map(|a| &a.completion);
            if let Some(sent_text) = sent_text {
                let text = answer.and_then(|c| c.choices.first()?.message.get("content")?.as_str());
                telemetry::record_content(&span, &sent_text, text);
            }
            let status = match &result {
                Ok(_) => "200",
                Err(Failure::Status(reply)) => reply.status.as_str(),
                Err(failure) => failure.outcome(),
            };
            telemetry::record_call(
                &span,
                status,
                answer.map(|c| c.model.as_str()),
                answer.and_then(|c| c.usage.as_ref()),
            );
            let candidate = Candidate {
                index,
                latency: started.elapsed(),
                result,
            };
            record(metrics, &candidate);
            candidate
        });
    if until.waits_for_all() {
        return crate::concurrently::all(calls).await;
    }
    until_decided(calls, count, until, metrics).await
}

/// Runs `calls` until all are done, or the early stop says the finished ones decide, or the
/// quorum succeeded and its grace ran out. The calls still running are then dropped, which
/// closes their connections, so the upstream stops generating (and billing) tokens nobody
/// will read; they are recorded as cancelled, with what cut them.
async fn until_decided<F: Future<Output = Candidate>>(
    calls: impl Iterator<Item = F>,
    count: usize,
    Until { mut stop, quorum }: Until,
    metrics: &Metrics,
) -> Vec<Candidate> {
    let started = Instant::now();
    let mut running: FuturesUnordered<F> = calls.collect();
    let mut finished: Vec<Option<Candidate>> = (0..count).map(|_| None).collect();
    let (mut succeeded, mut grace_ends) = (0, None);
    let cut = loop {
        let Some(candidate) = next_within(&mut running, grace_ends).await else {
            // Every call is done, or the grace ran out on the ones still running.
            break Cut::Quorum;
        };
        let decided = stop.as_mut().is_some_and(|stop| stop(&candidate));
        succeeded += usize::from(candidate.answer().is_some());
        let index = candidate.index;
        finished[index] = Some(candidate);
        if decided {
            break Cut::EarlyStop;
        }
        let reached = quorum.filter(|q| succeeded >= q.succeeded);
        match reached {
            Some(q) if q.grace.is_zero() => break Cut::Quorum,
            // The grace starts once, when the quorum is first in.
            Some(q) if grace_ends.is_none() => {
                grace_ends = Some(tokio::time::Instant::now() + q.grace);
            }
            _ => {}
        }
    };
    drop(running);
    let cancelled = |index: usize| {
        let candidate = Candidate {
            index,
            latency: started.elapsed(),
            result: Err(Failure::Cancelled(cut)),
        };
        record(metrics, &candidate);
        candidate
    };
    let all = finished.into_iter().enumerate();
    all.map(|(index, done)| done.unwrap_or_else(|| cancelled(index)))
        .collect()
}

/// The next call to finish; `None` when none is left, or none finished by `deadline`.
async fn next_within<F: Future<Output = Candidate>>(
    running: &mut FuturesUnordered<F>,
    deadline: Option<tokio::time::Instant>,
) -> Option<Candidate> {
    match deadline {
        None => running.next().await,
        Some(at) => tokio::time::timeout_at(at, running.next())
            .await
            .ok()
            .flatten(),
    }
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
