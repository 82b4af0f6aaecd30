//! Client keys: who may use the proxy, and how much (`[auth]`).
//!
//! A client presents its key the way OpenAI SDKs already send one: `Authorization: Bearer`,
//! `api-key` (Azure's SDKs) or `x-api-key`. The proxy keeps only SHA-256 hashes; the
//! presented key is hashed and compared with every stored hash in constant time, so neither
//! the answer nor its timing says how close a guess was. A known key may still be over one of
//! its limits: requests per minute and tokens per UTC day (counted from the usage the proxy
//! sums for the answers it reads). Per process, the minute is a token bucket per key; with
//! `cache.redis_url` set, both limits are counted in Redis and hold across replicas (see
//! `shared_limits`).
//!
//! Once a request is authenticated its credentials are taken off it: the proxy's own keys go
//! upstream and to the judges, never the client's, and the cache tenant becomes the key.

mod shared_limits;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::body::Body;
use crate::config::{AuthConfig, ConfigError, KeyConfig};
use crate::error::ApiError;
use crate::redis_link::RedisLink;
use shared_limits::{Counts, SharedLimits, Window};

/// The headers a key may come in; every one is taken off an authenticated request.
const CREDENTIAL_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-api-key"),
];

/// The metric label of keys the operator did not name.
const UNNAMED: &str = "unnamed";

/// The SHA-256 of `key`, as `bon-proxy hash-key` prints it and `[auth]` stores it.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The keys the proxy knows, when `[auth]` is on.
pub struct Keys {
    keys: Vec<Arc<ClientKey>>,
}

/// One known key and what it may still spend. Carried in the request's extensions once the
/// request is authenticated.
pub struct ClientKey {
    /// The operator's name for it, if any.
    pub name: Option<String>,
    hash: [u8; 32],
    /// `hash` in hex: the key's name in Redis and, unnamed, its cache tenant.
    id: String,
    pub max_n: Option<u32>,
    models: Option<Vec<String>>,
    /// `requests_per_minute`, and this process's own bucket for it.
    rate: Option<(u32, DefaultDirectRateLimiter)>,
    budget: Option<DailyBudget>,
    /// The fleet's counters, when Redis is configured.
    shared: Option<Arc<SharedLimits>>,
}

/// Tokens a key spent today (UTC), against its `tokens_per_day`.
struct DailyBudget {
    limit: u64,
    /// Days since the epoch that `spent` counts.
    day: AtomicU64,
    spent: AtomicU64,
}

/// Why a request was refused at the door; `reason` is the metric label.
#[derive(Debug)]
pub struct Rejection {
    pub reason: &'static str,
    pub error: ApiError,
    pub retry_after: Option<Duration>,
}

impl Keys {
    /// The keys of `[auth]`, or `None` when it is off; their limits are counted through
    /// `redis` when given.
    pub(crate) fn from_config(
        auth: &AuthConfig,
        redis: Option<Arc<RedisLink>>,
    ) -> Result<Option<Keys>, ConfigError> {
        let entries = auth.all_keys()?;
        if !auth.enabled {
            return Ok(None);
        }
        let shared = redis.map(|link| Arc::new(SharedLimits::new(link)));
        let keys = entries
            .iter()
            .map(|entry| ClientKey::new(entry, shared.clone()))
            .collect();
        Ok(Some(Keys { keys }))
    }

    /// The key `headers` carry, checked against every stored hash in constant time.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<ClientKey>, Rejection> {
        let Some(presented) = presented_key(headers) else {
            return Err(Rejection::new(
                "missing_key",
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "This proxy needs an API key: send `Authorization: Bearer <key>` (what OpenAI \
                 SDKs send for `api_key`), `api-key` or `x-api-key`. Ask its operator for one.",
            ));
        };
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every stored hash is compared, whichever matches: the time taken says nothing.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(key.clone());
            }
        }
        found.ok_or_else(|| {
            Rejection::new(
                "unknown_key",
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "The API key is not one this proxy knows. Check the key, or ask the proxy's \
                 operator for one.",
            )
        })
    }
}

