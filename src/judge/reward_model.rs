//! The reward-model judge: an external model server scores every candidate and the highest
//! raw score wins. No prompt, no rubrics: what "good" means is whatever the model was trained
//! on.
//!
//! It speaks one of three wire formats (`format`), each as its project documents it, at the
//! judge's endpoint (`base_url`, which the path is appended to; empty means the upstream):
//! - `tei_rerank` (Hugging Face text-embeddings-inference): one `POST {base_url}/rerank` with
//!   `{"query", "texts", "raw_scores": true}`, answered by `[{"index", "score"}, …]` sorted best
//!   first. `base_url` is the server root; TEI's request has no model.
//! - `cohere_rerank`: one `POST {base_url}/rerank` with `{"model", "query", "documents"}`,
//!   answered by `{"results": [{"index", "relevance_score"}, …], …}`. `base_url` holds the API
//!   version (`https://api.cohere.com/v1`), as `upstream.base_url` holds `/v1`: the upstream
//!   path join treats a leading `/v1` as part of the base, so a root base could not reach it.
//! - `vllm_reward`: one `POST {base_url}/pooling` per candidate, all at once, with
//!   `{"model", "messages"}`: the conversation, then the candidate as the assistant's turn.
//!   Answered by `{"data": [{"index": 0, "data": …}], "usage": …}`; the reward is `data[0].data`
//!   when it is a number, else its last element, looked into again while that is a list (a
//!   classifier head gives `[score]`, a per-token reward head one list per token). `base_url`
//!   is the server root (vLLM serves `/pooling` there, not under `/v1`).
//!
//! Rerank queries are the conversation as `role: text` lines. Conversation and candidates are
//! cut to `max_prompt_bytes` together, as for LLM judges, and every format sends the same cut.
//!
//! Raw rewards are unbounded, while `x-best-of-n-scores` reads 0..1: the reported score is the
//! logistic 1/(1+e^-x) of a raw TEI or vLLM score (what TEI itself returns without
//! `raw_scores`), and Cohere's `relevance_score`, already 0..1, clamped to 0..1 for servers that
//! only claim to be compatible. The raw rewards are in the debug object (`reward_scores`). The
//! ranking is by raw reward, ties to the earlier generated candidate: a reward model scores
//! each answer on its own, so order cannot bias it and there is nothing to shuffle.
//!
//! A verdict needs one finite score for every candidate. An error status, a timeout, an answer
//! of the wrong shape, an index missing, repeated or out of range, or a score that is not a
//! finite number (TEI writes a NaN as `null`; a Python server may write a bare `NaN`, which is
//! not JSON; a score beyond f64 does not parse) fails the whole verdict, and the fallback
//! chooses and says so: a partial ranking would let an outage pick the answer.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::budget;
use super::call::{CallFailure, JudgeCall};
use super::llm::conversation_for_judge;
use super::protocol::{TemplateCandidate, TemplateMessage};
use super::{Blueprint, Judge, JudgeOutcome, JudgeRequest, Shape, Strategy, Verdict};
use crate::config::ConfigError;
use crate::openai::Usage;
use crate::upstream::{snippet, JsonReply};

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register("reward_model", Shape::Remote, RewardModel::build);

/// The most of one answer kept in the debug object.
const RAW_LIMIT: usize = 4096;

/// A model server's wire format: the `format` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TeiRerank,
    CohereRerank,
    VllmReward,
}

const FORMATS: [Format; 3] = [Format::TeiRerank, Format::CohereRerank, Format::VllmReward];

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::TeiRerank => "tei_rerank",
            Format::CohereRerank => "cohere_rerank",
            Format::VllmReward => "vllm_reward",
        }
    }

    fn named(name: &str) -> Option<Format> {
        FORMATS.into_iter().find(|f| f.name() == name)
    }

    /// Where under `base_url` it posts.
    fn path(self) -> &'static str {
        match self {
            Format::VllmReward => "/pooling",
            Format::TeiRerank | Format::CohereRerank => "/rerank",
        }
    }

    /// The 0..1 score reported for a raw one (see the module documentation).
    fn normalise(self, raw: f64) -> f64 {
        match self {
            Format::CohereRerank => raw.clamp(0.0, 1.0),
            Format::TeiRerank | Format::VllmReward => 1.0 / (1.0 + (-raw).exp()),
        }
    }
}

