//! `[fuser]`: the model that reads every candidate and writes the final answer, for requests in
//! `fuse` mode (`x-best-of-n-mode: fuse` or `best_of_n.mode = "fuse"`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_base_url, check_duration, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FuserConfig {
    /// The fuser model; empty means the model of the request.
    pub model: String,
    /// Separate endpoint for fuser calls; empty means the upstream.
    pub base_url: String,
    /// Env variable with the key for `base_url`; the upstream key never goes there.
    pub api_key_env: String,
    /// minijinja template of the fuser prompt; empty means the built-in one.
    pub template: String,
    /// Sampling temperature of the fuser; absent means the request's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Upper bound on the fused answer, sent as `max_tokens`; 0 keeps the request's own.
    pub max_tokens: u32,
    /// Deadline of the fuser call (the whole answer, or the whole stream).
    #[serde(with = "super::duration")]
    pub timeout: Duration,
}

impl Default for FuserConfig {
    fn default() -> Self {
        FuserConfig {
            model: String::new(),
            base_url: String::new(),
            api_key_env: String::new(),
            template: String::new(),
            temperature: None,
            max_tokens: 0,
            timeout: Duration::from_secs(120),
        }
    }
}

impl FuserConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = self.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            return Err(ConfigError(format!(
                "`fuser.temperature`: is {t}; allowed: 0.0 to 2.0, or leave it out to keep the \
                 request's own"
            )));
        }
        if !self.base_url.is_empty() {
            check_base_url("fuser.base_url", &self.base_url)?;
        }
        check_duration("fuser.timeout", self.timeout)
    }
}
