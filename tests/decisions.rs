//! The decision log through the real server against the mock upstream: off by default, one
//! line per computed best-of-N answer with the DESIGN §8 fields, content only when asked,
//! sampling, rotation, and `export-pairs` turning a logged decision into eval pairs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bon_proxy::decisions::{export_pairs, rotated};
use bon_proxy::Config;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// Candidates answer "answer K"; the judge picks the one saying "answer 1" when shown it.
fn judge_picks_answer_1(call: &Call) -> Reply {
    if call.is_judge() {
        let shown = call.judge_candidates();
        let id = shown
            .iter()
            .find(|(_, text)| text.contains("answer 1"))
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| "1".into());
        return Reply::judge_best(&id, &[]);
    }
    Reply::completion(&format!("answer {}", call.seq))
}

fn logging_config(mock: &MockUpstream, path: &Path) -> Config {
    let mut config = config_for(mock);
    config.decisions.path = path.display().to_string();
    // Identical requests must each compute their answer (a cache hit is not logged).
    config.cache.enabled = false;
    config
}

/// The mock and a proxy logging decisions to `path` with their content.
async fn logging_with_content(path: &Path) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::with_handler(judge_picks_answer_1).await;
    let mut config = logging_config(&mock, path);
    config.decisions.include_content = true;
    let proxy = start_proxy(config).await;
    (mock, proxy)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The log's lines once there are `count` of them (the writer runs on its own thread).
async fn wait_for_lines(path: &Path, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let found = lines(path);
        if found.len() >= count || started.elapsed() > WAIT {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn off_by_default() {
    let mock = MockUpstream::start().await;
    let config = config_for(&mock);
    assert!(config.decisions.path.is_empty());
    let proxy = start_proxy(config).await;
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], chat_body("Hi")).await;
    answer.expect_ok();
}

