//! The Redis tier: answers shared by every replica, and the locks fleet-wide single flight
//! takes.
//!
//! Every operation goes through the shared link (`redis_link`), so a slow, down or
//! misbehaving Redis reads as a miss, or as a lock nobody holds: the request goes on as if
//! Redis were off.
//!
//! Keys: an answer lives at `bon:v1:<key hex>` with the cache's TTL (the version names the
//! stored format, see `stored`); a computation's lock at `bon:v1:lock:<flight key hex>`.

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};

use super::key::CacheKey;
use super::stored;
use crate::answer::Ready;
use crate::redis_link::RedisLink;

const PREFIX: &str = "bon:v1:";

/// Reads an answer, or takes the computation's lock when there is none, in one round trip
/// and atomically: no replica can take the lock just after another stored the answer.
const FETCH_OR_CLAIM: &str = r"
local answer = redis.call('GET', KEYS[1])
if answer then return {1, answer, redis.call('PTTL', KEYS[1])} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
";

/// Extends a lock only while this replica still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Releases a lock only while this replica still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// What a Redis operation was for, as `bon_cache_redis_errors_total{op}` counts it.
#[derive(Debug, Clone, Copy)]
enum Op {
    Get,
    Set,
    Lock,
    Unlock,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Lock => "lock",
            Op::Unlock => "unlock",
        }
    }
}

/// A stored answer and how much longer it may be served.
pub(crate) struct Found {
    pub ready: Ready,
    pub ttl: Duration,
}

/// What [`RedisTier::fetch_or_claim`] found.
pub(crate) enum Claim {
    Answer(Box<Found>),
    /// No answer, and the lock is now this replica's: compute.
    Won,
    /// No answer yet; another replica is computing it.
    Held,
    /// Redis could not say.
    Unavailable,
}

pub(crate) struct RedisTier {
    link: Arc<RedisLink>,
    fetch_or_claim: Script,
    renew: Script,
    release: Script,
}

impl RedisTier {
    pub(crate) fn new(link: Arc<RedisLink>) -> RedisTier {
        RedisTier {
            link,
            fetch_or_claim: Script::new(FETCH_OR_CLAIM),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        }
    }

    /// The stored answer for `key`, if Redis has one and answers in time.
    pub(crate) async fn fetch(&self, key: CacheKey) -> Option<Found> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(answer_key(key));
        pipe.cmd("PTTL").arg(answer_key(key));
        let (bytes, ttl): (Option<Vec<u8>>, i64) = self
            .link
            .run(Op::Get.label(), |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        self.found(&bytes?, ttl)
    }

    /// Stores `ready` for `ttl`; a failure is counted and otherwise ignored.
    pub(crate) async fn store(&self, key: CacheKey, ready: &Ready, ttl: Duration) {
        let value = stored::encode(ready);
        let millis = millis(ttl);
        let mut cmd = redis::cmd("SET");
        cmd.arg(answer_key(key)).arg(value).arg("PX").arg(millis);
        let _: Option<()> = self
            .link
            .run(Op::Set.label(), |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await;
    }

    /// The stored answer for `store`, or else the lock on `flight` for `token` (held for
    /// `hold`), or word that another replica holds it.
    pub(crate) async fn fetch_or_claim(
        &self,
        store: CacheKey,
        flight: CacheKey,
        token: &str,
        hold: Duration,
    ) -> Claim {
        let mut invocation = self.fetch_or_claim.prepare_invoke();
        invocation
            .key(answer_key(store))
            .key(lock_key(flight))
            .arg(token)
            .arg(millis(hold));
        let reply: Option<Value> = self.link.invoke(Op::Lock.label(), invocation).await;
        let Some(Value::Array(items)) = reply else {
            return Claim::Unavailable;
        };
        match items.as_slice() {
            [Value::Int(1), Value::BulkString(bytes), Value::Int(ttl)] => {
                match self.found(bytes, *ttl) {
                    Some(found) => Claim::Answer(Box::new(found)),
                    // Not an answer this replica can read: compute as if missing, unlocked.
                    None => Claim::Unavailable,
                }
            }
            [Value::Int(2)] => Claim::Won,
            [Value::Int(3)] => Claim::Held,
            _ => Claim::Unavailable,
        }
    }

    /// Keeps this replica's lock on `flight` for another `hold`; false when it is no longer
    /// this replica's or Redis did not answer.
    pub(crate) async fn renew(&self, flight: CacheKey, token: &str, hold: Duration) -> bool {
        let mut invocation = self.renew.prepare_invoke();
        invocation
            .key(lock_key(flight))
            .arg(token)
            .arg(millis(hold));
        let renewed: Option<i64> = self.link.invoke(Op::Lock.label(), invocation).await;
        renewed == Some(1)
    }

    /// Lets go of this replica's lock on `flight`, so the others stop waiting on it.
    pub(crate) async fn release(&self, flight: CacheKey, token: &str) {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(lock_key(flight)).arg(token);
        let _: Option<i64> = self.link.invoke(Op::Unlock.label(), invocation).await;
    }

    /// Decodes a stored answer; one this build cannot read is counted and treated as missing.
    fn found(&self, bytes: &[u8], ttl_millis: i64) -> Option<Found> {
        // PTTL is -1 for a key without expiry and -2 for one that has just gone.
        let ttl = u64::try_from(ttl_millis).ok().filter(|ms| *ms > 0)?;
        let Some(ready) = stored::decode(bytes) else {
            self.link.count_error(Op::Get.label());
            tracing::debug!("a Redis cache entry did not decode; treated as a miss");
            return None;
        };
        Some(Found {
            ready,
            ttl: Duration::from_millis(ttl),
        })
    }
}

fn answer_key(key: CacheKey) -> String {
    format!("{PREFIX}{}", key.hex())
}

fn lock_key(key: CacheKey) -> String {
    format!("{PREFIX}lock:{}", key.hex())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
