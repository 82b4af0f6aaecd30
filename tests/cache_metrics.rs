//! The answer cache (hits, misses, bypass, single flight, byte bound, tenants) and the
//! Prometheus endpoint, through the real server against the mock upstream.

mod common;

use std::time::Duration;

use common::metrics::{scrape, value_of};
use common::mock::{numbered, MockUpstream, Reply};
use common::*;
use futures_util::future::join_all;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;

async fn bon(proxy: &Proxy, extra: &[(&str, &str)], body: &str) -> Answer {
    let mut headers = vec![("x-best-of-n", "3")];
    headers.extend_from_slice(extra);
    post_chat(proxy, &headers, body.to_string()).await
}

#[tokio::test]
async fn second_identical_request_is_a_free_hit() {
    let mock = MockUpstream::with_handler(numbered).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let first = bon(&proxy, &[], &chat_body("Why?")).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    let calls = mock.calls().len();
    assert_eq!(calls, 4);
    // Key order and whitespace differ; the request is the same.
    let reordered =
        r#"{ "messages": [ {"content": "Why?", "role": "user"} ],   "model": "gpt-test" }"#;
    let second = bon(&proxy, &[], reordered).await;
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.content(), first.content());
    assert_eq!(
        second.header("x-best-of-n-selected"),
        first.header("x-best-of-n-selected")
    );
    assert_eq!(mock.calls().len(), calls, "a hit costs no upstream call");
    assert_eq!(
        second.json()["usage"],
        json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
        "a hit spent nothing"
    );
    assert_eq!(first.json()["usage"]["total_tokens"], 60);
}

#[tokio::test]
async fn a_hit_carries_the_breakdown_exactly_when_the_client_asks_for_it() {
    // Memory keeps answers serialized and decodes the breakdown only when it is wanted: the
    // one a hit shows must be the one the miss showed, and no client gets it unasked.
    let mock = MockUpstream::with_handler(numbered).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let debug = [("x-best-of-n-debug", "1")];
    let first = bon(&proxy, &debug, &chat_body("Why?")).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    let breakdown = first.json()["best_of_n"].clone();
    assert_eq!(breakdown["n"], 3, "{breakdown}");

    let plain = bon(&proxy, &[], &chat_body("Why?")).await;
    assert_eq!(plain.header("x-cache"), Some("hit"));
    assert!(plain.json().get("best_of_n").is_none(), "{}", plain.json());
    assert_eq!(plain.content(), first.content());

    let asked = bon(&proxy, &debug, &chat_body("Why?")).await;
    assert_eq!(asked.header("x-cache"), Some("hit"));
    assert_eq!(asked.json()["best_of_n"], breakdown);
    assert_eq!(asked.content(), first.content());
    assert_eq!(mock.calls().len(), 4, "both hits cost no upstream call");
}

#[tokio::test]
async fn other_parameters_n_judge_or_tenant_miss() {
    let mock = MockUpstream::with_handler(numbered).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = chat_body("Why?");
    bon(&proxy, &[], &body).await;
    let hotter = json!({"model": "gpt-test", "temperature": 1.5, "messages": [{"role": "user", "content": "Why?"}]});
    for (what, answer) in [
        ("temperature", bon(&proxy, &[], &hotter.to_string()).await),
        (
            "tenant",
            bon(
                &proxy,
                &[("authorization", "Bearer sk-other-tenant")],
                &body,
            )
            .await,
        ),
        (
            "n",
            post_chat(&proxy, &[("x-best-of-n", "2")], body.clone()).await,
        ),
    ] {
        assert_eq!(answer.header("x-cache"), Some("miss"), "{what}");
    }
}

