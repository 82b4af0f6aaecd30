//! What every request handler shares: the config, the upstream client and the judges.

use std::sync::Arc;

use crate::cache::AnswerCache;
use crate::config::Config;
use crate::generation::ModelsWithoutN;
use crate::judge::Judges;
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::upstream::{self, ApiKey, Upstream};

/// Keys read from the environment at start; kept apart from [`Config`] so that the config can
/// be printed and logged without ever holding a secret.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub upstream_key: Option<ApiKey>,
    pub judge_key: Option<ApiKey>,
}

impl Secrets {
    /// Reads the variables named by `upstream.api_key_env` and `judge.api_key_env`.
    pub fn from_env(config: &Config) -> Secrets {
        let judge_env = &config.judge.api_key_env;
        Secrets {
            upstream_key: ApiKey::from_env(&config.upstream.api_key_env),
            judge_key: (!judge_env.is_empty())
                .then(|| ApiKey::from_env(judge_env))
                .flatten(),
        }
    }

    /// Hides every one of these keys in upstream text.
    pub fn redactor(&self) -> Redactor {
        let keys = [&self.upstream_key, &self.judge_key];
        Redactor::new(keys.into_iter().flatten().map(ApiKey::secret))
    }
}

pub struct AppState {
    pub config: Config,
    pub upstream: Upstream,
    pub judges: Judges,
    pub metrics: Metrics,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<AnswerCache>,
    /// Models whose upstream refused `n`, for `best_of_n.generation = "n_param"`.
    pub models_without_n: ModelsWithoutN,
}

impl AppState {
    pub fn new(config: Config, secrets: Secrets) -> Result<Arc<AppState>, String> {
        let client = upstream::build_client(&config.upstream)?;
        let redactor = secrets.redactor();
        let main = Upstream::new(
            client.clone(),
            &config.upstream.base_url,
            secrets.upstream_key.clone(),
            &config.upstream,
            redactor.clone(),
        )?;
        // A judge with its own endpoint uses only its own key: neither the client's credentials
        // nor the upstream key may travel to a different host.
        let (judge_endpoint, forward_client_headers) = if config.judge.base_url.is_empty() {
            (main.clone(), true)
        } else {
            let key = secrets.judge_key.clone();
            if key.is_none() {
                tracing::warn!(
                    judge = %upstream::redact_url(&config.judge.base_url),
                    "judge.base_url is set but judge.api_key_env names no key: judge calls go unauthenticated"
                );
            }
            let mut judge_upstream = config.upstream.clone();
            judge_upstream.forward_client_auth = false;
            let endpoint = Upstream::new(
                client,
                &config.judge.base_url,
                key,
                &judge_upstream,
                redactor,
            )?;
            (endpoint, false)
        };
        let metrics = Metrics::new();
        let judges =
            Judges::from_config(&config, judge_endpoint, forward_client_headers, &metrics)?;
        let cache = config
            .cache
            .enabled
            .then(|| AnswerCache::new(&config.cache, metrics.clone()));
        Ok(Arc::new(AppState {
            config,
            upstream: main,
            judges,
            metrics,
            cache,
            models_without_n: ModelsWithoutN::default(),
        }))
    }
}
