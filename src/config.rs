//! `proxy.toml`: the typed configuration, its defaults, environment overrides and validation.
//!
//! Every key is optional and has a default, so an empty file is a working config. Unknown keys
//! are rejected (a typo must not silently fall back to a default), and a bad file fails at start
//! with the key, the line and what is allowed: toml's own errors carry the line, and
//! [`Config::validate`] names the key for the checks that toml cannot express.

mod auth;
mod best_of_n;
mod cache;
mod decisions;
mod duration;
mod fuser;
mod judge;
mod telemetry;
mod transport;
mod ui;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, KeyConfig};
pub use best_of_n::{
    is_model_name, BestOfNConfig, Diversity, Generation, Mode, DEFAULT_VARIATIONS,
};
pub use cache::CacheConfig;
pub use decisions::DecisionsConfig;
pub use fuser::FuserConfig;
pub use judge::{Fallback, JudgeConfig, Rubrics, DEFAULT_RUBRIC_PRESET};
pub use telemetry::{LogConfig, LogFormat, TelemetryConfig};
pub use transport::{TlsRoots, Transport, TransportKeys};
pub use ui::UiConfig;
pub use upstream::UpstreamConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub best_of_n: BestOfNConfig,
    /// The default judge, and the settings the built-in judges borrow.
    pub judge: JudgeConfig,
    /// Named judges, `[judges.NAME]`; a request picks one with `x-best-of-n-judge`.
    pub judges: BTreeMap<String, JudgeConfig>,
    /// Rubric presets, `[rubrics] NAME = [...]`, besides the built-in ones.
    pub rubrics: BTreeMap<String, Vec<String>>,
    /// The model that writes fused answers (`fuse` mode).
    pub fuser: FuserConfig,
    pub cache: CacheConfig,
    /// Client keys and their limits; off by default.
    pub auth: AuthConfig,
    pub metrics: MetricsConfig,
    /// The decision log (`bon-proxy export-pairs` reads it).
    pub decisions: DecisionsConfig,
    /// OpenTelemetry traces; off by default.
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
    /// The decisions inspector at `/ui`.
    pub ui: UiConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; env `BON_LISTEN` overrides.
    pub listen: String,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Upper bound on one best-of-N request, fan-out and judge included.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Requests handled at once before new ones get 503; 0 means no limit.
    pub max_inflight: usize,
    /// How long shutdown waits for requests in flight to finish.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// At shutdown, how long `/readyz` answers 503 while the proxy still accepts and serves,
    /// so load balancers stop sending before the listener closes; zero stops at once.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// Runtime worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// Time a client has to send a request head, counted from its first byte; also how long
    /// an idle connection (a silent new one, or keep-alive between requests) stays open.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request body, counted from its request head.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Slowest upload accepted, in bytes per second over each `body_rate_window`; 0 turns
    /// the pace off (the deadline still holds).
    pub min_body_rate: u64,
    /// Window over which `min_body_rate` is measured; the first starts with the request head.
    #[serde(with = "duration")]
    pub body_rate_window: Duration,
    /// How long a write to a client may make no progress (the client reads nothing) before
    /// the connection is closed.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// Passthrough requests whose body may still be arriving while they are forwarded (and hold
    /// a work slot); past it, bodies are read before the request takes a slot. 0 means a
    /// quarter of `max_inflight`.
    pub max_streaming_bodies: usize,
    /// When no streaming place is free: passthrough bodies up to this size are read whole
    /// before the request takes a work slot; larger ones take their slot after this many bytes
    /// and stream the rest.
    pub body_buffer_bytes: usize,
    /// Open connections from one client address (an IPv6 /64 counts as one); 0 means no limit.
    pub max_connections_per_ip: usize,
    /// Open client connections in all; 0 means half the process's file-descriptor limit.
    pub max_connections: usize,
    /// Browser origins allowed to call the proxy (CORS): `scheme://host[:port]` or `*`; empty
    /// means CORS is off.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            max_inflight: 4096,
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::from_secs(5),
            worker_threads: 0,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            min_body_rate: 1024,
            body_rate_window: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_streaming_bodies: 0,
            body_buffer_bytes: 1024 * 1024,
            max_connections_per_ip: 4096,
            max_connections: 0,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Where Prometheus scrapes.
    pub path: String,
    /// An environment variable holding a token `/metrics` then requires as
    /// `Authorization: Bearer <token>`; empty: open.
    pub bearer_token_env: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            path: "/metrics".into(),
            bearer_token_env: String::new(),
        }
    }
}

