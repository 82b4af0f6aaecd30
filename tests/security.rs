//! The holes an adversarial review found, each shut and kept shut: slow clients that lock out
//! others, paths that leave the upstream's base URL, memory amplification under best-of-N,
//! methods forwarded with the proxy's key, and keys an upstream echoes back.
//!
//! Slow and idle clients speak raw HTTP/1.1 over sockets bound to 127.0.0.2, so the proxy sees
//! them as a different address from the well-behaved clients on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::mock::{default_handler, Call, MockUpstream, Reply};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const OTHER_CLIENT: &str = "127.0.0.2:0";

/// A TCP connection to the proxy from `local` (an address on loopback).
async fn connect_from(local: &str, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(local.parse().expect("local address"))
        .expect("bind a loopback address");
    socket.connect(proxy).await.expect("connect to the proxy")
}

/// Reads until the peer closes or `limit` passes; what arrived, as text.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// Sends `request` as raw bytes from 127.0.0.1 and returns the whole answer as text.
async fn raw(proxy: &Proxy, request: &str) -> String {
    let mut stream = connect_from("127.0.0.1:0", proxy.addr).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    read_until_closed(&mut stream, Duration::from_secs(5)).await
}

/// `GET path` from 127.0.0.1, one request on its own connection; the whole answer as text.
async fn get(proxy: &Proxy, path: &str) -> String {
    raw(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"),
    )
    .await
}

fn status_of(raw_answer: &str) -> u16 {
    raw_answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw_answer:?}"))
}

/// The JSON error object of a raw answer.
fn error_of(raw_answer: &str) -> Value {
    let body = raw_answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {raw_answer}"));
    assert!(json["error"]["message"].is_string(), "{json}");
    json["error"].clone()
}

/// A request head announcing a body of `length` bytes; best-of-N when `n` is set.
fn post_head(length: usize, n: Option<u32>) -> String {
    let best_of_n = n.map_or(String::new(), |n| format!("x-best-of-n: {n}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n{best_of_n}\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Slow clients
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_from_one_address_do_not_lock_out_other_clients() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.max_inflight = 4;
    config.server.max_connections_per_ip = 0;
    config.server.body_read_timeout = Duration::from_secs(6);
    config.server.min_body_rate = 1024;
    config.server.body_rate_window = Duration::from_millis(1500);
    let proxy = start_proxy(config).await;

    // 200 clients on 127.0.0.2 send a head, a byte of body, then a byte every 200 ms: far
    // more than the 4 work slots, half of them best-of-N, half passthrough. Slow passthrough
    // bodies can take the one streaming place (max_inflight / 4) and so one work slot; every
    // other slow body is read before it could take one.
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut stream = connect_from(OTHER_CLIENT, proxy.addr).await;
        let n = (i % 2 == 0).then_some(3);
        stream
            .write_all(format!("{}{{", post_head(100_000, n)).as_bytes())
            .await
            .expect("write head");
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            let (mut reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                while writer.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(15), reader.read_to_end(&mut answer))
                .await;
            trickle.abort();
            (
                String::from_utf8_lossy(&answer).into_owned(),
                started.elapsed(),
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile, clients on 127.0.0.1 are answered at once, both kinds.
    for headers in [&[("x-best-of-n", "3")][..], &[][..]] {
        let started = Instant::now();
        let answer = post_chat(&proxy, headers, chat_body("hello")).await;
        assert_eq!(answer.status, 200, "{:?}: {:?}", headers, answer.body);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{headers:?} took {:?}",
            started.elapsed()
        );
    }

    // The slow ones are cut off by the rate floor, soon after the grace period, with a 408.
    for handle in slow {
        let (answer, took) = handle.await.expect("slow client task");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        let error = error_of(&answer);
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("server.min_body_rate")),
            "{error}"
        );
        assert!(took < Duration::from_secs(4), "cut off after {took:?}");
    }
    // Besides the 3 candidates, the judge and the passthrough call of the good clients, at
    // most one slow body reached the upstream: the one streaming place (max_inflight / 4),
    // and its upload was broken off.
    let calls = mock.wait_for_calls(5, Duration::from_secs(5)).await;
    let slow: Vec<_> = calls.iter().filter(|c| c.aborted).collect();
    assert_eq!(calls.len() - slow.len(), 5, "{calls:?}");
    assert!(slow.len() <= 1, "{slow:?}");
}

