//! The consensus judge (self-consistency): the answer most candidates agree on wins, with no
//! judge call.
//!
//! Each candidate's final answer is read by the first rule that applies ([`Rule`]): in JSON mode
//! the parsed JSON value; else the last `\boxed{...}`; else what follows the last "final answer"
//! or "answer:"; else the last number; else the whole text. The answer is normalised into a key
//! (see [`normalise`]) so that `1,000`, `1000.0`, `1e3` and `$1000` agree. Candidates with equal
//! keys form a group; the earliest candidate (generation order) of the largest group wins, and
//! the ranking is the groups by size, then by their earliest member, each group in generation
//! order. A candidate's score is its group's share of the candidates judged.
//!
//! When every answer differs, agreement says nothing, so the medoid wins instead: the candidate
//! whose text (as a set of lowercase words) is on average most similar to the others by Jaccard
//! similarity, ties in generation order. It is the answer that has the most in common with the
//! rest, the free-text analogue of the most common answer.
//!
//! Consensus can stop early (see [`Judge::early_stop`]): once one key has a strict majority of
//! all N candidates, no other answer can outnumber it, so the calls still running are cancelled.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::{json, Value};

use super::{
    is_json_mode, Blueprint, Judge, JudgeOutcome, JudgeRequest, JudgedCandidate, Shape, Stopper,
    Strategy, Verdict,
};
use crate::config::ConfigError;

/// The registry entry (see `judge::STRATEGIES`).
pub const STRATEGY: Strategy = super::register("consensus", Shape::Local, Consensus::build);

/// Bumped when extraction or normalisation changes, so cached picks made under the old rules
/// are not reused (it is part of the fingerprint, hence of the cache key).
const RULES_VERSION: u32 = 1;

pub struct Consensus;

impl Consensus {
    fn build(_blueprint: Blueprint<'_>) -> Result<Arc<dyn Judge>, ConfigError> {
        Ok(Arc::new(Consensus))
    }
}

impl Judge for Consensus {
    fn judge<'a>(&'a self, request: JudgeRequest<'a>) -> BoxFuture<'a, Verdict> {
        let started = Instant::now();
        let mut verdict = decide(request.candidates, request.response_format);
        verdict.latency = started.elapsed();
        verdict.seed = request.seed;
        futures_util::future::ready(verdict).boxed()
    }

    fn fingerprint(&self) -> String {
        json!([STRATEGY.name, RULES_VERSION]).to_string()
    }

    fn describe(&self) -> String {
        "no judge call: the most common final answer wins, stopping early at a strict majority"
            .to_string()
    }

    fn early_stop(&self, n: usize, response_format: Option<&str>) -> Option<Stopper> {
        let mut majority = Majority {
            n,
            json_mode: is_json_mode(response_format),
            counts: HashMap::new(),
        };
        Some(Box::new(move |candidate| majority.add(candidate)))
    }
}

/// Counts keys as candidates finish; decided once one key has more than half of all N.
struct Majority {
    n: usize,
    json_mode: bool,
    counts: HashMap<String, usize>,
}

impl Majority {
    fn add(&mut self, candidate: &JudgedCandidate) -> bool {
        let key = extract(&candidate.text, self.json_mode).key;
        let count = self.counts.entry(key).or_default();
        *count += 1;
        *count * 2 > self.n
    }
}

/// Which rule read a candidate's final answer, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Json,
    Boxed,
    FinalAnswer,
    LastNumber,
    Text,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Json => "json",
            Rule::Boxed => "boxed",
            Rule::FinalAnswer => "final_answer",
            Rule::LastNumber => "last_number",
            Rule::Text => "text",
        }
    }
}

/// A candidate's final answer as consensus reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub rule: Rule,
    /// The answer as it appears in the text (JSON: compact).
    pub answer: String,
    /// The normalised answer: equal keys agree.
    pub key: String,
}

/// The final answer of `text`, by the first rule that applies.
pub fn extract(text: &str, json_mode: bool) -> Extracted {
    // A Unicode minus sign is still a minus.
    let text = text.replace('\u{2212}', "-");
    if json_mode {
        if let Ok(value) = serde_json::from_str::<Value>(text.trim()) {
            let mut key = String::new();
            write_canonical(&value, &mut key);
            let answer = value.to_string();
            return Extracted {
                rule: Rule::Json,
                answer,
                key,
            };
        }
    }
    // A final answer sits at the end; reading only the tail bounds the work a huge (or
    // hostile) answer can cause, since the brace matching is quadratic in the worst case.
    let text = tail(&text, MAX_READ_BYTES);
    let (rule, answer) = if let Some(inner) = last_boxed(text) {
        (Rule::Boxed, inner)
    } else if let Some(line) = after_final_answer(text) {
        (Rule::FinalAnswer, line)
    } else if let Some((start, end)) = numbers(text).last().copied() {
        (Rule::LastNumber, &text[start..end])
    } else {
        (Rule::Text, text.trim())
    };
    Extracted {
        rule,
        key: normalise(answer),
        answer: answer.to_string(),
    }
}

