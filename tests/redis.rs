//! The Redis tier with a real redis-server on loopback: two proxies sharing answers,
//! fleet-wide single flight, Redis slow, down and back, TTL expiry, a password, the stored
//! format, and client-key limits that hold across replicas. Each proxy here is a separate server, as replicas behind a load balancer are.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bon_proxy::auth::hash_key;
use bon_proxy::config::KeyConfig;
use bon_proxy::upstream::ApiKey;
use bon_proxy::{Config, Secrets};
use common::metrics::{scrape, value_of};
use common::mock::{numbered, MockUpstream};
use common::redis_server::RedisServer;
use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

fn with_redis(mock: &MockUpstream, redis: &RedisServer) -> Config {
    let mut config = config_for(mock);
    config.cache.redis_url = redis.url();
    config
}

fn fleet(mock: &MockUpstream, redis: &RedisServer) -> Config {
    let mut config = with_redis(mock, redis);
    config.cache.redis_single_flight = true;
    config
}

async fn best_of_3(proxy: &Proxy, question: &str) -> Answer {
    post_chat(proxy, &[("x-best-of-n", "3")], chat_body(question)).await
}

/// Asks `proxy` until Redis has `question`'s answer (the write is off the request path).
async fn until_stored(redis: &RedisServer, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.keys("bon:v1:*").len() <= before {
        assert!(Instant::now() < deadline, "the answer never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_answer_computed_through_one_replica_is_a_redis_hit_through_another() {
    let redis = RedisServer::start();
    let mock = MockUpstream::with_handler(numbered).await;
    let first = start_proxy(with_redis(&mock, &redis)).await;
    let second = start_proxy(with_redis(&mock, &redis)).await;

    let computed = best_of_3(&first, "Why is the sky blue?").await;
    computed.expect_ok();
    assert_eq!(computed.header("x-cache"), Some("miss"));
    assert_eq!((mock.generations(), mock.judgements()), (3, 1));
    until_stored(&redis, 0).await;

    let shared = best_of_3(&second, "Why is the sky blue?").await;
    shared.expect_ok();
    assert_eq!(shared.header("x-cache"), Some("hit-redis"));
    assert_eq!(shared.content(), computed.content());
    assert_eq!(
        shared.header("x-best-of-n-selected"),
        computed.header("x-best-of-n-selected")
    );
    assert_eq!(
        shared.json()["usage"]["total_tokens"],
        0,
        "a hit spent nothing"
    );
    assert_eq!(
        (mock.generations(), mock.judgements()),
        (3, 1),
        "one fan-out for both replicas"
    );

    // The Redis hit filled the second replica's memory: next time it does not ask Redis.
    let again = best_of_3(&second, "Why is the sky blue?").await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    let metrics = scrape(&second).await;
    let result = |r| value_of(&metrics, "bon_cache_requests_total", &[("result", r)]);
    assert_eq!(
        (result("hit_redis"), result("hit"), result("miss")),
        (1.0, 1.0, 0.0)
    );
}

#[tokio::test]
async fn answers_are_stored_versioned_compact_and_with_the_cache_ttl() {
    let redis = RedisServer::start();
    let mock = MockUpstream::with_handler(numbered).await;
    let mut config = with_redis(&mock, &redis);
    config.cache.ttl = Duration::from_secs(600);
    let proxy = start_proxy(config).await;
    best_of_3(&proxy, "Stored how?").await.expect_ok();
    until_stored(&redis, 0).await;

    let keys = redis.keys("bon:v1:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let hex = keys[0].strip_prefix("bon:v1:").unwrap();
    assert!(hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()));
    let mut conn = redis.connection();
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!((590_000..=600_000).contains(&ttl), "PTTL {ttl}");
    let stored: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut conn).unwrap();
    let stored: Value = serde_json::from_slice(&stored).expect("one JSON object");
    assert_eq!(stored["api"], "chat");
    assert_eq!(stored["completion"]["object"], "chat.completion");
    assert!(stored["headers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h[0].as_str().unwrap().starts_with("x-best-of-n")));
}

#[tokio::test]
async fn identical_requests_spread_over_two_replicas_cost_one_fan_out() {
    let redis = RedisServer::start();
    let mock =
        MockUpstream::with_handler(|call| numbered(call).with_delay(Duration::from_millis(300)))
            .await;
    let replicas = [
        start_proxy(fleet(&mock, &redis)).await,
        start_proxy(fleet(&mock, &redis)).await,
    ];
    let requests = (0..20).map(|i| {
        let proxy = replicas[i % 2].handle();
        async move { best_of_3(&proxy, "One fan-out for the fleet?").await }
    });
    let answers = join_all(requests).await;
    for answer in &answers {
        answer.expect_ok();
    }
    assert_eq!(
        (mock.generations(), mock.judgements()),
        (3, 1),
        "20 identical requests over two replicas: one fan-out and one judge call"
    );
    let contents: Vec<String> = answers.iter().map(Answer::content).collect();
    assert!(contents.iter().all(|c| *c == contents[0]), "{contents:?}");
    let sources: Vec<&str> = answers.iter().filter_map(|a| a.header("x-cache")).collect();
    assert_eq!(
        sources.iter().filter(|s| **s == "miss").count(),
        1,
        "{sources:?}"
    );
    assert_eq!(
        sources.iter().filter(|s| **s == "hit-redis").count(),
        1,
        "{sources:?}"
    );
    // No lock is left behind.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(redis.keys("bon:v1:lock:*").is_empty());
}

#[tokio::test]
async fn a_replica_that_dies_holding_the_lock_holds_up_the_others_only_until_it_expires() {
    let redis = RedisServer::start();
    let mock =
        MockUpstream::with_handler(|call| numbered(call).with_delay(Duration::from_millis(200)))
            .await;
    let owner = start_proxy(fleet(&mock, &redis)).await;
    let waiter = start_proxy(fleet(&mock, &redis)).await;
    let question = "Who computes when the owner dies?";
    // Learn the lock's name from a real owner, then leave it as a dead replica would: held,
    // never renewed, never released, until it expires.
    let owner_request = tokio::spawn({
        let owner = owner.handle();
        async move { best_of_3(&owner, question).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let lock = loop {
        if let Some(lock) = redis.keys("bon:v1:lock:*").pop() {
            break lock;
        }
        assert!(Instant::now() < deadline, "the owner never took the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    owner_request.abort();
    drop(owner);
    let mut conn = redis.connection();
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("a-replica-that-died")
        .arg("PX")
        .arg(1000)
        .query(&mut conn)
        .unwrap();
    let started = Instant::now();
    let answer = best_of_3(&waiter, question).await;
    answer.expect_ok();
    assert_eq!(
        answer.header("x-cache"),
        Some("miss"),
        "computed by the waiter"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "waited for the dead owner's lock to expire, then computed: {waited:?}"
    );
}

#[tokio::test]
async fn redis_down_never_fails_a_request_and_the_breaker_stops_asking_until_it_is_back() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::with_handler(numbered).await;
    let first = start_proxy(with_redis(&mock, &redis)).await;
    let second = start_proxy(with_redis(&mock, &redis)).await;
    best_of_3(&first, "warm up").await.expect_ok();

    redis.stop();
    for i in 0..20 {
        let started = Instant::now();
        let answer = best_of_3(&first, &format!("while Redis is down {i}")).await;
        answer.expect_ok();
        assert_eq!(answer.header("x-cache"), Some("miss"));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "request {i} took {:?}",
            started.elapsed()
        );
    }
    let metrics = scrape(&first).await;
    let errors = value_of(&metrics, "bon_cache_redis_errors_total", &[]);
    // Each request asks Redis twice (read, then write): 40 errors without the breaker; it
    // opens after 5 failures in a row and lets one probe through per back-off.
    assert!(
        (5.0..=10.0).contains(&errors),
        "errors counted, then the breaker stopped asking: {errors}"
    );

    redis.restart();
    // The breaker lets a probe through after its back-off (1 s, then 2 s); then answers
    // computed through one replica are Redis hits through the other again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut round = 0;
    loop {
        round += 1;
        let question = format!("after Redis is back {round}");
        best_of_3(&first, &question).await.expect_ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = best_of_3(&second, &question).await;
        answer.expect_ok();
        if answer.header("x-cache") == Some("hit-redis") {
            break;
        }
        assert!(Instant::now() < deadline, "hits never resumed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_frozen_redis_delays_a_request_by_at_most_the_timeout() {
    let redis = RedisServer::start();
    let mock = MockUpstream::with_handler(numbered).await;
    let mut config = fleet(&mock, &redis);
    config.cache.redis_timeout = Duration::from_millis(100);
    let proxy = start_proxy(config).await;
    best_of_3(&proxy, "warm up").await.expect_ok();

    redis.pause();
    let mut slowest = Duration::ZERO;
    for i in 0..8 {
        let started = Instant::now();
        best_of_3(&proxy, &format!("while Redis is frozen {i}"))
            .await
            .expect_ok();
        slowest = slowest.max(started.elapsed());
    }
    redis.resume();
    assert!(
        slowest < Duration::from_millis(100 + 250),
        "one Redis timeout at most, plus the request itself: {slowest:?}"
    );
    let metrics = scrape(&proxy).await;
    assert!(value_of(&metrics, "bon_cache_redis_errors_total", &[("op", "lock")]) >= 1.0);
}

#[tokio::test]
async fn answers_expire_from_both_tiers_with_the_ttl() {
    let redis = RedisServer::start();
    let mock = MockUpstream::with_handler(numbered).await;
    let mut config = with_redis(&mock, &redis);
    config.cache.ttl = Duration::from_secs(1);
    let first = start_proxy(config.clone()).await;
    let second = start_proxy(config).await;
    best_of_3(&first, "How long?").await.expect_ok();
    until_stored(&redis, 0).await;
    assert_eq!(
        best_of_3(&second, "How long?").await.header("x-cache"),
        Some("hit-redis")
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(redis.keys("bon:v1:*").is_empty(), "expired in Redis");
    // The second replica's memory copy kept only what remained of the TTL.
    let after = best_of_3(&second, "How long?").await;
    assert_eq!(after.header("x-cache"), Some("miss"));
    assert_eq!(mock.generations(), 6);
}

#[tokio::test]
async fn a_password_from_the_environment_is_used_and_never_shown() {
    const PASSWORD: &str = "redis-test-PASSWORD-0123456789";
    let redis = RedisServer::with_password(PASSWORD);
    let mock = MockUpstream::with_handler(numbered).await;
    let mut config = with_redis(&mock, &redis);
    config.cache.redis_password_env = "BON_TEST_REDIS_PASSWORD".into();
    let secrets = || Secrets {
        upstream_key: Some(ApiKey::new(UPSTREAM_KEY)),
        redis_password: Some(ApiKey::new(PASSWORD)),
        ..Default::default()
    };
    let first = start_proxy_with(config.clone(), secrets()).await;
    let second = start_proxy_with(config.clone(), secrets()).await;
    best_of_3(&first, "Authenticated?").await.expect_ok();
    until_stored(&redis, 0).await;
    let shared = best_of_3(&second, "Authenticated?").await;
    assert_eq!(shared.header("x-cache"), Some("hit-redis"));

    // Without the password Redis refuses every command: counted, and requests still succeed.
    let refused = start_proxy(config).await;
    let answer = best_of_3(&refused, "Authenticated?").await;
    answer.expect_ok();
    assert_eq!(answer.header("x-cache"), Some("miss"));
    let metrics = scrape(&refused).await;
    assert!(value_of(&metrics, "bon_cache_redis_errors_total", &[]) >= 1.0);
    let text = String::from_utf8_lossy(&answer.body).to_string();
    assert!(!text.contains(PASSWORD));
}

#[tokio::test]
async fn no_cache_refreshes_both_tiers_and_no_store_touches_neither() {
    let redis = RedisServer::start();
    let mock = MockUpstream::with_handler(numbered).await;
    let first = start_proxy(with_redis(&mock, &redis)).await;
    let second = start_proxy(with_redis(&mock, &redis)).await;
    let ask = |proxy: &Proxy, control: &'static str| {
        let proxy = proxy.handle();
        async move {
            let headers = [("x-best-of-n", "3"), ("cache-control", control)];
            post_chat(&proxy, &headers, chat_body("Fresh?")).await
        }
    };
    let bypassed = ask(&first, "no-store").await;
    assert_eq!(bypassed.header("x-cache"), Some("bypass"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(redis.keys("bon:v1:*").is_empty(), "no-store stores nothing");

    let refreshed = ask(&first, "no-cache").await;
    assert_eq!(refreshed.header("x-cache"), Some("bypass"));
    until_stored(&redis, 0).await;
    let shared = best_of_3(&second, "Fresh?").await;
    assert_eq!(shared.header("x-cache"), Some("hit-redis"));
    assert_eq!(shared.content(), refreshed.content());
    assert_eq!(json!(mock.generations()), json!(6));
}

// --- client-key limits shared by replicas ---------------------------------------------------

const CLIENT_KEY: &str = "sk-client-FLEET-0123456789abcdef";

fn limited(mock: &MockUpstream, redis: &RedisServer, limits: KeyConfig) -> Config {
    let mut config = with_redis(mock, redis);
    config.auth.enabled = true;
    config.auth.keys = vec![limits];
    config
}

fn client_key() -> KeyConfig {
    KeyConfig {
        name: Some("fleet-team".into()),
        sha256: hash_key(CLIENT_KEY),
        ..KeyConfig::default()
    }
}

async fn as_client(proxy: &Proxy, question: &str) -> Answer {
    let bearer = format!("Bearer {CLIENT_KEY}");
    let headers = [("authorization", bearer.as_str())];
    post_chat(proxy, &headers, chat_body(question)).await
}

/// A fixed window resets when the minute turns; starts a test well inside one.
async fn early_in_a_minute() {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if second > 45 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
}

#[tokio::test]
async fn requests_per_minute_hold_across_replicas() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut limits = client_key();
    limits.requests_per_minute = Some(3);
    let first = start_proxy(limited(&mock, &redis, limits.clone())).await;
    let second = start_proxy(limited(&mock, &redis, limits)).await;
    early_in_a_minute().await;
    as_client(&first, "one").await.expect_ok();
    as_client(&second, "two").await.expect_ok();
    as_client(&first, "three").await.expect_ok();
    // Per process, the second replica would still allow two more.
    let refused = as_client(&second, "four").await;
    let error = refused.expect_error(429);
    assert_eq!(error["code"], "rate_limit_exceeded");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(redis.keys("bon:v1:rate:*").len(), 1);
    assert!(
        !redis
            .keys("bon:v1:*")
            .iter()
            .any(|k| k.contains(CLIENT_KEY)),
        "Redis holds the key's hash, never the key"
    );
}

#[tokio::test]
async fn a_token_budget_spent_through_one_replica_is_spent_for_all() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut limits = client_key();
    limits.tokens_per_day = Some(50);
    let first = start_proxy(limited(&mock, &redis, limits.clone())).await;
    let second = start_proxy(limited(&mock, &redis, limits)).await;
    // A best-of-3 answer spends 60 tokens (candidates and judge), over the budget.
    let bearer = format!("Bearer {CLIENT_KEY}");
    let headers = [("authorization", bearer.as_str()), ("x-best-of-n", "3")];
    post_chat(&first, &headers, chat_body("spend it"))
        .await
        .expect_ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.keys("bon:v1:tokens:*").is_empty() {
        assert!(Instant::now() < deadline, "the spend never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = as_client(&second, "more").await.expect_error(429);
    assert_eq!(error["code"], "token_budget_exceeded");
}

#[tokio::test]
async fn with_redis_down_limits_fall_back_to_each_replica() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut limits = client_key();
    limits.requests_per_minute = Some(2);
    let proxy = start_proxy(limited(&mock, &redis, limits)).await;
    redis.stop();
    as_client(&proxy, "one").await.expect_ok();
    as_client(&proxy, "two").await.expect_ok();
    let error = as_client(&proxy, "three").await.expect_error(429);
    assert_eq!(error["code"], "rate_limit_exceeded");
    let metrics = scrape(&proxy).await;
    assert!(value_of(&metrics, "bon_cache_redis_errors_total", &[("op", "rate")]) >= 1.0);
}
