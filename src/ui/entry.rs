//! One decision as the inspector keeps and shows it: the decision log's record (the same
//! fields, made by the same code) plus what a person looking at it wants beside it: each
//! candidate's score as the response header printed it, its rank and status, the rubric, and,
//! only when `ui.include_content` says so, the conversation, the candidates' texts and the
//! judge's raw verdict.
//!
//! Texts are bounded as they are copied in (see [`MAX_TEXT_BYTES`], [`MAX_ENTRY_TEXT_BYTES`]),
//! so that the ring's byte bound is a bound on memory and one huge answer cannot push out
//! every other decision.

use serde::Serialize;

use crate::decisions::{Answered, Decision};
use crate::openai::Usage;
use crate::respond;

/// Longest text kept of one string: a candidate's answer, a message, one raw judge answer.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;

/// Most text kept for one decision, every string together.
pub const MAX_ENTRY_TEXT_BYTES: usize = 1024 * 1024;

/// What an entry weighs besides its texts (ids, numbers, names), for the ring's byte bound.
const FIXED_BYTES: usize = 512;
const FIXED_BYTES_PER_CANDIDATE: usize = 160;

/// The line of the decision list: what the page shows before a decision is opened, and what
/// the live view sends for each new one.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Assigned by the ring, increasing: newer decisions have larger ids.
    pub id: u64,
    pub time: String,
    pub request_id: Option<String>,
    pub model: String,
    pub n: u32,
    pub judge: Option<String>,
    pub strategy: Option<String>,
    /// The rubric preset the answer was judged by: the request's `x-best-of-n-rubric`, else
    /// the judge's own; `None` for judges that read no rubric (panels, reward models, …).
    pub rubric: Option<String>,
    pub mode: String,
    pub winner: Option<usize>,
    pub fallback: Option<String>,
    pub latency_ms: f64,
    pub usage: Usage,
    /// The winner's score as `x-best-of-n-scores` printed it, `-` when it has none.
    pub winner_score: String,
}

/// One candidate, as the detail view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateView {
    pub index: usize,
    pub model: String,
    /// As the decision log says it: `ok`, `disqualified`, `error`, `timeout`, `cancelled`.
    pub status: String,
    /// The same, in four words: `ok`, `failed`, `disqualified`, `cancelled`.
    pub outcome: &'static str,
    pub score: Option<f64>,
    /// The score exactly as the `x-best-of-n-scores` header printed it, `-` for none.
    pub score_text: String,
    /// 1-based place in the ranking; `None` for a candidate that was not ranked (failed).
    pub rank: Option<usize>,
    pub winner: bool,
    pub latency_ms: f64,
    /// The candidate call's own tokens, when it answered.
    pub tokens: Option<u64>,
    /// Its answer; only with `ui.include_content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One message of the conversation, as the judge read it.
#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub role: String,
    pub text: String,
}

/// What the judge said.
#[derive(Debug, Clone, Serialize)]
pub struct VerdictView {
    /// `ok`, `parse_error`, `error` or `undecided`.
    pub outcome: &'static str,
    /// Candidate indices in the order the judge was shown them.
    pub presentation: Vec<usize>,
    pub seed: u64,
    pub judge_tokens: u64,
    /// The judge model's answers, word for word; only with `ui.include_content` (a verdict
    /// may quote the candidates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Vec<String>>,
    /// Why the judge failed, when it did; only with `ui.include_content` (an error may quote
    /// what the judge model answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A kept decision, everything the detail view shows.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    #[serde(flatten)]
    pub summary: Summary,
    pub ranking: Vec<usize>,
    /// False when the judge only decided the winner; the rest follow in generation order.
    pub fully_ranked: bool,
    /// True when the texts were kept (`ui.include_content`).
    pub content: bool,
    pub candidates: Vec<CandidateView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Vec<Turn>>,
    /// `None` when no judge was asked: a single eligible candidate, or the fuser wrote it.
    pub verdict: Option<VerdictView>,
    /// What the entry weighs in the ring's byte bound.
    #[serde(skip)]
    pub weight: usize,
}