pub struct RewardModel {
    call: JudgeCall,
    format: Format,
    max_prompt_bytes: usize,
}

/// Why a decision has no scores: the outcome it counts as, and the reason.
type Failure = (JudgeOutcome, String);

/// What asking the model server came to.
struct Scoring {
    /// One raw score per candidate, in the order they were sent.
    scores: Result<Vec<f64>, Failure>,
    /// The server's answers, redacted and cut to [`RAW_LIMIT`].
    raw: Vec<String>,
    usage: Usage,
}

/// TEI's `/rerank` request. The bodies are written straight from borrowed text: a vLLM
/// judge sends the conversation once per candidate.
#[derive(Serialize)]
struct TeiBody<'a> {
    query: &'a str,
    texts: &'a [&'a str],
    raw_scores: bool,
}

/// Cohere's `/rerank` request.
#[derive(Serialize)]
struct CohereBody<'a> {
    model: &'a str,
    query: &'a str,
    documents: &'a [&'a str],
}

/// vLLM's `/pooling` request, chat style.
#[derive(Serialize)]
struct PoolingBody<'a> {
    model: &'a str,
    messages: &'a [&'a PoolMessage<'a>],
}

/// One message of a `/pooling` request.
#[derive(Serialize)]
struct PoolMessage<'a> {
    role: &'a str,
    content: &'a str,
}

impl RewardModel {
    fn build(blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        let key = blueprint.key;
        let config = blueprint.config;
        let format = Format::named(&config.format).ok_or_else(|| {
            let names: Vec<&str> = FORMATS.iter().map(|f| f.name()).collect();
            ConfigError(format!(
                "`{key}.format`: unknown reward-model wire format `{}`; allowed: {}. Pick \
                 the one your model server speaks (README, \"Reward models\")",
                config.format,
                names.join(", ")
            ))
        })?;
        let call = blueprint.call.ok_or_else(|| {
            ConfigError(format!("`{key}`: this judge has no model server to call"))
        })?;
        Ok(Arc::new(RewardModel {
            call: call.counted_as("reward_model"),
            format,
            max_prompt_bytes: config.max_prompt_bytes,
        }))
    }

    async fn decide(&self, request: JudgeRequest<'_>) -> Verdict {
        let started = Instant::now();
        let (conversation, candidates) = self.texts(&request);
        let scoring = match self.format {
            Format::VllmReward => self.pool_each(&request, &conversation, &candidates).await,
            Format::TeiRerank | Format::CohereRerank => {
                self.rerank(&request, &conversation, &candidates).await
            }
        };
        let order: Vec<usize> = request.candidates.iter().map(|c| c.index).collect();
        let mut verdict = verdict_from(self.format, &order, scoring);
        verdict.presentation = order;
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        verdict
    }

    /// The conversation and the candidate texts, cut to the budget together.
    fn texts(&self, request: &JudgeRequest<'_>) -> (Vec<TemplateMessage>, Vec<TemplateCandidate>) {
        let mut conversation = conversation_for_judge(request.conversation);
        let mut candidates: Vec<TemplateCandidate> = request
            .candidates
            .iter()
            .map(|c| TemplateCandidate {
                id: c.index.to_string(),
                text: c.text.clone(),
            })
            .collect();
        budget::fit_prompt(&mut conversation, &mut candidates, self.max_prompt_bytes);
        (conversation, candidates)
    }

    /// `tei_rerank` and `cohere_rerank`: one call scores every candidate.
    async fn rerank(
        &self,
        request: &JudgeRequest<'_>,
        conversation: &[TemplateMessage],
        candidates: &[TemplateCandidate],
    ) -> Scoring {
        let query = query_text(conversation);
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let sent = match self.format {
            Format::CohereRerank => {
                let model = self.call.model(request.request_model);
                let body = CohereBody {
                    model,
                    query: &query,
                    documents: &texts,
                };
                self.send(&body, request).await
            }
            _ => {
                let body = TeiBody {
                    query: &query,
                    texts: &texts,
                    raw_scores: true,
                };
                self.send(&body, request).await
            }
        };
        let format = self.format;
        let (scores, raw) = self.read(sent, |body| read_rerank(format, body, texts.len()));
        Scoring {
            scores,
            raw: raw.into_iter().collect(),
            usage: Usage::default(),
        }
    }

