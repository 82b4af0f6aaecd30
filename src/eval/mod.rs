//! `bon-proxy eval`: runs the judges the proxy is configured with over a preference data set
//! and reports how often each picks the better answer.
//!
//! The judges are built exactly as serving builds them ([`crate::state::check_judges`]) and
//! called directly, without a server: each item becomes a [`JudgeRequest`] whose candidates are
//! the item's answers. A pair is judged twice, once `[chosen, rejected]` and once `[rejected,
//! chosen]`, both with a seed under which the judge's presentation shuffle keeps the list
//! order, so the two runs differ only in which answer is shown first (what
//! `position_consistency` and `first_position_rate` measure). A listwise item is judged once,
//! shuffled by a seed derived from its position in the file. Eval data carries no
//! log-probabilities, so the `logprob` judge fails every decision, and says why in the table.
//!
//! [`data`] reads the input, [`report`] computes the statistics, [`progress`] shows the run.

pub mod data;
pub mod progress;
pub mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use http::HeaderMap;

use crate::config::Config;
use crate::judge::{protocol, JudgeOutcome, JudgeRequest, JudgedCandidate, NamedJudge};
use crate::state::{check_judges, Secrets};
use data::Item;
use progress::Progress;
use report::{Decision, Report};

/// The model a judge is told the client asked for, unless `--model` says otherwise; a judge
/// with its own `model` setting uses that, as in serving.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// What `bon-proxy eval` was asked to do.
pub struct EvalCommand {
    pub data: PathBuf,
    /// Judge names; empty means every judge the config defines, built-in ones included.
    pub judges: Vec<String>,
    pub concurrency: usize,
    pub limit: Option<usize>,
    pub report: Option<PathBuf>,
    pub model: String,
}

/// Runs the command: reads the data, judges it, prints the table, writes the report. An error
/// is a usage error (bad file, bad line, unknown judge), never a low score.
pub async fn run(config: &Config, command: &EvalCommand) -> Result<(), String> {
    let items = read_items(command)?;
    let judges = select_judges(config, &command.judges)?;
    let report = evaluate(&judges, &items, command).await;
    print!("{}", report::table(&report));
    if let Some(path) = &command.report {
        write_report(path, &report)?;
    }
    Ok(())
}

fn read_items(command: &EvalCommand) -> Result<Vec<Item>, String> {
    let path = command.data.display();
    let text = std::fs::read_to_string(&command.data)
        .map_err(|e| format!("cannot read --data {path}: {e}"))?;
    let mut items = data::parse(&text).map_err(|e| format!("{path}: {e}"))?;
    if let Some(limit) = command.limit {
        items.truncate(limit);
    }
    if items.is_empty() {
        return Err(format!("{path}: no items; give one JSON object a line"));
    }
    Ok(items)
}

/// The named judges, or every one when none is named.
fn select_judges(config: &Config, names: &[String]) -> Result<Vec<Arc<NamedJudge>>, String> {
    let judges = check_judges(config, &Secrets::from_env(config))?;
    if names.is_empty() {
        return Ok(judges
            .names()
            .iter()
            .filter_map(|n| judges.get(n).cloned())
            .collect());
    }
    names
        .iter()
        .map(|name| {
            judges.get(name).cloned().ok_or_else(|| {
                format!(
                    "--judge {name}: no such judge; judges: {}. Name one of these or add a \
                     [judges.{name}] table to the config",
                    judges.names().join(", ")
                )
            })
        })
        .collect()
}

/// One planned judge call: which judge, which item, in which presentation order.
struct Task {
    judge: usize,
    item: usize,
    /// `order[k]` is the item's candidate shown at list position `k`.
    order: Vec<usize>,
    seed: u64,
}

