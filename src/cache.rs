//! The answer cache: a byte-bounded moka cache of finished answers, with single flight.
//!
//! The key is a BLAKE3 hash of the request in canonical form (object keys sorted, so key order
//! and whitespace do not matter; `stream` and `stream_options` left out, since a hit can be
//! served either way), of the plan (N, judge strategy and judge settings), and of the tenant
//! (the client's credential and organisation), so one client never reads another's answers.
//! Concurrent identical requests share one computation (see `single_flight`); errors are never
//! stored, every waiter on a failed computation gets the error, and degraded answers (a
//! fallback chose, some candidates failed, or a quorum cut the slowest ones) are shared with
//! the requests in flight but not stored. A quorum or a lower deadline (`x-best-of-n-timeout`)
//! changes how a computation may end, not what a whole answer is: such requests read and fill
//! the same entries, but share computations only with requests held to the same bar (see
//! [`Keys`]).

use crate::auth::ClientKey;
use http::{header, HeaderMap, HeaderValue};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;

use crate::answer::{Failed, Ready};
use crate::config::CacheConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::single_flight::{Role, SingleFlight};

/// A cache key: 32 bytes of BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// This key with `extra` folded in: a key of its own, for a variant of the same answer.
    pub fn with(self, extra: &[u8]) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.0);
        hasher.update(extra);
        CacheKey(*hasher.finalize().as_bytes())
    }
}

/// Where an answer is stored, and which identical computation in flight it may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    pub store: CacheKey,
    /// The store key, plus whatever changes how a computation may end (a quorum, a lower
    /// deadline) without changing what a whole answer is: a request never waits on a
    /// computation held to a lower bar than its own.
    pub flight: CacheKey,
}

impl From<CacheKey> for Keys {
    fn from(key: CacheKey) -> Keys {
        Keys {
            store: key,
            flight: key,
        }
    }
}

/// What the client's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Read the cache, and fill it on a miss.
    Use,
    /// `no-cache`: do not read, but store the fresh answer.
    Refresh,
    /// `no-store`: neither read nor store.
    Bypass,
}

impl Policy {
    pub fn from_headers(headers: &HeaderMap) -> Policy {
        let directives = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|d| d.trim().to_ascii_lowercase());
        let mut policy = Policy::Use;
        for directive in directives {
            match directive.as_str() {
                "no-store" => return Policy::Bypass,
                "no-cache" => policy = Policy::Refresh,
                _ => {}
            }
        }
        policy
    }
}

/// How an answer was obtained, for the `x-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// Waited on an identical request in flight: a hit to the client, nothing spent.
    Coalesced,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit | Outcome::Coalesced => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

pub struct AnswerCache {
    entries: moka::future::Cache<CacheKey, Arc<Ready>>,
    in_flight: SingleFlight<CacheKey, Result<Arc<Ready>, Arc<Failed>>>,
    metrics: Metrics,
}

