//! Fleet-wide single flight: identical requests at different replicas cost one computation.
//!
//! Within a replica, identical requests already share one computation (`single_flight`);
//! this runs inside that one computation, so each replica has at most one request per key
//! talking to Redis. It asks Redis, in one atomic step, for the answer or else the lock on
//! the computation (`SET NX PX`):
//! - the answer is there: served as a `hit-redis`;
//! - the lock is won: this replica computes, keeping the lock alive while it does (a short
//!   expiry, renewed), stores the answer in Redis, then releases the lock;
//! - another replica holds the lock: ask again, every few milliseconds and then less often,
//!   until the answer is there, the lock is free (its owner failed, stored nothing or died,
//!   and its lock expired: this replica takes it and computes), or `cache.redis_lock_wait`
//!   has passed (compute without the lock);
//! - Redis cannot say: compute, as if Redis were off.
//!
//! Degraded answers are not stored (see the cache), so replicas waiting on one take the lock
//! in turn and compute their own.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::key::CacheKey;
use super::redis::{Claim, Found, RedisTier};
use crate::answer::{Failed, Ready};

/// How long a lock lasts unless renewed: how soon the others notice its owner died.
const LOCK_HOLD: Duration = Duration::from_secs(3);
/// How often the owner renews it.
const LOCK_RENEW_EVERY: Duration = Duration::from_secs(1);
/// The first and the longest pause between a waiting replica's questions.
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// Where a replica's answer came from.
pub(crate) enum Source {
    /// Computed here (with or without the lock), and stored in Redis when whole.
    Computed(Result<Ready, Failed>),
    /// Stored in Redis before this replica asked.
    Stored(Found),
    /// Computed by another replica while this one waited.
    Waited(Found),
}

/// The answer for `store`, computed by exactly one replica of those asking for `flight` at
/// once when Redis allows; `compute` runs at most once, here, and a whole answer it makes is
/// stored for `ttl` before the lock goes.
pub(crate) async fn run<F>(
    redis: &Arc<RedisTier>,
    (store, flight): (CacheKey, CacheKey),
    ttl: Duration,
    lock_wait: Duration,
    compute: F,
) -> Source
where
    F: Future<Output = Result<Ready, Failed>>,
{
    let token = lock_token();
    let give_up = Instant::now() + lock_wait;
    let mut pause = FIRST_POLL;
    let mut waited = false;
    loop {
        match redis.fetch_or_claim(store, flight, &token, LOCK_HOLD).await {
            Claim::Answer(found) if waited => return Source::Waited(*found),
            Claim::Answer(found) => return Source::Stored(*found),
            Claim::Won => {
                let held = Held::keep(redis.clone(), flight, token);
                let result = compute.await;
                // The answer is stored before the lock goes, or a waiting replica would find
                // neither and compute it again; neither holds up this replica's answer.
                store_then(redis, store, &result, ttl, held);
                return Source::Computed(result);
            }
            Claim::Unavailable => break,
            Claim::Held if Instant::now() + pause > give_up => {
                tracing::debug!("another replica's computation took longer than cache.redis_lock_wait; computing here");
                break;
            }
            Claim::Held => {
                waited = true;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_POLL);
            }
        }
    }
    let result = compute.await;
    store_whole(redis, store, &result, ttl);
    Source::Computed(result)
}

/// Stores a whole answer in the background, so the client never waits on the write;
/// errors and degraded answers are never stored.
pub(crate) fn store_whole(
    redis: &Arc<RedisTier>,
    key: CacheKey,
    result: &Result<Ready, Failed>,
    ttl: Duration,
) {
    store_then(redis, key, result, ttl, ());
}

/// [`store_whole`], then drops `after` (a lock to release) once the write is done.
fn store_then<T: Send + 'static>(
    redis: &Arc<RedisTier>,
    key: CacheKey,
    result: &Result<Ready, Failed>,
    ttl: Duration,
    after: T,
) {
    let Some(ready) = result.as_ref().ok().filter(|r| r.cacheable).cloned() else {
        return;
    };
    let redis = redis.clone();
    tokio::spawn(async move {
        redis.store(key, &ready, ttl).await;
        drop(after);
    });
}

/// A lock this replica holds: renewed in the background until dropped, then released, so a
/// computation that ends any way at all (an answer, an error, cancelled because every client
/// left) frees the others at once.
struct Held {
    redis: Arc<RedisTier>,
    flight: CacheKey,
    token: Arc<str>,
    renewing: tokio::task::JoinHandle<()>,
}

impl Held {
    fn keep(redis: Arc<RedisTier>, flight: CacheKey, token: String) -> Held {
        let token: Arc<str> = token.into();
        let renewing = tokio::spawn({
            let (redis, token) = (redis.clone(), token.clone());
            async move {
                let mut ticks = tokio::time::interval(LOCK_RENEW_EVERY);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    // A failed renewal is not fatal: the answer is still stored when done;
                    // another replica may meanwhile compute its own.
                    redis.renew(flight, &token, LOCK_HOLD).await;
                }
            }
        });
        Held {
            redis,
            flight,
            token,
            renewing,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewing.abort();
        let (redis, flight, token) = (self.redis.clone(), self.flight, self.token.clone());
        // Drop cannot wait; the release goes on its own task. Outside a runtime (shutting
        // down) the lock simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { redis.release(flight, &token).await });
        }
    }
}

/// A value no other replica's claim can have.
fn lock_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}
