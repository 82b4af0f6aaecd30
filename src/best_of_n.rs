//! The best-of-N request path, top to bottom: read, fan out, judge, respond.
//!
//! Each step lives in its own module; this file only strings them together and decides what
//! happens when a step comes back empty-handed (no candidate succeeded, none is eligible, the
//! judge could not choose).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::{header, HeaderMap, Response};
use serde_json::{Map, Value};
use tracing::Instrument;

use crate::answer::{Failed, Ready};
use crate::auth::ClientKey;
use crate::body::Body;
use crate::cache::{self, KeyBuilder};
use crate::config::{Mode, DEFAULT_RUBRIC_PRESET};
use crate::decisions::{Answered, Decision};
use crate::error::ApiError;
use crate::fanout::{Candidate, Quorum, Until};
use crate::fusion::{FuserFailed, FuserStream};
use crate::generation;
use crate::judge::NamedJudge;
use crate::openai::api::Viewed;
use crate::openai::{ChatRequest, Usage};
use crate::plan::{BestOfN, Deadline};
use crate::relay;
use crate::respond;
use crate::selection::{self, Selection};
use crate::state::AppState;
use crate::streaming::{self, Live, Streamed};
use crate::telemetry::AccessNote;

/// One best-of-N request, read and checked.
struct Job {
    plan: BestOfN,
    headers: HeaderMap,
    /// Path and query the candidates are sent to.
    target: String,
    /// The request as chat: all of it for chat completions, the judge's view otherwise.
    request: ChatRequest,
    /// The client's own body, for the APIs other than chat; candidates are made from it.
    native: Option<Map<String, Value>>,
    /// `None` when the cache is off.
    key: Option<cache::Keys>,
    /// The client key `[auth]` admitted the request with, charged for what it spends.
    client: Option<Arc<ClientKey>>,
    /// The request's access-log note, when the access log is on.
    note: Option<Arc<AccessNote>>,
    started: Instant,
}

/// A best-of-N request, read and checked: everything that can be refused before spending a
/// token has been. Made by [`prepare`], answered by [`handle`].
pub struct Prepared(Job);

/// Checks a best-of-N request whose whole body is in (see `intake`): the JSON, the fields
/// the plan depends on. The cache key is taken from the parsed JSON before it becomes a
/// typed request.
pub fn prepare(
    state: &AppState,
    plan: BestOfN,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Prepared, ApiError> {
    // The proxy's own time starts once the body is in: a slow upload is not overhead.
    let started = Instant::now();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let headers = parts.headers;
    let client = parts.extensions.get::<Arc<ClientKey>>().cloned();
    let note = parts.extensions.get::<Arc<AccessNote>>().cloned();
    let value = ChatRequest::parse_object(&body)?;
    drop(body);
    let key = state
        .cache
        .as_ref()
        .map(|_| cache_key(state, &plan, &target, &value, (&headers, client.as_deref())));
    let Viewed {
        view: request,
        native,
    } = plan.api.view(value)?;
    check_choices(&plan, &request)?;
    Ok(Prepared(Job {
        plan,
        headers,
        target,
        request,
        native,
        key,
        client,
        note,
        started,
    }))
}

impl Prepared {
    /// N, for the memory this request may claim.
    pub fn n(&self) -> u32 {
        self.0.plan.n
    }

    /// Every model the request makes the proxy ask: its own (the judge's, unless the judge
    /// names one) and the candidates' list.
    pub fn models_asked(&self) -> impl Iterator<Item = &str> {
        let job = &self.0;
        std::iter::once(job.request.model.as_str())
            .chain(job.plan.models.iter().map(String::as_str))
    }
}

/// Answers one best-of-N request, as JSON or as an SSE stream.
pub async fn handle(state: Arc<AppState>, Prepared(job): Prepared) -> Response<Body> {
    let stream = job.request.is_stream();
    let shape = streaming::Shape {
        api: job.plan.api,
        include_usage: job.request.include_usage(),
    };
    let debug = job.plan.debug;
    let keepalive = state.config.best_of_n.stream_keepalive;
    let request_id = job.request_id().unwrap_or("-").to_string();
    if stream && job.plan.mode == Mode::Fuse {
        let work = logged(fuse_live(state.clone(), job), state, request_id);
        return streaming::respond_streamed(work, keepalive, shape).await;
    }
    let work = logged(answer(state.clone(), job), state, request_id);
    if stream {
        return streaming::respond(work, keepalive, shape).await;
    }
    match work.await {
        Ok(ready) => ready.with_debug(debug).into_json_response(),
        Err(failed) => failed.into_response(),
    }
}

/// `work`, logging its failure at WARN with the request id and why, whether the client hears
/// it as an error status or, its stream's head already sent, as an error event.
fn logged<T: Send + 'static>(
    work: BoxFuture<'static, Result<T, Failed>>,
    state: Arc<AppState>,
    request_id: String,
) -> BoxFuture<'static, Result<T, Failed>> {
    async move {
        let result = work.await;
        if let Err(failed) = &result {
            let error = state.upstream.redact(&failed.describe());
            tracing::warn!(request_id, %error, "best-of-N request failed");
        }
        result
    }
    // A streamed answer is computed while its body is read, outside the request's own
    // future: it keeps the request's span, so its calls' spans join the request's trace.
    .in_current_span()
    .boxed()
}

