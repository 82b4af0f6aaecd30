//! Judges: strategies that pick the best of N candidate answers.
//!
//! A [`Judge`] gets the conversation and the successful candidates and returns a [`Verdict`]:
//! a ranking in generation order, scores, the tokens it spent and how it went. A judge never
//! fails silently: when it cannot decide, the verdict says so and the caller's fallback picks.

pub mod budget;
pub mod call;
pub mod cascade;
pub mod catalog;
pub mod consensus;
pub mod listwise;
pub mod llm;
pub mod logprob;
pub mod pairwise;
pub mod panel;
pub mod pointwise;
pub mod protocol;
pub mod reward_model;
pub mod rubrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderMap;
use serde_json::{Map, Value};

use crate::config::{ConfigError, JudgeConfig};
use crate::openai::{RequestMessage, Usage};

pub use catalog::{Judges, NamedJudge};

/// One successful candidate as a judge sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedCandidate {
    /// Position in generation order (0-based), the id everything outside the judge uses.
    pub index: usize,
    pub text: String,
    /// The mean log-probability of the answer's tokens, when the upstream sent `logprobs`.
    pub mean_logprob: Option<f64>,
}

/// Everything a judge needs for one decision.
pub struct JudgeRequest<'a> {
    pub conversation: &'a [RequestMessage],
    pub candidates: &'a [JudgedCandidate],
    /// The model the client asked for; LLM judges use it unless `judge.model` is set.
    pub request_model: &'a str,
    /// The client's end-to-end headers, for judges that call the same upstream.
    pub client_headers: &'a HeaderMap,
    /// Seed of the presentation shuffle, reported so a verdict can be reproduced.
    pub seed: u64,
    /// Rubrics the request chose (`x-best-of-n-rubric`); `None` means the judge's own.
    pub rubrics: Option<&'a [String]>,
    /// The request's `response_format.type` (`json_object`, `json_schema`, `text`), if any.
    pub response_format: Option<&'a str>,
}

impl JudgeRequest<'_> {
    /// The same request with another seed, for a judge that asks other judges.
    pub fn reseeded(&self, seed: u64) -> JudgeRequest<'_> {
        JudgeRequest { seed, ..*self }
    }
}

/// How the judging went, as `bon_judge_total{outcome}` will count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeOutcome {
    Ok,
    /// The judge answered but no valid verdict could be read from it.
    ParseError,
    /// The judge call itself failed (unreachable, timeout, error status, bad template).
    Error,
    /// The judge answered but preferred no candidate (every pairwise comparison a tie).
    Undecided,
}

impl JudgeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeOutcome::Ok => "ok",
            JudgeOutcome::ParseError => "parse_error",
            JudgeOutcome::Error => "error",
            JudgeOutcome::Undecided => "undecided",
        }
    }

    /// How a judge that decided nothing failed: it could not read what a judge model answered,
    /// or no call got an answer at all.
    pub fn of_failure(any_answered: bool) -> JudgeOutcome {
        if any_answered {
            JudgeOutcome::ParseError
        } else {
            JudgeOutcome::Error
        }
    }
}

/// A judge's decision and what it cost.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcome: JudgeOutcome,
    /// Candidate indices (generation order), best first; empty unless `outcome` is `Ok`.
    pub ranking: Vec<usize>,
    /// True when `ranking` orders every candidate, not just the winner.
    pub fully_ranked: bool,
    /// `(candidate index, score)`; higher is better, scale per strategy.
    pub scores: Vec<(usize, f64)>,
    /// Tokens spent by the judge calls, failed ones included.
    pub usage: Usage,
    /// The judge model's answers, for the debug object.
    pub raw: Vec<String>,
    /// Candidate indices in the order they were shown to the judge.
    pub presentation: Vec<usize>,
    /// Why the judge failed, when it did.
    pub failure: Option<String>,
    pub latency: Duration,
    /// Seed of the presentation shuffle, to reproduce the verdict.
    pub seed: u64,
    /// What the strategy adds to the debug object (comparisons, per-candidate calls, panel
    /// members), under its own keys.
    pub detail: Map<String, Value>,
}

impl Verdict {
    pub fn winner(&self) -> Option<usize> {
        self.ranking.first().copied()
    }

    /// A verdict that decided nothing; `usage` and `raw` keep what the attempt cost.
    pub fn failed(outcome: JudgeOutcome, why: String) -> Verdict {
        Verdict {
            failure: Some(why),
            ..Verdict::empty(outcome)
        }
    }

    /// The verdict as a judge made of other judges (a panel, a cascade) reports one of them
    /// in its debug object: who, how it went, what it ranked and cost, and its own detail.
    pub fn reported_by(&self, judge: &NamedJudge) -> Map<String, Value> {
        let mut report = Map::new();
        report.insert("name".into(), Value::from(judge.name.as_str()));
        report.insert("strategy".into(), Value::from(judge.strategy));
        report.insert("outcome".into(), Value::from(self.outcome.as_str()));
        report.insert("ranking".into(), serde_json::json!(self.ranking));
        report.insert("failure".into(), serde_json::json!(self.failure));
        report.insert("raw".into(), serde_json::json!(self.raw));
        let millis = (self.latency.as_secs_f64() * 1e6).round() / 1e3;
        report.insert("latency_ms".into(), Value::from(millis));
        report.insert("usage".into(), serde_json::json!(self.usage));
        report.extend(self.detail.clone());
        report
    }

