//! `[telemetry]` (OpenTelemetry traces, off by default) and `[log]` (the log format).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_base_url, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where spans go, OTLP over HTTP/protobuf: a collector's base URL (`/v1/traces` is
    /// added) or the full traces URL; empty: tracing off.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Share of new traces recorded, 0.0 to 1.0; a request whose caller's `traceparent` says
    /// sampled (or not) follows its caller.
    pub sample_ratio: f64,
    /// Put prompts and completions on spans; off: never any text a user or a model wrote.
    pub include_content: bool,
    /// More resource attributes, e.g. `{ "deployment.environment" = "prod" }`.
    pub resource_attributes: BTreeMap<String, String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "bon-proxy".into(),
            sample_ratio: 1.0,
            include_content: false,
            resource_attributes: BTreeMap::new(),
        }
    }
}

impl TelemetryConfig {
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }

    /// The URL spans are POSTed to.
    pub fn traces_url(&self) -> String {
        let base = self.otlp_endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError(format!(
                "`telemetry.sample_ratio`: is {}; use a share from 0.0 (none) to 1.0 (every trace)",
                self.sample_ratio
            )));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError(
                "`telemetry.service_name`: must not be empty; e.g. \"bon-proxy\"".into(),
            ));
        }
        if self.enabled() {
            check_base_url("telemetry.otlp_endpoint", &self.otlp_endpoint)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One line per request (target `bon_proxy::access`).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            access: true,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one readable line per event.
    #[default]
    Text,
    /// For log pipelines: one JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn telemetry_is_off_by_default_and_the_traces_path_is_added_once() {
        let config = Config::default();
        assert!(!config.telemetry.enabled());
        let config =
            Config::parse("[telemetry]\notlp_endpoint = \"http://collector:4318\"\n").unwrap();
        assert_eq!(
            config.telemetry.traces_url(),
            "http://collector:4318/v1/traces"
        );
        let config =
            Config::parse("[telemetry]\notlp_endpoint = \"http://c:4318/v1/traces\"\n").unwrap();
        assert_eq!(config.telemetry.traces_url(), "http://c:4318/v1/traces");
    }

    #[test]
    fn bad_telemetry_and_log_settings_name_their_key() {
        for (text, key) in [
            (
                "[telemetry]\nsample_ratio = 1.5\n",
                "telemetry.sample_ratio",
            ),
            (
                "[telemetry]\notlp_endpoint = \"collector:4318\"\n",
                "telemetry.otlp_endpoint",
            ),
            ("[log]\nformat = \"xml\"\n", "format"),
        ] {
            let error = Config::parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        let json = Config::parse("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(json.log.format, crate::config::LogFormat::Json);
    }
}