/// `n` fits the plan: at most N choices, and one in fuse mode.
fn check_choices(plan: &BestOfN, request: &ChatRequest) -> Result<(), ApiError> {
    if plan.mode == Mode::Fuse && request.choices_wanted() > 1 {
        return Err(ApiError::invalid_request(
            "n",
            format!(
                "`n` is {} but x-best-of-n-mode is `fuse`, which writes one answer. Send `n: 1`, \
                 or use x-best-of-n-mode: select to get the {} best candidates.",
                request.choices_wanted(),
                request.choices_wanted()
            ),
        ));
    }
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
    Ok(())
}

impl Job {
    /// The request's id (the client's, or the one the server gave it).
    fn request_id(&self) -> Option<&str> {
        self.headers.get("x-request-id")?.to_str().ok()
    }

    /// What the candidates are asked.
    fn ask(&self) -> generation::Ask<'_> {
        generation::Ask {
            api: self.plan.api,
            request: &self.request,
            native: self.native.as_ref(),
        }
    }
}

/// Time spent waiting on upstream calls on the critical path, so the proxy's own share
/// (`bon_overhead_seconds`) can be told apart.
#[derive(Default)]
struct Timing {
    waited_nanos: AtomicU64,
}

impl Timing {
    fn waited(&self, since: Instant) {
        self.add(since.elapsed());
    }

    fn add(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.waited_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn overhead(&self, started: Instant) -> Duration {
        let waited = Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed));
        started.elapsed().saturating_sub(waited)
    }
}

/// The whole answer, owned, so a streaming response can hold it (and drop it, cancelling
/// every upstream call, when the client goes away): cache, then fan-out and judge.
fn answer(state: Arc<AppState>, job: Job) -> BoxFuture<'static, Result<Ready, Failed>> {
    async move {
        let job = Arc::new(job);
        // A stream never shows the breakdown: a hit for one need not decode it.
        let debug = job.plan.debug && !job.request.is_stream();
        let compute = compute(state.clone(), job.clone());
        let (result, outcome) = match (&state.cache, job.key) {
            (Some(cache), Some(key)) => {
                let (result, outcome) = cache
                    .get_or_compute(key, job.plan.cache, debug, compute)
                    .await;
                (result, Some(outcome))
            }
            _ => (compute.await, None),
        };
        if outcome.is_some_and(cache::Outcome::is_stored_hit) {
            // A pure hit waited on nothing: all of its time is the proxy's.
            let overhead = job.started.elapsed();
            state.metrics.overhead("best_of_n", overhead);
            if let Some(note) = &job.note {
                note.overhead(overhead);
            }
        }
        result.map(|mut ready| {
            if let Some(outcome) = outcome {
                cache::set_outcome_header(&mut ready.headers, outcome);
            }
            ready
        })
    }
    .boxed()
}