/// How much of the end of an answer is read for its final answer.
const MAX_READ_BYTES: usize = 4096;

/// The last `max` bytes of `text` (less, to start on a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The contents of the last `\boxed{...}` whose braces balance.
fn last_boxed(text: &str) -> Option<&str> {
    const BOXED: &str = "\\boxed";
    text.rmatch_indices(BOXED)
        .find_map(|(at, _)| braced(&text[at + BOXED.len()..]))
}

/// The contents of the `{...}` group that `rest` starts with (after spaces), nested braces
/// included.
fn braced(rest: &str) -> Option<&str> {
    let inner = rest.trim_start().strip_prefix('{')?;
    let mut depth = 1usize;
    for (at, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&inner[..at]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The answer after the last "final answer" or "answer:" (any case): the rest of that line,
/// or the next non-empty line when the marker ends its line ("Final answer:\n42").
fn after_final_answer(text: &str) -> Option<&str> {
    // ASCII lowercasing keeps byte offsets, so positions in `lower` are positions in `text`.
    let lower = text.to_ascii_lowercase();
    let end = ["final answer", "answer:"]
        .iter()
        .filter_map(|marker| lower.rfind(marker).map(|at| (at, at + marker.len())))
        .max()?
        .1;
    text[end..]
        .lines()
        .map(answer_line)
        .find(|line| !line.is_empty())
}

/// A line after an answer marker without its lead-in: `:`, `=`, markdown bold, a leading "is".
fn answer_line(line: &str) -> &str {
    let lead_in = |c: char| c.is_whitespace() || ":=*-_#".contains(c);
    let line = line.trim_start_matches(lead_in);
    let rest = match line.get(..2) {
        Some(is) if is.eq_ignore_ascii_case("is") => &line[2..],
        _ => line,
    };
    // "is" only as a word of its own: "isotope" stays whole.
    let line = if rest.starts_with(lead_in) {
        rest
    } else {
        line
    };
    line.trim_start_matches(lead_in).trim_end()
}

/// The byte spans of every number in `text`: an optional minus, digits with optional
/// thousands separators (`1,000`, groups of exactly three), an optional fraction and exponent.
fn numbers(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if starts_number(bytes, at) {
            if let Some(end) = number_end(bytes, at) {
                spans.push((at, end));
                at = end;
                continue;
            }
        }
        at += 1;
    }
    spans
}

/// A number may start at a digit, or at a `-` or `.` that follows no letter or digit (so
/// `x-5` and `v.2` do not read as negative or fractional) and comes before a digit.
fn starts_number(bytes: &[u8], at: usize) -> bool {
    let digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let after_word = at > 0 && bytes[at - 1].is_ascii_alphanumeric();
    match bytes[at] {
        b'0'..=b'9' => true,
        b'-' => {
            !after_word && (digit(at + 1) || (bytes.get(at + 1) == Some(&b'.') && digit(at + 2)))
        }
        b'.' => !after_word && digit(at + 1),
        _ => false,
    }
}

/// Where the number starting at `start` ends.
fn number_end(bytes: &[u8], start: usize) -> Option<usize> {
    let digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let digits_from = |mut i: usize| {
        while digit(i) {
            i += 1;
        }
        i
    };
    let first = if bytes[start] == b'-' {
        start + 1
    } else {
        start
    };
    let mut at = digits_from(first);
    if (1..=3).contains(&(at - first)) {
        // `1,000,000`; `1,2` and `1,0000` are not separators.
        while bytes.get(at) == Some(&b',') && digits_from(at + 1) == at + 4 {
            at += 4;
        }
    }
    if bytes.get(at) == Some(&b'.') && digit(at + 1) {
        at = digits_from(at + 1);
    }
    if at == first {
        return None;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(at + 1), Some(b'+' | b'-')));
        if digit(at + 1 + sign) {
            at = digits_from(at + 1 + sign);
        }
    }
    Some(at)
}