#[tokio::test]
async fn one_line_per_request_with_every_field_and_no_content_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let mock = MockUpstream::with_handler(judge_picks_answer_1).await;
    let proxy = start_proxy(logging_config(&mock, &path)).await;
    let headers = [("x-best-of-n", "3"), ("x-request-id", "req-decided-1")];
    let answer = post_chat(&proxy, &headers, chat_body("Which?")).await;
    answer.expect_ok();
    let second = post_chat(&proxy, &[("x-best-of-n", "2")], chat_body("Again?")).await;
    second.expect_ok();
    let logged = wait_for_lines(&path, 2).await;
    assert_eq!(logged.len(), 2, "{logged:?}");
    let line = &logged[0];
    assert_eq!(
        keys(line),
        [
            "candidates",
            "fallback",
            "judge",
            "latency_ms",
            "mode",
            "model",
            "n",
            "ranking",
            "request_id",
            "scores",
            "strategy",
            "time",
            "usage",
            "winner"
        ]
    );
    assert_eq!(line["request_id"], "req-decided-1");
    assert_eq!(line["model"], "gpt-test");
    assert_eq!(line["n"], 3);
    assert_eq!(line["mode"], "select");
    assert_eq!(
        line["judge"].as_str(),
        answer.header("x-best-of-n-judge"),
        "{line}"
    );
    assert!(line["strategy"].is_string());
    let winner = answer.header("x-best-of-n-selected").unwrap();
    assert_eq!(line["winner"].to_string(), winner);
    assert_eq!(line["ranking"][0], line["winner"]);
    assert_eq!(line["scores"].as_array().unwrap().len(), 3);
    assert_eq!(line["fallback"], Value::Null);
    let total = answer.json()["usage"]["total_tokens"].clone();
    assert_eq!(line["usage"]["total_tokens"], total);
    assert!(line["latency_ms"].as_f64().unwrap() > 0.0);
    let time = line["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    let candidates = line["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3);
    for (i, candidate) in candidates.iter().enumerate() {
        assert_eq!(keys(candidate), ["index", "model", "status"]);
        assert_eq!(candidate["index"], i);
        assert_eq!(candidate["status"], "ok");
    }
    // Nothing the user wrote or the models answered, and no header but the request id.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("Which?") && !text.contains("answer "),
        "{text}"
    );
    assert!(!text.contains(UPSTREAM_KEY));
    // A second request got its own id.
    assert!(logged[1]["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty() && id != "req-decided-1"));
}

#[tokio::test]
async fn include_content_adds_the_texts_and_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let (_mock, proxy) = logging_with_content(&path).await;
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Which?")).await;
    answer.expect_ok();
    let logged = wait_for_lines(&path, 1).await;
    let line = &logged[0];
    assert_eq!(
        line["conversation"],
        json!([{"role": "user", "content": "Which?"}])
    );
    let winner = line["winner"].as_u64().unwrap() as usize;
    let texts: Vec<&str> = line["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 3);
    assert_eq!(texts[winner], answer.content());
}

#[tokio::test]
async fn sample_rate_zero_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let mock = MockUpstream::start().await;
    let mut config = logging_config(&mock, &path);
    config.decisions.sample_rate = 0.0;
    let proxy = start_proxy(config).await;
    for _ in 0..3 {
        post_chat(&proxy, &[("x-best-of-n", "2")], chat_body("Hi"))
            .await
            .expect_ok();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[tokio::test]
async fn rotation_by_size_keeps_only_keep_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let mock = MockUpstream::start().await;
    let mut config = logging_config(&mock, &path);
    // A line is several hundred bytes: every second line starts a new file.
    config.decisions.max_bytes = 1024;
    config.decisions.keep = 2;
    let proxy = start_proxy(config).await;
    for i in 0..8 {
        let id = format!("req-rot-{i}");
        post_chat(
            &proxy,
            &[("x-best-of-n", "3"), ("x-request-id", &id)],
            chat_body("Hi"),
        )
        .await
        .expect_ok();
    }
    // The newest line is in the live file once everything is written.
    let started = Instant::now();
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains("req-rot-7")
        && started.elapsed() < WAIT
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let files: Vec<PathBuf> = vec![path.clone(), rotated(&path, 1), rotated(&path, 2)];
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(
            size > 0 && size <= 1024,
            "{} is {size} bytes",
            file.display()
        );
    }
    assert!(!rotated(&path, 3).exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    // Newest in the live file, older ones in .1 then .2, none lost in between.
    let ids = |file: &Path| -> Vec<String> {
        lines(file)
            .iter()
            .map(|l| l["request_id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut all: Vec<String> = files.iter().rev().flat_map(|f| ids(f)).collect();
    let last = all.pop().unwrap();
    assert_eq!(last, "req-rot-7");
    for pair in all.windows(2) {
        assert!(pair[0] < pair[1], "{all:?}");
    }
}

#[tokio::test]
async fn export_pairs_makes_the_winner_chosen_against_each_loser() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let (_mock, proxy) = logging_with_content(&path).await;
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Which?")).await;
    answer.expect_ok();
    let logged = wait_for_lines(&path, 1).await;
    let judge = logged[0]["judge"].clone();
    // A line logged without content is skipped, not an error.
    let mut without_content = logged[0].clone();
    let map = without_content.as_object_mut().unwrap();
    map.remove("conversation");
    map["candidates"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .for_each(|c| {
            c.as_object_mut().unwrap().remove("text");
        });
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("{without_content}\n"));
    let from = dir.path().join("both.jsonl");
    std::fs::write(&from, text).unwrap();
    let out = dir.path().join("pairs.jsonl");
    let summary = export_pairs(&from, &out).unwrap();
    assert_eq!(summary.decisions, 2);
    assert_eq!(summary.pairs, 2);
    assert_eq!(summary.skipped_without_content, 1);
    let pairs = lines(&out);
    assert_eq!(pairs.len(), 2);
    let mut rejected = Vec::new();
    for pair in &pairs {
        assert_eq!(keys(pair), ["chosen", "messages", "rejected", "subset"]);
        assert_eq!(pair["chosen"], answer.content());
        assert_eq!(
            pair["messages"],
            json!([{"role": "user", "content": "Which?"}])
        );
        assert_eq!(pair["subset"], judge);
        rejected.push(pair["rejected"].as_str().unwrap().to_string());
    }
    assert!(!rejected.contains(&answer.content()));
    rejected.dedup();
    assert_eq!(rejected.len(), 2);
}

#[test]
fn export_pairs_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("bad.jsonl");
    std::fs::write(&from, "\n{\"time\": 3}\n").unwrap();
    let err = export_pairs(&from, &dir.path().join("out.jsonl")).unwrap_err();
    assert!(err.contains("bad.jsonl:2"), "{err}");
}

#[tokio::test]
async fn a_fused_answer_is_logged_with_no_judge_and_no_winner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let mock = MockUpstream::with_handler(|call: &Call| {
        if call.is_judge() && call.prompt_text().contains("Write the single best reply") {
            return Reply::completion("FUSED ANSWER");
        }
        Reply::completion(&format!("answer {}", call.seq))
    })
    .await;
    let proxy = start_proxy(logging_config(&mock, &path)).await;
    let headers = [("x-best-of-n", "2"), ("x-best-of-n-mode", "fuse")];
    let answer = post_chat(&proxy, &headers, chat_body("Fuse?")).await;
    assert_eq!(answer.content(), "FUSED ANSWER");
    let logged = wait_for_lines(&path, 1).await;
    let line = &logged[0];
    assert_eq!(line["mode"], "fuse");
    assert_eq!(line["strategy"], "fuse");
    assert_eq!(line["judge"], Value::Null);
    assert_eq!(line["winner"], Value::Null);
    assert_eq!(line["ranking"], json!([]));
    assert_eq!(line["candidates"].as_array().unwrap().len(), 2);
}

#[test]
fn export_pairs_on_the_command_line_says_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("decisions.jsonl");
    let decision = |fallback: Value, with_content: bool| {
        let text = |t: &str| if with_content { json!(t) } else { Value::Null };
        let mut line = json!({
            "time": "2026-01-01T00:00:00.000Z", "request_id": "r", "model": "m", "n": 3,
            "judge": "strict", "strategy": "listwise", "mode": "select", "winner": 2,
            "ranking": [2, 0, 1], "scores": [0.5, 0.1, 0.9], "fallback": fallback,
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            "latency_ms": 12.5,
            "candidates": [
                {"index": 0, "status": "ok", "model": "m", "text": text("zero")},
                {"index": 1, "status": "ok", "model": "m", "text": text("one")},
                {"index": 2, "status": "ok", "model": "m", "text": text("two")},
            ],
        });
        if with_content {
            line["conversation"] = json!([{"role": "user", "content": "q"}]);
        }
        line.to_string()
    };
    let text = [
        decision(Value::Null, true),
        decision(json!("first_ok (judge_failed)"), true),
        decision(Value::Null, false),
    ]
    .join("\n");
    std::fs::write(&from, text).unwrap();
    let out = dir.path().join("pairs.jsonl");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bon-proxy"))
        .args(["export-pairs", "--from"])
        .arg(&from)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("2 pairs from 3 decisions"), "{stderr}");
    assert!(stderr.contains("2 decisions skipped"), "{stderr}");
    let pairs = lines(&out);
    assert_eq!(
        pairs[0],
        json!({"messages": [{"role": "user", "content": "q"}], "chosen": "two",
               "rejected": "zero", "subset": "strict"})
    );
    assert_eq!(pairs[1]["rejected"], "one");
}