    /// A verdict with nothing filled in yet.
    pub fn empty(outcome: JudgeOutcome) -> Verdict {
        Verdict {
            outcome,
            ranking: Vec::new(),
            fully_ranked: false,
            scores: Vec::new(),
            usage: Usage::default(),
            raw: Vec::new(),
            presentation: Vec::new(),
            failure: None,
            latency: Duration::ZERO,
            seed: 0,
            detail: Map::new(),
        }
    }
}

/// A judging strategy.
pub trait Judge: Send + Sync {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict>;

    /// Every setting that can change which candidate this judge picks, as text: part of the
    /// cache key, so an answer is only reused under the judge that chose it.
    fn fingerprint(&self) -> String;

    /// What `check-config` says about this judge beyond its model, endpoint and prompt (a
    /// panel's members, a reward model's wire format); empty when nothing.
    fn describe(&self) -> String {
        String::new()
    }

    /// For a judge that can tell, before every candidate is in, that the rest cannot change
    /// its pick: a checker for one request of `n` candidates, shown each eligible candidate
    /// as it finishes, that answers true once the candidates so far decide. The calls still
    /// running are then cancelled. `None` (the default) waits for every candidate.
    fn early_stop(&self, _n: usize, _response_format: Option<&str>) -> Option<Stopper> {
        None
    }

    /// True when this judge reads the candidates' token log-probabilities, so candidates are
    /// asked for `"logprobs": true` (and the client gets none unless it asked).
    fn wants_logprobs(&self) -> bool {
        false
    }
}

/// See [`Judge::early_stop`]: called once per finished eligible candidate, in finishing order.
pub type Stopper = Box<dyn FnMut(&JudgedCandidate) -> bool + Send>;

/// True for the `response_format` types whose answers must be JSON.
pub fn is_json_mode(response_format: Option<&str>) -> bool {
    matches!(response_format, Some("json_object") | Some("json_schema"))
}

/// What a strategy's constructor gets: the judge's table, resolved.
pub struct Blueprint<'a> {
    /// The judge's name, for messages.
    pub name: &'a str,
    /// Where its table lives (`judge`, `judges.NAME`), for messages.
    pub key: &'a str,
    pub config: &'a JudgeConfig,
    /// The rubrics, a preset already looked up.
    pub rubrics: Vec<String>,
    /// `template`, or what `template_file` holds; empty means the built-in template.
    pub template: String,
    /// How calls reach the judge's model; `None` for strategies that call none (see
    /// [`Shape::calls_a_model`]).
    pub call: Option<call::JudgeCall>,
    /// The judges built before this one, by name (every plain judge, for panels).
    pub built: &'a BTreeMap<String, Arc<NamedJudge>>,
}

/// How to build one strategy from its blueprint.
type Build = fn(Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError>;

/// What a strategy needs to decide, which says what its table may set and what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Writes prompts for an LLM judge from its built-in `template` (or the table's own).
    Prompt { template: &'static str },
    /// Calls a model server of its own (a reward model): an endpoint and a model, no prompt.
    Remote,
    /// Decides from the candidates alone, with no call.
    Local,
    /// Asks other named judges; built after them, and never one of their members.
    Composite,
}

impl Shape {
    /// True when judges of this shape call a model through a [`call::JudgeCall`].
    pub fn calls_a_model(self) -> bool {
        matches!(self, Shape::Prompt { .. } | Shape::Remote)
    }
}

/// One strategy as the registry knows it.
pub struct Strategy {
    pub name: &'static str,
    pub shape: Shape,
    build: Build,
}

/// Every strategy this build knows, by name: the one place a name maps to an implementation.
/// A new strategy is its own file and one line here.
const STRATEGIES: &[Strategy] = &[
    listwise::STRATEGY,
    pointwise::STRATEGY,
    pairwise::STRATEGY,
    panel::STRATEGY,
    cascade::STRATEGY,
    reward_model::STRATEGY,
    consensus::STRATEGY,
    logprob::STRATEGY,
];

/// The strategy called `name`.
pub fn strategy(name: &str) -> Option<&'static Strategy> {
    STRATEGIES.iter().find(|s| s.name == name)
}

/// The names of every strategy, for messages and validation.
pub fn strategy_names() -> Vec<&'static str> {
    STRATEGIES.iter().map(|s| s.name).collect()
}

/// The registry entry of a strategy: its name, shape and constructor.
const fn register(name: &'static str, shape: Shape, build: Build) -> Strategy {
    Strategy { name, shape, build }
}

impl Strategy {
    pub fn build(&self, blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        (self.build)(blueprint)
    }
}
