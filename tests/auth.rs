//! Client keys (`[auth]`) through the real server against the mock upstream: who gets in, the
//! limits each key carries (requests per minute, tokens per day, N, models), what goes
//! upstream instead of the client's key, cache tenants, the `/metrics` token, and a real SDK.

mod common;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use bon_proxy::auth::hash_key;
use bon_proxy::config::KeyConfig;
use bon_proxy::upstream::ApiKey;
use bon_proxy::{Config, Secrets};
use common::mock::MockUpstream;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;

const TEAM_KEY: &str = "sk-client-TEAM-0123456789abcdef";
const OTHER_KEY: &str = "sk-client-OTHER-0123456789abcdef";
const METRICS_TOKEN: &str = "metrics-TOKEN-0123456789";

fn key(name: Option<&str>, secret: &str) -> KeyConfig {
    KeyConfig {
        name: name.map(str::to_string),
        sha256: hash_key(secret),
        ..KeyConfig::default()
    }
}

fn with_keys(mock: &MockUpstream, keys: Vec<KeyConfig>) -> Config {
    let mut config = config_for(mock);
    config.auth.enabled = true;
    config.auth.keys = keys;
    config
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

async fn metrics_text(proxy: &Proxy, token: Option<&str>) -> Answer {
    let mut request = Request::get(proxy.url("/metrics"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(request.body(Full::default()).unwrap()).await
}

fn counted(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn without_a_known_key_nothing_gets_in() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(with_keys(&mock, vec![key(Some("team"), TEAM_KEY)])).await;
    let error = post_chat(&proxy, &[], chat_body("hi"))
        .await
        .expect_error(401);
    assert_eq!(error["code"], "missing_api_key");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let wrong = bearer("sk-wrong");
    let error = post_chat(&proxy, &[("authorization", &wrong)], chat_body("hi"))
        .await
        .expect_error(401);
    assert_eq!(error["code"], "invalid_api_key");
    let on_models = send(
        Request::get(proxy.url("/v1/models"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    on_models.expect_error(401);
    assert!(
        mock.calls().is_empty(),
        "nothing unauthenticated went upstream"
    );
    // Health checks stay open.
    for path in ["/healthz", "/readyz"] {
        let answer = send(Request::get(proxy.url(path)).body(Full::default()).unwrap()).await;
        assert_eq!(answer.status, 200, "{path}");
    }
    let text = String::from_utf8_lossy(&metrics_text(&proxy, None).await.body).to_string();
    assert_eq!(
        counted(&text, "bon_auth_rejections_total", "missing_key"),
        2.0
    );
    assert_eq!(
        counted(&text, "bon_auth_rejections_total", "unknown_key"),
        1.0
    );
}

#[tokio::test]
async fn a_known_key_gets_in_every_way_sdks_send_it_and_never_goes_upstream() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(with_keys(&mock, vec![key(Some("team"), TEAM_KEY)])).await;
    let auth = bearer(TEAM_KEY);
    for header in [
        ("authorization", auth.as_str()),
        ("api-key", TEAM_KEY),
        ("x-api-key", TEAM_KEY),
    ] {
        post_chat(&proxy, &[header], chat_body("hi"))
            .await
            .expect_ok();
    }
    let answer = post_chat(
        &proxy,
        &[("authorization", &auth), ("x-best-of-n", "2")],
        chat_body("best"),
    )
    .await;
    answer.expect_ok();
    for call in mock.calls() {
        let sent = format!("{:?}", call.headers);
        assert!(
            !sent.contains("sk-client-TEAM"),
            "the client key went upstream: {sent}"
        );
        assert_eq!(
            call.headers.get("authorization").unwrap(),
            &format!("Bearer {UPSTREAM_KEY}"),
            "the proxy's own key goes upstream ({})",
            call.path()
        );
    }
    let text = String::from_utf8_lossy(&metrics_text(&proxy, None).await.body).to_string();
    assert_eq!(
        counted(&text, "bon_key_requests_total", "key=\"team\""),
        4.0
    );
    assert!(counted(&text, "bon_key_tokens_total", "key=\"team\"") > 0.0);
}

#[tokio::test]
async fn over_its_requests_per_minute_a_key_waits_and_is_told_how_long() {
    let mock = MockUpstream::start().await;
    let mut limited = key(Some("slow"), TEAM_KEY);
    limited.requests_per_minute = Some(2);
    let proxy = start_proxy(with_keys(&mock, vec![limited, key(None, OTHER_KEY)])).await;
    let auth = bearer(TEAM_KEY);
    for _ in 0..2 {
        post_chat(&proxy, &[("authorization", &auth)], chat_body("hi"))
            .await
            .expect_ok();
    }
    let answer = post_chat(&proxy, &[("authorization", &auth)], chat_body("hi")).await;
    let error = answer.expect_error(429);
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("requests_per_minute"));
    let wait: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another key is not held back by this one.
    let other = bearer(OTHER_KEY);
    post_chat(&proxy, &[("authorization", &other)], chat_body("hi"))
        .await
        .expect_ok();
}

#[tokio::test]
async fn a_spent_daily_token_budget_refuses_until_midnight() {
    let mock = MockUpstream::start().await;
    let mut budgeted = key(Some("budget"), TEAM_KEY);
    // Best-of-3 spends 3 x 15 for the candidates and some for the judge.
    budgeted.tokens_per_day = Some(40);
    let proxy = start_proxy(with_keys(&mock, vec![budgeted])).await;
    let auth = bearer(TEAM_KEY);
    let first = post_chat(
        &proxy,
        &[("authorization", &auth), ("x-best-of-n", "3")],
        chat_body("spend"),
    )
    .await;
    first.expect_ok();
    let answer = post_chat(&proxy, &[("authorization", &auth)], chat_body("more")).await;
    let error = answer.expect_error(429);
    assert_eq!(error["code"], "token_budget_exceeded");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("tokens_per_day"));
    let wait: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "{wait}");
}

#[tokio::test]
async fn n_and_models_beyond_a_key_are_refused_naming_them() {
    let mock = MockUpstream::start().await;
    let mut narrow = key(Some("narrow"), TEAM_KEY);
    narrow.max_n = Some(2);
    narrow.models = Some(vec!["gpt-test".into()]);
    let proxy = start_proxy(with_keys(&mock, vec![narrow])).await;
    let auth = bearer(TEAM_KEY);
    let error = post_chat(
        &proxy,
        &[("authorization", &auth), ("x-best-of-n", "3")],
        chat_body("hi"),
    )
    .await
    .expect_error(400);
    assert_eq!(error["param"], "x-best-of-n");
    assert!(error["message"].as_str().unwrap().contains("at most 2"));
    let other_model = json!({"model": "gpt-big", "messages": [{"role": "user", "content": "hi"}]});
    for n in [None, Some("2")] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(n.map(|n| ("x-best-of-n", n)));
        let error = post_chat(&proxy, &headers, other_model.to_string())
            .await
            .expect_error(403);
        assert_eq!(error["param"], "model");
        assert!(error["message"].as_str().unwrap().contains("gpt-big"));
    }
    // Mixed models are each checked.
    let error = post_chat(
        &proxy,
        &[
            ("authorization", &auth),
            ("x-best-of-n", "2"),
            ("x-best-of-n-models", "gpt-test,gpt-big"),
        ],
        chat_body("hi"),
    )
    .await
    .expect_error(403);
    assert!(error["message"].as_str().unwrap().contains("gpt-big"));
    // Other routes that name a model too.
    let embeddings = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/v1/embeddings"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(Full::new(
            json!({"model": "gpt-big", "input": "x"}).to_string().into(),
        ))
        .unwrap();
    send(embeddings).await.expect_error(403);
    assert!(mock.calls().is_empty(), "nothing refused went upstream");
    post_chat(
        &proxy,
        &[("authorization", &auth), ("x-best-of-n", "2")],
        chat_body("ok"),
    )
    .await
    .expect_ok();
}