/// Fuse mode for a streaming client: a cached fused answer, or else the fuser's own stream
/// relayed as it is written (not stored: the cache keeps whole answers, and this one is
/// still being written when it goes out).
fn fuse_live(state: Arc<AppState>, job: Job) -> BoxFuture<'static, Result<Streamed, Failed>> {
    async move {
        if let (Some(cache), Some(key)) = (&state.cache, job.key) {
            if let Some((mut ready, outcome)) = cache.lookup(key.store, job.plan.cache, false).await
            {
                cache::set_outcome_header(&mut ready.headers, outcome);
                return Ok(Streamed::Ready(Box::new(ready)));
            }
        }
        within_deadline(&job.plan, start_fused_stream(&state, &job)).await
    }
    .boxed()
}

/// The candidates, then the fuser's stream; or a candidate when the fuser cannot start.
async fn start_fused_stream(state: &AppState, job: &Job) -> Result<Streamed, Failed> {
    let (plan, request) = (&job.plan, &job.request);
    let generator = generator(state, plan, false);
    let fan_out = (plan.n, plan.models.as_slice());
    let until = Until {
        stop: None,
        quorum: quorum(state, plan, request),
    };
    let candidates = generation::generate(
        &generator,
        &job.target,
        &job.headers,
        job.ask(),
        fan_out,
        until,
    )
    .await?;
    check_enough(state, plan, request, &candidates)?;
    let rubrics = fuser_rubrics(state, plan);
    let streamed = state
        .fuser
        .stream(request, &candidates, &rubrics, &job.headers)
        .await;
    let (streamed, selection) = match streamed {
        Ok(FuserStream::Whole(fused)) => {
            let ready = respond::fused(plan, &candidates, *fused);
            (Streamed::Ready(Box::new(ready)), None)
        }
        Ok(FuserStream::Live(response, place)) => {
            let fuser_headers = state.fuser.client_headers(response.headers());
            let mut headers = respond::fused_headers(plan, &candidates, &fuser_headers);
            if job.key.is_some() {
                // Looked up and not found; a live stream is not stored.
                cache::set_outcome_header(&mut headers, cache::Outcome::Miss);
            }
            let prior = respond::candidate_usage(&candidates);
            // The stream ends by the fuser's deadline, and never after the request's own.
            let by_request = job.started + plan.deadline.after;
            let deadline = by_request.min(Instant::now() + state.fuser.timeout());
            let deadline = tokio::time::Instant::from_std(deadline);
            let include_usage = request.include_usage();
            let events = relay::relay(response.into_body(), prior, include_usage, deadline);
            // The fuser's call keeps its place while its stream is relayed.
            let events = futures_util::StreamExt::boxed(futures_util::StreamExt::map(
                events,
                move |event| {
                    let _held = &place;
                    event
                },
            ));
            (Streamed::Live(Live { headers, events }), None)
        }
        Err(failed) => {
            let (ready, selection) = without_fuser(plan, &candidates, failed)?;
            (Streamed::Ready(Box::new(ready)), Some(selection))
        }
    };
    // A live stream is logged as it starts: its usage is the candidates' (the fuser's own
    // is still being written) and its latency the time to the fuser's first byte.
    let usage = match &streamed {
        Streamed::Ready(ready) => ready.completion.usage.clone(),
        Streamed::Live(_) => Some(respond::candidate_usage(&candidates)),
    };
    log_decision(state, job, &candidates, selection.as_ref(), usage.as_ref());
    charge_client(state, job, usage.as_ref());
    Ok(streamed)
}

