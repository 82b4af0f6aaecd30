//! The live check: the real binary, `serve --demo` on the production config, gets traffic
//! that makes every metric family appear, and its `/metrics` scrape must carry every metric
//! name that deploy/grafana and deploy/prometheus mention and every label their queries select
//! or group by. The compose stack's config must load too.
//!
//! Reading the scrape (the exposition format) is here; reading names and labels out of PromQL
//! is in `promql`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::served::{exchange, get, Answer, Serve, Served, BIN};
use crate::common::{chat_body, free_port};
use crate::grafana::{as_promql, dashboard_queries, dashboards};
use crate::prometheus::alert_rules;
use crate::promql::{label_use, metric_names_in};
use crate::tools::{deploy, read, root, text, tool, yaml_one};

/// Labels that Prometheus adds to every scraped series (`job`, `instance`), and that the
/// Prometheus Operator adds from the target (`namespace`, `pod`), rather than the proxy.
const TARGET_LABELS: [&str; 4] = ["job", "instance", "namespace", "pod"];

#[test]
fn the_proxy_exports_every_metric_and_label_that_deploy_uses() {
    // The python tool (YAML) first, so that a missing one is reported as such.
    tool("python");
    let mut problems = Vec::new();
    let proxy = proxy_on_the_deploy_config(&mut problems);

    // The compose stack's config must load too (`check-config --demo` is what serve reads).
    let out = Command::new(BIN)
        .args(["check-config", "--demo", "--config"])
        .arg(deploy("compose.proxy.toml"))
        .env_remove("BON_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run check-config");
    if !out.status.success() {
        problems.push(format!(
            "check-config refused deploy/compose.proxy.toml: {}",
            text(&out).trim()
        ));
    }

    // Traffic that makes every family appear: a passthrough, a best-of-3 (candidates, judge,
    // winner position, tokens, cache miss) and its repeat (a cache hit).
    chat(proxy.addr, &[], "Plain question");
    let first = chat(proxy.addr, &[("x-best-of-n", "3")], "Why sleep?");
    assert_eq!(first.header("x-cache"), Some("miss"), "{}", first.head);
    let again = chat(proxy.addr, &[("x-best-of-n", "3")], "Why sleep?");
    assert_eq!(again.header("x-cache"), Some("hit"), "{}", again.head);

    let metrics = get(proxy.addr, "/metrics").expect("scrape /metrics");
    assert_eq!(metrics.status, 200);
    let exported = Exported::parse(&metrics.body);
    assert!(
        exported.labels["bon_requests_total"].contains("mode"),
        "the scrape parser lost labels: {:?}",
        exported.labels
    );
    problems.extend(unknown_names(&exported));
    assert!(
        problems.is_empty(),
        "deploy/ does not match what the proxy exports and reads:\n- {}\n--- proxy log ---\n{}",
        problems.join("\n- "),
        proxy.log()
    );
}

/// The proxy started on deploy/kubernetes/proxy.toml (the production config, so the keys the
/// deployment relies on are also checked to exist), its `cache.redis_url` pointed at a loopback
/// port nothing listens on rather than at a host named `redis`: every Redis operation fails at
/// once and is counted. (No Redis traffic is needed for the Redis series to show: the proxy
/// registers each label value of `bon_cache_redis_errors_total{op}` and
/// `bon_cache_requests_total{result}` at zero when it starts.) When the proxy refuses that
/// file, the refusal is recorded as a problem and the proxy is started on the defaults, so that
/// the rest is still checked.
fn proxy_on_the_deploy_config(problems: &mut Vec<String>) -> Served {
    let text = read(&deploy("kubernetes/proxy.toml"));
    assert!(text.contains("redis://redis:6379"));
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let started = Serve::demo()
        .config(&text.replace("redis://redis:6379", &nowhere))
        .env("REDIS_PASSWORD", "not-a-real-password")
        .try_start();
    started.unwrap_or_else(|log| {
        problems.push(format!(
            "serve --demo refused deploy/kubernetes/proxy.toml: {}",
            log.trim()
        ));
        Serve::demo().start()
    })
}

/// POSTs a chat completion asking `question`, with `headers`.
fn chat(addr: SocketAddr, headers: &[(&str, &str)], question: &str) -> Answer {
    let body = chat_body(question);
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let answer = exchange(addr, &request).expect("chat completion");
    assert_eq!(answer.status, 200, "{}\n{}", answer.head, answer.body);
    answer
}

