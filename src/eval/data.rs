//! Eval input: one preference item per JSONL line, its shape detected per line.
//!
//! - pairwise (RewardBench style): `{"prompt"|"messages", "chosen", "rejected", "subset"?}`;
//! - listwise: `{"messages"|"prompt", "candidates": [...], "best": K, "ranking"?: [...],
//!   "subset"?}`, `best` and `ranking` 0-based indices into `candidates`.
//!
//! A `prompt` string becomes one user message. Every error names the line and the field and
//! says what the line should hold. Blank lines are skipped.

use serde_json::{Map, Value};

use crate::openai::RequestMessage;

/// One preference item, whatever its input shape.
#[derive(Debug, Clone)]
pub struct Item {
    /// 1-based line number in the input file, for messages.
    pub line: usize,
    pub conversation: Vec<RequestMessage>,
    /// For a pair: `[chosen, rejected]`.
    pub candidates: Vec<String>,
    /// Index into `candidates` of the right answer (0, `chosen`, for a pair).
    pub best: usize,
    /// True for a pair, which is judged in both presentation orders.
    pub pair: bool,
    pub subset: Option<String>,
}

/// Parses every non-blank line of `text`, stopping at the first bad one.
pub fn parse(text: &str) -> Result<Vec<Item>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| parse_line(i + 1, line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// One line: a JSON object, pair or list.
fn parse_line(line: usize, text: &str) -> Result<Item, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON ({e}); each line must be one JSON object"))?;
    let Value::Object(object) = value else {
        return Err("not a JSON object; each line must be one pair or list object".into());
    };
    let conversation = conversation(&object)?;
    let subset = optional_string(&object, "subset")?;
    let (candidates, best, pair) = if object.contains_key("candidates") {
        listwise(&object)?
    } else if object.contains_key("chosen") || object.contains_key("rejected") {
        (
            vec![string(&object, "chosen")?, string(&object, "rejected")?],
            0,
            true,
        )
    } else {
        return Err(
            "neither a pair (`chosen` and `rejected`) nor a list (`candidates` and \
                    `best`); add one of these"
                .into(),
        );
    };
    Ok(Item {
        line,
        conversation,
        candidates,
        best,
        pair,
        subset,
    })
}

/// `prompt` (one user message) or `messages` (a chat conversation).
fn conversation(object: &Map<String, Value>) -> Result<Vec<RequestMessage>, String> {
    match (object.get("prompt"), object.get("messages")) {
        (Some(_), Some(_)) => Err("`prompt` and `messages` both set; keep one".into()),
        (Some(Value::String(prompt)), None) => Ok(vec![user_message(prompt)]),
        (Some(_), None) => Err("`prompt`: expected a string".into()),
        (None, Some(messages)) => messages_of(messages),
        (None, None) => Err("missing `prompt` (a string) or `messages` (a conversation)".into()),
    }
}

fn user_message(text: &str) -> RequestMessage {
    let mut extra = Map::new();
    extra.insert("content".into(), Value::from(text));
    RequestMessage {
        role: "user".into(),
        extra,
    }
}

fn messages_of(value: &Value) -> Result<Vec<RequestMessage>, String> {
    let messages: Vec<RequestMessage> =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let path = e.path().to_string();
            format!(
                "`messages{}`: {}; expected [{{\"role\": ..., \"content\": ...}}, ...]",
                path.trim_start_matches('.'),
                e.inner()
            )
        })?;
    if messages.is_empty() {
        return Err("`messages`: empty; give at least one message".into());
    }
    Ok(messages)
}

/// `candidates`, `best` and the optional `ranking`, checked against each other.
fn listwise(object: &Map<String, Value>) -> Result<(Vec<String>, usize, bool), String> {
    let Some(Value::Array(list)) = object.get("candidates") else {
        return Err("`candidates`: expected an array of strings".into());
    };
    let candidates = list
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("`candidates[{i}]`: expected a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if candidates.len() < 2 {
        return Err("`candidates`: fewer than 2; a judge needs at least two to choose".into());
    }
    let best = index(object.get("best"), "best", candidates.len())?;
    if let Some(ranking) = object.get("ranking") {
        check_ranking(ranking, candidates.len(), best)?;
    }
    Ok((candidates, best, false))
}

