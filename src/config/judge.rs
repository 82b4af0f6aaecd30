//! The judge tables of `proxy.toml`: `[judge]` (the default judge, kept from the first
//! release), `[judges.NAME]` (named judges) and `[rubrics]` (rubric presets).
//!
//! Only the shape and the numbers are checked here. What a strategy name, a rubric preset, a
//! template or a panel member means is checked by the judge registry when it builds the judges
//! (`judge::Judges::build`), which is also what `check-config` runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::transport::{resolve_files, TlsRoots, TransportKeys};
use super::{check_base_url, check_duration, ConfigError};

/// What chooses when the judge cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The first successful candidate in generation order.
    FirstOk,
    /// A successful candidate at random.
    Random,
    /// No answer: the client gets a 502 saying the judge failed.
    Error,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::FirstOk => "first_ok",
            Fallback::Random => "random",
            Fallback::Error => "error",
        }
    }
}

/// A judge's rubrics: the name of a preset, or the rubrics themselves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Rubrics {
    Preset(String),
    List(Vec<String>),
}

/// The rubric preset a judge uses when its table names none.
pub const DEFAULT_RUBRIC_PRESET: &str = "helpfulness";

/// One judge: `[judge]`, or one `[judges.NAME]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Only in `[judge]`: the name of the judge used when a request names none; empty means
    /// the judge `[judge]` itself describes, named after its strategy.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default: String,
    /// How the judge decides: one of the registered strategies (`listwise`, `pointwise`, ...).
    pub strategy: String,
    /// Judge model; empty means the model of the request being judged.
    pub model: String,
    /// Separate endpoint for judge calls; empty means the upstream.
    pub base_url: String,
    /// Env variable with the key for `base_url`; empty means no key is sent there (the
    /// upstream key never is).
    pub api_key_env: String,
    /// What a good answer is, shown to LLM judges as a numbered list: a preset name or a list.
    pub rubrics: Rubrics,
    /// minijinja template of the judge prompt; empty means the strategy's built-in one.
    pub template: String,
    /// A file holding the template, instead of `template`; relative to the config file.
    pub template_file: String,
    pub temperature: f64,
    /// Upper bound on the judge's answer length, sent as `max_tokens`; 0 sends none.
    pub max_tokens: u32,
    #[serde(with = "super::duration")]
    pub timeout: Duration,
    pub fallback: Fallback,
    /// Shuffle candidates before the judge sees them, against position bias.
    pub shuffle: bool,
    /// Bound on the conversation and candidate text put into one judge prompt; longer texts
    /// are cut in the middle with a visible marker.
    pub max_prompt_bytes: usize,
    /// Pairwise: the most candidates judged as a round robin (every pair); above it, a
    /// knockout bracket.
    pub round_robin_max: usize,
    /// Panel: the named judges whose rankings are combined.
    pub members: Vec<String>,
    /// Reward model: the wire format of its server (`tei_rerank`, `cohere_rerank`,
    /// `vllm_reward`).
    pub format: String,
    /// Cascade: the cheap judge that ranks every candidate.
    pub first: String,
    /// Cascade: the judge that picks among the first judge's top `keep`.
    pub then: String,
    /// Cascade: how many of the first judge's best go on to the second.
    pub keep: usize,
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

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            default: String::new(),
            strategy: "listwise".into(),
            model: String::new(),
            base_url: String::new(),
            api_key_env: String::new(),
            rubrics: Rubrics::Preset(DEFAULT_RUBRIC_PRESET.into()),
            template: String::new(),
            template_file: String::new(),
            temperature: 0.0,
            max_tokens: 0,
            timeout: Duration::from_secs(120),
            fallback: Fallback::FirstOk,
            shuffle: true,
            max_prompt_bytes: 512 * 1024,
            round_robin_max: 6,
            members: ["listwise", "pointwise", "pairwise"]
                .map(String::from)
                .to_vec(),
            format: "tei_rerank".into(),
            first: "pointwise".into(),
            then: "pairwise".into(),
            keep: 3,
            ca_file: String::new(),
            tls_roots: None,
            client_cert_file: String::new(),
            client_key_file: String::new(),
            proxy_url: String::new(),
        }
    }
}