#[tokio::test]
async fn a_body_that_never_completes_is_cut_at_the_deadline() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.body_read_timeout = Duration::from_secs(1);
    config.server.min_body_rate = 0;
    let proxy = start_proxy(config).await;
    let mut stream = connect_from(OTHER_CLIENT, proxy.addr).await;
    let started = Instant::now();
    stream
        .write_all(format!("{}{{\"model\":", post_head(1000, Some(2))).as_bytes())
        .await
        .expect("write");
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    let error = error_of(&answer);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.body_read_timeout")),
        "{error}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn an_upload_that_bursts_then_stalls_is_cut_off_with_408() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.body_buffer_bytes = 1024;
    config.server.min_body_rate = 1024;
    config.server.body_rate_window = Duration::from_secs(1);
    let proxy = start_proxy(config).await;
    let mut stream = connect_from(OTHER_CLIENT, proxy.addr).await;
    let started = Instant::now();
    // 4 KiB at once (past the 1 KiB buffer, so it streams upstream; four windows' worth at
    // 1 KiB/s), then nothing: the burst earns no credit, the second window is empty.
    let head =
        "POST /v1/files HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/octet-stream\r\n\
                content-length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[b'x'; 4096]).await.expect("body");
    let answer = read_until_closed(&mut stream, Duration::from_secs(6)).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("server.min_body_rate"), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let calls = mock.wait_for_calls(1, Duration::from_secs(2)).await;
    assert!(calls[0].aborted, "the upstream saw the upload break off");
}

#[tokio::test]
async fn silent_and_dribbling_connections_are_closed_after_the_header_timeout() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.header_read_timeout = Duration::from_secs(1);
    let proxy = start_proxy(config).await;

    let started = Instant::now();
    let mut silent = connect_from(OTHER_CLIENT, proxy.addr).await;
    let mut dribbling = connect_from(OTHER_CLIENT, proxy.addr).await;
    dribbling
        .write_all(b"GET /v1/mod")
        .await
        .expect("partial head");
    let (silent_got, dribbling_got) = tokio::join!(
        read_until_closed(&mut silent, Duration::from_secs(5)),
        read_until_closed(&mut dribbling, Duration::from_secs(5)),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert!(silent_got.is_empty(), "{silent_got}");
    assert!(!dribbling_got.contains("200 OK"), "{dribbling_got}");
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.max_connections_per_ip = 3;
    let proxy = start_proxy(config).await;

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(OTHER_CLIENT, proxy.addr).await);
    }
    let mut fourth = connect_from(OTHER_CLIENT, proxy.addr).await;
    let answer = read_until_closed(&mut fourth, Duration::from_secs(3)).await;
    assert_eq!(status_of(&answer), 429, "{answer}");
    assert!(
        error_of(&answer)["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.max_connections_per_ip")),
        "{answer}"
    );

    // Another address is served as usual, and the refusal is counted.
    let health = get(&proxy, "/healthz").await;
    assert_eq!(status_of(&health), 200, "{health}");
    let metrics = get(&proxy, "/metrics").await;
    assert!(
        metrics.contains("bon_connections_refused_total{reason=\"per_ip\"} 1"),
        "{metrics}"
    );

    // A closed connection frees its place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from(OTHER_CLIENT, proxy.addr).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut again, Duration::from_secs(3)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}

#[tokio::test]
async fn the_total_connection_bound_answers_503() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.max_connections = 2;
    let proxy = start_proxy(config).await;
    let _held = [
        connect_from(OTHER_CLIENT, proxy.addr).await,
        connect_from("127.0.0.3:0", proxy.addr).await,
    ];
    let answer = raw(&proxy, "GET /healthz HTTP/1.1\r\nhost: p\r\n\r\n").await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains("server.max_connections"), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// 2. Paths that could leave upstream.base_url
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn paths_that_could_leave_the_base_url_are_refused_before_the_upstream() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    for path in [
        "/v1/../../internal/admin",
        "/v1/./models",
        "/%2e%2e/internal/admin",
        "/v1/%2E%2E/%2e%2E/admin",
        "/v1/.%2e/admin",
        "/v1/%252e%252e/admin",
        "/v1/models%2f..%2fadmin",
        "/v1/models%5C..%5Cadmin",
        "//evil.com/v1/models",
        "/v1//evil.com/models",
        "/v1/..;/admin",
    ] {
        let answer = raw(
            &proxy,
            &format!("GET {path} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&answer), 400, "{path}: {answer}");
        let error = error_of(&answer);
        assert_eq!(error["param"], "path", "{path}: {error}");
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains(path)),
            "{path}: {error}"
        );
    }
    // A backslash is refused too, by the proxy or already by the HTTP parser.
    let answer = raw(
        &proxy,
        "GET /v1\\..\\admin HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(mock.calls().is_empty(), "forwarded: {:?}", mock.calls());

    // A plain path still goes through, to the prefix.
    let answer = get(&proxy, "/v1/models").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(mock.calls()[0].path_and_query, "/v1/models");
}

