//! The decisions inspector (`/ui`) through the real server against the mock upstream: the
//! ring's order and bound, filters, content off by default and on when configured, scores as
//! the response headers said them, the live view, who may look, the inspector switched off,
//! and untrusted candidate text coming back as data. The page itself in a real browser is
//! `tests/browser.rs`.

mod common;

use std::time::Duration;

use bon_proxy::auth::hash_key;
use bon_proxy::config::KeyConfig;
use bon_proxy::upstream::ApiKey;
use bon_proxy::{Config, Secrets};
use bytes::Bytes;
use common::mock::{Call, MockUpstream, Reply};
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const CLIENT_KEY: &str = "sk-client-UI-0123456789abcdef";
const METRICS_TOKEN: &str = "metrics-UI-TOKEN-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// A config against `mock` where every request computes its answer (no cache hits).
fn ui_config(mock: &MockUpstream) -> Config {
    let mut config = config_for(mock);
    config.cache.enabled = false;
    config
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::default()).unwrap()).await
}

/// A best-of-2 request for `model` with the request id `id`, answered with 200.
async fn ask(proxy: &Proxy, model: &str, id: &str, extra: &[(&str, &str)]) -> Answer {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("question {id}")}],
    });
    let mut headers = vec![("x-best-of-n", "2"), ("x-request-id", id)];
    headers.extend_from_slice(extra);
    let answer = post_chat(proxy, &headers, body.to_string()).await;
    answer.expect_ok();
    answer
}

async fn listing(proxy: &Proxy, query: &str) -> Value {
    let answer = get(proxy, &format!("/ui/api/decisions{query}"), &[]).await;
    answer.expect_ok();
    answer.json()
}

