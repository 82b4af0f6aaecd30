//! Metric and label names read out of text: every `bon_*`/`process_*` name a file mentions,
//! and, from a PromQL expression, the labels its selectors match and its `by`/`without`
//! clauses group by, with the metrics involved. A small tokenizer, enough for that; the
//! expressions themselves are checked as PromQL by `promtool` (`prometheus`, `grafana`).

use std::collections::BTreeSet;

use crate::grafana::as_promql;
use crate::metrics::label_names_of_sample;

/// True for the names the proxy exports (`up` is Prometheus' own, checked apart).
fn is_proxy_metric(name: &str) -> bool {
    name.starts_with("bon_") || name.starts_with("process_")
}

/// Every `bon_*` and `process_*` name in `text`, wherever it appears (queries, descriptions,
/// comments): a name a reader is pointed to must exist as much as one a query reads.
pub(crate) fn metric_names_in(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| is_name(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        if is_proxy_metric(word) && word.len() > "bon_".len() {
            names.insert(word.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str,
    Punct(char),
}

/// PromQL tokens, enough to find selectors and grouping clauses.
fn tokens(expr: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' || c == '`' {
            chars.next();
            let mut escaped = false;
            for d in chars.by_ref() {
                match (escaped, d) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, d) if d == c => break,
                    _ => {}
                }
            }
            out.push(Token::Str);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut word = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    word.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Ident(word));
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`5m` becomes a number and an identifier: harmless).
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_digit() || *d == '.')
            {
                chars.next();
            }
        } else {
            out.push(Token::Punct(c));
            chars.next();
        }
    }
    out
}

/// Label names a query uses: (metric, label) of each selector matcher, and the labels of each
/// `by`/`without` clause with the metrics of the whole query.
pub(crate) struct LabelUse {
    pub(crate) selected: Vec<(String, String)>,
    pub(crate) grouped: Vec<String>,
    pub(crate) metrics: Vec<String>,
}

pub(crate) fn label_use(expr: &str) -> LabelUse {
    let tokens = tokens(expr);
    let mut used = LabelUse {
        selected: Vec::new(),
        grouped: Vec::new(),
        metrics: Vec::new(),
    };
    let mut i = 0;
    while i < tokens.len() {
        if let Token::Ident(word) = &tokens[i] {
            let metric = is_proxy_metric(word) || word == "up";
            let grouping = word == "by" || word == "without";
            let opens = |c| tokens.get(i + 1) == Some(&Token::Punct(c));
            if metric {
                used.metrics.push(word.clone());
            }
            if (metric && opens('{')) || (grouping && opens('(')) {
                let close = if metric { '}' } else { ')' };
                i += 2;
                while i < tokens.len() && tokens[i] != Token::Punct(close) {
                    if let Token::Ident(label) = &tokens[i] {
                        if metric {
                            used.selected.push((word.clone(), label.clone()));
                        } else {
                            used.grouped.push(label.clone());
                        }
                    }
                    i += 1;
                }
            }
        }
        i += 1;
    }
    used
}
#[test]
fn label_use_reads_selectors_and_groupings() {
    let used = label_use(
        r#"histogram_quantile(0.99, sum by (le, mode) (rate(bon_overhead_seconds_bucket{job=~"a|b", mode!="x,y}"}[5m])))
           / on() group_left sum without (instance) (up{job="bon-proxy"} == 1)"#,
    );
    assert_eq!(
        used.selected,
        vec![
            ("bon_overhead_seconds_bucket".to_string(), "job".to_string()),
            (
                "bon_overhead_seconds_bucket".to_string(),
                "mode".to_string()
            ),
            ("up".to_string(), "job".to_string()),
        ]
    );
    assert_eq!(used.grouped, vec!["le", "mode", "instance"]);
    assert_eq!(used.metrics, vec!["bon_overhead_seconds_bucket", "up"]);
    assert_eq!(
        label_names_of_sample(r#"a="1",b="x\"}y",c="" } 3"#),
        vec!["a", "b", "c"]
    );
    assert_eq!(
        metric_names_in(
            "see bon_judge_total{outcome} and process_cpu_seconds_total, not bon-proxy or bon_"
        ),
        ["bon_judge_total", "process_cpu_seconds_total"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(
        as_promql(r#"rate(x{job=~"$job"}[$__rate_interval])"#),
        r#"rate(x{job=~".*"}[1m])"#
    );
}
