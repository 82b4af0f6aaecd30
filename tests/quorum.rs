//! Cutting the tail, through the real server against the mock upstream: a quorum (`x-best-of-n-
//! quorum`, `best_of_n.quorum`) judges once K candidates succeeded plus `best_of_n.grace` and
//! cancels the stragglers; `x-best-of-n-timeout` lowers a request's deadline and never raises
//! it; and a storm of 429s reaches the client as 429 with the longest `retry-after`.
//!
//! Requests fix a `seed`, so candidate k is asked with `seed + k`: a test knows which
//! generation index is slow whatever order the calls arrive in. Slow candidates take seconds,
//! fast ones nothing, and timings are asserted with wide margins: the machine may be busy.

mod common;

use std::time::{Duration, Instant, SystemTime};

use bon_proxy::Config;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use serde_json::{json, Value};

const SEED: i64 = 100;
const WAIT: Duration = Duration::from_secs(5);
/// Long enough that a request which waited for it is plainly told apart from one that did not.
const SLOW: Duration = Duration::from_secs(4);

/// The generation index of a candidate call, from its seed.
fn index_of(call: &Call) -> usize {
    let seed = call.json.as_ref().and_then(|b| b["seed"].as_i64());
    seed.map_or(0, |s| (s - SEED) as usize)
}

/// A mock whose candidate k answers `reply(k)` and whose judge calls go to `judge`, and a proxy
/// in front of it with `edit` applied to the test config.
async fn setup(
    reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    judge: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    edit: impl FnOnce(&mut Config),
) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::with_handler(move |call| match call.is_judge() {
        true => judge(call),
        false => reply(index_of(call)),
    })
    .await;
    let mut config = config_for(&mock);
    edit(&mut config);
    (mock, start_proxy(config).await)
}

/// A listwise judge that picks the first candidate it is shown.
fn first_shown(_: &Call) -> Reply {
    Reply::judge_best("1", &[])
}

/// Candidates `0..fast` answer at once, the rest after [`SLOW`].
fn fast_then_slow(fast: usize) -> impl Fn(usize) -> Reply + Send + Sync + 'static {
    move |k| match k < fast {
        true => Reply::completion(&format!("fast answer {k}")),
        false => Reply::completion(&format!("slow answer {k}")).with_delay(SLOW),
    }
}

fn body() -> String {
    json!({
        "model": "gpt-test", "seed": SEED,
        "messages": [{"role": "user", "content": "Which is best?"}],
    })
    .to_string()
}

/// A best-of-`n` request with the debug object, plus `headers`; not checked.
async fn ask(proxy: &Proxy, n: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("x-best-of-n", n), ("x-best-of-n-debug", "1")];
    all.extend_from_slice(headers);
    post_chat(proxy, &all, body()).await
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer.header(name).unwrap_or_else(|| panic!("no {name}"))
}

/// Each candidate's `status` in the debug object, in generation order.
fn statuses(answer: &Answer) -> Vec<String> {
    let debug = answer.json()["best_of_n"]["candidates"].clone();
    let list = debug.as_array().expect("debug candidates");
    let status = |c: &Value| c["status"].as_str().unwrap_or_default().to_string();
    list.iter().map(status).collect()
}

/// Generation indices of the candidate calls the proxy walked away from.
async fn aborted(mock: &MockUpstream, calls: usize) -> Vec<usize> {
    let calls = mock.wait_for_calls(calls, WAIT).await;
    let mut aborted: Vec<usize> = calls
        .iter()
        .filter(|c| c.aborted && !c.is_judge())
        .map(index_of)
        .collect();
    aborted.sort();
    aborted
}

/// Every judge call's shown candidate texts.
fn judged_texts(mock: &MockUpstream) -> Vec<String> {
    let calls = mock.calls().into_iter().filter(Call::is_judge);
    calls
        .flat_map(|c| c.judge_candidates())
        .map(|(_, text)| text)
        .collect()
}

// ---------------------------------------------------------------- quorum and grace