/// The rubrics the fuser is shown: the request's preset, or helpfulness.
fn fuser_rubrics(state: &AppState, plan: &BestOfN) -> Vec<String> {
    let preset = plan.rubric.as_deref().unwrap_or(DEFAULT_RUBRIC_PRESET);
    state
        .judges
        .rubric(preset)
        .map(|r| r.to_vec())
        .unwrap_or_default()
}

/// The keys of this request's answer: where it is stored (the request itself, the plan, and
/// the tenant), and which computations in flight it may share (see [`flight_key`]).
fn cache_key(
    state: &AppState,
    plan: &BestOfN,
    target: &str,
    request: &serde_json::Value,
    tenant: (&HeaderMap, Option<&ClientKey>),
) -> cache::Keys {
    let store = store_key(state, plan, target, request, tenant);
    cache::Keys {
        store,
        flight: flight_key(state, plan, store),
    }
}

/// The store key, with how the computation may end when the request changed it: a quorum
/// below N, or a deadline below `server.request_timeout`. Neither changes what a whole answer
/// is (a quorum-cut answer is never stored), so they stay out of the store key, where they
/// would only keep quorum requests from reading whole answers.
fn flight_key(state: &AppState, plan: &BestOfN, store: cache::CacheKey) -> cache::CacheKey {
    let (quorum, cuts) = (plan.quorum, plan.quorum < plan.n);
    let lowered = plan.deadline.set_by != "server.request_timeout";
    if !cuts && !lowered {
        return store;
    }
    let grace = state.config.best_of_n.grace.as_nanos();
    let deadline = plan.deadline.after.as_nanos();
    store.with(format!("quorum={quorum}|grace={grace}|deadline={deadline}").as_bytes())
}

/// The key an answer is stored under: the request itself, the plan, and the tenant.
fn store_key(
    state: &AppState,
    plan: &BestOfN,
    target: &str,
    request: &serde_json::Value,
    (headers, client): (&HeaderMap, Option<&ClientKey>),
) -> cache::CacheKey {
    // The judge's own fingerprint (fallback included) and the rubric the request chose:
    // everything that can change the pick; and the candidate settings: everything that can
    // change what is picked from.
    let judge = state
        .judges
        .get(&plan.judge)
        .map(|j| j.fingerprint.as_str());
    let rubric = plan.rubric.as_deref().and_then(|name| {
        let rubrics = state.judges.rubric(name)?;
        Some(
            blake3::hash(rubrics.join("\n").as_bytes())
                .to_hex()
                .to_string(),
        )
    });
    let scope = format!(
        "best_of_n|{}|{}|{}|{}|{target}",
        plan.n,
        plan.judge,
        judge.unwrap_or_default(),
        rubric.unwrap_or_default(),
    );
    // Names cannot hold commas (the list's separator), so the joined list is unambiguous.
    let scope = format!(
        "{scope}|{}|models={}",
        generation::fingerprint(&state.config.best_of_n),
        plan.models.join(",")
    );
    // In fuse mode the fuser writes the answer: its settings matter, the judge's do not.
    let scope = match plan.mode {
        Mode::Select => scope,
        Mode::Fuse => format!("{scope}|fuse|{}", state.fuser.fingerprint()),
    };
    KeyBuilder::new(scope.as_bytes())
        .request(request)
        .tenant(headers, client)
        .finish()
}

/// Fan-out, judge and answer, bounded by the request's deadline (`server.request_timeout`,
/// or lower by `x-best-of-n-timeout`). Owned (`'static`) so that it can run as the shared
/// computation of identical requests.
fn compute(state: Arc<AppState>, job: Arc<Job>) -> BoxFuture<'static, Result<Ready, Failed>> {
    async move {
        let timing = Timing::default();
        let work = generate_and_select(&state, &job, &timing);
        let result = within_deadline(&job.plan, work).await;
        let overhead = timing.overhead(job.started);
        state.metrics.overhead("best_of_n", overhead);
        if let Some(note) = &job.note {
            note.overhead(overhead);
        }
        result
    }
    .boxed()
}