#[tokio::test]
async fn each_key_is_its_own_cache_tenant() {
    let mock = MockUpstream::start().await;
    let keys = vec![key(Some("a"), TEAM_KEY), key(Some("b"), OTHER_KEY)];
    let proxy = start_proxy(with_keys(&mock, keys)).await;
    let ask = |secret: &'static str| {
        let proxy = proxy.handle();
        async move {
            let auth = bearer(secret);
            let headers = [("authorization", auth.as_str()), ("x-best-of-n", "2")];
            post_chat(&proxy, &headers, chat_body("cache me")).await
        }
    };
    assert_eq!(ask(TEAM_KEY).await.header("x-cache"), Some("miss"));
    assert_eq!(ask(TEAM_KEY).await.header("x-cache"), Some("hit"));
    assert_eq!(ask(OTHER_KEY).await.header("x-cache"), Some("miss"));
}

#[tokio::test]
async fn metrics_may_need_their_own_token() {
    let mock = MockUpstream::start().await;
    let secrets = Secrets {
        upstream_key: Some(ApiKey::new(UPSTREAM_KEY)),
        metrics_token: Some(ApiKey::new(METRICS_TOKEN)),
        ..Default::default()
    };
    let proxy = start_proxy_with(config_for(&mock), secrets).await;
    metrics_text(&proxy, None).await.expect_error(401);
    metrics_text(&proxy, Some("wrong")).await.expect_error(401);
    let answer = metrics_text(&proxy, Some(METRICS_TOKEN)).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8_lossy(&answer.body).to_string();
    assert_eq!(
        counted(&text, "bon_auth_rejections_total", "metrics_token"),
        2.0
    );
    assert!(!text.contains(METRICS_TOKEN));
}

#[tokio::test]
async fn an_sdk_with_the_key_as_api_key_works_and_a_wrong_key_reads_as_an_auth_error() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(with_keys(&mock, vec![key(None, TEAM_KEY)])).await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("bon-2/gpt-test")
        .messages(vec![ChatCompletionRequestUserMessageArgs::default()
            .content("hi")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let client = |secret: &str| {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(proxy.url("/v1"))
                .with_api_key(secret),
        )
    };
    let answer = client(TEAM_KEY).chat().create(request.clone()).await;
    assert!(answer.is_ok(), "{answer:?}");
    match client("sk-nope").chat().create(request).await {
        Err(OpenAIError::ApiError(response)) => {
            let error = response.api_error;
            assert_eq!(error.code.as_deref(), Some("invalid_api_key"), "{error:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn hash_key_prints_the_sha256_of_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_bon-proxy"))
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let empty = Command::new(env!("CARGO_BIN_EXE_bon-proxy"))
        .arg("hash-key")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("stdin"));
}
