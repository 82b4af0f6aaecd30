//! `[ui]`: the decisions inspector, the page at `GET /ui` that shows the last best-of-N
//! decisions this process made (see `crate::ui`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Most decisions the inspector may be asked to keep: each one without content is about a
/// kilobyte, and the ring's byte bound caps the ones with content anyway.
const MAX_KEEP: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Serve the inspector; off, `/ui` is an ordinary path, forwarded like any other.
    pub enabled: bool,
    /// Decisions kept in memory, newest first; older ones are dropped.
    pub keep: usize,
    /// Keep the conversation, each candidate's text and the judge's raw verdict. Unset means
    /// true under `serve --demo` (whose texts are made up) and false otherwise: the page must
    /// not show what users wrote unless the operator said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_content: Option<bool>,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            keep: 200,
            include_content: None,
        }
    }
}

impl UiConfig {
    /// Whether texts are kept, once `serve --demo` has had its say.
    pub fn keeps_content(&self) -> bool {
        self.include_content.unwrap_or(false)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_KEEP).contains(&self.keep) {
            return Err(ConfigError(format!(
                "`ui.keep`: is {}; allowed: 1 to {MAX_KEEP}",
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
    fn on_by_default_without_content_and_errors_name_the_key() {
        let config = Config::parse("").unwrap();
        assert!(config.ui.enabled);
        assert_eq!(config.ui.keep, 200);
        assert!(!config.ui.keeps_content());
        let config = Config::parse("[ui]\ninclude_content = true\nkeep = 5\n").unwrap();
        assert!(config.ui.keeps_content());
        assert_eq!(config.ui.keep, 5);
        for text in ["[ui]\nkeep = 0\n", "[ui]\nkeep = 100001\n"] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.0.contains("`ui.keep`"), "{err}");
        }
        let err = Config::parse("[ui]\nenable = false\n").unwrap_err();
        assert!(err.0.contains("enable"), "{err}");
    }

    #[test]
    fn an_unset_include_content_stays_unset_when_printed() {
        let printed = toml::to_string(&Config::default()).unwrap();
        let parsed = Config::parse(&printed).unwrap();
        assert_eq!(parsed.ui.include_content, None);
    }
}
