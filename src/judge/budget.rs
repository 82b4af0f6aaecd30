//! Fitting the texts of a judge prompt into `judge.max_prompt_bytes`.
//!
//! A judge prompt holds the conversation and every candidate, so one large request would
//! otherwise become a judge prompt of the conversation plus N long answers: more memory than
//! the request itself, and more tokens than any judge model reads. The candidates get at least
//! half of the budget and the conversation what they leave. Within each part, texts share
//! fairly: short ones stay whole and long ones are cut in the middle to the same length, with
//! a marker saying how much was cut, so the judge knows it is not reading everything.

use super::protocol::{TemplateCandidate, TemplateMessage};

/// The visible marker that replaces the middle of a cut text.
pub fn marker(cut_bytes: usize) -> String {
    format!("\n[... {cut_bytes} bytes cut by bon-proxy (judge.max_prompt_bytes) ...]\n")
}

/// Cuts the conversation and candidate texts so that together they take about `budget` bytes
/// (each cut text gains a marker of some 70 bytes).
pub fn fit_prompt(
    conversation: &mut [TemplateMessage],
    candidates: &mut [TemplateCandidate],
    budget: usize,
) {
    let candidate_bytes: usize = candidates.iter().map(|c| c.text.len()).sum();
    let conversation_bytes: usize = conversation.iter().map(|m| m.text.len()).sum();
    if candidate_bytes + conversation_bytes <= budget {
        return;
    }
    let for_candidates = (budget / 2).max(budget.saturating_sub(conversation_bytes));
    fit(candidates.iter_mut().map(|c| &mut c.text), for_candidates);
    let for_conversation = budget - candidate_bytes.min(for_candidates);
    fit(
        conversation.iter_mut().map(|m| &mut m.text),
        for_conversation,
    );
}

/// Cuts the longest texts to one common length so that all of them fit in `budget`.
fn fit<'a>(texts: impl Iterator<Item = &'a mut String>, budget: usize) {
    let mut texts: Vec<&mut String> = texts.collect();
    let lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
    let Some(cap) = common_cap(&lengths, budget) else {
        return;
    };
    for text in texts.iter_mut().filter(|t| t.len() > cap) {
        cut_middle(text, cap);
    }
}

/// The largest length L such that the texts, each cut to at most L, fit in `budget`; `None`
/// when they fit uncut.
fn common_cap(lengths: &[usize], budget: usize) -> Option<usize> {
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    let mut left = budget;
    for (i, &len) in sorted.iter().enumerate() {
        let share = left / (sorted.len() - i);
        if len > share {
            return Some(share);
        }
        left -= len;
    }
    None
}

/// Keeps the start and the end of `text`, `keep` bytes in all, marker included.
fn cut_middle(text: &mut String, keep: usize) {
    let cut_estimate = text.len().saturating_sub(keep);
    let room = keep.saturating_sub(marker(cut_estimate).len());
    let head_end = floor_boundary(text, room / 2);
    let tail_start = ceil_boundary(text, text.len() - (room - room / 2));
    let tail_start = tail_start.max(head_end);
    let cut = tail_start - head_end;
    let mut out = String::with_capacity(keep + 16);
    out.push_str(&text[..head_end]);
    out.push_str(&marker(cut));
    out.push_str(&text[tail_start..]);
    *text = out;
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(text: String) -> TemplateCandidate {
        TemplateCandidate {
            id: "1".into(),
            text,
        }
    }

    fn message(text: String) -> TemplateMessage {
        TemplateMessage {
            role: "user".into(),
            text,
        }
    }

    #[test]
    fn texts_within_the_budget_are_untouched() {
        let mut conversation = vec![message("hi".into())];
        let mut candidates = vec![candidate("a".repeat(100)), candidate("b".repeat(100))];
        fit_prompt(&mut conversation, &mut candidates, 1000);
        assert_eq!(candidates[0].text.len(), 100);
        assert_eq!(conversation[0].text, "hi");
    }

    #[test]
    fn long_texts_are_cut_fairly_and_marked() {
        let mut conversation = vec![message("q".repeat(1_000_000))];
        let mut candidates = vec![
            candidate("short answer".into()),
            candidate(format!("START{}END", "x".repeat(500_000))),
            candidate("y".repeat(300_000)),
        ];
        fit_prompt(&mut conversation, &mut candidates, 10_000);
        assert_eq!(candidates[0].text, "short answer", "short texts stay whole");
        let long = &candidates[1].text;
        assert!(
            long.starts_with("START") && long.ends_with("END"),
            "{long:.40}"
        );
        assert!(long.contains("bytes cut by bon-proxy (judge.max_prompt_bytes)"));
        let total: usize =
            candidates.iter().map(|c| c.text.len()).sum::<usize>() + conversation[0].text.len();
        assert!(total <= 10_000 + 3 * 80, "{total}");
        assert!(conversation[0].text.len() < 5_100);
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let mut candidates = vec![candidate("é".repeat(10_000)), candidate("ü".repeat(10_000))];
        fit_prompt(&mut [], &mut candidates, 1_001);
        assert!(candidates.iter().all(|c| c.text.contains("bytes cut")));
    }
}