// ---------------------------------------------------------------------------------------------
// 3. Memory under best-of-N
// ---------------------------------------------------------------------------------------------

fn chat_of_size(bytes: usize) -> String {
    json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "a".repeat(bytes)}],
    })
    .to_string()
}

#[tokio::test]
async fn best_of_n_bodies_have_their_own_smaller_limit() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.best_of_n.max_body_bytes = 64 * 1024;
    let proxy = start_proxy(config).await;
    let body = chat_of_size(100_000);
    let answer = post_chat(&proxy, &[("x-best-of-n", "4")], body.clone()).await;
    let error = answer.expect_error(413);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("best_of_n.max_body_bytes")),
        "{error}"
    );
    // A client that writes all of a much larger body before it reads (as hyper's does) still
    // gets the 413, not a broken pipe: the proxy reads and drops the rest first, and the
    // connection stays usable.
    let answer = post_chat(&proxy, &[("x-best-of-n", "4")], chat_of_size(8 << 20)).await;
    answer.expect_error(413);
    assert_eq!(answer.header("connection"), None);
    let not_json = http::Request::post(proxy.url("/v1/chat/completions"))
        .header("x-best-of-n", "4")
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            "x".repeat(8 << 20),
        )))
        .expect("request");
    send(not_json).await.expect_error(415);
    assert!(mock.calls().is_empty());
    // The same body as a plain request is within server.max_body_bytes.
    let answer = post_chat(&proxy, &[], body).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_makes_large_best_of_n_requests_wait_then_503() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        default_handler(call).with_delay(Duration::from_millis(1500))
    })
    .await;
    let mut config = config_for(&mock);
    config.best_of_n.memory_budget_bytes = 1024 * 1024;
    config.best_of_n.memory_wait = Duration::from_millis(300);
    config.cache.enabled = false;
    let proxy = start_proxy(config).await;
    // Each weighs 400 kB x 2: one fits in 1 MiB, two do not.
    let body = chat_of_size(400_000);
    let first = {
        let (proxy, body) = (proxy.handle(), body.clone());
        tokio::spawn(async move { post_chat(&proxy, &[("x-best-of-n", "2")], body).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let second = post_chat(&proxy, &[("x-best-of-n", "2")], body.clone()).await;
    let error = second.expect_error(503);
    assert!(started.elapsed() >= Duration::from_millis(280));
    assert_eq!(second.header("retry-after"), Some("1"));
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("best_of_n.memory_budget_bytes")),
        "{error}"
    );
    assert_eq!(first.await.expect("first").status, 200);
    // Once the first is done, its share is back.
    let third = post_chat(&proxy, &[("x-best-of-n", "2")], body).await;
    assert_eq!(third.status, 200);
}

#[tokio::test]
async fn judge_prompts_are_bounded_and_cuts_are_marked() {
    let long_answer = format!("BEGIN{}FINISH", "word ".repeat(12_000));
    let mock = MockUpstream::with_handler(move |call: &Call| {
        if call.is_judge() {
            return Reply::judge_best("1", &[]);
        }
        Reply::completion(&long_answer)
    })
    .await;
    let mut config = config_for(&mock);
    config.judge.max_prompt_bytes = 20_000;
    let proxy = start_proxy(config).await;
    let answer = post_chat(&proxy, &[("x-best-of-n", "4")], chat_of_size(50_000)).await;
    assert_eq!(answer.status, 200);
    let calls = mock.wait_for_calls(5, Duration::from_secs(5)).await;
    let judge = calls.iter().find(|c| c.is_judge()).expect("a judge call");
    let prompt = judge.prompt_text();
    // The budget covers the texts; the template's own words come on top.
    assert!(
        prompt.len() < 20_000 + 3_000,
        "judge prompt of {} bytes",
        prompt.len()
    );
    assert!(prompt.contains("bytes cut by bon-proxy (judge.max_prompt_bytes)"));
    for (_, text) in judge.judge_candidates() {
        assert!(
            text.contains("BEGIN") && text.contains("FINISH"),
            "{text:.80}"
        );
    }
    // The client still gets the whole candidate.
    assert!(answer.content().ends_with("FINISH"));
}