/// The names used in deploy/grafana and deploy/prometheus that `exported` lacks, and the
/// labels used with a metric that it does not carry.
fn unknown_names(exported: &Exported) -> Vec<String> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for dir in ["grafana", "prometheus"] {
        collect_files(&deploy(dir), &mut files);
    }
    for file in files {
        for name in metric_names_in(&read(&file)) {
            if exported.family(&name).is_none() {
                problems.push(format!(
                    "{} uses {name}, which /metrics does not export",
                    file.strip_prefix(root()).unwrap_or(&file).display()
                ));
            }
        }
    }
    for (source, expr) in queries_of_deploy() {
        let used = label_use(&expr);
        // Labels a metric of this query carries: its own, the target's, and `le` on buckets.
        let labels_of = |metric: &str| -> Option<BTreeSet<String>> {
            let mut set: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
            if metric != "up" {
                set.extend(
                    exported
                        .labels
                        .get(&exported.family(metric)?)?
                        .iter()
                        .cloned(),
                );
            }
            if metric.ends_with("_bucket") {
                set.insert("le".into());
            }
            Some(set)
        };
        for (metric, label) in &used.selected {
            if let Some(labels) = labels_of(metric) {
                if !labels.contains(label) {
                    problems.push(format!(
                        "{source}: {metric} has no label {label:?} (it has {labels:?}): {expr}"
                    ));
                }
            }
        }
        let known: Vec<BTreeSet<String>> =
            used.metrics.iter().filter_map(|m| labels_of(m)).collect();
        if known.len() < used.metrics.len() {
            continue; // a metric already reported missing: its labels cannot be checked
        }
        let any: BTreeSet<&String> = known.iter().flatten().collect();
        for label in &used.grouped {
            if !any.contains(label) {
                problems.push(format!(
                    "{source}: groups by {label:?}, which none of {:?} carries: {expr}",
                    used.metrics
                ));
            }
        }
    }
    problems
}

/// Every PromQL expression and series selector of the dashboards and the rules (and the rule
/// tests' input series), with where it comes from.
fn queries_of_deploy() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for (path, dashboard) in dashboards() {
        for q in dashboard_queries(&dashboard) {
            all.push((path.display().to_string(), as_promql(&q)));
        }
    }
    for rule in alert_rules() {
        all.push((
            format!("alerts.yml {}", rule["alert"]),
            rule["expr"].as_str().expect("expr").to_string(),
        ));
    }
    let tests = yaml_one(&deploy("prometheus/alerts.test.yml"));
    for case in tests["tests"].as_array().expect("tests") {
        for series in case["input_series"].as_array().into_iter().flatten() {
            all.push((
                "alerts.test.yml input_series".into(),
                series["series"].as_str().expect("series").to_string(),
            ));
        }
    }
    all
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e == "json" || e == "yml" || e == "yaml")
        {
            out.push(path);
        }
    }
}

/// What a scrape shows: each metric family with the label names its samples carry.
struct Exported {
    /// Family name -> its type (`counter`, `histogram`...).
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut types = BTreeMap::new();
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    types.insert(name.to_string(), kind.to_string());
                    labels.entry(name.to_string()).or_default();
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let Some(family) = Self::family_in(&types, &line[..name_end]) else {
                continue;
            };
            let names = labels.entry(family).or_default();
            if line[name_end..].starts_with('{') {
                names.extend(label_names_of_sample(&line[name_end + 1..]));
            }
        }
        Exported { types, labels }
    }

    /// The family a sample or series name belongs to: itself, or a histogram's (or summary's)
    /// `_bucket`/`_sum`/`_count` series.
    fn family_in(types: &BTreeMap<String, String>, name: &str) -> Option<String> {
        if types.contains_key(name) {
            return Some(name.to_string());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
            .then(|| base.to_string())
        })
    }

    fn family(&self, name: &str) -> Option<String> {
        Self::family_in(&self.types, name)
    }
}

/// The label names of a sample line, from just after its `{`.
pub(crate) fn label_names_of_sample(rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let name = name.trim().trim_start_matches(',').trim();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        names.push(name.to_string());
        // The quoted value, escapes included.
        if chars.next() != Some('"') {
            break;
        }
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => {}
            }
        }
        if chars.peek() == Some(&'}') {
            break;
        }
    }
    names
}
