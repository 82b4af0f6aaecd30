//! What every request handler shares: the config, the upstream client and the judges.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::auth::Keys;
use crate::cache::AnswerCache;
use crate::config::{Config, ConfigError, JudgeConfig};
use crate::decisions::DecisionLog;
use crate::fusion::Fuser;
use crate::generation::ModelsWithoutN;
use crate::judge::call::JudgeCall;
use crate::judge::Judges;
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::redis_link::RedisLink;
use crate::upstream::{ApiKey, Clients, Upstream};

/// Keys read from the environment at start; kept apart from [`Config`] so that the config can
/// be printed and logged without ever holding a secret.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub upstream_key: Option<ApiKey>,
    /// Keys of judges with their own endpoint, by the name of their environment variable.
    pub judge_keys: BTreeMap<String, ApiKey>,
    /// The token `/metrics` requires (`metrics.bearer_token_env`), when set.
    pub metrics_token: Option<ApiKey>,
    /// Redis's password (`cache.redis_password_env`), when set.
    pub redis_password: Option<ApiKey>,
}

impl Secrets {
    /// Reads the variables named by `upstream.api_key_env` and every judge's `api_key_env`.
    pub fn from_env(config: &Config) -> Secrets {
        let judge_keys = judge_key_names(config)
            .into_iter()
            .filter_map(|name| Some((name.to_string(), ApiKey::from_env(name)?)))
            .collect();
        Secrets {
            upstream_key: ApiKey::from_env(&config.upstream.api_key_env),
            judge_keys,
            metrics_token: ApiKey::from_env(&config.metrics.bearer_token_env),
            redis_password: ApiKey::from_env(&config.cache.redis_password_env),
        }
    }

    /// Hides every one of these keys in upstream text.
    pub fn redactor(&self) -> Redactor {
        self.redactor_with(&[])
    }

    /// [`Secrets::redactor`], hiding `more` as well: the credentials of an endpoint's proxy.
    pub fn redactor_with(&self, more: &[String]) -> Redactor {
        let keys = self.upstream_key.iter().chain(self.judge_keys.values());
        let keys = keys.chain(self.metrics_token.iter());
        let keys = keys.chain(self.redis_password.iter());
        let more = more.iter().map(String::as_str);
        Redactor::new(keys.map(ApiKey::secret).chain(more))
    }
}