#[tokio::test]
async fn seeded_candidates_differ_only_in_their_seed() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({
        "model": "gpt-test",
        "seed": 7,
        "temperature": 0.5,
        "messages": [{"role": "user", "content": "hi"}],
        "vendor_extra": {"keep": true},
    });
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], body.to_string()).await;
    assert_eq!(answer.status, 200);
    let calls = mock.wait_for_calls(4, Duration::from_secs(5)).await;
    let mut seeds = Vec::new();
    for call in calls.iter().filter(|c| !c.is_judge()) {
        let mut sent = call.json.clone().expect("candidate body is JSON");
        seeds.push(sent["seed"].as_i64().expect("seed"));
        let object = sent.as_object_mut().expect("object");
        object.remove("seed");
        let mut expected = body.as_object().cloned().expect("object");
        expected.remove("seed");
        assert_eq!(object, &expected);
    }
    seeds.sort_unstable();
    assert_eq!(seeds, [7, 8, 9]);
}

// ---------------------------------------------------------------------------------------------
// 4. Methods
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_trace_and_unknown_methods_are_answered_locally() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    for request in [
        "CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\nconnection: close\r\n\r\n",
        "TRACE /v1/models HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n",
        "PROPFIND /v1/models HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n",
    ] {
        let mut stream = connect_from("127.0.0.1:0", proxy.addr).await;
        stream.write_all(request.as_bytes()).await.expect("write");
        let answer = read_until_closed(&mut stream, Duration::from_secs(2)).await;
        assert_eq!(status_of(&answer), 405, "{request}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("allow: get, post, put, patch, delete, head, options"),
            "{answer}"
        );
        assert!(!answer.contains("Connection Established"));
        error_of(&answer);
    }
    assert!(mock.calls().is_empty(), "forwarded: {:?}", mock.calls());
    // OPTIONS on a path is an ordinary request and is forwarded.
    let answer = raw(
        &proxy,
        "OPTIONS /v1/models HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status_of(&answer), 405, "{answer}");
    assert_eq!(mock.calls().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Keys echoed by an upstream
// ---------------------------------------------------------------------------------------------

fn echoes_the_key(echo: &'static str) -> impl Fn(&Call) -> Reply + Send + Sync {
    move |_call: &Call| {
        Reply::error(
            401,
            &format!("Incorrect API key provided: {echo}. You can find your key online."),
            "invalid_api_key",
        )
    }
}

#[tokio::test]
async fn keys_an_upstream_echoes_never_reach_the_client() {
    let mock = MockUpstream::with_handler(echoes_the_key(UPSTREAM_KEY)).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let secret_part = &UPSTREAM_KEY[8..24];

    // Best-of-N: every candidate got the same 401, which is passed on, redacted.
    let answer = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("hi")).await;
    let error = answer.expect_error(401);
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(!text.contains(secret_part), "{text}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("Incorrect API key provided: [redacted].")),
        "{error}"
    );
    assert_eq!(error["code"], "invalid_api_key", "the rest is kept");

    // Passthrough, plain and via the other route shape.
    for path in ["/v1/models", "/v1/chat/completions"] {
        let request = http::Request::builder()
            .method(if path.ends_with("models") {
                "GET"
            } else {
                "POST"
            })
            .uri(proxy.url(path))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(chat_body(
                "hi",
            ))))
            .expect("request");
        let answer = send(request).await;
        assert_eq!(answer.status, 401);
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        assert!(!text.contains(secret_part), "{path}: {text}");
        assert!(text.contains("[redacted]"), "{path}: {text}");
        assert_eq!(
            answer.header("content-length").map(str::to_string),
            Some(answer.body.len().to_string()),
            "the length fits the redacted body"
        );
    }
}