impl ClientKey {
    fn new(entry: &KeyConfig, shared: Option<Arc<SharedLimits>>) -> Arc<ClientKey> {
        let mut hash = [0u8; 32];
        for (k, byte) in hash.iter_mut().enumerate() {
            let pair = entry.sha256.get(2 * k..2 * k + 2).unwrap_or("00");
            *byte = u8::from_str_radix(pair, 16).unwrap_or(0);
        }
        let rate = entry
            .requests_per_minute
            .and_then(NonZeroU32::new)
            .map(|per_minute| {
                let bucket = RateLimiter::direct(Quota::per_minute(per_minute));
                (per_minute.get(), bucket)
            });
        let budget = entry.tokens_per_day.map(|limit| DailyBudget {
            limit,
            day: AtomicU64::new(today()),
            spent: AtomicU64::new(0),
        });
        Arc::new(ClientKey {
            name: entry.name.clone(),
            hash,
            id: hash.iter().map(|b| format!("{b:02x}")).collect(),
            max_n: entry.max_n,
            models: entry.models.clone(),
            rate,
            budget,
            shared,
        })
    }

    /// The key's name in Redis: its hash, never the key.
    fn id(&self) -> &str {
        &self.id
    }

    /// Whose answers the cache keeps apart: the key's name (keys the operator named alike
    /// share answers), or its hash.
    pub fn tenant(&self) -> String {
        match &self.name {
            Some(name) => format!("name:{name}"),
            None => self.id.clone(),
        }
    }