impl AnswerCache {
    pub fn new(config: &CacheConfig, metrics: Metrics) -> AnswerCache {
        let entries = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_key, ready: &Arc<Ready>| weight(ready))
            .time_to_live(config.ttl)
            .build();
        AnswerCache {
            entries,
            in_flight: SingleFlight::default(),
            metrics,
        }
    }

    /// The answer for `key`: from the cache, from an identical computation in flight, or from
    /// `compute`, as `policy` allows. A served hit spent nothing and says so in its usage.
    pub async fn get_or_compute<F>(
        &self,
        keys: impl Into<Keys>,
        policy: Policy,
        compute: F,
    ) -> (Result<Ready, Failed>, Outcome)
    where
        F: Future<Output = Result<Ready, Failed>> + Send + 'static,
    {
        let keys = keys.into();
        match policy {
            Policy::Bypass => {
                self.metrics.cache_lookup("bypass");
                (compute.await, Outcome::Bypass)
            }
            Policy::Refresh => {
                self.metrics.cache_lookup("bypass");
                let result = compute.await;
                if let Some(ready) = result.as_ref().ok().filter(|r| r.cacheable) {
                    self.entries
                        .insert(keys.store, Arc::new(ready.clone()))
                        .await;
                }
                (result, Outcome::Bypass)
            }
            Policy::Use => self.shared(keys, compute).await,
        }
    }

    async fn shared<F>(&self, keys: Keys, compute: F) -> (Result<Ready, Failed>, Outcome)
    where
        F: Future<Output = Result<Ready, Failed>> + Send + 'static,
    {
        let key = keys.store;
        if let Some(hit) = self.entries.get(&key).await {
            self.metrics.cache_lookup("hit");
            return (Ok(as_hit(&hit)), Outcome::Hit);
        }
        let entries = self.entries.clone();
        let store_and_share = async move {
            let result = compute.await;
            if let Some(ready) = result.as_ref().ok().filter(|r| r.cacheable) {
                entries.insert(key, Arc::new(ready.clone())).await;
            }
            result.map(Arc::new).map_err(Arc::new)
        };
        let (shared, role) = self.in_flight.run(keys.flight, store_and_share).await;
        let outcome = match role {
            Role::Leader => {
                self.metrics.cache_lookup("miss");
                Outcome::Miss
            }
            Role::Follower => {
                self.metrics.cache_lookup("hit");
                self.metrics.coalesced();
                Outcome::Coalesced
            }
        };
        let result = match shared {
            Some(Ok(ready)) if role == Role::Leader => Ok(ready.as_ref().clone()),
            Some(Ok(ready)) => Ok(as_hit(&ready)),
            Some(Err(failed)) => Err(failed.as_ref().clone()),
            None => Err(Failed::Proxy(ApiError::internal(
                "the shared computation of this answer stopped unexpectedly",
            ))),
        };
        (result, outcome)
    }

    /// A stored answer, as a hit, when `policy` allows reading; counts the lookup. For
    /// requests that cannot wait on a computation (a live stream on a miss).
    pub async fn lookup(&self, key: CacheKey, policy: Policy) -> Option<Ready> {
        if policy != Policy::Use {
            self.metrics.cache_lookup("bypass");
            return None;
        }
        let found = self.entries.get(&key).await;
        self.metrics
            .cache_lookup(if found.is_some() { "hit" } else { "miss" });
        found.map(|stored| as_hit(&stored))
    }

    /// Refreshes the entry and byte gauges; called when `/metrics` is scraped.
    pub async fn report_size(&self) {
        self.entries.run_pending_tasks().await;
        self.metrics
            .cache_size(self.entries.entry_count(), self.entries.weighted_size());
    }
}

/// A stored answer as a hit: zero usage (nothing was spent for this request), and only the
/// proxy's own headers (the upstream's rate-limit headers described another moment).
fn as_hit(stored: &Ready) -> Ready {
    let mut ready = stored.clone();
    if let Some(usage) = &ready.completion.usage {
        ready.completion.usage = Some(usage.zeroed());
    }
    ready.headers = ready
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-best-of-n"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    ready
}

/// Approximate bytes an answer holds, for the cache's byte bound.
fn weight(ready: &Ready) -> u32 {
    let body = serde_json::to_vec(&ready.completion)
        .map(|b| b.len())
        .unwrap_or(4096);
    let debug = ready
        .debug
        .as_ref()
        .map(|d| d.to_string().len())
        .unwrap_or(0);
    // A Responses answer also holds the winner's response object.
    let native = ready
        .native
        .as_ref()
        .map(|n| n.to_string().len())
        .unwrap_or(0);
    let headers: usize = ready
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum();
    // Fixed overhead per entry: the key, the Arc and moka's bookkeeping.
    u32::try_from(body + debug + native + headers + 256).unwrap_or(u32::MAX)
}

/// Headers on a response of a cacheable request.
pub fn set_outcome_header(headers: &mut HeaderMap, outcome: Outcome) {
    headers.insert("x-cache", HeaderValue::from_static(outcome.as_str()));
}

/// Builds cache keys; one per request. The canonical text is written into one buffer and
/// hashed once: many tiny hasher updates cost more than the hashing itself.
pub struct KeyBuilder(Vec<u8>);

impl KeyBuilder {
    /// `scope` separates kinds of answers (best-of-N with its plan, plain completions).
    pub fn new(scope: &[u8]) -> KeyBuilder {
        let mut text = Vec::with_capacity(scope.len() + 1024);
        text.extend_from_slice(&(scope.len() as u64).to_le_bytes());
        text.extend_from_slice(scope);
        KeyBuilder(text)
    }

