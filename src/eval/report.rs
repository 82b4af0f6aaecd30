//! Eval results: per-judge statistics from the individual decisions, the stdout table and the
//! `--report` JSON (`{"judges": [...]}`, DESIGN §8).
//!
//! Definitions (the README's "Evaluating a judge" explains them to users):
//! - a *decision* is one judge verdict on one item in one presentation order (a pair makes two);
//! - *decided* decisions named a winner; the rest are *failures* (error, unreadable answer,
//!   undecided: what the fallback would choose in serving) and are never right or wrong;
//! - `accuracy` = correct / decided, `ci95` its Wilson score interval, both `null` when
//!   nothing was decided; `position_consistency` = pairs whose two orders picked the same
//!   answer / pairs decided in both orders; `first_position_rate` = decided decisions that
//!   picked the answer shown first / decided; `tokens_per_decision` = judge tokens / decisions
//!   (failures included: they cost too); latency percentiles over every decision.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::data::Item;

/// One judge verdict on one item, mapped back to the item's candidates.
#[derive(Debug, Clone)]
pub struct Decision {
    pub item: usize,
    /// The candidate (index into `Item::candidates`) the judge picked; `None` when it failed.
    pub winner: Option<usize>,
    /// The candidate the judge saw first.
    pub shown_first: usize,
    pub tokens: u64,
    pub latency: Duration,
    /// Why the judge failed, when it did.
    pub failure: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub judges: Vec<JudgeReport>,
}

#[derive(Debug, Serialize)]
pub struct JudgeReport {
    pub name: String,
    pub items: usize,
    pub accuracy: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    pub position_consistency: Option<f64>,
    pub first_position_rate: Option<f64>,
    pub failures: usize,
    pub tokens_per_decision: Option<f64>,
    pub latency_ms: Latency,
    pub subsets: BTreeMap<String, SubsetReport>,
    /// How many decisions were made, decided or not (the table's failure rate).
    #[serde(skip)]
    pub decisions: usize,
    /// The first failure's reason, for the table.
    #[serde(skip)]
    pub failure_example: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SubsetReport {
    pub items: usize,
    pub accuracy: Option<f64>,
}

/// The statistics of one judge from its `decisions` on `items`.
pub fn summarize(name: &str, items: &[Item], decisions: &[Decision]) -> JudgeReport {
    let judged: std::collections::BTreeSet<usize> = decisions.iter().map(|d| d.item).collect();
    let (correct, decided) = score(items, decisions.iter());
    let first = decisions
        .iter()
        .filter(|d| d.winner.is_some() && d.winner == Some(d.shown_first))
        .count();
    let tokens: u64 = decisions.iter().map(|d| d.tokens).sum();
    JudgeReport {
        name: name.to_string(),
        items: judged.len(),
        accuracy: ratio(correct, decided),
        ci95: wilson(correct, decided).map(|(lo, hi)| [round(lo), round(hi)]),
        position_consistency: consistency(items, decisions),
        first_position_rate: ratio(first, decided),
        failures: decisions.len() - decided,
        tokens_per_decision: (!decisions.is_empty())
            .then(|| round(tokens as f64 / decisions.len() as f64)),
        latency_ms: latency(decisions),
        subsets: subsets(items, decisions),
        decisions: decisions.len(),
        failure_example: decisions.iter().find_map(|d| d.failure.clone()),
    }
}

/// (correct, decided) over `decisions`.
fn score<'a>(items: &[Item], decisions: impl Iterator<Item = &'a Decision>) -> (usize, usize) {
    decisions.fold((0, 0), |(correct, decided), d| match d.winner {
        Some(w) => (correct + usize::from(items[d.item].best == w), decided + 1),
        None => (correct, decided),
    })
}

/// Of the pairs decided in both orders, the share that picked the same answer both times.
fn consistency(items: &[Item], decisions: &[Decision]) -> Option<f64> {
    let mut winners: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for d in decisions.iter().filter(|d| items[d.item].pair) {
        if let Some(w) = d.winner {
            winners.entry(d.item).or_default().push(w);
        }
    }
    let both: Vec<&Vec<usize>> = winners.values().filter(|w| w.len() == 2).collect();
    let same = both.iter().filter(|w| w[0] == w[1]).count();
    ratio(same, both.len())
}

fn subsets(items: &[Item], decisions: &[Decision]) -> BTreeMap<String, SubsetReport> {
    let mut by_subset: BTreeMap<&str, Vec<&Decision>> = BTreeMap::new();
    for d in decisions {
        if let Some(subset) = &items[d.item].subset {
            by_subset.entry(subset).or_default().push(d);
        }
    }
    by_subset
        .into_iter()
        .map(|(name, ds)| {
            let count = ds
                .iter()
                .map(|d| d.item)
                .collect::<std::collections::BTreeSet<_>>();
            let (correct, decided) = score(items, ds.into_iter());
            let report = SubsetReport {
                items: count.len(),
                accuracy: ratio(correct, decided),
            };
            (name.to_string(), report)
        })
        .collect()
}