impl Entry {
    /// The entry for an answer; `rubric` as the inspector resolved it for the request's judge.
    /// The id is 0 until the ring assigns one.
    pub fn from_answer(
        answered: &Answered<'_>,
        rubric: Option<String>,
        include_content: bool,
    ) -> Entry {
        // The log's own record, without texts: the fields mean the same in both places.
        let decision = Decision::from_answer(answered, false);
        let mut budget = Budget::new(include_content);
        let selection = answered.selection;
        let rank_of = |index| {
            let ranking = selection.map(|s| s.ranking.as_slice()).unwrap_or_default();
            ranking.iter().position(|&i| i == index).map(|p| p + 1)
        };
        let candidates: Vec<CandidateView> = decision
            .candidates
            .iter()
            .zip(answered.candidates)
            .zip(&decision.scores)
            .map(|((record, candidate), score)| {
                let answer = candidate.answer();
                let text = answer
                    .and_then(|a| a.completion.first_choice())
                    .map(|choice| {
                        choice
                            .content()
                            .filter(|t| !t.is_empty())
                            .map_or_else(|| choice.text_for_judge(), str::to_string)
                    });
                CandidateView {
                    index: record.index,
                    model: record.model.clone(),
                    outcome: outcome_of(&record.status),
                    status: record.status.clone(),
                    score: *score,
                    score_text: score.map_or_else(|| "-".to_string(), respond::format_score),
                    rank: rank_of(record.index),
                    winner: decision.winner == Some(record.index),
                    latency_ms: millis(candidate.latency),
                    tokens: answer
                        .and_then(|a| a.completion.usage.as_ref())
                        .map(|u| u.total_tokens),
                    text: text.and_then(|t| budget.take(&t)),
                }
            })
            .collect();
        let verdict = selection.and_then(|s| s.verdict.as_ref()).map(|v| {
            let raw = budget
                .keeps()
                .then(|| v.raw.iter().filter_map(|r| budget.take(r)).collect());
            VerdictView {
                outcome: v.outcome.as_str(),
                presentation: v.presentation.clone(),
                seed: v.seed,
                judge_tokens: v.usage.total_tokens,
                raw,
                failure: v.failure.as_deref().and_then(|f| budget.take(f)),
            }
        });
        let conversation = budget.keeps().then(|| {
            // Newest message first, so a long history loses its beginning, not the question.
            let mut turns: Vec<Turn> = answered
                .request
                .messages
                .iter()
                .rev()
                .map(|m| Turn {
                    role: m.role.clone(),
                    text: budget.take(&m.text_for_judge()).unwrap_or_default(),
                })
                .collect();
            turns.reverse();
            turns
        });
        let winner_score = decision
            .winner
            .and_then(|w| candidates.iter().find(|c| c.index == w))
            .map_or_else(|| "-".to_string(), |c| c.score_text.clone());
        let weight = FIXED_BYTES + FIXED_BYTES_PER_CANDIDATE * candidates.len() + budget.used;
        Entry {
            summary: Summary {
                id: 0,
                time: decision.time,
                request_id: decision.request_id,
                model: decision.model,
                n: decision.n,
                judge: decision.judge,
                strategy: decision.strategy,
                rubric,
                mode: decision.mode,
                winner: decision.winner,
                fallback: decision.fallback,
                latency_ms: decision.latency_ms,
                usage: decision.usage,
                winner_score,
            },
            ranking: decision.ranking,
            fully_ranked: selection.is_some_and(|s| s.fully_ranked),
            content: include_content,
            candidates,
            conversation,
            verdict,
            weight,
        }
    }
}

/// The four outcomes the page colours candidates by.
fn outcome_of(status: &str) -> &'static str {
    match status {
        "ok" => "ok",
        "disqualified" => "disqualified",
        "cancelled" => "cancelled",
        _ => "failed",
    }
}

fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// The text one entry may still keep; nothing at all without `ui.include_content`.
struct Budget {
    keeps: bool,
    left: usize,
    /// Bytes kept so far, markers included: the entry's weight in text.
    used: usize,
}

impl Budget {
    fn new(keeps: bool) -> Budget {
        Budget {
            keeps,
            left: MAX_ENTRY_TEXT_BYTES,
            used: 0,
        }
    }

    fn keeps(&self) -> bool {
        self.keeps
    }

    /// `text`, cut to what is left (and to [`MAX_TEXT_BYTES`]); `None` without content.
    fn take(&mut self, text: &str) -> Option<String> {
        if !self.keeps {
            return None;
        }
        let kept = cut(text, MAX_TEXT_BYTES.min(self.left));
        self.left = self.left.saturating_sub(kept.len());
        self.used += kept.len();
        Some(kept)
    }
}

/// `text` when it fits in `cap` bytes; otherwise its head, on a character boundary, and a
/// marker saying how much was left out.
pub fn cut(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_string();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let left_out = text.len() - end;
    format!("{}… [{left_out} more bytes not kept]", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_short_texts_and_marks_long_ones_on_a_char_boundary() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(10);
        let kept = cut(&long, 5);
        assert!(kept.starts_with("éé…"), "{kept}");
        assert!(kept.ends_with("[16 more bytes not kept]"), "{kept}");
    }

    #[test]
    fn a_budget_without_content_keeps_nothing_and_one_with_content_runs_out() {
        let mut none = Budget::new(false);
        assert_eq!(none.take("text"), None);
        let mut budget = Budget::new(true);
        let big = "x".repeat(MAX_TEXT_BYTES * 2);
        let mut taken = 0;
        for _ in 0..(MAX_ENTRY_TEXT_BYTES / MAX_TEXT_BYTES + 5) {
            taken += budget.take(&big).map_or(0, |t| t.len());
        }
        assert_eq!(budget.left, 0);
        // Only the markers go past the bound.
        assert!(taken < MAX_ENTRY_TEXT_BYTES + 64 * 40, "{taken}");
    }
}
