//! `bon-proxy export-pairs`: logged decisions with content become pairwise eval lines,
//! `{"messages", "chosen", "rejected", "subset"}`, the winner against each loser.
//!
//! These are the judge's labels, not human ones: a data set made from them measures agreement
//! with the judge that made them, and trains a reward model to imitate it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::Decision;

/// What an export did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub decisions: usize,
    pub pairs: usize,
    /// Logged without `include_content`: no conversation or texts to pair.
    pub skipped_without_content: usize,
    /// A fallback chose, or the fuser wrote the answer: no judgement to learn from.
    pub skipped_not_judged: usize,
}

impl ExportSummary {
    pub fn skipped(&self) -> usize {
        self.skipped_without_content + self.skipped_not_judged
    }
}

/// One pairwise eval line (DESIGN §8, eval input).
#[derive(Serialize)]
struct Pair<'a> {
    messages: &'a Value,
    chosen: &'a str,
    rejected: &'a str,
    subset: &'a str,
}

/// Reads the decision log `from` and writes the pairs to `out`. Errors name the file and line.
pub fn export_pairs(from: &Path, out: &Path) -> Result<ExportSummary, String> {
    let input = File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let output = File::create(out).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let mut output = BufWriter::new(output);
    let write_error = |e: std::io::Error| format!("cannot write {}: {e}", out.display());
    let mut summary = ExportSummary::default();
    for (number, line) in BufReader::new(input).lines().enumerate() {
        let at = format!("{}:{}", from.display(), number + 1);
        let line = line.map_err(|e| format!("{at}: cannot read: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let decision: Decision = serde_json::from_str(&line)
            .map_err(|e| format!("{at}: not a decision log line: {e}"))?;
        summary.decisions += 1;
        let pairs = match pairs_of(&decision) {
            Ok(pairs) => pairs,
            Err(Skip::WithoutContent) => {
                summary.skipped_without_content += 1;
                continue;
            }
            Err(Skip::NotJudged) => {
                summary.skipped_not_judged += 1;
                continue;
            }
        };
        for pair in pairs {
            serde_json::to_writer(&mut output, &pair)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            output.write_all(b"\n").map_err(write_error)?;
            summary.pairs += 1;
        }
    }
    output.flush().map_err(write_error)?;
    Ok(summary)
}

enum Skip {
    WithoutContent,
    NotJudged,
}

/// The winner against every other successful candidate. Disqualified and failed candidates
/// are left out: the judge never compared them.
fn pairs_of(decision: &Decision) -> Result<Vec<Pair<'_>>, Skip> {
    let (Some(winner), Some(judge), None) = (decision.winner, &decision.judge, &decision.fallback)
    else {
        return Err(Skip::NotJudged);
    };
    let messages = decision.conversation.as_ref().ok_or(Skip::WithoutContent)?;
    let text_of = |index: usize| {
        decision
            .candidates
            .iter()
            .find(|c| c.index == index)
            .and_then(|c| c.text.as_deref())
    };
    let chosen = text_of(winner).ok_or(Skip::WithoutContent)?;
    Ok(decision
        .candidates
        .iter()
        .filter(|c| c.index != winner && c.status == "ok")
        .filter_map(|c| c.text.as_deref())
        .map(|rejected| Pair {
            messages,
            chosen,
            rejected,
            subset: judge,
        })
        .collect())
}