impl JudgeConfig {
    /// The settings `[judge]` lends to the built-in judge of `strategy`: all of them but the
    /// template, which is written for `[judge]`'s own strategy and its verdict tag.
    pub fn lent_to(&self, strategy: &str) -> JudgeConfig {
        let mut lent = JudgeConfig {
            default: String::new(),
            ..self.clone()
        };
        if self.strategy != strategy {
            lent.strategy = strategy.to_string();
            lent.template.clear();
            lent.template_file.clear();
        }
        lent
    }

    /// Checks one judge table; `key` is where it lives (`judge` or `judges.NAME`).
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let fail = |field: &str, msg: String| Err(ConfigError(format!("`{key}.{field}`: {msg}")));
        if !(0.0..=2.0).contains(&self.temperature) {
            return fail(
                "temperature",
                format!("is {}; allowed: 0.0 to 2.0", self.temperature),
            );
        }
        if self.max_prompt_bytes == 0 {
            return fail("max_prompt_bytes", "must be at least 1".into());
        }
        if !(2..=16).contains(&self.round_robin_max) {
            // A round robin of m candidates is m(m-1) judge calls at once: 240 at 16.
            return fail(
                "round_robin_max",
                format!(
                    "is {}; allowed: 2 to 16 (a round robin of m candidates makes m(m-1) judge \
                     calls at once; above it, a knockout makes 2(m-1))",
                    self.round_robin_max
                ),
            );
        }
        if !(1..=64).contains(&self.keep) {
            return fail("keep", format!("is {}; allowed: 1 to 64", self.keep));
        }
        check_duration(&format!("{key}.timeout"), self.timeout)?;
        if !self.base_url.is_empty() {
            check_base_url(&format!("{key}.base_url"), &self.base_url)?;
        }
        self.transport_keys()
            .validate(key, !self.base_url.is_empty())?;
        if !self.template.is_empty() && !self.template_file.is_empty() {
            return fail(
                "template_file",
                "is set together with `template`; keep one of them".into(),
            );
        }
        match &self.rubrics {
            Rubrics::List(list) if list.is_empty() || list.iter().any(|r| r.trim().is_empty()) => {
                fail(
                    "rubrics",
                    "a list of rubrics needs at least one, none empty; or name a preset, \
                     e.g. \"helpfulness\""
                        .into(),
                )
            }
            _ => Ok(()),
        }
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

    /// These settings reaching their endpoint as `keys` say: how the fuser lends its own
    /// connection keys to the judge-shaped call it makes.
    pub fn with_transport_keys(self, keys: TransportKeys) -> JudgeConfig {
        JudgeConfig {
            ca_file: keys.ca_file,
            tls_roots: keys.tls_roots,
            client_cert_file: keys.client_cert_file,
            client_key_file: keys.client_key_file,
            proxy_url: keys.proxy_url,
            ..self
        }
    }

    /// Makes the relative file keys relative to the directory of the config file.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let files = [
            &mut self.template_file,
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ];
        resolve_files(files, base);
    }
}

/// Checks `[judge]`, every `[judges.NAME]` and every `[rubrics]` preset.
pub(super) fn validate(
    judge: &JudgeConfig,
    judges: &BTreeMap<String, JudgeConfig>,
    rubrics: &BTreeMap<String, Vec<String>>,
) -> Result<(), ConfigError> {
    judge.validate("judge")?;
    for (name, table) in judges {
        check_name("judges", name)?;
        let key = format!("judges.{name}");
        if !table.default.is_empty() {
            return Err(ConfigError(format!(
                "`{key}.default`: only `[judge]` names the default judge; move it there"
            )));
        }
        table.validate(&key)?;
    }
    for (name, list) in rubrics {
        check_name("rubrics", name)?;
        if list.is_empty() || list.iter().any(|r| r.trim().is_empty()) {
            return Err(ConfigError(format!(
                "`rubrics.{name}`: a preset needs at least one rubric, none empty"
            )));
        }
    }
    Ok(())
}

