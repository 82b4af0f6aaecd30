//! CORS through the real server (`server.cors_origins`): what a browser page sees when it
//! calls the proxy, from a listed origin, an unlisted one, and with CORS off.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::mock::{default_handler, Call, MockUpstream, Reply};
use common::*;
use http::{Method, Request};
use http_body_util::Full;

const APP: &str = "https://app.example.com";

async fn proxy_with_origins(mock: &MockUpstream, origins: &[&str]) -> Proxy {
    let mut config = config_for(mock);
    config.server.cors_origins = origins.iter().map(|o| o.to_string()).collect();
    start_proxy(config).await
}

/// A browser's preflight for a POST with `headers` from `origin`.
async fn preflight(proxy: &Proxy, origin: &str, headers: &str) -> Answer {
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(proxy.url("/v1/chat/completions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", headers)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(request).await
}

/// The headers a page may read, as the proxy lists them.
fn exposed(answer: &Answer) -> Vec<String> {
    let list = answer.header("access-control-expose-headers").unwrap_or("");
    list.split(',').map(|h| h.trim().to_string()).collect()
}

fn vary_has_origin(answer: &Answer) -> bool {
    let vary = answer.headers.get_all("vary").iter();
    vary.filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("origin"))
    })
}

#[tokio::test]
async fn a_listed_origins_preflight_is_answered_by_the_proxy_with_what_the_browser_needs() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with_origins(&mock, &[APP, "http://localhost:3000"]).await;
    let asked = "authorization, content-type, x-best-of-n, x-best-of-n-judge, x-stainless-os";
    let answer = preflight(&proxy, APP, asked).await;
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    assert!(vary_has_origin(&answer), "{:?}", answer.headers);
    assert_eq!(answer.header("access-control-allow-headers"), Some(asked));
    let methods = answer.header("access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    assert!(answer
        .header("access-control-max-age")
        .is_some_and(|a| a.parse::<u32>().is_ok()));
    // The upstream knows nothing of the proxy's policy: the preflight never reaches it.
    assert!(mock.calls().is_empty(), "{:?}", mock.calls());
}

#[tokio::test]
async fn an_unlisted_origins_preflight_gets_403_and_no_allow_headers() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with_origins(&mock, &[APP]).await;
    for origin in [
        "https://evil.example.com",
        "http://app.example.com",
        "https://www.app.example.com",
    ] {
        let answer = preflight(&proxy, origin, "authorization").await;
        let error = answer.expect_error(403);
        assert!(error["message"]
            .as_str()
            .unwrap_or("")
            .contains("server.cors_origins"));
        assert_eq!(
            answer.header("access-control-allow-origin"),
            None,
            "{origin}"
        );
        assert_eq!(
            answer.header("access-control-allow-headers"),
            None,
            "{origin}"
        );
    }
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn answers_to_a_listed_origin_carry_allow_origin_and_expose_the_proxys_headers() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with_origins(&mock, &[APP]).await;
    let origin = [("origin", APP)];
    let best = post_chat(
        &proxy,
        &[("origin", APP), ("x-best-of-n", "2")],
        chat_body("hi"),
    )
    .await;
    best.expect_ok();
    let plain = post_chat(&proxy, &origin, chat_body("hi")).await;
    plain.expect_ok();
    // Errors too: the page must be able to read why.
    let bad = post_chat(
        &proxy,
        &[("origin", APP), ("x-best-of-n", "lots")],
        chat_body("hi"),
    )
    .await;
    bad.expect_error(400);
    for answer in [&best, &plain, &bad] {
        assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
        assert!(vary_has_origin(answer), "{:?}", answer.headers);
        let exposed = exposed(answer);
        for name in [
            "x-request-id",
            "x-cache",
            "x-best-of-n",
            "x-best-of-n-selected",
            "x-best-of-n-scores",
            "x-best-of-n-models",
        ] {
            assert!(
                exposed.iter().any(|e| e == name),
                "{name} not exposed: {exposed:?}"
            );
        }
    }
    assert!(best.header("x-best-of-n-selected").is_some());
}

#[tokio::test]
async fn streams_to_a_listed_origin_carry_the_headers_in_their_head() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        if call.path().ends_with("/chat/completions") {
            return Reply::stream_completion(&["Hel", "lo"], Duration::from_millis(5));
        }
        default_handler(call)
    })
    .await;
    let proxy = proxy_with_origins(&mock, &[APP]).await;
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let answer = post_chat(&proxy, &[("origin", APP)], body).await;
    answer.expect_ok();
    assert_eq!(answer.streamed_content(), "Hello");
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    assert!(exposed(&answer).iter().any(|e| e == "x-request-id"));
}

#[tokio::test]
async fn a_star_allows_any_origin_with_a_star() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with_origins(&mock, &["*"]).await;
    let answer = preflight(&proxy, "https://anyone.example.org", "authorization").await;
    assert_eq!(answer.status, 204);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some("authorization")
    );
    let answer = post_chat(
        &proxy,
        &[("origin", "https://anyone.example.org")],
        chat_body("hi"),
    )
    .await;
    answer.expect_ok();
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn unlisted_origins_get_no_cors_headers_not_even_the_upstreams() {
    // An upstream that allows everyone must not widen the proxy's policy.
    let mock = MockUpstream::with_handler(|call: &Call| {
        default_handler(call).with_header("access-control-allow-origin", "*")
    })
    .await;
    let proxy = proxy_with_origins(&mock, &[APP]).await;
    let answer = post_chat(
        &proxy,
        &[("origin", "https://evil.example.com")],
        chat_body("hi"),
    )
    .await;
    answer.expect_ok();
    assert_eq!(answer.header("access-control-allow-origin"), None);
    assert_eq!(answer.header("access-control-expose-headers"), None);
    let answer = post_chat(&proxy, &[("origin", APP)], chat_body("hi")).await;
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn with_cors_off_a_preflight_goes_to_the_upstream_and_nothing_is_added() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with_origins(&mock, &[]).await;
    let answer = preflight(&proxy, APP, "authorization").await;
    assert_eq!(answer.header("access-control-allow-origin"), None);
    let calls = mock.wait_for_calls(1, Duration::from_secs(5)).await;
    assert_eq!(calls[0].method, Method::OPTIONS);
    let answer = post_chat(&proxy, &[("origin", APP)], chat_body("hi")).await;
    answer.expect_ok();
    assert_eq!(answer.header("access-control-allow-origin"), None);
}
