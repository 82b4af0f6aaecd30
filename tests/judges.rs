//! The judge strategies and how requests choose them, through the real server against the mock
//! upstream: pointwise scoring, pairwise tournaments (round robin, knockout, position bias),
//! panels, named judges (`x-best-of-n-judge`, `judge.default`, own model, the old `[judge]`
//! table), rubric presets (`x-best-of-n-rubric`, `[rubrics]`, per-judge presets, cache key),
//! custom templates, and `n`, streaming and caching under every strategy.
//!
//! The mock answers candidate calls with fixed texts of known quality, and its judge reads the
//! candidate TEXT it is shown (never the ids, which are shuffled), so a test knows which answer
//! must win whatever order the proxy generated or presented the candidates in.

mod common;

use std::cmp::Reverse;
use std::sync::atomic::{AtomicUsize, Ordering};

use bon_proxy::config::{JudgeConfig, Rubrics};
use bon_proxy::Config;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use serde_json::{json, Value};

/// Three candidate texts; the best is not first, so "return the first" cannot pass every time.
const THREE: &[&str] = &["answer-fair", "answer-poor", "answer-best"];
/// Four, for a knockout bracket.
const FOUR: &[&str] = &["answer-meh", "answer-fair", "answer-best", "answer-poor"];

/// How good a candidate text is, on the pointwise 0..10 scale.
fn quality(text: &str) -> u32 {
    ["best", "fair", "poor"]
        .iter()
        .zip([9, 4, 2])
        .find(|(word, _)| text.contains(*word))
        .map_or(1, |(_, q)| q)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Listwise,
    Pointwise,
    Pairwise,
}

/// Which strategy wrote a judge prompt, by the verdict tag it asks for.
fn kind(call: &Call) -> Kind {
    let prompt = call.prompt_text();
    if prompt.contains("<winner>") {
        Kind::Pairwise
    } else if prompt.contains("<score>") {
        Kind::Pointwise
    } else {
        Kind::Listwise
    }
}

/// A judge that answers any kind of prompt in favour of the better text, wherever it is shown.
fn fair_verdict(call: &Call) -> Reply {
    verdict_by(call, quality)
}

/// A judge answering any kind of prompt by `quality`.
fn verdict_by(call: &Call, quality: fn(&str) -> u32) -> Reply {
    let shown = call.judge_candidates();
    let mut ranked = shown.clone();
    ranked.sort_by_key(|(_, text)| Reverse(quality(text)));
    match kind(call) {
        Kind::Pairwise => Reply::completion(&format!("<winner>{}</winner>", ranked[0].0)),
        Kind::Pointwise => Reply::completion(&format!("<score>{}</score>", quality(&shown[0].1))),
        Kind::Listwise => {
            let ids: Vec<&str> = ranked.iter().map(|(id, _)| id.as_str()).collect();
            Reply::judge_best(ids[0], &ids)
        }
    }
}

/// A mock whose k-th candidate call answers `texts[k % len]` and whose judge calls go to
/// `judge`, and a proxy in front of it with `edit` applied to the test config.
async fn setup(
    texts: &'static [&'static str],
    judge: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    edit: impl FnOnce(&mut Config),
) -> (MockUpstream, Proxy) {
    let next = AtomicUsize::new(0);
    let mock = MockUpstream::with_handler(move |call| {
        if call.is_judge() {
            return judge(call);
        }
        let k = next.fetch_add(1, Ordering::SeqCst);
        Reply::completion(texts[k % texts.len()])
    })
    .await;
    let mut config = config_for(&mock);
    edit(&mut config);
    let proxy = start_proxy(config).await;
    (mock, proxy)
}

fn judge_table(strategy: &str) -> JudgeConfig {
    JudgeConfig {
        strategy: strategy.into(),
        ..Default::default()
    }
}

/// A best-of-3 request with the debug object, plus `headers`; not checked.
async fn send_with(proxy: &Proxy, headers: &[(&str, &str)], body: String) -> Answer {
    let mut all = vec![("x-best-of-n", "3"), ("x-best-of-n-debug", "1")];
    all.extend_from_slice(headers);
    post_chat(proxy, &all, body).await
}

/// A best-of-3 question with `headers`, which must succeed.
async fn ask(proxy: &Proxy, headers: &[(&str, &str)]) -> Answer {
    let answer = send_with(proxy, headers, chat_body("Q")).await;
    let body = String::from_utf8_lossy(&answer.body).to_string();
    assert_eq!(answer.status, 200, "{body}");
    answer
}