/// Judge and preset names travel in headers: keep them to letters, digits, `-`, `_` and `.`.
fn check_name(table: &str, name: &str) -> Result<(), ConfigError> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name.is_empty() || name.len() > 64 || !plain {
        return Err(ConfigError(format!(
            "`{table}.{name}`: names may use letters, digits, `-`, `_` and `.`, up to 64 of them"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn named_judges_and_presets_load() {
        let config = Config::parse(
            r#"
[judge]
default = "careful"
model = "judge-a"

[judges.careful]
strategy = "pairwise"
model = "judge-b"
rubrics = "code"
round_robin_max = 4

[judges.quick]
strategy = "pointwise"
rubrics = ["Be right.", "Be short."]

[rubrics]
legal = ["Cites the statute."]
"#,
        )
        .unwrap();
        assert_eq!(config.judge.default, "careful");
        let careful = &config.judges["careful"];
        assert_eq!(careful.rubrics, Rubrics::Preset("code".into()));
        assert_eq!(careful.round_robin_max, 4);
        assert_eq!(
            config.judges["quick"].rubrics,
            Rubrics::List(vec!["Be right.".into(), "Be short.".into()])
        );
        assert_eq!(config.rubrics["legal"], vec!["Cites the statute."]);
    }

    #[test]
    fn the_old_judge_table_still_loads() {
        let config = Config::parse(
            "[judge]\nstrategy = \"listwise\"\nrubrics = [\"Mention otters.\"]\nfallback = \"error\"\n",
        )
        .unwrap();
        assert_eq!(
            config.judge.rubrics,
            Rubrics::List(vec!["Mention otters.".into()])
        );
        assert_eq!(config.judge.fallback, Fallback::Error);
    }

    #[test]
    fn mistakes_name_the_judge_and_key() {
        let err = Config::parse("[judges.x]\ntemperature = 3.0\n").unwrap_err();
        assert!(err.0.contains("judges.x.temperature"), "{err}");
        let err = Config::parse("[judges.x]\ndefault = \"y\"\n").unwrap_err();
        assert!(err.0.contains("judges.x.default"), "{err}");
        let err = Config::parse("[judges.\"a b\"]\n").unwrap_err();
        assert!(err.0.contains("judges.a b"), "{err}");
        let err = Config::parse("[judges.x]\nrubrics = []\n").unwrap_err();
        assert!(err.0.contains("judges.x.rubrics"), "{err}");
        let err =
            Config::parse("[judges.x]\ntemplate = \"a\"\ntemplate_file = \"b\"\n").unwrap_err();
        assert!(err.0.contains("judges.x.template_file"), "{err}");
        let err = Config::parse("[judges.x]\nround_robin_max = 1\n").unwrap_err();
        assert!(err.0.contains("round_robin_max"), "{err}");
        let err = Config::parse("[judges.x]\nround_robin_max = 17\n").unwrap_err();
        assert!(err.0.contains("2 to 16"), "{err}");
        let err = Config::parse("[judges.x]\ntimeout = \"0s\"\n").unwrap_err();
        assert!(err.0.contains("judges.x.timeout"), "{err}");
        let err = Config::parse("[rubrics]\nempty = []\n").unwrap_err();
        assert!(err.0.contains("rubrics.empty"), "{err}");
        let err = Config::parse("[judges.x]\nstrategy_x = 1\n").unwrap_err();
        assert!(err.0.contains("strategy_x"), "{err}");
    }

    #[test]
    fn template_files_are_relative_to_the_config_file() {
        let mut judge = JudgeConfig {
            template_file: "judge.j2".into(),
            ..JudgeConfig::default()
        };
        judge.resolve_paths(Path::new("/etc/bon"));
        assert_eq!(judge.template_file, "/etc/bon/judge.j2");
    }

    #[test]
    fn built_in_judges_borrow_the_connection_but_not_the_template() {
        let judge = JudgeConfig {
            model: "judge-model".into(),
            template: "{{ candidates }} <best>".into(),
            ..JudgeConfig::default()
        };
        let pairwise = judge.lent_to("pairwise");
        assert_eq!(pairwise.strategy, "pairwise");
        assert_eq!(pairwise.model, "judge-model");
        assert!(pairwise.template.is_empty());
        assert_eq!(judge.lent_to("listwise").template, judge.template);
    }
}
