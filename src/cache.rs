//! The answer cache: finished answers in memory (moka, byte-bounded, per replica), optionally
//! in Redis behind it (shared by replicas), with single flight.
//!
//! Lookup order: memory, then Redis, then compute; a computed whole answer goes into both
//! with the same TTL, and one read from Redis fills memory for what remains of its TTL. Keys
//! are described in `key`: the request in canonical form, the plan and the tenant, so one
//! client never reads another's answers. Concurrent identical requests share one
//! computation (`single_flight`), and with `cache.redis_single_flight` identical requests at
//! different replicas do too (`fleet`). Errors are never stored, every waiter on a failed
//! computation gets the error, and degraded answers (a fallback chose, some candidates
//! failed, or a quorum cut the slowest ones) are shared with the requests in flight but not
//! stored. A quorum or a lower deadline (`x-best-of-n-timeout`) changes how a computation may
//! end, not what a whole answer is: such requests read and fill the same entries, but share
//! computations only with requests held to the same bar (see [`Keys`]). Redis slow or down
//! never fails a request (see `redis`).

mod fleet;
mod key;
mod redis;
pub mod single_flight;
mod stored;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use http::{header, HeaderMap, HeaderValue};

use crate::answer::{Failed, Ready};
use crate::config::CacheConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::redis_link::RedisLink;
use fleet::Source;
pub use key::{CacheKey, KeyBuilder};
use redis::RedisTier;
use single_flight::{Role, SingleFlight};

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
    /// From this replica's memory.
    Hit,
    /// From the Redis tier: stored by any replica, or computed by another replica while this
    /// one waited (fleet-wide single flight).
    HitRedis,
    /// Waited on an identical request in flight: a hit to the client, nothing spent.
    Coalesced,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit | Outcome::Coalesced => "hit",
            Outcome::HitRedis => "hit-redis",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }

    /// Served from a cache tier without waiting on any computation: all of its time is the
    /// proxy's own.
    pub fn is_stored_hit(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::HitRedis)
    }
}

/// An answer in memory, and how long it may stay: the cache's TTL, or what remained of it
/// when the answer came from Redis, so both tiers let it go at the same moment.
///
/// The answer is kept encoded, as the Redis tier keeps it: one allocation, where the answer
/// itself is hundreds of small ones made while its request ran. Spread over pages that the
/// request's short-lived allocations shared, those kept the pages resident long after: 136 MiB
/// of RSS for 13.4 MB of answers after five bursts of 1,000 best-of-16 (README,
/// "Performance"). A hit decodes it, where it used to copy it.
#[derive(Clone)]
struct Entry {
    answer: Arc<[u8]>,
    ttl: Duration,
}

impl Entry {
    fn new(ready: &Ready, ttl: Duration) -> Entry {
        Entry {
            answer: stored::encode(ready).into(),
            ttl,
        }
    }

    /// The answer as a hit, with its `best_of_n` breakdown when `debug`; `None` if it does
    /// not decode, which `encode` rules out.
    fn hit(&self, debug: bool) -> Option<Ready> {
        let ready = if debug {
            stored::decode(&self.answer)
        } else {
            stored::decode_without_debug(&self.answer)
        };
        ready.map(as_hit)
    }
}

/// Gives each entry its own lifetime.
struct EntryExpiry;

impl moka::Expiry<CacheKey, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &CacheKey, entry: &Entry, _: StdInstant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Entry,
        _: StdInstant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Which tier a shared computation's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Computed,
    Redis,
    /// Another replica's computation, waited for.
    Fleet,
}

type SharedAnswer = Result<(Arc<Ready>, Tier), Arc<Failed>>;

pub struct AnswerCache {
    memory: moka::future::Cache<CacheKey, Entry>,
    ttl: Duration,
    /// The tier shared by replicas, when `cache.redis_url` is set.
    redis: Option<Arc<RedisTier>>,
    /// `cache.redis_lock_wait`, when fleet-wide single flight is on.
    fleet_wait: Option<Duration>,
    in_flight: SingleFlight<CacheKey, SharedAnswer>,
    metrics: Metrics,
}