    /// `vllm_reward`: one call per candidate, all at once.
    async fn pool_each(
        &self,
        request: &JudgeRequest<'_>,
        conversation: &[TemplateMessage],
        candidates: &[TemplateCandidate],
    ) -> Scoring {
        // The model's chat template reads plain roles, not the judges' annotated ones.
        let messages: Vec<PoolMessage<'_>> = request
            .conversation
            .iter()
            .zip(conversation)
            .map(|(message, cut)| PoolMessage {
                role: &message.role,
                content: &cut.text,
            })
            .collect();
        let calls = candidates
            .iter()
            .map(|c| self.pool_one(request, &messages, &c.text));
        let results = crate::concurrently::all(calls).await;
        let order = request.candidates.iter().map(|c| c.index);
        gather(order.zip(results))
    }

    async fn pool_one(
        &self,
        request: &JudgeRequest<'_>,
        conversation: &[PoolMessage<'_>],
        candidate: &str,
    ) -> Pooled {
        let mut messages: Vec<&PoolMessage<'_>> = conversation.iter().collect();
        let turn = PoolMessage {
            role: "assistant",
            content: candidate,
        };
        messages.push(&turn);
        let body = PoolingBody {
            model: self.call.model(request.request_model),
            messages: &messages,
        };
        let sent = self.send(&body, request).await;
        self.read(sent, read_pooling)
    }

    async fn send(
        &self,
        body: &impl Serialize,
        request: &JudgeRequest<'_>,
    ) -> Result<JsonReply, CallFailure> {
        // Strings and booleans: serialising cannot fail.
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        self.call
            .post(self.format.path(), bytes, request.client_headers)
            .await
    }

    /// What one call came to, parsed by `parse`, and its answer for the debug object.
    fn read<T>(
        &self,
        sent: Result<JsonReply, CallFailure>,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> (Result<T, Failure>, Option<String>) {
        let reply = match sent {
            Ok(reply) => reply,
            Err(failure) => return (Err((JudgeOutcome::Error, failure.why)), None),
        };
        let raw = Some(self.excerpt(&reply.body));
        if !reply.status.is_success() {
            return (Err((JudgeOutcome::Error, self.refused(&reply))), raw);
        }
        let parsed = parse(&reply.body).map_err(|why| (JudgeOutcome::ParseError, why));
        (parsed, raw)
    }

    /// Why an error status is a failure, with what the server said (keys hidden).
    fn refused(&self, reply: &JsonReply) -> String {
        let hint = match reply.status.as_u16() {
            404 => format!(
                " (check the judge's `base_url`: {} posts to base_url + `{}`)",
                self.format.name(),
                self.format.path()
            ),
            _ => String::new(),
        };
        format!(
            "the model server answered status {}: {}{hint}",
            reply.status.as_u16(),
            self.call.redact(&snippet(&reply.body))
        )
    }

    /// An answer for the debug object: keys hidden first, then cut to [`RAW_LIMIT`], so no
    /// part of a key survives the cut.
    fn excerpt(&self, body: &[u8]) -> String {
        let text = self.call.redact(&String::from_utf8_lossy(body));
        let mut end = text.len().min(RAW_LIMIT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        match text.len() - end {
            0 => text,
            more => format!("{}[... {more} more bytes]", &text[..end]),
        }
    }
}

/// The conversation as one rerank query: a `role: text` line (or paragraph) per message.
fn query_text(conversation: &[TemplateMessage]) -> String {
    let lines: Vec<String> = conversation
        .iter()
        .map(|m| format!("{}: {}", m.role, m.text))
        .collect();
    lines.join("\n")
}

/// One `/pooling` call: the reward and usage, or why not; and its answer.
type Pooled = (Result<(f64, Usage), Failure>, Option<String>);

/// The per-candidate `/pooling` calls as one scoring: every candidate scored, or every
/// failure listed. An unanswered call makes it an `error`, else unreadable answers a
/// `parse_error`.
fn gather(results: impl Iterator<Item = (usize, Pooled)>) -> Scoring {
    let mut scoring = Scoring {
        scores: Ok(Vec::new()),
        raw: Vec::new(),
        usage: Usage::default(),
    };
    let mut failures = Vec::new();
    let mut outcome = JudgeOutcome::ParseError;
    let mut scores = Vec::new();
    for (index, (result, raw)) in results {
        scoring.raw.extend(raw);
        match result {
            Ok((score, usage)) => {
                scoring.usage.add(&usage);
                scores.push(score);
            }
            Err((failed, why)) => {
                if failed == JudgeOutcome::Error {
                    outcome = JudgeOutcome::Error;
                }
                failures.push(format!("candidate #{index}: {why}"));
            }
        }
    }
    scoring.scores = if failures.is_empty() {
        Ok(scores)
    } else {
        Err((outcome, failures.join("; ")))
    };
    scoring
}

/// Ranks by raw score, best first, ties to the earlier generated candidate; `order` holds
/// the generation index of each score's candidate.
fn verdict_from(format: Format, order: &[usize], scoring: Scoring) -> Verdict {
    let mut verdict = match scoring.scores {
        Err((outcome, why)) => {
            Verdict::failed(outcome, format!("reward model ({}): {why}", format.name()))
        }
        Ok(raw) => ranked(format, order, &raw),
    };
    verdict.usage = scoring.usage;
    verdict.raw = scoring.raw;
    verdict.detail.insert("format".into(), format.name().into());
    verdict
}

fn ranked(format: Format, order: &[usize], raw: &[f64]) -> Verdict {
    let mut pairs: Vec<(usize, f64)> = order.iter().copied().zip(raw.iter().copied()).collect();
    // Scores are finite here, so every pair compares.
    pairs.sort_by(|a, b| {
        let by_score = b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal);
        by_score.then(a.0.cmp(&b.0))
    });
    let mut verdict = Verdict::empty(JudgeOutcome::Ok);
    verdict.ranking = pairs.iter().map(|&(index, _)| index).collect();
    verdict.scores = pairs
        .iter()
        .map(|&(index, score)| (index, format.normalise(score)))
        .collect();
    verdict.fully_ranked = true;
    let rewards = order.iter().zip(raw).map(|(index, reward)| {
        json!({"candidate": index, "reward": reward, "score": format.normalise(*reward)})
    });
    verdict
        .detail
        .insert("reward_scores".into(), rewards.collect());
    verdict
}

/// TEI's `[{"index", "score"}]`.
#[derive(Deserialize)]
struct TeiRank {
    index: usize,
    score: Option<f64>,
}

/// Cohere's `{"results": [{"index", "relevance_score"}]}`; other fields are skipped.
#[derive(Deserialize)]
struct CohereAnswer {
    results: Vec<CohereResult>,
}

#[derive(Deserialize)]
struct CohereResult {
    index: usize,
    relevance_score: Option<f64>,
}

/// A rerank answer as one raw score per text sent, in the order sent.
fn read_rerank(format: Format, body: &[u8], count: usize) -> Result<Vec<f64>, String> {
    let entries: Vec<(usize, Option<f64>)> = match format {
        Format::CohereRerank => serde_json::from_slice::<CohereAnswer>(body)
            .map_err(|e| {
                format!(
                    "the answer is not {{\"results\": [{{\"index\", \"relevance_score\"}}]}}: {e}"
                )
            })?
            .results
            .into_iter()
            .map(|r| (r.index, r.relevance_score))
            .collect(),
        _ => serde_json::from_slice::<Vec<TeiRank>>(body)
            .map_err(|e| format!("the answer is not a list of {{\"index\", \"score\"}}: {e}"))?
            .into_iter()
            .map(|r| (r.index, r.score))
            .collect(),
    };
    by_index(&entries, count)
}

/// `(index, score)` entries as one score per index `0..count`: each exactly once, finite.
fn by_index(entries: &[(usize, Option<f64>)], count: usize) -> Result<Vec<f64>, String> {
    let mut scores: Vec<Option<f64>> = vec![None; count];
    for &(index, score) in entries {
        let Some(slot) = scores.get_mut(index) else {
            return Err(format!(
                "index {index} is out of range: {count} texts were sent"
            ));
        };
        if slot.is_some() {
            return Err(format!("index {index} is scored twice"));
        }
        let score = score.filter(|s| s.is_finite());
        *slot = Some(score.ok_or_else(|| format!("index {index} has no finite score"))?);
    }
    let missing: Vec<String> = (0..count)
        .filter(|&i| scores[i].is_none())
        .map(|i| i.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} of {count} texts were scored; none for index {}",
            count - missing.len(),
            missing.join(", ")
        ));
    }
    Ok(scores.into_iter().flatten().collect())
}