/// A best-of-3 question for the judge called `judge`, which must succeed.
async fn judged_by(proxy: &Proxy, judge: &str) -> Answer {
    ask(proxy, &[("x-best-of-n-judge", judge)]).await
}

fn debug_of(answer: &Answer) -> Value {
    answer.json()["best_of_n"].clone()
}

/// Candidate contents in generation order, from the debug object.
fn generated(debug: &Value) -> Vec<String> {
    let candidates = debug["candidates"].as_array().expect("debug candidates");
    let content = |c: &Value| c["content"].as_str().unwrap_or_default().to_string();
    candidates.iter().map(content).collect()
}

/// The generation index of the candidate that answered `text`.
fn index_of(debug: &Value, text: &str) -> usize {
    generated(debug).iter().position(|t| t == text).expect(text)
}

/// `x-best-of-n-scores`, split.
fn scores(answer: &Answer) -> Vec<String> {
    let header = answer.header("x-best-of-n-scores").expect("scores header");
    header.split(',').map(str::to_string).collect()
}

fn selected(answer: &Answer) -> usize {
    let header = answer.header("x-best-of-n-selected").expect("selected");
    header.parse().expect("a number")
}

/// Asserts the answer says the fallback chose, and that `first_ok` took generation order.
fn assert_first_ok_fallback(answer: &Answer) {
    let fallback = answer
        .header("x-best-of-n-fallback")
        .expect("fallback header");
    assert!(fallback.starts_with("first_ok ("), "{fallback}");
    assert_eq!(answer.content(), generated(&debug_of(answer))[0]);
    assert_eq!(scores(answer), ["-", "-", "-"], "nobody was scored");
}

fn judge_calls(mock: &MockUpstream) -> Vec<Call> {
    mock.calls().into_iter().filter(Call::is_judge).collect()
}

/// `key` of every entry of a debug list (comparisons, members, calls).
fn each<'a>(list: &'a Value, key: &str) -> Vec<&'a Value> {
    let items = list.as_array().expect("a debug list");
    items.iter().map(|item| &item[key]).collect()
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

// ---------------------------------------------------------------- pointwise

