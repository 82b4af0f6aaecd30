//! Passthrough through the real server: what goes in comes out, byte for byte, streams stay
//! streams, credentials are handled as configured, and upstream faults become clear errors.

mod common;

use std::time::Duration;

use bon_proxy::state::Secrets;
use bytes::Bytes;
use common::mock::{MockUpstream, Reply, ReplyBody};
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

fn request(method: Method, url: String) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

#[tokio::test]
async fn method_path_query_headers_status_and_body_pass_unchanged() {
    let upstream_body =
        Bytes::from_static(b"{\"object\":\"list\",  \"data\":[],\"vendor_field\":{\"kept\":1}}\n");
    let reply_body = upstream_body.clone();
    let mock = MockUpstream::with_handler(move |_| Reply {
        status: http::StatusCode::CREATED,
        headers: vec![
            (
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            ),
            ("x-upstream-thing".into(), "yes".into()),
            ("openai-processing-ms".into(), "12".into()),
        ],
        delay: Duration::ZERO,
        body: ReplyBody::Bytes(reply_body.clone()),
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let sent_body =
        Bytes::from_static(b"{\"input\": \"hi\",\"model\":\"e\",   \"unknown\":[1,{\"a\":null}]}");
    let answer = send(
        request(
            Method::PUT,
            proxy.url("/v1/some/new/endpoint?limit=2&order=desc"),
        )
        .header("content-type", "application/json")
        .header("x-client-header", "abc")
        .header("openai-beta", "assistants=v2")
        .body(Full::new(sent_body.clone()))
        .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body, upstream_body);
    assert_eq!(answer.header("x-upstream-thing"), Some("yes"));
    assert_eq!(answer.header("openai-processing-ms"), Some("12"));
    assert_eq!(
        answer.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let call = &mock.wait_for_calls(1, WAIT).await[0];
    assert_eq!(call.method, Method::PUT);
    assert_eq!(
        call.path_and_query,
        "/v1/some/new/endpoint?limit=2&order=desc"
    );
    assert_eq!(call.body, sent_body, "request body bytes unchanged");
    assert_eq!(call.headers["x-client-header"], "abc");
    assert_eq!(call.headers["openai-beta"], "assistants=v2");
    assert_eq!(
        call.headers["host"],
        mock.addr().to_string(),
        "Host is rewritten to the upstream"
    );
}

#[tokio::test]
async fn plain_chat_completion_is_untouched_and_errors_pass_through() {
    let mock = MockUpstream::with_handler(|call| match call.seq {
        0 => Reply::completion("direct"),
        _ => Reply::error(429, "Rate limit reached", "rate_limit_exceeded")
            .with_header("retry-after", "7"),
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": false, "n": 3});
    let answer = post_chat(&proxy, &[], body.to_string()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content(), "direct");
    assert!(answer.header("x-best-of-n").is_none());
    let call = &mock.wait_for_calls(1, WAIT).await[0];
    assert_eq!(
        call.json.clone().unwrap(),
        body,
        "n and every field pass untouched"
    );
    let answer = post_chat(&proxy, &[], body.to_string()).await;
    assert_eq!(answer.expect_error(429)["code"], "rate_limit_exceeded");
    assert_eq!(answer.header("retry-after"), Some("7"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped() {
    let mock = MockUpstream::with_handler(|_| {
        Reply::completion("x")
            .with_header("connection", "keep-alive, x-upstream-private")
            .with_header("x-upstream-private", "secret-hop")
            .with_header("proxy-authenticate", "Basic")
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = send(
        request(Method::GET, proxy.url("/v1/models"))
            .header("connection", "x-client-private")
            .header("x-client-private", "hop")
            .header("proxy-authorization", "Basic abc")
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.header("x-upstream-private").is_none());
    assert!(answer.header("proxy-authenticate").is_none());
    let call = &mock.wait_for_calls(1, WAIT).await[0];
    for name in ["x-client-private", "proxy-authorization", "te"] {
        assert!(call.headers.get(name).is_none(), "{name} was forwarded");
    }
}

#[tokio::test]
async fn sse_stream_reaches_the_client_chunk_by_chunk() {
    let mock = MockUpstream::with_handler(|_| {
        Reply::stream_completion(&["Hel", "lo ", "wor", "ld"], Duration::from_millis(150))
    })
    .await;
    let proxy = start_proxy(config_for(&mock)).await;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true});
    let response = client()
        .request(
            request(Method::POST, proxy.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    let calls = mock.calls();
    assert!(
        calls[0].finished.is_none(),
        "the first chunk arrived while the upstream was still sending"
    );
    let mut rest = Vec::new();
    let mut frames = 1;
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
        frames += 1;
    }
    assert!(frames >= 4, "the stream came in {frames} pieces");
    let text = String::from_utf8([first.to_vec(), rest].concat()).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(text.matches("chat.completion.chunk").count(), 6);
}

#[tokio::test]
async fn configured_key_is_injected_when_the_client_sends_none() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    post_chat(&proxy, &[], chat_body("x")).await;
    post_chat(
        &proxy,
        &[("authorization", "Bearer sk-client-own")],
        chat_body("x"),
    )
    .await;
    let calls = mock.wait_for_calls(2, WAIT).await;
    assert_eq!(
        calls[0].headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(
        calls[1].headers["authorization"], "Bearer sk-client-own",
        "client auth forwarded"
    );
}

#[tokio::test]
async fn client_auth_is_replaced_when_forwarding_is_off() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.upstream.forward_client_auth = false;
    let proxy = start_proxy(config).await;
    post_chat(
        &proxy,
        &[("authorization", "Bearer sk-client-own")],
        chat_body("x"),
    )
    .await;
    let calls = mock.wait_for_calls(1, WAIT).await;
    assert_eq!(
        calls[0].headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test]
async fn no_key_and_no_client_auth_sends_no_authorization() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy_with(config_for(&mock), Secrets::default()).await;
    post_chat(&proxy, &[], chat_body("x")).await;
    let calls = mock.wait_for_calls(1, WAIT).await;
    assert!(calls[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn the_key_never_reaches_a_client() {
    // Whatever happens (success, upstream error, unreachable, timeout, bad input), neither
    // headers nor body carry the configured key.
    let mock = MockUpstream::with_handler(|call| match call.seq % 3 {
        0 => Reply::completion("ok"),
        1 => Reply::error(401, "Incorrect API key provided", "invalid_api_key"),
        _ => Reply::hangup(),
    })
    .await;
    let mut config = config_for(&mock);
    config.upstream.timeout = Duration::from_secs(2);
    let proxy = start_proxy(config).await;
    let mut answers = Vec::new();
    for headers in [
        vec![],
        vec![("x-best-of-n", "3"), ("x-best-of-n-debug", "1")],
        vec![("x-best-of-n", "99")],
    ] {
        for _ in 0..3 {
            answers.push(post_chat(&proxy, &headers, chat_body("x")).await);
        }
    }
    for answer in answers {
        let head = format!("{:?}", answer.headers);
        assert!(!head.contains(UPSTREAM_KEY));
        let body = String::from_utf8_lossy(&answer.body);
        assert!(!body.contains(UPSTREAM_KEY), "{body}");
        assert!(!body.contains("UPSTREAM-SECRET"), "{body}");
    }
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    let mut config = bon_proxy::Config::default();
    config.upstream.base_url = "http://127.0.0.1:9/v1".into();
    let proxy = start_proxy(config).await;
    let answer = send(
        request(Method::GET, proxy.url("/v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.expect_error(502)["code"], "upstream_unreachable");

    let mock = MockUpstream::with_handler(|_| {
        Reply::completion("late").with_delay(Duration::from_secs(5))
    })
    .await;
    let mut config = config_for(&mock);
    config.upstream.timeout = Duration::from_millis(300);
    let proxy = start_proxy(config).await;
    let answer = send(
        request(Method::GET, proxy.url("/v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.expect_error(504)["code"], "upstream_timeout");
}

#[tokio::test]
async fn oversized_passthrough_body_is_413() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.server.max_body_bytes = 1000;
    let proxy = start_proxy(config).await;
    let answer = send(
        request(Method::POST, proxy.url("/v1/embeddings"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(vec![b' '; 2000])))
            .unwrap(),
    )
    .await;
    answer.expect_error(413);
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn health_needs_no_upstream_and_request_ids_are_kept_or_made() {
    let mut config = bon_proxy::Config::default();
    config.upstream.base_url = "http://127.0.0.1:9/v1".into();
    let proxy = start_proxy(config).await;
    for path in ["/healthz", "/readyz"] {
        let answer = send(
            request(Method::GET, proxy.url(path))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200, "{path}");
        assert!(answer.header("x-request-id").unwrap().starts_with("req_"));
    }
    let answer = send(
        request(Method::GET, proxy.url("/healthz"))
            .header("x-request-id", "my-trace-42")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.header("x-request-id"), Some("my-trace-42"));
}

#[tokio::test]
async fn request_id_reaches_the_upstream() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let answer = post_chat(&proxy, &[("x-request-id", "trace-7")], chat_body("x")).await;
    assert_eq!(answer.header("x-request-id"), Some("trace-7"));
    let answer = post_chat(&proxy, &[], chat_body("x")).await;
    let made = answer.header("x-request-id").unwrap().to_string();
    let calls = mock.wait_for_calls(2, WAIT).await;
    assert_eq!(calls[0].headers["x-request-id"], "trace-7");
    assert_eq!(calls[1].headers["x-request-id"], made.as_str());
}

/// `upstream.pool_idle_timeout` closes pooled connections that stay idle, without waiting for
/// a next call to find them stale: after a fan-out, thousands of them would otherwise stay
/// open (and hold the proxy's memory and the upstream's sockets) until the upstream closed
/// them. The mock never closes an idle connection itself.
#[tokio::test]
async fn idle_upstream_connections_close_after_pool_idle_timeout() {
    let mock = MockUpstream::start().await;
    let mut config = config_for(&mock);
    config.upstream.pool_idle_timeout = Duration::from_millis(500);
    let proxy = start_proxy(config).await;
    let header = [("x-best-of-n", "3")];
    let answer = post_chat(&proxy, &header, chat_body("fan out")).await;
    assert_eq!(answer.status, 200);
    mock.wait_for_calls(4, WAIT).await;
    assert!(mock.accepted_connections() >= 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mock.open_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} idle connections still open 5 s after a 0.5 s pool_idle_timeout",
            mock.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool is empty, not broken: the next call opens a new connection.
    let answer = post_chat(&proxy, &[], chat_body("again")).await;
    assert_eq!(answer.status, 200);
}
