//! The pairwise judge: candidates meet two at a time, each pair judged in both orders, and a
//! tournament turns the comparisons into a ranking.
//!
//! A comparison shows `<candidate id="A">` and `<candidate id="B">` and asks for
//! `<winner>A|B|tie</winner>`. Every pair is judged twice, swapped, concurrently: a judge that
//! prefers whatever comes first then contradicts itself, and two verdicts that disagree make a
//! tie, so position bias cancels instead of choosing. When one order fails, the other decides.
//!
//! Up to `round_robin_max` candidates play a round robin (every pair); they are ranked by
//! Copeland score (wins minus losses), then wins, then the seeded presentation order. More
//! candidates play a knockout bracket in presentation order (each match still in both orders),
//! where a tied or failed match sends the candidate placed earlier in the bracket through.
//! When no comparison had a winner at all (a judge that always names the same position), the
//! judge is undecided and the fallback chooses, saying so.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};

use super::llm::{Decision, LlmPrompt};
use super::protocol::{self, TemplateCandidate, Winner};
use super::{Blueprint, Judge, JudgeOutcome, JudgeRequest, Shape, Strategy, Verdict};
use crate::concurrently;
use crate::config::ConfigError;
use crate::openai::Usage;

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register(
    "pairwise",
    Shape::Prompt { template: TEMPLATE },
    Pairwise::build,
);

/// The built-in pairwise prompt; `candidates` holds two, ids `A` and `B`.
const TEMPLATE: &str = protocol::judge_template!(
    "You are an impartial judge. Two assistants answered the same conversation; decide which \
     answer serves the user better.",
    "the answers",
    "The two answers:",
    "The order in which the answers are shown means nothing, and neither does length on its \
     own. Think briefly, then give your verdict as <winner>A</winner> or <winner>B</winner>, or \
     <winner>tie</winner> when neither is better."
);

pub struct Pairwise {
    prompt: LlmPrompt,
    shuffle: bool,
    round_robin_max: usize,
}

/// One judge call of a comparison.
struct Call {
    winner: Result<Winner, (JudgeOutcome, String)>,
    raw: Option<String>,
    usage: Usage,
}

/// One pair, judged in both orders. Candidates are positions in the request's list.
struct Comparison {
    /// Shown as A in the first call, as B in the second.
    first: usize,
    second: usize,
    calls: [Call; 2],
    /// The knockout round (0 first), `None` in a round robin.
    round: Option<usize>,
}

/// What a comparison decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Won(usize),
    Tie,
    Failed,
}

impl Comparison {
    fn outcome(&self) -> Outcome {
        // Some(Some(p)): p won; Some(None): a tie; None: the call failed.
        let read = |call: &Call, a: usize, b: usize| match call.winner {
            Ok(Winner::A) => Some(Some(a)),
            Ok(Winner::B) => Some(Some(b)),
            Ok(Winner::Tie) => Some(None),
            Err(_) => None,
        };
        let one = read(&self.calls[0], self.first, self.second);
        let two = read(&self.calls[1], self.second, self.first);
        match (one, two) {
            (Some(x), Some(y)) if x != y => Outcome::Tie,
            (Some(x), _) | (None, Some(x)) => x.map_or(Outcome::Tie, Outcome::Won),
            (None, None) => Outcome::Failed,
        }
    }
}

impl Pairwise {
    fn build(blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        let shuffle = blueprint.config.shuffle;
        let round_robin_max = blueprint.config.round_robin_max;
        Ok(Arc::new(Pairwise {
            prompt: LlmPrompt::new(blueprint, TEMPLATE, &["A", "B"])?,
            shuffle,
            round_robin_max,
        }))
    }

    async fn decide(&self, request: JudgeRequest<'_>) -> Verdict {
        let started = Instant::now();
        let count = request.candidates.len();
        let order = protocol::presentation_order(count, request.seed, self.shuffle);
        let decision = self.prompt.decision(&request);
        let (comparisons, places) = if count <= self.round_robin_max {
            let comparisons = self.round_robin(&decision, &order).await;
            let places = round_robin_places(&comparisons, &order);
            (comparisons, places)
        } else {
            self.knockout(&decision, &order).await
        };
        let to_index = |p: usize| request.candidates[p].index;
        let mut verdict = verdict_from(&comparisons, &places, count, to_index);
        verdict.presentation = order.iter().map(|&p| to_index(p)).collect();
        // Both tournaments order every candidate: by points, or by the round it fell in.
        verdict.fully_ranked = verdict.winner().is_some();
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        let format = if count <= self.round_robin_max {
            "round_robin"
        } else {
            "knockout"
        };
        verdict.detail.insert("tournament".into(), json!(format));
        verdict
    }

    /// Every pair, all at once; the candidate placed earlier is shown first.
    async fn round_robin(&self, decision: &Decision<'_>, order: &[usize]) -> Vec<Comparison> {
        // Collected first: a lazy iterator of borrowing closures held across the await would
        // not be `Send`.
        let pairs: Vec<(usize, usize)> = order
            .iter()
            .enumerate()
            .flat_map(|(i, &a)| order[i + 1..].iter().map(move |&b| (a, b)))
            .collect();
        let comparisons = pairs
            .into_iter()
            .map(|(a, b)| self.compare(decision, a, b, None));
        concurrently::all(comparisons).await
    }

