//! `[upstream]`: where the calls go, with which key, how they are carried (the certificates
//! trusted and presented, the outbound proxy), how patient the proxy is, and how it pools
//! connections.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::transport::{resolve_files, TlsRoots, Transport, TransportKeys};
use super::ConfigError;

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
    /// Speak only HTTP/2 to `base_url` (ALPN offers only h2; h2c by prior knowledge over plain
    /// http), so that the calls of a fan-out share one connection from the first request. By
    /// default ALPN picks, and calls racing on a cold pool each open a connection.
    pub http2_only: bool,
    /// A PEM bundle of CA certificates trusted besides `tls_roots`, for a private upstream
    /// whose certificate a private CA signed; empty: none. Every file key is read when the
    /// client is built (`upstream::Clients`), so a bad file stops the start.
    pub ca_file: String,
    /// The roots trusted before `ca_file`: `webpki` (bundled), `system` (the host's store) or
    /// `both`.
    pub tls_roots: TlsRoots,
    /// Client certificate chain (PEM) for an upstream that requires mutual TLS; empty: none.
    pub client_cert_file: String,
    /// The private key (PEM) of `client_cert_file`.
    pub client_key_file: String,
    /// Outbound HTTP proxy, `http://[user:password@]host:port`; empty: `HTTPS_PROXY` /
    /// `HTTP_PROXY` / `ALL_PROXY` from the environment, if set. `NO_PROXY` applies to both.
    pub proxy_url: String,
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
            http2_only: false,
            ca_file: String::new(),
            tls_roots: TlsRoots::Webpki,
            client_cert_file: String::new(),
            client_key_file: String::new(),
            proxy_url: String::new(),
        }
    }
}

impl UpstreamConfig {
    /// How the upstream is reached: its TLS and proxy keys, and its HTTP version.
    pub fn transport(&self) -> Transport {
        Transport {
            http2_only: self.http2_only,
            ..self.transport_keys().over(&Transport::default())
        }
    }

    fn transport_keys(&self) -> TransportKeys {
        TransportKeys {
            ca_file: self.ca_file.clone(),
            tls_roots: Some(self.tls_roots),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            proxy_url: self.proxy_url.clone(),
        }
    }

    pub(super) fn validate_transport(&self) -> Result<(), ConfigError> {
        self.transport_keys().validate("upstream", true)
    }

    /// Makes the relative file keys relative to the directory of the config file, as the other
    /// file keys are: the proxy may be started from anywhere.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let files = [
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ];
        resolve_files(files, base);
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn a_relative_ca_file_is_read_beside_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, "[upstream]\nca_file = \"certs/ca.pem\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        let beside = dir.path().join("certs/ca.pem").display().to_string();
        assert_eq!(config.upstream.ca_file, beside);
        std::fs::write(&path, "[upstream]\nca_file = \"/etc/ca.pem\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().upstream.ca_file, "/etc/ca.pem");
        assert!(Config::default().upstream.ca_file.is_empty());
    }
}