/// Longest duration any setting accepts; beyond it, deadlines stop being meaningful.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a configuration could not be used; the message names the key and what is allowed.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses, applies environment overrides and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read config file {}: {e}. Pass --config PATH, or --demo to run without one.",
                path.display()
            ))
        })?;
        let mut config =
            Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        config.apply_env(|name| std::env::var(name).ok())?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.judge.resolve_paths(base);
        config.auth.resolve_paths(base);
        config.upstream.resolve_paths(base);
        config.fuser.resolve_paths(base);
        for judge in config.judges.values_mut() {
            judge.resolve_paths(base);
        }
        Ok(config)
    }

    /// Parses and validates TOML text, without environment overrides.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `BON_LISTEN` and `BON_UPSTREAM_BASE_URL`, then validates again.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = var("BON_LISTEN").filter(|v| !v.is_empty()) {
            self.server.listen = listen;
        }
        if let Some(url) = var("BON_UPSTREAM_BASE_URL").filter(|v| !v.is_empty()) {
            self.upstream.base_url = url;
        }
        self.validate()
            .map_err(|e| ConfigError(format!("after environment overrides: {}", e.0)))
    }

    /// Checks what the types cannot: addresses, URLs and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, msg: String| Err(ConfigError(format!("`{key}`: {msg}")));
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return fail(
                "server.listen",
                format!(
                    "`{}` is not an address; use IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\"",
                    self.server.listen
                ),
            );
        }
        for (key, value) in [
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("server.body_buffer_bytes", self.server.body_buffer_bytes),
            ("best_of_n.max_body_bytes", self.best_of_n.max_body_bytes),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        if self.best_of_n.memory_budget_bytes < 1024 * 1024 {
            return fail(
                "best_of_n.memory_budget_bytes",
                format!(
                    "is {}; allowed: at least 1048576 (1 MiB)",
                    self.best_of_n.memory_budget_bytes
                ),
            );
        }
        check_base_url("upstream.base_url", &self.upstream.base_url)?;
        self.upstream.validate_transport()?;
        let bon = &self.best_of_n;
        if bon.max_n == 0 || bon.max_n > 128 {
            return fail(
                "best_of_n.max_n",
                format!("is {}; allowed: 1 to 128", bon.max_n),
            );
        }
        if bon.default_n > bon.max_n {
            return fail(
                "best_of_n.default_n",
                format!(
                    "is {} but best_of_n.max_n is {}; allowed: 0 (off) to max_n",
                    bon.default_n, bon.max_n
                ),
            );
        }
        if bon.min_candidates == 0 || bon.min_candidates > bon.max_n {
            return fail(
                "best_of_n.min_candidates",
                format!(
                    "is {}; allowed: 1 to max_n ({})",
                    bon.min_candidates, bon.max_n
                ),
            );
        }
        bon.validate_candidates()?;
        for (key, value) in [
            ("server.request_timeout", self.server.request_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.timeout", self.upstream.timeout),
            ("best_of_n.candidate_timeout", bon.candidate_timeout),
            ("best_of_n.stream_keepalive", bon.stream_keepalive),
            ("server.shutdown_grace", self.server.shutdown_grace),
            (
                "upstream.pool_idle_timeout",
                self.upstream.pool_idle_timeout,
            ),
            ("cache.ttl", self.cache.ttl),
            ("cache.redis_timeout", self.cache.redis_timeout),
            ("cache.redis_lock_wait", self.cache.redis_lock_wait),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.body_rate_window", self.server.body_rate_window),
            ("server.write_timeout", self.server.write_timeout),
            ("best_of_n.memory_wait", bon.memory_wait),
        ] {
            check_duration(key, value)?;
        }
        if self.server.drain_delay > MAX_DURATION {
            return fail("server.drain_delay", "must be at most 7 days".into());
        }
        if let Err(msg) = crate::cors::check_origins(&self.server.cors_origins) {
            return fail("server.cors_origins", msg);
        }
        if !self.metrics.path.starts_with('/') || self.metrics.path.starts_with("/v1/") {
            return fail(
                "metrics.path",
                format!(
                    "`{}` must start with `/` and must not shadow an API path under /v1/",
                    self.metrics.path
                ),
            );
        }
        self.cache.validate()?;
        self.telemetry.validate()?;
        self.fuser.validate()?;
        self.decisions.validate()?;
        self.ui.validate()?;
        judge::validate(&self.judge, &self.judges, &self.rubrics)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // validate() guarantees this parses; fall back to the default rather than panic.
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// toml's error (it has the line); a bad duration also gets its key in front, which toml's
/// message does not name.
fn parse_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let key = error
        .message()
        .starts_with(duration::MARKER)
        .then(|| {
            error
                .span()
                .and_then(|span| duration::key_at(text, span.start))
        })
        .flatten();
    match key {
        Some(key) => ConfigError(format!("`{key}`: {error}")),
        None => ConfigError(error.to_string()),
    }
}

/// A duration setting: longer than zero, at most [`MAX_DURATION`].
fn check_duration(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError(format!(
            "`{key}`: must be longer than zero, e.g. \"30s\""
        )));
    }
    if value > MAX_DURATION {
        return Err(ConfigError(format!("`{key}`: must be at most 7 days")));
    }
    Ok(())
}