#[tokio::test]
async fn a_truncated_key_in_a_judge_error_stays_out_of_the_debug_object() {
    const TRUNCATED: &str = "sk-test-UPSTREAM-SECRET-01...";
    let mock = MockUpstream::with_handler(|call: &Call| {
        if call.is_judge() {
            return Reply::error(401, &format!("bad key {TRUNCATED}"), "invalid_api_key");
        }
        Reply::completion("an answer")
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = post_chat(
        &proxy,
        &[("x-best-of-n", "2"), ("x-best-of-n-debug", "1")],
        chat_body("hi"),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.header("x-best-of-n-fallback").is_some());
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(!text.contains("UPSTREAM-SECRET"), "{text}");
    assert!(text.contains("bad key [redacted]..."), "{text}");
}

#[tokio::test]
async fn a_bare_lf_header_line_is_forwarded_as_the_proxy_read_it() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = raw(
        &proxy,
        "GET /v1/models HTTP/1.1\r\nhost: p\r\nx-one: 1\nx-two: 2\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let calls = mock.calls();
    let header = |name: &str| {
        calls[0]
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // Two headers, as README "Security" documents: what the upstream sees is what the proxy
    // understood, with no bare LF left in any value.
    assert_eq!(header("x-one").as_deref(), Some("1"));
    assert_eq!(header("x-two").as_deref(), Some("2"));
}

#[tokio::test]
async fn http2_connections_cannot_be_held_open_either() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.header_read_timeout = Duration::from_secs(1);
    let proxy = start_proxy(config).await;

    // Part of the HTTP/2 preface, then nothing.
    let started = Instant::now();
    let mut partial = connect_from(OTHER_CLIENT, proxy.addr).await;
    partial
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut partial, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "{got}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A real HTTP/2 connection is served, then closed once it has been idle that long.
    let stream = connect_from(OTHER_CLIENT, proxy.addr).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let closed = tokio::spawn(connection);
    let request = http::Request::get(proxy.url("/healthz"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let answer = sender.send_request(request).await.expect("h2 request");
    assert_eq!(answer.status(), 200);
    drop(answer);
    let idle_since = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the idle HTTP/2 connection is closed by the proxy")
        .expect("connection task")
        .expect("closed cleanly, with GOAWAY");
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[tokio::test]
async fn with_the_proxys_key_upstream_answers_come_uncompressed_so_they_can_be_redacted() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let get = |auth: Option<&'static str>| {
        let mut request =
            http::Request::get(proxy.url("/v1/models")).header("accept-encoding", "gzip, br");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        send(
            request
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
    };
    assert_eq!(get(None).await.status, 200);
    assert_eq!(get(Some("Bearer sk-client-own-key")).await.status, 200);
    let calls = mock.calls();
    let encoding = |i: usize| calls[i].headers.get("accept-encoding").cloned();
    // The proxy's key went upstream: an echo of it must be readable to be hidden.
    assert_eq!(
        encoding(0).as_ref().map(|v| v.as_bytes()),
        Some(&b"identity"[..])
    );
    // The client's own key: nothing of the proxy's to protect, its header goes as sent.
    assert_eq!(
        encoding(1).as_ref().map(|v| v.as_bytes()),
        Some(&b"gzip, br"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gives_its_slot_back_after_the_write_timeout() {
    let big = Reply::json(200, json!({"object": "list", "data": "x".repeat(48 << 20)}));
    let mock = MockUpstream::with_handler(move |call: &Call| {
        if call.path().ends_with("/big") {
            return big.clone();
        }
        default_handler(call)
    })
    .await;
    let mut config = config_for(&mock);
    config.server.max_inflight = 1;
    config.server.write_timeout = Duration::from_secs(1);
    let proxy = start_proxy(config).await;

    // The one work slot goes to a client that asks for a large answer and never reads it.
    let mut stalled = connect_from(OTHER_CLIENT, proxy.addr).await;
    stalled
        .write_all(b"GET /v1/big HTTP/1.1\r\nhost: p\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = get(&proxy, "/v1/models").await;
    assert_eq!(status_of(&busy), 503, "the slot is taken: {busy:.200}");

    // Once its writes have made no progress for write_timeout, the slot is free again.
    let started = Instant::now();
    loop {
        let answer = get(&proxy, "/v1/models").await;
        if status_of(&answer) == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "still {answer:.200}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
}

#[tokio::test]
async fn h2c_carries_passthrough_and_best_of_n_side_by_side_on_one_connection() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake (prior knowledge)");
    tokio::spawn(connection);
    let ask = |best_of: Option<&'static str>, stream: bool| {
        let mut sender = sender.clone();
        let body = serde_json::json!({"model": "gpt-test", "stream": stream,
            "messages": [{"role": "user", "content": "over h2c"}]});
        let mut request = http::Request::post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json");
        if let Some(n) = best_of {
            request = request.header("x-best-of-n", n);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .expect("request");
        async move {
            let answer = sender.send_request(request).await.expect("h2 request");
            let status = answer.status();
            let best_of_n = answer.headers().get("x-best-of-n").cloned();
            let body = http_body_util::BodyExt::collect(answer.into_body())
                .await
                .expect("h2 body")
                .to_bytes();
            (status, best_of_n, body)
        }
    };
    // Three requests in flight at once, as streams of the one connection.
    let (plain, best, streamed) = tokio::join!(
        ask(None, false),
        ask(Some("3"), false),
        ask(Some("2"), true)
    );
    assert_eq!(plain.0, 200);
    assert!(plain.1.is_none());
    assert_eq!(best.0, 200);
    assert_eq!(best.1.as_ref().map(|v| v.as_bytes()), Some(&b"3"[..]));
    assert_eq!(streamed.0, 200);
    let events = String::from_utf8_lossy(&streamed.2).to_string();
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");
}

#[tokio::test]
async fn header_count_and_size_are_bounded() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let send_head = |extra: String| {
        let addr = proxy.addr;
        async move {
            let mut stream = connect_from(OTHER_CLIENT, addr).await;
            let head = format!("GET /v1/models HTTP/1.1\r\nhost: proxy\r\n{extra}\r\n");
            // The proxy may answer and close before the whole head is written.
            let _ = stream.write_all(head.as_bytes()).await;
            read_until_closed(&mut stream, Duration::from_secs(5)).await
        }
    };
    let many: String = (0..150).map(|k| format!("x-h{k}: v\r\n")).collect();
    let answer = send_head(many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let huge = format!("x-huge: {}\r\n", "v".repeat(600 * 1024));
    let answer = send_head(huge).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a 600 KiB header was not refused: {answer}"
    );
    assert!(mock.calls().is_empty(), "nothing oversized went upstream");
    // An ordinary request on a new connection is served.
    let answer = send_head("connection: close\r\n".to_string()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn upstream_calls_are_bounded_and_the_overflow_is_refused_quickly() {
    // Calls about "slow" take 800 ms; the rest answer at once.
    let mock = MockUpstream::with_handler(|call: &common::mock::Call| {
        let reply = common::mock::default_handler(call);
        if call.prompt_text().contains("slow") {
            reply.with_delay(Duration::from_millis(800))
        } else {
            reply
        }
    })
    .await;
    let mut config = config_for(&mock);
    config.upstream.max_connections = 2;
    config.upstream.max_connections_wait = Duration::from_millis(150);
    let proxy = start_proxy(config).await;
    let ask = |question: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let proxy = proxy.handle();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = post_chat(&proxy, &headers, chat_body(question)).await;
            (answer, started.elapsed())
        })
    };
    // Two slow calls take both places.
    let slow = [ask("slow one", vec![]), ask("slow two", vec![])];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (plain, waited) = ask("quick", vec![]).await.unwrap();
    let error = plain.expect_error(503);
    assert_eq!(plain.header("retry-after"), Some("1"));
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("upstream.max_connections"));
    assert!(waited < Duration::from_millis(600), "{waited:?}");
    // No candidate can be sent either: a 503 to retry, not a 502.
    let (best, _) = ask("quick best", vec![("x-best-of-n", "2")]).await.unwrap();
    best.expect_error(503);
    for call in slow {
        let (answer, _) = call.await.unwrap();
        answer.expect_ok();
    }
    // Once the places are free, everything is served again.
    let (after, _) = ask("quick again", vec![("x-best-of-n", "2")])
        .await
        .unwrap();
    after.expect_ok();
}