#[tokio::test]
async fn an_unusable_path_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;
    let path = dir.path().join("missing-dir").join("decisions.jsonl");
    let config = logging_config(&mock, &path);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = bon_proxy::Server::with_listener(listener, config, Default::default())
        .err()
        .expect("start-up refused");
    assert!(err.to_string().contains("decisions.path"), "{err}");
}

#[tokio::test]
async fn a_streamed_best_of_n_answer_is_logged_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let mock = MockUpstream::with_handler(judge_picks_answer_1).await;
    let proxy = start_proxy(logging_config(&mock, &path)).await;
    let body = json!({
        "model": "gpt-test",
        "stream": true,
        "messages": [{"role": "user", "content": "Stream?"}],
    });
    let answer = post_chat(&proxy, &[("x-best-of-n", "2")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    let logged = wait_for_lines(&path, 1).await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["mode"], "select");
    assert_eq!(logged[0]["n"], 2);
}

/// Live traffic becomes an eval data set: a logged decision, exported, is read by
/// `bon-proxy eval`, and the same judge agrees with its own labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_pairs_round_trip_into_eval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let (mock, proxy) = logging_with_content(&path).await;
    post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Which?"))
        .await
        .expect_ok();
    wait_for_lines(&path, 1).await;
    let pairs = dir.path().join("pairs.jsonl");
    export_pairs(&path, &pairs).unwrap();

    let eval_config = dir.path().join("eval.toml");
    let toml = format!("[upstream]\nbase_url = \"{}\"\n", mock.base_url());
    std::fs::write(&eval_config, toml).unwrap();
    let report = dir.path().join("report.json");
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bon-proxy"))
            .args(["eval", "--judge", "listwise", "--data"])
            .arg(&pairs)
            .arg("--config")
            .arg(&eval_config)
            .arg("--report")
            .arg(&report)
            .env_remove("OPENAI_API_KEY")
            .env_remove("BON_CONFIG")
            .output()
            .expect("run bon-proxy eval")
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let listwise = &report["judges"][0];
    assert_eq!(listwise["name"], "listwise");
    assert_eq!(listwise["items"], 2, "one pair per losing candidate");
    assert_eq!(
        listwise["accuracy"], 1.0,
        "the judge agrees with its own labels"
    );
}
