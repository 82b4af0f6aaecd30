//! Judges: strategies that pick the best of N candidate answers.
//!
//! A [`Judge`] gets the conversation and the successful candidates and returns a [`Verdict`]:
//! a ranking in generation order, scores, the tokens it spent and how it went. A judge never
//! fails silently: when it cannot decide, the verdict says so and the caller's fallback picks.

pub mod budget;
pub mod call;
pub mod listwise;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderMap;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::openai::{RequestMessage, Usage};
use crate::upstream::Upstream;

/// One successful candidate as a judge sees it.
#[derive(Debug, Clone)]
pub struct JudgedCandidate {
    /// Position in generation order (0-based), the id everything outside the judge uses.
    pub index: usize,
    pub text: String,
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
}

/// How the judging went, as `bon_judge_total{outcome}` will count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeOutcome {
    Ok,
    /// The judge answered but no valid verdict could be read from it.
    ParseError,
    /// The judge call itself failed (unreachable, timeout, error status, bad template).
    Error,
}

impl JudgeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeOutcome::Ok => "ok",
            JudgeOutcome::ParseError => "parse_error",
            JudgeOutcome::Error => "error",
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
        }
    }
}

/// A judging strategy.
pub trait Judge: Send + Sync {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict>;
}

/// The configured judges, by strategy name.
pub struct Judges {
    by_name: Vec<(&'static str, Arc<dyn Judge>)>,
}

impl Judges {
    /// Builds every strategy from the config. `endpoint` is where LLM judge calls go and
    /// `forward_client_headers` says whether the client's credentials travel with them.
    pub fn from_config(
        config: &Config,
        endpoint: Upstream,
        forward_client_headers: bool,
        metrics: &Metrics,
    ) -> Result<Judges, String> {
        let call = call::JudgeCall::new(
            &config.judge,
            endpoint,
            forward_client_headers,
            metrics.clone(),
        );
        let listwise = listwise::Listwise::new(&config.judge, call)?;
        Ok(Judges {
            by_name: vec![("listwise", Arc::new(listwise) as Arc<dyn Judge>)],
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Judge>> {
        self.by_name
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, judge)| judge.clone())
    }
}
