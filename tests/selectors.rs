//! The no-call selectors, through the real server against the mock upstream: `consensus`
//! (the most common final answer: numbers, `\boxed{}`, JSON mode, the medoid fallback, early
//! stop) and `logprob` (the most confident candidate by mean token log-probability), with `n`,
//! streaming and the cache.
//!
//! Requests fix a `seed`, so candidate k is asked with `seed + k` and the mock answers it
//! `texts[k]`: a test knows which generation index said what, whatever order the calls arrive
//! in.

mod common;

use std::time::{Duration, Instant};

use bon_proxy::Config;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use serde_json::{json, Value};

const SEED: i64 = 100;
const WAIT: Duration = Duration::from_secs(5);

/// The generation index of a candidate call, from its seed.
fn index_of(call: &Call) -> usize {
    let seed = call.json.as_ref().and_then(|b| b["seed"].as_i64());
    seed.map_or(0, |s| (s - SEED) as usize)
}

/// A mock whose candidate k answers `reply(k)`, and a proxy in front of it.
async fn setup(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> (MockUpstream, Proxy) {
    setup_with(reply, |_| {}).await
}

/// As [`setup`], with `edit` applied to the proxy's config.
async fn setup_with(
    reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    edit: impl FnOnce(&mut Config),
) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::with_handler(move |call| reply(index_of(call))).await;
    let mut config = config_for(&mock);
    edit(&mut config);
    let proxy = start_proxy(config).await;
    (mock, proxy)
}

/// Candidate k answers `texts[k]`.
async fn answering(texts: &'static [&'static str]) -> (MockUpstream, Proxy) {
    setup(|k| Reply::completion(texts[k])).await
}

