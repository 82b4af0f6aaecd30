//! The demo's judge emulation: reading `<candidate>` blocks and answering like a listwise,
//! pointwise or pairwise judge by a simple rubric (structured answers win), or like a fuser
//! (a prompt with candidates that asks for no verdict tag).

/// `(id, text)` of every well-formed candidate block, in prompt order.
pub(super) fn parse_candidates(text: &str) -> Vec<(&str, &str)> {
    const OPEN: &str = "<candidate id=\"";
    const CLOSE: &str = "</candidate>";
    let mut candidates: Vec<(&str, &str)> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        rest = &rest[start + OPEN.len()..];
        let Some(quote) = rest.find('"') else { break };
        let id = &rest[..quote];
        let Some(body) = rest[quote + 1..].trim_start().strip_prefix('>') else {
            continue;
        };
        let plain = id.len() <= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if id.is_empty() || !plain || candidates.iter().any(|&(seen, _)| seen == id) {
            continue;
        }
        let find = |tag| body.find(tag).unwrap_or(body.len());
        let end = find(CLOSE).min(find(OPEN));
        candidates.push((id, body[..end].trim()));
        rest = &body[end..];
    }
    candidates
}

/// The rubric described in the module documentation.
pub(super) fn rubric(text: &str) -> usize {
    let structured = text.lines().filter(|line| is_structured(line.trim_start()));
    3 * structured.count() + text.split_whitespace().count().min(120) / 20
}

pub(super) fn is_structured(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") || line.starts_with('#') {
        return true;
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line.as_bytes()[digits..].starts_with(b". ")
}

pub(super) fn judge_reply(prompt: &str) -> Option<String> {
    let scored = |(id, text)| (id, rubric(text));
    let mut ranked: Vec<(&str, usize)> = parse_candidates(prompt).into_iter().map(scored).collect();
    // Stable sort: equal scores keep prompt order, so the lower id wins ties.
    ranked.sort_by_key(|&(_, score)| std::cmp::Reverse(score));
    let &(best, best_score) = ranked.first()?;
    if prompt.contains("<winner>") {
        if ranked.get(1).is_some_and(|&(_, score)| score == best_score) {
            return Some("Both answers are equally good. <winner>tie</winner>".into());
        }
        let reason = format!("The better answer is {best}: it is more structured and complete.");
        return Some(format!("{reason} <winner>{best}</winner>"));
    }
    if prompt.contains("<score>") {
        // 0 to 10 with diminishing returns, so structured answers still differ.
        let score = 10.0 * best_score as f64 / (best_score as f64 + 6.0);
        return Some(format!(
            "Rated on structure and length. <score>{score:.1}</score>"
        ));
    }
    if !prompt.contains("<best>") {
        // Candidates but no verdict asked for: a fuser prompt. The "fused" answer is the most
        // structured candidate, closed by a line showing how many were read.
        let best_text = parse_candidates(prompt)
            .into_iter()
            .find(|&(id, _)| id == best)
            .map_or("", |(_, text)| text);
        let read = ranked.len();
        return Some(format!("{best_text}\n\n(Fused from {read} answers.)"));
    }
    let ranking: Vec<&str> = ranked.iter().map(|&(id, _)| id).collect();
    let ranking = ranking.join(",");
    let reason = format!("Candidate {best} is the most structured and complete answer.");
    Some(format!(
        "{reason} <best>{best}</best>\n<ranking>{ranking}</ranking>"
    ))
}