#[tokio::test]
async fn a_quorum_answers_at_the_fast_pace_and_cancels_the_stragglers() {
    let grace = Duration::from_millis(250);
    let (mock, proxy) = setup(fast_then_slow(2), first_shown, |c| {
        c.best_of_n.quorum = 2;
        c.best_of_n.grace = grace;
    })
    .await;
    let started = Instant::now();
    let answer = ask(&proxy, "4", &[]).await;
    let took = started.elapsed();
    answer.expect_ok();
    assert!(took >= grace, "the grace was waited out: {took:?}");
    assert!(took < SLOW / 2, "the slow candidates were not: {took:?}");
    assert_eq!(header(&answer, "x-best-of-n-judged"), "2/4");
    assert!(answer.content().starts_with("fast answer"));
    assert_eq!(statuses(&answer), ["ok", "ok", "cancelled", "cancelled"]);
    let debug = answer.json()["best_of_n"].clone();
    let why = debug["candidates"][3]["error"].as_str().unwrap_or_default();
    assert!(why.contains("quorum"), "{why}");
    assert_eq!(header(&answer, "x-best-of-n-scores").split(',').count(), 4);
    // Usage counts what the upstream reported for the two finished candidates, and the judge.
    assert_eq!(debug["usage"]["candidates"]["total_tokens"], 30);
    assert_eq!(answer.json()["usage"]["total_tokens"], 45);

    assert_eq!(
        aborted(&mock, 5).await,
        [2, 3],
        "the stragglers were hung up on"
    );
    assert_eq!(
        judged_texts(&mock).len(),
        2,
        "the judge saw only the quorum"
    );

    // Judged from two of four, the answer is not stored as the answer of all four.
    let again = ask(&proxy, "4", &[]).await;
    again.expect_ok();
    assert_eq!(header(&again, "x-cache"), "miss");
    assert_eq!(header(&again, "x-best-of-n-judged"), "2/4");
}

#[tokio::test]
async fn a_straggler_that_finishes_within_the_grace_is_judged() {
    let reply = |k: usize| match k {
        0 | 1 => Reply::completion(&format!("fast answer {k}")),
        2 => Reply::completion("a bit late").with_delay(Duration::from_millis(150)),
        _ => Reply::completion("far too late").with_delay(SLOW),
    };
    let (mock, proxy) = setup(reply, first_shown, |c| {
        c.best_of_n.grace = Duration::from_millis(900);
    })
    .await;
    let started = Instant::now();
    let answer = ask(&proxy, "4", &[("x-best-of-n-quorum", "2")]).await;
    let took = started.elapsed();
    answer.expect_ok();
    assert!(took < SLOW / 2, "{took:?}");
    assert_eq!(header(&answer, "x-best-of-n-judged"), "3/4");
    assert_eq!(statuses(&answer), ["ok", "ok", "ok", "cancelled"]);
    let shown = judged_texts(&mock);
    assert!(shown.iter().any(|t| t == "a bit late"), "{shown:?}");
    assert!(!shown.iter().any(|t| t == "far too late"), "{shown:?}");
    assert_eq!(aborted(&mock, 5).await, [3]);
}

#[tokio::test]
async fn without_a_quorum_every_candidate_is_waited_for() {
    let reply = |k: usize| match k {
        0 => Reply::completion("quick"),
        _ => Reply::completion("steady").with_delay(Duration::from_millis(300)),
    };
    let (mock, proxy) = setup(reply, first_shown, |_| {}).await;
    let answer = ask(&proxy, "3", &[]).await;
    answer.expect_ok();
    assert!(answer.header("x-best-of-n-judged").is_none());
    assert_eq!(statuses(&answer), ["ok", "ok", "ok"]);
    assert_eq!(aborted(&mock, 4).await, Vec::<usize>::new());
    // A quorum of N is the same as none; and a whole answer is stored.
    let again = ask(&proxy, "3", &[("x-best-of-n-quorum", "3")]).await;
    assert_eq!(header(&again, "x-cache"), "hit");
}

#[tokio::test]
async fn a_quorum_never_cuts_below_min_candidates() {
    let reply = |k: usize| match k {
        0 | 1 => Reply::completion("fast"),
        2 => Reply::completion("third").with_delay(Duration::from_millis(200)),
        _ => Reply::completion("slow").with_delay(SLOW),
    };
    let (_mock, proxy) = setup(reply, first_shown, |c| c.best_of_n.min_candidates = 3).await;
    let answer = ask(&proxy, "4", &[("x-best-of-n-quorum", "1")]).await;
    answer.expect_ok();
    assert_eq!(header(&answer, "x-best-of-n-judged"), "3/4");
    assert_eq!(statuses(&answer), ["ok", "ok", "ok", "cancelled"]);
}

#[tokio::test]
async fn the_quorum_header_is_checked_and_named() {
    let (mock, proxy) = setup(fast_then_slow(4), first_shown, |_| {}).await;
    for bad in ["0", "5", "-1", "two", "1.5", ""] {
        let answer = ask(&proxy, "4", &[("x-best-of-n-quorum", bad)]).await;
        let error = answer.expect_error(400);
        assert_eq!(error["param"], "x-best-of-n-quorum", "{bad}");
    }
    let answer = ask(&proxy, "4", &[("x-best-of-n-quorum", "5")]).await;
    let error = answer.expect_error(400);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than N (4)"), "{message}");
    assert!(mock.calls().is_empty(), "nothing was sent upstream");
}