fn request_ids(listing: &Value) -> Vec<String> {
    let decisions = listing["decisions"].as_array().expect("a decisions list");
    decisions
        .iter()
        .map(|d| d["request_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The kept decision whose request id is `id`, everything kept of it.
async fn detail_of(proxy: &Proxy, id: &str) -> Value {
    let list = listing(proxy, "").await;
    let found = list["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["request_id"] == id)
        .unwrap_or_else(|| panic!("no decision for {id}: {list}"));
    let answer = get(proxy, &format!("/ui/api/decisions/{}", found["id"]), &[]).await;
    answer.expect_ok();
    answer.json()
}

#[tokio::test]
async fn the_ring_keeps_the_newest_first_within_ui_keep() {
    let mock = MockUpstream::start().await;
    let mut config = ui_config(&mock);
    config.ui.keep = 3;
    let proxy = start_proxy(config).await;
    for i in 1..=5 {
        ask(&proxy, "gpt-test", &format!("ring-{i}"), &[]).await;
    }
    let list = listing(&proxy, "").await;
    assert_eq!(request_ids(&list), ["ring-5", "ring-4", "ring-3"]);
    assert_eq!(
        (list["kept"].as_u64(), list["keep"].as_u64()),
        (Some(3), Some(3))
    );
    let ids: Vec<u64> = list["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [5, 4, 3]);
    // The oldest were dropped: their ids no longer answer.
    get(&proxy, "/ui/api/decisions/1", &[])
        .await
        .expect_error(404);
    get(&proxy, "/ui/api/decisions/x", &[])
        .await
        .expect_error(404);
    let limited = listing(&proxy, "?limit=1").await;
    assert_eq!(request_ids(&limited), ["ring-5"]);
    // A summary has what the list shows.
    let summary = &list["decisions"][0];
    for field in [
        "time",
        "model",
        "n",
        "strategy",
        "rubric",
        "winner",
        "fallback",
        "latency_ms",
    ] {
        assert!(summary.get(field).is_some(), "{field} missing: {summary}");
    }
    assert_eq!(summary["usage"]["total_tokens"], 45, "{summary}");
    assert_eq!(summary["rubric"], "helpfulness");
}

#[tokio::test]
async fn cache_hits_are_not_decisions() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let first = ask(&proxy, "gpt-test", "same", &[]).await;
    assert_eq!(first.header("x-cache"), Some("miss"));
    let again = ask(&proxy, "gpt-test", "same", &[]).await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    assert_eq!(listing(&proxy, "").await["kept"], 1);
}

#[tokio::test]
async fn filters_pick_by_model_strategy_and_fallback() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(ui_config(&mock)).await;
    ask(&proxy, "model-a", "a-listwise", &[]).await;
    // The mock judge answers `<best>`, which a pointwise judge cannot read: its fallback picks.
    let fell_back = ask(
        &proxy,
        "model-b",
        "b-pointwise",
        &[("x-best-of-n-judge", "pointwise")],
    )
    .await;
    assert!(fell_back.header("x-best-of-n-fallback").is_some());
    ask(&proxy, "model-a", "a-second", &[]).await;
    let only = |query: &'static str| {
        let proxy = proxy.handle();
        async move { request_ids(&listing(&proxy, query).await) }
    };
    assert_eq!(only("?model=model-a").await, ["a-second", "a-listwise"]);
    assert_eq!(only("?strategy=pointwise").await, ["b-pointwise"]);
    assert_eq!(only("?fallback=yes").await, ["b-pointwise"]);
    assert_eq!(
        only("?fallback=no&strategy=listwise").await,
        ["a-second", "a-listwise"]
    );
    assert_eq!(
        only("?model=model-b&fallback=no").await,
        Vec::<String>::new()
    );
    assert_eq!(only("?model=&fallback=any").await.len(), 3);
    assert!(only("?model=nobody").await.is_empty());
    let list = listing(&proxy, "").await;
    assert_eq!(list["models"], serde_json::json!(["model-a", "model-b"]));
    assert_eq!(
        list["strategies"],
        serde_json::json!(["listwise", "pointwise"])
    );
    let error = get(&proxy, "/ui/api/decisions?fallback=maybe", &[])
        .await
        .expect_error(400);
    assert_eq!(error["param"], "fallback");
}

#[tokio::test]
async fn content_is_off_by_default() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(ui_config(&mock)).await;
    ask(&proxy, "gpt-test", "private", &[]).await;
    let list = listing(&proxy, "").await;
    assert_eq!(list["include_content"], false);
    let detail = detail_of(&proxy, "private").await;
    assert_eq!(detail["content"], false);
    assert!(detail.get("conversation").is_none(), "{detail}");
    for candidate in detail["candidates"].as_array().unwrap() {
        assert!(candidate.get("text").is_none(), "{candidate}");
        assert_eq!(candidate["outcome"], "ok");
    }
    let verdict = &detail["verdict"];
    assert_eq!(verdict["outcome"], "ok");
    assert!(verdict.get("raw").is_none(), "{verdict}");
    let text = detail.to_string();
    assert!(
        !text.contains("question private") && !text.contains("candidate answer"),
        "{text}"
    );
}

#[tokio::test]
async fn content_is_kept_when_configured_and_scores_match_the_headers() {
    let mock = MockUpstream::start().await;
    let mut config = ui_config(&mock);
    config.ui.include_content = Some(true);
    let proxy = start_proxy(config).await;
    let answer = ask(&proxy, "gpt-test", "open", &[]).await;
    let detail = detail_of(&proxy, "open").await;
    assert_eq!(detail["content"], true);
    assert_eq!(detail["conversation"][0]["role"], "user");
    assert_eq!(detail["conversation"][0]["text"], "question open");
    assert_eq!(detail["verdict"]["raw"][0], "<best>1</best>");
    let candidates = detail["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2);
    // The winner's text is the answer the client got.
    let selected: usize = answer
        .header("x-best-of-n-selected")
        .unwrap()
        .parse()
        .unwrap();
    let winner = candidates.iter().find(|c| c["winner"] == true).unwrap();
    assert_eq!(winner["index"], selected);
    assert_eq!(winner["rank"], 1);
    assert_eq!(winner["text"], answer.content());
    assert_eq!(detail["winner"], selected);
    let scores: Vec<&str> = candidates
        .iter()
        .map(|c| c["score_text"].as_str().unwrap())
        .collect();
    assert_eq!(
        scores.join(","),
        answer.header("x-best-of-n-scores").unwrap()
    );
}

/// Candidates that answer with markup; the judge picks the first shown.
fn markup(call: &Call) -> Reply {
    if call.is_judge() {
        return Reply::judge_best("1", &[]);
    }
    Reply::completion("<script>alert(1)</script><img src=x onerror=alert(2)> & done")
}

#[tokio::test]
async fn candidate_markup_comes_back_as_escaped_data() {
    let mock = MockUpstream::with_handler(markup).await;
    let mut config = ui_config(&mock);
    config.ui.include_content = Some(true);
    let proxy = start_proxy(config).await;
    ask(&proxy, "gpt-test", "xss", &[]).await;
    let list = get(&proxy, "/ui/api/decisions", &[]).await;
    let id = list.json()["decisions"][0]["id"].clone();
    let answer = get(&proxy, &format!("/ui/api/decisions/{id}"), &[]).await;
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    let raw = String::from_utf8_lossy(&answer.body);
    assert!(
        !raw.contains('<') && !raw.contains('>') && !raw.contains('&'),
        "{raw}"
    );
    assert!(raw.contains("\\u003cscript\\u003e"), "{raw}");
    let text = &answer.json()["candidates"][0]["text"];
    assert_eq!(
        text,
        "<script>alert(1)</script><img src=x onerror=alert(2)> & done"
    );
}

/// Candidates that answer with 40 KiB each.
fn long_answers(call: &Call) -> Reply {
    if call.is_judge() {
        return Reply::judge_best("1", &[]);
    }
    Reply::completion(&"é".repeat(20 * 1024))
}

#[tokio::test]
async fn long_texts_are_cut_and_the_ring_says_what_it_weighs() {
    let mock = MockUpstream::with_handler(long_answers).await;
    let mut config = ui_config(&mock);
    config.ui.include_content = Some(true);
    let proxy = start_proxy(config).await;
    ask(&proxy, "gpt-test", "long", &[]).await;
    let detail = detail_of(&proxy, "long").await;
    let text = detail["candidates"][0]["text"].as_str().unwrap();
    assert!(text.len() < 33 * 1024, "{}", text.len());
    assert!(text.starts_with("éé") && text.ends_with("more bytes not kept]"));
    let list = listing(&proxy, "").await;
    let bytes = list["bytes"].as_u64().unwrap();
    assert!((64 * 1024..80 * 1024).contains(&bytes), "{bytes}");
    assert_eq!(list["max_bytes"], 32 * 1024 * 1024);
}

#[tokio::test]
async fn the_page_and_its_assets_are_embedded_and_locked_down() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(ui_config(&mock)).await;
    let page = get(&proxy, "/ui", &[]).await;
    page.expect_ok();
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("/ui/app.js") && html.contains("/ui/style.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
    let script = get(&proxy, "/ui/app.js", &[]).await;
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let js = String::from_utf8_lossy(&script.body);
    // Untrusted text is only ever written as text.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    get(&proxy, "/ui/style.css", &[]).await.expect_ok();
    let icon = get(&proxy, "/ui/favicon.svg", &[]).await;
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
    get(&proxy, "/ui/nothing", &[]).await.expect_error(404);
    let post = post_to(&proxy, "/ui", &[], "{}").await;
    post.expect_error(405);
    assert_eq!(post.header("allow"), Some("GET"));
    // The upstream never heard of any of it.
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn switched_off_ui_is_an_ordinary_path() {
    let mock = MockUpstream::start().await;
    let mut config = ui_config(&mock);
    config.ui.enabled = false;
    let proxy = start_proxy(config).await;
    ask(&proxy, "gpt-test", "unseen", &[]).await;
    // Forwarded like any path the proxy does not serve itself: the mock answers 404.
    let answer = get(&proxy, "/ui/api/decisions", &[]).await;
    answer.expect_error(404);
    assert!(String::from_utf8_lossy(&answer.body).contains("mock upstream"));
    assert!(mock
        .calls()
        .iter()
        .any(|c| c.path().ends_with("/ui/api/decisions")));
}

/// Reads the event stream until `want` shows up in it, returning what was read.
async fn read_events_until(body: &mut hyper::body::Incoming, want: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(want) {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame.expect("an event stream frame").into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    seen
}

async fn open_events(proxy: &Proxy, headers: &[(&str, &str)]) -> hyper::body::Incoming {
    let mut request = Request::get(proxy.url("/ui/events"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::<Bytes>::default()).unwrap();
    let response = client().request(request).await.expect("the event stream");
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").unwrap();
    assert_eq!(content_type, "text/event-stream");
    response.into_body()
}

#[tokio::test]
async fn the_live_view_announces_new_decisions_and_ends_at_shutdown() {
    let mock = MockUpstream::start().await;
    let mut config = ui_config(&mock);
    config.server.drain_delay = Duration::ZERO;
    let proxy = start_proxy(config).await;
    let mut events = open_events(&proxy, &[]).await;
    let greeting = read_events_until(&mut events, ": connected").await;
    assert!(greeting.starts_with("retry: "), "{greeting}");
    ask(&proxy, "gpt-live", "live-1", &[]).await;
    let seen = read_events_until(&mut events, "live-1").await;
    let data = seen
        .split("\n\n")
        .find(|e| e.starts_with("event: decision\n"))
        .and_then(|e| e.strip_prefix("event: decision\ndata: "))
        .unwrap_or_else(|| panic!("no decision event in {seen:?}"));
    let summary: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (summary["model"].as_str(), summary["n"].as_u64()),
        (Some("gpt-live"), Some(2))
    );
    // Shutdown ends the stream rather than waiting out server.shutdown_grace for it.
    drop(proxy);
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(frame) = events.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived the shutdown");
}

fn keyed(mock: &MockUpstream) -> Config {
    let mut config = ui_config(mock);
    config.auth.enabled = true;
    config.auth.keys = vec![KeyConfig {
        name: Some("team".into()),
        sha256: hash_key(CLIENT_KEY),
        ..KeyConfig::default()
    }];
    config
}

/// The cookie pair (`name=value`) a `Set-Cookie` header sets.
fn cookie_pair(answer: &Answer) -> String {
    let set = answer.header("set-cookie").expect("a cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn with_auth_on_a_client_key_opens_it_by_header_or_by_the_token_cookie() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(keyed(&mock)).await;
    let bearer = format!("Bearer {CLIENT_KEY}");
    let auth = [("authorization", bearer.as_str())];
    ask(&proxy, "gpt-test", "keyed", &auth).await;
    let error = get(&proxy, "/ui/api/decisions", &[])
        .await
        .expect_error(401);
    assert_eq!(error["code"], "missing_api_key");
    get(&proxy, "/ui/events", &[]).await.expect_error(401);
    let locked = get(&proxy, "/ui", &[]).await;
    assert_eq!(locked.status, 401);
    assert!(String::from_utf8_lossy(&locked.body).contains("/ui?token="));
    get(&proxy, "/ui/api/decisions", &[("x-api-key", "sk-nope")])
        .await
        .expect_error(401);
    get(&proxy, "/ui/api/decisions", &auth).await.expect_ok();
    // The browser's way in: the token once in the address, then a cookie.
    let bad = get(&proxy, "/ui?token=sk-nope", &[]).await;
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
    let login = get(&proxy, &format!("/ui?token={CLIENT_KEY}"), &[]).await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/ui"));
    let cookie = cookie_pair(&login);
    let with_cookie = [("cookie", cookie.as_str())];
    get(&proxy, "/ui", &with_cookie).await.expect_ok();
    let list = get(&proxy, "/ui/api/decisions", &with_cookie).await;
    list.expect_ok();
    assert_eq!(request_ids(&list.json()), ["keyed"]);
    // The cookie opens the inspector, not the API.
    let chat = post_chat(&proxy, &with_cookie, chat_body("hi")).await;
    chat.expect_error(401);
    let logout = get(&proxy, "/ui/logout", &with_cookie).await;
    assert!(logout.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn the_metrics_token_guards_it_like_metrics() {
    let mock = MockUpstream::start().await;
    let secrets = Secrets {
        upstream_key: Some(ApiKey::new(UPSTREAM_KEY)),
        metrics_token: Some(ApiKey::new(METRICS_TOKEN)),
        ..Default::default()
    };
    let proxy = start_proxy_with(keyed(&mock), secrets).await;
    let token = format!("Bearer {METRICS_TOKEN}");
    // A client key is not enough once /metrics has a token of its own.
    let client = format!("Bearer {CLIENT_KEY}");
    let error = get(&proxy, "/ui/api/decisions", &[("authorization", &client)])
        .await
        .expect_error(401);
    assert_eq!(error["code"], "invalid_metrics_token");
    get(&proxy, "/ui/api/decisions", &[("authorization", &token)])
        .await
        .expect_ok();
    let login = get(&proxy, &format!("/ui?token={METRICS_TOKEN}"), &[]).await;
    assert_eq!(login.status, 303);
    let cookie = cookie_pair(&login);
    let mut events = open_events(&proxy, &[("cookie", &cookie)]).await;
    assert!(read_events_until(&mut events, ": connected")
        .await
        .contains("retry:"));
    let metrics = get(&proxy, "/metrics", &[("authorization", &token)]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("bon_auth_rejections_total{reason=\"metrics_token\"} 1")),
        "{text}"
    );
}

#[tokio::test]
async fn without_auth_a_token_in_the_address_is_not_needed_or_stored() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(ui_config(&mock)).await;
    let login = get(&proxy, "/ui?token=anything", &[]).await;
    assert_eq!(login.status, 303);
    assert!(login.header("set-cookie").is_none());
    let request = Request::builder()
        .method(Method::HEAD)
        .uri(proxy.url("/ui"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(request).await.status, 405);
}

/// `check-config` with `args` in a directory holding `toml` as `proxy.toml`: the `[ui]` table
/// it prints.
fn checked_ui_table(args: &[&str], toml: &str) -> toml::Table {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("proxy.toml"), toml).expect("proxy.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bon-proxy"))
        .arg("check-config")
        .args(args)
        .current_dir(dir.path())
        .env_remove("BON_CONFIG")
        .output()
        .expect("check-config runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout.find("\n[").expect("a TOML table in stdout");
    let printed: toml::Table = stdout[start..].parse().expect("TOML");
    printed["ui"].as_table().expect("a [ui] table").clone()
}

#[test]
fn include_content_defaults_to_true_only_under_demo() {
    let demo = checked_ui_table(&["--demo"], "");
    assert_eq!(demo["include_content"].as_bool(), Some(true), "{demo}");
    let plain = checked_ui_table(&[], "");
    assert!(plain.get("include_content").is_none(), "{plain}");
    let said = checked_ui_table(&["--demo"], "[ui]\ninclude_content = false\n");
    assert_eq!(said["include_content"].as_bool(), Some(false), "{said}");
}