#[tokio::test]
async fn no_cache_refreshes_and_no_store_leaves_the_cache_alone() {
    let mock = MockUpstream::with_handler(numbered).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = chat_body("Why?");
    let original = bon(&proxy, &[], &body).await.content();

    let refreshed = bon(&proxy, &[("cache-control", "no-cache")], &body).await;
    assert_eq!(refreshed.header("x-cache"), Some("bypass"));
    assert_ne!(
        refreshed.content(),
        original,
        "no-cache computed a fresh answer"
    );
    let after_refresh = bon(&proxy, &[], &body).await;
    assert_eq!(after_refresh.header("x-cache"), Some("hit"));
    assert_eq!(
        after_refresh.content(),
        refreshed.content(),
        "no-cache stored what it computed"
    );

    let unstored = bon(&proxy, &[("cache-control", "no-store")], &body).await;
    assert_eq!(unstored.header("x-cache"), Some("bypass"));
    assert_ne!(unstored.content(), refreshed.content());
    let after_no_store = bon(&proxy, &[], &body).await;
    assert_eq!(
        after_no_store.content(),
        refreshed.content(),
        "no-store did not write"
    );
}

#[tokio::test]
async fn a_hit_is_served_as_a_stream_when_asked() {
    let mock = MockUpstream::with_handler(numbered).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let first = bon(&proxy, &[], &chat_body("Why?")).await;
    let streamed = json!({"model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Why?"}]});
    let hit = bon(&proxy, &[], &streamed.to_string()).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    let chunks = hit.sse_chunks();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, first.content());
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 0);
    assert_eq!(mock.calls().len(), 4);
}

#[tokio::test]
async fn fifty_identical_requests_share_one_fan_out() {
    let mock =
        MockUpstream::with_handler(|call| numbered(call).with_delay(Duration::from_millis(300)))
            .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = chat_body("Everyone asks this at once");
    let answers = join_all((0..50).map(|_| bon(&proxy, &[], &body))).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let contents: Vec<String> = answers.iter().map(Answer::content).collect();
    assert!(
        contents.iter().all(|c| *c == contents[0]),
        "50 equal answers"
    );
    assert_eq!(
        mock.calls().len(),
        4,
        "exactly one fan-out of 3 plus one judge call"
    );
    let misses = answers
        .iter()
        .filter(|a| a.header("x-cache") == Some("miss"))
        .count();
    assert_eq!(misses, 1);
    let usage_spent = answers
        .iter()
        .filter(|a| a.json()["usage"]["total_tokens"] != 0)
        .count();
    assert_eq!(
        usage_spent, 1,
        "only the request that computed reports tokens"
    );
}

#[tokio::test]
async fn errors_are_not_cached_and_every_waiter_gets_them() {
    let mock = MockUpstream::with_handler(|_| {
        Reply::error(500, "overloaded", "server_error").with_delay(Duration::from_millis(200))
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = chat_body("Will fail");
    let answers = join_all((0..10).map(|_| bon(&proxy, &[], &body))).await;
    assert!(
        answers.iter().all(|a| a.status == 502),
        "every waiter sees the error"
    );
    assert_eq!(
        mock.calls().len(),
        3,
        "the waiters shared one failed fan-out"
    );
    mock.set_handler(numbered);
    let recovered = bon(&proxy, &[], &body).await;
    assert_eq!(recovered.status, 200);
    assert_eq!(
        recovered.header("x-cache"),
        Some("miss"),
        "the error was not stored"
    );
}

#[tokio::test]
async fn the_byte_bound_evicts_entries() {
    let mock = MockUpstream::with_handler(numbered).await;
    let mut config = config_for(&mock);
    config.cache.max_bytes = 12_000;
    let proxy = start_proxy(config).await;
    for i in 0..20 {
        bon(&proxy, &[], &chat_body(&format!("question {i}"))).await;
    }
    let metrics = scrape(&proxy).await;
    let bytes = value_of(&metrics, "bon_cache_bytes", &[]);
    let entries = value_of(&metrics, "bon_cache_entries", &[]);
    assert!(bytes <= 12_000.0, "cache holds {bytes} bytes");
    assert!((1.0..20.0).contains(&entries), "{entries} entries");
    // moka admits by frequency (TinyLFU), so which answers survive is its call; that not all
    // twenty do, and that a dropped one is computed again, is ours.
    let before = mock.generations();
    let mut misses = 0;
    for i in 0..20 {
        let again = bon(&proxy, &[], &chat_body(&format!("question {i}"))).await;
        if again.header("x-cache") == Some("miss") {
            misses += 1;
        }
    }
    assert!(misses > 0, "twenty answers cannot fit in 12 kB");
    assert_eq!(mock.generations(), before + 3 * misses);
}

#[tokio::test]
async fn plain_completions_are_cached_only_when_configured() {
    let mock = MockUpstream::with_handler(numbered).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = chat_body("plain");
    let first = post_chat(&proxy, &[], body.clone()).await;
    assert!(
        first.header("x-cache").is_none(),
        "plain completions bypass the cache by default"
    );
    post_chat(&proxy, &[], body.clone()).await;
    assert_eq!(mock.calls().len(), 2);

    let mock = MockUpstream::with_handler(numbered).await;
    let mut config = config_for(&mock);
    config.cache.passthrough = true;
    let proxy = start_proxy(config).await;
    let first = post_chat(&proxy, &[], body.clone()).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    let second = post_chat(&proxy, &[], body.clone()).await;
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.content(), first.content());
    assert_eq!(second.json()["usage"]["total_tokens"], 0);
    let streamed = json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "plain"}]});
    let hit = post_chat(&proxy, &[], streamed.to_string()).await;
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    assert!(String::from_utf8_lossy(&hit.body).contains("chat.completion.chunk"));
    assert_eq!(mock.calls().len(), 1);
}