fn latency(decisions: &[Decision]) -> Latency {
    let mut ms: Vec<f64> = decisions
        .iter()
        .map(|d| d.latency.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    Latency {
        p50: percentile(&ms, 0.50),
        p95: percentile(&ms, 0.95),
    }
}

/// Nearest-rank percentile of sorted values, to 0.1 ms.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let value = sorted.get(rank.saturating_sub(1))?;
    Some((value * 10.0).round() / 10.0)
}

fn ratio(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| round(part as f64 / whole as f64))
}

/// The Wilson score interval at 95% for `k` successes out of `n`.
pub fn wilson(k: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.96_f64);
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// The stdout table: one row per judge, then one per judge and subset.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "{:<16} {:>5} {:>8} {:>15} {:>11} {:>9} {:>9} {:>10} {:>8} {:>8}\n",
        "judge",
        "items",
        "accuracy",
        "ci95",
        "consistency",
        "first_pos",
        "failures",
        "tokens/dec",
        "p50_ms",
        "p95_ms"
    );
    for j in &report.judges {
        let ci = j
            .ci95
            .map_or("-".to_string(), |[lo, hi]| format!("[{lo:.2}, {hi:.2}]"));
        out.push_str(&format!(
            "{:<16} {:>5} {:>8} {:>15} {:>11} {:>9} {:>9} {:>10} {:>8} {:>8}\n",
            j.name,
            j.items,
            num(j.accuracy, 3),
            ci,
            num(j.position_consistency, 3),
            num(j.first_position_rate, 3),
            format!("{}/{}", j.failures, j.decisions),
            num(j.tokens_per_decision, 0),
            num(j.latency_ms.p50, 1),
            num(j.latency_ms.p95, 1),
        ));
    }
    out.push_str(&subset_table(report));
    out.push_str(&failure_notes(report));
    out
}

fn subset_table(report: &Report) -> String {
    let rows: Vec<String> = report
        .judges
        .iter()
        .flat_map(|j| {
            j.subsets.iter().map(|(name, s)| {
                format!(
                    "{:<16} {:<16} {:>5} {:>8}\n",
                    j.name,
                    name,
                    s.items,
                    num(s.accuracy, 3)
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let head = format!(
        "\n{:<16} {:<16} {:>5} {:>8}\n",
        "judge", "subset", "items", "accuracy"
    );
    head + &rows.concat()
}

fn failure_notes(report: &Report) -> String {
    let notes: Vec<String> = report
        .judges
        .iter()
        .filter_map(|j| {
            let why = j.failure_example.as_ref()?;
            Some(format!("{}: {} failed, e.g. {why}\n", j.name, j.failures))
        })
        .collect();
    if notes.is_empty() {
        return String::new();
    }
    "\nfailures (not counted as right or wrong):\n".to_string() + &notes.concat()
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(subset: &str) -> Item {
        Item {
            line: 1,
            conversation: Vec::new(),
            candidates: vec!["good".into(), "bad".into()],
            best: 0,
            pair: true,
            subset: Some(subset.into()),
        }
    }

    fn decision(item: usize, winner: Option<usize>, shown_first: usize) -> Decision {
        Decision {
            item,
            winner,
            shown_first,
            tokens: 10,
            latency: Duration::from_millis(5),
            failure: winner.is_none().then(|| "judge said nothing".to_string()),
        }
    }

    #[test]
    fn a_judge_that_always_picks_the_first_shown_is_inconsistent() {
        let items = vec![pair("a"), pair("b")];
        // Each pair shown both ways; the first-shown candidate always wins.
        let decisions: Vec<Decision> = (0..2)
            .flat_map(|i| [decision(i, Some(0), 0), decision(i, Some(1), 1)])
            .collect();
        let r = summarize("first", &items, &decisions);
        assert_eq!(r.accuracy, Some(0.5));
        assert_eq!(r.position_consistency, Some(0.0));
        assert_eq!(r.first_position_rate, Some(1.0));
        assert_eq!(r.failures, 0);
        assert_eq!(r.items, 2);
        assert_eq!(r.subsets["a"].accuracy, Some(0.5));
    }

    #[test]
    fn failures_are_neither_right_nor_wrong() {
        let items = vec![pair("a")];
        let decisions = vec![decision(0, None, 0), decision(0, Some(0), 1)];
        let r = summarize("j", &items, &decisions);
        assert_eq!(r.failures, 1);
        assert_eq!(r.accuracy, Some(1.0));
        assert_eq!(r.position_consistency, None);
        assert_eq!(r.tokens_per_decision, Some(10.0));
        let none = summarize("j", &items, &[decision(0, None, 0)]);
        assert_eq!(none.accuracy, None);
        assert_eq!(none.ci95, None);
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        let (lo, hi) = wilson(8, 10).unwrap();
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), Some(50.0));
        assert_eq!(percentile(&values, 0.95), Some(95.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