/// The canonical form of a number: separators dropped, one spelling per value (`1000.0`,
/// `1e3` and `1,000` are all `1000`), the sign kept.
fn canonical_number(text: &str) -> Option<String> {
    let plain: String = text.chars().filter(|&c| c != ',').collect();
    let value: f64 = plain.parse().ok()?;
    // `+ 0.0` turns -0 into 0; Display writes integral values without a fraction.
    value.is_finite().then(|| format!("{}", value + 0.0))
}

/// The key of an answer: LaTeX wrappers unwrapped, lowercase, whitespace collapsed, `$`
/// dropped (LaTeX math delimiters or a currency sign; `%` is kept, since 50% is not 50),
/// every number in canonical form, and markdown emphasis and trailing `.`, `!`, `;`, `,`, `:`
/// stripped.
pub fn normalise(answer: &str) -> String {
    let unwrapped = unwrap_latex(answer);
    let lower = unwrapped.to_lowercase().replace('$', "");
    let collapsed = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    let numbered = with_canonical_numbers(&collapsed).replace(" %", "%");
    let wrapper = |c: char| matches!(c, '*' | '`' | '_' | ' ');
    let mut key = numbered.as_str();
    loop {
        let trimmed = key
            .trim_matches(wrapper)
            .trim_end_matches(['.', '!', ';', ',', ':']);
        if trimmed == key {
            return key.to_string();
        }
        key = trimmed;
    }
}

/// `\text{X}` and its kin become `X`; `{,}` (a LaTeX thousands separator) becomes `,`; `\%`
/// becomes `%`.
fn unwrap_latex(answer: &str) -> String {
    let mut out = answer.replace("{,}", ",").replace("\\%", "%");
    for command in ["\\text", "\\textbf", "\\mathrm", "\\mathbf"] {
        while let Some(at) = out.find(&format!("{command}{{")) {
            let Some(inner) = braced(&out[at + command.len()..]) else {
                break;
            };
            let inner = inner.to_string();
            // `braced` started right at the brace, so the group is `{inner}`.
            let end = at + command.len() + inner.len() + 2;
            out.replace_range(at..end, &inner);
        }
    }
    out
}

fn with_canonical_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in numbers(text) {
        out.push_str(&text[last..start]);
        let number = &text[start..end];
        out.push_str(&canonical_number(number).unwrap_or_else(|| number.to_string()));
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

/// A JSON value with object keys sorted, numbers canonical and strings normalised: equal for
/// answers that differ only in key order, number spelling, case or spacing.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (position, key) in keys.into_iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(text) => out.push_str(&Value::String(normalise(text)).to_string()),
        Value::Number(number) => {
            let text = number.to_string();
            out.push_str(&canonical_number(&text).unwrap_or(text));
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The verdict: the largest group's earliest member, or the medoid when every answer differs.
fn decide(candidates: &[JudgedCandidate], response_format: Option<&str>) -> Verdict {
    let mut candidates: Vec<&JudgedCandidate> = candidates.iter().collect();
    candidates.sort_by_key(|c| c.index);
    let json_mode = is_json_mode(response_format);
    let read: Vec<Extracted> = candidates
        .iter()
        .map(|c| extract(&c.text, json_mode))
        .collect();
    let groups = groups(&read);
    let largest = groups.first().map_or(0, Vec::len);
    let (order, similarity) = if largest > 1 {
        (groups.concat(), None)
    } else {
        let similarity = mean_similarities(&candidates);
        (by_similarity(&similarity), Some(similarity))
    };
    let size_of = |position: usize| {
        let group = groups.iter().find(|g| g.contains(&position));
        group.map_or(1, Vec::len)
    };
    let count = candidates.len().max(1) as f64;
    let mut verdict = Verdict::empty(JudgeOutcome::Ok);
    verdict.ranking = order.iter().map(|&p| candidates[p].index).collect();
    verdict.fully_ranked = true;
    verdict.scores = order
        .iter()
        .map(|&p| (candidates[p].index, size_of(p) as f64 / count))
        .collect();
    verdict.presentation = candidates.iter().map(|c| c.index).collect();
    let answers = (0..candidates.len()).map(|p| {
        let mut entry = json!({
            "candidate": candidates[p].index,
            "rule": read[p].rule.as_str(),
            "answer": read[p].answer,
            "key": read[p].key,
            "group_size": size_of(p),
        });
        if let Some(similarity) = &similarity {
            entry["similarity"] = json!((similarity[p] * 1e3).round() / 1e3);
        }
        entry
    });
    verdict.detail.insert("answers".into(), answers.collect());
    verdict
        .detail
        .insert("medoid".into(), Value::Bool(similarity.is_some()));
    verdict
}

/// Positions with equal keys, grouped: largest group first, equal sizes by earliest member,
/// each group in generation order (positions are in generation order).
fn groups(read: &[Extracted]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for (position, extracted) in read.iter().enumerate() {
        match by_key.get(extracted.key.as_str()) {
            Some(&group) => groups[group].push(position),
            None => {
                by_key.insert(&extracted.key, groups.len());
                groups.push(vec![position]);
            }
        }
    }
    // Stable: groups of equal size keep the order of their first members.
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    groups
}

/// Each candidate's mean Jaccard similarity to the others, over sets of lowercase words.
fn mean_similarities(candidates: &[&JudgedCandidate]) -> Vec<f64> {
    let words: Vec<BTreeSet<String>> = candidates.iter().map(|c| word_set(&c.text)).collect();
    let others = (words.len().max(2) - 1) as f64;
    (0..words.len())
        .map(|a| {
            let total: f64 = (0..words.len())
                .filter(|&b| b != a)
                .map(|b| jaccard(&words[a], &words[b]))
                .sum();
            total / others
        })
        .collect()
}

/// Positions by mean similarity, highest first; ties in generation order.
fn by_similarity(similarity: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..similarity.len()).collect();
    order.sort_by(|&a, &b| similarity[b].total_cmp(&similarity[a]));
    order
}

fn word_set(text: &str) -> BTreeSet<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect()
}

fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        // Two texts without a word are alike.
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_huge_answer_is_read_from_its_end_only() {
        let hostile = format!("{}The answer is 42.", "\\boxed{".repeat(200_000));
        let started = std::time::Instant::now();
        let read = extract(&hostile, false);
        assert_eq!(read.key, "42");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(tail("ééé", 3), "é", "a character boundary");
    }

    use super::*;

    fn key(text: &str) -> String {
        extract(text, false).key
    }

    fn rule(text: &str) -> Rule {
        extract(text, false).rule
    }

    fn candidates(texts: &[&str]) -> Vec<JudgedCandidate> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| JudgedCandidate {
                index,
                text: text.to_string(),
                mean_logprob: None,
            })
            .collect()
    }

    #[test]
    fn numbers_have_one_spelling() {
        for same in [
            "1000", "1,000", "1000.0", "1e3", "1E+3", "$1,000", "1,000.00",
        ] {
            assert_eq!(normalise(same), "1000", "{same}");
        }
        assert_eq!(normalise("-42"), "-42");
        assert_eq!(normalise("-0"), "0");
        assert_eq!(normalise(".5"), "0.5");
        assert_eq!(normalise("0.50"), "0.5");
        assert_eq!(normalise("50%"), "50%");
        assert_eq!(normalise("50 \\%"), "50%");
        assert_ne!(normalise("50%"), normalise("50"));
        assert_ne!(normalise("1,0000"), "10000", "not a thousands separator");
        assert_eq!(normalise("1,2"), "1,2");
        assert_eq!(normalise("1{,}000"), "1000");
    }

    #[test]
    fn last_number_reads_signs_separators_and_not_word_hyphens() {
        assert_eq!(extract("The answer is 1,000.", false).answer, "1,000");
        assert_eq!(key("It drops to -3 degrees"), "-3");
        assert_eq!(key("pages 3-5"), "5");
        assert_eq!(key("Between 1,2 and 3"), "3");
        assert_eq!(key("We get 2.5e2 in the end."), "250");
        assert_eq!(key("about 3 eggs"), "3");
        assert_eq!(key("minus \u{2212}7"), "-7");
        assert_eq!(rule("The answer is 1,000."), Rule::LastNumber);
    }

    #[test]
    fn boxed_takes_the_last_balanced_group_with_nested_braces() {
        let text = "First \\boxed{1}, then \\boxed{\\frac{1}{2}} after checking 3 cases.";
        let read = extract(text, false);
        assert_eq!(read.rule, Rule::Boxed);
        assert_eq!(read.answer, "\\frac{1}{2}");
        assert_eq!(key("\\boxed { 42 }"), "42");
        assert_eq!(key("\\boxed{\\text{Paris}}."), "paris");
        assert_eq!(key("\\boxed{1{,}000}"), "1000");
        // The last one never closes: the one before it counts.
        assert_eq!(key("\\boxed{7} and \\boxed{8"), "7");
        assert_eq!(rule("\\boxed{"), Rule::Text);
    }

    #[test]
    fn final_answer_reads_the_rest_of_the_line() {
        let read = extract("Work: 2 + 2.\nFinal answer: **4**\nHope it helps!", false);
        assert_eq!(read.rule, Rule::FinalAnswer);
        assert_eq!(read.key, "4");
        assert_eq!(key("The final answer is Paris."), "paris");
        assert_eq!(key("ANSWER: Blue Whale!"), "blue whale");
        assert_eq!(key("Final Answer:\n\n  42 apples\n"), "42 apples");
        assert_eq!(key("answer: 1,000 apples"), "1000 apples");
        assert_eq!(key("Final answer: isotopes"), "isotopes");
        // An answer marker earlier than a box does not win over the box.
        assert_eq!(key("answer: 3 \\boxed{4}"), "4");
    }

    #[test]
    fn free_text_is_trimmed_collapsed_and_lowercased() {
        let read = extract("  The  Eiffel\nTower! ", false);
        assert_eq!(read.rule, Rule::Text);
        assert_eq!(read.key, "the eiffel tower");
        assert_eq!(key("*Paris*;"), "paris");
    }

    #[test]
    fn json_mode_compares_canonical_values() {
        let a = extract(r#"{"b": "Yes ", "a": 1000}"#, true);
        let b = extract(r#"{ "a": 1e3, "b": "yes" }"#, true);
        assert_eq!(a.rule, Rule::Json);
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, r#"{"a":1000,"b":"yes"}"#);
        assert_eq!(a.answer, r#"{"b":"Yes ","a":1000}"#);
        assert_ne!(a.key, extract(r#"{"a": 1001, "b": "yes"}"#, true).key);
        assert_eq!(extract("[1, 2.0]", true).key, "[1,2]");
        // Not JSON (a tool call, a refusal): the text rules apply.
        assert_eq!(extract("answer: 5", true).rule, Rule::FinalAnswer);
        assert_eq!(extract("{\"a\": 1}", false).rule, Rule::LastNumber);
    }

    #[test]
    fn the_earliest_member_of_the_largest_group_wins() {
        let texts = ["999", "The answer is 1,000.", "1000", "999.0", "It is 1e3"];
        let verdict = decide(&candidates(&texts), None);
        assert_eq!(verdict.ranking, vec![1, 2, 4, 0, 3]);
        assert!(verdict.fully_ranked);
        assert!(verdict.scores.contains(&(1, 0.6)));
        assert!(verdict.scores.contains(&(0, 0.4)));
        assert_eq!(verdict.detail["medoid"], false);
        let answers = verdict.detail["answers"].as_array().unwrap();
        assert_eq!(answers[1]["key"], "1000");
        assert_eq!(answers[1]["group_size"], 3);
        assert_eq!(answers[1]["rule"], "last_number");
    }

    #[test]
    fn equal_groups_go_to_the_earliest_member() {
        let verdict = decide(&candidates(&["7", "8", "8", "7", "9"]), None);
        assert_eq!(verdict.ranking, vec![0, 3, 1, 2, 4]);
        let verdict = decide(&candidates(&["9", "8", "7", "7", "8"]), None);
        assert_eq!(verdict.ranking, vec![1, 4, 2, 3, 0]);
    }

    #[test]
    fn all_different_answers_fall_back_to_the_medoid() {
        let texts = [
            "red green blue",
            "red green blue yellow",
            "green blue yellow purple",
        ];
        let verdict = decide(&candidates(&texts), None);
        // Mean similarity: 0: (3/4 + 2/5) / 2; 1: (3/4 + 3/5) / 2; 2: (2/5 + 3/5) / 2.
        assert_eq!(verdict.ranking, vec![1, 0, 2]);
        assert_eq!(verdict.detail["medoid"], true);
        assert_eq!(verdict.detail["answers"][1]["similarity"], 0.675);
        let third = 1.0 / 3.0;
        assert!(verdict.scores.iter().all(|&(_, s)| s == third));
        // Equal similarity: generation order.
        let verdict = decide(&candidates(&["alpha", "beta", "gamma"]), None);
        assert_eq!(verdict.ranking, vec![0, 1, 2]);
    }

    #[test]
    fn a_strict_majority_of_all_n_stops_early() {
        let mut stop = Consensus.early_stop(5, None).unwrap();
        let [a, b, c] = ["x = 4", "**4**", "5"].map(|text| JudgedCandidate {
            index: 0,
            text: text.into(),
            mean_logprob: None,
        });
        assert!(!stop(&a));
        assert!(!stop(&c));
        assert!(!stop(&b), "2 of 5 is no majority");
        assert!(stop(&a), "3 of 5 is");
        let mut stop = Consensus.early_stop(4, None).unwrap();
        assert!(!stop(&a) && !stop(&a), "2 of 4 is a tie, not a majority");
        assert!(stop(&a));
    }
}