/// A judge of any strategy that prefers the text holding "best".
fn prefers_best(call: &Call) -> Reply {
    let shown = call.judge_candidates();
    let best = shown.iter().find(|(_, text)| text.contains("best"));
    let prompt = call.prompt_text();
    if prompt.contains("<winner>") {
        let id = best.map_or("tie", |(id, _)| id.as_str());
        Reply::completion(&format!("<winner>{id}</winner>"))
    } else if prompt.contains("<score>") {
        let score = if best.is_some() { 9 } else { 3 };
        Reply::completion(&format!("<score>{score}</score>"))
    } else {
        let id = best.map_or("1", |(id, _)| id.as_str());
        Reply::judge_best(id, &[])
    }
}

#[tokio::test]
async fn a_quorum_works_with_pairwise_and_pointwise_judges() {
    let reply = |k: usize| match k {
        0 => Reply::completion("answer fair"),
        1 => Reply::completion("answer best"),
        _ => Reply::completion("answer slow best").with_delay(SLOW),
    };
    for strategy in ["pairwise", "pointwise"] {
        let (mock, proxy) = setup(reply, prefers_best, |_| {}).await;
        let started = Instant::now();
        let headers = [("x-best-of-n-judge", strategy), ("x-best-of-n-quorum", "2")];
        let answer = ask(&proxy, "3", &headers).await;
        answer.expect_ok();
        assert!(started.elapsed() < SLOW / 2, "{strategy}");
        assert_eq!(answer.content(), "answer best", "{strategy}");
        assert_eq!(header(&answer, "x-best-of-n-judged"), "2/3", "{strategy}");
        assert_eq!(header(&answer, "x-best-of-n-judge"), strategy);
        assert_eq!(statuses(&answer), ["ok", "ok", "cancelled"], "{strategy}");
        let shown = judged_texts(&mock);
        assert!(!shown.is_empty(), "{strategy}: a judge was asked");
        assert!(
            !shown.iter().any(|t| t.contains("slow")),
            "{strategy}: {shown:?}"
        );
        assert_eq!(aborted(&mock, 3).await, [2], "{strategy}");
    }
}

#[tokio::test]
async fn a_quorum_and_an_early_stop_end_the_fan_out_whichever_comes_first() {
    // Three fast agree: consensus decides at 3, before the quorum of 4.
    let agree = |k: usize| match k {
        0..=2 => Reply::completion("42"),
        _ => Reply::completion("41").with_delay(SLOW),
    };
    let (mock, proxy) = setup(agree, first_shown, |_| {}).await;
    let headers = [
        ("x-best-of-n-judge", "consensus"),
        ("x-best-of-n-quorum", "4"),
    ];
    let answer = ask(&proxy, "5", &headers).await;
    answer.expect_ok();
    assert_eq!(header(&answer, "x-best-of-n-judged"), "3/5");
    let debug = answer.json()["best_of_n"].clone();
    let why = debug["candidates"][4]["error"].as_str().unwrap_or_default();
    assert!(why.contains("early stop"), "{why}");
    assert_eq!(aborted(&mock, 5).await, [3, 4]);
    // The early stop's answer is whole, quorum or not: stored.
    let again = ask(&proxy, "5", &headers).await;
    assert_eq!(header(&again, "x-cache"), "hit");

    // Two fast disagree: no majority yet, and the quorum of 2 ends it.
    let split = |k: usize| match k {
        0 => Reply::completion("7"),
        1 => Reply::completion("8"),
        _ => Reply::completion("7").with_delay(SLOW),
    };
    let (mock, proxy) = setup(split, first_shown, |_| {}).await;
    let started = Instant::now();
    let headers = [
        ("x-best-of-n-judge", "consensus"),
        ("x-best-of-n-quorum", "2"),
    ];
    let answer = ask(&proxy, "5", &headers).await;
    answer.expect_ok();
    assert!(started.elapsed() < SLOW / 2);
    assert_eq!(header(&answer, "x-best-of-n-judged"), "2/5");
    let debug = answer.json()["best_of_n"].clone();
    let why = debug["candidates"][4]["error"].as_str().unwrap_or_default();
    assert!(why.contains("quorum"), "{why}");
    assert_eq!(aborted(&mock, 5).await, [2, 3, 4]);
}

