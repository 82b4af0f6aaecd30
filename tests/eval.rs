//! `bon-proxy eval` as a user runs it: the real binary over `examples/eval-pairs.jsonl`, its
//! judges asking a mock upstream whose verdicts are scripted by the candidates' text.
//!
//! Every child writes stdout and stderr to files, runs without the variables the binary reads,
//! and is killed by a bounded wait if it hangs.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mock::{default_handler, Call, MockUpstream, Reply};
use common::served::{BIN, BINARY_ENV};
use serde_json::Value;
use tempfile::TempDir;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/eval-pairs.jsonl");
const WAIT: Duration = Duration::from_secs(30);

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// The `--report` JSON, when the run wrote one.
    report: Option<Value>,
}

/// Runs `bon-proxy eval --config <mock config> --report <file> ARGS` to completion.
fn eval(mock: Option<&MockUpstream>, args: &[&str]) -> Finished {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let mut cmd = Command::new(BIN);
    cmd.arg("eval").args(args).current_dir(dir.path());
    cmd.arg("--report").arg(&report);
    if let Some(mock) = mock {
        cmd.arg("--config").arg(write_config(&dir, mock));
    }
    for name in BINARY_ENV {
        cmd.env_remove(name);
    }
    let status = run(&dir, cmd);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    Finished {
        status,
        stdout: read("stdout"),
        stderr: read("stderr"),
        report: std::fs::read_to_string(&report)
            .ok()
            .map(|text| serde_json::from_str(&text).expect("the report is JSON")),
    }
}

