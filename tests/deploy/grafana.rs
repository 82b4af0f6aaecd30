//! The Grafana dashboards: each has a fixed uid, unique panel ids and a description on every
//! panel, and its queries, with Grafana's variables filled in, parse as PromQL (`promtool`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::tools::{deploy, read, run, text};

pub(crate) fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = deploy("grafana/dashboards");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana/dashboards") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let value = serde_json::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            found.push((path, value));
        }
    }
    assert!(!found.is_empty(), "no dashboard in {}", dir.display());
    found
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Every query of a dashboard's panels.
pub(crate) fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// A dashboard query as Prometheus receives it: Grafana's variables filled in.
pub(crate) fn as_promql(query: &str) -> String {
    let mut expr = query
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    // The rest are template variables inside regex matchers (`job=~"$job"`).
    while let Some(at) = expr.find('$') {
        let end = expr[at + 1..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(expr.len(), |i| at + 1 + i);
        expr.replace_range(at..end, ".*");
    }
    expr
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, dashboard) in dashboards() {
        assert!(
            dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{}: a dashboard needs a fixed uid (links and provisioning use it)",
            path.display()
        );
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let id = panel["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{}: panel id {id} twice", path.display());
            if panel["type"] != "row" {
                assert!(
                    panel["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{}: panel {:?} has no description (what it shows, which metric)",
                    path.display(),
                    panel["title"]
                );
            }
        }
        // promtool parses PromQL only as part of a rules file: one recording rule a query.
        let rules: Vec<Value> = dashboard_queries(&dashboard)
            .iter()
            .enumerate()
            .map(|(i, q)| json!({"record": format!("dashboard:query_{i}"), "expr": as_promql(q)}))
            .collect();
        assert!(!rules.is_empty(), "{}: no queries", path.display());
        let file = dir.path().join("dashboard-rules.json");
        let body = json!({"groups": [{"name": "dashboard", "rules": rules}]});
        std::fs::write(&file, body.to_string()).expect("write rules");
        let out = run("promtool", &["check", "rules", &file.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}: a query is not valid PromQL:\n{}\nqueries:\n{}",
            path.display(),
            text(&out),
            serde_json::to_string_pretty(&body).unwrap()
        );
    }
}