/// `work`, bounded by the request's deadline. The candidates' own deadlines are capped by it,
/// so they may time out at the same moment and speak first: a 504 that comes once the
/// deadline has passed is the deadline's, and says so.
async fn within_deadline<T>(
    plan: &BestOfN,
    work: impl std::future::Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    let started = Instant::now();
    match tokio::time::timeout(plan.deadline.after, work).await {
        Ok(Err(Failed::Proxy(error)))
            if error.status == http::StatusCode::GATEWAY_TIMEOUT
                && started.elapsed() >= plan.deadline.after =>
        {
            Err(too_late(plan))
        }
        Ok(result) => result,
        Err(_) => Err(too_late(plan)),
    }
}

/// The 504 of a request past its deadline, naming the limit that set it.
fn too_late(plan: &BestOfN) -> Failed {
    let Deadline { after, set_by } = plan.deadline;
    Failed::Proxy(ApiError::gateway_timeout(format!(
        "The best-of-{} request took longer than {set_by} ({after:?}).",
        plan.n
    )))
}

/// The quorum the fan-out may stop at, when it is below N: the plan's, but never fewer than
/// the request needs (`min_candidates`, `n`), so a quorum never turns an answer into a 502.
fn quorum(state: &AppState, plan: &BestOfN, request: &ChatRequest) -> Option<Quorum> {
    let succeeded = (plan.quorum as usize).max(needed(state, plan, request));
    (succeeded < plan.n as usize).then_some(Quorum {
        succeeded,
        grace: state.config.best_of_n.grace,
    })
}

async fn generate_and_select(
    state: &AppState,
    job: &Job,
    timing: &Timing,
) -> Result<Ready, Failed> {
    let (plan, headers, request) = (&job.plan, &job.headers, &job.request);
    let generation_started = Instant::now();
    let judge = selection::judge_of(state, plan)?;
    // In fuse mode the fuser reads every candidate: no judge shapes or cuts the fan-out.
    let selecting = plan.mode == Mode::Select;
    let generator = generator(state, plan, selecting && judge.judge.wants_logprobs());
    // A judge that can tell early that the rest cannot change its pick cuts the fan-out short;
    // so does a quorum, whichever comes first.
    let stop = selecting
        .then(|| selection::early_stop(judge, request, plan.n, needed(state, plan, request)))
        .flatten();
    let until = Until {
        stop,
        quorum: quorum(state, plan, request),
    };
    let fan_out = (plan.n, plan.models.as_slice());
    let candidates =
        generation::generate(&generator, &job.target, headers, job.ask(), fan_out, until).await?;
    timing.waited(generation_started);
    check_enough(state, plan, request, &candidates)?;
    let (ready, selection) = match plan.mode {
        Mode::Fuse => fuse(state, plan, request, &candidates, headers, timing).await?,
        Mode::Select => {
            // Log-probabilities asked for the judge's sake are not the client's to receive.
            let strip_logprobs = generator.logprobs && !request.wants_logprobs();
            select(state, job, judge, &candidates, strip_logprobs, timing).await?
        }
    };
    let usage = ready.completion.usage.as_ref();
    log_decision(state, job, &candidates, selection.as_ref(), usage);
    charge_client(state, job, usage);
    Ok(ready)
}

/// Select mode: the judge ranks the candidates and the best answer (the best `n`) goes out.
async fn select(
    state: &AppState,
    job: &Job,
    judge: &NamedJudge,
    candidates: &[Candidate],
    strip_logprobs: bool,
    timing: &Timing,
) -> Result<(Ready, Option<Selection>), Failed> {
    let (plan, request) = (&job.plan, &job.request);
    let selection = selection::select(state, plan, request, candidates, &job.headers).await?;
    // The judge's time is waiting on an upstream call too, unless it decided alone.
    if let Some(verdict) = selection.verdict.as_ref().filter(|_| !judge.local) {
        timing.add(verdict.latency);
    }
    let choices = request.choices_wanted() as usize;
    let ready = respond::build(plan, candidates, &selection, choices, strip_logprobs)?;
    Ok((ready, Some(selection)))
}