/// A question with the fixed seed, plus `extra` fields.
fn body(extra: Value) -> String {
    let mut body = json!({
        "model": "gpt-test", "seed": SEED,
        "messages": [{"role": "user", "content": "How much is it?"}],
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body.to_string()
}

/// A best-of-`n` request to `judge` with the debug object.
async fn ask(proxy: &Proxy, judge: &str, n: usize, extra: Value) -> Answer {
    let n = n.to_string();
    let headers = [
        ("x-best-of-n", n.as_str()),
        ("x-best-of-n-judge", judge),
        ("x-best-of-n-debug", "1"),
    ];
    let answer = post_chat(proxy, &headers, body(extra)).await;
    answer.expect_ok();
    answer
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer.header(name).unwrap_or_else(|| panic!("no {name}"))
}

fn judge_debug(answer: &Answer) -> Value {
    answer.json()["best_of_n"]["judge"].clone()
}

/// `key` of each consensus answer in the debug object, in generation order.
fn answers(answer: &Answer, key: &str) -> Vec<Value> {
    let judge = judge_debug(answer);
    let list = judge["answers"].as_array().expect("consensus answers");
    list.iter().map(|a| a[key].clone()).collect()
}

// ---------------------------------------------------------------- consensus

#[tokio::test]
async fn consensus_groups_numbers_however_they_are_written() {
    const TEXTS: &[&str] = &["999", "The answer is 1,000.", "1000", "999.5", "It is 1e3"];
    let (mock, proxy) = answering(TEXTS).await;
    let answer = ask(&proxy, "consensus", 5, json!({})).await;
    assert_eq!(header(&answer, "x-best-of-n-selected"), "1");
    assert_eq!(answer.content(), "The answer is 1,000.");
    assert_eq!(header(&answer, "x-best-of-n-scores"), "0.2,0.6,0.6,0.2,0.6");
    assert_eq!(header(&answer, "x-best-of-n-judge"), "consensus");
    assert!(answer.header("x-best-of-n-fallback").is_none());
    let keys = answers(&answer, "key");
    assert_eq!(
        keys,
        ["999", "1000", "1000", "999.5", "1000"].map(Value::from)
    );
    assert_eq!(answers(&answer, "rule")[1], "last_number");
    assert_eq!(answers(&answer, "group_size")[2], 3);
    assert_eq!(judge_debug(&answer)["medoid"], false);
    assert_eq!(judge_debug(&answer)["usage"]["total_tokens"], 0);
    assert_eq!(answer.json()["best_of_n"]["strategy"], "consensus");
    let calls = mock.wait_for_calls(5, WAIT).await;
    assert!(calls.iter().all(|c| !c.is_judge()), "no judge call");
    assert_eq!(calls.len(), 5);
}

#[tokio::test]
async fn consensus_reads_the_last_box_with_nested_braces() {
    const TEXTS: &[&str] = &[
        "So $x = \\boxed{\\frac{1}{3}}$ after 2 steps.",
        "We get \\boxed{\\frac{1}{2}}, checked 3 ways.",
        "Try \\boxed{1} first; in the end \\boxed{ \\frac{1}{2} }.",
    ];
    let (_mock, proxy) = answering(TEXTS).await;
    let answer = ask(&proxy, "consensus", 3, json!({})).await;
    assert_eq!(header(&answer, "x-best-of-n-selected"), "1");
    assert_eq!(answers(&answer, "rule"), ["boxed"; 3].map(Value::from));
    assert_eq!(answers(&answer, "answer")[2], " \\frac{1}{2} ");
    assert_eq!(answers(&answer, "key")[1], "\\frac{1}{2}");
}

#[tokio::test]
async fn consensus_in_json_mode_compares_values_and_skips_invalid_json() {
    const TEXTS: &[&str] = &[
        r#"{"city": "Paris", "rank": 1}"#,
        "not json at all",
        r#"{"rank": 2, "city": "Lyon"}"#,
        r#"{ "rank": 1.0, "city": "paris " }"#,
    ];
    let (_mock, proxy) = answering(TEXTS).await;
    let format = json!({"response_format": {"type": "json_object"}});
    let answer = ask(&proxy, "consensus", 4, format).await;
    assert_eq!(header(&answer, "x-best-of-n-selected"), "0");
    assert_eq!(header(&answer, "x-best-of-n-disqualified"), "1");
    assert_eq!(header(&answer, "x-best-of-n-scores"), "0.667,-,0.333,0.667");
    assert_eq!(answers(&answer, "rule"), ["json"; 3].map(Value::from));
    let keys = answers(&answer, "key");
    assert_eq!(keys[0], r#"{"city":"paris","rank":1}"#);
    assert_eq!(keys[0], keys[2], "candidate 3 is the third the judge saw");
}

#[tokio::test]
async fn consensus_without_agreement_picks_the_medoid() {
    const TEXTS: &[&str] = &[
        "Red, green and blue.",
        "Red, green, blue and yellow.",
        "Green, blue, yellow or purple.",
    ];
    let (_mock, proxy) = answering(TEXTS).await;
    let answer = ask(&proxy, "consensus", 3, json!({})).await;
    assert_eq!(header(&answer, "x-best-of-n-selected"), "1");
    assert_eq!(answers(&answer, "rule"), ["text"; 3].map(Value::from));
    assert_eq!(judge_debug(&answer)["medoid"], true);
    assert_eq!(judge_debug(&answer)["ranking"], json!([1, 0, 2]));
    let similarity = answers(&answer, "similarity");
    assert!(similarity[1].as_f64() > similarity[0].as_f64());
    assert_eq!(header(&answer, "x-best-of-n-scores"), "0.333,0.333,0.333");
}

#[tokio::test]
async fn consensus_ranks_n_choices_streams_and_caches() {
    const TEXTS: &[&str] = &["Final answer: 7", "answer: 8", "It is 8.", "\\boxed{7.0}"];
    let (mock, proxy) = answering(TEXTS).await;
    let answer = ask(&proxy, "consensus", 4, json!({"n": 2})).await;
    let choices = answer.json()["choices"].clone();
    assert_eq!(choices[0]["message"]["content"], "Final answer: 7");
    assert_eq!(choices[1]["message"]["content"], "\\boxed{7.0}");
    assert_eq!(choices[1]["index"], 1);

    let again = ask(&proxy, "consensus", 4, json!({"n": 2})).await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    assert_eq!(mock.calls().len(), 4, "a hit calls nobody");

    let stream = json!({"stream": true});
    let headers = [("x-best-of-n", "4"), ("x-best-of-n-judge", "consensus")];
    let streamed = post_chat(&proxy, &headers, body(stream)).await;
    streamed.expect_ok();
    let content: String = streamed
        .sse_chunks()
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "Final answer: 7");
    assert_eq!(header(&streamed, "x-best-of-n-selected"), "0");
}

// ---------------------------------------------------------------- early stop

const SLOW: Duration = Duration::from_secs(5);

/// Candidates 0..3 say 42 at once; 3 and 4 would take `SLOW`.
fn three_quick_agree(k: usize) -> Reply {
    match k {
        0..=2 => Reply::completion(["42", "It is 42.", "\\boxed{42}"][k]),
        _ => Reply::completion("41").with_delay(SLOW),
    }
}

/// `bon_candidates_total{outcome}` as the proxy reports it.
async fn candidates_total(proxy: &Proxy, outcome: &str) -> f64 {
    let request = http::Request::get(proxy.url("/metrics"));
    let answer = send(request.body(Default::default()).expect("request")).await;
    let text = String::from_utf8_lossy(&answer.body).to_string();
    let label = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with("bon_candidates_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_strict_majority_cancels_the_calls_still_running() {
    let (mock, proxy) = setup(three_quick_agree).await;
    let started = Instant::now();
    let answer = ask(&proxy, "consensus", 5, json!({})).await;
    assert!(
        started.elapsed() < SLOW / 2,
        "answered without the slow ones"
    );
    assert_eq!(header(&answer, "x-best-of-n-judged"), "3/5");
    assert_eq!(header(&answer, "x-best-of-n-selected"), "0");
    assert_eq!(header(&answer, "x-best-of-n-scores"), "1,1,1,-,-");
    assert!(answer.header("x-best-of-n-fallback").is_none());
    let debug = answer.json()["best_of_n"].clone();
    let status: Vec<&str> = debug["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| c["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(status, ["ok", "ok", "ok", "cancelled", "cancelled"]);
    assert!(debug["candidates"][3]["error"]
        .as_str()
        .is_some_and(|e| e.contains("early stop")));

    let calls = mock.wait_for_calls(5, WAIT).await;
    let aborted: Vec<usize> = calls.iter().filter(|c| c.aborted).map(index_of).collect();
    assert_eq!(
        sorted(aborted),
        [3, 4],
        "the slow calls were cut, not left running"
    );
    assert_eq!(candidates_total(&proxy, "cancelled").await, 2.0);
    assert_eq!(candidates_total(&proxy, "ok").await, 3.0);

    let again = ask(&proxy, "consensus", 5, json!({})).await;
    assert_eq!(again.header("x-cache"), Some("hit"), "a whole answer");
    assert_eq!(header(&again, "x-best-of-n-judged"), "3/5");
    assert_eq!(mock.calls().len(), 5);
}

#[tokio::test]
async fn early_stop_waits_for_min_candidates_and_never_stops_without_a_majority() {
    let reply = |k: usize| match k {
        3 => Reply::completion("43").with_delay(Duration::from_millis(200)),
        _ => three_quick_agree(k),
    };
    let (mock, proxy) = setup_with(reply, |c| c.best_of_n.min_candidates = 4).await;
    let answer = ask(&proxy, "consensus", 5, json!({})).await;
    assert_eq!(header(&answer, "x-best-of-n-judged"), "4/5");
    let calls = mock.wait_for_calls(5, WAIT).await;
    let aborted: Vec<usize> = calls.iter().filter(|c| c.aborted).map(index_of).collect();
    assert_eq!(aborted, [4]);

    // 2 + 2 + 1 of 5: no answer ever has a majority, so every call runs to its end.
    let reply = |k: usize| {
        let text = ["7", "8", "7", "8", "9"][k];
        Reply::completion(text).with_delay(Duration::from_millis(50 * k as u64))
    };
    let (mock, proxy) = setup(reply).await;
    let answer = ask(&proxy, "consensus", 5, json!({})).await;
    assert!(answer.header("x-best-of-n-judged").is_none());
    assert_eq!(header(&answer, "x-best-of-n-selected"), "0");
    let calls = mock.wait_for_calls(5, WAIT).await;
    assert!(calls.iter().all(|c| !c.aborted));
}

#[tokio::test]
async fn judges_without_early_stop_wait_for_every_candidate() {
    let mock = MockUpstream::with_handler(|call| match index_of(call) {
        _ if call.is_judge() => Reply::judge_best("1", &[]),
        0..=2 => Reply::completion("42"),
        _ => Reply::completion("41").with_delay(Duration::from_millis(300)),
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = ask(&proxy, "listwise", 5, json!({})).await;
    assert!(answer.header("x-best-of-n-judged").is_none());
    let calls = mock.wait_for_calls(6, WAIT).await;
    assert!(calls.iter().all(|c| !c.aborted));
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

// ---------------------------------------------------------------- logprob

/// Candidate texts and the log-probability of each of their (three) tokens.
const CONFIDENCE: &[(&str, f64)] = &[("unsure", -0.9), ("certain", -0.1), ("fair", -0.5)];

/// A completion for `content`, with `logprobs.content` (each token at `logprob`) when the
/// call asked for them, as OpenAI answers.
fn completion_with_logprobs(call: &Call, content: &str, logprob: f64) -> Reply {
    let asked = call.json.as_ref().is_some_and(|b| b["logprobs"] == true);
    let tokens: Vec<Value> = (0..3)
        .map(|k| json!({"token": format!("t{k}"), "logprob": logprob, "bytes": [116], "top_logprobs": []}))
        .collect();
    let logprobs = match asked {
        true => json!({"content": tokens, "refusal": null}),
        false => Value::Null,
    };
    Reply::json(
        200,
        json!({
            "id": "chatcmpl-lp", "object": "chat.completion", "created": 1, "model": "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
        }),
    )
}

/// Candidate k answers `CONFIDENCE[k]`, with log-probabilities when asked.
async fn confident() -> (MockUpstream, Proxy) {
    confident_with(|_| {}).await
}

async fn confident_with(edit: impl FnOnce(&mut Config)) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::with_handler(|call| {
        let (text, logprob) = CONFIDENCE[index_of(call)];
        completion_with_logprobs(call, text, logprob)
    })
    .await;
    let mut config = config_for(&mock);
    edit(&mut config);
    let proxy = start_proxy(config).await;
    (mock, proxy)
}

fn candidate_calls_asked_for_logprobs(mock: &MockUpstream) -> bool {
    let calls = mock.calls();
    !calls.is_empty()
        && calls
            .iter()
            .all(|c| c.json.as_ref().is_some_and(|b| b["logprobs"] == true))
}

#[tokio::test]
async fn logprob_picks_the_most_confident_and_a_client_that_did_not_ask_gets_no_logprobs() {
    let (mock, proxy) = confident().await;
    let answer = ask(&proxy, "logprob", 3, json!({})).await;
    assert_eq!(answer.content(), "certain");
    assert_eq!(header(&answer, "x-best-of-n-selected"), "1");
    assert_eq!(header(&answer, "x-best-of-n-scores"), "0.407,0.905,0.607");
    assert_eq!(header(&answer, "x-best-of-n-judge"), "logprob");
    let body = answer.json();
    assert_eq!(body["choices"][0]["logprobs"], Value::Null);
    assert!(!String::from_utf8_lossy(&answer.body).contains("top_logprobs"));
    let judge = judge_debug(&answer);
    assert_eq!(judge["ranking"], json!([1, 2, 0]));
    let mean = judge["logprobs"][1]["mean_logprob"]
        .as_f64()
        .unwrap_or_default();
    assert!((mean + 0.1).abs() < 1e-9, "{mean}");
    assert!(candidate_calls_asked_for_logprobs(&mock));
    assert!(mock.calls().iter().all(|c| !c.is_judge()));

    // The cache keeps what the client got: no log-probabilities.
    let again = ask(&proxy, "logprob", 3, json!({})).await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    assert_eq!(again.json()["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn a_client_that_asked_for_logprobs_keeps_them_in_every_choice() {
    let (_mock, proxy) = confident().await;
    let answer = ask(&proxy, "logprob", 3, json!({"logprobs": true, "n": 2})).await;
    let choices = answer.json()["choices"].clone();
    assert_eq!(choices[0]["message"]["content"], "certain");
    assert_eq!(choices[1]["message"]["content"], "fair");
    assert_eq!(choices[0]["logprobs"]["content"][0]["logprob"], -0.1);
    assert_eq!(choices[1]["logprobs"]["content"][2]["logprob"], -0.5);
}

#[tokio::test]
async fn logprob_ranks_n_choices_and_streams_without_logprobs() {
    let (_mock, proxy) = confident().await;
    let answer = ask(&proxy, "logprob", 3, json!({"n": 2})).await;
    let choices = answer.json()["choices"].clone();
    assert_eq!(choices[0]["message"]["content"], "certain");
    assert_eq!(choices[1]["message"]["content"], "fair");
    assert!(choices[1]["logprobs"].is_null());

    let headers = [("x-best-of-n", "3"), ("x-best-of-n-judge", "logprob")];
    let streamed = post_chat(&proxy, &headers, body(json!({"stream": true}))).await;
    streamed.expect_ok();
    let chunks = streamed.sse_chunks();
    let content: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "certain");
    assert!(chunks.iter().all(|c| c["choices"][0]["logprobs"].is_null()));
}

#[tokio::test]
async fn no_logprobs_from_the_upstream_means_the_fallback_chooses_and_says_why() {
    // This upstream ignores `logprobs`.
    let mock =
        MockUpstream::with_handler(|call| Reply::completion(CONFIDENCE[index_of(call)].0)).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = ask(&proxy, "logprob", 3, json!({})).await;
    assert_eq!(
        header(&answer, "x-best-of-n-fallback"),
        "first_ok (parse_error)"
    );
    assert_eq!(header(&answer, "x-best-of-n-scores"), "-,-,-");
    assert_eq!(answer.content(), "unsure");
    let judge = judge_debug(&answer);
    assert_eq!(judge["outcome"], "parse_error");
    let failure = judge["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("returned no logprobs"), "{failure}");
}

#[tokio::test]
async fn a_panel_with_a_logprob_member_asks_for_logprobs() {
    let (mock, proxy) = confident_with(|config| {
        let members = vec!["logprob".to_string(), "consensus".to_string()];
        let table = bon_proxy::config::JudgeConfig {
            strategy: "panel".into(),
            members,
            ..Default::default()
        };
        config.judges.insert("mix".into(), table);
    })
    .await;
    let answer = ask(&proxy, "mix", 3, json!({})).await;
    assert!(candidate_calls_asked_for_logprobs(&mock));
    assert_eq!(answer.json()["choices"][0]["logprobs"], Value::Null);
    let members = judge_debug(&answer)["members"].clone();
    assert_eq!(members[0]["outcome"], "ok", "{members}");
    assert_eq!(members[0]["ranking"], json!([1, 2, 0]));
}
