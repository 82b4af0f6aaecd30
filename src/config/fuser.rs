//! `[fuser]`: the model that reads every candidate and writes the final answer, for requests in
//! `fuse` mode (`x-best-of-n-mode: fuse` or `best_of_n.mode = "fuse"`).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::transport::{resolve_files, TlsRoots, TransportKeys};
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
    /// The connection keys of `base_url`'s endpoint, as in `[upstream]`; each one left out
    /// is `[upstream]`'s, except the client certificate.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_roots: Option<TlsRoots>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_cert_file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_key_file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_url: String,
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
            ca_file: String::new(),
            tls_roots: None,
            client_cert_file: String::new(),
            client_key_file: String::new(),
            proxy_url: String::new(),
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
        self.transport_keys()
            .validate("fuser", !self.base_url.is_empty())?;
        check_duration("fuser.timeout", self.timeout)
    }

    /// The connection keys this table sets for its own endpoint.
    pub fn transport_keys(&self) -> TransportKeys {
        TransportKeys {
            ca_file: self.ca_file.clone(),
            tls_roots: self.tls_roots,
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            proxy_url: self.proxy_url.clone(),
        }
    }

    /// Makes the relative file keys relative to the directory of the config file.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let files = [
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ];
        resolve_files(files, base);
    }
}