impl AnswerCache {
    /// The cache `config` describes, with Redis behind memory when `redis` is given.
    pub(crate) fn new(
        config: &CacheConfig,
        redis: Option<Arc<RedisLink>>,
        metrics: Metrics,
    ) -> AnswerCache {
        let memory = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_key, entry: &Entry| weight(entry))
            .expire_after(EntryExpiry)
            .build();
        let redis = redis.map(|link| Arc::new(RedisTier::new(link)));
        AnswerCache {
            memory,
            ttl: config.ttl,
            fleet_wait: (redis.is_some() && config.redis_single_flight)
                .then_some(config.redis_lock_wait),
            redis,
            in_flight: SingleFlight::default(),
            metrics,
        }
    }

    /// The answer for `key`: from memory, from Redis, from an identical computation in
    /// flight (here, or at another replica), or from `compute`, as `policy` allows. A served
    /// hit spent nothing and says so in its usage; from memory, it carries the `best_of_n`
    /// breakdown only when `debug` (the client asked for it), as decoding it is most of the
    /// hit's work.
    pub async fn get_or_compute<F>(
        &self,
        keys: impl Into<Keys>,
        policy: Policy,
        debug: bool,
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
                    remember(&self.memory, keys.store, ready, self.ttl).await;
                }
                if let Some(redis) = &self.redis {
                    fleet::store_whole(redis, keys.store, &result, self.ttl);
                }
                (result, Outcome::Bypass)
            }
            Policy::Use => self.shared(keys, debug, compute).await,
        }
    }

    async fn shared<F>(
        &self,
        keys: Keys,
        debug: bool,
        compute: F,
    ) -> (Result<Ready, Failed>, Outcome)
    where
        F: Future<Output = Result<Ready, Failed>> + Send + 'static,
    {
        if let Some(hit) = self
            .memory
            .get(&keys.store)
            .await
            .and_then(|e| e.hit(debug))
        {
            self.metrics.cache_lookup("hit");
            return (Ok(hit), Outcome::Hit);
        }
        let work = behind_memory(self.tiers(), keys, compute);
        let (shared, role) = self.in_flight.run(keys.flight, work).await;
        let outcome = match (role, &shared) {
            (Role::Follower, _) => Outcome::Coalesced,
            (Role::Leader, Some(Ok((_, Tier::Redis | Tier::Fleet)))) => Outcome::HitRedis,
            (Role::Leader, _) => Outcome::Miss,
        };
        self.count(outcome, &shared);
        let result = match shared {
            Some(Ok((ready, Tier::Computed))) if role == Role::Leader => Ok(ready.as_ref().clone()),
            Some(Ok((ready, _))) => Ok(as_hit(ready.as_ref().clone())),
            Some(Err(failed)) => Err(failed.as_ref().clone()),
            None => Err(Failed::Proxy(ApiError::internal(
                "the shared computation of this answer stopped unexpectedly",
            ))),
        };
        (result, outcome)
    }

    fn count(&self, outcome: Outcome, shared: &Option<SharedAnswer>) {
        let waited_on_another_replica = matches!(shared, Some(Ok((_, Tier::Fleet))));
        self.metrics.cache_lookup(match outcome {
            Outcome::HitRedis => "hit_redis",
            Outcome::Miss => "miss",
            _ => "hit",
        });
        if outcome == Outcome::Coalesced || waited_on_another_replica {
            self.metrics.coalesced();
        }
    }

    /// A stored answer, as a hit, from memory or Redis, when `policy` allows reading; counts
    /// the lookup. For requests that cannot wait on a computation (a live stream on a miss).
    pub async fn lookup(
        &self,
        key: CacheKey,
        policy: Policy,
        debug: bool,
    ) -> Option<(Ready, Outcome)> {
        if policy != Policy::Use {
            self.metrics.cache_lookup("bypass");
            return None;
        }
        if let Some(hit) = self.memory.get(&key).await.and_then(|e| e.hit(debug)) {
            self.metrics.cache_lookup("hit");
            return Some((hit, Outcome::Hit));
        }
        let found = match &self.redis {
            Some(redis) => redis.fetch(key).await,
            None => None,
        };
        let Some(found) = found else {
            self.metrics.cache_lookup("miss");
            return None;
        };
        self.metrics.cache_lookup("hit_redis");
        remember(&self.memory, key, &found.ready, found.ttl).await;
        Some((as_hit(found.ready), Outcome::HitRedis))
    }

    /// What the computation behind a memory miss needs, owned, since it runs on a task of
    /// its own.
    fn tiers(&self) -> Tiers {
        Tiers {
            memory: self.memory.clone(),
            redis: self.redis.clone(),
            ttl: self.ttl,
            fleet_wait: self.fleet_wait,
        }
    }

    /// Refreshes the entry and byte gauges; called when `/metrics` is scraped.
    pub async fn report_size(&self) {
        self.memory.run_pending_tasks().await;
        self.metrics
            .cache_size(self.memory.entry_count(), self.memory.weighted_size());
    }
}

