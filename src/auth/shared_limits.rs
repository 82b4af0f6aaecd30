//! Client-key limits shared by replicas, through Redis, when `cache.redis_url` is set.
//!
//! Per process, a key allowed 60 requests a minute gets 60 at each of N replicas. With
//! Redis, each key has two fixed-window counters every replica adds to:
//! `bon:v1:rate:<key hash>:<unix minute>` (requests this minute, expiring with the minute)
//! and `bon:v1:tokens:<key hash>:<UTC day>` (tokens spent today, kept two days). One round
//! trip per request reads both and counts the request. A fixed window lets a client send up
//! to twice its rate across a minute boundary; in exchange it costs one `INCR`, where a
//! sliding window would cost a sorted set per key. When Redis cannot answer, the key's
//! per-process limits decide, so an outage loosens limits to per replica rather than
//! refusing or admitting everyone.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::redis_link::RedisLink;

/// Counts the request in this minute's window and reads today's tokens.
const TAKE: &str = r"
local requests = redis.call('INCR', KEYS[1])
if requests == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local tokens = redis.call('GET', KEYS[2])
return {requests, tonumber(tokens) or 0}
";

/// Adds tokens to today's count, which outlives the day by one so a late charge still lands.
const CHARGE: &str = r"
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// A window's counter expires a little after its minute, so clocks a few seconds apart
/// across replicas still count into the same key.
const WINDOW_KEPT: Duration = Duration::from_secs(70);
const TOKENS_KEPT: Duration = Duration::from_secs(2 * 86_400);

/// What the fleet has counted for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    /// This request included.
    pub requests_this_minute: u64,
    pub tokens_today: u64,
}

/// Where a moment falls: its minute and its UTC day, as Unix minutes and days.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub minute: u64,
    pub day: u64,
}

impl Window {
    pub fn at(unix_seconds: u64) -> Window {
        Window {
            minute: unix_seconds / 60,
            day: unix_seconds / 86_400,
        }
    }
}

pub(super) struct SharedLimits {
    link: Arc<RedisLink>,
    take: Script,
    charge: Script,
}

impl SharedLimits {
    pub fn new(link: Arc<RedisLink>) -> SharedLimits {
        SharedLimits {
            link,
            take: Script::new(TAKE),
            charge: Script::new(CHARGE),
        }
    }

    /// Counts one request of the key `id` and reads what it spent; `None` when Redis could
    /// not say.
    pub async fn take(&self, id: &str, window: Window) -> Option<Counts> {
        let mut invocation = self.take.prepare_invoke();
        invocation
            .key(format!("bon:v1:rate:{id}:{}", window.minute))
            .key(format!("bon:v1:tokens:{id}:{}", window.day))
            .arg(WINDOW_KEPT.as_millis() as u64);
        let (requests, tokens): (u64, u64) = self.link.invoke("rate", invocation).await?;
        Some(Counts {
            requests_this_minute: requests,
            tokens_today: tokens,
        })
    }

    /// Adds `tokens` to the key's day, in the background: the answer is already on its way.
    pub fn charge(self: &Arc<Self>, id: &str, window: Window, tokens: u64) {
        let shared = self.clone();
        let key = format!("bon:v1:tokens:{id}:{}", window.day);
        tokio::spawn(async move {
            let mut invocation = shared.charge.prepare_invoke();
            invocation
                .key(key)
                .arg(tokens)
                .arg(TOKENS_KEPT.as_millis() as u64);
            let _: Option<i64> = shared.link.invoke("rate", invocation).await;
        });
    }
}
