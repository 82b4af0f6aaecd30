//! The connection to Redis that replicas share: the cache's second tier and the client keys'
//! rate limits both go through it.
//!
//! Redis is an optimisation, never a dependency: every operation is bounded by
//! `cache.redis_timeout`, and a slow, down or misbehaving Redis makes the operation come back
//! empty (its caller goes on as if Redis were off), is counted in
//! `bon_cache_redis_errors_total{op}`, and after repeated failures is not asked at all for a
//! while (see `breaker`). The connection is redis-rs's connection manager, which reconnects
//! by itself; it is made on first use, so a proxy starts whether Redis is up or not.

mod breaker;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult};

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::redact::redact_url;
use crate::upstream::ApiKey;
use breaker::{Admit, Breaker, Tripped};

/// The Redis connection could not be set up from the config.
#[derive(Debug)]
pub struct RedisSetupError(String);

impl std::fmt::Display for RedisSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisSetupError {}

pub(crate) struct RedisLink {
    client: redis::Client,
    /// Made on first use, inside the runtime (the manager spawns a task).
    manager: OnceLock<Option<ConnectionManager>>,
    timeout: Duration,
    breaker: Breaker,
    metrics: Metrics,
    /// The URL with any password masked, for log lines.
    shown_url: String,
}

impl RedisLink {
    /// The link `config` describes; the password, when `cache.redis_password_env` names one,
    /// replaces the URL's. Nothing is connected yet.
    pub(crate) fn new(
        config: &CacheConfig,
        password: Option<&ApiKey>,
        metrics: Metrics,
    ) -> Result<RedisLink, RedisSetupError> {
        let shown_url = redact_url(&config.redis_url);
        let setup_error = |e: RedisError| {
            RedisSetupError(format!(
                "`cache.redis_url` ({shown_url}) cannot be used: {e}"
            ))
        };
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.redis_url.as_str())
            .map_err(setup_error)?;
        if let Some(password) = password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.secret());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(setup_error)?;
        Ok(RedisLink {
            client,
            manager: OnceLock::new(),
            timeout: config.redis_timeout,
            breaker: Breaker::default(),
            metrics,
            shown_url,
        })
    }

    /// Runs one operation within the timeout, unless the breaker says Redis is down; `None`
    /// when it did not succeed, which every caller treats as Redis not knowing. `op` names
    /// it in `bon_cache_redis_errors_total{op}`.
    /// Counts a failure Redis did not see (an answer this build cannot read).
    pub(crate) fn count_error(&self, op: &'static str) {
        self.metrics.redis_error(op);
    }

    /// Runs a Lua script `invocation` as [`run`](Self::run) runs any operation.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        self.run(op, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, operation: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let admitted = self.breaker.admit(Instant::now());
        if admitted == Admit::No {
            return None;
        }
        let Some(conn) = self.connection() else {
            // Set up failed for good (logged once): count it, so a probe does not stay out.
            self.breaker.failure(Instant::now());
            return None;
        };
        let failure = match tokio::time::timeout(self.timeout, operation(conn)).await {
            Ok(Ok(value)) => {
                if admitted == Admit::Probe {
                    tracing::info!(redis = %self.shown_url, "Redis answers again; the cache uses it");
                }
                self.breaker.success();
                return Some(value);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within cache.redis_timeout ({:?})", self.timeout),
        };
        self.metrics.redis_error(op);
        if let Tripped::For(back_off) = self.breaker.failure(Instant::now()) {
            tracing::warn!(
                redis = %self.shown_url,
                error = %failure,
                "Redis keeps failing; the cache goes on without it for {back_off:?}, then tries \
                 again (check that Redis is up and cache.redis_url is right)"
            );
        } else {
            tracing::debug!(redis = %self.shown_url, op, error = %failure, "Redis operation failed");
        }
        None
    }

    fn connection(&self) -> Option<ConnectionManager> {
        let manager = self.manager.get_or_init(|| {
            // A few quick reconnection attempts; the breaker paces anything longer.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout.max(Duration::from_secs(1))))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                .inspect_err(|e| tracing::error!(redis = %self.shown_url, error = %e, "cannot set up the Redis connection; the cache runs without Redis"))
                .ok()
        });
        manager.clone()
    }
}
