//! `[auth]`: the keys clients must present, and what each key may spend.
//!
//! Off by default. A key is never written down in the clear: each entry holds its SHA-256
//! (`bon-proxy hash-key` prints it), inline as `[[auth.keys]]` or in `auth.keys_file`, a TOML
//! file of `[[keys]]` entries of the same shape (so the keys can live in a secret mount while
//! the config is in version control).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Refuse requests without a known key (401).
    pub enabled: bool,
    /// A TOML file of `[[keys]]` entries; relative to the config file.
    pub keys_file: String,
    /// Keys written in the config itself.
    pub keys: Vec<KeyConfig>,
}

/// One client key: its hash and its limits; every limit is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// Shown in logs and as the `key` label of the per-key metrics; unnamed keys share
    /// the label `unnamed`, so labels stay few.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SHA-256 of the key, 64 hex digits (`bon-proxy hash-key`).
    pub sha256: String,
    /// Largest N this key may ask for (below `best_of_n.max_n`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_n: Option<u32>,
    /// Models this key may ask for; absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens this key may spend per UTC day, candidates and judge included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

/// The shape of `auth.keys_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyConfig>,
}

impl AuthConfig {
    /// Makes a relative `keys_file` relative to the directory of the config file.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if !self.keys_file.is_empty() && Path::new(&self.keys_file).is_relative() {
            self.keys_file = base.join(&self.keys_file).display().to_string();
        }
    }

    /// Every key: the inline ones, then the file's. Errors name the file, the entry and the
    /// field to fix.
    pub fn all_keys(&self) -> Result<Vec<KeyConfig>, ConfigError> {
        let mut keys = self.keys.clone();
        if !self.keys_file.is_empty() {
            let text = std::fs::read_to_string(&self.keys_file).map_err(|e| {
                ConfigError(format!(
                    "`auth.keys_file`: cannot read {}: {e}",
                    self.keys_file
                ))
            })?;
            let file: KeysFile = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("`auth.keys_file` {}: {e}", self.keys_file)))?;
            keys.extend(file.keys);
        }
        for (k, key) in keys.iter().enumerate() {
            key.validate(k)?;
        }
        if self.enabled && keys.is_empty() {
            return Err(ConfigError(
                "`auth.enabled` is true but there are no keys: add [[auth.keys]] entries or \
                 an auth.keys_file (hash each key with `bon-proxy hash-key`)"
                    .into(),
            ));
        }
        let mut hashes: Vec<&str> = keys.iter().map(|k| k.sha256.as_str()).collect();
        hashes.sort_unstable();
        if hashes.windows(2).any(|w| w[0].eq_ignore_ascii_case(w[1])) {
            return Err(ConfigError(
                "`auth.keys`: the same key hash appears twice; give each client one entry".into(),
            ));
        }
        Ok(keys)
    }
}

impl KeyConfig {
    fn validate(&self, k: usize) -> Result<(), ConfigError> {
        let who = match &self.name {
            Some(name) => format!("key {k} (`{name}`)"),
            None => format!("key {k}"),
        };
        let fail = |field: &str, why: &str| {
            Err(ConfigError(format!("`auth.keys`: {who}: `{field}` {why}")))
        };
        let hex = self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return fail(
                "sha256",
                "must be 64 hex digits, the SHA-256 of the key: run `bon-proxy hash-key` and \
                 paste what it prints (never the key itself)",
            );
        }
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return fail("name", "is empty; remove it or name the client");
        }
        if self.max_n == Some(0) {
            return fail(
                "max_n",
                "is 0; at least 1, or remove it for best_of_n.max_n",
            );
        }
        if self.requests_per_minute == Some(0) {
            return fail(
                "requests_per_minute",
                "is 0; at least 1, or remove it for no limit",
            );
        }
        if self.tokens_per_day == Some(0) {
            return fail(
                "tokens_per_day",
                "is 0; at least 1, or remove it for no limit",
            );
        }
        if self.models.as_ref().is_some_and(|m| m.is_empty()) {
            return fail(
                "models",
                "is empty, which allows nothing; list models or remove it",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn keys_are_checked_and_errors_name_the_field() {
        let cases = [
            ("sha256 = \"abc\"", "sha256"),
            ("sha256 = \"HASH\"\nmax_n = 0", "max_n"),
            (
                "sha256 = \"HASH\"\nrequests_per_minute = 0",
                "requests_per_minute",
            ),
            ("sha256 = \"HASH\"\nmodels = []", "models"),
            ("sha256 = \"HASH\"\nname = \" \"", "name"),
        ];
        for (entry, field) in cases {
            let text = format!(
                "[auth]\nenabled = true\n[[auth.keys]]\n{}\n",
                entry.replace("HASH", HASH)
            );
            let config = Config::parse(&text).unwrap();
            let err = config.auth.all_keys().unwrap_err();
            assert!(err.0.contains(field), "{entry}: {err}");
        }
        let config = Config::parse("[auth]\nenabled = true\n").unwrap();
        assert!(config.auth.all_keys().unwrap_err().0.contains("hash-key"));
        let twice = format!(
            "[auth]\n[[auth.keys]]\nsha256 = \"{HASH}\"\n[[auth.keys]]\nsha256 = \"{}\"\n",
            HASH.to_uppercase()
        );
        let err = Config::parse(&twice).unwrap().auth.all_keys().unwrap_err();
        assert!(err.0.contains("twice"), "{err}");
    }

    #[test]
    fn a_keys_file_adds_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.toml");
        std::fs::write(
            &file,
            format!("[[keys]]\nname = \"team\"\nsha256 = \"{HASH}\"\n"),
        )
        .unwrap();
        let text = format!(
            "[auth]\nenabled = true\nkeys_file = \"{}\"\n",
            file.display()
        );
        let keys = Config::parse(&text).unwrap().auth.all_keys().unwrap();
        assert_eq!(keys[0].name.as_deref(), Some("team"));
        std::fs::write(&file, "[[keys]]\nsha = 1\n").unwrap();
        let err = Config::parse(&text).unwrap().auth.all_keys().unwrap_err();
        assert!(err.0.contains("auth.keys_file"), "{err}");
    }
}