    /// A bracket in presentation order; returns the comparisons and the final places.
    async fn knockout(
        &self,
        decision: &Decision<'_>,
        order: &[usize],
    ) -> (Vec<Comparison>, Vec<usize>) {
        let mut alive = order.to_vec();
        // (round eliminated, bracket place) of every candidate out.
        let mut out: Vec<(usize, usize, usize)> = Vec::new();
        let mut comparisons = Vec::new();
        let mut round = 0;
        while alive.len() > 1 {
            let matches = alive.chunks(2).filter(|m| m.len() == 2);
            let played =
                concurrently::all(matches.map(|m| self.compare(decision, m[0], m[1], Some(round))));
            let played = played.await;
            let mut next = Vec::with_capacity(alive.len() / 2 + 1);
            for pair in alive.chunks(2) {
                let [a, b] = pair else {
                    next.push(pair[0]); // a bye
                    continue;
                };
                let outcome = played
                    .iter()
                    .find(|c| c.first == *a)
                    .map(Comparison::outcome);
                let winner = match outcome {
                    Some(Outcome::Won(p)) => p,
                    _ => *a,
                };
                let loser = if winner == *a { *b } else { *a };
                let place = order.iter().position(|&p| p == loser).unwrap_or(0);
                out.push((round, place, loser));
                next.push(winner);
            }
            comparisons.extend(played);
            alive = next;
            round += 1;
        }
        // Later rounds first; within a round, the bracket order.
        out.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        let mut places = alive;
        places.extend(out.into_iter().map(|(_, _, p)| p));
        (comparisons, places)
    }

    /// Judges `a` against `b` in both orders, concurrently.
    async fn compare(
        &self,
        decision: &Decision<'_>,
        a: usize,
        b: usize,
        round: Option<usize>,
    ) -> Comparison {
        let (one, two) = futures_util::join!(self.call(decision, a, b), self.call(decision, b, a));
        Comparison {
            first: a,
            second: b,
            calls: [one, two],
            round,
        }
    }

    /// One call showing `a` as A and `b` as B.
    async fn call(&self, decision: &Decision<'_>, a: usize, b: usize) -> Call {
        let shown = |id: &str, p: usize| TemplateCandidate {
            id: id.into(),
            text: decision.request.candidates[p].text.clone(),
        };
        match self
            .prompt
            .ask(decision, vec![shown("A", a), shown("B", b)])
            .await
        {
            Ok((text, usage)) => Call {
                winner: protocol::parse_winner(&text).map_err(|w| (JudgeOutcome::ParseError, w)),
                raw: Some(text),
                usage,
            },
            Err(failure) => Call {
                winner: Err((JudgeOutcome::Error, failure.why)),
                raw: None,
                usage: failure.usage,
            },
        }
    }
}

/// Points of one candidate over its decided comparisons.
#[derive(Default, Clone, Copy)]
struct Tally {
    wins: u32,
    losses: u32,
    ties: u32,
}

impl Tally {
    fn copeland(self) -> i64 {
        i64::from(self.wins) - i64::from(self.losses)
    }

    /// Wins plus half the ties, over decided comparisons; `None` when none was decided.
    fn score(self) -> Option<f64> {
        let played = self.wins + self.losses + self.ties;
        (played > 0)
            .then(|| (f64::from(self.wins) + 0.5 * f64::from(self.ties)) / f64::from(played))
    }
}

fn tallies(comparisons: &[Comparison], count: usize) -> Vec<Tally> {
    let mut tallies = vec![Tally::default(); count];
    for comparison in comparisons {
        let (a, b) = (comparison.first, comparison.second);
        match comparison.outcome() {
            Outcome::Won(w) => {
                let l = if w == a { b } else { a };
                tallies[w].wins += 1;
                tallies[l].losses += 1;
            }
            Outcome::Tie => {
                tallies[a].ties += 1;
                tallies[b].ties += 1;
            }
            Outcome::Failed => {}
        }
    }
    tallies
}

/// Round-robin places: Copeland score, then wins, then presentation order.
fn round_robin_places(comparisons: &[Comparison], order: &[usize]) -> Vec<usize> {
    let tallies = tallies(comparisons, order.len());
    let mut places = order.to_vec();
    // `order` is already the presentation order, and the sort is stable.
    places.sort_by(|&x, &y| {
        let (x, y) = (tallies[x], tallies[y]);
        y.copeland().cmp(&x.copeland()).then(y.wins.cmp(&x.wins))
    });
    places
}

