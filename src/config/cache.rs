//! `[cache]`: the memory cache, and the optional Redis tier replicas share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache best-of-N answers.
    pub enabled: bool,
    /// Upper bound on what the cached answers weigh, in bytes.
    pub max_bytes: u64,
    /// How long an answer stays servable.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Also cache plain (not best-of-N, not streamed) chat completions.
    pub passthrough: bool,
    /// A Redis shared by replicas, as a second tier behind the memory cache
    /// (`redis://` or `rediss://`); empty: off.
    pub redis_url: String,
    /// An environment variable holding Redis's password; empty: the URL's, if any.
    pub redis_password_env: String,
    /// The most one Redis operation may add to a request; past it the proxy goes on without.
    #[serde(with = "duration")]
    pub redis_timeout: Duration,
    /// Identical requests arriving at different replicas share one computation.
    pub redis_single_flight: bool,
    /// How long a replica waits on another's computation before computing itself.
    #[serde(with = "duration")]
    pub redis_lock_wait: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            ttl: Duration::from_secs(3600),
            passthrough: false,
            redis_url: String::new(),
            redis_password_env: String::new(),
            redis_timeout: Duration::from_millis(50),
            redis_single_flight: false,
            redis_lock_wait: Duration::from_secs(30),
        }
    }
}

impl CacheConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_empty() {
            if self.redis_single_flight {
                return Err(ConfigError(
                    "`cache.redis_single_flight`: needs `cache.redis_url`; set both, or set \
                     redis_single_flight = false"
                        .into(),
                ));
            }
            return Ok(());
        }
        let scheme = self.redis_url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss") || !self.redis_url.contains("://") {
            return Err(ConfigError(format!(
                "`cache.redis_url`: `{}` is not a Redis URL; use redis://HOST:PORT[/DB] or \
                 rediss://HOST:PORT[/DB] (TLS)",
                crate::redact::redact_url(&self.redis_url)
            )));
        }
        if let Err(error) = redis::Client::open(self.redis_url.as_str()) {
            return Err(ConfigError(format!(
                "`cache.redis_url`: `{}` cannot be used: {}",
                crate::redact::redact_url(&self.redis_url),
                error
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn redis_is_off_by_default_with_a_50ms_timeout() {
        let config = Config::default();
        assert!(config.cache.redis_url.is_empty());
        assert_eq!(config.cache.redis_timeout, Duration::from_millis(50));
        assert!(!config.cache.redis_single_flight);
    }

    #[test]
    fn a_redis_url_must_be_redis_or_rediss_and_is_never_echoed_with_its_password() {
        assert!(Config::parse("[cache]\nredis_url = \"redis://127.0.0.1:6379/0\"\n").is_ok());
        assert!(Config::parse("[cache]\nredis_url = \"rediss://cache.internal:6380\"\n").is_ok());
        let error = Config::parse("[cache]\nredis_url = \"http://:hunter2@cache:6379\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("cache.redis_url"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn fleet_single_flight_needs_redis() {
        let error = Config::parse("[cache]\nredis_single_flight = true\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("cache.redis_url"), "{error}");
    }
}
