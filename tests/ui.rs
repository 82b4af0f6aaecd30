//! The decisions inspector (`/ui`) through the real server against the mock upstream: the
//! ring's order and bound, filters, content off by default and on when configured, scores as
//! the response headers said them, the live view, the inspector switched off, and untrusted
//! candidate text coming back as data. Who may look is `tests/ui_access.rs`; the page itself
//! in a real browser is `tests/browser.rs`.

mod common;

use std::time::Duration;

use common::mock::{Call, MockUpstream, Reply};
use common::ui::*;
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;

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