/// Every decision, at most `concurrency` at once, summarised per judge.
async fn evaluate(judges: &[Arc<NamedJudge>], items: &[Item], command: &EvalCommand) -> Report {
    let tasks = plan(judges.len(), items);
    let mut progress = Progress::new(tasks.len());
    let mut decisions: Vec<Vec<Decision>> = judges.iter().map(|_| Vec::new()).collect();
    let mut running = stream::iter(tasks.iter())
        .map(|task| async move {
            let decision = decide(&judges[task.judge], &items[task.item], task, &command.model);
            (task.judge, decision.await)
        })
        .buffer_unordered(command.concurrency.max(1));
    while let Some((judge, decision)) = running.next().await {
        decisions[judge].push(decision);
        progress.tick();
    }
    progress.finish();
    let judges = judges
        .iter()
        .zip(&decisions)
        .map(|(judge, ds)| report::summarize(&judge.name, items, ds))
        .collect();
    Report { judges }
}

/// Pairs in both orders, lists once, for every judge.
fn plan(judges: usize, items: &[Item]) -> Vec<Task> {
    let list_seed = identity_seed();
    let mut tasks = Vec::new();
    for judge in 0..judges {
        for (i, item) in items.iter().enumerate() {
            let orders: Vec<(Vec<usize>, u64)> = if item.pair {
                vec![(vec![0, 1], list_seed), (vec![1, 0], list_seed)]
            } else {
                vec![((0..item.candidates.len()).collect(), i as u64)]
            };
            tasks.extend(orders.into_iter().map(|(order, seed)| Task {
                judge,
                item: i,
                order,
                seed,
            }));
        }
    }
    tasks
}

/// A seed under which a shuffled presentation of two candidates keeps their list order.
fn identity_seed() -> u64 {
    (0..1024)
        .find(|&seed| protocol::presentation_order(2, seed, true) == [0, 1])
        .unwrap_or(0)
}

/// One judge call on one item in one order, mapped back to the item's candidates.
async fn decide(judge: &NamedJudge, item: &Item, task: &Task, model: &str) -> Decision {
    let candidates: Vec<JudgedCandidate> = task
        .order
        .iter()
        .enumerate()
        .map(|(index, &k)| JudgedCandidate {
            index,
            text: item.candidates[k].clone(),
            mean_logprob: None,
        })
        .collect();
    let headers = HeaderMap::new();
    let request = JudgeRequest {
        conversation: &item.conversation,
        candidates: &candidates,
        request_model: model,
        client_headers: &headers,
        seed: task.seed,
        rubrics: None,
        response_format: None,
    };
    let started = Instant::now();
    let verdict = judge.judge.judge(request).await;
    let latency = started.elapsed();
    let winner = match verdict.outcome {
        JudgeOutcome::Ok => verdict.winner().and_then(|w| task.order.get(w).copied()),
        _ => None,
    };
    let shown = verdict.presentation.first().copied().unwrap_or(0);
    let failure = winner.is_none().then(|| {
        let why = verdict.failure.clone();
        why.unwrap_or_else(|| verdict.outcome.as_str().to_string())
    });
    Decision {
        item: task.item,
        winner,
        shown_first: task.order.get(shown).copied().unwrap_or(task.order[0]),
        tokens: verdict.usage.total_tokens,
        latency,
        failure,
    }
}

fn write_report(path: &std::path::Path, report: &Report) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, json + "\n")
        .map_err(|e| format!("cannot write --report {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_seed_keeps_two_candidates_in_list_order() {
        assert_eq!(
            protocol::presentation_order(2, identity_seed(), true),
            [0, 1]
        );
    }

    #[test]
    fn pairs_are_planned_in_both_orders_and_lists_once() {
        let pair = data::parse(r#"{"prompt":"p","chosen":"a","rejected":"b"}"#).unwrap();
        let list = data::parse(r#"{"prompt":"p","candidates":["a","b","c"],"best":1}"#).unwrap();
        let items = [pair, list].concat();
        let tasks = plan(2, &items);
        assert_eq!(tasks.len(), 6);
        let orders: Vec<&[usize]> = tasks[..3].iter().map(|t| t.order.as_slice()).collect();
        assert_eq!(orders, [&[0, 1][..], &[1, 0], &[0, 1, 2]]);
        assert_eq!(tasks[3].judge, 1);
    }
}