// --- metrics -------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_move_as_requests_are_made() {
    // "question-alpha": a candidate fails and the judge gives no verdict (degraded, never stored);
    // "question-beta": all is well (stored, then hit).
    let mock = MockUpstream::with_handler(|call| {
        if call.is_judge() && call.prompt_text().contains("question-alpha") {
            return Reply::completion("no verdict here");
        }
        if call.is_judge() {
            return Reply::judge_best("1", &[]);
        }
        match call.seq {
            0 => Reply::error(500, "x", "x"),
            _ => Reply::completion("fine"),
        }
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let before = scrape(&proxy).await;
    assert_eq!(value_of(&before, "bon_requests_total", &[]), 0.0);
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            before.samples.iter().any(|s| s.metric == name),
            "{name} missing"
        );
    }

    let first = bon(&proxy, &[], &chat_body("question-alpha")).await;
    let again = bon(&proxy, &[], &chat_body("question-alpha")).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(
        again.header("x-cache"),
        Some("miss"),
        "a degraded answer is not stored"
    );
    assert_eq!(
        bon(&proxy, &[], &chat_body("question-beta"))
            .await
            .header("x-cache"),
        Some("miss")
    );
    assert_eq!(
        bon(&proxy, &[], &chat_body("question-beta"))
            .await
            .header("x-cache"),
        Some("hit")
    );
    post_chat(&proxy, &[], chat_body("plain")).await;
    post_chat(&proxy, &[("x-best-of-n", "nope")], chat_body("x")).await;

    let after = scrape(&proxy).await;
    let count = |name: &str, labels: &[(&str, &str)]| value_of(&after, name, labels);
    let bon_ok = [
        ("route", "chat_completions"),
        ("mode", "best_of_n"),
        ("status", "200"),
    ];
    assert_eq!(count("bon_requests_total", &bon_ok), 4.0);
    assert_eq!(count("bon_requests_total", &[("mode", "passthrough")]), 1.0);
    assert_eq!(
        count(
            "bon_requests_total",
            &[("mode", "rejected"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(count("bon_candidates_total", &[("outcome", "ok")]), 8.0);
    assert_eq!(count("bon_candidates_total", &[("outcome", "error")]), 1.0);
    assert_eq!(count("bon_candidates_per_request", &[]), 3.0);
    assert_eq!(
        count(
            "bon_judge_total",
            &[("strategy", "listwise"), ("outcome", "parse_error")]
        ),
        2.0
    );
    assert_eq!(count("bon_judge_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(count("bon_judge_total", &[("outcome", "fallback")]), 2.0);
    assert_eq!(
        count("bon_cache_requests_total", &[("result", "miss")]),
        3.0
    );
    assert_eq!(count("bon_cache_requests_total", &[("result", "hit")]), 1.0);
    assert_eq!(
        count("bon_upstream_requests_total", &[("kind", "candidate")]),
        9.0
    );
    assert_eq!(
        count(
            "bon_upstream_requests_total",
            &[("kind", "judge"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        count("bon_upstream_requests_total", &[("kind", "passthrough")]),
        1.0
    );
    assert_eq!(
        count(
            "bon_tokens_total",
            &[("kind", "candidate"), ("direction", "prompt")]
        ),
        80.0
    );
    assert_eq!(
        count(
            "bon_tokens_total",
            &[("kind", "judge"), ("direction", "completion")]
        ),
        15.0
    );
    assert_eq!(count("bon_overhead_seconds", &[("mode", "best_of_n")]), 4.0);
    assert_eq!(
        count("bon_overhead_seconds", &[("mode", "passthrough")]),
        1.0
    );
    assert_eq!(count("bon_inflight_requests", &[]), 0.0);
    assert_eq!(count("bon_cache_entries", &[]), 1.0);
}

#[tokio::test]
async fn position_bias_histogram_counts_judge_winners() {
    let mock = MockUpstream::with_handler(|call| {
        if call.is_judge() {
            Reply::judge_best("2", &[])
        } else {
            Reply::completion("x")
        }
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    for i in 0..3 {
        bon(&proxy, &[], &chat_body(&format!("q{i}"))).await;
    }
    let scrape = scrape(&proxy).await;
    let count = value_of(&scrape, "bon_selected_position", &[]);
    assert_eq!(count, 3.0);
    let sum = scrape
        .samples
        .iter()
        .find(|s| s.metric == "bon_selected_position_sum")
        .map(|s| match s.value {
            prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v) => v,
            _ => -1.0,
        });
    assert_eq!(
        sum,
        Some(3.0),
        "presentation id 2 is position 1, three times"
    );
}

#[tokio::test]
async fn metrics_answer_while_requests_are_in_flight() {
    let mock = MockUpstream::with_handler(|_| {
        Reply::completion("slow").with_delay(Duration::from_secs(3))
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let slow = tokio::spawn({
        let url = proxy.url("/v1/chat/completions");
        async move {
            let request = Request::builder()
                .method(Method::POST)
                .uri(url)
                .header("content-type", "application/json")
                .header("x-best-of-n", "4")
                .body(Full::new(bytes::Bytes::from(chat_body("slow"))))
                .unwrap();
            send(request).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scrape = tokio::time::timeout(Duration::from_secs(1), scrape(&proxy))
        .await
        .expect("/metrics answered at once while a best-of-4 was in flight");
    assert_eq!(value_of(&scrape, "bon_inflight_requests", &[]), 1.0);
    slow.abort();
}

#[tokio::test]
async fn a_waiter_keeps_the_shared_work_alive_when_the_first_client_leaves() {
    let mock =
        MockUpstream::with_handler(|call| numbered(call).with_delay(Duration::from_millis(600)))
            .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = chat_body("shared work");
    // The first client gives up after 200 ms, while its computation is still running.
    let impatient = tokio::time::timeout(Duration::from_millis(200), bon(&proxy, &[], &body));
    let patient = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        bon(&proxy, &[], &body).await
    };
    let (gave_up, answer) = tokio::join!(impatient, patient);
    assert!(gave_up.is_err(), "the first client timed out");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("x-cache"),
        Some("hit"),
        "it shared the computation"
    );
    assert_eq!(mock.generations(), 3, "the work was not restarted");
    assert!(
        mock.calls().iter().all(|c| !c.aborted),
        "nothing was cancelled"
    );
}
