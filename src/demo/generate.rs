//! Generated answers: phrase banks, a seeded splitmix64 generator and rough token counts.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::sse::word_pieces;

pub(super) const LEADS: [(&str, &str); 4] = [
    ("When it comes to \"", "\", a few things matter most."),
    ("Regarding \"", "\", here is what I would keep in mind."),
    ("There is no one answer to \"", "\", but some points help."),
    ("For \"", "\", the practical view works best."),
];

pub(super) const POINTS: [&str; 8] = [
    "start from the simplest option that could work",
    "measure before and after every change",
    "write down the assumptions you are making",
    "check the official documentation for edge cases",
    "prefer small, reversible steps",
    "try the idea on a small example first",
    "watch out for hidden dependencies",
    "revisit the decision once you have real data",
];

pub(super) const CLOSERS: [&str; 3] = [
    "In summary, small careful steps win.",
    "Overall, the details depend on your situation.",
    "That should cover the essentials.",
];

/// One answer in one of four shapes, so that answers differ in structure as well as wording.
pub(super) fn generate(rng: &mut Rng, topic: &str) -> String {
    let mut out = String::with_capacity(400);
    let (before, after) = LEADS[rng.below(LEADS.len())];
    let closer = CLOSERS[rng.below(CLOSERS.len())];
    let mut point = rng.points();
    match rng.below(4) {
        0 => {
            let _ = write!(out, "Short answer on \"{topic}\": {}.", point());
        }
        1 => {
            let _ = write!(out, "{before}{topic}{after}");
            for _ in 0..2 + rng.below(3) {
                out.push(' ');
                push_sentence(&mut out, point());
            }
            let _ = write!(out, " {closer}");
        }
        2 => {
            let _ = write!(out, "{before}{topic}{after}");
            for _ in 0..2 + rng.below(4) {
                out.push_str("\n- ");
                push_sentence(&mut out, point());
            }
        }
        _ => {
            let _ = writeln!(out, "## {topic}: a quick guide\n");
            for step in 1..=3 + rng.below(3) {
                let _ = write!(out, "{step}. ");
                push_sentence(&mut out, point());
                out.push('\n');
            }
            let _ = write!(out, "\n{closer}");
        }
    }
    out
}

pub(super) fn json_answer(rng: &mut Rng, topic: &str) -> String {
    let answer = format!("For {topic}, {}.", rng.points()());
    let confidence = (50 + rng.below(46)) as f64 / 100.0;
    json!({"answer": answer, "confidence": confidence}).to_string()
}

/// `a op b` found in a question: whole numbers, `+`, `-`, `*`, `x` or `×`.
pub(super) struct Arithmetic {
    a: i64,
    op: char,
    b: i64,
    pub(super) result: i64,
}

/// The first `a op b` in `question` (operands of at most 9 digits), so that a math-like
/// question gets numeric answers that can agree (what `consensus` looks for).
pub(super) fn arithmetic(question: &str) -> Option<Arithmetic> {
    let mut rest = question;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        rest = &rest[start..];
        let found = leading_number(rest).and_then(|(a, after)| operation(a, after));
        if found.is_some() {
            return found;
        }
        rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    None
}

fn leading_number(text: &str) -> Option<(i64, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let digits = text.get(..end).filter(|d| (1..=9).contains(&d.len()))?;
    Some((digits.parse().ok()?, &text[end..]))
}

fn operation(a: i64, after_a: &str) -> Option<Arithmetic> {
    let text = after_a.trim_start();
    let op = text.chars().next().filter(|c| "+-*x×".contains(*c))?;
    let (b, _) = leading_number(text[op.len_utf8()..].trim_start())?;
    let result = match op {
        '+' => a.checked_add(b),
        '-' => a.checked_sub(b),
        _ => a.checked_mul(b),
    }?;
    Some(Arithmetic { a, op, b, result })
}

/// An answer to `sum`: right three times in five, otherwise a little off, in one of four
/// spellings (`1,000`, `Final answer: 1000`, `\boxed{1000}`, bold) that all read as the
/// same number to `consensus`.
pub(super) fn math_answer(rng: &mut Rng, sum: &Arithmetic) -> String {
    let result = match rng.below(5) {
        0..=2 => sum.result,
        3 => sum.result.saturating_add(1),
        _ => sum.result.saturating_sub(10),
    };
    let expression = format!("{} {} {}", sum.a, sum.op, sum.b);
    match rng.below(4) {
        0 => format!(
            "{expression} = {result}. The answer is {}.",
            grouped(result)
        ),
        1 => format!("Step by step: {expression} gives {result}.\n\nFinal answer: {result}"),
        2 => format!("Computing {expression}, we get $\\boxed{{{result}}}$."),
        _ => format!("The result is **{}**.", grouped(result)),
    }
}

/// `1234567` as `1,234,567`.
fn grouped(number: i64) -> String {
    let digits = number.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if number < 0 {
        out.push('-');
    }
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The `logprobs` of a text answer: one token per word, each a plausible log-probability
/// around a confidence drawn for the answer, so some answers are much surer than others. The
/// same text and seed give the same numbers.
pub(super) fn token_logprobs(text: &str, seed: u64) -> Value {
    let mut rng = Rng(seed ^ fnv1a(text.as_bytes()));
    // Mean surprise per token, 0.05 to 1.25 nats.
    let level = 0.05 + rng.below(121) as f64 / 100.0;
    let tokens: Vec<Value> = word_pieces(text, 1)
        .into_iter()
        .map(|token| {
            let logprob = -level * (0.5 + rng.below(101) as f64 / 100.0);
            let logprob = (logprob * 1e4).round() / 1e4;
            json!({"token": token, "logprob": logprob, "bytes": token.as_bytes(),
                "top_logprobs": []})
        })
        .collect();
    json!({"content": tokens, "refusal": null})
}

/// Capitalises the first letter and adds a full stop; the bank phrases are lowercase ASCII.
pub(super) fn push_sentence(out: &mut String, phrase: &str) {
    let mut chars = phrase.chars();
    out.extend(chars.next().map(|first| first.to_ascii_uppercase()));
    out.push_str(chars.as_str());
    out.push('.');
}

/// The first words of the question, so the answer visibly refers to it.
pub(super) fn topic(question: &str) -> String {
    let words: Vec<&str> = question.split_whitespace().take(8).collect();
    let mut topic = words.join(" ");
    let cut = topic
        .char_indices()
        .nth(80)
        .map_or(topic.len(), |(at, _)| at);
    let punctuation = |c: char| c.is_ascii_punctuation();
    topic.truncate(topic[..cut].trim_end_matches(punctuation).len());
    if topic.is_empty() {
        return "your question".to_owned();
    }
    topic
}

pub(super) fn contains_ignore_case(haystack: &str, needle: &[u8]) -> bool {
    let mut windows = haystack.as_bytes().windows(needle.len());
    windows.any(|window| window.eq_ignore_ascii_case(needle))
}

pub(super) fn approx_tokens(text: &str) -> u64 {
    text.len().div_ceil(4).max(1) as u64
}

pub(super) fn unix_now() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map_or(0, |elapsed| elapsed.as_secs())
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let step = |hash: u64, &byte: &u8| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3);
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, step)
}

pub(super) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: tiny, fast and good enough to vary demo answers.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn signed_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Yields bank points without repeats: an odd step visits all 8 points before any repeats.
    pub(super) fn points(&mut self) -> impl FnMut() -> &'static str {
        let (mut at, step) = (self.below(POINTS.len()), 2 * self.below(4) + 1);
        move || {
            at = (at + step) % POINTS.len();
            POINTS[at]
        }
    }
}
