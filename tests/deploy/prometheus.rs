//! The Prometheus files: `promtool` checks the compose stack's scrape config and the alert
//! rules, and runs the rules' unit tests, each alert having a case where it fires.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::tools::{check, deploy, yaml_one};

#[test]
fn promtool_accepts_the_compose_scrape_config() {
    // Also checks that the rule files it names exist and parse.
    check(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = check(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rule_unit_tests_pass() {
    let out = check(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts.test.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has at least one case that expects it firing: a rule renamed or left out of
    // the tests would otherwise pass unnoticed.
    let tests = yaml_one(&deploy("prometheus/alerts.test.yml"));
    let firing: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str())
        .collect();
    for name in alert_names() {
        assert!(
            firing.contains(name.as_str()),
            "alerts.test.yml has no case where {name} fires"
        );
    }
}

fn alert_names() -> Vec<String> {
    alert_rules()
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name").to_string())
        .collect()
}

pub(crate) fn alert_rules() -> Vec<Value> {
    let rules = yaml_one(&deploy("prometheus/alerts.yml"));
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}