    /// The metric label: the key's name, or `unnamed`.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(UNNAMED)
    }

    /// Takes one request from the key's per-minute allowance, after checking its daily
    /// token budget is not spent: across replicas when Redis is configured and answers,
    /// else in this process.
    pub async fn admit(&self) -> Result<(), Rejection> {
        if self.rate.is_none() && self.budget.is_none() {
            return Ok(());
        }
        if let Some(shared) = &self.shared {
            let now = unix_seconds();
            if let Some(counts) = shared.take(self.id(), Window::at(now)).await {
                return self.admit_by(counts, now);
            }
        }
        self.admit_here()
    }

    /// Against the fleet's counts.
    fn admit_by(&self, counts: Counts, now: u64) -> Result<(), Rejection> {
        if let Some(budget) = &self.budget {
            if counts.tokens_today >= budget.limit {
                return Err(over_budget(self.label(), budget.limit));
            }
        }
        match &self.rate {
            Some((per_minute, _)) if counts.requests_this_minute > u64::from(*per_minute) => {
                // A fixed window: the allowance comes back when the minute turns.
                Err(over_rate(self.label(), Duration::from_secs(60 - now % 60)))
            }
            _ => Ok(()),
        }
    }

    /// Against this process's own counts.
    fn admit_here(&self) -> Result<(), Rejection> {
        if let Some(budget) = &self.budget {
            budget.check(self.label())?;
        }
        let Some((_, bucket)) = &self.rate else {
            return Ok(());
        };
        bucket.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            over_rate(self.label(), wait)
        })
    }

    /// Counts tokens this key spent against its daily budget.
    pub fn charge(&self, tokens: u64) {
        if let Some(budget) = &self.budget {
            budget.add(tokens);
            if let Some(shared) = &self.shared {
                shared.charge(self.id(), Window::at(unix_seconds()), tokens);
            }
        }
    }

    /// Refuses a model the key may not ask for (403).
    pub fn check_model(&self, model: &str, param: &str) -> Result<(), ApiError> {
        let Some(allowed) = &self.models else {
            return Ok(());
        };
        if allowed.iter().any(|m| m == model) {
            return Ok(());
        }
        Err(ApiError::not_allowed(
            param,
            format!(
                "The key `{}` may not use model `{model}`; it may use: {}.",
                self.label(),
                allowed.join(", ")
            ),
        ))
    }

    /// True when the key is limited to a list of models.
    pub fn limits_models(&self) -> bool {
        self.models.is_some()
    }

    /// Refuses an N above the key's `max_n` (400).
    pub fn check_n(&self, n: u32) -> Result<(), ApiError> {
        match self.max_n {
            Some(max) if n > max => Err(ApiError::invalid_request(
                "x-best-of-n",
                format!(
                    "The key `{}` may ask for at most {max} candidates, not {n}; lower N.",
                    self.label()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// A 429 for a key over its `requests_per_minute`, to retry after `wait`.
fn over_rate(label: &str, wait: Duration) -> Rejection {
    let mut rejection = Rejection::new(
        "rate_limited",
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        format!(
            "The key `{label}` is over its requests_per_minute; retry after {} s.",
            wait.as_secs().max(1)
        ),
    );
    rejection.retry_after = Some(wait);
    rejection
}

/// A 429 for a key that spent its `tokens_per_day`, to retry at 00:00 UTC.
fn over_budget(label: &str, limit: u64) -> Rejection {
    let wait = until_tomorrow();
    let mut rejection = Rejection::new(
        "token_budget",
        StatusCode::TOO_MANY_REQUESTS,
        "token_budget_exceeded",
        format!(
            "The key `{label}` spent its tokens_per_day ({limit}); the budget renews at 00:00 \
             UTC, in {} s.",
            wait.as_secs()
        ),
    );
    rejection.retry_after = Some(wait);
    rejection
}

impl DailyBudget {
    fn check(&self, label: &str) -> Result<(), Rejection> {
        self.roll_over();
        if self.spent.load(Ordering::Relaxed) < self.limit {
            return Ok(());
        }
        Err(over_budget(label, self.limit))
    }

    fn add(&self, tokens: u64) {
        self.roll_over();
        self.spent.fetch_add(tokens, Ordering::Relaxed);
    }

    /// A new UTC day starts from zero.
    fn roll_over(&self) {
        let now = today();
        let day = self.day.load(Ordering::Relaxed);
        if day != now
            && self
                .day
                .compare_exchange(day, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.spent.store(0, Ordering::Relaxed);
        }
    }
}

impl Rejection {
    fn new(
        reason: &'static str,
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Rejection {
        Rejection {
            reason,
            error: ApiError::refused(status, code, message.into()),
            retry_after: None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = self.error.into_response();
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits exactly this long gets in.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// Takes the client's credentials off a request, so that they never go further.
pub fn strip_credentials(headers: &mut HeaderMap) {
    for name in &CREDENTIAL_HEADERS {
        headers.remove(name);
    }
}

/// The key in `Authorization: Bearer`, `api-key` or `x-api-key`, whichever comes first.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let other = || {
        CREDENTIAL_HEADERS[1..]
            .iter()
            .find_map(|name| headers.get(name)?.to_str().ok())
    };
    bearer
        .or_else(other)
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn today() -> u64 {
    unix_seconds() / 86_400
}

fn until_tomorrow() -> Duration {
    Duration::from_secs(86_400 - unix_seconds() % 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: Vec<KeyConfig>) -> Keys {
        let auth = AuthConfig {
            enabled: true,
            keys_file: String::new(),
            keys: entries,
        };
        Keys::from_config(&auth, None).unwrap().unwrap()
    }

    fn entry(key: &str) -> KeyConfig {
        KeyConfig {
            sha256: hash_key(key),
            ..KeyConfig::default()
        }
    }

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn hash_key_is_sha256_hex() {
        assert_eq!(
            hash_key("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn keys_come_the_ways_sdks_send_them() {
        let keys = keys(vec![entry("sk-good")]);
        for (name, value) in [
            ("authorization", "Bearer sk-good"),
            ("api-key", "sk-good"),
            ("x-api-key", "sk-good"),
        ] {
            assert!(keys.authenticate(&with(name, value)).is_ok(), "{name}");
        }
        let unknown = keys.authenticate(&with("authorization", "Bearer sk-bad"));
        assert_eq!(unknown.err().unwrap().reason, "unknown_key");
        let missing = keys.authenticate(&HeaderMap::new());
        assert_eq!(
            missing.err().unwrap().error.status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn limits_name_themselves() {
        let mut limited = entry("k");
        limited.name = Some("team".into());
        limited.requests_per_minute = Some(1);
        limited.tokens_per_day = Some(100);
        limited.models = Some(vec!["gpt-a".into()]);
        limited.max_n = Some(3);
        let key = keys(vec![limited]).keys[0].clone();
        assert!(key.admit().await.is_ok());
        let over = key.admit().await.unwrap_err();
        assert_eq!(over.reason, "rate_limited");
        assert!(over.error.message.contains("requests_per_minute"));
        assert!(over.retry_after.is_some());
        key.charge(150);
        assert_eq!(key.admit().await.unwrap_err().reason, "token_budget");
        assert_eq!(
            key.check_model("gpt-b", "model").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(key.check_model("gpt-a", "model").is_ok());
        assert!(key.check_n(4).is_err() && key.check_n(3).is_ok());
    }
}
