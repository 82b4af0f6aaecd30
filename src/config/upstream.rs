//! `[upstream]`: where the calls go, with which key, how patient the proxy is, and how it
//! pools connections.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL that `/v1/...` maps onto; env `BON_UPSTREAM_BASE_URL` overrides.
    pub base_url: String,
    /// Name of the environment variable holding the upstream API key (never the key itself).
    pub api_key_env: String,
    /// Forward the client's own `Authorization` header when it sends one.
    pub forward_client_auth: bool,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for an upstream answer: the response head for passthrough, the whole
    /// body for candidate and judge calls.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Retries of a candidate or judge call after a connection error, 429 or 5xx.
    pub max_retries: u32,
    /// Most calls in flight to this upstream at once (passthrough, candidates, judge, fuser);
    /// 0: no bound. A call past it waits up to `max_connections_wait`, then fails as overload.
    pub max_connections: usize,
    /// How long a call waits for a place under `max_connections` before it fails (503).
    #[serde(with = "duration")]
    pub max_connections_wait: Duration,
    /// Idle keep-alive connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            forward_client_auth: true,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
            max_retries: 2,
            max_connections: 0,
            max_connections_wait: Duration::from_secs(1),
            pool_max_idle_per_host: 256,
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}