fn check_base_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let uri = url.parse::<http::Uri>().ok();
    let authority = uri.as_ref().and_then(|u| u.authority());
    if authority.is_some_and(|a| a.as_str().contains('@')) {
        // The pooled client would carry them into connection keys and trace logs, and never
        // send them as auth: refuse rather than leak or ignore them.
        return Err(ConfigError(format!(
            "`{key}`: `{}` has credentials in it; they are not supported. Remove the \
             `user:password@` part and put the API key in the environment variable named by \
             `api_key_env`.",
            crate::redact::redact_url(url)
        )));
    }
    match uri {
        Some(uri)
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            Ok(())
        }
        _ => Err(ConfigError(format!(
            "`{key}`: `{}` is not a usable base URL; use http(s)://HOST[:PORT][/PATH], \
             e.g. \"https://api.openai.com/v1\"",
            crate::redact::redact_url(url)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_config() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080");
        assert_eq!(config.best_of_n.max_n, 16);
        assert_eq!(config.judge.fallback, Fallback::FirstOk);
    }

    #[test]
    fn unknown_key_names_the_key_and_the_line() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n").unwrap_err();
        assert!(err.0.contains("listn"), "{err}");
        assert!(err.0.contains("line 3"), "{err}");
    }

    #[test]
    fn range_errors_name_the_key() {
        let err = Config::parse("[best_of_n]\ndefault_n = 40\n").unwrap_err();
        assert!(err.0.contains("best_of_n.default_n"), "{err}");
        let err = Config::parse("[upstream]\nbase_url = \"ftp://x\"\n").unwrap_err();
        assert!(err.0.contains("upstream.base_url"), "{err}");
        let err = Config::parse("[upstream]\nbase_url = \"http://u:pw@h/v1\"\n").unwrap_err();
        assert!(
            err.0.contains("api_key_env") && !err.0.contains("pw"),
            "{err}"
        );
        let err = Config::parse("[judge]\nfallback = \"coin\"\n").unwrap_err();
        assert!(err.0.contains("first_ok"), "{err}");
    }

    #[test]
    fn durations_are_human_readable() {
        let config = Config::parse("[best_of_n]\ncandidate_timeout = \"1500ms\"\n").unwrap();
        assert_eq!(
            config.best_of_n.candidate_timeout,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn a_bad_duration_names_its_key_and_the_accepted_forms() {
        for (text, shown) in [
            (
                "[server]\nrequest_timeout = \"5 minutes please\"\n",
                "5 minutes please",
            ),
            ("[server]\nrequest_timeout = \"abc\"\n", "abc"),
            ("[server]\n# comment\nrequest_timeout = 300\n", "\"300s\""),
        ] {
            let err = Config::parse(text).unwrap_err().0;
            assert!(err.contains("`server.request_timeout`"), "{err}");
            assert!(err.contains(shown), "{err}");
            for form in ["\"500ms\"", "\"30s\"", "\"2m\"", "\"1h\""] {
                assert!(err.contains(form), "{form} missing: {err}");
            }
        }
        let err = Config::parse("[judges.slow]\ntimeout = \"soon\"\n")
            .unwrap_err()
            .0;
        assert!(err.contains("`judges.slow.timeout`"), "{err}");
        // Long unit names are durations too, and a duration prints back the way it parses.
        let config = Config::parse("[server]\nrequest_timeout = \"5 minutes\"\n").unwrap();
        assert_eq!(config.server.request_timeout, Duration::from_secs(300));
        let printed = toml::to_string(&config).unwrap();
        assert_eq!(
            Config::parse(&printed).unwrap().server.request_timeout,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn cors_origins_are_checked_and_named() {
        let ok = "[server]\ncors_origins = [\"*\", \"http://localhost:3000\"]\n";
        assert_eq!(Config::parse(ok).unwrap().server.cors_origins.len(), 2);
        let err = Config::parse("[server]\ncors_origins = [\"https://a.example/\"]\n").unwrap_err();
        assert!(err.0.contains("`server.cors_origins`"), "{err}");
        assert!(err.0.contains("https://a.example/"), "{err}");
    }

    #[test]
    fn drain_delay_defaults_to_five_seconds_and_may_be_zero() {
        assert_eq!(Config::default().server.drain_delay, Duration::from_secs(5));
        let config = Config::parse("[server]\ndrain_delay = \"0s\"\n").unwrap();
        assert!(config.server.drain_delay.is_zero());
    }

    #[test]
    fn env_overrides_listen_and_base_url() {
        let mut config = Config::default();
        config
            .apply_env(|name| match name {
                "BON_LISTEN" => Some("0.0.0.0:9000".into()),
                "BON_UPSTREAM_BASE_URL" => Some("http://127.0.0.1:9/v1".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:9000");
        assert_eq!(config.upstream.base_url, "http://127.0.0.1:9/v1");
    }
}
