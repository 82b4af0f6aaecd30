//! `[decisions]`: the decision log, one JSON line per best-of-N answer the proxy computed, so
//! that what the judge chose on live traffic can be reviewed, and turned into eval data with
//! `bon-proxy export-pairs`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Most rotated files kept; more would only hide a misconfigured `max_bytes`.
const MAX_KEEP: u32 = 1000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionsConfig {
    /// JSONL file the decisions are appended to; empty (the default) turns the log off.
    /// A relative path is relative to the working directory.
    pub path: String,
    /// Also log the conversation and every candidate's text. Off by default: without it a
    /// line holds ids, scores and counts, never what users wrote or models answered.
    pub include_content: bool,
    /// Share of decisions logged, 0.0 to 1.0.
    pub sample_rate: f64,
    /// Size at which the file is rotated: a line that would take it past this starts a new one.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest … `path.keep` oldest); 0 keeps none.
    pub keep: u32,
}

impl Default for DecisionsConfig {
    fn default() -> Self {
        DecisionsConfig {
            path: String::new(),
            include_content: false,
            sample_rate: 1.0,
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
        }
    }
}

impl DecisionsConfig {
    /// True when decisions are logged at all.
    pub fn enabled(&self) -> bool {
        !self.path.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(ConfigError(format!(
                "`decisions.sample_rate`: is {}; allowed: 0.0 to 1.0",
                self.sample_rate
            )));
        }
        if self.max_bytes < 1024 {
            return Err(ConfigError(format!(
                "`decisions.max_bytes`: is {}; allowed: at least 1024",
                self.max_bytes
            )));
        }
        if self.keep > MAX_KEEP {
            return Err(ConfigError(format!(
                "`decisions.keep`: is {}; allowed: 0 to {MAX_KEEP}",
                self.keep
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn off_by_default_and_errors_name_the_key() {
        let config = Config::parse("").unwrap();
        assert!(!config.decisions.enabled());
        assert_eq!(config.decisions.sample_rate, 1.0);
        assert_eq!(config.decisions.keep, 5);
        for (text, key) in [
            ("[decisions]\nsample_rate = 1.5\n", "decisions.sample_rate"),
            ("[decisions]\nmax_bytes = 10\n", "decisions.max_bytes"),
            ("[decisions]\nkeep = 5000\n", "decisions.keep"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.0.contains(key), "{err}");
        }
        let err = Config::parse("[decisions]\npth = \"x\"\n").unwrap_err();
        assert!(err.0.contains("pth"), "{err}");
    }
}