fn write_config(dir: &TempDir, mock: &MockUpstream) -> PathBuf {
    let path = dir.path().join("proxy.toml");
    let toml = format!("[upstream]\nbase_url = \"{}\"\n", mock.base_url());
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Runs `cmd` with its output in `dir`, killing it after [`WAIT`].
fn run(dir: &TempDir, mut cmd: Command) -> ExitStatus {
    let out = File::create(dir.path().join("stdout")).expect("stdout file");
    let err = File::create(dir.path().join("stderr")).expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start bon-proxy");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("eval still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Only letters and digits, lower case: the mock compares answers whatever the judge prompt
/// escaped.
fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Every `chosen` answer of the examples, normalised.
fn chosen_answers() -> HashSet<String> {
    let text = std::fs::read_to_string(EXAMPLES).expect("read the examples");
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("example line is JSON"))
        .map(|item| normalise(item["chosen"].as_str().expect("chosen is a string")))
        .collect()
}

/// A judge model that always prefers the `chosen` answer, in the listwise (`<best>`) or
/// pairwise (`<winner>`) format, whatever the order.
async fn knowing_mock() -> MockUpstream {
    let chosen = Arc::new(chosen_answers());
    MockUpstream::with_handler(move |call: &Call| {
        let candidates = call.judge_candidates();
        let Some((id, _)) = candidates
            .iter()
            .find(|(_, text)| chosen.contains(&normalise(text)))
        else {
            return default_handler(call);
        };
        if id.chars().all(|c| c.is_ascii_alphabetic()) {
            return Reply::completion(&format!("<winner>{id}</winner>"));
        }
        Reply::judge_best(id, &[])
    })
    .await
}

fn judge<'a>(report: &'a Value, name: &str) -> &'a Value {
    let judges = report["judges"].as_array().expect("judges array");
    judges
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no judge {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_that_knows_the_answers_scores_one_under_both_strategies() {
    let mock = knowing_mock().await;
    let args = [
        "--data", EXAMPLES, "--judge", "listwise", "--judge", "pairwise",
    ];
    let done = blocking(|| eval(Some(&mock), &args));
    assert!(done.status.success(), "{}\n{}", done.stdout, done.stderr);
    let report = done.report.expect("report written");
    for name in ["listwise", "pairwise"] {
        let j = judge(&report, name);
        assert_eq!(j["items"], 32, "{j}");
        assert_eq!(j["accuracy"], 1.0, "{j}");
        assert_eq!(j["position_consistency"], 1.0, "{j}");
        assert_eq!(j["failures"], 0, "{j}");
        let ci = j["ci95"].as_array().expect("ci95 is [lo, hi]");
        assert!(ci[0].as_f64().unwrap() > 0.85 && ci[1] == 1.0, "{j}");
        for subset in ["helpfulness", "math", "code", "safety"] {
            assert_eq!(j["subsets"][subset]["items"], 8, "{j}");
            assert_eq!(j["subsets"][subset]["accuracy"], 1.0, "{j}");
        }
    }
    // Shown in both orders, the right answer was first half the time.
    assert_eq!(judge(&report, "listwise")["first_position_rate"], 0.5);
    assert!(done.stdout.contains("consistency"), "{}", done.stdout);
    assert!(done.stdout.contains("safety"), "{}", done.stdout);
    assert!(done.stderr.contains("128/128 decisions"), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_has_every_field_of_the_design() {
    let mock = knowing_mock().await;
    let args = ["--data", EXAMPLES, "--judge", "listwise", "--limit", "4"];
    let done = blocking(|| eval(Some(&mock), &args));
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.expect("report written");
    let j = judge(&report, "listwise");
    let mut keys: Vec<&str> = j
        .as_object()
        .expect("judge object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut want = [
        "name",
        "items",
        "accuracy",
        "ci95",
        "position_consistency",
        "first_position_rate",
        "failures",
        "tokens_per_decision",
        "latency_ms",
        "subsets",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert!(j["latency_ms"]["p50"].is_number() && j["latency_ms"]["p95"].is_number());
    assert!(j["tokens_per_decision"].as_f64().unwrap() > 0.0, "{j}");
    // --limit 4: the first four pairs, all helpfulness, judged twice each.
    assert_eq!(j["items"], 4);
    assert_eq!(j["subsets"]["helpfulness"]["items"], 4);
    assert_eq!(mock.calls().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_that_always_names_the_first_is_right_half_the_time_and_never_consistent() {
    // The default mock answers every judge call `<best>1</best>`.
    let mock = MockUpstream::start().await;
    let args = ["--data", EXAMPLES, "--judge", "listwise"];
    let done = blocking(|| eval(Some(&mock), &args));
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.expect("report written");
    let j = judge(&report, "listwise");
    assert_eq!(j["accuracy"], 0.5, "{j}");
    assert_eq!(j["position_consistency"], 0.0, "{j}");
    assert_eq!(j["first_position_rate"], 1.0, "{j}");
    assert_eq!(j["failures"], 0, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_apart_and_leave_accuracy_null() {
    let mock = MockUpstream::with_handler(|_: &Call| Reply::completion("I cannot decide.")).await;
    let args = ["--data", EXAMPLES, "--judge", "listwise", "--limit", "3"];
    let done = blocking(|| eval(Some(&mock), &args));
    assert!(
        done.status.success(),
        "low scores are no error: {}",
        done.stderr
    );
    let report = done.report.expect("report written");
    let j = judge(&report, "listwise");
    assert_eq!(j["items"], 3, "{j}");
    assert_eq!(j["failures"], 6, "{j}");
    assert!(j["accuracy"].is_null(), "{j}");
    assert!(j["ci95"].is_null(), "{j}");
    assert!(j["position_consistency"].is_null(), "{j}");
    assert!(done.stdout.contains("6/6"), "{}", done.stdout);
    assert!(done.stdout.contains("not counted as right or wrong"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprob_fails_every_decision_and_says_why() {
    let mock = MockUpstream::start().await;
    let args = ["--data", EXAMPLES, "--judge", "logprob", "--limit", "2"];
    let done = blocking(|| eval(Some(&mock), &args));
    assert!(done.status.success(), "{}", done.stderr);
    let j = judge(done.report.as_ref().expect("report"), "logprob").clone();
    assert_eq!(j["failures"], 4, "{j}");
    assert!(done.stdout.contains("no logprobs"), "{}", done.stdout);
    assert!(mock.calls().is_empty(), "logprob calls no model");
}

#[test]
fn a_bad_line_is_a_usage_error_naming_the_line_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data.jsonl");
    let good = r#"{"prompt":"p","chosen":"a","rejected":"b"}"#;
    let bad = r#"{"prompt":"p","chosen":"a","rejected":7}"#;
    std::fs::write(&data, format!("{good}\n{bad}\n")).expect("write data");
    let done = eval(None, &["--data", path_str(&data)]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(done.stderr.contains("line 2"), "{}", done.stderr);
    assert!(done.stderr.contains("`rejected`"), "{}", done.stderr);
    assert!(done.report.is_none());
}

#[test]
fn an_unknown_judge_is_a_usage_error_listing_the_judges() {
    let done = eval(None, &["--data", EXAMPLES, "--judge", "nosuch"]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(done.stderr.contains("nosuch"), "{}", done.stderr);
    assert!(done.stderr.contains("listwise"), "{}", done.stderr);
    let missing = eval(None, &["--data", "no-such-file.jsonl"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        missing.stderr.contains("no-such-file.jsonl"),
        "{}",
        missing.stderr
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_items_are_right_when_the_judge_picks_best() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        let candidates = call.judge_candidates();
        match candidates.iter().find(|(_, text)| text.contains("RIGHT")) {
            Some((id, _)) => Reply::judge_best(id, &[]),
            None => default_handler(call),
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("lists.jsonl");
    let lines = [
        r#"{"messages":[{"role":"user","content":"q1"}],"candidates":["RIGHT","no","nope"],"best":0,"subset":"s"}"#,
        r#"{"messages":[{"role":"user","content":"q2"}],"candidates":["no","nope","RIGHT"],"best":2,"ranking":[2,0,1]}"#,
    ];
    std::fs::write(&data, lines.join("\n")).expect("write data");
    let args = ["--data", path_str(&data), "--judge", "listwise"];
    let done = blocking(|| eval(Some(&mock), &args));
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.expect("report written");
    let j = judge(&report, "listwise");
    assert_eq!(j["items"], 2, "{j}");
    assert_eq!(j["accuracy"], 1.0, "{j}");
    assert!(j["position_consistency"].is_null(), "no pairs: {j}");
    assert_eq!(j["subsets"]["s"]["items"], 1, "{j}");
    assert_eq!(mock.calls().len(), 2, "a list is judged once");
}

/// Composite judges, a model server and a judge without calls all run through eval: the panel
/// and the cascade decide through their members, the reward model (which the mock does not
/// serve) fails every decision and says so, and consensus decides without any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_judge_runs_under_eval() {
    let mock = knowing_mock().await;
    let args = [
        "--data",
        EXAMPLES,
        "--limit",
        "4",
        "--judge",
        "panel",
        "--judge",
        "cascade",
        "--judge",
        "reward_model",
        "--judge",
        "consensus",
    ];
    let done = blocking(|| eval(Some(&mock), &args));
    assert!(done.status.success(), "{}\n{}", done.stdout, done.stderr);
    let report = done.report.expect("report written");
    for name in ["panel", "cascade"] {
        let j = judge(&report, name);
        assert_eq!(j["items"], 4, "{j}");
        assert_eq!(j["accuracy"], 1.0, "{j}");
    }
    let reward = judge(&report, "reward_model");
    assert_eq!(reward["failures"], 8, "both orders of four pairs: {reward}");
    assert!(reward["accuracy"].is_null(), "{reward}");
    let consensus = judge(&report, "consensus");
    assert_eq!(consensus["failures"], 0, "{consensus}");
    assert!(consensus["accuracy"].is_number(), "{consensus}");
}