    /// Adds the request body in canonical form, without `stream` and `stream_options`.
    pub fn request(mut self, body: &Value) -> KeyBuilder {
        self.0.push(0);
        match body {
            Value::Object(map) => write_object(&mut self.0, map, &["stream", "stream_options"]),
            other => write_canonical(&mut self.0, other),
        }
        self
    }

    /// Adds the tenant, so answers never cross between clients: the client key `[auth]`
    /// admitted the request with, or else the client's own credential, organisation and
    /// project.
    pub fn tenant(mut self, headers: &HeaderMap, client: Option<&ClientKey>) -> KeyBuilder {
        self.0.push(0);
        if let Some(client) = client {
            self.0.extend_from_slice(b"client=");
            self.0.extend_from_slice(client.tenant().as_bytes());
            self.0.push(b';');
        }
        let names = [
            "authorization",
            "api-key",
            "x-api-key",
            "openai-organization",
            "openai-project",
        ];
        for name in names {
            self.0.extend_from_slice(name.as_bytes());
            self.0.push(b'=');
            for value in headers.get_all(name) {
                self.0
                    .extend_from_slice(&(value.len() as u64).to_le_bytes());
                self.0.extend_from_slice(value.as_bytes());
            }
            self.0.push(b';');
        }
        self
    }

    pub fn finish(self) -> CacheKey {
        CacheKey(*blake3::hash(&self.0).as_bytes())
    }
}

/// JSON with object keys sorted at every level; strings and numbers as serde writes them.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map, &[]),
        Value::Array(items) => {
            out.push(b'[');
            for item in items {
                write_canonical(out, item);
                out.push(b',');
            }
            out.push(b']');
        }
        scalar => {
            // Writing a scalar into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// An object with its keys sorted, leaving out `skip`.
fn write_object(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>, skip: &[&str]) {
    let mut keys: Vec<&String> = map.keys().filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort_unstable();
    out.push(b'{');
    for key in keys {
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        write_canonical(out, &map[key]);
        out.push(b',');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key(body: &Value, scope: &str, auth: &str) -> CacheKey {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(auth).unwrap());
        KeyBuilder::new(scope.as_bytes())
            .request(body)
            .tenant(&headers, None)
            .finish()
    }

    /// Rebuilds `value` with every object's keys in reverse order.
    fn reversed(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map.iter().rev() {
                    out.insert(k.clone(), reversed(v));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
            other => other.clone(),
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn key_order_and_whitespace_do_not_matter(extra in arb_json(), question in "[a-z ]{1,20}") {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": question}],
                "extra": extra, "temperature": 0.5});
            let reordered = reversed(&body);
            let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&reordered).unwrap()).unwrap();
            prop_assert_eq!(key(&body, "bon:3", "Bearer a"), key(&pretty, "bon:3", "Bearer a"));
        }

        #[test]
        fn any_parameter_change_changes_the_key(a in arb_json(), b in arb_json()) {
            prop_assume!(a != b);
            let with = |v: &Value| json!({"model": "m", "messages": [], "param": v});
            prop_assert_ne!(key(&with(&a), "s", "t"), key(&with(&b), "s", "t"));
        }
    }

    #[test]
    fn stream_does_not_matter_but_plan_and_tenant_do() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        assert_eq!(
            key(&body, "bon:3", "Bearer a"),
            key(&streamed, "bon:3", "Bearer a")
        );
        assert_ne!(
            key(&body, "bon:3", "Bearer a"),
            key(&body, "bon:4", "Bearer a")
        );
        assert_ne!(
            key(&body, "bon:3", "Bearer a"),
            key(&body, "bon:3", "Bearer b")
        );
        let mut hotter = body.clone();
        hotter["temperature"] = json!(1.0);
        assert_ne!(
            key(&body, "bon:3", "Bearer a"),
            key(&hotter, "bon:3", "Bearer a")
        );
    }

    #[test]
    fn cache_control_sets_the_policy() {
        let policy = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static(v));
            Policy::from_headers(&h)
        };
        assert_eq!(Policy::from_headers(&HeaderMap::new()), Policy::Use);
        assert_eq!(policy("no-cache"), Policy::Refresh);
        assert_eq!(policy("No-Store"), Policy::Bypass);
        assert_eq!(policy("no-cache, no-store"), Policy::Bypass);
        assert_eq!(policy("max-age=0"), Policy::Use);
    }
}
