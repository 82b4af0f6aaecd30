//! One line of the decision log (DESIGN §8): what a best-of-N answer was made from and who
//! chose it, with the conversation and the candidates' texts only when the config asks.
//!
//! Nothing here reads headers: the only request detail kept besides the body is its id.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Mode;
use crate::fanout::Candidate;
use crate::openai::{ChatRequest, Usage};
use crate::plan::BestOfN;
use crate::respond;
use crate::selection::Selection;

/// A logged decision, field for field the JSONL line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When the answer was made, RFC 3339 in UTC.
    pub time: String,
    pub request_id: Option<String>,
    /// The model the client asked for.
    pub model: String,
    pub n: u32,
    /// The judge the request named; `null` in fuse mode, where the fuser writes the answer.
    pub judge: Option<String>,
    pub strategy: Option<String>,
    /// `select` or `fuse`.
    pub mode: String,
    /// Index of the chosen candidate; `null` when the fuser wrote the answer.
    pub winner: Option<usize>,
    /// Candidate indices, best first (empty when the fuser wrote the answer).
    pub ranking: Vec<usize>,
    /// One score per candidate in generation order; `null` where there is none.
    pub scores: Vec<Option<f64>>,
    /// Set when the judge's (or the fuser's) fallback chose: the answer is not a judgement.
    pub fallback: Option<String>,
    /// Tokens spent on the answer, every candidate and judge (or fuser) call.
    pub usage: Usage,
    /// The request's whole best-of-N time, in milliseconds.
    pub latency_ms: f64,
    pub candidates: Vec<CandidateRecord>,
    /// The messages as the client sent them; only with `decisions.include_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub index: usize,
    /// `ok`, `disqualified`, or how it failed (`error`, `timeout`, `cancelled`).
    pub status: String,
    pub model: String,
    /// The answer's text; only with `decisions.include_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What the request path has at hand once an answer is built.
pub struct Answered<'a> {
    pub plan: &'a BestOfN,
    pub request: &'a ChatRequest,
    pub candidates: &'a [Candidate],
    /// How the candidates were ranked; `None` when the fuser wrote the answer.
    pub selection: Option<&'a Selection>,
    pub usage: Option<&'a Usage>,
    pub latency: Duration,
    pub request_id: Option<&'a str>,
}

impl Decision {
    /// The log line for an answer; `include_content` adds the conversation and the texts.
    pub fn from_answer(answered: &Answered<'_>, include_content: bool) -> Decision {
        let Answered {
            plan, selection, ..
        } = *answered;
        let disqualified = |index| selection.is_some_and(|s| s.disqualified.contains(&index));
        let candidates = answered
            .candidates
            .iter()
            .map(|c| {
                let asked = plan.model_for(c.index, &answered.request.model);
                candidate_record(c, asked, disqualified(c.index), include_content)
            })
            .collect();
        let scores = answered
            .candidates
            .iter()
            .map(|c| selection.and_then(|s| respond::score_of(c, s)))
            .collect();
        let conversation = include_content
            .then(|| serde_json::to_value(&answered.request.messages).ok())
            .flatten();
        Decision {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: answered.request_id.map(str::to_string),
            model: answered.request.model.clone(),
            n: plan.n,
            // A fuse-mode answer, even one that fell back to a candidate, was chosen by no judge.
            judge: (plan.mode == Mode::Select).then(|| plan.judge.clone()),
            strategy: match plan.mode {
                Mode::Select => selection.map(|s| s.strategy.to_string()),
                Mode::Fuse => Some("fuse".to_string()),
            },
            mode: match plan.mode {
                Mode::Select => "select",
                Mode::Fuse => "fuse",
            }
            .to_string(),
            winner: selection.map(Selection::winner),
            ranking: selection.map(|s| s.ranking.clone()).unwrap_or_default(),
            scores,
            fallback: selection.and_then(|s| s.fallback.clone()),
            usage: answered.usage.cloned().unwrap_or_default(),
            latency_ms: (answered.latency.as_secs_f64() * 1e6).round() / 1e3,
            candidates,
            conversation,
        }
    }
}

fn candidate_record(
    candidate: &Candidate,
    asked: &str,
    disqualified: bool,
    include_content: bool,
) -> CandidateRecord {
    match &candidate.result {
        Ok(answer) => {
            let choice = answer.completion.first_choice();
            // The plain content when there is one, else what the judge read (a refusal, tool
            // calls), so that a pair made from it shows what was actually compared.
            let text = include_content
                .then(|| {
                    choice.map(|c| {
                        c.content()
                            .filter(|t| !t.is_empty())
                            .map_or_else(|| c.text_for_judge(), str::to_string)
                    })
                })
                .flatten();
            CandidateRecord {
                index: candidate.index,
                status: if disqualified { "disqualified" } else { "ok" }.to_string(),
                model: answer.completion.model.clone(),
                text,
            }
        }
        Err(failure) => CandidateRecord {
            index: candidate.index,
            status: failure.outcome().to_string(),
            // A failed call answered nothing: it was asked for this model.
            model: asked.to_string(),
            text: None,
        },
    }
}
