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

use crate::config::{Config, JudgeConfig};
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

    /// Every setting that can change which candidate this judge picks, as text: part of the
    /// cache key, so an answer is only reused under the judge that chose it.
    fn fingerprint(&self) -> String;
}

/// How to build one strategy from the judge settings and the way to reach its model.
type Build = fn(&JudgeConfig, call::JudgeCall) -> Result<Arc<dyn Judge>, String>;

/// Every strategy this build knows, by name: the one place a name maps to an implementation.
/// A new strategy is its own file and one line here.
const STRATEGIES: &[(&str, Build)] = &[("listwise", listwise::Listwise::build)];

/// The names of every strategy, for messages and validation.
pub fn strategy_names() -> Vec<&'static str> {
    STRATEGIES.iter().map(|(name, _)| *name).collect()
}

pub fn is_strategy(name: &str) -> bool {
    STRATEGIES.iter().any(|(known, _)| *known == name)
}

/// Checks the `[judge]` settings the way building the judges will use them, so that
/// `check-config` and start-up fail with the key to fix: a known strategy, a template that
/// compiles and renders.
pub fn check_config(judge: &JudgeConfig) -> Result<(), String> {
    if !is_strategy(&judge.strategy) {
        return Err(format!(
            "`judge.strategy`: unknown strategy `{}`; allowed: {}",
            judge.strategy,
            strategy_names().join(", ")
        ));
    }
    protocol::check_template(&judge.template).map_err(|e| format!("`judge.template`: {e}"))
}

/// The configured judges, by strategy name, each with its fingerprint.
pub struct Judges {
    by_name: Vec<(&'static str, Arc<dyn Judge>, String)>,
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
        check_config(&config.judge)?;
        let mut by_name = Vec::with_capacity(STRATEGIES.len());
        for (name, build) in STRATEGIES {
            let call = call::JudgeCall::new(
                &config.judge,
                endpoint.clone(),
                forward_client_headers,
                metrics.clone(),
            );
            let judge = build(&config.judge, call)?;
            let fingerprint = blake3::hash(judge.fingerprint().as_bytes())
                .to_hex()
                .to_string();
            by_name.push((*name, judge, fingerprint));
        }
        Ok(Judges { by_name })
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Judge>> {
        self.by_name
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, judge, _)| judge.clone())
    }

    /// The hashed [`Judge::fingerprint`] of the judge called `name`.
    pub fn fingerprint(&self, name: &str) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, fingerprint)| fingerprint.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Redactor;

    fn judges(config: &Config) -> Judges {
        let client = crate::upstream::build_client(&config.upstream).unwrap();
        let endpoint = Upstream::new(
            client,
            "http://127.0.0.1:9/v1",
            None,
            &config.upstream,
            Redactor::default(),
        )
        .unwrap();
        Judges::from_config(config, endpoint, true, &Metrics::new()).unwrap()
    }

    #[test]
    fn every_registered_strategy_is_built_and_nothing_else() {
        let judges = judges(&Config::default());
        for name in strategy_names() {
            assert!(judges.get(name).is_some(), "{name}");
        }
        assert!(judges.get("coin").is_none());
        assert!(!is_strategy("coin"));
    }

    #[test]
    fn the_fingerprint_follows_what_changes_a_verdict() {
        let base = Config::default();
        let fingerprint =
            |config: &Config| judges(config).fingerprint("listwise").unwrap().to_string();
        let mut rubrics = base.clone();
        rubrics.judge.rubrics = vec!["Only brevity matters.".into()];
        let mut model = base.clone();
        model.judge.model = "judge-model".into();
        let mut timeout = base.clone();
        timeout.judge.timeout = std::time::Duration::from_secs(1);
        assert_ne!(fingerprint(&base), fingerprint(&rubrics));
        assert_ne!(fingerprint(&base), fingerprint(&model));
        assert_eq!(
            fingerprint(&base),
            fingerprint(&timeout),
            "a deadline picks nothing"
        );
    }

    #[test]
    fn bad_judge_settings_name_the_key() {
        let mut judge = JudgeConfig {
            strategy: "coin".into(),
            ..JudgeConfig::default()
        };
        let err = check_config(&judge).unwrap_err();
        assert!(
            err.contains("judge.strategy") && err.contains("listwise"),
            "{err}"
        );
        judge.strategy = "listwise".into();
        judge.template = "{{ cnadidates }}".into();
        assert!(check_config(&judge).unwrap_err().contains("judge.template"));
    }
}