/// A 0-based index below `count`.
fn index(value: Option<&Value>, field: &str, count: usize) -> Result<usize, String> {
    let Some(value) = value else {
        return Err(format!(
            "missing `{field}` (0-based index into `candidates`)"
        ));
    };
    match value.as_u64().and_then(|k| usize::try_from(k).ok()) {
        Some(k) if k < count => Ok(k),
        _ => Err(format!(
            "`{field}`: {value} is not a 0-based index into the {count} candidates"
        )),
    }
}

/// A ranking must name distinct candidates and start with `best`.
fn check_ranking(value: &Value, count: usize, best: usize) -> Result<(), String> {
    let Value::Array(entries) = value else {
        return Err("`ranking`: expected an array of 0-based indices".into());
    };
    let mut seen = vec![false; count];
    for (i, entry) in entries.iter().enumerate() {
        let k = index(Some(entry), &format!("ranking[{i}]"), count)?;
        if std::mem::replace(&mut seen[k], true) {
            return Err(format!("`ranking[{i}]`: candidate {k} ranked twice"));
        }
    }
    match entries.first().and_then(Value::as_u64) {
        Some(first) if first as usize != best => Err(format!(
            "`ranking`: starts with {first} but `best` is {best}; make them agree"
        )),
        _ => Ok(()),
    }
}

fn string(object: &Map<String, Value>, field: &str) -> Result<String, String> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{field}`: expected a string")),
        None => Err(format!("missing `{field}` (a string)")),
    }
}

fn optional_string(object: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(object, field).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_with_a_prompt_becomes_one_user_message() {
        let items = parse(r#"{"prompt":"hi","chosen":"a","rejected":"b","subset":"s"}"#).unwrap();
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert!(item.pair);
        assert_eq!(item.candidates, ["a", "b"]);
        assert_eq!(item.best, 0);
        assert_eq!(item.subset.as_deref(), Some("s"));
        assert_eq!(item.conversation[0].role, "user");
        assert_eq!(item.conversation[0].extra["content"], "hi");
    }

    #[test]
    fn a_list_keeps_its_best_and_skips_blank_lines() {
        let text = "\n{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\
                    \"candidates\":[\"x\",\"y\",\"z\"],\"best\":2,\"ranking\":[2,0,1]}\n";
        let items = parse(text).unwrap();
        assert_eq!(items[0].line, 2);
        assert_eq!(items[0].best, 2);
        assert!(!items[0].pair);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let good = r#"{"prompt":"p","chosen":"a","rejected":"b"}"#;
        let cases = [
            (r#"{"prompt":"p","chosen":"a"}"#, "`rejected`"),
            (r#"{"prompt":"p","chosen":1,"rejected":"b"}"#, "`chosen`"),
            (r#"{"chosen":"a","rejected":"b"}"#, "`prompt`"),
            (
                r#"{"prompt":"p","candidates":["a","b"],"best":5}"#,
                "`best`",
            ),
            (
                r#"{"prompt":"p","candidates":["a","b"],"best":0,"ranking":[1,0]}"#,
                "`ranking`",
            ),
            (
                r#"{"messages":[{"content":"x"}],"chosen":"a","rejected":"b"}"#,
                "`messages",
            ),
            (r#"{"prompt":"p"}"#, "neither a pair"),
            ("not json", "not valid JSON"),
        ];
        for (bad, field) in cases {
            let err = parse(&format!("{good}\n{bad}")).unwrap_err();
            assert!(err.starts_with("line 2: "), "{err}");
            assert!(err.contains(field), "{bad}: {err}");
        }
    }
}