/// Every `api_key_env` of a judge or the fuser with its own endpoint (keys of the others are
/// never read).
pub fn judge_key_names(config: &Config) -> Vec<&str> {
    let judges = std::iter::once(&config.judge).chain(config.judges.values());
    let endpoints = judges.map(|j| (&j.base_url, &j.api_key_env));
    let fuser = (&config.fuser.base_url, &config.fuser.api_key_env);
    let mut names: Vec<&str> = endpoints
        .chain(std::iter::once(fuser))
        .filter(|(base_url, env)| !base_url.is_empty() && !env.is_empty())
        .map(|(_, env)| env.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

pub struct AppState {
    pub config: Config,
    pub upstream: Upstream,
    pub judges: Judges,
    /// Writes fused answers, for requests in `fuse` mode.
    pub fuser: Fuser,
    pub metrics: Metrics,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<AnswerCache>,
    /// Models whose upstream refused `n`, for `best_of_n.generation = "n_param"`.
    pub models_without_n: ModelsWithoutN,
    /// `None` when `decisions.path` is empty.
    pub decisions: Option<DecisionLog>,
    /// Client keys; `None` when `[auth]` is off.
    pub keys: Option<Keys>,
    /// The token `/metrics` requires, when `metrics.bearer_token_env` names one.
    pub metrics_token: Option<ApiKey>,
    /// The decisions inspector at `/ui`; `None` when `ui.enabled` is false.
    pub ui: Option<Arc<crate::ui::Inspector>>,
}

impl AppState {
    pub fn new(config: Config, secrets: Secrets) -> Result<Arc<AppState>, String> {
        let (mut clients, main) = connect_upstream(&config, &secrets)?;
        let metrics = Metrics::new();
        let (judges, fuser) = build_deciders(&config, &secrets, &main, &mut clients, &metrics)
            .map_err(|e| e.to_string())?;
        // What each client trusts, presents and goes through, credentials masked: the first
        // thing to check when an upstream cannot be reached.
        for connection in clients.describe() {
            tracing::info!(%connection, "upstream client");
        }
        // One Redis link, for the cache's shared tier and the keys' shared limits.
        let redis = (!config.cache.redis_url.is_empty())
            .then(|| {
                RedisLink::new(
                    &config.cache,
                    secrets.redis_password.as_ref(),
                    metrics.clone(),
                )
            })
            .transpose()
            .map_err(|e| e.to_string())?
            .map(Arc::new);
        let cache = config
            .cache
            .enabled
            .then(|| AnswerCache::new(&config.cache, redis.clone(), metrics.clone()));
        let decisions = config
            .decisions
            .enabled()
            .then(|| DecisionLog::open(&config.decisions, metrics.clone()))
            .transpose()?;
        let keys = Keys::from_config(&config.auth, redis).map_err(|e| e.to_string())?;
        let metrics_token = secrets.metrics_token.clone();
        let ui = crate::ui::Inspector::from_config(&config);
        Ok(Arc::new(AppState {
            config,
            upstream: main,
            judges,
            fuser,
            metrics,
            cache,
            models_without_n: ModelsWithoutN::default(),
            decisions,
            keys,
            metrics_token,
            ui,
        }))
    }
}

/// The upstream, and the clients it and every other endpoint draw on.
fn connect_upstream(config: &Config, secrets: &Secrets) -> Result<(Clients, Upstream), String> {
    let mut clients = Clients::new(&config.upstream);
    let base_url = &config.upstream.base_url;
    let routed = clients
        .client(&config.upstream.transport(), "upstream", base_url)
        .map_err(|e| e.to_string())?;
    let redactor = secrets.redactor_with(&routed.route.secrets());
    let main = Upstream::new(
        routed,
        "upstream",
        base_url,
        secrets.upstream_key.clone(),
        &config.upstream,
        redactor,
    )?;
    Ok((clients, main))
}

/// Builds the judges as serving would, without serving: `check-config` and start-up run it to
/// report a judge mistake with its key before anything listens.
pub fn check_judges(config: &Config, secrets: &Secrets) -> Result<Judges, String> {
    check_deciders(config, secrets).map(|checked| checked.judges)
}

/// What [`check_deciders`] built: the judges, the fuser, and one line per HTTP client (what it
/// trusts and presents) for `check-config`.
pub struct Checked {
    pub judges: Judges,
    pub fuser: Fuser,
    pub clients: Vec<String>,
}

/// [`check_judges`], with the fuser and the clients.
pub fn check_deciders(config: &Config, secrets: &Secrets) -> Result<Checked, String> {
    let (mut clients, main) = connect_upstream(config, secrets)?;
    let (judges, fuser) = build_deciders(config, secrets, &main, &mut clients, &Metrics::new())
        .map_err(|e| e.to_string())?;
    Ok(Checked {
        judges,
        fuser,
        clients: clients.describe(),
    })
}

/// The endpoint of a judge (or the fuser) with its own `base_url`, whose keys live in `table`.
/// It uses only its own key (`key`): neither a client's credentials nor the upstream key may
/// travel to a different host. Its connection keys are its own over `[upstream]`'s.
fn own_endpoint(
    config: &Config,
    secrets: &Secrets,
    clients: &mut Clients,
    table: &str,
    judge: &JudgeConfig,
    key: Option<ApiKey>,
) -> Result<Upstream, ConfigError> {
    let mut settings = config.upstream.clone();
    settings.forward_client_auth = false;
    let transport = judge.transport_keys().over(&config.upstream.transport());
    let routed = clients
        .client(&transport, table, &judge.base_url)
        .map_err(|e| ConfigError(e.to_string()))?;
    let redactor = secrets.redactor_with(&routed.route.secrets());
    Upstream::new(routed, table, &judge.base_url, key, &settings, redactor).map_err(ConfigError)
}

/// Builds every judge and the fuser, each reaching its model through the upstream or its own
/// endpoint.
pub(crate) fn build_deciders(
    config: &Config,
    secrets: &Secrets,
    main: &Upstream,
    clients: &mut Clients,
    metrics: &Metrics,
) -> Result<(Judges, Fuser), ConfigError> {
    let clients = RefCell::new(clients);
    // Built-in judges share `[judge]`'s endpoint: warn about a missing key once per endpoint.
    let warned = RefCell::new(HashSet::new());
    let connect = |table: &str, judge: &JudgeConfig| -> Result<JudgeCall, ConfigError> {
        if judge.base_url.is_empty() {
            return Ok(JudgeCall::new(judge, main.clone(), true, metrics.clone()));
        }
        let key = secrets.judge_keys.get(&judge.api_key_env).cloned();
        if key.is_none() && warned.borrow_mut().insert(judge.base_url.clone()) {
            tracing::warn!(
                judge = %crate::redact::redact_url(&judge.base_url),
                "a judge base_url is set but its api_key_env names no key: judge calls there go unauthenticated"
            );
        }
        let mut clients = clients.borrow_mut();
        let endpoint = own_endpoint(config, secrets, &mut clients, table, judge, key)?;
        Ok(JudgeCall::new(judge, endpoint, false, metrics.clone()))
    };
    let judges = Judges::build(config, &connect)?;
    let fuser = Fuser::new(&config.fuser, connect)?;
    Ok((judges, fuser))
}