/// Keeps `ready` in memory for `ttl`.
async fn remember(
    memory: &moka::future::Cache<CacheKey, Entry>,
    key: CacheKey,
    ready: &Ready,
    ttl: Duration,
) {
    memory.insert(key, Entry::new(ready, ttl)).await;
}

struct Tiers {
    memory: moka::future::Cache<CacheKey, Entry>,
    redis: Option<Arc<RedisTier>>,
    ttl: Duration,
    fleet_wait: Option<Duration>,
}

/// After a memory miss: Redis (with fleet-wide single flight when on), then `compute`; a
/// whole answer lands in every tier, one read from Redis in memory too.
async fn behind_memory<F>(tiers: Tiers, keys: Keys, compute: F) -> SharedAnswer
where
    F: Future<Output = Result<Ready, Failed>> + Send + 'static,
{
    let Tiers {
        memory,
        redis,
        ttl,
        fleet_wait,
    } = tiers;
    let source = match (&redis, fleet_wait) {
        (None, _) => Source::Computed(compute.await),
        (Some(redis), Some(wait)) => {
            fleet::run(redis, (keys.store, keys.flight), ttl, wait, compute).await
        }
        (Some(redis), None) => match redis.fetch(keys.store).await {
            Some(found) => Source::Stored(found),
            None => {
                let result = compute.await;
                fleet::store_whole(redis, keys.store, &result, ttl);
                Source::Computed(result)
            }
        },
    };
    let (ready, ttl, tier) = match source {
        Source::Computed(Err(failed)) => return Err(Arc::new(failed)),
        Source::Computed(Ok(ready)) => (ready, ttl, Tier::Computed),
        Source::Stored(found) => (found.ready, found.ttl, Tier::Redis),
        Source::Waited(found) => (found.ready, found.ttl, Tier::Fleet),
    };
    let ready = Arc::new(ready);
    if ready.cacheable {
        remember(&memory, keys.store, &ready, ttl).await;
    }
    Ok((ready, tier))
}

/// A stored answer as a hit: zero usage (nothing was spent for this request), and only the
/// proxy's own headers (the upstream's rate-limit headers described another moment).
fn as_hit(mut ready: Ready) -> Ready {
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

/// The bytes an entry holds, for the cache's byte bound.
fn weight(entry: &Entry) -> u32 {
    // Fixed overhead per entry: the key, the Arc and moka's bookkeeping.
    u32::try_from(entry.answer.len() + 256).unwrap_or(u32::MAX)
}

/// Headers on a response of a cacheable request.
pub fn set_outcome_header(headers: &mut HeaderMap, outcome: Outcome) {
    headers.insert("x-cache", HeaderValue::from_static(outcome.as_str()));
}

#[cfg(test)]
mod tests {
    use super::*;

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