#[tokio::test]
async fn a_quorum_leaves_the_fuser_the_candidates_that_are_in() {
    let fuser = |call: &Call| match call.prompt_text().contains("Write the single best reply") {
        true => Reply::completion("FUSED ANSWER"),
        false => first_shown(call),
    };
    let (mock, proxy) = setup(fast_then_slow(2), fuser, |c| {
        c.fuser.model = "fuser-model".into();
    })
    .await;
    let started = Instant::now();
    let headers = [("x-best-of-n-mode", "fuse"), ("x-best-of-n-quorum", "2")];
    let answer = ask(&proxy, "3", &headers).await;
    answer.expect_ok();
    assert!(started.elapsed() < SLOW / 2);
    assert_eq!(answer.content(), "FUSED ANSWER");
    assert_eq!(header(&answer, "x-best-of-n-mode"), "fuse");
    assert_eq!(header(&answer, "x-best-of-n-judged"), "2/3");
    let shown = judged_texts(&mock);
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(aborted(&mock, 4).await, [2]);
}

// ---------------------------------------------------------------- x-best-of-n-timeout

#[tokio::test]
async fn the_timeout_header_lowers_the_deadline_and_never_raises_it() {
    let request_timeout = Duration::from_millis(1500);
    let (mock, proxy) = setup(fast_then_slow(0), first_shown, |c| {
        c.server.request_timeout = request_timeout;
    })
    .await;
    let started = Instant::now();
    let answer = ask(&proxy, "2", &[("x-best-of-n-timeout", "0.3")]).await;
    let took = started.elapsed();
    let error = answer.expect_error(504);
    assert!(took < Duration::from_millis(1200), "504 early: {took:?}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("x-best-of-n-timeout (300ms)"), "{message}");
    assert_eq!(aborted(&mock, 2).await, [0, 1], "its calls were cut");

    // Larger than server.request_timeout: capped, not raised.
    let started = Instant::now();
    let answer = ask(&proxy, "2", &[("x-best-of-n-timeout", "30")]).await;
    let took = started.elapsed();
    let error = answer.expect_error(504);
    assert!(took >= request_timeout, "{took:?}");
    assert!(took < SLOW - Duration::from_millis(500), "{took:?}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("server.request_timeout"), "{message}");

    for bad in ["0", "-1", "soon", "1s", "inf"] {
        let answer = ask(&proxy, "2", &[("x-best-of-n-timeout", bad)]).await;
        let error = answer.expect_error(400);
        assert_eq!(error["param"], "x-best-of-n-timeout", "{bad}");
    }
}

#[tokio::test]
async fn a_request_within_its_lowered_deadline_is_answered() {
    let reply = |_| Reply::completion("in time").with_delay(Duration::from_millis(50));
    let (_mock, proxy) = setup(reply, first_shown, |_| {}).await;
    let answer = ask(&proxy, "2", &[("x-best-of-n-timeout", "3.5")]).await;
    answer.expect_ok();
    assert_eq!(answer.content(), "in time");
}

// ---------------------------------------------------------------- 429 storms

fn rate_limited(retry_after: Option<String>) -> Reply {
    let reply = Reply::error(
        429,
        "Rate limit reached for requests",
        "rate_limit_exceeded",
    );
    match retry_after {
        Some(value) => reply.with_header("retry-after", &value),
        None => reply,
    }
}

#[tokio::test]
async fn a_429_storm_answers_429_with_the_longest_retry_after() {
    let reply = |k: usize| match k {
        0 => rate_limited(Some("3".into())),
        1 => {
            let at = SystemTime::now() + Duration::from_secs(40);
            rate_limited(Some(httpdate::fmt_http_date(at)))
        }
        _ => rate_limited(None),
    };
    let (_mock, proxy) = setup(reply, first_shown, |_| {}).await;
    let answer = ask(&proxy, "3", &[]).await;
    let error = answer.expect_error(429);
    assert_eq!(
        error["code"], "rate_limit_exceeded",
        "the upstream's own body"
    );
    let wait: u64 = header(&answer, "retry-after").parse().expect("seconds");
    assert!(
        (35..=41).contains(&wait),
        "the HTTP-date, in seconds: {wait}"
    );

    // Without any retry-after, the client's own backoff decides.
    let (_mock, proxy) = setup(|_| rate_limited(None), first_shown, |_| {}).await;
    let answer = ask(&proxy, "3", &[]).await;
    answer.expect_error(429);
    assert!(answer.header("retry-after").is_none());

    // Only a storm is passed on as one: 429s mixed with other failures stay a 502.
    let mixed = |k: usize| match k {
        0 => rate_limited(Some("3".into())),
        _ => Reply::error(500, "upstream exploded", "server_error"),
    };
    let (_mock, proxy) = setup(mixed, first_shown, |_| {}).await;
    ask(&proxy, "3", &[]).await.expect_error(502);
}