/// vLLM's `{"data": [{"index", "data"}], "usage"}`; other fields are skipped.
#[derive(Deserialize)]
struct PoolingAnswer {
    data: Vec<PoolingItem>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct PoolingItem {
    data: Value,
}

/// A `/pooling` answer for one input as its reward and usage.
fn read_pooling(body: &[u8]) -> Result<(f64, Usage), String> {
    let answer: PoolingAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not {{\"data\": [{{\"index\", \"data\"}}]}}: {e}"))?;
    let [item] = answer.data.as_slice() else {
        return Err(format!(
            "the answer has {} outputs in `data` for the one input sent",
            answer.data.len()
        ));
    };
    let score = last_number(&item.data).filter(|s| s.is_finite());
    let score = score.ok_or_else(|| {
        let shown = snippet(item.data.to_string().as_bytes());
        format!("`data[0].data` holds no finite number: {shown}")
    })?;
    Ok((score, answer.usage.unwrap_or_default()))
}

/// The reward in a pooled output: the number, or the last element of a list, looked into
/// again while it is a list.
fn last_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::Array(items) => last_number(items.last()?),
        _ => None,
    }
}

impl Judge for RewardModel {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        self.decide(request).boxed()
    }

    fn fingerprint(&self) -> String {
        json!([
            STRATEGY.name,
            self.format.name(),
            self.call.fingerprint(),
            self.max_prompt_bytes
        ])
        .to_string()
    }

    fn describe(&self) -> String {
        format!("format {}", self.format.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::{check_judges, Secrets};

    fn scoring(scores: Result<Vec<f64>, Failure>) -> Scoring {
        Scoring {
            scores,
            raw: vec!["answer".into()],
            usage: Usage::default(),
        }
    }

    #[test]
    fn the_highest_raw_score_wins_and_ties_go_to_generation_order() {
        let verdict = verdict_from(
            Format::TeiRerank,
            &[0, 2, 3],
            scoring(Ok(vec![1.5, 4.0, 1.5])),
        );
        assert_eq!(verdict.ranking, vec![2, 0, 3]);
        assert!(verdict.fully_ranked);
        assert_eq!(verdict.outcome, JudgeOutcome::Ok);
        let (best, score) = verdict.scores[0];
        assert_eq!(best, 2);
        assert!((score - 1.0 / (1.0 + (-4.0f64).exp())).abs() < 1e-12);
        assert_eq!(verdict.detail["reward_scores"][1]["reward"], 4.0);
        assert_eq!(verdict.detail["format"], "tei_rerank");
        assert_eq!(verdict.raw, vec!["answer"]);
    }

    #[test]
    fn scores_are_normalised_to_0_1_per_format() {
        for raw in [-1e300, -3.0, 0.0, 2.5, 1e300] {
            let score = Format::VllmReward.normalise(raw);
            assert!((0.0..=1.0).contains(&score), "{raw}: {score}");
        }
        assert_eq!(Format::TeiRerank.normalise(0.0), 0.5);
        assert_eq!(Format::CohereRerank.normalise(0.73), 0.73);
        assert_eq!(Format::CohereRerank.normalise(7.0), 1.0);
    }

    #[test]
    fn a_failure_names_the_format_and_keeps_what_was_answered() {
        let failed = scoring(Err((JudgeOutcome::ParseError, "index 7 is out".into())));
        let verdict = verdict_from(Format::CohereRerank, &[0, 1], failed);
        assert_eq!(verdict.outcome, JudgeOutcome::ParseError);
        assert!(verdict.winner().is_none());
        let why = verdict.failure.unwrap();
        assert!(
            why.starts_with("reward model (cohere_rerank): index 7"),
            "{why}"
        );
        assert_eq!(verdict.raw.len(), 1);
    }

    #[test]
    fn rerank_answers_map_back_by_index() {
        let tei = br#"[{"index": 1, "score": 3.5}, {"index": 0, "score": -1.25, "text": null}]"#;
        assert_eq!(read_rerank(Format::TeiRerank, tei, 2), Ok(vec![-1.25, 3.5]));
        let cohere = br#"{"id": "x", "results": [{"index": 1, "relevance_score": 0.9},
            {"index": 0, "relevance_score": 0.1}], "meta": {"billed_units": {"search_units": 1}}}"#;
        assert_eq!(
            read_rerank(Format::CohereRerank, cohere, 2),
            Ok(vec![0.1, 0.9])
        );
    }

    #[test]
    fn unusable_rerank_answers_say_why() {
        let cases: [(&[u8], &str); 8] = [
            (
                br#"[{"index": 0, "score": 1}]"#,
                "1 of 2 texts were scored; none for index 1",
            ),
            (
                br#"[{"index": 0, "score": 1}, {"index": 2, "score": 1}]"#,
                "index 2 is out of range",
            ),
            (
                br#"[{"index": 0, "score": 1}, {"index": 0, "score": 2}]"#,
                "index 0 is scored twice",
            ),
            (
                br#"[{"index": 0, "score": null}, {"index": 1, "score": 1}]"#,
                "index 0 has no finite score",
            ),
            (
                br#"[{"index": 0, "score": NaN}, {"index": 1, "score": 1}]"#,
                "not a list",
            ),
            (
                br#"[{"index": 0, "score": 1e999}, {"index": 1, "score": 1}]"#,
                "not a list",
            ),
            (br#"[{"index": -1, "score": 1}]"#, "not a list"),
            (br#"{"results": []}"#, "not a list"),
        ];
        for (body, why) in cases {
            let err = read_rerank(Format::TeiRerank, body, 2).unwrap_err();
            assert!(
                err.contains(why),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
        let err = read_rerank(Format::CohereRerank, b"[]", 2).unwrap_err();
        assert!(err.contains("\"results\""), "{err}");
    }

    #[test]
    fn pooled_rewards_are_the_last_number_and_carry_usage() {
        let body = br#"{"id": "pool-1", "object": "list", "model": "rm",
            "data": [{"index": 0, "object": "pooling", "data": [[0.5], [0.25, 2.75]]}],
            "usage": {"prompt_tokens": 12, "total_tokens": 12, "completion_tokens": 0}}"#;
        let (score, usage) = read_pooling(body).unwrap();
        assert_eq!(score, 2.75);
        assert_eq!(usage.prompt_tokens, 12);
        let plain = br#"{"data": [{"index": 0, "data": -0.5}]}"#;
        assert_eq!(read_pooling(plain).unwrap().0, -0.5);
        let cases: [(&[u8], &str); 5] = [
            (br#"{"data": []}"#, "0 outputs"),
            (
                br#"{"data": [{"index": 0, "data": []}]}"#,
                "no finite number",
            ),
            (
                br#"{"data": [{"index": 0, "data": ["x"]}]}"#,
                "no finite number",
            ),
            (
                br#"{"data": [{"index": 0, "data": null}]}"#,
                "no finite number",
            ),
            (br#"{"object": "error"}"#, "not {\"data\""),
        ];
        for (body, why) in cases {
            let err = read_pooling(body).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn the_query_is_the_conversation_as_role_lines() {
        let conversation =
            [("system", "Be brief."), ("user", "Why?\nReally?")].map(|(r, t)| TemplateMessage {
                role: r.into(),
                text: t.into(),
            });
        assert_eq!(
            query_text(&conversation),
            "system: Be brief.\nuser: Why?\nReally?"
        );
    }

    #[test]
    fn failed_pooling_calls_fail_the_verdict_and_say_which() {
        let ok = (Ok((1.0, Usage::default())), Some("{}".to_string()));
        let parse = (
            Err((JudgeOutcome::ParseError, "bad".into())),
            Some("x".into()),
        );
        let down = (Err((JudgeOutcome::Error, "timeout".into())), None);
        let scoring = gather([(0, ok.clone()), (3, parse.clone())].into_iter());
        let (outcome, why) = scoring.scores.unwrap_err();
        assert_eq!(
            (outcome, why.as_str()),
            (JudgeOutcome::ParseError, "candidate #3: bad")
        );
        assert_eq!(scoring.raw.len(), 2);
        let scoring = gather([(0, parse), (1, down), (2, ok)].into_iter());
        assert_eq!(scoring.scores.unwrap_err().0, JudgeOutcome::Error);
    }

    fn build(toml: &str) -> Result<crate::judge::Judges, String> {
        let config = Config::parse(toml).map_err(|e| e.0)?;
        check_judges(&config, &Secrets::default())
    }

    #[test]
    fn an_unknown_format_names_the_key_and_the_formats() {
        let err = build("[judges.rm]\nstrategy = \"reward_model\"\nformat = \"tei\"\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("`judges.rm.format`"), "{err}");
        assert!(
            err.contains("tei_rerank, cohere_rerank, vllm_reward"),
            "{err}"
        );
        let err = build("[judge]\nformat = \"x\"\n").err().unwrap_or_default();
        assert!(err.contains("`judge.format`"), "{err}");
    }

    #[test]
    fn describe_and_fingerprint_follow_format_model_and_endpoint() {
        let judge = |table: &str| {
            let toml = format!("[judges.rm]\nstrategy = \"reward_model\"\n{table}");
            let judges = build(&toml).unwrap();
            let line = judges.describe().into_iter().find(|l| l.starts_with("rm:"));
            let judge = judges.get("rm").unwrap().clone();
            (line.unwrap_or_default(), judge.fingerprint.clone())
        };
        let (line, base) = judge("");
        assert!(line.contains("format tei_rerank"), "{line}");
        assert!(line.contains("endpoint the upstream"), "{line}");
        for other in [
            "format = \"vllm_reward\"\n",
            "model = \"rm-8b\"\n",
            "base_url = \"http://rm.internal:8080\"\n",
            "max_prompt_bytes = 1000\n",
        ] {
            assert_ne!(judge(other).1, base, "{other}");
        }
        assert_eq!(
            judge("timeout = \"5s\"\n").1,
            base,
            "a deadline picks nothing"
        );
    }

    #[test]
    fn a_reward_model_takes_no_prompt_settings() {
        let err = build("[judges.rm]\nstrategy = \"reward_model\"\nrubrics = \"code\"\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("`judges.rm.rubrics`"), "{err}");
    }

    mod properties {
        //! Whatever a reward endpoint answers, reading it never panics, a read rerank answer
        //! has one finite score per text sent, and every raw score normalises into 0..=1.
        use super::*;
        use proptest::prelude::*;
        // `super::Strategy` is the judge registry's; the trait is proptest's.
        use proptest::strategy::Strategy as Generator;

        fn answer() -> impl Generator<Value = Vec<u8>> {
            let entry = (0usize..5, prop::option::of(-1e6f64..1e6), any::<bool>());
            let entries = prop::collection::vec(entry, 0..6);
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                entries.prop_map(|entries| {
                    let list: Vec<Value> = entries
                        .iter()
                        .map(|&(index, score, cohere)| match cohere {
                            true => json!({"index": index, "relevance_score": score}),
                            false => json!({"index": index, "score": score}),
                        })
                        .collect();
                    let body = match entries.first().is_some_and(|e| e.2) {
                        true => json!({"results": list}),
                        false => json!(list),
                    };
                    body.to_string().into_bytes()
                }),
                (prop::collection::vec(-1e6f64..1e6, 0..3), 0usize..3).prop_map(|(xs, n)| {
                    let data = match n {
                        0 => json!(xs.first()),
                        1 => json!(xs),
                        _ => json!([xs]),
                    };
                    json!({"data": [{"index": 0, "data": data}]})
                        .to_string()
                        .into_bytes()
                }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 256, failure_persistence: None, ..ProptestConfig::default()
            })]

            #[test]
            fn reward_answers_read_or_say_why(body in answer(), count in 0usize..5) {
                for format in FORMATS {
                    if let Ok(scores) = read_rerank(format, &body, count) {
                        prop_assert_eq!(scores.len(), count);
                        prop_assert!(scores.iter().all(|s| s.is_finite()));
                        for score in scores {
                            let normalised = format.normalise(score);
                            prop_assert!((0.0..=1.0).contains(&normalised), "{}", normalised);
                        }
                    }
                }
                if let Ok((score, _)) = read_pooling(&body) {
                    prop_assert!(score.is_finite());
                    let normalised = Format::VllmReward.normalise(score);
                    prop_assert!((0.0..=1.0).contains(&normalised));
                }
            }
        }
    }
}