fn verdict_from(
    comparisons: &[Comparison],
    places: &[usize],
    count: usize,
    to_index: impl Fn(usize) -> usize,
) -> Verdict {
    let mut usage = Usage::default();
    let calls = comparisons.iter().flat_map(|c| c.calls.iter());
    calls.clone().for_each(|call| usage.add(&call.usage));
    let raw: Vec<String> = calls.clone().filter_map(|c| c.raw.clone()).collect();
    let decided = |c: &Comparison| matches!(c.outcome(), Outcome::Won(_));
    let mut verdict = if comparisons.iter().all(|c| c.outcome() == Outcome::Failed) {
        let outcome = JudgeOutcome::of_failure(!raw.is_empty());
        let why = calls
            .filter_map(|c| c.winner.as_ref().err())
            .map(|(_, why)| why.as_str())
            .next()
            .unwrap_or("no comparison was made");
        Verdict::failed(outcome, format!("no comparison was decided ({why})"))
    } else if !comparisons.iter().any(decided) {
        // A judge that always names the same position ends here: ranking by presentation
        // order would be a coin toss passed off as a verdict.
        Verdict::failed(
            JudgeOutcome::Undecided,
            "every comparison was a tie: the judge preferred no candidate in both orders".into(),
        )
    } else {
        let tallies = tallies(comparisons, count);
        let mut verdict = Verdict::empty(JudgeOutcome::Ok);
        verdict.ranking = places.iter().map(|&p| to_index(p)).collect();
        verdict.scores = (0..count)
            .filter_map(|p| Some((to_index(p), tallies[p].score()?)))
            .collect();
        verdict
    };
    verdict.usage = usage;
    verdict.raw = raw;
    let detail = comparisons.iter().map(|c| comparison_detail(c, &to_index));
    verdict
        .detail
        .insert("comparisons".into(), detail.collect());
    verdict
}

fn comparison_detail(comparison: &Comparison, to_index: &impl Fn(usize) -> usize) -> Value {
    let said = |call: &Call| match &call.winner {
        Ok(winner) => json!(winner.as_str()),
        Err((_, why)) => json!({"failure": why}),
    };
    let (outcome, winner) = match comparison.outcome() {
        Outcome::Won(p) => ("won", json!(to_index(p))),
        Outcome::Tie => ("tie", Value::Null),
        Outcome::Failed => ("failed", Value::Null),
    };
    json!({
        "a": to_index(comparison.first),
        "b": to_index(comparison.second),
        "round": comparison.round,
        "a_first": said(&comparison.calls[0]),
        "b_first": said(&comparison.calls[1]),
        "outcome": outcome,
        "winner": winner,
    })
}

impl Judge for Pairwise {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        self.decide(request).boxed()
    }

    fn fingerprint(&self) -> String {
        json!([
            STRATEGY.name,
            self.prompt.fingerprint(),
            self.shuffle,
            self.round_robin_max
        ])
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(winner: Option<Winner>) -> Call {
        Call {
            winner: winner.ok_or((JudgeOutcome::ParseError, "garbage".to_string())),
            raw: Some("text".into()),
            usage: Usage::default(),
        }
    }

    fn comparison(
        first: usize,
        second: usize,
        one: Option<Winner>,
        two: Option<Winner>,
    ) -> Comparison {
        Comparison {
            first,
            second,
            calls: [call(one), call(two)],
            round: None,
        }
    }

    #[test]
    fn both_orders_must_agree_or_it_is_a_tie() {
        use Winner::*;
        // First call shows 0 as A; the second shows 1 as A.
        assert_eq!(
            comparison(0, 1, Some(A), Some(B)).outcome(),
            Outcome::Won(0)
        );
        assert_eq!(
            comparison(0, 1, Some(B), Some(A)).outcome(),
            Outcome::Won(1)
        );
        // Always "A": pure position bias, cancelled.
        assert_eq!(comparison(0, 1, Some(A), Some(A)).outcome(), Outcome::Tie);
        assert_eq!(comparison(0, 1, Some(A), Some(Tie)).outcome(), Outcome::Tie);
        assert_eq!(comparison(0, 1, None, Some(A)).outcome(), Outcome::Won(1));
        assert_eq!(comparison(0, 1, None, None).outcome(), Outcome::Failed);
    }

    #[test]
    fn round_robin_ranks_by_copeland_then_wins_then_presentation() {
        use Winner::*;
        // 2 beats 0 and 1; 0 and 1 tie; presentation order 1, 0, 2.
        let comparisons = [
            comparison(1, 0, Some(A), Some(A)),
            comparison(1, 2, Some(B), Some(A)),
            comparison(0, 2, Some(B), Some(A)),
        ];
        let places = round_robin_places(&comparisons, &[1, 0, 2]);
        assert_eq!(places, vec![2, 1, 0]);
        let verdict = verdict_from(&comparisons, &places, 3, |p| p + 10);
        assert_eq!(verdict.ranking, vec![12, 11, 10]);
        assert!(verdict.scores.contains(&(12, 1.0)));
        assert!(verdict.scores.contains(&(10, 0.25)));
        assert_eq!(verdict.detail["comparisons"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn nothing_decided_is_a_failure() {
        let comparisons = [comparison(0, 1, None, None)];
        let verdict = verdict_from(&comparisons, &[0, 1], 2, |p| p);
        assert_eq!(verdict.outcome, JudgeOutcome::ParseError);
        assert!(verdict.winner().is_none());
    }
}
