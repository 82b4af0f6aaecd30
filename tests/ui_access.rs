//! Who may open the decisions inspector (`/ui`): the `/metrics` token when there is one,
//! otherwise a client key when `[auth]` is on, by header or by the cookie `/ui?token=` sets;
//! nobody needs anything when neither is configured.

mod common;

use bon_proxy::auth::hash_key;
use bon_proxy::config::KeyConfig;
use bon_proxy::upstream::ApiKey;
use bon_proxy::{Config, Secrets};
use common::mock::MockUpstream;
use common::ui::*;
use common::*;
use http::{Method, Request};
use http_body_util::Full;

const CLIENT_KEY: &str = "sk-client-UI-0123456789abcdef";
const METRICS_TOKEN: &str = "metrics-UI-TOKEN-0123456789";

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