/// Offers the decision behind an answer to the decision log, when it is on. Only queued
/// here, never written: the answer does not wait for the disk.
fn log_decision(
    state: &AppState,
    job: &Job,
    candidates: &[Candidate],
    selection: Option<&Selection>,
    usage: Option<&Usage>,
) {
    let answered = Answered {
        plan: &job.plan,
        request: &job.request,
        candidates,
        selection,
        usage,
        latency: job.started.elapsed(),
        request_id: job.request_id(),
    };
    if let Some(ui) = &state.ui {
        ui.record(&answered);
    }
    let Some(log) = &state.decisions else {
        return;
    };
    log.record(|include_content| Decision::from_answer(&answered, include_content));
}

/// Counts what an answer spent against the client key's daily budget and per-key metric
/// (computed answers only: a cache hit spent nothing).
fn charge_client(state: &AppState, job: &Job, usage: Option<&Usage>) {
    if let (Some(note), Some(usage)) = (&job.note, usage) {
        note.tokens(usage);
    }
    let (Some(client), Some(usage)) = (&job.client, usage) else {
        return;
    };
    client.charge(usage.total_tokens);
    state.metrics.key_tokens(client.label(), usage.total_tokens);
}

/// How this process asks for `plan`'s candidates; `logprobs` when the judge reads them. No
/// candidate call outlives the request's deadline.
fn generator<'a>(state: &'a AppState, plan: &BestOfN, logprobs: bool) -> generation::Generator<'a> {
    let config = &state.config.best_of_n;
    generation::Generator {
        upstream: &state.upstream,
        metrics: &state.metrics,
        config,
        models_without_n: &state.models_without_n,
        logprobs,
        candidate_timeout: config.candidate_timeout.min(plan.deadline.after),
    }
}

/// Fuse mode: the fuser writes the answer from the candidates; when it cannot, the first
/// successful candidate answers and the response says so.
async fn fuse(
    state: &AppState,
    plan: &BestOfN,
    request: &ChatRequest,
    candidates: &[Candidate],
    headers: &HeaderMap,
    timing: &Timing,
) -> Result<(Ready, Option<Selection>), Failed> {
    let rubrics = fuser_rubrics(state, plan);
    let fusing_started = Instant::now();
    let fused = state
        .fuser
        .fuse(request, candidates, &rubrics, headers)
        .await;
    timing.waited(fusing_started);
    match fused {
        Ok(fused) => Ok((respond::fused(plan, candidates, fused), None)),
        Err(failed) => {
            let (ready, selection) = without_fuser(plan, candidates, failed)?;
            Ok((ready, Some(selection)))
        }
    }
}

/// The answer when the fuser wrote nothing: the first successful candidate, saying why.
fn without_fuser(
    plan: &BestOfN,
    candidates: &[Candidate],
    FuserFailed(why): FuserFailed,
) -> Result<(Ready, selection::Selection), Failed> {
    tracing::warn!(%why, "the fuser wrote nothing; answering with a candidate");
    let selection = selection::without_fuser(candidates, why);
    let ready = respond::build(plan, candidates, &selection, 1, false)?;
    Ok((ready, selection))
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
    let needed = needed(state, plan, request);
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

/// The fewest successes that make an answer: `best_of_n.min_candidates` (which cannot ask
/// for more than this request generates) and `n`.
fn needed(state: &AppState, plan: &BestOfN, request: &ChatRequest) -> usize {
    let min_candidates = state.config.best_of_n.min_candidates.min(plan.n);
    min_candidates.max(request.choices_wanted()) as usize
}

/// Refuses a body declared as anything but JSON, before it is read.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
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
    Ok(())
}