#[tokio::test]
async fn pointwise_scores_each_candidate_alone_and_the_highest_wins() {
    let (mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
    let answer = judged_by(&proxy, "pointwise").await;
    assert_eq!(answer.content(), "answer-best");
    let debug = debug_of(&answer);
    let texts = generated(&debug);
    assert_eq!(texts[selected(&answer)], "answer-best");
    // Scores are the judge's 0..10 divided by 10, in generation order.
    let expected: Vec<String> = texts
        .iter()
        .map(|t| (f64::from(quality(t)) / 10.0).to_string())
        .collect();
    assert_eq!(scores(&answer), expected);
    // One call per candidate, each showing exactly that candidate, as id 1.
    let shown: Vec<String> = judge_calls(&mock)
        .iter()
        .map(|call| match &call.judge_candidates()[..] {
            [(id, text)] if id == "1" => text.clone(),
            other => panic!("one candidate with id 1 expected, got {other:?}"),
        })
        .collect();
    assert_eq!(sorted(shown), sorted(THREE.to_vec()), "each scored once");
    assert_eq!(debug["strategy"], "pointwise");
    assert_eq!(debug["judge"]["calls"].as_array().unwrap().len(), 3);
}

/// A pointwise judge that answers `reply()` for the text containing `victim`.
fn failing_on(victim: &'static str, reply: fn() -> Reply) -> impl Fn(&Call) -> Reply {
    move |call: &Call| {
        if call.judge_candidates()[0].1.contains(victim) {
            reply()
        } else {
            fair_verdict(call)
        }
    }
}

/// The debug `judge.calls` entry of the candidate at `index`.
fn call_for(debug: &Value, index: usize) -> Value {
    let calls = debug["judge"]["calls"].as_array().unwrap();
    calls
        .iter()
        .find(|c| c["candidate"] == index)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn pointwise_leaves_a_garbled_verdict_unscored_and_the_rest_decide() {
    let garbage = || Reply::completion("I rather like this one.");
    let (_mock, proxy) = setup(THREE, failing_on("fair", garbage), |_| {}).await;
    let answer = judged_by(&proxy, "pointwise").await;
    assert_eq!(answer.content(), "answer-best");
    assert!(answer.header("x-best-of-n-fallback").is_none());
    let debug = debug_of(&answer);
    let fair = index_of(&debug, "answer-fair");
    assert_eq!(scores(&answer)[fair], "-", "unscored, not scored 0");
    assert_eq!(debug["candidates"][fair]["score"], Value::Null);
    assert_eq!(call_for(&debug, fair)["outcome"], "parse_error");
}

#[tokio::test]
async fn pointwise_leaves_a_failed_judge_call_unscored() {
    let down = || Reply::error(500, "judge down", "server_error");
    let (_mock, proxy) = setup(THREE, failing_on("best", down), |_| {}).await;
    let answer = judged_by(&proxy, "pointwise").await;
    // The best answer could not be scored, so the best of the scored ones wins.
    assert_eq!(answer.content(), "answer-fair");
    let debug = debug_of(&answer);
    let best = index_of(&debug, "answer-best");
    assert_eq!(scores(&answer)[best], "-");
    let failed = call_for(&debug, best);
    assert_eq!(failed["outcome"], "error");
    assert!(
        failed["failure"].as_str().unwrap().contains("500"),
        "{failed}"
    );
}

#[tokio::test]
async fn pointwise_with_no_readable_score_falls_back_and_says_so() {
    let (_mock, proxy) = setup(THREE, |_| Reply::completion("no idea"), |_| {}).await;
    let answer = judged_by(&proxy, "pointwise").await;
    assert_first_ok_fallback(&answer);
    assert_eq!(debug_of(&answer)["judge"]["outcome"], "parse_error");
}

// ---------------------------------------------------------------- pairwise

#[tokio::test]
async fn pairwise_round_robin_judges_every_pair_in_both_orders() {
    let (mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
    let answer = judged_by(&proxy, "pairwise").await;
    assert_eq!(answer.content(), "answer-best");
    let calls = judge_calls(&mock);
    assert_eq!(calls.len(), 6, "3 pairs, each judged twice");
    let shown: Vec<(String, String)> = calls
        .iter()
        .map(|call| match &call.judge_candidates()[..] {
            [(a, x), (b, y)] if a == "A" && b == "B" => (x.clone(), y.clone()),
            other => panic!("candidates A and B expected, got {other:?}"),
        })
        .collect();
    let every_order: Vec<(String, String)> = THREE
        .iter()
        .flat_map(|a| THREE.iter().map(move |b| (a.to_string(), b.to_string())))
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        sorted(shown),
        sorted(every_order),
        "each pair both ways round"
    );
    let debug = debug_of(&answer);
    assert_eq!(debug["judge"]["tournament"], "round_robin");
    assert_eq!(debug["judge"]["comparisons"].as_array().unwrap().len(), 3);
    // Wins plus half the ties over comparisons played: 2/2, 1/2, 0/2.
    let expected: Vec<&str> = generated(&debug)
        .iter()
        .map(|t| match quality(t) {
            9 => "1",
            4 => "0.5",
            _ => "0",
        })
        .collect();
    assert_eq!(scores(&answer), expected);
}

#[tokio::test]
async fn pairwise_position_bias_cancels_and_an_all_tie_tournament_falls_back() {
    // A judge that always prefers whatever is shown first.
    let always_a = |_: &Call| Reply::completion("<winner>A</winner>");
    let (_mock, proxy) = setup(THREE, always_a, |_| {}).await;
    let answer = judged_by(&proxy, "pairwise").await;
    let debug = debug_of(&answer);
    let judge = &debug["judge"];
    for comparison in judge["comparisons"].as_array().unwrap() {
        assert_eq!(comparison["outcome"], "tie", "{comparison}");
        assert_eq!(
            (&comparison["a_first"], &comparison["b_first"]),
            (&json!("A"), &json!("A"))
        );
    }
    // The judge told nothing apart: picking by presentation order would be a coin toss
    // passed off as a verdict, so the fallback chooses and says so (and nothing is cached).
    assert_eq!(judge["outcome"], "undecided");
    assert_eq!(
        answer.header("x-best-of-n-fallback"),
        Some("first_ok (undecided)")
    );
    assert_eq!(selected(&answer), 0);
    assert_eq!(scores(&answer), ["-", "-", "-"]);
}

#[tokio::test]
async fn pairwise_above_round_robin_max_plays_a_knockout() {
    let (mock, proxy) = setup(FOUR, fair_verdict, |config| {
        let table = JudgeConfig {
            round_robin_max: 2,
            ..judge_table("pairwise")
        };
        config.judges.insert("bracket".into(), table);
    })
    .await;
    let answer = post_chat(
        &proxy,
        &[
            ("x-best-of-n", "4"),
            ("x-best-of-n-debug", "1"),
            ("x-best-of-n-judge", "bracket"),
        ],
        chat_body("Q"),
    )
    .await;
    assert_eq!(answer.content(), "answer-best");
    assert_eq!(judge_calls(&mock).len(), 6, "3 matches, each judged twice");
    let debug = debug_of(&answer);
    let texts = generated(&debug);
    assert_eq!(debug["judge"]["tournament"], "knockout");
    let comparisons = debug["judge"]["comparisons"].as_array().unwrap();
    // Every match goes to the better text, not to the one placed first in the bracket.
    for c in comparisons {
        let quality_of = |key: &str| quality(&texts[c[key].as_u64().unwrap() as usize]);
        let better = ["a", "b"]
            .into_iter()
            .max_by_key(|k| quality_of(k))
            .unwrap();
        assert_eq!(c["winner"], c[better], "{c}");
    }
    let rounds = each(&debug["judge"]["comparisons"], "round");
    let rounds = sorted(rounds.iter().map(|r| r.as_u64()).collect());
    assert_eq!(
        rounds,
        [Some(0), Some(0), Some(1)],
        "two semi-finals, a final"
    );
}

#[tokio::test]
async fn pairwise_with_no_readable_verdict_falls_back() {
    let (_mock, proxy) = setup(THREE, |_| Reply::completion("both lovely"), |_| {}).await;
    let answer = judged_by(&proxy, "pairwise").await;
    assert_first_ok_fallback(&answer);
    let judge = &debug_of(&answer)["judge"];
    assert_eq!(judge["outcome"], "parse_error");
    assert_eq!(each(&judge["comparisons"], "outcome"), ["failed"; 3]);
}

// ---------------------------------------------------------------- panel

#[tokio::test]
async fn a_configured_panel_asks_every_member_and_outvotes_a_dissenter() {
    // The listwise member ranks fair > best > poor; the other two best > fair > poor. Borda:
    // best 1 + 2 + 2 = 5, fair 2 + 1 + 1 = 4, so the panel must not follow listwise alone.
    let listwise_dissents = |call: &Call| match kind(call) {
        Kind::Listwise => verdict_by(call, |t| if t.contains("fair") { 10 } else { quality(t) }),
        _ => fair_verdict(call),
    };
    let (mock, proxy) = setup(THREE, listwise_dissents, |config| {
        let members = ["listwise", "pointwise", "pairwise"]
            .map(String::from)
            .to_vec();
        let table = JudgeConfig {
            members,
            ..judge_table("panel")
        };
        config.judges.insert("p".into(), table);
    })
    .await;
    let answer = judged_by(&proxy, "p").await;
    assert_eq!(answer.content(), "answer-best");
    assert_eq!(answer.header("x-best-of-n-judge"), Some("p"));
    // Each member really judged: 1 listwise + 3 pointwise + 6 pairwise calls.
    let kinds: Vec<Kind> = judge_calls(&mock).iter().map(kind).collect();
    let count = |k: Kind| kinds.iter().filter(|&&x| x == k).count();
    let counts = [Kind::Listwise, Kind::Pointwise, Kind::Pairwise].map(count);
    assert_eq!(counts, [1, 3, 6]);
    let debug = debug_of(&answer);
    assert_eq!(debug["strategy"], "panel");
    let members = debug["judge"]["members"].as_array().unwrap();
    let names = each(&debug["judge"]["members"], "name");
    assert_eq!(names, ["listwise", "pointwise", "pairwise"]);
    assert!(members.iter().all(|m| m["counted"] == true), "{members:?}");
    let fair = index_of(&debug, "answer-fair");
    assert_eq!(members[0]["ranking"][0], fair, "the dissent is on record");
}

#[tokio::test]
async fn a_panel_with_one_dead_member_still_decides_and_says_who_was_left_out() {
    let scorer_down = |call: &Call| match kind(call) {
        Kind::Pointwise => Reply::error(500, "scorer down", "server_error"),
        _ => fair_verdict(call),
    };
    let (_mock, proxy) = setup(THREE, scorer_down, |_| {}).await;
    let answer = judged_by(&proxy, "panel").await;
    assert_eq!(answer.content(), "answer-best");
    assert!(answer.header("x-best-of-n-fallback").is_none());
    let debug = debug_of(&answer);
    let members = debug["judge"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for member in members {
        let dead = member["strategy"] == "pointwise";
        assert_eq!(member["counted"], !dead, "{member}");
        assert_eq!(member["failure"].is_string(), dead, "{member}");
    }
}

#[tokio::test]
async fn a_panel_whose_members_all_fail_falls_back() {
    let down = |_: &Call| Reply::error(500, "all down", "server_error");
    let (_mock, proxy) = setup(THREE, down, |_| {}).await;
    let answer = judged_by(&proxy, "panel").await;
    assert_first_ok_fallback(&answer);
    let debug = debug_of(&answer);
    let members = debug["judge"]["members"].as_array().unwrap();
    assert!(members.iter().all(|m| m["counted"] == false), "{members:?}");
}

// ---------------------------------------------------------------- named judges

// ---------------------------------------------------------------- cascade

/// A best-of-4 request for `judge`, which must succeed.
async fn four_for(proxy: &Proxy, judge: &str) -> Answer {
    let headers = [
        ("x-best-of-n", "4"),
        ("x-best-of-n-debug", "1"),
        ("x-best-of-n-judge", judge),
    ];
    let answer = post_chat(proxy, &headers, chat_body("Q")).await;
    answer.expect_ok();
    answer
}

/// A cascade from pointwise to pairwise keeping two, over the four texts.
fn with_cascade(config: &mut Config) {
    let table = JudgeConfig {
        first: "pointwise".into(),
        then: "pairwise".into(),
        keep: 2,
        ..judge_table("cascade")
    };
    config.judges.insert("funnel".into(), table);
}

#[tokio::test]
async fn a_cascade_sends_only_the_first_judges_best_to_the_second() {
    let (mock, proxy) = setup(FOUR, fair_verdict, with_cascade).await;
    let answer = four_for(&proxy, "funnel").await;
    assert_eq!(answer.content(), "answer-best");
    let calls = judge_calls(&mock);
    let pointwise = calls.iter().filter(|c| kind(c) == Kind::Pointwise).count();
    let pairwise: Vec<&Call> = calls.iter().filter(|c| kind(c) == Kind::Pairwise).collect();
    assert_eq!(pointwise, 4, "the first judge scores every candidate");
    assert_eq!(pairwise.len(), 2, "one pair, in both orders");
    for call in pairwise {
        let texts: Vec<String> = call.judge_candidates().into_iter().map(|c| c.1).collect();
        assert_eq!(
            sorted(texts),
            ["answer-best", "answer-fair"],
            "the top two only"
        );
    }
    let debug = debug_of(&answer);
    let judge = &debug["judge"];
    assert_eq!(judge["first"]["strategy"], "pointwise");
    assert_eq!(judge["then"]["strategy"], "pairwise");
    let texts = generated(&debug);
    let kept: Vec<&str> = judge["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .filter_map(|i| Some(texts[usize::try_from(i.as_u64()?).ok()?].as_str()))
        .collect();
    assert_eq!(
        kept,
        ["answer-best", "answer-fair"],
        "the first judge's order"
    );
    // Usage counts both stages: six judge calls of 15 tokens.
    assert_eq!(debug["usage"]["judge"]["total_tokens"], 6 * 15);
}

#[tokio::test]
async fn a_cascade_whose_first_judge_fails_lets_the_second_judge_everyone() {
    let garbled_scores = |call: &Call| match kind(call) {
        Kind::Pointwise => Reply::completion("no idea"),
        _ => fair_verdict(call),
    };
    let (mock, proxy) = setup(FOUR, garbled_scores, with_cascade).await;
    let answer = four_for(&proxy, "funnel").await;
    assert_eq!(answer.content(), "answer-best");
    assert!(answer.header("x-best-of-n-fallback").is_none());
    let pairwise = judge_calls(&mock)
        .iter()
        .filter(|c| kind(c) == Kind::Pairwise)
        .count();
    assert_eq!(pairwise, 12, "every pair of four, both orders");
    let judge = &debug_of(&answer)["judge"];
    assert_eq!(judge["first"]["outcome"], "parse_error");
}

#[tokio::test]
async fn a_cascade_whose_second_judge_fails_keeps_the_first_judges_pick() {
    let dead_pairs = |call: &Call| match kind(call) {
        Kind::Pairwise => Reply::error(500, "down", "server_error"),
        _ => fair_verdict(call),
    };
    let (_mock, proxy) = setup(FOUR, dead_pairs, with_cascade).await;
    let answer = four_for(&proxy, "funnel").await;
    assert_eq!(answer.content(), "answer-best", "the scores still rank");
    assert!(answer.header("x-best-of-n-fallback").is_none());
    assert_eq!(debug_of(&answer)["judge"]["then"]["outcome"], "error");

    let all_dead = |_: &Call| Reply::error(500, "down", "server_error");
    let (_mock, proxy) = setup(FOUR, all_dead, with_cascade).await;
    let answer = four_for(&proxy, "funnel").await;
    let fallback = answer.header("x-best-of-n-fallback").unwrap_or_default();
    assert!(fallback.starts_with("first_ok ("), "{fallback}");
}

#[tokio::test]
async fn every_strategy_is_a_built_in_judge_by_name() {
    let (mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
    let answer = judged_by(&proxy, "pairwise").await;
    assert_eq!(answer.header("x-best-of-n-judge"), Some("pairwise"));
    assert_eq!(debug_of(&answer)["strategy"], "pairwise");
    assert!(judge_calls(&mock).iter().all(|c| kind(c) == Kind::Pairwise));
}

#[tokio::test]
async fn an_unknown_judge_is_refused_naming_the_header_and_the_judges() {
    let (mock, proxy) = setup(THREE, fair_verdict, |config| {
        config
            .judges
            .insert("mine".into(), judge_table("pointwise"));
    })
    .await;
    let answer = send_with(&proxy, &[("x-best-of-n-judge", "coin")], chat_body("Q")).await;
    let error = answer.expect_error(400);
    assert_eq!(error["param"], "x-best-of-n-judge");
    let message = error["message"].as_str().unwrap();
    for name in ["coin", "listwise", "pairwise", "panel", "pointwise", "mine"] {
        assert!(message.contains(name), "{message}");
    }
    assert!(mock.calls().is_empty(), "refused before any upstream call");
}

#[tokio::test]
async fn judge_default_names_the_judge_of_requests_that_name_none() {
    let (mock, proxy) = setup(THREE, fair_verdict, |config| {
        config
            .judges
            .insert("mine".into(), judge_table("pointwise"));
        config.judge.default = "mine".into();
    })
    .await;
    let answer = ask(&proxy, &[]).await;
    assert_eq!(answer.header("x-best-of-n-judge"), Some("mine"));
    assert_eq!(answer.content(), "answer-best");
    let debug = debug_of(&answer);
    assert_eq!(
        [&debug["judge_name"], &debug["strategy"]],
        ["mine", "pointwise"]
    );
    assert!(judge_calls(&mock)
        .iter()
        .all(|c| kind(c) == Kind::Pointwise));
}

#[tokio::test]
async fn a_named_judge_calls_its_own_model() {
    let (mock, proxy) = setup(THREE, fair_verdict, |config| {
        let table = JudgeConfig {
            model: "judge-model".into(),
            ..judge_table("pairwise")
        };
        config.judges.insert("strict".into(), table);
    })
    .await;
    judged_by(&proxy, "strict").await;
    for call in mock.calls() {
        let want = if call.is_judge() {
            "judge-model"
        } else {
            "gpt-test"
        };
        assert_eq!(
            call.json.as_ref().unwrap()["model"],
            want,
            "{}",
            call.is_judge()
        );
    }
}

#[tokio::test]
async fn the_old_judge_table_still_loads_and_decides() {
    let (mock, _) = setup(THREE, fair_verdict, |_| {}).await;
    let toml = "[judge]\nstrategy = \"pairwise\"\nrubrics = [\"Mention otters.\"]\n\
                fallback = \"error\"\n";
    let mut config = Config::parse(toml).expect("the first release's [judge] table");
    let base = config_for(&mock);
    (config.server, config.upstream) = (base.server, base.upstream);
    let proxy = start_proxy(config).await;
    let answer = ask(&proxy, &[]).await;
    assert_eq!(answer.content(), "answer-best");
    assert_eq!(answer.header("x-best-of-n-judge"), Some("pairwise"));
    let calls = judge_calls(&mock);
    assert!(calls.iter().all(|c| kind(c) == Kind::Pairwise));
    assert!(calls
        .iter()
        .all(|c| c.prompt_text().contains("1. Mention otters.")));
    // Its fallback holds too: a judge that says nothing usable is a 502, not a guess.
    mock.set_handler(|call: &Call| Reply::completion(if call.is_judge() { "hmm" } else { "a" }));
    let failed = send_with(&proxy, &[], chat_body("Another question")).await;
    assert_eq!(failed.expect_error(502)["code"], "judge_failed");
}

// ---------------------------------------------------------------- rubrics

/// The first line of the built-in code, math and helpfulness presets (src/judge/rubrics.rs).
const CODE_RUBRIC: &str = "The code is correct: it does what was asked";
const MATH_RUBRIC: &str = "The final answer is correct and clearly stated.";
const HELPFUL_RUBRIC: &str = "Answers what the user actually asked";

/// Asserts every judge prompt the mock got shows `present` and not `absent`.
fn prompts_show(mock: &MockUpstream, present: &str, absent: &str) {
    let calls = judge_calls(mock);
    assert!(!calls.is_empty());
    for prompt in calls.iter().map(Call::prompt_text) {
        assert!(prompt.contains(present), "{present:?} missing: {prompt}");
        assert!(!prompt.contains(absent), "{absent:?} shown: {prompt}");
    }
}

fn with_legal_preset(config: &mut Config) {
    let legal = vec!["Cites the statute.".to_string()];
    config.rubrics.insert("legal".into(), legal);
}

fn with_math_judge(config: &mut Config) {
    let table = JudgeConfig {
        rubrics: Rubrics::Preset("math".into()),
        ..judge_table("pointwise")
    };
    config.judges.insert("mathy".into(), table);
}

#[tokio::test]
async fn a_rubric_header_replaces_the_judges_rubrics() {
    let (mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
    let answer = ask(&proxy, &[("x-best-of-n-rubric", "code")]).await;
    assert_eq!(debug_of(&answer)["rubric"], "code");
    prompts_show(&mock, CODE_RUBRIC, HELPFUL_RUBRIC);
}

#[tokio::test]
async fn a_configured_rubric_preset_reaches_the_prompt() {
    let (mock, proxy) = setup(THREE, fair_verdict, with_legal_preset).await;
    ask(&proxy, &[("x-best-of-n-rubric", "legal")]).await;
    prompts_show(&mock, "1. Cites the statute.", HELPFUL_RUBRIC);
}

#[tokio::test]
async fn an_unknown_rubric_is_refused_naming_the_header_and_the_presets() {
    let (mock, proxy) = setup(THREE, fair_verdict, with_legal_preset).await;
    let answer = send_with(&proxy, &[("x-best-of-n-rubric", "poetry")], chat_body("Q")).await;
    let error = answer.expect_error(400);
    assert_eq!(error["param"], "x-best-of-n-rubric");
    let message = error["message"].as_str().unwrap();
    for name in ["poetry", "code", "helpfulness", "legal", "math", "writing"] {
        assert!(message.contains(name), "{message}");
    }
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn a_judge_table_can_name_a_preset_and_a_request_can_override_it() {
    let (mock, proxy) = setup(THREE, fair_verdict, with_math_judge).await;
    judged_by(&proxy, "mathy").await;
    prompts_show(&mock, MATH_RUBRIC, HELPFUL_RUBRIC);
    // A fresh mock, so only the second request's prompts are looked at.
    let (mock, proxy) = setup(THREE, fair_verdict, with_math_judge).await;
    ask(
        &proxy,
        &[
            ("x-best-of-n-judge", "mathy"),
            ("x-best-of-n-rubric", "code"),
        ],
    )
    .await;
    prompts_show(&mock, CODE_RUBRIC, MATH_RUBRIC);
}

#[tokio::test]
async fn the_rubric_is_part_of_the_cache_key() {
    let (mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
    let cache_of = |rubric: &'static str| {
        let proxy = proxy.handle();
        async move {
            let answer = ask(&proxy, &[("x-best-of-n-rubric", rubric)]).await;
            answer.header("x-cache").unwrap_or_default().to_string()
        }
    };
    assert_eq!(cache_of("code").await, "miss");
    // Another rubric may pick another answer: it must not be served the first one.
    assert_eq!(cache_of("math").await, "miss");
    let calls = mock.calls().len();
    assert_eq!(cache_of("code").await, "hit");
    assert_eq!(mock.calls().len(), calls, "a hit calls nobody");
}

// ---------------------------------------------------------------- every strategy

const STRATEGIES: [&str; 5] = ["listwise", "pointwise", "pairwise", "panel", "cascade"];

#[tokio::test]
async fn every_strategy_returns_n_choices_best_first() {
    for strategy in STRATEGIES {
        let (_mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
        let body =
            json!({"model": "gpt-test", "n": 2, "messages": [{"role": "user", "content": "Q"}]});
        let answer = send_with(&proxy, &[("x-best-of-n-judge", strategy)], body.to_string()).await;
        assert_eq!(answer.status, 200, "{strategy}");
        let choices = answer.json()["choices"].clone();
        let texts: Vec<&str> = choices
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["answer-best", "answer-fair"], "{strategy}");
        assert_eq!(choices[1]["index"], 1, "{strategy}");
    }
}

#[tokio::test]
async fn every_strategy_streams_the_judged_best() {
    for strategy in STRATEGIES {
        let (_mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
        let body = json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "Q"}]});
        let answer = send_with(&proxy, &[("x-best-of-n-judge", strategy)], body.to_string()).await;
        assert_eq!(answer.status, 200, "{strategy}");
        let content_type = answer.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("text/event-stream"), "{strategy}");
        let content: String = answer.streamed_content();
        assert_eq!(content, "answer-best", "{strategy}");
    }
}

#[tokio::test]
async fn every_strategy_serves_a_repeated_request_from_the_cache() {
    for strategy in STRATEGIES {
        let (mock, proxy) = setup(THREE, fair_verdict, |_| {}).await;
        let first = judged_by(&proxy, strategy).await;
        assert_eq!(first.header("x-cache"), Some("miss"), "{strategy}");
        let calls = mock.calls().len();
        let again = judged_by(&proxy, strategy).await;
        assert_eq!(again.header("x-cache"), Some("hit"), "{strategy}");
        assert_eq!(again.content(), "answer-best", "{strategy}");
        assert_eq!(mock.calls().len(), calls, "{strategy}: a hit calls nobody");
    }
}

// ---------------------------------------------------------------- templates

#[tokio::test]
async fn a_custom_template_is_what_the_judge_reads() {
    let template = "PELICAN-TEMPLATE {% for r in rubrics %}[{{ r }}]{% endfor %}\
        {% for c in candidates %}<candidate id=\"{{ c.id }}\">{{ c.text }}</candidate>{% endfor %} \
        Answer <score>X</score>.";
    let (mock, proxy) = setup(THREE, fair_verdict, |config| {
        let table = JudgeConfig {
            template: template.into(),
            rubrics: Rubrics::List(vec!["Be a pelican.".into()]),
            ..judge_table("pointwise")
        };
        config.judges.insert("custom".into(), table);
    })
    .await;
    let answer = judged_by(&proxy, "custom").await;
    assert_eq!(answer.content(), "answer-best", "verdicts are still read");
    let calls = judge_calls(&mock);
    assert_eq!(calls.len(), 3);
    for prompt in calls.iter().map(Call::prompt_text) {
        assert!(
            prompt.starts_with("PELICAN-TEMPLATE [Be a pelican.]"),
            "{prompt}"
        );
        assert!(!prompt.contains("You are an impartial judge"), "{prompt}");
    }
}

/// A named judge with its own endpoint gets its own key there and nowhere else, and a key that
/// endpoint echoes back never reaches the client.
#[tokio::test]
async fn a_named_judges_key_goes_only_to_its_endpoint_and_never_back() {
    const JUDGE_KEY: &str = "sk-judge-NAMED-SECRET-0123456789";
    let judge_mock = MockUpstream::with_handler(|_: &Call| {
        let message = format!("Incorrect API key provided: {JUDGE_KEY}");
        Reply::error(401, &message, "invalid_api_key")
    })
    .await;
    let upstream = MockUpstream::with_handler(|call: &Call| {
        Reply::completion(&format!("candidate {}", call.seq))
    })
    .await;
    let mut config = config_for(&upstream);
    let table = JudgeConfig {
        base_url: judge_mock.base_url(),
        api_key_env: "NAMED_JUDGE_KEY".into(),
        ..judge_table("pointwise")
    };
    config.judges.insert("remote".into(), table);
    let mut secrets = bon_proxy::Secrets {
        upstream_key: Some(bon_proxy::upstream::ApiKey::new(UPSTREAM_KEY)),
        ..Default::default()
    };
    let key = bon_proxy::upstream::ApiKey::new(JUDGE_KEY);
    secrets.judge_keys.insert("NAMED_JUDGE_KEY".into(), key);
    let proxy = start_proxy_with(config, secrets).await;

    let answer = judged_by(&proxy, "remote").await;
    assert_first_ok_fallback(&answer);
    let shown = String::from_utf8_lossy(&answer.body).to_string();
    assert!(!shown.contains("NAMED-SECRET"), "key echoed: {shown}");
    assert!(
        shown.contains("[redacted]"),
        "the echo is there, hidden: {shown}"
    );
    let bearer = |call: &Call| {
        let auth = call.headers.get("authorization");
        auth.and_then(|v| v.to_str().ok()).map(str::to_string)
    };
    let judge_calls = judge_mock.calls();
    assert_eq!(judge_calls.len(), 3, "one pointwise call per candidate");
    for call in &judge_calls {
        assert_eq!(bearer(call), Some(format!("Bearer {JUDGE_KEY}")));
    }
    for call in upstream.calls() {
        assert!(
            !call.is_judge(),
            "judge calls go to the judge's endpoint only"
        );
        assert_eq!(bearer(&call), Some(format!("Bearer {UPSTREAM_KEY}")));
    }
}
